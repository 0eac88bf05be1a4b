"""What the benchmarks share: timing, and loading a module as it was at an earlier commit to
measure it beside today's in the same run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def best_of(fn, repeat: int, warm_up: bool = True) -> float:
    """Shortest wall time of ``repeat`` calls (seconds), after one warm-up call."""
    if warm_up:
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def module_at(commit: str, path: str, name: str, package: str):
    """The module ``path`` (repository-relative) as of ``commit``, loaded as ``name`` inside
    ``package`` (its relative imports resolve there), or None without git or that commit."""
    try:
        src = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = package
    sys.modules[name] = mod  # dataclasses look their module up
    exec(compile(src, f"{commit}:{path}", "exec"), mod.__dict__)
    return mod
