"""Differential fuzzing of snncc at scale: random valid IR graphs (tests/fuzz_graphs.py) through
the simulator's .snnir round trip, every target's default pipeline and the targets' own
runners, compared spike for spike with the reference simulator in float64.

    .venv/bin/python benchmarks/fuzz.py --cases 100000 --jobs 2
    .venv/bin/python benchmarks/fuzz.py --cases 2000 --targets snnir,sim,nir --seed 7

``--every TARGET=N`` runs a slow target on every N-th case only (defaults: onnx and onnx-raw
every 4th, lava every 100th, on a small feed-forward graph of the ops Lava maps). Prints cases
per target, mismatches and crashes by cause (known causes, owned elsewhere, are marked), and
saves a minimal reproducer of each crash and mismatch cause (the smallest graph
that showed it) as ``.snnir`` + inputs ``.npz`` + a ``.txt`` description under ``--out``.
Exits 1 if there is an unexplained crash or mismatch.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import fuzz_graphs as fz  # noqa: E402

DEFAULT_TARGETS = "snnir,sim,onnx,onnx-raw,nir,nir-raw,lava"
DEFAULT_EVERY = {"onnx": 4, "onnx-raw": 4, "lava": 100}
#: targets run in the main process after the pool: Lava starts its own processes, which a
#: pool worker (a daemon) may not, and it sets the multiprocessing context
MAIN_PROCESS = frozenset({"lava"})


def case_seed(base: int, i: int) -> int:
    return base * 10_000_019 + i


def _targets_for(i: int, targets: list[str], every: dict[str, int]) -> list[str]:
    return [t for t in targets if i % every.get(t, 1) == 0]


def _profile(target: str) -> str:
    return "lava" if target == "lava" else "general"


def run_one(args) -> dict:
    """Worker: build case i (one general graph, plus a lava-profile graph when lava runs) and
    run it; returns plain data."""
    import torch

    torch.set_num_threads(1)
    base, i, targets, every, main_only = args
    seed = case_seed(base, i)
    want = [t for t in _targets_for(i, targets, every) if (t in MAIN_PROCESS) == main_only]
    out = {"i": i, "seed": seed, "checked": Counter(), "findings": [], "nodes": {},
           "generator": [], "rejected": Counter()}
    for profile in dict.fromkeys(_profile(t) for t in want):
        ts = [t for t in want if _profile(t) == profile]
        try:
            b = fz.Builder(fz.RngChooser(seed), profile)
            g = b.build()
            x = b.make_inputs(b.ch.int(1, 3))
        except Exception as e:  # the generator made an invalid graph: a bug here or in ir/graph
            out["generator"].append(f"{profile}: {type(e).__name__}: {e}")
            continue
        out["rejected"].update(b.rejected)
        out["nodes"][profile] = len(g)
        res = fz.run_case(g, x, ts, T=b.T)
        out["checked"].update(res.checked)
        out["findings"] += [(f.target, f.kind, f.cause, f.detail, profile) for f in res.findings]
    return out


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_")[:100]


def save_reproducer(folder: Path, seed: int, profile: str, finding: tuple) -> Path:
    from snncc.serialize import save

    target, kind, cause, detail, _ = finding
    b = fz.Builder(fz.RngChooser(seed), profile)
    g = b.build()
    x = b.make_inputs(b.ch.int(1, 3))
    stem = folder / _slug(f"{kind}-{target}-{cause}")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        save(g, stem.with_suffix(".snnir"))
    except Exception as e:  # a graph .snnir cannot hold: the text form below still has it
        detail += f" (could not save .snnir: {type(e).__name__}: {e})"
    np.savez(stem.with_suffix(".npz"), **x)
    stem.with_suffix(".txt").write_text(
        f"{kind} [{target}] {cause}\n{detail}\nseed {seed}, profile {profile}, T {b.T}\n"
        f"reproduce: tests/fuzz_graphs.py  case_from_seed({seed}, {profile!r}) -> run_case(...)\n"
        f"or: load('{stem.name}.snnir'), inputs np.load('{stem.name}.npz'), "
        f"run_case(g, dict(x), [{target!r}], T={b.T})\n\n{g.format()}\n")
    return stem


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--targets", default=DEFAULT_TARGETS,
                    help=f"comma-separated, from {','.join(fz.ALL_TARGETS)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--every", action="append", default=[], metavar="TARGET=N",
                    help="run TARGET on every N-th case only (repeatable)")
    ap.add_argument("--out", type=Path, default=Path("fuzz-findings"),
                    help="folder for reproducers")
    args = ap.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    bad = [t for t in targets if t not in fz.ALL_TARGETS]
    if bad:
        ap.error(f"unknown target(s) {bad}; choose from {fz.ALL_TARGETS}")
    every = dict(DEFAULT_EVERY)
    for e in args.every:
        k, _, v = e.partition("=")
        every[k] = max(1, int(v))

    import snncc.backends  # noqa: F401  (import everything once, before forking workers)
    import snncc.passes  # noqa: F401
    import snncc.simulator  # noqa: F401

    t0 = time.perf_counter()
    checked, rejected = Counter(), Counter()
    by_cause: Counter = Counter()
    smallest: dict[tuple, tuple] = {}  # (kind, target, cause) -> (nodes, seed, profile, finding)
    generator_errors: list[str] = []
    graphs = Counter()
    work = [(args.seed, i, targets, every, False) for i in range(args.cases)]
    main_work = [(args.seed, i, targets, every, True) for i in range(args.cases)
                 if set(_targets_for(i, targets, every)) & MAIN_PROCESS]
    pool = mp.get_context("fork").Pool(args.jobs) if args.jobs > 1 else None
    it = pool.imap_unordered(run_one, work, chunksize=8) if pool else map(run_one, work)

    def results():
        yield from it
        if pool:
            pool.close()
            pool.join()
        yield from map(run_one, main_work)
    try:
        for done, r in enumerate(results(), 1):
            checked.update(r["checked"])
            rejected.update(r["rejected"])
            graphs.update(r["nodes"].keys())
            generator_errors += [f"seed {r['seed']}: {e}" for e in r["generator"]]
            for f in r["findings"]:
                target, kind, cause, detail, profile = f
                key = (kind, target, cause)
                by_cause[key] += 1
                size = r["nodes"].get(profile, 0)
                if key not in smallest or size < smallest[key][0]:
                    smallest[key] = (size, r["seed"], profile, f)
            if done % 500 == 0:
                print(f"... {done}/{args.cases} cases, {time.perf_counter() - t0:.0f} s",
                      file=sys.stderr, flush=True)
    finally:
        if pool:
            pool.terminate()
    elapsed = time.perf_counter() - t0

    print(f"snncc differential fuzz: {args.cases} cases, seed {args.seed}, jobs {args.jobs}, "
          f"{elapsed:.1f} s ({1000 * elapsed / max(1, args.cases):.1f} ms/case)")
    print("graphs generated: " + ", ".join(f"{k} {v}" for k, v in graphs.items())
          + f"; generator errors {len(generator_errors)}")
    print("\ncomparisons (spikes of every neuron + outputs vs the reference simulator):")
    for t in targets:
        refused = sum(v for (k, tt, _), v in by_cause.items() if tt == t and k == "refused")
        print(f"  {t:<10} compiled-graph checks {checked[t]:>7}   artifact checks "
              f"{checked[t + ':artifact']:>7}   refused {refused:>6}")
    unexplained = 0
    for kind in ("mismatch", "crash", "refused"):
        rows = sorted(((k, v) for k, v in by_cause.items() if k[0] == kind), key=lambda kv: -kv[1])
        print(f"\n{kind}es by cause:" if kind != "refused" else "\nrefusals by cause:")
        if not rows:
            print("  none")
        for (kd, target, cause), n in rows:
            f = fz.Finding(target, kd, cause)
            why = fz.explained(f)
            tag = "" if kind == "refused" else (f"  [known: {why}]" if why else "  [UNEXPLAINED]")
            if kind != "refused" and not why:
                unexplained += n
            example = smallest[(kd, target, cause)][3][3]
            print(f"  {n:>6}  [{target}] {cause}{tag}\n          e.g. {example[:160]}")
    saved = []
    for key, (size, seed, profile, f) in sorted(smallest.items()):
        if key[0] != "refused":
            saved.append(save_reproducer(args.out, seed, profile, f))
    if saved:
        print(f"\nreproducers (smallest graph per cause) in {args.out}/:")
        for s in saved:
            print(f"  {s.name}.snnir")
    if generator_errors:
        print("\ngenerator errors:\n  " + "\n  ".join(generator_errors[:10]))
    print(f"\ngenerator rejections (ops that did not fit, retried): {sum(rejected.values())}")
    print(f"unexplained crashes + mismatches: {unexplained}")
    return 1 if unexplained or generator_errors else 0


if __name__ == "__main__":
    sys.exit(main())
