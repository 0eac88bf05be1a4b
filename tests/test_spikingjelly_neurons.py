"""spikingjelly 2.0's other neurons with an exact canonical form, and the networks its own
ANN-to-SNN converter makes, against the library's forward in float64 on every target.

- ``HalfThresholdIFNode``: the soft-reset IF that starts at half its threshold, which
  ``ann2snn``'s channel-wise conversion with ``half_threshold=True`` puts in place of each ReLU;
- ``SimpleIFNode`` / ``SimpleLIFNode``: 2.0's plain-PyTorch teaching neurons (the same charges;
  their membrane starts at 0 whatever ``v_reset``);
- ``CUBALIFNode``: a current c = c_decay * c + x before the membrane h = v_decay * v + c;
- ``SlidingPSN``: h = B + a weighted sum of the last k inputs, fired on h >= 0 (multi-step and
  single-step, its queue of inputs kept in the module);
- ``MPBNLIFNode``: LIF's charge, then a BatchNorm of the membrane before it fires (membrane
  potential batch norm): per channel, a LIF scaled by the norm;
- ``NonSpikingLIFNode`` / ``NonSpikingIFNode``: readouts that never fire, their loop over the
  steps written with tensor ops, traced through; the membrane at every step, its mean or its
  last value is the output.

``snncc.check`` runs the model's own forward, the simulator and the target and compares the
spikes of every neuron layer; thresholds given as Python floats must stay float64 values.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import snncc
from snncc import ir
from snncc.frontends.tracer import trace
from snncc.frontends.zoo import randomize_bn

from conftest import assert_rates_in_range

neuron = pytest.importorskip("spikingjelly.activation_based.neuron")
from spikingjelly.activation_based import functional, layer, surrogate  # noqa: E402

T, B = 5, 3
TARGETS = ["sim", "onnx", "nir", "lava"]

NEURONS = {
    "half_threshold_if": lambda: neuron.HalfThresholdIFNode(v_threshold=0.7),
    "simple_if_hard": lambda: neuron.SimpleIFNode(v_threshold=0.6, v_reset=0.1),
    "simple_if_soft": lambda: neuron.SimpleIFNode(v_threshold=0.6, v_reset=None),
    "simple_lif": lambda: neuron.SimpleLIFNode(tau=3.0, decay_input=True, v_threshold=0.1,
                                               v_reset=-0.1),
    "simple_lif_no_decay_input": lambda: neuron.SimpleLIFNode(tau=1.5, decay_input=False,
                                                              v_threshold=0.5),
    "cuba_lif_hard": lambda: neuron.CUBALIFNode(c_decay=0.5, v_decay=0.75, v_threshold=0.8),
    "cuba_lif_soft": lambda: neuron.CUBALIFNode(c_decay=0.3, v_decay=0.6, v_threshold=0.8,
                                                v_reset=None),
    "sliding_psn": lambda: _sliding_psn([0.3, -0.2, 0.9], bias=-0.3),
    "sliding_psn_exp_init": lambda: _sliding_psn(None, bias=-0.6, k=4),
}


def _sliding_psn(weight, bias: float, k: int = 3):
    """The causal parallel spiking neuron: a weighted sum of its last k inputs (``weight``, as
    trained; its initial (1/8, 1/4, 1/2, 1) when None) fired on at -bias (was refused)."""
    node = neuron.SlidingPSN(k=len(weight) if weight else k, exp_init=weight is None)
    with torch.no_grad():
        node.bias.fill_(bias)
        if weight:
            node.weight.copy_(torch.tensor(weight))
    return node


class ConvNet(nn.Module):
    """conv-BN-neuron, pool, linear-neuron on a [T, B, 2, 8, 8] sequence; both neurons of one
    kind."""

    def __init__(self, make):
        super().__init__()
        self.features = nn.Sequential(
            layer.Conv2d(2, 6, 3, padding=1), layer.BatchNorm2d(6), make(),
            layer.AvgPool2d(2), layer.Flatten(), layer.Linear(6 * 4 * 4, 12), make())
        functional.set_step_mode(self, "m")

    def forward(self, x):
        return self.features(x)


def _rates(report) -> dict:
    return {r.path: r.rate_reference for r in report.layers}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", NEURONS)
def test_neuron_equals_the_library_on_every_target(kind, target):
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = ConvNet(NEURONS[kind]).double().eval()
        randomize_bn(model, seed)
        x = 1.5 * torch.randn(T, B, 2, 8, 8, dtype=torch.float64)
        report = snncc.check(model, x, target=target, T=T)
        assert len(report.layers) == 2
        assert report.min_agreement == 1.0, report.format()
        assert report.output_max_abs_diff_target == 0.0, report.format()
        assert_rates_in_range(_rates(report))


class MembraneNormNet(nn.Module):
    """conv and linear layers, each followed by an MPBNLIFNode (its norm over the conv's
    channels, then over the linear's features)."""

    def __init__(self, v_reset, learnable_vth: bool):
        super().__init__()
        kw = dict(step_mode="m", v_reset=v_reset, learnable_vth=learnable_vth)
        self.conv = layer.Conv2d(2, 6, 3, padding=1, step_mode="m")
        self.lif1 = neuron.MPBNLIFNode(tau=2.0, out_channels=6, **kw)
        self.fc = layer.Linear(6 * 8 * 8, 10, step_mode="m")
        self.lif2 = neuron.MPBNLIFNode(tau=1.5, decay_input=True, out_features=10, **kw)
        if learnable_vth:
            with torch.no_grad():
                self.lif1.a.normal_(0.0, 0.3)
                self.lif2.a.normal_(0.0, 0.3)

    def forward(self, x):
        return self.lif2(self.fc(self.lif1(self.conv(x)).flatten(2)))


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("v_reset, learnable_vth", [(0.0, False), (None, False), (0.0, True)],
                         ids=["hard", "soft", "learned-threshold"])
def test_membrane_potential_batch_norm_lif(v_reset, learnable_vth, target):
    """MPBNLIFNode was refused (no canonical form): in eval its norm is a * h + c per channel
    of the charged membrane, so the neuron is the canonical LIF with per-channel parameters.
    Its norm's statistics randomised; exact against the library on every target."""
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = randomize_bn(MembraneNormNet(v_reset, learnable_vth).double().eval(), seed)
        x = 1.5 * torch.randn(T, B, 2, 8, 8, dtype=torch.float64)
        report = snncc.check(model, x, target=target, T=T)
        assert len(report.layers) == 2 and report.min_agreement == 1.0, report.format()
        assert report.output_max_abs_diff_target == 0.0, report.format()
        assert_rates_in_range(_rates(report))


def test_membrane_potential_batch_norm_refusals():
    node = neuron.MPBNLIFNode(out_features=4, step_mode="m")
    node.re_parameterize_v_threshold()
    model = nn.Sequential(layer.Linear(3, 4, step_mode="m"), node).eval()
    with pytest.raises(snncc.errors.UnsupportedError, match="folded into its norm"):
        trace(model, torch.randn(T, B, 3), T=T, static=False)


class NonSpikingReadout(nn.Module):
    """A LIF layer read out by a non-spiking neuron whose membrane, decoded, is the output."""

    def __init__(self, kind: str, decode):
        super().__init__()
        self.fc1 = layer.Linear(5, 8, step_mode="m")
        self.lif = neuron.LIFNode(tau=2.0, step_mode="m")
        self.fc2 = layer.Linear(8, 3, step_mode="m")
        self.readout = neuron.NonSpikingLIFNode(tau=2.0, decode=decode) if kind == "lif" \
            else neuron.NonSpikingIFNode(decode=decode)

    def forward(self, x):
        v = self.readout(self.fc2(self.lif(self.fc1(x))))
        return torch.stack(v) if isinstance(v, list) else v  # (no decode: a list of the steps)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind, decode", [("lif", None), ("lif", "mean-mem"), ("if", "last_mem"),
                                          ("lif", "max-mem")])
