"""Fuse a neuron written with tensor ops into the canonical neuron computing the same numbers.

The tracer maps ``mem = mem * k + x; s = (mem > theta).float(); mem = (1 - s) * mem`` (TET's
``LIFSpike``, and the like) to a membrane of Scale/Add/Hadamard nodes with a Delay for the
state, fired on by a neuron that only compares (alpha 0, gamma 1, beta 0)::

    h = Add(Delay1(Scale_k(m)), x)            (or Scale_k of the Delay; k = 1 without a Scale)
    s = Neuron_compare(h)                      theta, CMP
    m = Add(h, Scale_-1(Hadamard(h, s)))       hard reset: h - h*s
      | Add(h, Scale_-theta(s)) or Add(h, Scale_-1(Scale_theta(s)))   soft reset: h - theta*s

which is the canonical neuron on x with alpha = k, gamma = 1, beta = 0, v_init = 0 (the Delay's
first output), the comparison's theta and CMP, and that reset (snncc.neuron).

Exactness: the canonical charge ``alpha*v + 1*x + 0`` is ``fl(k*v) + x`` (``1*x`` and ``+ 0``
are exact; only a zero's sign can differ, which no comparison or later sum sees); the hard reset
``h*(1 - s) + 0*s`` and ``h - h*s`` are h or 0 alike, the soft reset ``h - theta*s`` and
``h + (-(theta*s))`` the same rounding. So every spike and membrane is the circuit's. A circuit
whose charge is another expression (``v + (x - v) / tau`` rounds differently from
``(1 - 1/tau) v + x / tau``) stays a circuit, with the reason in the pass report: every target
but Lava computes it as it is.
"""

from __future__ import annotations

import numpy as np

from snncc import ir
from snncc import neuron as cn
from snncc.graph import Graph
from snncc.pipeline import register_pass, report

from .common import Decline, where


def _compared_with(n: ir.Neuron) -> np.ndarray | None:
    """t where neuron ``n`` fires on exactly ``x CMP t`` of its input x: a neuron that only
    compares (alpha 0, gamma 1), its bias beta (a BatchNorm folded into it, ``x - th > 0``)
    moved into the threshold where that is exact: ``fl(x + b) CMP 0`` is ``x CMP -b`` (a sum
    of floats is 0 only when exact, and rounding keeps its sign). None for any other neuron."""
    if not (np.all(n.alpha == 0) and np.all(n.gamma == 1)):
        return None
    beta, theta = np.broadcast_arrays(n.beta, n.theta)
    if not np.all((beta == 0) | (theta == 0)):
        return None
    return n.theta - n.beta


def _feedback(graph: Graph, name: str) -> tuple[np.ndarray, str, list[str]] | None:
    """(k, m, chain) where node ``name`` is ``k * m`` one step back: Delay1(Scale_k(m)),
    Scale_k(Delay1(m)) or Delay1(m) (k = 1); None otherwise."""
    node = graph[name]
    if isinstance(node, ir.Delay) and node.steps == 1:
        inner = graph[node.inputs[0]]
        if isinstance(inner, ir.Scale):
            return inner.factor, inner.inputs[0], [name, inner.name]
        return np.asarray(1.0), node.inputs[0], [name]
    if isinstance(node, ir.Scale) and isinstance(inner := graph[node.inputs[0]], ir.Delay) \
            and inner.steps == 1:
        return node.factor, inner.inputs[0], [name, inner.name]
    return None


def _negated(graph: Graph, name: str) -> tuple[str, np.ndarray, list[str]] | None:
    """(y, f, nodes) where node ``name`` is ``-(f * y)`` exactly, Scale_-f(y) or
    Scale_-1(Scale_f(y)), by ``nodes``; None otherwise."""
    node = graph[name]
    if not isinstance(node, ir.Scale):
        return None
    inner = graph[node.inputs[0]]
    if np.all(node.factor == -1) and isinstance(inner, ir.Scale):
        return inner.inputs[0], inner.factor, [name, inner.name]
    return node.inputs[0], -node.factor, [name]


def _reset(graph: Graph, m: ir.Node, h: str, s: ir.Neuron,
           theta: np.ndarray) -> tuple[str, list[str]]:
    """The reset mode ``m`` computes from ``h`` and the spikes ``s``, and its nodes."""
    if not isinstance(m, ir.Add) or len(m.inputs) != 2 or h not in m.inputs:
        raise Decline(f"{where(m)} is not h minus a reset term")
    negated = _negated(graph, m.inputs[1 - m.inputs.index(h)])
    if negated is not None:
        y, f, nodes = negated
        part = graph[y]
        if isinstance(part, ir.Hadamard) and sorted(part.inputs) == sorted((h, s.name)) \
                and np.all(f == 1):
            return cn.RESET_HARD, [m.name, *nodes, y]
        if y == s.name and np.array_equal(*np.broadcast_arrays(f, theta)):
            return cn.RESET_SOFT, [m.name, *nodes]
    raise Decline(f"{where(m)} subtracts neither h*s (a reset to zero) nor theta*s "
                  "(a reset by the threshold)")


def _circuit(graph: Graph, s: ir.Neuron, theta: np.ndarray,
             cons: dict) -> tuple[ir.Neuron, list[str]]:
    """The canonical neuron for the circuit ``s`` fires on at ``theta``, and the nodes it
    replaces."""
    h = graph[s.inputs[0]]
    if not isinstance(h, ir.Add) or len(h.inputs) != 2:
        raise Decline(f"{where(h)} is not the sum of a decayed membrane and an input")
    loops = [(i, fb) for i, name in enumerate(h.inputs) if (fb := _feedback(graph, name))]
    if len(loops) != 1:
        raise Decline(f"{where(h)}: not one input is the membrane one step back")
    i, (k, m, chain) = loops[0]
    mode, resets = _reset(graph, graph[m], h.name, s, theta)
    replaced = [h.name, *chain, *resets]
    members = {*replaced, s.name}
    for name in replaced:  # the circuit's nodes feed nothing outside it
        outside = [c for c in cons[name] if c not in members]
        if outside:
            raise Decline(f"{where(graph[name])} is read outside the neuron, by {outside}")
    fused = ir.Neuron(s.name, (h.inputs[1 - i],), path=s.path, alpha=k, gamma=1.0, beta=0.0,
                      theta=theta, v_reset=0.0, v_init=0.0, cmp=s.cmp, reset=mode)
    return fused, replaced


@register_pass()
def fuse_tensor_op_neurons(graph: Graph) -> Graph:
    """Replace a membrane written with tensor ops and a comparing neuron by the canonical
    neuron, where the two compute the same numbers (module doc)."""
    fused, declined = {}, {}
    cons = graph.consumers()
    for s in graph.of_type(ir.Neuron):
        theta = _compared_with(s)
        if theta is None:
            continue
        try:
            neuron, replaced = _circuit(graph, s, theta, cons)
        except Decline as why:
            declined[s.name] = str(why)
            continue
        graph.replace(s.name, neuron)
        for name in replaced:
            graph.remove(name)
        cons = graph.consumers()  # (listed again only after a change, not per neuron)
        fused[s.name] = {"alpha": np.asarray(neuron.alpha).tolist(), "reset": neuron.reset}
    report(graph, "fuse_tensor_op_neurons", fused=fused, declined=declined)
    return graph
