"""IR -> NIR: standard NIR primitives where NIR has them, snncc extension subgraphs elsewhere
(:mod:`.extensions`), and the ``nir`` target's emitter.

Standard mappings (dt from the graph's metadata, default 1e-4; docs/nir.md has the details):

* Input / Output -> Input / Output; Conv1d / Conv2d -> Conv1d / Conv2d (no bias: zeros), a
  depthwise all-ones Conv2d without bias -> SumPool2d; Linear -> Affine (Linear without bias),
  on inputs of rank > 1 with the weight repeated over the leading axes (NIR's batched Affine);
  AvgPool2d -> AvgPool2d; Flatten, and a Reshape that only merges adjacent axes -> Flatten;
  Scale -> Scale (factor broadcast to the full shape); Add of same-shape distinct inputs -> a
  Scale of ones that every input edges into (NIR sums a node's incoming edges), marked
  ``snncc.op = "Add"``; Delay(steps) -> Delay(delay = steps * dt).
* A BatchNorm the BN fold left to the writer (``weight_folds="when_written"``: a weight fold
  that rounds): the Conv / Linear before it with the BN folded into its weights and bias as
  the pass folds it, each product computed as ``nir.write`` writes it.
* Neuron with hard reset and v_init = 0 -> LIF (0 <= alpha < 1; tau, r, v_leak by
  :func:`snncc.neuron.to_nir`) or IF (alpha = 1, beta = 0; r = gamma, NIR's per-step IF);
  '>=' becomes NIR's '>' with ``v_threshold = next_below(theta)`` (float64). The exact
  canonical parameters ride along in metadata (``snncc.alpha``, ``snncc.gamma``,
  ``snncc.beta``, ``snncc.theta``, ``snncc.cmp``) so snncc's reader restores them bit for bit.
* MaxPool2d of spikes -> SumPool2d -> Threshold(0.5); Readout (T known) -> I(r=1) ->
  Scale(1/T); Mean over (H, W) -> AvgPool2d (-> Flatten): two NIR nodes for one IR op are
  marked ``snncc.op`` ("X:sum" / "X:pool", then "X") so snncc's reader restores the op.
* Everything else (and neurons NIR cannot express) -> an extension subgraph.
* ``compat`` (``--nir-compat``): rewrites for a consumer's importer (norse, snntorch) or for
  NIR 1.0.4, refusing what that consumer would still misread (docs/nir.md).
"""

from __future__ import annotations

import functools
import io
import json
import math
import re
import threading
from pathlib import Path

import nir
import numpy as np

from snncc import ir
from snncc import neuron as nrn
from snncc.errors import UnsupportedError
from snncc.files import Ours, atomic_write
from snncc.graph import Graph
from snncc.passes.batchnorm import folds_left_to_writer
from snncc.passes.common import Branch, ChannelScaled, folded_synapse_arrays

from .extensions import (PATH, check_nir_types, encode, ir_name, is_extension, meta_array,
                         nir_name, text)

NEURON_META = ("alpha", "gamma", "beta", "theta")


class _NonStandard(Exception):
    """Raised by a converter: the node needs an extension subgraph (the message says why)."""


#: ``compat`` values of :func:`emit_nir` (docs/nir.md, "Consumers of snncc's files"):
#: ``snntorch``, ``norse`` and ``spikingjelly`` rewrite what that framework's importer misreads
#: into a standard form it reads correctly, ``nir-1.0.4`` writes what NIR 1.0.4 (and so
#: sinabs) can read.
COMPAT = ("snntorch", "norse", "spikingjelly", "nir-1.0.4")


def parse_compat(compat) -> frozenset[str]:
    """``compat`` (None, one name, a comma-separated string or a list) as a set of names."""
    if compat is None:
        return frozenset()
    items = compat.split(",") if isinstance(compat, str) else list(compat)
    names = frozenset(str(c).strip().lower() for c in items if str(c).strip())
    names = frozenset("nir-1.0.4" if c in ("1.0.4", "nir1.0.4", "nir==1.0.4") else c
                      for c in names)
    unknown = sorted(names - set(COMPAT))
    if unknown:
        raise UnsupportedError(f"--nir-compat: unknown consumer(s) {unknown}; known: "
                               f"{', '.join(COMPAT)}")
    return names


class _Ctx:
    """What every converter may need: the time step, the consumers to write for, T, weights
    rescaled by a fold (norse's AvgPool2d as SumPool2d, its 1/k in the next layer) and the BNs
    folded into the synapse before them."""

    def __init__(self, dt: float, compat: frozenset, T: int | None):
        self.dt, self.compat, self.T = dt, compat, T
        self.weight_scale: dict[str, float] = {}  # layer -> factor on its weights
        self.sum_pools: set[str] = set()  # AvgPool2d written as SumPool2d
        self.batchnorm_of: dict[str, list[Branch]] = {}  # synapse -> the BNs folded into it
        self.written_as: dict[str, str] = {}  # folded BN -> the node its readers read

    @property
    def float32_consumer(self) -> bool:
        return bool(self.compat & {"snntorch", "norse"})


def _full(a, shape) -> np.ndarray:
    """``a`` at every element of ``shape``, as a read-only view: NIR wants per-neuron arrays,
    which at 224 x 224 would be tens of MB per layer and parameter if materialised (h5py
    copies one at a time as it writes)."""
    return np.broadcast_to(np.asarray(a, dtype=np.float64), shape)


def _shape(shape) -> np.ndarray:
    return np.array(shape, dtype=np.int64)


# ----------------------------------------------------------------------------- converters


