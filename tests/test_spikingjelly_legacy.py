"""spikingjelly 0.0.0.0.14's ``clock_driven`` API (the official Spikformer, Spike-Driven
Transformer and QKFormer code imports it): tests/clock_driven_cases.py run by pytest in a process
whose ``spikingjelly`` is 0.0.0.0.14 (installed by scripts/setup.sh in its own directory, ahead
of the main environment's 2.0 on that process's path). Skipped where that directory is
missing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
LEGACY = Path(os.environ.get("SNNCC_SPIKINGJELLY_LEGACY",
                             HERE.parent / ".venv" / "spikingjelly-0.0.0.0.14"))

pytestmark = pytest.mark.skipif(not (LEGACY / "spikingjelly" / "clock_driven").is_dir(),
                                reason="no spikingjelly 0.0.0.0.14 (run scripts/setup.sh)")


def test_clock_driven_models_give_the_library_spikes_on_every_target(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(LEGACY), str(HERE)])}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(HERE),
         "--basetemp", str(tmp_path), str(HERE / "clock_driven_cases.py")],
        env=env, capture_output=True, text=True, timeout=600, cwd=HERE.parent)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed and int(passed.group(1)) == 19 and "skipped" not in done.stdout, done.stdout
    probe = subprocess.run([sys.executable, "-c", "import spikingjelly.clock_driven.neuron as n; "
                            "print(n.__file__)"], env=env, capture_output=True, text=True)
    assert probe.stdout.startswith(str(LEGACY)), probe.stdout + probe.stderr
