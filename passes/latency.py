"""Synaptic latency balancing for targets whose synapses deliver one step late (Lava).

Lava's ``Dense`` and ``Conv`` send at step t what they received at step t - 1 (DESIGN.md, Lava),
while every other process (neurons, the custom processes) answers within the step. On such a
target node n's IR step t appears at target step t + depth(n), with

    depth(Input) = 0
    depth(n)     = max_i depth(in_i) + 1      n a synapse (Conv1d, Conv2d, Linear)
    depth(n)     = max_i depth(in_i)          every other node (an IR Delay's own steps are
                                              part of the IR's meaning, not latency)

A node whose inputs have different depths (a residual Add, a membrane shortcut, an attention
matmul fed by branches of different length) would combine values from different IR steps.
Balancing delays input i by ``balance(n)[i] = max_j depth(in_j) - depth(in_i)`` target steps so
every input arrives from the same IR step; then every node computes its IR values exactly,
``latency`` = max depth of the outputs steps late.

The delays are target timing, not IR semantics: inserting IR ``Delay`` nodes would change what
the reference simulator computes on the compiled graph (it has no synaptic latency). So the pass
leaves the nodes alone and records the plan in ``graph.meta['latency']``; the Lava back-end
builds one delay process per balanced edge from it and refuses a graph without a current plan.
"""

from __future__ import annotations

from snncc.errors import UnsupportedError
from snncc.graph import Graph
from snncc.pipeline import register_pass, report

SYNAPSE_OPS = ("Conv1d", "Conv2d", "Linear")


def feed_forward_order(graph: Graph) -> list:
    """Nodes after all their inputs, Delay inputs included (the graph's own order lets a Delay
    come first, as cycles may pass through it); refuses a graph with a cycle."""
    pending = {k: len(n.inputs) for k, n in graph.nodes.items()}
    consumers = graph.consumers()
    ready = [k for k, d in pending.items() if d == 0]
    order = []
    while ready:
        k = ready.pop()
        order.append(graph[k])
        for c in consumers[k]:
            pending[c] -= 1
            if pending[c] == 0:
                ready.append(c)
    if len(order) < len(graph):
        stuck = next(k for k, d in pending.items() if d > 0)
        raise UnsupportedError(
            "latency balancing needs a feed-forward graph; a cycle passes through this node: "
            "the graph feeds a value back to the next step (a recurrent connection, or a "
            "library neuron that is not the canonical neuron, built from its own earlier state, "
            "such as snnTorch's subtract reset or Norse's LIF; snnTorch's Leaky with "
            "reset_mechanism='zero', spikingjelly's LIF/IF and Norse's IAF are canonical)",
            node=stuck, path=graph[stuck].path)
    return order


def latency_plan(graph: Graph, synapse_ops=SYNAPSE_OPS, balance: bool = True) -> dict:
    """The depth of every node and the delay steps to add on each input (see the module doc).

    ``balance=False`` gives the plan of a naive mapping (no delays; a node's depth is its
    deepest input's), i.e. what the target computes when the pass is skipped. Returns a
    JSON-able dict: ``{"synapse_ops", "latency", "depth": {node: d}, "balance": {node: [k_i]}}``
    where ``balance`` lists only nodes with a delayed input.
    """
    depth: dict[str, int] = {}
    delays: dict[str, list[int]] = {}
    for n in feed_forward_order(graph):
        ins = [depth[i] for i in n.inputs]
        d = max(ins, default=0)
        if balance and any(k != d for k in ins):
            delays[n.name] = [d - k for k in ins]
        depth[n.name] = d + (1 if n.op in synapse_ops else 0)
    latency = max(depth[o.name] for o in graph.outputs)
    return {"synapse_ops": list(synapse_ops), "latency": latency, "depth": depth,
            "balance": delays}


@register_pass()
def balance_synaptic_latency(graph: Graph) -> Graph:
    """Plan delays so every input of a node arrives from the same step on a target whose
    synapses deliver one step late; record the latency in graph.meta['latency']."""
    plan = latency_plan(graph)
    graph.meta["latency"] = plan
    report(graph, "balance_synaptic_latency", latency=plan["latency"],
           balanced_nodes=sorted(plan["balance"]),
           delay_steps=int(sum(sum(k) for k in plan["balance"].values())))
    return graph


def require_plan(graph: Graph) -> dict:
    """The graph's recorded plan, checked to be the balanced plan of the graph as it is now
    (a pass that ran after the balancing would leave it stale)."""
    plan = graph.meta.get("latency")
    if plan is None:
        raise UnsupportedError("the graph has no latency plan: run the "
                               "'balance_synaptic_latency' pass before emitting", node=graph.name)
    if plan != latency_plan(graph, tuple(plan["synapse_ops"])):
        raise UnsupportedError("the latency plan is stale (the graph changed after "
                               "'balance_synaptic_latency'): run it last", node=graph.name)
    return plan

