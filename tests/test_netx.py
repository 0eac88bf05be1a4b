"""The netx file of `--target lava --fixed-point` in lava-dl's own loader: `netx.hdf5.Network`
loads `netx.h5`, runs it in Lava (`Loihi2SimCfg(select_tag="fixed_pt")`, a RingBuffer source and
sink, the loader arguments the manifest records), and its output spikes equal, integer for
integer, those of snncc's bit-accurate Loihi 2 simulator at the same layer of the quantized
graph (2 seeds, random inputs, firing rates in [5%, 95%]), for hand-built and spikingjelly nets
and the shipped digits Spikformer's stem, all quantized as `--fixed-point` does (biases in whole
input units, netx's bias_exp = 6). lava-dl 0.6.0 is installed by `scripts/lava_dl_env.sh`;
without it the Lava runs skip. Also: what netx's weight optimisation keeps (against lava-dl's and
Lava's own functions), no file for a float graph or for finer biases, and a failing process
model raising instead of hanging Lava."""

from __future__ import annotations

import json
import sys

import h5py
import numpy as np
import pytest

from snncc import ir, neuron
from snncc.backends.lava import netx_import
from snncc.backends.lava.artifact import emit
from snncc.backends.lava.compat import lava
from snncc.backends.lava.failures import LavaProcessError
from snncc.backends.lava.netx import netx_keeps_dense_weights
from snncc.frontends.checkpoint import from_checkpoint
from snncc.frontends.digits import checkpoint, digits_for
from snncc.frontends.tracer import trace
from snncc.graph import Graph
from snncc.pipeline import for_target, run_passes
from snncc.simulator import simulate

from conftest import assert_rates_in_range

T, B = 4, 2
needs_lava_dl = pytest.mark.skipif(not netx_import.available(),
                                   reason="lava-dl not installed (scripts/lava_dl_env.sh)")


def conv_dense_graph(seed: int, spikes_in: bool = False) -> tuple[Graph, np.ndarray]:
    """image (or spike frames) -> conv -> LIF -> conv (stride 2) -> LIF -> flatten -> linear ->
    LIF -> time mean; spikingjelly LIF (tau 2, >=), synapse biases folded into the neurons."""
    rng = np.random.default_rng(seed)
    lif = neuron.from_lif(2.0, 1.0, 0.0).fields()
    g = Graph("conv_dense", {"T": T})
    kind = ir.Kind.SPIKE if spikes_in else ir.Kind.REAL
    g.add(ir.Input("x", input_shape=(2, 8, 8), static=not spikes_in, input_kind=kind))
    g.add(ir.Conv2d("conv1", ("x",), weight=rng.normal(0.2 if spikes_in else 0, 0.6,
                                                       (4, 2, 3, 3)),
                    bias=rng.normal(0.2, 0.1, 4), padding=(1, 1)))
    g.add(ir.Neuron("lif1", ("conv1",), **lif))
    g.add(ir.Conv2d("conv2", ("lif1",), weight=rng.normal(0.1, 0.5, (6, 4, 3, 3)),
                    bias=rng.normal(0.1, 0.1, 6), stride=(2, 2), padding=(1, 1)))
    g.add(ir.Neuron("lif2", ("conv2",), **lif))
    g.add(ir.Flatten("flat", ("lif2",)))
    g.add(ir.Linear("fc", ("flat",), weight=rng.normal(0.15 if spikes_in else 0.05, 0.3,
                                                      (5, 96)),
                    bias=rng.normal(0.1, 0.1, 5)))
    g.add(ir.Neuron("lif3", ("fc",), **lif))
    g.add(ir.Readout("mean", ("lif3",)))
    g.add(ir.Output("out", ("mean",)))
    x = (rng.random((T, B, 2, 8, 8)) < 0.3).astype(float) if spikes_in else \
        rng.normal(0, 1, (B, 2, 8, 8))
    return g.verify(), x


def quantized(g: Graph, x, **options) -> Graph:
    """``g`` quantized for Loihi 2 (calibrated on ``x``; by default every bias a whole number
    of input units, netx's bias_exp = 6) and its latency planned, as ``--fixed-point`` does."""
    return run_passes(g, ["quantize_for_loihi2", "balance_synaptic_latency"], options={
        "quantize_for_loihi2": {"calibrate": x, **options}}, log=lambda s: None)


def to_lava_layout(a: np.ndarray) -> np.ndarray:
    """(C, H, W) -> netx's (W, H, C); vectors unchanged."""
    return a.transpose(2, 1, 0) if a.ndim == 3 else a


