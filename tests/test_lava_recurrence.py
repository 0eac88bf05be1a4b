"""Recurrent graphs on Lava (real Lava processes, Loihi2SimCfg, floating_pt): a loop closed by an
IR Delay runs exactly as the simulator computes it. Where the loop passes a synapse (Lava's Dense
delivers a step late), the Delay gives up that step (passes/latency.py); its first outputs stay 0
in every round of a batch larger than the lanes. A loop with more synapses than delay steps runs
dilated: every IR step takes D Lava steps, the neurons updating once per D steps."""

from __future__ import annotations

import numpy as np
import pytest

from snncc import ir, neuron
from snncc.backends.lava.lower import lower
from snncc.backends.lava.runner import run_network
from snncc.errors import UnsupportedError
from snncc.graph import Graph
from snncc.passes.latency import latency_plan
from snncc.simulator import simulate

from conftest import assert_rates_in_range

T, N = 8, 6


def recurrent_graph(seed: int, steps: int = 1, synapses_back: int = 1,
                    self_loop: bool = False) -> Graph:
    """x -> fc -> (+ back) -> LIF n; n -> ``synapses_back`` Linear layers -> Delay(steps) ->
    back; the readout of another Linear on n. ``self_loop``: a second loop without a synapse
    (a membrane kept by a Delay, v[t] = 0.5 v[t-1] + ...)."""
    rng = np.random.default_rng(seed)
    g = Graph("rec", {"T": T})
    g.add(ir.Input("x", input_shape=(5,)))
    last = f"rec{synapses_back - 1}"
    g.add(ir.Delay("back", (last,), steps=steps, shape_hint=(N,), kind_hint=ir.Kind.REAL))
    g.add(ir.Linear("fc", ("x",), weight=rng.normal(0.3, 1, (N, 5)),
                    bias=rng.normal(0.2, 0.2, N)))
    if self_loop:
        g.add(ir.Delay("mem", ("keep",), shape_hint=(N,), kind_hint=ir.Kind.REAL))
        g.add(ir.Scale("half", ("mem",), factor=0.5))
        g.add(ir.Add("sum", ("fc", "back", "half")))
    else:
        g.add(ir.Add("sum", ("fc", "back")))
    g.add(ir.Neuron("n", ("sum",), **neuron.from_lif(2.0, 1.0, 0.0).fields()))
    if self_loop:
        g.add(ir.Scale("keep", ("sum",), factor=0.25))
    src = "n"
    for i in range(synapses_back):
        g.add(ir.Linear(f"rec{i}", (src,), weight=rng.normal(0, 0.8, (N, N))))
        src = f"rec{i}"
    g.add(ir.Linear("head", ("n",), weight=rng.normal(0, 0.8, (3, N))))
    g.add(ir.Readout("mean", ("head",)))
    g.add(ir.Output("out", ("mean",)))
    return g.verify()


def _inputs(seed: int, batch: int) -> np.ndarray:
    return np.random.default_rng(seed + 100).normal(0.4, 1.0, (T, batch, 5))


@pytest.mark.parametrize("steps, synapses_back, self_loop, dilation", [
    (1, 1, False, 1), (2, 1, False, 1), (2, 2, False, 1), (1, 1, True, 1), (1, 2, False, 2),
    (1, 3, True, 3), (2, 3, False, 2)],
    ids=["delay1-1synapse", "delay2-1synapse", "delay2-2synapses", "with-a-membrane-loop",
         "delay1-2synapses-dilated", "delay1-3synapses-membrane-loop-dilated",
         "delay2-3synapses-dilated"])
