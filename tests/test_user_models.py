"""Compiling a user's own model (issue 12): the public Python API (``snncc.trace / compile /
check / run``), its layout inference and errors, and the CLI paths for models outside the zoo:
a whole-model pickle (only with --trust-checkpoint) and a state_dict plus the user's code
(--model package.module:factory or path/to/file.py:ClassName, --model-args)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import snncc
from snncc.api import check_dataset
from snncc.cli import main
from snncc.errors import SnnccError
from snncc.graph import Graph

from conftest import assert_rates_in_range, driven, randomize_batchnorms

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "compile_your_model.py"
DIGITS = REPO / "examples" / "checkpoints" / "digits-spikformer.pt"
DIGITS_ARGS = {"variant": "cifar", "img_size_h": 8, "img_size_w": 8, "patch_size": 4,
               "in_channels": 1, "num_classes": 10, "embed_dims": 32, "num_heads": 2,
               "depths": 1, "T": 4}


def _imported(name: str, path):
    """The Python file ``path`` imported as module ``name`` (so its models pickle)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _example_module():
    """examples/compile_your_model.py, imported under its own name."""
    return _imported("compile_your_model", EXAMPLE)


@pytest.fixture
def net():
    ex = _example_module()
    torch.manual_seed(0)
    return ex.pretend_trained(ex.ConvSNN(), seed=1)


def _sequence(T=4, batch=3, seed=0):
    return torch.randn(T, batch, 2, 16, 16, generator=torch.Generator().manual_seed(seed))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("snncc: error:"), err
    return err[0]


# ---------------------------------------------------------------------------- Python API
@pytest.mark.parametrize("target", ["sim", "onnx", "lava"])
def test_the_example_runs_and_is_exact(tmp_path, target):
    result = _example_module().main(["--target", target, "--out", str(tmp_path / "m")])
    assert result["report"].min_agreement == 1.0
    assert_rates_in_range({r.node: r.rate_reference for r in result["report"].layers})
    np.testing.assert_array_equal(result["output"], result["expected"])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", ["sim", "onnx", "nir"])
def test_check_is_exact_on_several_seeds(net, target, seed):
    ex = _example_module()
    model = ex.pretend_trained(ex.ConvSNN(), seed=seed)
    report = snncc.check(model, _sequence(seed=seed), target=target, T=4)
    assert report.min_agreement == 1.0 and report.reference == "pytorch"
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})
    doc = json.loads(report.to_json())
    assert doc["min_agreement"] == 1.0 and len(doc["layers"]) == 3


def test_check_leaves_the_model_as_it_was(net):
    net.train()
    snncc.check(net, _sequence(), target="sim", T=4)
    assert net.training and next(net.parameters()).dtype == torch.float32


def test_trace_infers_a_sequence_and_a_static_image():
    from snncc.frontends.zoo import build

    seq = snncc.trace(_example_module().ConvSNN(), _sequence(), T=4)
    assert seq.meta["input_layout"] == "TB" and not seq.inputs[0].static
    zoo = build("digits-spikformer")  # declares T = 4 and repeats a static image itself
    static = snncc.trace(zoo, torch.randn(3, 1, 8, 8))
    assert static.meta["input_layout"] == "static" and static.inputs[0].static
    assert static.meta["T"] == 4


def test_api_accepts_graphs_and_paths(tmp_path):
    loaded = snncc.load(DIGITS, arch="digits-spikformer")
    assert isinstance(loaded.graph, Graph) and loaded.torch_model is not None
    path = snncc.compile(loaded.graph, target="sim", out=tmp_path / "a")
    assert path == tmp_path / "a" / "model.snnir"
    report = snncc.check(path, target="onnx")
    assert report.reference == "simulator" and report.min_agreement == 1.0
    x = np.random.default_rng(0).normal(size=(2, 1, 8, 8))
    y = snncc.run(path, x)
    assert y.shape == (2, 10)
    report = snncc.check(DIGITS, arch="digits-spikformer", target="sim")
    assert report.reference == "pytorch" and report.min_agreement == 1.0


class _BatchFirst(nn.Module):
    """``model`` taking ``[B, T, ...]``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.transpose(0, 1))


class _Repeated(_BatchFirst):
    """``model`` taking a static image, repeated over 4 steps."""

    def forward(self, x):
        return self.model(x.unsqueeze(0).repeat(4, 1, 1, 1, 1))


@pytest.mark.parametrize("target", ["sim", "onnx"])
@pytest.mark.parametrize("batch, layout", [(1, None), (4, None), (1, "static")])
def test_an_example_batch_of_one_or_of_T_is_checked(batch, layout, target):
    """``torch.onnx.export``'s habit, one image: refused before ("the example batch must have
    >= 2 samples and differ from T"), as was a batch of T images (the tracer tells batch and
    time apart by their sizes: it now traces the samples repeated to another number)."""
    model = _Repeated(_example_module().pretend_trained(_example_module().ConvSNN(), seed=1))
    x = torch.randn(batch, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    assert snncc.trace(model, x, T=4, layout=layout).meta["input_layout"] == "static"
    report = snncc.check(model, x, target=target, T=4, layout=layout)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


@pytest.mark.parametrize("layout", ["TB", "BT"])
def test_an_example_sequence_of_one_sample_is_checked(net, layout):
    x = _sequence(batch=1) * 2
    model, x = (net, x) if layout == "TB" else (_BatchFirst(net), x.transpose(0, 1))
    report = snncc.check(model, x, target="onnx", T=4, layout=layout)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


class _RepeatsItsOwnT(nn.Module):
    """The official Spikingformer / SGLFormer forward: a static image repeated ``self.T``
    times."""

    def __init__(self):
        super().__init__()
        from spikingjelly.activation_based import neuron

        self.T, self.fc, self.lif = 2, nn.Linear(6, 4), neuron.LIFNode(step_mode="m")

    def forward(self, x):
        return self.lif(self.fc(x.unsqueeze(0).repeat(self.T, 1, 1))).mean(0)


def test_a_T_other_than_the_models_own_is_refused_naming_both():
    """The refusal blamed the model's ops ("op 'Tensor.mean' is not supported (it reduces over
    the time or batch axis)"), not the T given against the model's T = 2 (found with a
    checkpoint's T = 4 on a model built at T = 2)."""
    with pytest.raises(SnnccError, match=r"^the model declares T=2 \(model.T\) and T=4 was "
                                         r"given: .* give T=2 or build the model with T=4 "):
        snncc.trace(_RepeatsItsOwnT(), torch.rand(3, 6), T=4)
    assert snncc.trace(_RepeatsItsOwnT(), torch.rand(3, 6)).meta["T"] == 2


def test_an_example_sequence_with_T_on_both_leading_axes_is_refused_saying_so(net):
    """It was snncc's own ValueError, 'running the model on the example input failed', which
    did not say the layout settles it; the other reading's message was cut mid-word."""
    with pytest.raises(SnnccError) as err:
        snncc.trace(net, _sequence(batch=4), T=4)
    assert str(err.value).startswith(
        "the example sequence (4, 4, 2, 16, 16) has T=4 along both leading axes, so it reads "
        "as [T, B, ...] and as [B, T, ...]: give layout='TB' or 'BT' (--layout)"), str(err.value)


@pytest.mark.parametrize("layout", ["TB", "BT"])
def test_an_example_sequence_of_T_samples_in_a_layout_given_is_checked(net, layout):
    """A batch of T samples with the layout said (refused before as ambiguous, as it still is
    where no layout is given)."""
    x = _sequence(batch=4) * 2
    model, x = (net, x) if layout == "TB" else (_BatchFirst(net), x.transpose(0, 1))
    report = snncc.check(model, x, target="onnx", T=4, layout=layout)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


def test_a_missing_T_says_how_to_give_it(net):
    with pytest.raises(SnnccError, match=r"set T"):
        snncc.trace(net, torch.randn(2, 2, 16, 16))


def test_wrong_input_shape_says_how_the_input_was_read(net):
    with pytest.raises(SnnccError, match=r"the model fails in PyTorch itself on the example "
                                         r"input.*compile_your_model.py:\d+, in forward.*"
                                         r"\[T, B, \.\.\.\] sequence"):
        snncc.trace(net, torch.randn(4, 3, 5, 16, 16), T=4)


