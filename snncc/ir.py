"""snncc's intermediate representation: one small dataclass per primitive.

Shapes exclude batch and time (DESIGN.md, "Time and layout conventions"); at every time step a
node maps its inputs ``[B, *shape_in]`` to ``[B, *shape]``. Every node states the *kind* of its
output (spike 0/1, integer count, or real) and records the module path it came from.

Nodes are stateless per time step except :class:`Neuron` (membrane) and :class:`Delay`
(a FIFO), and :class:`Readout` (running mean over time). Edges are the ordered ``inputs`` of
each node; several inputs of an :class:`Add` are summed.

A node's ``infer`` checks its inputs and parameters and returns (shape, kind); the
:class:`~snncc.graph.Graph` calls it at construction and in the verifier, so a malformed node is
refused where it is made, naming the node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import ClassVar

import numpy as np

from . import neuron as _neuron
from .errors import IRError, ShapeError

Shape = tuple[int, ...]


class Kind(str, Enum):
    """What a node's output values are."""

    SPIKE = "spike"  # 0/1
    COUNT = "count"  # integers (sums of spikes)
    REAL = "real"

    @staticmethod
    def join(kinds) -> "Kind":
        """The kind of a sum/concat of inputs of these kinds."""
        kinds = set(kinds)
        if kinds == {Kind.SPIKE}:
            return Kind.SPIKE
        return Kind.REAL if Kind.REAL in kinds else Kind.COUNT

    @property
    def integral(self) -> bool:
        return self is not Kind.REAL


def all_finite(a) -> bool:
    """No NaN or infinity in ``a``, read off its extremes (a NaN propagates into both): no
    temporary mask the size of ``a``, whose freed pages the allocator keeps (a checkpoint's
    weights are checked as every node is built)."""
    a = np.asarray(a)
    if a.size == 0 or a.dtype.kind in "biu":
        return True
    if a.dtype.kind != "f":
        return bool(np.all(np.isfinite(a)))
    return bool(np.isfinite(a.min()) and np.isfinite(a.max()))


def _arr(x, name: str, node: "Node") -> np.ndarray:
    keep = name in node.float32_arrays and isinstance(x, np.ndarray) and x.dtype == np.float32
    a = x if keep else np.asarray(x, dtype=np.float64)
    if not all_finite(a):
        raise IRError(f"parameter '{name}' contains NaN or infinity", node=node.name, path=node.path)
    return a


@dataclass(eq=False)
class Node:
    """Base of every IR node. ``inputs`` are the names of the nodes it reads, in order."""

    name: str
    inputs: tuple[str, ...] = ()
    path: str = ""
    shape: Shape = field(default=(), init=False)
    kind: Kind = field(default=Kind.REAL, init=False)

    #: names of array-valued parameters (serialised as arrays, compared exactly)
    arrays: ClassVar[tuple[str, ...]] = ()
    #: array parameters kept in float32 when given so: a float32 model's synapse weights, exact
    #: in float64, at half the memory and shared with the model; code computing with them
    #: promotes to float64 first (``np.asarray(w, np.float64)``), as numpy does not for scalars
    float32_arrays: ClassVar[tuple[str, ...]] = ()
    #: number of inputs, or None for any number >= 1
    arity: ClassVar[int | None] = 1
    #: whether output at step t depends on an input at an earlier step only (cycles may pass)
    breaks_cycles: ClassVar[bool] = False

    def __post_init__(self):
        self.inputs = tuple(self.inputs)
        if not self.name or not isinstance(self.name, str):
            raise IRError("node name must be a non-empty string", node=str(self.name))
        for a in self.arrays:
            v = getattr(self, a)
            if v is not None:
                setattr(self, a, _arr(v, a, self))
        self.validate()

    @property
    def op(self) -> str:
        return type(self).__name__

    def validate(self) -> None:
        """Checks that need no input shapes (parameter sanity)."""

    def infer(self, shapes: list[Shape], kinds: list[Kind]) -> tuple[Shape, Kind]:
        raise NotImplementedError

    def attrs(self) -> dict:
        """Non-array, non-structural fields (for printing and serialisation)."""
        skip = {"name", "inputs", "path", "shape", "kind", *self.arrays}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}

    def param_count(self) -> int:
        return int(sum(getattr(self, a).size for a in self.arrays if getattr(self, a) is not None))

    def fail(self, msg: str, cls=ShapeError):
        raise cls(msg, node=self.name, path=self.path)


