"""The ``snncc`` command line. Every failure is one line on stderr and a non-zero exit code;
``--debug`` (before the command) shows the traceback instead."""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
from typer.exceptions import Abort, Exit, TyperException

from .errors import SnnccError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Compile PyTorch spiking transformers to NIR, Lava, ONNX and a reference "
                       "simulator, and prove every artifact computes the same spikes.")

_STATE = {"debug": False}


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="show tracebacks on errors"),
          max_memory: Optional[str] = typer.Option(
              None, "--max-memory", help="memory budget, e.g. 8G or 512M (default: half the "
                                         "physical memory, or $SNNCC_MAX_MEMORY); inputs and "
                                         "runs declaring more are refused before allocating")):
    from .limits import print_warnings_as_lines, set_max_memory

    _STATE["debug"] = debug
    set_max_memory(max_memory)
    print_warnings_as_lines()
    from .progress import report_to

    every = os.environ.get("SNNCC_PROGRESS_EVERY", "").strip()
    try:
        seconds = float(every) if every else None
    except ValueError:
        seconds = -1.0
    if seconds is not None and not 0 <= seconds < float("inf"):
        raise SnnccError(f"SNNCC_PROGRESS_EVERY must be a number of seconds (0: no progress "
                         f"lines), not {every!r}")
    report_to(_progress_line if seconds is None or seconds > 0 else None, seconds)


def _progress_line(msg: str) -> None:
    """A progress line on stderr (:mod:`snncc.progress`), in one write where stderr is a file
    descriptor."""
    line = f"snncc: {msg}\n"
    try:
        os.write(sys.stderr.fileno(), line.encode())
    except (AttributeError, OSError, ValueError):  # a stream without one (tests, notebooks)
        sys.stderr.write(line)


def _out(msg: str = "") -> None:
    typer.echo(msg)


def _silent(msg: str = "") -> None:
    """What ranks other than 0 print under torchrun: nothing."""


def _split(csv: Optional[str]) -> Optional[list[str]]:
    return None if csv is None else [p.strip() for p in csv.split(",") if p.strip()]


SOURCE_HELP = ("a .snnir or .nir file; a checkpoint (.pt/.pth) with --arch or --model; or a "
               "whole-model pickle (torch.save(model)) with --trust-checkpoint")
TRUST_HELP = ("allow the file to unpickle arbitrary Python objects, e.g. a whole pickled model: "
              "this runs code from the file (only for files you trust)")
# The ways to name the model a checkpoint belongs to, shared by compile, check and inspect.
ARCH = typer.Option(None, "--arch", help="zoo architecture of the checkpoint (`snncc zoo` "
                                         "lists them)")
MODEL = typer.Option(None, "--model", help="your model's code: package.module:factory or "
                                           "path/to/file.py:ClassName; snncc imports and runs "
                                           "it to build the model, then loads the checkpoint's "
                                           "state_dict into it")
MODEL_ARGS = typer.Option(None, "--model-args", help="JSON object of keyword arguments for "
                                                     "--model, e.g. '{\"num_classes\": 10}'")
INPUT_SHAPE = typer.Option(None, "--input-shape", help="per-sample input shape, e.g. 3,32,32 "
                                                       "(default: the model's own)")
LAYOUT = typer.Option(None, "--layout", help="how the model takes its input: static ([B, ...] "
                                             "image repeated over T), TB ([T, B, ...]) or BT; "
                                             "default: tried in that order")
TRUST = typer.Option(False, "--trust-checkpoint", help=TRUST_HELP)
UNTIL = typer.Option(None, "--until", help="the graph ends before this module of your model "
                                           "(its dotted path): the tensors it is given are the "
                                           "outputs (a spiking backbone without a detector's "
                                           "head)")
ARCH_OPTION = typer.Option([], "--arch-option", help="with --arch: name=value for a "
                                                     "hyper-parameter no checkpoint records "
                                                     "(heads, T, tau, thresholds, scale; `snncc "
                                                     "zoo --verbose` lists them); repeatable")


