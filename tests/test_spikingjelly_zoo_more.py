"""The rest of spikingjelly 2.0's model package (``spikingjelly.activation_based.model``), beside
the transformers and ResNet-18s of ``test_spikingjelly_models.py``: spiking VGGs (their
``AdaptiveAvgPool2d((7, 7))`` on a 1x1 map is a copy of cells), the parametric-LIF nets, SNASNet
(forward and backward cells: its t-1 edges are Delay cycles), SpikeDHS, the bottleneck ResNets,
and a sweep over every constructor name of the package that builds on the CPU: each traces and
gives the library's own spikes at every neuron in the simulator, or is refused with the
reason expected.

Every exact case is float64 with randomised BN; spikes are compared at every neuron against the
library's forward (firing rates in [5%, 95%]), on the simulator, onnxruntime (unrolled and step
models) and the NIR round trip, and on Lava for the small graphs (SNASNet's backward cell runs
dilated there: its loops pass more convolutions than delay steps). The large cases are marked
slow. See ``test_spikingjelly_models.py`` for why torchvision is stood in for."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from snncc import ir
from snncc.errors import UnsupportedError
from snncc.frontends.adapters.spikingjelly import provide_weight_loader_without_torchvision
from snncc.frontends.tracer import trace
from snncc.frontends.zoo import randomize_bn
from snncc.simulator import simulate
from snncc.targets import get_target

from conftest import assert_rates_in_range
from conftest import library_spikes
from test_spikingjelly_models import assert_spikes, last_step, output_of

T = 4
pytest.importorskip("spikingjelly.activation_based")

provide_weight_loader_without_torchvision()
from spikingjelly.activation_based import functional, layer, neuron  # noqa: E402
from spikingjelly.activation_based import model as sj_model  # noqa: E402
from spikingjelly.activation_based.model import (  # noqa: E402
    masnn, maxformer, ms_resnet, parametric_lif_net, qkformer, sew_resnet, snas_net, spike_dhs,
    spike_driven_transformer, spikformer, spiking_resnet, spiking_vgg, spiking_vggws_ottt)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image(seed: int = 0, channels: int = 3, size: int = 32, scale: float = 2.0):
    return scale * torch.randn(2, channels, size, size, generator=_gen(seed), dtype=torch.float64)


def _repeated(x: torch.Tensor, steps: int = T) -> torch.Tensor:
    return x.unsqueeze(0).repeat(steps, 1, 1, 1, 1)


def _events(seed: int = 0, channels: int = 2, size: int = 128, steps: int = T, p: float = 0.3):
    """A DVS-like 0/1 event sequence [T, B, C, H, W]."""
    u = torch.rand(steps, 2, channels, size, size, generator=_gen(seed), dtype=torch.float64)
    return (u < p).double()


def _multi_step(model):
    functional.set_step_mode(model, "m")
    return model


class _Logits(torch.nn.Module):
    """SpikeDHS returns ``(logits, auxiliary logits or None)`` and expands its image over time
    with ``input.expand(T, -1, -1, -1, -1)``: this passes the image as ``[1, B, ...]`` (which
    that expand takes as it takes ``[B, ...]``) and returns the logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.unsqueeze(0))[0]


def _snas_args(celltype: str) -> SimpleNamespace:
    """The fields of SNASNet's ``args`` its constructor reads (the paper's CIFAR-10 setting:
    threshold 1, tau 4/3, second average pooling 2)."""
    return SimpleNamespace(dataset="cifar10", celltype=celltype, timestep=T, second_avgpooling=2,
                           threshold=1.0, tau=4.0 / 3.0)


# SNASNet cells (con_mat[row, col]: 0 zero, 1 skip, 2 LIF-conv1x1-BN, 3 LIF-conv3x3-BN,
# 4 avgpool3x3); the backward cell adds edges row > col, fed back from step t-1. 1x1 convs keep
# the 256/512-channel cells cheap.
SNAS_FORWARD = torch.tensor([[0, 2, 1, 0], [0, 0, 2, 4], [0, 0, 0, 2], [0, 0, 0, 0]])
SNAS_BACKWARD = torch.tensor([[0, 2, 1, 0], [2, 0, 2, 4], [0, 3, 0, 2], [0, 0, 2, 0]])


def _spike_dhs(num_layers: int, filters: int):
    """SpikeDHS with its own ``args``: 3 nodes per cell (its cell_arch has 3 ops), 3 of them
    concatenated; the classifier takes 576 channels = 3 * filters * 2**level of the last cell."""
    args = SimpleNamespace(fea_step=3, fea_num_layers=num_layers, fea_block_multiplier=3,
                           fea_filter_multiplier=filters)
    return spike_dhs.SpikeDHS(init_channels=3, args=args)


