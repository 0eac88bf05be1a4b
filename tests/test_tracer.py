"""The torch.fx front-end: every zoo family (small configuration, T = 4, 3 seeds, BN statistics
randomised) and networks built from spikingjelly's own layers, traced into IR and simulated in
float64, give the PyTorch model's spikes at every neuron (hooked on the module the IR node
names as its path) and its output; unsupported ops are refused in one line naming module and op.
"""

from __future__ import annotations

import inspect
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from snncc import ir
from snncc.errors import SnnccError, UnsupportedError
from snncc.frontends import zoo
from snncc.frontends.tracer import trace
from snncc.simulator import Simulator

from conftest import assert_rates_in_range, driven, randomize_batchnorms, stacked_spikes

T = 4
pytest.importorskip("spikingjelly.activation_based")
from spikingjelly.activation_based import functional, layer, neuron  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small float64 kernels: one intra-op thread is several times faster on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torch_spikes(model: nn.Module, x: torch.Tensor, paths: set[str]):
    """Run ``model`` once; return its output and each hooked neuron's spikes as [T, B, ...]
    (single-step neurons are called once per step: their calls are stacked)."""
    return stacked_spikes(model, x, paths, functional.reset_net)


def assert_exact_check(model: nn.Module, x: torch.Tensor, target: str, **options) -> None:
    """``snncc.check`` of ``model`` on ``x`` for ``target``: every layer's spikes and the outputs
    the model's (float64), its neurons firing at 5-95%."""
    import snncc

    report = snncc.check(model, x, target=target, T=T, **options)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


def assert_parity(model: nn.Module, x: torch.Tensor, graph) -> dict[str, float]:
    """Identical spikes at every neuron, the same output (1e-10); returns the firing rates."""
    neurons = graph.of_type(ir.Neuron)
    y, spikes = torch_spikes(model, x, {n.path for n in neurons})
    assert set(spikes) == {n.path for n in neurons}, "a neuron module was not called"
    xs = x.numpy()
    if graph.meta["input_layout"] == "BT":
        xs = xs.swapaxes(0, 1)
    res = Simulator(graph, "float64").run(xs, T=T, record=True)
    for n in neurons:
        ref, sim = spikes[n.path], res.trace[n.name]
        assert ref.shape == sim.shape, (n.name, ref.shape, sim.shape)
        mismatch = float(np.mean(ref != sim))
        assert mismatch == 0, f"{n.name}: spike mismatch rate {mismatch:.3g}"
    (out,) = graph.outputs
    got = res.output if graph.meta["output_layout"] == "B" else res.output_sequence[out.name]
    np.testing.assert_allclose(got, y, rtol=0, atol=1e-10)
    return res.firing_rates(graph)


# ----------------------------------------------------------------------------- the zoo

@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("family", zoo.FAMILIES)
def test_zoo_family_parity(family, seed):
    case = zoo.small(family, seed)
    graph = trace(case.model, case.inputs, T=T, static=case.inputs.dim() == 4, name=family)
    assert_rates_in_range(assert_parity(case.model, case.inputs, graph))


def test_snasnet_backward_connections_become_delays_closing_cycles():
    case = zoo.small("snasnet-bw", 0)
    graph = trace(case.model, case.inputs, T=T)
    order = {n.name: i for i, n in enumerate(graph.topological_order())}
    delays = graph.of_type(ir.Delay)
    assert delays and all(d.steps == 1 and d.shape_hint == d.shape for d in delays)
    assert any(order[d.inputs[0]] > order[d.name] for d in delays), "no delay closes a cycle"
    assert len(graph.of_type(ir.Readout)) == 1  # the vote averaged over T
    forward_only = trace(zoo.small("snasnet-fw", 0).model, case.inputs, T=T)
    assert not forward_only.of_type(ir.Delay)


def test_node_names_and_paths_follow_the_modules():
    case = zoo.small("spikformer-cifar", 0)
    graph = trace(case.model, case.inputs, T=T)
    modules = dict(case.model.named_modules())
    assert len({n.name for n in graph}) == len(graph)
    for n in graph.of_type(ir.Neuron, ir.Linear, ir.Conv2d, ir.BatchNorm):
        assert n.name == n.path and n.path in modules
    assert graph["block.0.attn.attn_lif"].theta == 0.5
    matmuls = graph.of_type(ir.SpikeMatMul)
    assert matmuls and all(m.path == f"block.{i // 2}.attn" for i, m in enumerate(matmuls))


def test_dvs_input_is_a_sequence_input():
    case = zoo.small("spikformer-dvs", 0)
    graph = trace(case.model, case.inputs, T=T, static=False)
    (inp,) = graph.inputs
    assert not inp.static and inp.input_kind is ir.Kind.SPIKE
    assert graph.meta["input_layout"] == "BT" and inp.input_shape == case.inputs.shape[2:]


# ----------------------------------------------------------------------------- spikingjelly

class SJNet(nn.Module):
    """spikingjelly layers and neurons, multi-step; a static image repeated over T, the rates
    averaged over T before a Linear head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            layer.Conv2d(2, 8, 3, padding=1, bias=False), layer.BatchNorm2d(8),
            neuron.LIFNode(tau=2.0),
            layer.MaxPool2d(2),
            layer.SeqToANNContainer(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)),
            neuron.ParametricLIFNode(init_tau=3.0, v_reset=None),
            layer.AvgPool2d(2),
            layer.Conv2d(8, 8, 3, padding=1), layer.BatchNorm2d(8), neuron.IFNode(),
            layer.Flatten(), layer.Dropout(0.3), layer.Linear(8 * 4 * 4, 16),
            neuron.LIFNode(tau=1.5, decay_input=False, v_threshold=0.3))
        self.head = nn.Linear(16, 5)
        functional.set_step_mode(self, "m")

    def forward(self, x):
        x = x.unsqueeze(0).repeat(T, 1, 1, 1, 1)
        return self.head(self.features(x).mean(0))


@pytest.mark.parametrize("seed", range(3))
def test_spikingjelly_multistep_network_parity(seed):
    torch.manual_seed(seed)
    model = SJNet().double().eval()
    zoo.randomize_bn(model, seed)
    x = 2 * torch.randn(3, 2, 16, 16, dtype=torch.float64)
    graph = trace(model, x, T=T)
    assert [n.op for n in graph.topological_order()][:4] == ["Input", "Conv2d", "BatchNorm",
                                                             "Neuron"]
    assert_rates_in_range(assert_parity(model, x, graph))


def test_spikingjelly_single_step_neurons_in_a_loop():
    """MultiStepContainer loops over T calling single-step neurons (step = call count)."""
    torch.manual_seed(1)
    model = nn.Sequential(
        layer.SeqToANNContainer(nn.Linear(6, 12)),
        layer.MultiStepContainer(nn.Linear(12, 12), neuron.LIFNode(tau=1.7, v_threshold=0.1)),
        layer.SeqToANNContainer(nn.Linear(12, 4)),
        neuron.LIFNode(tau=3.0, v_reset=None, v_threshold=0.1, step_mode="m")).double()
    x = 3 * torch.randn(T, 5, 6, dtype=torch.float64)
    graph = trace(model, x, T=T, static=False)
    assert graph.meta["output_layout"] == "TB" and not graph.of_type(ir.Delay)
    assert_rates_in_range(assert_parity(model, x, graph))


class FunctionalForms(nn.Module):
    """What user code writes as function calls: F.max_pool2d / F.avg_pool2d instead of the
    modules, and the readout as ``x.sum(0) / T`` instead of ``x.mean(0)``."""

    def __init__(self, pool):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.sn1 = neuron.LIFNode(tau=2.0, step_mode="m")
        self.fc = nn.Linear(8 * 4 * 4, 10)
        self.sn2 = neuron.IFNode(v_threshold=0.2, step_mode="m")
        self.pool = pool

    def forward(self, x):  # [T, B, 2, 8, 8]
        y = self.pool(self.bn(self.conv(x.flatten(0, 1))), 2)
        y = self.sn1(y.reshape(T, -1, *y.shape[1:]))
        return self.sn2(self.fc(y.flatten(2))).sum(0) / T


@pytest.mark.parametrize("pool", [torch.nn.functional.max_pool2d,
                                  torch.nn.functional.avg_pool2d], ids=["max", "avg"])
def test_functional_pools_and_a_sum_over_time_divided_by_T(pool):
    torch.manual_seed(2)
    model = FunctionalForms(pool).double().eval()
    zoo.randomize_bn(model, 2)
    x = 2 * torch.randn(T, 3, 2, 8, 8, dtype=torch.float64)
    graph = trace(model, x, T=T, static=False)
    assert graph.of_type(ir.Readout) and graph.meta["output_layout"] == "B"
    assert graph.of_type(ir.MaxPool2d if pool is torch.nn.functional.max_pool2d
                         else ir.AvgPool2d)
    assert_rates_in_range(assert_parity(model, x, graph))


class ScaledInverse(nn.Module):
    """``(1 - s) * 0.5`` and ``s.sum(0) * 2``: values from the input in ops with constants only,
    which must not be taken for constants; ``h * (0.5 - s)``, which as ``0.5*h - h*s`` would
    round differently."""

    def __init__(self, form: str):
        super().__init__()
        self.fc, self.sn = nn.Linear(6, 4), neuron.IFNode(step_mode="m")
        self.form = form

    def forward(self, x):
        h = self.fc(x)
        s = self.sn(h)
        if self.form == "half":
            return h * (0.5 - s)
        return (1.0 - s) * 0.5 if self.form == "inverse" else s.sum(0) * 2


@pytest.mark.parametrize("form, reason", [
    ("inverse", "(constant - tensor) is taken only as a factor of a product"),
    ("half", "supported as 1 - tensor (or 0 - tensor) only")])
def test_values_from_the_input_in_constant_ops_are_refused(form, reason):
    with pytest.raises(UnsupportedError) as err:
        trace(ScaledInverse(form).double(), torch.randn(T, 3, 6, dtype=torch.float64), T=T,
              static=False)
    assert reason in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_sum_over_time_not_divided_by_T_is_a_running_sum(seed):
    """``s.sum(0) * 2``: spike counts (refused before: a sum over the time axis was taken only
    divided by T) are a running sum s[t] = s[t-1] + x[t] read at the last step, exactly."""
    torch.manual_seed(seed)
    model = ScaledInverse("sum").double()
    x = 3 * torch.randn(T, 3, 6, dtype=torch.float64)
    graph = trace(model, x, T=T, static=False)
    assert graph.of_type(ir.Delay) and not graph.of_type(ir.Readout)
    assert_rates_in_range(assert_parity(model, x, graph))


# ----------------------------------------------------------------------------- refusals

class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(6, 6)
        self.lif = neuron.LIFNode(step_mode="m")

    def forward(self, x):
        return self.lif(torch.softmax(self.q(x), dim=-1))


class Blocks(nn.Module):
    def __init__(self, norm: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Module()])
        self.blocks[0].attn = Attention()
        self.norm = nn.LayerNorm(6) if norm else None

    def forward(self, x):
        y = self.blocks[0].attn(x)
        return y if self.norm is None else y + self.blocks[0].attn.lif(self.norm(x))


def test_unsupported_op_names_module_and_op():
    x = torch.randn(T, 3, 6)
    with pytest.raises(UnsupportedError) as err:
        trace(Blocks(), x, T=T, static=False)
    assert str(err.value) == "module 'blocks.0.attn': op 'torch.softmax' is not supported"


class RootSigmoid(nn.Module):
    """An unsupported op in the root's own forward, which has no module path to name it by."""

    def __init__(self):
        super().__init__()
        self.fc, self.lif = nn.Linear(6, 6), neuron.LIFNode(step_mode="m")

    def forward(self, x):
        return self.lif(torch.sigmoid(self.fc(x)))


def test_an_unsupported_op_of_the_roots_forward_names_its_line():
    """It named the op alone ('op torch.sigmoid is not supported'): in a long forward the
    user had to search for it."""
    with pytest.raises(UnsupportedError) as err:
        trace(RootSigmoid(), torch.randn(T, 3, 6), T=T, static=False)
    line = inspect.getsourcelines(RootSigmoid.forward)[1] + 1
    assert str(err.value).startswith(
        f"op 'torch.sigmoid' is not supported, at {__file__}:{line}"), str(err.value)


class PostProcessed(nn.Module):
    """A classifier that ends in post-processing of its outputs: norse's MNIST task returns
    ``log_softmax`` of its maximum voltage over time; others a softmax or the class."""

    def __init__(self, form: str):
        super().__init__()
        self.fc, self.lif, self.form = nn.Linear(6, 4), neuron.LIFNode(step_mode="m"), form

    def forward(self, x):
        y = self.fc(self.lif(x))
        if self.form == "log_softmax":
            return torch.nn.functional.log_softmax(torch.max(y, 0)[0], dim=1)
        return y.mean(0).softmax(-1) if self.form == "softmax" else torch.argmax(y.mean(0), 1)


@pytest.mark.parametrize("form, op", [("log_softmax", "torch.nn.functional.log_softmax"),
                                      ("softmax", "Tensor.softmax"), ("argmax", "torch.argmax")])
def test_post_processing_of_the_outputs_is_refused_saying_to_leave_it_out(form, op):
    with pytest.raises(UnsupportedError) as err:
        trace(PostProcessed(form), torch.randn(T, 3, 6), T=T, static=False)
    assert str(err.value).startswith(
        f"op '{op}' is not supported ({form} of the model's outputs, after the time steps, is "
        "not part of the spiking network: compile the model without it and apply it to "
        f"snncc's outputs), at {__file__}:"), str(err.value)


def test_every_unsupported_op_is_listed_on_one_line():
    with pytest.raises(UnsupportedError) as err:
        trace(Blocks(norm=True), torch.randn(T, 3, 6), T=T, static=False)
    msg = str(err.value)
    assert msg.startswith("2 unsupported ops:") and "\n" not in msg
    assert "module 'blocks.0.attn': op 'torch.softmax'" in msg
    assert "module 'norm': op 'LayerNorm' is not supported" in msg


