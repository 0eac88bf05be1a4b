"""Synaptic latency balancing for targets whose synapses deliver one step late (Lava).

Lava's ``Dense`` and ``Conv`` send at step t what they received at step t - 1 (DESIGN.md, Lava),
while every other process (neurons, the custom processes) answers within the step. On such a
target node n's IR step t appears at target step t + depth(n), with

    depth(Input) = 0
    depth(n)     = max_i depth(in_i) + 1      n a synapse (Conv1d, Conv2d, Linear)
    depth(n)     = max_i depth(in_i)          every other node (an IR Delay's own steps are
                                              part of the IR's meaning, not latency)

A cycle (a recurrent connection, a neuron written with tensor ops keeping its state in a Delay)
passes through at least one IR ``Delay``; there the synapses' lateness and the Delay's own steps
are one resource. A Delay of k steps on a cycle absorbs up to k steps of its loop's synaptic
latency: its depth may be as low as depth(src) - k (its IR step t, the source's step t - k, is
then ready that early), so depths are the least solution of

    depth(n) >= depth(in_i) + syn(n) - absorb(n),   absorb(n) = k for a Delay on a cycle, else 0

a longest-path problem that has a solution exactly when no loop has more synapses than delay
steps. A loop with more (SNASNet's backward cell: up to three convolutions in one delay step)
needs more target steps than the IR gives it, so the whole network then runs *dilated*: every
IR step takes D target steps, D the smallest for which each loop's synapses fit in its Delays'
k * D steps (absorb(n) = k * D), node n's IR step t appears at target step t * D + depth(n),
and every stateful process (neuron, readout) updates only at the steps of its own phase, once
per D (:mod:`snncc.backends.lava.processes`); synapses and the other processes compute every
step, what they compute between a consumer's phases going unread. D = 1 is the usual case.
Such a Delay (with the one-input nodes right after it) is then placed as late as its consumers
allow, and its process holds ``k * D - absorb + balance`` steps and zeroes the inputs that would
become its first k IR steps (inputs of warm-up or of the previous round).

A node whose inputs have different depths (a residual Add, a membrane shortcut, an attention
matmul fed by branches of different length) would combine values from different IR steps.
Balancing delays input i by ``balance(n)[i] = max_j depth(in_j) - depth(in_i)`` target steps so
every input arrives from the same IR step; then every node computes its IR values exactly,
its step t at target step t + depth, and ``latency`` is the deepest node's depth.

The delays are target timing, not IR semantics: inserting IR ``Delay`` nodes would change what
the reference simulator computes on the compiled graph (it has no synaptic latency). So the pass
leaves the nodes alone and records the plan in ``graph.meta['latency']``; the Lava back-end
builds one delay process per balanced edge from it and refuses a graph without a current plan.
"""

from __future__ import annotations

from snncc import ir
from snncc.errors import UnsupportedError
from snncc.graph import Graph
from snncc.pipeline import register_pass, report

SYNAPSE_OPS = ("Conv1d", "Conv2d", "Linear")


def nodes_on_cycles(graph: Graph) -> set[str]:
    """The nodes through which a cycle passes (every cycle passes a Delay: the nodes both
    reached from a Delay and reaching it)."""
    consumers = graph.consumers()
    on = set()
    for d in graph.of_type(ir.Delay):
        later = Graph.closure(consumers[d.name], consumers.__getitem__)
        if d.name in later:
            on |= later & Graph.closure(d.inputs, lambda k: graph[k].inputs)
    return on


