"""snncc's public Python API (``import snncc``), the same jobs as the CLI::

    graph  = snncc.trace(model, example_input, T=4)                  # IR graph
    path   = snncc.compile(model, example_input, target="lava", out="out/", T=4)
    report = snncc.check(model, example_input, target="onnx", T=4)   # ParityReport
    y      = snncc.run(path, inputs)

``model`` is a spiking ``nn.Module`` (snncc's zoo, spikingjelly, snntorch, norse ...), an IR
:class:`~snncc.graph.Graph`, or a path: a ``.snnir`` / ``.nir`` file, a zoo checkpoint with
``arch=``, a whole-model pickle with ``trust_checkpoint=True``.

The example input's layout is inferred where it can be: a first axis of length T is time
(``[T, B, ...]``); otherwise the input is one static image batch ``[B, ...]`` that the model
repeats over T (or, failing that, ``[B, T, ...]``). ``layout='static' | 'TB' | 'BT'`` says it
outright. Without an example input, ``input_shape=(C, H, W)`` (or the model's declared
``input_shape``) gives a random one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import ShapeError, SnnccError, UnsupportedError
from . import ir
from .graph import Graph
from .models import LoadedModel, load_model
from .targets import artifact_path


#: The arithmetic a target's ``dtype`` option takes; the first is the default (exact).
DTYPES = ("float64", "float32")


def _quiet(message: str) -> None:
    """The default log: the API prints nothing; the CLI passes its own."""


def load(model, example_input=None, *, T: int | None = None, layout: str | None = None,
         input_shape=None, arch: str | None = None, trust_checkpoint: bool = False,
         name: str | None = None, arch_options: dict | None = None,
         nir_dialect: str | None = None, nir_dt: float | None = None,
         until: str | None = None) -> LoadedModel:
    """``model`` (module, graph or path) as a graph plus, where there is one, the PyTorch
    model it came from. A zoo checkpoint (``arch=``) takes ``arch_options={"num_heads": 8}``
    for the hyper-parameters no checkpoint records (``snncc zoo --verbose`` lists them); the
    values it was loaded with are in ``LoadedModel.arch_info``. A ``.nir`` file written by
    another framework takes ``nir_dialect`` ('snntorch:subtract', 'snntorch:zero', 'norse')
    and ``nir_dt`` (its time step, where the file records none). ``until``: the path of a
    module of the model the graph ends before, its outputs the tensors that module is given
    (to compile a model's spiking part and leave a non-spiking head, such as a detector's box
    decoding, to run elsewhere; ``check`` compares them)."""
    if arch_options and not isinstance(model, (str, Path)):
        raise SnnccError("arch_options apply to a zoo checkpoint loaded with arch=...; build "
                         "an in-memory model with the values you want instead")
    if until is not None and isinstance(model, (LoadedModel, Graph)):
        raise SnnccError("until= applies to a model's code: give the nn.Module or its file")
    if isinstance(model, LoadedModel):
        if T is not None:
            model.graph.meta["T"] = int(T)
        return model
    if isinstance(model, Graph):
        graph = model.copy()
        if T is not None:
            graph.meta["T"] = int(T)
        return LoadedModel(graph)
    if isinstance(model, (str, Path)):
        return load_model(model, arch, trust=trust_checkpoint, T=T, input_shape=input_shape,
                          layout=layout, arch_options=arch_options, nir_dialect=nir_dialect,
                          nir_dt=nir_dt, until=until)
    from torch import nn

    if not isinstance(model, nn.Module):
        raise SnnccError(f"model must be an nn.Module, an snncc Graph or a path, got "
                         f"{type(model).__name__}")
    from snncc.frontends.user_model import trace_user_model, unwrapped

    model = unwrapped(model)
    graph, model = trace_user_model(model, example_input, T=T, layout=layout,
                                    input_shape=input_shape, name=name or type(model).__name__,
                                    until=until)
    return LoadedModel(graph, model)


def trace(model, example_input=None, *, T: int | None = None, layout: str | None = None,
          input_shape=None, name: str | None = None, **load_options) -> Graph:
    """The IR graph of ``model`` (verified; before any pass)."""
    return load(model, example_input, T=T, layout=layout, input_shape=input_shape, name=name,
                **load_options).graph


def _summarise_quantization(graph: Graph, log: Callable[[str], None]) -> None:
    q = graph.meta.get("reports", {}).get("quantize_for_loihi2")
    if not q:
        return
    cal = q["calibration"]
    log(f"quantized for Loihi 2: spike agreement with the float network "
        f"{q['spike_agreement']:.4f} (lowest layer {q['min_spike_agreement']:.4f}), output "
        f"argmax agreement {q['output_argmax_agreement']}, on {cal['batch']} "
        f"{cal['inputs']} calibration inputs"
        + (f" ({cal['per_run']} at a time)" if cal["per_run"] < cal["batch"] else "")
        + (f"; {len(q['warnings'])} warning(s) about layers that lose more than rounding"
           if q["warnings"] else "")
        + (f"; after the chip, on the host in floating point: neuron(s) "
           f"{', '.join(q['host_neurons'])}" if q.get("host_neurons") else ""))


def _summarise_ties(graph: Graph, log: Callable[[str], None]) -> None:
    """One line per pass that folded with rounding: where spikes may differ on exact ties."""
    for name, rep in graph.meta.get("reports", {}).items():
        ties = rep.get("ties_may_differ") if isinstance(rep, dict) else None
        if ties:
            log(f"note: {name} rounds in {len(ties)} layer(s) ({', '.join(sorted(ties)[:4])}"
                f"{' ...' if len(ties) > 4 else ''}): spikes are exact except where a membrane "
                f"equals its threshold exactly (the pass report in the IR says why)")


def _summarise_steps(graph: Graph, log: Callable[[str], None]) -> None:
    """One line when the model's forward is one time step (frontends.user_model.StepLoop)."""
    if graph.meta.get("steps_outside"):
        log(f"note: the model's forward is one time step (each of its neurons is called once), "
            f"so it is compiled as a loop calling it T={graph.meta.get('T')} times, its "
            f"outputs stacked [T, B, ...], as a training loop outside the model runs it")


