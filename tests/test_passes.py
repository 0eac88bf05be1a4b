"""Each pass alone on small hand-built graphs: the simulator before and after (float64, T = 4,
several seeds) gives identical spikes at every neuron; plus the structural facts each pass
promises (what is removed, what is untouched, what is reported, what is declined and why)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from snncc import ir, neuron
from snncc.errors import PassError, UnsupportedError
from snncc.graph import Graph, node_with
from snncc.pipeline import PASSES, run_passes
from snncc.simulator import simulate
from snncc.targets import TARGETS, Target, register_target

from snncc.passes import default_pipeline  # (importing it registers the passes)
from snncc.passes.common import scaled_synapse

from conftest import assert_rates_in_range, randomized_bn

T, B = 4, 3
SEEDS = [0, 1, 2]


# ----------------------------------------------------------------------------- helpers


def lif(tau=2.0, theta=1.0, v_reset=0.0, cmp=">=", reset="hard", v_init=0.0) -> dict:
    """Canonical parameters of a spikingjelly-style LIF (decay_input=True)."""
    p = neuron.from_lif(tau, theta, v_reset)
    return p.fields(v_init=v_init, cmp=cmp, reset=reset)


def apply(graph: Graph, name: str, **options) -> Graph:
    """Run one registered pass on a copy, as the pass manager does, and verify the result."""
    return PASSES[name].fn(graph.copy(), **options).verify()


def neurons(g: Graph) -> list[str]:
    return [n.name for n in g.of_type(ir.Neuron)]


def assert_same_spikes(before: Graph, after: Graph, x, T=T, dtype="float64", ref=None):
    """Identical spikes at every neuron of ``before`` (same names after), outputs equal up to
    rounding; firing rates of ``before`` in [5%, 95%] so the spikes mean something. ``ref``:
    the recorded run of ``before`` if already simulated."""
    r0 = ref or simulate(before, x, T=T, dtype=dtype, record=True)
    r1 = simulate(after, x, T=T, dtype=dtype, record=True)
    names = neurons(before)
    assert names and set(names) <= set(neurons(after))
    for k in names:
        np.testing.assert_array_equal(r0.trace[k], r1.trace[k], err_msg=f"spikes of {k}")
    for k, v in r0.outputs.items():
        np.testing.assert_allclose(r1.outputs[k], v, rtol=1e-9, atol=1e-9)
    assert_rates_in_range(r0.firing_rates(before))
    return r0, r1


def bn_params(rng, c: int) -> dict:
    """Randomised BN with at least one negative and one zero gamma."""
    p = randomized_bn(rng, c)
    p["weight"][0] = -abs(p["weight"][0])
    p["weight"][1] = 0.0
    return p


def conv_bn_lif(seed: int, cmp=">=", reset="hard", v_reset=0.0, v_init=0.0, pool=False):
    """x (static image) -> conv -> BN -> [maxpool] -> LIF -> conv -> BN -> LIF -> linear."""
    rng = np.random.default_rng(seed)
    g = Graph("conv_bn_lif", {"T": T})
    g.add(ir.Input("x", input_shape=(2, 8, 8), static=True))
    g.add(ir.Conv2d("conv1", ("x",), "stem.conv", weight=rng.normal(0, 0.5, (6, 2, 3, 3)),
                    bias=rng.normal(0, 0.1, 6), padding=(1, 1)))
    g.add(ir.BatchNorm("bn1", ("conv1",), "stem.bn", **bn_params(rng, 6)))
    src = "bn1"
    if pool:
        src = g.add(ir.MaxPool2d("pool", ("bn1",), kernel_size=(3, 3), stride=(2, 2),
                                 padding=(1, 1)))
    nkw = lif(cmp=cmp, reset=reset, v_reset=v_reset, v_init=v_init)
    g.add(ir.Neuron("lif1", (src,), "stem.lif", **nkw))
    g.add(ir.Conv2d("conv2", ("lif1",), "block.conv",
                    weight=rng.normal(0.1, 0.5, (5, 6, 3, 3)), padding=(1, 1)))
    g.add(ir.BatchNorm("bn2", ("conv2",), "block.bn", **bn_params(rng, 5)))
    g.add(ir.Neuron("lif2", ("bn2",), "block.lif", **nkw))
    g.add(ir.Flatten("flat", ("lif2",)))
    g.add(ir.Linear("fc", ("flat",), weight=rng.normal(0, 0.3, (3, int(np.prod(g["lif2"].shape))))))
    g.add(ir.Readout("mean", ("fc",)))
    g.add(ir.Output("out", ("mean",)))
    return g.verify(), rng.normal(0.3, 1.0, (B, 2, 8, 8))


def token_bn_graph(seed: int):
    """Spikformer's CIFAR q branch: spikes [N, C] -> Linear -> Transpose -> BN1d (axis 0) ->
    Transpose -> LIF."""
    rng = np.random.default_rng(seed)
    g = Graph("tokens", {"T": T})
    g.add(ir.Input("x", input_shape=(10, 8), input_kind=ir.Kind.SPIKE))
    g.add(ir.Linear("q", ("x",), "attn.q_linear", weight=rng.normal(0.2, 0.6, (12, 8)),
                    bias=rng.normal(0, 0.1, 12)))
    g.add(ir.Transpose("t1", ("q",), perm=(1, 0)))
    g.add(ir.BatchNorm("bn", ("t1",), "attn.q_bn", **bn_params(rng, 12)))
    g.add(ir.Transpose("t2", ("bn",), perm=(1, 0)))
    g.add(ir.Neuron("lif", ("t2",), "attn.q_lif", **lif()))
    g.add(ir.Output("out", ("lif",)))
    return g.verify(), (rng.random((T, B, 10, 8)) < 0.4).astype(float)


def shortcut_graph(seed: int, shared: bool):
    """Two conv-BN branches added into one neuron; ``shared``: the Add also feeds the output
    (a membrane shortcut whose stream continues), so the BNs cannot move into the neuron."""
    rng = np.random.default_rng(seed)
    g = Graph("shortcut", {"T": T})
    g.add(ir.Input("x", input_shape=(3, 6, 6), input_kind=ir.Kind.SPIKE))
    for i in (1, 2):
        g.add(ir.Conv2d(f"conv{i}", ("x",), f"b{i}.conv", weight=rng.normal(0.1, 0.4, (4, 3, 3, 3)),
                        padding=(1, 1)))
        g.add(ir.BatchNorm(f"bn{i}", (f"conv{i}",), f"b{i}.bn", **bn_params(rng, 4)))
    g.add(ir.Add("add", ("bn1", "bn2"), "block.add"))
    g.add(ir.Neuron("lif", ("add",), "block.lif", **lif(tau=1.5, theta=0.8)))
    g.add(ir.Output("out", ("lif",)))
    if shared:
        g.add(ir.Output("stream", ("add",)))
    return g.verify(), (rng.random((T, B, 3, 6, 6)) < 0.5).astype(float)


# ----------------------------------------------------------------------------- BN folding


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("variant", [
    dict(), dict(cmp=">"), dict(reset="soft"), dict(v_reset=-0.3, v_init=0.2),
    dict(cmp=">", reset="soft", v_init=0.4), dict(pool=True)])
def test_bn_into_threshold_conv(seed, variant):
    g, x = conv_bn_lif(seed, **variant)
    h = apply(g, "fold_batchnorm_into_threshold")
    assert not h.of_type(ir.BatchNorm)
    rep = h.meta["reports"]["fold_batchnorm_into_threshold"]
    assert sorted(rep["into_threshold"]) == ["bn1", "bn2"] and not rep["declined"]
    a, c = g["bn1"].scale_shift()
    w0, w1 = g["conv1"].weight, h["conv1"].weight
    pos, neg, zero = a > 0, a < 0, a == 0
    assert neg.any() and zero.any()
    np.testing.assert_array_equal(w1[pos], w0[pos])  # weights untouched ...
    np.testing.assert_array_equal(w1[neg], -w0[neg])  # ... up to the sign
    np.testing.assert_array_equal(w1[zero], 0 * w0[zero])  # constant channel
    np.testing.assert_allclose(h["conv1"].bias[zero], c[zero])  # ... driven by c
    theta = np.broadcast_to(h["lif1"].theta, h["lif1"].shape)[:, 0, 0]
    np.testing.assert_allclose(theta, 1.0 / np.where(zero, 1.0, np.abs(a)))
    assert h["lif1"].cmp == g["lif1"].cmp  # |a| > 0: the comparison never flips
    assert_same_spikes(g, h, x)


@pytest.mark.parametrize("seed", SEEDS)
def test_bn_into_threshold_token_layout(seed):
    g, x = token_bn_graph(seed)
    h = apply(g, "fold_batchnorm_into_threshold")
    assert not h.of_type(ir.BatchNorm)
    assert np.asarray(h["lif"].theta).shape == (12,)  # per channel, on the last axis
    assert_same_spikes(g, h, x)


@pytest.mark.parametrize("seed", SEEDS)
def test_bn_into_threshold_through_add(seed):
    g, x = shortcut_graph(seed, shared=False)
    h = apply(g, "fold_batchnorm_into_threshold")
    rep = h.meta["reports"]["fold_batchnorm_into_threshold"]
    assert sorted(rep["into_threshold"]) == ["bn1", "bn2"] and not h.of_type(ir.BatchNorm)
    assert_same_spikes(g, h, x)


def test_bn_into_threshold_declines_shared_shortcut():
    g, x = shortcut_graph(0, shared=True)
    h = apply(g, "fold_batchnorm_into_threshold")
    rep = h.meta["reports"]["fold_batchnorm_into_threshold"]
    assert sorted(rep["into_weights"]) == ["bn1", "bn2"] and not h.of_type(ir.BatchNorm)
    reason = rep["fallback_reasons"]["bn1"]
    assert "'add' (block.add)" in reason and "\n" not in reason
    np.testing.assert_array_equal(h["lif"].theta, g["lif"].theta)
    assert_same_spikes(g, h, x)


def no_synapse_graph(seed: int, bn_feeds_neuron: bool = True):
    """BN on a sum of spike maps (no conv before it, as in SNASNet's cells) -> LIF."""
    rng = np.random.default_rng(seed)
    g = Graph("no_synapse", {"T": T})
    g.add(ir.Input("x", input_shape=(4, 5, 5), input_kind=ir.Kind.SPIKE))
    g.add(ir.Input("y", input_shape=(4, 5, 5), input_kind=ir.Kind.SPIKE))
    g.add(ir.Add("sum", ("x", "y"), "cell.node"))
    p = bn_params(rng, 4)
    p["mean"], p["bias"] = np.ones(4), rng.uniform(0.6, 1.5, 4)  # x + y has mean 1
    g.add(ir.BatchNorm("bn", ("sum",), "last_act.bn", **p))
    g.add(ir.Neuron("lif", ("bn",), "last_act.lif", **lif()) if bn_feeds_neuron
          else ir.Readout("lif", ("bn",)))
    g.add(ir.Output("out", ("lif",)))
    xs = {k: (rng.random((T, B, 4, 5, 5)) < 0.5).astype(float) for k in "xy"}
    return g.verify(), xs


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name, method", [("fold_batchnorm_into_threshold", "into_neuron"),
                                          ("fold_batchnorm_into_weights", "into_neuron")])
