"""Housekeeping passes: dead-node elimination, identity removal and exact constant folding.

Identities (``remove_identities``), each removed with its consumers reading its input:

- Reshape or Flatten to the shape it already has; a Reshape/Flatten of a Reshape/Flatten is
  one Reshape of the first one's input (row-major reshapes compose);
- Transpose by the identity permutation; a Transpose of a Transpose is one Transpose by the
  composed permutation ``q[i] = p1[p2[i]]`` (removed too if that is the identity);
- Scale by 1; Add or Concat of a single input; Pad by zero pixels.

Constants (``fold_constants``), only where the result is bit-identical:

- ``Scale(Scale(x, f1), f2)`` is ``Scale(x, f1 f2)`` when f1 or f2 is a power of two and f1 f2
  is exact (no underflow or overflow; then ``(x f1) f2`` and ``x (f1 f2)`` round identically);
- a ``Scale(x, 0)`` input of an Add is zero and is dropped from the Add (``y + 0 == y`` up to the
  sign of a zero, which no comparison or product can see), when the other inputs still give
  the Add its shape (SNASNet's "zeroize" operation), and unless that would leave a model Input
  without a path to an Output: the Input stays part of the model's signature, and a graph with
  an unused Input fails verification, so that zero addend is kept (and reported).

Nodes left without consumers are removed as dead nodes (Inputs never are).
"""

from __future__ import annotations

import numpy as np

from snncc import ir
from snncc.graph import Graph, node_with
from snncc.pipeline import register_pass, report

from .common import bypass, exact_mul, is_power_of_two


def _live(graph: Graph, inputs_of: dict | None = None) -> set[str]:
    """The nodes whose results reach an Output, with ``inputs_of`` overriding some nodes'
    inputs (to ask what a rewrite would leave live)."""
    inputs_of = inputs_of or {}
    return Graph.closure([n.name for n in graph.outputs],
                         lambda k: inputs_of.get(k, graph[k].inputs))


def _fed(graph: Graph, inputs_of: dict | None = None) -> set[str]:
    """The nodes a path from an Input reaches, with ``inputs_of`` overriding some nodes'
    inputs."""
    inputs_of, consumers = inputs_of or {}, {}
    for k, node in graph.nodes.items():
        for i in inputs_of.get(k, node.inputs):
            consumers.setdefault(i, []).append(k)
    return Graph.closure([n.name for n in graph.inputs], lambda k: consumers.get(k, ()))


def _remove_dead(graph: Graph) -> list[str]:
    live = _live(graph)
    dead = [k for k in graph.nodes if k not in live and graph[k].op != "Input"]
    for k in dead:
        graph.remove(k)
    return dead


@register_pass()
def eliminate_dead_nodes(graph: Graph) -> Graph:
    """Remove nodes whose results reach no Output."""
    report(graph, "eliminate_dead_nodes", removed=_remove_dead(graph))
    return graph


def _identity(graph: Graph, n: ir.Node) -> bool:
    src = graph[n.inputs[0]] if n.inputs else None
    if isinstance(n, (ir.Reshape, ir.Flatten)):
        return n.shape == src.shape
    if isinstance(n, ir.Transpose):
        return n.perm == tuple(range(len(n.perm)))
    if isinstance(n, ir.Scale):
        return bool(np.all(n.factor == 1)) and n.shape == src.shape
    if isinstance(n, (ir.Add, ir.Concat)):
        return len(n.inputs) == 1
    if isinstance(n, ir.Pad):
        return not any(n.pads)
    return False


def _composed(graph: Graph, n: ir.Node) -> ir.Node | None:
    """One node doing what ``n`` and its input of the same family do, or None."""
    src = graph[n.inputs[0]] if len(n.inputs) == 1 else None
    if isinstance(n, (ir.Reshape, ir.Flatten)) and isinstance(src, (ir.Reshape, ir.Flatten)):
        new = ir.Reshape(n.name, src.inputs, n.path, target=n.shape)
        new.shape, new.kind = n.shape, n.kind
        return new
    if isinstance(n, ir.Transpose) and isinstance(src, ir.Transpose):
        return node_with(n, inputs=src.inputs, perm=tuple(src.perm[p] for p in n.perm))
    return None


def _sweep(graph: Graph, rewrite) -> tuple[list[str], list[str]]:
    """Apply ``rewrite(graph, node) -> bool`` to every node until nothing changes; returns the
    rewritten nodes and the dead ones removed."""
    changed, done, dead = True, [], []
    while changed:
        changed = False
        for n in graph.topological_order():
            if n.name in graph and rewrite(graph, graph[n.name]):
                done.append(n.name)
                changed = True
        dead += _remove_dead(graph)
        graph.verify(allow_dead=True)  # re-infer kinds; dead nodes are the pass manager's call
    return done, dead


def _drop_identity(graph: Graph, n: ir.Node) -> bool:
    new = _composed(graph, n)
    if new is not None:
        graph.replace(n.name, new)
        return True
    if _identity(graph, n):
        bypass(graph, n.name)
        return True
    return False


@register_pass()
def remove_identities(graph: Graph) -> Graph:
    """Remove identity reshapes, transposes, scales, single-input adds and empty pads, and
    compose reshape and transpose chains."""
    rewritten, dead = _sweep(graph, _drop_identity)
    report(graph, "remove_identities", rewritten=rewritten, dead=dead)
    return graph


def _fold(graph: Graph, n: ir.Node, kept: dict[str, str]) -> bool:
    if isinstance(n, ir.Scale) and isinstance(graph[n.inputs[0]], ir.Scale):
        src = graph[n.inputs[0]]
        # with a power of two the product of the factors is exact, unless it under/overflows
        if (is_power_of_two(n.factor) or is_power_of_two(src.factor)) \
                and exact_mul(src.factor, n.factor):
            graph.replace(n.name, node_with(n, inputs=src.inputs, factor=src.factor * n.factor))
            return True
    if isinstance(n, ir.Add) and len(n.inputs) > 1:
        zero = [i for i in n.inputs
                if isinstance(graph[i], ir.Scale) and not np.any(graph[i].factor)]
        rest = [i for i in n.inputs if i not in zero]
        if zero and rest and \
                tuple(np.broadcast_shapes(*(graph[i].shape for i in rest))) == n.shape:
            now, after = _live(graph), _live(graph, {n.name: tuple(rest)})
            lost = [i.name for i in graph.inputs if i.name in now and i.name not in after]
            # (a loop driven only through them: a recurrence started by its initial state)
            cut = sorted(after - _fed(graph, {n.name: tuple(rest)}))
            if lost or cut:
                kept[n.name] = (f"kept the zero addend(s) {zero}: dropping them would leave "
                                + (f"input(s) {lost} unused" if lost else
                                   f"{cut} without a path from an input"))
                return False
            graph.replace(n.name, node_with(n, inputs=tuple(rest)))
            return True
    return False


@register_pass()
def fold_constants(graph: Graph) -> Graph:
    """Fold exact constant arithmetic: scale chains with a power of two, zero-scaled addends."""
    kept: dict[str, str] = {}
    folded, dead = _sweep(graph, lambda g, n: _fold(g, n, kept))
    report(graph, "fold_constants", folded=folded, dead=dead, kept=kept)
    return graph