def _summarise_batch_coupling(graph: Graph, log: Callable[[str], None]) -> None:
    """One line when the model's multi-step neurons step along time and batch together."""
    from .parity import batch_coupling_note

    if graph.meta.get("batch_coupled"):
        log(f"note: {batch_coupling_note(graph.meta['batch_coupled'])} (snncc check runs the "
            f"model one sample at a time)")


def _summarise_dilation(graph: Graph, log: Callable[[str], None]) -> None:
    """One line when the latency plan slows time down (passes/latency.py)."""
    plan = graph.meta.get("latency")
    if plan and plan.get("dilation", 1) > 1:
        log(f"note: a recurrent loop passes more synapses than it has delay steps, so each time "
            f"step takes {plan['dilation']} target steps (a round of T x {plan['dilation']} + "
            f"{plan['latency']} steps)")


def compile(model, example_input=None, *, target: str = "sim", out: str | Path,
            T: int | None = None, layout: str | None = None, input_shape=None,
            passes: list[str] | None = None, fixed_point: bool = False, calibrate=None,
            strict_nir: bool = False, strict_hardware: bool = False,
            print_ir_after: set[str] | frozenset = frozenset(), dump_ir: str | Path | None = None,
            dtype: str | None = None, nir_compat: str | None = None,
            log: Callable[[str], None] = _quiet, consume: bool = False,
            **load_options) -> Path:
    """Compile ``model`` for ``target`` ('sim', 'onnx', 'nir', 'lava') into ``out`` and return
    the artifact's path. ``out`` may hold only an earlier artifact of snncc or nothing (see
    :mod:`snncc.files`); it is checked before any work. ``dtype``: the arithmetic of targets
    that take one (onnx): ``"float64"`` (the default; spikes exactly as the simulator's) or
    ``"float32"`` (faster; may flip spikes within float32 rounding of a threshold).
    ``nir_compat`` (nir): write for a consumer's importer ('snntorch', 'norse', 'nir-1.0.4';
    comma-separated), refusing what it would misread (docs/nir.md). ``consume``: ``model`` is
    a :class:`LoadedModel` that may be emptied as it is compiled (see
    :meth:`LoadedModel.release`); a model, graph or path loaded here always is."""
    from .pipeline import for_target
    from .targets import get_target

    tgt = get_target(target)
    options = emit_options(tgt, strict_nir=strict_nir, dtype=dtype, nir_compat=nir_compat)
    path = artifact_path(tgt, out)
    tgt.check_output(path)
    loaded = load(model, example_input, T=T, layout=layout, input_shape=input_shape,
                  **load_options)
    _verify_own_loop(loaded, example_input)
    _mark_steps_fixed(loaded, example_input)
    if loaded.arch_info:
        log(loaded.arch_info)
    _summarise_steps(loaded.graph, log)
    _summarise_batch_coupling(loaded.graph, log)
    pm = for_target(tgt.name, passes, fixed_point=fixed_point, calibrate=calibrate,
                    print_ir_after=set(print_ir_after), dump_ir_dir=dump_ir, log=log)
    graph = pm.run(loaded.release() if consume or loaded is not model else loaded.graph)
    _summarise_quantization(graph, log)
    _summarise_ties(graph, log)
    _summarise_dilation(graph, log)
    resources = tgt.resources(graph)
    if resources is not None:
        log(resources.format())
        if strict_hardware and resources.violations:
            raise SnnccError(f"{len(resources.violations)} design-rule violation(s), nothing "
                             f"written: " + "; ".join(resources.violations))
    elif strict_hardware:
        raise SnnccError(f"target '{tgt.name}' has no hardware design rules to check")
    written = tgt.emit(graph, path, **options)
    log(f"compiled {graph.name} ({len(graph)} nodes, {graph.param_count():,} parameters, "
        f"T={graph.meta.get('T')}) for target '{tgt.name}'"
        + (f" in {options['dtype']}" if "dtype" in options else "") + f" -> {written}")
    if pm.passes:
        log(f"passes: {', '.join(pm.passes)}")
    return written