def test_an_unsupported_op_of_a_later_reading_of_the_input_is_named_too():
    """A [B, T, ...] input whose second axis is T is read first as a static image, on which a
    model of sequences fails on its layout; the error says what the [B, T, ...] reading failed
    on, the op to change (it said only the first reading's)."""
    pytest.importorskip("spikingjelly.activation_based")
    from spikingjelly.activation_based import neuron

    class Sequences(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lif = neuron.LIFNode(step_mode="m")

        def forward(self, x):  # [B, T, C]
            return torch.sin(self.lif(x.transpose(0, 1))).mean(0)

    with pytest.raises(SnnccError, match=r"tried static, BT; read as a \[B, T, \.\.\.\] "
                                         r"sequence: op 'torch.sin' is not supported"):
        snncc.trace(Sequences(), torch.randn(3, 4, 6), T=4)


class CompiledHelper(torch.nn.Module):
    """A model whose code decorates a helper with ``torch.compile`` (the Spiking Wavelet
    Transformer's Haar transforms): torch.fx cannot trace it ("Detected that you are using FX
    to symbolically trace a dynamo-optimized function"); snncc traces it as Python and runs it
    eagerly as the reference."""

    def __init__(self):
        super().__init__()
        from spikingjelly.activation_based import neuron

        self.fc, self.lif = torch.nn.Linear(6, 6), neuron.LIFNode(step_mode="m")

    @torch.compile
    def mixed(self, x):
        return x @ torch.eye(6, dtype=x.dtype).flip(0) + 0.5 * x

    def forward(self, x):  # [T, B, 6]
        return self.lif(self.mixed(self.fc(x))).mean(0)


@pytest.mark.parametrize("target", ["sim", "onnx"])
def test_a_helper_decorated_with_torch_compile_is_traced_and_run_eagerly(target):
    pytest.importorskip("spikingjelly.activation_based")
    torch.manual_seed(0)
    model = driven(CompiledHelper().double().eval(), fc=(3.0, 0.5))
    x = torch.randn(4, 3, 6, dtype=torch.float64)
    report = snncc.check(model, x, target=target, T=4)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


def test_not_a_model_is_refused():
    with pytest.raises(SnnccError, match="nn.Module, an snncc Graph or a path"):
        snncc.trace(42, None)


# ---------------------------------------------------------------------------- CLI
def test_whole_model_pickle_needs_trust(net, tmp_path, capsys):
    pickled = tmp_path / "model.pt"
    torch.save(net, pickled)
    out = tmp_path / "m"
    args = ["compile", str(pickled), "--T", "4", "--input-shape", "2,16,16", "-t", "onnx",
            "-o", str(out)]
    assert main(args) == 1
    line = _one_error_line(capsys)
    assert "pickled model" in line and "--trust-checkpoint" in line and not out.exists()
    assert main([*args, "--trust-checkpoint"]) == 0
    assert (out / "model.onnx").is_file()
    assert main(["check", str(pickled), "--T", "4", "--input-shape", "2,16,16", "-t", "onnx",
                 "--trust-checkpoint"]) == 0


def test_state_dict_with_the_users_code_file(net, tmp_path, capsys):
    weights = tmp_path / "weights.pt"
    torch.save(net.state_dict(), weights)
    common = [str(weights), "--model", f"{EXAMPLE}:ConvSNN", "--model-args", '{"classes": 10}',
              "--input-shape", "2,16,16", "--T", "4"]
    assert main(["compile", *common, "-t", "nir", "-o", str(tmp_path / "m.nir")]) == 0
    assert main(["check", *common, "-t", "sim", "--json", str(tmp_path / "r.json")]) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["min_agreement"] == 1.0 and doc["reference"] == "pytorch"
    assert main(["inspect", *common]) == 0
    assert "features.2" in capsys.readouterr().out


def test_a_lightning_checkpoint_with_the_users_code_file(net, tmp_path, capsys):
    """PyTorch Lightning's checkpoint of a module holding the network as ``self.net``, with
    the user's code: the keys under ``net.`` (every key was "renamed")."""
    weights = tmp_path / "last.ckpt"
    torch.save({"pytorch-lightning_version": "2.4.0", "hyper_parameters": {"lr": 0.01},
                "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, weights)
    assert main(["check", str(weights), "--model", f"{EXAMPLE}:ConvSNN", "--input-shape",
                 "2,16,16", "--T", "4", "--json", str(tmp_path / "r.json")]) == 0
    assert "the keys under 'net.'" in capsys.readouterr().err
    assert json.loads((tmp_path / "r.json").read_text())["min_agreement"] == 1.0


@pytest.mark.parametrize("wrap", ["compiled", "data_parallel_of_compiled"])
def test_a_state_dict_saved_from_a_compiled_model(net, tmp_path, capsys, wrap):
    """``torch.compile(model).state_dict()`` prefixes every key with ``_orig_mod.`` (and a
    DataParallel around it with ``module.`` first): both used to be refused as a checkpoint of
    another architecture."""
    wrapped = torch.compile(net)
    if wrap == "data_parallel_of_compiled":
        wrapped = torch.nn.DataParallel(wrapped)
    weights = tmp_path / "weights.pt"
    torch.save({"model": wrapped.state_dict()}, weights)
    assert next(iter(wrapped.state_dict())).startswith(("_orig_mod.", "module._orig_mod."))
    common = [str(weights), "--model", f"{EXAMPLE}:ConvSNN", "--input-shape", "2,16,16",
              "--T", "4"]
    assert main(["check", *common, "-t", "sim", "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["min_agreement"] == 1.0


def test_weights_from_a_torchscript_archive_with_the_models_code(net, tmp_path, capsys):
    """A TorchScript archive cannot be traced (its forward is TorchScript: refused in one line),
    but with the model's code (--model) its weights load, trusted."""
    archive = tmp_path / "scripted.pt"
    with torch.no_grad():
        torch.jit.trace(net.requires_grad_(False), _sequence(), check_trace=False).save(
            str(archive))
    common = [str(archive), "--input-shape", "2,16,16", "--T", "4", "--trust-checkpoint"]
    assert main(["check", *common]) == 1
    assert "TorchScript module" in _one_error_line(capsys)
    assert main(["check", *common, "--model", f"{EXAMPLE}:ConvSNN", "--json",
                 str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["min_agreement"] == 1.0


class _TwoOutputs(torch.nn.Module):
    """A forward returning two tensors (logits and the mean firing of the features), as a tuple,
    as a dict, or nested (a list in a tuple beside a dict, as StereoSpike returns its depth maps
    and spikes: ``([depth1, ...], [spikes, ...])``)."""

    def __init__(self, net, form: str):
        super().__init__()
        self.net, self.form = net, form

    def forward(self, x):
        features = self.net.features(x)
        logits, rates = self.net.head(features).mean(0), features.mean(0)
        return {"tuple": (logits, rates), "dict": {"logits": logits, "rates": rates},
                "nested": ([logits], {"rates": rates, "none": None})}[self.form]


@pytest.mark.parametrize("form", ["tuple", "dict", "nested"])
@pytest.mark.parametrize("target", ["sim", "onnx"])
def test_a_model_returning_several_tensors_is_checked_on_its_first(net, target, form):
    """A tuple traced (one Output per tensor) but check ended in "AttributeError: 'tuple' object
    has no attribute 'detach'" (an internal error); a dict was refused, and a list inside a
    tuple. Each tensor is an Output, in order, and the reference is the first, as the graph's
    first Output."""
    from spikingjelly.activation_based import functional

    model = _TwoOutputs(net, form)
    x = _sequence()
    g = snncc.trace(model, x, T=4)
    assert len(g.outputs) == 2
    report = snncc.check(model, x, target=target, T=4, labels=np.array([0, 1, 2]))
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target < 1e-12
    functional.reset_net(net)
    with torch.no_grad():
        logits = net(x)
    assert report.accuracy["reference"] == float(np.mean(logits.argmax(-1).numpy() == [0, 1, 2]))


def test_wrapped_and_reduced_precision_models(net):
    """What a training script leaves: ``torch.compile``'s OptimizedModule (its forward runs
    dynamo, which the tracer cannot follow: "missing the required forward"), a weight-normalised
    spikingjelly convolution (torch's parametrization subclasses the layer: it was refused as an
    unknown ParametrizedConv2d), and a bfloat16 model and input (numpy has no bfloat16: an
    internal error). Each is checked exact against its own forward."""
    from spikingjelly.activation_based import functional

    x = _sequence()
    compiled = torch.compile(net)
    assert snncc.check(compiled, x, target="sim", T=4).min_agreement == 1.0
    normed = _example_module().pretend_trained(_example_module().ConvSNN(), seed=1)
    normed.features[0] = torch.nn.utils.parametrizations.weight_norm(normed.features[0])
    functional.set_step_mode(normed, "m")
    for target in ("sim", "onnx"):
        report = snncc.check(normed, x, target=target, T=4)
        assert report.min_agreement == 1.0 and len(report.layers) == 3
        assert_rates_in_range({r.node: r.rate_reference for r in report.layers})
    bf16 = net.to(torch.bfloat16)
    report = snncc.check(bf16, x.to(torch.bfloat16), target="sim", T=4)
    assert report.min_agreement == 1.0
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


def test_state_dict_with_a_package_factory(tmp_path, capsys):
    common = [str(DIGITS), "--model", "snncc.frontends.zoo.spikformer:Spikformer",
              "--model-args", json.dumps(DIGITS_ARGS), "--input-shape", "1,8,8"]
    assert main(["check", *common, "-t", "onnx", "--json", str(tmp_path / "r.json")]) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["min_agreement"] == 1.0 and doc["T"] == 4  # T: the model's own


def test_a_state_dict_alone_says_what_to_add(tmp_path, capsys):
    assert main(["compile", str(DIGITS), "-t", "sim", "-o", str(tmp_path / "m")]) == 1
    line = _one_error_line(capsys)
    assert "--arch" in line and "--model" in line


@pytest.mark.parametrize("args,message", [
    (["--model", "no_such_module_xyz:Net"], "cannot import 'no_such_module_xyz'"),
    (["--model", "snncc.frontends.zoo.spikformer:Nope"], "has no attribute 'Nope'"),
    (["--model", "Spikformer"], "expected package.module:factory"),
    (["--model", "snncc.frontends.zoo.spikformer:Spikformer", "--model-args", "{bad"],
     "not JSON"),
    (["--model", "snncc.frontends.zoo.spikformer:Spikformer", "--model-args", "[1]"],
     "JSON object"),
    (["--model-args", "{}"], "--model-args needs --model"),
    (["--model", "snncc.frontends.zoo.spikformer:Spikformer", "--model-args",
      '{"embed_dims": 64, "num_heads": 2, "img_size_h": 8, "img_size_w": 8, "in_channels": 1, "depths": 1}'],
     "does not fit"),
    (["--model", "snncc.frontends.zoo.spikformer:Spikformer", "--arch", "digits-spikformer"],
     "not both"),
    (["--model", "snncc.frontends.zoo.spikformer:Spikformer", "--model-args",
      json.dumps(DIGITS_ARGS), "--input-shape", "1,x,8"], "--input-shape"),
    (["--model", "snncc.frontends.zoo.spikformer:Spikformer", "--model-args",
      json.dumps(DIGITS_ARGS), "--layout", "sideways"], "layout must be one of"),
])
def test_user_model_errors_are_one_line(tmp_path, capsys, args, message):
    assert main(["compile", str(DIGITS), *args, "-t", "sim", "-o", str(tmp_path / "m")]) == 1
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "m").exists()


_USER_NET = '''
import torch
from torch import nn
from spikingjelly.activation_based import functional, layer, neuron


class Net(nn.Module):
    def __init__(self, width=4):
        super().__init__()
        self.body = nn.Sequential(layer.Conv2d(1, width, 3, padding=1), layer.BatchNorm2d(width),
                                  neuron.LIFNode(), layer.Flatten(),
                                  layer.Linear(width * 64, 10), neuron.IFNode())
        functional.set_step_mode(self, "m")
        self.T = 4

    def forward(self, x):
        return self.body(x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)).mean(0)
'''


def test_the_users_module_in_the_current_directory_imports(tmp_path, monkeypatch, capsys):
    """A console script does not search the current directory; the user's model code is
    usually there, for a pickled model as for --model module:factory."""
    (tmp_path / "my_snn_module.py").write_text(_USER_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_snn_module

    torch.save(my_snn_module.Net(), tmp_path / "net.pt")
    torch.save(my_snn_module.Net().state_dict(), tmp_path / "w.pt")
    sys.path.remove(str(tmp_path))
    del sys.modules["my_snn_module"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    args = ["compile", "../net.pt", "--trust-checkpoint", "--input-shape", "1,8,8", "-o", "m"]
    assert main(args) == 1
    assert "module 'my_snn_module', which cannot be imported here" in _one_error_line(capsys)
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "net.pt", "--trust-checkpoint", "--input-shape", "1,8,8",
                 "-o", "m"]) == 0
    assert main(["check", "w.pt", "--model", "my_snn_module:Net", "--model-args",
                 '{"width": 4}', "--input-shape", "1,8,8", "-t", "onnx"]) == 0
    assert str(tmp_path) not in sys.path


_BROKEN_NET = _USER_NET.replace(
    "        return self.body(", "        functional.reset_net(self.body.not_there)\n"
    "        return self.body(")


def test_a_model_that_fails_in_pytorch_itself_is_said_to_in_one_line(tmp_path, monkeypatch,
                                                                     capsys):
    """An error of the model's own forward (here an AttributeError, which the tracer used to
    let through as "internal error") is named as the model's, with its line, when PyTorch
    alone fails the same way; nothing is written."""
    (tmp_path / "broken_snn.py").write_text(_BROKEN_NET)
    monkeypatch.chdir(tmp_path)
    torch.save(_imported("broken_snn", tmp_path / "broken_snn.py").Net().state_dict(),
               tmp_path / "w.pt")
    del sys.modules["broken_snn"]
    assert main(["compile", "w.pt", "--model", "broken_snn.py:Net", "--input-shape", "1,8,8",
                 "-o", "m"]) == 1
    line = _one_error_line(capsys)
    assert "the model fails in PyTorch itself on the example input" in line
    assert "AttributeError" in line and "broken_snn.py:17, in forward" in line, line
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("target", ["sim", "nir"])
def test_check_keeps_only_the_spikes_it_compares(target):
    """A parity check keeps the neurons' spikes and the outputs over T (what it compares), not
    every node's value and membrane, and runs its three runs one after another: under a
    memory budget of exactly its estimate it runs and agrees (three full records would not
    fit); one byte less and it is refused before any work."""
    from snncc import limits
    from snncc.parity import check_bytes, random_inputs
    from snncc.pipeline import for_target
    from snncc.simulator import estimate_bytes

    loaded = snncc.load(DIGITS, arch="digits-spikformer")
    compiled = for_target(target, log=lambda s: None).run(loaded.graph)
    T, B = 4, 4
    x = random_inputs(loaded.graph, B, T, 0)
    need = check_bytes(loaded, compiled, T, B, "float64")[0]
    assert need < 2 * estimate_bytes(compiled, T, B, True) + estimate_bytes(loaded.graph, T, B,
                                                                            True)
    try:
        limits.set_max_memory(need)
        report = snncc.check(DIGITS, arch="digits-spikformer", target=target, inputs=x)
        assert report.min_agreement == 1.0
        assert 0.05 < np.mean([layer.rate_reference for layer in report.layers]) < 0.95
        limits.set_max_memory(need - 1)
        with pytest.raises(limits.ResourceError, match="checking parity") as refused:
            snncc.check(DIGITS, arch="digits-spikformer", target=target, inputs=x)
        assert f"; a batch of {B - 1} fits)" in str(refused.value)  # what to do instead
    finally:
        limits.set_max_memory(None)


def test_check_holds_spikes_as_booleans_and_other_traces_as_they_are():
    """A check holds each trace of 0s and 1s as booleans (an eighth of float64) and gives the
    same agreement, rate and spike counts from them; a graded trace or an integer one stays."""
    from snncc.parity import _agreement, _as_booleans, _cosine

    rng = np.random.default_rng(0)
    spikes = (rng.random((4, 2, 5)) < 0.3).astype(np.float64)
    other = (rng.random((4, 2, 5)) < 0.3).astype(np.float64)
    graded = spikes * 0.5
    counts = spikes.astype(np.int64)
    out = _as_booleans({"s": spikes, "o": other, "g": graded, "c": counts})
    assert out["s"].dtype == bool and out["o"].dtype == bool
    assert out["g"] is graded and out["c"] is counts
    assert _agreement(out["s"], out["o"]) == _agreement(spikes, other)
    assert out["s"].mean() == spikes.mean()
    assert _cosine(out, out | {"s": out["o"]}, ["s"]) == _cosine({"s": spikes}, {"s": other},
                                                                 ["s"])


def test_a_data_parallel_model_is_its_module(net, tmp_path):
    """``nn.DataParallel(model)`` (a training script's wrapper, also pickled whole): traced as
    the model inside, its node paths without the wrapper's ``module.``, and exact."""
    wrapped = torch.nn.DataParallel(net)
    x = _sequence()
    graph = snncc.trace(wrapped, x, T=4)
    assert not any(n.path.startswith("module.") for n in graph.nodes.values())
    report = snncc.check(wrapped, x, target="onnx", T=4)
    assert report.min_agreement == 1.0
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})
    pickled = tmp_path / "wrapped.pt"
    torch.save(wrapped, pickled)
    assert main(["check", str(pickled), "--T", "4", "--input-shape", "2,16,16", "-t", "sim",
                 "--trust-checkpoint"]) == 0


_GAINED = '''
import torch
from torch import nn
from spikingjelly.activation_based import functional, layer, neuron


class Gained(nn.Module):
    """A gain the checkpoint does not hold (a non-persistent buffer), used in forward."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = layer.Linear(6, 8), layer.Linear(8, 4)
        self.sn1, self.sn2 = neuron.LIFNode(tau=2.0), neuron.IFNode(v_threshold=0.3)
        self.register_buffer("gain", torch.full((8,), 3.0), persistent=False)
        functional.set_step_mode(self, "m")

    def forward(self, x):
        return self.sn2(self.fc2(self.sn1(self.fc1(x) * self.gain))).mean(0)
'''


@pytest.mark.parametrize("gained", [False, True])
def test_a_users_model_is_built_without_initialising_weights_it_then_loads(net, tmp_path,
                                                                         monkeypatch, gained):
    """A model built by the user's factory takes the checkpoint's tensors, built on the meta
    device (one build); one that keeps a tensor the checkpoint does not hold is built again as
    the factory builds it (two), and checks exact either way."""
    from snncc.frontends import user_model

    calls = []
    build = user_model.build_model
    monkeypatch.setattr(user_model, "build_model",
                        lambda *a, **k: calls.append(k.get("meta", False)) or build(*a, **k))
    weights = tmp_path / "weights.pt"
    if gained:
        (tmp_path / "gained.py").write_text(_GAINED)
        torch.manual_seed(0)
        spec = f"{tmp_path / 'gained.py'}:Gained"
        model = user_model.build_model(spec, None)
        calls.clear()
        torch.save(model.state_dict(), weights)
        args = ["--input-shape", "6", "--T", "4", "--layout", "TB"]
    else:
        torch.save(net.state_dict(), weights)
        spec = f"{EXAMPLE}:ConvSNN"
        args = ["--model-args", '{"classes": 10}', "--input-shape", "2,16,16", "--T", "4"]
    assert main(["check", str(weights), "--model", spec, *args, "-t", "onnx", "--json",
                 str(tmp_path / "r.json")]) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["min_agreement"] == 1.0
    assert_rates_in_range({r["node"]: r["rate_reference"] for r in doc["layers"]})
    assert calls == ([True, False] if gained else [True])


class PositionEmbedded(torch.nn.Module):
    """A spiking ViT's patch embedding, a class token before the patches and a learnable
    position embedding (``cat([cls.expand(T, B, -1, -1), x], 2) + self.pos``, both refused
    before), a LIF over the tokens and a linear readout of the class token."""

    def __init__(self):
        super().__init__()
        from spikingjelly.activation_based import layer, neuron

        self.embed = layer.Conv2d(3, 8, 4, 4, step_mode="m")
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 1, 8))
        self.pos = torch.nn.Parameter(0.5 * torch.randn(1, 1, 5, 8))
        self.lif = neuron.LIFNode(step_mode="m")
        self.head = layer.Linear(8, 5, step_mode="m")

    def forward(self, x):  # [T, B, 3, 8, 8]
        T, B = x.shape[:2]
        patches = self.embed(x).flatten(3).transpose(-1, -2)
        tokens = torch.cat([self.cls.expand(T, B, -1, -1), patches], dim=2) + self.pos
        return self.head(self.lif(tokens)[:, :, 0]).mean(0)


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_a_class_token_and_a_position_embedding_are_exact_on_every_target(target):
    torch.manual_seed(0)
    model = PositionEmbedded().eval()
    x = 3 * torch.randn(4, 2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    report = snncc.check(model, x, target=target, layout="TB")
    assert report.min_agreement == 1.0
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


class LinearAttentionBlock(torch.nn.Module):
    """A spiking transformer block over tokens ``[T, B, N, d]`` written with Linear layers:
    ``q, k, v = qkv(x).chunk(3, -1)`` (refused before: "expects last axis"), heads by reshape and
    permute, SSA, a residual projection and MLP. ``qkv``: "timm" splits q, k and v as timm's
    attention does, ``qkv(x).reshape(T, B, N, 3, h, d / h).permute(3, 0, 1, 4, 2, 5)`` and
    ``qkv[0]``, ``qkv[1]``, ``qkv[2]`` (refused before: "it moves the time or batch axis");
    "timm-unbind" then takes ``qkv.unbind(0)``."""

    def __init__(self, d: int = 16, heads: int = 2, qkv: str = "chunk"):
        super().__init__()
        from spikingjelly.activation_based import layer, neuron

        self.heads, self.qkv_form = heads, qkv
        self.qkv = layer.Linear(d, 3 * d, bias=False, step_mode="m")
        self.bn = layer.BatchNorm1d(3 * d, step_mode="m")
        self.q_lif, self.k_lif, self.v_lif = (neuron.LIFNode(step_mode="m") for _ in range(3))
        self.attn_lif = neuron.LIFNode(v_threshold=0.5, step_mode="m")
        self.proj = layer.Linear(d, d, step_mode="m")
        self.mlp = torch.nn.Sequential(
            neuron.LIFNode(step_mode="m"), layer.Linear(d, 2 * d, step_mode="m"),
            neuron.LIFNode(step_mode="m"), layer.Linear(2 * d, d, step_mode="m"))

    def forward(self, x):
        T, B, N, d = x.shape
        qkv = self.bn(self.qkv(x).transpose(-1, -2)).transpose(-1, -2)
        if self.qkv_form == "chunk":
            q, k, v = qkv.chunk(3, dim=-1)

            def split(t):
                return t.reshape(T, B, N, self.heads, d // self.heads).permute(0, 1, 3, 2, 4)

            q, k, v = split(self.q_lif(q)), split(self.k_lif(k)), split(self.v_lif(v))
        else:
            qkv = qkv.reshape(T, B, N, 3, self.heads, d // self.heads).permute(3, 0, 1, 4, 2, 5)
            q, k, v = qkv.unbind(0) if self.qkv_form == "timm-unbind" else (qkv[0], qkv[1],
                                                                              qkv[2])
            q, k, v = self.q_lif(q), self.k_lif(k), self.v_lif(v)
        a = self.attn_lif((q @ k.transpose(-2, -1) @ v) * 0.5)
        x = x + self.proj(a.permute(0, 1, 3, 2, 4).reshape(T, B, N, d))
        return x + self.mlp(x)


class LinearAttentionNet(torch.nn.Module):
    def __init__(self, qkv: str = "chunk"):
        super().__init__()
        from spikingjelly.activation_based import layer, neuron

        self.embed = layer.Linear(8, 16, step_mode="m")
        self.block = LinearAttentionBlock(qkv=qkv)
        self.out_lif = neuron.IFNode(step_mode="m")
        self.head = layer.Linear(16, 4, step_mode="m")

    def forward(self, x):  # [T, B, N, 8]
        return self.head(self.out_lif(self.block(self.embed(x))).mean(2)).mean(0)


@pytest.mark.parametrize("target, qkv", [
    *((t, "chunk") for t in ("sim", "onnx", "nir", "lava")),
    *((t, "timm") for t in ("sim", "onnx", "nir", "lava")), ("sim", "timm-unbind")])
def test_a_transformer_written_with_linear_layers_is_exact_on_every_target(target, qkv):
    from snncc.frontends.zoo import randomize_bn

    torch.manual_seed(0)
    model = LinearAttentionNet(qkv).eval()
    randomize_bn(model, 0)
    with torch.no_grad():  # the MLP's second neuron fires
        model.block.mlp[1].weight.mul_(4.0)
        model.block.mlp[1].bias.fill_(0.6)
    x = 3 * torch.randn(4, 2, 6, 8, generator=torch.Generator().manual_seed(1))
    report = snncc.check(model, x, target=target, layout="TB")
    assert report.min_agreement == 1.0 and len(report.layers) == 7
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


class SuperLinear(torch.nn.Linear):
    """A weight-sharing supernet's linear layer (AutoFormer, Auto-Spikformer): the chosen
    sub-network uses the top-left block of the weight, through ``F.linear``; sliced in forward,
    or once when the sub-network is chosen (``hold``, as Auto-Spikformer's ``LinearSuper``)."""

    def choose(self, n_in: int, n_out: int, hold: bool = False):
        self.n_in, self.n_out = n_in, n_out
        self.held = (self.weight[:n_out, :n_in], self.bias[:n_out]) if hold else None

    def forward(self, x):
        w, b = self.held or (self.weight[:self.n_out, :self.n_in], self.bias[:self.n_out])
        return torch.nn.functional.linear(x, w, b)


class SuperBatchNorm(torch.nn.BatchNorm1d):
    """The first ``n`` channels of a BatchNorm, through ``F.batch_norm``."""

    def choose(self, n: int, hold: bool = False):
        self.n = n
        self.held = self._sliced() if hold else None

    def _sliced(self):
        n = self.n
        return (self.running_mean[:n], self.running_var[:n], self.weight[:n], self.bias[:n])

    def forward(self, x):
        mean, var, w, b = self.held or self._sliced()
        return torch.nn.functional.batch_norm(x, mean, var, w, b, self.training, 0.1, self.eps)


class SuperNet(torch.nn.Module):
    """A spiking supernet's sub-network: a convolution with the first channels of a larger
    kernel (``F.conv2d``), sliced BatchNorms, a token MLP of sliced Linear layers, LIFs."""

    def __init__(self, hold: bool = False):
        super().__init__()
        from spikingjelly.activation_based import neuron

        self.kernel = torch.nn.Parameter(torch.randn(12, 2, 3, 3) / 3)
        self.bn0, self.bn1 = SuperBatchNorm(12), SuperBatchNorm(24)
        self.fc1, self.fc2 = SuperLinear(12, 24), SuperLinear(24, 5)
        self.lif0, self.lif1 = neuron.LIFNode(step_mode="m"), neuron.LIFNode(step_mode="m")
        self.bn0.choose(8, hold)
        self.bn1.choose(16, hold)
        self.fc1.choose(8, 16, hold)
        self.fc2.choose(16, 5, hold)
        self.held = self.kernel[:8] if hold else None

    def forward(self, x):  # [T, B, 2, 6, 6]
        T, B = x.shape[:2]
        kernel = self.kernel[:8] if self.held is None else self.held
        y = torch.nn.functional.conv2d(x.flatten(0, 1), kernel, padding=1)
        s = self.lif0(self.bn0(y.flatten(2)).reshape(T, B, 8, 36))
        z = self.fc1(s.transpose(-1, -2))  # [T, B, 36, 16]
        z = self.bn1(z.flatten(0, 1).transpose(-1, -2)).transpose(-1, -2).reshape(T, B, 36, 16)
        return self.fc2(self.lif1(z)).mean(2).mean(0)


def _supernet(hold: bool = False) -> SuperNet:
    from snncc.frontends.zoo import randomize_bn

    torch.manual_seed(0)
    model = SuperNet(hold).eval()
    randomize_bn(model, 0)
    with torch.no_grad():
        model.fc1.bias.add_(0.3)
    return model


def _supernet_input():
    return 2 * torch.randn(4, 2, 2, 6, 6, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_a_supernets_functional_layers_with_sliced_weights_are_exact(target):
    """F.conv2d, F.linear and F.batch_norm with slices of the supernet's parameters map to the
    layers their modules map to (they were refused as unsupported ops)."""
    report = snncc.check(_supernet(), _supernet_input(), target=target, layout="TB")
    assert report.min_agreement == 1.0 and len(report.layers) == 2
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})
    graph = snncc.trace(_supernet(), _supernet_input(), layout="TB")
    assert sorted(n.weight.shape for n in graph if n.op in ("Conv2d", "Linear")) == \
        [(5, 16), (8, 2, 3, 3), (16, 8)]


def test_views_of_parameters_held_outside_forward_are_not_converted():
    """Slices taken when the sub-network is chosen stay behind when the model is converted to
    float64 (float32, no longer views): the float64 check is refused before it converts
    anything, the check in the model's own dtype is exact, and the views stay views."""
    model = _supernet(hold=True)
    with pytest.raises(SnnccError, match=r"keeps 'held', a view of 'kernel'.* \(and 12 more\): "
                       r"running it in float64 .*\(--dtype float32\)"):
        snncc.check(model, _supernet_input(), target="sim", layout="TB")
    report = snncc.check(model, _supernet_input(), target="sim", layout="TB", dtype="float32")
    assert report.min_agreement == 1.0
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})
    assert model.held.data_ptr() == model.kernel.data_ptr()
    assert model.fc1.held[0].untyped_storage().data_ptr() == \
        model.fc1.weight.untyped_storage().data_ptr()


class _BatchStatistics(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = torch.nn.Conv2d(2, 4, 3), torch.nn.BatchNorm2d(4)

    def forward(self, x):
        bn = self.bn
        return torch.nn.functional.batch_norm(self.conv(x), bn.running_mean, bn.running_var,
                                              training=True)


class _InputWeighted(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.linear(x, x[0])  # [T, B, 6] by the first step [B, 6]


@pytest.mark.parametrize("model,x,message", [
    (_BatchStatistics(), torch.rand(2, 2, 6, 6),
     r"'torch.nn.functional.batch_norm' is not supported \(training=True normalises with the "
     r"batch's own statistics"),
    (_InputWeighted(), torch.rand(4, 2, 6),
     r"'torch.linear' is not supported \(its weight is computed from the input\)"),
])
def test_functional_layers_the_graph_cannot_hold_are_refused_saying_why(model, x, message):
    with pytest.raises(SnnccError, match=message):
        snncc.trace(model.eval(), x, T=4, layout="static" if x.dim() == 4 else "TB")


_DICT_HELD = '''
import torch
from spikingjelly.activation_based import neuron


class DictHeld(torch.nn.Module):
    """Slices of its weights chosen once and kept in a dict (AutoFormer's ``samples``)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(12, 16)
        self.head = torch.nn.Linear(8, 3)
        self.lif = neuron.LIFNode(step_mode="m")
        self.samples = {"weight": self.fc.weight[:8], "bias": self.fc.bias[:8]}

    def forward(self, x):  # [T, B, 12]
        w, b = self.samples["weight"], self.samples["bias"]
        return self.head(self.lif(torch.nn.functional.linear(x, w, b))).mean(0)
'''


def test_a_checkpoint_for_code_that_keeps_weight_slices_in_a_dict(tmp_path, capsys):
    """Built on the meta device, such a model kept meta slices in its dict once the checkpoint's
    tensors had replaced its weights, and failed in its own forward ('Tensor on device meta');
    it is now built again and the weights copied in. Its float32 check is exact; the float64
    one is refused in one line, naming the slice."""
    from snncc.frontends import user_model

    (tmp_path / "dict_held.py").write_text(_DICT_HELD)
    spec = f"{tmp_path / 'dict_held.py'}:DictHeld"
    torch.manual_seed(0)
    model = user_model.build_model(spec, None)
    with torch.no_grad():
        model.fc.weight.mul_(3.0)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    args = ["check", str(tmp_path / "w.pt"), "--model", spec, "--input-shape", "12", "--T", "4",
            "--layout", "TB", "-t", "sim"]
    assert main([*args, "--dtype", "float32", "--json", str(tmp_path / "r.json")]) == 0
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["min_agreement"] == 1.0
    assert_rates_in_range({r["node"]: r["rate_reference"] for r in doc["layers"]})
    capsys.readouterr()
    assert main(args) == 1
    assert "keeps 'samples['weight']', a view of 'fc.weight'" in _one_error_line(capsys)


class RecurrentContainers(torch.nn.Module):
    """spikingjelly's recurrent containers around single-step neurons:
    ``LinearRecurrentContainer`` (y[t] = IF(W [x[t], y[t-1]] + b)) and
    ``ElementWiseRecurrentContainer`` (y[t] = LIF(x[t] + y[t-1]))."""

    def __init__(self):
        super().__init__()
        from spikingjelly.activation_based import layer, neuron

        self.fc = layer.Linear(8, 12, step_mode="m")
        self.linear_rec = layer.LinearRecurrentContainer(
            neuron.IFNode(step_mode="s"), in_features=12, out_features=12, step_mode="m")
        self.element_rec = layer.ElementWiseRecurrentContainer(
            neuron.LIFNode(step_mode="s"), element_wise_function=lambda x, y: x + y,
            step_mode="m")
        self.mid = layer.Linear(12, 12, step_mode="m")
        self.head = layer.Linear(12, 4, step_mode="m")

    def forward(self, x):  # [T, B, 8]
        return self.head(self.element_rec(self.mid(self.linear_rec(self.fc(x))))).mean(0)


def _recurrent_containers(seed: int):
    torch.manual_seed(seed)
    model = RecurrentContainers().eval()
    with torch.no_grad():
        model.fc.weight.mul_(4.0)
        model.linear_rec.rc.weight.mul_(3.0)
        model.mid.weight.mul_(4.0)
        model.mid.bias.add_(0.8)
    return model, torch.rand(6, 3, 8, generator=torch.Generator().manual_seed(seed + 10))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_spikingjellys_recurrent_containers_are_exact_on_every_target(target, seed):
    """Their loops (the container's output a step back, concatenated with the input before a
    Linear, or added to it) run on every target, Lava included since it runs loops."""
    model, x = _recurrent_containers(seed)
    report = snncc.check(model, x, target=target, layout="TB")
    assert report.min_agreement == 1.0 and len(report.layers) == 2
    assert report.output_max_abs_diff_target <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


@pytest.mark.filterwarnings("ignore::snncc.passes.quantize.QuantizationWarning")
def test_spikingjellys_recurrent_containers_in_loihi2_arithmetic_on_lava():
    """Quantized, the loops stay on the chip: Lava's fixed_pt spikes equal the Loihi 2
    simulator's (the element-wise loop adds spikes to a current, which forces that current to
    the spikes' unit scale: the quantizer warns, and float agreement is 0.7-0.8)."""
    model, x = _recurrent_containers(0)
    report = snncc.check(model, x, target="lava", layout="TB", fixed_point=True)
    assert [r.agreement_sim_target for r in report.layers] == [1.0, 1.0]
    assert all(0.05 < r.rate_sim < 0.95 for r in report.layers)


def _soft_reset_net(seed: int):
    """spikingjelly's soft-reset neurons (``v_reset=None``: v -= v_threshold on a spike, fired
    on v >= v_threshold), a LIF and an IF."""
    from spikingjelly.activation_based import layer, neuron

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        layer.Linear(8, 12, step_mode="m"), neuron.LIFNode(v_reset=None, step_mode="m"),
        layer.Linear(12, 6, step_mode="m"), neuron.IFNode(v_reset=None, step_mode="m"),
        layer.Linear(6, 3, step_mode="m")).eval()
    with torch.no_grad():
        model[0].weight.mul_(6.0)
        model[2].weight.mul_(4.0)
    return model, torch.rand(6, 3, 8, generator=torch.Generator().manual_seed(seed + 20))


@pytest.mark.parametrize("fixed_point", [False, True], ids=["float", "fixed-point"])
@pytest.mark.parametrize("seed", [0, 1])
def test_soft_reset_neurons_run_on_lava_in_its_custom_neuron(seed, fixed_point):
    """Lava's LIF resets hard, and '>=' cannot move past a soft reset's subtraction: these
    neurons used to be refused ("soft reset is not supported"); they now run in snncc's custom
    neuron process (floating_pt, or Loihi2LIF in fixed point), and the manifest says why.
    Float: identical to the model's forward; fixed point: identical to snncc's Loihi 2
    simulator (the quantization itself differs from float, as everywhere)."""
    model, x = _soft_reset_net(seed)
    report = snncc.check(model, x, target="lava", layout="TB", fixed_point=fixed_point)
    assert [r.path for r in report.layers] == ["1", "3"]
    assert all(r.agreement_sim_target == 1.0 for r in report.layers)
    if not fixed_point:
        assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


def test_a_soft_reset_neuron_is_named_a_custom_neuron_in_the_lava_manifest(tmp_path):
    model, x = _soft_reset_net(0)
    snncc.compile(model, x, target="lava", layout="TB", out=tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert {p["name"]: p["type"] for p in doc["processes"]}["1"] == "CanonicalLIF"
    assert "resets hard" in doc["custom_neurons"]["1"]


def test_spikingjelly_single_step_network_on_encoded_spikes_through_the_cli(tmp_path, capsys):
    """spikingjelly's tutorials train a single-step network in a loop outside it, on input
    spikes a Poisson encoder draws per step (``for t in range(T): out_fr += net(encoder(x))``):
    given T and the encoded spikes ``[T, B, ...]``, the graph is that loop; exact on sim and
    nir through the CLI, which says so."""
    sj = pytest.importorskip("spikingjelly.activation_based")
    from spikingjelly.activation_based import layer, neuron

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        layer.Conv2d(1, 8, 3, padding=1, bias=False), layer.BatchNorm2d(8), neuron.LIFNode(),
        layer.MaxPool2d(2), layer.Flatten(), layer.Linear(8 * 4 * 4, 10), neuron.LIFNode())
    with torch.no_grad():
        net[0].weight.mul_(3)
        net[5].weight.mul_(5)
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].bias.uniform_(0.2, 0.6)
    torch.save(net, tmp_path / "net.pt")
    spikes = (np.random.default_rng(1).random((6, 4, 1, 8, 8)) < 0.4).astype(np.float64)
    np.save(tmp_path / "x.npy", spikes)
    for target in ("sim", "nir"):
        assert main(["check", str(tmp_path / "net.pt"), "--trust-checkpoint", "--T", "6",
                     "--input-shape", "1,8,8",
                     "--layout", "TB", "--inputs", str(tmp_path / "x.npy"), "-t", target,
                     "--json", str(tmp_path / "r.json")]) == 0
        out = capsys.readouterr().out
        assert "the model's forward is one time step" in out
        rep = json.loads((tmp_path / "r.json").read_text())
        assert rep["min_agreement"] == 1.0 and rep["output_max_abs_diff_target"] == 0.0
        assert_rates_in_range({r["node"]: r["rate_reference"] for r in rep["layers"]})


def test_spikingjelly_examples_stateful_synapse_net():
    """spikingjelly's own example ``activation_based/examples/rsnn_sequential_fmnist.py``
    (its ``StatefulSynapseNet``, written here as there: that file imports torchvision): a
    ``layer.SynapseFilter`` between two IF layers, multi-step over a sequence of rows. The
    filter's first step multiplies ``(1 - x)`` by its zero current (refused before: "(constant
    - tensor) is taken only as a factor of a product"); exact on sim and lava."""
    pytest.importorskip("spikingjelly.activation_based")
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    class StatefulSynapseNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Sequential(
                layer.Linear(28, 32),
                neuron.IFNode(surrogate_function=surrogate.ATan()),
                layer.SynapseFilter(tau=2.0, learnable=True),
                layer.Linear(32, 10),
                neuron.IFNode(surrogate_function=surrogate.ATan()),
            )

        def forward(self, x: torch.Tensor):
            return self.fc(x).mean(0)

    torch.manual_seed(0)
    net = StatefulSynapseNet()
    functional.set_step_mode(net, "m")
    with torch.no_grad():
        net.fc[0].weight.mul_(2)
        net.fc[3].weight.mul_(2)
    x = torch.rand(28, 3, 28, generator=torch.Generator().manual_seed(1))
    for target in ("sim", "lava"):
        rep = snncc.check(net, x, target=target, layout="TB")
        assert rep.min_agreement == 1.0 and rep.output_max_abs_diff_target == 0.0, rep.format()
        assert_rates_in_range({r.node: r.rate_reference for r in rep.layers})


class SteppedMultiStep(torch.nn.Module):
    """A multi-step neuron (spikingjelly 2.0, ``step_mode='m'``) called once per step on a
    sequence of one step, ``x[i].unsqueeze(0)``, in the model's own loop, with its spikes fed
    back through a Linear and a second multi-step LIF into the next step's input (the recurrent
    coding of KirinZheng/spike_diversity's Spikformer); ``whole``: ``lif`` also called on the
    whole sequence after the loop."""

    def __init__(self, whole: bool = False):
        super().__init__()
        from spikingjelly.activation_based import neuron

        self.T, self.whole = 5, whole
        self.fc_in, self.fc_back, self.head = (torch.nn.Linear(8, 12), torch.nn.Linear(12, 12),
                                               torch.nn.Linear(12, 3))
        self.lif = neuron.LIFNode(tau=2.0, detach_reset=True, step_mode="m")
        self.back_lif = neuron.LIFNode(tau=2.0, detach_reset=True, step_mode="m")

    def forward(self, x):  # [B, 8], repeated over T
        x = self.fc_in(x.unsqueeze(0).repeat(self.T, 1, 1))
        steps = []
        for i in range(self.T):
            x_in = x[i] if i == 0 else x[i] + back  # noqa: F821 (the step before's)
            s = self.lif(x_in.unsqueeze(0)).squeeze(0)
            steps.append(s)
            back = self.back_lif(self.fc_back(s).unsqueeze(0)).squeeze(0)
        y = torch.stack(steps)
        if self.whole:
            y = self.lif(y)
        return self.head(y).mean(0)


def _stepped_multi_step(seed: int, whole: bool = False):
    torch.manual_seed(seed)
    model = driven(SteppedMultiStep(whole).double().eval(), fc_in=(4.0, 0.6),
                   fc_back=(3.0, 0.8))
    return model, torch.rand(4, 8, generator=torch.Generator().manual_seed(seed + 30),
                             dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_a_multi_step_neuron_called_once_per_step_is_exact_on_every_target(target, seed):
    """Its k-th call is step k, as a single-step neuron's (it was refused: "a multi-step neuron
    needs a [T, B, ...] input and no state"); the loop through the second neuron runs on
    Lava too."""
    pytest.importorskip("spikingjelly.activation_based")
    model, x = _stepped_multi_step(seed)
    report = snncc.check(model, x, target=target)
    assert report.min_agreement == 1.0 and len(report.layers) == 2
    assert report.output_max_abs_diff_target <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


def test_a_multi_step_neuron_called_per_step_and_on_the_sequence_is_refused():
    """Its second use would go on from the membrane the steps left: one neuron of the graph
    cannot be both."""
    pytest.importorskip("spikingjelly.activation_based")
    model, x = _stepped_multi_step(0, whole=True)
    with pytest.raises(SnnccError, match="module 'lif'.*called a second time in one forward"):
        snncc.trace(model, x)


class FoldedProjection(torch.nn.Module):
    """QKFormer's official spiking self-attention (zhouchenlin2096/QKFormer, every data set's
    ``Spiking_Self_Attention``), written as it is: Conv1d-BN-LIF for q, k and v on the steps
    folded into the batch, ``(q @ (k^T @ v)) * scale`` through ``attn_lif`` (threshold 0.5),
    and ``proj_lif(proj_bn(proj_conv(x.flatten(0, 1))))``: the multi-step ``proj_lif`` steps
    along ``[T*B, C, N]``, time and batch together. ``lif(threshold)``: its multi-step LIF
    (spikingjelly 2.0's by default; the official code's is 0.0.0.0.14's MultiStepLIFNode)."""

    def __init__(self, lif=None, dim: int = 8, heads: int = 2):
        super().__init__()
        if lif is None:
            from spikingjelly.activation_based import neuron

            def lif(threshold=1.0):
                return neuron.LIFNode(tau=2.0, v_threshold=threshold, detach_reset=True,
                                      step_mode="m")

        self.T, self.dim, self.heads = 4, dim, heads
        self.embed, self.embed_bn, self.embed_lif = torch.nn.Conv2d(2, dim, 3, padding=1), \
            torch.nn.BatchNorm2d(dim), lif()
        for n in "qkv":
            setattr(self, f"{n}_conv", torch.nn.Conv1d(dim, dim, 1, bias=False))
            setattr(self, f"{n}_bn", torch.nn.BatchNorm1d(dim))
            setattr(self, f"{n}_lif", lif())
        self.attn_lif = lif(0.5)
        self.proj_conv, self.proj_bn = torch.nn.Conv1d(dim, dim, 1), torch.nn.BatchNorm1d(dim)
        self.proj_lif = lif()
        self.head = torch.nn.Linear(dim, 3)

    def forward(self, x):  # [B, 2, H, W], repeated over T
        T, (B, _, H, W), C = self.T, x.shape, self.dim
        x = self.embed_bn(self.embed(x)).unsqueeze(0).repeat(T, 1, 1, 1, 1)
        x = self.embed_lif(x).flatten(3)  # [T, B, C, N]
        N, folded = H * W, x.flatten(0, 1)

        def heads(n):
            s = getattr(self, f"{n}_lif")(getattr(self, f"{n}_bn")(
                getattr(self, f"{n}_conv")(folded)).reshape(T, B, C, N))
            return s.transpose(-1, -2).reshape(T, B, N, self.heads, C // self.heads) \
                .permute(0, 1, 3, 2, 4)

        q, k, v = heads("q"), heads("k"), heads("v")
        y = (q @ (k.transpose(-2, -1) @ v)) * 0.25
        y = self.attn_lif(y.transpose(3, 4).reshape(T, B, C, N)).flatten(0, 1)
        y = self.proj_lif(self.proj_bn(self.proj_conv(y))).reshape(T, B, C, H, W)
        return self.head((x.reshape(T, B, C, H, W) + y).flatten(3).mean(3).mean(0))


def _folded_projection(seed: int, lif=None):
    torch.manual_seed(seed)
    model = randomize_batchnorms(FoldedProjection(lif).double().eval(),
                                 np.random.default_rng(seed))
    with torch.no_grad():
        for conv, bn, gain in [(model.embed, None, 2.0), (model.proj_conv, model.proj_bn, 3.0),
                               *[(getattr(model, f"{n}_conv"), getattr(model, f"{n}_bn"), 6.0)
                                 for n in "qkv"]]:  # so that every layer fires
            conv.weight.mul_(gain)
            if bn is not None:
                bn.bias.abs_()
    x = 2 * torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(seed + 10),
                       dtype=torch.float64)
    return model, x


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_qkformers_attention_on_time_and_batch_folded_together_is_exact_on_every_target(
        target, seed, tmp_path):
    """It was refused ("its input has time and batch folded into one axis"). The model's
    ``proj_lif`` carries its state from one sample into the next, so its own outputs at batch
    3 depend on the rest of the batch; at batch 1 it steps along time alone. The graph
    computes every sample so, and check runs the model one sample at a time and says why."""
    pytest.importorskip("spikingjelly.activation_based")
    model, x = _folded_projection(seed)
    report = snncc.check(model, x, target=target)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert report.batch_coupled == {"proj_lif": "T*B"}
    assert "the PyTorch model ran one sample at a time" in report.format()
    assert len(report.layers) == 6
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})
    if target == "sim":
        logged = []
        out = snncc.compile(model, x, target="sim", out=tmp_path / "m",
                            log=logged.append)
        assert any("step along [T*B, ...]" in line for line in logged), logged
        with torch.no_grad():
            whole = model(x).numpy()
        alone = snncc.run(out, x.numpy())
        assert not np.allclose(whole, alone)  # the model's samples depend on each other
        data = tmp_path / "set.npz"
        np.savez(data, x=torch.cat([x, x.flip(0)]).numpy(), y=np.arange(6) % 3)
        checked = check_dataset(model, str(data), x, batch=4)
        assert checked.min_agreement == 1.0 and checked.samples == 6
        assert checked.batch_coupled == {"proj_lif": "T*B"}
        assert "the PyTorch model ran one sample at a time" in checked.format()


class FullSizeConvHead(torch.nn.Module):
    """SGLFormer's classifier head (ZhangHanN1/SGLFormer, every data set's ``vit_snn``) as it
    is written: the last block's spikes ``[T, B, C, H, W]`` flattened and permuted to ``[B, C,
    N, T]``, time last, then ``full_size_conv``, a depthwise Conv2d whose kernel (N, T) spans
    every position and step, BatchNorm2d and a Linear."""

    def __init__(self, kernel_t: int = 4, size: int = 3, channels: int = 6):
        super().__init__()
        from spikingjelly.activation_based import neuron

        self.T = 4
        self.conv, self.lif = torch.nn.Conv2d(3, channels, 3, padding=1), \
            neuron.LIFNode(tau=2.0, detach_reset=True, step_mode="m")
        self.full_size_conv = torch.nn.Conv2d(channels, channels, (size * size, kernel_t),
                                              groups=channels)
        self.bn = torch.nn.BatchNorm2d(channels)
        self.head = torch.nn.Linear(channels * (self.T - kernel_t + 1), 5)

    def forward(self, x):  # [B, 3, H, W], repeated over T
        x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        T, B, _, H, W = x.shape
        x = self.lif(self.conv(x.flatten(0, 1)).reshape(T, B, -1, H, W))
        x = x.flatten(3).permute(1, 2, 3, 0)
        return self.head(self.bn(self.full_size_conv(x)).reshape(B, -1))


def _full_size_conv_head(seed: int, kernel_t: int = 4):
    torch.manual_seed(seed)
    model = driven(FullSizeConvHead(kernel_t).double().eval(), conv=(3.0, 0.6))
    randomize_batchnorms(model, np.random.default_rng(seed))
    return model, 2 * torch.rand(3, 3, 3, 3, generator=torch.Generator().manual_seed(seed),
                                 dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_a_convolution_whose_kernel_spans_positions_and_time_is_exact_on_every_target(
        target, seed):
    """SGLFormer's head was refused ("it moves the time axis last"): the sum over the steps of
    each step's spikes convolved with the kernel's slice for that step, read at the last
    step."""
    pytest.importorskip("spikingjelly.activation_based")
    model, x = _full_size_conv_head(seed)
    report = snncc.check(model, x, target=target)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-9
    assert report.output_max_abs_diff_sim <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})
    from spikingjelly.activation_based.functional import reset_net

    with torch.no_grad():  # each step's slice of the kernel counts: reversed in time, it differs
        before = model(x)
        reset_net(model)
        model.full_size_conv.weight.copy_(model.full_size_conv.weight.flip(-1))
        assert not torch.allclose(before, model(x))