def test_bn_into_neuron_without_synapse(seed, name, method):
    g, x = no_synapse_graph(seed)
    h = apply(g, name)
    assert h.meta["reports"][name][method] == ["bn"] and not h.of_type(ir.BatchNorm)
    a, _ = g["bn"].scale_shift()
    gamma = np.broadcast_to(h["lif"].gamma, h["lif"].shape)[:, 0, 0]
    expected = np.sign(a) if name.endswith("threshold") else a
    np.testing.assert_allclose(gamma, g["lif"].gamma * expected)
    if name.endswith("weights"):
        np.testing.assert_array_equal(h["lif"].theta, g["lif"].theta)
    assert_same_spikes(g, h, x)


def test_bn_that_cannot_fold_is_kept_with_reason():
    g, x = no_synapse_graph(0, bn_feeds_neuron=False)
    h = apply(g, "fold_batchnorm_into_threshold")
    assert [n.name for n in h.of_type(ir.BatchNorm)] == ["bn"]
    reason = h.meta["reports"]["fold_batchnorm_into_threshold"]["declined"]["bn"]
    assert "'bn' (last_act.bn)" in reason and "'sum' (cell.node)" in reason
    r0, r1 = simulate(g, x, T=T), simulate(h, x, T=T)
    np.testing.assert_array_equal(r0.output, r1.output)


@pytest.mark.parametrize("seed", SEEDS)
def test_bn_not_followed_by_neuron_goes_into_weights(seed):
    """conv -> BN -> Readout: folded into the conv, the BN's output unchanged."""
    rng = np.random.default_rng(seed)
    g = Graph("head", {"T": T})
    g.add(ir.Input("x", input_shape=(3, 5, 5)))
    g.add(ir.Conv2d("conv", ("x",), weight=rng.normal(0, 0.5, (4, 3, 3, 3))))
    g.add(ir.BatchNorm("bn", ("conv",), "head.bn", **bn_params(rng, 4)))
    g.add(ir.Readout("mean", ("bn",)))
    g.add(ir.Output("out", ("mean",)))
    h = apply(g, "fold_batchnorm_into_threshold")
    rep = h.meta["reports"]["fold_batchnorm_into_threshold"]
    assert rep["into_weights"] == ["bn"] and "not a neuron" in rep["fallback_reasons"]["bn"]
    x = rng.normal(size=(T, B, 3, 5, 5))
    np.testing.assert_allclose(simulate(h, x).output, simulate(g, x).output, rtol=1e-12,
                               atol=1e-12)