def _input(n: ir.Input, g: Graph, w: _Ctx):
    return nir.Input(_shape(n.input_shape),
                     metadata={"snncc.static": n.static, "snncc.kind": n.input_kind.value})


def _output(n: ir.Output, g: Graph, w: _Ctx):
    return nir.Output(_shape(n.shape))


def _is_sum_pool(n: ir.Conv2d) -> bool:
    c = n.weight.shape[0]
    return (n.op == "Conv2d" and n.bias is None and n.groups == c and n.weight.shape[1] == 1
            and n.dilation == (1, 1) and bool(np.all(n.weight == 1.0)))


def _fold_batchnorms(graph: Graph, w: _Ctx) -> None:
    """NIR has no BN: one the pipeline left to the writer (a weight fold that rounds) is written
    folded into the conv / linear before it."""
    w.batchnorm_of = folds_left_to_writer(graph)
    w.written_as = {b.bn.name: b.bn.inputs[0] for bs in w.batchnorm_of.values() for b in bs}


def _written(name: str, w: _Ctx) -> str:
    """The node written for ``name``: the node before a folded BN (before a chain of them)."""
    while name in w.written_as:
        name = w.written_as[name]
    return name


def _synapse_arrays(n: ir.Node, w: _Ctx):
    """The synapse's weight and bias (zeros for none) as written: with the BN after it folded in
    and the factor moved onto it, the weights as a :class:`ChannelScaled` that ``nir.write``
    computes as it writes them (no float64 copy of every layer at once), or the same array."""
    weight, bias = n.weight, n.bias
    if n.name in w.batchnorm_of:
        weight, bias = folded_synapse_arrays(n, w.batchnorm_of[n.name])
    scale = w.weight_scale.get(n.name)
    if scale is not None:  # never with a BN folded in (_fold_sum_pools)
        weight = ChannelScaled(n.weight, scale)
    return weight, (np.zeros(n.weight.shape[0]) if bias is None else bias)


def _conv(n: ir.Conv2d, g: Graph, w: _Ctx):
    in_shape = g[n.inputs[0]].shape
    if _is_sum_pool(n):
        return nir.SumPool2d(kernel_size=np.array(n.weight.shape[2:]), stride=np.array(n.stride),
                             padding=np.array(n.padding))
    weight, bias = _synapse_arrays(n, w)
    if n.op == "Conv1d":
        return nir.Conv1d(input_shape=in_shape[1], weight=weight, stride=n.stride[0],
                          padding=n.padding[0], dilation=n.dilation[0], groups=n.groups,
                          bias=bias)
    return nir.Conv2d(input_shape=tuple(in_shape[1:]), weight=weight, stride=n.stride,
                      padding=n.padding, dilation=n.dilation, groups=n.groups, bias=bias)


def _linear(n: ir.Linear, g: Graph, w: _Ctx):
    lead = n.shape[:-1]
    weight, bias = _synapse_arrays(n, w)
    weight = np.broadcast_to(weight, (*lead, *weight.shape)) if lead else weight
    if n.bias is None and n.name not in w.batchnorm_of:
        return nir.Linear(weight=weight)
    return nir.Affine(weight=weight, bias=_full(bias, n.shape))


def _avgpool(n: ir.AvgPool2d, g: Graph, w: _Ctx):
    """NIR's AvgPool2d divides by the kernel's size; one that divides by the window's positions
    inside the input (no count_include_pad) is SumPool2d then a Scale by 1 / those counts."""
    if n.name in w.sum_pools:  # compat norse: the 1/k is in the next layer's weights
        return nir.SumPool2d(kernel_size=np.array(n.kernel_size), stride=np.array(n.stride),
                             padding=np.array(n.padding), metadata={"snncc.op": "AvgPool2d"})
    if not n.count_include_pad:
        counts = np.broadcast_to(n.divisors(g[n.inputs[0]].shape[1:]), n.shape)
        return [(":sum", nir.SumPool2d(kernel_size=np.array(n.kernel_size),
                                       stride=np.array(n.stride), padding=np.array(n.padding),
                                       metadata={"snncc.op": "AvgPool2d:sum"})),
                ("", nir.Scale(1.0 / counts, metadata={"snncc.op": "AvgPool2d"}))]
    return nir.AvgPool2d(kernel_size=np.array(n.kernel_size), stride=np.array(n.stride),
                         padding=np.array(n.padding))


def _maxpool(n: ir.MaxPool2d, g: Graph, w: _Ctx):
    """Max-pooling of spikes (0/1) is an OR: the window's count is > 0. SumPool2d then a
    Threshold at 0.5 (stateless, fires on count > 0.5) is exact. Of real values there is no
    standard form (NIR has no max)."""
    if g[n.inputs[0]].kind is not ir.Kind.SPIKE:
        raise _NonStandard("max-pooling of non-spike values (NIR has no max; of spikes it is "
                           "SumPool2d + Threshold)")
    if n.dilation != (1, 1) or n.ceil_mode:
        raise _NonStandard("max-pooling with dilation or ceil_mode (NIR's SumPool2d has "
                           "neither)")
    return [(":sum", nir.SumPool2d(kernel_size=np.array(n.kernel_size), stride=np.array(n.stride),
                                   padding=np.array(n.padding),
                                   metadata={"snncc.op": "MaxPool2d:sum"})),
            ("", nir.Threshold(np.full(n.shape, 0.5), metadata={"snncc.op": "MaxPool2d"}))]