def emit_options(tgt, *, strict_nir: bool = False, dtype: str | None = None,
                 nir_compat: str | None = None) -> dict:
    """The emitter options of :func:`compile` for target ``tgt``, refused when they do not
    apply; a target that takes a ``dtype`` gets the default, float64, unless told."""
    from .targets import all_targets

    options = {"strict": True} if strict_nir else {}
    if nir_compat:
        options["compat"] = nir_compat
    if dtype is not None:
        _check_dtype(dtype)
        if "dtype" not in tgt.options:
            takes = sorted(t.name for t in all_targets().values() if "dtype" in t.options)
            raise SnnccError(f"dtype (--dtype) does not apply to target '{tgt.name}'; targets "
                             f"that take it: {', '.join(takes)} (the simulator's arithmetic is "
                             "chosen when it runs)")
    if "dtype" in tgt.options:
        options["dtype"] = dtype or DTYPES[0]
    unknown = sorted(set(options) - tgt.options)
    if unknown:
        flags = {"strict": "--strict-nir / strict_nir", "compat": "--nir-compat / nir_compat"}
        raise SnnccError(f"{', '.join(flags.get(k, k) for k in unknown)} do(es) not apply to "
                         f"target '{tgt.name}'")
    return options


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise SnnccError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")


def to_ir_layout(graph: Graph, x) -> np.ndarray:
    """An input batch in the model's own layout as the IR takes it (``[B, T, ...]`` ->
    ``[T, B, ...]``)."""
    x = _numpy(x)
    if not graph.inputs[0].static and graph.meta.get("input_layout") == "BT":
        return np.swapaxes(x, 0, 1)
    return x


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        import torch

        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds every value
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def check(model, example_input=None, *, target: str = "sim", T: int | None = None,
          layout: str | None = None, input_shape=None, inputs=None, labels=None,
          batch: int = 4, seed: int = 0, dtype: str = "float64",
          passes: list[str] | None = None, artifact: str | Path | None = None,
          fixed_point: bool = False, calibrate=None, device: str = "cpu", **load_options):
    """Layer-by-layer spike parity of the PyTorch model (or, for a graph or file, the
    simulator on the uncompiled graph) against the simulator and ``target`` on the same inputs:
    ``inputs`` in the IR layout (``[B, ...]`` static, ``[T, B, ...]`` sequences), else the
    example input, else ``batch`` random inputs. ``device``: where PyTorch and the simulator
    run (``cuda``; DeviceError when absent). Returns a :class:`~snncc.parity.ParityReport`
    (``min_agreement``, ``layers``, ``to_json()``)."""
    from .parity import check_parity
    from .simulator import resolve_device

    resolve_device(device)  # refused before any work
    loaded = load(model, example_input, T=T, layout=layout, input_shape=input_shape,
                  **load_options)
    x, steps = _check_inputs(loaded, example_input, inputs, T, batch, seed)
    return check_parity(loaded, target, x, T=steps,
                        labels=None if labels is None else _numpy(labels), passes=passes,
                        dtype=dtype, artifact=None if artifact is None else Path(artifact),
                        fixed_point=fixed_point, calibrate=calibrate, device=device)