def _head_bn(seed: int, bn: dict):
    """x -> conv (float32 weights) -> BN -> Readout: only a weight fold removes the BN."""
    rng = np.random.default_rng(seed)
    g = Graph("head", {"T": T})
    g.add(ir.Input("x", input_shape=(3, 5, 5)))
    g.add(ir.Conv2d("conv", ("x",), weight=rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)))
    g.add(ir.BatchNorm("bn", ("conv",), "head.bn", **bn))
    g.add(ir.Readout("mean", ("bn",)))
    g.add(ir.Output("out", ("mean",)))
    return g.verify(), rng.normal(size=(T, B, 3, 5, 5))


@pytest.mark.parametrize("seed", SEEDS)
def test_bn_weight_folds_exact_only_keeps_a_rounding_bn(seed):
    """weight_folds="exact" (the simulator's and ONNX's pipelines): a weight fold that rounds
    is not done, the BN stays with its reason and the conv keeps its float32 weights; an exact
    one (dyadic scale and shift) is done, and its float32 weights stay float32."""
    rng = np.random.default_rng(seed)
    g, x = _head_bn(seed, bn_params(rng, 4))
    h = apply(g, "fold_batchnorm_into_threshold", weight_folds="exact")
    assert [n.name for n in h.of_type(ir.BatchNorm)] == ["bn"] and h["conv"].weight is g["conv"].weight
    assert "the target computes the BN itself" in h.meta["reports"][
        "fold_batchnorm_into_threshold"]["declined"]["bn"]
    np.testing.assert_array_equal(simulate(h, x).output, simulate(g, x).output)
    exact = dict(weight=np.array([0.5, -2.0, 1.0, 0.25]), bias=np.array([0.5, 0.0, -1.0, 2.0]),
                 mean=np.zeros(4), var=np.ones(4), eps=0.0)
    g, x = _head_bn(seed, exact)
    h = apply(g, "fold_batchnorm_into_threshold", weight_folds="exact")
    assert not h.of_type(ir.BatchNorm) and h["conv"].weight.dtype == np.float32
    np.testing.assert_array_equal(h["conv"].weight, g["conv"].weight.astype(np.float64)
                                  * exact["weight"][:, None, None, None])
    np.testing.assert_allclose(simulate(h, x).output, simulate(g, x).output, rtol=1e-12)
    with pytest.raises(PassError, match="weight_folds"):
        apply(g, "fold_batchnorm_into_threshold", weight_folds="some")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("pass_name", ["fold_batchnorm_into_threshold",
                                       "fold_batchnorm_into_weights"])
def test_bn_weight_folds_when_written_leaves_the_fold_to_the_writer(seed, pass_name):
    """weight_folds="when_written" (the NIR and Lava pipelines): a weight fold that rounds is
    left to the writer: the BN stays, listed as left and (as the writer's fold rounds) under
    ties; the writers' lazy fold is the pass's fold, value for value and dtype; an exact fold
    is done by the pass."""
    from snncc.passes.batchnorm import folds_left_to_writer
    from snncc.passes.common import ChannelScaled, folded_synapse_arrays

    rng = np.random.default_rng(seed)
    g, x = _head_bn(seed, bn_params(rng, 4))
    h = apply(g, pass_name, weight_folds="when_written")
    rep = h.meta["reports"][pass_name]
    assert [n.name for n in h.of_type(ir.BatchNorm)] == ["bn"]
    assert h["conv"].weight is g["conv"].weight
    assert rep["folded_when_written"] == ["bn"] and "bn" in rep["ties_may_differ"]
    assert not rep["into_weights"] and not rep["declined"]
    np.testing.assert_array_equal(simulate(h, x).output, simulate(g, x).output)
    (syn, branches), = folds_left_to_writer(h).items()
    assert syn == "conv" and [b.bn.name for b in branches] == ["bn"]
    weight, bias = folded_synapse_arrays(h["conv"], branches)
    assert isinstance(weight, ChannelScaled) and weight.array is g["conv"].weight
    folded = apply(g, pass_name)["conv"]
    assert np.asarray(weight).dtype == folded.weight.dtype
    np.testing.assert_array_equal(np.asarray(weight), folded.weight)
    np.testing.assert_array_equal(bias, folded.bias)
    exact = dict(weight=np.array([0.5, -2.0, 1.0, 0.25]), bias=np.array([0.5, 0.0, -1.0, 2.0]),
                 mean=np.zeros(4), var=np.ones(4), eps=0.0)
    g, x = _head_bn(seed, exact)
    h = apply(g, pass_name, weight_folds="when_written")
    assert not h.of_type(ir.BatchNorm) and not folds_left_to_writer(h)
    assert "folded_when_written" not in h.meta["reports"][pass_name]


@pytest.mark.parametrize("listed", [5, "bn", {"bn": 1}, [3, None], ["nope"], ["bn", "bn"]])
def test_a_malformed_report_of_bns_left_to_the_writer_is_ignored(listed):
    """The report is metadata a .snnir file carries (anyone may have written it): only the
    names of BNs still in the graph count, anything else is ignored, never a crash."""
    from snncc.passes.batchnorm import folds_left_to_writer

    g, _ = _head_bn(0, bn_params(np.random.default_rng(0), 4))
    g.meta["reports"] = {"fold_batchnorm_into_weights": {"folded_when_written": listed}}
    left = folds_left_to_writer(g)
    assert ({k: [b.bn.name for b in bs] for k, bs in left.items()}
            == ({"conv": ["bn"]} if listed == ["bn", "bn"] else {}))
    g.meta["reports"] = [listed]
    assert folds_left_to_writer(g) == {}


def test_scaled_float32_weights_stay_float32_only_where_exact():
    """Scaling a float32 synapse per channel: by 0, +-1 or a power of two the float32 products
    are the real ones and stay float32; any other factor, or a power of two that would leave
    float32's range, gives the float64 products."""
    w = np.array([[1.5, -3.0], [2.0 ** -120, 7.0], [0.1, 0.2]], np.float32)
    conv = ir.Linear("fc", ("x",), weight=w)
    for factors, dtype in (([1.0, -1.0, 0.0], np.float32), ([4.0, -0.5, 1.0], np.float32),
                           ([1.0, 2.0 ** -40, 1.0], np.float64), ([3.0, 1.0, 1.0], np.float64)):
        f = np.array(factors)
        new = scaled_synapse(conv, f, np.zeros(3)).weight
        assert new.dtype == dtype, factors
        np.testing.assert_array_equal(new, w.astype(np.float64) * f[:, None])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("build", [conv_bn_lif, token_bn_graph])
