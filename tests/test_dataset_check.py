"""`snncc check --dataset`: whole labelled sets streamed in batches (digits, .npz, an image
folder, a folder of per-sample event frames), accuracies equal to a direct computation, bounded
memory, the 2-process torchrun run equal to the 1-process one, resuming, and one-line errors
for bad specs."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from snncc import api, serialize
from snncc.errors import SnnccError
from snncc.dataset import DatasetCheck, check_dataset, checkpoint_path, open_dataset
from snncc.frontends.digits import digits_split
from snncc.models import load_model

from test_check_cli import corrupt_snnir

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "examples" / "checkpoints" / "digits-spikformer.pt"
ARCH = ["--arch", "digits-spikformer"]


def snncc(*args, env=None, module=("-m", "snncc")):
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, *module, *map(str, args)], capture_output=True,
                          text=True, timeout=600, env=e)


@pytest.fixture(scope="module")
def loaded():
    return load_model(CKPT, "digits-spikformer")


@pytest.fixture(scope="module")
def test_split():
    return digits_split(8)[1]


def direct_accuracy(loaded, x, y) -> float:
    with torch.no_grad():
        out = loaded.torch_model.double().eval()(torch.as_tensor(x)).numpy()
    return float(np.mean(out.argmax(-1) == y))


def without_run(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "run"}


def test_digits_through_the_cli_equals_a_direct_computation(tmp_path, loaded, test_split):
    r = snncc("check", CKPT, *ARCH, "--dataset", "digits", "--limit", "100", "--batch", "40",
              "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # not a terminal: no progress bar
    rep = json.loads((tmp_path / "r.json").read_text())
    x, y = test_split
    acc = direct_accuracy(loaded, x[:100], y[:100])
    assert rep["samples"] == 100 and rep["batch"] == 40
    for e in ("pytorch", "simulator", "sim"):
        assert rep["engines"][e]["accuracy"] == pytest.approx(acc, abs=1e-12)
        assert rep["engines"][e]["agreement_with_reference"] == 1.0
    assert rep["min_agreement"] == 1.0 and rep["first_divergent_target"] is None
    assert rep["worst_samples"] == []
    assert all(0 < layer["rate_reference"] < 1 for layer in rep["layers"])
    assert "100 samples" in r.stdout and "pytorch" in r.stdout


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_is_read_per_batch_and_gives_the_same_report_as_digits(tmp_path, loaded,
                                                                   test_split, compressed):
    x, y = test_split
    path = tmp_path / "d.npz"
    (np.savez_compressed if compressed else np.savez)(path, x=x[:50], y=y[:50])
    ds = open_dataset(str(path), loaded.graph, batch=16)
    assert (ds.x.memmap is not None) == (not compressed)
    got = np.concatenate([b.x for b in ds.batches()])
    np.testing.assert_array_equal(got, x[:50])
    assert [len(b.y) for b in ds.batches()] == [16, 16, 16, 2]
    ds.close()
    rep = check_dataset(loaded, str(path), batch=16)
    ref = check_dataset(loaded, "digits", batch=16, limit=50)
    a, b = without_run(rep.to_dict()), without_run(ref.to_dict())
    assert a.pop("dataset") == str(path) and b.pop("dataset") == "digits"
    assert a == b
    assert rep.accuracy["pytorch"] == pytest.approx(direct_accuracy(loaded, x[:50], y[:50]))


def test_default_batch_is_the_largest_whose_check_fits_the_budget(loaded):
    """Without --batch a data-set check takes 64 samples at a time, or as many as the memory
    budget holds the check of (a full-size model at 224x224: 10), and says so; the same report
    as that batch given."""
    from snncc import limits
    from snncc.parity import check_bytes, largest_batch
    from snncc.pipeline import for_target

    compiled = for_target("sim", log=lambda s: None).run(loaded.graph)
    need = {b: check_bytes(loaded, compiled, 4, b, "float64")[0] for b in (12, 13, 64)}
    said = []
    try:
        limits.set_max_memory(need[13] - 1)
        assert largest_batch(loaded, compiled, 4, "float64", 64) == 12
        rep = check_dataset(loaded, "digits", limit=30, log=said.append)
        assert rep.batch == 12 and rep.samples == 30
        assert said == [f"batch 12: the largest up to 64 whose check fits the memory budget of "
                        f"{limits.fmt_bytes(need[13] - 1)} (--batch chooses another)"]
        limits.set_max_memory(need[64])
        said.clear()
        assert check_dataset(loaded, "digits", limit=30, log=said.append).batch == 64
        assert said == []
    finally:
        limits.set_max_memory(None)
    assert without_run(rep.to_dict()) == without_run(
        check_dataset(loaded, "digits", batch=12, limit=30).to_dict())
    # the data set is opened before the compile: a bad one is refused first
    with pytest.raises(SnnccError, match="nope.npz: no such file"):
        check_dataset(loaded, "nope.npz", passes=["no_such_pass"])


def test_npz_labels_are_checked_up_front_by_their_index_in_the_set(tmp_path, loaded):
    """A bad label was named by its index in its batch and as '--labels'; it is now named by
    its index in the set before any batch runs, and labels past --limit are not read."""
    from snncc.errors import FormatError

    path = tmp_path / "bad.npz"
    y = np.arange(100) % 10
    y[70] = 12
    np.savez(path, x=np.zeros((100, 1, 8, 8)), y=y.astype(np.float64))
    with pytest.raises(FormatError, match=r"bad.npz: y: label 12.0 at index 70 is not a class "
                                          r"index in \[0, 10\)"):
        check_dataset(loaded, str(path), batch=64)
    assert check_dataset(loaded, str(path), batch=64, limit=70).samples == 70


@pytest.mark.parametrize("size", [8, 16])
def test_digits_split_is_scikit_learns_without_importing_it(size):
    """The shipped split (examples/checkpoints/digits-split.npz) and the images read from
    scikit-learn's file give bit for bit what load_digits and train_test_split give."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d, k = load_digits(), size // 8
    x = (d.images / 16.0)[:, None].repeat(k, axis=2).repeat(k, axis=3)
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.2, random_state=0,
                                          stratify=d.target)
    mean, std = xtr.mean(), xtr.std()
    (a, b), (c, e) = digits_split(size)
    for got, want in [(a, (xtr - mean) / std), (b, ytr), (c, (xte - mean) / std), (e, yte)]:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    (a, _), (c, _) = digits_split(size, test_fraction=0.3, seed=1)  # scikit-learn's own split
    assert len(a) == 1257 and len(c) == 540


