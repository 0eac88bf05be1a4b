"""`snncc run` / `snncc.run` on a model whose output is one value per time step (issue 14 item
6): a spikingjelly multi-step net returning its spikes ``[T, B, ...]`` gives back the whole
sequence, equal to the library's, on the simulator, ONNX (unrolled and step models) and NIR; a
model returning one value (the mean over time) still gives ``[B, ...]``; ``--last-step`` /
``--sequence`` (``sequence=``) ask for one or the other. ``run`` and ``check`` take ``--dtype``
and ``--device`` (the simulator's arithmetic and device; CUDA tests skip without a GPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import snncc
from snncc.cli import main
from snncc.errors import DeviceError, SnnccError

pytest.importorskip("spikingjelly.activation_based")
from spikingjelly.activation_based import functional, layer, neuron  # noqa: E402

T, B = 4, 3
TARGETS = ("sim", "onnx", "nir")
#: lava's `run` once (it gave the last step alone: its manifest did not record the output layout)
RUN_TARGETS = TARGETS + ("lava",)


class MeanOverTime(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).mean(0)


def _net(per_step: bool):
    torch.manual_seed(0)
    net = torch.nn.Sequential(layer.Linear(6, 8), neuron.LIFNode(tau=2.0, v_threshold=0.5),
                              layer.Linear(8, 5), neuron.LIFNode(tau=2.0, v_threshold=0.2))
    functional.set_step_mode(net, "m")
    return (net if per_step else MeanOverTime(net)).double().eval()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """per_step -> (x [T, B, 6], the library's output, {target: artifact})."""
    root = tmp_path_factory.mktemp("seq")
    x = 2 * torch.randn(T, B, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = {}
    for per_step in (True, False):
        model = _net(per_step)
        with torch.no_grad():
            y = model(x).numpy()
        functional.reset_net(model)
        paths = {t: snncc.compile(model, x, target=t, out=root / f"{per_step}-{t}", T=T)
                 for t in RUN_TARGETS}
        out[per_step] = x.numpy(), y, paths
    np.save(root / "x.npy", x.numpy())
    return root, out


def test_the_output_changes_over_time(compiled):
    _, out = compiled
    x, y, _ = out[True]
    assert y.shape == (T, B, 5) and 0.05 < y.mean() < 0.95
    assert not all(np.array_equal(y[t], y[-1]) for t in range(T))  # the last step is not all


@pytest.mark.parametrize("target", RUN_TARGETS)
def test_api_run_gives_the_whole_sequence(compiled, target):
    _, out = compiled
    x, y, paths = out[True]
    np.testing.assert_array_equal(snncc.run(paths[target], x), y)
    np.testing.assert_array_equal(snncc.run(paths[target], x, sequence=False), y[-1])


@pytest.mark.parametrize("target", TARGETS)
def test_one_value_per_sample_stays_the_last_step(compiled, target):
    _, out = compiled
    x, y, paths = out[False]
    got = snncc.run(paths[target], x)
    assert got.shape == (B, 5)
    np.testing.assert_allclose(got, y, rtol=0, atol=1e-12)
    # asked for, the sequence is the running mean at every step
    assert snncc.run(paths[target], x, sequence=True).shape == (T, B, 5)


@pytest.mark.parametrize("target", TARGETS)
def test_cli_run_writes_the_whole_sequence(compiled, target, capsys):
    root, out = compiled
    x, y, paths = out[True]
    dest = root / f"y-{target}.npy"
    assert main(["run", str(paths[target]), "--inputs", str(root / "x.npy"),
                 "-o", str(dest)]) == 0
    assert f"shape {(T, B, 5)}, every time step" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(dest), y)
    assert main(["run", str(paths[target]), "--inputs", str(root / "x.npy"),
                 "-o", str(dest), "--last-step"]) == 0
    np.testing.assert_array_equal(np.load(dest), y[-1])


def test_onnx_step_model_gives_the_sequence_too(compiled):
    from snncc.backends.onnx.runner import read_metadata, run_onnx

    _, out = compiled
    x, y, paths = out[True]
    assert read_metadata(paths["onnx"])["snncc.output_layout"] == "TB"
    (name,) = json.loads(read_metadata(paths["onnx"])["snncc.outputs"])
    for form in ("unrolled", "step"):
        outputs, traces = run_onnx(paths["onnx"], x, form=form)
        np.testing.assert_array_equal(outputs[name], y[-1])
        np.testing.assert_array_equal(traces[name], y)


NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("target", ["sim", "nir"])
def test_run_in_float32_on_the_cpu(compiled, target):
    _, out = compiled
    x, y, paths = out[True]
    got = snncc.run(paths[target], x, dtype="float32", device="cpu")
    assert got.dtype == np.float32
    assert (got == y).mean() > 0.99  # spikes: equal but for float32 rounding ties


def test_cli_run_in_float32_on_the_cpu(compiled, capsys):
    root, out = compiled
    _, y, paths = out[True]
    dest = root / "y32.npy"
    assert main(["run", str(paths["sim"]), "--inputs", str(root / "x.npy"), "-o", str(dest),
                 "--dtype", "float32", "--device", "cpu"]) == 0
    got = np.load(dest)
    assert got.dtype == np.float32 and (got == y).mean() > 0.99


def test_run_options_refused_where_they_do_not_apply(compiled):
    _, out = compiled
    paths = out[True][2]
    with pytest.raises(SnnccError, match="--dtype does not apply to running target "
                                               "'onnx'; targets that take it: .*'sim'"):
        snncc.run(paths["onnx"], out[True][0], dtype="float32")
    with pytest.raises(SnnccError, match="dtype must be one of"):
        snncc.run(paths["sim"], out[True][0], dtype="float16")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
@pytest.mark.parametrize("command", ["run", "check"])
def test_cuda_asked_for_and_absent_is_one_line_error(compiled, command, capsys):
    root, out = compiled
    _, _, paths = out[True]
    with pytest.raises(DeviceError, match="no such CUDA device"):
        snncc.run(paths["sim"], out[True][0], device="cuda")
    args = ([str(paths["sim"]), "--inputs", str(root / "x.npy"), "-o", str(root / "o.npy")]
            if command == "run" else [str(paths["sim"])])
    assert main([command, *args, "--device", "cuda"]) == 1
    err = capsys.readouterr().err.strip()
    assert "no such CUDA device" in err and "\n" not in err


def test_check_runs_on_the_given_device_and_dtype(compiled):
    _, out = compiled
    x, _, paths = out[True]
    rep = snncc.check(paths["sim"], inputs=x, device="cpu", dtype="float32")
    assert rep.min_agreement > 0.99


@NO_CUDA
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_run_and_check_on_cuda(compiled, dtype):
    _, out = compiled
    x, y, paths = out[True]
    got = snncc.run(paths["sim"], x, dtype=dtype, device="cuda")
    assert got.shape == y.shape and (got == y).mean() > 0.99  # GPU kernels sum in their order
    assert snncc.check(_net(True), torch.as_tensor(x), T=T, target="sim", dtype=dtype,
                       device="cuda").min_agreement > 0.99


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("per_step", [True, False])
def test_check_compares_the_output_the_model_gives(compiled, target, per_step):
    """`check` on a model whose output is one value per step compares that output at every
    step (it compared the last step of each engine with the library's whole sequence, so
    identical outputs showed a difference), and its accuracy reads the argmax of the output's
    mean over T, as a spiking classifier's training does; a model giving one value is compared
    on that value."""
    from conftest import assert_rates_in_range

    _, out = compiled
    x, y, _ = out[per_step]
    prediction = np.argmax(y.mean(0) if per_step else y, -1)
    labels = prediction.copy()
    labels[0] = (labels[0] + 1) % y.shape[-1]  # one sample wrong: an accuracy of 2/3
    rep = snncc.check(_net(per_step), torch.as_tensor(x), T=T, target=target, labels=labels)
    assert rep.output_over_steps is per_step
    assert rep.min_agreement == 1.0
    assert rep.output_max_abs_diff_sim == 0 and rep.output_max_abs_diff_target <= 1e-12
    assert rep.accuracy == {k: pytest.approx((B - 1) / B) for k in ("reference", "simulator",
                                                                   target)}
    assert ("(every step)" in rep.format()) is per_step
    assert_rates_in_range({r.node: r.rate_reference for r in rep.layers})


def test_dataset_check_compares_every_step(compiled, tmp_path):
    """The data-set check counts the same way: the argmax of the mean over T, and each
    sample's output difference over every step."""
    from snncc.api import check_dataset

    _, out = compiled
    x, y, _ = out[True]
    labels = np.argmax(y.mean(0), -1)
    np.savez(tmp_path / "d.npz", x=np.swapaxes(x, 0, 1), y=labels)
    rep = check_dataset(_net(True), str(tmp_path / "d.npz"), torch.as_tensor(x), T=T,
                              target="onnx", batch=2)
    assert rep.samples == B and rep.output_over_steps
    assert all(v["accuracy"] == 1.0 for v in rep.engines.values())
    assert rep.output_max_abs_diff_sim == 0 and rep.output_max_abs_diff_target <= 1e-12
    assert "(every step)" in rep.format() and "mean over T" in rep.format()


def test_an_engine_without_the_output_sequence_is_compared_on_the_last_step():
    """An artifact that gives only the last step (written before targets gave the output
    sequence): every engine is then compared, and predicts, on its last step; an engine whose
    output has another shape differs by infinity, not by what broadcasting would make of it."""
    from snncc.parity import compared_outputs

    rng = np.random.default_rng(0)
    seq = rng.normal(size=(T, B, 5))
    last = {"reference": seq[-1], "simulator": seq[-1], "target": seq[-1] + 0.5}
    values, diffs, over_steps = compared_outputs(
        last, {"reference": seq, "simulator": seq, "target": None})
    assert not over_steps and np.array_equal(values["target"], seq[-1] + 0.5)
    np.testing.assert_allclose(diffs["target"], 0.5)
    np.testing.assert_array_equal(diffs["simulator"], 0)
    values, diffs, over_steps = compared_outputs(
        last, {"reference": seq, "simulator": seq, "target": seq[..., :4]})
    assert over_steps and np.array_equal(values["reference"], seq.mean(0))
    assert np.all(diffs["target"] == np.inf) and np.all(diffs["simulator"] == 0)


class _Readout(torch.nn.Module):
    """A multi-step net read out at its first step, ``s[0]``, or by its mean over time."""

    def __init__(self, which: str):
        super().__init__()
        self.which = which
        self.fc, self.lif = layer.Linear(6, 6), neuron.LIFNode(step_mode="m")
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x):
        s = self.lif(self.fc(x))
        return self.head(s[0] if self.which == "first" else s.mean(0))