def test_bn_into_weights(seed, build):
    g, x = build(seed)
    h = apply(g, "fold_batchnorm_into_weights")
    assert not h.of_type(ir.BatchNorm)
    for n in neurons(g):  # thresholds stay one per layer
        np.testing.assert_array_equal(h[n].theta, g[n].theta)
    assert_same_spikes(g, h, x)


# ----------------------------------------------------------------------------- SDSA scale


def attention_graph(seed: int, N=6, d=4, heads=2, scale=0.125, theta=0.5, alpha=0.0,
                    gamma=1.0, cmp=">=", order="qk_v", p=0.6):
    """Spikformer attention on spike inputs q, k, v [heads, N, d]: ``order`` 'qk_v' is
    ``((q @ k^T) * s) @ v`` (CIFAR), 'q_kv' is ``(q @ (k^T @ v)) * s`` (ImageNet); then
    head merge and the attention neuron."""
    rng = np.random.default_rng(seed)
    g = Graph("attention", {"T": T})
    for k in "qkv":
        g.add(ir.Input(k, input_shape=(heads, N, d), input_kind=ir.Kind.SPIKE))
    g.add(ir.Transpose("kT", ("k",), perm=(0, 2, 1)))
    if order == "qk_v":
        g.add(ir.SpikeMatMul("qk", ("q", "kT"), "attn.qk"))
        g.add(ir.Scale("scale", ("qk",), "attn.scale", factor=scale))
        g.add(ir.SpikeMatMul("x", ("scale", "v"), "attn.x"))
        last = "x"
    else:
        g.add(ir.SpikeMatMul("kv", ("kT", "v"), "attn.kv"))
        g.add(ir.SpikeMatMul("x", ("q", "kv"), "attn.x"))
        last = g.add(ir.Scale("scale", ("x",), "attn.scale", factor=scale))
    g.add(ir.Transpose("merge", (last,), perm=(1, 0, 2)))
    g.add(ir.Reshape("tokens", ("merge",), target=(N, heads * d)))
    g.add(ir.Neuron("attn_lif", ("tokens",), "attn.attn_lif", alpha=alpha, gamma=gamma,
                    beta=0.0, theta=theta, v_reset=0.0, cmp=cmp))
    g.add(ir.Output("out", ("attn_lif",)))
    xs = {k: (rng.random((T, B, heads, N, d)) < p).astype(float) for k in "qkv"}
    return g.verify(), xs


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("order", ["qk_v", "q_kv"])
@pytest.mark.parametrize("cmp", [">=", ">"])
def test_sdsa_scale_merge_keeps_ties(seed, order, cmp):
    """Memoryless attention neuron (alpha = 0, gamma = 1): it fires iff count * s CMP theta;
    with s = 1/8 and theta = 1/2 the count 4 is a tie, which must behave the same after the
    merge (threshold exactly 4)."""
    g, xs = attention_graph(seed, order=order, cmp=cmp)
    h = apply(g, "merge_sdsa_scale_into_threshold")
    assert not h.of_type(ir.Scale) and float(h["attn_lif"].theta) == 4.0
    r0, r1 = assert_same_spikes(g, h, xs)
    counts = simulate(h, xs, record=True).trace["tokens"]
    assert np.any(counts == 4), "the test data must contain ties"
    spikes = r1.trace["attn_lif"]
    assert np.all(spikes[counts == 4] == (1.0 if cmp == ">=" else 0.0))


@pytest.mark.parametrize("seed", SEEDS)
def test_sdsa_scale_merge_with_leaky_neuron(seed):
    g, xs = attention_graph(seed, alpha=0.5, gamma=0.5, theta=0.5, scale=0.25)
    h = apply(g, "merge_sdsa_scale_into_threshold")
    assert not h.of_type(ir.Scale)
    assert_same_spikes(g, h, xs)


def test_sdsa_scale_not_power_of_two_is_declined():
    g, _ = attention_graph(0, scale=0.1)
    h = apply(g, "merge_sdsa_scale_into_threshold")
    assert [n.name for n in h.of_type(ir.Scale)] == ["scale"]
    reason = h.meta["reports"]["merge_sdsa_scale_into_threshold"]["declined"]["scale"]
    assert "'scale' (attn.scale)" in reason and "power of two" in reason


def test_sdsa_scale_with_two_consumers_is_declined():
    g, _ = attention_graph(0, order="q_kv")
    g.add(ir.Output("raw", ("scale",)))
    h = apply(g.verify(), "merge_sdsa_scale_into_threshold")
    assert h.of_type(ir.Scale)
    assert "feeds 2 nodes" in h.meta["reports"]["merge_sdsa_scale_into_threshold"]["declined"][
        "scale"]


# ----------------------------------------------------------------------------- scaled counts


def scaled_counts_graph(seed: int, factor: float = 0.25) -> tuple[Graph, np.ndarray]:
    """Counts 0..4 divided by 4 (Spike-Driven Transformer V3's spikes) read by a convolution
    through a reshape, by a Linear directly and by an Add (which must keep the Scale)."""
    rng = np.random.default_rng(seed)
    g = Graph("scaled", {"T": T})
    g.add(ir.Input("x", input_shape=(2, 3, 4), input_kind="count"))
    g.add(ir.Scale("unit", ("x",), factor=np.asarray(factor)))
    g.add(ir.Reshape("r", ("unit",), target=(4, 3, 2)))
    g.add(ir.Conv2d("conv", ("r",), weight=rng.normal(size=(3, 4, 3, 3)),
                    bias=rng.normal(size=3), padding=(1, 1)))
    g.add(ir.Neuron("n1", ("conv",), **lif(theta=0.3)))
    g.add(ir.Linear("fc", ("unit",), weight=rng.normal(size=(5, 4)), bias=rng.normal(size=5)))
    g.add(ir.Neuron("n2", ("fc",), **lif(theta=0.3)))
    g.add(ir.Add("sum", ("unit", "unit")))
    g.add(ir.Output("o1", ("n1",)))
    g.add(ir.Output("o2", ("n2",)))
    g.add(ir.Output("o3", ("sum",)))
    return g.verify(), rng.integers(0, 5, (T, B, 2, 3, 4)).astype(np.float64)


@pytest.mark.parametrize("seed", SEEDS)
def test_power_of_two_scale_folds_into_synapses_exactly(seed):
    g, x = scaled_counts_graph(seed)
    h = apply(g, "fold_power_of_two_scale_into_synapses")
    assert h["r"].inputs == ("x",) and h["fc"].inputs == ("x",) and h["sum"].inputs == (
        "unit", "unit")  # the Add still reads the Scale
    assert np.array_equal(h["conv"].weight, g["conv"].weight * 0.25)
    assert h["r"].kind is ir.Kind.COUNT  # the synapses read counts: additions, not MACs
    assert_same_spikes(g, h, x)
    r0, r1 = simulate(g, x, T=T, record=True), simulate(h, x, T=T, record=True)
    for k in ("conv", "fc"):  # the same numbers, not just the same spikes
        np.testing.assert_array_equal(r0.trace[k], r1.trace[k])
    assert set(h.meta["reports"]["fold_power_of_two_scale_into_synapses"]["folded"]) == {
        "conv", "fc"}