class Encoded(nn.Module):
    """An encoder inside forward, then Linear -> LIF: ``form`` says which."""

    def __init__(self, form: str):
        super().__init__()
        self.form, self.fc, self.lif = form, nn.Linear(6, 4), neuron.LIFNode(step_mode="m")
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        xs = x.unsqueeze(0).repeat(T, 1, 1)
        if self.form == "rand":  # a Poisson encoder; the draw reads no traced tensor
            xs = (torch.rand(T, *x.shape, dtype=x.dtype) < x).to(x.dtype)
        elif self.form == "rand_like":  # spikingjelly's PoissonEncoder
            xs = torch.rand_like(xs).le(xs).to(xs)
        elif self.form == "bernoulli":  # snnTorch's spikegen.rate
            xs = torch.bernoulli(xs.clamp(0, 1))
        elif self.form == "uniform_":
            xs = xs + torch.empty_like(xs).uniform_()
        elif self.form == "dropout default":  # F.dropout's training=True, also in eval
            xs = F.dropout(xs, 0.2)
        elif self.form == "dropout eval":  # a no-op in eval, as the module's
            xs = self.drop(F.dropout(xs, 0.2, self.training))
        return self.lif(self.fc(xs)).mean(0)


@pytest.mark.parametrize("form, op", [
    ("rand", "torch.rand"), ("rand_like", "torch.rand_like"), ("bernoulli", "torch.bernoulli"),
    ("uniform_", "Tensor.uniform_"), ("dropout default", "torch.dropout")])
def test_random_draws_in_forward_are_refused_by_name(form, op):
    """A random draw was refused as an unknown op, or (torch.rand of a shape, which reads no
    traced tensor) taken as a constant and refused as one that broadcasts over time."""
    with pytest.raises(UnsupportedError) as err:
        trace(Encoded(form), torch.rand(3, 6), T=T)
    msg = str(err.value)
    assert f"op '{op}' is not supported (a random draw" in msg and "(layout TB)" in msg, msg


def test_dropout_in_eval_is_traced_and_exact():
    torch.manual_seed(2)
    model = Encoded("dropout eval").double().eval()
    with torch.no_grad():
        model.fc.weight.mul_(4)
        model.fc.bias.add_(0.5)
    x = torch.rand(8, 6, dtype=torch.float64)
    graph = trace(model, x, T=T)
    functional.reset_net(model)
    with torch.no_grad():
        _, want = stacked_spikes(model, x, {"lif"}, functional.reset_net)
    res = Simulator(graph).run(x.numpy(), T, record=True)
    assert_rates_in_range({"lif": want["lif"].mean()})
    np.testing.assert_array_equal(res.trace["lif"], want["lif"])


class CatSteps(nn.Module):
    """The steps of a loop, each given a unit time axis, concatenated along it."""

    def __init__(self, form: str):
        super().__init__()
        self.fc, self.lif, self.form = nn.Linear(6, 5), neuron.LIFNode(), form

    def forward(self, x):
        steps = [self.lif(self.fc(x[t])) for t in range(x.shape[0])]
        if self.form == "batch first":
            return torch.cat([s.unsqueeze(1) for s in steps], 1).mean(1)
        if self.form == "one missing":
            steps = steps[:-1]
        return torch.cat([s[None] for s in steps]).mean(0)


@pytest.mark.parametrize("form", ["time first", "batch first"])
def test_steps_concatenated_along_a_unit_time_axis_are_their_stack(form):
    """torch.cat([s.unsqueeze(0) for s in steps]) was refused as concatenating along time."""
    import snncc

    torch.manual_seed(0)
    model = CatSteps(form).double().eval()
    x = 4 * torch.randn(T, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    report = snncc.check(model, x, target="sim", T=T, layout="TB")
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_sim == 0.0
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})
    with pytest.raises(UnsupportedError, match="only stacking the T steps of a loop"):
        trace(CatSteps("one missing"), x.float(), T=T, static=False)


class OwnLoop(nn.Module):
    """snnTorch tutorials' form: the forward loops over its own ``num_steps`` and stacks the
    spikes."""

    def __init__(self):
        super().__init__()
        self.fc, self.lif = nn.Linear(6, 5), neuron.IFNode()

    def forward(self, x):
        functional.reset_net(self)
        return torch.stack([self.lif(self.fc(x)) for _ in range(4)]).mean(0)


def test_a_T_other_than_the_models_own_loop_is_named_at_its_stack():
    """T = 8 for a model looping 4 times was refused as an unsupported ``torch.stack``; the
    same loop summed instead of stacked named the neuron's calls."""
    x = torch.rand(3, 6, generator=torch.Generator().manual_seed(1))
    with pytest.raises(UnsupportedError, match=r"stacks the 4 steps of a loop over time, but "
                                               r"T=8: the model's own loop runs 4 steps"):
        trace(OwnLoop(), x, T=8)
    assert len(trace(OwnLoop(), x, T=4).of_type(ir.Neuron)) == 1


class UnitTimeAxis(nn.Module):
    """A time axis the model makes of its static input, ``x.unsqueeze(0)``, and loops over
    (c5_snn's snnTorch transformer in its 'direct' encoding: one step)."""

    def __init__(self):
        super().__init__()
        self.fc, self.lif = nn.Linear(6, 5), neuron.IFNode(v_threshold=0.5)

    def forward(self, x):
        functional.reset_net(self)
        s = x.unsqueeze(0)
        return torch.stack([self.lif(self.fc(s[t])) for t in range(s.size(0))]).mean(0)


