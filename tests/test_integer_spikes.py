"""Integer spikes written with tensor ops, round(clamp(x, 0, 4)): a count of four comparisons
(level d fires when the count is at least d). Spike-Driven Transformer V3 (T = 1, attention on
counts: addressed additions, a count c adding its row c times) and SpikeYOLO (an integer LIF
looping over T, a BatchNorm on a neuron's counts), both written from the official code
(``sdt_v3_cases``, ``spikeyolo_cases``). Every level of every quantizer module is compared with
the model's own counts on every target, in float64, exactly."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import snncc
from snncc.analysis import energy_record, energy_report
from snncc.errors import SnnccError, UnsupportedError
from snncc.pipeline import for_target
from snncc.simulator import simulate
from snncc.frontends.zoo.testing import randomize_bn

import sdt_v3_cases as sdt
import spikeyolo_cases as yolo
from conftest import assert_rates_in_range

# BNs far from identity, the attention's Q/K/V a little higher so that its counts reach level 2
_BN = dict(var_range=(0.5, 1.5), weight_range=(1.0, 2.5), bias_range=(0.0, 1.5),
           negative_gammas=0.2,
           overrides={"*attn.[qkv]_conv*": dict(var_range=(0.5, 1.5), weight_range=(1.0, 2.5),
                                                bias_range=(0.5, 2.0))})


def _network(seed: int, block=sdt.MS_Block_Spike_SepConv, **kw) -> nn.Module:
    torch.manual_seed(seed)
    kw = dict(embed_dim=(8, 16, 32, 32), num_heads=2, blocks3=1, blocks4=1) | kw
    model = sdt.Spiking_vit_MetaFormer_Spike_SepConv(block=block, **kw)
    return randomize_bn(model, seed, **_BN).eval()


def _quantizers(model: nn.Module) -> set[str]:
    return {p for p, m in model.named_modules()
            if isinstance(m, (sdt.MultiSpike, yolo.MultiSpike4, _FloorSpikes, _QuantIF,
                              _StraightThroughSpikes))}


def _assert_exact(model: nn.Module, report, output_tol: float = 0.0) -> None:
    """Every level equal everywhere; the output equal (to ``output_tol``: a mean over T and
    positions summed in another order)."""
    assert report.min_agreement == 1.0
    assert report.output_max_abs_diff_sim <= output_tol
    assert report.output_max_abs_diff_target <= output_tol
    assert not report.unmatched
    levels: dict[str, list[float]] = {}
    for row in report.layers:
        levels.setdefault(row.path, []).append(row.rate_reference)
    assert set(levels) == _quantizers(model)  # every quantizer compared, level by level
    assert all(len(rates) == 4 for p, rates in levels.items())
    # a module's mean count / 4 (the mean of its levels' rates) is neither 0 nor saturated
    for path, rates in levels.items():
        assert 0.05 <= np.mean(rates) <= 0.95, (path, rates)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("block", [sdt.MS_Block_Spike_SepConv, sdt.MS_Block],
                         ids=["linear-attention", "repconv-attention"])
def test_network_exact_in_the_simulator(block, seed):
    model = _network(seed, block)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    _assert_exact(model, snncc.check(model, x, target="sim", T=1))


@pytest.mark.parametrize("target", ["onnx", "nir"])
def test_network_exact_on_onnx_and_nir(target):
    model = _network(2, sdt.MS_Block_Spike_SepConv, embed_dim=(8, 16, 16, 16))
    _assert_exact(model, snncc.check(model, torch.rand(2, 3, 32, 32), target=target, T=1))


def test_energy_counts_integer_spikes_as_additions():
    """count / 4 reaches each convolution as a count (the power-of-two unit folded into its
    weights), so only the first layer, on the image, is multiply-accumulates."""
    model = _network(0)
    x = torch.rand(2, 3, 32, 32)
    graph = for_target("sim", log=lambda s: None).run(snncc.trace(model, x, T=1))
    report = energy_report(graph, simulate(graph, x.numpy(), 1, record=energy_record(graph)))
    real = [row.node for row in report.layers if row.input_kind == "real"]
    assert real == ["downsample1_1.encode_conv"]
    assert report.total_sops > 5 * report.total_macs


class _OneBlock(nn.Module):
    """The tokenizer's last downsampling, one block of either attention, the official head."""

    def __init__(self, block):
        super().__init__()
        self.downsample = sdt.MS_DownSampling(3, 8, 3, 2, 1, first_layer=True)
        self.block = block(8, 2, 4)
        self.spike = sdt.MultiSpike(Norm=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.block(self.downsample(x))
        return self.head(self.spike(x.flatten(2).mean(2)))


@pytest.mark.parametrize("block", [sdt.MS_Block_Spike_SepConv, sdt.MS_Block],
                         ids=["linear-attention", "repconv-attention"])
def test_a_block_exact_on_lava(block):
    torch.manual_seed(3)
    model = randomize_bn(_OneBlock(block), 3, **_BN).eval()
    _assert_exact(model, snncc.check(model, torch.rand(2, 3, 8, 8), target="lava", T=1))


def test_a_block_in_fixed_point_on_lava_equals_the_loihi2_simulator():
    """Quantized for Loihi 2: counts on the chip (graded messages), the head's integer spike on
    the token mean on the host after the chip; Lava's fixed_pt equals the Loihi 2 simulator."""
    torch.manual_seed(3)
    model = randomize_bn(_OneBlock(sdt.MS_Block_Spike_SepConv), 3, **_BN).eval()
    x = torch.rand(2, 3, 8, 8)
    report = snncc.check(model, x, target="lava", T=1, fixed_point=True)
    assert report.lossy and report.min_agreement == 1.0  # target vs the Loihi 2 simulator
    assert report.output_max_abs_diff_target == report.output_max_abs_diff_sim


@pytest.mark.slow
def test_network_exact_on_lava():
    model = _network(4, sdt.MS_Block_Spike_SepConv)
    _assert_exact(model, snncc.check(model, torch.rand(2, 3, 32, 32), target="lava", T=1))


def test_halves_round_to_even():
    """round(clamp(x, 0, 4)): 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4, as torch rounds."""
    x = torch.tensor([[-1.0, 0.49, 0.5, 0.51, 1.5, 2.5, 3.5, 4.7, 2.4999999999999996]] * 2,
                     dtype=torch.float64)
    g = snncc.trace(sdt.MultiSpike(), x, T=1)
    out = simulate(g, x.numpy()).output
    np.testing.assert_array_equal(out, sdt.MultiSpike()(x).numpy())
    np.testing.assert_array_equal(out * 4, [[0, 0, 0, 1, 2, 2, 4, 4, 2]] * 2)


class _HalvesUp(torch.autograd.Function):
    """Spike-Driven Transformer V3's large models (``Model_Large/spikformer.py``): halves round
    up, ``floor(clamp(x, 0, 4) + 0.5)``."""

    @staticmethod
    def forward(ctx, x):
        return torch.floor(torch.clamp(x, 0, 4) + 0.5)


class _FloorSpikes(nn.Module):
    def forward(self, x):
        return _HalvesUp.apply(x) / 4


def test_floor_of_a_shifted_clamp_is_a_count_exactly():
    """Level d fires when fl(x + 0.5) >= d, which is x >= t_d with t_d a little below d - 0.5:
    0.49999999999999994 + 0.5 rounds to 1."""
    edges = [np.nextafter(d - 0.5, -1.0) for d in range(1, 5)] + [d - 0.5 for d in range(1, 5)]
    x = np.random.default_rng(0).uniform(-1, 5, (2, 64))
    x[:, :8] = edges
    x[:, 8] = np.nextafter(np.nextafter(0.5, -1.0), -1.0)
    model = _FloorSpikes()
    out = simulate(snncc.trace(model, torch.tensor(x), T=1), x).output
    np.testing.assert_array_equal(out, model(torch.tensor(x)).numpy())
    assert out[0, 0] == 0.25 and out[0, 8] == 0.0


STRAIGHT_THROUGH = {
    "round": lambda y: y + (torch.round(y) - y).detach(),
    "round-added-to": lambda y: (y.round() - y).detach() + y,
    "floor-halves-up": lambda y: y + (torch.floor(y + 0.5) - y).detach(),
    "floor-shift-0.9": lambda y: y + (torch.floor(y + 0.9) - y).detach()}


@pytest.mark.parametrize("form", STRAIGHT_THROUGH)
def test_a_straight_through_estimator_of_a_count_is_the_count_exactly(form):
    """``y + (round(y) - y).detach()`` with y = clamp(x, 0, 4) (quantization-aware training's
    straight-through estimator, written without an autograd.Function) is round(y) in every
    float: refused before ("clamp(x, 0, D) ... supported only rounded"). Edges where q - y is
    not exact (a floor's shift: 1 - 0.2) included."""
    x = np.random.default_rng(1).uniform(-1, 5, (2, 64))
    x[:, :8] = [0.2, 0.1, np.nextafter(0.5, -1.0), 0.5, 1.5, 2.5, np.nextafter(0.1, 1), 3.9]
    model = _Quantizer(lambda v: STRAIGHT_THROUGH[form](torch.clamp(v, 0, 4)))
    out = simulate(snncc.trace(model, torch.tensor(x), T=1), x).output
    np.testing.assert_array_equal(out, model(torch.tensor(x)).numpy())
    assert set(np.unique(out)) <= {0.0, 1.0, 2.0, 3.0, 4.0}


class _StraightThroughSpikes(nn.Module):
    def forward(self, x):
        y = torch.clamp(x, 0, 4)
        return (y + (torch.round(y) - y).detach()) / 4


class _TwoConvs(nn.Module):
    """conv, BN, integer spikes ``spikes()``, twice, then a classifier on the mean."""

    def __init__(self, in_channels: int, spikes):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.s1, self.s2 = spikes(), spikes()
        self.head = nn.Linear(8, 5)


class _FloorNet(_TwoConvs):
    """Convolutions between integer spikes that round halves up (or ``spikes``), over T = 2
    repeated steps."""

    T = 2

    def __init__(self, spikes=_FloorSpikes):
        super().__init__(3, spikes)

    def forward(self, x):
        x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1).flatten(0, 1)
        x = self.s2(self.bn2(self.conv2(self.s1(self.bn1(self.conv1(x))))))
        return self.head(x.flatten(2).mean(2)).reshape(self.T, -1, 5).mean(0)


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
@pytest.mark.parametrize("spikes", [_FloorSpikes, _StraightThroughSpikes],
                         ids=["floor", "straight-through"])
