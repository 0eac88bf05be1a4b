"""ONNX precision (issue 17 item 4): `snncc compile -t onnx` writes float64 by default, as the
README promises, and float32 only on request (`--dtype`, `dtype=`); the dtype is recorded in
both models' metadata (``snncc.dtype``). `snncc check --artifact` on a float32 artifact runs the
reference and the simulator in float64, states the artifact's dtype, and reports the spikes
float32 flips (agreement < 1 at the layer) without failing unless --min-agreement says so.

The graph is built so that float32 must flip spikes: half of the inputs lie 1e-9 below a
threshold of 1, which float32 rounds to the threshold itself (a spike under '>=')."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import snncc
from snncc import ir, serialize
from snncc.backends.onnx.runner import read_metadata
from snncc.cli import main
from snncc.errors import SnnccError
from snncc.graph import Graph

T, B, N = 4, 6, 16


def tie_graph() -> Graph:
    g = Graph("ties", {"T": T})
    g.add(ir.Input("x", input_shape=(N,)))
    g.add(ir.Linear("fc", ("x",), weight=np.eye(N)))
    g.add(ir.Neuron("lif", ("fc",), alpha=0.5, gamma=1.0, beta=0.0, theta=1.0))
    g.add(ir.Output("spikes", ("lif",)))
    return g


def tie_inputs() -> np.ndarray:
    x = np.random.default_rng(0).uniform(-1.0, 2.0, (T, B, N))
    x[:, :, ::2] = 1.0 - 1e-9  # below the threshold in float64, on it in float32
    return x


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("dtype")
    src = serialize.save(tie_graph(), root / "ties.snnir")
    np.save(root / "x.npy", tie_inputs())
    return root, src


def _dtypes(directory) -> dict[str, str]:
    return {f: read_metadata(directory / f)["snncc.dtype"]
            for f in ("model.onnx", "model.step.onnx")}


def _elem_types(path) -> set[int]:
    m = onnx.load(path)
    return {i.data_type for i in m.graph.initializer if i.data_type != onnx.TensorProto.INT64}


def test_cli_compile_default_is_float64_and_float32_on_request(files, capsys):
    root, src = files
    assert main(["compile", str(src), "-t", "onnx", "-o", str(root / "d64")]) == 0
    assert "for target 'onnx' in float64" in capsys.readouterr().out
    assert _dtypes(root / "d64") == {"model.onnx": "float64", "model.step.onnx": "float64"}
    assert _elem_types(root / "d64" / "model.onnx") == {onnx.TensorProto.DOUBLE}
    # the metadata reader that skips the weights agrees with onnx's full parse
    full = {p.key: p.value for p in onnx.load(root / "d64" / "model.onnx").metadata_props}
    assert read_metadata(root / "d64") == full

    assert main(["compile", str(src), "-t", "onnx", "--dtype", "float32",
                 "-o", str(root / "d32")]) == 0
    assert "in float32" in capsys.readouterr().out
    assert _dtypes(root / "d32") == {"model.onnx": "float32", "model.step.onnx": "float32"}
    assert _elem_types(root / "d32" / "model.onnx") == {onnx.TensorProto.FLOAT}


def test_dtype_refused_where_it_does_not_apply(files, capsys):
    root, src = files
    assert main(["compile", str(src), "-t", "sim", "--dtype", "float32",
                 "-o", str(root / "s.snnir")]) != 0
    err = capsys.readouterr().err
    assert "does not apply to target 'sim'" in err and "onnx" in err
    assert not (root / "s.snnir").exists()
    assert main(["compile", str(src), "-t", "onnx", "--dtype", "float16",
                 "-o", str(root / "d16")]) != 0
    assert "float16" in capsys.readouterr().err and not (root / "d16").exists()


def test_api_compile_dtype(tmp_path):
    g = tie_graph()
    assert _dtypes(snncc.compile(g, target="onnx", out=tmp_path / "a"))["model.onnx"] == "float64"
    assert _dtypes(snncc.compile(g, target="onnx", out=tmp_path / "b",
                                 dtype="float32"))["model.onnx"] == "float32"
    with pytest.raises(SnnccError, match="does not apply to target 'nir'"):
        snncc.compile(g, target="nir", out=tmp_path / "c.nir", dtype="float64")


def _check(root, src, artifact, *extra):
    report = root / f"{artifact}.json"
    code = main(["check", str(src), "-t", "onnx", "--artifact", str(root / artifact),
                 "--inputs", str(root / "x.npy"), "--json", str(report), *extra])
    return code, json.loads(report.read_text())


def test_check_artifact_float32_reports_dtype_and_flips(files, capsys):
    root, src = files
    if not (root / "d32").exists():
        snncc.compile(src, target="onnx", out=root / "d32", dtype="float32")
    code, rep = _check(root, src, "d32", "--min-agreement", "0.5")
    out = capsys.readouterr().out
    assert code == 0
    assert rep["dtype"] == "float64" and rep["target_dtype"] == "float32"
    (layer,) = rep["layers"]
    assert layer["agreement_sim"] == 1.0  # the simulator runs in float64: exact
    # an input at 1 - 1e-9 fires at steps 1 and 3 in float64 (0, 1, 0, 1: the reset empties
    # the membrane) and at every step in float32: half the steps of half the neurons flip
    assert layer["agreement_target"] == 0.75
    assert rep["first_divergent_target"] == "lif"
    assert rep["target_mismatch_rate"] == 0.25
    assert "onnx in float32" in out and "computes in float32" in out

    # the default --min-agreement (1.0) fails on it, and says why
    code, _ = _check(root, src, "d32")
    assert code != 0
    assert "computes in float32" in capsys.readouterr().err


def test_check_artifact_float64_is_exact(files, capsys):
    root, src = files
    if not (root / "d64").exists():
        snncc.compile(src, target="onnx", out=root / "d64")
    code, rep = _check(root, src, "d64")
    assert code == 0, capsys.readouterr().err
    assert rep["target_dtype"] == "float64" and rep["min_agreement"] == 1.0
    assert "computes in float32" not in capsys.readouterr().out