def _readout(n: ir.Readout, g: Graph, w: _Ctx):
    """The mean over time read at the last step, y[T-1] = (x[0] + ... + x[T-1]) / T: an
    integrator I (r = 1, one addition per step) then Scale(1/T). Equal to the running mean at
    t = T-1 only (earlier steps give the partial sum / T): NIR has no time-varying factor."""
    if w.T is None:
        raise _NonStandard("a mean over time with T unknown (the standard form divides by T)")
    return [(":sum", nir.I(np.ones(n.shape), metadata={"snncc.op": "Readout:sum"})),
            ("", nir.Scale(np.full(n.shape, 1.0 / w.T),
                           metadata={"snncc.op": "Readout", "snncc.T": int(w.T)}))]


def _mean(n: ir.Mean, g: Graph, w: _Ctx):
    """A mean over the two spatial axes of (C, H, W) (global average pooling): AvgPool2d with
    the whole plane as its kernel, then a Flatten of (C, 1, 1) when keepdim is False."""
    s = g[n.inputs[0]].shape
    if len(s) != 3 or {a % 3 for a in n.axes} != {1, 2} or len(n.axes) != 2:
        raise _NonStandard("a mean over axes other than the spatial ones of (C, H, W)")
    pool = nir.AvgPool2d(kernel_size=np.array(s[1:]), stride=np.array(s[1:]),
                         padding=np.array([0, 0]), metadata={"snncc.op": "Mean"})
    if n.keepdim:
        return pool
    pool.metadata["snncc.op"] = "Mean:pool"
    return [(":pool", pool),
            ("", nir.Flatten(input_type={"input": _shape((s[0], 1, 1))}, start_dim=0,
                             end_dim=-1, metadata={"snncc.op": "Mean"}))]


def _flatten_range(in_shape: tuple, out_shape: tuple) -> tuple[int, int] | None:
    """(start, end) if out_shape is in_shape with axes start..end merged, else None."""
    for start in range(len(in_shape)):
        for end in range(start, len(in_shape)):
            merged = (*in_shape[:start], math.prod(in_shape[start:end + 1]), *in_shape[end + 1:])
            if merged == tuple(out_shape):
                return start, end
    return None


def _flatten(n: ir.Node, g: Graph, w: _Ctx):
    in_shape = g[n.inputs[0]].shape
    rng = _flatten_range(in_shape, n.shape)
    if rng is None:
        raise _NonStandard("a reshape NIR's Flatten cannot express")
    start, end = rng
    return nir.Flatten(input_type={"input": _shape(in_shape)}, start_dim=start,
                       end_dim=-1 if end == len(in_shape) - 1 else end)


def _add(n: ir.Add, g: Graph, w: _Ctx):
    if any(g[i].shape != n.shape for i in n.inputs):
        raise _NonStandard("inputs of different shapes (broadcasting)")
    if len(set(n.inputs)) != len(n.inputs):
        raise _NonStandard("the same input added twice (NIR has one edge per pair of nodes)")
    return nir.Scale(_full(1.0, n.shape), metadata={"snncc.op": "Add"})


def _scale(n: ir.Scale, g: Graph, w: _Ctx):
    return nir.Scale(_full(n.factor, n.shape))


def _delay(n: ir.Delay, g: Graph, w: _Ctx):
    return nir.Delay(_full(n.steps * w.dt, n.shape))


def _neuron(n: ir.Neuron, g: Graph, w: _Ctx):
    if n.reset != nrn.RESET_HARD:
        raise _NonStandard("soft reset (NIR neurons reset to v_reset)")
    if np.any(n.v_init != 0) and not ("spikingjelly" in w.compat
                                      and np.all(n.v_init == n.v_reset)):
        # (spikingjelly's importer makes neurons that start at v_reset)
        raise _NonStandard("v_init != 0 (NIR neurons start at 0)")
    p = {a: _full(getattr(n, a), n.shape) for a in ("alpha", "gamma", "beta", "v_reset")}
    # a float32 consumer (snnTorch, norse) rounds a float64 threshold: give it float32's own
    # strict equivalent of what snncc's float32 simulation computes (theta rounded to float32)
    theta = _full(nrn.strict_threshold(np.asarray(n.theta, dtype=np.float32), n.cmp,
                                       np.float32) if w.float32_consumer
                  # spikingjelly's importer makes neurons firing on >=
                  else nrn.inclusive_threshold(n.theta, n.cmp) if "spikingjelly" in w.compat
                  else nrn.strict_threshold(n.theta, n.cmp), n.shape)
    meta = {f"snncc.{a}": meta_array(getattr(n, a)) for a in NEURON_META}
    meta["snncc.cmp"] = n.cmp
    if np.all(p["alpha"] == 1.0):
        if np.any(p["beta"] != 0):
            raise _NonStandard("no leak but a constant input beta (NIR's IF has no bias)")
        if "snntorch" in w.compat:
            # snnTorch's importer reads IF as Leaky(beta=0.9); an LIF whose leak rounds to 1
            # (tau = dt 2^60, r = tau/dt: beta = 1 - 2^-60 == 1.0) is its Leaky(beta=1), an IF
            tau = _full(w.dt * 2.0 ** 60, n.shape)
            return nir.LIF(tau=tau, r=_full(n.gamma * 2.0 ** 60, n.shape),
                           v_leak=_full(0.0, n.shape),
                           v_threshold=theta, v_reset=p["v_reset"], metadata=meta)
        # spikingjelly's importer reads IF with Euler's gain dt r (r = 1/dt: an IFNode)
        r = p["gamma"] / w.dt if "spikingjelly" in w.compat else p["gamma"]
        return nir.IF(r=r, v_threshold=theta, v_reset=p["v_reset"], metadata=meta)
    if not np.all((p["alpha"] >= 0) & (p["alpha"] < 1)):
        raise _NonStandard("alpha outside [0, 1) (or mixed with alpha = 1): no LIF or IF form")
    tau, r, v_leak = nrn.to_nir(n.alpha, n.gamma, n.beta, w.dt)  # per channel, then spread
    return nir.LIF(tau=_full(tau, n.shape), r=_full(r, n.shape), v_leak=_full(v_leak, n.shape),
                   v_threshold=theta, v_reset=p["v_reset"], metadata=meta)