def test_power_of_two_scale_is_removed_when_only_synapses_read_it():
    g, _ = scaled_counts_graph(0)
    g.remove("o3")
    g.remove("sum")
    assert not apply(g.verify(), "fold_power_of_two_scale_into_synapses").of_type(ir.Scale)


@pytest.mark.parametrize("factor, folds", [(0.3, False), (-0.5, True), (2.0 ** -1030, False)])
def test_scale_folds_only_by_a_power_of_two_in_range(factor, folds):
    """0.3 would round; a negative power of two is exact; 2^-1030 would leave weights
    subnormal."""
    g, _ = scaled_counts_graph(0, factor)
    h = apply(g, "fold_power_of_two_scale_into_synapses")
    assert h["fc"].inputs == (("x",) if folds else ("unit",))


def test_scale_of_real_values_stays():
    g, _ = scaled_counts_graph(0)
    g.replace("x", ir.Input("x", input_shape=(2, 3, 4), input_kind="real"))
    h = apply(g.verify(), "fold_power_of_two_scale_into_synapses")
    assert h["fc"].inputs == ("unit",)


# ----------------------------------------------------------------------------- addressed additions


def addressed_reference(s: np.ndarray, r: np.ndarray, spike_operand: int):
    """The addressed algorithm written out with loops: every spike selects a row (column) of
    the other operand, which is added; returns (result, additions)."""
    if spike_operand == 1:  # R S = (S^T R^T)^T
        y, n = addressed_reference(np.swapaxes(s, -1, -2), np.swapaxes(r, -1, -2), 0)
        return np.swapaxes(y, -1, -2), n
    s, r = np.broadcast_arrays(s, np.zeros(r.shape[:-2] + s.shape[-2:]))[0], r
    out = np.zeros(s.shape[:-1] + r.shape[-1:])
    adds = 0
    for idx in np.ndindex(*s.shape[:-2]):
        for n in range(s.shape[-2]):
            for i in np.flatnonzero(s[idx + (n,)]):
                out[idx + (n,)] += r[idx + (i,)]
                adds += r.shape[-1]
    return out, adds


def check_additions(graph: Graph, xs) -> int:
    """SimResult.additions of every AddressedAccumulate equals the loop count above, step by
    step, and so do the values; returns the total."""
    res = simulate(graph, xs, record=True)
    total = 0
    for n in graph.of_type(ir.AddressedAccumulate):
        for t in range(T):
            a, b = (res.trace[i][t] for i in n.inputs)
            s, r = (a, b) if n.spike_operand == 0 else (b, a)
            y, adds = addressed_reference(s, r, n.spike_operand)
            np.testing.assert_array_equal(res.trace[n.name][t], y)
            assert res.additions[n.name][t] == adds, f"{n.name} step {t}"
            total += adds
    return total


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("N, d, expected", [(8, 4, "q @ (kT @ v)"), (3, 6, "(q @ kT) @ v")])
def test_lowering_chooses_order_and_counts_additions(seed, N, d, expected):
    g, xs = attention_graph(seed, N=N, d=d, order="qk_v", scale=0.125,
                            theta=0.5 if N == 8 else 0.25)
    g = apply(g, "merge_sdsa_scale_into_threshold")
    h = apply(g, "lower_spike_matmul_to_addressed_additions")
    assert not h.of_type(ir.SpikeMatMul) and len(h.of_type(ir.AddressedAccumulate)) == 2
    chain = h.meta["reports"]["lower_spike_matmul_to_addressed_additions"]["chains"]["x"]
    assert chain["order"] == expected and chain["heads"] == 2
    cost = {"q @ (kT @ v)": 2 * N * d * d, "(q @ kT) @ v": 2 * N * N * d}
    assert chain["max_additions_per_step"] == 2 * cost[expected]
    assert_same_spikes(g, h, xs)
    r0, r1 = simulate(g, xs, record=True), simulate(h, xs, record=True)
    np.testing.assert_array_equal(r0.trace["x"], r1.trace["x"])  # identical integer counts
    assert 0 < check_additions(h, xs) <= T * B * chain["max_additions_per_step"]


def test_lowering_keeps_source_order_when_inexact():
    """With the scale (0.1, not merged) inside the chain the product is real-valued: no
    re-association, and the report says why."""
    g, xs = attention_graph(0, N=8, d=4, scale=0.1, order="qk_v")
    h = apply(g, "lower_spike_matmul_to_addressed_additions")
    assert not h.of_type(ir.SpikeMatMul)
    rep = h.meta["reports"]["lower_spike_matmul_to_addressed_additions"]
    assert set(rep["matmuls"]) == {"qk", "x"} and not rep["chains"]  # the Scale splits the chain
    r0, r1 = simulate(g, xs, record=True), simulate(h, xs, record=True)
    np.testing.assert_array_equal(r0.trace["attn_lif"], r1.trace["attn_lif"])
    check_additions(h, xs)


def test_lowering_reports_inexact_chain():
    """(q @ k') @ v with k' real-valued (spikes times per-channel weights): N > d would make
    q @ (k' @ v) cheaper, but re-associating real sums is not exact, so the source order stays
    and the report says why."""
    rng = np.random.default_rng(0)
    g = Graph("real_chain", {"T": T})
    for k in "qkv":
        g.add(ir.Input(k, input_shape=(8, 4), input_kind=ir.Kind.SPIKE))
    g.add(ir.Scale("kw", ("k",), factor=rng.uniform(0.1, 1.0, 4)))
    g.add(ir.Transpose("kT", ("kw",), perm=(1, 0)))
    g.add(ir.SpikeMatMul("qk", ("q", "kT")))
    g.add(ir.SpikeMatMul("x", ("qk", "v")))
    g.add(ir.Neuron("lif", ("x",), **lif(theta=1.0)))
    g.add(ir.Output("out", ("lif",)))
    h = apply(g.verify(), "lower_spike_matmul_to_addressed_additions")
    chain = h.meta["reports"]["lower_spike_matmul_to_addressed_additions"]["chains"]["x"]
    assert chain["order"] == "(q @ kT) @ v" and "'kT'" in chain["note"]
    assert "real-valued" in chain["note"]
    xs = {k: (rng.random((T, B, 8, 4)) < 0.5).astype(float) for k in "qkv"}
    assert_same_spikes(g, h, xs)
    check_additions(h, xs)