def _shape(csv: Optional[str]) -> Optional[tuple[int, ...]]:
    if csv is None:
        return None
    try:
        shape = tuple(int(d) for d in csv.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise SnnccError(f"--input-shape must be positive integers such as 3,32,32, got '{csv}'")
    return shape


NIR_DIALECT = typer.Option(None, "--nir-dialect",
                           help=".nir source: read the producer's own conventions: "
                                "snntorch:subtract, snntorch:zero (snnTorch's export_to_nir "
                                "records no reset), norse (tau = dt/tau_mem_inv) or "
                                "sinabs[:spike-input|single-spike] (tau in time steps; "
                                "multi-spike IAF where one spike a step is provable), "
                                "spikingjelly (2.0's nir_exchange: IF r = 1/dt); nir: "
                                "NIR's own meaning, a missing v_reset (nir <= 1.0.4) being 0")
NIR_DT = typer.Option(None, "--nir-dt", help=".nir source: the time step in seconds when the "
                                             "file records none (snntorch 1e-4, norse 1e-3, "
                                             "sinabs 1: steps)")


def _loaded(source: str, arch, model, model_args, input_shape, layout, trust, T,
            arch_options=None, nir_dialect=None, nir_dt=None, say=_out, until=None):
    """What compile, check and inspect were pointed at, loaded (snncc.models.load_model); a
    zoo checkpoint's hyper-parameters are printed (``say``) as one line."""
    from .api import _summarise_steps
    from .models import load_model

    if model_args is not None and model is None:
        raise SnnccError("--model-args needs --model")
    loaded = load_model(source, arch, trust=trust, T=T, factory=model, factory_args=model_args,
                        input_shape=_shape(input_shape), layout=layout,
                        arch_options=arch_options, nir_dialect=nir_dialect, nir_dt=nir_dt,
                        until=until)
    if loaded.arch_info:
        say(loaded.arch_info)
    _summarise_steps(loaded.graph, say)
    return loaded


def _calibration(path: Optional[Path]):
    from .files import load_array

    return None if path is None else load_array(path)


@app.command()
def compile(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    target: str = typer.Option("sim", "--target", "-t", help="sim, nir, onnx or lava"),
    out: Path = typer.Option(..., "--out", "-o", help="artifact file or directory (an existing "
                                                      "one must be an earlier artifact of "
                                                      "snncc or empty)"),
    arch: Optional[str] = ARCH,
    arch_option: list[str] = ARCH_OPTION,
    model: Optional[str] = MODEL,
    model_args: Optional[str] = MODEL_ARGS,
    input_shape: Optional[str] = INPUT_SHAPE,
    layout: Optional[str] = LAYOUT,
    until: Optional[str] = UNTIL,
    passes: Optional[str] = typer.Option(None, "--passes",
                                         help="comma-separated pipeline replacing the target's "
                                              "default (`snncc passes` lists them)"),
    print_ir_after: list[str] = typer.Option([], "--print-ir-after",
                                             help="print the IR after this pass ('input', a pass "
                                                  "name or 'all'); repeatable"),
    dump_ir: Optional[Path] = typer.Option(None, "--dump-ir", help="write the IR after every "
                                                                   "pass into this directory"),
    T: Optional[int] = typer.Option(None, "--T", min=1, help="time steps (default: the model's)"),
    trust_checkpoint: bool = TRUST,
    strict_nir: bool = typer.Option(False, "--strict-nir",
                                    help="nir: refuse graphs that need snncc extension nodes"),
    nir_compat: Optional[str] = typer.Option(None, "--nir-compat",
                                             help="nir: write for a consumer's importer "
                                                  "(snntorch, norse, spikingjelly, nir-1.0.4; "
                                                  "comma-separated), "
                                                  "refusing what it would misread"),
    fixed_point: bool = typer.Option(False, "--fixed-point",
                                     help="quantize for Loihi 2 (sim, lava) and run it in "
                                          "fixed-point arithmetic"),
    calibrate: Optional[Path] = typer.Option(None, "--calibrate",
                                             help="--fixed-point: .npy calibration inputs "
                                                  "(default: random inputs)"),
    nir_dialect: Optional[str] = NIR_DIALECT,
    nir_dt: Optional[float] = NIR_DT,
    strict_hardware: bool = typer.Option(False, "--strict-hardware",
                                         help="fail, before writing anything, when the target "
                                              "hardware's design-rule check finds violations"),
    dtype: Optional[str] = typer.Option(None, "--dtype",
                                        help="onnx: float64 (default; spikes exactly as the "
                                             "simulator's) or float32 (faster; may flip spikes "
                                             "within float32 rounding of a threshold)"),
):
    """Compile a model into a target artifact."""
    from . import api
    from .limits import map_large_blocks
    from .targets import get_target

    map_large_blocks()  # the peak memory of a compile, not the speed of a run, is at stake
    tgt = get_target(target)
    api.emit_options(tgt, strict_nir=strict_nir, dtype=dtype,
                     nir_compat=nir_compat)  # refused before any work
    tgt.check_output(api.artifact_path(tgt, out))
    loaded = _loaded(source, arch, model, model_args, input_shape, layout, trust_checkpoint, T,
                     arch_option, nir_dialect, nir_dt, say=_silent,  # api.compile says it
                     until=until)
    api.compile(loaded, target=target, out=out, passes=_split(passes), consume=True,
                fixed_point=fixed_point, calibrate=_calibration(calibrate),
                strict_nir=strict_nir, strict_hardware=strict_hardware,
                print_ir_after=set(print_ir_after), dump_ir=dump_ir, dtype=dtype,
                nir_compat=nir_compat, log=_out)


@app.command()
def check(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    target: str = typer.Option("sim", "--target", "-t", help="sim, nir, onnx or lava"),
    arch: Optional[str] = ARCH,
    arch_option: list[str] = ARCH_OPTION,
    model: Optional[str] = MODEL,
    model_args: Optional[str] = MODEL_ARGS,
    input_shape: Optional[str] = INPUT_SHAPE,
    layout: Optional[str] = LAYOUT,
    until: Optional[str] = UNTIL,
    inputs: Optional[Path] = typer.Option(None, "--inputs",
                                            help=".npy inputs in the IR layout: [B, ...] for "
                                                 "a static image, [T, B, ...] for sequences "
                                                 "(default: random)"),
    labels: Optional[Path] = typer.Option(None, "--labels", help=".npy labels: report accuracy"),
    T: Optional[int] = typer.Option(None, "--T", min=1, help="time steps (default: the model's)"),
    batch: Optional[int] = typer.Option(None, "--batch", help="batch of random inputs "
                                                              "(default 4), or of --dataset "
                                                              "samples (default: the largest "
                                                              "up to 64 that fits the memory "
                                                              "budget)"),
    seed: int = typer.Option(0, "--seed", help="seed of random inputs"),
    dtype: str = typer.Option("float64", "--dtype", help="float64 or float32"),
    passes: Optional[str] = typer.Option(None, "--passes", help="pipeline instead of the "
                                                                "target's default"),
    min_agreement: float = typer.Option(1.0, "--min-agreement",
                                        help="fail when any layer's spike agreement is lower"),
    as_json: Optional[Path] = typer.Option(None, "--json", help="also write the report as JSON"),
    artifact: Optional[Path] = typer.Option(None, "--artifact",
                                            help="check this artifact from `snncc compile` "
                                                 "instead of compiling afresh"),
    fixed_point: bool = typer.Option(False, "--fixed-point",
                                     help="compare the float model with its Loihi 2 "
                                          "quantization (simulator and target)"),
    calibrate: Optional[Path] = typer.Option(None, "--calibrate",
                                             help="--fixed-point: .npy calibration inputs"),
    trust_checkpoint: bool = TRUST,
    dataset: Optional[str] = typer.Option(None, "--dataset",
                                          help="check a whole labelled data set, streamed in "
                                               "--batch batches: digits (digits:test, "
                                               "digits:train), a .npz with arrays x [N, ...] and "
                                               "y [N], an image folder (one sub-folder per "
                                               "class) or such a folder of one .npy/.npz array "
                                               "per sample (spikingjelly's event frames), or the "
                                               "folder torchvision downloaded CIFAR-10/100 or "
                                               "(Fashion-/K)MNIST to (FOLDER:train for the "
                                               "training split); runs sharded under torchrun"),
    limit: Optional[int] = typer.Option(None, "--limit", help="--dataset: the first N samples "
                                                              "only"),
    transform: list[str] = typer.Option([], "--transform",
                                        help="images (a folder or a torchvision set): "
                                             "mean=..., std=... (one value or one "
                                             "per channel), scale=255 (pixel divisor); "
                                             "repeatable"),
    device: str = typer.Option("cpu", "--device", help="where PyTorch and the simulator run: "
                                                       "cpu or cuda[:N]"),
    resume: Optional[Path] = typer.Option(None, "--resume",
                                          help="--dataset: checkpoint file, written every "
                                               "--checkpoint-every batches and on interruption, "
                                               "and continued from when it exists"),
    checkpoint_every: int = typer.Option(10, "--checkpoint-every",
                                         help="--resume: batches between checkpoints"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="--dataset: no progress bar"),
    nir_dialect: Optional[str] = NIR_DIALECT,
    nir_dt: Optional[float] = NIR_DT,
):
    """Layer-by-layer parity of PyTorch, the simulator and a target on the same inputs (or,
    with --dataset, on a whole labelled data set)."""
    from . import api
    from .errors import ParityError
    from .files import JSON, atomic_write, load_array

    if dataset is None:
        unused = [o for o, v in (("--limit", limit), ("--transform", transform),
                                 ("--resume", resume), ("--quiet", quiet)) if v]
        if unused:
            raise SnnccError(f"{', '.join(unused)} appl{'ies' if len(unused) == 1 else 'y'} "
                             "to --dataset only")
    elif inputs is not None or labels is not None:
        raise SnnccError("--dataset replaces --inputs/--labels; pass one or the other")
    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 speaks
    say = _out if rank0 else _silent

    def load(shape):
        return _loaded(source, arch, model, model_args,
                       ",".join(map(str, shape)) if shape else input_shape, layout,
                       trust_checkpoint, T, arch_option, nir_dialect, nir_dt, say=say,
                       until=until)
    if dataset is None:
        loaded = load(None)
    else:
        from .dataset import loaded_for

        loaded = loaded_for(dataset, load, say)
    if dataset is not None:
        _check_dataset(loaded, dataset, T, target, batch, limit, transform, dtype, passes,
                       artifact, fixed_point, calibrate, device, resume, checkpoint_every, quiet,
                       as_json, min_agreement, rank0)
        return
    batch = 4 if batch is None else batch
    report = api.check(loaded, target=target, T=T, inputs=load_array(inputs) if inputs else None,
                       labels=load_array(labels) if labels else None, batch=batch, seed=seed,
                       dtype=dtype, passes=_split(passes), artifact=artifact,
                       fixed_point=fixed_point, calibrate=_calibration(calibrate), device=device)
    _out(report.format())
    if as_json:
        atomic_write(as_json, lambda f: json.dump(report.to_dict(), f, indent=2), binary=False,
                     replaces=JSON)
    if report.min_agreement < min_agreement:
        raise ParityError(f"spike agreement {report.min_agreement:.6f} is below "
                          f"--min-agreement {min_agreement} (first divergent layer: "
                          f"{report.first_divergent_target or report.first_divergent_sim})"
                          + (f"; the {report.target} artifact computes in float32 (compile "
                             f"with --dtype float64 for exact spikes, or accept its rounding "
                             f"with a lower --min-agreement)"
                             if report.target_less_precise else ""))
    if report.unexplained_output_difference is not None:
        raise ParityError(report.unexplained_output_difference)


def _check_dataset(loaded, dataset, T, target, batch, limit, transform, dtype, passes,
                   artifact, fixed_point, calibrate, device, resume, checkpoint_every, quiet,
                   as_json, min_agreement, rank0: bool) -> None:
    """`check --dataset`: streamed, sharded under torchrun (rank 0 prints and writes)."""
    from .dataset import check_dataset, finish_dist
    from .errors import ParityError
    from .files import JSON, atomic_write

    say = _out if rank0 else _silent
    if not rank0:
        from .progress import report_to

        report_to(None)
    try:
        report = check_dataset(loaded, dataset, target=target, T=T,
                               batch=batch, limit=limit,
                               transform=transform, dtype=dtype, passes=_split(passes),
                               artifact=artifact, fixed_point=fixed_point,
                               calibrate=_calibration(calibrate), device=device, resume=resume,
                               checkpoint_every=checkpoint_every,
                               progress=not quiet and sys.stderr.isatty(), log=say)
        if rank0:
            _out(report.format())
            if as_json:
                atomic_write(as_json, lambda f: json.dump(report.to_dict(), f, indent=2),
                             binary=False, replaces=JSON)
    except BaseException:
        finish_dist(barrier=False)
        raise
    finish_dist()
    if report.min_agreement < min_agreement:
        raise ParityError(f"spike agreement {report.min_agreement:.6f} over {report.samples} "
                          f"samples is below --min-agreement {min_agreement} (first divergent "
                          f"layer: {report.first_divergent_target or report.first_divergent_sim})")
    if report.unexplained_output_difference is not None:
        raise ParityError(report.unexplained_output_difference)


@app.command()
def inspect(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    arch: Optional[str] = ARCH,
    arch_option: list[str] = ARCH_OPTION,
    model: Optional[str] = MODEL,
    model_args: Optional[str] = MODEL_ARGS,
    input_shape: Optional[str] = INPUT_SHAPE,
    layout: Optional[str] = LAYOUT,
    until: Optional[str] = UNTIL,
    inputs: Optional[Path] = typer.Option(None, "--inputs", help=".npy inputs for firing rates "
                                                                 "(default: random)"),
    T: Optional[int] = typer.Option(None, "--T", min=1, help="time steps (default: the model's)"),
    batch: int = typer.Option(4, "--batch", help="batch of random inputs"),
    seed: int = typer.Option(0, "--seed", help="seed of random inputs"),
    as_json: Optional[Path] = typer.Option(None, "--json", help="also write the report as JSON"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="draw firing rate and energy per "
                                                             "layer into this PNG"),
    trust_checkpoint: bool = TRUST,
    nir_dialect: Optional[str] = NIR_DIALECT,
    nir_dt: Optional[float] = NIR_DT,
):
    """Graph, parameters per node, firing rates, SOPs and energy (before and after the passes)."""
    from .analysis import energy_record, energy_report, plot_report
    from .files import JSON, atomic_write, load_array
    from .limits import require_fits, smaller_batch_that_fits
    from .parity import random_inputs, x_batch
    from .pipeline import for_target
    from .simulator import estimate_bytes, simulate

    g = _loaded(source, arch, model, model_args, input_shape, layout, trust_checkpoint, T,
                arch_option, nir_dialect, nir_dt, until=until).graph
    _out(g.format())
    _out("")
    _out(f"{'node':<40} {'op':<20} {'shape':<18} {'parameters':>12}")
    rows = []
    for n in g.topological_order():
        shape = "x".join(map(str, n.shape))
        rows.append({"node": n.name, "op": n.op, "shape": list(n.shape), "kind": n.kind.value,
                     "path": n.path, "parameters": n.param_count()})
        _out(f"{n.name:<40} {n.op:<20} {shape:<18} {n.param_count():>12,}")
    _out(f"{'total':<80} {g.param_count():>12,}")
    ext = g.meta.get("extensions")
    if ext:
        _out(f"\nnon-standard (snncc extension) nodes in the source: {', '.join(ext)}")

    steps = int(T or g.meta.get("T", 4))
    x = load_array(inputs) if inputs else random_inputs(g, batch, steps, seed)
    optimised = for_target("sim", log=lambda s: None).run(g)
    n = x_batch(g, x)

    records = [(h, energy_record(h)) for h in (g, optimised)]  # what the counts read

    def need(batch: int) -> int:  # one run at a time
        return max(estimate_bytes(h, steps, batch, record=r) for h, r in records)
    fits = smaller_batch_that_fits(need, n)
    require_fits(need(n), f"a recorded run of '{g.name}' (before or after the passes) for "
                          f"T={steps} on a batch of {n}"
                 + (f" (a batch of {fits} fits)" if fits else ""))
    rep0 = energy_report(g, simulate(g, x, steps, record=records[0][1]))
    after = simulate(optimised, x, steps, record=records[1][1])
    rates, rep1 = after.firing_rates(optimised), energy_report(optimised, after)
    _out(f"\nfiring rates ({'inputs ' + str(inputs) if inputs else 'random inputs'}, T={steps}):")
    for k, v in rates.items():
        _out(f"  {k:<40} {v:.4f}")
    _out("\nenergy per sample after the default passes (E_MAC 4.6 pJ, E_AC 0.9 pJ):")
    _out(rep1.format())
    _out(f"\nunoptimised graph: MACs {rep0.total_macs:,.0f}, SOPs {rep0.total_sops:,.0f}, "
         f"energy {rep0.total_energy_uj:.4f} uJ; after passes: MACs {rep1.total_macs:,.0f}, "
         f"SOPs {rep1.total_sops:,.0f}, energy {rep1.total_energy_uj:.4f} uJ "
         f"(saved {rep0.total_energy_uj - rep1.total_energy_uj:.4f} uJ)")
    if plot:
        plot_report(rep1, rates, plot)
        _out(f"plot written to {plot}")
    if as_json:
        doc = {"graph": g.name, "meta": g.meta, "nodes": rows, "total_parameters":
               g.param_count(), "firing_rates": rates, "energy": rep1.to_dict(),
               "energy_unoptimised": rep0.to_dict()}
        atomic_write(as_json, lambda f: json.dump(doc, f, indent=2, default=str), binary=False,
                     replaces=JSON)


@app.command()
def demo(
    arch: str = typer.Option("digits-spikformer", "--arch",
                             help="a built-in default model (digits-spikformer, "
                                  "digits-meta-spikeformer)"),
    target: str = typer.Option("lava", "--target", "-t", help="target to compile to"),
    out: Path = typer.Option(Path("out/demo"), "--out", "-o", help="artifact directory"),
    limit: Optional[int] = typer.Option(None, "--limit", help="evaluate the first N test "
                                                              "images only"),
):
    """The main job on the built-in default model: compile the digits model, compare the
    test-set accuracy of PyTorch, the simulator and the target, and summarise the energy."""
    import time

    import numpy as np
    import torch

    from snncc.frontends.digits import DEFAULT_MODELS, checkpoint, digits_for

    from .analysis import energy_record, energy_report, plot_report
    from . import api
    from .models import load_model
    from .pipeline import for_target
    from .simulator import simulate
    from .targets import get_target

    if arch not in DEFAULT_MODELS:
        raise SnnccError(f"--arch must be one of {list(DEFAULT_MODELS)}, got '{arch}'")
    tgt = get_target(target)
    artifact_path = api.artifact_path(tgt, out / target)
    tgt.check_output(artifact_path)
    loaded = load_model(checkpoint(arch), arch)
    T = int(loaded.graph.meta["T"])
    _, (x, y) = digits_for(arch)
    x, y = x[:limit], y[:limit]
    compiled = for_target(tgt.name, log=lambda s: None).run(loaded.graph)
    path = tgt.emit(compiled, artifact_path)
    _out(f"compiled {arch} ({compiled.param_count():,} parameters, T={T}) for '{tgt.name}' -> "
         f"{path}")

    times, preds = {}, {}
    start = time.perf_counter()
    with torch.no_grad():
        preds["pytorch"] = loaded.torch_model.double().eval()(torch.as_tensor(x)).numpy()
    times["pytorch"] = time.perf_counter() - start
    start = time.perf_counter()
    res = simulate(compiled, x, T, record=energy_record(compiled))
    preds["simulator"], times["simulator"] = res.output, time.perf_counter() - start
    start = time.perf_counter()
    outputs, _ = tgt.run(path, x, T)
    (preds[tgt.name],) = outputs.values()
    times[tgt.name] = time.perf_counter() - start

    _out(f"\ndigits test set ({len(y)} images, 8x8), T={T}")
    _out(f"{'':<12} {'accuracy':>9} {'agrees with pytorch':>20} {'seconds':>9}")
    ref = preds["pytorch"].argmax(-1)
    for k, p in preds.items():
        cls = np.asarray(p).argmax(-1)
        _out(f"{k:<12} {np.mean(cls == y):>9.4f} {np.mean(cls == ref):>20.4f} {times[k]:>9.2f}")
    rep = energy_report(compiled, res)
    plot_report(rep, res.firing_rates(compiled), out / "energy.png")
    _out(f"\nenergy per image (E_MAC 4.6 pJ, E_AC 0.9 pJ): {rep.total_energy_uj:.4f} uJ = "
         f"{rep.total_macs:,.0f} MACs + {rep.total_sops:,.0f} SOPs; "
         f"parameters {compiled.param_count():,}")
    resources = tgt.resources(compiled)
    if resources is not None:
        _out(f"hardware estimate: {resources.cores} cores, {len(resources.violations)} "
             f"design-rule finding(s) (`snncc compile --target {tgt.name}` lists them)")
    rates = res.firing_rates(compiled)
    if rates:
        _out(f"mean firing rate {np.mean(list(rates.values())):.4f} over {len(rates)} neuron "
             f"layers (min {min(rates.values()):.4f}, max {max(rates.values()):.4f})")
    _out(f"firing rate and energy per layer plotted in {out / 'energy.png'}")


@app.command()
def zoo(verbose: bool = typer.Option(False, "--verbose", "-v",
                                     help="also list each architecture's shape-free "
                                          "hyper-parameters (what --arch-option sets) and the "
                                          "official file they come from")):
    """List the built-in architectures (names for --arch)."""
    from snncc.frontends.zoo import ZOO, hyperparameters
    from snncc.frontends.zoo.options import format_values

    _out(f"{'name':<32} {'input':<14} {'T':>3} {'classes':>8}  description")
    for name, e in ZOO.items():
        shape = "x".join(map(str, e.input_shape))
        _out(f"{name:<32} {shape:<14} {e.T:>3} {e.num_classes:>8}  {e.description}")
        if verbose:
            values = hyperparameters(e)
            _out(f"{'':<32} hyper-parameters: "
                 + (format_values(values) if values else "none listed (see the description)"))


@app.command("passes")
def list_passes():
    """List the registered passes and each target's default pipeline."""
    from snncc.passes import default_pipeline

    from .pipeline import available_passes, for_target
    from .targets import all_targets

    for name, info in sorted(available_passes().items()):
        _out(f"{name:<44} {'(lossy) ' if info.lossy else ''}{info.doc}")
    _out("")
    for name, target in sorted(all_targets().items()):
        _out(f"default pipeline for {name}: {', '.join(default_pipeline(name))}")
        if target.fixed_point:
            _out(f"default pipeline for {name} --fixed-point: "
                 f"{', '.join(for_target(name, fixed_point=True).passes)}")


@app.command()
def run(
    artifact: Path = typer.Argument(..., help="an artifact written by `snncc compile`"),
    inputs: Path = typer.Option(..., "--inputs", help=".npy input array"),
    out: Path = typer.Option(Path("outputs.npy"), "--out", "-o", help="where to write outputs"),
    target: str = typer.Option("", "--target", help="artifact's target (default: told by "
                                                     "the artifact)"),
    T: Optional[int] = typer.Option(None, "--T", min=1, help="time steps (default: the artifact's)"),
    sequence: Optional[bool] = typer.Option(None, "--sequence/--last-step",
                                            help="write every step's output [T, B, ...] or the "
                                                 "last step's [B, ...] (default: the sequence "
                                                 "when the model's output is per step)"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="targets run on the simulator "
                                                              "(sim, nir): float64 (default, "
                                                              "exact) or float32 (faster)"),
    device: Optional[str] = typer.Option(None, "--device", help="targets run on the simulator "
                                                                "(sim, nir): cpu (default) or "
                                                                "cuda[:N]"),
):
    """Run a compiled artifact on inputs and write its outputs (.npy): the whole sequence
    [T, B, ...] when the model's output is one value per time step, else the last step's."""
    import numpy as np

    from . import api
    from .files import NPY, atomic_write, check_replaceable_file, load_array

    check_replaceable_file(out, NPY)
    outputs, tgt, is_seq = api.run_outputs(artifact, load_array(inputs), target=target or None,
                                           T=T, sequence=sequence, dtype=dtype, device=device)
    (value,) = outputs.values() if len(outputs) == 1 else (np.stack(list(outputs.values())),)
    atomic_write(out, lambda f: np.save(f, np.asarray(value)), replaces=NPY)
    _out(f"ran {artifact} on target '{tgt.name}' -> {out} (shape {tuple(np.shape(value))}"
         f"{', every time step' if is_seq else ''})")


class _Terminated(BaseException):
    """SIGTERM, raised where the process is, so that partial outputs are removed on the way out
    (like Ctrl-C)."""


def _raise_terminated(signum, frame):
    raise _Terminated()


@contextmanager
def _signals(debug: bool):
    """SIGTERM unwinds like Ctrl-C. Without --debug, errors Python reports while an interrupted
    writer is torn down ("Exception ignored in ZipFile.__del__") are not shown: the one line
    main() prints says what happened."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main else None
    hook = sys.unraisablehook
    if not debug:
        sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        sys.unraisablehook = hook
        if in_main:
            signal.signal(signal.SIGTERM, previous)


INTERRUPTED = 130  # the shell's code for SIGINT
TERMINATED = 143  # ... and for SIGTERM


def main(argv: Optional[list[str]] = None) -> int:
    """Console entry point: runs the app, turning every failure into one line on stderr."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    cmd = typer.main.get_command(app)
    try:
        with _signals(debug):
            # typer turns Ctrl-C into Exit(130), which click returns in non-standalone mode
            code = cmd.main(args=argv, prog_name="snncc", standalone_mode=False)
        if code == INTERRUPTED:
            typer.echo("snncc: interrupted; nothing partial was left at the output", err=True)
        return code if isinstance(code, int) else 0
    except _Terminated:
        typer.echo("snncc: terminated; nothing partial was left at the output", err=True)
        return TERMINATED
    except Exit as e:
        return e.exit_code
    except Abort:
        typer.echo("snncc: aborted", err=True)
        return INTERRUPTED
    except TyperException as e:
        typer.echo(f"snncc: error: {e.format_message()}", err=True)
        return e.exit_code
    except SnnccError as e:
        if debug:
            traceback.print_exc()
        typer.echo(f"snncc: error: {' '.join(str(e).split())}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        typer.echo("snncc: interrupted; nothing partial was left at the output", err=True)
        return INTERRUPTED
    except Exception as e:  # a bug: still one line, with a way to see more
        if debug:
            traceback.print_exc()
        typer.echo(f"snncc: internal error: {type(e).__name__}: {' '.join(str(e).split())} "
                   f"(rerun with --debug for the traceback)", err=True)
        return 3


def exit_process(code: int) -> None:
    """End the ``snncc`` process with ``code``, the objects left frozen out of the collection of
    reference cycles Python runs as it exits: with torch imported that collection traverses
    every object of its modules, about 0.35 s of each command (measured: a process importing
    torch and this module, 1.5-1.9 s; 1.2-1.4 s frozen), to free memory the system takes back
    anyway. Exit handlers run as before."""
    gc.freeze()
    sys.exit(code)


def entry() -> None:
    exit_process(main())


if __name__ == "__main__":
    entry()
