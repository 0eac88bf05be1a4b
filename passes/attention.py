"""Spike matmuls into addressed additions (DESIGN.md, "Spike matmul into addressed additions").

**Matmuls.** With a spike matrix S, ``(S R)[n, :] = sum over i with S[n, i] = 1 of R[i, :]``:
each spike is an address selecting a row of R to add, ``spikes x row length`` additions
(:class:`~snncc.ir.AddressedAccumulate`; ``R S`` likewise selects columns). Every SpikeMatMul
becomes one, addressed by its spike operand (the left one when both are spikes; a count operand,
Spike-Driven Transformer V3's integer spikes, where neither is spikes: a count c adds its row
c times).

**Association order.** For a chain ``A B C`` (one matmul feeding only another) with A: m x k,
B: k x n, C: n x p per head, the dense addition counts are::

    (A B) C:  m k n + m n p            A (B C):  k n p + m k p

i.e. for attention Q K^T V (m = n = N tokens, k = p = d, the head width):
(Q K^T) V costs 2 N^2 d and Q (K^T V) costs 2 N d^2. Every head of a node has the same N and d,
so the choice holds for all heads; the cheaper order is taken (the source order on a tie).
Re-association is exact only in integer arithmetic: it is done only when A, B and C are all
spikes or counts (so every partial sum is an integer, exact in float32 and float64 far beyond
attention sizes) and the new pair still has a spike operand per matmul; a scale factor must have
been merged into the threshold first (``merge_sdsa_scale_into_threshold``). Otherwise the source
order is kept and the report says why.

**Hadamard SDSA** (Spike-Driven Transformer V1, Meta-SpikeFormer SDSA-1/2): the Hadamard product
of spikes is a mask (an AND, no addition); the following sum over tokens is a column sum of
that 0/1 mask M. A column sum is an addressed accumulation of the mask with itself: moving the
summed axes last and writing the mask as a row ``(..., 1, N)`` and as a column ``(..., N, 1)``,
``row @ column = sum over n with M[n] = 1 of M[n]``, one addition per 1 of the mask. So every
Sum of spikes becomes Transpose, two Reshapes, an AddressedAccumulate and a Reshape back to
the sum's shape; the values are the same integer counts.

The report gives, per chain, the order chosen, the head count and sizes, and the dense bound
of additions per step and sample; the simulator's ``SimResult.additions`` counts the additions
actually performed (spikes x row length) per step.
"""

from __future__ import annotations

import math

import numpy as np

from snncc import ir
from snncc.graph import Graph
from snncc.pipeline import register_pass, report

from .common import where


def _put(graph: Graph, node: ir.Node) -> None:
    """Put ``node`` in place of its namesake with its shape and kind inferred from its inputs
    as they are now: later rewrites in this pass read them (a lowered matmul whose output also
    feeds another matmul, a re-associated inner matmul whose shape changed)."""
    graph.replace(node.name, node)
    shape, node.kind = node.infer([graph[i].shape for i in node.inputs],
                                  [graph[i].kind for i in node.inputs])
    node.shape = tuple(int(d) for d in shape)


def _addressed(graph: Graph, name: str, a: str, b: str, path: str) -> None:
    """Replace node ``name`` by ``a @ b`` addressed by its spike (or count) operand."""
    operand = ir.address_operand([graph[a].kind, graph[b].kind])
    _put(graph, ir.AddressedAccumulate(name, (a, b), path, spike_operand=operand))


def _dense_additions(graph: Graph, a: str, b: str) -> int:
    """Additions per sample of the addressed ``a @ b`` if every entry of its spike operand
    were 1 (batch dims broadcast): batch x m x k x n."""
    sa, sb = graph[a].shape, graph[b].shape
    batch = math.prod(np.broadcast_shapes(sa[:-2], sb[:-2]))
    return batch * sa[-2] * sa[-1] * sb[-1]


def _chain(graph: Graph, outer: ir.SpikeMatMul, cons: dict):
    """(side, inner) if one operand of ``outer`` is a SpikeMatMul feeding only it."""
    for side, name in enumerate(outer.inputs):
        inner = graph[name]
        if isinstance(inner, ir.SpikeMatMul) and cons[name] == [outer.name]:
            return side, inner
    return None