def test_image_folder_decoded_with_pillow_and_normalised(tmp_path, loaded):
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs, y = d.images[-30:], d.target[-30:]
    for i, (im, c) in enumerate(zip(imgs, y)):
        (tmp_path / "f" / f"c{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray((im * 15).astype(np.uint8), "L").save(tmp_path / "f" / f"c{c}" /
                                                               f"{i:03d}.png")
    (tmp_path / "f" / "c0" / "notes.txt").write_text("not an image")  # ignored
    # pixel / 240 = digits value / 16; then the training split's standardisation
    from sklearn.model_selection import train_test_split

    x16 = (d.images / 16.0)[:, None]
    tr, _ = train_test_split(x16, test_size=0.2, random_state=0, stratify=d.target)
    mean, std = tr.mean(), tr.std()
    transform = ["scale=240", f"mean={mean!r}", f"std={std!r}"]
    rep = api.check_dataset(CKPT, str(tmp_path / "f"), arch="digits-spikformer", batch=8,
                            transform=transform)
    ds = open_dataset(str(tmp_path / "f"), loaded.graph, batch=64, transform=transform)
    (b,) = list(ds.batches())
    assert rep.samples == 30 and ds.classes == len(set(y))
    # labels are the sorted class folders' indices
    names = sorted(f"c{c}" for c in set(y))
    np.testing.assert_array_equal(b.y, [names.index(f"c{c}") for c in
                                        [y[int(p.rsplit('/', 1)[1][:3])] for p in ds.files]])
    expect = (x16[-30:] - mean) / std
    order = [int(Path(p).stem) for p in ds.files]
    np.testing.assert_allclose(b.x, expect[order], atol=1e-12)
    # accuracy against the folder's labels, computed directly
    with torch.no_grad():
        out = loaded.torch_model.double().eval()(torch.as_tensor(b.x)).numpy()
    assert rep.accuracy["pytorch"] == pytest.approx(float(np.mean(out.argmax(-1) == b.y)))
    assert rep.min_agreement == 1.0