def _check_inputs(loaded: LoadedModel, example_input, inputs, T: int | None, batch: int,
                  seed: int) -> tuple[np.ndarray, int]:
    """The float64 inputs in the IR layout that ``check`` runs, and their T: ``inputs``, else
    the example input, else ``batch`` random inputs."""
    from .parity import random_inputs

    steps = int(T or loaded.graph.meta.get("T", 4))
    if inputs is not None:
        x = _numpy(inputs)
        ins = loaded.graph.inputs
        if T is None and len(ins) == 1 and not ins[0].static and x.ndim >= 2:
            steps = int(x.shape[0])  # a [T, B, ...] sequence says its T, as `run` takes it
    elif example_input is not None:
        x = to_ir_layout(loaded.graph, example_input)
    else:
        x = random_inputs(loaded.graph, batch, steps, seed)
    return x.astype(np.float64), steps


def _verify_own_loop(loaded: LoadedModel, example_input) -> None:
    """A graph traced from the model's own loop over time computes what its latest steps
    compute, at every step, from states that start at 0 or where the model's first steps
    show them starting. A model whose first steps compute something else (a branch on the
    step, ``if t == 0``) or whose state starts where snncc does not find it gave a graph whose
    first steps differed, silently. Such a graph is compared with the model on the example
    input (or random inputs) before anything is written: refused if its spikes or outputs
    differ beyond rounding."""
    from .parity import check_parity

    if not loaded.graph.meta.get("own_loop") or loaded.torch_model is None:
        return
    x, steps = _check_inputs(loaded, example_input, None, None, 2, 0)
    try:
        report = check_parity(loaded, "sim", x, T=steps)
    except SnnccError:  # a model `check` cannot run (one it will not convert to float64)
        return
    if report.min_agreement < 1.0 or report.unexplained_output_difference is not None:
        diff = report.output_max_abs_diff_sim
        agreement = f", spike agreement {report.min_agreement:.6f}" if report.layers else \
            ", no layer's spikes compared"  # (an agreement of none would read 1.000000)
        raise UnsupportedError(
            f"the graph of the model's loop over time computes other outputs than the model "
            f"(max |diff| {diff:.3g}{agreement} on "
            f"{'the example input' if example_input is not None else 'random inputs'}): the "
            f"graph computes at every step what the loop's later steps compute; a loop whose "
            f"first steps compute something else (a branch on the step, `if t == 0`), or a "
            f"state it starts at a value snncc does not find, is not supported")


def _mark_steps_fixed(loaded: LoadedModel, example_input) -> None:
    """A graph traced from a PyTorch model computes what the model computes at the T it was
    traced at. At another T it is the model only where the model's code is the same at every
    T (a multi-step network on a ``[T, B, ...]`` sequence), not where it reads fixed steps
    (``s[0]``, a Delay of T - 1 steps from the last) or repeats a static input its own T
    times: its artifact ran at another T all the same, silently wrong. A graph of a static
    input, and one with Delays (reads of other steps) that differs from the model at T + 1
    on the example input with a step added (or random inputs), is marked ``steps_fixed``: its
    artifact refuses another T (:func:`run_outputs`). A sequence's graph without Delays
    computes each step from its own and the neurons' states, the same at every T; so do the
    zoo's architectures, NIR and .snnir graphs."""
    from .parity import check_parity

    graph = loaded.graph
    if loaded.torch_model is None or graph.meta.get("source") != "torch.fx" or \
            graph.meta.get("arch"):
        return
    static = len(graph.inputs) != 1 or graph.inputs[0].static
    if not static and not graph.of_type(ir.Delay):
        return
    generic = False
    if not static:
        x, steps = _check_inputs(loaded, example_input, None, None, 2, 0)
        x = np.concatenate([x, x[-1:]])  # (the IR layout: [T, B, ...])
        try:
            report = check_parity(loaded, "sim", x, T=steps + 1, compiled=graph)
            generic = report.min_agreement == 1.0 and \
                report.unexplained_output_difference is None
        except Exception:  # noqa: BLE001 (the model's own code failing at T + 1, any type:
            pass  # its T is fixed)
    if not generic:
        graph.meta["steps_fixed"] = True


