"""Output paths: ``-o`` never destroys a user's files, a directory artifact is swapped in so the
old or the new one is there at every instant, concurrent writers each win or fail cleanly,
Ctrl-C and SIGTERM leave nothing partial, and a killed writer's temporaries are removed by the
next write (issue 11, defects 1-3)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from snncc.cli import main
from snncc.errors import OutputError
from snncc.files import MARKER, NPY, atomic_directory, atomic_write

REPO = Path(__file__).resolve().parents[1]
CKPT = str(REPO / "examples" / "checkpoints" / "digits-spikformer.pt")
COMPILE = ["compile", CKPT, "--arch", "digits-spikformer"]


def _fill(files: dict[str, bytes]):
    def fill(d: Path) -> None:
        for name, data in files.items():
            (d / name).write_bytes(data)
    return fill


def _tree(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())} if path.is_dir() else {}


def _litter(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("snncc: error:"), err
    return err[0]


# ---------------------------------------------------------------------------- data loss
@pytest.mark.parametrize("target", ["onnx", "lava"])
def test_compile_refuses_a_directory_with_user_files(tmp_path, capsys, target):
    out = tmp_path / "w"
    out.mkdir()
    (out / "t.txt").write_text("keep")
    assert main([*COMPILE, "-t", target, "-o", str(out)]) == 1
    assert "not an empty directory or an artifact directory of snncc" in _one_error_line(capsys)
    assert _tree(out) == {"t.txt": b"keep"} and _litter(tmp_path) == []


@pytest.mark.parametrize("target", ["onnx", "lava"])
def test_compile_refuses_a_file_where_a_directory_artifact_goes(tmp_path, capsys, target):
    out = tmp_path / "art"
    out.write_text("my notes")
    assert main([*COMPILE, "-t", target, "-o", str(out)]) == 1
    assert "exists and is a file" in _one_error_line(capsys)
    assert out.read_text() == "my notes" and _litter(tmp_path) == []


@pytest.mark.parametrize("target,name", [("sim", "model.snnir"), ("nir", "model.nir")])
def test_compile_refuses_a_foreign_file_of_the_artifact_suffix(tmp_path, capsys, target, name):
    out = tmp_path / name
    out.write_bytes(b"someone else's model")
    assert main([*COMPILE, "-t", target, "-o", str(out)]) == 1
    assert "snncc replaces only its own outputs" in _one_error_line(capsys)
    assert out.read_bytes() == b"someone else's model"


def test_compile_refuses_a_nir_file_written_by_another_tool(tmp_path, capsys):
    import nir

    out = tmp_path / "model.nir"
    nir.write(out, nir.NIRGraph(nodes={"i": nir.Input(np.array([2])),
                                       "o": nir.Output(np.array([2]))}, edges=[("i", "o")]))
    before = out.read_bytes()
    assert main([*COMPILE, "-t", "nir", "-o", str(out)]) == 1
    _one_error_line(capsys)
    assert out.read_bytes() == before


@pytest.mark.parametrize("target", ["sim", "nir", "onnx"])
def test_compile_replaces_its_own_artifact_and_an_empty_directory(tmp_path, capsys, target):
    out = tmp_path / "art"
    out.mkdir()  # empty: may be used
    for _ in range(2):  # the second run replaces the first's artifact
        assert main([*COMPILE, "-t", target, "-o", str(out)]) == 0
    assert _litter(tmp_path) == [] and _litter(out) == []


def test_an_artifact_holding_a_user_file_is_not_replaced(tmp_path, capsys):
    out = tmp_path / "art"
    assert main([*COMPILE, "-t", "onnx", "-o", str(out)]) == 0
    (out / "notes.md").write_text("mine")
    before = _tree(out)
    assert main([*COMPILE, "-t", "onnx", "-o", str(out)]) == 1
    assert "did not write (notes.md)" in _one_error_line(capsys)
    assert _tree(out) == before


def test_symlink_output_is_refused(tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert main([*COMPILE, "-t", "onnx", "-o", str(tmp_path / "link")]) == 1
    assert "symbolic link" in _one_error_line(capsys)
    assert _tree(real) == {}


def test_run_output_replaces_only_npy_files(tmp_path, capsys):
    art = tmp_path / "m.snnir"
    assert main([*COMPILE, "-t", "sim", "-o", str(art)]) == 0
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).random((2, 1, 8, 8)))
    out = tmp_path / "y.npy"
    for _ in range(2):
        assert main(["run", str(art), "--inputs", str(x), "-o", str(out)]) == 0
    capsys.readouterr()
    report = tmp_path / "report.txt"
    report.write_text("precious")
    assert main(["run", str(art), "--inputs", str(x), "-o", str(report)]) == 1
    _one_error_line(capsys)
    assert report.read_text() == "precious"


@pytest.mark.parametrize("target", ["sim", "nir", "onnx"])
def test_run_and_check_take_the_directory_compile_wrote(tmp_path, capsys, target):
    """``compile -o DIR`` for a file target writes DIR/model<suffix>; ``run DIR`` and ``check
    --artifact DIR`` used to answer "cannot tell the target" for it."""
    out = tmp_path / "art"
    assert main([*COMPILE, "-t", target, "-o", str(out)]) == 0
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).random((2, 1, 8, 8)))
    ys = []
    for how in ([], ["--target", target]):
        y = tmp_path / f"y{len(ys)}.npy"
        assert main(["run", str(out), "--inputs", str(x), "-o", str(y), *how]) == 0
        ys.append(np.load(y))
    np.testing.assert_array_equal(ys[0], ys[1])
    capsys.readouterr()
    assert main(["check", CKPT, "--arch", "digits-spikformer", "-t", target, "--artifact",
                 str(out), "--inputs", str(x)]) == 0
    assert "first divergent layer: simulator none" in capsys.readouterr().out


def test_run_and_check_take_an_onnx_file_on_its_own(tmp_path, capsys):
    """A ``model.onnx`` or ``model.step.onnx`` outside the directory compile wrote (copied,
    renamed) used to answer "cannot tell the target"; both forms give the same outputs."""
    out = tmp_path / "art"
    assert main([*COMPILE, "-t", "onnx", "-o", str(out)]) == 0
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).random((2, 1, 8, 8)))
    ys = []
    for name in ("model.onnx", "model.step.onnx"):
        alone = tmp_path / f"copy of {name}"
        alone.write_bytes((out / name).read_bytes())
        y = tmp_path / f"y{len(ys)}.npy"
        assert main(["run", str(alone), "--inputs", str(x), "-o", str(y)]) == 0
        ys.append(np.load(y))
    np.testing.assert_array_equal(ys[0], ys[1])
    assert ys[0].shape == (2, 10)
    capsys.readouterr()
    assert main(["check", CKPT, "--arch", "digits-spikformer", "-t", "onnx", "--artifact",
                 str(tmp_path / "copy of model.onnx"), "--inputs", str(x)]) == 0
    assert "first divergent layer: simulator none" in capsys.readouterr().out


def test_unwritable_parent_is_one_line(tmp_path, capsys):
    if os.geteuid() == 0:
        parent = tmp_path / "file"  # root ignores permissions: use a parent that is a file
        parent.write_text("x")
    else:
        parent = tmp_path / "ro"
        parent.mkdir(mode=0o500)
    assert main([*COMPILE, "-t", "onnx", "-o", str(parent / "art")]) == 1
    _one_error_line(capsys)


# ---------------------------------------------------------------------------- atomicity
def test_the_old_or_the_new_artifact_is_there_at_every_instant(tmp_path):
    """6 writers replace one directory 50 times each while a reader checks that the path is
    there all along. (A reader that opened the old directory just before a swap can see it
    emptied as it is removed; the path itself always names a complete artifact.)"""
    out = tmp_path / "art"
    atomic_directory(out, _fill({"a": b"0", "b": b"0"}))
    stop, seen, errors = threading.Event(), [], []

    def read():
        while not stop.is_set():
            if not os.path.isdir(out):
                seen.append("missing")

    def write(i):
        for k in range(50):
            try:
                data = f"{i}-{k}".encode()
                atomic_directory(out, _fill({"a": data, "b": data}))
            except Exception as e:  # noqa: BLE001 - every failure is collected and reported
                errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    assert errors == [] and seen == []
    tree = _tree(out)
    assert tree["a"] == tree["b"] and _litter(tmp_path) == []


def test_a_directory_swapped_out_while_it_is_judged_is_judged_again(tmp_path, monkeypatch):
    """A writer lists the old directory as another writer, having swapped it out, removes it
    (its marker gone): the refusal of that one does not count, the path is judged again. (In
    CI the path once named a new directory with the removed one's inode number, and the
    refusal counted; comparing against a descriptor held open rules that out.)"""
    import snncc.files as files

    out = tmp_path / "art"
    atomic_directory(out, _fill({"a": b"0"}))
    real, raced = files._directory_entries, []

    def listing_the_old_directory(path):
        if raced:
            return real(path)
        raced.append(path)
        atomic_directory(out, _fill({"a": b"1"}))  # another writer swaps its artifact in
        return {"a"}  # what was left of the old one when it was listed
    monkeypatch.setattr(files, "_directory_entries", listing_the_old_directory)
    atomic_directory(out, _fill({"a": b"2"}))
    assert raced and _tree(out)["a"] == b"2" and _litter(tmp_path) == []


def test_concurrent_file_writers_each_win(tmp_path):
    out = tmp_path / "y.npy"
    errors = []

    def write(i):
        for _ in range(50):
            try:
                atomic_write(out, lambda f: np.save(f, np.full(1000, i)), replaces=NPY)
            except Exception as e:  # noqa: BLE001
                errors.append(e)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(np.load(out))) == 1 and _litter(tmp_path) == []


def test_a_failing_fill_leaves_the_old_artifact(tmp_path):
    out = tmp_path / "art"
    atomic_directory(out, _fill({"a": b"old"}))

    def broken(d: Path) -> None:
        (d / "a").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="no space left"):
        atomic_directory(out, broken)
    assert _tree(out)["a"] == b"old" and _litter(tmp_path) == []


# ---------------------------------------------------------------------------- signals
# A child compiles the digits model to ONNX with a writer that stops after its first file, so
# the signal arrives while the new artifact is half written.
_SLOW_WRITER = """
import sys, time
from snncc.backends.onnx import models
from snncc.cli import main
write = models.write_model
def slow_save(*a, **k):
    write(*a, **k)
    print("WRITING", flush=True)
    time.sleep(60)
