"""Whole networks through the Lava back-end, run in real Lava (Loihi2SimCfg, floating_pt):
spikes identical to the IR simulator in float64 at every neuron after the latency shift, the
latency balancing shown to be necessary, the artifact reproduced by `snncc run` in a fresh
process, the processes usable with one's own I/O, and the netx file."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from snncc import ir, neuron
from snncc.backends.lava.artifact import emit, load
from snncc.backends.lava.compat import lava
from snncc.backends.lava.lower import lower
from snncc.backends.lava.runner import build, run_artifact, run_network
from snncc.errors import UnsupportedError
from snncc.graph import Graph
from snncc.passes.latency import latency_plan
from snncc.pipeline import run_passes
from snncc.simulator import simulate

from conftest import assert_rates_in_range

T, B = 4, 2


def cnn_graph(seed: int) -> tuple[Graph, np.ndarray]:
    """conv -> LIF -> conv -> LIF -> linear -> mean over time (spikingjelly LIF, tau 2)."""
    rng = np.random.default_rng(seed)
    lif = neuron.from_lif(2.0, 1.0, 0.0).fields()
    g = Graph("cnn", {"T": T})
    g.add(ir.Input("x", input_shape=(2, 8, 8), static=True))
    g.add(ir.Conv2d("conv1", ("x",), weight=rng.normal(0, 0.6, (4, 2, 3, 3)),
                    bias=rng.normal(0.2, 0.1, 4), padding=(1, 1)))
    g.add(ir.Neuron("lif1", ("conv1",), **lif))
    g.add(ir.Conv2d("conv2", ("lif1",), weight=rng.normal(0.1, 0.5, (6, 4, 3, 3)),
                    bias=rng.normal(0.1, 0.1, 6), stride=(2, 2), padding=(1, 1)))
    g.add(ir.Neuron("lif2", ("conv2",), **lif))
    g.add(ir.Flatten("flat", ("lif2",)))
    g.add(ir.Linear("fc", ("flat",), weight=rng.normal(0, 0.3, (5, 96)),
                    bias=rng.normal(0, 0.1, 5)))
    g.add(ir.Readout("mean", ("fc",)))
    g.add(ir.Output("out", ("mean",)))
    return g.verify(), rng.normal(0, 1, (B, 2, 8, 8))


def residual_graph(seed: int) -> tuple[Graph, np.ndarray]:
    """A membrane shortcut (Meta-SpikeFormer: conv0's real output added to conv1's), a spike
    residual (Spikformer: lif1 + lif2, integer counts into conv3), three neuron
    parameterisations, one with per-channel thresholds (the custom neuron)."""
    rng = np.random.default_rng(seed)

    def w(*shape, m=0.0, sd=0.5):
        return rng.normal(m, sd, shape)
    decay = neuron.from_decay_lif(0.5, 1.0).fields()
    sj = neuron.from_lif(2.0, 0.5, 0.0).fields()
    strict = {**neuron.from_snasnet_lif(2.0, 1.0).fields(),
              "theta": rng.uniform(0.3, 0.8, (4, 1, 1))}
    g = Graph("residual", {"T": T})
    g.add(ir.Input("x", input_shape=(2, 6, 6), static=True))
    g.add(ir.Conv2d("conv0", ("x",), weight=w(4, 2, 3, 3), bias=w(4, m=0.3, sd=0.1),
                    padding=(1, 1)))
    g.add(ir.Neuron("lif0", ("conv0",), **decay))
    g.add(ir.Conv2d("conv1", ("lif0",), weight=w(4, 4, 3, 3, sd=0.3), padding=(1, 1)))
    g.add(ir.Add("mem1", ("conv0", "conv1")))
    g.add(ir.Neuron("lif1", ("mem1",), **decay))
    g.add(ir.Conv2d("conv2", ("lif1",), weight=w(4, 4, 3, 3, m=0.05, sd=0.3),
                    bias=w(4, m=0.1, sd=0.1), padding=(1, 1)))
    g.add(ir.Neuron("lif2", ("conv2",), **sj))
    g.add(ir.Add("res", ("lif1", "lif2")))
    g.add(ir.Conv2d("conv3", ("res",), weight=w(4, 4, 3, 3, m=0.02, sd=0.2), stride=(2, 2),
                    padding=(1, 1)))
    g.add(ir.Neuron("lif3", ("conv3",), **strict))
    g.add(ir.Flatten("flat", ("lif3",)))
    g.add(ir.Linear("fc", ("flat",), weight=w(3, 36, sd=0.3), bias=w(3, sd=0.1)))
    g.add(ir.Readout("mean", ("fc",)))
    g.add(ir.Output("out", ("mean",)))
    return g.verify(), rng.normal(0, 1, (B, 2, 6, 6))


def attention_graph(seed: int, n: int = 16, d: int = 8, heads: int = 2):
    """A Spikformer block: conv stem, spike self-attention Q (K^T V) per head with the 0.25
    scale and the 0.5-threshold attention neuron (exact ties on dyadic values), projection,
    two spike residuals, an MLP, a token-mean head."""
    rng = np.random.default_rng(seed)
    lif = neuron.from_lif(2.0, 1.0, 0.0).fields()
    g = Graph("attention", {"T": T})

    def linear(name, src, f_in, f_out, m=0.3):
        g.add(ir.Linear(name, (src,), weight=rng.normal(m, 0.5, (f_out, f_in)),
                        bias=rng.normal(0.3, 0.2, f_out)))
    g.add(ir.Input("x", input_shape=(2, 8, 8), static=True))
    g.add(ir.Conv2d("sps", ("x",), weight=rng.normal(0, 0.7, (d, 2, 3, 3)),
                    bias=rng.normal(0.3, 0.2, d), stride=(2, 2), padding=(1, 1)))
    g.add(ir.Neuron("sps_lif", ("sps",), **lif))
    g.add(ir.Reshape("sps_flat", ("sps_lif",), target=(d, n)))
    g.add(ir.Transpose("tokens", ("sps_flat",), perm=(1, 0)))
    for h in "qkv":
        linear(h, "tokens", d, d)
        g.add(ir.Neuron(f"{h}_lif", (h,), **lif))
        g.add(ir.Reshape(f"{h}_heads", (f"{h}_lif",), target=(n, heads, d // heads)))
        g.add(ir.Transpose(f"{h}_h", (f"{h}_heads",), perm=(1, 0, 2)))
    g.add(ir.Transpose("k_t", ("k_h",), perm=(0, 2, 1)))
    g.add(ir.SpikeMatMul("kv", ("k_t", "v_h")))
    g.add(ir.AddressedAccumulate("qkv", ("q_h", "kv")))
    g.add(ir.Scale("scaled", ("qkv",), factor=0.25))
    g.add(ir.Neuron("attn_lif", ("scaled",), **neuron.from_lif(2.0, 0.5, 0.0).fields()))
    g.add(ir.Transpose("merge", ("attn_lif",), perm=(1, 0, 2)))
    g.add(ir.Reshape("ctx", ("merge",), target=(n, d)))
    linear("proj", "ctx", d, d)
    g.add(ir.Neuron("proj_lif", ("proj",), **lif))
    g.add(ir.Add("res1", ("tokens", "proj_lif")))
    linear("fc1", "res1", d, 2 * d, m=0.1)
    g.add(ir.Neuron("fc1_lif", ("fc1",), **lif))
    linear("fc2", "fc1_lif", 2 * d, d, m=0.2)
    g.add(ir.Neuron("fc2_lif", ("fc2",), **lif))
    g.add(ir.Add("res2", ("res1", "fc2_lif")))
    g.add(ir.Mean("pool", ("res2",), axes=(0,)))
    g.add(ir.Linear("head", ("pool",), weight=rng.normal(0, 0.5, (3, d))))
    g.add(ir.Readout("mean", ("head",)))
    g.add(ir.Output("out", ("mean",)))
    return g.verify(), rng.normal(0, 1, (B, 2, 8, 8))


def compiled(g: Graph) -> Graph:
    from snncc.targets import get_target

    return run_passes(g, list(get_target("lava").default_passes), log=lambda s: None)


def assert_same_spikes(g: Graph, lava_trace: dict, sim) -> None:
    neurons = [n.name for n in g.of_type(ir.Neuron)]
    assert set(neurons) <= set(lava_trace)
    for k in neurons:
        assert np.array_equal(lava_trace[k], sim.trace[k]), \
            f"{k}: {int((lava_trace[k] != sim.trace[k]).sum())} spikes differ"
    assert_rates_in_range({k: sim.trace[k].mean() for k in neurons})


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("make", [cnn_graph, residual_graph, attention_graph],
                         ids=["cnn", "residual", "attention"])
def test_spikes_identical_to_simulator(make, seed, tmp_path):
    g, x = make(seed)
    sums = [k for k in ("mem1", "res", "qkv") if k in g]  # real membrane sum, integer counts
    art = emit(compiled(g), tmp_path / "art")
    res = run_artifact(art, x, record=[n.name for n in g.of_type(ir.Neuron)] + sums)
    sim = simulate(g, x, T, record=True)
    assert_same_spikes(g, res["trace"], sim)
    for k in sums:
        np.testing.assert_allclose(res["trace"][k], sim.trace[k], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(res["outputs"]["out"], sim.outputs["out"], rtol=1e-12,
                               atol=1e-12)


def test_attention_ties_are_exercised():
    """The attention neuron's input often equals its threshold exactly, so the '>=' -> '>'
    legalisation inside the Lava mapping is what keeps those spikes (checked above)."""
    g, x = attention_graph(0)
    strict = g.copy()
    strict.replace("attn_lif", replace(g["attn_lif"], cmp=">"))
    a = simulate(g, x, T, record=True).trace["attn_lif"]
    b = simulate(strict.verify(), x, T, record=True).trace["attn_lif"]
    assert (a != b).sum() > 0


def test_residual_needs_latency_balancing():
    """Without the pass's delays the shortcut and the long branch meet from different steps
    and the spikes after the first Add diverge; with them every neuron matches."""
    g, x = residual_graph(0)
    sim = simulate(g, x, T, record=True)
    naive = run_network(lower(g, latency_plan(g, balance=False)), x)["trace"]
    assert np.array_equal(naive["lif0"], sim.trace["lif0"])  # before any Add: unaffected
    assert not np.array_equal(naive["lif1"], sim.trace["lif1"])
    balanced = run_network(lower(g, latency_plan(g)), x)["trace"]
    assert_same_spikes(g, balanced, sim)


def test_artifact_in_a_fresh_process(tmp_path):
    """`snncc run DIR` rebuilds the processes from the files alone and gives the outputs of
    the in-process run, bit for bit."""
    g, x = residual_graph(1)
    art = emit(compiled(g), tmp_path / "art")
    np.save(tmp_path / "x.npy", x)
    subprocess.run([sys.executable, "-m", "snncc.cli", "run", str(art), "--inputs",
                    str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")], check=True,
                   capture_output=True, cwd=tmp_path)
    here = run_artifact(art, x)["outputs"]["out"]
    assert np.array_equal(np.load(tmp_path / "y.npy"), here)


def test_manifest_describes_the_network(tmp_path):
    g, _ = residual_graph(0)
    art = emit(compiled(g), tmp_path / "art")
    doc = json.loads((art / "manifest.json").read_text())
    assert (doc["T"], doc["latency"], doc["period"]) == (T, 5, T + 5)
    types = {p["name"]: p["type"] for p in doc["processes"]}
    assert types["conv0"] == "Conv" and types["lif0"] == "LIFReset" and types["fc"] == "Dense"
    assert types["lif3"] == "CanonicalLIF" and "threshold" in doc["custom_neurons"]["lif3"]
    assert types["mem1/balance0"] == "Delay" and types["res/balance0"] == "Delay"
    assert {"to": "lif1", "port": "a_in", "from": {"process": "mem1", "port": "s_out",
                                                   "transforms": []}} in doc["connections"]
    assert doc["shapes"]["flat"] == [36]


def test_an_artifact_of_an_older_version_is_refused_saying_compile_again(tmp_path):
    """v1 artifacts cleared their Delays at a step; v2 Delays mute inputs (loops): an old
    manifest is refused in one line, not run with parameters read wrongly."""
    from snncc.errors import FormatError

    g, _ = residual_graph(0)
    art = emit(compiled(g), tmp_path / "art")
    doc = json.loads((art / "manifest.json").read_text())
    (art / "manifest.json").write_text(json.dumps({**doc, "version": 1}))
    with pytest.raises(FormatError, match=r"version 1, this snncc reads v2: compile the model "
                                          r"again"):
        load(art)


def test_build_lets_a_user_connect_own_io(tmp_path):
    """build() returns the processes and I/O handles on ``lanes`` samples side by side: one's
    own RingBuffer source and sink of shape (lanes, ...), the returned run configuration, the
    latency read off the manifest."""
    g, x = cnn_graph(0)
    art = emit(compiled(g), tmp_path / "art")
    procs, io = build(art, lanes=B)
    assert set(procs) >= {"conv1", "lif1", "conv2", "lif2", "fc"}
    steps = io.period
    data = np.zeros((B, 2, 8, 8, steps))
    data[..., :T] = x[..., None]
    src = lava(".proc.io.source").RingBuffer(data=data)
    sink = lava(".proc.io.sink").RingBuffer(shape=(B, 4, 8, 8), buffer=steps)
    io.connect_input("x", src.s_out)
    io.port("lif1").connect(sink.a_in)
    extra = {src: lava(".proc.io.source").PySendModelFloat,
             sink: lava(".proc.io.sink").PyReceiveModelFloat}
    run_steps = lava(".magma.core.run_conditions").RunSteps(num_steps=steps)
    src.run(condition=run_steps, run_cfg=io.run_cfg(extra))
    try:
        got = np.moveaxis(sink.data.get(), -1, 0)
    finally:
        src.stop()
    d = io.net.depth["lif1"]
    assert np.array_equal(got[d:d + T], simulate(g, x, T, record=True).trace["lif1"])


def test_float_network_has_no_netx_file(tmp_path):
    """netx builds fixed-point models only: a float artifact has no netx.h5, and the manifest
    says why (tests/test_netx.py runs the quantized files in lava-dl)."""
    art = emit(compiled(cnn_graph(0)[0]), tmp_path / "art")
    doc = json.loads((art / "manifest.json").read_text())
    assert doc["netx"]["file"] is None and "--fixed-point" in doc["netx"]["reason"]
    assert not (art / "netx.h5").exists()


def test_an_artifact_keeps_the_levels_its_counts_compute(tmp_path):
    """An integer spike's comparisons are one Count process; the artifact records which levels
    it computes, and the run from the directory traces each level."""
    g = Graph("count", {"T": T})
    g.add(ir.Input("x", input_shape=(3,)))
    for d in (1, 2):
        g.add(ir.Neuron(f"l{d}", ("x",), alpha=0.0, gamma=1.0, beta=0.0, theta=d - 0.5,
                        cmp=">" if d % 2 else ">="))
    g.add(ir.Add("count", ("l1", "l2")))
    g.add(ir.Output("out", ("count",)))
    art = emit(compiled(g.verify()), tmp_path / "a")
    assert load(art).levels == {"l1": ("count", 1), "l2": ("count", 2)}
    x = np.array([[[0.4, 0.5, 0.6]], [[1.5, 2.0, -3.0]]])  # [T=2, B=1, 3]
    trace = run_artifact(art, x, 2, record=["l1", "l2"])["trace"]
    np.testing.assert_array_equal(trace["l1"], x > 0.5)
    np.testing.assert_array_equal(trace["l2"], x >= 1.5)


def test_emit_refuses_graphs_it_cannot_map(tmp_path):
    g, _ = cnn_graph(0)
    with pytest.raises(UnsupportedError, match="balance_synaptic_latency"):
        emit(g, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_gamma_scaled_convolutions_are_computed_where_used(tmp_path):
    """A neuron's gamma and a BN the pipeline left to the writer, folded into a convolution's
    weights, are kept as the IR's unscaled weights and the scales (:class:`ChannelScaled`, the
    BN's inside), not as float64 copies; converted to an array (by the artifact writer and the
    runner) it is the product, the BN's scale first as the pass would have applied it."""
    from snncc.backends.lava.artifact import WEIGHTS
    from snncc.passes.common import ChannelScaled
    from snncc.frontends import tracer, zoo
    from snncc.passes.latency import require_plan
    from snncc.pipeline import for_target
    from snncc.serialize import read_npz

    case = zoo.small("meta-spikeformer", 0)
    graph = for_target("lava", log=lambda s: None).run(
        tracer.trace(case.model, case.inputs, T=case.model.T))
    net = lower(graph, require_plan(graph))
    scaled = {s.name: s.arrays["weight"] for s in net.processes
              if isinstance(s.arrays.get("weight"), ChannelScaled)}
    assert scaled
    assert any(isinstance(w.array, ChannelScaled) for w in scaled.values())  # BN and gamma
    for name, w in scaled.items():
        scales, inner = [], w
        while isinstance(inner, ChannelScaled):
            scales.append(inner.scale)
            inner = inner.array
        assert np.shares_memory(inner, graph[name].weight)
        product = inner
        for scale in reversed(scales):
            product = product.astype(np.float64) * scale[:, None, None, None]
        # float32 only where every float32 product is the real one, as the passes scale
        assert np.asarray(w).dtype in (np.float32, np.float64) and w.shape == product.shape
        assert np.array_equal(np.asarray(w), product)
        assert np.array_equal(np.asarray(w, np.float64), product)
    written = read_npz(emit(graph, tmp_path / "lava") / WEIGHTS)
    for name, w in scaled.items():
        assert np.array_equal(written[f"{name}/weight"], np.asarray(w))


