"""spikingjelly 2.0's own model constructors (``spikingjelly.activation_based.model``), built at
small sizes with randomised BN statistics, traced through the spikingjelly adapter and run in
float64: the simulator, onnxruntime (unrolled and step models) and the NIR round trip give the
library's own forward spikes at every neuron (firing rates in [5%, 95%]) and its output; Lava
gives them for small graphs without recurrence. Models that need what the IR cannot express are
refused with every unsupported op listed. The larger cases are marked slow.

The model files import ``torchvision`` only to download weights. PyPI's torchvision wheels are
CUDA builds that cannot load beside the CPU torch used here, so when torchvision does not
import, the one name those files take from it is provided from ``torch.hub``, as the README
tells users to do (``provide_weight_loader_without_torchvision``)."""

from __future__ import annotations


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

from conftest import assert_rates_in_range, library_spikes

T = 4
pytest.importorskip("spikingjelly.activation_based")


provide_weight_loader_without_torchvision()
from spikingjelly.activation_based import functional, layer, neuron  # noqa: E402
from spikingjelly.activation_based.model import (  # noqa: E402
    maxformer, ms_resnet, qkformer, sew_resnet, spike_driven_transformer, spikformer,
    spiking_resnet)


def _image(seed: int, scale: float = 2.0, size: int = 32, batch: int = 2) -> torch.Tensor:
    return scale * torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64)


def _sequence(x: torch.Tensor) -> torch.Tensor:
    """The image repeated over T (the input of models that do not repeat it themselves)."""
    return x.unsqueeze(0).repeat(T, 1, 1, 1, 1)


def _multi_step(model):
    functional.set_step_mode(model, "m")
    return model


BUILDERS = {
    "spikformer": lambda: spikformer.Spikformer(
        T=T, img_size_h=32, img_size_w=32, patch_size=4, num_classes=10, embed_dims=32,
        num_heads=2, mlp_ratio=2, depths=1),
    "sdt": lambda: spike_driven_transformer.SpikeDrivenTransformer(
        T=T, num_classes=10, embed_dims=32, num_heads=2, depths=1, mlp_ratio=2),
    "qkformer": lambda: qkformer.QKFormer(
        T=T, num_classes=10, embed_dims=48, num_heads=(1, 2, 2), depths=(1, 1, 1), mlp_ratio=2),
    "maxformer": lambda: maxformer.MaxFormer(
        T=T, num_classes=10, embed_dims=48, depths=(1, 1, 1), mlp_ratio=2, cifar=True),
    "ms_resnet": lambda: ms_resnet.MSResNet(
        T=T, num_classes=10, layers=(1, 1, 1), base_channels=8, stage_channels=(8, 16, 32),
        stem_kernel_size=3, stem_stride=1),
    "max_resnet18": lambda: ms_resnet.max_resnet18(T=T),
    "sew_resnet18": lambda: _multi_step(sew_resnet.sew_resnet18(
        cnf="ADD", num_classes=10, spiking_neuron=neuron.IFNode, detach_reset=True)),
    # AND: out * identity (a Hadamard of spikes); IAND: out * (1 - identity), traced as
    # out - out * identity
    "sew_resnet18_and": lambda: _multi_step(sew_resnet.sew_resnet18(
        cnf="AND", num_classes=10, spiking_neuron=neuron.IFNode, detach_reset=True)),
    "sew_resnet18_iand": lambda: _multi_step(sew_resnet.sew_resnet18(
        cnf="IAND", num_classes=10, spiking_neuron=neuron.IFNode, detach_reset=True)),
    "spiking_resnet18": lambda: _multi_step(spiking_resnet.spiking_resnet18(
        num_classes=10, spiking_neuron=neuron.LIFNode, tau=2.0)),
}
# the model repeats a static image over T itself (else it takes a [T, B, ...] sequence)
STATIC = {"spikformer", "sdt", "qkformer", "maxformer", "ms_resnet", "max_resnet18"}
# QKFormer's token attention fires where any of a head's channels spikes: sparser Q keeps its
# rate below 95%
BN_OVERRIDES = {"qkformer": {"*.attn.qk_conv_bn*": {"bias_range": (-0.5, 0.0)}}}
INPUT_SCALE = {"qkformer": 1.0}
SLOW = {"max_resnet18"}
CASES = [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name
         for name in BUILDERS]


def _build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = BUILDERS[name]().double().eval()
    randomize_bn(model, seed, overrides=BN_OVERRIDES.get(name))
    x = _image(seed, INPUT_SCALE.get(name, 2.0))
    return model, x if name in STATIC else _sequence(x)