def _check_pair(n: Node, a: tuple, what: str):
    if len(a) != 2 or any(int(v) < 0 for v in a):
        n.fail(f"{what} must be two non-negative ints, got {a}", IRError)


def _conv_out(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


# ----------------------------------------------------------------------------- sources / sinks


@dataclass(eq=False)
class Input(Node):
    """Model input. ``static``: one value ``[B, *shape]`` presented at every step (an image
    repeated over T); otherwise a sequence ``[T, B, *shape]``. ``input_kind``: spike or real."""

    input_shape: Shape = ()
    input_kind: Kind = Kind.REAL
    static: bool = False
    arity: ClassVar[int | None] = 0

    def validate(self):
        self.input_shape = tuple(int(s) for s in self.input_shape)
        self.input_kind = Kind(self.input_kind)
        if any(s <= 0 for s in self.input_shape):
            self.fail(f"input shape must be positive, got {self.input_shape}")

    def infer(self, shapes, kinds):
        return self.input_shape, self.input_kind


@dataclass(eq=False)
class Output(Node):
    """Model output: passes its input through; the value at the last step is the result."""

    def infer(self, shapes, kinds):
        return shapes[0], kinds[0]


# ----------------------------------------------------------------------------- synapses


@dataclass(eq=False)
class Conv2d(Node):
    """y = conv2d(x, weight, bias, stride, padding, dilation, groups); x: (C_in, H, W),
    weight: (C_out, C_in/groups, kH, kW)."""

    weight: np.ndarray = None
    bias: np.ndarray | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    arrays: ClassVar = ("weight", "bias")
    float32_arrays: ClassVar = ("weight",)

    def validate(self):
        self.stride, self.padding, self.dilation = (tuple(int(v) for v in t) for t in
                                                    (self.stride, self.padding, self.dilation))
        for nm in ("stride", "padding", "dilation"):
            _check_pair(self, getattr(self, nm), nm)
        if self.weight is None or self.weight.ndim != 2 + len(self.stride):
            self.fail(f"weight must be {2 + len(self.stride)}-D")
        c_out = self.weight.shape[0]
        if self.groups < 1 or c_out % self.groups:
            self.fail(f"groups={self.groups} does not divide C_out={c_out}", IRError)
        if self.bias is not None and self.bias.shape != (c_out,):
            self.fail(f"bias shape {self.bias.shape} != ({c_out},)")

    def infer(self, shapes, kinds):
        (s,) = shapes
        nd = len(self.stride)
        if len(s) != nd + 1:
            self.fail(f"expects a {nd + 1}-D (C, spatial...) input, got shape {s}")
        c_in = self.weight.shape[1] * self.groups
        if s[0] != c_in:
            self.fail(f"expects {c_in} input channels, got {s[0]} (input shape {s})")
        out = tuple(_conv_out(s[i + 1], self.weight.shape[2 + i], self.stride[i], self.padding[i],
                              self.dilation[i]) for i in range(nd))
        if any(o <= 0 for o in out):
            self.fail(f"output size {out} is empty for input {s}")
        return (self.weight.shape[0], *out), Kind.REAL

    def fan_in(self) -> int:
        return int(np.prod(self.weight.shape[1:]))


@dataclass(eq=False)
class Conv1d(Conv2d):
    """y = conv1d(x, weight, bias, stride, padding, dilation, groups); x: (C_in, L),
    weight: (C_out, C_in/groups, K)."""

    stride: tuple[int] = (1,)
    padding: tuple[int] = (0,)
    dilation: tuple[int] = (1,)

    def validate(self):
        self.stride, self.padding, self.dilation = (tuple(int(v) for v in t) for t in
                                                    (self.stride, self.padding, self.dilation))
        if not (len(self.stride) == len(self.padding) == len(self.dilation) == 1):
            self.fail("stride, padding and dilation must have one entry", IRError)
        if self.weight is None or self.weight.ndim != 3:
            self.fail("weight must be 3-D (C_out, C_in/groups, K)")
        c_out = self.weight.shape[0]
        if self.groups < 1 or c_out % self.groups:
            self.fail(f"groups={self.groups} does not divide C_out={c_out}", IRError)
        if self.bias is not None and self.bias.shape != (c_out,):
            self.fail(f"bias shape {self.bias.shape} != ({c_out},)")


@dataclass(eq=False)
class Linear(Node):
    """y = x @ weight.T + bias over the last axis; x: (..., in), weight: (out, in)."""

    weight: np.ndarray = None
    bias: np.ndarray | None = None
    arrays: ClassVar = ("weight", "bias")
    float32_arrays: ClassVar = ("weight",)

    def validate(self):
        if self.weight is None or self.weight.ndim != 2:
            self.fail("weight must be 2-D (out, in)")
        if self.bias is not None and self.bias.shape != (self.weight.shape[0],):
            self.fail(f"bias shape {self.bias.shape} != ({self.weight.shape[0]},)")

    def infer(self, shapes, kinds):
        (s,) = shapes
        if not s or s[-1] != self.weight.shape[1]:
            self.fail(f"expects last axis {self.weight.shape[1]}, got input shape {s}")
        return (*s[:-1], self.weight.shape[0]), Kind.REAL

    def fan_in(self) -> int:
        return int(self.weight.shape[1])


def batchnorm_scale_shift(weight, bias, mean, var, eps) -> tuple[np.ndarray, np.ndarray]:
    """(a, c) of inference BN as y = a * x + c: a = weight / sqrt(var + eps), c = bias - a * mean
    (float64 arrays, one per channel)."""
    a = weight / np.sqrt(var + eps)
    return a, bias - a * mean


@dataclass(eq=False)
class BatchNorm(Node):
    """Inference BN along ``axis`` (of the shape without batch):
    y = (x - mean) / sqrt(var + eps) * weight + bias  ==  a * x + c with
    a = weight / sqrt(var + eps), c = bias - a * mean."""

    weight: np.ndarray = None
    bias: np.ndarray = None
    mean: np.ndarray = None
    var: np.ndarray = None
    eps: float = 1e-5
    axis: int = 0
    arrays: ClassVar = ("weight", "bias", "mean", "var")

    def validate(self):
        c = None if self.mean is None else self.mean.shape
        for nm in self.arrays:
            v = getattr(self, nm)
            if v is None or v.ndim != 1 or v.shape != c:
                self.fail(f"'{nm}' must be 1-D of the same length as 'mean'")
        if np.any(self.var < 0) or not self.eps >= 0:
            self.fail("variance and eps must be non-negative", IRError)

    def infer(self, shapes, kinds):
        (s,) = shapes
        if not (0 <= self.axis < len(s)) or s[self.axis] != self.mean.shape[0]:
            self.fail(f"channel axis {self.axis} of input shape {s} != {self.mean.shape[0]} channels")
        return s, Kind.REAL

    def scale_shift(self) -> tuple[np.ndarray, np.ndarray]:
        """(a, c) of y = a * x + c, per channel."""
        return batchnorm_scale_shift(self.weight, self.bias, self.mean, self.var, self.eps)

    @classmethod
    def affine(cls, name: str, inputs: tuple, weight, bias, path: str = "") -> "BatchNorm":
        """y = weight * x + bias per channel of axis 0, in one rounding: the statistics make
        the normalisation the identity (mean 0, variance 1, eps 0)."""
        weight = np.asarray(weight, dtype=np.float64)
        n = weight.size
        return cls(name, tuple(inputs), path=path, weight=weight,
                   bias=np.array(bias, dtype=np.float64), mean=np.zeros(n), var=np.ones(n),
                   eps=0.0)

    def param_count(self) -> int:
        return int(self.weight.size + self.bias.size)  # running stats are buffers, not parameters


# ----------------------------------------------------------------------------- neurons


@dataclass(eq=False)
class Neuron(Node):
    """The canonical neuron (snncc.neuron; DESIGN.md)::

        h[t] = alpha * v[t-1] + gamma * x[t] + beta
        s[t] = h[t] CMP theta           (CMP: '>=' or '>')
        v[t] = v_reset if s[t] else h[t]   (reset='hard')  |  h[t] - theta * s[t]  (reset='soft')
        v[-1] = v_init

    Each parameter is an array broadcastable to the node's shape (a scalar, or per channel
    such as (C, 1, 1), or per neuron)."""

    alpha: np.ndarray = 0.5
    gamma: np.ndarray = 1.0
    beta: np.ndarray = 0.0
    theta: np.ndarray = 1.0
    v_reset: np.ndarray = 0.0
    v_init: np.ndarray = 0.0
    cmp: str = _neuron.CMP_GE
    reset: str = _neuron.RESET_HARD
    arrays: ClassVar = ("alpha", "gamma", "beta", "theta", "v_reset", "v_init")

    def validate(self):
        if self.cmp not in _neuron.CMPS:
            self.fail(f"cmp must be one of {_neuron.CMPS}, got {self.cmp!r}", IRError)
        if self.reset not in _neuron.RESETS:
            self.fail(f"reset must be one of {_neuron.RESETS}, got {self.reset!r}", IRError)

    def infer(self, shapes, kinds):
        (s,) = shapes
        for nm in self.arrays:
            a = getattr(self, nm)
            if not _broadcasts_to(a.shape, s):
                self.fail(f"parameter '{nm}' of shape {a.shape} does not broadcast to {s}")
        return s, Kind.SPIKE

    def params(self) -> dict:
        return {nm: getattr(self, nm) for nm in self.arrays}

    def param_count(self) -> int:
        return 0  # neuron constants are not trained weights



# ----------------------------------------------------------------------------- pooling, shape


@dataclass(eq=False)
class MaxPool2d(Node):
    """y = max over kernel windows (padding with -inf); x: (C, H, W)."""

    kernel_size: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False

    def validate(self):
        for nm in ("kernel_size", "stride", "padding", "dilation"):
            setattr(self, nm, tuple(int(v) for v in getattr(self, nm)))
            _check_pair(self, getattr(self, nm), nm)
        if self.ceil_mode:
            self.fail("ceil_mode=True is not supported", IRError)

    def infer(self, shapes, kinds):
        (s,) = shapes
        if len(s) != 3:
            self.fail(f"expects (C, H, W), got {s}")
        hw = tuple(_conv_out(s[i + 1], self.kernel_size[i], self.stride[i], self.padding[i],
                             self.dilation[i]) for i in range(2))
        if any(v <= 0 for v in hw):
            self.fail(f"output size {hw} is empty for input {s}")
        return (s[0], *hw), kinds[0]


@dataclass(eq=False)
class AvgPool2d(Node):
    """y[c, i, j] = (sum of x over window (i, j), zero padding included) / divisors[i, j]:
    kH kW everywhere when ``count_include_pad`` (torch's default), else the number of the
    window's positions inside the input (PoolFormer's token mixer; :meth:`divisors`)."""

    kernel_size: tuple[int, int] = (2, 2)
    stride: tuple[int, int] = (2, 2)
    padding: tuple[int, int] = (0, 0)
    count_include_pad: bool = True

    def validate(self):
        for nm in ("kernel_size", "stride", "padding"):
            setattr(self, nm, tuple(int(v) for v in getattr(self, nm)))
            _check_pair(self, getattr(self, nm), nm)
        # without padding every window lies inside the input: one form of the same op
        self.count_include_pad = bool(self.count_include_pad) or not any(self.padding)

    def divisors(self, in_hw: tuple[int, int]) -> np.ndarray:
        """(H_out, W_out): what each window's sum is divided by, as torch's CPU kernel does
        (the window clipped to the padded input, then, without count_include_pad, to the
        input itself)."""
        counts = []
        for size, k, s, p in zip(in_hw, self.kernel_size, self.stride, self.padding):
            start = np.arange(_conv_out(size, k, s, p)) * s - p
            end = np.minimum(start + k, size + p)
            if not self.count_include_pad:
                start, end = np.maximum(start, 0), np.minimum(end, size)
            counts.append(end - start)
        return np.outer(*counts).astype(np.float64)

    def infer(self, shapes, kinds):
        (s,) = shapes
        if len(s) != 3:
            self.fail(f"expects (C, H, W), got {s}")
        hw = tuple(_conv_out(s[i + 1], self.kernel_size[i], self.stride[i], self.padding[i])
                   for i in range(2))
        if any(v <= 0 for v in hw):
            self.fail(f"output size {hw} is empty for input {s}")
        return (s[0], *hw), Kind.REAL


@dataclass(eq=False)
class Pad(Node):
    """Constant padding of the last two axes of (C, H, W) by ``pads`` = (left, right, top,
    bottom), with a per-channel fill ``value`` (RepConv's BN-value padding)."""

    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    value: np.ndarray = 0.0
    arrays: ClassVar = ("value",)

    def validate(self):
        self.pads = tuple(int(p) for p in self.pads)
        if len(self.pads) != 4 or min(self.pads) < 0:
            self.fail(f"pads must be 4 non-negative ints, got {self.pads}", IRError)

    def infer(self, shapes, kinds):
        (s,) = shapes
        if len(s) != 3 or self.value.size not in (1, s[0]):
            self.fail(f"expects (C, H, W) with 1 or C fill values, got {s} and {self.value.size}")
        l, r, t, b = self.pads
        kind = kinds[0] if np.all(self.value == 0) else Kind.REAL
        return (s[0], s[1] + t + b, s[2] + l + r), kind

    def param_count(self) -> int:
        return 0


@dataclass(eq=False)
class Reshape(Node):
    """y = x.reshape(shape) (row-major, per sample)."""

    target: Shape = ()

    def validate(self):
        self.target = tuple(int(v) for v in self.target)

    def infer(self, shapes, kinds):
        (s,) = shapes
        if math.prod(s) != math.prod(self.target):
            self.fail(f"cannot reshape {s} ({math.prod(s)} values) to {self.target}")
        return self.target, kinds[0]


@dataclass(eq=False)
class Flatten(Node):
    """y = x.flatten(start, end) (axes of the shape without batch)."""

    start: int = 0
    end: int = -1

    def infer(self, shapes, kinds):
        (s,) = shapes
        n = len(s)
        a, b = self.start % n if n else 0, self.end % n if n else 0
        if not (0 <= a <= b < n):
            self.fail(f"cannot flatten axes {self.start}..{self.end} of {s}")
        return (*s[:a], math.prod(s[a:b + 1]), *s[b + 1:]), kinds[0]


@dataclass(eq=False)
class Gather(Node):
    """y = take(x, index, axis): the positions ``index`` of one axis (of the shape without
    batch), each any number of times, in any order; nearest-neighbour resampling to any size is
    one Gather per resampled axis, linear resampling two (each Scaled by its weights, added)."""

    axis: int = 0
    index: tuple[int, ...] = ()

    def validate(self):
        whole = (int, np.integer)
        if not all(isinstance(i, whole) and not isinstance(i, bool)
                   for i in (self.axis, *self.index)):
            self.fail("axis and index must be integers", IRError)
        self.axis, self.index = int(self.axis), tuple(int(i) for i in self.index)
        if not self.index or min(self.index) < 0:
            self.fail(f"index must be non-empty and non-negative, got {self.index[:8]}", IRError)

    def infer(self, shapes, kinds):
        (s,) = shapes
        if not -len(s) <= self.axis < len(s) or max(self.index) >= s[self.axis]:
            self.fail(f"index up to {max(self.index)} on axis {self.axis} does not fit shape {s}")
        out = list(s)
        out[self.axis] = len(self.index)
        return tuple(out), kinds[0]


@dataclass(eq=False)
class Transpose(Node):
    """y = x.permute(perm) (axes of the shape without batch)."""

    perm: tuple[int, ...] = ()

    def validate(self):
        self.perm = tuple(int(p) for p in self.perm)
        if sorted(self.perm) != list(range(len(self.perm))):
            self.fail(f"perm {self.perm} is not a permutation", IRError)

    def infer(self, shapes, kinds):
        (s,) = shapes
        if len(s) != len(self.perm):
            self.fail(f"perm {self.perm} does not fit shape {s}")
        return tuple(s[p] for p in self.perm), kinds[0]


# ----------------------------------------------------------------------------- arithmetic


def _broadcasts_to(shape: Shape, target: Shape) -> bool:
    """Whether numpy broadcasts an array of ``shape`` to ``target`` (in Python: numpy's
    ``broadcast_shapes`` for each of a neuron's six parameters was a third of verifying a graph,
    which every pass does)."""
    return len(shape) <= len(target) and all(a == 1 or a == b
                                              for a, b in zip(reversed(shape), reversed(target)))


def _broadcast(node: Node, shapes) -> Shape:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        node.fail(f"input shapes {list(shapes)} do not broadcast")


@dataclass(eq=False)
class Add(Node):
    """y = sum of all inputs (numpy broadcasting), added left to right."""

    arity: ClassVar = None

    def infer(self, shapes, kinds):
        if len(kinds) == 1:
            return shapes[0], kinds[0]
        # two spikes can sum to 2: a sum of spikes is a count, never spikes
        return _broadcast(self, shapes), (Kind.COUNT if all(k.integral for k in kinds)
                                          else Kind.REAL)


@dataclass(eq=False)
class Scale(Node):
    """y = x * factor (factor broadcastable to the shape: scalar, per channel or per element)."""

    factor: np.ndarray = 1.0
    arrays: ClassVar = ("factor",)

    def infer(self, shapes, kinds):
        (s,) = shapes
        if _broadcast(self, [s, self.factor.shape]) != tuple(s):
            self.fail(f"factor of shape {self.factor.shape} does not broadcast to {s}")
        return s, Kind.REAL

    def param_count(self) -> int:
        return 0


@dataclass(eq=False)
class Divide(Node):
    """y = x / divisor (divisor broadcastable to the shape, non-zero): the IEEE quotient, which a
    Scale by 1 / divisor is not but where the divisor is a power of two (tdBN's
    ``(x - mean) / sqrt(var + eps)``)."""

    divisor: np.ndarray = 1.0
    arrays: ClassVar = ("divisor",)

    def validate(self):
        if not np.all(self.divisor != 0):
            self.fail("divisor has a zero", IRError)

    def infer(self, shapes, kinds):
        (s,) = shapes
        if _broadcast(self, [s, self.divisor.shape]) != tuple(s):
            self.fail(f"divisor of shape {self.divisor.shape} does not broadcast to {s}")
        return s, Kind.REAL

    def param_count(self) -> int:
        return 0


@dataclass(eq=False)
class Hadamard(Node):
    """y = a * b elementwise with broadcasting; with spike operands this is a spike AND, with a
    count (a sum of spikes) the other operand added count times."""

    arity: ClassVar = 2

    def infer(self, shapes, kinds):
        if not any(k.integral for k in kinds):
            self.fail("at least one operand must be spikes or a count of spikes", IRError)
        return _broadcast(self, shapes), Kind.join(kinds)


def _matmul_shape(node: Node, a: Shape, b: Shape) -> Shape:
    if len(a) < 2 or len(b) < 2 or a[-1] != b[-2]:
        node.fail(f"cannot multiply {a} by {b}")
    batch = _broadcast(node, [a[:-2], b[:-2]])
    return (*batch, a[-2], b[-1])


@dataclass(eq=False)
class SpikeMatMul(Node):
    """y = a @ b (batched over leading axes) where at least one operand is spikes (or counts),
    so every product is a selection (repeated count times) and the matmul is a sum of selected
    values."""

    arity: ClassVar = 2

    def infer(self, shapes, kinds):
        if not any(k.integral for k in kinds):
            self.fail(f"needs a spike or count operand, got kinds {[k.value for k in kinds]}",
                      IRError)
        return _matmul_shape(self, *shapes), (Kind.COUNT if all(k.integral for k in kinds)
                                              else Kind.REAL)


def address_operand(kinds) -> int:
    """Which operand of a spike matmul addresses the other's rows: spikes (one addition per 1),
    else counts (c additions per count c); the left one on a tie."""
    order = {Kind.SPIKE: 0, Kind.COUNT: 1}
    return int(order.get(kinds[1], 2) < order.get(kinds[0], 2))


@dataclass(eq=False)
class AddressedAccumulate(Node):
    """The addition-only form of a spike matmul. With spikes S and rows R:

        spike_operand = 0:  y = S @ R,  y[..., n, :] = sum over i with S[..., n, i] = 1 of R[..., i, :]
        spike_operand = 1:  y = R @ S,  y[..., :, m] = sum over i with S[..., i, m] = 1 of R[..., :, i]

    Each spike is an address selecting a row (column) to add; the additions performed per step
    are (number of spikes) x (row length), which the simulator counts. S may be counts (integer
    spikes, Spike-Driven Transformer V3's): a count c adds its row c times."""

    spike_operand: int = 0
    arity: ClassVar = 2

    def validate(self):
        if self.spike_operand not in (0, 1):
            self.fail("spike_operand must be 0 or 1", IRError)

    def infer(self, shapes, kinds):
        if not kinds[self.spike_operand].integral:
            self.fail(f"operand {self.spike_operand} must be spikes or counts", IRError)
        return _matmul_shape(self, *shapes), (Kind.COUNT if all(k.integral for k in kinds)
                                              else Kind.REAL)


@dataclass(eq=False)
class Sum(Node):
    """y = x.sum(axes, keepdim) (axes of the shape without batch)."""

    axes: tuple[int, ...] = (0,)
    keepdim: bool = False

    def validate(self):
        self.axes = tuple(int(a) for a in self.axes)

    def _reduced(self, s: Shape) -> Shape:
        ax = {a % len(s) for a in self.axes} if s else set()
        if not s or len(ax) != len(self.axes):
            self.fail(f"axes {self.axes} do not fit shape {s}")
        return tuple(1 if i in ax else d for i, d in enumerate(s) if self.keepdim or i not in ax)

    def infer(self, shapes, kinds):
        return self._reduced(shapes[0]), (Kind.COUNT if kinds[0].integral else Kind.REAL)


@dataclass(eq=False)
class Mean(Sum):
    """y = x.mean(axes, keepdim)."""

    def infer(self, shapes, kinds):
        return self._reduced(shapes[0]), Kind.REAL


@dataclass(eq=False)
class Concat(Node):
    """y = concatenate(inputs, axis) (axis of the shape without batch)."""

    axis: int = 0
    arity: ClassVar = None

    def infer(self, shapes, kinds):
        s0 = shapes[0]
        ax = self.axis % len(s0) if s0 else 0
        for s in shapes:
            if len(s) != len(s0) or any(a != b for i, (a, b) in enumerate(zip(s, s0)) if i != ax):
                self.fail(f"cannot concatenate shapes {list(shapes)} on axis {self.axis}")
        out = list(s0)
        out[ax] = sum(s[ax] for s in shapes)
        return tuple(out), Kind.join(kinds)


# ----------------------------------------------------------------------------- time


@dataclass(eq=False)
class Delay(Node):
    """y[t] = x[t - steps], and 0 for t < steps. The only node a cycle may pass through; a
    Delay that closes a cycle declares the shape and kind it carries (``shape_hint``)."""

    steps: int = 1
    shape_hint: Shape | None = None
    kind_hint: Kind = Kind.SPIKE
    breaks_cycles: ClassVar = True

    def validate(self):
        if int(self.steps) < 1:
            self.fail(f"steps must be >= 1, got {self.steps}", IRError)
        self.steps = int(self.steps)
        self.kind_hint = Kind(self.kind_hint)
        if self.shape_hint is not None:
            self.shape_hint = tuple(int(v) for v in self.shape_hint)
            self.shape, self.kind = self.shape_hint, self.kind_hint

    def infer(self, shapes, kinds):
        return shapes[0], kinds[0]


def started_delay(name: str, delayed: str, start: np.ndarray, path: str = "") -> list[Node]:
    """The nodes of x[t - 1] that is ``start`` (an array of x's shape) at t = 0, from
    ``delayed``, a Delay of x by one step (0 at t = 0): ``delayed + start * (1 - Delay(1))``,
    the ones a BatchNorm of scale 0 and bias 1, each element its own channel; exact, as
    ``start - start * 1`` is 0. Named ``{name}.{part}``, the last, the result, ``name``."""
    start = np.asarray(start, dtype=np.float64)
    n = start.size
    return [
        Reshape(f"{name}.flat", (delayed,), path=path, target=(n,)),
        BatchNorm.affine(f"{name}.ones", (f"{name}.flat",), np.zeros(n), np.ones(n), path),
        Delay(f"{name}.after_first", (f"{name}.ones",), path=path, steps=1, shape_hint=(n,),
              kind_hint=Kind.REAL),  # (in the loop of the state it starts)
        BatchNorm.affine(f"{name}.first", (f"{name}.after_first",), -start.ravel(),
                         start.ravel(), path),
        Reshape(f"{name}.start", (f"{name}.first",), path=path, target=start.shape),
        Add(name, (delayed, f"{name}.start"), path=path)]


@dataclass(eq=False)
class Readout(Node):
    """Mean over time: y[t] = (x[0] + ... + x[t]) / (t + 1); the model output reads y[T-1]."""

    def infer(self, shapes, kinds):
        return shapes[0], Kind.REAL


NODE_TYPES: dict[str, type[Node]] = {
    cls.__name__: cls for cls in (
        Input, Output, Conv1d, Conv2d, Linear, BatchNorm, Neuron, MaxPool2d, AvgPool2d, Pad,
        Reshape, Flatten, Transpose, Gather, Add, Scale, Divide, Hadamard, SpikeMatMul,
        AddressedAccumulate, Sum, Mean, Concat, Delay, Readout)
}
