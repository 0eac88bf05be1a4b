"""Progress lines of long runs (snncc.progress): written at the interval while a run lasts,
nothing for a short run or without a destination; a real Lava run and a real calibration
report theirs; the CLI writes them to stderr, at $SNNCC_PROGRESS_EVERY."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from snncc import ir, progress
from snncc.progress import Progress, report_to


CKPT = Path(__file__).resolve().parents[1] / "examples" / "checkpoints" / "digits-spikformer.pt"


@pytest.fixture
def lines():
    got: list[str] = []
    old = report_to(got.append, 0.02)
    yield got
    report_to(*old)


def _wait_for(lines: list, prefix: str) -> str:
    deadline = time.monotonic() + 30
    while not any(x.startswith(prefix) for x in lines):
        assert time.monotonic() < deadline, lines
        time.sleep(0.005)
    return next(x for x in lines if x.startswith(prefix))


def test_lines_while_a_run_lasts(lines):
    with progress.progress("work", 4, "items") as p:
        assert _wait_for(lines, "work: 0/4") == "work: 0/4 items, 0 s"  # no estimate yet
        for i in range(1, 4):
            p.advance()
            _wait_for(lines, f"work: {i}/4")
    n = len(lines)
    time.sleep(0.1)
    assert len(lines) == n  # none after the block
    assert all(re.fullmatch(r"work: [0-3]/4 items, \d+ s(, about \d+ s left)?", x)
               for x in lines), lines
    assert "left" in _wait_for(lines, "work: 2/4")


def test_no_lines_for_a_short_run_or_without_destination(lines):
    report_to(lines.append, 5.0)
    with progress.progress("quick", 2, "items") as p:
        p.advance(2)
    assert lines == []
    report_to(None, 0.001)
    with progress.progress("silent", 1, "items"):
        time.sleep(0.1)
    assert lines == []


def test_estimate_counts_steps_from_the_first_one():
    """Start-up (before the first advance) is not a step: the time left follows the rate of
    the steps done since."""
    p = Progress("run", 10, "steps")
    p.start -= 100  # a long start-up
    p.advance()
    p._first = (p._first[0] - 4, p._first[1])  # then 4 s for ...
    p.advance(4)  # ... 4 steps: 1 s each, 5 left
    assert re.fullmatch(r"run: 5/10 steps, 10\d s, about [45] s left", p.line()), p.line()


@pytest.mark.parametrize("worker", [False, True], ids=["here", "worker"])
def test_lava_run_reports_its_steps(lines, worker):
    from test_lava_network import T, assert_same_spikes, cnn_graph, compiled

    from snncc.backends.lava.lower import lower
    from snncc.backends.lava.runner import run_network
    from snncc.passes.latency import latency_plan
    from snncc.simulator import simulate

    g, x = cnn_graph(0)
    res = run_network(lower(compiled(g), latency_plan(compiled(g))), x,
                      record=[n.name for n in g.of_type(ir.Neuron)], worker=worker)
    assert lines and all(re.fullmatch(rf"Lava run \({res['processes']} processes\): \d+/"
                                      rf"{res['steps']} steps, \d+ s(, about \d+ s left)?", x)
                         for x in lines), lines
    assert_same_spikes(g, res["trace"], simulate(g, x, T, record=True))


def test_calibration_reports_its_batches(lines, monkeypatch):
    """16 calibration inputs, 2 at a time: both phases report their 8 batches."""
    from snncc.api import load
    from snncc.passes import quantize
    from snncc.pipeline import for_target

    report_to(lines.append, 0.001)  # (the digits model calibrates in about 0.1 s)
    graph = load(CKPT, arch="digits-spikformer").graph
    monkeypatch.setattr(quantize, "calibration_batch", lambda graph, T: 2)
    x = quantize.calibration_inputs(graph, 16)
    for_target("lava", None, fixed_point=True, calibrate=x).run(graph)
    assert any(re.fullmatch(r"calibrating: float runs: \d/8 batches, \d+ s.*", x)
               for x in lines), lines
    assert any(re.fullmatch(r"calibrating: fixed point against float: \d/8 batches, \d+ s.*",
                            x) for x in lines), lines


def test_cli_writes_lines_at_the_interval_asked(tmp_path):
    env = {**os.environ, "SNNCC_PROGRESS_EVERY": "nonsense"}
    bad = subprocess.run([sys.executable, "-m", "snncc", "zoo"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert bad.returncode != 0 and bad.stderr.strip().splitlines() == [
        "snncc: error: SNNCC_PROGRESS_EVERY must be a number of seconds (0: no progress "
        "lines), not 'nonsense'"]
    run = [sys.executable, "-m", "snncc", "check", str(CKPT), "--arch", "digits-spikformer",
           "--target", "lava", "--batch", "2"]
    on = subprocess.run(run, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "SNNCC_PROGRESS_EVERY": "0.05"})
    assert on.returncode == 0, on.stderr
    assert re.search(r"^snncc: Lava run \(\d+ processes\): \d+/\d+ steps, \d+ s", on.stderr,
                     re.M), on.stderr
    off = subprocess.run(run, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "SNNCC_PROGRESS_EVERY": "0"})
    assert off.returncode == 0 and "Lava run" not in off.stderr, off.stderr
    assert off.stdout == on.stdout
