"""Checkpoints: a zoo model's state_dict (wrapped as training scripts save it) reloads into the
architecture and gives the same spikes, in PyTorch and in the traced IR, also through
``snncc compile``; renamed, missing, unexpected and mis-shaped keys, corrupt files, NaN
weights and pickled code are refused with one-line messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from snncc.cli import main
from snncc.errors import CheckpointError, FormatError
from snncc.frontends import from_checkpoint, load_into, load_state_dict, zoo
from snncc.serialize import load
from snncc.simulator import simulate

from test_tracer import assert_parity, one_thread, torch_spikes  # noqa: F401  (fixture)

ARCH = "digits-spikformer"


@pytest.fixture
def model():
    m = zoo.build(ARCH)
    zoo.randomize_bn(m, 0)
    return m.eval()


@pytest.fixture
def ckpt(tmp_path, model):
    """Saved as a DataParallel training script does: prefixed keys inside a checkpoint dict."""
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 7, "model": {f"module.{k}": v for k, v in model.state_dict().items()}},
               path)
    return path


def digits(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(1),
                       dtype=torch.float64)


def test_round_trip_gives_identical_spikes(model, ckpt):
    loaded, graph = from_checkpoint(ckpt, ARCH)
    assert graph.meta["arch"] == ARCH and not loaded.training
    paths = {n for n, m in model.named_modules() if isinstance(m, zoo.LIF)}
    y_ref, ref = torch_spikes(model.double(), digits(), paths)
    y, got = torch_spikes(loaded.double(), digits(), paths)
    assert all(np.array_equal(ref[p], got[p]) for p in paths) and np.array_equal(y, y_ref)
    rates = assert_parity(loaded, digits(), graph)
    assert all(r > 0 for r in rates.values())


def test_cli_compile_round_trip(model, ckpt, tmp_path):
    out = tmp_path / "model.snnir"
    assert main(["compile", str(ckpt), "--arch", ARCH, "--out", str(out)]) == 0
    res = simulate(load(out), digits().numpy(), T=4)
    with torch.no_grad():
        np.testing.assert_allclose(res.output, model.double()(digits()).numpy(), rtol=0,
                                   atol=1e-10)


def test_renamed_key_is_refused_with_both_names(model, tmp_path):
    state = model.state_dict()
    state["block.0.attn.q_lnear.weight"] = state.pop("block.0.attn.q_linear.weight")
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        from_checkpoint(path, ARCH)
    assert ("key 'block.0.attn.q_linear.weight' is missing; checkpoint has "
            "'block.0.attn.q_lnear.weight' instead") in str(err.value)


def test_a_checkpoint_of_another_size_names_the_architecture_it_fits(tmp_path):
    """Every key of another shape (683 for Meta-SpikeFormer 31M read as 15M) made a message of
    some 90,000 characters; now the first few, a count, and the zoo entries it does fit."""
    torch.save(zoo.build("spikformer-cifar-4-256").state_dict(), tmp_path / "c.pth")
    with pytest.raises(CheckpointError) as err:
        from_checkpoint(tmp_path / "c.pth", "spikformer-cifar-4-384")
    msg = str(err.value)
    assert len(msg) < 2000, len(msg)
    assert msg.count("in the checkpoint but") == 8
    assert "more keys of another shape; it fits architecture 'spikformer-cifar-4-256'" in msg


def test_missing_unexpected_and_misshaped_keys_are_listed(model):
    state = model.state_dict()
    del state["head.bias"]
    state["extra.weight"] = torch.ones(3)
    state["block.0.mlp.fc1_bn.weight"] = torch.ones(5)
    with pytest.raises(CheckpointError) as err:
        load_into(zoo.build(ARCH), state, ARCH)
    msg = str(err.value)
    assert "\n" not in msg and f"architecture '{ARCH}'" in msg
    assert "missing keys (1): 'head.bias'" in msg
    assert "unexpected keys (1): 'extra.weight'" in msg
    assert "key 'block.0.mlp.fc1_bn.weight' has shape (5,) in the checkpoint but (128,)" in msg


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_files_are_refused(ckpt, damage):
    data = ckpt.read_bytes()
    ckpt.write_bytes({"truncated": data[:len(data) // 2], "garbage": b"not a checkpoint",
                      "empty": b""}[damage])
    with pytest.raises(FormatError) as err:
        load_state_dict(ckpt)
    assert "\n" not in str(err.value) and str(ckpt) in str(err.value)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        load_state_dict(tmp_path / "nothing.pth")


def test_pickled_module_needs_trust(model, tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(model, path)  # a whole nn.Module: unpickling it imports and runs code
    with pytest.raises(CheckpointError, match=r"pickled Python objects .*Spikformer.*trust"):
        load_state_dict(path)
    state = load_state_dict(path, trust=True)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_torchscript_needs_trust(tmp_path):
    path = tmp_path / "script.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 3)), path)
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_state_dict(path)
    assert set(load_state_dict(path, trust=True)) == {"weight", "bias"}


def test_nan_weights_and_non_tensors_are_refused(model, tmp_path):
    state = model.state_dict()
    state["head.weight"][0, 0] = float("inf")
    path = tmp_path / "inf.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="key 'head.weight' contains NaN or infinite"):
        load_state_dict(path)
    for bad in (float("nan"), float("-inf")):  # anywhere in the tensor, any float dtype
        for dtype in (torch.float16, torch.float64):
            state = {k: v.to(dtype) for k, v in model.state_dict().items()}
            state["head.weight"].view(-1)[-1] = bad
            torch.save(state, path)
            with pytest.raises(CheckpointError, match="key 'head.weight' contains NaN"):
                load_state_dict(path)
    torch.save({"head.weight": torch.ones(2), "head.note": "hello"}, path)
    with pytest.raises(CheckpointError, match="key 'head.note' holds a str, not a tensor"):
        load_state_dict(path)


def test_timms_checkpoint_with_its_arguments_loads_without_trust(model, tmp_path, capsys):
    """timm's train.py (the Spikformer family's official training) saves ``args``, an argparse
    Namespace, beside the weights: it was refused as code (--trust-checkpoint); a Namespace
    holding another class still is."""
    import argparse
    import pathlib

    path = tmp_path / "model_best.pth.tar"
    args = argparse.Namespace(model="spikformer", lr=5e-4, time_steps=4, mean=(0.5, 0.5))
    torch.save({"epoch": 299, "arch": "spikformer", "state_dict": model.state_dict(),
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5}]}, "version": 2,
                "args": args, "metric": 95.2}, path)
    assert main(["compile", str(path), "--arch", ARCH, "-o", str(tmp_path / "m.snnir")]) == 0
    res = simulate(load(tmp_path / "m.snnir"), digits().numpy(), T=4)
    with torch.no_grad():
        np.testing.assert_allclose(res.output, model.double()(digits()).numpy(), rtol=0,
                                   atol=1e-10)
    args.output = pathlib.PurePosixPath("/out")
    torch.save({"state_dict": model.state_dict(), "args": args}, path)
    with pytest.raises(CheckpointError, match=r"pickled Python objects .*PurePosixPath"):
        load_state_dict(path)


def _lightning(model, path, extra: dict):
    """A PyTorch Lightning checkpoint of a LightningModule holding ``model`` as ``self.model``
    (its other attributes' keys in ``extra``)."""
    torch.save({"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
                "state_dict": {**{f"model.{k}": v for k, v in model.state_dict().items()},
                               **extra},
                "hyper_parameters": {"lr": 1e-3}, "optimizer_states": [], "lr_schedulers": []},
               path)


def test_a_lightning_checkpoint_of_a_module_holding_the_model(model, tmp_path, capsys):
    """Keys under the attribute holding the model (``model.``) are the model's, said in one
    line (the checkpoint was refused: every key "renamed"); a loss's keys left out; two
    attributes holding the model (an EMA copy) refused, naming both."""
    path = tmp_path / "epoch=3.ckpt"
    _lightning(model, path, {"criterion.weight": torch.ones(10)})
    assert main(["compile", str(path), "--arch", ARCH, "-o", str(tmp_path / "m.snnir")]) == 0
    err = capsys.readouterr().err
    assert "weights are the keys under 'model.'" in err and "1 other keys left out" in err
    res = simulate(load(tmp_path / "m.snnir"), digits().numpy(), T=4)
    with torch.no_grad():
        np.testing.assert_allclose(res.output, model.double()(digits()).numpy(), rtol=0,
                                   atol=1e-10)
    _lightning(model, path, {f"ema.{k}": v for k, v in model.state_dict().items()})
    assert main(["compile", str(path), "--arch", ARCH, "-o", str(tmp_path / "e.snnir")]) == 1
    assert "under each of 'ema.', 'model.'" in capsys.readouterr().err


_ST_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.int64: "I64",
              torch.bfloat16: "BF16"}


