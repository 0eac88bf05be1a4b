"""Compile benchmark: `snncc compile` time and peak memory per target against the checkpoint's
size and one eager forward of the same model, at the zoo's full sizes (issue 17).

For each architecture a random checkpoint (seeded weights, BN statistics randomised as the
tests do) is written to a temporary directory; then, each in a fresh process:

- snncc's bytecode is compiled first (:func:`common.compile_bytecode`), as an installed
  package's is;
- the baseline: an interpreter with torch and snncc's CLI imported (its peak RSS, and its
  wall time: the start-up every `snncc` command pays, shown subtracted in one column), once
  per round;
- one eager forward of the model at batch 1 (T steps, the architecture's input size), best of
  ``--repeat`` after a warm-up, the checkpoint loaded as `compile` loads it;
- ``snncc compile CKPT --arch A --target t -o OUT`` for each target, ``--runs`` rounds of
  every target in turn (so that a slow spell of a shared machine is not one target's): the
  median wall time and the median peak RSS (``ru_maxrss`` of each process from ``wait4``;
  this script itself never imports torch, so the child's high-water mark is its own). Single
  runs' peaks differ by up to ~50 MB on this machine.

Ratios: peak RSS above the baseline / checkpoint bytes, compile time / eager forward time. All
processes use ``--threads`` torch threads (``OMP_NUM_THREADS``). ``--library NAME ...``: instead
of the zoo, spikingjelly's own models at their default sizes (``library_models.py``), a
state_dict compiled with ``--model benchmarks/library_models.py:NAME`` as a user's model is.
Run::

    python benchmarks/bench_compile.py [--arch meta-spikeformer-15m ...] [--targets sim onnx nir]
        [--library sew_resnet18 ...] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (benchmarks/ is sys.path[0]; no torch)
from common import append, compile_bytecode, load_average, section

ARCHS = ["digits-spikformer", "meta-spikeformer-15m", "meta-spikeformer-31m",
         "meta-spikeformer-55m"]
TARGETS = ["sim", "onnx", "nir", "lava"]

_MAKE_CHECKPOINT = """
import sys, torch
from snncc.frontends.zoo import build
from snncc.frontends.zoo.testing import randomize_bn
torch.manual_seed(0)
model = build(sys.argv[1])
randomize_bn(model, 0)
torch.save(model.state_dict(), sys.argv[2])
print(sum(p.numel() for p in model.parameters()))
"""

# the child's `model` on `x`: the best of `repeat` forwards after a warm-up, printed
_BEST_FORWARD = """
best = float("inf")
with torch.no_grad():
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        model(x)
        if i:
            best = min(best, time.perf_counter() - t0)
        reset_state(model)
print(best)
"""

_FORWARD = """
import sys, time, torch
from snncc.frontends.adapters import reset_state
from snncc.frontends.checkpoint import load_into, load_state_dict
from snncc.frontends.zoo import ZOO, build
arch, path, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = build(arch)
load_into(model, load_state_dict(path, False, model.state_dict(), arch), arch)
model.eval()
entry = ZOO[arch]
x = torch.randn((1, *entry.input_shape))
if entry.sequence_input:
    x = (torch.rand((1, entry.T, *entry.input_shape)) < 0.5).float()
""" + _BEST_FORWARD

_MAKE_LIBRARY_CHECKPOINT = """
import sys, torch
import library_models
from snncc.frontends.zoo.testing import randomize_bn
torch.manual_seed(0)
model = getattr(library_models, sys.argv[1])()
randomize_bn(model, 0)
torch.save(model.state_dict(), sys.argv[2])
print(sum(p.numel() for p in model.parameters()), library_models.T,
      int(sys.argv[1] in library_models.SEQUENCE))
"""

_LIBRARY_FORWARD = """
import sys, time, torch
import library_models
from snncc.frontends.adapters import reset_state
name, path, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
model = getattr(library_models, name)()
model.load_state_dict(torch.load(path, weights_only=True))
model.eval()
x = torch.randn(1, 3, 224, 224)
if name in library_models.SEQUENCE:
    x = x.unsqueeze(0).repeat(library_models.T, 1, 1, 1, 1)