@pytest.mark.parametrize("which, target", [("first", "sim"), ("first", "nir"),
                                           ("first", "lava"), ("mean", "sim"), ("mean", "nir")])
def test_an_artifact_whose_graph_differs_at_another_T_refuses_to_run_at_it(which, target,
                                                                          tmp_path):
    """s[0] at T = 2 is a Delay reaching back T - 1 steps from the last: run at T = 4, the
    artifact gave step 2, off by 0.67, silently (found with SGLFormer). A graph the same at
    every T (the mean over time) runs at another T, equal to the model there."""
    torch.manual_seed(0)
    model = _Readout(which).double().eval()
    with torch.no_grad():
        model.fc.weight.mul_(3.0)
    x2 = torch.randn(2, B, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x4 = torch.randn(4, B, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    artifact = snncc.compile(model, x2, target=target, out=tmp_path / "out", T=2, layout="TB")
    if which == "first":
        with pytest.raises(SnnccError, match=r"compiled at T=2 from a model whose graph "
                                             r"differs at another T .* --T 4"):
            snncc.run(artifact, x4.numpy(), T=4)
        return
    functional.reset_net(model)
    with torch.no_grad():
        expected = model(x4).numpy()
    np.testing.assert_array_equal(snncc.run(artifact, x4.numpy(), T=4), expected)