def test_floor_spikes_exact_on_every_target(target, spikes):
    torch.manual_seed(6)
    model = randomize_bn(_FloorNet(spikes), 6, **_BN).eval()
    report = snncc.check(model, torch.rand(3, 3, 8, 8), target=target)
    assert len(report.layers) == 8
    _assert_exact(model, report, output_tol=1e-12)


class _VendoredMemoryModule(nn.Module):
    """spikingjelly's ``MemoryModule`` as a repository vendors it under its own name (Spike-Driven
    Transformer V3's ``Qtrick_architecture.clock_driven.base``): state in ``_memories``, reset
    values in ``_memories_rv``."""

    def __init__(self):
        super().__init__()
        self._memories, self._memories_rv = {}, {}

    def register_memory(self, name, value):
        self._memories[name] = value
        self._memories_rv[name] = copy.deepcopy(value)

    def __getattr__(self, name):
        if "_memories" in self.__dict__ and name in self.__dict__["_memories"]:
            return self.__dict__["_memories"][name]
        return super().__getattr__(name)

    def __setattr__(self, name, value):
        if name in self.__dict__.get("_memories", {}):
            self._memories[name] = value
        else:
            super().__setattr__(name, value)


class _QuantIF(_VendoredMemoryModule):
    """That fork's ``Q_IFNode``: v = v + x, spike = round(clamp(v, 0, 4)), v = v - spike; the
    DVS model calls it once on all of [T, B, ...], so T is batch to it."""

    def __init__(self):
        super().__init__()
        self.register_memory("v", 0.0)

    def forward(self, x):
        self.v = self.v + x
        spike = torch.round(torch.clamp(self.v, 0, 4))
        self.v = self.v - spike * 1.0
        return spike


