"""ONNX back-end: hand-built IR graphs (randomised BN, crossed thresholds, T = 4, 3 seeds) run in
the reference simulator and in onnxruntime (unrolled and single-step models, real sessions):
identical spikes at every neuron and identical outputs in float64; the float32 mismatch rate
is measured and must stay below 1% (it is 0 on these graphs). The graph builders are shared
with tests/test_nir_backend.py."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from snncc import ir
from snncc.errors import ShapeError, SnnccError
from snncc.graph import Graph
from snncc.simulator import simulate
from snncc.targets import get_target

from conftest import assert_rates_in_range, randomized_bn

T, B, SEEDS = 4, 3, (0, 1, 2)


def _bn(rng, c: int, name: str, src: str, axis: int = 0) -> ir.BatchNorm:
    return ir.BatchNorm(name, (src,), axis=axis, **randomized_bn(rng, c))


def conv_graph(seed: int) -> Graph:
    """Static image -> conv/BN/LIF -> max-pool -> per-channel pad -> grouped conv/BN/soft LIF
    -> avg-pool (padded) and sum-pool -> IF ('>') -> linear -> LIF -> readout; two outputs."""
    rng = np.random.default_rng(seed)
    g = Graph("convnet", {"T": T})
    g.add(ir.Input("img", input_shape=(2, 10, 10), static=True))
    g.add(ir.Conv2d("conv1", ("img",), weight=rng.normal(0, .4, (6, 2, 3, 3)),
                    bias=rng.normal(0, .1, 6), padding=(1, 1)))
    g.add(_bn(rng, 6, "bn1", "conv1"))
    g.add(ir.Neuron("lif1", ("bn1",), alpha=0.5, gamma=0.5, beta=0.0,
                    theta=rng.uniform(0.2, 0.6, (6, 1, 1))))
    g.add(ir.MaxPool2d("pool1", ("lif1",), kernel_size=(2, 2), stride=(2, 2)))
    g.add(ir.Pad("pad", ("pool1",), pads=(1, 1, 1, 1), value=rng.normal(0, .5, 6)))
    g.add(ir.Conv2d("conv2", ("pad",), weight=rng.normal(0, .5, (6, 3, 3, 3)), groups=2))
    g.add(_bn(rng, 6, "bn2", "conv2"))
    g.add(ir.Neuron("lif2", ("bn2",), alpha=0.75, gamma=1.0, beta=0.0, theta=0.8, reset="soft"))
    g.add(ir.AvgPool2d("pool2", ("lif2",), kernel_size=(2, 2), stride=(2, 2), padding=(1, 1)))
    g.add(ir.Conv2d("sum", ("lif2",), weight=np.ones((6, 1, 2, 2)), stride=(2, 2), groups=6))
    g.add(ir.Neuron("if3", ("sum",), alpha=1.0, gamma=0.5, beta=0.0, theta=1.0, cmp=">"))
    g.add(ir.Flatten("flat", ("if3",)))
    g.add(ir.Linear("fc", ("flat",), weight=rng.normal(0, .3, (5, 24)), bias=rng.normal(.2, .1, 5)))
    g.add(ir.Neuron("lif4", ("fc",), alpha=0.5, gamma=0.5, beta=0.0, theta=0.3))
    g.add(ir.Readout("mean", ("lif4",)))
    g.add(ir.Output("logits", ("mean",)))
    g.add(ir.Output("pooled", ("pool2",)))
    return g


def attention_graph(seed: int, n: int = 8, d: int = 8, heads: int = 2) -> Graph:
    """Spike tokens -> q, k, v (linear/BN over features/LIF, split into heads) -> K^T V as a
    spike matmul, Q (K^T V) as addressed accumulation, scaled counts into an LIF whose
    threshold ties happen -> Hadamard gate -> merge heads -> projection + residual + delayed
    input -> LIF; Sum, Mean and Concat outputs."""
    rng = np.random.default_rng(seed)
    g = Graph("attention", {"T": T})
    g.add(ir.Input("tok", input_shape=(n, d), input_kind="spike"))
    for p in "qkv":
        g.add(ir.Linear(f"{p}_lin", ("tok",), weight=rng.normal(0, .5, (d, d))))
        g.add(_bn(rng, d, f"{p}_bn", f"{p}_lin", axis=1))
        g.add(ir.Neuron(f"{p}_lif", (f"{p}_bn",), alpha=0.5, gamma=0.5, beta=0.0, theta=0.5))
        g.add(ir.Reshape(f"{p}_heads", (f"{p}_lif",), target=(n, heads, d // heads)))
        g.add(ir.Transpose(f"{p}_t", (f"{p}_heads",), perm=(1, 0, 2)))
    g.add(ir.Transpose("k_T", ("k_t",), perm=(0, 2, 1)))
    g.add(ir.SpikeMatMul("kv", ("k_T", "v_t")))
    g.add(ir.AddressedAccumulate("qkv", ("q_t", "kv"), spike_operand=0))
    g.add(ir.Scale("sdsa_scale", ("qkv",), factor=0.25))
    g.add(ir.Neuron("attn_lif", ("sdsa_scale",), alpha=0.5, gamma=1.0, beta=0.0, theta=0.5))
    g.add(ir.Hadamard("gate", ("attn_lif", "q_t")))
    g.add(ir.Transpose("merge_t", ("gate",), perm=(1, 0, 2)))
    g.add(ir.Reshape("merge", ("merge_t",), target=(n, d)))
    g.add(ir.Linear("proj", ("merge",), weight=rng.normal(0, .6, (d, d)),
                    bias=rng.normal(.3, .2, d)))
    g.add(ir.Delay("tok_late", ("tok",), steps=2))
    g.add(ir.Add("res", ("proj", "tok", "tok_late")))
    g.add(ir.Neuron("res_lif", ("res",), alpha=0.5, gamma=0.5, beta=0.05, theta=0.6))
    g.add(ir.Sum("tok_sum", ("res_lif",), axes=(0,)))
    g.add(ir.Mean("head_mean", ("attn_lif",), axes=(1, 2), keepdim=True))
    g.add(ir.Concat("cat", ("tok_sum", "tok_sum"), axis=0))
    g.add(ir.Output("feat", ("cat",)))
    g.add(ir.Output("head_rate", ("head_mean",)))
    return g


def recurrent_graph(seed: int, n_in: int = 6, n: int = 10) -> Graph:
    """x -> W_in -> (+ W_rec s[t-1] through a cycle-closing Delay) -> LIF (per-neuron alpha,
    gamma) -> W_out -> LIF."""
    rng = np.random.default_rng(seed)
    g = Graph("recurrent", {"T": T})
    g.add(ir.Input("x", input_shape=(n_in,)))
    g.add(ir.Linear("w_in", ("x",), weight=rng.normal(.3, .6, (n, n_in))))
    g.add(ir.Delay("s_prev", ("lif",), shape_hint=(n,)))
    g.add(ir.Linear("w_rec", ("s_prev",), weight=rng.normal(0, .5, (n, n)),
                    bias=rng.normal(0, .1, n)))
    g.add(ir.Add("current", ("w_in", "w_rec")))
    g.add(ir.Neuron("lif", ("current",), alpha=rng.uniform(.3, .9, n), gamma=rng.uniform(.3, 1, n),
                    beta=0.0, theta=0.5))
    g.add(ir.Linear("w_out", ("lif",), weight=rng.normal(.2, .5, (3, n))))
    g.add(ir.Neuron("out_lif", ("w_out",), alpha=0.9, gamma=1.0, beta=0.0, theta=0.4))
    g.add(ir.Output("y", ("out_lif",)))
    return g


GRAPHS = {"conv": conv_graph, "attention": attention_graph, "recurrent": recurrent_graph}


def make_inputs(g: Graph, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 100)
    (inp,) = g.inputs
    shape = (B, *inp.input_shape) if inp.static else (T, B, *inp.input_shape)
    if inp.input_kind == ir.Kind.SPIKE:
        return (rng.uniform(size=shape) < 0.4).astype(np.float64)
    return rng.uniform(-0.5, 1.5, shape)


def spike_mismatch(traces: dict, reference: dict, graph: Graph) -> float:
    """Fraction of neuron-steps of ``traces`` (node -> values; the runner's also hold the
    outputs) whose spike differs from ``reference`` (a simulator trace), over the neurons of
    ``graph``."""
    neurons = [n.name for n in graph.of_type(ir.Neuron)]
    diff = sum(int((traces[k] != reference[k]).sum()) for k in neurons)
    return diff / sum(traces[k].size for k in neurons)


@pytest.fixture(scope="module")
def emitted(tmp_path_factory):
    """(graph name, seed, dtype) -> (graph, inputs, output dir), emitted through the target."""
    root, out = tmp_path_factory.mktemp("onnx"), {}
    target = get_target("onnx")
    for name, make in GRAPHS.items():
        for seed in SEEDS:
            g = make(seed)
            for dtype in ("float64", "float32"):
                out[name, seed, dtype] = (g, make_inputs(g, seed),
                                          target.emit(g, root / f"{name}{seed}{dtype}",
                                                      dtype=dtype))
    return out


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("form", ["unrolled", "step"])
def test_float64_identical_to_simulator(emitted, name, seed, form):
    from snncc.backends.onnx.runner import run_onnx

    g, x, path = emitted[name, seed, "float64"]
    ref = simulate(g, x, record=True)
    assert_rates_in_range(ref.firing_rates(g))
    outputs, traces = run_onnx(path, x, form=form)
    # every neuron's spikes and every output's value at every step
    assert set(traces) == {n.name for n in g.of_type(ir.Neuron)} | {o.name for o in g.outputs}
    for k in traces:
        np.testing.assert_array_equal(traces[k], ref.trace[k], err_msg=k)
    for k, v in ref.outputs.items():
        np.testing.assert_array_equal(outputs[k], v, err_msg=k)


def test_float32_mismatch_rate(emitted):
    """Float32 simulator vs float32 onnxruntime: the mismatch rate is measured and reported;
    it is 0 on these graphs and must stay below 1%."""
    from snncc.backends.onnx.runner import run_onnx

    rates = {}
    for (name, seed, dtype), (g, x, path) in emitted.items():
        if dtype != "float32":
            continue
        ref = simulate(g, x, dtype="float32", record=True)
        for form in ("unrolled", "step"):
            rates[name, seed, form] = spike_mismatch(run_onnx(path, x, form=form)[1], ref.trace, g)
    print("float32 spike mismatch rates:", rates)
    assert max(rates.values()) < 0.01


def test_ties_are_exercised(emitted):
    """The attention LIF really meets h == theta: with '>' its spikes change, and onnxruntime
    still matches the '>=' simulator exactly (checked above)."""
    g, x, _ = emitted["attention", 0, "float64"]
    strict = g.copy()
    strict.replace("attn_lif", ir.Neuron("attn_lif", ("sdsa_scale",), alpha=0.5, gamma=1.0,
                                         beta=0.0, theta=0.5, cmp=">"))
    a = simulate(g, x, record=True).trace["attn_lif"]
    b = simulate(strict, x, record=True).trace["attn_lif"]
    assert (a != b).any()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_models_are_checked_standard_onnx_with_metadata(emitted, dtype):
    from snncc.backends.onnx.models import STEP_FILE, UNROLLED_FILE

    g, _, path = emitted["attention", 0, dtype]
    for fname, form in ((UNROLLED_FILE, "unrolled"), (STEP_FILE, "step")):
        model = onnx.load(path / fname)
        onnx.checker.check_model(model, full_check=True)
        assert {o.domain for o in model.opset_import} == {""}
        assert model.opset_import[0].version >= 17
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["snncc.form"] == form and meta["snncc.T"] == str(T)
        assert float(meta["snncc.dt"]) > 0 and meta["snncc.dtype"] == dtype
        assert json.loads(meta["snncc.inputs"])[0]["shape"] == [8, 8]
    step = onnx.load(path / STEP_FILE)
    names = {i.name for i in step.graph.input}
    assert {"tok", "q_lif:v", "attn_lif:v", "tok_late:fifo"} <= names
    assert {"feat", "q_lif:v.next", "tok_late:fifo.next"} <= {o.name for o in step.graph.output}


def test_float64_models_avoid_missing_double_kernels(emitted):
    """onnxruntime has no double Conv / AveragePool: float64 models use im2col instead."""
    from snncc.backends.onnx.models import UNROLLED_FILE

    def ops(dtype):
        model = onnx.load(emitted["conv", 0, dtype][2] / UNROLLED_FILE)
        return {n.op_type for n in model.graph.node}
    assert not ops("float64") & {"Conv", "AveragePool"}
    assert {"Conv", "AveragePool"} <= ops("float32")


def test_unrolled_model_folds_time_into_the_batch(emitted):
    """Stateless layers run once over all T steps in the unrolled model (a static input's
    conv once on [B, ...], the others on [T * B, ...]); only the neurons step."""
    from collections import Counter

    from snncc.backends.onnx.models import UNROLLED_FILE

    g, _, path = emitted["conv", 0, "float32"]
    ops = Counter(n.op_type for n in onnx.load(path / UNROLLED_FILE).graph.node)
    assert ops["Conv"] == len(g.of_type(ir.Conv2d)) and ops["MaxPool"] == 1
    assert ops["GreaterOrEqual"] + ops["Greater"] == T * len(g.of_type(ir.Neuron))


def test_neuron_arithmetic_is_canonical(emitted):
    """h = alpha * v + gamma * x (+ beta, left out where it is 0, as the simulator does), then
    GreaterOrEqual / Greater; hard reset h * (1 - s), soft h - theta * s."""
    from snncc.backends.onnx.models import STEP_FILE

    step = onnx.load(emitted["conv", 0, "float64"][2] / STEP_FILE)
    by_out = {n.output[0]: n for n in step.graph.node}
    h = by_out["lif1/h"]  # beta = 0
    assert h.op_type == "Add"
    assert [by_out[i].input for i in h.input] == [["lif1.alpha", "lif1:v"], ["lif1.gamma", "bn1"]]
    reset = by_out["lif1:v.next"]
    assert reset.op_type == "Mul" and reset.input[0] == "lif1/h"
    assert by_out[reset.input[1]].input == ["snncc:one", "lif1"]
    assert by_out["lif2:v.next"].op_type == "Sub"  # soft reset
    assert {n.op_type for n in step.graph.node} >= {"GreaterOrEqual", "Greater"}


def test_runner_refuses_bad_inputs(emitted):
    from snncc.backends.onnx.runner import run_onnx

    g, x, path = emitted["attention", 0, "float32"]
    with pytest.raises(ShapeError):
        run_onnx(path, x[:, :, :3])
    with pytest.raises(ShapeError):
        run_onnx(path, x[:2])  # the unrolled model is fixed to T = 4
    outputs, _ = run_onnx(path, x[:2], form="step")  # the step model runs any T
    assert outputs["feat"].shape == (B, 16)
    with pytest.raises(SnnccError):
        run_onnx(path / "missing.onnx", x)


def test_target_runner_and_trace_outputs(tmp_path):
    """The runner the CLI's parity check calls; ``trace=True`` writes the spikes as outputs."""
    g = recurrent_graph(0)
    x = make_inputs(g, 0)
    target = get_target("onnx")
    path = target.emit(g, tmp_path / "rnn", dtype="float64", trace=True)
    outputs, traces = target.run(path, x, T)
    ref = simulate(g, x, record=True)
    np.testing.assert_array_equal(outputs["y"], ref.outputs["y"])
    np.testing.assert_array_equal(traces["lif"], ref.trace["lif"])
    from snncc.backends.onnx.models import UNROLLED_FILE

    names = {o.name for o in onnx.load(path / UNROLLED_FILE).graph.output}
    assert {"y", "t0/lif", "t3/out_lif"} <= names