@pytest.fixture(scope="module")
def traced():
    """name -> (model, graph, simulator input, float64 simulation, library spikes by node)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            model, x = _build(name)
            g = trace(model, x, T=T, static=name in STATIC, name=name)
            neurons = g.of_type(ir.Neuron)
            y, spikes = library_spikes(model, x, {n.path for n in neurons}, functional.reset_net)
            ref = {n.name: spikes[n.path].reshape(T, x.shape[-4], *n.shape) for n in neurons}
            xs = x.numpy()
            cache[name] = g, xs, simulate(g, xs, T, record=True), ref, y
        return cache[name]
    return get


def assert_spikes(traces: dict, ref: dict) -> None:
    for k, spikes in ref.items():
        assert k in traces, f"{k}: no trace"
        mismatch = float(np.mean(traces[k] != spikes))
        assert mismatch == 0, f"{k}: spike mismatch rate {mismatch:.3g}"


def output_of(g, outputs: dict) -> np.ndarray:
    return np.asarray(outputs[g.outputs[0].name])


def last_step(g, y: np.ndarray) -> np.ndarray:
    """What the targets report of the library's output: its value at the last step."""
    return y[-1] if g.meta["output_layout"] == "TB" else y


@pytest.mark.parametrize("name", CASES)
def test_simulator_equals_library(traced, name):
    g, _, res, ref, y = traced(name)
    assert_spikes(res.trace, ref)
    got = res.output_sequence if g.meta["output_layout"] == "TB" else res.outputs
    np.testing.assert_allclose(output_of(g, got), y, rtol=0, atol=1e-10)
    assert_rates_in_range({k: float(v.mean()) for k, v in ref.items()})


