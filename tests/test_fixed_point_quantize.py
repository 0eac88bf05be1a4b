"""quantize_for_loihi2 (lossy): the report's per-layer spike agreement on small zoo models
compiled for Lava, exact neurons on spike counts (ties at the threshold included), the trained
digits Spikformer's accuracy in fixed point against float, the outlier warning, and the weight
and bias formats Lava's models take unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from snncc import ir
from snncc import neuron as nrn
from snncc.backends.lava.compat import lava
from snncc.errors import PassError, UnsupportedError
from snncc.fixed_point import bias_format, lava_dense_params, quantize_bias, weight_format
from snncc.frontends.checkpoint import from_checkpoint
from snncc.frontends.digits import checkpoint, digits_for
from snncc.frontends.tracer import trace
from snncc.frontends.zoo import small
from snncc.graph import Graph, node_with
from snncc.passes import default_pipeline
from snncc.passes.quantize import QuantizationWarning, calibration_inputs
from snncc.pipeline import run_passes
from snncc.serialize import load, save, to_bytes_dict
from snncc.simulator import simulate

REPORT = "quantize_for_loihi2"


def quantize(g: Graph, **options) -> Graph:
    return run_passes(g, [REPORT], options={REPORT: options}, log=lambda s: None)


def compiled_for_lava(g: Graph) -> Graph:
    g.meta["target"] = "lava"
    return run_passes(g, default_pipeline("lava", quantized=True), log=lambda s: None)


# Meta-SpikeFormer's earlier head reads the mean on the host (its official spiking head steps
# on the host too: test_spiking_head_on_a_mean_runs_on_the_host).
HOST_HEAD = {"meta-spikeformer": {"head_lif": False}}


@pytest.mark.parametrize("family", ["spikformer-cifar", "meta-spikeformer"])
def test_report_states_spike_agreement_with_the_float_network(family):
    """Every neuron layer's spike agreement, as the report states it, is what the simulator
    gives on the calibration inputs (float graph vs quantized graph in Loihi 2 arithmetic)."""
    case = small(family, 0, **HOST_HEAD.get(family, {}))
    g = compiled_for_lava(trace(case.model, case.inputs, T=4, name=family))
    q = quantize(g)
    rep = q.meta["reports"][REPORT]
    x = calibration_inputs(g)
    ref = simulate(g, x, record=True).trace
    got = simulate(q, x, arithmetic="loihi2", record=True).trace
    neurons = [e for e in rep["layers"] if e["kind"] == "neuron"]
    assert [e["node"] for e in neurons] == [n.name for n in g.of_type(ir.Neuron)]
    for e in neurons:
        assert e["spike_agreement"] == np.mean(ref[e["node"]] == got[e["node"]]), e["node"]
        assert e["voltage_headroom_bits"] is None or e["voltage_headroom_bits"] > 0
    assert 0.85 < rep["spike_agreement"] <= 1 and rep["min_spike_agreement"] > 0.7
    assert rep["calibration"] == {"inputs": "random", "batch": 16, "T": 4, "per_run": 16}
    assert all(e["exact"] for e in neurons if e["node"].endswith("attn_lif"))
    assert not rep["warnings"] if family == "spikformer-cifar" else True
    synapses = [e for e in rep["layers"] if e["kind"] == "synapse"]
    assert synapses and all(e["weight_error"] < 0.1 for e in synapses)


def test_calibration_batch_is_what_the_memory_budget_holds():
    """Random calibration inputs: 16, or as many as the budget holds the runs of (one float
    run recording every node, then the float and fixed-point runs' spikes; a full-size model
    at 224x224: 3), stated in the report; the agreements are those of that many inputs."""
    from snncc import limits
    from snncc.passes.quantize import CALIBRATION_BATCH, calibration_batch
    from snncc.simulator import SPIKES, estimate_bytes

    case = small("spikformer-cifar", 0)
    g = compiled_for_lava(trace(case.model, case.inputs, T=4, name="spikformer-cifar"))
    assert calibration_batch(g, 4) == CALIBRATION_BATCH == 16
    need = max(estimate_bytes(g, 4, 6, record=True), 2 * estimate_bytes(g, 4, 6, record=SPIKES))
    with limits.memory_budget(need - 1):
        assert calibration_batch(g, 4) == 5
        rep = quantize(g).meta["reports"][REPORT]
    assert rep["calibration"] == {"inputs": "random", "batch": 5, "T": 4, "per_run": 5}
    given = quantize(g, calibrate=calibration_inputs(g, 5)).meta["reports"][REPORT]
    assert [e["spike_agreement"] for e in rep["layers"] if e["kind"] == "neuron"] == \
        [e["spike_agreement"] for e in given["layers"] if e["kind"] == "neuron"]


@pytest.mark.parametrize("family", ["spikformer-cifar", "spikformer-dvs"])
def test_calibration_inputs_beyond_the_budget_run_a_batch_at_a_time(family):
    """Given more calibration inputs than the budget holds the runs of, quantization runs them
    a few at a time (it used to be refused): the quantized graph and every figure of the
    report are those of one run of them all, but the number run at a time."""
    from snncc import limits
    from snncc.errors import ResourceError
    from snncc.passes.quantize import calibration_batch
    from snncc.simulator import SPIKES, estimate_bytes

    case = small(family, 0)
    g = compiled_for_lava(trace(case.model, case.inputs, T=4, name=family,
                                static=case.inputs.dim() == 4))
    x = calibration_inputs(g, 12, seed=3)
    whole = quantize(g, calibrate=x)
    need = max(estimate_bytes(g, 4, 5, record=True), 2 * estimate_bytes(g, 4, 5, record=SPIKES))
    with limits.memory_budget(need - 1):
        assert calibration_batch(g, 4) == 4
        with pytest.raises(ResourceError):  # the float run of all 12 at once
            simulate(g, x, record=True)
        parts = quantize(g, calibrate=x)
    rep_whole, rep_parts = (q.meta.pop("reports")[REPORT] for q in (whole, parts))
    assert rep_whole.pop("calibration") == {"inputs": "given", "batch": 12, "T": 4,
                                            "per_run": 12}
    assert rep_parts.pop("calibration") == {"inputs": "given", "batch": 12, "T": 4,
                                            "per_run": 4}
    assert rep_parts == rep_whole
    rates = [e["rate_float"] for e in rep_whole["layers"] if e["kind"] == "neuron"]
    assert 0.05 < np.mean(rates) < 0.95 and rep_whole["spike_agreement"] < 1.0
    parts_bytes, whole_bytes = to_bytes_dict(parts), to_bytes_dict(whole)
    assert parts_bytes.keys() == whole_bytes.keys()
    assert all(np.array_equal(parts_bytes[k], whole_bytes[k]) for k in whole_bytes)


@pytest.mark.parametrize("cmp", [">=", ">"])
def test_a_neuron_on_spike_counts_is_exact_ties_included(cmp):
    """Spike-driven attention: counts into h = v/2 + x/2 with threshold 2 (h == 2 often). The
    quantized neuron (g = 8, k = 16: V stays a multiple of 64 for T steps) keeps every spike,
    before ('>=') and after ('>' next_below) legalisation."""
    T = 4
    g = Graph("attn", {"T": T})
    g.add(ir.Input("q", input_shape=(6, 5), input_kind="spike"))
    g.add(ir.Input("k", input_shape=(5, 6), input_kind="spike"))
    g.add(ir.AddressedAccumulate("qk", ("q", "k")))
    theta = 2.0 if cmp == ">=" else float(nrn.next_below(2.0))
    g.add(ir.Neuron("lif", ("qk",), alpha=0.5, gamma=0.5, theta=theta, cmp=cmp))
    g.add(ir.Output("out", ("lif",)))
    rng = np.random.default_rng(5)
    x = {k: (rng.random((T, 32, *s)) < 0.4).astype(np.float64)
         for k, s in (("q", (6, 5)), ("k", (5, 6)))}
    q = quantize(g.verify(), calibrate=x)
    (entry,) = [e for e in q.meta["reports"][REPORT]["layers"] if e["node"] == "lif"]
    assert entry["exact"] and entry["spike_agreement"] == 1.0
    assert (q["lif"].gamma, q["lif"].theta, q["lif"].cmp) == (8, 31, ">")  # 16 * 2 - 1
    h = simulate(g, x, record=True)
    prev = np.concatenate([np.zeros_like(h.membrane["lif"][:1]), h.membrane["lif"][:-1]])
    assert np.sum(0.5 * prev + 0.5 * h.trace["qk"] == 2.0) > 10  # ties at the threshold


def test_trained_digits_spikformer_keeps_its_accuracy_in_fixed_point():
    """The built-in default model, compiled for Lava, quantized with training images as
    calibration: test accuracy in Loihi 2 fixed point within 1 point of float (measured: float
    96.67%, fixed point 96.94%; 97.22% with finer biases, bias_exp=None)."""
    arch = "digits-spikformer"
    _, g = from_checkpoint(checkpoint(arch), arch)
    g = compiled_for_lava(g)
    (x_train, _), (x_test, y_test) = digits_for(arch)
    q = quantize(g, calibrate=x_train[:256])
    rep = q.meta["reports"][REPORT]
    acc_float = np.mean(simulate(g, x_test).output.argmax(-1) == y_test)
    acc_fixed = np.mean(simulate(q, x_test, arithmetic="loihi2").output.argmax(-1) == y_test)
    assert abs(acc_fixed - acc_float) <= 0.01, (acc_float, acc_fixed, rep["warnings"])
    assert not rep["warnings"] and rep["min_spike_agreement"] > 0.9


def outlier_graph() -> Graph:
    rng = np.random.default_rng(2)
    w = rng.normal(0.0, 0.3, (10, 12))
    w[3, 4] = 300.0
    g = Graph("outlier", {"T": 4})
    g.add(ir.Input("x", input_shape=(12,), input_kind="spike"))
    g.add(ir.Linear("fc_outlier", ("x",), path="net.fc_outlier", weight=w))
    g.add(ir.Neuron("lif1", ("fc_outlier",), theta=0.5))
    g.add(ir.Linear("fc_ok", ("lif1",), path="net.fc_ok", weight=rng.normal(0.3, 0.3, (6, 10))))
    g.add(ir.Neuron("lif2", ("fc_ok",), theta=0.5))
    g.add(ir.Output("out", ("lif2",)))
    return g.verify()


def test_an_outlier_weight_warns_naming_the_layer_and_its_error():
    with pytest.warns(QuantizationWarning) as raised:
        q = quantize(outlier_graph())
    assert str(raised[0].message).startswith("'fc_outlier' (net.fc_outlier): weight quantization")
    rep = q.meta["reports"][REPORT]
    msg, threshold = rep["warnings"]  # the outlier, and what it does to the next neuron
    assert [str(w.message) for w in raised] == rep["warnings"]
    assert "fc_outlier" in msg and "407x the 99th percentile" in msg
    errors = {e["node"]: e["weight_error"] for e in rep["layers"] if e["kind"] == "synapse"}
    assert errors["fc_outlier"] > 0.5 > 0.05 > errors["fc_ok"]
    assert f"weight quantization error {errors['fc_outlier']:.1%}" in msg
    assert threshold.startswith("'lif1': its threshold is off by 100%")


def test_loihi2_arithmetic_refuses_a_graph_that_is_not_quantized():
    with pytest.raises(UnsupportedError, match=r"lif1.*comparison '>='.*theta is not an integer"):
        simulate(outlier_graph(), np.zeros((4, 1, 12)), arithmetic="loihi2")


def test_quantized_graph_round_trips_through_snnir(tmp_path):
    g = outlier_graph()
    with pytest.warns(QuantizationWarning):
        q = quantize(g)
    save(q, tmp_path / "q.snnir")
    x = calibration_inputs(g, batch=4)
    a = simulate(q, x, arithmetic="loihi2", record=True)
    b = simulate(load(tmp_path / "q.snnir"), x, arithmetic="loihi2", record=True)
    assert all(np.array_equal(a.trace[k], b.trace[k]) for k in a.trace)


def test_weight_and_bias_formats_are_what_lava_keeps():
    """Weights given by lava_dense_params survive Lava's clip_weights and truncate_weights
    unchanged; biases are 13-bit mantissas << 0 .. 7."""
    wu = lava(".utils.weightutils")
    for w in (np.array([[-128, 127, 3]]) * 4, np.array([[0, 255, 17]]), np.array([[-255, 0, -9]])):
        p = lava_dense_params(w)
        mode = wu.SignMode[p["sign_mode"]]
        kept = wu.truncate_weights(wu.clip_weights(p["weights"], mode, 8), mode, 8)
        assert np.array_equal(kept, p["weights"])
        assert np.array_equal(kept.astype(np.int64) << max(p["weight_exp"], 0) >>
                              max(-p["weight_exp"], 0), w)
    assert weight_format(np.array([0.5, 1.0])) is None
    assert weight_format(np.array([256, -1])) is None  # mixed: 256 = 128 * 2, -1 odd
    mant, exp = bias_format(np.array([4095, -4096, 4096, 3 << 7]))
    assert np.array_equal(nrn.loihi2_bias(mant, exp), [4095, -4096, 4096, 3 << 7])
    assert bias_format(np.array([4097])) is None
    mant, exp, sat = quantize_bias(np.array([0.4, 5000.3, -1e9]))
    assert np.array_equal(nrn.loihi2_bias(mant, exp), [0, 5000, -(4096 << 7)])
    assert sat.tolist() == [False, False, True]


def biased_graph(bias: float) -> Graph:
    """encoded input -> Linear (bias ``bias``, moved into the neuron) -> LIF (theta 1)."""
    rng = np.random.default_rng(3)
    g = Graph("biased", {"T": 4})
    g.add(ir.Input("x", input_shape=(12,)))
    g.add(ir.Linear("fc", ("x",), path="net.fc", weight=rng.normal(0.0, 0.3, (8, 12)),
                    bias=bias + rng.normal(0.0, 0.1, 8)))
    g.add(ir.Neuron("lif", ("fc",), alpha=0.5, theta=1.0))
    g.add(ir.Output("out", ("lif",)))
    return g.verify()


def test_biases_are_whole_input_units_unless_told_otherwise():
    """Default (netx's bias_exp = 6): every bias a whole number of input units (beta = (mant
    << 6) / 64), its rounding reported as bias_error (in thresholds per step); bias_exp=None:
    each bias's smallest exponent, finer."""
    reps, betas = {}, {}
    for bias_exp in (6, None):
        q = quantize(biased_graph(0.3), bias_exp=bias_exp)
        reps[bias_exp], betas[bias_exp] = q.meta["reports"][REPORT], q["lif"].beta
        assert reps[bias_exp]["bias_exp"] == bias_exp and not reps[bias_exp]["warnings"]
    (whole, fine) = [[e for e in reps[b]["layers"] if e["kind"] == "neuron"][0]
                     for b in (6, None)]
    assert np.all(betas[6] % 1 == 0) and np.any(betas[None] % 1)
    assert 0 < fine["bias_error"] < whole["bias_error"] <= 0.5 / whole["vth"]