def _safetensors(path, tensors: dict, edit=None) -> None:
    """A safetensors file as its specification lays it out (an 8-byte little-endian header
    length, the JSON header, the tensors' bytes); ``edit(header)`` damages the header."""
    import json
    import struct

    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for key, t in tensors.items():
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[key] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape),
                       "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if edit is not None:
        edit(header)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_a_safetensors_file_is_read_without_unpickling(model, tmp_path):
    """HuggingFace's safetensors format (no code in it; no library needed): the zoo model
    compiles from it with the same outputs; a bfloat16 and an empty tensor read exactly."""
    path = tmp_path / "model.safetensors"
    _safetensors(path, model.state_dict())
    assert main(["compile", str(path), "--arch", ARCH, "-o", str(tmp_path / "m.snnir")]) == 0
    res = simulate(load(tmp_path / "m.snnir"), digits().numpy(), T=4)
    with torch.no_grad():
        np.testing.assert_allclose(res.output, model.double()(digits()).numpy(), rtol=0,
                                   atol=1e-10)
    odd = {"b": torch.randn(3, 2).to(torch.bfloat16), "e": torch.zeros(0, 4)}
    _safetensors(path, odd)
    got = load_state_dict(path)
    assert got["b"].dtype == torch.bfloat16 and torch.equal(got["b"], odd["b"])
    assert got["e"].shape == (0, 4)