class _DvsNet(_TwoConvs):
    T = 4

    def __init__(self):
        super().__init__(2, _QuantIF)

    def forward(self, x):  # [B, T, 2, H, W], as the DVS model takes it
        x = x.transpose(0, 1).contiguous()
        T, B, C, H, W = x.shape
        x = self.bn1(self.conv1(x.flatten(0, 1))).reshape(T, B, 8, H, W)
        x = self.bn2(self.conv2(self.s1(x).flatten(0, 1))).reshape(T, B, 8, H, W)
        return self.head(self.s2(x).flatten(3).mean(3)).mean(0)


def test_a_vendored_spikingjelly_keeps_nothing_between_runs():
    """Its state is reset as spikingjelly resets it and the trace leaves no traced value in
    ``_memories``: checks on two targets in a row are exact, and the model's own forward
    afterwards gives what it gave before (the second target used to see the first run's
    membrane as a constant: "a constant that differs across time or batch")."""
    torch.manual_seed(7)
    model = randomize_bn(_DvsNet(), 7, **_BN).eval()
    x = (torch.rand(3, 4, 2, 8, 8) < 0.3).float()
    with torch.no_grad():
        before = model(x)
    for m in model.modules():
        if isinstance(m, _QuantIF):
            m.v = 0.0
    for target in ("sim", "onnx"):
        report = snncc.check(model, x, target=target, layout="BT")
        assert len(report.layers) == 8
        _assert_exact(model, report, output_tol=1e-12)
        assert all(m.v == 0.0 for m in model.modules() if isinstance(m, _QuantIF))
    with torch.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), before.numpy())


