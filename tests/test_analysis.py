"""Energy and SOP counting: a hand calculation on a network whose firing is fixed by
construction, and an independent count of synaptic events (unfold-based) on random spikes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from snncc import analysis, ir
from snncc.errors import SnnccError
from snncc.graph import Graph
from snncc.simulator import simulate

T = 4


def fixed_rate_graph(hoisted: bool) -> Graph:
    """All-ones static image (6 values) -> Linear(6->5, weights 0.1, so current 0.6) -> IF
    neuron (theta 1): h = 0.6, 1.2 (spike, reset), 0.6, 1.2 ... rate exactly 0.5 -> Linear(5->3)
    -> mean over T."""
    g = Graph("fixed", {"T": T, "hoisted": ["fc1"] if hoisted else []})
    g.add(ir.Input("x", input_shape=(6,), static=True))
    g.add(ir.Linear("fc1", ("x",), weight=np.full((5, 6), 0.1)))
    g.add(ir.Neuron("if1", ("fc1",), alpha=1.0, gamma=1.0, theta=1.0))
    g.add(ir.Linear("fc2", ("if1",), weight=np.ones((3, 5))))
    g.add(ir.Readout("mean", ("fc2",)))
    g.add(ir.Linear("head", ("mean",), weight=np.ones((2, 3))))
    g.add(ir.Output("out", ("head",)))
    return g.verify()


@pytest.mark.parametrize("hoisted", [False, True])
def test_energy_matches_hand_calculation(hoisted):
    g = fixed_rate_graph(hoisted)
    res = simulate(g, np.ones((2, 6)), record=True)
    np.testing.assert_array_equal(res.trace["if1"][:, 0, 0], [0, 1, 0, 1])
    rep = analysis.energy_report(g, res)
    rows = {r.node: r for r in rep.layers}
    # fc1: MACs on the analog input, 5 x 6 per step, T steps unless hoisted (then once)
    assert rows["fc1"].macs == 30 * (1 if hoisted else T)
    # fc2: spikes at rate 0.5, 5 inputs x 3 synapses: SOPs = 0.5 x T x 15 = 30
    assert rows["fc2"].input_rate == 0.5 and rows["fc2"].sops == 30 == rows["fc2"].sops_paper
    # head after the mean over T runs once on real values: 3 x 2 MACs
    assert rows["head"].macs == 6 and rows["head"].runs == 1
    macs = 30 * (1 if hoisted else T) + 6
    assert rep.total_energy_uj == pytest.approx((4.6 * macs + 0.9 * 30) * 1e-6, rel=1e-12)


def independent_conv_events(spikes: np.ndarray, node: ir.Conv2d) -> float:
    """Synaptic events counted tap by tap: every (output position, kernel tap, input channel)
    whose input is a spike is one accumulate for each output channel of the group."""
    x = torch.as_tensor(spikes.reshape(-1, *spikes.shape[2:]))
    cols = F.unfold(x, node.weight.shape[2:], node.dilation, node.padding, node.stride)
    per_group_out = node.weight.shape[0] // node.groups
    return float(cols.sum() * per_group_out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sops_agree_with_independent_count(seed):
    rng = np.random.default_rng(seed)
    g = Graph("conv", {"T": T})
    g.add(ir.Input("x", input_shape=(3, 16, 16), static=True))
    g.add(ir.Conv2d("c1", ("x",), weight=rng.normal(0, 0.5, (8, 3, 3, 3)), padding=(1, 1)))
    g.add(ir.Neuron("n1", ("c1",), alpha=0.5, gamma=0.5, theta=0.5))
    g.add(ir.Conv2d("c2", ("n1",), weight=rng.normal(0, 0.5, (8, 8, 3, 3)), padding=(1, 1),
                    stride=(2, 2)))
    g.add(ir.Neuron("n2", ("c2",), alpha=0.5, gamma=0.5, theta=0.5))
    g.add(ir.Flatten("f", ("n2",)))
    g.add(ir.Linear("fc", ("f",), weight=rng.normal(0, 0.1, (10, 512))))
    g.add(ir.Output("out", ("fc",)))
    res = simulate(g.verify(), rng.normal(0.3, 1.0, (2, 3, 16, 16)), record=True)
    rep = {r.node: r for r in analysis.energy_report(g, res).layers}
    assert 0.05 < res.trace["n1"].mean() < 0.95
    expected = independent_conv_events(res.trace["n1"], g["c2"]) / 2  # per sample
    assert rep["c2"].sops == pytest.approx(expected, rel=1e-12)
    # the papers' rate x T x FLOPs counts padded taps too: close, not equal, for 3x3 on 16x16
    assert rep["c2"].sops_paper == pytest.approx(expected, rel=0.1)
    fc_events = res.trace["n2"].sum() * 10 / 2
    assert rep["fc"].sops == pytest.approx(fc_events, rel=1e-12)
    assert rep["fc"].sops_paper == pytest.approx(fc_events, rel=0.01)


def test_attention_additions_counted_from_spike_addresses():
    rng = np.random.default_rng(5)
    g = Graph("attn", {"T": T})
    g.add(ir.Input("q", input_shape=(2, 6, 4), input_kind="spike"))
    g.add(ir.Input("kt", input_shape=(2, 4, 6), input_kind="spike"))
    g.add(ir.AddressedAccumulate("qk", ("q", "kt")))
    g.add(ir.Output("o", ("qk",)))
    q = (rng.random((T, 3, 2, 6, 4)) < 0.4).astype(float)
    k = (rng.random((T, 3, 2, 4, 6)) < 0.4).astype(float)
    res = simulate(g.verify(), {"q": q, "kt": k}, record=True)
    np.testing.assert_array_equal(res.output, q[-1] @ k[-1])
    assert res.additions["qk"].tolist() == [int(q[t].sum()) * 6 for t in range(T)]
    row = analysis.energy_report(g, res).layers[0]
    assert row.sops == q.sum() * 6 / 3


def test_count_addresses_add_their_row_count_times():
    """Integer spikes (Spike-Driven Transformer V3's counts 0..4) address a row once per unit."""
    rng = np.random.default_rng(6)
    g = Graph("attn", {"T": 1})
    g.add(ir.Input("q", input_shape=(2, 6, 4), input_kind="count"))
    g.add(ir.Input("kt", input_shape=(2, 4, 6)))
    g.add(ir.AddressedAccumulate("qk", ("q", "kt")))
    g.add(ir.Output("o", ("qk",)))
    q = rng.integers(0, 5, (1, 3, 2, 6, 4)).astype(float)
    k = rng.normal(size=(1, 3, 2, 4, 6))
    res = simulate(g.verify(), {"q": q, "kt": k}, record=True)
    np.testing.assert_allclose(res.output, q[-1] @ k[-1], rtol=1e-12)  # (summation order)
    assert res.additions["qk"].tolist() == [int(q.sum()) * 6]
    row = analysis.energy_report(g, res).layers[0]
    assert row.input_kind == "count" and row.sops == q.sum() * 6 / 3


@pytest.mark.parametrize("op, in_shape, kw", [
    ("Conv2d", (4, 9, 7), dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)),
    ("Conv2d", (3, 8, 8), dict(stride=(3, 3), padding=(0, 0))),
    ("Conv2d", (6, 5, 6), dict(stride=(1, 2), padding=(3, 1), groups=6)),
    ("Conv1d", (4, 11), dict(stride=(2,), padding=(1,), dilation=(3,)))])
