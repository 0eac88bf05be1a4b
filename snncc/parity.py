"""Layer-by-layer parity: the PyTorch model (or, without one, the simulator on the uncompiled
graph) against the simulator on the compiled graph and against a target's artifact, on the
same inputs. Neuron layers are matched by module path (PyTorch) and node name (IR, targets)."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import ir
from .errors import FormatError, SnnccError, UnsupportedError
from .graph import Graph
from .limits import (largest_fitting, nbytes, positive_int, require_fits,
                     smaller_batch_that_fits)
from .models import LoadedModel, attributes_kept, compiled_functions_run_eagerly, returned_items
from .simulator import SPIKES, simulate

#: ``graph.meta['output_layout']`` values of a model whose output is one value per time step.
PER_STEP_LAYOUTS = frozenset({"TB", "BT", "T*B"})

#: the largest output difference float64 rounding explains (sums taken in another order, a
#: fused multiply-add): a graph that computes something else differs by far more
OUTPUT_ROUNDING = 1e-9


def unexplained_output_difference(target: str, lossy: bool, dtype: str, target_dtype: str,
                                  min_agreement: float, diff_sim: float, diff_target: float,
                                  unmatched: list[str]) -> str | None:
    """Why an exact check (float64, not quantized, the target in float64) must fail although
    every compared layer's spikes agree: its outputs differ beyond rounding. Spikes a forward
    computes inside a larger module are not compared, so a graph that is wrong there shows
    only in the outputs (None: nothing unexplained). Of a check's report or a data set's."""
    if (lossy or dtype != "float64" or target_dtype == "float32" or min_agreement < 1.0
            or diff_sim <= OUTPUT_ROUNDING and diff_target <= OUTPUT_ROUNDING):  # (NaN: not <=)
        return None
    diff = max(diff_sim, diff_target, key=lambda d: math.inf if math.isnan(d) else d)
    nan = (" (NaN: one of them is NaN where the other is not, or both are: the model's own "
           "forward may compute NaN)" if math.isnan(diff) else "")
    return (f"the outputs differ by {diff:.3g}{nan} (simulator {diff_sim:.3g}, {target} "
            f"{diff_target:.3g}) though every compared layer's spikes agree: the compiled graph "
            f"computes something else than the model"
            + (f" (neuron layers not compared: {', '.join(unmatched[:4])}"
               f"{' ...' * (len(unmatched) > 4)})" if unmatched else ""))


@dataclass
class LayerParity:
    node: str
    path: str
    neurons: int
    agreement_sim: float  # fraction of equal spikes, compiled simulator vs reference
    agreement_target: float  # target vs reference
    agreement_sim_target: float  # target vs the simulator on the same compiled graph
    rate_reference: float
    rate_sim: float
    rate_target: float


@dataclass
class ParityReport:
    target: str
    reference: str  # "pytorch" or "simulator"
    T: int
    batch: int
    dtype: str
    layers: list[LayerParity]
    first_divergent_sim: str | None
    first_divergent_target: str | None
    output_max_abs_diff_sim: float
    output_max_abs_diff_target: float
    activity_cosine_sim: float
    activity_cosine_target: float
    lossy: bool = False  # compiled with a lossy pass (quantization): judge simulator vs target
    accuracy: dict[str, float] = field(default_factory=dict)
    target_dtype: str = ""  # the arithmetic of the target's run, as its outputs came back
    # the model's output is one value per step: output differences are over every step, and
    # predictions (accuracy) are the argmax of the output's mean over T
    output_over_steps: bool = False
    # neuron layers the reference has no spikes of: comparisons written inside a larger
    # module's forward, whose spikes no module returns (the outputs are still compared)
    unmatched: list[str] = field(default_factory=list)
    # neuron layers the passes removed (their spikes reach no output, e.g. scaled by 0): no
    # engine computes them, so they are not compared (they used to count as 0% agreement)
    removed: list[str] = field(default_factory=list)
    # the model's outputs (tensors it returns): the output differences cover all of them,
    # predictions (accuracy) are the first's
    outputs: int = 1
    # the model's multi-step neurons on time and batch folded together (path -> layout): the
    # PyTorch reference ran one sample at a time (batch_coupling_note)
    batch_coupled: dict[str, str] = field(default_factory=dict)

    @property
    def target_less_precise(self) -> bool:
        """The target ran in float32 while the reference and the simulator ran in float64."""
        return self.target_dtype == "float32" and self.dtype == "float64"

    @property
    def min_agreement(self) -> float:
        """The lowest spike agreement that must hold: every column for an exact compilation;
        target vs simulator after a lossy one (its loss against the reference is reported)."""
        if self.lossy:
            return min([1.0] + [r.agreement_sim_target for r in self.layers])
        return min([1.0] + [min(r.agreement_sim, r.agreement_target, r.agreement_sim_target)
                            for r in self.layers])

    @property
    def unexplained_output_difference(self) -> str | None:
        return unexplained_output_difference(
            self.target, self.lossy, self.dtype, self.target_dtype, self.min_agreement,
            self.output_max_abs_diff_sim, self.output_max_abs_diff_target, self.unmatched)

    def to_dict(self) -> dict:
        return {**asdict(self), "min_agreement": self.min_agreement,
                "target_mismatch_rate": self.target_mismatch_rate}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def format(self) -> str:
        head = (f"parity: {self.reference} vs simulator vs {self.target}  "
                f"(T={self.T}, batch={self.batch}, {self.dtype}"
                + (f"; {self.target} in {self.target_dtype}"
                   if self.target_dtype and self.target_dtype != self.dtype else "") + ")")
        cols = (f"{'layer':<36} {'neurons':>8} {'agree sim':>10} {'agree ' + self.target:>12} "
                f"{'sim=' + self.target:>10} {'rate ref':>9} {'rate sim':>9} {'rate tgt':>9}")
        lines = [head + ("  [lossy: quantized]" if self.lossy else ""), cols]
        for r in self.layers:
            lines.append(f"{r.node:<36} {r.neurons:>8} {r.agreement_sim:>10.6f} "
                         f"{r.agreement_target:>12.6f} {r.agreement_sim_target:>10.6f} "
                         f"{r.rate_reference:>9.4f} {r.rate_sim:>9.4f} {r.rate_target:>9.4f}")
        lines += [
            f"first divergent layer: simulator {self.first_divergent_sim or 'none'}, "
            f"{self.target} {self.first_divergent_target or 'none'}",
            ("output" if self.outputs == 1 else f"the {self.outputs} outputs'")
            + f" max |diff|{OVER_STEPS if self.output_over_steps else ''}: simulator "
            f"{self.output_max_abs_diff_sim:.3g}, {self.target} "
            f"{self.output_max_abs_diff_target:.3g}",
            f"activity cosine similarity: simulator {self.activity_cosine_sim:.6f}, "
            f"{self.target} {self.activity_cosine_target:.6f}",
        ]
        if self.unmatched:
            lines.append(f"not compared with the {self.reference} model: "
                         f"{len(self.unmatched)} neuron layer(s) whose spikes no module returns "
                         f"({', '.join(self.unmatched[:4])}{' ...' * (len(self.unmatched) > 4)})"
                         f"; a neuron written as a module of its own is compared")
        if self.removed:
            lines.append(f"not compared: {len(self.removed)} neuron layer(s) the passes "
                         f"removed, whose spikes reach no output ("
                         f"{', '.join(self.removed[:4])}{' ...' * (len(self.removed) > 4)})")
        if self.batch_coupled and self.reference == "pytorch":
            lines.append(per_sample_reference_note(self.batch_coupled))
        if self.accuracy:
            lines.append(f"accuracy{MEAN_PREDICTION if self.output_over_steps else ''}: "
                         + ", ".join(f"{k} {v:.4f}" for k, v in self.accuracy.items()))
        if (unexplained := self.unexplained_output_difference) is not None:
            lines.append(f"error: {unexplained}")
        if self.target_less_precise:
            lines.append(f"note: the {self.target} artifact computes in float32: spikes whose "
                         f"membrane lies within float32 rounding of the threshold may flip "
                         f"(mismatch rate {self.target_mismatch_rate:.3g} of all neuron-steps "
                         f"checked; compile with --dtype float64 for exact parity)")
        return "\n".join(lines)

    @property
    def target_mismatch_rate(self) -> float:
        """The fraction of neuron outputs (all layers, steps, samples) where the target differs
        from the reference."""
        n = sum(r.neurons for r in self.layers)
        return sum(r.neurons * (1 - r.agreement_target) for r in self.layers) / n if n else 0.0


def random_inputs(graph: Graph, batch: int, T: int, seed: int) -> np.ndarray:
    """Inputs for the graph's single Input: N(0, 1) for real inputs, Bernoulli(0.3) for spikes;
    ``[B, ...]`` for a static input, ``[T, B, ...]`` for a sequence."""
    if len(graph.inputs) != 1:
        raise UnsupportedError(f"graph '{graph.name}' has {len(graph.inputs)} inputs "
                               f"{[i.name for i in graph.inputs]}; snncc's checks take models "
                               "with exactly one input")
    (inp,) = graph.inputs
    batch = positive_int(batch, "the batch of random inputs (--batch)")
    T = positive_int(T, "T (time steps)")
    shape = ((batch,) if inp.static else (T, batch)) + inp.input_shape
    require_fits(nbytes(shape) * 2, f"random inputs of shape {shape}")
    rng = np.random.default_rng(seed)
    if inp.input_kind is ir.Kind.SPIKE:
        return (rng.random(shape) < 0.3).astype(np.float64)
    return rng.normal(0.0, 1.0, shape)


def _float_dtypes(model) -> dict[str, object]:
    """Each float parameter's and buffer's dtype, by name."""
    return {name: t.dtype for named in (model.named_parameters(), model.named_buffers())
            for name, t in named if t.is_floating_point()}


def _restore_float_dtypes(model, dtypes: dict[str, object]) -> None:
    """Each float parameter and buffer back in its own dtype (``model.to(dtype)`` would give
    a model whose tensors were in several dtypes all of one)."""
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if name in dtypes and t.dtype != dtypes[name]:
            module, _, attr = name.rpartition(".")
            owner = model.get_submodule(module)
            if attr in owner._parameters:
                t.data = t.data.to(dtypes[name])
            else:
                owner._buffers[attr] = t.to(dtypes[name])


def torch_neuron_traces(model, graph: Graph, x: np.ndarray, dtype: str, device: str = "cpu"):
    """Run the PyTorch model on ``x`` recording every neuron module named by a Neuron node's
    path; returns ([each output tensor the graph's Outputs stand for, in their order],
    {node name: spikes [T, B, ...]}). The model is run in ``dtype`` and
    eval mode from fresh neuron state, and given back in the dtype and mode it came in (both
    conversions are exact for float32 <-> float64). A neuron returning ``(spikes, state)`` is
    recorded by its spikes; spikes a library casts to float32 (snntorch) are cast to ``dtype``
    (exact for 0/1), so that a float64 run does not stop at the next layer. ``device``: where
    the model runs (e.g. ``cuda``); it is given back on the device it came from."""
    import torch

    from snncc.frontends.adapters import is_neuron, reset_state
    from snncc.frontends.user_model import floating_dtype

    if graph.meta.get("batch_coupled") and x_batch(graph, x) > 1:
        return _one_sample_at_a_time(model, graph, x, dtype, device)
    tdtype = {"float64": torch.float64, "float32": torch.float32}[dtype]
    before = floating_dtype(model)
    dtypes = _float_dtypes(model)
    before_device = next((p.device for p in model.parameters()), torch.device("cpu"))
    conversions = [(to, instead) for to, instead, differs in (
        (dtype, f"--dtype {str(before).removeprefix('torch.')}", before not in (None, tdtype)),
        (device, f"--device {before_device}", before_device != torch.device(device))) if differs]
    if conversions:
        _refuse_held_views(model, *(" and ".join(c) for c in zip(*conversions)))
    modes = [(m, m.training) for m in model.modules()]
    model = model.to(device=device, dtype=tdtype).eval()
    reset_state(model)
    # a neuron written with tensor ops: each call of its module returns a comparison's spikes,
    # in the layout that call returns them (tracer, graph.meta['neuron_modules'])
    written = {p: [(graph[n], layout, *unit) for n, layout, *unit in calls]
               for p, calls in (graph.meta.get("neuron_modules") or {}).items()}
    modules = dict(model.named_modules())
    by_path = {n.path: n for n in graph.of_type(ir.Neuron)
               if n.path in modules and n.path not in written and is_neuron(modules[n.path])}
    # a module whose output counts (an integer LIF; a count times a unit, Spike-Driven
    # Transformer V3's spikes): level d of the graph fires on count >= d
    counted = {p: levels for p, levels in (graph.meta.get("count_modules") or {}).items()
               if p in modules}
    units = graph.meta.get("count_units") or {}
    records: dict[str, list] = {p: [] for p in (*by_path, *written, *counted)}

    # library neurons running: a module written with tensor ops that one of them calls in
    # its own forward is not the graph's call of it (spikingjelly's default surrogate, one
    # module shared by every neuron constructed with it, is a neuron traced through as well)
    in_leaf = 0

    def entered_leaf(m, args):
        nonlocal in_leaf
        in_leaf += 1

    def spikes_in_dtype(path, out, leaf):
        nonlocal in_leaf
        in_leaf -= leaf
        spikes, rest = (out[0], tuple(out[1:])) if isinstance(out, (tuple, list)) else (out, None)
        if spikes.is_floating_point() and spikes.dtype != tdtype:
            spikes = spikes.to(tdtype)
        if path in records and (path not in written or not in_leaf):
            # a copy: the model may add to them in place (SEW's out += x)
            records[path].append(spikes.detach().clone())
        return spikes if rest is None else (spikes, *rest)

    hooks = []
    for p, m in model.named_modules():
        leaf = is_neuron(m)
        if leaf:
            hooks.append(m.register_forward_pre_hook(entered_leaf))
        if p in records or leaf:
            hooks.append(m.register_forward_hook(
                lambda m, a, out, p=p, leaf=leaf: spikes_in_dtype(p, out, leaf)))
    until = graph.meta.get("until")
    if until is not None:  # the graph ends before this module: its inputs are the outputs
        hooks.append(modules[until].register_forward_pre_hook(_end_before, with_kwargs=True))
    try:
        # a copy: the model may change its input in place, which the engines then read
        xt = torch.tensor(to_torch_layout(graph, x), dtype=tdtype, device=device)
        with torch.no_grad(), floats_in(tdtype), compiled_functions_run_eagerly(), \
                attributes_kept(model):  # (a state the forward keeps in an attribute)
            out = model(xt)
    except _EndedBefore as end:
        out = end.outputs
    except (RuntimeError, TypeError, ValueError) as err:  # the model's own code failing
        text = " ".join(str(err).split())[:300]
        raise SnnccError(f"running the PyTorch model in {dtype} failed: {type(err).__name__}: "
                         f"{text}" + (" (a model whose tensors keep float32 in other ways "
                                      "runs only in float32: check with --dtype float32)"
                                      if dtype == "float64" and "dtype" in text else "")) \
            from None
    finally:
        for h in hooks:
            h.remove()
        reset_state(model)
        _restore_float_dtypes(model, dtypes)
        model.to(before_device)
        for m, training in modes:
            m.train(training)
    traces, batch = {}, x_batch(graph, x)
    for p, levels in counted.items():
        if records[p]:
            shape = graph[levels[0]].shape
            counts = torch.cat(records.pop(p)).cpu().numpy().reshape(-1, batch, *shape) \
                / units.get(p, 1.0)
            traces.update({node: (counts >= d).astype(counts.dtype)
                           for d, node in enumerate(levels, start=1)})
    places = graph.meta.get("neuron_module_calls") or {}
    for p, outs in records.items():
        calls = written.get(p, [(by_path.get(p), "steps")])
        if calls[0][1] == "steps" and outs:  # one output per step (or one [T, B, ...]
            # sequence), of each of the module's places in a step (layers sharing it)
            place = places.get(p, [0] * len(outs))
            outs = [torch.cat([o for o, k in zip(outs, place) if k == i])
                    for i in range(len(calls))] if len(place) == len(outs) else []
        for (node, layout, *unit), spikes in zip(calls, outs) if len(calls) == len(outs) \
                else ():
            if unit:  # spikes times a unit (exact: s * u / u is s for s in {0, 1})
                spikes = spikes / unit[0]
            if layout == "B*T":
                spikes = spikes.reshape(batch, -1, *node.shape)
            if layout in ("BT", "B*T"):
                spikes = spikes.transpose(0, 1)
            trace = spikes.cpu().numpy().reshape(-1, batch, *node.shape)
            if layout == "B":  # a static value (of a loop traced unrolled): every step's
                trace = np.broadcast_to(trace, (graph.meta["T"], *trace.shape[1:]))
            traces[node.name] = trace
    return [o.detach().cpu().numpy() for o in returned_items(out)], traces


def batch_coupling_note(coupled: dict[str, str]) -> str:
    """What a model whose multi-step neurons step along time and batch folded into one axis
    computes, and what snncc compiles of it (``graph.meta['batch_coupled']``: path ->
    ``T*B`` or ``B*T``)."""
    paths = sorted(coupled)
    layout = coupled[paths[0]]
    return (f"the model's multi-step neuron(s) {', '.join(paths[:3])}"
            f"{' ...' if len(paths) > 3 else ''} step along [{layout}, ...] (time and batch "
            f"folded into one axis), carrying state from one sample into the next, so the "
            f"model's outputs at batch > 1 depend on the rest of its batch; the graph computes "
            f"every sample as the model computes it at batch 1")


def per_sample_reference_note(coupled: dict[str, str]) -> str:
    """A report's line saying that its PyTorch reference ran one sample at a time."""
    return f"note: the PyTorch model ran one sample at a time: {batch_coupling_note(coupled)}"


#: the axis of the batch in a model's output, by its layout (``graph.meta['output_layouts']``;
#: ``T*B`` is taken apart first: its samples interleave)
_OUTPUT_BATCH_AXIS = {"TB": 1, "1B": 1, "BT": 0, "B*T": 0, "B": 0, None: 0}


def _one_sample_at_a_time(model, graph: Graph, x: np.ndarray, dtype: str, device: str):
    """:func:`torch_neuron_traces` of a model whose multi-step neurons step along time and
    batch folded into one axis (``graph.meta['batch_coupled']``, QKFormer's ``proj_lif`` on
    ``[T*B, C, N]``): the model carries a neuron's state from one sample into the next, so its
    outputs at batch > 1 depend on the rest of the batch. At batch 1 it steps along time alone,
    as the graph computes every sample: the model is run on each sample by itself."""
    axis = 0 if graph.inputs[0].static else 1
    runs = [torch_neuron_traces(model, graph, x.take([i], axis), dtype, device)
            for i in range(x.shape[axis])]
    layouts = graph.meta.get("output_layouts") or []
    outputs = []
    for k in range(len(runs[0][0])):
        layout = layouts[k] if k < len(layouts) else None
        parts = [r[0][k] for r in runs]
        if layout == "T*B":
            one = parts[0].shape[1:]
            outputs.append(np.concatenate([p.reshape(-1, 1, *one) for p in parts], 1)
                           .reshape(-1, *one))
        else:
            outputs.append(np.concatenate(parts, _OUTPUT_BATCH_AXIS.get(layout, 0)))
    traces = {name: np.concatenate([r[1][name] for r in runs], 1) for name in runs[0][1]}
    return outputs, traces


class _EndedBefore(BaseException):
    """The forward reached the module a graph ends before (``meta['until']``): ``outputs``
    are the tensors it was given, the rest of the forward is not run. (Not an Exception: a
    model's own ``except Exception`` around the call must not swallow it.)"""

    def __init__(self, outputs: tuple):
        super().__init__()
        self.outputs = outputs


def _end_before(module, args, kwargs):
    """The tensors ``module`` is given, in the order the tracer takes them (every leaf of the
    nested arguments, as ``torch.fx`` walks them)."""
    import torch
    from torch.fx.node import map_aggregate

    leaves = []
    map_aggregate((args, kwargs), leaves.append)
    raise _EndedBefore(tuple(a for a in leaves if isinstance(a, torch.Tensor)))


def floats_in(dtype):
    """A context in which the model's forward computes in ``dtype`` what a model converted to
    it does not: its casts to float32 or float64 (``x.float()``, ``.to(torch.float32)``,
    ``.type``) give ``dtype``, and tensors it makes (``torch.zeros(B, n)`` for a state, with
    either dtype or none) are made in it. A model written for float32 otherwise cannot run in
    float64 (a float32 input or state meets float64 weights). The graph takes such casts as
    the values cast (the tracer's ``_cast``); other dtypes are left as they are."""
    import contextlib

    import torch

    casts = {torch.Tensor.float, torch.Tensor.double}

    def floating(d) -> bool:  # (an argument may be a tensor: compared by type first)
        return isinstance(d, torch.dtype) and d in (torch.float32, torch.float64)

    class FloatsIn(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in casts:
                return args[0].to(dtype)
            if func in (torch.Tensor.to, torch.Tensor.type):
                args = tuple(dtype if floating(a) else a for a in args)
            if floating(kwargs.get("dtype")):
                kwargs = {**kwargs, "dtype": dtype}
            return func(*args, **kwargs)

    @contextlib.contextmanager
    def scope():
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with FloatsIn():
                yield
        finally:
            torch.set_default_dtype(default)
    return scope()


def _refuse_held_views(model, to: str, instead: str) -> None:
    """Converting a model gives its parameters and buffers new memory; a tensor a module keeps
    of theirs (:func:`~snncc.frontends.user_model.held_views`) stays behind, in the old dtype or
    device and no longer theirs, so the model would fail or run on weights that no longer
    follow its parameters (also after it is given back). Refused before anything is
    converted."""
    from snncc.frontends.user_model import held_views

    views = held_views(model)
    if views:
        (at, owner), more = views[0], len(views) - 1
        raise SnnccError(f"the model keeps '{at}', a view of '{owner}', outside its parameters"
                         + (f" (and {more} more)" if more else "") + f": running it in {to} "
                         f"would convert the parameters and leave that view behind, so snncc "
                         f"does not convert the model; make such views in forward, or check "
                         f"it as it is ({instead})")


def _on_device(device: str, fn):
    """``fn()`` with torch's default device set to ``device`` (the simulator builds its tensors
    with torch's factories, so they land there; its results come back as numpy arrays)."""
    if device in (None, "cpu"):
        return fn()
    import torch

    with torch.device(device):
        return fn()


def x_batch(graph: Graph, x: np.ndarray) -> int:
    return x.shape[0] if graph.inputs[0].static else x.shape[1]


def to_torch_layout(graph: Graph, x: np.ndarray) -> np.ndarray:
    """The IR takes sequences as [T, B, ...]; a model whose input is [B, T, ...] (DVS) says so in
    ``graph.meta['input_layout'] == 'BT'``."""
    if not graph.inputs[0].static and graph.meta.get("input_layout") == "BT":
        return np.swapaxes(x, 0, 1)
    return x


def first_output(graph: Graph, outputs: dict) -> np.ndarray:
    """The value of the graph's first Output (a model's prediction) from a runner's outputs."""
    return np.asarray(outputs[graph.outputs[0].name])


#: How reports word outputs of one value per step (:func:`compared_outputs`).
OVER_STEPS = " (every step)"
MEAN_PREDICTION = " (argmax of the output's mean over T)"


def output_in_ir_layout(graph: Graph, out: np.ndarray, batch: int,
                        layout: str | None = None) -> np.ndarray:
    """A PyTorch model's per-step output as traced (``[T, B, ...]``, ``[B, T, ...]`` or
    ``[T*B, ...]``: ``layout``, by default the first output's, ``graph.meta['output_layout']``)
    in the IR's ``[T, B, ...]``."""
    layout = layout or graph.meta.get("output_layout")
    if layout == "BT":
        return np.swapaxes(out, 0, 1)
    if layout == "T*B":
        return out.reshape(-1, batch, *out.shape[1:])
    return out


def compared_outputs(last: dict, sequences: dict) -> tuple[dict, dict, bool]:
    """What a check compares of the engines' outputs (``reference``, ``simulator``,
    ``target``): their last-step values ``[B, ...]`` in ``last``, and, for a model whose output
    is one value per step, their sequences ``[T, B, ...]`` in ``sequences`` (None where an
    engine gave none). With every sequence, the differences cover every step and the
    predictions are the means over T (a spiking classifier's rate output, as its training
    reads it); otherwise the last steps. Returns (the values predictions are the argmax of,
    by engine; each sample's largest |difference| to the reference, by ``simulator`` and
    ``target``; whether they are over steps)."""
    over_steps = bool(sequences) and all(sequences.get(k) is not None for k in last)
    compared = {k: np.asarray(sequences[k] if over_steps else v, dtype=np.float64)
                for k, v in last.items()}
    values = {k: v.mean(0) if over_steps else v for k, v in compared.items()}
    ref = compared["reference"]
    diffs = {}
    for k in ("simulator", "target"):
        if compared[k].shape != ref.shape:  # an engine that answers in another shape differs
            diffs[k] = np.full(len(values["reference"]), np.inf)
            continue
        d = np.abs(compared[k] - ref)
        d = np.swapaxes(d, 0, 1) if over_steps else d
        diffs[k] = d.reshape(len(d), -1).max(1) if d.size else np.zeros(len(d))
    return values, diffs, over_steps


def _torch_outputs_by_node(graph: Graph, outs: list, batch: int) -> dict[str, np.ndarray]:
    """The model's outputs after its first, by the graph's Output node: ``[T, B, ...]`` for
    one of one value per step (its layout: ``graph.meta['output_layouts']``), else the last
    step's ``[B, ...]``."""
    layouts = graph.meta.get("output_layouts") or []
    return {o.name: output_in_ir_layout(graph, out, batch, layout) if layout in
            PER_STEP_LAYOUTS else out
            for o, out, layout in zip(graph.outputs[1:], outs[1:], layouts[1:])}


def _later_outputs_diff(reference: dict, sim, tgt_outputs: dict,
                        tgt_traces: dict) -> dict[str, float]:
    """The largest |difference| to the reference over the outputs after the first (a model
    returning several tensors, snnTorch's tutorials' recorded membranes): every step where the
    reference gives a sequence, else the last step; inf for an output an engine lacks or gives
    in another shape."""
    worst = {"simulator": 0.0, "target": 0.0}
    for name, ref in reference.items():
        seq = ref.ndim and name in sim.output_sequence and \
            ref.shape == sim.output_sequence[name].shape
        got = {"simulator": sim.output_sequence.get(name) if seq else sim.outputs.get(name),
               "target": tgt_traces.get(name) if seq else tgt_outputs.get(name)}
        for k, v in got.items():
            v = None if v is None else np.asarray(v, dtype=np.float64)
            d = np.inf if v is None or v.shape != ref.shape else \
                float(np.abs(v - ref).max(initial=0.0))
            worst[k] = max(worst[k], d)
    return worst


def _agreement(a: np.ndarray | None, b: np.ndarray | None) -> float:
    if a is None or b is None or a.shape != b.shape:
        return 0.0
    return float(np.mean(a == b))


def _cosine(ref: dict, other: dict, names: list[str]) -> float:
    """Cosine similarity of per-neuron spike counts over all matched layers."""
    names = [n for n in names if n in ref and n in other]
    a = np.concatenate([ref[n].sum(0).ravel() for n in names] or [np.zeros(0)])
    b = np.concatenate([other[n].sum(0).ravel() for n in names] or [np.zeros(0)])
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den else float(np.array_equal(a, b))


def output_classes(graph) -> int:
    """The classes a label may name: the length of the (first) output's last axis."""
    shape = graph.outputs[0].shape
    return int(shape[-1]) if shape else 1


def check_labels(labels, batch: int, classes: int, what: str = "--labels") -> np.ndarray:
    """Labels for a batch: one whole number in [0, classes) per sample (any array shape with
    ``batch`` elements); anything else is refused naming the first offending value."""
    a = np.asarray(labels)
    if a.dtype.kind not in "biuf":
        raise FormatError(f"{what}: dtype {a.dtype} is not a class index")
    a = a.ravel()
    if a.size != batch:
        raise FormatError(f"{what}: {a.size} label(s) for a batch of {batch} input(s)")
    bad = np.flatnonzero(~np.isfinite(a) | (a != np.round(a)) | (a < 0) | (a >= classes)) \
        if a.dtype.kind == "f" else np.flatnonzero((a < 0) | (a >= classes))
    if bad.size:
        i = int(bad[0])
        raise FormatError(f"{what}: label {a[i]!r} at index {i} is not a class index in "
                          f"[0, {classes}) ({bad.size} such label(s))")
    return a.astype(np.int64)


def check_bytes(loaded: LoadedModel, compiled: Graph, T: int, batch: int,
                dtype: str) -> tuple[int, str]:
    """Memory a parity check takes (bytes, and what they are): it runs the compiled graph in the
    simulator and on the target, and the reference, one after another, each keeping the
    neurons' spikes and the outputs (``record=SPIKES``), which it then holds as booleans
    (:func:`_as_booleans`) while the next runs: one run's working memory and traces at a time
    (the largest), and the three runs' spikes at a byte each."""
    from .limits import fmt_bytes
    from .simulator import estimate_parts

    item = 4 if dtype == "float32" else 8
    kept = ("traces", "output sequences")
    one = estimate_parts(compiled, T, batch, SPIKES, item)  # the simulator's and the target's
    runs = [one, one, estimate_parts(loaded.graph, T, batch, SPIKES, item)]
    held = sum(v for p in runs for k, v in p.items() if k in kept) // item
    largest = max(sum(p.values()) for p in runs)
    return largest + held, (f"the largest run {fmt_bytes(largest)}, the three runs' spikes as "
                            f"booleans {fmt_bytes(held)}")


def largest_batch(loaded: LoadedModel, compiled: Graph, T: int, dtype: str, most: int) -> int:
    """The largest batch up to ``most`` whose parity check (:func:`check_bytes`) fits the
    memory budget; 1 when none does (the check then refuses, saying why)."""
    return largest_fitting(lambda b: check_bytes(loaded, compiled, T, b, dtype)[0], most)


def _as_booleans(traces: dict) -> dict:
    """Each trace whose values are all 0 or 1 (spikes) as a boolean array, an eighth of float64
    (a check holds three runs' spikes); any other (an output, a graded value) as it is. What
    reads them (agreements, rates, counts over time) gives the same numbers for either."""
    out = {}
    for k, v in traces.items():
        v = np.asarray(v)
        b = v.astype(bool) if v.dtype.kind == "f" else None
        out[k] = b if b is not None and np.array_equal(b, v) else v
    return out


def _require_check_fits(loaded: LoadedModel, compiled: Graph, x: np.ndarray, T: int,
                        dtype: str) -> None:
    """Refuse a parity check (:func:`check_bytes`) before its first run when it cannot fit."""
    x = np.asarray(x)
    static = loaded.graph.inputs[0].static if len(loaded.graph.inputs) == 1 else True
    if x.ndim < (1 if static else 2):
        return  # the simulator refuses the shape
    B = x_batch(loaded.graph, x)
    need, parts = check_bytes(loaded, compiled, T, B, dtype)
    fits = smaller_batch_that_fits(lambda b: check_bytes(loaded, compiled, T, b, dtype)[0], B)
    if fits:
        parts += f"; a batch of {fits} fits"
    require_fits(need, f"checking parity for T={T} on a batch of {B} ({parts})")


def check_parity(loaded: LoadedModel, target_name: str, x: np.ndarray, *, T: int,
                 labels: np.ndarray | None = None, passes: list[str] | None = None,
                 dtype: str = "float64", workdir: Path | None = None,
                 artifact: Path | None = None, fixed_point: bool = False,
                 calibrate=None, compiled: Graph | None = None, device: str = "cpu",
                 details: dict | None = None) -> ParityReport:
    """Compile ``loaded`` for the target, run reference, simulator and target on ``x``.
    ``artifact``: check this existing artifact (written by ``snncc compile``) instead of a
    freshly emitted one. ``fixed_point``: compile with ``quantize_for_loihi2`` so the simulator
    and the target run Loihi 2 integer arithmetic against the float reference.
    ``compiled``: the graph already compiled for the target (a data-set check compiles once
    and calls this per batch). ``device``: where PyTorch and the simulator run (``cuda``).
    ``details``: a dict that receives this batch's raw results (``outputs`` and ``traces`` by
    engine, ``seconds`` by engine) for aggregation over many batches (:mod:`snncc.dataset`)."""
    import time

    from .pipeline import available_passes, for_target
    from .targets import artifact_in, get_target

    tgt = get_target(target_name)
    if compiled is None:
        compiled = for_target(tgt.name, passes, fixed_point=fixed_point, calibrate=calibrate,
                              log=lambda s: None).run(loaded.graph)
    _require_check_fits(loaded, compiled, x, T, dtype)
    seconds = {}
    start = time.perf_counter()
    sim = _on_device(device, lambda: simulate(compiled, x, T, dtype=dtype, record=SPIKES))
    sim.trace = _as_booleans(sim.trace)
    seconds["simulator"] = time.perf_counter() - start
    if labels is not None:
        labels = check_labels(labels, x_batch(loaded.graph, x), output_classes(loaded.graph))
    start = time.perf_counter()
    per_step = loaded.graph.meta.get("output_layout") in PER_STEP_LAYOUTS
    out_name = loaded.graph.outputs[0].name
    if loaded.torch_model is not None:
        reference = "pytorch"
        ref_outs, ref = torch_neuron_traces(loaded.torch_model, loaded.graph, x, dtype, device)
        later = _torch_outputs_by_node(loaded.graph, ref_outs, x_batch(loaded.graph, x))
        ref_out = ref_outs[0]
        ref_seq = output_in_ir_layout(loaded.graph, ref_out, x_batch(loaded.graph, x)) \
            if per_step else None
        ref_out = ref_seq[-1] if per_step else ref_out
    else:
        reference = "simulator"
        r0 = _on_device(device, lambda: simulate(loaded.graph, x, T, dtype=dtype,
                                                 record=SPIKES))
        ref_out, ref = first_output(loaded.graph, r0.outputs), {k: v for k, v in r0.trace.items()
                                   if isinstance(loaded.graph[k], ir.Neuron)}
        ref_seq = r0.output_sequence[out_name] if per_step else None
        later = {o.name: r0.output_sequence[o.name] for o in loaded.graph.outputs[1:]}
        del r0
    ref = _as_booleans(ref)
    seconds["reference"] = time.perf_counter() - start
    options = {"dtype": dtype} if "dtype" in tgt.options else {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        if artifact is None:
            artifact = tgt.emit(compiled, Path(tmp) / f"model{tgt.suffix}", **options)
        else:
            artifact = artifact_in(artifact, tgt.name)[1]
        start = time.perf_counter()
        tgt_outputs, tgt_traces = tgt.run(artifact, x, T)
        tgt_traces = _as_booleans(tgt_traces)
        seconds["target"] = time.perf_counter() - start
    sim_out, tgt_out = (first_output(compiled, o) for o in (sim.outputs, tgt_outputs))
    target_dtype = str(tgt_out.dtype) if tgt_out.dtype.kind == "f" else ""
    compiled_out = compiled.outputs[0].name
    values, diffs, over_steps = compared_outputs(
        {"reference": ref_out, "simulator": sim_out, "target": tgt_out},
        {"reference": ref_seq, "simulator": sim.output_sequence.get(compiled_out),
         "target": tgt_traces.get(compiled_out)} if per_step else {})
    later_diff = _later_outputs_diff(later, sim, tgt_outputs, tgt_traces)
    if details is not None:
        details.update(reference=reference, compiled=compiled, seconds=seconds,
                       outputs=values, output_diffs=diffs, output_over_steps=over_steps,
                       later_output_diffs=later_diff,
                       traces={"reference": ref, "simulator": sim.trace,
                               "target": tgt_traces})

    layers, removed = [], []
    for n in loaded.graph.topological_order():
        if not isinstance(n, ir.Neuron) or n.name not in ref:
            continue
        if n.name not in compiled.nodes:
            removed.append(n.name)
            continue
        r = ref[n.name]
        s, t = sim.trace.get(n.name), tgt_traces.get(n.name)
        layers.append(LayerParity(
            node=n.name, path=n.path, neurons=int(np.prod(n.shape)),
            agreement_sim=_agreement(r, s), agreement_target=_agreement(r, t),
            agreement_sim_target=_agreement(s, t),
            rate_reference=float(r.mean()), rate_sim=float(s.mean()) if s is not None else -1.0,
            rate_target=float(t.mean()) if t is not None else -1.0))
    names = [row.node for row in layers]
    compared = {row.path for row in layers}  # (a module's other comparisons are its own steps)
    sim_n = {k: v for k, v in sim.trace.items() if k in ref}
    report = ParityReport(
        target=tgt.name, reference=reference, T=T, batch=x_batch(loaded.graph, x), dtype=dtype,
        layers=layers,
        first_divergent_sim=next((r.node for r in layers if r.agreement_sim < 1.0), None),
        first_divergent_target=next((r.node for r in layers if r.agreement_target < 1.0), None),
        output_max_abs_diff_sim=max(float(diffs["simulator"].max(initial=0.0)),
                                    later_diff["simulator"]),
        output_max_abs_diff_target=max(float(diffs["target"].max(initial=0.0)),
                                       later_diff["target"]),
        outputs=len(compiled.outputs),
        activity_cosine_sim=_cosine(ref, sim_n, names),
        activity_cosine_target=_cosine(ref, tgt_traces, names),
        lossy=any(available_passes()[p].lossy for p in compiled.meta.get("passes", [])),
        target_dtype=target_dtype, output_over_steps=over_steps,
        unmatched=[n.name for n in loaded.graph.of_type(ir.Neuron)
                   if n.name not in ref and n.name in sim.trace and n.path not in compared
                   and np.any(n.gamma)],  # (one that ignores its input counts the steps)
        removed=removed, batch_coupled=dict(loaded.graph.meta.get("batch_coupled") or {}))
    if labels is not None:
        labels = np.asarray(labels).ravel()
        for key, engine in (("reference", "reference"), ("simulator", "simulator"),
                            (tgt.name, "target")):
            report.accuracy[key] = float(np.mean(np.argmax(values[engine], -1) == labels))
    return report