class _Quantizer(nn.Module):
    def __init__(self, form):
        super().__init__()
        self.form = form

    def forward(self, x):
        return self.form(x)


@pytest.mark.parametrize("form, why", [
    (lambda x: torch.round(torch.clamp(x, 0, 2.5)), r"D a positive integer"),
    (lambda x: torch.round(torch.clamp(x, -1, 4)), r"D a positive integer"),
    (lambda x: torch.round(x), r"round\(x\) only clamped so"),
    (lambda x: torch.floor(x), r"floor is supported only of clamp"),
    (lambda x: torch.floor(torch.clamp(x, 0, 4) + 1.5), r"floor is supported only of clamp"),
    (lambda x: torch.clamp(x, 0, 4) * 2, r"supported only rounded"),
    (lambda x: torch.round(torch.clamp(x, 0, 65)), r"at most 64"),
    (lambda x: (torch.round(torch.clamp(x, 0, 4)) - torch.clamp(x, 0, 4)) * 2,
     r"taken only added back to the clamp"),
])
def test_other_roundings_are_refused(form, why):
    with pytest.raises(UnsupportedError, match=why):
        snncc.trace(nn.Sequential(nn.Linear(4, 4), _Quantizer(form)), torch.rand(2, 4), T=1)


def test_round_after_clamp_is_the_same_count():
    """clamp(round(x), 0, D) is round(clamp(x, 0, D)) (D an integer)."""
    x = torch.linspace(-2, 6, 82, dtype=torch.float64).reshape(2, -1)
    model = _Quantizer(lambda v: torch.clamp(torch.round(v), 0, 3) / 2)
    out = simulate(snncc.trace(model, x, T=1), x.numpy()).output
    np.testing.assert_array_equal(out, model(x).numpy())


