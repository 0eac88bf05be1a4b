"""spikingjelly 0.0.0.0.14's ``clock_driven`` API, the one the official repositories of
Spikformer, Spike-Driven Transformer and QKFormer import: models written the way those
repositories write them (``MultiStepLIFNode(tau=2.0, detach_reset=True)``, steps folded into the
batch around every layer, BatchNorm1d over transposed tokens; ``SeqToANNContainer``; single-step
``LIFNode`` loops reset with ``functional.reset_net``) are traced and give the library's own
spikes at every neuron (firing rates in [5%, 95%]) on the simulator, onnxruntime and a NIR round
trip (the Spikformer also in Lava), in float64, as do two networks of 0.0.0.0.14's own model
package (a multi-step SEW-ResNet-18 with IAND connections and a spiking VGG-11-BN); ``snncc
compile`` and ``check`` take such a model file; the modules of its ``layer`` that compute something the IR does not express are refused by
name.

Not collected by the main test run (spikingjelly 2.0 is installed there): test_spikingjelly_legacy
runs this file in a process that imports 0.0.0.0.14 (scripts/setup.sh installs it in
.venv/spikingjelly-0.0.0.0.14)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from snncc import ir
from snncc.errors import UnsupportedError
from snncc.frontends.tracer import trace
from snncc.frontends.zoo import randomize_bn
from snncc.simulator import simulate
from snncc.targets import get_target

from conftest import assert_rates_in_range, library_spikes

cd = pytest.importorskip("spikingjelly.clock_driven")
from spikingjelly.clock_driven import functional, layer, neuron  # noqa: E402

T = 4


def _lif(**kw):
    return neuron.MultiStepLIFNode(tau=2.0, detach_reset=True, backend="torch", **kw)


class TokenMLP(nn.Module):
    """Linear, BatchNorm1d over the transposed tokens, multi-step LIF, with T and B folded into
    the batch around each layer (the official Spikformer's MLP block, as it writes it)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1_linear, self.fc1_bn = nn.Linear(dim, hidden), nn.BatchNorm1d(hidden)
        self.fc2_linear, self.fc2_bn = nn.Linear(hidden, dim), nn.BatchNorm1d(dim)
        self.fc1_lif, self.fc2_lif = _lif(), _lif()
        self.hidden = hidden

    def forward(self, x):
        t, b, n, c = x.shape
        x = self.fc1_linear(x.flatten(0, 1))
        x = self.fc1_bn(x.transpose(-1, -2)).transpose(-1, -2).reshape(t, b, n, self.hidden)
        x = self.fc1_lif(x.contiguous())
        x = self.fc2_linear(x.flatten(0, 1))
        x = self.fc2_bn(x.transpose(-1, -2)).transpose(-1, -2).reshape(t, b, n, c)
        return self.fc2_lif(x.contiguous())


class SpikingSelfAttention(nn.Module):
    """Q, K, V spikes from Linear + BatchNorm1d + LIF, ``(q @ k^T) * 0.125 @ v`` per head, a LIF
    with threshold 0.5 on the result, then a projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        for nm in ("q", "k", "v", "proj"):
            setattr(self, f"{nm}_linear", nn.Linear(dim, dim))
            setattr(self, f"{nm}_bn", nn.BatchNorm1d(dim))
            setattr(self, f"{nm}_lif", _lif())
        self.attn_lif = _lif(v_threshold=0.5)

    def _spikes(self, nm, x, t, b, n, c):
        y = getattr(self, f"{nm}_linear")(x)
        y = getattr(self, f"{nm}_bn")(y.transpose(-1, -2)).transpose(-1, -2).reshape(t, b, n, c)
        y = getattr(self, f"{nm}_lif")(y.contiguous())
        return y.reshape(t, b, n, self.heads, c // self.heads).permute(0, 1, 3, 2, 4).contiguous()

    def forward(self, x):
        t, b, n, c = x.shape
        flat = x.flatten(0, 1)
        q, k, v = (self._spikes(nm, flat, t, b, n, c) for nm in ("q", "k", "v"))
        y = (q @ k.transpose(-2, -1)) * 0.125 @ v
        y = self.attn_lif(y.transpose(2, 3).reshape(t, b, n, c).contiguous()).flatten(0, 1)
        y = self.proj_bn(self.proj_linear(y).transpose(-1, -2)).transpose(-1, -2)
        return self.proj_lif(y.reshape(t, b, n, c))


class OfficialStyleSpikformer(nn.Module):
    """A small Spikformer as its official CIFAR code is written: a conv stem with steps folded
    into the batch, max pooling, relative position conv added to the features, blocks of
    attention and MLP with residual sums, a head on the mean over tokens and steps."""

    def __init__(self, dim: int = 32, heads: int = 2, classes: int = 10):
        super().__init__()
        self.T = T
        self.proj_conv = nn.Conv2d(3, dim // 2, 3, 1, 1, bias=False)
        self.proj_bn, self.proj_lif = nn.BatchNorm2d(dim // 2), _lif()
        self.proj_conv1 = nn.Conv2d(dim // 2, dim, 3, 1, 1, bias=False)
        self.proj_bn1, self.proj_lif1 = nn.BatchNorm2d(dim), _lif()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.rpe_conv, self.rpe_bn, self.rpe_lif = nn.Conv2d(dim, dim, 3, 1, 1, bias=False), \
            nn.BatchNorm2d(dim), _lif()
        self.attn, self.mlp = SpikingSelfAttention(dim, heads), TokenMLP(dim, 2 * dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        t, b, _, h, w = x.shape
        x = self.proj_bn(self.proj_conv(x.flatten(0, 1))).reshape(t, b, -1, h, w).contiguous()
        x = self.proj_lif(x).flatten(0, 1).contiguous()
        x = self.proj_bn1(self.proj_conv1(x)).reshape(t, b, -1, h, w).contiguous()
        x = self.maxpool(self.proj_lif1(x).flatten(0, 1).contiguous())
        feat = x.reshape(t, b, -1, h // 2, w // 2).contiguous()
        x = self.rpe_bn(self.rpe_conv(x)).reshape(t, b, -1, h // 2, w // 2).contiguous()
        x = (self.rpe_lif(x) + feat).flatten(-2).transpose(-1, -2)
        x = x + self.attn(x)
        x = x + self.mlp(x)
        return self.head(x.mean(2).mean(0))


class SingleStepNet(nn.Module):
    """Single-step neurons called once per step in the model's own loop, with a multi-step PLIF,
    IF and tdBN in ``SeqToANNContainer``s and a multi-step dropout between them."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.lif = neuron.LIFNode(tau=2.0, decay_input=False)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.plif = neuron.ParametricLIFNode(init_tau=3.0, v_reset=None)
        self.stage = nn.Sequential(
            layer.SeqToANNContainer(nn.Conv2d(8, 8, 3, padding=1)),
            layer.MultiStepThresholdDependentBatchNorm2d(alpha=1.0, v_th=1.0, num_features=8),
            neuron.MultiStepParametricLIFNode(init_tau=2.5, detach_reset=True, backend="torch"),
            layer.MultiStepDropout(0.3),
            layer.SeqToANNContainer(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 16)),
            neuron.MultiStepIFNode(v_threshold=0.5, detach_reset=True, backend="torch"),
            layer.SeqToANNContainer(nn.Linear(16, 10)))

    def forward(self, x):
        steps = []
        for _ in range(T):
            y = self.plif(self.bn2(self.conv2(self.lif(self.bn(self.conv(x))))))
            steps.append(y)
        return self.stage(torch.stack(steps)).mean(0)