def run_netx(art, chip_input: np.ndarray) -> np.ndarray:
    """Load ``art/netx.h5`` with ``netx.hdf5.Network`` (the manifest's loader arguments), feed
    ``chip_input`` [T, B, ...] (integers: spikes or encoded graded spikes) sample after sample
    from a RingBuffer, and return the network's output spikes [T, B, ...] read at the file's
    latency."""
    entry = json.loads((art / "manifest.json").read_text())["netx"]
    load, depth = entry["load"], entry["layers"]
    period = load["reset_interval"]
    net = netx_import.netx().hdf5.Network(net_config=str(art / entry["file"]), **load)
    steps = B * period
    data = np.zeros(net.inp.shape + (steps,), dtype=np.int32)
    for b in range(B):
        for t in range(T):
            data[..., b * period + t] = to_lava_layout(chip_input[t, b])
    src = lava(".proc.io.source").RingBuffer(data=data)
    sink = lava(".proc.io.sink").RingBuffer(shape=net.out.shape, buffer=steps)
    src.s_out.connect(net.inp)
    net.out.connect(sink.a_in)
    cfg = lava(".magma.core.run_configs").Loihi2SimCfg(select_tag="fixed_pt")
    netx_import.run_network(net, steps, cfg)
    try:
        got = sink.data.get()
    finally:
        net.stop()
    out = np.stack([np.stack([got[..., b * period + depth + t] for b in range(B)])
                    for t in range(T)])
    return out.transpose(0, 1, 4, 3, 2) if out.ndim == 5 else out


def assert_netx_equals_loihi2_simulator(q: Graph, x: np.ndarray, art,
                                        min_rate: float = 0.05) -> dict:
    """The netx run of ``art``'s file equals the loihi2 simulator at the file's output layer,
    which fires at ``min_rate`` .. 95%; returns the manifest's netx entry with the spike count
    and firing rate."""
    entry = json.loads((art / "manifest.json").read_text())["netx"]
    assert entry["file"], entry["reason"]
    ref = simulate(q, x, arithmetic="loihi2", record=True)
    first_on_chip = entry["nodes"][1] if entry["input_scale"] is not None else entry["nodes"][0]
    chip_input = ref.trace[first_on_chip]
    if entry["input_scale"] is not None:  # the host's encoding, as the file attributes state it
        with h5py.File(art / entry["file"]) as f:
            scale, bits = f.attrs["inputScale"], int(f.attrs["inputMessageBits"])
        lim = 2 ** (bits - 1)
        np.testing.assert_array_equal(
            chip_input, np.clip(np.round(np.broadcast_to(x, chip_input.shape) * scale),
                                -lim, lim - 1))
    want = ref.trace[entry["output"]]
    got = run_netx(art, chip_input)
    assert got.shape == want.shape
    assert np.array_equal(got, want), f"{int((got != want).sum())} of {want.size} spikes differ"
    assert_rates_in_range({entry["output"]: want.mean()}, lo=min_rate)
    return {**entry, "spikes": int(want.sum()), "rate": float(want.mean())}


@needs_lava_dl
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("spikes_in", [False, True], ids=["encoded-image", "spikes"])
def test_netx_file_runs_in_lava_dl_with_the_simulators_spikes(seed, spikes_in, tmp_path):
    g, x = conv_dense_graph(seed, spikes_in)
    q = quantized(g, x)
    art = emit(q, tmp_path / "lava")
    entry = assert_netx_equals_loihi2_simulator(q, x, art)
    assert entry["stops_at"] == "mean" and entry["output"] == "lif3"
    assert entry["load"]["input_message_bits"] == (0 if spikes_in else 8)
    with h5py.File(art / "netx.h5") as f:
        types = [f[f"layer/{i}/type"][0].decode() for i in range(len(f["layer"]))]
        assert types == ["input", "conv", "conv", "flatten", "dense"]
        assert f.attrs["quantized"] and f["layer/1/neuron/vThMant"].dtype.kind == "i"
        assert f["layer/1/weight"].dtype.kind == f["layer/1/bias"].dtype.kind == "i"


