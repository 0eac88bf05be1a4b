"""Throughput benchmark: samples per second against the batch size for PyTorch eager, the IR
simulator (float32, time-folded) and onnxruntime on snncc's ``model.onnx`` (float32,
time-folded), the same model in one run (issue 17's scaling table; ``--plot`` draws it).

Models: the small zoo Spikformer (3x32x32) and the zoo's Meta-SpikeFormer 15M at
``--meta-size`` (default 64), random weights, randomised BN, T = 4 (the models of
``bench_onnx_speed.py``). Graphs are compiled by each target's default passes. One thread for
torch and onnxruntime (``--threads``); each figure is the best of ``--repeat`` runs after a
warm-up. The simulator's and onnxruntime's outputs are compared with eager's (largest absolute
difference: float32 spike flips, where a membrane lands within rounding of the threshold).
Run::

    .venv/bin/python benchmarks/bench_throughput.py [--batches 1 2 4 8 16 32] [--plot P] \\
        [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np
import onnxruntime as ort
import torch

from snncc.backends.onnx.models import build_unrolled_model
from snncc.backends.onnx.runner import session
from snncc.frontends.tracer import trace
from snncc.pipeline import for_target
from snncc.simulator import Simulator

from bench_onnx_speed import models  # noqa: E402 (benchmarks/ is sys.path[0])
from common import (append, best_of, chosen, eager_run, load_average,  # noqa: E402
                    section)

T = 4
ENGINES = ("eager", "sim", "onnx")


def measure(label, model, make_input, batches, repeat: int, threads: int) -> list[dict]:
    """Per batch: the best time of each engine and the largest output difference to eager."""
    example = make_input(2)
    sim = Simulator(for_target("sim", log=lambda s: None).run(
        trace(model, example, T=T, static=True, name=label.split()[0])), "float32")
    onnx_graph = for_target("onnx", log=lambda s: None).run(
        trace(model, example, T=T, static=True, name=label.split()[0]))
    ort_session = session(build_unrolled_model(onnx_graph, T, "float32"), threads)
    name = ort_session.get_inputs()[0].name
    rows = []
    for b in batches:
        x = make_input(b)
        xn = x.numpy()
        ref, t_eager = eager_run(model, x, repeat)
        row = dict(model=label, batch=b, eager=t_eager)
        row["sim"] = best_of(lambda: sim.run(xn, T), repeat)
        row["onnx"] = best_of(lambda: ort_session.run(None, {name: xn}), repeat)
        row["diff_sim"] = float(np.abs(sim.run(xn, T).output - ref).max())
        row["diff_onnx"] = float(np.abs(ort_session.run(None, {name: xn})[0] - ref).max())
        rows.append(row)
        print(f"{label} batch {b}: " + " | ".join(
            f"{e} {b / row[e]:.1f}/s" for e in ENGINES)
            + f" | sim {row['eager'] / row['sim']:.2f}x, onnx {row['eager'] / row['onnx']:.2f}x"
            f" eager", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | batch | eager (samples/s) | simulator (samples/s) | onnxruntime "
             "(samples/s) | simulator / eager | onnxruntime / eager | max abs diff to eager "
             "(sim, onnx) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        b = r["batch"]
        lines.append(f"| {r['model']} | {b} | {b / r['eager']:.1f} | {b / r['sim']:.1f} | "
                     f"{b / r['onnx']:.1f} | **{r['eager'] / r['sim']:.2f}x** | "
                     f"**{r['eager'] / r['onnx']:.2f}x** | {r['diff_sim']:.1e}, "
                     f"{r['diff_onnx']:.1e} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    """Samples per second against the batch size, one panel per model, one line per engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(labels), figsize=(5.5 * len(labels), 4), squeeze=False)
    for ax, label in zip(axes[0], labels):
        rs = [r for r in rows if r["model"] == label]
        x = [r["batch"] for r in rs]
        for engine, name in zip(ENGINES, ("PyTorch eager", "IR simulator", "onnxruntime")):
            ax.plot(x, [r["batch"] / r[engine] for r in rs], "o-", label=name)
        ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="samples / s",
               title=label)
        ax.set_xticks(x, [str(v) for v in x])
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--meta-size", type=int, default=64, help="image side for the 15M model")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=["small", "meta"], help="benchmark one model only")
    ap.add_argument("--plot", help="write the throughput plot (PNG) here")
    ap.add_argument("--append", help="append the results as a Markdown section to this file")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    for label, model, make_input in chosen(models(a.meta_size), a.only):
        rows.extend(measure(label, model, make_input, a.batches, a.repeat, a.threads))
    md = table(rows)
    print(md)
    if a.plot:
        plot(rows, a.plot)
    if a.append:
        append(a.append, section(
            "Throughput vs batch: PyTorch eager, the IR simulator and onnxruntime (float32)",
            "bench_throughput.py", argv,
            f"T={T}, float32, {a.threads} thread(s) (torch and onnxruntime), best of "
            f"{a.repeat}; {platform.machine()}, {os.cpu_count()} cores shared (load average "
            f"{load_average():.1f}), torch {torch.__version__}, onnxruntime {ort.__version__}. "
            "Random weights, randomised BN.", md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
