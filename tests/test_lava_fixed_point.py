"""Quantized graphs through the Lava back-end in Loihi 2's fixed-point arithmetic: a graph that
ran ``quantize_for_loihi2`` is emitted with its chip on Lava's fixed_pt models (bit-accurate
Dense / Sparse / LIFReset, snncc's exact integer Conv model, int32 models of the custom
processes, the custom per-neuron ``Loihi2LIF``), its host part (encoder input, Mean, Readout,
classifier head) floating_pt, and run in real Lava: the spikes of every neuron are exactly the
integers of ``simulate(graph, x, arithmetic="loihi2")`` after the latency shift, and so are
the outputs. Hand-built conv -> LIF -> linear -> LIF networks (one with a membrane shortcut, a
spike residual, per-channel thresholds and a soft reset) and the zoo's small Spikformer (CIFAR
SPS stem, spike attention, 2 blocks) and Meta-SpikeFormer (under ``-m slow``), 2 seeds each,
T = 4."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from snncc import ir, neuron
from snncc.backends.lava.artifact import emit
from snncc.backends.lava.runner import build, run_artifact
from snncc.frontends.tracer import trace
from snncc.frontends.zoo import small
from snncc.graph import Graph
from snncc.models import load_model
from snncc.passes import default_pipeline
from snncc.pipeline import for_target, run_passes
from snncc.simulator import simulate
from snncc.targets import get_target

from conftest import assert_rates_in_range

T, B = 4, 2
QUANTIZE = "quantize_for_loihi2"
ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "examples" / "checkpoints" / "digits-spikformer.pt"
ARCH = "digits-spikformer"


def conv_mlp_graph(seed: int) -> tuple[Graph, np.ndarray]:
    """real image -> conv (bias) -> LIF -> flatten -> linear (bias) -> LIF -> time mean."""
    rng = np.random.default_rng(seed)
    lif = neuron.from_lif(2.0, 1.0, 0.0).fields()
    g = Graph("conv_mlp", {"T": T})
    g.add(ir.Input("x", input_shape=(2, 8, 8), static=True))
    g.add(ir.Conv2d("conv", ("x",), weight=rng.normal(0, 0.6, (4, 2, 3, 3)),
                    bias=rng.normal(0.2, 0.1, 4), stride=(2, 2), padding=(1, 1)))
    g.add(ir.Neuron("lif1", ("conv",), **lif))
    g.add(ir.Flatten("flat", ("lif1",)))
    g.add(ir.Linear("fc", ("flat",), weight=rng.normal(0.05, 0.3, (10, 64)),
                    bias=rng.normal(0.1, 0.1, 10)))
    g.add(ir.Neuron("lif2", ("fc",), **lif))
    g.add(ir.Readout("mean", ("lif2",)))
    g.add(ir.Output("out", ("mean",)))
    return g.verify(), rng.normal(0, 1, (B, 2, 8, 8))


def shortcut_graph(seed: int) -> tuple[Graph, np.ndarray]:
    """A membrane shortcut (conv0's integer current added to conv1's, balanced by a delay on
    the chip), a spike residual (counts into a conv), per-channel thresholds and a soft reset
    (both the custom fixed-point neuron), a linear head on the chip, a time mean on the host."""
    rng = np.random.default_rng(seed)
    decay = neuron.from_decay_lif(0.5, 1.0).fields()
    per_channel = neuron.from_lif(2.0, 1.0, 0.0).fields(theta=rng.uniform(0.3, 0.7, (4, 1, 1)))
    soft = neuron.from_lif(2.0, 0.5, None).fields()
    g = Graph("shortcut", {"T": T})
    g.add(ir.Input("x", input_shape=(2, 6, 6), static=True))
    g.add(ir.Conv2d("conv0", ("x",), weight=rng.normal(0, 0.5, (4, 2, 3, 3)),
                    bias=rng.normal(0.3, 0.1, 4), padding=(1, 1)))
    g.add(ir.Neuron("lif0", ("conv0",), **decay))
    g.add(ir.Conv2d("conv1", ("lif0",), weight=rng.normal(0, 0.3, (4, 4, 3, 3)),
                    padding=(1, 1)))
    g.add(ir.Add("mem1", ("conv0", "conv1")))
    g.add(ir.Neuron("lif1", ("mem1",), **decay))
    g.add(ir.Conv2d("conv2", ("lif1",), weight=rng.normal(0.05, 0.3, (4, 4, 3, 3)),
                    padding=(1, 1)))
    g.add(ir.Neuron("lif2", ("conv2",), **per_channel))
    g.add(ir.Add("res", ("lif1", "lif2")))
    g.add(ir.Conv2d("conv3", ("res",), weight=rng.normal(0.02, 0.2, (4, 4, 3, 3)),
                    stride=(2, 2), padding=(1, 1)))
    g.add(ir.Flatten("flat", ("conv3",)))
    g.add(ir.Linear("fc", ("flat",), weight=rng.normal(0.05, 0.2, (6, 36))))
    g.add(ir.Neuron("lif3", ("fc",), **soft))
    g.add(ir.Readout("mean", ("lif3",)))
    g.add(ir.Output("out", ("mean",)))
    return g.verify(), rng.normal(0, 1, (B, 2, 6, 6))


def quantized(graph: Graph) -> Graph:
    return run_passes(graph, [QUANTIZE, "balance_synaptic_latency"], log=lambda s: None)


def assert_lava_equals_loihi2_simulator(q: Graph, x: np.ndarray, res: dict) -> dict:
    """Every neuron's spikes and every output of the Lava run equal the loihi2 simulator's;
    returns the simulator's neuron traces."""
    ref = simulate(q, x, arithmetic="loihi2", record=True)
    neurons = [n.name for n in q.of_type(ir.Neuron)]
    assert neurons
    for k in neurons:
        got, want = res["trace"][k], ref.trace[k]
        assert np.array_equal(got, want), \
            f"{k}: {int((got != want).sum())} of {want.size} spikes differ"
    for o, y in ref.outputs.items():
        np.testing.assert_allclose(res["outputs"][o], y, rtol=1e-12, atol=1e-12)
    return {k: ref.trace[k] for k in neurons}