def test_streaming_memory_is_bounded(tmp_path, loaded):
    # a 40 MB x read batch by batch: the reader's peak is about one batch, not the array
    x = np.random.default_rng(0).normal(size=(80_000, 1, 8, 8))
    path = tmp_path / "big.npz"
    np.savez(path, x=x, y=np.zeros(80_000, dtype=np.int64))
    del x
    ds = open_dataset(str(path), loaded.graph, batch=256)
    tracemalloc.start()
    n = sum(len(b.y) for b in ds.batches())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    ds.close()
    assert n == 80_000 and peak < 2_000_000, peak
    # the accumulator's state does not grow with the number of batches
    sizes = []
    acc = DatasetCheck("sim", "pytorch", [("a", "a", 4)])
    rng = np.random.default_rng(1)
    for i in range(50):
        r = (rng.random((4, 8, 4)) < 0.5).astype(float)
        s = r.copy()
        s[0, i % 8, 0] = 1 - s[0, i % 8, 0]
        out = rng.normal(size=(8, 10))
        acc.add(i * 8, rng.integers(0, 10, 8), {
            "outputs": {"reference": out, "simulator": out, "target": out},
            "output_diffs": {"simulator": np.zeros(8), "target": np.zeros(8)},
            "output_over_steps": False,
            "traces": {"reference": {"a": r}, "simulator": {"a": s}, "target": {"a": r}}})
        sizes.append(len(pickle.dumps(acc.state())))
    assert max(sizes[10:]) <= sizes[9] + 64  # worst-sample heap full: constant from then on
    assert acc.n == 400 and len(acc.worst) == 10


def corrupt_artifact(tmp_path) -> Path:
    r = snncc("compile", CKPT, *ARCH, "--target", "sim", "-o", tmp_path / "sim")
    assert r.returncode == 0, r.stderr
    path = tmp_path / "sim" / "model.snnir"
    corrupt_snnir(path)
    return path


def one_and_two_processes(tmp_path, *options):
    """`check` of the digits checkpoint with ``options`` in one process and under torchrun with
    two: (one-process JSON report, two-process JSON report, the torchrun result)."""
    args = ["check", CKPT, *ARCH, *options]
    one = snncc(*args, "--json", tmp_path / "1.json")
    assert one.returncode == 0, one.stderr
    two = snncc("--standalone", "--nproc-per-node", "2", "-m", "snncc", *args, "--json",
                tmp_path / "2.json", module=("-m", "torch.distributed.run"))
    assert two.returncode == 0, two.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("1.json", "2.json"))
    return a, b, two


def test_two_process_torchrun_equals_one_process(tmp_path):
    art = corrupt_artifact(tmp_path)
    a, b, two = one_and_two_processes(tmp_path, "--dataset", "digits", "--limit", "130",
                                      "--batch", "20", "--artifact", art, "--min-agreement", "0")
    assert a["run"]["processes"] == 1 and b["run"]["processes"] == 2
    assert without_run(a) == without_run(b)
    assert a["samples"] == 130 and a["first_divergent_target"] == "block.0.mlp.fc1_lif"
    assert a["worst_samples"] and a["engines"]["sim"]["agreement_with_reference"] <= 1.0
    keys = [(w["spike_mismatches"], w["output_max_abs_diff"]) for w in a["worst_samples"]]
    assert keys == sorted(keys, reverse=True)
    assert two.stdout.count("data set digits") == 1  # rank 0 alone reports


@pytest.mark.slow  # ~30 s: CI keeps the two-process run of the simulator above
def test_two_lava_runtimes_under_torchrun_equal_one(tmp_path):
    """One Lava runtime per rank: the reduced report equals the one-process run."""
    a, b, _ = one_and_two_processes(tmp_path, "-t", "lava", "--dataset", "digits", "--limit",
                                    "16", "--batch", "4")
    assert without_run(a) == without_run(b) and a["samples"] == 16
    assert a["min_agreement"] == 1.0


def test_resume_continues_and_gives_the_same_report(tmp_path, loaded):
    full = check_dataset(loaded, "digits", batch=20, limit=140)
    ck = tmp_path / "ck.json"

    def stop(i):
        if i == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        check_dataset(loaded, "digits", batch=20, limit=140, resume=ck, checkpoint_every=2,
                      on_batch=stop)
    doc = json.loads(ck.read_text())
    assert doc["batches_done"] == 5 and doc["state"]["n"] == 100  # saved on interruption
    seen = []
    resumed = check_dataset(loaded, "digits", batch=20, limit=140, resume=ck,
                            on_batch=seen.append)
    assert seen == [6, 7]  # only the two batches left
    assert without_run(resumed.to_dict()) == without_run(full.to_dict())
    # a checkpoint of another run is refused, not mixed in
    with pytest.raises(SnnccError, match="different run"):
        check_dataset(loaded, "digits", batch=20, limit=120, resume=ck)
    assert checkpoint_path(ck, 1, 2).name == "ck.json.rank1-of-2"