@pytest.mark.parametrize("target", ["sim", "onnx"])
def test_a_unit_time_axis_the_model_makes_is_its_one_step(target):
    """``s[0]`` of ``x.unsqueeze(0)`` was refused ("only the time axis ... can be indexed")."""
    import snncc

    model = driven(UnitTimeAxis().double().eval(), fc=(2.0, 0.3))
    x = torch.rand(16, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    report = snncc.check(model, x, target=target, T=1)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


class HeadsAssigned(nn.Module):
    """Each head its own Linear, written into zeros made in forward position by position along
    the head axis, as STMixer's token mixer (brain-intelligence-lab/STMixer_demo) writes it:
    ``y = zeros_like(x); y[:, i] = mix[i](x[:, i])``, time and batch folded (``[T*B, ...]``)
    or not (``y[:, :, i]``)."""

    def __init__(self, folded: bool, heads: int = 3, read_early: bool = False,
                 ellipsis: bool = False):
        super().__init__()
        self.folded, self.heads, self.read_early = folded, heads, read_early
        self.ellipsis = ellipsis
        self.fc = layer.Linear(5, heads * 6 * 5, step_mode="m")
        self.lif = neuron.LIFNode(step_mode="m")
        self.mix = nn.ModuleList(nn.Linear(5, 5) for _ in range(heads))
        self.out = neuron.IFNode(step_mode="m")

    def forward(self, x):  # [T, B, 5]
        s = self.lif(self.fc(x).reshape(*x.shape[:2], self.heads, 6, 5))
        s = s.flatten(0, 1) if self.folded else s
        y = torch.zeros_like(s)
        for i in range(self.heads):
            part = ((..., i, slice(None), slice(None)) if self.ellipsis else
                    (slice(None),) * (1 if self.folded else 2) + (i,))
            y[part] = self.mix[i](s[part])
            if self.read_early:
                return y.sum()
        y = y.reshape(*x.shape[:2], -1) if self.folded else y.flatten(2)
        return self.out(y)


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
@pytest.mark.parametrize("folded, ellipsis", [(True, False), (False, False), (True, True)],
                         ids=["T*B", "TB", "y[..., i, :, :]"])
def test_heads_assigned_position_by_position_are_their_stack(folded, ellipsis, target):
    """Refused before: "a value computed from the input is assigned only as step t of a
    sequence" (with ``...`` in the index too, until tests/fuzz_models.py drew it)."""
    torch.manual_seed(0)
    model = driven(HeadsAssigned(folded, ellipsis=ellipsis).double().eval(), fc=(2.0, 0.2),
                   **{f"mix.{i}": (3.0, 0.4) for i in range(3)})
    x = torch.rand(T, 2, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert_exact_check(model, x, target, layout="TB")


def test_heads_assigned_in_part_and_read_are_refused_saying_so():
    x = torch.rand(T, 2, 5)
    with pytest.raises(UnsupportedError, match=r"assigned position by position along an axis "
                                               r"\(out\[:, i\] = v\) is read before every"):
        trace(HeadsAssigned(True, read_early=True), x, T=T, static=False)


def test_time_first_folding_read_batch_first_is_refused_saying_so():
    """STMixer's surrogate module reads [T*B, ...] as ``view(-1, T, ...)``, grouping steps of
    several samples; it was refused as mixing "the time or batch axis with feature axes"."""
    class Regrouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif = layer.Linear(5, 6, step_mode="m"), neuron.LIFNode(step_mode="m")

        def forward(self, x):  # [T, B, 5]
            return self.lif(self.fc(x)).flatten(0, 1).view(-1, T, 6).mean(1)

    with pytest.raises(UnsupportedError, match=r"reads time and batch folded time first "
                                               r"\(\[T\*B, ...\]\) as batch first"):
        trace(Regrouped(), torch.rand(T, 3, 5), T=T, static=False)


class DelayedSingleStep(nn.Module):
    """spikingjelly's ``layer.Delay`` in single-step mode between two layers: its first
    ``k`` calls return ``zeros_like(x)``, so the next layer's first steps read its bias."""

    def __init__(self, k: int):
        super().__init__()
        self.fc1, self.lif1 = layer.Linear(8, 16), neuron.LIFNode()
        self.delay = layer.Delay(k)
        self.fc2, self.lif2 = layer.Linear(16, 16), neuron.LIFNode()

    def forward(self, x):
        return self.lif2(self.fc2(self.delay(self.lif1(self.fc1(x)))))


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
@pytest.mark.parametrize("k", [1, 2])
def test_a_single_step_delay_starts_the_next_layer_at_its_bias(k, target):
    """Refused before, naming the next neuron ("a neuron's input must be a per-step tensor";
    "called at steps [0, 1, 2]" though it was called at every step; found by testing
    spikingjelly's own layers)."""
    torch.manual_seed(0)
    model = driven(DelayedSingleStep(k).double().eval(), fc1=(4.0, 0.5), fc2=(5.0, 1.2))
    functional.reset_net(model)
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert_exact_check(model, x, target)


class DelayedCell(nn.Module):
    """The same, the next neuron a cell taking and returning its state, in the model's own loop
    over a static input: norse's ``z, s = cell(x, s)`` or snnTorch's ``spk, mem = lif(x, mem)``
    (its ``(spikes, state)`` result gave the Delay no start: a graph whose first steps read 0
    where the model reads the bias, agreement 0.73; found by tests/fuzz_models.py)."""

    def __init__(self, cell: str, k: int, T: int):
        super().__init__()
        import norse.torch as norse
        import snntorch as snn
        from norse.torch.functional.lif import LIFParameters

        self.cell, self.T = cell, T
        self.fc1, self.lif1 = layer.Linear(8, 16), neuron.LIFNode()
        self.delay = layer.Delay(k)
        self.fc2 = layer.Linear(16, 16)
        self.lif2 = (norse.LIFCell(LIFParameters(v_th=torch.as_tensor(0.2))) if cell == "norse"
                     else snn.Leaky(beta=0.8, threshold=0.5))

    def forward(self, x):
        state = None if self.cell == "norse" else self.lif2.init_leaky()
        out = []
        for _ in range(self.T):
            z, state = self.lif2(self.fc2(self.delay(self.lif1(self.fc1(x)))), state)
            out.append(z)
        return torch.stack(out)


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
@pytest.mark.parametrize("cell, k, steps", [("norse", 1, 4), ("snntorch", 2, 4), ("norse", 1, 2),
                                            ("snntorch", 2, 3)])
def test_a_single_step_delay_starts_a_cell_taking_its_state_at_its_bias(cell, k, steps, target):
    """At T = k + 1 only the last step reads the traced value: refused before ("its input is
    a constant at the last steps of the loop")."""
    import snncc

    torch.manual_seed(0)
    model = driven(DelayedCell(cell, k, steps).double().eval(), fc1=(4.0, 0.5),
                   fc2=(5.0, 1.2) if cell == "norse" else (2.0, 0.3))
    functional.reset_net(model)
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    report = snncc.check(model, x, target=target, T=steps)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


class KeptByDeepcopy(nn.Module):
    """A module keeping its last output in an attribute and reading it back with
    ``copy.deepcopy`` at the next step, as SpikeZIP-TF's spiking softmax does: the step's
    difference from the step before, fired on."""

    def __init__(self):
        super().__init__()
        self.fc, self.lif = nn.Linear(8, 16), neuron.IFNode(v_threshold=0.5)
        self.total, self.before = 0.0, 0.0

    def forward(self, x):  # [T, B, 8]
        import copy

        out = []
        for t in range(x.shape[0]):
            self.total = self.fc(x[t]) + self.total
            y = 2.0 * self.total
            before = copy.deepcopy(self.before)
            self.before = y
            out.append(self.lif(y - before))
        self.total, self.before = 0.0, 0.0
        return torch.stack(out)


@pytest.mark.parametrize("target", ["sim", "onnx"])
def test_a_traced_value_deep_copied_is_its_copy(target):
    """``copy.deepcopy`` of a traced tensor crashed the trace (fx's deepcopy of a proxy copies
    its node out of the graph: "'Node' object has no attribute 'meta'", an internal error)."""
    torch.manual_seed(0)
    model = driven(KeptByDeepcopy().double().eval(), fc=(2.0, 0.1))
    functional.reset_net(model)
    x = torch.randn(T, 6, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert_exact_check(model, x, target, layout="TB")


class DifferenceFromTheStepBefore(nn.Module):
    """``y = x - P; P = x`` with P an attribute starting at 0 (SpikeZIP-TF's spiking softmax
    outputs the difference from its output at the step before), in a loop over T steps of
    ``x[t]`` or of one static image."""

    def __init__(self, static: bool):
        super().__init__()
        self.static = static
        self.fc, self.lif = nn.Linear(8, 16), neuron.IFNode(v_threshold=0.5)
        self.before = 0.0

    def forward(self, x):
        out = []
        for t in range(T):
            y = self.fc(x if self.static else x[t])
            out.append(self.lif(y - self.before))
            self.before = y
        self.before = 0.0
        return torch.stack(out)


def test_a_static_value_whose_first_step_differs_is_refused():
    """Of a static image the difference is the image at step 0 and 0 after: the graph took
    the last step's 0 for every step (check: agreement 0.92; compile refused it blaming a
    state's start). The same model on a sequence is exact."""
    import snncc

    torch.manual_seed(0)
    model = driven(DifferenceFromTheStepBefore(False).double().eval(), fc=(2.0, 0.2))
    functional.reset_net(model)
    x = torch.randn(T, 6, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    report = snncc.check(model, x, target="sim", T=T, layout="TB")
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})
    with pytest.raises(UnsupportedError, match="does not compute the same thing at every step"):
        trace(DifferenceFromTheStepBefore(True), x[0].float(), T=T)


class AtMostTwoSpikes(nn.Module):
    """An IF neuron written with tensor ops that fires at most twice, its spikes gated by a
    second comparison of a count starting at 0 (SpikeZIP-TF's ST-BIF gates its spikes so):
    at step 0 ``(n < 2)`` is a constant 1, and ``s * 1`` returned s."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 16)
        self.v, self.n = 0.0, 0.0

    def forward(self, x):  # [T, B, 8]
        out = []
        for t in range(x.shape[0]):
            y = self.fc(x[t])
            if not torch.is_tensor(self.v):
                self.v, self.n = torch.zeros_like(y), torch.zeros_like(y)
            self.v = self.v + y
            s = (self.v >= 1.0).to(y.dtype) * (self.n < 2.0).to(y.dtype)
            self.v, self.n = self.v - s, self.n + s
            out.append(s)
        self.v, self.n = 0.0, 0.0
        return torch.stack(out)


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_a_gate_constant_at_the_first_step_starts_its_delay_there(target):
    """The gate's Delay started at 0 where the model's started at 1 (the first step's product
    with the constant returned its other operand, so the constant was not seen): outputs off
    by 0.034 while every compared layer agreed; compile refused it."""
    import snncc

    torch.manual_seed(0)
    model = driven(AtMostTwoSpikes().double().eval(), fc=(2.0, 0.3))
    x = torch.randn(6, 5, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    report = snncc.check(model, x, target=target, T=6, layout="TB")
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    with torch.no_grad():  # the spikes are the output (no module returns them)
        spikes = model(x)
    assert_rates_in_range({"output": float(spikes.mean())})
    assert float(spikes.sum(0).max()) == 2.0  # the gate closes


class RepeatedByAssignment(nn.Module):
    """EMS-YOLO's ``Model.forward``: the image written into zeros at every step
    (``inp[i] = x``), then a convolution per step written the same way."""

    def __init__(self):
        super().__init__()
        self.conv, self.lif = nn.Conv2d(3, 8, 3, padding=1), neuron.IFNode(step_mode="m")

    def forward(self, x):
        inp = torch.zeros(T, *x.shape, dtype=x.dtype)
        for i in range(T):
            inp[i] = x
        c = torch.zeros(T, x.shape[0], 8, *x.shape[2:], dtype=x.dtype)
        for i in range(T):
            c[i] = self.conv(inp[i])
        return self.lif(c)


@pytest.mark.parametrize("target", ["sim", "onnx"])
def test_a_static_image_assigned_at_every_step_is_repeated(target):
    """Refused as "op 'snncc.frontends.tracer._assigned' is not supported (a value computed
    from the input is assigned only as step t of a sequence ...)"."""
    import snncc

    torch.manual_seed(0)
    model = driven(RepeatedByAssignment().double().eval(), conv=(2.0, 0.3))
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert_exact_check(model, x, target)


class TdBatchNorm(nn.Module):
    """tdBN's ``batch_norm_2d`` (Zheng et al.; copied by EMS-YOLO and MS-ResNet): a
    ``BatchNorm3d`` of ``[T, B, C, H, W]`` transposed to ``[B, C, T, H, W]`` and back."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm3d(channels)

    def forward(self, x):
        y = x.transpose(0, 2).contiguous().transpose(0, 1).contiguous()
        return self.bn(y).contiguous().transpose(0, 1).contiguous().transpose(0, 2)


class TdBnNet(nn.Module):
    def __init__(self, readout_moved: bool = False):
        super().__init__()
        self.readout_moved = readout_moved
        self.conv, self.bn = layer.Conv2d(3, 8, 3, padding=1, step_mode="m"), TdBatchNorm(8)
        self.lif = neuron.LIFNode(step_mode="m")

    def forward(self, x):  # [T, B, 3, H, W]
        if self.readout_moved:
            return self.bn.bn(self.conv(x).transpose(0, 2).transpose(0, 1)).mean()
        return self.lif(self.bn(self.conv(x)))


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_tdbn_batch_norm_3d_of_time_moved_among_the_axes_is_a_batch_norm(target):
    """Refused: "op 'Tensor.transpose' is not supported (it moves the time or batch axis)",
    "op 'BatchNorm3d' is not supported" (EMS-YOLO's official code)."""
    torch.manual_seed(0)
    model = randomize_batchnorms(TdBnNet(), np.random.default_rng(0), positive_bias=True)
    model = model.double().eval()
    x = torch.rand(T, 2, 3, 6, 6, generator=torch.Generator().manual_seed(1),
                   dtype=torch.float64) * 2
    assert_exact_check(model, x, target, layout="TB")


def test_a_value_with_its_time_axis_moved_read_otherwise_is_refused_saying_so():
    with pytest.raises(UnsupportedError, match="whose time or batch axis transposes moved"):
        trace(TdBnNet(readout_moved=True).eval(), torch.rand(T, 2, 3, 6, 6), T=T, static=False)


def test_torch_vmap_is_refused_naming_it():
    """spikingjelly's TLastSeqToANNContainer maps its modules over the last axis with
    torch.vmap, which failed inside torch on snncc's proxy ("tracing failed in the model's
    code ... input is of type _ConcreteProxy")."""
    import snncc
    from spikingjelly.activation_based.layer import container

    class TimeLast(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = container.TLastSeqToANNContainer(nn.Conv1d(4, 8, 1))
            self.lif = neuron.LIFNode(step_mode="m")

        def forward(self, x):  # [T, B, 4, L]
            return self.lif(self.block(x.permute(1, 2, 3, 0)).permute(3, 0, 1, 2))

    with pytest.raises(UnsupportedError, match=r"torch.vmap, called at .*forward.py:\d+, is not "
                                               r"supported"):
        snncc.trace(TimeLast(), torch.randn(T, 2, 4, 5), T=T, layout="TB")


class StackedBranches(nn.Module):
    """Two branches' spikes stacked on a new per-sample axis (``torch.stack([a, b], dim)``)
    and flattened into channels, or averaged over it; multi-step, or a loop of single-step
    neurons over the steps of its input."""

    def __init__(self, loop: bool, dim: int, reduce: str):
        super().__init__()
        mode = "s" if loop else "m"
        self.convs = nn.ModuleList(nn.Conv2d(2, 4, 3, padding=1) for _ in range(2))
        self.lifs = nn.ModuleList(neuron.LIFNode(tau=2.0, step_mode=mode) for _ in range(3))
        self.fc = nn.Linear(8 if reduce == "flatten" else 4, 3)
        self.loop, self.dim, self.reduce = loop, dim, reduce

    def step(self, x):  # [B, 2, 6, 6] (or [T, B, ...])
        lead = x.shape[:-3]
        a, b = (lif(conv(x.flatten(0, -4)).reshape(*lead, 4, 6, 6))
                for conv, lif in zip(self.convs, self.lifs))
        y = torch.stack([a, b], dim=self.dim)
        y = y.flatten(self.dim, self.dim + 1) if self.reduce == "flatten" else y.mean(self.dim)
        return self.lifs[2](self.fc(y.mean((-2, -1))))

    def forward(self, x):
        if self.loop:
            return torch.stack([self.step(x[t]) for t in range(T)])
        return self.step(x)


@pytest.mark.parametrize("loop", [False, True], ids=["multi-step", "loop"])
@pytest.mark.parametrize("dim,reduce", [(-4, "flatten"), (-4, "mean"), (-1, "mean")])
def test_values_stacked_on_a_new_per_sample_axis_are_concatenated(loop, dim, reduce):
    """torch.stack of one step's values (not the steps of a loop) was refused as stacking
    something other than time (found by tests/fuzz_models.py): a unit axis and a Concat."""
    torch.manual_seed(0)
    model = StackedBranches(loop, dim, reduce).double().eval()
    driven(model, **{"convs.0": (3.0, 0.5), "convs.1": (3.0, 0.5), "fc": (6.0, 1.6)})
    x = torch.randn(T, 3, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    graph = trace(model, x, T=T, static=False)
    assert graph.of_type(ir.Concat)
    assert_rates_in_range(assert_parity(model, x, graph))


class BatchFirstLoop(nn.Module):
    """A loop over the steps of a [B, T, ...] input, ``x[:, t]`` (DVS code)."""

    def __init__(self, steps: int):
        super().__init__()
        self.conv, self.lif, self.fc = nn.Conv2d(2, 4, 3, padding=1), neuron.LIFNode(), \
            nn.Linear(4, 3)
        self.steps = steps

    def forward(self, x):
        return torch.stack([self.fc(self.lif(self.conv(x[:, t])).mean((-2, -1)))
                            for t in range(self.steps)])


@pytest.mark.parametrize("steps", [2, 3])
def test_a_loop_over_the_steps_of_a_batch_first_input_reads_it_as_a_sequence(steps):
    """At T = 2 the input [B, 2, 2, H, W] was read as a static image whose second axis the
    loop slices at t, and the graph read x[:, 1] at both steps (check: agreement 0.74; compile
    refused it only by its own-loop verification; found by tests/fuzz_models.py): a value of
    a static input must be the same at every step, step 0 included."""
    import snncc

    torch.manual_seed(0)
    model = BatchFirstLoop(steps).double().eval()
    driven(model, conv=(3.0, 0.5))
    x = 2 * torch.randn(5, steps, 2, 8, 8, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1))
    assert snncc.trace(model, x).meta["input_layout"] == "BT"
    report = snncc.check(model, x, target="sim")
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_sim == 0.0
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


def test_relu_of_a_real_value_is_refused_after_the_build():
    """relu of spikes is the spikes (tested on norse's ConvNet); of a real value it is no IR op."""
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), neuron.LIFNode(step_mode="m"))
    with pytest.raises(UnsupportedError, match=r"module '1': op 'ReLU' is not supported \(only "
                                               r"relu of spikes.*this value is real\)"):
        trace(model, torch.randn(T, 3, 6), T=T, static=False)


def test_matmul_without_spikes_is_refused():
    class Scores(nn.Module):
        def forward(self, x):
            return x @ x.transpose(-1, -2)

    model = nn.Sequential(Scores(), neuron.IFNode(step_mode="m"))
    with pytest.raises(UnsupportedError, match=r"^module '0': op 'operator.matmul' is not "
                                               r"supported \(needs a spike or count operand"):
        trace(model, torch.randn(T, 3, 5, 6), T=T, static=False)


class FoldedLif(nn.Module):
    """QKFormer's official attention feeds its multi-step ``proj_lif`` ``[T*B, C, N]``: the
    neuron steps along time and batch together, carrying its state from one sample into the
    next (``B*T``: a [B, T, ...] input folded, steps of one sample after another's)."""

    def __init__(self, layout: str):
        super().__init__()
        self.layout, self.fc = layout, nn.Linear(6, 6)
        self.lif = neuron.LIFNode(step_mode="m")

    def forward(self, x):
        return self.lif(self.fc(x).flatten(0, 1)).reshape(x.shape)


@pytest.mark.parametrize("layout", ["TB", "BT"])
def test_a_multi_step_neuron_on_time_and_batch_folded_together_is_each_samples_alone(layout):
    """It was refused. At batch 1 it steps along time alone: the graph computes every sample
    so (each sample's spikes and outputs are the model's at batch 1), and says the model's
    own outputs at batch > 1 depend on the rest of the batch, as they do here."""
    torch.manual_seed(0)
    model = driven(FoldedLif(layout).double().eval(), fc=(3.0, 0.8))
    shape = (T, 3, 5, 6) if layout == "TB" else (3, T, 5, 6)
    x = torch.randn(*shape, dtype=torch.float64)
    graph = trace(model, x, T=T, static=False)
    assert graph.meta["batch_coupled"] == {"lif": {"TB": "T*B", "BT": "B*T"}[layout]}
    axis = 0 if layout == "TB" else 1  # of time, in the model's layout
    res = Simulator(graph, "float64").run(x.numpy().swapaxes(0, axis), T=T, record=True)
    (out,) = graph.outputs
    alone = []
    with torch.no_grad():
        for i in range(3):  # the model's spikes (its output) at batch 1 from fresh state
            functional.reset_net(model)
            alone.append(model(x.narrow(1 - axis, i, 1)).swapaxes(0, axis))
        functional.reset_net(model)
        whole = model(x).swapaxes(0, axis).numpy()
    alone = torch.cat(alone, 1).numpy()
    np.testing.assert_array_equal(res.trace[graph.outputs[0].inputs[0]], alone)
    np.testing.assert_array_equal(res.output_sequence[out.name], alone)
    assert_rates_in_range({f"lif, sample {i}": alone[:, i].mean() for i in range(3)})
    assert not np.array_equal(whole, alone)  # the model's samples depend on each other


def test_an_attention_over_chunks_of_time_steps_is_refused_saying_why():
    """STAtten's spatial-temporal attention (CVPR 2025) views q, k, v ``[T, B, h, N, d]`` as
    ``[T / c, c, B, h, N, d]`` and attends over the c steps of a chunk together: a step's output
    depends on the next step's keys and values."""
    class ChunkedAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif = nn.Linear(6, 6), neuron.LIFNode(step_mode="m")

        def forward(self, x):  # [T, B, N, C]
            t, b, n, c = x.shape
            s = self.lif(self.fc(x)).view(t // 2, 2, b, n, c).permute(0, 2, 1, 3, 4)
            s = s.reshape(t // 2, b, 2 * n, c)
            return (s @ (s.transpose(-2, -1) @ s)).mean(0)

    with pytest.raises(UnsupportedError, match=r"^op 'Tensor.view' is not supported \("
                                               r"it splits the time axis into 2 chunks of 2 "
                                               r"steps .*later ones included"):
        trace(ChunkedAttention(), torch.randn(T, 3, 5, 6), T=T, static=False)


def test_a_model_that_runs_only_at_batch_1_says_why_its_example_was_repeated():
    class BatchOfOne(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif = nn.Linear(6, 4), neuron.IFNode(step_mode="m")

        def forward(self, x):  # [B, 6], B = 1
            return self.lif(self.fc(x.view(1, 6)).unsqueeze(0).repeat(T, 1, 1))

    with pytest.raises(SnnccError, match=r"fails in PyTorch itself on the example input \(2, 6\)"
                                         r".* \(the example's 1 sample\(s\) repeated to 2, as "
                                         r"the tracer tells batch and time apart"):
        trace(BatchOfOne(), torch.randn(1, 6), T=T)


def test_tracing_restores_training_mode():
    model = SJNet().train()
    trace(model, torch.randn(3, 2, 16, 16), T=T)
    assert all(m.training for m in model.modules())


def assert_output_sequence_is_the_models(model: nn.Module, x: torch.Tensor, g, name: str):
    """The simulator's output at every step is the model's own (float64, exactly), and the
    output neuron ``name`` fires at a rate within [5%, 95%]. (The model runs on a copy of
    ``x``: it may change its input in place.)"""
    functional.reset_net(model)
    with torch.no_grad():
        y = model(x.clone()).numpy()
    res = Simulator(g).run(x.numpy(), T)
    np.testing.assert_array_equal(res.output_sequence[g.outputs[0].name], y)
    assert_rates_in_range({name: float(y.mean())})


class AssignedBorderPad(nn.Module):
    """Meta-SpikeFormer's official BNAndPadLayer: F.pad, then each side of the border set to the
    BN's per-channel value by a slice assignment (``sides``: which of the four)."""

    def __init__(self, c: int, pad: int = 1, sides=(0, 1, 2, 3), inside: bool = False):
        super().__init__()
        self.bn, self.pad, self.sides, self.inside = nn.BatchNorm2d(c), pad, sides, inside

    def forward(self, x):
        out = self.bn(x)
        bn = self.bn
        value = (bn.bias.detach() - bn.running_mean * bn.weight.detach()
                 / torch.sqrt(bn.running_var + bn.eps)).view(1, -1, 1, 1)
        p = self.pad
        out = F.pad(out, [p] * 4)
        index = [(slice(None), slice(None), slice(0, p), slice(None)),
                 (slice(None), slice(None), slice(-p, None), slice(None)),
                 (slice(None), slice(None), slice(None), slice(0, p)),
                 (slice(None), slice(None), slice(None), slice(-p, None))]
        for side in self.sides:
            out[index[side]] = value
        if self.inside:
            out[:, :, p:p + 1, p:p + 1] = value
        return out


class RepConvLike(nn.Module):
    """1x1 conv, the padding BN, depthwise 3x3 conv, BN and a LIF, on ``[T*B, C, H, W]``."""

    def __init__(self, pad: nn.Module):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 1, bias=False)
        self.pad = pad
        self.dw, self.bn = nn.Conv2d(8, 8, 3, groups=8, bias=False), nn.BatchNorm2d(8)
        self.lif = neuron.LIFNode(tau=2.0, step_mode="m")

    def forward(self, x):
        t, b = x.shape[:2]
        y = self.bn(self.dw(self.pad(self.conv1(x.flatten(0, 1)))))
        return self.lif(y.reshape(t, b, *y.shape[1:]))


def _assigned_pad_model(seed: int, **kw) -> nn.Module:
    torch.manual_seed(seed)
    model = RepConvLike(AssignedBorderPad(8, **kw)).double().eval()
    zoo.randomize_bn(model, seed)
    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_border_set_by_slice_assignments_is_one_pad_with_the_bn_values(seed):
    """The four assignments give the graph of the zoo's BNAndPadLayer (a Pad with the BN's
    per-channel value), and the model's own spikes."""
    from snncc.frontends.zoo.meta import BNAndPadLayer

    model = _assigned_pad_model(seed)
    x = 2 * torch.randn(T, 2, 3, 6, 6, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(seed))
    g = trace(model, x, T=T, static=False)
    (pad,) = g.of_type(ir.Pad)
    zoo_model = RepConvLike(BNAndPadLayer(pad_pixels=1, num_features=8)).double().eval()
    zoo_model.load_state_dict(model.state_dict())
    (zoo_pad,) = trace(zoo_model, x, T=T, static=False).of_type(ir.Pad)
    assert pad.pads == zoo_pad.pads == (1, 1, 1, 1)
    np.testing.assert_array_equal(pad.value, zoo_pad.value)
    assert np.ptp(pad.value) > 0  # per channel, not one number
    assert_output_sequence_is_the_models(model, x, g, "lif")


@pytest.mark.parametrize("kw, reason", [
    ({"sides": (0, 1, 2)}, "border was assigned in part is used before its border is one value"),
    ({"inside": True}, "an assignment inside the tensor F.pad padded"),
])
def test_border_assignments_that_are_no_pad_are_refused_saying_why(kw, reason):
    model = _assigned_pad_model(0, **kw)
    with pytest.raises(UnsupportedError, match=reason):
        trace(model, torch.randn(T, 2, 3, 6, 6, dtype=torch.float64), T=T, static=False)


def test_assigning_into_a_tensor_that_is_not_a_padding_is_refused():
    class Overwrite(nn.Module):
        def forward(self, x):
            y = x * 2
            y[:, :, 0:1] = 0.5
            return y

    model = nn.Sequential(layer.Conv2d(3, 4, 1, step_mode="m"), Overwrite(),
                          neuron.IFNode(step_mode="m")).double()
    with pytest.raises(UnsupportedError, match="taken only into the border F.pad added"):
        trace(model, torch.randn(T, 2, 3, 6, 6, dtype=torch.float64), T=T, static=False)


class InPlace(nn.Module):
    """A conv, an in-place op on its result (``how``), an IF neuron, on ``[T, B, ...]``."""

    def __init__(self, how: str):
        super().__init__()
        self.conv, self.how = layer.Conv2d(3, 4, 1, step_mode="m"), how
        self.lif = neuron.IFNode(step_mode="m")

    def forward(self, x):
        y = self.conv(x)
        if self.how == "result_unused":
            y.mul_(3.0)
        elif self.how == "chained":
            y.mul_(3.0).add_(0.0)
            y.transpose_(-1, -2)
        elif self.how == "on_a_view":
            v = y.flatten(2)
            v.mul_(3.0)
        elif self.how == "viewed":
            v = y.flatten(2)
            y.mul_(3.0)
            return self.lif(v)
        elif self.how == "on_a_chunk":  # a chunk's pieces are views of y (a call's items)
            a, _ = y.chunk(2, dim=2)
            a.mul_(3.0)
        elif self.how == "on_a_chunk_read_with_its_sibling":  # (disjoint pieces of y)
            a, b = y.split(2, dim=2)
            a.mul_(3.0)
            return self.lif(torch.cat([b, a], dim=2))
        elif self.how == "topk_values_then_indices":  # (two new tensors)
            values, indices = y.topk(1, dim=2)
            values.mul_(3.0)
            return self.lif(values + indices)
        elif self.how == "on_the_input":
            x.mul_(3.0)
        elif self.how == "on_the_input_read_again":
            x += 1.0
            y = y + self.conv(x)
        elif self.how == "operator_on_a_second_name":  # PyTorch changes `kept` too
            kept = y
            y *= 3.0
            return self.lif(kept)
        elif self.how == "operator_on_a_view":
            v = y.flatten(2)
            v -= -1.0
            v /= 0.5
            return self.lif(v.view_as(y))
        elif self.how == "operator_viewed":
            v = y.flatten(2)
            y += 1.0
            return self.lif(v.view_as(y))
        elif self.how == "on_its_data":
            y.data.mul_(3.0)
        elif self.how == "operator_on_its_data":  # Python: y.data = y.data + 1.0
            kept = y
            y.data += 1.0
            return self.lif(kept)
        elif self.how == "its_data_assigned":
            y.data = y.data * 3.0
        elif self.how == "out_itself":  # torch.mul(..., out=y) changes y
            torch.mul(y, 3.0, out=y)
        elif self.how == "out_made_in_forward":
            buf = torch.zeros(y.shape, dtype=y.dtype)
            torch.mul(y, 3.0, out=buf)
            return self.lif(buf)
        elif self.how == "out_a_parameter":
            torch.mul(self.conv.weight, 1.0, out=self.conv.weight)
        elif self.how == "its_data_viewed":
            v = y.flatten(2)
            y.data += 1.0
            return self.lif(v.view_as(y))
        elif self.how == "on_a_parameter":
            self.conv.weight.mul_(1.0)
        elif self.how == "no_out_of_place_form":
            y.zero_()
        return self.lif(y)


@pytest.mark.parametrize("how", ["result_unused", "chained"])
def test_in_place_ops_are_traced_as_the_values_they_leave(how):
    """``y.mul_(3.0)`` with its result unused was left out of the graph: a wrong graph, silently."""
    torch.manual_seed(0)
    model = InPlace(how).double().eval()
    x = torch.randn(T, 2, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = trace(model, x, T=T, static=False)
    assert [n.factor for n in g.of_type(ir.Scale)] == [3.0]
    assert_output_sequence_is_the_models(model, x, g, "lif")


@pytest.mark.parametrize("how", ["on_the_input", "on_the_input_read_again",
                                 "operator_on_a_second_name", "operator_on_a_view", "on_its_data",
                                 "operator_on_its_data", "its_data_assigned", "out_itself",
                                 "out_made_in_forward", "on_a_chunk_read_with_its_sibling"])
def test_in_place_ops_on_shared_memory_give_what_pytorch_computes(how):
    """The model's input changed in place (unread after, or read through the name changed),
    ``y *= 3`` read through a second name for ``y`` (which fx alone would record as ``y = y * 3``,
    leaving the other name the old value), ``-=`` and ``/=`` on a view, ``y.data`` changed or
    assigned (``y.data += 1`` and ``y.data = ...`` left the graph reading the old ``y``: 77% and
    86% agreement, silently), an op's ``out=`` (``torch.mul(y, 2, out=y)``: 93%, silently):
    the graph's output is the model's (each input a fresh copy, as the model changes it)."""
    torch.manual_seed(0)
    model = InPlace(how).double().eval()
    x = 3 * torch.randn(T, 2, 3, 5, 5, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1))
    g = trace(model, x.clone(), T=T, static=False)
    assert_output_sequence_is_the_models(model, x, g, "lif")


def test_check_gives_the_model_a_copy_of_the_input_it_may_change():
    """``x += 1`` on the model's input: ``check`` handed the model a tensor sharing the array the
    simulator and onnxruntime then read, which reported agreement 0.92 on an exact graph."""
    import snncc

    torch.manual_seed(0)
    model = InPlace("on_the_input_read_again").double().eval()
    x = 3 * torch.randn(T, 2, 3, 5, 5, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1))
    before = x.clone()
    report = snncc.check(model, x, target="onnx", T=T, layout="TB")
    assert report.min_agreement == 1.0
    assert report.output_max_abs_diff_sim == report.output_max_abs_diff_target == 0.0
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})
    assert torch.equal(x, before)