def hadamard_graph(seed: int, sdsa: int = 1, N=12, d=4, heads=2):
    """Spike-Driven Transformer SDSA: ``q * SN(sum_tokens(k * v))`` (SDSA-1) or
    ``q * SN(sum_tokens(k))`` (SDSA-2)."""
    rng = np.random.default_rng(seed)
    g = Graph("sdsa", {"T": T})
    for k in ("q", "k", "v") if sdsa == 1 else ("q", "k"):
        g.add(ir.Input(k, input_shape=(heads, N, d), input_kind=ir.Kind.SPIKE))
    src = g.add(ir.Hadamard("kv", ("k", "v"), "attn.kv")) if sdsa == 1 else "k"
    g.add(ir.Sum("colsum", (src,), "attn.sum", axes=(-2,), keepdim=True))
    g.add(ir.Neuron("talking", ("colsum",), "attn.talking_heads_lif",
                    **lif(theta=0.5 if sdsa == 1 else 2.0)))
    g.add(ir.Hadamard("out_mask", ("q", "talking"), "attn.mask"))
    g.add(ir.Output("out", ("out_mask",)))
    xs = {k.name: (rng.random((T, B, heads, N, d)) < 0.3).astype(float) for k in g.inputs}
    return g.verify(), xs


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("sdsa", [1, 2])
def test_hadamard_sdsa_becomes_mask_and_column_sum(seed, sdsa):
    g, xs = hadamard_graph(seed, sdsa)
    h = apply(g, "lower_spike_matmul_to_addressed_additions")
    assert not h.of_type(ir.Sum)
    rep = h.meta["reports"]["lower_spike_matmul_to_addressed_additions"]["column_sums"]
    assert rep["colsum"]["length"] == 12 and rep["colsum"]["columns"] == 8
    r0, r1 = assert_same_spikes(g, h, xs)
    np.testing.assert_array_equal(r0.trace["colsum"], r1.trace["colsum"])
    # one addition per 1 of the mask: the number of (k AND v) spikes
    mask = xs["k"] * xs["v"] if sdsa == 1 else xs["k"]
    acc = rep["colsum"]["node"]
    np.testing.assert_array_equal(r1.additions[acc], mask.reshape(T, -1).sum(1))
    assert check_additions(h, xs) == mask.sum()


# ----------------------------------------------------------------------------- RepConv


def repconv_graph(seed: int, c=4, c_out=5, pad_value_order="frontend"):
    """Meta-SpikeFormer's RepConv + BN before a LIF: conv1x1 -> BN -> pad(BN value) ->
    dwconv3x3 -> conv1x1 -> BN -> BN -> LIF."""
    rng = np.random.default_rng(seed)
    g = Graph("repconv", {"T": T})
    g.add(ir.Input("x", input_shape=(c, 6, 6), input_kind=ir.Kind.SPIKE))
    g.add(ir.Conv2d("pw1", ("x",), "q_conv.0.body.0", weight=rng.normal(0, 0.5, (c, c, 1, 1))))
    bn1 = bn_params(rng, c)
    g.add(ir.BatchNorm("bn1", ("pw1",), "q_conv.0.body.1.bn", **bn1))
    # the zoo computes the pad value as bias - mean * weight / sqrt(var + eps)
    value = bn1["bias"] - bn1["mean"] * bn1["weight"] / np.sqrt(bn1["var"] + 1e-5)
    g.add(ir.Pad("pad", ("bn1",), "q_conv.0.body.1", pads=(1, 1, 1, 1), value=value))
    g.add(ir.Conv2d("dw", ("pad",), "q_conv.0.body.2.0", weight=rng.normal(0, 0.5, (c, 1, 3, 3)),
                    groups=c))
    g.add(ir.Conv2d("pw2", ("dw",), "q_conv.0.body.2.1",
                    weight=rng.normal(0, 0.5, (c_out, c, 1, 1))))
    g.add(ir.BatchNorm("bn2", ("pw2",), "q_conv.0.body.2.2", **bn_params(rng, c_out)))
    g.add(ir.BatchNorm("bn3", ("bn2",), "q_conv.1", **bn_params(rng, c_out)))
    g.add(ir.Neuron("lif", ("bn3",), "q_lif", **lif()))
    g.add(ir.Output("out", ("lif",)))
    return g.verify(), (rng.random((T, B, c, 6, 6)) < 0.5).astype(float)


@pytest.mark.parametrize("seed", SEEDS)
def test_repconv_becomes_one_3x3_conv(seed):
    g, x = repconv_graph(seed)
    h = apply(g, "reparameterize_repconv")
    convs = h.of_type(ir.Conv2d)
    assert len(convs) == 1 and not h.of_type(ir.BatchNorm, ir.Pad)
    conv = convs[0]
    assert conv.weight.shape == (5, 4, 3, 3) and conv.padding == (1, 1) and conv.groups == 1
    assert conv.path == "q_conv" and h["lif"].inputs == (conv.name,)
    assert h.meta["reports"]["reparameterize_repconv"]["merged"][conv.name] == [
        "pw1", "bn1", "pad", "dw", "pw2", "bn2", "bn3"]
    assert_same_spikes(g, h, x)
    # the merged conv is the chain's linear map: compare the currents too
    r0, r1 = simulate(g, x, record=True), simulate(h, x, record=True)
    np.testing.assert_allclose(r1.trace[conv.name], r0.trace["bn3"], rtol=1e-12, atol=1e-12)


def test_strided_and_padded_chain():
    """conv3x3(stride 2, padding 1) -> BN -> conv1x1: composes (1x1 after a strided conv)."""
    rng = np.random.default_rng(5)
    g = Graph("chain", {"T": T})
    g.add(ir.Input("x", input_shape=(3, 9, 9)))
    g.add(ir.Conv2d("c1", ("x",), weight=rng.normal(size=(4, 3, 3, 3)), bias=rng.normal(size=4),
                    stride=(2, 2), padding=(1, 1)))
    g.add(ir.BatchNorm("bn", ("c1",), **bn_params(rng, 4)))
    g.add(ir.Conv2d("c2", ("bn",), weight=rng.normal(size=(2, 4, 1, 1)), bias=rng.normal(size=2)))
    g.add(ir.Readout("m", ("c2",)))
    g.add(ir.Output("out", ("m",)))
    h = apply(g.verify(), "reparameterize_repconv")
    assert [n.name for n in h.of_type(ir.Conv2d)] == ["c2"] and h["c2"].stride == (2, 2)
    x = rng.normal(size=(T, B, 3, 9, 9))
    np.testing.assert_allclose(simulate(h, x).output, simulate(g, x).output, rtol=1e-11,
                               atol=1e-11)


