"""Fold a power-of-two Scale of spikes or counts into the synapses that read it.

Spike-Driven Transformer V3 sends integer spikes divided by their maximum (``count / 4``); as
traced, each convolution after such a spike reads a real value (the Scale's), so the energy
report counts its work as multiply-accumulates, and the target sends graded values that are not
the counts. ``conv(W, s * c) = conv(s * W, c)`` for s a power of two, exactly: every product and
every partial sum of one side is s times the other's, and scaling by a power of two commutes
with rounding (the pass declines where a weight times s would leave the normal range). So each
Conv / Linear reading the Scale, directly or through reshapes and transposes that feed only it,
reads its input instead, with its weights times s (its bias unchanged), and a Scale read by
nothing else is removed.
"""

from __future__ import annotations

import numpy as np

from snncc import ir
from snncc.graph import Graph, node_with
from snncc.pipeline import register_pass, report

from .common import LAYOUT, SYNAPSES, is_power_of_two, where


def _exact_times(weight: np.ndarray, s: float) -> bool:
    """Whether ``weight * s`` stays in the normal range, where scaling by s is exact."""
    scaled = np.abs(weight[weight != 0] * s)
    return bool(np.all((scaled >= np.finfo(np.float32).tiny) & np.isfinite(scaled)))


def _synapse_after(graph: Graph, name: str, cons: dict) -> tuple[list[str], ir.Node | None]:
    """The layout nodes from ``name`` (a consumer of the Scale) on, each the only reader of the
    one before, and the Conv / Linear they reach (None if they reach none)."""
    chain = []
    node = graph[name]
    while isinstance(node, LAYOUT) and len(cons[node.name]) == 1:
        chain.append(node.name)
        node = graph[cons[node.name][0]]
    return chain, node if isinstance(node, SYNAPSES) else None


@register_pass()
def fold_power_of_two_scale_into_synapses(graph: Graph) -> Graph:
    """Each Conv / Linear reading spikes or counts times a scalar power of two reads them
    directly, its weights times the factor (module doc); a Scale left unread is removed."""
    folded, declined = {}, {}
    cons = graph.consumers()
    for scale in list(graph.of_type(ir.Scale)):
        s, src = scale.factor, graph[scale.inputs[0]]
        if s.size != 1 or not is_power_of_two(s) or not src.kind.integral:
            continue
        s = float(s.reshape(()))
        kept = []
        for name in dict.fromkeys(cons[scale.name]):
            chain, syn = _synapse_after(graph, name, cons)
            if syn is None:
                kept.append(name)
            elif not _exact_times(syn.weight, s):
                declined[syn.name] = f"weights of {where(syn)} times {s:g} leave the normal range"
                kept.append(name)
            else:
                graph.replace(syn.name, node_with(syn, weight=syn.weight * s))
                graph.replace(name, node_with(graph[name], inputs=(src.name,)))
                folded[syn.name] = {"scale": scale.name, "factor": s, "through": chain}
        if not kept:
            graph.remove(scale.name)
    graph.verify(allow_dead=True)
    report(graph, "fold_power_of_two_scale_into_synapses", folded=folded, declined=declined)
    return graph