class Branching(nn.Module):
    """A block that branches on ``isinstance(x, torch.Tensor)`` (its other input a tuple of
    hidden states), as KirinZheng/spike_diversity's Spikformer Block does: traced, it took
    neither branch and returned None."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv, self.bn, self.lif = nn.Conv2d(dim, dim, 1, bias=False), nn.BatchNorm2d(dim), \
            _lif()

    def forward(self, x):
        if isinstance(x, torch.Tensor):
            t, b, *rest = x.shape
            return x + self.lif(self.bn(self.conv(x.flatten(0, 1))).reshape(t, b, *rest))
        elif isinstance(x, tuple):
            return self.forward(x[-1])


class RecurrentCoding(nn.Module):
    """spike_diversity's recurrent patch coding (``pe_type='stf_2'``): a multi-step LIF called
    once per step on ``x[i].unsqueeze(0)``, its spikes fed back through a convolution, BN and a
    second multi-step LIF into the next step's input (it was refused: "a multi-step neuron
    needs a [T, B, ...] input")."""

    def __init__(self, dim: int = 8, classes: int = 10):
        super().__init__()
        self.T = T
        self.proj_conv, self.proj_bn = nn.Conv2d(3, dim, 3, 1, 1, bias=False), nn.BatchNorm2d(dim)
        self.proj_lif, self.temporal_lif = _lif(), _lif()
        self.temporal_conv = nn.Conv2d(dim, dim, 3, 1, 1, bias=False)
        self.temporal_bn = nn.BatchNorm2d(dim)
        self.block, self.head = Branching(dim), nn.Linear(dim, classes)

    def forward(self, x):
        x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        t, b, _, h, w = x.shape
        x = self.proj_bn(self.proj_conv(x.flatten(0, 1))).reshape(t, b, -1, h, w)
        steps = []
        for i in range(t):
            x_in = x[i] if i == 0 else x[i] + x_out  # noqa: F821 (the step before's)
            x_out = self.proj_lif(x_in.unsqueeze(0)).squeeze(0)
            steps.append(x_out)
            x_out = self.temporal_bn(self.temporal_conv(x_out))
            x_out = self.temporal_lif(x_out.unsqueeze(0)).squeeze(0)
        x = self.block(torch.stack(steps, dim=0))
        return self.head(x.flatten(3).mean(3).mean(0))