def test_repconv_declines_and_leaves_factorisations():
    """conv1x1 (biased after BN) -> padded conv3x3: the padding cannot move, declined with the
    node named; dw -> pw without a BN between (a separable conv) is left alone."""
    rng = np.random.default_rng(0)
    g = Graph("chains", {"T": T})
    g.add(ir.Input("x", input_shape=(3, 6, 6), input_kind=ir.Kind.SPIKE))
    g.add(ir.Conv2d("a1", ("x",), weight=rng.normal(size=(3, 3, 1, 1))))
    g.add(ir.BatchNorm("abn", ("a1",), **bn_params(rng, 3)))
    g.add(ir.Conv2d("a2", ("abn",), "blk.a2", weight=rng.normal(size=(3, 3, 3, 3)),
                    padding=(1, 1)))
    g.add(ir.Conv2d("dw", ("a2",), weight=rng.normal(size=(3, 1, 3, 3)), groups=3,
                    padding=(1, 1)))
    g.add(ir.Conv2d("pw", ("dw",), weight=rng.normal(size=(2, 3, 1, 1))))
    g.add(ir.Output("out", ("pw",)))
    h = apply(g.verify(), "reparameterize_repconv")
    assert len(h.of_type(ir.Conv2d)) == 4
    rep = h.meta["reports"]["reparameterize_repconv"]
    assert not rep["merged"] and "'a2' (blk.a2)" in rep["declined"]["a1"]


# ----------------------------------------------------------------------------- hoisting


@pytest.mark.parametrize("static", [True, False])
def test_hoist_static_input(static):
    g, x = conv_bn_lif(0)
    if not static:
        g.replace("x", ir.Input("x", input_shape=(2, 8, 8), static=False))
        g.verify()
        x = np.repeat(x[None], T, axis=0)
    h = apply(g, "hoist_static_input")
    assert h.meta["hoisted"] == (["conv1", "bn1"] if static else [])
    rep = h.meta["reports"]["hoist_static_input"]
    assert rep["macs_saved_per_sample"] == (3 * 6 * 64 * 18 if static else 0)
    r0, r1 = simulate(g, x, record=True), simulate(h, x, record=True)
    for k in r0.trace:
        np.testing.assert_array_equal(r0.trace[k], r1.trace[k])


# ----------------------------------------------------------------------------- housekeeping


def test_remove_identities():
    rng = np.random.default_rng(0)
    g = Graph("ids", {"T": T})
    g.add(ir.Input("x", input_shape=(4, 6), input_kind=ir.Kind.SPIKE))
    g.add(ir.Reshape("r1", ("x",), target=(2, 2, 6)))
    g.add(ir.Reshape("r2", ("r1",), target=(24,)))
    g.add(ir.Flatten("f", ("r2",)))  # flat already
    g.add(ir.Reshape("r3", ("f",), target=(6, 4)))
    g.add(ir.Transpose("t1", ("r3",), perm=(1, 0)))
    g.add(ir.Transpose("t2", ("t1",), perm=(1, 0)))
    g.add(ir.Scale("one", ("t2",), factor=1.0))
    g.add(ir.Add("single", ("one",)))
    g.add(ir.Linear("fc", ("single",), weight=rng.normal(size=(3, 4))))
    g.add(ir.Neuron("lif", ("fc",), **lif(theta=0.3)))
    g.add(ir.Output("out", ("lif",)))
    h = apply(g.verify(), "remove_identities")
    assert [n.op for n in h.topological_order()] == ["Input", "Reshape", "Linear", "Neuron",
                                                     "Output"]
    assert h["fc"].inputs == ("r3",) and h["r3"].inputs == ("x",)
    x = (rng.random((T, B, 4, 6)) < 0.5).astype(float)
    assert_same_spikes(g, h, x)


def test_fold_constants():
    rng = np.random.default_rng(1)
    g = Graph("consts", {"T": T})
    g.add(ir.Input("x", input_shape=(5,)))
    g.add(ir.Scale("s1", ("x",), factor=0.3))
    g.add(ir.Scale("s2", ("s1",), factor=0.25))  # power of two: folds
    g.add(ir.Scale("s3", ("s2",), factor=0.7))  # 0.075 * 0.7: neither a power of two, kept
    g.add(ir.Scale("zero", ("x",), factor=0.0))
    g.add(ir.Add("add", ("s3", "zero")))
    g.add(ir.Neuron("lif", ("add",), **lif(theta=0.05)))
    g.add(ir.Output("out", ("lif",)))
    h = apply(g.verify(), "fold_constants")
    assert h["s2"].inputs == ("x",) and float(h["s2"].factor) == 0.3 * 0.25
    assert h["s3"].inputs == ("s2",) and h["add"].inputs == ("s3",)
    assert "zero" not in h and "s1" not in h
    assert_same_spikes(g, h, rng.normal(0.4, 1, (T, B, 5)))


def test_fold_constants_keeps_a_zero_addend_that_alone_connects_a_loop_to_the_input():
    """A recurrent layer whose only input path is a zero-scaled addend (it fires from its
    initial state alone): dropping the addend left the loop with no path from an Input, a
    VerificationError inside the pass (found by tests/fuzz_graphs.py, seed 9100's run)."""
    rng = np.random.default_rng(2)
    g = Graph("loop", {"T": T})
    g.add(ir.Input("x", input_shape=(3,)))
    g.add(ir.Linear("fc", ("x",), weight=rng.normal(size=(3, 3))))
    g.add(ir.Neuron("lif", ("fc",), **lif(theta=0.3)))
    g.add(ir.Scale("zero", ("x",), factor=0.0))
    g.add(ir.Delay("before", ("rec",), steps=1, shape_hint=(3,), kind_hint=ir.Kind.SPIKE))
    g.add(ir.Linear("w", ("before",), weight=0.8 * np.eye(3)))
    g.add(ir.Add("current", ("zero", "w")))
    g.add(ir.Neuron("rec", ("current",), **{**lif(theta=0.5), "v_init": 1.0, "alpha": 0.5}))
    g.add(ir.Output("out", ("lif",)))
    g.add(ir.Output("out_rec", ("rec",)))
    h = apply(g.verify(), "fold_constants")
    assert h["current"].inputs == ("zero", "w")
    assert "without a path from an input" in h.meta["reports"]["fold_constants"]["kept"]["current"]
    assert_same_spikes(g, h, rng.normal(0.4, 1, (T, B, 3)))


# ----------------------------------------------------------------------------- legalization


@pytest.fixture
def strict_target():
    """A target with '>' only, hard resets, one threshold and decay per layer, no BN/Flatten."""
    t = register_target(Target(
        name="test-strict", description="test", cmps=frozenset({">"}),
        ops=frozenset(ir.NODE_TYPES) - {"BatchNorm", "Flatten"}, resets=frozenset({"hard"}),
        per_neuron_threshold=False, per_neuron_decay=False, default_passes=(),
        emitter="snncc.serialize:save"))
    yield t.name
    del TARGETS[t.name]