@pytest.mark.parametrize("args, message", [
    (["--dataset", "nowhere.npz"], "no such file"),
    (["--dataset", "digits:validation"], "'test' or 'train'"),
    (["--dataset", "BAD_NPZ"], "needs arrays 'x' and 'y'"),
    (["--dataset", "WRONG_SHAPE"], "the model takes [1, 8, 8]"),
    (["--dataset", "EMPTY_DIR"], "one sub-folder per class"),
    (["--dataset", "digits", "--transform", "mean=0"], "applies to images"),
    (["--dataset", "IMG_DIR", "--transform", "gamma=2"], "is not one of"),
    (["--dataset", "digits", "--limit", "0"], "--limit must be >= 1"),
    (["--dataset", "digits", "--device", "tpu"], "device must be cpu or cuda"),
    (["--limit", "5"], "--limit applies to --dataset only"),
    (["--dataset", "digits", "--inputs", "x.npy"], "--dataset replaces --inputs"),
])
def test_bad_specs_are_one_line_errors(tmp_path, capsys, args, message):
    """Through the CLI's entry point in this process (the first case also in a process of its
    own, as a user runs it: the same line and a non-zero exit)."""
    from snncc.cli import main

    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 1, 8, 8)))
    np.savez(tmp_path / "shape.npz", x=np.zeros((3, 8, 8)), y=np.zeros(3, dtype=int))
    (tmp_path / "empty").mkdir()
    (tmp_path / "img" / "a").mkdir(parents=True)
    subs = {"BAD_NPZ": tmp_path / "bad.npz", "WRONG_SHAPE": tmp_path / "shape.npz",
            "EMPTY_DIR": tmp_path / "empty", "IMG_DIR": tmp_path / "img",
            "nowhere.npz": tmp_path / "nowhere.npz"}
    argv = ["check", str(CKPT), *ARCH, *[str(subs.get(a, a)) for a in args]]
    assert main(argv) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snncc: error:"), lines
    assert message in lines[0], lines[0]
    if args[-1] == "nowhere.npz":
        r = snncc(*argv)
        assert r.returncode != 0 and r.stderr.strip().splitlines() == lines, r.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_gives_the_cpu_report(loaded):
    cpu = check_dataset(loaded, "digits", batch=32, limit=96)
    gpu = check_dataset(loaded, "digits", batch=32, limit=96, device="cuda")
    assert gpu.accuracy == cpu.accuracy
    assert gpu.min_agreement == 1.0
    assert [r["rate_reference"] for r in gpu.layers] == \
        pytest.approx([r["rate_reference"] for r in cpu.layers], abs=1e-3)


def test_check_takes_T_from_a_sequence_input(tmp_path):
    """Issue 14 item 6: `check x.snnir --inputs x.npy` with [8, B, ...] on a T=4 graph runs 8
    steps (as `run` does) instead of failing with 'sequence has 8 steps, T=4'."""
    from snncc import ir
    from snncc.graph import Graph

    rng = np.random.default_rng(0)
    g = Graph("seq", {"T": 4})
    g.add(ir.Input("x", input_shape=(6,), static=False))
    g.add(ir.Linear("fc", ("x",), weight=rng.normal(0, 1, (5, 6))))
    g.add(ir.Neuron("lif", ("fc",), "lif", alpha=0.5, gamma=1.0, beta=0.0, theta=1.0,
                    v_reset=0.0, v_init=0.0, cmp=">=", reset="hard"))
    g.add(ir.Readout("mean", ("lif",)))
    g.add(ir.Output("out", ("mean",)))
    serialize.save(g.verify(), tmp_path / "seq.snnir")
    np.save(tmp_path / "x.npy", rng.normal(0.5, 1, (8, 3, 6)))
    r = snncc("check", tmp_path / "seq.snnir", "--inputs", tmp_path / "x.npy", "--json",
              tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["T"] == 8 and rep["min_agreement"] == 1.0


def _dvs_net(seed: int):
    """A DVS classifier on spikingjelly event frames [B, T, 2, 8, 8] (layout BT)."""
    from spikingjelly.activation_based import functional, layer, neuron

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        layer.Conv2d(2, 4, 3, padding=1), layer.BatchNorm2d(4), neuron.LIFNode(),
        layer.Flatten(), layer.Linear(4 * 64, 3), neuron.IFNode())
    functional.set_step_mode(model, "m")
    with torch.no_grad():
        model[4].weight.mul_(6.0)

    class BT(torch.nn.Module):  # [B, T, ...] -> [T, B, ...] -> rate over time
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return self.net(x.transpose(0, 1)).mean(0)

    from snncc.frontends.zoo import randomize_bn
    return randomize_bn(BT().eval(), seed)