def test_a_convolution_over_time_moved_last_that_does_not_span_it_is_refused():
    pytest.importorskip("spikingjelly.activation_based")
    model, x = _full_size_conv_head(0, kernel_t=2)
    with pytest.raises(SnnccError, match=r"module 'full_size_conv'.*kernel that spans all T "
                                         r"steps"):
        snncc.trace(model, x)


class WindowAttention(torch.nn.Module):
    """SGLFormer's local spiking self-attention (``LocalSSA``, every data set's file), written
    as it is: ``Partition`` reshapes ``[T, B, C, H, W]`` so that each sample's n x n windows
    (strided: window (i, j) holds positions (a n + i, b n + j)) join the batch axis, ``[T, B*n*n,
    C, H/n, W/n]``; 1x1 Conv-BN-LIF for q, k and v on the steps folded with it, ``(q @ k^T) @
    v * 0.125`` per head through ``attn_lif``, a projection, and ``Integration`` puts the
    windows back. ``variant``: "3x3" kernels for q, k, v and the projection, "functional"
    convolutions and BatchNorms, or a way to break it that snncc must refuse."""

    def __init__(self, variant: str = "", dim: int = 8, heads: int = 2, n: int = 2):
        super().__init__()
        from spikingjelly.activation_based import neuron

        def lif(threshold=1.0):
            return neuron.LIFNode(tau=2.0, v_threshold=threshold, detach_reset=True,
                                  step_mode="m")

        self.T, self.dim, self.heads, self.n, self.variant = 4, dim, heads, n, variant
        self.embed, self.embed_bn, self.embed_lif = torch.nn.Conv2d(2, dim, 3, padding=1), \
            torch.nn.BatchNorm2d(dim), lif()
        kernel = 3 if variant == "3x3" else 1
        for name in ("q", "k", "v", "proj"):
            setattr(self, f"{name}_conv", torch.nn.Conv2d(dim, dim, kernel, padding=kernel // 2,
                                                          bias=False))
            setattr(self, f"{name}_bn", torch.nn.BatchNorm2d(dim))
            setattr(self, f"{name}_lif", lif())
        self.attn_lif = lif(0.5)
        self.head = torch.nn.Linear(dim, 3)

    def conv1x1(self, name, x):  # SGLFormer's Conv1x1: [T, B, C, H, W] -> its LIF's spikes
        T, B, C, H, W = x.shape
        conv, bn = getattr(self, f"{name}_conv"), getattr(self, f"{name}_bn")
        if self.variant == "functional":  # (the front-end fuzzer's form that was refused)
            F = torch.nn.functional
            y = F.batch_norm(F.conv2d(x.flatten(0, 1), conv.weight), bn.running_mean,
                             bn.running_var, bn.weight, bn.bias, eps=bn.eps)
        else:
            y = bn(conv(x.flatten(0, 1)))
        return getattr(self, f"{name}_lif")(y.reshape(T, B, C, H, W))

    def forward(self, x):  # [B, 2, H, W], repeated over T
        x = self.embed_bn(self.embed(x)).unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        x = self.embed_lif(x)
        T, B, C, H, W = x.shape
        n = self.n
        w = x.reshape(T, B, C, H // n, n, W // n, n).permute(0, 1, 4, 6, 2, 3, 5)
        w = w.reshape(T, -1, C, H // n, W // n)
        T, Bw, C, h, ww = w.shape
        if self.variant == "mean":
            return self.head(w.mean(1).flatten(2).mean(2).mean(0))

        def heads(name):
            s = self.conv1x1(name, w).flatten(3).transpose(-1, -2)
            return s.reshape(T, Bw, -1, self.heads, C // self.heads).permute(0, 1, 3, 2, 4)

        q, k, v = heads("q"), heads("k"), heads("v")
        scale = 0.5 if self.variant == "3x3" else 0.25  # (3x3 kernels start smaller)
        y = self.attn_lif((q @ k.transpose(-2, -1)) @ v * scale)
        y = y.transpose(3, 4).reshape(T, Bw, C, -1).reshape(T, Bw, C, h, ww)
        y = self.conv1x1("proj", y)
        if self.variant == "windows_out":
            return y
        if self.variant == "batch_moved":
            y = y.transpose(0, 1)
        y = y.reshape(T, -1, n, n, C, h, ww).permute(0, 1, 4, 5, 2, 6, 3)
        y = (x + y.reshape(T, -1, C, H, W)).flatten(3).mean(3)
        return self.head(y.mean(0))


def _window_attention(seed: int, variant: str = ""):
    torch.manual_seed(seed)
    model = randomize_batchnorms(WindowAttention(variant).double().eval(),
                                 np.random.default_rng(seed), positive_bias=True)
    with torch.no_grad():
        for name in ("q", "k", "v", "proj"):  # so that every layer fires
            getattr(model, f"{name}_conv").weight.mul_(6.0)
    x = 2 * torch.rand(3, 2, 8, 6, generator=torch.Generator().manual_seed(seed + 10),
                       dtype=torch.float64)
    return model, x


@pytest.mark.parametrize("seed, variant", [(0, ""), (1, ""), (0, "functional"), (0, "3x3")])
@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_a_window_attention_with_windows_folded_into_the_batch_is_exact_on_every_target(
        target, seed, variant):
    """SGLFormer's LocalSSA was refused ("it mixes the time or batch axis with feature axes"):
    the windows moved into the batch axis are the first per-sample axis of the IR's values,
    which convolutions (1x1: the windows side by side; 3x3: stacked on the channel axis, with
    the kernel repeated per window), BatchNorm, neurons and matmuls take as a batch (also
    written with F.conv2d and F.batch_norm)."""
    pytest.importorskip("spikingjelly.activation_based")
    model, x = _window_attention(seed, variant)
    report = snncc.check(model, x, target=target)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-9
    assert report.output_max_abs_diff_sim <= 1e-12 and len(report.layers) == 6
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


@pytest.mark.parametrize("variant, message", [
    ("mean", r"op 'Tensor.mean' is not supported \(it computes on windows of each sample "
             r"folded into the batch axis"),
    ("batch_moved", r"op 'Tensor.transpose' is not supported \(it moves the batch axis that "
                    r"holds windows"),
    ("windows_out", r"returns windows of each sample folded into the batch axis"),
])
def test_what_would_mix_windows_folded_into_the_batch_with_other_samples_is_refused(
        variant, message):
    """An op over the axis that holds B samples' windows would mix samples; so would moving
    it or returning it (the graph's values are one sample's)."""
    pytest.importorskip("spikingjelly.activation_based")
    model, x = _window_attention(0, variant)
    with pytest.raises(SnnccError, match=message):
        snncc.trace(model, x)


class SpikingDecoder(torch.nn.Module):
    """A detector neck's / U-Net's upsampling of spikes, written with torch's modules: steps
    folded by ``nn.Flatten(0, 1)`` and unfolded by ``nn.Unflatten(0, (T, -1))``, ``nn.ZeroPad2d``
    before a convolution, ``nn.Upsample(scale_factor=2)`` (``F.interpolate(size=...)`` with
    ``functional``) and a skip connection concatenated on channels (each module was refused)."""

    def __init__(self, functional: bool = False):
        super().__init__()
        from spikingjelly.activation_based import neuron

        self.T, self.functional = 4, functional
        self.fold, self.unfold = torch.nn.Flatten(0, 1), torch.nn.Unflatten(0, (4, -1))
        self.down = torch.nn.Sequential(torch.nn.ZeroPad2d(1), torch.nn.Conv2d(2, 4, 3, stride=2))
        self.up = torch.nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = torch.nn.Conv2d(6, 4, 3, padding=1)
        self.lif1, self.lif2, self.lif3 = (neuron.LIFNode(step_mode="m") for _ in range(3))
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):  # [B, 2, 8, 6]
        x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        skip = self.lif1(x)
        low = self.lif2(self.unfold(self.down(self.fold(skip))))
        low = self.fold(low)
        up = torch.nn.functional.interpolate(low, size=(8, 6)) if self.functional \
            else self.up(low)
        y = self.lif3(self.unfold(self.fuse(torch.cat([up, self.fold(skip)], dim=1))))
        return self.head(y.mean((-2, -1))).mean(0)


@pytest.mark.parametrize("functional", [False, True], ids=["modules", "interpolate"])
@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_upsampling_of_spikes_in_a_decoder_is_exact_on_every_target(target, functional):
    torch.manual_seed(0)
    model = driven(SpikingDecoder(functional).double().eval(), **{"down.1": (3.0, 0.5)},
                   fuse=(3.0, 1.5))
    x = 3 * torch.rand(3, 2, 8, 6, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)
    report = snncc.check(model, x, target=target)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert [r.path for r in report.layers] == ["lif1", "lif2", "lif3"]
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


class PoolMixer(torch.nn.Module):
    """PoolFormer's token mixer in a spiking block (MaxFormer's ``Avg_Mixer``, bic-L/MaxFormer
    ``mixer_hub.py``): ``AvgPool2d(3, 1, 1, count_include_pad=False)`` of the spikes on the
    steps folded into the batch, each border window divided by its positions inside the image
    (it was refused), added to the block's input, then a Conv-BN-LIF; ``functional``:
    ``F.avg_pool2d``, and a 1-D pool over tokens."""

    def __init__(self, functional: bool = False):
        super().__init__()
        from spikingjelly.activation_based import neuron

        self.T, self.functional = 4, functional
        self.conv, self.bn = torch.nn.Conv2d(2, 6, 3, padding=1), torch.nn.BatchNorm2d(6)
        self.pool = torch.nn.AvgPool2d(3, 1, 1, count_include_pad=False)
        self.mix, self.mix_bn = torch.nn.Conv2d(6, 6, 1), torch.nn.BatchNorm2d(6)
        self.lif1, self.lif2 = neuron.LIFNode(step_mode="m"), neuron.LIFNode(step_mode="m")
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x):  # [B, 2, H, W], repeated over T
        x = self.bn(self.conv(x)).unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        s = self.lif1(x)
        T, B, C, H, W = s.shape
        f = s.flatten(0, 1)
        if self.functional:
            pooled = torch.nn.functional.avg_pool1d(f.flatten(2), 5, 1, 2,
                                                    count_include_pad=False).reshape(f.shape)
        else:
            pooled = self.pool(f)
        y = s + pooled.reshape(T, B, C, H, W)
        y = self.lif2(self.mix_bn(self.mix(y.flatten(0, 1))).reshape(T, B, C, H, W))
        return self.head(y.flatten(3).mean(3).mean(0))


def _pool_mixer(seed: int, functional: bool = False):
    torch.manual_seed(seed)
    model = driven(PoolMixer(functional).double().eval(), conv=(2.0, 0.5), mix=(2.0, 0.0))
    randomize_batchnorms(model, np.random.default_rng(seed))
    return model, 2 * torch.rand(3, 2, 5, 6, generator=torch.Generator().manual_seed(seed + 3),
                                 dtype=torch.float64)


@pytest.mark.parametrize("functional", [False, True], ids=["module", "function"])
@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_average_pooling_without_count_include_pad_is_exact_on_every_target(target,
                                                                            functional):
    pytest.importorskip("spikingjelly.activation_based")
    model, x = _pool_mixer(0, functional)
    report = snncc.check(model, x, target=target)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})
    pools = [n for n in snncc.trace(model, x).nodes.values() if n.op == "AvgPool2d"]
    assert len(pools) == 1 and not pools[0].count_include_pad
    if not functional:  # counting the padding gives other border values
        from spikingjelly.activation_based.functional import reset_net

        with torch.no_grad():
            before = model(x)
            reset_net(model)
            model.pool.count_include_pad = True
            assert not torch.allclose(before, model(x))