@pytest.mark.parametrize("how, reason", [
    *[(how, r"reading a tensor that shares memory with one changed in place since \(a view of "
            r"it, or the tensor it views\)")
      for how in ("on_a_view", "viewed", "operator_viewed", "its_data_viewed", "on_a_chunk")],
    ("on_a_parameter", r"'Tensor.mul_' is not supported \(an in-place op on a parameter or "
                       r"buffer of the model"),
    ("out_a_parameter", r"'mul with out=' is not supported \(an in-place op on a parameter"),
    ("no_out_of_place_form", r"'Tensor.zero_' is not supported \(an in-place op with no "
                             r"out-of-place form"),
    # (named for what it is: the indices were taken for a view of the values changed)
    ("topk_values_then_indices", r"^op 'Tensor.topk' is not supported, at .*test_tracer.py:\d+$"),
])
def test_in_place_ops_that_would_change_what_the_graph_does_not_see_are_refused(how, reason):
    with pytest.raises(UnsupportedError, match=reason):
        trace(InPlace(how).double(), torch.randn(T, 2, 3, 5, 5, dtype=torch.float64), T=T,
              static=False)


def test_a_single_step_model_called_once_says_to_trace_its_loop():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), neuron.IFNode())
    with pytest.raises(UnsupportedError, match=r"op 'IFNode': called at steps \[0\], not at "
                                               r"every step 0..3; if a loop outside the model "
                                               r"calls it once per step, trace a module"):
        trace(model, torch.randn(2, 3, 5, 5), T=T)


