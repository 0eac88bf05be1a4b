"""Data-set checking at scale: peak memory and throughput of `snncc check --dataset` on a
synthetic ImageFolder of N small images (default 50,000 8x8 PNGs made from scikit-learn's digits,
written into a temporary directory), with 1 process and with 2 under torchrun.

    .venv/bin/python benchmarks/bench_dataset.py [--images 50000] [--batch 250] [--target sim]

Peak memory is the largest resident set of any snncc process (ru_maxrss of the children); it
is measured for the whole set and for a tenth of it, to show it does not grow with the set.
Throughput is images/s over the run and per engine (PyTorch, simulator, target), from the
JSON report. Every run uses OMP_NUM_THREADS=1 per process (torchrun's default)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "examples" / "checkpoints" / "digits-spikformer.pt"


def make_folder(root: Path, n: int) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
    for i in range(n):
        k = i % len(d.target)
        Image.fromarray((d.images[k] * 15).astype(np.uint8), "L").save(
            root / str(d.target[k]) / f"{i:06d}.png")


def run(args: list[str]) -> tuple[float, int]:
    """(seconds, peak RSS in bytes of the largest process) of one command."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a fresh wrapper per command: ru_maxrss of its (waited-for) descendants is this run's
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
               "sys.exit(r.returncode)")
    start = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", wrapper, *args], env=env, capture_output=True,
                       text=True)
    seconds = time.perf_counter() - start
    if p.returncode:
        sys.exit(f"failed: {' '.join(args)}\n{p.stderr}")
    return seconds, int(p.stdout.strip().splitlines()[-1]) * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--target", default="sim")
    a = ap.parse_args()
    # pixel / 240 = the digits value / 16, then the training split's standardisation
    mean, std = 0.3041, 0.4132  # approximate: the benchmark measures speed, not accuracy
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        make_folder(tmp / "folder", a.images)
        print(f"wrote {a.images} PNGs in {time.perf_counter() - t0:.1f} s", flush=True)
        base = ["check", str(CKPT), "--arch", "digits-spikformer", "--dataset",
                str(tmp / "folder"), "--batch", str(a.batch), "--target", a.target,
                "--transform", "scale=240", "--transform", f"mean={mean}", "--transform",
                f"std={std}", "--quiet", "--min-agreement", "0"]
        rows = []
        for procs, limit in ((1, a.images // 10), (1, a.images), (2, a.images)):
            out = tmp / f"r{procs}-{limit}.json"
            cmd = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node", str(procs), "-m", "snncc"] if procs > 1
                   else [sys.executable, "-m", "snncc"])
            seconds, rss = run(cmd + base + ["--limit", str(limit), "--json", str(out)])
            rep = json.loads(out.read_text())
            rows.append((procs, limit, seconds, rss, rep["run"]))
            print(f"{procs} process(es), {limit} images: {seconds:.1f} s wall, "
                  f"{rep['run']['images_per_second']:.0f} images/s in the loop, peak RSS "
                  f"{rss / 2 ** 20:.0f} MiB, per engine images/s "
                  + ", ".join(f"{k} {v:.0f}" for k, v in
                              rep["run"]["engine_images_per_second"].items())
                  + f"; accuracy {rep['engines']['pytorch']['accuracy']:.4f}", flush=True)


if __name__ == "__main__":
    main()