def process_kinds(artifact) -> Counter:
    doc = json.loads((artifact / "manifest.json").read_text())
    return Counter((p["type"], p["params"].get("op"), p["params"]["fixed_pt"])
                   for p in doc["processes"])


@pytest.mark.parametrize("seed", [0, 1])
def test_conv_linear_network_in_lava_fixed_pt_equals_loihi2_simulator(seed, tmp_path):
    g, x = conv_mlp_graph(seed)
    q = quantized(g)
    art = emit(q, tmp_path / "lava")
    doc = json.loads((art / "manifest.json").read_text())
    assert doc["arithmetic"] == "loihi2" and doc["custom_neurons"] == {}
    kinds = process_kinds(art)
    # the chip: encoder, conv, Lava's LIF twice, Dense (with the bias the head kept); the host:
    # the dequantizing scale and the time mean
    for kind in [("UnaryOp", "Encode", True), ("Conv", None, True), ("LIFReset", None, True),
                 ("Dense", None, True), ("Readout", None, False)]:
        assert kinds[kind], kind
    assert kinds[("LIFReset", None, True)] == 2
    traces = assert_lava_equals_loihi2_simulator(q, x, run_artifact(art, x, T))
    assert_rates_in_range({k: v.mean() for k, v in traces.items()})


@pytest.mark.parametrize("seed", [0, 1])
def test_shortcuts_and_custom_neurons_in_lava_fixed_pt(seed, tmp_path):
    g, x = shortcut_graph(seed)
    q = quantized(g)
    art = emit(q, tmp_path / "lava")
    doc = json.loads((art / "manifest.json").read_text())
    assert set(doc["custom_neurons"]) == {"lif2", "lif3"}  # per-channel vth; soft reset
    kinds = process_kinds(art)
    assert kinds[("Loihi2LIF", None, True)] == 2 and kinds[("LIFReset", None, True)] == 2
    assert kinds[("Delay", None, True)] and kinds[("BinaryOp", "Add", True)] == 2
    traces = assert_lava_equals_loihi2_simulator(q, x, run_artifact(art, x, T))
    assert_rates_in_range({k: v.mean() for k, v in traces.items()})