PLIF = dict(spiking_neuron=neuron.ParametricLIFNode, v_threshold=0.2)
# the parametric-LIF nets' fully connected layers have no BN: a threshold of 0.2 (a keyword of
# the constructor, passed to every neuron) and BN biases around 0 keep every layer in range
PLIF_BN = {"*": {"bias_range": (-0.2, 0.2)}}
# name -> (builder, input maker, static, BN overrides)
CASES = {
    "plif_mnist": (lambda: _multi_step(parametric_lif_net.MNISTNet(channels=8, **PLIF)),
                   lambda: _repeated(_image(0, 1, 28)), False, PLIF_BN),
    "plif_fashion_mnist": (
        lambda: _multi_step(parametric_lif_net.FashionMNISTNet(channels=8, **PLIF)),
        lambda: _repeated(_image(1, 1, 28)), False, PLIF_BN),
    "plif_nmnist": (lambda: _multi_step(parametric_lif_net.NMNISTNet(channels=8, **PLIF)),
                    lambda: _events(0, 2, 34), False, PLIF_BN),
    "plif_cifar10": (lambda: _multi_step(parametric_lif_net.CIFAR10Net(channels=8, **PLIF)),
                     lambda: _repeated(_image(0)), False, PLIF_BN),
    "plif_cifar10_dvs": (
        lambda: _multi_step(parametric_lif_net.CIFAR10DVSNet(channels=8, **PLIF)),
        lambda: _events(1), False, PLIF_BN),
    "plif_dvs_gesture": (
        lambda: _multi_step(parametric_lif_net.DVSGestureNet(channels=8, **PLIF)),
        lambda: _events(2), False, PLIF_BN),
    # SpikingVGG with a small cfg: 8 px -> 1x1 before avgpool (7x7 copies of one cell), and
    # 28 px -> 7x7 (the pool is the identity); the classifier is the class's own, full width
    "vgg_small_bn_1x1": (
        lambda: _multi_step(spiking_vgg.SpikingVGG(
            [16, "M", 32, "M", 512, "M"], batch_norm=True, num_classes=10,
            spiking_neuron=neuron.IFNode)),
        lambda: _repeated(_image(0, size=8)), False, None),
    "vgg_small_7x7": (
        lambda: _multi_step(spiking_vgg.SpikingVGG(
            [16, "M", 512, "M"], num_classes=10, spiking_neuron=neuron.IFNode,
            v_threshold=0.25)),
        lambda: _repeated(_image(0, size=28)), False, None),
    "spiking_vgg11_bn": (
        lambda: _multi_step(spiking_vgg.spiking_vgg11_bn(num_classes=10,
                                                         spiking_neuron=neuron.IFNode)),
        lambda: _repeated(_image(0)), False, None),
    # without BN, kaiming-initialised convs keep spiking through 8 layers at v_threshold 0.25
    "spiking_vgg11": (
        lambda: _multi_step(spiking_vgg.spiking_vgg11(
            num_classes=10, spiking_neuron=neuron.IFNode, v_threshold=0.25)),
        lambda: _repeated(_image(0)), False, None),
    "snasnet_forward": (lambda: snas_net.SNASNet(_snas_args("forward"), SNAS_FORWARD),
                        lambda: _image(0), True, None),
    "snasnet_backward": (lambda: snas_net.SNASNet(_snas_args("backward"), SNAS_BACKWARD),
                         lambda: _image(0), True, None),
    # two cells at level 0: no cell resamples
    "spike_dhs": (lambda: _Logits(_multi_step(_spike_dhs(2, 192))),
                  lambda: _image(0, size=4), True, None),
    # eight cells: the third resamples from level 0 to 1 with a SeqToANNContainer(Nearest) it
    # makes in forward (not a submodule: fx's internal NameError, which this file expected)
    "spike_dhs_resampling": (lambda: _Logits(_multi_step(_spike_dhs(8, 48))),
                             lambda: _image(0, size=8), True, {"*": {"bias_range": (0.2, 0.6)}}),
    "spiking_resnet50": (
        lambda: _multi_step(spiking_resnet.spiking_resnet50(
            num_classes=10, spiking_neuron=neuron.LIFNode, tau=2.0)),
        lambda: _repeated(_image(0)), False, None),
    "sew_resnet50": (
        lambda: _multi_step(sew_resnet.sew_resnet50(
            cnf="ADD", num_classes=10, spiking_neuron=neuron.IFNode, detach_reset=True)),
        lambda: _repeated(_image(0)), False, None),
}
# time steps where the model fixes them itself (SpikeDHS repeats its image 6 times)
STEPS = {"spike_dhs": 6, "spike_dhs_resampling": 6}
TARGETS = ("sim", "onnx", "nir", "lava")
# (name, target) pairs of the default run; everything else is slow
FAST = {
    *((n, t) for n in CASES if n.startswith("plif_") for t in ("sim", "onnx", "nir")),
    ("plif_mnist", "lava"), ("plif_cifar10_dvs", "lava"),
    ("vgg_small_bn_1x1", "sim"), ("spiking_vgg11_bn", "sim"),
    ("snasnet_forward", "sim"), ("spike_dhs", "sim"), ("spike_dhs", "onnx"),
    ("spike_dhs_resampling", "sim"), ("spike_dhs_resampling", "onnx"),
    ("spiking_resnet50", "sim"),
}
PAIRS = [pytest.param(n, t, id=f"{n}-{t}", marks=() if (n, t) in FAST else pytest.mark.slow)
         for n in CASES for t in TARGETS]