def test_fan_out_counts_what_the_convolution_reads(op, in_shape, kw):
    """Against the gradient of the conv's sum with all-ones weights: the synapses each input
    element has, borders, strides, dilation and groups included."""
    from snncc.analysis import fan_out

    groups = kw.get("groups", 1)
    k = (3, 2) if op == "Conv2d" else (3,)
    node = getattr(ir, op)("c", ("x",), weight=np.ones((6 if groups > 1 else 5,
                                                          in_shape[0] // groups, *k)), **kw)
    node.shape = node.infer([in_shape], [ir.Kind.SPIKE])[0]
    conv = torch.nn.functional.conv2d if op == "Conv2d" else torch.nn.functional.conv1d
    x = torch.zeros((1, *in_shape), dtype=torch.float64, requires_grad=True)
    conv(x, torch.ones(node.weight.shape, dtype=torch.float64), None, node.stride,
         node.padding, node.dilation, groups).sum().backward()
    got = fan_out(node, in_shape)
    assert got.shape == in_shape and torch.equal(got, x.grad[0])


@pytest.mark.parametrize("family", ["spikformer-cifar", "sdt-v1", "meta-spikeformer",
                                    "snasnet-bw"])
def test_energy_from_recorded_inputs_equals_from_every_trace(family):
    """``snncc inspect`` records only :func:`analysis.energy_record` (neurons and synaptic
    inputs): the same report, to the bit, as from every node's trace, before and after the
    passes (BN folded, attention lowered to addressed additions, static input hoisted)."""
    from conftest import assert_rates_in_range

    from snncc.frontends.tracer import trace
    from snncc.frontends.zoo import small
    from snncc.pipeline import for_target
    from snncc.simulator import estimate_bytes

    case = small(family, 1, batch=3)
    g = trace(case.model, case.inputs, T=T, static=case.inputs.dim() == 4, name=family)
    x = case.inputs.numpy()
    if g.meta.get("input_layout") == "BT":
        x = np.swapaxes(x, 0, 1)
    for h in (g, for_target("sim", log=lambda s: None).run(g)):
        names = analysis.energy_record(h)
        full, kept = simulate(h, x, T, record=True), simulate(h, x, T, record=names)
        assert set(kept.trace) == names and not kept.membrane
        assert analysis.energy_report(h, kept).to_dict() == \
            analysis.energy_report(h, full).to_dict()
        assert kept.firing_rates(h) == full.firing_rates(h)
        assert_rates_in_range(kept.firing_rates(h))
        assert analysis.energy_report(h, kept).total_sops > 0
        assert estimate_bytes(h, T, 3, names) < estimate_bytes(h, T, 3, True)


def test_record_names_a_node_of_the_graph():
    g = fixed_rate_graph(hoisted=False)
    with pytest.raises(SnnccError, match="not in the graph: \\['nope'\\]"):
        simulate(g, np.ones((2, 6)), record={"if1", "nope"})
    assert set(simulate(g, np.ones((2, 6)), record={"if1"}).trace) == {"if1"}