def space_mean_head_graph(seed: int) -> tuple[Graph, np.ndarray]:
    """real image -> conv -> LIF -> mean over space -> linear -> time mean: a classifier head on
    the mean of the last layer's spikes over positions (a user's ``x.mean((2, 3))``)."""
    rng = np.random.default_rng(seed)
    g = Graph("space_mean_head", {"T": T})
    g.add(ir.Input("x", input_shape=(2, 8, 8), static=True))
    g.add(ir.Conv2d("conv", ("x",), weight=rng.normal(0, 0.6, (4, 2, 3, 3)),
                    bias=rng.normal(0.2, 0.1, 4), padding=(1, 1)))
    g.add(ir.Neuron("lif", ("conv",), **neuron.from_lif(2.0, 1.0, 0.0).fields()))
    g.add(ir.Mean("space", ("lif",), axes=(1, 2)))
    g.add(ir.Linear("head", ("space",), weight=rng.normal(0, 1.0, (3, 4)),
                    bias=rng.normal(0, 0.1, 3)))
    g.add(ir.Readout("mean", ("head",)))
    g.add(ir.Output("out", ("mean",)))
    return g.verify(), rng.normal(0, 1, (B, 2, 8, 8))


@pytest.mark.parametrize("seed", [0, 1])
def test_a_head_on_the_mean_over_space_runs_on_the_host(seed, tmp_path):
    """The mean over space of spikes is not an integer: its Linear head runs on the host in
    floating point. The fixed-point simulator took a Mean for a Sum (its IR base class), so for
    an integer on the chip, and refused the quantized graph for the head's float weights
    ("not quantized for Loihi 2 (run quantize_for_loihi2)"; found by tests/fuzz_models.py)."""
    g, x = space_mean_head_graph(seed)
    q = quantized(g)
    art = emit(q, tmp_path / "lava")
    kinds = process_kinds(art)
    assert kinds[("Conv", None, True)] and kinds[("LIFReset", None, True)]
    assert kinds[("Dense", None, False)] and not kinds[("Dense", None, True)]
    traces = assert_lava_equals_loihi2_simulator(q, x, run_artifact(art, x, T))
    assert_rates_in_range({k: v.mean() for k, v in traces.items()})


def test_runner_picks_fixed_pt_models_per_process(tmp_path):
    """The Loihi2SimCfg of a quantized artifact selects fixed_pt and names a model for every
    process instance: Lava's bit-accurate ones on the chip, floating_pt ones on the host; a
    float graph's artifact stays floating_pt."""
    g, _ = conv_mlp_graph(0)
    procs, io = build(emit(quantized(g), tmp_path / "q"))
    cfg = io.run_cfg()
    assert cfg.select_tag == "fixed_pt"
    models = {name: io.models[p].__name__ for name, p in procs.items()}
    assert models["conv"] == "PyVectorConvModelFixed" and models["fc"] == "PyDenseModelBitAcc"
    assert models["lif1"] == models["lif2"] == "PyLifResetModelBitAcc"
    assert models["x.encode"] == "PyEncoderModel" and models["mean"] == "PyReadoutModel"
    float_graph = run_passes(g, list(get_target("lava").default_passes), log=lambda s: None)
    art = emit(float_graph, tmp_path / "f")
    assert json.loads((art / "manifest.json").read_text())["arithmetic"] == "float"
    procs, io = build(art)
    assert io.run_cfg().select_tag == "floating_pt"
    assert {io.models[p].__name__ for p in procs.values()} >= {"PyVectorConvModel",
                                                               "PyLifResetModelFloat"}


