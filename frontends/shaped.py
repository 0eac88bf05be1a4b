"""Tensors of known shape, dtype and device whose values are never computed: what the tracer
runs a model on when the IR needs only the shapes of its activations.

PyTorch's fake tensors do the same for every op, but they import ``torch._dynamo`` when their
mode is made (about 1 s and 70 MB, more than a small model's whole compile) and dispatch each
op through Python decompositions (about 1.5 s for Meta-SpikeFormer 55M). A
:class:`ShapedTensor` answers the ops spiking transformers are made of (convolutions, linear
layers, matmuls, pooling, padding, elementwise arithmetic, reshapes and views, reductions,
concatenation) from their shape rules in :data:`_RULES`, and hands any other op to fake
tensors, made only then: every op has torch's own semantics, and an op that needs values
(``if x.max() > 0``) raises as it does on fake tensors.

The rules compute nothing of activation size. Elementwise ops run on stand-ins of one element
per axis (torch gives the result dtype, with its promotion rules); views, reshapes and
reductions run on a stand-in of the full shape whose strides are all 0 (one element of memory:
torch gives the result shape, with its own indexing and ``-1`` rules); pooling runs on the
spatial axes alone; convolutions, linear layers and matmuls use their closed-form shapes.
"""

from __future__ import annotations

import logging
import operator
from contextlib import contextmanager

import torch
from torch.utils._pytree import tree_map

__all__ = ["ShapedTensor", "shaped_like", "release_fake_mode", "on_broadcast_constants"]