def transitional_api_net() -> nn.Module:
    """0.0.0.0.14's own ``activation_based`` API (2.0's, in one ``layer`` module), multi-step:
    takes a ``[T, B, ...]`` sequence."""
    from spikingjelly.activation_based import layer as ab_layer, neuron as ab_neuron

    return nn.Sequential(
        ab_layer.Conv2d(3, 8, 3, padding=1, step_mode="m"), ab_layer.BatchNorm2d(8, step_mode="m"),
        ab_neuron.LIFNode(tau=2.0, step_mode="m"), ab_layer.MaxPool2d(2, step_mode="m"),
        ab_layer.Dropout(0.2, step_mode="m"), ab_layer.Flatten(step_mode="m"),
        ab_layer.Linear(8 * 4 * 4, 16, step_mode="m"),
        ab_layer.SeqToANNContainer(nn.BatchNorm1d(16)),
        ab_neuron.ParametricLIFNode(init_tau=2.0, step_mode="m"),
        ab_layer.SeqToANNContainer(nn.Linear(16, 10), nn.BatchNorm1d(10)),
        ab_neuron.IFNode(step_mode="m"))


def model_package(name: str):
    """A network of 0.0.0.0.14's own model package, multi-step, with IF neurons. Its files
    import torchvision only to download weights (see provide_weight_loader_without_torchvision);
    the multi-step ResNets repeat the stem's output over T after an in-place ``unsqueeze_``."""
    from snncc.frontends.adapters.spikingjelly import provide_weight_loader_without_torchvision

    provide_weight_loader_without_torchvision()
    from spikingjelly.clock_driven.model import sew_resnet, spiking_vgg

    if name == "sew_resnet18_iand":
        return sew_resnet.multi_step_sew_resnet18(
            T=T, cnf="IAND", multi_step_neuron=neuron.MultiStepIFNode, num_classes=10,
            detach_reset=True)
    return spiking_vgg.multi_step_spiking_vgg11_bn(
        T=T, multi_step_neuron=neuron.MultiStepIFNode, num_classes=10, detach_reset=True)


