"""Norms and constants that differ from one time step to the next: TEBN (a batch norm over the
steps, then a learned scale per step: spikingjelly's ``TemporalEffectiveBatchNorm`` and the form
repositories write, ``bn(y) * self.p`` with ``p`` of shape ``[T, 1, 1, 1, 1]``), BNTT (a batch
norm of its own at each step: spikingjelly's ``BatchNormThroughTime``, in both step modes) and a
constant added per step. Each step's value is computed at every step and the one of the step is
picked by the spikes of a step counter (exact: the other terms are products with zero). Refused
before, naming the op or module.

Float64, random weights, BN statistics randomised; the spikes of every neuron module and the
output against the model's own forward, on every target, firing rates within 5-95%."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from snncc import ir
from snncc.errors import UnsupportedError

from conftest import driven, randomize_batchnorms
from test_tracer import assert_exact_check

T = 4
TARGETS = ["sim", "onnx", "nir", "lava"]
GAIN = 4.0
pytest.importorskip("spikingjelly.activation_based")
from spikingjelly.activation_based import functional, layer, neuron  # noqa: E402


class _ConvNormNet(nn.Module):
    """conv -> norm -> LIF -> conv -> norm -> LIF -> mean over time, on ``[T, B, 3, 8, 8]``."""

    def __init__(self, norm):
        super().__init__()
        self.conv1 = layer.Conv2d(3, 6, 3, padding=1, step_mode="m")
        self.norm1, self.lif1 = norm(6), neuron.LIFNode(step_mode="m")
        self.conv2 = layer.Conv2d(6, 6, 3, padding=1, step_mode="m")
        self.norm2, self.lif2 = norm(6), neuron.LIFNode(step_mode="m")

    def forward(self, x):
        s = self.lif1(self.norm1(self.conv1(x)))
        return self.lif2(self.norm2(self.conv2(s))).mean(0)


class _UsersTEBN(nn.Module):
    """TEBN as repositories write it (snncutoff's ``TEBN``): tdBN's BatchNorm3d over ``[B, C,
    T, H, W]``, then ``* self.p`` with one learned scale per step."""

    def __init__(self, c: int):
        super().__init__()
        self.bn = nn.BatchNorm3d(c)
        self.p = nn.Parameter(torch.ones(T, 1, 1, 1, 1))

    def forward(self, x):
        y = self.bn(x.transpose(0, 1).transpose(1, 2).contiguous())
        return y.transpose(1, 2).transpose(0, 1).contiguous() * self.p


class _PerStepShift(nn.Module):
    """A learned bias per step and channel, ``x + self.b`` with ``b`` of ``[T, 1, C, 1, 1]``."""

    def __init__(self, c: int):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(T, 1, c, 1, 1))

    def forward(self, x):
        return x + self.b


NORMS = {
    "spikingjelly TEBN": lambda c: layer.TemporalEffectiveBatchNorm2d(T, c),
    "spikingjelly BNTT": lambda c: layer.BatchNormThroughTime2d(T, c, step_mode="m"),
    "users' TEBN": _UsersTEBN,
    "per-step shift": lambda c: nn.Sequential(layer.BatchNorm2d(c, step_mode="m"),
                                              _PerStepShift(c)),
}


def _model(norm: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    m = _ConvNormNet(NORMS[norm]).double().eval()
    randomize_batchnorms(m, np.random.default_rng(seed), positive_bias=True)
    driven(m, conv1=(GAIN, 0.0), conv2=(GAIN, 0.0))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith((".scale", ".p")):  # a scale per step far from 1, one negative
                p.copy_(torch.tensor([1.6, 0.5, -0.8, 1.2]).view(p.shape))
            elif name.endswith(".b"):
                p.copy_(torch.randn(p.shape, dtype=torch.float64))
    return m


def _sequence(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + seed)
    return 2 * torch.randn(T, 2, 3, 8, 8, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("seed", [0, 1])
def test_norms_that_differ_per_step_are_exact(norm, seed, target):
    assert_exact_check(_model(norm, seed), _sequence(seed), target, layout="TB")


class _SingleStepBNTT(nn.Module):
    """BNTT in single-step mode in the model's own loop: its k-th call is step k."""

    def __init__(self):
        super().__init__()
        self.conv = layer.Conv2d(3, 6, 3, padding=1)
        self.bn = layer.BatchNormThroughTime2d(T, 6)
        self.lif = neuron.LIFNode()

    def forward(self, x):
        return torch.stack([self.lif(self.bn(self.conv(x[t]))) for t in range(T)]).mean(0)


@pytest.mark.parametrize("target", ["sim", "onnx", "lava"])
def test_bntt_called_once_per_step_in_the_models_loop(target):
    m = _SingleStepBNTT().double().eval()
    randomize_batchnorms(m, np.random.default_rng(3), positive_bias=True)
    functional.reset_net(m)
    assert_exact_check(m, _sequence(3), target, layout="TB")


def test_step_counter_is_not_listed_as_a_layer_left_uncompared():
    import snncc

    report = snncc.check(_model("spikingjelly TEBN", 0), _sequence(0), target="sim", T=T,
                         layout="TB")
    assert report.unmatched == [] and [r.path for r in report.layers] == ["lif1", "lif2"]


class _PerSampleScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.lif = layer.Conv2d(3, 6, 3, padding=1, step_mode="m"), neuron.LIFNode(
            step_mode="m")
        self.k = nn.Parameter(torch.tensor([1.0, 2.0]).view(1, 2, 1, 1, 1))

    def forward(self, x):
        return self.lif(self.conv(x) * self.k)


def test_a_constant_that_differs_across_the_batch_is_still_refused():
    import snncc

    with pytest.raises(UnsupportedError, match="differs across time or batch"):
        snncc.check(_PerSampleScale().double().eval(), _sequence(0), target="sim", T=T,
                    layout="TB")



class _BNTTLoop(nn.Module):
    """BNTT as its official code writes it: a list of norms per layer, ``self.bntt1[t]`` at
    step t of the model's own loop (refused before: its steps differ)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bntt1 = nn.ModuleList(nn.BatchNorm2d(6, eps=1e-4) for _ in range(T))
        self.fc = nn.Linear(6 * 8 * 8, 10)
        self.bntt2 = nn.ModuleList(nn.BatchNorm1d(10, eps=1e-4) for _ in range(T))
        self.lif1, self.lif2 = neuron.LIFNode(), neuron.LIFNode()

    def forward(self, x):
        out = []
        for t in range(T):
            s = self.lif1(self.bntt1[t](self.conv(x[t])))
            out.append(self.lif2(self.bntt2[t](self.fc(s.flatten(1)))))
        return torch.stack(out).mean(0)


class _DepthLoop(nn.Module):
    """A list of T layers applied one after another at every step: each called T times, no
    module of a step (a depth loop inside the loop over time, exact before and after)."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3, 3, 3, padding=1) for _ in range(T))
        self.lif = neuron.LIFNode()

    def forward(self, x):
        out = []
        for t in range(T):
            h = x[t]
            for conv in self.convs:
                h = conv(h)
            out.append(self.lif(h))
        return torch.stack(out).mean(0)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("seed", [0, 1])
def test_a_list_of_norms_indexed_by_the_step_is_exact(seed, target):
    torch.manual_seed(seed)
    m = _BNTTLoop().double().eval()
    randomize_batchnorms(m, np.random.default_rng(seed), positive_bias=True)
    driven(m, conv=(GAIN, 0.0), fc=(GAIN, 0.0))
    functional.reset_net(m)
    assert_exact_check(m, _sequence(seed), target, layout="TB")


def test_a_list_applied_in_depth_at_every_step_is_not_taken_per_step():
    from snncc.frontends.tracer import trace

    torch.manual_seed(0)
    m = _DepthLoop().double().eval()
    with torch.no_grad():
        for conv in m.convs:
            conv.weight.mul_(2.0)
    functional.reset_net(m)
    graph = trace(m, _sequence(0), T=T, static=False)
    assert sorted(n.path for n in graph.of_type(ir.Conv2d)) == [f"convs.{i}" for i in range(T)]
    assert_exact_check(m, _sequence(0), "sim", layout="TB")


class _MovedScale(nn.Module):
    """A scale per step that the forward moves to the input's device and dtype and assigns back,
    ``self.p = self.p.to(x.device)`` (SNN-TAB's ``TAB_Layer``), a buffer too: a no-op in
    PyTorch, a RecursionError when traced before (the module refused the traced value)."""

    def __init__(self, c: int):
        super().__init__()
        self.bn = layer.BatchNorm2d(c, step_mode="m")
        self.p = nn.Parameter(torch.tensor([1.6, 0.5, -0.8, 1.2]).view(T, 1, 1, 1, 1))
        self.register_buffer("shift", torch.linspace(-0.5, 0.5, T).view(T, 1, 1, 1, 1))

    def forward(self, x):
        self.p = self.p.to(x.device)
        self.shift = self.shift.to(x.dtype)
        return self.bn(x) * self.p + self.shift


@pytest.mark.parametrize("target", ["sim", "onnx"])
def test_a_parameter_assigned_back_to_its_module_in_forward_is_exact(target):
    torch.manual_seed(0)
    m = _ConvNormNet(_MovedScale).double().eval()
    randomize_batchnorms(m, np.random.default_rng(0), positive_bias=True)
    driven(m, conv1=(GAIN, 0.0), conv2=(GAIN, 0.0))
    assert_exact_check(m, _sequence(0), target, layout="TB")


class _UnitSlices(nn.Module):
    """A norm of each step on ``y[:, t:t + 1]`` of a ``[B, T, ...]`` value (SNN-TAB's per-step
    form), and a multi-step LIF stepped on ``s[t:t + 1]`` of a ``[T, B, ...]`` one: a unit slice
    of the time axis, the step with a unit axis (refused before: "it slices the time or batch
    axis"; ``y[:, t].unsqueeze(1)`` was taken)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 5)
        self.bn = nn.ModuleList(nn.BatchNorm1d(5) for _ in range(T))
        self.lif = neuron.LIFNode(step_mode="m")

    def forward(self, x):  # [B, T, 6]
        y = self.fc(x.flatten(0, 1)).view(x.shape[0], T, 5)
        y = torch.stack([self.bn[t](y[:, t:t + 1].transpose(1, 2))[:, :, 0]
                         for t in range(T)])  # [T, B, 5]
        return torch.cat([self.lif(y[t:t + 1]) for t in range(T)]).mean(0)


@pytest.mark.parametrize("target", ["sim", "onnx"])
def test_unit_slices_of_the_time_axis_are_its_steps(target):
    torch.manual_seed(0)
    m = _UnitSlices().double().eval()
    randomize_batchnorms(m, np.random.default_rng(0), positive_bias=True)
    driven(m, fc=(GAIN, 0.0))
    functional.reset_net(m)
    x = 2 * torch.randn(2, T, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert_exact_check(m, x, target, layout="BT")
