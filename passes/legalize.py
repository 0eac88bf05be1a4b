"""Legalization for a target (DESIGN.md, "The pipeline"): rewrite the graph into what the
target declares (:class:`snncc.targets.Target`) or fail listing every node it cannot map.

Rewrites, each exact:

- **Flatten -> Reshape** where the target has Reshape but not Flatten (a flatten is the
  reshape to its output shape).
- **One threshold per layer** (``per_neuron_threshold=False``): a neuron whose theta varies is
  made uniform by dividing its membrane by k = theta / theta_ref (theta_ref the largest |theta|;
  all thetas must have one sign) and multiplying the channels of the conv/linear synapses
  feeding it by 1/k (:func:`~snncc.passes.common.scale_region`). Needs a hard reset to 0 (so the
  reset value stays uniform) or a soft reset, and synapse channels that each reach neurons of
  one k; otherwise the neuron is listed.
- **Comparison**: ``h >= theta`` is ``h > theta'`` with theta' the largest value below theta in
  the simulated dtype (:func:`snncc.neuron.next_below`), for every h of that dtype, so real
  membranes and integer counts alike. When the membrane is integer-valued (integer-kind input,
  integer alpha, gamma, beta, v_reset, v_init) theta' = ceil(theta) - 1 instead, exact in any
  dtype and an integer for integer hardware. Likewise ``h > theta`` is ``h >= theta'`` with the
  next value above (floor(theta) + 1 for integer membranes). Only with a hard reset: a soft
  reset subtracts theta, which must not move.

Everything else a target lacks (an op, a reset mode, per-neuron decay) is listed. The error
names every such node with its module path, in one message. On a target with a custom neuron
process (``Target.custom_neuron``: Lava) a neuron these rewrites cannot bring into the native
model stays as it is, for that process; the pass report says why, per neuron.
"""

from __future__ import annotations

import numpy as np

from snncc import ir
from snncc import neuron as nrn
from snncc.errors import PassError, UnsupportedError
from snncc.graph import Graph, node_with
from snncc.pipeline import register_pass, report
from snncc.targets import Target, get_target

from .batchnorm import folds_left_to_writer
from .common import Decline, compact, input_region, scale_region, where


def _integer_membrane(graph: Graph, n: ir.Neuron) -> bool:
    return graph[n.inputs[0]].kind.integral and all(
        np.array_equal(v, np.round(v)) for k, v in n.params().items() if k != "theta")


def _uniform(a) -> bool:
    a = np.asarray(a)
    return bool(np.all(a == a.flat[0]))


def _one_threshold(graph: Graph, n: ir.Neuron, cons: dict) -> None:
    """Make ``n``'s threshold uniform by moving its variation into the synapses' weights."""
    theta = np.broadcast_to(n.theta, n.shape)
    if n.reset == nrn.RESET_HARD and np.any(n.v_reset != 0):
        raise Decline("per-neuron thresholds with a hard reset to a nonzero value cannot become "
                      "one threshold")
    if not (np.all(theta > 0) or np.all(theta < 0)):
        raise Decline("thresholds of both signs (or zero) cannot become one threshold")
    ref = theta.flat[np.argmax(np.abs(theta))]
    scale_region(graph, n, input_region(graph, n, cons), theta / ref)
    graph.replace(n.name, node_with(graph[n.name], theta=ref))  # theta/k is ref up to rounding


def _comparison(graph: Graph, n: ir.Neuron, t: Target, dtype) -> ir.Neuron:
    """``n`` with a comparison the target has (module doc)."""
    if n.cmp in t.cmps:
        return n
    if n.reset != nrn.RESET_HARD:
        raise Decline(f"the target lacks '{n.cmp}' and a soft reset subtracts theta, so theta "
                      "cannot move")
    integer = _integer_membrane(graph, n)
    if n.cmp == nrn.CMP_GE:
        theta = np.ceil(n.theta) - 1 if integer else nrn.next_below(n.theta, dtype)
    else:
        theta = np.floor(n.theta) + 1 if integer else -nrn.next_below(-n.theta, dtype)
    other = nrn.CMP_GT if n.cmp == nrn.CMP_GE else nrn.CMP_GE
    if other not in t.cmps:
        raise Decline(f"the target has none of the comparisons {sorted(nrn.CMPS)}")
    return node_with(n, cmp=other, theta=compact(np.asarray(theta, np.float64), n.shape))


def _legal_neuron(graph: Graph, n: ir.Neuron, t: Target, dtype) -> None:
    if n.reset not in t.resets:
        raise Decline(f"{n.reset} reset is not supported")
    if not t.per_neuron_decay and not _uniform(n.alpha):
        raise Decline("the decay alpha differs between neurons; the target has one per layer")
    if not t.per_neuron_threshold and not _uniform(n.theta):
        _one_threshold(graph, n, graph.consumers())
    graph.replace(n.name, _comparison(graph, graph[n.name], t, dtype))


@register_pass()
def legalize_for(graph: Graph, target: str | None = None, dtype: str = "float64") -> Graph:
    """Rewrite into the target's capabilities or fail listing every node it cannot map.
    ``target`` defaults to ``graph.meta['target']``; ``dtype`` is the simulated dtype in which
    moved thresholds are exact."""
    name = target or graph.meta.get("target")
    if not name:
        raise PassError("legalize_for needs a target: pass target=NAME or set "
                        "graph.meta['target']")
    t = get_target(name)
    graph.verify()
    problems, rewritten, custom = [], [], {}
    # the writer folds these into the synapse before them (Target.weight_folds)
    left = ({b.bn.name for bs in folds_left_to_writer(graph).values() for b in bs}
            if t.weight_folds == "when_written" else set())
    for n in graph.topological_order():
        if n.name in left:
            continue
        try:
            if isinstance(n, ir.Flatten) and "Flatten" not in t.ops and "Reshape" in t.ops:
                new = ir.Reshape(n.name, n.inputs, n.path, target=n.shape)
                new.shape, new.kind = n.shape, n.kind
                graph.replace(n.name, new)
                rewritten.append(n.name)
            elif n.op not in t.ops:
                raise Decline(f"{n.op} is not supported")
            elif isinstance(n, ir.Neuron):
                try:
                    _legal_neuron(graph, n, t, np.dtype(dtype))
                except Decline as why:
                    if not t.custom_neuron:
                        raise
                    custom[n.name] = str(why)
                if graph[n.name] is not n:
                    rewritten.append(n.name)
        except Decline as why:
            problems.append(f"{where(n)}: {why}")
    if problems:
        raise UnsupportedError(f"cannot map {len(problems)} node(s) to target '{name}': "
                               + "; ".join(problems))
    graph.verify()
    report(graph, "legalize_for", target=name, rewritten=rewritten, custom_neuron=custom)
    return graph