BUILDERS = {"spikformer": OfficialStyleSpikformer, "single_step": SingleStepNet,
            "recurrent_coding": RecurrentCoding,
            "activation_based": transitional_api_net,
            "sew_resnet18_iand": lambda: model_package("sew_resnet18_iand"),
            "vgg11_bn": lambda: model_package("vgg11_bn")}
SEQUENCE = {"activation_based"}  # takes [T, B, ...] (the others repeat a static image)


def build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = BUILDERS[name]().double().eval()
    randomize_bn(model, seed)
    for m in model.modules():  # PLIF: a learnt tau, not the initial one
        if type(m).__name__.endswith("ParametricLIFNode"):
            m.w.data.fill_(float(torch.randn(1, generator=torch.Generator().manual_seed(seed))))
    size = 32 if name in ("sew_resnet18_iand", "vgg11_bn") else 8
    x = 2.0 * torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed),
                          dtype=torch.float64)
    return model, x.unsqueeze(0).repeat(T, 1, 1, 1, 1) if name in SEQUENCE else x


@pytest.fixture(scope="module")
def traced():
    cache = {}

    def get(name: str):
        if name not in cache:
            model, x = build(name)
            g = trace(model, x, T=T, static=name not in SEQUENCE, name=name)
            neurons = g.of_type(ir.Neuron)
            y, spikes = library_spikes(model, x, {n.path for n in neurons}, functional.reset_net)
            batch = x.shape[1 if name in SEQUENCE else 0]
            ref = {n.name: spikes[n.path].reshape(T, batch, *n.shape) for n in neurons}
            assert len(neurons) == sum(type(m).__name__.endswith("Node") for m in model.modules())
            cache[name] = g, x.numpy(), ref, y
        return cache[name]
    return get


def assert_spikes(traces: dict, ref: dict) -> None:
    for k, spikes in ref.items():
        mismatch = float(np.mean(traces[k] != spikes))
        assert mismatch == 0, f"{k}: spike mismatch rate {mismatch:.3g}"


@pytest.mark.parametrize("name", BUILDERS)
def test_simulator_gives_the_library_spikes(traced, name):
    g, x, ref, y = traced(name)
    res = simulate(g, x, T, record=True)
    assert_spikes(res.trace, ref)
    per_step = g.meta["output_layout"] == "TB"  # one output per step, as the model returns
    got = res.output_sequence if per_step else res.outputs
    np.testing.assert_allclose(got[g.outputs[0].name], y, rtol=0, atol=1e-10)
    assert_rates_in_range({k: float(v.mean()) for k, v in ref.items()})


@pytest.mark.parametrize("name", [n for n in BUILDERS if n != "vgg11_bn"])  # VGG: 12 s more
def test_onnx_and_nir_give_the_library_spikes(traced, tmp_path, name):
    from snncc.backends.onnx.runner import run_onnx
    from snncc.frontends.nir_reader import read_nir

    g, x, ref, y = traced(name)
    outputs, traces = run_onnx(get_target("onnx").emit(g, tmp_path / "m", dtype="float64"), x)
    assert_spikes(traces, ref)
    last = y[-1] if g.meta["output_layout"] == "TB" else y  # the targets give the last step
    np.testing.assert_allclose(outputs[g.outputs[0].name], last, rtol=1e-9, atol=1e-9)
    back = read_nir(get_target("nir").emit(g, tmp_path / "m.nir"))
    res = simulate(back, x, T, record=True)
    assert_spikes(res.trace, ref)