models.write_model = slow_save
sys.exit(main(sys.argv[1:]))
"""


def _child(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)


def _wait_until_writing(proc: subprocess.Popen) -> None:
    for line in proc.stdout:
        if line.startswith("WRITING"):
            return
    pytest.fail(f"the child never started writing: {proc.stderr.read()}")


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"),
                                           (signal.SIGTERM, 143, "terminated")])
def test_signal_mid_write_keeps_the_old_artifact(tmp_path, sig, code, word):
    out = tmp_path / "art"
    atomic_directory(out, _fill({"model.onnx": b"old"}), target="onnx")
    before = _tree(out)
    proc = _child([*COMPILE, "-t", "onnx", "-o", str(out)])
    _wait_until_writing(proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and word in lines[0], err
    assert _tree(out) == before and _litter(tmp_path) == []


def test_a_killed_writers_temporaries_are_removed_by_the_next_write(tmp_path, capsys):
    out = tmp_path / "art"
    proc = _child([*COMPILE, "-t", "onnx", "-o", str(out)])
    _wait_until_writing(proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert _litter(tmp_path) != [] and not out.exists()  # SIGKILL cannot clean up
    assert main([*COMPILE, "-t", "onnx", "-o", str(out)]) == 0
    assert _litter(tmp_path) == []
    assert json.loads((out / MARKER).read_text())["target"] == "onnx"
