"""`snncc check` and `snncc demo` end to end, in subprocesses, on the shipped digits model:
clean artifacts agree everywhere; an artifact with one weight changed is caught at the layer
that weight feeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from snncc import serialize

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "examples" / "checkpoints" / "digits-spikformer.pt"
ARCH = ["--arch", "digits-spikformer"]


def snncc(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "snncc.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600, cwd=cwd)


def compile_to(tmp_path, target):
    r = snncc("compile", CKPT, *ARCH, "--target", target, "-o", tmp_path / target)
    assert r.returncode == 0, r.stderr
    return tmp_path / target


def check(tmp_path, target, artifact=None):
    extra = ["--artifact", artifact] if artifact else []
    r = snncc("check", CKPT, *ARCH, "--target", target, "--json", tmp_path / "r.json",
              "--batch", "6", *extra)
    return r, json.loads((tmp_path / "r.json").read_text())


@pytest.mark.parametrize("target", [pytest.param("sim", marks=pytest.mark.slow), "onnx"])
def test_clean_artifact_agrees_at_every_layer(tmp_path, target):
    r, rep = check(tmp_path, target, compile_to(tmp_path, target) / (
        "model.snnir" if target == "sim" else ""))
    assert r.returncode == 0, r.stderr
    assert rep["min_agreement"] == 1.0 and rep["first_divergent_target"] is None
    assert all(0.0 < layer["rate_reference"] < 1.0 for layer in rep["layers"])


def corrupt_snnir(path: Path) -> str:
    g = serialize.load(path)
    node = g["block.0.mlp.fc1_linear"]
    w = node.weight.copy()
    w[np.unravel_index(np.argmax(np.abs(w)), w.shape)] *= -4.0
    node.weight = w
    serialize.save(g, path)
    return "block.0.mlp.fc1_lif"


def corrupt_onnx(path: Path) -> str:
    model = onnx.load(path)
    for init in model.graph.initializer:
        if "fc1_linear" in init.name and len(init.dims) == 2:
            w = numpy_helper.to_array(init).copy()
            w[np.unravel_index(np.argmax(np.abs(w)), w.shape)] *= -4.0
            init.CopyFrom(numpy_helper.from_array(w, init.name))
            onnx.save(model, path)
            return "block.0.mlp.fc1_lif"
    raise AssertionError("no fc1 weight initializer found")


@pytest.mark.parametrize("target", ["sim", "onnx"])
def test_corrupted_artifact_reports_first_divergent_layer(tmp_path, target):
    out = compile_to(tmp_path, target)
    if target == "sim":
        artifact = out / "model.snnir"
        expected = corrupt_snnir(artifact)
    else:
        artifact = out
        expected = corrupt_onnx(out / "model.onnx")
    r, rep = check(tmp_path, target, artifact)
    assert r.returncode == 2, r.stdout + r.stderr
    assert rep["first_divergent_target"] == expected
    assert rep["first_divergent_sim"] is None  # the compiled graph itself is fine
    layers = {layer["node"]: layer for layer in rep["layers"]}
    names = list(layers)
    assert all(layers[n]["agreement_target"] == 1.0 for n in names[:names.index(expected)])
    assert "below --min-agreement" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_demo_prints_three_accuracies_and_energy(tmp_path):
    r = snncc("demo", "--limit", "12", "-o", tmp_path / "demo", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines()
            if line.split() and line.split()[0] in ("pytorch", "simulator", "lava")}
    assert set(rows) == {"pytorch", "simulator", "lava"}
    assert rows["simulator"][1] == rows["lava"][1] == "1.0000"  # agree with PyTorch
    assert "energy per image" in r.stdout and "uJ" in r.stdout
    import matplotlib.image

    png = matplotlib.image.imread(tmp_path / "demo" / "energy.png")
    assert png.ndim == 3 and png.shape[0] > 100 and png.std() > 0


def test_fixed_point_check_reports_accuracy_of_float_and_quantized(tmp_path):
    from snncc.frontends.digits import digits_for

    (xtr, _), (xte, yte) = digits_for("digits-spikformer")
    np.save(tmp_path / "cal.npy", xtr[:128])
    np.save(tmp_path / "x.npy", xte[:120])
    np.save(tmp_path / "y.npy", yte[:120])
    r = snncc("check", CKPT, *ARCH, "--target", "sim", "--fixed-point", "--calibrate",
              tmp_path / "cal.npy", "--inputs", tmp_path / "x.npy", "--labels", tmp_path / "y.npy",
              "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr  # judged on simulator vs target: exact
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["lossy"] and rep["min_agreement"] == 1.0
    agree = [layer["agreement_sim"] for layer in rep["layers"]]
    assert 0.5 < min(agree) < 1.0  # the loss against the float model, stated per layer
    acc = rep["accuracy"]
    assert abs(acc["simulator"] - acc["reference"]) <= 0.02 and acc["sim"] == acc["simulator"]


def test_quantization_warnings_are_one_line_each(tmp_path):
    """`compile --fixed-point` on a model whose quantization costs more than rounding in some
    layers (Meta-SpikeFormer's RepConvs, left unmerged by the float pipeline): each of the
    pass's warnings once, as one `snncc: warning:` line naming the layer, and a count in the
    summary."""
    from snncc.passes import default_pipeline

    meta = ROOT / "examples" / "checkpoints" / "digits-meta-spikeformer.pt"
    r = snncc("compile", meta, "--arch", "digits-meta-spikeformer", "--target", "lava",
              "--fixed-point", "--passes", ",".join(default_pipeline("lava")),
              "-o", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if line.startswith("snncc: warning: '")]
    assert any("weight quantization error" in line for line in warned)
    assert len(set(warned)) == len(warned) and "QuantizationWarning" not in r.stderr
    assert f"; {len(warned)} warning(s) about layers that lose more than rounding" in r.stdout
    assert "weight quantization error" not in r.stdout


def test_fixed_point_refused_for_float_only_target(tmp_path):
    r = snncc("compile", CKPT, *ARCH, "--target", "onnx", "--fixed-point", "-o", tmp_path / "o")
    assert r.returncode == 1 and "cannot run Loihi 2 fixed point" in r.stderr
    assert not (tmp_path / "o").exists()


def test_a_layer_the_passes_remove_is_not_counted_as_a_disagreement(tmp_path):
    """A neuron whose spikes are scaled by 0 before they reach anything is removed by the
    passes: no engine computes it. `check` counted it as 0% agreement (a failed check, 'first
    divergent layer'); it now lists it as not compared, and the exit code is 0."""
    from snncc import ir, neuron
    from snncc.graph import Graph

    rng = np.random.default_rng(0)
    g = Graph("dead", {"T": 3})
    g.add(ir.Input("x", input_shape=(4,)))
    g.add(ir.Linear("fc", ("x",), weight=rng.normal(0.5, 1, (4, 4))))
    g.add(ir.Neuron("unused", ("fc",), **neuron.from_lif(2.0, 1.0, 0.0).fields()))
    g.add(ir.Scale("zero", ("unused",), factor=0.0))
    g.add(ir.Add("sum", ("zero", "x")))
    g.add(ir.Neuron("lif", ("sum",), **neuron.from_lif(2.0, 0.5, 0.0).fields()))
    g.add(ir.Output("out", ("lif",)))
    serialize.save(g.verify(), tmp_path / "dead.snnir")
    np.save(tmp_path / "x.npy", rng.uniform(0, 1.5, (3, 4, 4)))
    r = subprocess.run([sys.executable, "-m", "snncc", "check", str(tmp_path / "dead.snnir"),
                        "--inputs", str(tmp_path / "x.npy"), "--json", str(tmp_path / "r.json")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["removed"] == ["unused"] and [row["node"] for row in rep["layers"]] == ["lif"]
    assert rep["min_agreement"] == 1.0 and 0.05 < rep["layers"][0]["rate_reference"] < 0.95
    assert "the passes removed, whose spikes reach no output (unused)" in r.stdout


@pytest.mark.parametrize("diffs", [(float("nan"), 0.0), (0.0, float("nan")),
                                   (float("nan"), float("nan"))])
def test_outputs_that_differ_by_nan_fail_an_exact_check(diffs):
    """A NaN difference (the model's forward computed NaN where the graph computed numbers)
    compared as 'not above rounding', and the check passed (found by tests/fuzz_models.py)."""
    from snncc.parity import unexplained_output_difference

    why = unexplained_output_difference("onnx", False, "float64", "float64", 1.0, *diffs, [])
    assert why is not None and "NaN" in why
    assert unexplained_output_difference("onnx", False, "float64", "float64", 1.0, 0.0, 1e-12,
                                         []) is None
