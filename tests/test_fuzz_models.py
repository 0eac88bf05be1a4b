"""Differential fuzzing of the front-end (tests/fuzz_models.py): random spiking PyTorch models
in the styles users write them (spikingjelly multi-step layers, SeqToANNContainer, Spikformer's
flatten(0, 1), loops of single-step spikingjelly, snnTorch or norse neurons, fifteen neuron
classes of the three libraries; convolutions, SEW and membrane residuals, SEW ResNet's
downsampling, pooling, concatenation, slicing, upsampling, Spikformer's and spike-driven
attention, SGLFormer's window attention, token MLPs; readouts over time incl. SGLFormer's
convolution spanning every position and step; each op written one of several ways) compiled
for sim, onnx and nir
(and Lava) and run, against the model's own forward in float64: every drawn model must compile
and give exactly the model's outputs and spikes (`snncc check`, agreement 1).

The CI run draws 24 models (seeds 0-23), four of them also on Lava; ``-m slow`` 200 more.
benchmarks/fuzz_models.py runs any number. What the fuzzer found is tested where it was fixed
(tests/test_tracer.py, tests/test_snntorch_norse.py, tests/test_user_models.py)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import fuzz_models as fz
import snncc
from snncc.api import to_ir_layout
from snncc.cli import main
from snncc.parity import PER_STEP_LAYOUTS, output_in_ir_layout

FUZZ = Path(fz.__file__)

TARGETS = ("sim", "onnx", "nir")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(seeds) -> list[fz.ModelResult]:
    results = [fz.run_model(seed, TARGETS) for seed in seeds]
    failures = {r.description: r.failures for r in results if r.failures}
    assert not failures, failures
    refused = {r.description: r.detail for r in results if "refused" in r.outcome.values()}
    assert not refused, refused
    return results


def _rates_in_range(results) -> float:
    rates = [v for r in results for v in r.rates.values()]
    return sum(0.05 <= v <= 0.95 for v in rates) / len(rates)


def test_drawn_models_are_exact_on_every_target():
    results = _run(range(20))  # (the fewest seeds drawing every style, block and neuron)
    assert {r.description.split(",")[0].split(": ")[1] for r in results} == set(fz.STYLES)
    models = [fz.build_model(r.seed)[0] for r in results]
    kinds = Counter(k for m in models for k in m.kinds)
    assert set(kinds) == set(fz.BLOCKS), kinds
    assert set().union(*map(fz.neuron_classes, models)) == set(fz.NEURONS)
    assert _rates_in_range(results) >= 0.8  # the spikes compared are not all zeros


@pytest.mark.slow
def test_more_drawn_models_are_exact_on_every_target():
    assert _rates_in_range(_run(range(20, 224))) >= 0.8


def test_drawn_models_are_exact_on_lava():
    """Lava processes in Loihi2SimCfg (floating point): the output at the last step (all Lava
    gives) and every layer's spikes (``snncc.check``) are the model's. Seeds 0, 4, 8, 11:
    snnTorch loops with Alpha and recurrent neurons, norse cells with LSNN and SEW ResNet's
    downsampling, SeqToANNContainer with PLIF and SGLFormer's head (a convolution spanning
    every position and step), multi-step layers with CUBA LIF and SGLFormer's window
    attention."""
    results = [fz.run_model(seed, ("lava",)) for seed in (0, 4, 8, 11)]
    assert all(r.outcome == {"lava": "exact"} for r in results), \
        [(r.description, r.detail) for r in results]
    assert _rates_in_range(results) >= 0.8


@pytest.mark.parametrize("seed", [3, 4, 9, 22])
def test_drawn_models_from_the_command_line(seed, tmp_path):
    """The CLI's path for a user's model: its state_dict with its code (``--model
    file.py:factory --model-args``), compiled, run (``snncc run``) and checked (``snncc check``
    --inputs): the artifact's outputs are the model's, every layer agrees."""
    model, x, desc = fz.build_model(seed)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    graph = snncc.trace(model, x)
    np.save(tmp_path / "x.npy", to_ir_layout(graph, x.double()))
    common = [str(tmp_path / "m.pt"), "--model", f"{FUZZ}:fuzz_model", "--model-args",
              json.dumps({"seed": seed}), "--input-shape", "2,8,8", "--T", str(graph.meta["T"]),
              "--layout",
              graph.meta["input_layout"]]
    assert main(["compile", *common, "-t", "onnx", "-o", str(tmp_path / "out")]) == 0, desc
    assert main(["run", str(tmp_path / "out"), "--inputs", str(tmp_path / "x.npy"), "-o",
                 str(tmp_path / "y.npy")]) == 0
    ref, _ = fz.reference(model, x)
    y = np.load(tmp_path / "y.npy")
    if graph.meta.get("output_layout") in PER_STEP_LAYOUTS:
        ref = output_in_ir_layout(graph, ref, y.shape[1])
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-9, err_msg=desc)
    assert main(["check", *common, "-t", "nir", "--inputs", str(tmp_path / "x.npy"),
                 "--json", str(tmp_path / "r.json")]) == 0, desc
    assert json.loads((tmp_path / "r.json").read_text())["min_agreement"] == 1.0