def check_dataset(model, dataset: str, example_input=None, *, target: str = "sim",
                  T: int | None = None, layout: str | None = None, input_shape=None,
                  batch: int | None = None, limit: int | None = None, transform=None,
                  dtype: str = "float64", passes: list[str] | None = None,
                  artifact: str | Path | None = None, fixed_point: bool = False,
                  calibrate=None, device: str = "cpu", resume: str | Path | None = None,
                  checkpoint_every: int = 10, progress: bool = False, **load_options):
    """:func:`check` over a whole labelled data set streamed in batches of ``batch`` (default:
    the largest up to 64 whose check fits the memory budget):
    ``dataset`` is ``"digits"`` (``digits:test`` / ``digits:train``), a ``.npz`` with ``x``
    [N, ...] and ``y`` [N], an ImageFolder directory, or the folder of a torchvision download
    of CIFAR-10/100, MNIST, Fashion-MNIST or KMNIST (``folder:train`` its training split);
    images take ``transform`` (``{"mean": [...], "std": [...], "scale": [255]}`` or the CLI's
    ``["mean=0.5", ...]``). Under torchrun the
    batches are sharded over the ranks and every rank returns the reduced report. ``resume``:
    checkpoint file (see :func:`snncc.dataset.check_dataset`). Returns a
    :class:`~snncc.dataset.DatasetReport` (``engines``, ``layers``, ``worst_samples``,
    ``to_json()``)."""
    from .dataset import check_dataset as _check, loaded_for

    loaded = loaded_for(dataset, lambda shape: load(
        model, example_input, T=T, layout=layout,
        input_shape=input_shape if shape is None else shape, **load_options))
    return _check(loaded, dataset, target=target, T=T, batch=batch, limit=limit,
                  transform=transform, dtype=dtype, passes=passes,
                  artifact=None if artifact is None else Path(artifact),
                  fixed_point=fixed_point, calibrate=calibrate, device=device,
                  resume=None if resume is None else Path(resume),
                  checkpoint_every=checkpoint_every, progress=progress)


def run(artifact: str | Path, inputs, *, target: str | None = None, T: int | None = None,
        sequence: bool | None = None, dtype: str | None = None, device: str | None = None):
    """Run an artifact written by :func:`compile` on ``inputs`` (IR layout); returns the output
    array (a dict by output name when the model has several). A model whose output is one
    value per time step (it returned ``[T, B, ...]``, ``[B, T, ...]`` or ``[T*B, ...]``; the
    artifact records it) gives the whole sequence ``[T, B, ...]`` (IR layout); any other the
    value at the last step ``[B, ...]``. ``sequence=True`` / ``False`` asks for one or the
    other. ``dtype`` (float64, the default, or float32) and ``device`` (cpu, cuda[:N]): the
    arithmetic and device of targets that run on the simulator (sim, nir)."""
    outputs = run_outputs(artifact, inputs, target=target, T=T, sequence=sequence,
                          dtype=dtype, device=device)[0]
    return next(iter(outputs.values())) if len(outputs) == 1 else outputs


def run_outputs(artifact: str | Path, inputs, *, target: str | None = None,
                T: int | None = None, sequence: bool | None = None,
                dtype: str | None = None, device: str | None = None):
    """:func:`run`'s work: ``(outputs by name, target, whether they are sequences)``."""
    from .parity import PER_STEP_LAYOUTS
    from .simulator import resolve_device
    from .targets import artifact_in

    if device is not None:
        resolve_device(device)  # refused before any work
    if dtype is not None:
        _check_dtype(dtype)
    tgt, artifact = artifact_in(artifact, target)
    options = {k: v for k, v in (("dtype", dtype), ("device", device)) if v is not None}
    meta = tgt.graph_meta(artifact)
    if T is not None and meta.get("steps_fixed") and meta.get("T", T) != T:
        raise ShapeError(f"{artifact}: compiled at T={meta['T']} from a model whose graph "
                         f"differs at another T (it reads fixed steps, divides by its T or "
                         f"loops its own T times): run it at T={meta['T']}, or compile the "
                         f"model with --T {T}")
    outputs, traces = tgt.run(artifact, _numpy(inputs), T, **options)
    if sequence is None:
        sequence = meta.get("output_layout") in PER_STEP_LAYOUTS
        if sequence and not all(k in traces for k in outputs):
            from .limits import warn

            warn(f"{artifact}: the model's output is one value per time step, but target "
                 f"'{tgt.name}' gives only the last step's; writing that")
            sequence = False
    if sequence:
        missing = [k for k in outputs if k not in traces]
        if missing:
            raise SnnccError(f"target '{tgt.name}' does not give the whole output sequence of "
                             f"{artifact} (output(s) {missing}); only the last step")
        outputs = {k: traces[k] for k in outputs}
    return outputs, tgt, bool(sequence)