def depthwise_graph(channels: int, seed: int = 0) -> tuple[Graph, np.ndarray]:
    """A pointwise conv, then a depthwise 3x3 conv of ``channels`` groups (Meta-SpikeFormer's
    separable convolutions: 256 and more channels at full size)."""
    rng = np.random.default_rng(seed)
    lif = neuron.from_lif(2.0, 1.0, 0.0).fields()
    g = Graph("depthwise", {"T": T})
    g.add(ir.Input("x", input_shape=(2, 4, 4), static=True))
    g.add(ir.Conv2d("pw", ("x",), weight=rng.normal(0.4, 0.8, (channels, 2, 1, 1))))
    g.add(ir.Neuron("lif1", ("pw",), **lif))
    g.add(ir.Conv2d("dw", ("lif1",), weight=rng.normal(0.7, 0.6, (channels, 1, 3, 3)),
                    padding=(1, 1), groups=channels))
    g.add(ir.Neuron("lif2", ("dw",), **lif))
    g.add(ir.Output("out", ("lif2",)))
    return g.verify(), rng.normal(0, 1, (B, 2, 4, 4))


@pytest.mark.parametrize("channels", [128, 256])
def test_depthwise_convolution_of_128_channels_or_more(channels, tmp_path):
    """Lava's Conv holds ``groups`` in an int8 Var: 128 groups read back as -128, 256 as 0, and
    every step of such a convolution raised in the Lava process (found running the 15M
    Meta-SpikeFormer in Lava). The spikes equal the simulator's."""
    g, x = depthwise_graph(channels)
    res = run_artifact(emit(compiled(g), tmp_path / "art"), x)
    assert_same_spikes(g, res["trace"], simulate(g, x, T, record=True))