_STANDARD = {
    "Input": _input, "Output": _output, "Conv1d": _conv, "Conv2d": _conv, "Linear": _linear,
    "AvgPool2d": _avgpool, "MaxPool2d": _maxpool, "Readout": _readout, "Mean": _mean,
    "Flatten": _flatten, "Reshape": _flatten, "Add": _add,
    "Scale": _scale, "Delay": _delay, "Neuron": _neuron,
}


# ----------------------------------------------------------------------------- graph


def _convert(n: ir.Node, g: Graph, w: _Ctx):
    """(NIR node or [(name suffix, NIR node), ...] chain, None) for a standard mapping, or
    (None, why it needs an extension)."""
    fn = _STANDARD.get(n.op)
    if fn is None:
        return None, "no NIR primitive"
    try:
        return fn(n, g, w), None
    except _NonStandard as e:
        return None, str(e)


def _jsonable(v):
    return v.item() if isinstance(v, np.generic) else str(v)


def _where(n: ir.Node) -> str:
    return f"{n.name} ({n.op}{', ' + n.path if n.path else ''})"


def _fold_sum_pools(graph: Graph, w: _Ctx) -> list[str]:
    """compat norse: norse's importer drops AvgPool2d (and Scale) without a word but reads
    SumPool2d. An AvgPool2d whose output goes only into one Conv2d or Linear (through a
    flatten or not) becomes a SumPool2d with 1/k multiplied into that layer's weights: exact to
    the bit when k (the kernel's element count) is a power of two and there is no padding
    (norse's SumPool2d ignores padding). Returns the pools that cannot be folded, and why."""
    consumers: dict[str, list[ir.Node]] = {n.name: [] for n in graph.nodes.values()}
    for n in graph.nodes.values():
        for i in dict.fromkeys(n.inputs):
            consumers[i].append(n)
    refused = []
    for n in graph.of_type(ir.AvgPool2d):
        k = int(np.prod(n.kernel_size))
        nxt = consumers[n.name]
        if (len(nxt) == 1 and nxt[0].op in ("Flatten", "Reshape")
                and _flatten_range(graph[nxt[0].inputs[0]].shape, nxt[0].shape) is not None):
            nxt = consumers[nxt[0].name]
        if any(n.padding):
            why = "padding (norse's SumPool2d ignores it)"
        elif k & (k - 1):
            why = f"a {k}-element kernel (1/{k} folded into weights is exact only for powers of 2)"
        elif (len(nxt) != 1 or nxt[0].op not in ("Conv2d", "Linear") or _is_sum_pool(nxt[0])
              or nxt[0].name in w.weight_scale or nxt[0].name in w.batchnorm_of):
            why = ("its output does not go into one Conv2d or Linear only (optionally through a "
                   "Flatten), whose weights could take its 1/k")
        else:
            w.sum_pools.add(n.name)
            w.weight_scale[nxt[0].name] = 1.0 / k
            continue
        refused.append(f"{_where(n)}: norse drops AvgPool2d; as SumPool2d: {why}")
    return refused


#: What each consumer's importer reads correctly (snntorch 1.0.0 import_from_nir, norse 1.1.0
#: from_nir); docs/nir.md, "Consumers of snncc's files".
_READS = {
    "snntorch": {"Input", "Output", "Affine", "Linear", "Conv2d", "Flatten", "AvgPool2d", "LIF",
                 "CubaLIF"},
    "norse": {"Input", "Output", "Affine", "Linear", "Conv2d", "Flatten", "SumPool2d", "LIF",
              "IF", "CubaLIF"},
    "spikingjelly": {"Input", "Output", "Affine", "Linear", "Conv1d", "Conv2d", "AvgPool2d",
                     "Flatten", "LIF", "IF"},
}


def _consumer_problems(name: str, node, w: _Ctx) -> list[str]:  # noqa: ARG001
    """Why the compat consumers would misread one written node (empty if they read it)."""
    kind = "an snncc extension subgraph" if is_extension(node) else type(node).__name__
    out = []
    for c in sorted(w.compat & set(_READS)):
        if kind not in _READS[c]:
            out.append(f"{c} cannot read {kind}")
            continue
        if isinstance(node, (nir.LIF, nir.IF, nir.CubaLIF)) and np.any(node.v_reset != 0) \
                and c != "spikingjelly":
            out.append(f"{c} resets to 0, not to v_reset")
        if isinstance(node, nir.LIF) and c == "snntorch":
            gain = node.r * w.dt / node.tau
            if np.any(node.v_leak != 0) or not np.allclose(gain, 1.0, rtol=1e-12):
                out.append("snntorch reads an LIF with v_leak = 0 and an input gain "
                           "r dt / tau = 1 only")
            if np.unique(node.v_threshold).size != 1:
                out.append("snntorch needs one threshold per layer")
        if isinstance(node, (nir.LIF, nir.IF)) and c == "norse" and np.any(node.r != 1):
            out.append("norse ignores r (it reads an LIF's input gain as dt/tau, an IF's as 1)")
        if isinstance(node, nir.SumPool2d) and c == "norse" and np.any(node.padding != 0):
            out.append("norse's SumPool2d ignores padding")
        if c == "spikingjelly":
            out += _spikingjelly_problems(node, w)
    return list(dict.fromkeys(out))


