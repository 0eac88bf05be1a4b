"""The synaptic-latency plan (passes/latency.py), without Lava: depths, balancing delays, the
recorded latency, and the checks the Lava emitter relies on."""

from __future__ import annotations

import numpy as np
import pytest

from snncc import ir
from snncc.errors import UnsupportedError
from snncc.graph import Graph
from snncc.passes.latency import latency_plan, require_plan
from snncc.pipeline import run_passes
from snncc.simulator import simulate


def residual_graph() -> Graph:
    """x -> conv1 -> n1 -> conv2 -> n2 -> conv3 -> n3; add(n1, n3) -> fc -> out."""
    rng = np.random.default_rng(0)
    g = Graph("res", {"T": 4})
    g.add(ir.Input("x", input_shape=(1, 4, 4), static=True))
    g.add(ir.Conv2d("conv1", ("x",), weight=rng.normal(size=(2, 1, 3, 3)), padding=(1, 1)))
    g.add(ir.Neuron("n1", ("conv1",)))
    g.add(ir.Conv2d("conv2", ("n1",), weight=rng.normal(size=(2, 2, 3, 3)), padding=(1, 1)))
    g.add(ir.Neuron("n2", ("conv2",)))
    g.add(ir.Conv2d("conv3", ("n2",), weight=rng.normal(size=(2, 2, 3, 3)), padding=(1, 1)))
    g.add(ir.Neuron("n3", ("conv3",)))
    g.add(ir.Add("add", ("n1", "n3")))
    g.add(ir.Flatten("flat", ("add",)))
    g.add(ir.Linear("fc", ("flat",), weight=rng.normal(size=(3, 32))))
    g.add(ir.Output("out", ("fc",)))
    return g.verify()


def test_depths_and_balancing_delays():
    plan = latency_plan(residual_graph())
    d = plan["depth"]
    assert (d["x"], d["conv1"], d["n1"], d["conv2"], d["n3"], d["add"], d["fc"]) == \
        (0, 1, 1, 2, 3, 3, 4)
    assert plan["balance"] == {"add": [2, 0]}
    assert plan["latency"] == 4


def test_naive_plan_has_no_delays():
    plan = latency_plan(residual_graph(), balance=False)
    assert plan["balance"] == {} and plan["depth"]["add"] == 3


def test_pass_records_plan_and_keeps_the_graph_and_its_spikes():
    g = residual_graph()
    out = run_passes(g, ["balance_synaptic_latency"], log=lambda s: None)
    assert out.meta["latency"] == latency_plan(g)
    assert out.meta["reports"]["balance_synaptic_latency"]["delay_steps"] == 2
    assert [n.name for n in out] == [n.name for n in g]
    x = np.random.default_rng(1).normal(size=(2, 1, 4, 4))
    a, b = simulate(g, x, 4, record=True), simulate(out, x, 4, record=True)
    assert all(np.array_equal(a.trace[k], b.trace[k]) for k in a.trace)


def test_require_plan_refuses_missing_and_stale_plans():
    g = residual_graph()
    with pytest.raises(UnsupportedError, match="balance_synaptic_latency"):
        require_plan(g)
    g = run_passes(g, ["balance_synaptic_latency"], log=lambda s: None)
    assert require_plan(g)["latency"] == 4
    g.add(ir.Linear("fc2", ("fc",), weight=np.ones((3, 3))))
    g.rewire("fc", "fc2")
    g["fc2"].inputs = ("fc",)
    with pytest.raises(UnsupportedError, match="stale"):
        require_plan(g.verify())