def test_a_nir_file_holds_an_average_pooling_without_count_include_pad_as_standard_nodes(
        tmp_path):
    """SumPool2d, then a Scale by 1 / each window's positions inside the input: what a NIR
    consumer computes (up to the rounding of the reciprocal); snncc reads the pair back as the
    pooling itself, exactly."""
    import nir

    pytest.importorskip("spikingjelly.activation_based")
    model, x = _pool_mixer(1)
    path = snncc.compile(model, x, target="nir", out=tmp_path / "m")
    graph = nir.read(str(path), type_check=False)
    pool_sum = next(k for k, v in graph.nodes.items() if isinstance(v, nir.SumPool2d))
    scale = next(v for k, v in graph.nodes.items() if (pool_sum, k) in graph.edges)
    assert isinstance(scale, nir.Scale)
    counts = np.array([[4, 6, 6, 6, 6, 4], [6, 9, 9, 9, 9, 6], [6, 9, 9, 9, 9, 6],
                       [6, 9, 9, 9, 9, 6], [4, 6, 6, 6, 6, 4]], dtype=np.float64)
    np.testing.assert_array_equal(scale.scale, np.broadcast_to(1 / counts, (6, 5, 6)))
    report = snncc.check(model, x, target="nir", artifact=path)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12


class TokenMaxPool(torch.nn.Module):
    """A 1-D convolutional SNN over a sequence's positions with max pooling of its spikes,
    ``nn.MaxPool1d`` or ``F.max_pool1d`` (both were refused)."""

    def __init__(self, functional: bool):
        super().__init__()
        from spikingjelly.activation_based import neuron

        self.T, self.functional = 4, functional
        self.conv, self.pool = torch.nn.Conv1d(2, 6, 3, padding=1), torch.nn.MaxPool1d(2)
        self.fc = torch.nn.Linear(6 * 8, 4)
        self.lif1, self.lif2 = neuron.LIFNode(step_mode="m"), neuron.LIFNode(step_mode="m")

    def forward(self, x):  # [B, 2, 16]
        x = x.unsqueeze(0).repeat(self.T, 1, 1, 1)
        t, b = x.shape[:2]
        s = self.lif1(self.conv(x.flatten(0, 1)).reshape(t, b, 6, 16)).flatten(0, 1)
        p = torch.nn.functional.max_pool1d(s, 3, 2, 1) if self.functional else self.pool(s)
        return self.lif2(self.fc(p.reshape(t, b, -1)))