def _conv_if(hooked: str | None):
    """A block (conv) and an IF neuron, on ``[T, B, ...]``; a hook that triples the conv's
    output (or input) where ``hooked`` says."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = layer.Conv2d(3, 4, 1, step_mode="m")

        def forward(self, x):
            return self.conv(x)

    torch.manual_seed(0)
    model = nn.Sequential(Block(), neuron.IFNode(step_mode="m")).double().eval()
    triple = lambda m, args, out: out * 3.0  # noqa: E731
    if hooked == "leaf":
        model[0].conv.register_forward_hook(triple)
    elif hooked == "leaf_input":
        model[0].conv.register_forward_pre_hook(lambda m, args: (args[0] * 3.0,))
    elif hooked == "root":
        model.register_forward_hook(lambda m, args, out: 1.0 - out)
    elif hooked == "traced_through":
        model[0].register_forward_hook(triple)
    elif hooked == "pruned":
        from torch.nn.utils import prune

        prune.l1_unstructured(model[0].conv, "weight", amount=0.5)
    return model


@pytest.mark.parametrize("hooked, path", [("leaf", "0.conv"), ("leaf_input", "0.conv"),
                                          ("root", None)])
def test_forward_hooks_the_graph_would_leave_out_are_refused(hooked, path):
    """A hook on a leaf or the root changed the model's output while the graph had the module's
    forward only: spikes differed, without a word."""
    with pytest.raises(UnsupportedError, match=r"it has forward hooks") as e:
        trace(_conv_if(hooked), torch.randn(T, 2, 3, 5, 5, dtype=torch.float64), T=T,
              static=False)
    assert (f"module '{path}'" in str(e.value)) == (path is not None)


@pytest.mark.parametrize("hooked", ["traced_through", "pruned"])
def test_hooks_traced_through_and_pruning_give_the_model_spikes(hooked):
    model = _conv_if(hooked)
    x = 4 * torch.randn(T, 2, 3, 5, 5, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(2))
    g = trace(model, x, T=T, static=False)
    assert_output_sequence_is_the_models(model, x, g, "if")
    if hooked == "pruned":
        (conv,) = g.of_type(ir.Conv2d)
        assert (conv.weight == 0).mean() == 0.5


def test_a_tensor_made_in_forward_is_taken_as_it_is_when_used():
    """A constant changed in place after a first use (w.mul_(2)) had its later value in both
    uses: a wrong graph without a word."""
    class Rescaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.lif = layer.Conv2d(3, 4, 1, step_mode="m"), neuron.IFNode(step_mode="m")

        def forward(self, x):
            w = torch.full((1, 1, 4, 1, 1), 0.75, dtype=x.dtype)
            y = self.conv(x) * w
            w.mul_(2.0)
            return self.lif(y * w)

    torch.manual_seed(0)
    model = Rescaled().double().eval()
    x = 3 * torch.randn(T, 2, 3, 5, 5, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(3))
    g = trace(model, x, T=T, static=False)
    assert sorted(float(n.factor.ravel()[0]) for n in g.of_type(ir.Scale)) == [0.75, 1.5]
    assert_output_sequence_is_the_models(model, x, g, "if")


def test_a_spikingjelly_neuron_called_twice_in_one_forward_is_refused():
    """Its second multi-step call goes on from the membrane the first left; the graph started
    it afresh (7% of spikes differed, without a word). A conv called twice is fine."""
    class Twice(nn.Module):
        def __init__(self, reuse: str):
            super().__init__()
            self.c1, self.c2 = (layer.Conv2d(3, 4, 1, step_mode="m"),
                                layer.Conv2d(4, 4, 1, step_mode="m"))
            self.lif, self.lif2 = neuron.IFNode(step_mode="m"), neuron.IFNode(step_mode="m")
            self.reuse = reuse

        def forward(self, x):
            a = self.lif(self.c1(x))
            if self.reuse == "neuron":
                return self.lif(self.c2(a))
            return self.lif2(self.c2(self.c2(a)))

    x = 2 * torch.randn(T, 2, 3, 5, 5, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(4))
    with pytest.raises(UnsupportedError, match=r"module 'lif': op 'IFNode' is not supported "
                                               r"\(called a second time in one forward"):
        trace(Twice("neuron").double(), x, T=T, static=False)
    torch.manual_seed(0)
    model = Twice("conv").double().eval()
    with torch.no_grad():  # the second IF fires
        model.c2.weight.mul_(4.0)
        model.c2.bias.fill_(0.6)
    g = trace(model, x, T=T, static=False)
    assert_output_sequence_is_the_models(model, x, g, "lif2")


class WithOptions(nn.Module):
    """``forward(x, hook=None, gain=2.0)`` as Spike-Driven Transformer's ``forward(x,
    hook=None)``: fx made each a placeholder, and ``hook is not None`` held."""

    def __init__(self, returns_hook: bool = False, returns=None):
        super().__init__()
        self.conv, self.lif = layer.Conv2d(3, 4, 1, step_mode="m"), neuron.IFNode(step_mode="m")
        self.returns_hook, self.returns = returns_hook, returns

    def forward(self, x, hook=None, gain=2.0):
        y = self.lif(self.conv(x) * gain)
        if hook is not None:
            hook["lif"] = y.detach()
        if self.returns is not None:
            return y, self.returns
        return (y, hook) if self.returns_hook else y


def test_parameters_after_the_input_are_traced_at_their_defaults():
    torch.manual_seed(0)
    model = WithOptions().double().eval()
    x = 3 * torch.randn(T, 2, 3, 5, 5, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(5))
    g = trace(model, x, T=T, static=False)
    assert [n.factor for n in g.of_type(ir.Scale)] == [2.0]
    assert_output_sequence_is_the_models(model, x, g, "lif")


def test_an_output_returned_empty_is_left_out():
    """Spike-Driven Transformer's official forward returns ``(logits, hook)``, its hook None
    unless one is passed: the graph's output is the tensor (the model needed a wrapper)."""
    import snncc

    torch.manual_seed(0)
    model = WithOptions(returns_hook=True).double().eval()
    x = 3 * torch.randn(T, 2, 3, 5, 5, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(5))
    report = snncc.check(model, x, target="onnx", T=T, layout="TB")
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target == 0.0
    assert report.outputs == 1
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


def test_returning_something_besides_tensors_says_what_it_returns():
    with pytest.raises(UnsupportedError, match=r"it returns \(a tensor, str\): wrap it"):
        trace(WithOptions(returns="logits").double(),
              torch.randn(T, 2, 3, 5, 5, dtype=torch.float64), T=T, static=False)


def test_an_assignment_through_a_view_of_the_padding_is_refused():
    """``out[..., 0:1, :]`` taken first, then assigned into: ``out`` changes too, which a
    record of the assignment on the view alone would miss."""
    class ThroughView(AssignedBorderPad):
        def forward(self, x):
            out = F.pad(self.bn(x), [1] * 4)
            top = out[:, :, 0:1, :]
            top[:, :, :, :] = 0.5
            return out

    model = RepConvLike(ThroughView(8)).double()
    with pytest.raises(UnsupportedError, match=r"reading a tensor that shares memory with one "
                                               r"changed in place since"):
        trace(model, torch.randn(T, 2, 3, 6, 6, dtype=torch.float64), T=T, static=False)


class ThresholdPerStep(nn.Module):
    """A single-step IF neuron whose threshold the model's loop sets before each call (and
    restores after): the graph was built with the value left at the end, for every step."""

    def __init__(self, thresholds):
        super().__init__()
        self.conv, self.lif, self.thresholds = nn.Conv2d(3, 4, 1), neuron.IFNode(), thresholds

    def forward(self, x):
        out = []
        for t in range(T):
            self.lif.v_threshold = self.thresholds[t]
            out.append(self.lif(self.conv(x)))
        self.lif.v_threshold = 1.0
        return torch.stack(out)


def test_neuron_parameters_are_taken_as_they_are_at_each_call():
    with pytest.raises(UnsupportedError, match=r"module 'lif': op 'IFNode' is not supported "
                                               r"\(its parameters \(threshold, decay, reset "
                                               r"...\) differ"):
        trace(ThresholdPerStep([1.0, 1.5, 2.0, 2.5]).double(),
              torch.randn(2, 3, 5, 5, dtype=torch.float64), T=T)
    torch.manual_seed(0)
    model = ThresholdPerStep([0.5] * T).double().eval()  # the same at every call, not 1.0
    x = 2 * torch.randn(2, 3, 5, 5, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(6))
    g = trace(model, x, T=T)
    assert [float(n.theta) for n in g.of_type(ir.Neuron)] == [0.5]
    assert_output_sequence_is_the_models(model, x, g, "lif")


class FixedLIF(neuron.LIFNode):
    """A repository's own neuron class that only fixes the library's arguments (SpikingResformer's
    ``class LIF(neuron.LIFNode)``)."""

    def __init__(self):
        super().__init__(tau=3.0, v_threshold=0.8, detach_reset=True, step_mode="m")


class Conv1x1(layer.Conv2d):
    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, kernel_size=1, bias=False, step_mode="m")


class LeakyCharge(neuron.LIFNode):
    """A subclass that changes how the membrane charges: not LIFNode's spikes, so traced
    through (its charge, and the library's fire and reset; refused before)."""

    def neuronal_charge(self, x):
        self.v = 0.9 * self.v + x


def test_subclasses_of_library_classes_that_fix_their_arguments_are_those_classes():
    torch.manual_seed(0)
    model = nn.Sequential(Conv1x1(3, 8), layer.BatchNorm2d(8, step_mode="m"),
                          FixedLIF()).double().eval()
    zoo.randomize_bn(model, 0)
    x = 2 * torch.randn(T, 2, 3, 5, 5, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(7))
    g = trace(model, x, T=T, static=False)
    assert [type(n).__name__ for n in g.nodes.values()] == ["Input", "Conv2d", "BatchNorm",
                                                             "Neuron", "Output"]
    assert_output_sequence_is_the_models(model, x, g, "2")
    leaky = nn.Sequential(Conv1x1(3, 8), LeakyCharge(step_mode="m")).double().eval()
    g = trace(leaky, x, T=T, static=False)
    assert_output_sequence_is_the_models(leaky, x, g, "1")
    assert_exact_check(leaky, x, "onnx", layout="TB")


