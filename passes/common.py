"""Helpers the passes share: declining with a reason, compact neuron parameters, dividing a
neuron's membrane, and the *linear input region* of a neuron whose synapses can absorb a
per-channel factor.

**Dividing the membrane.** If a neuron's input is ``x = k * (g * x' + e)`` with k > 0 (per
element), dividing its whole membrane by k gives an equivalent neuron on ``x'``::

    h/k = alpha * (v/k) + (gamma * g) * x' + (gamma * e + beta / k)

so gamma' = gamma g, beta' = gamma e + beta/k, theta' = theta/k, v_reset' = v_reset/k,
v_init' = v_init/k; alpha, the comparison and the reset mode are unchanged. Because k > 0,
``h >= theta <=> h/k >= theta/k`` and the same for ``>``; a hard reset sets v/k = v_reset/k and
a soft reset subtracts (theta/k) s from h/k, so the whole trajectory is the original one divided
by k and every spike is the same. When k is a power of two every one of these operations is
exact in floating point; otherwise the trajectories agree up to rounding.

**The input region.** Walking back from a neuron's input through nodes that commute with a
positive factor per channel (layout: Transpose, Reshape, Flatten; MaxPool2d and AvgPool2d, which
act within a channel and pad with -inf or 0; Add, which is linear) reaches *branches*, each a
conv/linear synapse, optionally followed (through layout nodes only) by a BatchNorm ``a y + c``.
Every node of the region must feed only the next one, so rescaling it changes nothing else.
Giving synapse channel j the weights ``(a_j / k_j) W_j`` and bias ``(a_j b_j + c_j) / k_j``
makes it output the BN's value divided by k_j; if k_j is the k of every neuron element that
channel reaches (through every branch), the region's output is divided by k exactly where the
membrane is, and :func:`scale_region` removes the BNs and divides the membrane. Which synapse
channel reaches which neuron element is found by carrying channel labels (integer arrays)
through the region's nodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from snncc import ir
from snncc.graph import Graph, node_with

SYNAPSES = (ir.Conv1d, ir.Conv2d, ir.Linear)
LAYOUT = (ir.Transpose, ir.Reshape, ir.Flatten)
POOLS = (ir.MaxPool2d, ir.AvgPool2d)


class Decline(Exception):
    """A rewrite does not apply at this place; ``str(self)`` is the one-line reason, naming
    the node."""


def where(node: ir.Node) -> str:
    """``'name' (module path)`` for messages."""
    return f"'{node.name}'" + (f" ({node.path})" if node.path else "")


def is_power_of_two(x) -> bool:
    """Every entry is +-2^k, so multiplying or dividing by it is exact in floating point."""
    m, _ = np.frexp(np.asarray(x, dtype=np.float64))
    return bool(np.all(np.abs(m) == 0.5))


# Error-free float64 arithmetic tests: does an operation round anywhere? (Dekker's product and
# Knuth's sum give the rounding error exactly; magnitudes are kept far from overflow and
# underflow, where those identities fail, and such values count as rounding.)
_SAFE = (2.0 ** -400, 2.0 ** 400)


def _safe(*xs) -> np.ndarray:
    return np.logical_and.reduce([(x == 0) | ((np.abs(x) > _SAFE[0]) & (np.abs(x) < _SAFE[1]))
                                  for x in xs])


def _split(x):
    c = 134217729.0 * x  # 2^27 + 1: Veltkamp's split into two 26-bit halves
    hi = c - (c - x)
    return hi, x - hi


def exact_mul(x, y) -> bool:
    """Whether every ``x * y`` (broadcast, float64) is the real product, unrounded."""
    x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
    with np.errstate(all="ignore"):
        p = x * y
        (xh, xl), (yh, yl) = _split(x), _split(y)
        err = ((xh * yh - p) + xh * yl + xl * yh) + xl * yl
    return bool(np.all(_safe(x, y, p) & (err == 0)))


def exact_add(x, y) -> bool:
    """Whether every ``x + y`` (broadcast, float64) is the real sum, unrounded."""
    x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
    with np.errstate(all="ignore"):
        s = x + y
        yy = s - x
        err = (x - (s - yy)) + (y - yy)
    return bool(np.all(_safe(x, y, s) & (err == 0)))


def exact_div(x, y) -> bool:
    """Whether every ``x / y`` (broadcast, float64, y != 0) is the real quotient, unrounded."""
    x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
    if np.any(y == 0):
        return False
    with np.errstate(all="ignore"):
        q = x / y
    return exact_mul(q, y) and bool(np.all(q * y == x))


def unbroadcast(a: np.ndarray) -> np.ndarray:
    """``a`` with size 1 along every axis it is broadcast along (stride 0): the same values
    wherever it is broadcast back, without computing on the copies."""
    return a[tuple(slice(0, 1) if step == 0 else slice(None) for step in a.strides)]


def compact(a, shape) -> np.ndarray:
    """The smallest array that broadcasts to ``shape`` with the values of ``a`` broadcast to it:
    size 1 along every axis on which it is constant, leading size-1 axes dropped (a scalar
    when uniform)."""
    a = unbroadcast(np.broadcast_to(np.asarray(a, dtype=np.float64), shape))
    for ax in range(a.ndim):
        first = a.take([0], axis=ax)
        if np.array_equal(a, np.broadcast_to(first, a.shape)):
            a = first
    while a.ndim and a.shape[0] == 1:
        a = a[0]
    return np.array(a)


def divide_membrane(n: ir.Neuron, k, g=1.0, e=0.0) -> ir.Neuron:
    """The neuron on x' equivalent to ``n`` on ``x = k * (g * x' + e)``, k > 0 (module doc)."""
    k = compact(k, n.shape)  # parameters stay per channel (or uniform) where they are
    if not np.all(k > 0):
        raise ValueError("the membrane can only be divided by a positive factor")
    p = n.params()
    return node_with(
        n, gamma=compact(p["gamma"] * g, n.shape),
        beta=compact(p["gamma"] * e + p["beta"] / k, n.shape),
        theta=compact(p["theta"] / k, n.shape), v_reset=compact(p["v_reset"] / k, n.shape),
        v_init=compact(p["v_init"] / k, n.shape))


def single_consumer(graph: Graph, name: str, reader: str, cons: dict) -> None:
    """Declines unless ``reader`` is the only consumer of ``name``, reading it once."""
    if cons[name] != [reader]:
        others = ", ".join(repr(c) for c in cons[name] if c != reader) or f"'{reader}' twice"
        raise Decline(f"{where(graph[name])} also feeds {others}")


# ----------------------------------------------------------------------------- channel labels


def channel_labels(node: ir.Node) -> np.ndarray:
    """The output channel (conv: axis 0, linear: last axis) of every output element."""
    shape = node.shape
    ax = len(shape) - 1 if isinstance(node, ir.Linear) else 0
    return axis_labels(shape, ax)


def axis_labels(shape, axis: int) -> np.ndarray:
    """The index along ``axis`` of every element of ``shape``."""
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return np.broadcast_to(np.arange(shape[axis]).reshape(view), shape)


def carry_labels(node: ir.Node, labels: np.ndarray) -> np.ndarray:
    """Where the elements of the input of ``node`` (a layout, pooling or Add node) go in its
    output: labels of the output. Pools act within a channel (axis 0), so their input's labels
    must be constant over (H, W); an Add broadcasts its inputs."""
    if isinstance(node, ir.Transpose):
        return labels.transpose(node.perm)
    if isinstance(node, (ir.Reshape, ir.Flatten)):
        return labels.reshape(node.shape)
    if isinstance(node, POOLS):
        if not np.array_equal(labels, np.broadcast_to(labels[:, :1, :1], labels.shape)):
            raise Decline(f"{where(node)} pools across elements of different channels")
        return np.broadcast_to(labels[:, :1, :1], node.shape)
    return np.broadcast_to(labels, node.shape)


def per_label(values: np.ndarray, labels: np.ndarray, count: int, what: str) -> np.ndarray:
    """``values`` (one per element; broadcast with ``labels``) as one per label; declines if a
    label's values differ."""
    labels, values = np.broadcast_arrays(labels, values)
    # an axis along which both are broadcast repeats the same (label, value) pairs
    keep = tuple(slice(0, 1) if a == 0 and b == 0 else slice(None)
                 for a, b in zip(labels.strides, values.strides))
    labels, values = labels[keep].ravel(), values[keep].ravel()
    out, seen = np.empty(count), np.zeros(count, dtype=bool)
    out[labels], seen[labels] = values, True  # one of each label's values (ufunc.at is slow)
    if not seen.all() or np.any(out[labels] != values):
        raise Decline(f"{what} differs between elements of one channel")
    return out