@pytest.mark.parametrize("functional", [False, True], ids=["module", "function"])
@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_max_pooling_of_spikes_over_positions_is_exact_on_every_target(target, functional):
    torch.manual_seed(0)
    model = driven(TokenMaxPool(functional).double().eval(), conv=(3.0, 1.2), fc=(3.0, 1.2))
    x = torch.rand(3, 2, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    report = snncc.check(model, x, target=target)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target == 0.0
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


class SpikingUpConv(torch.nn.Module):
    """A U-Net's learned upsampling of spikes: a strided convolution down, ``ConvTranspose2d``
    (``ConvTranspose1d`` for ``one_d``; ``F.conv_transpose*`` for ``functional``) up, its output
    size set by ``output_padding`` (each was refused)."""

    def __init__(self, kernel, stride, padding, output_padding=0, groups=1, dilation=1,
                 one_d=False, functional=False):
        super().__init__()
        from spikingjelly.activation_based import neuron

        conv, up = ((torch.nn.Conv1d, torch.nn.ConvTranspose1d) if one_d
                    else (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
        self.T, self.functional, self.one_d = 4, functional, one_d
        self.down = conv(2, 4, 3, stride=2, padding=1)
        self.up = up(4, 4, kernel, stride, padding, output_padding, groups, dilation=dilation)
        self.lif1, self.lif2 = neuron.LIFNode(step_mode="m"), neuron.LIFNode(step_mode="m")
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):  # [B, 2, H, W] or [B, 2, L]
        x = x.unsqueeze(0).repeat(self.T, *[1] * x.dim()).flatten(0, 1)
        low = self.lif1(self.down(x).unflatten(0, (self.T, -1))).flatten(0, 1)
        if self.functional:
            u = self.up
            up = (torch.nn.functional.conv_transpose1d if self.one_d
                  else torch.nn.functional.conv_transpose2d)(
                low, u.weight, u.bias, u.stride, u.padding, u.output_padding, u.groups,
                u.dilation)
        else:
            up = self.up(low)
        y = self.lif2(up.unflatten(0, (self.T, -1)))
        return self.head(y.mean(tuple(range(3, y.dim())))).mean(0)


def _up_conv(seed: int, *args, **kwargs):
    torch.manual_seed(seed)
    model = driven(SpikingUpConv(*args, **kwargs).double().eval(),
                   down=(3.0, 0.5), up=(6.0, 1.0))
    shape = (3, 2, 9) if kwargs.get("one_d") else (3, 2, 8, 7)
    return model, 3 * torch.rand(*shape, generator=torch.Generator().manual_seed(seed + 1),
                                 dtype=torch.float64)


# (kernel, stride, padding, output_padding, groups, dilation): a U-Net's 2x2 / 2 and 4x4 / 2,
# 3x3 / 2 with output_padding, an odd output (the last period cut), stride 1 and 3, padding
# beyond the kernel's reach, a 1x1 kernel (phases without taps: the bias), groups, dilation
UP_CONVS = [(2, 2, 0), (4, 2, 1), (3, 2, 1, 1), (3, 2, 1), (3, 1, 1), (5, 3, 2, 2), (3, 2, 2),
            (1, 2, 0, 1), (4, 2, 1, 0, 2), (3, 2, 1, 1, 1, 2)]


@pytest.mark.parametrize("one_d", [False, True], ids=["2d", "1d"])
@pytest.mark.parametrize("config", UP_CONVS, ids=lambda c: "-".join(map(str, c)))
def test_a_transposed_convolution_is_exact(config, one_d):
    model, x = _up_conv(sum(config), *config, one_d=one_d, functional=config[1] == 3)
    report = snncc.check(model, x, target="sim")
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert [r.path for r in report.layers] == ["lif1", "lif2"]
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


@pytest.mark.parametrize("target", ["onnx", "nir", "lava"])
@pytest.mark.parametrize("config", [(4, 2, 1), (3, 2, 1)], ids=["4-2-1", "3-2-1-cut"])
def test_a_transposed_convolution_is_exact_on_every_target(target, config):
    model, x = _up_conv(7, *config, functional=config == (3, 2, 1))
    report = snncc.check(model, x, target=target)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


@pytest.mark.parametrize("config", [(4, 2, 1), (2, 2, 0), (3, 2, 1, 1)])
def test_a_transposed_convolutions_synaptic_operations_are_its_own(config):
    """The phases' convolutions perform the transposed convolution's own synaptic operations:
    the energy report's SOPs equal the spikes into it times their fan-out, counted by torch as
    the gradient of its output's sum with all weights 1."""
    from snncc import analysis
    from snncc.simulator import simulate

    model, x = _up_conv(3, *config)
    graph = snncc.trace(model, x)
    res = simulate(graph, snncc.api.to_ir_layout(graph, x), record=True)
    sops = sum(r.sops for r in analysis.energy_report(graph, res).layers if r.path == "up")
    lif1 = next(n.name for n in graph.nodes.values() if n.path == "lif1")
    spikes = torch.as_tensor(res.trace[lif1]).flatten(0, 1)
    ones = torch.nn.functional.conv_transpose2d
    probe = spikes.clone().requires_grad_()
    w = torch.ones_like(model.up.weight)
    ones(probe, w, None, model.up.stride, model.up.padding, model.up.output_padding).sum() \
        .backward()
    assert sops > 0 and sops == pytest.approx(float((spikes * probe.grad).sum()) / len(x))


def test_a_3d_transposed_convolution_is_refused_naming_it():
    from spikingjelly.activation_based import layer, neuron

    model = torch.nn.Sequential(layer.ConvTranspose3d(2, 2, 2, stride=2, step_mode="m"),
                                neuron.LIFNode(step_mode="m"))
    with pytest.raises(SnnccError, match=r"module '0': op 'ConvTranspose3d' is not supported"):
        snncc.trace(model, torch.rand(4, 2, 2, 3, 3, 3), T=4)


class SubPixel(torch.nn.Module):
    """Sub-pixel upsampling of spikes and its inverse (``nn.PixelShuffle`` / ``PixelUnshuffle``,
    or their functions), the shuffled spikes' mean over time a second output (both refused)."""

    def __init__(self, functional: bool = False):
        super().__init__()
        from spikingjelly.activation_based import neuron

        self.T, self.functional = 4, functional
        self.c1, self.c2 = torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.Conv2d(8, 4, 3, padding=1)
        self.shuffle, self.unshuffle = torch.nn.PixelShuffle(2), torch.nn.PixelUnshuffle(2)
        self.lif1, self.lif2 = neuron.LIFNode(step_mode="m"), neuron.LIFNode(step_mode="m")
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):  # [B, 2, H, W]
        x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1).flatten(0, 1)
        s = self.lif1(self.c1(x).unflatten(0, (self.T, -1))).flatten(0, 1)
        fn = torch.nn.functional
        up = fn.pixel_shuffle(s, 2) if self.functional else self.shuffle(s)  # [TB, 2, 2H, 2W]
        down = fn.pixel_unshuffle(up, 2) if self.functional else self.unshuffle(up)
        y = self.lif2(self.c2(down).unflatten(0, (self.T, -1)))
        return self.head(y.mean((-2, -1))).mean(0), up.unflatten(0, (self.T, -1)).mean(0)


