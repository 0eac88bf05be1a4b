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
* Neuron with hard reset and v_init = 0 -> LIF (0 <= alpha < 1; tau, r, v_leak by
  :func:`snncc.neuron.to_nir`) or IF (alpha = 1, beta = 0; r = gamma, NIR's per-step IF);
  '>=' becomes NIR's '>' with ``v_threshold = next_below(theta)`` (float64). The exact
  canonical parameters ride along in metadata (``snncc.alpha``, ``snncc.gamma``,
  ``snncc.beta``, ``snncc.theta``, ``snncc.cmp``) so snncc's reader restores them bit for bit.
* Everything else (and neurons NIR cannot express) -> an extension subgraph.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import nir
import numpy as np

from snncc import ir
from snncc import neuron as nrn
from snncc.errors import UnsupportedError
from snncc.files import Ours, atomic_write
from snncc.graph import Graph

from .extensions import PATH, check_nir_types, encode, meta_array, nir_name

NEURON_META = ("alpha", "gamma", "beta", "theta")


class _NonStandard(Exception):
    """Raised by a converter: the node needs an extension subgraph (the message says why)."""


def _full(a, shape) -> np.ndarray:
    return np.broadcast_to(np.asarray(a, dtype=np.float64), shape).copy()


def _shape(shape) -> np.ndarray:
    return np.array(shape, dtype=np.int64)


# ----------------------------------------------------------------------------- converters


def _input(n: ir.Input, g: Graph, dt: float):
    return nir.Input(_shape(n.input_shape),
                     metadata={"snncc.static": n.static, "snncc.kind": n.input_kind.value})


def _output(n: ir.Output, g: Graph, dt: float):
    return nir.Output(_shape(n.shape))


def _is_sum_pool(n: ir.Conv2d) -> bool:
    c = n.weight.shape[0]
    return (n.op == "Conv2d" and n.bias is None and n.groups == c and n.weight.shape[1] == 1
            and n.dilation == (1, 1) and bool(np.all(n.weight == 1.0)))


def _conv(n: ir.Conv2d, g: Graph, dt: float):
    in_shape = g[n.inputs[0]].shape
    if _is_sum_pool(n):
        return nir.SumPool2d(kernel_size=np.array(n.weight.shape[2:]), stride=np.array(n.stride),
                             padding=np.array(n.padding))
    bias = n.bias if n.bias is not None else np.zeros(n.weight.shape[0])
    if n.op == "Conv1d":
        return nir.Conv1d(input_shape=in_shape[1], weight=n.weight, stride=n.stride[0],
                          padding=n.padding[0], dilation=n.dilation[0], groups=n.groups,
                          bias=bias)
    return nir.Conv2d(input_shape=tuple(in_shape[1:]), weight=n.weight, stride=n.stride,
                      padding=n.padding, dilation=n.dilation, groups=n.groups, bias=bias)


def _linear(n: ir.Linear, g: Graph, dt: float):
    lead = n.shape[:-1]
    w = np.broadcast_to(n.weight, (*lead, *n.weight.shape)).copy() if lead else n.weight
    if n.bias is None:
        return nir.Linear(weight=w)
    return nir.Affine(weight=w, bias=_full(n.bias, n.shape))


def _avgpool(n: ir.AvgPool2d, g: Graph, dt: float):
    return nir.AvgPool2d(kernel_size=np.array(n.kernel_size), stride=np.array(n.stride),
                         padding=np.array(n.padding))


def _flatten_range(in_shape: tuple, out_shape: tuple) -> tuple[int, int] | None:
    """(start, end) if out_shape is in_shape with axes start..end merged, else None."""
    for start in range(len(in_shape)):
        for end in range(start, len(in_shape)):
            merged = (*in_shape[:start], math.prod(in_shape[start:end + 1]), *in_shape[end + 1:])
            if merged == tuple(out_shape):
                return start, end
    return None


def _flatten(n: ir.Node, g: Graph, dt: float):
    in_shape = g[n.inputs[0]].shape
    rng = _flatten_range(in_shape, n.shape)
    if rng is None:
        raise _NonStandard("a reshape NIR's Flatten cannot express")
    start, end = rng
    return nir.Flatten(input_type={"input": _shape(in_shape)}, start_dim=start,
                       end_dim=-1 if end == len(in_shape) - 1 else end)


def _add(n: ir.Add, g: Graph, dt: float):
    if any(g[i].shape != n.shape for i in n.inputs):
        raise _NonStandard("inputs of different shapes (broadcasting)")
    if len(set(n.inputs)) != len(n.inputs):
        raise _NonStandard("the same input added twice (NIR has one edge per pair of nodes)")
    return nir.Scale(np.ones(n.shape), metadata={"snncc.op": "Add"})


def _scale(n: ir.Scale, g: Graph, dt: float):
    return nir.Scale(_full(n.factor, n.shape))


def _delay(n: ir.Delay, g: Graph, dt: float):
    return nir.Delay(np.full(n.shape, n.steps * dt))


def _neuron(n: ir.Neuron, g: Graph, dt: float):
    if n.reset != nrn.RESET_HARD:
        raise _NonStandard("soft reset (NIR neurons reset to v_reset)")
    if np.any(n.v_init != 0):
        raise _NonStandard("v_init != 0 (NIR neurons start at 0)")
    p = {a: _full(getattr(n, a), n.shape) for a in ("alpha", "gamma", "beta", "v_reset")}
    theta = _full(nrn.strict_threshold(n.theta, n.cmp), n.shape)
    meta = {f"snncc.{a}": meta_array(getattr(n, a)) for a in NEURON_META}
    meta["snncc.cmp"] = n.cmp
    if np.all(p["alpha"] == 1.0):
        if np.any(p["beta"] != 0):
            raise _NonStandard("no leak but a constant input beta (NIR's IF has no bias)")
        return nir.IF(r=p["gamma"], v_threshold=theta, v_reset=p["v_reset"], metadata=meta)
    if not np.all((p["alpha"] >= 0) & (p["alpha"] < 1)):
        raise _NonStandard("alpha outside [0, 1) (or mixed with alpha = 1): no LIF or IF form")
    tau, r, v_leak = nrn.to_nir(p["alpha"], p["gamma"], p["beta"], dt)
    return nir.LIF(tau=tau, r=r, v_leak=v_leak, v_threshold=theta, v_reset=p["v_reset"],
                   metadata=meta)


_STANDARD = {
    "Input": _input, "Output": _output, "Conv1d": _conv, "Conv2d": _conv, "Linear": _linear,
    "AvgPool2d": _avgpool, "Flatten": _flatten, "Reshape": _flatten, "Add": _add,
    "Scale": _scale, "Delay": _delay, "Neuron": _neuron,
}


# ----------------------------------------------------------------------------- graph


def _convert(n: ir.Node, g: Graph, dt: float):
    """(NIR node, None) for a standard mapping, or (None, why it needs an extension)."""
    fn = _STANDARD.get(n.op)
    if fn is None:
        return None, "no NIR primitive"
    try:
        return fn(n, g, dt), None
    except _NonStandard as e:
        return None, str(e)


def _jsonable(v):
    return v.item() if isinstance(v, np.generic) else str(v)


def to_nir_graph(graph: Graph, dt: float | None = None, strict: bool = False) -> nir.NIRGraph:
    """The NIR graph of ``graph``. ``strict``: refuse (UnsupportedError listing every node that
    would need an extension subgraph, with its module path and the reason) instead."""
    graph.verify()
    dt = float(dt if dt is not None else graph.meta.get("dt", nrn.DEFAULT_DT))
    nodes, edges, refused = {}, [], []
    for n in graph.topological_order():
        node, why = _convert(n, graph, dt)
        srcs = [nir_name(i) for i in n.inputs]
        if node is None:
            refused.append(f"{n.name} ({n.op}{', ' + n.path if n.path else ''}): {why}")
            node = encode(n, [graph[i].shape for i in n.inputs], srcs)
        elif n.path:
            node.metadata[PATH] = n.path
        nodes[nir_name(n.name)] = node
        edges += [(s, nir_name(n.name)) for s in dict.fromkeys(srcs)]
    if strict and refused:
        raise UnsupportedError(f"--strict-nir: {len(refused)} node(s) have no standard NIR "
                               "form:\n  " + "\n  ".join(refused))
    meta = {"dt": dt, "snncc.name": graph.name,
            "snncc.meta": json.dumps({**graph.meta, "dt": dt}, default=_jsonable)}
    if "T" in graph.meta:
        meta["snncc.T"] = int(graph.meta["T"])
    out = nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=False)
    check_nir_types(out)
    return out


def emit_nir(graph: Graph, out, dt: float | None = None, strict: bool = False) -> Path:
    """The ``nir`` target: write ``graph`` as a ``.nir`` file with ``nir.write`` (atomically)."""
    g = to_nir_graph(graph, dt, strict)
    buf = io.BytesIO()
    nir.write(buf, g)
    return atomic_write(out, lambda f: f.write(buf.getvalue()), replaces=WRITTEN_BY_SNNCC)


def _written_by_snncc(path: Path) -> bool:
    """A ``.nir`` file this writer made: HDF5 with snncc's graph name in its metadata."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "snncc.name" in f.get("node/metadata", {})
    except (OSError, ValueError):
        return False


WRITTEN_BY_SNNCC = Ours("a .nir file written by snncc", _written_by_snncc)