@needs_lava_dl
@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_spikingjelly_conv_net_netx_file(seed, tmp_path):
    """A traced spikingjelly conv-BN-LIF, conv-BN-LIF, linear-LIF net (BN randomised): the
    whole spiking chain is in the file."""
    pytest.importorskip("spikingjelly")
    import torch
    from spikingjelly.activation_based import functional, layer, neuron as sj

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        layer.Conv2d(1, 4, 3, padding=1, bias=False), layer.BatchNorm2d(4),
        sj.LIFNode(tau=2.0), layer.Conv2d(4, 8, 3, stride=2, padding=1, bias=False),
        layer.BatchNorm2d(8), sj.LIFNode(tau=2.0), layer.Flatten(),
        layer.Linear(8 * 4 * 4, 10), sj.LIFNode(tau=2.0)).double().eval()
    rng = np.random.default_rng(seed)
    for m in model:
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = torch.tensor(rng.uniform(0.5, 2.0, c))
            m.bias.data = torch.tensor(rng.normal(0.1, 0.05, c))
            m.running_mean.data = torch.tensor(rng.normal(0, 0.05, c))
            m.running_var.data = torch.tensor(rng.uniform(0.5, 2.0, c))
    with torch.no_grad():  # gains that make every layer fire at 5-95%
        model[0].weight.mul_(6)
        model[3].weight.copy_(model[3].weight.abs() * 3 - 0.05)
        model[7].weight.copy_(model[7].weight.abs() * 2.5 - 0.05)
    functional.set_step_mode(model, "m")
    x = rng.normal(0, 1, (T, B, 1, 8, 8))  # a sequence of real frames
    graph = trace(model, torch.tensor(x), T=T, static=False, name="sj_conv")
    q = for_target("lava", fixed_point=True, calibrate=x, log=lambda s: None).run(graph)
    art = emit(q, tmp_path / "lava")
    entry = assert_netx_equals_loihi2_simulator(q, x, art)
    print(f"spikingjelly seed {seed}: {entry['layers']} layers, stops at {entry['stops_at']}, "
          f"{entry['spikes']} spikes, rate {entry['rate']:.3f}", file=sys.stderr)
    assert entry["layers"] == 3


@needs_lava_dl
@pytest.mark.parametrize("seed", [0, 1])
def test_digits_spikformer_stem_netx_file(seed, tmp_path):
    """The shipped digits Spikformer compiled as ``--target lava --fixed-point`` (calibrated on
    training images): the file holds its 3 stem conv-LIF layers, up to the max-pool, and runs
    in lava-dl with the simulator's spikes on test images (2 per seed; the trained stem's last
    layer fires at ~3%)."""
    arch = "digits-spikformer"
    _, graph = from_checkpoint(checkpoint(arch), arch)
    (x_train, _), (x_test, _) = digits_for(arch)
    q = for_target("lava", fixed_point=True, calibrate=x_train[:256],
                   log=lambda s: None).run(graph)
    art = emit(q, tmp_path / "lava")
    entry = assert_netx_equals_loihi2_simulator(q, x_test[B * seed: B * (seed + 1)], art,
                                                min_rate=0.02)
    assert entry["layers"] == 3 and entry["output"] == "patch_embed.proj_lif2"
    assert entry["stops_at"] == "patch_embed.maxpool2" and "MaxPool2d" in entry["reason"]


def test_float_network_gets_no_netx_file(tmp_path):
    g, _ = conv_dense_graph(0)
    from snncc.targets import get_target

    art = emit(run_passes(g, list(get_target("lava").default_passes), log=lambda s: None),
               tmp_path / "lava")
    entry = json.loads((art / "manifest.json").read_text())["netx"]
    assert entry["file"] is None and not (art / "netx.h5").exists()
    assert entry["stops_at"] == "x" and "--fixed-point" in entry["reason"]


def test_netx_refuses_what_it_would_truncate(tmp_path):
    """A dense layer whose weights netx's optimisation would clip (mixed, |w| > 254) ends the
    file before it, and the manifest says why."""
    g, x = conv_dense_graph(0)
    q = quantized(g, x)
    q.replace("fc", ir.Linear("fc", ("flat",), weight=np.where(q["fc"].weight > 0, 512, -512)))
    art = emit(q, tmp_path / "lava")
    entry = json.loads((art / "manifest.json").read_text())["netx"]
    assert entry["stops_at"] == "fc" and "clips or truncates" in entry["reason"]
    assert entry["output"] == "lif2" and entry["layers"] == 2


