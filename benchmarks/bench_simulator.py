"""Simulator benchmark: the IR simulator in float32, step by step (``fold=False``, the walk
before time folding) and time-folded (the default), against PyTorch eager inference of the same
model and the simulators of earlier commits, at batch 1 and 32, as ratios measured in one run.

Models: a small zoo configuration (``small("spikformer-cifar")``: 32x32, 2 blocks, dim 32) and
the zoo's Meta-SpikeFormer 15M (``build("meta-spikeformer-15m")``, random weights, BN
randomised as ``small`` does) at a reduced image size (``--meta-size``, default 64: at 224 one
eager forward at batch 32 takes about 15 s on 2 cores). T = 4. The simulator runs the graph
``snncc compile --target sim`` writes (traced, then the sim target's passes); building the
simulator is not timed (``snncc run`` builds it once). Each figure is the best of ``--repeat``
runs, all with the same number of torch threads (``--threads``, default 1). Run::

    .venv/bin/python benchmarks/bench_simulator.py [--meta-size 64] [--append benchmarks/RESULTS.md]

The earlier simulators are those of the commits in ``BASELINES`` (loaded from git): the last
one without time folding, and the last one before float32's oneDNN convolutions on
channels-last activations; ``fold=False`` is today's step-by-step walk (it shares today's
kernels).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np
import torch

from snncc.frontends.tracer import trace
from snncc.frontends.zoo import build, small
from snncc.frontends.zoo.testing import randomize_bn
from snncc.pipeline import for_target
from snncc.simulator import Simulator

from common import (append, best_of, chosen, eager_run, load_average,  # noqa: E402
                    module_at, section)  # (benchmarks/ is sys.path[0])

T = 4
#: earlier simulators measured beside today's: commit -> what it was
BASELINES = {"b8012fa": "before time folding",
             "ae4c1af": "time-folded, before float32's oneDNN convolutions"}


def baseline_simulator(commit: str):
    """The ``Simulator`` class of ``snncc/simulator.py`` at ``commit`` (loaded beside the
    installed snncc), or None without git or that commit."""
    mod = module_at(commit, "snncc/simulator.py", f"snncc._simulator_{commit}", "snncc")
    return None if mod is None else mod.Simulator


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


def measure(label, model, make_input, batches, repeat: int, bases: dict) -> list[dict]:
    """Per batch: best times of eager, each earlier simulator (``bases``: commit -> class or
    None), today's fold=False and today's default; all simulators built before timing."""
    graph = trace(model, make_input(2), T=T, static=True, name=label.split()[0])
    graph = for_target("sim", log=lambda s: None).run(graph)
    sims = {c: cls(graph, "float32") for c, cls in bases.items() if cls is not None}
    sims["step"] = Simulator(graph, "float32", fold=False)
    sims["now"] = Simulator(graph, "float32")
    rows = []
    for b in batches:
        x = make_input(b)
        xn = x.numpy()
        ref, t_eager = eager_run(model, x, repeat)
        row = dict(model=label, batch=b, eager=t_eager)
        for k, sim in sims.items():
            row[k] = best_of(lambda: sim.run(xn, T), repeat)
        row["diff"] = float(np.abs(sims["now"].run(xn, T).output - ref).max())
        rows.append(row)
        print(f"{label} batch {b}: " + " | ".join(f"{k} {row.get(k, float('nan')) * 1e3:.1f} ms"
                                                  for k in ("eager", *bases, "step", "now"))
              + f": {row['eager'] / row['now']:.2f}x eager | max |out - eager| "
              f"{row['diff']:.1e}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    nan = float("nan")
    lines = ["| model | batch | PyTorch eager | "
             + " | ".join(f"simulator at {c} ({what})" for c, what in BASELINES.items())
             + " | simulator fold=False (step by step) | simulator now | now vs eager | "
             + " | ".join(f"now vs {c}" for c in BASELINES) + " | max abs output diff |",
             "|---|---:|" + "---:|" * (2 * len(BASELINES) + 5)]
    for r in rows:
        earlier = [r.get(c, nan) for c in (*BASELINES, "step")]
        lines.append(f"| {r['model']} | {r['batch']} | {r['eager'] * 1e3:.1f} ms | "
                     + " | ".join(f"{t * 1e3:.1f} ms ({r['eager'] / t:.2f}x)" for t in earlier)
                     + f" | {r['now'] * 1e3:.1f} ms | **{r['eager'] / r['now']:.2f}x** | "
                     + " | ".join(f"{r.get(c, nan) / r['now']:.2f}x" for c in BASELINES)
                     + f" | {r['diff']:.1e} |")
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
    bases = {c: baseline_simulator(c) for c in BASELINES}
    rows = []
    for label, model, make_input in chosen(models(a.meta_size), a.only):
        rows.extend(measure(label, model, make_input, a.batches, a.repeat, bases))
    md = table(rows)
    print(md)
    if a.append:
        append(a.append, section(
            "Simulator vs PyTorch eager and earlier simulators (float32)", "bench_simulator.py",
            argv, f"T={T}, float32, {a.threads} torch thread(s), best of {a.repeat}; "
            f"{platform.machine()}, {os.cpu_count()} cores shared (load average "
            f"{load_average():.1f}), torch {torch.__version__}. Graphs compiled for the sim "
            f"target; random weights, randomised BN.", md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
