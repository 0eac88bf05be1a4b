"""The two ONNX forms of an IR graph, and the ``onnx`` target's emitter.

* **step** (``model.step.onnx``): one call per time step. Inputs: the model inputs at step t,
  then the state: every neuron's membrane ``<neuron>:v`` ``[B, *shape]``, every Delay's FIFO
  ``<delay>:fifo`` ``[steps, B, *shape]`` (oldest first), every Readout's running sum
  ``<readout>:acc`` and, when the graph has a Readout, the step index ``snncc:t`` (int64
  scalar).
  Outputs: the model outputs at step t, then the new state under the same names with
  ``.next`` appended. The initial state (membrane v_init, empty FIFOs, zero sums, t = 0) is
  listed in the metadata key ``snncc.state`` (JSON: name, shape without the batch axis,
  batch_axis, init value broadcastable to the shape).
* **unrolled** (``model.onnx``): all T steps in one graph; inputs ``[T, B, *shape]`` (static
  inputs ``[B, *shape]``), outputs the model outputs at the last step. As in the simulator's
  time folding (the same plan, :func:`snncc.simulator.plan`), a stateless layer outside every
  cycle runs once over all T steps with time folded into the batch axis (``T/<node>``,
  ``[T * B, ...]``; once on ``[B, ...]`` where it reads static inputs alone); neurons, delays,
  readouts and cycles step through time (``t<t>/<node>``), the T steps concatenated on the
  batch axis before a folded region and split after it. Same kernels, same numbers: float64
  outputs equal the model unrolled layer by layer. Float64 im2col layers step (see
  ``_im2col``). Each output's value at an earlier step t is the tensor ``t<t>/<output>``, each
  neuron's spikes ``t<t>/<neuron>`` (which :func:`with_traces` exposes).

Both carry ``snncc.form``, ``snncc.T``, ``snncc.dt``, ``snncc.dtype`` (the arithmetic of every
tensor: ``float64``, the default, or ``float32``), ``snncc.inputs`` (name, shape, static, kind),
``snncc.outputs``, ``snncc.output_layout`` (the traced model's output layout, ``graph.meta
['output_layout']``: ``TB``, ``BT`` or ``T*B`` for an output per step, ``B`` for one value; ''
when unknown) and ``snncc.neurons`` (the IR neurons, whose spikes :func:`with_traces` exposes)
in ``metadata_props``. The batch axis is symbolic (``batch``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from snncc import ir
from snncc import neuron as nrn
from snncc.errors import SnnccError, UnsupportedError
from snncc.files import atomic_directory
from snncc.graph import Graph
from snncc.limits import freeing_what_it_leaves

from .builder import ELEM, NP_DTYPE, OPSET, STATELESS_OPS, OnnxBuilder, lower, lower_neuron
from .stream import check_without_weights, tensor, write_model

UNROLLED_FILE = "model.onnx"
STEP_FILE = "model.step.onnx"
BATCH = "batch"
STEP_INDEX = "snncc:t"


def spike_tensor(neuron: str, t: int | None = None) -> str:
    """Name of a neuron's spike tensor: ``<neuron>`` in the step model, ``t<t>/<neuron>`` at
    step t of the unrolled model."""
    return neuron if t is None else f"t{t}/{neuron}"


def _batched(b: OnnxBuilder, name: str, shape, lead=()) -> object:
    return b.value_info(name, [*lead, BATCH, *shape])


def _input_info(b: OnnxBuilder, n: ir.Input, sequence_T: int | None):
    lead = () if n.static or sequence_T is None else (sequence_T,)
    return _batched(b, n.name, n.input_shape, lead)


def _metadata(graph: Graph, form: str, T: int | None, dt: float, dtype: str) -> dict[str, str]:
    inputs = [{"name": n.name, "shape": list(n.input_shape), "static": n.static,
               "kind": n.input_kind.value} for n in graph.inputs]
    return {
        "snncc.form": form, "snncc.T": "" if T is None else str(T), "snncc.dt": repr(float(dt)),
        "snncc.dtype": dtype, "snncc.inputs": json.dumps(inputs),
        "snncc.outputs": json.dumps([n.name for n in graph.outputs]),
        "snncc.output_layout": str(graph.meta.get("output_layout") or ""),
        "snncc.neurons": json.dumps([n.name for n in graph.of_type(ir.Neuron)]),
    }


@dataclass
class ModelParts:
    """A model whose graph has no initializers, and the initializers as arrays: written with
    :func:`stream.write_model` one tensor at a time (the proto never holds every weight)."""

    model: onnx.ModelProto
    weights: dict[str, np.ndarray]
    floats: np.dtype  # the model's float type: wider float weights are cast to it as written

    def whole(self) -> onnx.ModelProto:
        """The model with its initializers (a copy)."""
        out = onnx.ModelProto()
        out.CopyFrom(self.model)
        out.graph.initializer.extend(tensor(k, a, self.floats) for k, a in self.weights.items())
        return out


def _model(b: OnnxBuilder, name: str, inputs, outputs, meta: dict[str, str]) -> ModelParts:
    nodes, weights = _widened_when_loaded(b)
    g = helper.make_graph(nodes, name, inputs, outputs)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="snncc")
    helper.set_model_props(model, meta)
    return ModelParts(model, weights, NP_DTYPE[b.dtype])


#: Appended to the initializer name of a float32 weight stored in a float64 model
STORED_FLOAT32 = ":float32"


def _widened_when_loaded(b: OnnxBuilder) -> tuple[list, dict[str, np.ndarray]]:
    """The graph's nodes and initializers, where in a float64 model each float32 array (a
    float32 model's synapse weights, kept so by the IR) is stored as float32 and widened by a
    ``Cast`` node before the graph's nodes: exact, as every float32 is a float64; onnxruntime
    folds the casts into float64 weights as it loads the model; the file holds half the bytes
    of those weights (15M Meta-SpikeFormer: 60 and 59 MiB per model, 117 and 116 MiB before)."""
    if not b.double:
        return b.nodes, b.initializers
    casts, weights = [], {}
    for name, a in b.initializers.items():
        if a.dtype == np.float32:
            stored = name + STORED_FLOAT32
            if stored in b.initializers:
                raise SnnccError(f"ONNX initializer name {stored!r} is taken")
            weights[stored] = a
            casts.append(helper.make_node("Cast", [stored], [name], name=stored,
                                          to=onnx.TensorProto.DOUBLE))
        else:
            weights[name] = a
    return casts + b.nodes, weights


def _check_supported(graph: Graph) -> None:
    stateful = {"Input", "Neuron", "Delay", "Readout"}
    bad = [n for n in graph if n.op not in STATELESS_OPS | stateful]
    if bad:
        raise UnsupportedError("the ONNX back-end cannot express: " + "; ".join(
            f"{n.name} ({n.op}{', ' + n.path if n.path else ''})" for n in bad))


def _resolve_dt(graph: Graph, dt: float | None) -> float:
    return float(dt if dt is not None else graph.meta.get("dt", nrn.DEFAULT_DT))


# ----------------------------------------------------------------------------- step model


def build_step_model(graph: Graph, dtype: str = "float64", dt: float | None = None,
                     T: int | None = None) -> onnx.ModelProto:
    """The single-step model (see the module docstring)."""
    return _step_parts(graph, dtype, dt, T).whole()


def _step_parts(graph: Graph, dtype: str, dt: float | None, T: int | None) -> ModelParts:
    graph.verify()
    _check_supported(graph)
    b = OnnxBuilder(graph, dtype)
    order = graph.topological_order()
    inputs = [_input_info(b, n, None) for n in graph.inputs]
    state_in, state_out, state_meta, updates = [], [], [], []
    has_readout = bool(graph.of_type(ir.Readout))
    if has_readout:
        inputs_t = helper.make_tensor_value_info(STEP_INDEX, onnx.TensorProto.INT64, [])
        t_plus_1 = b.op("Cast", [b.op("Add", [STEP_INDEX, b.ints([1])])], to=b.elem)

    def state(name, shape, init, lead=()):
        state_in.append(_batched(b, name, shape, lead))
        state_out.append(_batched(b, f"{name}.next", shape, lead))
        state_meta.append({"name": name, "shape": [*lead, *shape], "batch_axis": len(lead),
                           "init": np.asarray(init, dtype=np.float64).tolist()})

    for n in order:
        args = list(n.inputs)
        if isinstance(n, ir.Input):
            continue
        if isinstance(n, ir.Neuron):
            state(f"{n.name}:v", n.shape, n.v_init)
            lower_neuron(b, n, args[0], f"{n.name}:v", n.name, f"{n.name}:v.next")
        elif isinstance(n, ir.Delay):
            fifo = f"{n.name}:fifo"
            state(fifo, n.shape, 0.0, lead=(n.steps,))
            b.op("Squeeze", [b.op("Slice", [fifo, b.ints([0]), b.ints([1])]), b.ints([0])], n.name)
            updates.append(n)
        elif isinstance(n, ir.Readout):
            acc = f"{n.name}:acc"
            state(acc, n.shape, 0.0)
            b.op("Div", [b.op("Add", [acc, args[0]], f"{acc}.next"), t_plus_1], n.name)
        else:
            lower(b, n, args, n.name)
    for n in updates:  # FIFOs shift once every node of the step has been computed
        fifo, new = f"{n.name}:fifo", b.op("Unsqueeze", [n.inputs[0], b.ints([0])])
        rest = b.op("Slice", [fifo, b.ints([1]), b.ints([n.steps])])
        b.op("Concat", [rest, new], f"{fifo}.next", axis=0)
    outputs = [_batched(b, n.name, n.shape) for n in graph.outputs]
    meta = _metadata(graph, "step", T if T is not None else graph.meta.get("T"),
                     _resolve_dt(graph, dt), dtype)
    meta["snncc.state"] = json.dumps(state_meta)
    all_inputs = inputs + state_in + ([inputs_t] if has_readout else [])
    return _model(b, f"{graph.name}.step", all_inputs, outputs + state_out, meta)


# ----------------------------------------------------------------------------- unrolled model


def build_unrolled_model(graph: Graph, T: int | None = None, dtype: str = "float64",
                         dt: float | None = None) -> onnx.ModelProto:
    """The model unrolled over T steps, its stateless layers time-folded (module docstring)."""
    return _unrolled_parts(graph, T, dtype, dt).whole()


def _unrolled_parts(graph: Graph, T: int | None, dtype: str, dt: float | None) -> ModelParts:
    from snncc.simulator import plan  # here: its torch import is no cost the runner should pay

    graph.verify()
    _check_supported(graph)
    T = int(T if T is not None else graph.meta.get("T", 0))
    if T < 1:
        raise SnnccError("the unrolled ONNX model needs T >= 1 (pass T or set graph.meta['T'])")
    b = OnnxBuilder(graph, dtype)
    vals = _Values(b, graph, T)
    p = plan(graph)
    for cyclic, nodes in p.units:
        n = nodes[0]
        if isinstance(n, ir.Input):
            vals.add_input(n)
        elif isinstance(n, ir.Output):
            for t, name in enumerate([f"t{t}/{n.name}" for t in range(T - 1)] + [n.name]):
                b.op("Identity", [vals.at(n.inputs[0], t)], name)
        elif n.name in p.static:  # stateless, from static inputs alone: once, on [B, ...]
            vals.static[n.name] = lower(b, n, list(n.inputs), n.name)
        elif not cyclic and n.op in STATELESS_OPS and not _im2col(b, n):
            vals.fold[n.name] = lower(b, n, [vals.folded(i) for i in n.inputs], f"T/{n.name}")
        else:  # neurons, delays, readouts, the nodes of a cycle and im2col step through time
            for nd in nodes:
                vals.steps[nd.name] = []
            for t in range(T):
                for nd in nodes:
                    vals.steps[nd.name].append(_step(b, vals, nd, t))
    inputs = [_input_info(b, n, T) for n in graph.inputs]
    outputs = [_batched(b, n.name, n.shape) for n in graph.outputs]
    meta = _metadata(graph, "unrolled", T, _resolve_dt(graph, dt), dtype)
    return _model(b, f"{graph.name}.unrolled", inputs, outputs, meta)


def _im2col(b: OnnxBuilder, n: ir.Node) -> bool:
    """A float64 convolution or average pool with a window (im2col, see builder): left step by
    step, as im2col over T steps at once takes T times the memory (15M at batch 32: GBs) and
    ran slower than T calls (measured, benchmarks/bench_onnx_speed.py)."""
    if not b.double or n.op not in ("Conv1d", "Conv2d", "AvgPool2d"):
        return False
    return math.prod(n.kernel_size if n.op == "AvgPool2d" else n.weight.shape[2:]) > 1


class _Values:
    """Each node's value over the T steps in one of three forms: ``static`` (one ``[B, ...]``
    tensor, the same at every step), ``fold`` (``[T * B, ...]``, time folded into the batch
    axis step-major: sample b of step t at t * B + b) or ``steps`` (T tensors ``[B, ...]``,
    ``t<t>/<node>``). The form a reader needs is made on first use (Concat on the batch axis,
    Split into steps) and kept. ``state``: each neuron's membrane and each readout's running
    sum after the last step emitted."""

    def __init__(self, b: OnnxBuilder, graph: Graph, T: int):
        self.b, self.T = b, T
        self.static: dict[str, str] = {}
        self.fold: dict[str, str] = {}
        self.steps: dict[str, list[str]] = {}
        self.state: dict[str, str] = {}
        self.zeros = _zeros_factory(b, graph)

    def add_input(self, n: ir.Input) -> None:
        if n.static:
            self.static[n.name] = n.name
        else:  # [T, B, *s] -> [T * B, *s]: step-major already, so a plain reshape
            self.fold[n.name] = self.b.op("Reshape", [n.name, self.b.ints([-1, *n.shape])],
                                          f"T/{n.name}")

    def folded(self, name: str) -> str:
        if name not in self.fold:
            parts = [self.static[name]] * self.T if name in self.static else self.steps[name]
            self.fold[name] = self.b.op("Concat", parts, f"T/{name}", axis=0)
        return self.fold[name]

    def at(self, name: str, t: int) -> str:
        """The value of ``name`` at step t."""
        if name in self.static:
            return self.static[name]
        if name not in self.steps:  # folded only: split it once into its T steps
            self.steps[name] = [f"t{s}/{name}" for s in range(self.T)]
            self.b.split(self.fold[name], self.steps[name])
        return self.steps[name][t]


def _step(b: OnnxBuilder, vals: _Values, n: ir.Node, t: int) -> str:
    """Node ``n``'s value at step t: a neuron, delay or readout, or a node of a cycle."""
    out = f"t{t}/{n.name}"
    if isinstance(n, ir.Delay):
        return vals.at(n.inputs[0], t - n.steps) if t >= n.steps else vals.zeros(n)
    args = [vals.at(i, t) for i in n.inputs]
    if isinstance(n, ir.Neuron):
        v = vals.state.get(n.name) or b.param(n, "v_init")
        vals.state[n.name] = f"{out}:v"
        lower_neuron(b, n, args[0], v, out, vals.state[n.name])
        return out
    if isinstance(n, ir.Readout):
        acc = args[0] if t == 0 else b.op("Add", [vals.state[n.name], args[0]], f"{out}:acc")
        vals.state[n.name] = acc
        return b.op("Div", [acc, b.const(f"snncc:steps{t + 1}", t + 1)], out)
    return lower(b, n, args, out)