""" + _BEST_FORWARD

# the start-up and exit of a `snncc` command that does no work (it exits as the CLI does)
_BASELINE = "import torch, snncc.cli; snncc.cli.exit_process(0)"


def run(cmd: list[str], env: dict) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, stdout) of a child process; raises if it fails."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}): "
                               f"{err.read().strip()[-600:]}")
        return wall, usage.ru_maxrss * 1024, out.read()


def measure(arch: str, targets: list[str], repeat: int, runs: int, env: dict,
            work: Path, library: bool = False) -> list[dict]:
    """``arch``: a zoo architecture, or (``library``) a name of ``library_models.py``."""
    py = sys.executable
    ckpt = work / f"{arch}.pt"
    made = run([py, "-c", _MAKE_LIBRARY_CHECKPOINT if library else _MAKE_CHECKPOINT, arch,
                str(ckpt)], env)[2].split()
    params = int(made[0])
    forward = float(run([py, "-c", _LIBRARY_FORWARD if library else _FORWARD, arch, str(ckpt),
                         str(repeat)], env)[2])
    size = ckpt.stat().st_size
    source = ["--arch", arch]
    if library:  # T and whether the model takes a sequence, as its checkpoint's maker said
        source = ["--model", f"{Path(__file__).resolve().parent / 'library_models.py'}:{arch}",
                  "--input-shape", "3,224,224", "--T", made[1],
                  *(["--layout", "TB"] if made[2] == "1" else [])]
    baselines, each = [], {t: [] for t in targets}
    for _ in range(runs):  # round by round: a slow spell of the machine falls on every target
        baselines.append(run([py, "-c", _BASELINE], env)[:2])
        for target in targets:
            each[target].append(run([py, "-m", "snncc", "compile", str(ckpt), *source,
                                     "--target", target, "-o", str(work / f"{arch}-{target}")],
                                    env)[:2])
    start, base = (statistics.median(v) for v in zip(*baselines))
    rows = []
    for target in targets:
        wall, peak = (statistics.median(v) for v in zip(*each[target]))
        rows.append({"arch": arch, "params": params, "target": target, "ckpt": size,
                     "forward": forward, "start": start,
                     "wall": wall, "above": peak - base, "base": base})
        print(f"{arch} {target}: {wall:.2f} s ({wall / forward:.1f}x forward {forward:.3f} s), "
              f"peak {peak / 2**20:.0f} MiB = baseline {base / 2**20:.0f} + "
              f"{(peak - base) / 2**20:.0f} MiB ({(peak - base) / size:.2f}x checkpoint "
              f"{size / 2**20:.0f} MiB)", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | parameters | checkpoint | target | eager forward (batch 1) | compile "
             "(process) | compile / forward | without start-up / forward | peak RSS above "
             "baseline | / checkpoint |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['params'] / 1e6:.2f}M | {r['ckpt'] / 2**20:.1f} MiB | "
                     f"{r['target']} | "
                     f"{r['forward']:.2f} s | {r['wall']:.1f} s | {r['wall'] / r['forward']:.1f}x"
                     f" | {(r['wall'] - r['start']) / r['forward']:.1f}x"
                     f" | {r['above'] / 2**20:.0f} MiB | {r['above'] / r['ckpt']:.2f}x |")
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    """Compile time (and one eager forward) and peak RSS above the baseline (and 2x the
    checkpoint) against the parameter count, one line per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for target in dict.fromkeys(r["target"] for r in rows):
        rs = [r for r in rows if r["target"] == target]
        x = [r["params"] / 1e6 for r in rs]
        left.plot(x, [r["wall"] for r in rs], "o-", label=f"compile --target {target}")
        right.plot(x, [r["above"] / 2**20 for r in rs], "o-", label=target)
    first = list({r["arch"]: r for r in rows}.values())
    x = [r["params"] / 1e6 for r in first]
    left.plot(x, [3 * r["forward"] for r in first], "k--", label="3x one eager forward")
    right.plot(x, [2 * r["ckpt"] / 2**20 for r in first], "k--", label="2x checkpoint")
    left.set(xlabel="parameters (M)", ylabel="seconds", title="compile time")
    right.set(xlabel="parameters (M)", ylabel="MiB above baseline", title="compile peak RSS")
    for ax in (left, right):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", nargs="+", default=ARCHS)
    ap.add_argument("--library", nargs="+", help="spikingjelly's own models (library_models.py) "
                                                 "instead of the zoo")
    ap.add_argument("--targets", nargs="+", default=TARGETS, choices=TARGETS)
    ap.add_argument("--repeat", type=int, default=3, help="eager forwards (best of)")
    ap.add_argument("--runs", type=int, default=3, help="compiles per target (median of)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--append", help="append the results as a Markdown section to this file")
    ap.add_argument("--plot", help="write the scaling plot (PNG) here")
    args = ap.parse_args(argv)
    here = str(Path(__file__).resolve().parent)  # library_models, for the child processes
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    compile_bytecode()
    models = args.library or args.arch
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for arch in models
                for r in measure(arch, args.targets, args.repeat, args.runs, env, Path(tmp),
                                 library=bool(args.library))]
    text = section(
        "Compile: time and peak memory vs checkpoint size and eager forward", "bench_compile.py",
        argv, f"{args.threads} torch threads; {platform.machine()}, {os.cpu_count()} cores "
        f"(load average {load_average():.1f}). Median of {args.runs} `snncc compile` processes "
        f"per target, the targets run in turn in each of {args.runs} rounds: wall time, and "
        f"peak RSS above the baseline (interpreter with torch and snncc imported).", table(rows))
    print(text)
    if args.plot:
        plot(rows, args.plot)
    if args.append:
        append(args.append, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