def test_a_failing_lava_process_is_reported_not_waited_for(tmp_path, monkeypatch):
    """A process model that raises used to leave the host waiting for the recorder forever
    (Lava stops the other processes and tells only a caller waiting for the run's end): the
    run is refused with the process's traceback, and its processes are gone."""
    from snncc.backends.lava.failures import LavaProcessError
    from snncc.backends.lava.processes import conv

    def broken(self):
        raise ValueError("a broken convolution")

    monkeypatch.setattr(conv.PyVectorConvModel, "run_spk", broken)
    g, x = cnn_graph(0)
    art = emit(compiled(g), tmp_path / "art")
    with pytest.raises(LavaProcessError, match="a broken convolution"):
        run_artifact(art, x)
    deadline = time.monotonic() + 10  # terminated: they end within moments
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not multiprocessing.active_children()


def test_a_lava_process_that_exits_is_reported_not_waited_for(tmp_path, monkeypatch):
    """A process that dies without a Python exception (killed, out of memory): the run is
    refused saying so."""
    from snncc.backends.lava.failures import LavaProcessError
    from snncc.backends.lava.processes import conv

    monkeypatch.setattr(conv.PyVectorConvModel, "run_spk", lambda self: os._exit(3))
    g, x = cnn_graph(0)
    with pytest.raises(LavaProcessError, match=r"exited before the run ended \(exit code 3\)"):
        run_artifact(emit(compiled(g), tmp_path / "art"), x)


def test_an_error_while_lava_starts_ends_the_run(tmp_path, monkeypatch):
    """An exception while Lava starts the run (here: the recorder's pipe to the host, made
    once the processes have started) used to leave the host in Lava's stop, waiting for
    processes that never answer: it is raised, and the processes already started are ended."""
    import inspect

    from snncc.backends.lava.compat import lava

    channel = lava(".magma.compiler.channels.pypychannel").PyPyChannel
    original = channel.__init__

    def failing(self, *args, **kwargs):
        if inspect.signature(original).bind(self, *args, **kwargs).arguments["dst_name"] == "dst":
            raise OSError("no space left for shared memory")
        original(self, *args, **kwargs)

    monkeypatch.setattr(channel, "__init__", failing)
    g, x = cnn_graph(0)
    with pytest.raises(OSError, match="no space left"):
        run_artifact(emit(compiled(g), tmp_path / "art"), x)
    deadline = time.monotonic() + 10
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not multiprocessing.active_children()