def test_non_spiking_readouts(kind, decode, target):
    """Refused before (no canonical form): traced through, the readout is an integrator with
    a Delay, its membrane equal to the library's at every step; ``max-mem`` its running
    maximum (two values stacked and max-pooled at each step)."""
    torch.manual_seed(0)
    model = NonSpikingReadout(kind, decode).double().eval()
    with torch.no_grad():
        model.fc1.weight.mul_(3.0)
    x = 2 * torch.rand(T, B, 5, dtype=torch.float64)
    report = snncc.check(model, x, target=target, T=T)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target == 0.0
    assert_rates_in_range(_rates(report))


def test_a_non_spiking_readout_of_the_largest_magnitude_is_refused():
    model = NonSpikingReadout("lif", "max-abs-mem").double().eval()
    with pytest.raises(snncc.errors.UnsupportedError,
                       match="module 'readout': op 'torch.min' is not supported"):
        trace(model, torch.rand(T, B, 5, dtype=torch.float64), T=T, static=False)


def test_the_mapped_parameters_are_the_libraries():
    """The starts and the current's decay, which the spikes alone might not pin down."""
    x = torch.zeros(T, B, 4, dtype=torch.float64)
    half = trace(nn.Sequential(neuron.HalfThresholdIFNode(v_threshold=0.7, step_mode="m")), x,
                 T=T, static=False)
    (n,) = half.of_type(ir.Neuron)
    assert (float(n.v_init), float(n.theta), n.reset, n.cmp) == (0.35, 0.7, "soft", ">=")
    simple = trace(nn.Sequential(neuron.SimpleIFNode(v_reset=0.1, step_mode="m")), x, T=T,
                   static=False)
    (n,) = simple.of_type(ir.Neuron)
    assert (float(n.v_init), float(n.v_reset)) == (0.0, 0.1)
    cuba = neuron.CUBALIFNode(c_decay=0.3, v_decay=0.6)
    cuba.step_mode = "m"
    g = trace(nn.Sequential(cuba), x, T=T, static=False)
    (n,) = g.of_type(ir.Neuron)
    assert (float(n.alpha), float(n.gamma), float(n.v_init)) == (0.6, 1.0, 0.0)
    assert [0.3] in [np.unique(s.factor).tolist() for s in g.of_type(ir.Scale)]  # c_decay