@pytest.mark.parametrize("name", CASES)
def test_onnx_equals_library(traced, tmp_path, name):
    from snncc.backends.onnx.runner import run_onnx

    g, x, _, ref, y = traced(name)
    path = get_target("onnx").emit(g, tmp_path / "m", dtype="float64")
    for form in ("unrolled", "step"):
        outputs, traces = run_onnx(path, x, form=form)
        assert_spikes(traces, ref)
        np.testing.assert_allclose(output_of(g, outputs), last_step(g, y), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", CASES)
def test_nir_round_trip_equals_library(traced, tmp_path, name):
    from snncc.frontends.nir_reader import read_nir

    g, x, _, ref, y = traced(name)
    back = read_nir(get_target("nir").emit(g, tmp_path / "m.nir"))
    res = simulate(back, x, T, record=True)
    assert_spikes(res.trace, ref)
    np.testing.assert_allclose(output_of(back, res.outputs), last_step(g, y), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", CASES)
def test_nir_compiled_by_the_cli_pipeline_equals_library(traced, tmp_path, name):
    """``snncc compile --target nir``'s passes, which leave the BN folds that round to the
    writer: the file read back gives the library's spikes and output."""
    from snncc.frontends.nir_reader import read_nir
    from snncc.pipeline import for_target

    g, x, _, ref, y = traced(name)
    compiled = for_target("nir", log=lambda s: None).run(g.copy())
    back = read_nir(get_target("nir").emit(compiled, tmp_path / "m.nir"))
    res = simulate(back, x, T, record=True)
    assert_spikes(res.trace, ref)
    np.testing.assert_allclose(output_of(back, res.outputs), last_step(g, y), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name, pipeline", [
    ("sdt", "passes"), pytest.param("sdt", "for_target", marks=pytest.mark.slow),
    ("ms_resnet", "for_target"),  # a conv reads a BN left to the lowering (the residual stream)
    *(pytest.param(n, "passes", marks=pytest.mark.slow)
    for n in ("spikformer", "qkformer", "maxformer", "ms_resnet", "sew_resnet18",
              "sew_resnet18_and", "sew_resnet18_iand", "spiking_resnet18"))])
def test_lava_equals_library(traced, tmp_path, name, pipeline):
    """The lava target's own passes (every BN folded by the pass), or the CLI's (``for_target``:
    the BN folds that round left to the lowering)."""
    from snncc.backends.lava.artifact import emit
    from snncc.backends.lava.runner import run_artifact
    from snncc.pipeline import for_target, run_passes

    g, x, _, ref, y = traced(name)
    if pipeline == "passes":
        compiled = run_passes(g, list(get_target("lava").default_passes), log=lambda s: None)
    else:
        compiled = for_target("lava", log=lambda s: None).run(g.copy())
        assert compiled.of_type(ir.BatchNorm)
    res = run_artifact(emit(compiled, tmp_path / "lava"), x, T)
    assert_spikes(res["trace"], ref)
    (out,) = res["outputs"].values()
    np.testing.assert_allclose(out, last_step(g, y), rtol=1e-12, atol=1e-12)


def test_sequence_input_traced_as_static_says_to_pass_static_false():
    model, x = _build("sew_resnet18")
    with pytest.raises(UnsupportedError, match=r"first axis has length T=4, traced as a batch "
                                               r"of images: for a \[T, B, ...\] sequence input "
                                               r"pass static=False"):
        trace(model, x, T=T)


def test_unsupported_neuron_and_ops_are_all_listed():
    from spikingjelly.activation_based.model import masnn

    model = masnn.MASNN(T=T, channels=(8, 8, 8), fc_hidden=8, reduction_t=2, reduction_c=4)
    with pytest.raises(UnsupportedError) as err:
        trace(model.double(), torch.rand(T, 2, 2, 32, 32, dtype=torch.float64), T=T, static=False)
    msg = str(err.value)
    assert "\n" not in msg and "op 'torch.sigmoid' is not supported" in msg
    assert "module 'conv_blocks.0.attn.ta.avg_pool': op 'AdaptiveAvgPool3d'" in msg


def test_constant_minus_a_tensor_outside_a_product_is_refused_saying_so():
    """``1 - spikes`` is traced only as a factor of a product (SEW's IAND); fed to a layer, it
    is refused naming the module, the op and why, in one line."""
    class Inverted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.sn = layer.Linear(6, 4), neuron.IFNode(step_mode="m")

        def forward(self, x):
            return self.fc(1.0 - self.sn(x))

    with pytest.raises(UnsupportedError) as err:
        trace(Inverted().double(), torch.rand(T, 2, 6, dtype=torch.float64), T=T, static=False)
    msg = str(err.value)
    assert "\n" not in msg and "module 'fc'" in msg and "(constant - tensor)" in msg


@pytest.mark.parametrize("name", ["spikformer", "qkformer", "sew_resnet18"])
def test_float32_model_keeps_float32_weights_and_library_spikes(tmp_path, name):
    """A float32 model of the library's own constructors: the IR keeps its weights in float32,
    and the float64 simulation equals the library's float64 forward of the same weights at
    every neuron (float32 -> float64 is exact); so does onnxruntime on the float64 ONNX model,
    which stores those weights as float32 and widens them with Cast nodes."""
    import onnx

    from snncc.backends.onnx.models import STORED_FLOAT32
    from snncc.backends.onnx.runner import run_onnx

    model, x = _build(name)
    model.float()
    x = x.float()
    g = trace(model, x, T=T, static=name in STATIC, name=name)
    weights = [n.weight for n in g.of_type(ir.Conv2d, ir.Linear)]
    assert weights and all(w.dtype == np.float32 for w in weights)
    model.double()
    x = x.double()
    neurons = g.of_type(ir.Neuron)
    _, spikes = library_spikes(model, x, {n.path for n in neurons}, functional.reset_net)
    ref = {n.name: spikes[n.path].reshape(T, x.shape[-4], *n.shape) for n in neurons}
    rates = [float(np.mean(s)) for s in ref.values()]
    assert all(0.0 < r < 1.0 for r in rates) and 0.05 <= float(np.mean(rates)) <= 0.95
    assert_spikes(simulate(g, x.numpy(), T, record=True).trace, ref)
    path = get_target("onnx").emit(g, tmp_path / "m", dtype="float64")
    stored = onnx.load(str(path / "model.onnx")).graph.initializer
    assert any(t.name.endswith(STORED_FLOAT32) for t in stored)
    for form in ("unrolled", "step"):
        assert_spikes(run_onnx(path, x.numpy(), form=form)[1], ref)


@pytest.mark.parametrize("target", ["sim", "onnx", "nir"])
def test_threshold_dependent_batch_norm_is_its_batch_norm(target):
    """tdBN (``layer.ThresholdDependentBatchNorm2d/1d``, Zheng et al. 2021) normalises the
    steps folded into the batch; in eval mode that is the batch norm it subclasses, its
    ``alpha * v_th`` only the weight's initial value. A conv net with tdBN after each synapse,
    running statistics and affine parameters randomised: the library's spikes at every neuron."""
    import snncc

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        layer.Conv2d(3, 8, 3, padding=1), layer.ThresholdDependentBatchNorm2d(
            alpha=1.0, v_th=1.0, num_features=8), neuron.LIFNode(tau=2.0),
        layer.Flatten(), layer.Linear(8 * 8 * 8, 16),
        layer.ThresholdDependentBatchNorm1d(alpha=0.5, v_th=1.0, num_features=16),
        neuron.IFNode())
    functional.set_step_mode(model, "m")
    model = model.double().eval()
    randomize_bn(model, 0)
    rep = snncc.check(model, _sequence(_image(0, size=8)), T=T, target=target)
    assert rep.min_agreement == 1.0 and rep.output_max_abs_diff_target <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in rep.layers})