def test_a_loop_through_synapses_is_exact_in_every_round(steps, synapses_back, self_loop,
                                                        dilation):
    """B = 5 on 2 lanes: three rounds, each starting from the Delay's zeros, not from the
    previous round's last steps. A loop with more synapses than delay steps (it used to be
    refused) runs with each IR step taking D Lava steps."""
    for seed in (0, 1):
        g = recurrent_graph(seed, steps, synapses_back, self_loop)
        x = _inputs(seed, 5)
        sim = simulate(g, x, T, record=True)
        plan = latency_plan(g)
        assert plan["dilation"] == dilation and plan["absorbed"]["back"] == steps * dilation
        res = run_network(lower(g, plan), x, record=["n", "sum", "back"], lanes=2)
        assert res["lanes"] == 2 and res["steps"] == 3 * res["period"]
        np.testing.assert_array_equal(res["trace"]["n"], sim.trace["n"])
        for k in ("sum", "back"):  # Lava's Dense sums W @ s in its own order: last bits
            np.testing.assert_allclose(res["trace"][k], sim.trace[k], rtol=0, atol=1e-12,
                                       err_msg=k)
        np.testing.assert_allclose(res["outputs"]["out"], sim.outputs["out"], rtol=0,
                                   atol=1e-12)
        assert_rates_in_range({"n": float(sim.trace["n"].mean())})


def test_the_delay_gives_up_the_steps_its_loop_spends_in_synapses():
    g = recurrent_graph(0, steps=2, synapses_back=1)
    plan = latency_plan(g)
    d = plan["depth"]
    assert (d["fc"], d["n"], d["rec0"], d["back"]) == (1, 1, 2, 1)
    assert plan["balance"] == {"back": [1]}  # its FIFO: no balancing process after it
    assert plan["latency"] == 2  # rec0's depth, deeper than the output's
    net = lower(g, plan)
    (back,) = [p for p in net.processes if p.name == "back"]
    # one IR step left to the FIFO; the inputs that become IR steps 0 and 1 are muted
    assert back.params == {"steps": 1, "mute_from": 0, "mute_steps": 2}


def test_a_loop_with_more_synapses_than_delay_steps_runs_dilated():
    """Two synapses on a loop of one delay step: each IR step takes 2 Lava steps, the loop's
    Delay absorbs both, every neuron is the custom one (Lava's LIF updates every step), the
    round is T * 2 + latency steps, and the Delay mutes the inputs of its first 2 Lava steps."""
    g = recurrent_graph(0, steps=1, synapses_back=2)
    plan = latency_plan(g)
    assert (plan["dilation"], plan["absorbed"]) == (2, {"back": 2})
    d = plan["depth"]
    assert (d["fc"], d["n"], d["rec0"], d["rec1"], d["back"]) == (1, 1, 2, 3, 1)
    net = lower(g, plan)
    assert net.dilation == 2 and net.period == T * 2 + plan["latency"]
    assert "2 Lava steps" in net.custom_neurons["n"]
    (back,) = [p for p in net.processes if p.name == "back"]
    assert back.params == {"steps": 0, "mute_from": 1, "mute_steps": 2}


def test_an_unbalanced_plan_of_a_loop_is_refused():
    with pytest.raises(UnsupportedError, match="feed-forward graph; a cycle passes"):
        latency_plan(recurrent_graph(0), balance=False)


@pytest.mark.parametrize("steps, synapses_back", [(1, 1), (2, 2), (1, 2)])
def test_a_quantized_loop_runs_in_loihi2_arithmetic_on_lava(steps, synapses_back):
    """quantize_for_loihi2 gives the loop's synapses one scale with the input synapse they are
    added to (its Delay closes the loop before its source is classified), and the loop stays on
    the chip (fixed_pt processes): Lava's spikes equal the Loihi 2 simulator's. Both used to
    refuse the neuron ("no integer form on the chip")."""
    import snncc

    g = recurrent_graph(0, steps, synapses_back)
    x = _inputs(0, 3)
    report = snncc.check(g, target="lava", inputs=x, fixed_point=True, calibrate=x)
    (layer,) = report.layers
    assert layer.agreement_sim_target == 1.0 and 0.05 < layer.rate_sim < 0.95
    assert layer.agreement_sim > 0.9  # the quantized loop still close to the float one


def test_compile_says_when_a_network_runs_dilated(tmp_path):
    import snncc

    said = []
    snncc.compile(recurrent_graph(0, steps=1, synapses_back=2), target="lava",
                  out=tmp_path / "rec", log=said.append)
    assert any("each time step takes 2 target steps" in s for s in said), said
    said.clear()
    snncc.compile(recurrent_graph(0), target="lava", out=tmp_path / "plain", log=said.append)
    assert not any("target steps" in s for s in said)