@pytest.mark.parametrize("target,functional", [("sim", True), ("onnx", False), ("nir", False),
                                               ("lava", False)])
def test_pixel_shuffle_of_spikes_is_exact(target, functional):
    torch.manual_seed(0)
    model = driven(SubPixel(functional).double().eval(), c1=(3.0, 0.5), c2=(3.0, 0.5))
    x = 3 * torch.rand(3, 2, 6, 5, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)
    report = snncc.check(model, x, target=target)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert report.outputs == 2
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


@pytest.mark.parametrize("kind", ["LIFNode", "IFNode"])
def test_a_membrane_read_from_its_neuron_module_is_refused_saying_so(kind):
    """A membrane snncc does not build read from its module after a call (``self.out.v``: a
    LIF's, or an IF's starting from v_reset -0.5): the trace sees the value the attribute held
    then, a constant; the refusal says what such a constant is (it printed the internal
    'Const')."""
    from spikingjelly.activation_based import neuron

    class MembraneOut(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)
            self.out = getattr(neuron, kind)(v_threshold=float("inf"), v_reset=-0.5)

        def forward(self, x):
            self.out(self.fc(x))
            return self.out.v

    with pytest.raises(SnnccError, match=r"returns \(a constant\); a constant .* a firing "
                                         r"neuron's membrane read from its module after a call"):
        snncc.trace(MembraneOut(), torch.rand(3, 4), T=1)