def test_a_folder_of_event_frames_per_sample_is_checked_as_the_same_set_in_one_npz(tmp_path):
    """spikingjelly's preprocessed DVS sets: one sub-folder per class, one compressed .npz per
    sample with ``frames`` [T, 2, H, W] (event counts); .npy files alike. The report equals the
    one of the same samples in a single .npz with x and y; the frames are read without
    unpickling."""
    rng = np.random.default_rng(0)
    x = rng.poisson(0.6, size=(12, 4, 2, 8, 8)).astype(np.float32)
    y = np.arange(12) % 3
    for i, (frames, c) in enumerate(zip(x, y)):
        folder = tmp_path / "frames" / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        if i % 2:
            np.savez_compressed(folder / f"{i:02d}.npz", frames=frames)
        else:
            np.save(folder / f"{i:02d}.npy", frames)
    model = _dvs_net(0)
    loaded = api.load(model, torch.as_tensor(x[:3]), T=4, layout="BT")
    ds = open_dataset(str(tmp_path / "frames"), loaded.graph, batch=5)
    order = [int(Path(p).stem) for p in ds.files]
    got = np.concatenate([b.x for b in ds.batches()], axis=1)  # [T, N, ...]
    np.testing.assert_array_equal(np.swapaxes(got, 0, 1), x[order])
    np.testing.assert_array_equal(np.concatenate([b.y for b in ds.batches()]), y[order])
    np.savez(tmp_path / "same.npz", x=x[order], y=y[order])
    folder = check_dataset(loaded, str(tmp_path / "frames"), batch=5)
    flat = check_dataset(loaded, str(tmp_path / "same.npz"), batch=5)
    a, b = without_run(folder.to_dict()), without_run(flat.to_dict())
    a.pop("dataset"), b.pop("dataset")
    assert a == b and folder.min_agreement == 1.0
    assert all(0.05 < layer["rate_reference"] < 0.95 for layer in folder.layers)


def _forged_npz(p: Path) -> None:
    """An .npz whose 'frames' header declares 4 x 2 x 8 x 8 values over 8 bytes of data."""
    import io
    import zipfile

    head = np.lib.format.header_data_from_array_1_0(np.zeros((4, 2, 8, 8), np.float32))
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, head)
    with zipfile.ZipFile(p / "a.npz", "w") as z:
        z.writestr("frames.npy", buf.getvalue() + b"\0" * 8)


@pytest.mark.parametrize("write, message", [
    (lambda p: np.save(p / "a.npy", np.zeros((4, 2, 8, 9), np.float32)), "shape [4, 2, 8, 9]"),
    (lambda p: np.savez(p / "a.npz", frames=np.zeros((4, 2, 8, 9))), "shape [4, 2, 8, 9]"),
    (lambda p: np.save(p / "a.npy", np.array([{"x": 1}], dtype=object)), "not a readable"),
    (lambda p: np.savez(p / "a.npz", a=np.zeros(3), b=np.zeros(3)), "'frames' or exactly one"),
    (lambda p: (p / "a.npy").write_bytes(b"\x93NUMPY broken"), "not a readable"),
    (_forged_npz, "holds fewer bytes"),
])
def test_a_bad_sample_file_is_a_one_line_error_naming_it(tmp_path, capsys, write, message):
    folder = tmp_path / "frames" / "c0"
    folder.mkdir(parents=True)
    write(folder)
    model = _dvs_net(0)
    loaded = api.load(model, torch.rand(3, 4, 2, 8, 8), T=4, layout="BT")
    with pytest.raises(SnnccError, match="a.np") as err:
        check_dataset(loaded, str(tmp_path / "frames"), batch=2)
    assert message in str(err.value) and "\n" not in str(err.value)
