"""Lava simulation time per sample against the IR simulator, on the same compiled network, with
the samples of a batch side by side (one lane each) and, in the same run, one after another
(one lane: the runner's previous behaviour).

    python benchmarks/bench_lava.py [SOURCE [--arch ARCH] | --zoo FAMILY] [--batch 8] [--T 4]
                                    [--repeat 3]

SOURCE is anything ``snncc compile`` reads (a .snnir file, or a checkpoint with --arch); without
one, the small configuration of zoo family FAMILY (default spikformer-cifar: SPS stem, 2 blocks,
dim 32, 16x16 input; ``snncc.frontends.zoo.small``) is traced. The graph is compiled
with the lava target's default passes; both back-ends then run the same batch and record only
the outputs (the tests check every spike): the simulator in float64, vectorised over the batch,
one torch thread, best of 5 runs; Lava in Loihi2SimCfg floating_pt, one OS process per Lava
process: the batch on ``batch`` lanes (one round of T + latency steps) and on one lane
(``batch`` rounds), the best of ``--repeat`` runs each (a shared machine's load varies by 2x
within a minute). Printed for each: Lava's start-up (compile and process launch), its time per
Lava step and per sample (time per step x steps / batch), and

    speed-up = per-sample time on one lane / per-sample time on ``batch`` lanes
    ratio    = Lava per-sample time / simulator per-sample time (T steps of one sample)
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from snncc.backends.lava.lower import lower
from snncc.backends.lava.runner import run_network
from snncc.parity import random_inputs
from snncc.passes.latency import require_plan
from snncc.pipeline import run_passes
from snncc.simulator import Simulator
from snncc.targets import get_target

def load_graph(args):
    if args.source is None:
        from snncc.frontends.tracer import trace
        from snncc.frontends.zoo import small

        case = small(args.zoo, args.seed)
        return trace(case.model, case.inputs, T=args.T, name=args.zoo)
    from snncc.models import load_model

    return load_model(args.source, args.arch, T=args.T).graph


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source", nargs="?")
    ap.add_argument("--arch")
    ap.add_argument("--zoo", default="spikformer-cifar")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--T", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="Lava runs per layout (best kept)")
    args = ap.parse_args(argv)

    graph = run_passes(load_graph(args), list(get_target("lava").default_passes),
                       log=lambda s: None)
    x = random_inputs(graph, args.batch, args.T, args.seed)
    torch.set_num_threads(1)  # tiny tensors; idle OpenMP threads only contend on a busy machine
    sim = Simulator(graph)
    ref = sim.run(x, args.T)  # warm-up
    sim_sample = min(_timed(lambda: sim.run(x, args.T)) for _ in range(5)) / args.batch
    net = lower(graph, require_plan(graph))
    runs = {lanes: min((run_network(net, x, args.T, record=[], lanes=lanes)
                        for _ in range(args.repeat)), key=lambda r: r["seconds"]["per_step"])
            for lanes in dict.fromkeys((args.batch, 1))}
    agree = all(np.allclose(res["outputs"][k], v, rtol=1e-12, atol=1e-12)
                for res in runs.values() for k, v in ref.outputs.items())
    per_sample = {lanes: r["seconds"]["per_step"] * r["steps"] / args.batch
                  for lanes, r in runs.items()}
    res = runs[args.batch]
    row = {"graph": graph.name, "nodes": len(graph), "processes": res["processes"],
           "T": args.T, "batch": args.batch, "latency": res["latency"], "sim_sample_s": sim_sample,
           "speedup_per_sample": per_sample[1] / per_sample[args.batch], "outputs_agree": agree,
           **{f"lanes{lanes}": {"steps": r["steps"], "startup_s": r["seconds"]["startup"],
                                "step_s": r["seconds"]["per_step"],
                                "sample_s": per_sample[lanes],
                                "ratio_per_sample": per_sample[lanes] / sim_sample}
              for lanes, r in runs.items()}}
    print(f"{graph.name}: {len(graph)} IR nodes -> {res['processes']} Lava processes, "
          f"T={args.T}, batch={args.batch}, latency={res['latency']}; "
          f"{platform.processor() or platform.machine()}")
    print(f"  simulator per sample:             {sim_sample * 1e3:.3f} ms")
    for lanes in runs:
        r = row[f"lanes{lanes}"]
        print(f"  Lava, {lanes:>3} lane(s), {r['steps']:>4} steps: start-up "
              f"{r['startup_s']:.2f} s, {r['step_s'] * 1e3:.2f} ms per step, "
              f"{r['sample_s'] * 1e3:.2f} ms per sample ({r['ratio_per_sample']:.1f}x the "
              f"simulator)")
    print(f"  speed-up per sample, {args.batch} lanes vs 1: {row['speedup_per_sample']:.1f}x; "
          f"outputs agree: {agree}")
    return row


if __name__ == "__main__":
    main()