def zoo_passes() -> list[str]:
    names = default_pipeline("lava", quantized=True)
    names.insert(names.index("balance_synaptic_latency"), QUANTIZE)
    return names


ZOO = [("spikformer-cifar", 0), ("spikformer-cifar", 1),
       *(pytest.param("meta-spikeformer", s, marks=pytest.mark.slow)  # ~15 s of Lava each
         for s in (0, 1))]


@pytest.mark.parametrize("family, seed", ZOO)
def test_zoo_model_in_lava_fixed_pt_equals_loihi2_simulator(family, seed, tmp_path):
    """Spikformer: SPS stem (encoder, integer convs, max-pools, a spike residual), spike
    self-attention as addressed accumulations of counts into the attention neuron (integer
    gamma: a Scale in front of Lava's LIF), MLPs on tokens (Sparse), residual Adds balanced by
    on-chip delays, the token mean and head on the host. Meta-SpikeFormer: separable and
    RepConv convolutions with biases, membrane shortcuts, SDSA-3 (34 neuron layers), and the
    official spiking head, its LIF on the token mean on the host in floating point."""
    case = small(family, seed)
    graph = trace(case.model, case.inputs, T=T, name=family)
    q = for_target("lava", zoo_passes()).run(graph)
    assert "loihi2" in q.meta
    art = emit(q, tmp_path / "lava")
    kinds = process_kinds(art)
    assert kinds[("BinaryOp", "AddressedAccumulate", True)] and kinds[("Delay", None, True)]
    assert kinds[("UnaryOp", "Scale", True)]  # the attention neurons' integer gamma
    assert kinds[("UnaryOp", "Mean", False)] and kinds[("Readout", None, False)]
    if family == "spikformer-cifar":
        assert kinds[("Sparse", None, True)]
    else:
        assert q.meta["reports"]["quantize_for_loihi2"]["host_neurons"] == ["lif"]
        assert kinds[("LIFReset", None, False)]  # the head's LIF, off the chip
    x = case.inputs.numpy()
    traces = assert_lava_equals_loihi2_simulator(q, x, run_artifact(art, x, T))
    assert len(traces) == len(graph.of_type(ir.Neuron))
    assert_rates_in_range({k: v.mean() for k, v in traces.items()})


def test_snncc_compile_fixed_point_and_run(tmp_path):
    """`snncc compile --target lava --fixed-point` on the shipped digits model, then `snncc run`
    in a fresh process: the loihi2 simulator's output on the same quantized graph; in-process,
    every neuron's spikes too."""
    def snncc(*args):
        r = subprocess.run([sys.executable, "-m", "snncc.cli", *map(str, args)],
                           capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert r.returncode == 0, r.stderr

    art = tmp_path / "lava"
    snncc("compile", CKPT, "--arch", ARCH, "--target", "lava", "--fixed-point", "-o", art)
    assert json.loads((art / "manifest.json").read_text())["arithmetic"] == "loihi2"
    x = np.random.default_rng(0).normal(0, 1, (3, 1, 8, 8))
    np.save(tmp_path / "x.npy", x)
    snncc("run", art, "--inputs", tmp_path / "x.npy", "-o", tmp_path / "y.npy")
    q = for_target("lava", fixed_point=True, log=lambda s: None).run(
        load_model(str(CKPT), ARCH).graph)
    (want,) = simulate(q, x, arithmetic="loihi2").outputs.values()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, rtol=1e-12, atol=1e-12)
    assert_lava_equals_loihi2_simulator(q, x, run_artifact(art, x))