# ----------------------------------------------------------------------------- input regions


@dataclass
class Branch:
    """A synapse whose output reaches a region's output, with the BN (if any) right after it.
    ``a``, ``c``: the BN's y = a x + c per *synapse* channel (1, 0 without a BN); ``labels``:
    the synapse channel of every element of the region's output."""

    synapse: ir.Node
    bn: ir.BatchNorm | None
    a: np.ndarray
    c: np.ndarray
    labels: np.ndarray

    @property
    def channels(self) -> int:
        return self.synapse.weight.shape[0]


def bn_branch(graph: Graph, bn: ir.BatchNorm, cons: dict, through=frozenset()) -> Branch:
    """The synapse a BN can be folded into: its input reached through layout nodes (and the BNs
    named in ``through``, to be folded into it first) that feed only the next node; ``labels``
    are at the BN's output."""
    chain, name = [], bn.inputs[0]
    reader = bn.name
    while True:
        single_consumer(graph, name, reader, cons)
        node = graph[name]
        if isinstance(node, SYNAPSES):
            break
        if not (isinstance(node, LAYOUT) or name in through):
            raise Decline(f"its input {where(node)} ({node.op}) is not a conv/linear it could "
                          "be folded into")
        chain.append(node)
        reader, name = name, node.inputs[0]
    labels = channel_labels(node)
    for n in reversed(chain):
        labels = carry_labels(n, labels)
    bn_ch = axis_labels(labels.shape, bn.axis)
    bn_of = per_label(bn_ch, labels, node.weight.shape[0], "the BN channel").astype(int)
    a, c = bn.scale_shift()
    return Branch(node, bn, a[bn_of], c[bn_of], labels)