ONE_LEVEL = {"floor": lambda v: torch.floor(torch.clamp(v, 0, 1)),
             "round": lambda v: torch.round(torch.clamp(v, 0, 1)),
             "round-first": lambda v: torch.clamp(torch.round(v), 0, 1)}


@pytest.mark.parametrize("form", ONE_LEVEL)
def test_a_count_of_one_level_is_a_comparison(form):
    """floor(clamp(x, 0, 1)) is x >= 1 and round(clamp(x, 0, 1)) is x > 1/2, also of a real x
    (refused before: clamp(x, 0, 1) was taken only of integer values, an OR of spikes)."""
    edges = [0.5, np.nextafter(0.5, 1.0), np.nextafter(0.5, 0.0), 1.0, np.nextafter(1.0, 0.0)]
    x = np.concatenate([edges, np.linspace(-2, 3, 59)]).reshape(2, 32)
    model = _Quantizer(ONE_LEVEL[form])
    out = simulate(snncc.trace(model, torch.tensor(x), T=1), x).output
    np.testing.assert_array_equal(out, model(torch.tensor(x)).numpy())


class _OneSpikeLIF(nn.Module):
    """rockpool's ``LIFTorch`` with ``max_spikes_per_dt=1``, on [B, T, N]: a soft reset by the
    spike ``floor(clamp(v, 0, 1))``."""

    def forward(self, x):
        v, out = torch.zeros_like(x[:, 0]), []
        for t in range(x.shape[1]):
            v = 0.75 * v + x[:, t]
            s = torch.floor(torch.clamp(v, 0, 1))
            v = v - s
            out.append(s)
        return torch.stack(out, 1)


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_a_one_spike_neuron_written_with_floor_is_exact(target):
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(6, 5), _OneSpikeLIF(), nn.Linear(5, 3)).double().eval()
    x = 2 * torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    report = snncc.check(model, x, target=target, T=6, layout="BT")
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target == 0.0
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


# --- SpikeYOLO ---------------------------------------------------------------------------------

def _backbone(seed: int, T: int) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(yolo.Backbone(T=T), seed, **_BN).eval()


@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("target", ["sim", "onnx", "nir"])
def test_spikeyolo_backbone_exact(target, T):
    """Its integer LIF loops over T in the model's forward; each step's counts, every level,
    equal the model's."""
    model = _backbone(T, T)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(T))
    _assert_exact(model, snncc.check(model, x, target=target), output_tol=1e-12)


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_spikeyolo_neck_upsampling_and_concat_exact(target):
    """The official neck's ``nn.Upsample(None, (1, 2, 2))`` of ``[T, B, C, H, W]`` counts and
    its ``Concat`` with P4 on the channels (the upsampling was refused)."""
    torch.manual_seed(2)
    model = randomize_bn(yolo.Neck(T=2), 2, **_BN).eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    _assert_exact(model, snncc.check(model, x, target=target), output_tol=1e-11)


def test_spikeyolo_backbone_exact_on_lava():
    """Also its BatchNorms on a neuron's counts (SepRepConv), which no synapse before them
    absorbs: a process of their own on Lava."""
    model = _backbone(5, 2)
    report = snncc.check(model, torch.rand(3, 3, 32, 32), target="lava")
    _assert_exact(model, report, output_tol=1e-12)


class _DecodingHead(nn.Module):
    """A detector's head as SpikeYOLO's ``SpikeDetect`` ends: the mean over T of each scale,
    convolutions, then box decoding (softmax, sigmoid), which no spiking target computes."""

    def __init__(self, channels: tuple):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, 6, 1) for c in channels)

    def forward(self, xs: list):
        ys = [conv(x.mean(0)).flatten(2) for conv, x in zip(self.convs, xs)]
        y = torch.cat(ys, 2)
        return torch.cat((y[:, :4].softmax(1), y[:, 4:].sigmoid()), 1)