def _sj_close(a: float, b: float) -> bool:
    """As spikingjelly's importer compares its fields (``_is_close_finite``)."""
    return bool(np.isclose(a, b, rtol=1e-6, atol=1e-12))


def _spikingjelly_problems(node, w: _Ctx) -> list[str]:
    """What spikingjelly 2.0's ``import_from_nir`` would refuse or read otherwise."""
    out = []
    if isinstance(node, (nir.Conv1d, nir.Conv2d)) and np.any(np.asarray(node.groups) != 1):
        out.append("spikingjelly reads ungrouped convolutions only")
    if isinstance(node, (nir.LIF, nir.IF)):
        fields = ("v_threshold", "v_reset") + (("tau", "r", "v_leak")
                                               if isinstance(node, nir.LIF) else ("r",))
        if any(np.unique(getattr(node, f)).size != 1 for f in fields):
            out.append("spikingjelly needs one value per layer for each neuron parameter")
        elif isinstance(node, nir.IF) and not _sj_close(node.r.flat[0] * w.dt, 1.0):
            out.append("spikingjelly reads an IF with input gain 1 only (its IFNode)")
        elif isinstance(node, nir.LIF) and (
                not _sj_close(node.v_leak.flat[0], node.v_reset.flat[0])
                or not any(_sj_close(node.r.flat[0], v) for v in (1.0, node.tau.flat[0] / w.dt))):
            out.append("spikingjelly reads an LIF whose input gain is 1/tau or 1 and whose leak "
                       "is to v_reset only (its LIFNode)")
    return out


def to_nir_graph(graph: Graph, dt: float | None = None, strict: bool = False,
                 compat=None) -> nir.NIRGraph:
    """The NIR graph of ``graph``. ``strict``: refuse (UnsupportedError listing every node that
    would need an extension subgraph, with its module path and the reason) instead.
    ``compat`` (:data:`COMPAT`, several allowed): write for those consumers, refusing with
    the list of every node they would misread (docs/nir.md)."""
    graph.verify()
    dt = float(dt if dt is not None else graph.meta.get("dt", nrn.DEFAULT_DT))
    w = _Ctx(dt, parse_compat(compat), graph.meta.get("T"))
    _fold_batchnorms(graph, w)
    misread = _fold_sum_pools(graph, w) if "norse" in w.compat else []
    if "snntorch" in w.compat and dt != nrn.DEFAULT_DT:
        misread.append(f"dt = {dt:g}: snnTorch's importer assumes dt = {nrn.DEFAULT_DT:g}")
    taken = {nir_name(n) for n in graph.nodes}
    nodes, edges, refused = {}, [], []
    for n in graph.topological_order():
        if n.name in w.written_as:  # folded into the synapse before it
            continue
        node, why = _convert(n, graph, w)
        srcs = [nir_name(_written(i, w)) for i in n.inputs]
        if node is None:
            refused.append(f"{_where(n)}: {why}")
            node = encode(n, [graph[i].shape for i in n.inputs], srcs)
        chain = node if isinstance(node, list) else [("", node)]
        names = []
        for suffix, part in chain:
            name = nir_name(n.name + suffix) if suffix else nir_name(n.name)
            while suffix and name in taken:
                name += "_"
            taken.add(name)
            if n.path and not is_extension(part):
                part.metadata[PATH] = n.path
            nodes[name] = part
            names.append(name)
            part_of = f" [NIR node {name}]" if suffix else ""
            misread += [f"{_where(n)}{part_of}: {p}" for p in _consumer_problems(name, part, w)]
        edges += [(s, names[0]) for s in dict.fromkeys(srcs)]
        edges += list(zip(names, names[1:]))
    if strict and refused:
        raise UnsupportedError(f"--strict-nir: {len(refused)} node(s) have no standard NIR "
                               "form:\n  " + "\n  ".join(refused))
    if misread:
        raise UnsupportedError(f"--nir-compat {','.join(sorted(w.compat))}: {len(misread)} "
                               "node(s) the consumer would misread:\n  " + "\n  ".join(misread))
    if "nir-1.0.4" in w.compat:
        resets = [k for k, v in nodes.items()
                  if isinstance(v, (nir.LIF, nir.IF, nir.CubaLIF)) and np.any(v.v_reset != 0)]
        if resets:
            raise UnsupportedError("--nir-compat nir-1.0.4: NIR 1.0.4's neurons have no "
                                   f"v_reset; nonzero in {', '.join(map(ir_name, resets))}")
    meta = {"dt": dt, "snncc.name": graph.name,
            "snncc.meta": json.dumps({**graph.meta, "dt": dt}, default=_jsonable)}
    if "T" in graph.meta:
        meta["snncc.T"] = int(graph.meta["T"])
    if w.compat:
        meta["snncc.compat"] = ",".join(sorted(w.compat))
    out = nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=False)
    check_nir_types(out)
    return out