def test_batchnorm_epsilon_is_torch_float64_epsilon(tmp_path):
    """ONNX stores BatchNormalization's ``epsilon`` as a float32 (1e-5 became 9.99999975e-06):
    a BatchNorm that stays in the graph (its output also feeds a residual add, as QKFormer's
    downsampling's does) flipped spikes of a channel whose running variance is near 0 (agreement
    0.96, found by a QKFormer fork). The float64 model adds eps to the variance as torch does."""
    import torch
    from spikingjelly.activation_based import neuron

    import snncc

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2)
            self.lif = neuron.LIFNode(step_mode="m")

        def forward(self, x):  # [T, B, 1, H, W]
            y = self.bn(self.conv(x.flatten(0, 1))).reshape(*x.shape[:2], 2, *x.shape[3:])
            return y + self.lif(y)

    model = Net().double().eval()
    with torch.no_grad():
        model.conv.weight.fill_(1.0)
        model.conv.bias.zero_()
        model.bn.running_var.copy_(torch.tensor([0.0, 0.5]))
        model.bn.weight.copy_(torch.tensor([-1.0, 1.0]))
        model.bn.bias.copy_(torch.tensor([3.0, 0.5]))
    # channel 0 is 3 - x / sqrt(eps): its first membrane crosses 1 where x <= sqrt(eps)
    x = torch.tensor(np.sqrt(1e-5) * np.linspace(1 - 4e-8, 1 + 4e-8, 64)).reshape(1, 1, 1, 8, 8)
    x = x.repeat(4, 2, 1, 1, 1)
    report = snncc.check(model, x, target="onnx", T=4)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})
    path = snncc.compile(model, x, target="onnx", out=str(tmp_path / "m"), T=4)
    bn = [n for n in onnx.load(path / "model.onnx").graph.node
          if n.op_type == "BatchNormalization"]
    assert [a.f for n in bn for a in n.attribute if a.name == "epsilon"] == [0.0]