def _entry(key, **changes):
    return lambda header: header[key].update(changes)


@pytest.mark.parametrize("edit, message", [
    (_entry("w", data_offsets=[0, 4]), "declares bytes 0-4 for shape \\[2, 3\\]"),
    (_entry("w", data_offsets=[0, 10 ** 9]), "declares bytes"),
    (_entry("b", data_offsets=[8, 20]), "'w' and 'b' overlap"),
    (_entry("w", dtype="F128"), "is not a tensor's dtype, shape and data_offsets"),
    (_entry("w", shape=[2, -3]), "is not a tensor's"),
    (lambda h: h.update(x=[1, 2]), "entry 'x' is not a tensor's")])
def test_damaged_safetensors_files_are_refused(tmp_path, edit, message):
    path = tmp_path / "bad.safetensors"
    _safetensors(path, {"w": torch.ones(2, 3), "b": torch.ones(3)}, edit)
    with pytest.raises(FormatError, match=message):
        load_state_dict(path)


def test_a_safetensors_header_longer_than_its_file_or_not_json_is_refused(tmp_path):
    import struct

    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 10 ** 6) + b'{"w": 1}')
    with pytest.raises(FormatError, match="header of 1000000 bytes in a file of 16"):
        load_state_dict(path)
    path.write_bytes(struct.pack("<Q", 6) + b'{"w": ')
    with pytest.raises(FormatError, match="not JSON"):
        load_state_dict(path)