class Resampling(torch.nn.Module):
    """Spikes resampled by ``F.interpolate(**resize)`` to a size that is no whole multiple (a
    skip connection's odd size, StereoSpike's 17x22 -> 37x48, a scale of 1.7, a downsampling)
    in nearest mode, refused before but for whole factors, or in bilinear mode (a U-Net's
    ``bilinear=True``), refused before. The resampled spikes' mean over time is a second
    output."""

    def __init__(self, resize: dict):
        super().__init__()
        from spikingjelly.activation_based import neuron

        self.T, self.resize = 4, resize
        self.down, self.fuse = (torch.nn.Conv2d(2, 4, 3, stride=2, padding=1),
                                torch.nn.Conv2d(4, 4, 3, padding=1))
        self.lif1, self.lif2 = neuron.LIFNode(step_mode="m"), neuron.LIFNode(step_mode="m")
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):  # [B, 2, 8, 6]
        x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1).flatten(0, 1)
        low = self.lif1(self.down(x).unflatten(0, (self.T, -1))).flatten(0, 1)
        up = torch.nn.functional.interpolate(low, **self.resize)
        y = self.lif2(self.fuse(up).unflatten(0, (self.T, -1)))
        return self.head(y.mean((-2, -1))).mean(0), up.unflatten(0, (self.T, -1)).mean(0)


RESIZES = {"size-9x7": dict(size=(9, 7)), "exact-17x11": dict(size=(17, 11), mode="nearest-exact"),
           "scale-1.7": dict(scale_factor=1.7), "scale-0.5x1.5": dict(scale_factor=(0.5, 1.5)),
           "recomputed-2.5": dict(scale_factor=2.5, recompute_scale_factor=True),
           "bilinear-9x7": dict(size=(9, 7), mode="bilinear"),
           "bilinear-corners-2": dict(scale_factor=2, mode="bilinear", align_corners=True),
           "bilinear-0.5x1.7": dict(scale_factor=(0.5, 1.7), mode="bilinear")}


@pytest.mark.parametrize("target,resize", [
    *[("sim", k) for k in RESIZES], ("onnx", "size-9x7"), ("nir", "scale-1.7"),
    ("lava", "exact-17x11"), ("onnx", "bilinear-corners-2"), ("nir", "bilinear-9x7"),
    ("lava", "bilinear-9x7")])
def test_resampling_to_any_size_gives_the_models_spikes(target, resize):
    torch.manual_seed(0)
    model = driven(Resampling(RESIZES[resize]).double().eval(), down=(3.0, 0.5), fuse=(4.0, 1.0))
    x = 3 * torch.rand(3, 2, 8, 6, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)
    graph = snncc.trace(model, x)
    assert {n.op for n in graph.nodes.values()} >= {"Gather"}
    report = snncc.check(model, x, target=target)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


class LinearResampling(torch.nn.Module):
    """A layer's real output resampled (``linear`` along a sequence ``[B, C, L]``, or
    ``trilinear`` on a volume ``[B, C, D, H, W]``: two planes, a convolution's output and half
    of it), then a LIF over 3 steps; the resampled values are the second output."""

    def __init__(self, dims: int, resize: dict):
        super().__init__()
        from spikingjelly.activation_based import neuron

        self.resize = resize
        self.volume = dims == 3
        self.layer = (torch.nn.Conv2d if self.volume else torch.nn.Conv1d)(2, 3, 1)
        self.lif = neuron.LIFNode()

    def forward(self, x):
        y = self.layer(x)
        if self.volume:
            y = torch.cat([y.unsqueeze(2), 0.5 * y.unsqueeze(2)], 2)
        up = torch.nn.functional.interpolate(y, **self.resize)
        return torch.stack([self.lif(up) for _ in range(3)]).mean(0), up


@pytest.mark.parametrize("dims,resize", [
    (1, dict(size=13, mode="linear")), (1, dict(scale_factor=0.6, mode="linear")),
    (1, dict(size=13, mode="linear", align_corners=True)),
    (3, dict(size=(3, 7, 5), mode="trilinear")),
    (3, dict(scale_factor=(1.0, 1.5, 2.0), mode="trilinear", align_corners=True))])
def test_linear_resampling_of_values_is_within_an_ulp_of_torch(dims, resize):
    """Linear resampling computes torch's weights times the two positions each output reads:
    torch's CPU kernel fuses the multiply and the add (one rounding where snncc has two), so the
    values agree within an ulp, and the spikes after them exactly."""
    torch.manual_seed(0)
    model = driven(LinearResampling(dims, resize).double().eval(), layer=(3.0, 1.0))
    x = torch.rand(2, 2, *(5, 6)[2 - min(dims, 2):], generator=torch.Generator().manual_seed(1),
                   dtype=torch.float64)
    report = snncc.check(model, x, target="sim")
    assert report.min_agreement == 1.0
    assert 0 < report.output_max_abs_diff_target <= 2e-15
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


@pytest.mark.parametrize("resize,message", [
    (dict(scale_factor=2, mode="bicubic"), "mode 'bicubic': snncc resamples in nearest, "),
    (dict(scale_factor=0.5, mode="bilinear", antialias=True), "antialias filters over more"),
])
def test_other_resampling_is_refused_naming_it(resize, message):
    with pytest.raises(SnnccError, match=message):
        snncc.trace(Resampling(resize), torch.rand(3, 2, 8, 6))


def test_bilinear_resampling_in_lava_fixed_point_is_refused_naming_the_node():
    """Its per-position weights are no integer scale on the chip: refused in one line."""
    torch.manual_seed(0)
    model = driven(Resampling(RESIZES["bilinear-9x7"]).double().eval(), down=(3.0, 0.5),
                   fuse=(4.0, 1.0))
    x = (3 * torch.rand(3, 2, 8, 6, dtype=torch.float64)).numpy()
    with pytest.raises(SnnccError, match=r"'interpolate_axis\d_first': only a positive scalar "
                                         "Scale can be absorbed"):
        snncc.check(snncc.trace(model, x), target="lava", inputs=x, fixed_point=True,
                    calibrate=x)


def test_nearest_resampling_in_lava_fixed_point_equals_the_loihi2_simulator():
    """A Gather of integer spikes stays on the chip's integers: Lava's fixed_pt spikes equal
    the Loihi 2 simulator's at both layers (``check --fixed-point``)."""

    class Spikes(Resampling):
        def forward(self, x):
            x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1).flatten(0, 1)
            low = self.lif1(self.down(x).unflatten(0, (self.T, -1))).flatten(0, 1)
            up = torch.nn.functional.interpolate(low, **self.resize)
            return self.lif2(self.fuse(up).unflatten(0, (self.T, -1))).mean(0)

    torch.manual_seed(0)
    model = driven(Spikes(RESIZES["scale-1.7"]).double().eval(), down=(3.0, 0.5), fuse=(4.0, 1.0))
    x = (3 * torch.rand(3, 2, 8, 6, generator=torch.Generator().manual_seed(1),
                        dtype=torch.float64)).numpy()
    graph = snncc.trace(model, x)
    report = snncc.check(graph, target="lava", inputs=x, fixed_point=True, calibrate=x)
    assert [r.agreement_sim_target for r in report.layers] == [1.0, 1.0]
    assert_rates_in_range({r.node: r.rate_sim for r in report.layers})


class NeverFiring(torch.nn.Module):
    """StereoSpike's output neurons in small: one ``IFNode(v_threshold=inf)`` that never fires,
    called at two places per step (two scales of a prediction), the membrane its module holds
    read after each call (``self.ineurons.v``) as the outputs; in a loop over T steps, in which
    the membrane goes on summing, or (``one_step``) a forward of one step."""

    def __init__(self, one_step: bool = False):
        super().__init__()
        from spikingjelly.activation_based import neuron

        self.T, self.one_step = 3, one_step
        self.fc, self.lif = torch.nn.Linear(4, 6), neuron.IFNode()
        self.coarse, self.fine = torch.nn.Linear(6, 2), torch.nn.Linear(6, 2)
        self.ineurons = neuron.IFNode(v_threshold=float("inf"))

    def step(self, x):
        s = self.lif(self.fc(x))
        self.ineurons(self.coarse(s))
        coarse = self.ineurons.v
        self.ineurons(self.fine(s))
        return coarse, self.ineurons.v

    def forward(self, x):
        if self.one_step:
            return self.step(x)
        steps = [self.step(x) for _ in range(self.T)]
        return torch.stack([c + f for c, f in steps]).mean(0), steps[-1][1]