@pytest.mark.parametrize("bias_exp, bias_max", [(6, 4095), (None, 4095 * 2)])
def test_a_large_bias_limits_the_scale_to_its_13_bit_range(bias_exp, bias_max):
    """A bias of 50 thresholds: the input scale is lowered until the bias fits 13 bits << the
    exponent (4095 input units at netx's 6, twice that at 7), none saturates."""
    q = quantize(biased_graph(50.0), bias_exp=bias_exp)
    rep = q.meta["reports"][REPORT]
    (fc,) = [e for e in rep["layers"] if e["node"] == "fc"]
    assert fc["scale_limited_by"] == "13-bit bias of 'lif'"
    assert bias_max / 2 < np.max(np.abs(q["lif"].beta)) <= bias_max
    assert not rep["warnings"]


def test_spiking_head_on_a_mean_runs_on_the_host():
    """The official head, head(lif(mean over tokens)): the mean leaves the chip, so its LIF
    steps on the host in floating point on the dequantized mean (it was refused: a mean has no
    integer form on the chip); the report names it."""
    case = small("meta-spikeformer", 0)
    g = compiled_for_lava(trace(case.model, case.inputs, T=4, name="meta"))
    q = quantize(g, calibrate=case.inputs.numpy())
    assert q.meta["reports"][REPORT]["host_neurons"] == ["lif"]
    assert q["lif"].theta == g["lif"].theta  # its float parameters, as they are
    fixed = simulate(q, case.inputs.numpy(), arithmetic="loihi2", record=True)
    mean = fixed.trace[q["lif"].inputs[0]]
    float_lif = simulate(_one_neuron(g["lif"], mean.shape[2:]), mean, record=True)
    np.testing.assert_array_equal(fixed.trace["lif"], float_lif.trace["lif"])


