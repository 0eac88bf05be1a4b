"""Differential fuzzing of the front-end at scale: random spiking PyTorch models written the
ways users write them (tests/fuzz_models.py) compiled for each target and compared with their
own forward in float64.

    .venv/bin/python benchmarks/fuzz_models.py --models 500
    .venv/bin/python benchmarks/fuzz_models.py --models 50 --seed 1000 --targets sim,onnx,nir,lava

Prints the outcome counts per target, each refusal's first line (with its seeds) and every mismatch
or crash with the seed that draws its model (``fuzz_models.build_model(seed)`` rebuilds it).
Exits 1 if a model compiled to something that differs from it, or crashed.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import fuzz_models as fz  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="the first model's seed")
    ap.add_argument("--targets", default="sim,onnx,nir")
    a = ap.parse_args()
    torch.set_num_threads(1)
    targets = tuple(a.targets.split(","))
    outcomes: Counter = Counter()
    refusals: dict[str, list[int]] = {}  # first line -> the seeds refused with it
    failures = []
    t0 = time.perf_counter()
    for seed in range(a.seed, a.seed + a.models):
        r = fz.run_model(seed, targets)
        outcomes.update((t, o) for t, o in r.outcome.items())
        for d in {d for t, d in r.detail.items() if r.outcome[t] == "refused"}:
            refusals.setdefault(d, []).append(seed)
        failures += [f"{r.description}\n    {t}: {f}" for t, f in r.failures.items()]
    print(f"{a.models} models (seeds {a.seed}..{a.seed + a.models - 1}) in "
          f"{time.perf_counter() - t0:.0f} s")
    for t in targets:
        print(f"  {t}: " + ", ".join(f"{o} {outcomes[t, o]}" for o in
                                     ("exact", "refused", "mismatch", "crash") if outcomes[t, o]))
    for d, seeds in sorted(refusals.items(), key=lambda kv: -len(kv[1])):
        print(f"  refused x{len(seeds)} (seeds {', '.join(map(str, seeds))}): {d}")
    for f in failures:
        print(f"FAIL {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