class _Detector(nn.Module):
    T = 2
    guarded = False  # the head's call wrapped in the model's own ``except Exception``

    def __init__(self):
        super().__init__()
        self.get_t = yolo.MS_GetT(self.T)
        self.down1 = yolo.MS_DownSampling(3, 16, 7, 4, 2, first_layer=True)
        self.block1 = yolo.MS_AllConvBlock(16, 2, 7)
        self.down2 = yolo.MS_DownSampling(16, 32, 3, 2, 1, first_layer=False)
        self.sppf = yolo.SpikeSPPF(32, 32, 5)
        self.head = _DecodingHead((16, 32))

    def forward(self, x):
        f1 = self.block1(self.down1(self.get_t(x)))
        features = [f1, self.sppf(self.down2(f1))]
        if not self.guarded:
            return self.head(features)
        try:
            return self.head(features)
        except Exception:
            return features[0]


@pytest.mark.parametrize("target, guarded", [("sim", False), ("lava", False), ("sim", True)])
def test_a_detector_compiles_until_its_head(target, guarded):
    """``until="head"``: the graph ends before the decoding head, its outputs the two feature
    maps the head is given; check compares them (and every level) with the model's own. The
    model's own ``except Exception`` around the head's call does not hide where it ends."""
    torch.manual_seed(8)
    model = randomize_bn(_Detector(), 8, **_BN).eval()
    model.guarded = guarded
    x = torch.rand(3, 3, 32, 32)
    with pytest.raises(UnsupportedError, match="softmax"):
        snncc.trace(model, x)
    graph = snncc.trace(model, x, until="head")
    assert graph.meta["until"] == "head" and len(graph.outputs) == 2
    assert [o.shape for o in graph.outputs] == [(16, 8, 8), (32, 4, 4)]
    report = snncc.check(model, x, target=target, until="head")
    assert report.min_agreement == 1.0 and not report.unmatched
    assert report.output_max_abs_diff_target <= 1e-12
    assert {row.path for row in report.layers} == _quantizers(model) - {
        p for p, _ in model.head.named_modules(prefix="head")}


def test_until_names_a_module_of_the_model():
    model = _Detector().eval()
    with pytest.raises(SnnccError, match=r"until='hed' names no module of the model \(its "
                                         r"modules: get_t, down1, block1, down2, sppf, head"):
        snncc.trace(model, torch.rand(3, 3, 32, 32), until="hed")


def test_compile_until_from_the_command_line(tmp_path, capsys):
    """``snncc compile CKPT --model FILE:Class --until MODULE``: the graph ends before it; a zoo
    architecture refuses the option."""
    from pathlib import Path

    from snncc.cli import main
    from snncc.serialize import load

    torch.save(yolo.Backbone(T=2).state_dict(), tmp_path / "backbone.pt")
    code = main(["compile", str(tmp_path / "backbone.pt"), "--model",
                 f"{Path(yolo.__file__)}:Backbone", "--model-args", '{"T": 2}', "--until",
                 "sppf", "--input-shape", "3,32,32", "-t", "sim", "-o", str(tmp_path / "out")])
    assert code == 0
    graph = load(tmp_path / "out" / "model.snnir")
    assert graph.meta["until"] == "sppf" and [o.shape for o in graph.outputs] == [(32, 4, 4)]
    assert main(["compile", str(tmp_path / "backbone.pt"), "--arch", "digits-spikformer",
                 "--until", "sppf", "-o", str(tmp_path / "zoo")]) != 0
    assert "--until applies to a model's own code" in capsys.readouterr().err


def test_until_a_module_called_once_per_step_is_refused():
    """A head called inside the model's own loop over T sees one step: no graph ends there."""

    class PerStep(nn.Module):
        T = 2

        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):  # [T, B, 4]
            return torch.stack([self.head(torch.round(torch.clamp(self.body(x[t]), 0, 4)))
                                for t in range(self.T)]).mean(0)

    with pytest.raises(UnsupportedError, match="inside a loop over time steps"):
        snncc.trace(PerStep(), torch.rand(2, 3, 4), layout="TB", until="head")