@pytest.mark.parametrize("conv_after", [False, True])
def test_a_neuron_after_a_pooling_inside_the_network_is_refused(conv_after):
    """Only a neuron after a mean over tokens or time (the head) moves to the host; one after
    an average pooling inside the network is refused by name, not moved off the chip with the
    rest of the network (SNASNet's cells). With a convolution between them, the pooling is
    named (the convolution was, as if it had no integer form)."""
    rng = np.random.default_rng(0)
    g = Graph("pooled", {"T": 4})
    g.add(ir.Input("x", input_shape=(2, 4, 4)))
    g.add(ir.Conv2d("c1", ("x",), weight=rng.normal(size=(3, 2, 3, 3)), padding=(1, 1)))
    g.add(ir.Neuron("n1", ("c1",), **nrn.from_lif(2.0, 0.5).fields()))
    g.add(ir.AvgPool2d("pool", ("n1",), kernel_size=(2, 2), stride=(2, 2)))
    if conv_after:
        g.add(ir.Conv2d("c2", ("pool",), weight=rng.normal(size=(3, 3, 1, 1))))
    g.add(ir.Neuron("n2", ("c2" if conv_after else "pool",), **nrn.from_if(0.3).fields()))
    g.add(ir.Output("out", ("n2",)))
    read = r"'c2' \(Conv2d\), computed from 'pool'" if conv_after else r"'pool'"
    with pytest.raises(PassError, match=rf"neuron 'n2' reads {read} \(AvgPool2d\), which has "
                                        r"no integer form on the chip"):
        quantize(compiled_for_lava(g.verify()))