def _strip_for_nir_1_0_4(buf: io.BytesIO) -> bytes:
    """The file without what NIR 1.0.4's reader passes to constructors that do not take it:
    every non-graph node's ``metadata`` and every ``v_reset`` (all 0, checked). Graph metadata
    (dt, snncc's marker) stays: NIR 1.0.4's NIRGraph has it."""
    import h5py

    with h5py.File(buf, "r+") as f:
        doomed = []

        def visit(name, obj):
            if not isinstance(obj, h5py.Group) or "type" not in obj:
                return
            if text(obj["type"][()]) != "NIRGraph" and "metadata" in obj:
                doomed.append(f"{name}/metadata")
            if "v_reset" in obj:
                doomed.append(f"{name}/v_reset")
        f["node"].visititems(visit)
        for d in doomed:
            del f["node"][d]
        del f["version"]
        f.create_dataset("version", data="1.0.4")
    # copy into a fresh file: deleting from HDF5 leaves the space allocated
    src, out = io.BytesIO(buf.getvalue()), io.BytesIO()
    with h5py.File(src, "r") as a, h5py.File(out, "w") as b:
        for k in a:
            a.copy(a[k], b, name=k)
    return out.getvalue()


def emit_nir(graph: Graph, out, dt: float | None = None, strict: bool = False,
             compat=None) -> Path:
    """The ``nir`` target: write ``graph`` as a ``.nir`` file (``nir.write``'s format,
    :func:`_write`), atomically. ``compat``: consumers to write for (:data:`COMPAT`;
    docs/nir.md)."""
    g = to_nir_graph(graph, dt, strict, compat)
    if "nir-1.0.4" not in parse_compat(compat):  # straight into the file: no copy in memory
        return atomic_write(out, lambda tmp: _write(tmp, g), replaces=WRITTEN_BY_SNNCC,
                            by_name=True)
    buf = io.BytesIO()
    _write(buf, g)
    data = _strip_for_nir_1_0_4(buf)
    return atomic_write(out, lambda f: f.write(data), replaces=WRITTEN_BY_SNNCC)


#: Bytes of a compressed chunk of a per-neuron parameter (before compression).
CHUNK_BYTES = 1 << 20