def nodes_between(graph: Graph, branch: Branch) -> list[str]:
    """The nodes from the branch's BN's input up to its synapse, the synapse not included."""
    out, name = [], branch.bn.inputs[0]
    while name != branch.synapse.name:
        out.append(name)
        name = graph[name].inputs[0]
    return out


def input_region(graph: Graph, neuron: ir.Neuron, cons: dict) -> list[Branch]:
    """The branches of the linear region feeding ``neuron`` (module doc), labels at the
    neuron; declines naming the first node that does not fit."""

    def walk(name: str, reader: str) -> list[Branch]:
        single_consumer(graph, name, reader, cons)
        node = graph[name]
        if isinstance(node, SYNAPSES):
            return [Branch(node, None, np.ones(node.weight.shape[0]),
                           np.zeros(node.weight.shape[0]), channel_labels(node))]
        if isinstance(node, ir.BatchNorm):
            return [bn_branch(graph, node, cons)]
        if isinstance(node, ir.Add):
            branches = [b for i in node.inputs for b in walk(i, name)]
        elif isinstance(node, LAYOUT + POOLS):
            branches = walk(node.inputs[0], name)
        else:
            raise Decline(f"{where(node)} ({node.op}) between the synapses and neuron "
                          f"{where(neuron)} is not linear per channel")
        for b in branches:
            b.labels = carry_labels(node, b.labels)
        return branches

    return walk(neuron.inputs[0], neuron.name)