def _one_neuron(n: ir.Neuron, shape: tuple) -> Graph:
    """A graph of neuron ``n`` alone on a real input of ``shape``."""
    g = Graph("one", {"T": 4})
    g.add(ir.Input("x", input_shape=shape))
    g.add(node_with(n, inputs=("x",)))
    g.add(ir.Output("out", (n.name,)))
    return g.verify()


def test_a_graph_with_two_outputs_is_quantized():
    """The calibration report compares the first output (the prediction) of the float and the
    fixed-point runs; with two Outputs it ended in 'ValueError: too many values to unpack'
    (found by fuzzing recurrent graphs, whose neurons are outputs too)."""
    from snncc.pipeline import for_target

    rng = np.random.default_rng(0)
    g = Graph("two", {"T": 4})
    g.add(ir.Input("x", input_shape=(5,)))
    g.add(ir.Linear("fc1", ("x",), weight=rng.normal(0.5, 1, (6, 5))))
    g.add(ir.Neuron("n1", ("fc1",), **nrn.from_lif(2.0, 1.0, 0.0).fields()))
    g.add(ir.Linear("fc2", ("n1",), weight=rng.normal(0.3, 1, (3, 6))))
    g.add(ir.Neuron("n2", ("fc2",), **nrn.from_lif(2.0, 1.0, 0.0).fields()))
    g.add(ir.Output("spikes", ("n1",)))
    g.add(ir.Output("out", ("n2",)))
    x = rng.uniform(0, 2, (2, 4, 5)).transpose(1, 0, 2)
    q = for_target("lava", None, fixed_point=True, calibrate=x, log=lambda s: None).run(
        g.verify())
    report = q.meta["reports"]["quantize_for_loihi2"]
    assert {"n1", "n2"} <= {row["node"] for row in report["layers"]}
    run = simulate(q, x, arithmetic="loihi2")
    assert set(run.outputs) == {"spikes", "out"}