@pytest.mark.parametrize("one_step", [False, True], ids=["loop", "one-step"])
@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_the_membrane_of_a_neuron_that_never_fires_is_its_inputs_sum(target, one_step):
    """It was a constant (refused): now each call adds its input to the membrane, through a
    Delay from step to step; both outputs equal the model's at every step."""
    torch.manual_seed(0)
    model = driven(NeverFiring(one_step).double().eval(), fc=(3.0, 0.2))
    x = torch.rand(5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    T = 4 if one_step else None
    graph = snncc.trace(model, x, T=T)
    assert sum(n.op == "Add" and n.path == "ineurons" for n in graph.nodes.values()) == 2
    report = snncc.check(model, x, target=target, T=T)
    assert report.outputs == 2 and report.output_max_abs_diff_target <= 1e-12
    assert report.min_agreement == 1.0 and [r.path for r in report.layers] == ["lif"]
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


class NeverFiringEachStep(torch.nn.Module):
    """A loop over T reading a never-firing ``IFNode``'s membrane after every step (the
    sequence of its running sums), as a decoder reads its output neuron."""

    def __init__(self, T: int):
        super().__init__()
        from spikingjelly.activation_based import neuron

        self.T = T
        self.fc, self.lif = torch.nn.Linear(4, 6), neuron.LIFNode()
        self.head = torch.nn.Linear(6, 2)
        self.out = neuron.IFNode(v_threshold=float("inf"), v_reset=0.0)

    def forward(self, x):
        membranes = []
        for _ in range(self.T):
            self.out(self.head(self.lif(self.fc(x))))
            membranes.append(self.out.v)
        return torch.stack(membranes)


@pytest.mark.parametrize("T", [3, 5])
@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_a_never_firing_membrane_read_at_every_step_of_the_loop(target, T):
    """Step 0's membrane was the input itself, so step 1's sum read another node than the
    later steps': refused at T = 3 ("the loop over time does not compute the same thing at
    every step"; T = 2 and 4 compared other steps). Found by tests/fuzz_models.py."""
    torch.manual_seed(0)
    model = driven(NeverFiringEachStep(T).double().eval(), fc=(3.0, 0.2))
    x = torch.rand(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    report = snncc.check(model, x, target=target)
    assert report.output_max_abs_diff_target <= 1e-12 and report.min_agreement == 1.0
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


class NeverFiringMultiStep(torch.nn.Module):
    """A multi-step ``IFNode(v_threshold=inf, store_v_seq=True)`` on a [T, B, ...] sequence,
    its membranes over the steps (``v_seq``) and after the last (``v``) the outputs."""

    def __init__(self, v_reset=0.0):
        super().__init__()
        from spikingjelly.activation_based import layer, neuron

        self.fc = layer.Linear(4, 6, step_mode="m")
        self.lif = neuron.LIFNode(step_mode="m")
        self.head = layer.Linear(6, 2, step_mode="m")
        self.out = neuron.IFNode(v_threshold=float("inf"), v_reset=v_reset, step_mode="m",
                                 store_v_seq=True)

    def forward(self, x):
        self.out(self.head(self.lif(self.fc(x))))
        return self.out.v_seq, self.out.v


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_the_membranes_of_a_multi_step_neuron_that_never_fires_are_its_running_sums(target):
    """Its ``v_seq`` was read as a constant, and the trace crashed (KeyError) where its call
    was refused (found by tests/fuzz_models.py): now the running sum of its input sequence (an
    integrator: v[t] = v[t-1] + x[t]), exact at every step."""
    torch.manual_seed(0)
    model = driven(NeverFiringMultiStep().double().eval(), fc=(3.0, 0.4))
    x = torch.rand(4, 5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    report = snncc.check(model, x, target=target, T=4)
    assert report.outputs == 2 and report.output_max_abs_diff_target <= 1e-12
    assert report.min_agreement == 1.0 and report.unexplained_output_difference is None
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


def test_the_membrane_of_a_never_firing_neuron_that_resets_softly_is_not_taken():
    """With v_reset None spikingjelly subtracts 0 * inf from the membrane at every step: the
    model's own membrane is NaN, which snncc read as the sum of the inputs (check: agreement
    1, output difference NaN, passed). Not taken; the read is refused."""
    model = NeverFiringMultiStep(v_reset=None).double().eval()
    x = torch.rand(4, 5, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        assert torch.isnan(model(x)[0]).all()
    with pytest.raises(SnnccError, match="must return tensors computed from its input"):
        snncc.trace(model, x, T=4)


@pytest.mark.parametrize("returned", ["alone", "tuple", "dict", "list-first"])
def test_the_membrane_of_a_neuron_that_can_fire_read_after_its_call_is_refused_saying_so(
        returned):
    """SNN-delays' readout: spikingjelly's LIFNode with threshold 1e9 and ``store_v_seq``,
    ``self.out.v_seq`` returned: "it returns ()" said nothing of why; returned beside the
    spikes (None in the trace) it was left out, silently: `check` said 1.0 with one output,
    and in a list first the outputs after it compared with the wrong tensors."""
    from spikingjelly.activation_based import neuron

    class Readout(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.out = neuron.LIFNode(v_threshold=1e9, step_mode="m", store_v_seq=True)

        def forward(self, x):
            s = self.out(self.fc(x))
            v = self.out.v_seq
            return {"alone": v, "tuple": (s, v), "dict": {"spikes": s, "membrane": v},
                    "list-first": [v, s]}[returned]

    with pytest.raises(SnnccError, match=r"op 'out.v_seq' is not supported \(a firing "
                                         r"neuron's membrane read from its module after a call"):
        snncc.trace(Readout(), torch.rand(4, 5, 4), T=4)


@pytest.mark.parametrize("registered", [False, True])
def test_a_module_kept_in_a_plain_list_is_traced_through_or_refused_saying_so(registered):
    """albertigno/snn-delays-pytorch keeps ``[nn.Identity()] + layers`` in a plain list: fx's
    internal "module is not installed as a submodule" (NameError). A stateless one is traced
    through; one with parameters, which are not the model's, is refused."""
    from spikingjelly.activation_based import neuron

    class Listed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif = nn.Linear(8, 6), neuron.IFNode(step_mode="m")
            self.ops = [nn.Identity(), self.fc if registered else nn.Linear(8, 6)]

        def forward(self, x):  # [T, B, 8]
            return self.lif(self.ops[0](self.ops[1](x)))

    model = driven(Listed().double().eval(), fc=(3.0, 0.5))
    x = torch.rand(4, 2, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if not registered:
        with pytest.raises(SnnccError, match=r"a Linear called at .* is not a submodule of the "
                                             r"model \(kept in a plain list or dict"):
            snncc.trace(model, x, T=4)
        return
    report = snncc.check(model, x, target="onnx", T=4)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


def test_spikes_a_model_adds_to_in_place_are_compared_as_the_neuron_returned_them():
    """SEW-ResNet's block as StereoSpike writes it, ``out = self.sn2(out); out += identity``:
    check recorded the neuron's output tensor, which the model then changed, and compared the
    sums with the graph's spikes (StereoSpike: agreement 0.387, a 'rate' of 1.18); the record
    is now a copy."""
    from spikingjelly.activation_based import neuron

    class SEWBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.T = 2
            self.fc1, self.fc2 = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
            self.sn1, self.sn2 = neuron.IFNode(step_mode="m"), neuron.IFNode(step_mode="m")
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            identity = self.sn1(self.fc1(x.unsqueeze(0).repeat(self.T, 1, 1)))
            out = self.sn2(self.fc2(identity))
            out += identity
            return self.head(out).mean(0)

    torch.manual_seed(0)
    model = driven(SEWBlock().double().eval(), fc1=(3.0, 0.3), fc2=(3.0, 0.3))
    report = snncc.check(model, torch.rand(5, 4, dtype=torch.float64))
    assert report.min_agreement == 1.0
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


class _Heaviside(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.gt(0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


class StackedStateLIF(torch.nn.Module):
    """A convolutional LIF cell keeping its state as one tensor, as tudelft's event_flow writes
    its ConvLIF and ConvLIFRecurrent: ``torch.stack([v, z])`` returned beside the spikes and
    taken apart at the next step (``v, z = prev_state``), zeros made at the first step, a
    per-channel leak through a sigmoid, a learnt threshold, the spikes of an autograd Function,
    and (``recurrent``) a convolution of the previous spikes, at the first step of the zeros."""

    def __init__(self, c_in: int, c_out: int, recurrent: bool):
        super().__init__()
        self.ff = torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.rec = torch.nn.Conv2d(c_out, c_out, 3, padding=1, bias=False) if recurrent else None
        self.leak = torch.nn.Parameter(torch.randn(c_out, 1, 1) * 0.1 - 1.0)
        self.thresh = torch.nn.Parameter(torch.randn(c_out, 1, 1) * 0.1 + 0.5)

    def forward(self, x, prev_state):
        ff = self.ff(x)
        if prev_state is None:
            prev_state = torch.zeros(2, *ff.shape, dtype=ff.dtype, device=ff.device)
        v, z = prev_state
        if self.rec is not None:
            ff = ff + self.rec(z)
        leak = torch.sigmoid(self.leak)
        v_out = v * leak * (1 - z) + (1 - leak) * ff
        z_out = _Heaviside.apply(v_out - self.thresh.clamp_min(0.01))
        return z_out, torch.stack([v_out, z_out])


class EventFlowLike(torch.nn.Module):
    """Three such cells and a linear flow prediction, one forward per event window as
    event_flow's training loop calls them, here looped over the ``[T, B, ...]`` windows."""

    def __init__(self):
        super().__init__()
        self.T = 4
        self.head = StackedStateLIF(2, 6, False)
        self.g1, self.r1 = StackedStateLIF(6, 6, True), StackedStateLIF(6, 6, False)
        self.pred = torch.nn.Conv2d(6, 2, 1)

    def forward(self, x):
        states, flows = [None] * 3, []
        for t in range(x.shape[0]):
            s, states[0] = self.head(x[t], states[0])
            s, states[1] = self.g1(s, states[1])
            s, states[2] = self.r1(s, states[2])
            flows.append(self.pred(s))
        return torch.stack(flows).mean(0)


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", pytest.param(
    "lava", marks=pytest.mark.slow)])  # (one of the suite's slowest: run with -m slow)
def test_a_neuron_state_stacked_into_one_tensor_is_taken_apart_again(target):
    """Refused before: 'only stacking the T steps of a loop over time', and the recurrent
    convolution of the zero state at the first step, 'this operand must be a tensor computed
    from the input'. Each cell's spikes (the first of the pair it returns) are compared."""
    torch.manual_seed(0)
    model = EventFlowLike().double().eval()
    with torch.no_grad():  # (its convolutions have no bias, as event_flow's)
        for cell in (model.head, model.g1, model.r1):
            cell.ff.weight.mul_(3.0)
    x = 2 * torch.rand(4, 3, 2, 6, 6, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)
    report = snncc.check(model, x, target=target)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert [r.path for r in report.layers] == ["head", "g1", "r1"]
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


def test_a_stacked_state_used_as_a_tensor_is_refused_saying_so():
    class Summed(EventFlowLike):
        def forward(self, x):
            s, state = self.head(x[0], None)
            return torch.stack([s, s]).sum(0).mean((-2, -1))

    with pytest.raises(SnnccError, match=r"values stacked on a new first axis .* taken only "
                                         r"apart again"):
        snncc.trace(Summed().double(), torch.rand(4, 3, 2, 6, 6, dtype=torch.float64))


class OneFloat32Token(torch.nn.Module):
    """A float64 model one of whose parameters, its first, is float32 (SpikeZIP-TF's reset
    restores its class token from a float32 copy)."""

    def __init__(self):
        super().__init__()
        from spikingjelly.activation_based import neuron

        self.token = torch.nn.Parameter(torch.rand(1, 6))
        self.fc, self.lif = torch.nn.Linear(6, 8), neuron.IFNode(v_threshold=0.5)
        self.register_buffer("shift", torch.full((8,), 0.1))

    def forward(self, x):
        return self.lif(self.fc(x + self.token) + self.shift)


def test_a_model_of_mixed_float_dtypes_is_checked_and_given_back_as_it_came():
    """The example was cast to the first parameter's dtype (float32), and the float64 model
    'failed in PyTorch itself'; check gave every tensor back in that one dtype."""
    model = driven(OneFloat32Token().double().eval(), fc=(3.0, 0.0))
    model.token.data = model.token.data.float()
    x = torch.rand(6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    report = snncc.check(model, x, target="sim", T=4)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})
    assert (model.token.dtype, model.fc.weight.dtype, model.shift.dtype) == \
        (torch.float32, torch.float64, torch.float64)