def _zeros_factory(b: OnnxBuilder, graph: Graph):
    """node -> zeros [B, *node.shape] (a Delay's output before its first input arrives); the
    batch size is read from the first input's shape at run time."""
    first = graph.inputs[0]
    axis = 0 if first.static else 1
    cache: dict[tuple, str] = {}

    def zeros(n: ir.Node) -> str:
        if not cache:
            b.op("Shape", [first.name], "snncc:batch", start=axis, end=axis + 1)
        if n.shape not in cache:
            dims = b.op("Concat", ["snncc:batch", b.ints(n.shape)], axis=0)
            value = helper.make_tensor("zero", b.elem, [1], [0.0])
            cache[n.shape] = b.op("ConstantOfShape", [dims], value=value)
        return cache[n.shape]
    return zeros


# ----------------------------------------------------------------------------- traces, emitter


def with_traces(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose every neuron spike tensor (per step in the unrolled form) is
    also a graph output, for layer-by-layer parity checks; in the unrolled form, so is every
    output's value at the steps before the last (``t<t>/<output>``)."""
    meta = {p.key: p.value for p in model.metadata_props}
    neurons = json.loads(meta["snncc.neurons"])
    steps = [None] if meta["snncc.form"] == "step" else range(int(meta["snncc.T"]))
    names = [spike_tensor(n, t) for n in neurons for t in steps]
    if meta["snncc.form"] != "step":
        names += output_steps(model, meta)
    elem = ELEM[meta["snncc.dtype"]]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    have = {o.name for o in out.graph.output}
    out.graph.output.extend(helper.make_tensor_value_info(name, elem, None)
                            for name in dict.fromkeys(names) if name not in have)
    return out


def output_steps(model: onnx.ModelProto, meta: dict) -> list[str]:
    """The unrolled model's tensors ``t<t>/<output>``, t < T - 1 (none in a model written
    before they existed)."""
    made = {o for n in model.graph.node for o in n.output}
    T = int(meta["snncc.T"])
    return [f"t{t}/{o}" for o in json.loads(meta["snncc.outputs"]) for t in range(T - 1)
            if f"t{t}/{o}" in made]


def emit_onnx(graph: Graph, out, T: int | None = None, dtype: str = "float64",
              dt: float | None = None, trace: bool = False) -> Path:
    """The ``onnx`` target: write ``model.onnx`` (unrolled over T) and ``model.step.onnx`` into
    the directory ``out``, atomically. ``dtype``: ``float64`` (the default: spikes exactly as
    the reference simulator's) or ``float32`` (faster; rounding may flip spikes whose membrane
    lies within float32 precision of the threshold), recorded as ``snncc.dtype``. ``trace``
    also exposes every neuron's spikes as outputs."""
    builders = {UNROLLED_FILE: lambda: _unrolled_parts(graph, T, dtype, dt),
                STEP_FILE: lambda: _step_parts(graph, dtype, dt, T)}

    def fill(tmp: Path) -> None:
        for fname, build in builders.items():
            parts = build()
            if trace:  # the traced outputs have no declared shape, which the check requires
                parts.model = with_traces(parts.model)
            else:  # the checker leaves ~15 MB (15M model) in small blocks glibc would keep
                with freeing_what_it_leaves():
                    check_without_weights(parts.model, parts.weights, parts.floats)
            with open(tmp / fname, "xb") as f:
                write_model(parts.model, parts.weights, f, parts.floats)
            del parts  # before the next model is built
    return atomic_directory(out, fill, target="onnx")