def _build(name: str, seed: int = 0):
    builder, make_input, static, overrides = CASES[name]
    torch.manual_seed(seed)
    model = builder().double().eval()
    randomize_bn(model, seed, overrides=overrides)
    return model, make_input(), static


@pytest.fixture(scope="module")
def traced():
    """name -> (graph, input, steps, float64 simulation, library spikes by node, library
    output); keeps only the latest model (the VGG classifiers hold 120M float64 weights)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            cache.clear()
            model, x, static = _build(name)
            steps = STEPS.get(name, T)
            g = trace(model, x, T=steps, static=static, name=name)
            neurons = g.of_type(ir.Neuron)
            y, spikes = library_spikes(model, x, {n.path for n in neurons}, functional.reset_net)
            batch = x.shape[0] if static else x.shape[1]
            ref = {n.name: spikes[n.path].reshape(steps, batch, *n.shape) for n in neurons}
            del model
            xs = x.numpy()
            cache[name] = g, xs, steps, simulate(g, xs, steps, record=True), ref, y
        return cache[name]
    return get


@pytest.mark.parametrize("name, target", PAIRS)
def test_equals_library(traced, tmp_path, name, target):
    g, x, steps, res, ref, y = traced(name)
    if target == "sim":
        assert_spikes(res.trace, ref)
        got = res.output_sequence if g.meta["output_layout"] == "TB" else res.outputs
        np.testing.assert_allclose(output_of(g, got), y, rtol=0, atol=1e-10)
        assert_rates_in_range({k: float(v.mean()) for k, v in ref.items()})
    elif target == "onnx":
        from snncc.backends.onnx.runner import run_onnx

        path = get_target("onnx").emit(g, tmp_path / "m", dtype="float64")
        for form in ("unrolled", "step"):
            outputs, traces = run_onnx(path, x, form=form)
            assert_spikes(traces, ref)
            np.testing.assert_allclose(output_of(g, outputs), last_step(g, y), rtol=1e-9,
                                       atol=1e-9)
    elif target == "nir":
        from snncc.frontends.nir_reader import read_nir

        back = read_nir(get_target("nir").emit(g, tmp_path / "m.nir"))
        back_res = simulate(back, x, steps, record=True)
        assert_spikes(back_res.trace, ref)
        np.testing.assert_allclose(output_of(back, back_res.outputs), last_step(g, y),
                                   rtol=1e-9, atol=1e-9)
    else:
        from snncc.backends.lava.artifact import emit
        from snncc.backends.lava.runner import run_artifact
        from snncc.pipeline import run_passes

        compiled = run_passes(g, list(get_target("lava").default_passes), log=lambda s: None)
        lava = run_artifact(emit(compiled, tmp_path / "lava"), x, steps)
        assert_spikes(lava["trace"], ref)
        (out,) = lava["outputs"].values()
        np.testing.assert_allclose(out, last_step(g, y), rtol=1e-12, atol=1e-12)


def test_snasnet_backward_recurrence_runs_dilated_on_lava(traced):
    """Its t-1 edges are Delay cycles through more convolutions than delay steps (three in one
    step on its longest loop), which Lava's latency planner used to refuse: the network now
    takes 3 Lava steps per IR step (its spikes on Lava: ``snasnet_backward-lava``, slow)."""
    from snncc.pipeline import run_passes

    g = traced("snasnet_backward")[0]
    assert g.of_type(ir.Delay), "the backward cell's t-1 edges are Delay cycles"
    compiled = run_passes(g, list(get_target("lava").default_passes), log=lambda s: None)
    assert compiled.meta["latency"]["dilation"] == 3


# ------------------------------------------------------------------ adaptive average pooling

def _pool_net(out_size, pool=layer.AdaptiveAvgPool2d, channels: int = 4):
    cells = int(np.prod(out_size))
    return _multi_step(torch.nn.Sequential(
        layer.Conv2d(3, channels, 3, padding=1), neuron.IFNode(), pool(out_size),
        layer.Flatten(), layer.Linear(channels * cells, 6), neuron.IFNode())).double().eval()


@pytest.mark.parametrize("size, out_size, ops", [
    (1, (7, 7), {"Reshape", "Linear"}),   # one cell copied to every output cell
    (2, (4, 6), {"Reshape", "Linear"}),   # each cell copied to a 2x3 block
    (3, (3, 3), set()),                   # the same size: the identity
    (4, (2, 2), {"AvgPool2d"}),           # a divisor: a fixed-kernel pool
    (4, (1, 1), {"Mean"}),                # global
])
def test_adaptive_avgpool_where_it_is_exact(size, out_size, ops):
    model = _pool_net(out_size)
    x = _repeated(_image(3, size=size))
    g = trace(model, x, T=T, static=False)
    pool_ops = {n.op for n in g.nodes.values() if n.path == "2"}
    assert pool_ops == ops
    with torch.no_grad():
        y = model(x).numpy()
    functional.reset_net(model)
    res = simulate(g, x.numpy(), T)
    np.testing.assert_array_equal(output_of(g, res.output_sequence), y)


def test_adaptive_avgpool1d_replicates_cells():
    model = _multi_step(torch.nn.Sequential(
        layer.Linear(5, 3), neuron.IFNode(), layer.AdaptiveAvgPool1d(6),
        layer.Linear(6, 2), neuron.IFNode())).double().eval()
    x = 2 * torch.randn(T, 2, 4, 5, generator=_gen(4), dtype=torch.float64)
    g = trace(model, x, T=T, static=False)
    with torch.no_grad():
        y = model(x).numpy()
    functional.reset_net(model)
    np.testing.assert_array_equal(output_of(g, simulate(g, x.numpy(), T).output_sequence), y)


@pytest.mark.parametrize("size, out_size", [(2, (3, 3)), (4, (3, 3)), (4, (2, 8))])
def test_adaptive_avgpool_that_averages_unequal_cells_is_refused(size, out_size):
    with pytest.raises(UnsupportedError, match=r"module '2': op 'AdaptiveAvgPool2d' .*neither "
                                               r"divides .* use nn.AvgPool2d"):
        trace(_pool_net(out_size), _repeated(_image(0, size=size)), T=T, static=False)


def test_vgg_at_a_size_where_avgpool_averages_unequal_cells_is_refused():
    """64 px: a 2x2 map before the 7x7 pool."""
    model = _multi_step(spiking_vgg.spiking_vgg11_bn(num_classes=10,
                                                     spiking_neuron=neuron.IFNode)).double()
    with pytest.raises(UnsupportedError, match=r"module 'avgpool': op 'AdaptiveAvgPool2d'"):
        trace(model, _repeated(_image(0, size=64)), T=T, static=False)


# ------------------------------------------------------------------------------- SpikeDHS


# ------------------------------------------------------------ every constructor of the package

def _constructors() -> list[tuple[str, str]]:
    """(module, name) of every model constructor of the package: the builder functions and the
    model classes whose arguments all have defaults (the others are built by a function)."""
    found = []
    for module in (spiking_resnet, sew_resnet, spiking_vgg, spiking_vggws_ottt, ms_resnet,
                   masnn, maxformer, qkformer, spike_driven_transformer, spikformer,
                   parametric_lif_net, snas_net, spike_dhs):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj) or (inspect.isclass(obj) and issubclass(
                    obj, torch.nn.Module) and obj.__module__ == module.__name__ and all(
                    p.default is not p.empty or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
                    for p in list(inspect.signature(obj).parameters.values()))):
                found.append((module.__name__.rsplit(".", 1)[1], name))
    return found


def _sweep_case(module: str, name: str):
    """(model, input, static, expected refusal or None) for a constructor at its own defaults,
    with the neuron it needs and 10 classes where it takes them, at 32 px."""
    fn = getattr(sj_model, module).__dict__[name]
    if module == "spiking_resnet":
        return _multi_step(fn(num_classes=10, spiking_neuron=neuron.LIFNode, tau=2.0)), \
            _repeated(_image(0)), False, None
    if module == "sew_resnet":
        return _multi_step(fn(cnf="ADD", num_classes=10, spiking_neuron=neuron.IFNode,
                              detach_reset=True)), _repeated(_image(0)), False, None
    if module == "spiking_vgg":
        kw = {} if name.endswith("_bn") else {"v_threshold": 0.25}
        return _multi_step(fn(num_classes=10, spiking_neuron=neuron.IFNode, **kw)), \
            _repeated(_image(0)), False, None
    if module == "spiking_vggws_ottt":  # single-step (online) VGGs of OTTT neurons
        return fn(num_classes=10), _image(0), True, "OTTTLIFNode has no exact canonical form"
    if module == "masnn":
        if name in ("MASNN", "masnn_dvs128_gesture"):  # temporal attention needs T >= 5
            return fn(T=5), _events(0, 2, 32, steps=5), False, "op 'torch.sigmoid'"
        return fn(T=T, num_classes=10), _image(0), True, "op 'AdaptiveAvgPool3d'"
    if module in ("ms_resnet", "maxformer", "qkformer", "spike_driven_transformer",
                  "spikformer"):
        return fn(T=T, num_classes=10), _image(0), True, None
    if module == "parametric_lif_net":
        inputs = {"MNISTNet": _repeated(_image(0, 1, 28)),
                  "FashionMNISTNet": _repeated(_image(0, 1, 28)),
                  "NMNISTNet": _events(0, 2, 34), "CIFAR10Net": _repeated(_image(0)),
                  "CIFAR10DVSNet": _events(0), "DVSGestureNet": _events(0)}
        return _multi_step(fn(channels=8, **PLIF)), inputs[name], False, None
    if module == "snas_net":
        return fn(_snas_args("backward"), SNAS_BACKWARD), _image(0), True, None
    assert (module, name) == ("spike_dhs", "SpikeDHS"), f"no case for {module}.{name}"
    return _Logits(_multi_step(_spike_dhs(2, 192))), _image(0, size=4), True, None


# SNASNet and SpikeDHS need an ``args`` object (built above); spike_dhs's __all__ names its
# layers and surrogate function, not SpikeDHS
CONSTRUCTORS = [c for c in _constructors() if c[0] != "spike_dhs"] + [
    ("snas_net", "SNASNet"), ("spike_dhs", "SpikeDHS")]
# full-size transformers (their default depth and width): exact, but with this BN
# randomisation some deep residual layers fire in more than 95% of steps
SATURATING = {"maxformer_10_384", "MaxFormer", "qkformer_10_384", "QKFormer", "sdt_8_384",
              "SpikeDrivenTransformer"}
FAST_CONSTRUCTORS = {"sew_resnet18", "spiking_resnet18", "MSResNet", "spikformer_ti",
                     "Spikformer", "MNISTNet", "DVSGestureNet", "att_ms_resnet18",
                     "ottt_spiking_vgg11"}


@pytest.mark.parametrize("module, name", [
    pytest.param(m, n, id=n, marks=() if n in FAST_CONSTRUCTORS else pytest.mark.slow)
    for m, n in CONSTRUCTORS])
def test_every_constructor_traces_exactly_or_is_refused(module, name):
    torch.manual_seed(0)
    model, x, static, refusal = _sweep_case(module, name)
    model = model.double().eval()
    randomize_bn(model, 0, overrides=PLIF_BN if module == "parametric_lif_net" else None)
    if refusal is not None:
        with pytest.raises(UnsupportedError, match=refusal):
            trace(model, x, T=T if static else x.shape[0], static=static)
        return
    steps = 6 if name == "SpikeDHS" else T if static else x.shape[0]
    g = trace(model, x, T=steps, static=static, name=name)  # deep ResNets: trace() copes
    neurons = g.of_type(ir.Neuron)
    y, spikes = library_spikes(model, x, {n.path for n in neurons}, functional.reset_net)
    batch = x.shape[0] if static else x.shape[1]
    res = simulate(g, x.numpy(), steps, record=True)
    ref = {n.name: spikes[n.path].reshape(steps, batch, *n.shape) for n in neurons}
    assert_spikes(res.trace, ref)
    got = res.output_sequence if g.meta["output_layout"] == "TB" else res.outputs
    np.testing.assert_allclose(output_of(g, got), y, rtol=0, atol=1e-10)
    if name not in SATURATING:
        assert_rates_in_range({k: float(v.mean()) for k, v in ref.items()})