def scale_region(graph: Graph, neuron: ir.Neuron, branches: list[Branch], k) -> None:
    """Divide ``neuron``'s input by k (> 0 per neuron element) and remove the branches' BNs:
    synapse channel j of a branch becomes (a_j W_j x + a_j b_j + c_j) / k_j, i.e. the BN's
    output divided by k, and the neuron's membrane is divided by k (:func:`divide_membrane`).
    Checks everything before changing the graph; declines if k differs within a channel."""
    k = np.broadcast_to(np.asarray(k, dtype=np.float64), neuron.shape)
    new = []
    for b in branches:
        k_syn = per_label(k, b.labels, b.channels,
                          f"the factor for {where(b.synapse)} into {where(neuron)}")
        new.append(scaled_synapse(b.synapse, b.a / k_syn, b.c / k_syn))
    for b, syn in zip(branches, new):
        graph.replace(syn.name, syn)
        if b.bn is not None:
            bypass(graph, b.bn.name)
    graph.replace(neuron.name, divide_membrane(neuron, k))


def scaled_synapse(node: ir.Node, w: np.ndarray, shift: np.ndarray) -> ir.Node:
    """The synapse computing ``w * (W x + b) + shift`` per output channel."""
    weight, bias = _scaled_arrays(node.weight, node.bias, w, shift, lazy=False)
    return node_with(node, weight=weight, bias=bias)


def folded_synapse_arrays(node: ir.Node, branches: list[Branch]):
    """The weight and bias (None: none) of ``node`` with the BNs of ``branches`` folded in one
    after the other, as :func:`scaled_synapse` folds each: the scaled weights as a
    :class:`ChannelScaled`, computed when a writer converts them, one layer at a time."""
    weight, bias = node.weight, node.bias
    for b in branches:
        weight, bias = _scaled_arrays(weight, bias, b.a, b.c, lazy=True)
    return weight, bias


def _scaled_arrays(weight, bias, w: np.ndarray, shift: np.ndarray, lazy: bool):
    view = (-1,) + (1,) * (weight.ndim - 1)
    old_bias = np.zeros(weight.shape[0]) if bias is None else bias
    new_bias = None if bias is None and not np.any(shift) else w * old_bias + shift
    # unscaled weights stay the same array: a pass never copies weights it does not change
    if np.all(w == 1):
        return weight, new_bias
    if lazy:
        return ChannelScaled(weight, w), new_bias
    return _scaled_weights(weight, w.reshape(view)), new_bias


class ChannelScaled:
    """``array`` times ``scale`` along axis 0 (per output channel), computed as
    :func:`scaled_synapse` computes it each time it is converted to an array
    (``np.asarray``): writers (NIR's, Lava's) compute it as they need it, one weight at a time,
    instead of holding a float64 copy of every scaled synapse (Meta-SpikeFormer 55M: hundreds
    of MB). ``array`` may be a ChannelScaled itself: the factors apply in order."""

    def __init__(self, array: np.ndarray, scale):
        self.array, self.scale = array, np.asarray(scale)
        self.shape, self.ndim, self.size = array.shape, array.ndim, array.size

    def __array__(self, dtype=None, copy=None):
        per_channel = (self.shape[0],) + (1,) * (self.ndim - 1)  # a scalar scale: every channel
        out = _scaled_weights(np.asarray(self.array), np.broadcast_to(
            self.scale.reshape((-1,) + per_channel[1:]), per_channel))
        return out if dtype is None else out.astype(dtype, copy=False)


def _scaled_weights(weight: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``weight * w``. float32 weights stay float32 where every float32 product is the real one
    (w is 0 or +-2^k, typically the signs of a fold into thresholds): the float64 products would
    be the same numbers at twice the memory."""
    if weight.dtype == np.float32:
        w32 = w.astype(np.float32)
        if np.all(w32 == w) and is_power_of_two(w[w != 0]):
            scaled = weight * w32
            # +-1 and 0 cannot round; other powers of two may overflow or lose subnormal bits
            if np.all(np.isin(w, (-1.0, 0.0, 1.0))) or np.array_equal(
                    scaled.astype(np.float64), weight.astype(np.float64) * w):
                return scaled
    return weight * w


def bypass(graph: Graph, name: str) -> None:
    """Remove a one-input node, its consumers reading its input instead."""
    graph.rewire(name, graph[name].inputs[0])
    graph.remove(name)
