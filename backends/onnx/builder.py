"""Lowering of IR nodes to standard ONNX operators (for one step, or for T steps folded into
the batch axis: the lowerings never depend on the batch size).

:class:`OnnxBuilder` accumulates ONNX nodes and initializers; :func:`lower` emits the operators
of one stateless IR node and :func:`lower_neuron` those of one neuron step, with the canonical
arithmetic order of :mod:`snncc.neuron` (``alpha*v + gamma*x + beta``). Tensors carry the batch
axis first (``[B, *shape]``); per-sample ranks of broadcasting operands are aligned the way the
simulator aligns them (new axes after the batch axis).

onnxruntime's CPU provider has no double kernels for ``Conv`` and ``AveragePool``. In float64
models those two are lowered to an im2col form (``Pad``, strided ``Slice``, ``Concat``,
``MatMul``, ``ReduceSum``), whose kernels all exist in double, so a float64 model stays float64
end to end instead of casting around the missing kernels.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from onnx import TensorProto, helper

from snncc import ir
from snncc import neuron as nrn
from snncc.errors import UnsupportedError
from snncc.graph import Graph

OPSET = 18
ELEM = {"float64": TensorProto.DOUBLE, "float32": TensorProto.FLOAT}
NP_DTYPE = {"float64": np.float64, "float32": np.float32}


class OnnxBuilder:
    """Collects the nodes and initializers of one ONNX graph.

    ``param(node, attr)`` turns an IR array into an initializer once (shared by every time step
    of an unrolled model); ``op`` appends a node and returns its (first) output name."""

    def __init__(self, graph: Graph, dtype: str):
        if dtype not in ELEM:
            raise UnsupportedError(f"ONNX dtype must be one of {list(ELEM)}, got {dtype!r}")
        self.graph = graph
        self.dtype = dtype
        self.elem = ELEM[dtype]
        self.nodes: list = []
        #: name -> array, float ones in any float type (cast to the model's as they are
        #: written: a float32 weight is not copied here); made into TensorProtos only inside
        #: the model (see models._model)
        self.initializers: dict[str, np.ndarray] = {}
        self._count = 0

    @property
    def double(self) -> bool:
        return self.dtype == "float64"

    def fresh(self, base: str) -> str:
        self._count += 1
        return f"snncc:{base}#{self._count}"

    def _init(self, name: str, array: np.ndarray) -> str:
        if name not in self.initializers:
            self.initializers[name] = np.asarray(array)
        return name

    def const(self, name: str, value) -> str:
        """A float initializer (in the model's dtype once written)."""
        v = np.asarray(value)
        return self._init(name, v if v.dtype.kind == "f" else v.astype(np.float64))

    def param(self, node: ir.Node, attr: str, value=None) -> str:
        """The initializer of array ``attr`` of ``node`` (or of ``value`` derived from it)."""
        return self.const(f"{node.name}.{attr}", getattr(node, attr) if value is None else value)

    def ints(self, values) -> str:
        """An int64 vector initializer, shared by value."""
        v = [int(x) for x in values]
        return self._init("snncc:i64[" + ",".join(map(str, v)) + "]",
                          np.asarray(v, dtype=np.int64))

    def op(self, op_type: str, inputs, out: str | None = None, **attrs) -> str:
        out = out or self.fresh(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def split(self, x: str, outs: list[str]) -> None:
        """``x`` split into ``len(outs)`` equal parts along axis 0, named ``outs``."""
        if len(outs) == 1:
            self.op("Identity", [x], outs[0])
        else:
            self.nodes.append(helper.make_node("Split", [x], outs, name=outs[0], axis=0,
                                               num_outputs=len(outs)))

    def value_info(self, name: str, shape) -> object:
        return helper.make_tensor_value_info(name, self.elem, list(shape))

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self.graph[name].shape


# ----------------------------------------------------------------------------- helpers


def _aligned(b: OnnxBuilder, x: str, rank: int, want: int) -> str:
    """[B, *s] -> [B, 1.., *s] so per-sample shapes broadcast like numpy's (simulator's _align)."""
    extra = want - rank
    return b.op("Unsqueeze", [x, b.ints(range(1, extra + 1))]) if extra > 0 else x


def _aligned_args(b: OnnxBuilder, n: ir.Node, args: list[str]) -> list[str]:
    return [_aligned(b, a, len(b.shape_of(i)), len(n.shape)) for a, i in zip(args, n.inputs)]


def _patches(b: OnnxBuilder, x: str, kernel, stride, padding, dilation, out_sp) -> str:
    """im2col: [B, C, *spatial] -> [B, C, K, *out_spatial], K = prod(kernel), kernel offsets in
    row-major order (the order of a weight's trailing axes)."""
    nd = len(kernel)
    if set(kernel) == {1} and set(stride) == {1} and not any(padding):  # pointwise: x itself
        return b.op("Unsqueeze", [x, b.ints([2])])
    if any(padding):
        x = b.op("Pad", [x, b.ints([0, 0, *padding, 0, 0, *padding])])
    x = b.op("Unsqueeze", [x, b.ints([2])])  # once: each slice is then [B, C, 1, *out_spatial]
    axes = b.ints(range(3, 3 + nd))
    cols = []
    for offs in itertools.product(*(range(k) for k in kernel)):
        starts = [o * d for o, d in zip(offs, dilation)]
        ends = [s + (o - 1) * st + 1 for s, o, st in zip(starts, out_sp, stride)]
        cols.append(b.op("Slice", [x, b.ints(starts), b.ints(ends), axes, b.ints(stride)]))
    return b.op("Concat", cols, axis=2) if len(cols) > 1 else cols[0]


# ----------------------------------------------------------------------------- lowerings


def _conv(b: OnnxBuilder, n: ir.Conv2d, args, out):
    (x,) = args
    k = n.weight.shape[2:]
    if not b.double:
        ins = [x, b.param(n, "weight")] + ([b.param(n, "bias")] if n.bias is not None else [])
        return b.op("Conv", ins, out, kernel_shape=list(k), strides=list(n.stride),
                    pads=list(n.padding) * 2, dilations=list(n.dilation), group=n.groups)
    c_out, c_g = n.weight.shape[:2]
    g, out_sp = n.groups, n.shape[1:]
    cols = _patches(b, x, k, n.stride, n.padding, n.dilation, out_sp)
    cols = b.op("Reshape", [cols, b.ints([0, g, c_g * math.prod(k), math.prod(out_sp)])])
    w = b.param(n, "weight", n.weight.reshape(g, c_out // g, c_g * math.prod(k)))
    y = b.op("MatMul", [w, cols])  # [B, G, C_out/G, P]
    if n.bias is None:
        return b.op("Reshape", [y, b.ints([0, c_out, *out_sp])], out)
    y = b.op("Reshape", [y, b.ints([0, c_out, *out_sp])])
    return b.op("Add", [y, b.param(n, "bias", n.bias.reshape(-1, *[1] * len(out_sp)))], out)


def _linear(b: OnnxBuilder, n: ir.Linear, args, out):
    (x,) = args
    if len(n.shape) == 1:
        ins = [x, b.param(n, "weight")] + ([b.param(n, "bias")] if n.bias is not None else [])
        return b.op("Gemm", ins, out, transB=1)
    y = b.op("MatMul", [x, b.param(n, "weight", n.weight.T)], None if n.bias is not None else out)
    return b.op("Add", [y, b.param(n, "bias")], out) if n.bias is not None else y


def _batchnorm(b: OnnxBuilder, n: ir.BatchNorm, args, out):
    """onnxruntime's BatchNormalization computes as torch's does (1 / sqrt(var + eps) times
    the weight, then x * scale + (bias - mean * scale)), but ONNX stores ``epsilon`` as a
    float32 attribute (1e-5 becomes 9.99999975e-06): in float64 the variance holds var + eps,
    added as torch adds it, and epsilon is 0."""
    (x,) = args
    if b.double:
        var, eps = b.param(n, "var", np.asarray(n.var, np.float64) + n.eps), 0.0
    else:
        var, eps = b.param(n, "var"), n.eps
    params = [*(b.param(n, a) for a in ("weight", "bias", "mean")), var]
    ax, rank = n.axis + 1, len(n.shape) + 1
    if ax == 1:
        return b.op("BatchNormalization", [x, *params], out, epsilon=eps)
    perm = [0, ax] + [i for i in range(1, rank) if i != ax]
    y = b.op("BatchNormalization", [b.op("Transpose", [x], perm=perm), *params], epsilon=eps)
    return b.op("Transpose", [y], out, perm=list(np.argsort(perm)))


def _maxpool(b: OnnxBuilder, n: ir.MaxPool2d, args, out):
    return b.op("MaxPool", args, out, kernel_shape=list(n.kernel_size), strides=list(n.stride),
                pads=list(n.padding) * 2, dilations=list(n.dilation))


def _avgpool(b: OnnxBuilder, n: ir.AvgPool2d, args, out):
    (x,) = args
    if not b.double:
        return b.op("AveragePool", [x], out, kernel_shape=list(n.kernel_size),
                    strides=list(n.stride), pads=list(n.padding) * 2,
                    count_include_pad=int(n.count_include_pad))
    cols = _patches(b, x, n.kernel_size, n.stride, n.padding, (1, 1), n.shape[1:])
    total = b.op("ReduceSum", [cols, b.ints([2])], keepdims=0)
    divisors = n.divisors(b.shape_of(n.inputs[0])[1:])
    return b.op("Div", [total, b.const(f"{n.name}.divisor", divisors)], out)


def _pad(b: OnnxBuilder, n: ir.Pad, args, out):
    """Zero padding, then the per-channel fill added on the border (as the simulator does).
    The border is the fill [C, 1, 1] times a 0/1 mask [H, W] (exact), not a constant of the
    activation's size in the file (18 MB at 15M)."""
    _, h, w = n.shape
    left, right, top, bottom = n.pads
    mask = np.ones((h, w))
    mask[top:h - bottom, left:w - right] = 0
    mask = b.const(f"snncc:border[{h},{w},{top},{bottom},{left},{right}]", mask)
    fill = b.param(n, "value", np.asarray(n.value).reshape(-1, 1, 1))
    padded = b.op("Pad", [args[0], b.ints([0, 0, top, left, 0, 0, bottom, right])])
    return b.op("Add", [padded, b.op("Mul", [fill, mask])], out)


def _reshape(b: OnnxBuilder, n: ir.Node, args, out):
    return b.op("Reshape", [args[0], b.ints([0, *n.shape])], out)


def _transpose(b: OnnxBuilder, n: ir.Transpose, args, out):
    return b.op("Transpose", args, out, perm=[0, *(p + 1 for p in n.perm)])


def _gather(b: OnnxBuilder, n: ir.Gather, args, out):
    return b.op("Gather", [args[0], b.ints(n.index)], out, axis=n.axis % len(n.shape) + 1)


def _add(b: OnnxBuilder, n: ir.Add, args, out):
    xs = _aligned_args(b, n, args)
    y = xs[0]
    for i, x in enumerate(xs[1:], 2):
        y = b.op("Add", [y, x], out if i == len(xs) else None)
    return y if len(xs) > 1 else b.op("Identity", [y], out)


def _scale(b: OnnxBuilder, n: ir.Scale, args, out):
    return b.op("Mul", [args[0], b.param(n, "factor")], out)


def _divide(b: OnnxBuilder, n: ir.Divide, args, out):
    return b.op("Div", [args[0], b.param(n, "divisor")], out)


def _hadamard(b: OnnxBuilder, n: ir.Node, args, out):
    return b.op("Mul", _aligned_args(b, n, args), out)


def _matmul(b: OnnxBuilder, n: ir.Node, args, out):
    return b.op("MatMul", _aligned_args(b, n, args), out)


def _reduce(b: OnnxBuilder, n: ir.Sum, args, out):
    rank = len(b.shape_of(n.inputs[0]))
    axes = b.ints(sorted(a % rank + 1 for a in n.axes))
    op = "ReduceMean" if isinstance(n, ir.Mean) else "ReduceSum"
    return b.op(op, [args[0], axes], out, keepdims=int(n.keepdim))


def _concat(b: OnnxBuilder, n: ir.Concat, args, out):
    return b.op("Concat", args, out, axis=n.axis % len(n.shape) + 1)


def _identity(b: OnnxBuilder, n: ir.Node, args, out):
    return b.op("Identity", args, out)


_LOWER = {
    "Conv1d": _conv, "Conv2d": _conv, "Linear": _linear, "BatchNorm": _batchnorm,
    "MaxPool2d": _maxpool, "AvgPool2d": _avgpool, "Pad": _pad, "Reshape": _reshape,
    "Flatten": _reshape, "Transpose": _transpose, "Gather": _gather, "Add": _add, "Scale": _scale,
    "Divide": _divide,
    "Hadamard": _hadamard, "SpikeMatMul": _matmul, "AddressedAccumulate": _matmul,
    "Sum": _reduce, "Mean": _reduce, "Concat": _concat, "Output": _identity,
}

#: IR ops with a stateless ONNX lowering; Input, Neuron, Delay and Readout are handled by the
#: model assembly (they carry state or come from outside).
STATELESS_OPS = frozenset(_LOWER)


def lower(b: OnnxBuilder, n: ir.Node, args: list[str], out: str) -> str:
    """Emit the operators of stateless node ``n`` reading ``args``; its result is named ``out``."""
    fn = _LOWER.get(n.op)
    if fn is None:
        raise UnsupportedError(f"the ONNX back-end has no lowering for {n.op}", node=n.name,
                               path=n.path)
    return fn(b, n, args, out)


def lower_neuron(b: OnnxBuilder, n: ir.Neuron, x: str, v: str, spike: str,
                 v_next: str) -> None:
    """One step of the canonical neuron: ``h = alpha*v + gamma*x + beta`` (this order),
    ``s = h >= theta`` (or ``>``), hard reset ``h * (1 - s) + v_reset * s`` or soft
    ``h - theta*s``. Writes the spikes (0/1 in the model dtype) to ``spike`` and the membrane to
    ``v_next``. As in the simulator, multiplications by 1 and additions of 0 are left out: they
    change at most the sign of a zero, which no comparison or later sum sees (and the hard reset
    as a product: onnxruntime's Where costs several elementwise ops)."""
    gx = x if np.all(n.gamma == 1) else b.op("Mul", [b.param(n, "gamma"), x])
    av = v if np.all(n.alpha == 1) else b.op("Mul", [b.param(n, "alpha"), v])
    if np.all(n.beta == 0):
        h = b.op("Add", [av, gx], f"{spike}/h")
    else:
        h = b.op("Add", [b.op("Add", [av, gx]), b.param(n, "beta")], f"{spike}/h")
    theta = b.param(n, "theta")
    fired = b.op("GreaterOrEqual" if n.cmp == nrn.CMP_GE else "Greater", [h, theta])
    s = b.op("Cast", [fired], spike, to=b.elem)
    if n.reset != nrn.RESET_HARD:
        b.op("Sub", [h, b.op("Mul", [theta, s])], v_next)
        return
    kept = b.op("Mul", [h, b.op("Sub", [b.const("snncc:one", 1.0), s])],
                v_next if np.all(n.v_reset == 0) else None)
    if not np.all(n.v_reset == 0):
        b.op("Add", [kept, b.op("Mul", [b.param(n, "v_reset"), s])], v_next)