@pytest.mark.parametrize("target", ["sim", "onnx"])
def test_qkformers_multi_step_lif_on_time_and_batch_folded_together(target):
    """QKFormer's official attention, with the MultiStepLIFNode its code imports: ``proj_lif``
    on ``[T*B, C, N]`` (refused before) gives every sample as the model does at batch 1."""
    import snncc
    from test_user_models import _folded_projection

    model, x = _folded_projection(0, lambda threshold=1.0: _lif(v_threshold=threshold))
    report = snncc.check(model, x, target=target)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert report.batch_coupled == {"proj_lif": "T*B"} and len(report.layers) == 6
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


def test_cli_compiles_and_checks_a_model_file(tmp_path):
    """``--model file.py:Factory`` with a checkpoint of the model's state dict: every layer of
    the compiled ONNX model agrees with the model's own forward."""
    from pathlib import Path

    from snncc.cli import main

    model, _ = build("spikformer")
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    source = [str(tmp_path / "ckpt.pt"), "--model",
              f"{Path(__file__).resolve()}:OfficialStyleSpikformer", "--input-shape", "3,8,8"]
    assert main(["compile", *source, "--target", "onnx", "-o", str(tmp_path / "out")]) == 0
    assert main(["check", *source, "--target", "onnx", "--artifact", str(tmp_path / "out"),
                 "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["min_agreement"] == 1.0 and report["first_divergent_target"] is None
    assert len(report["layers"]) >= 10
    assert all(0.0 < layer["rate_reference"] < 1.0 for layer in report["layers"])


class Stepped(nn.Module):
    """``layer`` between a conv and a single-step LIF, called once per step."""

    def __init__(self, layer_: nn.Module):
        super().__init__()
        self.conv, self.layer, self.lif = nn.Conv2d(3, 8, 1), layer_, neuron.LIFNode()

    def forward(self, x):
        return torch.stack([self.lif(self.layer(self.conv(x))) for _ in range(T)])


@pytest.mark.parametrize("module, reason", [
    (lambda: layer.NeuNorm(8, 4, 4), "NeuNorm has no IR mapping"),
    (lambda: layer.SynapseFilter(tau=2.0), "SynapseFilter has no IR mapping"),
    # in eval it samples its output from a normal distribution (the MC approximation)
    (lambda: layer.DropConnectLinear(4, 4), r"op 'torch.normal' is not supported \(a random"),
])
def test_layers_the_ir_does_not_express_are_refused_by_name(module, reason):
    net = Stepped(module()).double().eval()
    with pytest.raises(UnsupportedError, match=reason) as e:
        trace(net, torch.randn(2, 3, 4, 4, dtype=torch.float64), T=T)
    assert "layer" in str(e.value)


def test_a_neuron_without_a_canonical_form_is_traced_and_refused_at_its_op():
    net = nn.Sequential(nn.Linear(8, 8), neuron.MultiStepEIFNode(tau=2.0, delta_T=1.0,
                                                                 theta_rh=0.8)).double().eval()
    with pytest.raises(UnsupportedError, match=r"module '1': op 'torch.exp' is not supported"):
        trace(net, torch.randn(T, 2, 8, dtype=torch.float64), T=T, static=False)


def test_lava_gives_the_library_spikes(traced, tmp_path):
    """The official-style Spikformer in Lava processes (Loihi2SimCfg floating_pt), through the
    CLI's pass pipeline."""
    from snncc.backends.lava.artifact import emit
    from snncc.backends.lava.runner import run_artifact
    from snncc.pipeline import for_target

    g, x, ref, y = traced("spikformer")
    compiled = for_target("lava", log=lambda s: None).run(g.copy())
    res = run_artifact(emit(compiled, tmp_path / "lava"), x, T)
    assert_spikes(res["trace"], ref)
    (out,) = res["outputs"].values()
    np.testing.assert_allclose(out, y, rtol=1e-12, atol=1e-12)