def test_a_python_float_threshold_stays_float64():
    """v_threshold = 0.3 (a Python float) is compared in float64: a membrane of 0.3 + 1e-9
    fires (in float32 the threshold would be 0.30000001192..., and it would not)."""
    lin = nn.Linear(1, 1, bias=False).double()
    with torch.no_grad():
        lin.weight.fill_(1.0)
    model = nn.Sequential(layer.Linear(1, 1, bias=False), neuron.CUBALIFNode(v_threshold=0.3))
    model[0].weight.data = lin.weight.data.clone()
    functional.set_step_mode(model, "m")
    model = model.double().eval()
    x = torch.tensor([[0.3 + 1e-9, 0.0, 0.3, -1.0], [0.3 - 1e-9, -1.0, 0.0, 0.0]],
                     dtype=torch.float64).T.reshape(4, 2, 1)
    functional.reset_net(model)
    assert model(x)[:, :, 0].T.tolist() == [[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    functional.reset_net(model)
    report = snncc.check(model, x, target="sim", T=4)
    assert report.min_agreement == 1.0, report.format()


# ----------------------------------------------------------------------------- ann2snn

@pytest.fixture(scope="module")
def ann2snn():
    # spikingjelly's installation skips its dependencies; ann2snn imports tqdm and requests
    return pytest.importorskip("spikingjelly.activation_based.ann2snn", exc_type=ImportError)


def _ann(seed: int) -> nn.Module:
    """spikingjelly's own sample ANN for the converter (conv-BN-ReLU-avgpool x 3, linear) with
    random weights and BN statistics far from identity."""
    from spikingjelly.activation_based.ann2snn.sample_models import mnist_cnn

    torch.manual_seed(seed)
    ann = mnist_cnn.CNN()
    randomize_bn(ann, seed)
    return ann.eval()


class RateCoded(nn.Module):
    """How spikingjelly's example evaluates a converted network: the single-step SNN called T
    times on the image, its outputs averaged."""

    def __init__(self, snn: nn.Module, steps: int):
        super().__init__()
        self.snn, self.steps = snn, steps

    def forward(self, img):
        out = 0
        for _ in range(self.steps):
            out = out + self.snn(img)
        return out / self.steps


@pytest.mark.parametrize("recipe", [dict(), dict(channel_wise=True),
                                    dict(channel_wise=True, half_threshold=True)],
                         ids=["layer_wise", "channel_wise", "channel_wise_half_threshold"])
@pytest.mark.parametrize("target", TARGETS)
def test_a_network_converted_by_spikingjellys_ann2snn(ann2snn, recipe, target):
    """FXConverter + RateCodingRecipe (thresholds from the 99.9th percentile of the activations
    on calibration batches) turns each ReLU into scaler -> IFNode / HalfThresholdIFNode ->
    scaler in a torch.fx GraphModule; snncc compiles that module as it is."""
    steps = 8
    gen = torch.Generator().manual_seed(0)
    calibration = [(torch.rand(8, 1, 28, 28, generator=gen), torch.zeros(8, dtype=torch.long))
                   for _ in range(3)]
    converter = ann2snn.FXConverter(ann2snn.RateCodingRecipe(
        dataloader=calibration, mode="99.9%", **recipe))
    snn = converter.convert(copy.deepcopy(_ann(0)))
    kinds = {type(m).__name__ for m in snn.modules()}
    assert ("HalfThresholdIFNode" if recipe.get("half_threshold") else "IFNode") in kinds
    model = RateCoded(snn.double(), steps).eval()
    functional.reset_net(model)
    x = torch.rand(B, 1, 28, 28, generator=gen, dtype=torch.float64)
    report = snncc.check(model, x, target=target, T=steps)
    assert len(report.layers) == 3
    assert report.min_agreement == 1.0, report.format()
    assert report.output_max_abs_diff_target < 1e-12, report.format()
    assert_rates_in_range(_rates(report))


# ----------------------------------------------------------------------------- I-LIF

class IntegerNet(nn.Module):
    """conv-BN-I-LIF, pool, linear-I-LIF (spikingjelly's ILIFNode: integer counts 0..D)."""

    def __init__(self, count: int, theta: float):
        super().__init__()

        def ilif():
            return neuron.ILIFNode(v_threshold=theta,
                                   surrogate_function=surrogate.MultiLevelSpikeCount(count))
        self.features = nn.Sequential(
            layer.Conv2d(2, 6, 3, padding=1), layer.BatchNorm2d(6), ilif(),
            layer.AvgPool2d(2), layer.Flatten(), layer.Linear(6 * 16, 10), ilif())
        functional.set_step_mode(self, "m")

    def forward(self, x):
        return self.features(x)


def _library_counts(model, x) -> list[np.ndarray]:
    """Each I-LIF module's counts [T, B, ...] from the model's own forward."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, a, out: seen.append(out.detach().numpy()))
             for m in model.modules() if isinstance(m, neuron.ILIFNode)]
    functional.reset_net(model)
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    functional.reset_net(model)
    return seen


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("count, theta", [(4, 1.0), (1, 1.0), (2, 0.5)])
def test_integer_lif_counts_equal_the_library_on_every_target(count, theta, target):
    """The integer LIF of SpikeYOLO / Spike-Driven Transformer V3 (it was refused): every
    layer's counts in the simulator equal the library's, 0..D, halves rounded to even; the
    target's output (the last layer's counts at every step) equals the model's, and ``check``
    finds every level neuron (count >= d) equal to the module's counts on the target."""
    from snncc.simulator import simulate

    for seed in (0, 1):
        torch.manual_seed(seed)
        model = IntegerNet(count, theta).double().eval()
        randomize_bn(model, seed)
        x = 2 * torch.randn(T, B, 2, 8, 8, dtype=torch.float64)
        expected = _library_counts(model, x)
        assert max(float(c.max()) for c in expected) == count  # the clamp is reached
        g = trace(model, x, T=T, static=False)
        counts = [n.name for n in g.of_type(ir.Add)
                  if n.path in ("features.2", "features.6") and ":" not in n.name]
        res = simulate(g, x.numpy(), T, record=True)
        for name, want in zip(counts, expected, strict=True):
            np.testing.assert_array_equal(res.trace[name], want.reshape(res.trace[name].shape))
            assert 0.05 < float((want > 0).mean()) < 0.95
        report = snncc.check(model, x, target=target, T=T)
        assert report.output_max_abs_diff_sim == report.output_max_abs_diff_target == 0.0
        # check compares each level (count >= d) of both layers with the module's counts
        assert len(report.layers) == 2 * count and report.min_agreement == 1.0, \
            report.format()
        assert not report.unmatched


def test_integer_lif_rounds_halves_to_even_and_refuses_other_thresholds():
    """h / theta = 0.5, 1.5, 2.5, 3.5 give counts 0, 2, 2, 4 (torch.round), and a threshold
    that is no power of two, whose division the IR cannot reproduce, is refused by name, as is
    a count limit past 64 (one layer of comparisons per level: a million would not finish)."""
    from snncc.errors import UnsupportedError
    from snncc.simulator import simulate

    model = nn.Sequential(neuron.ILIFNode(step_mode="m")).double()
    x = torch.zeros(T, 6, 1, dtype=torch.float64)
    x[0, :, 0] = torch.tensor([0.5, 1.5, 2.5, 3.5, 9.0, -1.0])
    g = trace(model, x, T=T, static=False)
    (count,) = [n.name for n in g.of_type(ir.Add) if ":" not in n.name]
    got = simulate(g, x.numpy(), T, record=True).trace[count]
    functional.reset_net(model)
    want = model(x).numpy()
    np.testing.assert_array_equal(got, want)
    assert want[0].ravel().tolist() == [0, 2, 2, 4, 4, 0]
    with pytest.raises(UnsupportedError, match="0.3 is not a power of two"):
        trace(nn.Sequential(neuron.ILIFNode(v_threshold=0.3, step_mode="m")), x, T=T,
              static=False)
    huge = neuron.ILIFNode(surrogate_function=surrogate.MultiLevelSpikeCount(10 ** 6),
                           step_mode="m")
    with pytest.raises(UnsupportedError, match="1000000 is not an integer from 1 to 64"):
        trace(nn.Sequential(huge), x, T=T, static=False)


class SteppedIntegerNet(nn.Module):
    """Single-step I-LIFs called once per step in the model's own loop."""

    def __init__(self):
        super().__init__()
        self.fc1, self.lif1 = nn.Linear(8, 16), neuron.ILIFNode()
        self.fc2, self.lif2 = nn.Linear(16, 4), neuron.ILIFNode()

    def forward(self, x):
        return torch.stack([self.lif2(self.fc2(self.lif1(self.fc1(x[t]))))
                            for t in range(x.shape[0])])


@pytest.mark.parametrize("target", ["sim", "onnx"])
def test_single_step_integer_lif_is_compared_level_by_level(target):
    torch.manual_seed(0)
    model = SteppedIntegerNet().double().eval()
    with torch.no_grad():
        model.fc1.weight.mul_(4)
        model.fc2.weight.mul_(2)
    x = torch.randn(T, B, 8, dtype=torch.float64)
    report = snncc.check(model, x, target=target, T=T)
    assert len(report.layers) == 8 and report.min_agreement == 1.0, report.format()
    assert report.output_max_abs_diff_target == 0.0 and not report.unmatched
    assert 0.05 < report.layers[0].rate_reference < 0.95


class SteppedPSN(nn.Module):
    """A single-step SlidingPSN (its last inputs in a queue it keeps) called once per step in
    the model's loop."""

    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(5, 7), nn.Linear(7, 2)
        self.psn = _sliding_psn([0.5, -0.25, 1.0], bias=-0.4)

    def forward(self, x):  # [T, B, 5]
        return torch.stack([self.head(self.psn(self.fc(x_t))) for x_t in x]).mean(0)


@pytest.mark.parametrize("target", ["sim", "lava"])
def test_a_single_step_sliding_psn_is_exact(target):
    torch.manual_seed(0)
    model = SteppedPSN().double().eval()
    x = torch.rand(6, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    report = snncc.check(model, x, layout="TB", T=6, target=target)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target == 0.0
    assert_rates_in_range(_rates(report))


@pytest.mark.parametrize("make, reason", [
    (lambda: neuron.PSN(T=T), "PSN has no exact canonical form"),
    (lambda: neuron.MaskedPSN(k=2, T=T), "MaskedPSN has no exact canonical form")])
def test_parallel_spiking_neurons_that_read_later_steps_are_refused(make, reason):
    """PSN weighs every step's input into every step's, later ones too; MaskedPSN's weights
    depend on the step: neither is a fixed circuit of delays."""
    model = nn.Sequential(layer.Linear(4, 6), make()).double().eval()
    functional.set_step_mode(model, "m")
    with pytest.raises(snncc.errors.UnsupportedError, match=reason):
        trace(model, torch.rand(T, B, 4, dtype=torch.float64), T=T, static=False)


class _Precharged(nn.Module):
    """A membrane the model sets before the neuron's first call, ``self.lif.v = 0.5`` after
    ``reset_net`` (an ANN-to-SNN conversion's precharge): a single-step IF stepped by the
    model's loop over a static image, or a multi-step LIF on a sequence. It was traced starting
    at the reset's 0 (check: agreement 0.90; compile refused it as a loop's start it did not
    find)."""

    def __init__(self, multi_step: bool):
        super().__init__()
        self.multi_step = multi_step
        self.fc, self.out = nn.Linear(4, 8), nn.Linear(8, 2)
        self.lif = neuron.LIFNode(tau=2.0, step_mode="m") if multi_step \
            else neuron.IFNode(v_reset=None)

    def forward(self, x):
        functional.reset_net(self)
        self.lif.v = 0.5
        if self.multi_step:
            return self.out(self.lif(self.fc(x))).mean(0)
        return sum(self.out(self.lif(self.fc(x))) for _ in range(T)) / T


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("multi_step", [False, True], ids=["single-step", "multi-step"])
def test_a_membrane_set_before_the_first_call_is_where_the_neuron_starts(multi_step, target):
    torch.manual_seed(0)
    model = _Precharged(multi_step).double().eval()
    with torch.no_grad():
        model.fc.weight.mul_(2.0)
        model.fc.bias.add_(0.6 if multi_step else 0.0)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(*((T, B) if multi_step else (B,)), 4, generator=g, dtype=torch.float64)
    assert trace(model, x, T=T, static=not multi_step)["lif"].v_init == 0.5
    report = snncc.check(model, x, target=target, T=T, **({"layout": "TB"} if multi_step else {}))
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


class _ChargeOnly(neuron.SimpleLIFNode):
    """spikingjelly's RL examples' ``NonSpikingLIFNode`` (DQSN, A2C, PPO): a SimpleLIFNode
    subclass whose step only charges and returns the membrane (refused before, as a subclass
    that defines its own step; now traced through)."""

    def single_step_forward(self, x):
        self.neuronal_charge(x)
        return self.v


class _DQSN(nn.Module):
    """The examples' DQSN: its own loop over T on a static observation, the readout the output
    neuron's membrane after the loop."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Sequential(layer.Linear(4, 16), neuron.IFNode(), layer.Linear(16, 2),
                                _ChargeOnly(tau=2.0, decay_input=True))

    def forward(self, x):
        for _ in range(T):
            self.fc(x)
        return self.fc[-1].v


@pytest.mark.parametrize("target", TARGETS)
def test_a_neuron_subclass_defining_its_own_step_is_traced_through(target):
    torch.manual_seed(0)
    model = _DQSN().double().eval()
    with torch.no_grad():
        model.fc[0].weight.mul_(2.0)
    x = 2 * torch.randn(B, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    report = snncc.check(model, x, target=target, T=T)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert [r.path for r in report.layers] == ["fc.1"]
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("make", [
    lambda: neuron.TernaryIFNode(step_mode="m"), lambda: neuron.TernaryLIFNode(step_mode="m"),
    lambda: neuron.ActivationAwareIFNode(step_mode="m"), lambda: neuron.RAFNode(step_mode="m")],
    ids=["ternary-if", "ternary-lif", "activation-aware-if", "resonate-and-fire"])
def test_neuron_models_without_a_canonical_form_are_traced_through(make, target):
    """Refused by name before ("has no exact canonical form"): the Spiking Wavelet
    Transformer's ternary neurons (-1, 0, 1, each of their two comparisons compared), the
    resonate-and-fire neuron's two states."""
    torch.manual_seed(0)
    model = nn.Sequential(layer.Linear(6, 8, step_mode="m"), make()).double().eval()
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    x = 2 * torch.rand(T, B, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    report = snncc.check(model, x, target=target, T=T, layout="TB")
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    with torch.no_grad():
        functional.reset_net(model)
        fired = float((model(x) != 0).double().mean())
    assert_rates_in_range({"output": fired, **{r.node: r.rate_reference
                                               for r in report.layers}})


class _ShiftedStep(nn.Module):
    """A user's surrogate firing 0.3 above the threshold."""

    def forward(self, v):
        return (v >= 0.3).to(v)


class _HeavisideWithGradient(torch.autograd.Function):
    """A user's surrogate: the Heaviside step forward, the identity backward."""

    @staticmethod
    def forward(ctx, v):
        return (v >= 0).to(v)

    @staticmethod
    def backward(ctx, grad):
        return grad


def _between_linears(neuron_module: nn.Module, gain: float):
    """Linear(20, 16) (its weight times ``gain``) -> ``neuron_module`` -> Linear(16, 4) -> an
    IFNode, multi-step in float64, and an input ``[T, B, 20]`` on which both fire."""
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(20, 16), neuron_module, layer.Linear(16, 4),
                        neuron.IFNode())
    functional.set_step_mode(net, "m")
    with torch.no_grad():
        net[0].weight.mul_(gain)
        net[2].weight.mul_(4.0)
    x = 2 * torch.rand(T, B, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return net.double().eval(), x


SURROGATES = {"shifted-module": _ShiftedStep, "autograd-function": lambda:
              _HeavisideWithGradient.apply, "library-sigmoid": surrogate.Sigmoid}


@pytest.mark.parametrize("target", ["sim", "onnx"])
@pytest.mark.parametrize("kind", ["LIFNode", "ParametricLIFNode", "IFNode"])
@pytest.mark.parametrize("make", SURROGATES.values(), ids=SURROGATES.keys())
def test_a_neuron_fires_as_its_surrogate_function_computes(make, kind, target):
    """A surrogate_function not of the library's (whose forward is v >= v_threshold) is traced
    through as written: it was taken for the library's step, silently (agreement 0.93 for a
    user's shifted step)."""
    net, x = _between_linears(getattr(neuron, kind)(surrogate_function=make()), gain=6.0)
    report = snncc.check(net, x, target=target, T=T, layout="TB")
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target == 0.0
    assert len(report.layers) == 2
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


@pytest.mark.parametrize("make, op", [(lambda: surrogate.ATan(spiking=False), "Tensor.atan"),
                                      (surrogate.PoissonPass, "torch.bernoulli")])
def test_a_surrogate_function_that_does_not_spike_is_refused_at_its_op(make, op):
    """``spiking=False`` (the surrogate's primitive, a real value) and PoissonPass (a random
    draw) compiled as the step before: agreement 0.0, an output off by 1.0."""
    net = nn.Sequential(layer.Linear(20, 16), neuron.LIFNode(surrogate_function=make()))
    functional.set_step_mode(net, "m")
    with pytest.raises(snncc.errors.UnsupportedError,
                       match=rf"module '1.surrogate_function': op '{op}' is not supported"):
        trace(net.double(), torch.rand(T, B, 20, dtype=torch.float64), T=T, layout="TB")


class _PartialResetIF(neuron.IFNode):
    """A user's IF neuron as spikingjelly documents writing one: its reset overridden."""

    def neuronal_reset(self, spike):
        self.v = self.v - spike * 0.3


@pytest.mark.parametrize("target", ["sim", "onnx"])
def test_a_user_neuron_sharing_the_default_surrogate_with_library_neurons_is_compared(target):
    """spikingjelly's neurons share one default surrogate module (a default argument): the
    user's neuron, traced through, is compared at that module's calls, and the library neuron
    after it calls the same module in its forward; those calls were recorded too, an
    internal error ('Sizes of tensors must match') in check."""
    net, x = _between_linears(_PartialResetIF(), gain=4.0)
    assert net[1].surrogate_function is net[3].surrogate_function
    report = snncc.check(net, x, target=target, T=T, layout="TB")
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target == 0.0
    assert [r.path for r in report.layers] == ["1.surrogate_function", "3"]
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})