class HeadSlices(nn.Module):
    """SpikingResformer's DSSA (its official code, in small): the heads of a conv's output
    sliced apart (``y[:, :, :, :c, :]``, reals) and attended with the input's spikes; a slice of
    spikes too, in the form ``how``."""

    def __init__(self, how: str, C: int = 4, heads: int = 2):
        super().__init__()
        self.how, self.heads = how, heads
        self.lif_in = neuron.LIFNode(step_mode="m")
        self.W = layer.Conv2d(C, 2 * C, 1, step_mode="m")
        self.bn = layer.BatchNorm2d(2 * C, step_mode="m")
        self.lif_attn, self.lif_out = neuron.IFNode(step_mode="m"), neuron.IFNode(step_mode="m")

    def forward(self, x):
        T_, B_, C, H, W = x.shape
        x = self.lif_in(x)
        y = self.bn(self.W(x)).reshape(T_, B_, self.heads, 2 * C // self.heads, -1)
        c = C // self.heads
        if self.how == "tuple":
            y1, y2 = y[:, :, :, :c, :], y[:, :, :, c:, :]
        elif self.how == "ellipsis":
            y1, y2 = y[..., :c, :], y[..., -c:, :]
        else:
            y1, y2 = y.narrow(3, 0, c), torch.narrow(y, -2, c, c)
        s = x.reshape(T_, B_, self.heads, c, -1)
        attn = self.lif_attn(2.0 * (y1.transpose(-1, -2) @ s))
        out = self.lif_out((y2 @ attn).reshape(T_, B_, C, H, W))
        return out[..., 1:, :] if self.how == "ellipsis" else out


@pytest.mark.parametrize("how", ["tuple", "ellipsis", "narrow"])
def test_slices_of_one_axis_are_traced_as_the_model_computes_them(how):
    """Indexing other than x[t] was refused, and SpikingResformer's official DSSA with it."""
    torch.manual_seed(0)
    model = HeadSlices(how).double().eval()
    zoo.randomize_bn(model, 0)
    x = 2 * torch.randn(T, 2, 4, 3, 3, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(5))
    g = trace(model, x, T=T, static=False)
    rates = assert_parity(model, x, g)
    assert_rates_in_range({n.path: rates[n.name] for n in g.of_type(ir.Neuron)})


class ClassToken(nn.Module):
    """A spiking ViT's readout of its first token, ``x[:, :, 0]`` (or ``x.select(2, 0)``), and a
    token picked from the end, ``x[..., -1, :]``."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.fc1, self.lif1 = layer.Linear(6, 8, step_mode="m"), neuron.LIFNode(step_mode="m")
        self.fc2, self.lif2 = layer.Linear(8, 5, step_mode="m"), neuron.IFNode(step_mode="m")

    def forward(self, x):  # [T, B, N, 6]
        s = self.lif1(self.fc1(x))
        first = s[:, :, 0] if self.how == "index" else s.select(2, 0)
        last = s[..., -1, :][:, :, None].flatten(2)  # (a new axis, and away again)
        return self.lif2(self.fc2(first + last))


@pytest.mark.parametrize("how", ["index", "select"])
def test_one_position_of_a_per_sample_axis_is_that_slice_without_the_axis(how):
    torch.manual_seed(0)
    model = ClassToken(how).double().eval()
    x = 2 * torch.randn(T, 2, 3, 6, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(3))
    g = trace(model, x, T=T, static=False)
    rates = assert_parity(model, x, g)
    assert_rates_in_range({n.path: rates[n.name] for n in g.of_type(ir.Neuron)})


class LastAxisPieces(nn.Module):
    """``q, k, v = qkv(x).chunk(3, dim=-1)`` on ``[T, B, C]`` (reals sliced along their last
    axis, refused before: "expects last axis 12"), and in a loop of single-step neurons the
    first and last tokens of spikes and a slice of their sum, ``tok[..., 2:5]``."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.qkv = nn.Linear(6, 12)
        self.lif = neuron.LIFNode(step_mode="m" if how == "chunk" else "s")
        self.fc, self.lif2 = nn.Linear(3, 4), neuron.IFNode()
        with torch.no_grad():  # it fires
            self.fc.bias.fill_(0.5)

    def forward(self, x):
        if self.how == "chunk":  # x: [T, B, 6]
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            return self.lif(q + k + v)
        outs = []  # x: [T, B, N, 6]
        for t in range(T):
            s = self.lif(self.qkv(x[t])[..., :8])
            tok = s[:, 0] + s[:, -1]
            outs.append(self.lif2(self.fc(tok[..., 2:5])))
        return torch.stack(outs)


@pytest.mark.parametrize("how, shape", [("chunk", (T, 2, 6)), ("loop", (T, 2, 3, 6))])
def test_slices_of_the_last_axis_and_in_a_loop_over_time(how, shape):
    torch.manual_seed(0)
    model = LastAxisPieces(how).double().eval()
    x = 2 * torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    g = trace(model, x, T=T, static=False)
    assert_output_sequence_is_the_models(model, x, g, "lif" if how == "chunk" else "lif2")


class SwinPieces(nn.Module):
    """Swin's patch merging and shifted windows on spikes ``[T, B, C, H, W]``: the four
    strided quarters ``s[..., 0::2, 0::2]`` ... concatenated, a slice of two axes, and
    ``torch.roll`` of the spatial axes (all refused before: "only a slice of one axis with step
    1", "op 'torch.roll' is not supported")."""

    def __init__(self):
        super().__init__()
        self.conv1, self.lif1 = layer.Conv2d(3, 4, 3, padding=1, step_mode="m"), \
            neuron.IFNode(step_mode="m")
        self.conv2, self.lif2 = layer.Conv2d(16, 4, 1, step_mode="m"), \
            neuron.IFNode(step_mode="m")
        self.conv3, self.lif3 = layer.Conv2d(4, 4, 3, padding=1, step_mode="m"), \
            neuron.IFNode(step_mode="m")

    def forward(self, x):
        s = self.lif1(self.conv1(x))
        merged = torch.cat([s[..., 0::2, 0::2], s[..., 1::2, 0::2], s[..., 0::2, 1::2],
                            s[..., 1::2, 1::2]], 2)  # [T, B, 16, 3, 3]
        z = self.lif2(self.conv2(merged))
        shifted = torch.roll(z, shifts=(1, -2), dims=(3, 4)) + z.roll(1, -1)
        return self.lif3(self.conv3(shifted[..., 1:3, 0:2] + shifted[..., 0:2, 1:3]))


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_strided_slices_of_several_axes_and_rolls_are_gathers(target):
    torch.manual_seed(0)
    model = driven(SwinPieces().double().eval(), conv1=(2.0, 0.3), conv2=(2.0, 0.4),
                   conv3=(1.5, 0.1))
    functional.reset_net(model)
    x = 2 * torch.randn(T, 2, 3, 6, 6, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(3))
    assert_exact_check(model, x, target, layout="TB")


@pytest.mark.parametrize("index, reason", [
    ((slice(None), slice(None), 0, slice(0, 2)), r"a position of one axis is taken beside"),
    ((slice(None), slice(0, 1), slice(0, 2)), r"it slices the time or batch axis"),
    ((slice(1, None),), r"it slices the time or batch axis"),
    ((Ellipsis, [0, 2]), r"only x\[t\] \(one time step\), slices"),
    ((slice(None), 1), r"it slices the time or batch axis"),
    ((Ellipsis, slice(0, 2), None), r"a new axis \(None\) is taken only beside whole axes"),
    ((None,), r"it mixes the time or batch axis with feature axes"),
    ((Ellipsis, slice(3, 3)), r"it takes an empty slice"),
])
def test_indexing_the_graph_cannot_take_is_refused_saying_why(index, reason):
    model = nn.Sequential(layer.Conv2d(3, 4, 1, step_mode="m"), neuron.IFNode(step_mode="m"))

    class Indexed(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return self.net(x)[index]

    with pytest.raises(UnsupportedError, match=r"op 'operator.getitem' is not supported \("
                                               + reason):
        trace(Indexed(), torch.randn(T, 2, 3, 5, 5), T=T, static=False)


@pytest.mark.parametrize("form", ["add", "radd", "sub"])
def test_a_constant_tensor_added_is_a_batch_norm_of_scale_one(form):
    """``x + pos`` (a position embedding), ``pos + x`` and ``x - pos``: each element its own
    channel of a BN of scale 1 and the constant as its bias, exact."""
    class Embedded(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif = layer.Linear(6, 5, step_mode="m"), neuron.LIFNode(step_mode="m")
            self.pos = nn.Parameter(torch.randn(3, 5, dtype=torch.float64))

        def forward(self, x):  # [T, B, 3, 6]
            y = self.fc(x)
            y = y + self.pos if form == "add" else self.pos + y if form == "radd" else y - self.pos
            return self.lif(y)

    torch.manual_seed(0)
    model = Embedded().double().eval()
    x = 2 * torch.randn(T, 2, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    g = trace(model, x, T=T, static=False)
    (bn,) = g.of_type(ir.BatchNorm)
    sign = -1.0 if form == "sub" else 1.0
    assert np.array_equal(bn.scale_shift()[0], np.ones(15))
    assert np.array_equal(bn.scale_shift()[1], sign * model.pos.detach().numpy().ravel())
    assert_output_sequence_is_the_models(model, x, g, "lif")


def test_constants_concatenated_around_a_value_are_a_zero_pad_and_one_bias():
    """``cat([a, x, b], -1) + pos``: x padded with zeros, then one BN of scale 1 whose bias is
    a, pos and b in their places (exact: the padding is zero where the constants are)."""
    class AroundConstants(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif = layer.Linear(6, 4, step_mode="m"), neuron.LIFNode(step_mode="m")
            self.a = nn.Parameter(torch.randn(1, 1, 3, 2, dtype=torch.float64))
            self.b = nn.Parameter(torch.randn(3, 1, dtype=torch.float64))
            self.pos = nn.Parameter(torch.randn(3, 7, dtype=torch.float64))

        def forward(self, x):  # [T, B, 3, 6]
            T_, B_ = x.shape[:2]
            y = torch.cat([self.a.expand(T_, B_, -1, -1), self.fc(x),
                           self.b.expand(T_, B_, -1, -1)], dim=-1)
            return self.lif(y + self.pos)

    torch.manual_seed(0)
    model = AroundConstants().double().eval()
    x = 2 * torch.randn(T, 2, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    g = trace(model, x, T=T, static=False)
    (pad,) = g.of_type(ir.Pad)
    assert pad.pads == (0, 0, 2, 1) and not pad.value.any()
    assert len(g.of_type(ir.BatchNorm)) == 1
    assert_output_sequence_is_the_models(model, x, g, "lif")


class ScaleFromBuffer(nn.Module):
    """SpikingResformer's DSSA scale in small: ``1 / sqrt(rate * d)`` of a buffer, computed in
    forward, times a factor made in forward from a float32 tensor."""

    def __init__(self):
        super().__init__()
        self.conv, self.lif = layer.Conv2d(3, 4, 1, step_mode="m"), neuron.IFNode(step_mode="m")
        self.register_buffer("rate", torch.tensor(0.1234567))

    def forward(self, x):
        scale = 1.0 / torch.sqrt(self.rate * 7)
        return self.lif(self.conv(x) * scale * (torch.full((), 0.1) * 3))


def test_constants_computed_from_the_models_tensors_are_the_float64_models():
    """snncc's parity is against the model run in float64, where its buffers are float64: a
    float32 model's ``1 / sqrt(rate * d)`` traced in float32 kept float32 rounding and flipped
    a spike of the official SpikingResformer (one in 33 million). A tensor made in forward is
    float32 in that run too, and stays so."""
    torch.manual_seed(0)
    model = ScaleFromBuffer().eval()
    g = trace(model, torch.randn(T, 2, 3, 4, 4), T=T, static=False)
    in_float64 = float(1.0 / torch.sqrt(model.rate.double() * 7))
    assert in_float64 != float(1.0 / torch.sqrt(model.rate * 7))
    made_in_forward = float(torch.full((), 0.1) * 3)
    assert made_in_forward != 0.3
    assert [float(n.factor) for n in g.of_type(ir.Scale)] == [in_float64, made_in_forward]
    assert model.rate.dtype == torch.float32
    x = 12 * torch.randn(T, 2, 3, 4, 4, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(2))
    assert_output_sequence_is_the_models(model.double(), x, g, "lif")


class _BranchesOnItsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.lif = neuron.IFNode(step_mode="m")

    def forward(self, x):
        if (x > 0).any():  # this line is named
            x = x * 2.0
        return self.lif(x)


def test_control_flow_on_a_traced_tensor_names_the_module_and_the_line():
    """fx's own error ("symbolically traced variables cannot be used as inputs to control
    flow") named neither (BrainCog's NoiseLIFNode validates a Beta distribution's parameters
    inside torch: the line named is the model's call of it)."""
    import inspect

    line = inspect.getsource(_BranchesOnItsInput.forward).splitlines().index(
        "        if (x > 0).any():  # this line is named") + \
        _BranchesOnItsInput.forward.__code__.co_firstlineno
    with pytest.raises(UnsupportedError, match=rf"Python control flow on a traced tensor \(an "
                                               rf"if, while, assert or bool\(\) of one, at "
                                               rf".*test_tracer.py:{line}\)"):
        trace(_BranchesOnItsInput(), torch.randn(T, 2, 6), T=T, static=False)


class _ReadsNumbers(nn.Module):
    """Python numbers read from tensors in forward: ``how`` says which."""

    def __init__(self, how: str):
        super().__init__()
        self.fc, self.lif, self.how = nn.Linear(6, 5), neuron.LIFNode(step_mode="m"), how
        self.k = nn.Parameter(torch.tensor(0.75))

    def forward(self, x):
        y = self.fc(x)
        if self.how == "item":  # the example's largest value, kept as a constant: it traced
            return self.lif(y * (2.0 / y.abs().max().item()))
        if self.how == "float":
            return self.lif(y * float(y.mean()))
        if self.how == "tolist":
            return self.lif(y + torch.tensor(y[0, 0].tolist(), dtype=y.dtype))
        if self.how == "numpy":
            return self.lif(y + torch.from_numpy(y.detach().numpy().mean(0)))
        if self.k > 0.5:  # the model's own parameters: constants, read as the model has them
            y = y * self.k.item() * float(self.k) * int(self.k * 4)
        return self.lif(y)


@pytest.mark.parametrize("how, op", [("item", "Tensor.item"), ("float", "float"),
                                     ("tolist", "Tensor.tolist"), ("numpy", "Tensor.numpy")])
def test_numbers_read_from_the_input_are_refused(how, op):
    """``y.abs().max().item()`` traced, the example input's maximum a constant of the graph
    (and ``check`` on another input traced that one's: agreement 1.0); the others ended in a
    TypeError of the model's forward."""
    with pytest.raises(UnsupportedError, match=rf"op '{op}' is not supported \(it reads a value "
                                               r"computed from the input into Python, at "
                                               r".*test_tracer.py:\d+: the graph would keep"):
        trace(_ReadsNumbers(how), torch.randn(T, 2, 6), T=T, static=False)


def test_numbers_and_branches_on_the_models_parameters_are_constants():
    import snncc

    torch.manual_seed(0)
    model = _ReadsNumbers("parameters").double().eval()
    x = 3 * torch.randn(T, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    report = snncc.check(model, x, target="sim", T=T, layout="TB")
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_sim == 0.0
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


class _ReadsLayout(nn.Module):
    """What model code asks of a tensor besides its values, as research code asks it: its
    class (a Block taking a tensor or a tuple of hidden states, KirinZheng/spike_diversity's),
    dtype and layout queries, and ``x.mT``."""

    def __init__(self):
        super().__init__()
        self.fc, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 4)
        self.lif = neuron.LIFNode(step_mode="m")

    def forward(self, x):  # [T, B, 5, 6]
        y = self.fc(x)
        if not isinstance(y, torch.Tensor):  # traced: neither branch taken, forward gave None
            y = y[-1]
        assert torch.is_tensor(y) and y.is_floating_point() and not y.is_complex()
        assert y.is_signed() and torch.is_floating_point(y) and y.type().endswith("Tensor")
        if not y.is_contiguous():
            y = y.contiguous()
        y = y.cpu()  # (was refused: "op 'Tensor.cpu'")
        if y.get_device() >= 0:  # old code's "same GPU as the input"
            y = y.cuda(y.get_device())
        scale = 48.0 / y.element_size() * y.stride()[-1] * (torch.numel(y) // y.numel())
        return self.lif(self.fc2(y.mT * scale))  # [T, B, 6, 4]


def test_what_model_code_asks_of_a_tensor_besides_its_values_is_answered_as_in_pytorch():
    """These were refused as numbers read from the input (``is_contiguous()``, ``stride()``,
    ``get_device()`` ...), or ended the trace in an internal error (``y.type()``: 'str' object
    has no attribute 'dtype'; ``y.mT.shape``: "Proxy object cannot be iterated"); the class
    check made the Block return None."""
    model = _ReadsLayout().double().eval()
    x = 2 * torch.rand(T, 3, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert_rates_in_range(assert_parity(model, x, trace(model, x, T=T, static=False)))


class _BmmAttention(nn.Module):
    """Single-head spike attention with ``torch.bmm`` on steps folded into the batch (was
    refused: "op 'torch.bmm'")."""

    def __init__(self):
        super().__init__()
        self.fc, self.lif = nn.Linear(8, 8), neuron.LIFNode(step_mode="m")
        self.attn_lif = neuron.LIFNode(step_mode="m", v_threshold=0.5)

    def forward(self, x):  # [T, B, N, 8]
        t, b, n, c = x.shape
        s = self.lif(self.fc(x)).flatten(0, 1)
        y = torch.bmm(torch.bmm(s, s.transpose(1, 2)), s) * 0.125
        return self.attn_lif(y.reshape(t, b, n, c))


def test_bmm_of_spikes_is_their_matmul():
    torch.manual_seed(0)
    model = _BmmAttention().double().eval()
    with torch.no_grad():
        model.fc.weight.mul_(3.0)
        model.fc.bias.add_(1.5)
    x = torch.rand(T, 3, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert_rates_in_range(assert_parity(model, x, trace(model, x, T=T, static=False)))


class _QKVFirst(nn.Module):
    def __init__(self, read):
        super().__init__()
        self.qkv, self.lif, self.read = nn.Linear(4, 12), neuron.LIFNode(step_mode="m"), read

    def forward(self, x):  # [T, B, N, 4]
        t, b, n, _ = x.shape
        return self.lif(self.read(self.qkv(x).reshape(t, b, n, 3, 4).permute(3, 0, 1, 2, 4)))


@pytest.mark.parametrize("read, reason", [
    (lambda qkv: qkv.sum(0), "moves a per-sample axis ahead of the time and batch axes"),
    (lambda qkv: qkv[0:2].sum(0), "taken only by one position of it"),
    (lambda qkv: qkv[0, :, :, 1], "taken only by one position of it")])
def test_an_axis_moved_first_is_taken_only_by_its_positions(read, reason):
    with pytest.raises(UnsupportedError, match=reason):
        trace(_QKVFirst(read), torch.randn(T, 2, 5, 4), T=T, static=False)


#: a global pooling of spikes over tokens, as model code writes it (each but the mean was
#: refused: 'Tensor.amax', 'Tensor.max', 'torch.max', 'F.adaptive_avg_pool2d')
GLOBAL_POOLS = {"amax": lambda s: s.flatten(3).amax(-1),
                "max-values": lambda s: s.flatten(3).max(-1)[0],
                "torch-max-values": lambda s: torch.max(s.flatten(3), dim=3).values,
                "adaptive-avg-pool": lambda s: F.adaptive_avg_pool2d(s.flatten(0, 1), 1)
                .reshape(*s.shape[:3])}


class _GlobalPool(nn.Module):
    def __init__(self, pool: str):
        super().__init__()
        self.conv, self.lif = nn.Conv2d(2, 6, 3, padding=1), neuron.LIFNode(step_mode="m")
        self.head, self.out_lif = nn.Linear(6, 4), neuron.LIFNode(step_mode="m")
        self.pool = GLOBAL_POOLS[pool]

    def forward(self, x):  # [T, B, 2, 4, 4]
        t, b = x.shape[:2]
        s = self.lif(self.conv(x.flatten(0, 1)).reshape(t, b, 6, 4, 4))
        return self.out_lif(self.head(self.pool(s)))


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
@pytest.mark.parametrize("pool", GLOBAL_POOLS)
def test_global_pooling_of_spikes_as_model_code_writes_it_is_exact(pool, target):
    import snncc

    torch.manual_seed(0)
    model = driven(_GlobalPool(pool).double().eval(), conv=(4.0, 1.2), head=(3.0, 1.5))
    x = torch.rand(T, 3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    report = snncc.check(model, x, target=target, layout="TB")
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target == 0.0
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


@pytest.mark.parametrize("pool, reason", [
    (lambda s: (s * 0.5 + 0.1).flatten(3).amax(-1), "only the max of spikes"),
    (lambda s: s.flatten(3).max(-1)[1].to(s.dtype), "the indices of a max"),
    (lambda s: torch.max(s, s * 0.5).flatten(3).sum(-1), "only over explicit axes of one"),
    (lambda s: s.flatten(3).amax(-1).amax(1, keepdim=True), "reduces over the time or batch")])
def test_a_max_the_graph_cannot_take_is_refused_saying_why(pool, reason):
    GLOBAL_POOLS["refused"] = pool
    try:
        with pytest.raises(UnsupportedError, match=reason):
            trace(_GlobalPool("refused"), torch.rand(T, 2, 2, 4, 4), T=T, static=False)
    finally:
        del GLOBAL_POOLS["refused"]


#: a static image made a sequence of T steps, as model code writes it (the stack and cat of
#: copies were refused: "only stacking the T steps of a loop over time")
ENCODERS = {"stack-copies": lambda x: torch.stack([x] * T),
            "cat-copies": lambda x: torch.cat([x.unsqueeze(0) for _ in range(T)], 0),
            "expand": lambda x: x.unsqueeze(0).expand(T, *x.shape),
            "indexed-repeat": lambda x: x[None].repeat(T, 1, 1)}


class _Encoded(nn.Module):
    def __init__(self, encode: str):
        super().__init__()
        self.fc, self.lif, self.encode = nn.Linear(6, 6), neuron.LIFNode(step_mode="m"), encode

    def forward(self, x):  # [B, 6]
        return self.lif(self.fc(ENCODERS[self.encode](x)))


@pytest.mark.parametrize("encode", ENCODERS)
def test_a_static_image_repeated_over_time_as_model_code_writes_it(encode):
    torch.manual_seed(0)
    model = _Encoded(encode).double().eval()
    with torch.no_grad():
        model.fc.weight.mul_(3.0)
        model.fc.bias.add_(1.0)
    x = torch.rand(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    graph = trace(model, x, T=T, static=True)
    neurons = graph.of_type(ir.Neuron)
    y, spikes = torch_spikes(model, x, {n.path for n in neurons})
    res = Simulator(graph, "float64").run(x.numpy(), T=T, record=True)
    np.testing.assert_array_equal(res.trace["lif"], spikes["lif"])
    assert_rates_in_range(res.firing_rates(graph))


class _TimesAMatrix(nn.Module):
    """``x @ W`` with a parameter W [in, out]: a Linear (a custom projection layer's form)."""

    def __init__(self, transposed: bool = False):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 5))
        self.lif, self.transposed = neuron.LIFNode(step_mode="m"), transposed

    def forward(self, x):
        if self.transposed:  # the constant on the left: not a Linear over the last axis
            return self.lif((self.w.t() @ x.unsqueeze(-1)).squeeze(-1))
        return self.lif(x @ self.w)


def test_a_value_times_a_constant_matrix_is_a_linear():
    """It was refused as 'a constant that broadcasts over the time or batch axis'."""
    import snncc

    torch.manual_seed(0)
    model = _TimesAMatrix().double().eval()
    x = torch.randn(T, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    report = snncc.check(model, x, target="onnx", T=T, layout="TB")
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_sim == 0.0
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})
    with pytest.raises(UnsupportedError, match="operator.matmul"):
        trace(_TimesAMatrix(transposed=True), x.float(), T=T, static=False)


#: the einsums of :class:`_Einsum` (projection, q k^T, attention times v) written three ways:
#: every index named, '...' for the leading axes, and the output left implicit (the '...' axes,
#: then the indices that occur once, sorted)
EINSUMS = {"explicit": ("tbnc,cd->tbnd", "tbhnd,tbhmd->tbhnm", "tbhnm,tbhmd->tbhnd"),
           "ellipsis": ("...c,cd->...d", "...nd,...md->...nm", "...nm,...md->...nd"),
           "implicit": ("...c,cd", "...ij,...kj", "...ij,...jk")}


class _Einsum(nn.Module):
    """A projection and spike attention written with ``torch.einsum`` (2 heads of 4)."""

    def __init__(self, equations=EINSUMS["explicit"]):
        super().__init__()
        self.equations = equations
        self.w = nn.Parameter(torch.randn(6, 8))
        self.qkv = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.lifs = nn.ModuleList(neuron.LIFNode(step_mode="m") for _ in range(5))
        with torch.no_grad():
            for lin in self.qkv:
                lin.weight.mul_(8.0)

    def forward(self, x):
        project, scores, attend = self.equations
        y = self.lifs[0](torch.einsum(project, x, self.w))
        T, B, N = y.shape[:3]
        q, k, v = (self.lifs[i + 1](lin(y)).reshape(T, B, N, 2, 4).permute(0, 1, 3, 2, 4)
                   for i, lin in enumerate(self.qkv))
        att = torch.einsum(scores, q, k)
        return self.lifs[4](torch.einsum(attend, att, v) * 2.0)


@pytest.mark.parametrize("form", sorted(EINSUMS))
def test_einsum_of_two_tensors_is_its_matmul(form):
    """torch.einsum was an unknown op; two operands are permutes, reshapes and one matmul.
    Its '...' and an implicit output were refused (found by tests/fuzz_models.py)."""
    import snncc

    torch.manual_seed(0)
    model = _Einsum(EINSUMS[form]).double().eval()
    x = 2 * torch.randn(T, 3, 5, 6, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1))
    report = snncc.check(model, x, target="onnx", T=T, layout="TB")
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_sim == 0.0
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})
    with pytest.raises(UnsupportedError, match=r"torch.einsum' is not supported \(only two"):
        trace(_EinsumOfThree(), x.float(), T=T, static=False)


class _EinsumOfThree(nn.Module):
    def forward(self, x):
        return torch.einsum("tbnc,tbnc,tbnc->tbnc", x, x, x)


class _EinsumBroadcast(nn.Module):
    def forward(self, x):
        return torch.einsum("...nc,...mc->...nm", x, x[:1])


def test_einsum_that_broadcasts_an_index_is_refused_saying_so():
    x = torch.randn(T, 3, 5, 6)
    with pytest.raises(UnsupportedError, match="different sizes in the two operands"):
        trace(_EinsumBroadcast(), x, T=T, static=False)


def test_the_trace_leaves_no_traced_value_in_the_model():
    """A cell keeping its membrane in a dict it holds (a vendored spikingjelly's ``_memories``)
    and appending spikes to a list: both are as they were after tracing (the dict held the
    trace's proxy, so the model's own forward afterwards computed on it)."""

    class Cell(nn.Module):
        def __init__(self):
            super().__init__()
            self.state, self.history = {"v": 0.0}, []

        def forward(self, x):
            v = self.state["v"] + x
            spikes = (v >= 1.0).float()
            self.state["v"] = v - spikes
            self.history.append(spikes)
            return spikes

    model = nn.Sequential(nn.Linear(4, 4), Cell())
    trace(model, torch.rand(3, 4), T=1)
    assert model[1].state == {"v": 0.0} and model[1].history == []


_SETS_STORAGE = """
import sys, torch
from torch import nn
import snncc
from spikingjelly.activation_based import neuron


class SetsStorage(nn.Module):  # spike_diversity's InPlaceSetSlice does this in forward
    def __init__(self):
        super().__init__()
        self.fc, self.lif, self.T = nn.Linear(4, 4), neuron.LIFNode(step_mode="m"), 4

    def forward(self, x):
        y = self.fc(x.unsqueeze(0).repeat(self.T, 1, 1))
        if isinstance(y, torch.Tensor):
            y = torch.empty(0, dtype=y.dtype).set_(y)
        return self.lif(y)


try:
    snncc.trace(SetsStorage(), torch.rand(2, 4))
except snncc.errors.SnnccError as e:
    print(e)
"""


def test_a_traced_value_handed_to_torchs_cpp_code_is_not_read_as_a_tensor(tmp_path):
    """A traced value is a tensor to the model's ``isinstance`` calls only: torch's C++ code,
    asking the same question when the model passes it ``y`` (``Tensor.set_(y)``), took the
    proxy for a tensor and read its memory as one: a segmentation fault (run in a process of
    its own)."""
    import subprocess
    import sys

    script = tmp_path / "sets_storage.py"  # (a file: isinstance calls are found by source)
    script.write_text(_SETS_STORAGE)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tracing failed in the model's code at" in done.stdout, done.stdout


class CountTimesReal(nn.Module):
    """Two spike maps summed (a count, 0, 1 or 2) times a real-valued map, in either order: an
    integer operand is a count of additions of the other, as spikes are one."""

    def __init__(self, count_first: bool):
        super().__init__()
        self.count_first = count_first
        self.a, self.b = layer.Linear(5, 6, step_mode="m"), layer.Linear(5, 6, step_mode="m")
        self.v = layer.Linear(5, 6, step_mode="m")
        self.lif_a, self.lif_b = neuron.LIFNode(step_mode="m"), neuron.IFNode(step_mode="m")
        self.out = neuron.IFNode(step_mode="m")

    def forward(self, x):  # [T, B, 5]
        count, v = self.lif_a(self.a(x)) + self.lif_b(self.b(x)), self.v(x)
        return self.out(count * v if self.count_first else v * count)


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
@pytest.mark.parametrize("count_first", [True, False], ids=["count*v", "v*count"])
def test_a_count_of_spikes_times_a_real_value_is_exact(count_first, target):
    """Refused before: "at least one operand must be spikes"."""
    torch.manual_seed(0)
    model = driven(CountTimesReal(count_first).double().eval(), a=(2.0, 0.5), b=(2.0, 0.3),
                   v=(2.0, 0.4))
    x = torch.rand(T, 2, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert_exact_check(model, x, target, layout="TB")


def test_a_product_of_two_real_values_is_refused_saying_so():
    class RealTimesReal(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(5, 6), nn.Linear(5, 6)
            self.out = neuron.IFNode(step_mode="m")

        def forward(self, x):
            return self.out(self.a(x) * self.b(x))

    with pytest.raises(UnsupportedError, match="at least one operand must be spikes or a count"):
        trace(RealTimesReal(), torch.rand(T, 2, 5), T=T, static=False)


class TensorOpLIF(nn.Module):
    """A LIF on ``[T, B, ...]`` written with tensor ops (MPBN's ``LIFAct`` without its BN)."""

    def forward(self, y):
        u, out = torch.zeros_like(y[0]), []
        for t in range(y.shape[0]):
            u = 0.25 * u + y[t]
            s = (u > 0.5).to(y.dtype)
            u = u * (1 - s)
            out.append(s)
        return torch.stack(out)


class RepeatedWithoutUnsqueeze(nn.Module):
    """MPBN's and IM-Loss's ``SpikeModel``: a static image made a sequence by
    ``x.repeat(T, 1, 1, 1, 1)`` (torch adds the axis it repeats), a convolution per step, a
    BatchNorm3d of the steps moved among the channels' axes (``myBatchNorm3d``) and a neuron
    written with tensor ops; ``refused``: a tanh before the repeat."""

    def __init__(self, refused: bool = False):
        super().__init__()
        self.refused = refused
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm3d(8)
        self.short, self.lif = nn.BatchNorm3d(8), TensorOpLIF()

    def forward(self, x):
        x = (torch.tanh(x) if self.refused else x).repeat(T, 1, 1, 1, 1)
        y = torch.stack([self.conv(x[t]) for t in range(T)])
        y = self.bn(y.permute(1, 2, 0, 3, 4)).permute(2, 0, 1, 3, 4)
        y = y + self.short(y.permute(1, 2, 0, 3, 4)).permute(2, 0, 1, 3, 4)
        return self.lif(y).mean(0)


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_a_static_image_repeated_with_an_axis_added_is_the_image_at_every_step(target):
    """Refused before ("only a static value's unit axis ... can be repeated T times"), which
    MPBN's, IM-Loss's and Ternary-Spike's official models all met."""
    torch.manual_seed(0)
    model = RepeatedWithoutUnsqueeze().double().eval()
    randomize_batchnorms(model, np.random.default_rng(0))
    x = 2 * torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)
    assert_exact_check(model, x, target)


def test_an_op_refused_upstream_of_a_lazy_value_is_the_one_named():
    """The residual of two steps-moved BatchNorms after a refused op named the addition ("it
    moves a per-sample axis ahead of the time and batch axes"), not the op it came from."""
    with pytest.raises(UnsupportedError, match=r"^op 'torch.tanh' is not supported, at .*test_tracer.py:\d+$"):
        trace(RepeatedWithoutUnsqueeze(refused=True).double(),
              torch.rand(2, 3, 6, 6, dtype=torch.float64), T=T)


class AmplitudeAndCeilPools(nn.Module):
    """Real-Spike's ``LearnableSpike``, spikes times a per-channel amplitude written
    ``s * self.bias.expand_as(s)``, then MPBN's ``AvgDown`` shortcut and a max pooling with
    ``ceil_mode=True`` on even sizes (where it changes nothing), module or function."""

    def __init__(self, functional_pools: bool):
        super().__init__()
        self.functional_pools = functional_pools
        self.conv = layer.Conv2d(3, 8, 3, padding=1, step_mode="m")
        self.lif, self.out = neuron.IFNode(step_mode="m"), neuron.IFNode(step_mode="m")
        self.amplitude = nn.Parameter(torch.rand(1, 1, 8, 1, 1) + 0.5)
        self.conv2 = layer.Conv2d(8, 4, 3, padding=1, step_mode="m")
        self.avg = layer.AvgPool2d(2, ceil_mode=True, count_include_pad=False, step_mode="m")
        self.max = layer.MaxPool2d(2, ceil_mode=True, step_mode="m")

    def forward(self, x):  # [T, B, 3, 8, 8]
        s = self.lif(self.conv(x))
        s = self.conv2(s * self.amplitude.expand_as(s))
        if self.functional_pools:
            y = s.flatten(0, 1)
            y = F.avg_pool2d(y, 2, ceil_mode=True) + F.max_pool2d(y, 2, ceil_mode=True)
            return self.out(y.unflatten(0, s.shape[:2]))
        return self.out(self.avg(s) + self.max(s))


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
@pytest.mark.parametrize("functional_pools", [False, True], ids=["modules", "functions"])
def test_an_expanded_amplitude_and_pools_whose_ceil_mode_changes_nothing_are_exact(
        functional_pools, target):
    """Both were refused ("op 'Tensor.expand_as' is not supported"; "ceil_mode ... not
    supported"), found on the official code of Real-Spike and MPBN."""
    torch.manual_seed(0)
    model = driven(AmplitudeAndCeilPools(functional_pools).double().eval(), conv=(2.0, 0.3),
                   conv2=(1.0, 0.4))
    x = torch.rand(T, 2, 3, 8, 8, generator=torch.Generator().manual_seed(1),
                   dtype=torch.float64)
    assert_exact_check(model, x, target, layout="TB")


class SumPool2d(nn.LPPool2d):
    """sinabs' ``SumPool2d`` (sinabs.layers.pool2d): an ``LPPool2d`` of norm 1 calling
    ``F.lp_pool2d`` in its own forward."""

    def __init__(self, kernel_size):
        super().__init__(1, kernel_size)

    def forward(self, x):
        return F.lp_pool2d(x, 1, self.kernel_size, self.stride, self.ceil_mode)


class SumPooled(nn.Module):
    def __init__(self, pool: nn.Module):
        super().__init__()
        self.conv, self.pool = layer.Conv2d(3, 4, 3, padding=1, step_mode="m"), pool
        self.lif, self.out = neuron.IFNode(step_mode="m"), neuron.IFNode(2.0, step_mode="m")

    def forward(self, x):  # [T, B, 3, 6, 6]
        s = self.lif(self.conv(x))
        return self.out(self.pool(s.flatten(0, 1)).unflatten(0, s.shape[:2]))


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
@pytest.mark.parametrize("pool", [nn.LPPool2d(1, 2), nn.LPPool2d(1.0, 3, 1), SumPool2d(2)],
                         ids=["module", "kernel-3-stride-1", "sinabs-function"])
def test_a_sum_pooling_written_as_an_lp_pool_of_norm_1_is_exact(pool, target):
    """sinabs' SumPool2d and ``nn.LPPool2d(1, k)`` (torch: the average times the window's
    size) were refused ("op 'LPPool2d' is not supported")."""
    torch.manual_seed(0)
    model = driven(SumPooled(pool).double().eval(), conv=(2.0, 0.2))
    x = torch.rand(T, 2, 3, 6, 6, generator=torch.Generator().manual_seed(1),
                   dtype=torch.float64)
    assert_exact_check(model, x, target, layout="TB")


def test_an_lp_pool_of_another_norm_is_refused_naming_it():
    with pytest.raises(UnsupportedError, match=r"module 'pool': op 'LPPool2d' is not supported "
                                                r"\(a norm of 2; norm 1, a sum pooling"):
        trace(SumPooled(nn.LPPool2d(2, 2)), torch.rand(T, 2, 3, 6, 6), T=T, static=False)


def test_a_ceil_mode_pool_overhanging_its_input_is_refused_saying_so():
    model = nn.Sequential(layer.AvgPool2d(2, ceil_mode=True, step_mode="m"),
                          neuron.IFNode(step_mode="m"))
    with pytest.raises(UnsupportedError, match=r"ceil_mode adds a window overhanging the input "
                                               r"\(output \(4, 4\), \(3, 3\) without it\)"):
        trace(model, torch.rand(T, 2, 3, 7, 7), T=T, static=False)


class NumpyStyleArguments(nn.Module):
    """``axis=`` and ``keepdims=`` for ``dim=`` and ``keepdim=``, which torch also takes
    (j-blake-s/FinalSpikFormerRepo's SpikeViT: ``qkv.chunk(3, axis=-1)``)."""

    def __init__(self):
        super().__init__()
        self.fc, self.lif = layer.Linear(4, 12, step_mode="m"), neuron.LIFNode(step_mode="m")
        self.fc2, self.out = layer.Linear(4, 4, step_mode="m"), neuron.IFNode(step_mode="m")

    def forward(self, x):  # [T, B, 4]
        q, k, v = self.lif(self.fc(x)).chunk(3, axis=-1)
        both = torch.cat([q, k], axis=-1).reshape(*q.shape[:2], 2, 4).sum(axis=2)
        return self.out(self.fc2(both + v.sum(axis=-1, keepdims=True)))


@pytest.mark.parametrize("target", ["sim", "onnx"])
def test_numpy_style_argument_names_are_torchs(target):
    """Each was an internal TypeError ("_chunk() got an unexpected keyword argument 'axis'"), or
    a shape of the concatenation that the graph did not have."""
    torch.manual_seed(0)
    model = driven(NumpyStyleArguments().double().eval(), fc=(4.0, 0.8), fc2=(1.0, 0.2))
    x = torch.rand(T, 2, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert_exact_check(model, x, target, layout="TB")


def test_a_constant_indexed_by_traced_values_and_a_neuron_driven_by_constants_say_so():
    """SparseSpikformer's pruning (``prev_decision[indices]`` with argsort's indices of a
    traced score) was an internal TypeError; SpikeViT's learned tokens through a neuron said
    only "a neuron's input must be a per-step tensor"."""
    class Pruned(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif = layer.Linear(6, 6, step_mode="m"), neuron.IFNode(step_mode="m")
            self.keep = nn.Parameter(torch.ones(6))

        def forward(self, x):  # [T, B, 6]
            s = self.lif(self.fc(x))
            return (torch.ones_like(s) * self.keep)[s > 0].sum()

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.tokens = nn.Parameter(torch.rand(T, 1, 6))
            self.lif, self.out = neuron.IFNode(step_mode="m"), neuron.IFNode(step_mode="m")

        def forward(self, x):  # [T, B, 6]
            return self.out(x + self.lif(self.tokens.expand(-1, x.shape[1], -1)))

    with pytest.raises(UnsupportedError, match=r"a constant indexed by values computed from the "
                                               r"input \(a selection"):
        trace(Pruned(), torch.rand(T, 2, 6), T=T, static=False)
    with pytest.raises(UnsupportedError, match=r"module 'lif': op 'IFNode' is not supported \(its "
                                               r"input does not depend on the model's input"):
        trace(Tokens(), torch.rand(T, 2, 6), T=T, static=False)


class GatedLIFStyle(nn.Module):
    """CAS-CLab/Gated-LIF's neuron loop: spikes written step by step into zeros made in forward
    (``out[step] = ...``), the step before read back from it (``out[max(step - 1, 0)]``), the
    spikes cast with ``.to(x)`` (x's dtype, x the whole sequence)."""

    def forward(self, x):  # [T, B, C]
        u, out = torch.zeros(x.shape[1:], dtype=x.dtype), torch.zeros(x.shape, dtype=x.dtype)
        for step in range(x.shape[0]):
            u = 0.5 * u * (1 - out[max(step - 1, 0)]) + x[step]
            out[step] = (u - 0.5 > 0).to(x)
        return out


class GatedLIFNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.lif = layer.Linear(6, 8, step_mode="m"), GatedLIFStyle()
        self.fc2, self.out = layer.Linear(8, 4, step_mode="m"), neuron.IFNode(step_mode="m")

    def forward(self, x):
        return self.out(self.fc2(self.lif(self.fc(x))))


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_a_sequence_read_back_step_by_step_and_cast_like_another_tensor_is_exact(target):
    """Reading ``out[step - 1]`` back was an internal TypeError ("'Assembled' object is not
    subscriptable"), and ``.to(x)`` took x's shape for the cast's ("a product with (constant -
    tensor) that broadcasts"): found on GLIF's official code."""
    torch.manual_seed(0)
    model = driven(GatedLIFNet().double().eval(), fc=(3.0, 0.3), fc2=(2.0, 0.3))
    x = torch.rand(T, 2, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert_exact_check(model, x, target, layout="TB")


class DividingBatchNorm(nn.BatchNorm2d):
    """The ``tdBatchNorm`` many SNN repositories copy (CAS-CLab/Gated-LIF's, in eval):
    ``alpha * Vth * (x - mean) / sqrt(var + eps) * weight + bias``, a division by a constant
    per-channel tensor."""

    def forward(self, x):
        mean, var = self.running_mean[None, :, None, None], self.running_var[None, :, None, None]
        y = 0.5 * (x - mean) / torch.sqrt(var + self.eps)
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


class DividedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = layer.SeqToANNContainer(nn.Conv2d(3, 8, 3, padding=1), DividingBatchNorm(8))
        self.lif = neuron.LIFNode(step_mode="m", v_threshold=0.5)
        self.head = layer.Linear(8, 3, step_mode="m")
        self.out = neuron.IFNode(step_mode="m")

    def forward(self, x):
        s = self.lif(self.conv(x.unsqueeze(0).repeat(T, 1, 1, 1, 1)))
        return self.out(self.head(s.mean((-2, -1)) / 3.0))


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_a_division_by_a_constant_is_the_quotient_on_every_target(target):
    """Refused before ("division by a tensor is not exactly a multiplication (only powers of
    two are)"): a Divide node, the IEEE quotient on every target (1/3 and 1/sqrt(var + eps)
    would round differently as factors)."""
    import snncc

    torch.manual_seed(0)
    model = DividedNet().double().eval()
    randomize_batchnorms(model, np.random.default_rng(0), positive_bias=True)
    driven(model, head=(4.0, 0.9))
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert_exact_check(model, x, target)
    assert len(snncc.trace(model, x, T=T).of_type(ir.Divide)) == 2


class PointNetNorm(nn.Module):
    """Spiking PointNet's ``SpikeBatchNorm``: an eval BatchNorm1d of ``[T, B, C]`` with its time
    axis moved last, ``bn(x.permute(1, 2, 0)).permute(2, 0, 1)`` (refused before: "it moves
    the time axis last, which only a mean or sum over that axis may read")."""

    def __init__(self):
        super().__init__()
        self.fc, self.bn = layer.Linear(6, 8, step_mode="m"), nn.BatchNorm1d(8)
        self.lif = neuron.LIFNode(step_mode="m")

    def forward(self, x):
        return self.lif(self.bn(self.fc(x).permute(1, 2, 0)).permute(2, 0, 1).contiguous())


@pytest.mark.parametrize("target", ["sim", "onnx"])
def test_a_batch_norm_of_the_time_axis_moved_last_is_exact(target):
    torch.manual_seed(0)
    model = randomize_batchnorms(PointNetNorm().double().eval(), np.random.default_rng(0),
                                 positive_bias=True)
    x = 2 * torch.randn(T, 3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert_exact_check(model, x, target, layout="TB")


class _Scripted(torch.jit.ScriptModule):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    @torch.jit.script_method
    def forward(self, x):
        return self.fc(x)


def test_a_torchscript_submodule_is_refused_naming_it():
    """SpikeGPT's RWKV blocks are ``torch.jit.ScriptModule``s: an internal AttributeError
    before."""
    model = nn.Sequential(_Scripted(), neuron.IFNode(step_mode="m")).double()
    with pytest.raises(UnsupportedError, match=r"module '0': a TorchScript module \(_Scripted"):
        trace(model, torch.rand(T, 2, 6, dtype=torch.float64), T=T, static=False)


class TiledFeatures(nn.Module):
    """``y.repeat(1, 1, 2)`` and a 2-D map's rows tiled, ``s.repeat(1, 1, 1, 3, 1)``: per-sample
    axes tiled (refused before, as if the repeat were over time; spikingjelly's population
    encoders)."""

    def __init__(self):
        super().__init__()
        self.fc, self.lif = layer.Linear(3, 5, step_mode="m"), neuron.IFNode(step_mode="m")
        self.fc2, self.lif2 = layer.Linear(10, 4, step_mode="m"), neuron.IFNode(step_mode="m")

    def forward(self, x):
        s = self.lif(self.fc(x))
        tiled = s.unsqueeze(-2).repeat(1, 1, 3, 1).sum(-2)  # (each row 3 times)
        return self.lif2(self.fc2(tiled.repeat(1, 1, 2)))


@pytest.mark.parametrize("target", ["sim", "onnx", "lava"])
def test_per_sample_axes_tiled_by_repeat_are_gathers(target):
    torch.manual_seed(0)
    model = driven(TiledFeatures().double().eval(), fc=(2.0, 0.2), fc2=(2.0, 0.0))
    x = torch.rand(T, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert_exact_check(model, x, target, layout="TB")


class PopulationCode(nn.Module):
    """A population encoder (spikingjelly's RL examples): each observation against the means of
    its population, ``(obs.unsqueeze(-1) - self.mean) * self.gain``, a constant that widens the
    value's unit axis (refused before, blaming the layer after it)."""

    def __init__(self):
        super().__init__()
        self.mean = nn.Parameter(torch.linspace(-2, 2, 4).repeat(3, 1))
        self.gain = nn.Parameter(torch.tensor([[1.5], [-1.0], [2.0]]).expand(3, 4).clone())
        self.lif = neuron.IFNode(step_mode="m")
        self.fc, self.lif2 = layer.Linear(12, 5, step_mode="m"), neuron.IFNode(step_mode="m")

    def forward(self, obs):
        a = ((obs.unsqueeze(-1) - self.mean) * self.gain).flatten(1)
        s = self.lif(a.unsqueeze(0).repeat(T, 1, 1))
        return self.lif2(self.fc(s)).mean(0)


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_a_constant_that_widens_a_unit_axis_is_the_value_copied(target):
    torch.manual_seed(0)
    model = driven(PopulationCode().double().eval(), fc=(2.0, 0.3))
    x = 2 * torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert_exact_check(model, x, target)