def dyadic_graph(seed: int):
    """Spikes through a linear layer with weights in multiples of 1/4 into a LIF with
    theta = 0.5 (alpha = gamma = 1/2): real membranes hitting theta exactly, often."""
    rng = np.random.default_rng(seed)
    g = Graph("ties", {"T": T})
    g.add(ir.Input("x", input_shape=(6,), input_kind=ir.Kind.SPIKE))
    g.add(ir.Linear("fc", ("x",), "fc", weight=rng.integers(-1, 3, (5, 6)) / 4))
    g.add(ir.Neuron("lif", ("fc",), "lif", **lif(theta=0.5)))
    g.add(ir.Output("out", ("lif",)))
    return g.verify(), (rng.random((T, B, 6)) < 0.5).astype(float)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_legalize_ge_to_gt_keeps_ties(strict_target, seed, dtype):
    g, x = dyadic_graph(seed)
    h = apply(g, "legalize_for", target=strict_target, dtype=dtype)
    assert h["lif"].cmp == ">" and float(h["lif"].theta) < 0.5
    r0, _ = assert_same_spikes(g, h, x, dtype=dtype)
    # the ties matter: keeping theta with '>' loses the spikes where h == theta exactly
    naive = g.copy()
    naive.replace("lif", node_with(g["lif"], cmp=">"))
    r2 = simulate(naive, x, T=T, dtype=dtype, record=True)
    assert not np.array_equal(r0.trace["lif"], r2.trace["lif"])


def test_legalize_integer_membrane_uses_theta_minus_one(strict_target):
    """Count input, integer parameters: '>= 4' becomes '> 3' (exact in any dtype)."""
    g, xs = attention_graph(0, order="q_kv", scale=1.0, theta=4.0)
    g = apply(g, "remove_identities")  # drops the Scale(1): the neuron sees integer counts
    h = apply(g, "legalize_for", target=strict_target)
    assert h["attn_lif"].cmp == ">" and float(h["attn_lif"].theta) == 3.0
    assert_same_spikes(g, h, xs)


@pytest.mark.parametrize("seed", SEEDS)
def test_legalize_per_neuron_threshold_into_weights(strict_target, seed):
    g, x = conv_bn_lif(seed)
    g = apply(g, "fold_batchnorm_into_threshold")  # per-channel thetas
    assert np.asarray(g["lif1"].theta).size > 1
    h = apply(g, "legalize_for", target=strict_target)
    for n in ("lif1", "lif2"):
        assert np.asarray(h[n].theta).size == 1 and h[n].cmp == ">"
    assert_same_spikes(g, h, x)


def test_legalize_lists_every_problem(strict_target):
    g, _ = conv_bn_lif(0)  # BN x2, Flatten (rewritten into Reshape, fine)
    g.replace("lif2", ir.Neuron("lif2", ("bn2",), "block.lif", **lif(reset="soft")))
    g.replace("lif1", ir.Neuron("lif1", ("bn1",), "stem.lif",
                                **{**lif(), "alpha": np.linspace(0.1, 0.9, 6).reshape(6, 1, 1)}))
    with pytest.raises(UnsupportedError) as e:
        apply(g.verify(), "legalize_for", target=strict_target)
    msg = str(e.value)
    assert "cannot map 4 node(s)" in msg and "\n" not in msg
    for part in ("'bn1' (stem.bn): BatchNorm", "'bn2' (block.bn): BatchNorm",
                 "'lif1' (stem.lif): the decay alpha", "'lif2' (block.lif): soft reset"):
        assert part in msg


def test_legalize_for_lava_leaves_to_its_custom_neuron_what_its_lif_cannot_express():
    """Lava has a custom neuron process (``Target.custom_neuron``): a soft reset beside '>='
    and a per-neuron decay stay as they are, with the reason in the report, where a target
    without one lists them (test above)."""
    g, x = conv_bn_lif(0)
    g = apply(g, "fold_batchnorm_into_weights")
    g.replace("lif2", node_with(g["lif2"], reset="soft"))
    g.replace("lif1", node_with(g["lif1"], alpha=np.linspace(0.1, 0.9, 6).reshape(6, 1, 1)))
    h = apply(g.verify(), "legalize_for", target="lava")
    assert h["lif2"].reset == "soft" and h["lif2"].cmp == ">="
    assert np.asarray(h["lif1"].alpha).size == 6
    custom = h.meta["reports"]["legalize_for"]["custom_neuron"]
    assert set(custom) == {"lif1", "lif2"} and "soft reset" in custom["lif2"] and \
        "decay alpha" in custom["lif1"]
    assert_same_spikes(g, h, x)


def test_legalize_reads_target_from_meta(strict_target):
    g, x = conv_bn_lif(0)
    g = apply(g, "fold_batchnorm_into_weights")
    g.meta["target"] = strict_target
    h = apply(g, "legalize_for")
    assert not h.of_type(ir.Flatten) and h["lif1"].cmp == ">"
    assert_same_spikes(g, h, x)


# ----------------------------------------------------------------------------- default pipelines


def test_default_pipelines():
    sim = default_pipeline("sim")
    assert "fold_batchnorm_into_threshold" in sim and sim[-1] == "legalize_for"
    lava = default_pipeline("lava")
    assert "fold_batchnorm_into_weights" in lava and lava[-1] == "balance_synaptic_latency"
    for p in ("merge_sdsa_scale_into_threshold", "lower_spike_matmul_to_addressed_additions",
              "hoist_static_input"):
        assert p in sim and p in lava


def test_repconvs_are_merged_only_for_fixed_point():
    """Merged, a RepConv is one dense 3x3 conv: slower to simulate and to compile in float (see
    benchmarks/RESULTS.md), but its 8-bit weights lose only rounding, where the chain's lose
    5-20%."""
    from snncc.pipeline import for_target

    for target in ("sim", "onnx", "nir", "lava"):
        assert "reparameterize_repconv" not in default_pipeline(target)
    for target, fold in (("sim", "fold_batchnorm_into_threshold"),
                         ("lava", "fold_batchnorm_into_weights")):
        names = for_target(target, fixed_point=True).passes
        assert names.index("reparameterize_repconv") < names.index(fold) \
            < names.index("quantize_for_loihi2")
    listed = subprocess.run([sys.executable, "-m", "snncc.cli", "passes"], capture_output=True,
                            text=True, timeout=120).stdout.splitlines()
    assert f"default pipeline for lava: {', '.join(default_pipeline('lava'))}" in listed
    assert ("default pipeline for lava --fixed-point: "
            f"{', '.join(for_target('lava', fixed_point=True).passes)}") in listed


@pytest.mark.parametrize("target", ["sim", "nir", "onnx"])
def test_default_pipeline_on_hand_built_graphs(target):
    for g, x in (conv_bn_lif(1), repconv_graph(1), attention_graph(1, N=8, d=4)):
        g.meta["target"] = target
        h = run_passes(g, default_pipeline(target), log=lambda s: None)
        assert not h.of_type(ir.BatchNorm, ir.Scale, ir.SpikeMatMul)
        assert_same_spikes(g, h, x)