def _write(f, g: nir.NIRGraph) -> None:
    """The file ``nir.write(f, g)`` writes (a "version" string and ``g.to_dict()`` under
    "node", datasets and groups alike) to a path or a file object, written here because of how
    arrays are stored:

    - weights raw: gzip barely shrinks them (15M Meta-SpikeFormer: this file is 123 MB written
      in 2.4 s, ``nir.write``'s with gzip everywhere 107 MB in 4.8 s), and NIR's ``to_dict``
      would deep-copy them (:func:`_shallow_dict` does not);
    - per-neuron parameters, spread from per-channel values (views with a zero stride), with
      gzip level 1 (about 1000:1; level 4, NIR's default, gives 409 against 413 MB at 55M,
      much slower), in chunks of about :data:`CHUNK_BYTES` that one thread per core makes
      contiguous and compresses (zlib, HDF5's deflate filter) while HDF5 stores the finished
      ones: no copy of a whole per-neuron array, and the compression on every core.

    A path is opened by HDF5 itself (15M: 0.2 s less than through a Python file object, of
    0.75 s; measured), without file locking (a temporary file no one else opens); a failed
    system call is raised as the OSError it reports."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import h5py

    opened = {"locking": False} if isinstance(f, (str, os.PathLike)) else {}
    try:
        with h5py.File(f, "w", **opened) as h5, \
                ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            _hold_metadata_cache_to(h5, METADATA_CACHE_BYTES)
            _create_dataset(h5, "version", nir.version)
            chunks = _Chunks(pool, h5)
            _write_group(h5.create_group("node"), _shallow_dict(g), chunks)
            chunks.store()
    except (OSError, RuntimeError) as e:
        failed = re.search(r"errno = (\d+)", str(e))
        if failed is None or (isinstance(e, OSError) and e.errno is not None):
            raise
        raise OSError(int(failed[1]), os.strerror(int(failed[1]))) from None


#: HDF5's metadata cache, in bytes of its entries, which take about 13x as much memory: at
#: HDF5's default (up to 2 MB) the 4,000 datasets of a 15M model's file held 18 MB while it was
#: written, at 64 KB 2 MB, in the same time (measured).
METADATA_CACHE_BYTES = 1 << 16


def _hold_metadata_cache_to(h5, size: int) -> None:
    config = h5.id.get_mdc_config()
    config.set_initial_size = True
    config.initial_size = config.min_size = config.max_size = size
    h5.id.set_mdc_config(config)


class _Chunks:
    """Compresses the chunks of per-neuron parameters on ``pool``, each distinct chunk once
    per file: chunks that spread the same values over the same shape are the same bytes, and
    most neurons of a model share their tau, threshold and reset (15M: 185 chunks, 140 MB,
    compressed for its 409 per-neuron arrays instead of 594, 426 MB, one array at a time).
    Chunks are stored in order as they are compressed (:meth:`store`), the rest once every
    other dataset is written, so that the pool compresses while HDF5 creates the datasets (15M:
    the writer waited 0.4 s for compression when each array's chunks were stored as it was
    created). A dataset is closed after it is created and opened again to store its chunks:
    HDF5 keeps the metadata of an open dataset in memory (15M: 409 datasets held open, 32 MB
    more at the peak)."""

    def __init__(self, pool, h5):
        import collections

        self.pool, self.h5, self.futures = pool, h5, {}
        self.pending: collections.deque = collections.deque()

    def add(self, ds, a: np.ndarray, rows: int) -> None:
        """Compress the chunks of ``a`` (``rows`` of its first axis each) for ``ds``."""
        inner = a.shape[1:]
        for start in range(0, a.shape[0], rows):
            part = a[start:start + rows]
            # the values the chunk spreads: chunks that spread the same ones are the same bytes
            values = part[tuple(slice(0, 1) if st == 0 else slice(None) for st in part.strides)]
            key = ((a.dtype.str, rows, inner, len(part), values.shape, values.tobytes())
                   if values.size <= 4096 else None)
            future = self.futures.get(key)
            if future is None:  # a chunk of many distinct values is compressed, not kept
                future = self.pool.submit(_compressed_block, part, rows)
                if key is not None:
                    self.futures[key] = future
            self.pending.append((ds.name, (start,) + (0,) * len(inner), future))
        self.store(wait=False)

    def store(self, wait: bool = True) -> None:
        """Store the pending chunks in order: all of them, or (``wait=False``) those compressed
        already, up to the first that is not (no compressed chunk is held longer than that)."""
        import h5py

        ds = path = None
        while self.pending and (wait or self.pending[0][2].done()):
            at, offset, future = self.pending.popleft()
            if at != path:
                ds, path = h5py.h5d.open(self.h5.id, at.encode()), at
            ds.write_direct_chunk(offset, future.result())


_block_buffer = threading.local()


def _compressed_block(part: np.ndarray, rows: int) -> bytes:
    """``part`` as a whole chunk of ``rows`` (HDF5 stores an edge chunk whole), deflated. The
    chunk is made in a buffer each compressing thread keeps: a new block per chunk is mapped
    afresh (``snncc compile`` maps large blocks, :func:`snncc.limits.map_large_blocks`), and
    filling it took a page fault per 4 KB (15M: about 35,000 of the compile's 145,000)."""
    import zlib

    shape = (rows, *part.shape[1:])
    nbytes = part.itemsize * math.prod(shape)
    buffer = getattr(_block_buffer, "bytes", None)
    if buffer is None or buffer.nbytes < nbytes:
        buffer = _block_buffer.bytes = np.empty(nbytes, np.uint8)
    block = buffer[:nbytes].view(part.dtype).reshape(shape)
    block[:len(part)] = part
    block[len(part):] = 0
    return zlib.compress(block, 1)


#: Datasets of at most this many bytes (strings, scalars, shapes) are written in HDF5's compact
#: layout, their data in the object header, through h5py's low-level API: 15M, 3,584 of its
#: 3,994 datasets, written in 0.3 s less (of 1.9 s; measured).
COMPACT_BYTES = 4096


def _create_dataset(group, name: str, value) -> None:
    """``group.create_dataset(name, data=value)`` (a str as a variable-length UTF-8 string,
    like ``nir.write``); small values compact (:data:`COMPACT_BYTES`, :func:`_small_array`)."""
    import h5py

    data = _small_array(value)
    if data is None:
        group.create_dataset(name, data=value)
        return
    file_type = _string_type() if h5py.check_string_dtype(data.dtype) else \
        _numeric_type(data.dtype)
    link, lcpl = _link_name(name)
    ds = h5py.h5d.create(group.id, link, file_type, _dataspace(data.shape),
                         dcpl=_compact_layout(), lcpl=lcpl)
    ds.write(h5py.h5s.ALL, h5py.h5s.ALL, data, dxpl=_small_transfer())


def _small_array(value) -> np.ndarray | None:
    """``value`` as the array h5py writes for it, when that is small enough for the compact
    layout: strings, numbers, and tuples and lists of them (a Conv's stride, a graph's edges:
    15M, 630 datasets that h5py's own path wrote in about twice a compact one's time; the
    write's CPU time 3-8% less). None otherwise, and for a ChannelScaled product, which h5py
    computes once, to write it."""
    import h5py

    if isinstance(value, str):
        return np.asarray(value, dtype=h5py.string_dtype())
    if isinstance(value, (list, tuple)):
        try:
            data = np.asarray(value)
        except ValueError:  # ragged: left to h5py
            return None
        if data.dtype.kind == "U":  # h5py writes a str array as variable-length UTF-8
            data = data.astype(h5py.string_dtype())
    elif isinstance(value, (int, float, np.generic, np.ndarray)):
        data = np.asarray(value)
    else:
        return None
    if data.nbytes > COMPACT_BYTES or not (data.dtype.kind in "biuf"
                                           or h5py.check_string_dtype(data.dtype)):
        return None
    # (the low-level write takes C order only: a weight that is a transposed view, x @ W)
    return data if data.flags.c_contiguous else data.copy(order="C")


# HDF5 types, dataspaces and property lists belong to no file: made once, not per dataset
# (15M: the writing thread's CPU time, median of 9 writes, 1.33-1.38 s before, 1.12-1.25 after)
@functools.cache
def _compact_layout():
    import h5py

    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT)
    dcpl.set_obj_track_times(False)
    return dcpl


@functools.cache
def _small_transfer():
    """A transfer property list with a type conversion buffer of :data:`COMPACT_BYTES`
    (``H5Pset_buffer``, which h5py does not wrap, from the HDF5 library h5py's modules link).
    HDF5's default is 1 MB, allocated for each write that converts (variable-length strings,
    twice): blocks that large are mapped afresh in ``snncc compile``
    (:func:`snncc.limits.map_large_blocks`): the 15M file's 1,700 string datasets cost 3,400
    maps and unmaps of 1 MB. None where the function cannot be found."""
    import ctypes

    import h5py

    dxpl = h5py.h5p.create(h5py.h5p.DATASET_XFER)
    try:
        set_buffer = ctypes.CDLL(h5py.h5p.__file__).H5Pset_buffer
    except (OSError, AttributeError):
        return None
    set_buffer.argtypes = [ctypes.c_int64, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p]
    set_buffer.restype = ctypes.c_int
    return dxpl if set_buffer(dxpl.id, COMPACT_BYTES, None, None) >= 0 else None


