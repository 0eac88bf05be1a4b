"""ONNX benchmark: ``snncc compile --target onnx`` against ``torch.onnx.export`` (dynamo) of the
same PyTorch model, and onnxruntime inference of snncc's model against PyTorch eager inference
of the original, as ratios, in one run.

The model is a small zoo configuration (``snncc.frontends.zoo.small``; Spikformer CIFAR by
default), float32. snncc's compile time is what ``snncc compile`` does once the checkpoint is
loaded: trace into IR, run the target's default passes, write both ONNX forms. Each compile is
timed as the best of a few runs (the first ``torch.onnx.export`` also pays its start-up);
inference is the best of ``--repeat`` runs, one thread each. Run::

    .venv/bin/python benchmarks/bench_onnx.py [--family spikformer-cifar] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from snncc.frontends.tracer import trace
from snncc.frontends.zoo import small
from snncc.pipeline import run_passes
from snncc.targets import get_target

from common import (append, best_of, load_average,  # noqa: E402 (benchmarks/ is sys.path[0])
                    section)

T, BATCH = 4, 16


def measure(family: str, repeat: int, tmp: Path) -> tuple[list[tuple[str, float]], float]:
    """(rows of (measurement, seconds), max |snncc onnxruntime - PyTorch| of the outputs)."""
    case = small(family, 0, batch=BATCH, dtype=torch.float32)
    model, x = case.model, case.inputs
    target = get_target("onnx")

    def snncc_compile():
        graph = trace(model, x, T=T, name=family)
        graph = run_passes(graph, list(target.default_passes), log=lambda s: None)
        target.emit(graph, tmp / "snncc", dtype="float32")

    def torch_export():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(tmp / "torch.onnx"), dynamo=True, verbose=False)

    t_snncc, t_torch = best_of(snncc_compile, 3, False), best_of(torch_export, 2, False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(tmp / "snncc" / "model.onnx"), opts,
                                providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    with torch.no_grad():
        ref = model(x).numpy()
        t_eager = best_of(lambda: model(x), repeat, False)
    t_ort = best_of(lambda: sess.run(None, feed), repeat, False)
    diff = float(np.abs(sess.run(None, feed)[0] - ref).max())
    return [("compile: snncc --target onnx (trace + passes + both forms)", t_snncc),
            ("compile: torch.onnx.export (dynamo)", t_torch),
            (f"inference: onnxruntime, snncc model.onnx (T={T}, batch {BATCH})", t_ort),
            (f"inference: PyTorch eager (T={T}, batch {BATCH})", t_eager)], diff


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="spikformer-cifar", help="zoo family (small config)")
    ap.add_argument("--repeat", type=int, default=20, help="inference repetitions")
    ap.add_argument("--append", type=Path, help="append the results to this Markdown file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        rows, diff = measure(args.family, args.repeat, Path(tmp))
    t = [v for _, v in rows]
    lines = ["| measurement | value |", "|---|---|"]
    lines += [f"| {k} | {v * 1e3:.1f} ms |" for k, v in rows]
    lines += [f"| ratio: torch.onnx.export time / snncc compile time | {t[1] / t[0]:.1f}x |",
              f"| ratio: PyTorch eager time / onnxruntime time | {t[3] / t[2]:.2f}x |",
              f"| max abs output difference (float32) | {diff:.1e} |"]
    print("\n".join(lines))
    if args.append:
        append(args.append, section(
            f"ONNX: snncc vs torch.onnx.export and PyTorch eager ({args.family})", "bench_onnx.py",
            argv, f"Small zoo configuration, float32, T={T}, batch {BATCH}; {platform.machine()}, "
            f"{os.cpu_count()} cores shared (load average {load_average():.1f}), 1 thread, torch "
            f"{torch.__version__}, onnxruntime {ort.__version__}.", "\n".join(lines)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
