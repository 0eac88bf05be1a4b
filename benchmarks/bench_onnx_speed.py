"""ONNX inference benchmark: onnxruntime on snncc's unrolled model (``model.onnx``) against
PyTorch eager inference of the same model, before and after time folding, in float32 and
float64 (each against eager in the same dtype), at batch 1 and 32, as ratios in one run.

"Before" is the unrolled model of commit ``--baseline`` (its ``backends/onnx`` loaded from git
beside the installed snncc; default ``BASELINE``, whose model repeats every layer at each of the
T steps). "After" is today's:
stateless layers evaluated once over all T steps, time folded into the batch axis. Both run in
real onnxruntime sessions made by the runner (:func:`snncc.backends.onnx.runner.session`:
``--threads`` intra-op threads, ``--optimization`` graph optimisations); PyTorch eager runs with
as many torch threads. Models: the small zoo Spikformer (``small("spikformer-cifar")``, 3x32x32)
and the zoo's Meta-SpikeFormer 15M (random weights, BN randomised as ``small`` does) at
``--meta-size`` (default 64). T = 4. Each figure is the best of ``--repeat`` runs after a
warm-up. The table also gives the largest output difference to eager and whether the folded
model's float64 outputs equal the baseline model's bit for bit. Run::

    .venv/bin/python benchmarks/bench_onnx_speed.py [--meta-size 64] [--append benchmarks/RESULTS.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import types

import numpy as np
import onnxruntime as ort
import torch

from snncc.backends.onnx.models import build_unrolled_model
from snncc.backends.onnx.runner import OPTIMIZATION, session
from snncc.frontends.tracer import trace
from snncc.frontends.zoo import build, small
from snncc.frontends.zoo.testing import randomize_bn
from snncc.pipeline import for_target

from common import (append, best_of, chosen, eager_run, load_average,  # noqa: E402
                    module_at, section)  # (benchmarks/ is sys.path[0])

T = 4
#: the last commit whose unrolled model repeats every layer at each step: the "before" column
BASELINE = "ae4c1af"


def baseline_builder(commit: str):
    """``build_unrolled_model`` of ``backends/onnx`` at ``commit`` (its builder and models
    modules loaded as a package of their own), or None without git or that commit."""
    pkg = types.ModuleType("snncc._onnx_baseline")
    pkg.__path__ = []
    sys.modules[pkg.__name__] = pkg
    for name in ("builder", "stream", "models"):  # (stream: models imports it since f9f6dfe)
        mod = module_at(commit, f"backends/onnx/{name}.py", f"{pkg.__name__}.{name}",
                        pkg.__name__)
        if mod is None and name != "stream":
            return None
    return mod.build_unrolled_model


def models(meta_size: int):
    """(label, float32 eval model, function batch -> input) of the benchmarked models."""
    gen = torch.Generator().manual_seed(0)
    yield ("spikformer-cifar (small zoo config, 3x32x32)",
           small("spikformer-cifar", 0, batch=2, dtype=torch.float32).model,
           lambda b: torch.randn((b, 3, 32, 32), generator=gen))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        meta = build("meta-spikeformer-15m")
    randomize_bn(meta, 0)
    yield (f"meta-spikeformer-15m (3x{meta_size}x{meta_size})", meta.float().eval(),
           lambda b: torch.randn((b, 3, meta_size, meta_size), generator=gen))


def measure(label, model, make_input, args, old_build) -> list[dict]:
    graph = trace(model, make_input(2), T=T, static=True, name=label.split()[0])
    graph = for_target("onnx", log=lambda s: None).run(graph)
    rows = []
    for dtype in args.dtypes:
        eager = model.to(getattr(torch, dtype))
        new = session(build_unrolled_model(graph, T, dtype), args.threads, args.optimization)
        old = (session(old_build(graph, T, dtype), args.threads, args.optimization)
               if old_build else None)
        for b in args.batches:
            x = make_input(b).to(getattr(torch, dtype))
            feed = {new.get_inputs()[0].name: x.numpy()}
            ref, t_eager = eager_run(eager, x, args.repeat)
            t_new = best_of(lambda: new.run(None, feed), args.repeat)
            t_old = best_of(lambda: old.run(None, feed), args.repeat) if old else float("nan")
            y_new = new.run(None, feed)[0]
            same = bool(np.array_equal(y_new, old.run(None, feed)[0])) if old else None
            rows.append(dict(model=label, dtype=dtype, batch=b, eager=t_eager, old=t_old,
                             new=t_new, diff=float(np.abs(y_new - ref).max()), same=same))
            r = rows[-1]
            print(f"{label} {dtype} batch {b}: eager {t_eager * 1e3:.1f} ms | before "
                  f"{t_old * 1e3:.1f} ms ({t_eager / t_old:.2f}x) | after {t_new * 1e3:.1f} ms "
                  f"({t_eager / t_new:.2f}x) | diff {r['diff']:.1e} | same as before: {same}",
                  flush=True)
        del new, old
    model.float()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | dtype | batch | PyTorch eager | onnxruntime, before (baseline commit) | "
             "onnxruntime, after | eager / after | before / after | max abs "
             "diff to eager | after == before |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['eager'] * 1e3:.1f} ms | "
                     f"{r['old'] * 1e3:.1f} ms ({r['eager'] / r['old']:.2f}x) | "
                     f"{r['new'] * 1e3:.1f} ms | **{r['eager'] / r['new']:.2f}x** | "
                     f"{r['old'] / r['new']:.2f}x | {r['diff']:.1e} | "
                     f"{'-' if r['same'] is None else ('yes' if r['same'] else 'no')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--meta-size", type=int, default=64, help="image side for the 15M model")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"],
                    choices=["float32", "float64"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--optimization", default="all", choices=list(OPTIMIZATION))
    ap.add_argument("--only", choices=["small", "meta"], help="benchmark one model only")
    ap.add_argument("--baseline", default=BASELINE,
                    help=f"the commit of the 'before' column (default {BASELINE})")
    ap.add_argument("--append", help="append the results as a Markdown section to this file")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    old_build = baseline_builder(a.baseline)
    rows = []
    for label, model, make_input in chosen(models(a.meta_size), a.only):
        rows.extend(measure(label, model, make_input, a, old_build))
    md = table(rows)
    print(md)
    if a.append:
        append(a.append, section(
            "ONNX: onnxruntime on the time-folded unrolled model vs PyTorch eager",
            "bench_onnx_speed.py", argv,
            f"T={T}, {a.threads} thread(s) (torch and onnxruntime), graph optimisations "
            f"'{a.optimization}', best of {a.repeat}; {platform.machine()}, {os.cpu_count()} "
            f"cores shared (load average {load_average():.1f}), torch {torch.__version__}, "
            f"onnxruntime {ort.__version__}. Random weights, randomised BN; each dtype against "
            f"eager in the same dtype.", md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