@functools.cache
def _string_type():
    import h5py

    return h5py.h5t.py_create(h5py.string_dtype(), logical=True)


@functools.lru_cache(maxsize=64)
def _numeric_type(dtype: np.dtype):
    """(Numeric only: numpy's dtype equality ignores the metadata that tells strings apart.)"""
    import h5py

    return h5py.h5t.py_create(dtype, logical=True)


@functools.lru_cache(maxsize=256)
def _dataspace(shape: tuple):
    import h5py

    return h5py.h5s.create_simple(shape)


def _create_group(group, name: str):
    """``group.create_group(name)`` through h5py's low-level API (1,310 groups at 15M, written
    in 0.15 s less; measured)."""
    import h5py

    return h5py.Group(h5py.h5g.create(group.id, *_link_name(name)))


def _link_name(name: str) -> tuple[bytes, object]:
    """The name and link creation property list h5py's high-level API gives a link: ASCII as
    such, anything else UTF-8, marked UTF-8 (a node named after a module path in any script)."""
    import h5py

    try:
        return name.encode("ascii"), None
    except UnicodeEncodeError:
        lcpl = h5py.h5p.create(h5py.h5p.LINK_CREATE)
        lcpl.set_char_encoding(h5py.h5t.CSET_UTF8)
        return name.encode("utf-8"), lcpl


def _write_group(group, d: dict, chunks: _Chunks) -> None:
    """nir.write's ``write_recursive``, but for how arrays are stored (:func:`_write`)."""
    for k, v in d.items():
        if k == "metadata":
            if v != {}:
                _write_group(_create_group(group, k), v, chunks)
        elif isinstance(v, dict):
            _write_group(_create_group(group, str(k)), v, chunks)
        elif isinstance(v, np.ndarray) and _repeated_matrix(v):
            _write_repeated(group, k, v)
        elif isinstance(v, np.ndarray) and v.size > 1 and 0 in v.strides:
            _write_spread(group, k, v, chunks)
        else:  # weights, strings, scalars, and ChannelScaled products, one at a time
            _create_dataset(group, k, v)


#: where a matrix that a dataset repeats is stored once (outside "node", which nir.read reads)
REPEATED = "snncc.repeated"


def _repeated_matrix(a: np.ndarray) -> bool:
    """``a`` repeats one matrix over its leading axes (a view with zero strides there): NIR's
    batched Affine/Linear weight of a Linear on tokens."""
    return a.ndim > 2 and a.size > a.shape[-1] * a.shape[-2] and \
        not any(a.strides[:-2]) and all(a.strides[-2:])


def _write_repeated(group, name: str, a: np.ndarray) -> None:
    """A repeated matrix (:func:`_repeated_matrix`) stored once, under :data:`REPEATED`, and
    ``name`` an HDF5 virtual dataset mapping every position of the leading axes to it, in this
    same file ("."): the file holds the weight once (a Spikformer with Linear layers over 64
    tokens: 1.8 GB of 64 copies, now 28 MB), and every reader of HDF5 (nir.read) reads the
    batched array NIR declares."""
    import h5py

    lead = a.shape[:-2]
    one = np.ascontiguousarray(a[(0,) * len(lead)])
    shared = group.file.require_group(REPEATED)
    source = f"{REPEATED}/{len(shared)}"
    _create_dataset(shared, str(len(shared)), one)
    layout = h5py.VirtualLayout(shape=a.shape, dtype=a.dtype)
    matrix = h5py.VirtualSource(".", source, shape=one.shape, dtype=one.dtype)
    for index in np.ndindex(*lead):
        layout[index] = matrix
    group.create_virtual_dataset(name, layout)


def _write_spread(group, name: str, a: np.ndarray, chunks: _Chunks) -> None:
    """A per-neuron parameter as a gzip-compressed dataset, chunked along its first axis; each
    chunk made contiguous and compressed by ``chunks``."""
    inner = a.shape[1:]
    rows = min(a.shape[0], max(1, CHUNK_BYTES // (a.itemsize * math.prod(inner))))
    ds = group.create_dataset(name, shape=a.shape, dtype=a.dtype, chunks=(rows, *inner),
                              compression="gzip", compression_opts=1)
    chunks.add(ds, a, rows)
    ds.id.close()


def _shallow_dict(graph: nir.NIRGraph) -> dict:
    """``graph.to_dict()`` referring to the nodes' arrays: NIR's ``NIRNode.to_dict`` is
    ``dataclasses.asdict``, which deep-copies every array, twice for nested graphs (4x the
    weights of a 15M-parameter model in memory). Each node's own ``to_dict`` still runs (Input,
    Output and Flatten add fields), with a field-by-field ``asdict`` in NIR's module while it
    does."""
    import dataclasses

    import nir.ir.node as node_module

    deep = node_module.asdict
    node_module.asdict = lambda obj: {f.name: getattr(obj, f.name)
                                      for f in dataclasses.fields(obj)}
    try:
        return graph.to_dict()
    finally:
        node_module.asdict = deep


def _written_by_snncc(path: Path) -> bool:
    """A ``.nir`` file this writer made: HDF5 with snncc's graph name in its metadata."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "snncc.name" in f.get("node/metadata", {})
    except (OSError, ValueError):
        return False


WRITTEN_BY_SNNCC = Ours("a .nir file written by snncc", _written_by_snncc)
