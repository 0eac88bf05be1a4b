"""Broken inputs through the real CLI (tests/badinputs.py makes them): each is refused with
exactly one ``snncc: error:`` line on stderr, no traceback, the expected exit code, and, for
the cases that used to allocate gigabytes or hang, bounded peak memory and time (run in a
subprocess). Most cases run in-process through ``snncc.cli.main`` (CLI start-up costs ~2 s)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import badinputs
from snncc import limits

PEAK_LIMIT_KB = 1536 * 1024  # 1.5 GB
TIMEOUT_S = 90
SNNCC = Path(sys.executable).with_name("snncc")


def _params(isolated: bool):
    return [pytest.param(name, id=name,
                         marks=[pytest.mark.slow] if make.flags["slow"] else [])
            for name, make in badinputs.CASES.items() if make.flags["isolate"] == isolated]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("bad")


def _check_output(c, code: int, err: str, out: str = "") -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err + out, err
    assert len(lines) == 1, f"stderr has {len(lines)} lines:\n{err}"
    assert lines[0].startswith("snncc: error: "), lines[0]
    assert code == c.code, f"exit {code}, expected {c.code}: {lines[0]}"
    assert c.message.lower() in lines[0].lower(), f"{c.message!r} not in {lines[0]!r}"


@pytest.mark.parametrize("name", _params(isolated=False))
def test_refused_in_process(name, tmp, capsys):
    c = badinputs.CASES[name](tmp)
    from snncc.cli import main

    capsys.readouterr()
    before = _contents(c.untouched)
    try:
        code = main(list(c.argv))
    finally:
        limits.set_max_memory(None)
    out, err = capsys.readouterr()
    _check_output(c, code, err, out)
    _check_nothing_lost(c, before, tmp)


def _contents(paths) -> dict:
    """Every file under ``paths`` with its bytes (a symlink as its target's name)."""
    found = {}
    for p in map(Path, paths or []):
        if p.is_symlink():
            found[str(p)] = os.readlink(p)
        elif p.is_dir():
            found.update({str(f): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()})
        elif p.exists():
            found[str(p)] = p.read_bytes()
    return found


def _check_nothing_lost(c, before: dict, tmp: Path) -> None:
    """The paths the case names are as they were, and no writer left a temporary behind."""
    assert _contents(c.untouched) == before, f"{c.untouched} changed"
    litter = [str(p) for p in tmp.rglob("*.snncc-tmp-*")]
    assert not litter, f"temporary files left: {litter}"


def _run_measured(argv: list[str], fsize: int | None, timeout: float):
    """(exit code, stdout, stderr, peak RSS in KB, seconds) of ``snncc argv``; the child's own
    rusage (os.wait4), killed after ``timeout`` seconds (code None)."""
    def limit():
        # a safety net for the shared machine: a regression fails here instead of swapping
        resource.setrlimit(resource.RLIMIT_AS, (12 << 30, 12 << 30))
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    out_f = open(_tmpfile("out"), "w+")
    err_f = open(_tmpfile("err"), "w+")
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    start = time.monotonic()
    p = subprocess.Popen([str(SNNCC), *argv], stdout=out_f, stderr=err_f, preexec_fn=limit,
                         env=env, start_new_session=True)
    timer = threading.Timer(timeout, lambda: os.killpg(p.pid, signal.SIGKILL))
    timer.start()
    try:
        _, status, usage = os.wait4(p.pid, 0)
    finally:
        timer.cancel()
    p.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - start
    texts = []
    for f in (out_f, err_f):
        f.seek(0)
        texts.append(f.read())
        f.close()
        os.unlink(f.name)
    code = None if p.returncode == -signal.SIGKILL and seconds >= timeout else p.returncode
    return code, texts[0], texts[1], usage.ru_maxrss, seconds


_COUNTER = [0]


def _tmpfile(kind: str) -> str:
    import tempfile

    _COUNTER[0] += 1
    return os.path.join(tempfile.gettempdir(), f"snncc-bad-{os.getpid()}-{_COUNTER[0]}.{kind}")


@pytest.mark.parametrize("name", _params(isolated=True))
def test_refused_in_subprocess_bounded(name, tmp):
    c = badinputs.CASES[name](tmp)
    before = _contents(c.untouched)
    code, out, err, peak_kb, seconds = _run_measured(c.argv, c.fsize, TIMEOUT_S)
    assert code is not None, f"still running after {TIMEOUT_S} s (hang): {c.argv}"
    _check_output(c, code, err, out)
    _check_nothing_lost(c, before, tmp)
    assert peak_kb < PEAK_LIMIT_KB, f"peak memory {peak_kb / 1024:.0f} MB"
    print(f"{name}: exit {code}, peak {peak_kb / 1024:.0f} MB, {seconds:.1f} s")


def test_every_case_has_a_distinct_name_and_valid_fields(tmp):
    assert len(badinputs.CASES) >= 130


# ----------------------------------------------------------------------------- accepted inputs
def test_parse_size_and_budget_override():
    assert limits.parse_size("8G") == 8 << 30
    assert limits.parse_size("512m") == 512 << 20
    assert limits.parse_size("1.5GiB") == int(1.5 * (1 << 30))
    assert limits.parse_size(1000) == 1000
    with pytest.raises(limits.SnnccError):
        limits.parse_size("8 gigs")
    default = limits.max_memory()
    assert 0 < default <= limits.physical_memory()
    with limits.memory_budget("1K"):
        assert limits.max_memory() == 1024
        with pytest.raises(limits.ResourceError, match="--max-memory"):
            limits.require_fits(2048, "a thing")
    assert limits.max_memory() == default


def test_exact_integer_weights_are_cast_with_a_warning(tmp, capsys):
    import numpy as np

    from snncc.cli import main

    p = badinputs.write_nir(tmp / "intw.nir", badinputs.nir_graph(
        weight=np.arange(12, dtype=np.int64).reshape(3, 4)))
    header, arrays = badinputs.snnir_parts()
    arrays["a0"] = np.arange(12, dtype=np.int32).reshape(3, 4)
    q = badinputs.write_snnir(tmp / "intw.snnir", header, arrays)
    import torch
    sd = badinputs.state_dict()
    k = next(k for k, v in sd.items() if v.is_floating_point())
    sd[k] = torch.ones(sd[k].shape, dtype=torch.int64)
    r = badinputs.save_pt(tmp / "intw.pt", sd)
    for argv in (["inspect", p], ["inspect", str(q)],
                 ["compile", r, "--arch", badinputs.ARCH, "-o", str(tmp / "intw_out.snnir")]):
        capsys.readouterr()
        assert main(argv) == 0
        err = capsys.readouterr().err
        assert "snncc: warning:" in err and "cast exactly" in err, err


def test_raised_T_reuses_the_per_step_trace():
    """--T above the architecture's own traces at its own T (and T + 1) and reuses the graph;
    it must be the graph a full trace at that T gives."""
    from snncc.frontends.checkpoint import _same_but_T, from_checkpoint, from_model

    model, graph = from_checkpoint(badinputs.CKPT, badinputs.ARCH, T=7)
    assert model.T == 7 and graph.meta["T"] == 7
    assert _same_but_T(graph, from_model(model, badinputs.ARCH))
    assert from_model(model, badinputs.ARCH).meta["T"] == 7


# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (large) parent process
_ESTIMATE_VS_RUN = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import badinputs
from snncc.simulator import estimate_bytes, simulate

def peak():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) * 1024

g = badinputs.tiny_graph(delay=3)
x = np.random.default_rng(0).normal(0, 1, (256, 4))
simulate(g, x, 2, record=True)  # imports and first-call allocations before measuring
before = peak()
res = simulate(g, x, 2000, record=True)
grown = peak() - before
assert res.trace["lif"].shape == (2000, 256, 3)
print(estimate_bytes(g, 2000, 256, record=True), grown)
"""


def test_simulator_estimate_is_close_to_what_a_run_takes():
    """The estimate a run is refused by is within [0.8, 3] x the memory the run takes, measured
    in a fresh process (in this one, earlier tests may already have raised the peak)."""
    out = subprocess.run([sys.executable, "-c", _ESTIMATE_VS_RUN, str(Path(__file__).parent)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    est, grown = map(int, out.stdout.split())
    assert 0.8 * grown <= est <= 3 * grown, (est, grown)