def _lower_chain(graph: Graph, outer: ir.SpikeMatMul, side: int, inner: ir.SpikeMatMul) -> dict:
    """Lower a chain of two matmuls in the cheaper exact order; returns its report entry."""
    a, b, c = (*inner.inputs, outer.inputs[1]) if side == 0 else (outer.inputs[0], *inner.inputs)
    (m, k), (_, n), (_, p) = (graph[x].shape[-2:] for x in (a, b, c))
    cost = {"left": m * k * n + m * n * p, "right": k * n * p + m * k * p}
    source = "left" if side == 0 else "right"
    best = min(cost, key=lambda o: (cost[o], o != source))
    spike = {x: graph[x].kind.integral for x in (a, b, c)}
    # the new inner pair needs a spike (or count) operand, and the outer one its non-inner
    # operand spiking (or counting)
    addressable = {"left": (spike[a] or spike[b]) and spike[c],
                   "right": (spike[b] or spike[c]) and spike[a]}
    real = [x for x in (a, b, c) if not graph[x].kind.integral]
    reason = ""
    if best != source and real:
        reason = (f"kept the source order: operand {where(graph[real[0]])} is real-valued, so "
                  "re-association is not exact")
    elif best != source and not addressable[best]:
        reason = ("kept the source order: in the other order a matmul has no spike or count "
                  "operand")
    if reason:
        best = source
    if best == "left":
        new_inner, new_outer = (a, b), (inner.name, c)
    else:
        new_inner, new_outer = (b, c), (a, inner.name)
    _addressed(graph, inner.name, *new_inner, inner.path)
    _addressed(graph, outer.name, *new_outer, outer.path)
    names = {"left": f"({a} @ {b}) @ {c}", "right": f"{a} @ ({b} @ {c})"}
    heads = math.prod(outer.shape[:-2])
    entry = {"order": names[best], "source_order": names[source], "heads": heads,
             "per_head": {"m": m, "k": k, "n": n, "p": p},
             "max_additions_per_step": heads * cost[best]}
    if reason:
        entry["note"] = reason
    return entry


def _column_sum(graph: Graph, s: ir.Sum) -> dict:
    """Replace a Sum of spikes by the mask's addressed column sum (module doc)."""
    x = graph[s.inputs[0]]
    nd = len(x.shape)
    summed = sorted({a % nd for a in s.axes})
    kept = [i for i in range(nd) if i not in summed]
    n = math.prod(x.shape[i] for i in summed)
    lead = tuple(x.shape[i] for i in kept)
    src = x.name
    if kept + summed != list(range(nd)):
        src = graph.add(ir.Transpose(graph.fresh(f"{s.name}.t"), (src,), s.path,
                                     perm=tuple(kept + summed)))
    row = graph.add(ir.Reshape(graph.fresh(f"{s.name}.row"), (src,), s.path,
                               target=(*lead, 1, n)))
    col = graph.add(ir.Reshape(graph.fresh(f"{s.name}.col"), (src,), s.path,
                               target=(*lead, n, 1)))
    acc = graph.add(ir.AddressedAccumulate(graph.fresh(f"{s.name}.acc"), (row, col), s.path,
                                           spike_operand=0))
    _put(graph, ir.Reshape(s.name, (acc,), s.path, target=s.shape))
    return {"node": acc, "columns": math.prod(lead), "length": n,
            "max_additions_per_step": math.prod(lead) * n}


@register_pass()
def lower_spike_matmul_to_addressed_additions(graph: Graph) -> Graph:
    """Every SpikeMatMul and every Sum of spikes into AddressedAccumulate (exact counts)."""
    graph.verify(allow_dead=True)  # kinds are current (an earlier pass may have removed a scale)
    chains, single, column_sums = {}, {}, {}
    order = graph.topological_order()
    for n in reversed(order):  # outer matmuls first, so each chain is seen from its end
        outer = graph[n.name]
        if isinstance(outer, ir.SpikeMatMul):
            found = _chain(graph, outer, graph.consumers())
            if found:
                chains[outer.name] = _lower_chain(graph, outer, *found)
    for n in order:
        if isinstance(graph[n.name], ir.SpikeMatMul):
            a, b = n.inputs
            _addressed(graph, n.name, a, b, n.path)
            single[n.name] = {"max_additions_per_step": _dense_additions(graph, a, b)}
        elif n.op == "Sum" and graph[n.inputs[0]].kind is ir.Kind.SPIKE:  # not Mean
            column_sums[n.name] = _column_sum(graph, n)
    graph.verify(allow_dead=True)
    report(graph, "lower_spike_matmul_to_addressed_additions", chains=chains, matmuls=single,
           column_sums=column_sums)
    return graph