def latency_plan(graph: Graph, synapse_ops=SYNAPSE_OPS, balance: bool = True) -> dict:
    """The depth of every node and the delay steps to add on each input (see the module doc).

    ``balance=False`` gives the plan of a naive mapping (no delays; a node's depth is its
    deepest input's), i.e. what the target computes when the pass is skipped; it refuses a
    graph with a cycle. Returns a JSON-able dict: ``{"synapse_ops", "latency", "dilation",
    "depth": {node: d}, "balance": {node: [k_i]}, "absorbed": {delay: k * D}}`` where
    ``balance`` lists only nodes with a delayed input and ``absorbed`` the Delays on cycles;
    depths, balances and latency count target steps.
    """
    on_cycles = nodes_on_cycles(graph)
    delays = {n.name: n.steps for n in graph.of_type(ir.Delay) if n.name in on_cycles}
    if delays and not balance:
        raise UnsupportedError("an unbalanced mapping needs a feed-forward graph; a cycle "
                               "passes through this Delay", node=next(iter(delays)))
    order = graph.topological_order()
    # a loop passes each synapse at most once, and each of its Delays holds at least one step;
    # whether a dilation closes every loop is decided on the nodes on loops alone (cheap)
    most = 1 + sum(n.op in synapse_ops for n in order)
    loops = [n for n in order if n.name in on_cycles]
    for dilation in range(1, most + 1):
        absorbed = {k: steps * dilation for k, steps in delays.items()}
        if _least_depths(loops, synapse_ops, absorbed) is not None:
            break
    else:
        raise AssertionError("no dilation closes the loops")  # D = synapses + 1 always does
    depth = _least_depths(order, synapse_ops, absorbed)
    # A loop's Delay and the chain of one-input, one-consumer nodes after it (a Scale) go as
    # late as the chain's consumers allow: the balancing delay its last edge would need moves
    # into the Delay's FIFO (no process more) instead of a balancing process of its own.
    consumers = graph.consumers()
    def follows(name: str) -> str | None:
        (c, *more) = consumers[name] or [None]
        ok = c is not None and not more and len(graph[c].inputs) == 1 and c in on_cycles
        return c if ok else None

    for d in absorbed:
        chain = [d]
        while (c := follows(chain[-1])) is not None and c != d:
            chain.append(c)
        last = chain[-1]
        slack = min((depth[c] - (1 if graph[c].op in synapse_ops else 0) + absorbed.get(c, 0)
                     - depth[last] for c in consumers[last]), default=0)
        for k in chain:
            depth[k] += max(slack, 0)
    balances: dict[str, list[int]] = {}
    for n in order:
        need = depth[n.name] - (1 if n.op in synapse_ops else 0) + absorbed.get(n.name, 0)
        ks = [need - depth[i] for i in n.inputs]
        if balance and any(ks):
            balances[n.name] = ks
    # the deepest node, not only the outputs: a loop's way back (a recurrent synapse) is
    # deeper than the neuron it feeds, and its last steps are recorded too
    latency = max(depth.values())
    return {"synapse_ops": list(synapse_ops), "latency": latency, "dilation": dilation,
            "depth": depth, "balance": balances, "absorbed": absorbed}


def _least_depths(order: list, synapse_ops, absorbed: dict) -> dict | None:
    """The least depths of the nodes ``order`` with depth(n) >= depth(in_i) + syn(n) - absorb(n)
    (module doc; inputs outside ``order`` left out), or None if a loop gains steps on every turn
    (more synapses than its Delays absorb)."""
    def step(n, depth):
        ins = [depth[i] for i in n.inputs if i in depth]
        return max(ins, default=0) + (1 if n.op in synapse_ops else 0) - absorbed.get(n.name, 0)

    def relax(depth) -> bool:
        raised = False
        for n in order:
            d = step(n, depth)
            if d > depth[n.name]:
                depth[n.name], raised = d, True
        return raised

    depth = {n.name: 0 for n in order}
    for _ in range(len(order) + 1):  # a feed-forward graph settles in one pass
        if not relax(depth):
            return depth
    return None


@register_pass()
def balance_synaptic_latency(graph: Graph) -> Graph:
    """Plan delays so every input of a node arrives from the same step on a target whose
    synapses deliver one step late; record the latency in graph.meta['latency']."""
    plan = latency_plan(graph)
    graph.meta["latency"] = plan
    report(graph, "balance_synaptic_latency", latency=plan["latency"],
           target_steps_per_step=plan["dilation"],
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