def test_a_convolution_of_128_groups_or_more_ends_the_file(tmp_path):
    """netx runs a conv layer on Lava's own Conv models, which hold the groups in int8 (128
    reads back as -128): a depthwise convolution of 128 channels ends the file before it, and
    the manifest says why; the layers before it are in the file."""
    from test_lava_network import depthwise_graph

    g, x = depthwise_graph(128)
    art = emit(quantized(g, x), tmp_path / "lava")
    entry = json.loads((art / "manifest.json").read_text())["netx"]
    assert entry["stops_at"] == "dw" and "128 groups overflow the int8" in entry["reason"]
    assert entry["output"] == "lif1" and entry["layers"] == 1


def test_a_conv1d_ends_the_file(tmp_path):
    """A quantized Conv1d -> LIF (found by fuzzing fixed point: netx's 2-D conv bias layout
    ended in 'ValueError: axes don't match array'): no netx layer, and the manifest says why;
    the Lava network itself runs it."""
    rng = np.random.default_rng(0)
    g = Graph("c1", {"T": 3})
    g.add(ir.Input("x", input_shape=(2, 6)))
    g.add(ir.Conv1d("conv", ("x",), weight=rng.normal(0.3, 1, (3, 2, 3)), padding=(1,)))
    g.add(ir.Neuron("lif", ("conv",), **neuron.from_lif(2.0, 1.0, 0.0).fields()))
    g.add(ir.Output("out", ("lif",)))
    x = rng.uniform(0, 2, (3, 2, 2, 6))
    art = emit(quantized(g.verify(), x), tmp_path / "lava")
    entry = json.loads((art / "manifest.json").read_text())["netx"]
    assert entry["file"] is None and entry["stops_at"] == "conv"
    assert "netx's conv layers are 2-D" in entry["reason"]


def test_biases_finer_than_whole_input_units_end_the_file(tmp_path):
    """Quantized with each bias's own exponent (``bias_exp=None``) instead of netx's 6, the
    first biased layer's bias is finer than netx holds: no file, and the manifest says why."""
    g, x = conv_dense_graph(0)
    art = emit(quantized(g, x, bias_exp=None), tmp_path / "lava")
    entry = json.loads((art / "manifest.json").read_text())["netx"]
    assert entry["file"] is None and entry["stops_at"] == "conv1"
    assert "finer than netx's bias_exp = 6" in entry["reason"]


@needs_lava_dl
def test_dense_weight_model_matches_lava_dl_and_lava():
    """:func:`netx_keeps_dense_weights` against lava-dl's ``optimize_weight_bits`` followed by
    Lava's clip and truncation, for integer weights in every sign mode and exponent."""
    utils = netx_import.netx().utils
    wu = lava(".utils.weightutils")
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(400):
        lo, hi = sorted(rng.integers(-300, 300, 2))
        w = (rng.integers(lo, hi + 1, (4, 6)) << int(rng.integers(0, 3)))
        if not w.any() or (w.max() > 254 and w.min() < 0) or (w.min() < -256 and w.max() > 0):
            continue  # netx clips these (and prints a warning): never written
        opt, bits, exp, _ = utils.optimize_weight_bits(w)
        mode = wu.determine_sign_mode(opt)
        kept = wu.truncate_weights(wu.clip_weights(opt, mode, num_bits=8), mode, bits)
        real = exp <= 0 and np.array_equal(kept, w.astype(np.int64) << -exp)
        assert netx_keeps_dense_weights(w) == real, w
        seen.add(real)
    assert seen == {True, False}


@needs_lava_dl
def test_a_failing_process_raises_instead_of_hanging(tmp_path):
    """What the old float file did: a non-integer vThMant makes Lava's bit-accurate LIF fail at
    its first step, which Lava 0.10 answers by waiting forever; run_network raises with the
    process's traceback."""
    g, x = conv_dense_graph(0)
    art = emit(quantized(g, x), tmp_path / "lava")
    with h5py.File(art / "netx.h5", "a") as f:
        for i in (2, 4):
            del f[f"layer/{i}"]  # keep input + one conv
        del f["layer/3"]
        th = f["layer/1/neuron/vThMant"]
        value = float(th[()]) - 1e-9
        del f["layer/1/neuron/vThMant"]
        f["layer/1/neuron/vThMant"] = value
    net = netx_import.netx().hdf5.Network(net_config=str(art / "netx.h5"))
    src = lava(".proc.io.source").RingBuffer(data=np.zeros(net.inp.shape + (2,), np.int32))
    src.s_out.connect(net.inp)
    cfg = lava(".magma.core.run_configs").Loihi2SimCfg(select_tag="fixed_pt")
    with pytest.raises(LavaProcessError, match="left_shift"):
        netx_import.run_network(net, 2, cfg)
