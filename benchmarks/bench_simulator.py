"""Simulator benchmark: the IR simulator in float32, step by step (``fold=False``, the walk
before time folding) and time-folded (the default), against PyTorch eager inference of the same
model, at batch 1 and 32, as ratios measured in one run.

Models: a small zoo configuration (``small("spikformer-cifar")``: 32x32, 2 blocks, dim 32) and
the zoo's Meta-SpikeFormer 15M (``build("meta-spikeformer-15m")``, random weights, BN
randomised as ``small`` does) at a reduced image size (``--meta-size``, default 64: at 224 one
eager forward at batch 32 takes about 15 s on 2 cores). T = 4. The simulator runs the graph
``snncc compile --target sim`` writes (traced, then the sim target's passes); building the
simulator is not timed (``snncc run`` builds it once). Each figure is the best of ``--repeat``
runs, all with the same number of torch threads (``--threads``, default 1). Run::

    .venv/bin/python benchmarks/bench_simulator.py [--meta-size 64] [--append benchmarks/RESULTS.md]

"Before" is the simulator of commit ``BASELINE`` (loaded from git), the last one without time
folding; ``fold=False`` is today's step-by-step walk (it shares the new neuron kernel).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from snncc.frontends.tracer import trace
from snncc.frontends.zoo import build, small
from snncc.frontends.zoo.testing import randomize_bn
from snncc.pipeline import for_target
from snncc.simulator import Simulator

T = 4
#: the last commit before time folding: its simulator is the "before" column
BASELINE = "b8012fa"


def baseline_simulator(commit: str):
    """The ``Simulator`` class of ``snncc/simulator.py`` at ``commit`` (loaded beside the
    installed snncc), or None without git or that commit."""
    root = Path(__file__).resolve().parents[1]
    try:
        src = subprocess.run(["git", "show", f"{commit}:snncc/simulator.py"], cwd=root,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("snncc._simulator_baseline", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "snncc"
    sys.modules[spec.name] = mod  # dataclasses look their module up
    exec(compile(src, f"{commit}:snncc/simulator.py", "exec"), mod.__dict__)
    return mod.Simulator


def best_of(fn, repeat: int) -> float:
    """Shortest wall time of ``repeat`` calls (seconds), after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def models(meta_size: int):
    """(label, float32 eval model, function batch -> input) of the benchmarked models."""
    small_case = small("spikformer-cifar", 0, batch=1, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    yield ("spikformer-cifar (small zoo config, 3x32x32)", small_case.model,
           lambda b: torch.randn((b, 3, 32, 32), generator=gen))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        meta = build("meta-spikeformer-15m")
    randomize_bn(meta, 0)
    meta = meta.float().eval()
    yield (f"meta-spikeformer-15m (3x{meta_size}x{meta_size})", meta,
           lambda b: torch.randn((b, 3, meta_size, meta_size), generator=gen))


def measure(label, model, make_input, batches, repeat: int, base) -> list[dict]:
    graph = trace(model, make_input(2), T=T, static=True, name=label.split()[0])
    graph = for_target("sim", log=lambda s: None).run(graph)
    step = Simulator(graph, "float32", fold=False)
    fold = Simulator(graph, "float32", fold=True)
    old = base(graph, "float32") if base else None
    rows = []
    for b in batches:
        x = make_input(b)
        xn = x.numpy()
        with torch.no_grad():
            ref = model(x).numpy()
            t_eager = best_of(lambda: model(x), repeat)
        t_step = best_of(lambda: step.run(xn, T), repeat)
        t_fold = best_of(lambda: fold.run(xn, T), repeat)
        t_old = best_of(lambda: old.run(xn, T), repeat) if old else float("nan")
        diff = float(np.abs(fold.run(xn, T).output - ref).max())
        rows.append(dict(model=label, batch=b, eager=t_eager, step=t_step, fold=t_fold,
                         old=t_old, diff=diff))
        print(f"{label} batch {b}: eager {t_eager * 1e3:.1f} ms | {BASELINE} simulator "
              f"{t_old * 1e3:.1f} ms | fold=False {t_step * 1e3:.1f} ms | folded "
              f"{t_fold * 1e3:.1f} ms: {t_eager / t_fold:.2f}x eager, {t_old / t_fold:.2f}x "
              f"before | max |out - eager| {diff:.1e}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"| model | batch | PyTorch eager | simulator at {BASELINE} (before) | simulator "
             "fold=False (step by step) | simulator time-folded (after) | after vs eager | "
             "after vs before | max abs output diff |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['eager'] * 1e3:.1f} ms | "
                     f"{r['old'] * 1e3:.1f} ms ({r['eager'] / r['old']:.2f}x) | "
                     f"{r['step'] * 1e3:.1f} ms ({r['eager'] / r['step']:.2f}x) | "
                     f"{r['fold'] * 1e3:.1f} ms | **{r['eager'] / r['fold']:.2f}x** | "
                     f"{r['old'] / r['fold']:.2f}x | {r['diff']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--meta-size", type=int, default=64, help="image side for the 15M model")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=["small", "meta"], help="benchmark one model only")
    ap.add_argument("--append", help="append the results as a Markdown section to this file")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    base = baseline_simulator(BASELINE)
    rows = []
    for i, (label, model, make_input) in enumerate(models(a.meta_size)):
        if a.only and (i == 0) != (a.only == "small"):
            continue
        rows.extend(measure(label, model, make_input, a.batches, a.repeat, base))
    md = table(rows)
    print(md)
    if a.append:
        cmd = " ".join(["python", "benchmarks/bench_simulator.py", *(argv or sys.argv[1:])])
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        with open(a.append, "a") as f:
            f.write(f"\n## Simulator: time-folded vs step-by-step vs PyTorch eager (float32)\n\n"
                    f"`{cmd}`\n\nT={T}, float32, {a.threads} torch thread(s), best of "
                    f"{a.repeat}; {platform.machine()}, {os.cpu_count()} cores shared (load "
                    f"average {load:.1f}), torch {torch.__version__}. Graphs compiled for the sim "
                    f"target; random weights, randomised BN.\n\n{md}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
