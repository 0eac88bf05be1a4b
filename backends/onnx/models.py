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
* **unrolled** (``model.onnx``): the step graph repeated T times with the state wired from
  step to step; inputs ``[T, B, *shape]`` (static inputs ``[B, *shape]``), outputs the model
  outputs at the last step. Each output's value at an earlier step t is the tensor
  ``t<t>/<output>`` (which :func:`with_traces` exposes).

Both carry ``snncc.form``, ``snncc.T``, ``snncc.dt``, ``snncc.dtype`` (the arithmetic of every
tensor: ``float64``, the default, or ``float32``), ``snncc.inputs`` (name, shape, static, kind),
``snncc.outputs``, ``snncc.output_layout`` (the traced model's output layout, ``graph.meta
['output_layout']``: ``TB``, ``BT`` or ``T*B`` for an output per step, ``B`` for one value; ''
when unknown) and ``snncc.neurons`` (the IR neurons, whose spikes :func:`with_traces` exposes)
in ``metadata_props``. The batch axis is symbolic (``batch``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from snncc import ir
from snncc import neuron as nrn
from snncc.errors import SnnccError, UnsupportedError
from snncc.files import atomic_directory
from snncc.graph import Graph

from .builder import ELEM, OPSET, STATELESS_OPS, OnnxBuilder, lower, lower_neuron

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


def _model(b: OnnxBuilder, name: str, inputs, outputs, meta: dict[str, str]) -> onnx.ModelProto:
    g = helper.make_graph(b.nodes, name, inputs, outputs)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="snncc")
    helper.set_model_props(model, meta)
    for key, array in b.initializers.items():  # straight into the model: make_graph and
        _put_initializer(model.graph, key, array)  # make_model would copy each weight twice
    return model


def _put_initializer(graph: onnx.GraphProto, name: str, array: np.ndarray) -> None:
    """``numpy_helper.from_array`` (numeric, little-endian raw data) written in place."""
    t = graph.initializer.add()
    t.name = name
    t.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
    t.dims.extend(array.shape)
    t.raw_data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def save_checked(build: Callable[[], onnx.ModelProto], path: Path, check: bool = True) -> None:
    """Build a model, write it to ``path`` and check the file (``full_check``), holding one
    copy of the weights at a time where it can: checking the proto in memory would
    serialize it again beside the proto."""
    data = build().SerializeToString()
    path.write_bytes(data)
    del data
    if check:
        onnx.checker.check_model(str(path), full_check=True)


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
    """The model unrolled over T steps (see the module docstring)."""
    graph.verify()
    _check_supported(graph)
    T = int(T if T is not None else graph.meta.get("T", 0))
    if T < 1:
        raise SnnccError("the unrolled ONNX model needs T >= 1 (pass T or set graph.meta['T'])")
    b = OnnxBuilder(graph, dtype)
    order = graph.topological_order()
    batch_zeros = _zeros_factory(b, graph)
    seq_inputs = {n.name: _step_slicer(b, n) for n in graph.inputs}
    prev: dict[str, str] = {}  # neuron -> membrane, readout -> running sum, after step t-1
    history: dict[str, list[str]] = {n.name: [] for n in order}

    for t in range(T):
        names: dict[str, str] = {}
        for n in order:
            out = n.name if (isinstance(n, ir.Output) and t == T - 1) else f"t{t}/{n.name}"
            args = [names.get(i) for i in n.inputs]
            if isinstance(n, ir.Input):
                out = seq_inputs[n.name](t)
            elif isinstance(n, ir.Neuron):
                v = prev.get(n.name) or b.param(n, "v_init")
                prev[n.name] = f"{out}:v"
                lower_neuron(b, n, args[0], v, out, prev[n.name])
            elif isinstance(n, ir.Delay):
                src = history[n.inputs[0]]
                out = src[t - n.steps] if t >= n.steps else batch_zeros(n)
            elif isinstance(n, ir.Readout):
                acc = args[0] if t == 0 else b.op("Add", [prev[n.name], args[0]], f"{out}:acc")
                prev[n.name] = acc
                b.op("Div", [acc, b.const(f"snncc:steps{t + 1}", t + 1)], out)
            elif isinstance(n, ir.Output) and t < T - 1:
                b.op("Identity", args, out)  # only the last step's value is a model output
            else:
                lower(b, n, args, out)
            names[n.name] = out
            history[n.name].append(out)
    inputs = [_input_info(b, n, T) for n in graph.inputs]
    outputs = [_batched(b, n.name, n.shape) for n in graph.outputs]
    meta = _metadata(graph, "unrolled", T, _resolve_dt(graph, dt), dtype)
    return _model(b, f"{graph.name}.unrolled", inputs, outputs, meta)


def _step_slicer(b: OnnxBuilder, n: ir.Input):
    """t -> the tensor of input ``n`` at step t (a static input is the same at every step)."""
    if n.static:
        return lambda t: n.name
    return lambda t: b.op("Squeeze", [b.op("Slice", [n.name, b.ints([t]), b.ints([t + 1])]),
                                      b.ints([0])], f"t{t}/{n.name}")


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
    made = {n.output[0] for n in model.graph.node}
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
    builders = {UNROLLED_FILE: lambda: build_unrolled_model(graph, T, dtype, dt),
                STEP_FILE: lambda: build_step_model(graph, dtype, dt, T)}

    def fill(tmp: Path) -> None:
        for fname, build in builders.items():  # one at a time: each holds every weight
            # the traced outputs have no declared shape, which the full check requires
            save_checked(lambda: with_traces(build()) if trace else build(), tmp / fname,
                         check=not trace)
    return atomic_directory(out, fill, target="onnx")
