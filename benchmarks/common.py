"""What the benchmarks share: timing, loading a module as it was at an earlier commit to
measure it beside today's in the same run, choosing models, and the Markdown section each
appends to RESULTS.md."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


#: The source directories of the snncc package (an editable install imports them from here).
PACKAGE_DIRS = ("snncc", "frontends", "passes", "backends")


def compile_bytecode() -> None:
    """Write snncc's bytecode caches, so that the processes a benchmark starts import them as
    an installed package does: where ``PYTHONDONTWRITEBYTECODE`` is set (this machine's
    environment sets it), an editable install never writes them, and every process compiled
    snncc's sources again (about 0.1 s of a `snncc compile`: its imports beyond the CLI
    took 0.18-0.22 s with bytecode, 0.27-0.33 s without; measured)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q",
                    *(str(REPO / d) for d in PACKAGE_DIRS)], check=True)


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


def eager_run(model, x, repeat: int):
    """(output as a numpy array, best time of ``repeat`` calls) of ``model(x)``, no gradients."""
    import torch  # (here, not at the top: bench_compile imports this module without torch)

    with torch.no_grad():
        return model(x).numpy(), best_of(lambda: model(x), repeat)


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


def chosen(models, only: str | None):
    """The entries of ``models`` (the small model first, then the full-size one) that
    ``--only small|meta`` keeps: all without it."""
    for i, entry in enumerate(models):
        if only is None or (i == 0) == (only == "small"):
            yield entry


def section(title: str, script: str, argv, setting: str, body: str) -> str:
    """A Markdown section of benchmarks/RESULTS.md: ``title``, the command that produced it
    (``script`` run with ``argv``, default this process's arguments), ``setting`` (machine,
    threads, load; :func:`load_average` gives the load) and ``body``."""
    args = sys.argv[1:] if argv is None else argv
    cmd = " ".join(["python", f"benchmarks/{script}", *args])
    return f"\n## {title}\n\n`{cmd}`\n\n{setting}\n\n{body}\n"


def load_average() -> float:
    """The one-minute load average (NaN where the system has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def append(path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)