class ShapedTensor(torch.Tensor):
    """A tensor with a shape, dtype and device and no data (:mod:`frontends.shaped`)."""

    @staticmethod
    def __new__(cls, shape, dtype: torch.dtype, device: torch.device):
        return torch.Tensor._make_wrapper_subclass(cls, tuple(shape), dtype=dtype,
                                                   device=device)

    def __repr__(self):
        with torch._C.DisableTorchFunctionSubclass():
            return f"ShapedTensor({tuple(self.shape)}, dtype={self.dtype})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METADATA:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        rule = _RULES.get(func)
        if rule is not None:
            try:
                out = rule(func, args, kwargs)
            except (RuntimeError, TypeError, ValueError, IndexError):
                out = _DECLINE  # torch's own error, from fake tensors
            if out is not _DECLINE:
                return out
        return _on_fake(func, args, kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _on_fake(func, args, kwargs or {})


def shaped_like(t: torch.Tensor) -> ShapedTensor:
    return ShapedTensor(t.shape, t.dtype, t.device)


# ---------------------------------------------------------------------------- fake tensors

_fake_mode = None


def _on_fake(func, args, kwargs):
    """``func`` on fake tensors of the shaped arguments' shapes (made the first time only)."""
    global _fake_mode
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    if _fake_mode is None:
        _fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    mode = _fake_mode

    def to_fake(a):  # torch.empty's pages are never touched: no memory of activation size
        return mode.from_tensor(torch.empty(a.shape, dtype=a.dtype, device=a.device)) \
            if isinstance(a, ShapedTensor) else a

    with torch._C.DisableTorchFunctionSubclass():
        args, kwargs = tree_map(to_fake, (args, kwargs))
    with mode, _failures_unlogged():
        out = func(*args, **kwargs)
    return tree_map(lambda o: ShapedTensor(o.shape, o.dtype, o.device)
                    if isinstance(o, FakeTensor) else o, out)


@contextmanager
def _failures_unlogged():
    """Fake tensors log an op that fails on them, with its traceback, before raising: a model
    read the wrong way (the tracer tries static and sequence inputs) printed torch's traceback
    before snncc's own one-line error."""
    log = logging.getLogger("torch._subclasses.fake_tensor")
    disabled, log.disabled = log.disabled, True
    try:
        yield
    finally:
        log.disabled = disabled


def release_fake_mode() -> None:
    """Drop the fake-tensor mode (and its caches) an op outside the rules made."""
    global _fake_mode
    _fake_mode = None


# ---------------------------------------------------------------------------- stand-ins

#: what a rule returns to leave the op to fake tensors
_DECLINE = object()


def _tensors(obj) -> list[torch.Tensor]:
    found = []
    tree_map(lambda a: found.append(a) if isinstance(a, torch.Tensor) else None, obj)
    return found


def _map_shaped(obj, f):
    return tree_map(lambda a: f(a) if isinstance(a, ShapedTensor) else a, obj)


def _wrap(out):
    return tree_map(lambda o: shaped_like(o) if isinstance(o, torch.Tensor) else o, out)


def _broadcast(*shapes) -> tuple[int, ...]:
    """Broadcasting's result shape (``torch.broadcast_shapes`` imports sympy, 0.3 s)."""
    out = [1] * max((len(s) for s in shapes), default=0)
    for shape in shapes:
        for i, n in enumerate(reversed(tuple(shape)), 1):
            if n != out[-i] and out[-i] != 1 and n != 1:
                raise ValueError(f"shapes {shapes} do not broadcast")
            out[-i] = n if out[-i] == 1 else out[-i]
    return tuple(out)


def _one_per_axis(a: torch.Tensor) -> torch.Tensor:
    return torch.zeros((1,) * a.dim(), dtype=a.dtype, device=a.device)


def on_broadcast_constants(func, args, kwargs):
    """An elementwise op on real tensors of which some are broadcast (stride 0) along their
    leading axes (constants repeated over time and batch, as the tracer holds them), computed
    on one slice and broadcast back: the op's values without computing or allocating the
    copies; likewise padding that leaves those axes alone. None when ``func`` is neither or
    nothing is broadcast."""
    if func is F.pad:
        return _pad_broadcast(func, args, kwargs)
    ts = _tensors((args, kwargs))
    if _OPERATORS.get(func, func) not in _POINTWISE or not ts \
            or any(isinstance(t, ShapedTensor) for t in ts):
        return None
    nd = max(t.dim() for t in ts)
    if any(t.dim() not in (0, nd) for t in ts):
        return None
    shape = _broadcast(*(t.shape for t in ts))
    axes = [i for i in range(min(2, nd)) if shape[i] > 1 and
            all(t.dim() == 0 or t.shape[i] == 1 or t.stride(i) == 0 for t in ts)]
    if not axes:
        return None

    def one_slice(a):
        if isinstance(a, torch.Tensor) and a.dim():
            for i in axes:
                a = a.narrow(i, 0, 1)
        return a
    args, kwargs = tree_map(one_slice, (args, kwargs))
    out = func(*args, **kwargs)
    return out.expand(shape) if isinstance(out, torch.Tensor) else None


def _pad_broadcast(func, args, kwargs):
    x = args[0] if args else None
    if (not isinstance(x, torch.Tensor) or isinstance(x, ShapedTensor) or len(args) < 2
            or x.dim() < 3 or len(args[1]) // 2 > x.dim() - 2):
        return None
    axes = [i for i in range(2) if x.shape[i] > 1 and x.stride(i) == 0]
    if not axes:
        return None
    one = x
    for i in axes:
        one = one.narrow(i, 0, 1)
    out = func(one, *args[1:], **kwargs)
    return out.expand(tuple(x.shape[i] if i in axes else n for i, n in enumerate(out.shape)))


def _zero_strided(a: ShapedTensor) -> torch.Tensor:
    return torch.zeros((), dtype=a.dtype, device=a.device).expand(a.shape)


def _elementwise(func, args, kwargs):
    """Broadcasting ops: the result dtype (and device) from the op on one-element stand-ins,
    the shape from broadcasting the operands'."""
    shapes = [t.shape for t in _tensors((args, kwargs))]
    with torch._C.DisableTorchFunctionSubclass():  # real operands too: a broadcast constant
        args, kwargs = tree_map(lambda a: _one_per_axis(a) if isinstance(a, torch.Tensor)
                                else a, (args, kwargs))
        out = func(*args, **kwargs)
    if out is NotImplemented:  # x == None: Python decides
        return out
    if not isinstance(out, torch.Tensor):
        return _DECLINE
    return ShapedTensor(_broadcast(*shapes), out.dtype, out.device)


def _in_place(func, args, kwargs):
    """``x.add_(y)`` and the like: ``x`` itself, once the op is known valid on stand-ins."""
    x = args[0]
    if not isinstance(x, ShapedTensor):
        return _DECLINE
    out = _elementwise(func, args, kwargs)
    if not isinstance(out, ShapedTensor) or out.shape != x.shape:
        return _DECLINE
    return x


def _on_zero_strided(func, args, kwargs):
    """Views, reshapes, indexing and reductions: torch's own result on a stand-in of the full
    shape that holds one element (a view of it, or a reduction's small result). Only the
    tensor operated on may be shaped (and the ``other`` of ``view_as``): a shaped index or
    mask has values the result's shape depends on."""
    if not isinstance(args[0], ShapedTensor) or (
            _tensors((args[1:], kwargs)) and func not in _SHAPE_OF_OTHER
            and any(isinstance(t, ShapedTensor) for t in _tensors((args[1:], kwargs)))):
        return _DECLINE
    with torch._C.DisableTorchFunctionSubclass():
        args, kwargs = _map_shaped((args, kwargs), _zero_strided)
        return _wrap(func(*args, **kwargs))


def _extremum(func, args, kwargs):
    """``max`` / ``min``: of two tensors elementwise, else a reduction."""
    if _tensors((args[1:], kwargs)):
        return _elementwise(func, args, kwargs)
    return _on_zero_strided(func, args, kwargs)


def _layer_norm(func, args, kwargs):
    p = dict(zip(("input", "normalized_shape", "weight", "bias"), args)) | kwargs
    x, shape = p["input"], tuple(p["normalized_shape"])
    if not isinstance(x, ShapedTensor) or not shape or tuple(x.shape[-len(shape):]) != shape \
            or not _same_dtypes(x, p.get("weight"), p.get("bias")):
        return _DECLINE
    return shaped_like(x)


def _new_like(func, args, kwargs):
    """``empty_like`` and the like: a shaped tensor of the argument's shape."""
    with torch._C.DisableTorchFunctionSubclass():
        out = func(_one_per_axis(args[0]), *args[1:], **kwargs)
    return ShapedTensor(args[0].shape, out.dtype, out.device)


def _spatial(n: int):
    """Pooling over the last ``n`` axes: the op on those axes alone gives their new sizes."""
    def rule(func, args, kwargs):
        x = args[0]
        if not isinstance(x, ShapedTensor) or x.dim() <= n:
            return _DECLINE
        stand_in = torch.zeros((1,) * (x.dim() - n) + tuple(x.shape[-n:]), dtype=x.dtype)
        with torch._C.DisableTorchFunctionSubclass():
            out = func(stand_in, *args[1:], **kwargs)
        if not isinstance(out, torch.Tensor):
            return _DECLINE  # (values, indices)
        return ShapedTensor(tuple(x.shape[:-n]) + tuple(out.shape[-n:]), out.dtype, x.device)
    return rule


def _same_dtypes(*ts) -> bool:
    ts = [t for t in ts if t is not None]
    return all(isinstance(t, torch.Tensor) and t.dtype == ts[0].dtype
               and t.device == ts[0].device for t in ts)


def _convolution(n: int):
    def rule(func, args, kwargs):
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        p = dict(zip(names, args)) | kwargs
        x, w, bias = p["input"], p["weight"], p.get("bias")
        groups = p.get("groups", 1)
        stride, padding, dilation = (p.get(k, d) for k, d in
                                     (("stride", 1), ("padding", 0), ("dilation", 1)))
        if padding == "valid":
            padding = 0
        elif padding == "same" and _ntuple(stride, n) == (1,) * n:
            padding, stride = None, 1
        if (isinstance(padding, str) or not _same_dtypes(x, w, bias) or w.dim() != n + 2
                or x.dim() != n + 2 or x.shape[1] != w.shape[1] * groups
                or w.shape[0] % groups or (bias is not None and bias.shape != (w.shape[0],))):
            return _DECLINE
        if padding is None:  # "same"
            size = list(x.shape[2:])
        else:
            stride, padding, dilation = (_ntuple(v, n) for v in (stride, padding, dilation))
            size = [(L + 2 * p_ - d * (k - 1) - 1) // s + 1 for L, k, s, p_, d in
                    zip(x.shape[2:], w.shape[2:], stride, padding, dilation)]
        if min(size) < 1:
            return _DECLINE
        return ShapedTensor((x.shape[0], w.shape[0], *size), x.dtype, x.device)
    return rule


def _ntuple(v, n: int) -> tuple[int, ...]:
    v = tuple(v) if isinstance(v, (tuple, list)) else (v,) * n
    if len(v) == 1:
        v = v * n
    if len(v) != n:
        raise ValueError(v)
    return tuple(int(i) for i in v)


def _linear(func, args, kwargs):
    p = dict(zip(("input", "weight", "bias"), args)) | kwargs
    x, w, bias = p["input"], p["weight"], p.get("bias")
    if (not _same_dtypes(x, w, bias) or w.dim() != 2 or x.dim() < 1
            or x.shape[-1] != w.shape[1]
            or (bias is not None and bias.shape != (w.shape[0],))):
        return _DECLINE
    return ShapedTensor((*x.shape[:-1], w.shape[0]), x.dtype, x.device)


def _matmul(func, args, kwargs):
    if len(args) != 2 or kwargs:
        return _DECLINE
    a, b = args
    if not _same_dtypes(a, b) or a.dim() < 2 or b.dim() < 2 or a.shape[-1] != b.shape[-2]:
        return _DECLINE
    batch = _broadcast(a.shape[:-2], b.shape[:-2])
    return ShapedTensor((*batch, a.shape[-2], b.shape[-1]), a.dtype, a.device)


def _pad(func, args, kwargs):
    p = dict(zip(("input", "pad", "mode", "value"), args)) | kwargs
    x, pad = p["input"], tuple(p["pad"])
    if (not isinstance(x, ShapedTensor) or p.get("mode", "constant") != "constant"
            or len(pad) % 2 or len(pad) // 2 > x.dim()):
        return _DECLINE
    shape = list(x.shape)
    for i in range(len(pad) // 2):
        shape[-1 - i] += pad[2 * i] + pad[2 * i + 1]
    if min(shape, default=0) < 0:
        return _DECLINE
    return ShapedTensor(shape, x.dtype, x.device)


def _concatenate(stack: bool):
    def rule(func, args, kwargs):
        p = dict(zip(("tensors", "dim"), args)) | kwargs
        ts, dim = list(p["tensors"]), p.get("dim", p.get("axis", 0))  # (numpy's name too)
        if not ts or not isinstance(dim, int) or not all(isinstance(t, torch.Tensor) for t in ts):
            return _DECLINE
        dtype = ts[0].dtype
        for t in ts[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        first = tuple(ts[0].shape)
        if stack:
            if any(tuple(t.shape) != first for t in ts):
                return _DECLINE
            d = dim % (len(first) + 1)
            shape = first[:d] + (len(ts),) + first[d:]
        else:
            if any(t.dim() != len(first) for t in ts) or not first:
                return _DECLINE
            d = dim % len(first)
            if any(tuple(t.shape[:d]) + tuple(t.shape[d + 1:]) != first[:d] + first[d + 1:]
                   for t in ts):
                return _DECLINE
            shape = first[:d] + (sum(t.shape[d] for t in ts),) + first[d + 1:]
        return ShapedTensor(shape, dtype, ts[0].device)
    return rule


def _repeat(func, args, kwargs):
    x, reps = args[0], args[1:]
    if len(reps) == 1 and isinstance(reps[0], (tuple, list, torch.Size)):
        reps = tuple(reps[0])
    if kwargs or len(reps) < x.dim() or not all(isinstance(r, int) and r >= 0 for r in reps):
        return _DECLINE
    shape = (1,) * (len(reps) - x.dim()) + tuple(x.shape)
    return ShapedTensor([s * r for s, r in zip(shape, reps)], x.dtype, x.device)


# ---------------------------------------------------------------------------- the rules

T_ = torch.Tensor
F = torch.nn.functional

_METADATA = frozenset(
    [getattr(T_, name).__get__ for name in
     ("shape", "dtype", "device", "ndim", "is_cuda", "layout", "requires_grad", "is_leaf",
      "grad_fn", "grad", "is_sparse", "is_quantized", "is_meta", "is_mkldnn",
      "is_nested")]
    + [getattr(T_, name) for name in
       ("size", "dim", "ndimension", "numel", "nelement", "stride", "is_contiguous",
        "element_size", "is_floating_point", "is_complex", "__len__", "__hash__",
        "storage_offset")])

_ELEMENTWISE_NAMES = (
    "add", "sub", "mul", "div", "true_divide", "floor_divide", "remainder", "fmod", "pow",
    "neg", "abs", "sign", "exp", "log", "sqrt", "rsqrt", "sigmoid", "tanh", "relu", "clamp",
    "clip", "clamp_min", "clamp_max", "minimum", "maximum", "heaviside", "where", "masked_fill",
    "ge", "gt", "le", "lt", "eq", "ne", "logical_and", "logical_or", "logical_not",
    "bitwise_and", "bitwise_or", "bitwise_not", "floor", "ceil", "round", "trunc", "reciprocal",
    "square", "lerp", "addcmul", "addcdiv", "erf", "sin", "cos", "atan", "sgn", "isnan",
    "isfinite", "nan_to_num")
_DUNDERS = ("add", "radd", "sub", "rsub", "mul", "rmul", "truediv", "rtruediv", "floordiv",
            "rfloordiv", "mod", "pow", "rpow", "neg", "abs", "ge", "gt", "le", "lt", "eq", "ne",
            "and", "or", "xor", "invert", "pos")
_UNARY_METHODS = ("detach", "clone", "contiguous", "to", "type", "type_as", "float", "double",
                  "half", "bfloat16", "int", "long", "bool", "cpu")
_VIEWS = ("view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute",
          "transpose", "swapaxes", "swapdims", "t", "unsqueeze", "squeeze", "expand",
          "expand_as", "__getitem__", "chunk", "split", "tensor_split", "unbind", "narrow",
          "select", "movedim", "moveaxis", "mean", "sum", "amax", "amin", "prod", "var", "std",
          "norm", "argmax", "argmin", "all", "any")
#: ops whose result has their input's shape and takes a dimension (checked on the stand-in)
_SAME_SHAPE = ("softmax", "log_softmax", "cumsum")


def _converted(func, args, kwargs):
    """``x.to(...)``, ``x.type_as(y)``: x's shape in the dtype and on the device asked; a tensor
    argument is read for its dtype and device only (``.to(x)`` of a step of ``x``)."""
    x, *rest = args
    if not isinstance(x, torch.Tensor):
        return _DECLINE

    def small(a):
        return torch.empty(0, dtype=a.dtype, device=a.device) if isinstance(a, torch.Tensor) \
            else a
    out = func(torch.zeros((), dtype=x.dtype, device=x.device), *map(small, rest),
               **{k: small(v) for k, v in kwargs.items()})
    return ShapedTensor(tuple(x.shape), out.dtype, out.device)


def _rules() -> dict:
    rules = {}

    def add(f, rule):
        if f is not None:
            rules[f] = rule
    for name in _ELEMENTWISE_NAMES:
        add(getattr(torch, name, None), _elementwise)
        add(getattr(T_, name, None), _elementwise)
        add(getattr(T_, name + "_", None), _in_place)
    for name in _DUNDERS:
        add(getattr(T_, f"__{name}__", None), _elementwise)
        add(getattr(T_, f"__i{name}__", None), _in_place)
    for name in _UNARY_METHODS:
        add(getattr(T_, name), _converted if name in ("to", "type_as") else _elementwise)
    add(T_.data.__get__, _elementwise)
    add(T_.T.__get__, _on_zero_strided)
    add(T_.mT.__get__, _on_zero_strided)
    for f in (F.relu, F.sigmoid, F.hardtanh, F.leaky_relu, F.gelu, F.silu):
        add(f, _elementwise)
    pointwise = frozenset(f for f, rule in rules.items() if rule is _elementwise)
    for f in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d):
        add(f, _elementwise)
    for name in _VIEWS:
        add(getattr(torch, name, None), _on_zero_strided)
        add(getattr(T_, name, None), _on_zero_strided)
    for name in _SAME_SHAPE:
        add(getattr(torch, name), _elementwise)
        add(getattr(T_, name), _elementwise)
    for f in (F.softmax, F.log_softmax):
        add(f, _elementwise)
    for name in ("empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like"):
        add(getattr(torch, name), _new_like)
    for n, fs in ((1, (torch.avg_pool1d, F.avg_pool1d, F.max_pool1d, torch.max_pool1d,
                       F.adaptive_avg_pool1d, F.adaptive_max_pool1d)),
                  (2, (F.avg_pool2d, torch._C._nn.avg_pool2d, F.max_pool2d, torch.max_pool2d,
                       F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d,
                       F.adaptive_max_pool2d)),
                  (3, (F.avg_pool3d, torch._C._nn.avg_pool3d, F.max_pool3d, torch.max_pool3d,
                       F.adaptive_avg_pool3d, F.adaptive_max_pool3d))):
        for f in fs:
            add(f, _spatial(n))
    for n, f in ((1, torch.conv1d), (2, torch.conv2d), (3, torch.conv3d)):
        add(f, _convolution(n))
    add(F.linear, _linear)
    for f in (torch.matmul, T_.matmul, T_.__matmul__, torch.bmm, T_.bmm):
        add(f, _matmul)
    add(F.pad, _pad)
    add(F.layer_norm, _layer_norm)
    for name in ("max", "min"):
        add(getattr(torch, name), _extremum)
        add(getattr(T_, name), _extremum)
    add(torch.cat, _concatenate(stack=False))
    add(torch.concat, _concatenate(stack=False))
    add(torch.stack, _concatenate(stack=True))
    add(T_.repeat, _repeat)
    return rules, pointwise


#: the rules; the ops among them that compute each element from the same position of their
#: operands alone (not softmax or cumsum along an axis, not dropout's random draws)
_RULES, _POINTWISE = _rules()
#: the Python operators fx records (``a * b``), as the tensor methods they call
_OPERATORS = {getattr(operator, name): getattr(T_, f"__{name.rstrip('_')}__") for name in
              ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "abs", "ge", "gt",
               "le", "lt", "eq", "ne", "and_", "or_", "xor", "invert", "pos")}
_SHAPE_OF_OTHER = frozenset({T_.view_as, T_.expand_as, T_.reshape_as})
