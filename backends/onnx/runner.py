"""Running snncc's ONNX models in onnxruntime, with the simulator's input conventions and
per-neuron spike traces for layer-by-layer parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from snncc.errors import FormatError, ShapeError, SnnccError

from .builder import NP_DTYPE
from .models import (BATCH, STEP_FILE, STEP_INDEX, UNROLLED_FILE, output_steps,
                     spike_tensor, with_traces)


def _file(path_or_dir, form: str) -> Path:
    path = Path(path_or_dir)
    return path / (STEP_FILE if form == "step" else UNROLLED_FILE) if path.is_dir() else path


#: what onnxruntime raises for a model it cannot load or run (its own exception types)
ORT_ERRORS = tuple(getattr(ort.capi.onnxruntime_pybind11_state, name) for name in (
    "Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
    "InvalidProtobuf", "NotImplemented", "InvalidGraph", "EPFail"))


def _load(path_or_dir, form: str) -> tuple[onnx.ModelProto, dict[str, str], Path]:
    """The model, its checked snncc metadata and its path."""
    path = _file(path_or_dir, form)
    try:
        model = onnx.load_model(path)
    except (OSError, ValueError, DecodeError, onnx.checker.ValidationError) as e:
        raise FormatError(f"{path}: not a readable ONNX model ({e})") from None
    if not any(p.key == "snncc.form" for p in model.metadata_props):
        raise FormatError(f"{path}: not an ONNX model written by snncc (no snncc.form metadata)")
    return model, _checked_metadata(model, path), path


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _checked_metadata(model: onnx.ModelProto, path: Path) -> dict[str, str]:
    """The model's ``snncc.*`` metadata, each entry checked to be what the emitter writes and
    to agree with the graph (declared shapes, input, output and spike tensor names), so that a
    file changed by hand or by another tool is refused naming the entry, not run on what its
    metadata claims (a state's shape is allocated as declared)."""
    meta = {p.key: p.value for p in model.metadata_props}

    def refuse(key: str, what: str):
        value = meta.get(key)
        got = "nothing" if value is None else repr(value if len(value) <= 80 else
                                                   value[:77] + "...")
        raise FormatError(f"{path}: metadata '{key}' must be {what}, got {got}")

    def parsed(key: str, what: str, valid) -> object:
        try:
            value = json.loads(meta[key])
        except (KeyError, ValueError):
            refuse(key, what)
        if not valid(value):
            refuse(key, what)
        return value

    def names(value) -> bool:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)

    form = meta["snncc.form"]
    if form not in ("unrolled", "step"):
        refuse("snncc.form", "'unrolled' or 'step'")
    if meta.get("snncc.dtype") not in NP_DTYPE:
        refuse("snncc.dtype", f"one of {sorted(NP_DTYPE)}")
    T = meta.get("snncc.T")
    if not (T is not None and (T.isascii() and T.isdigit() and int(T) > 0 or T == "" and form == "step")):
        refuse("snncc.T", "a positive number of steps" + (" or empty" if form == "step" else ""))
    graph_inputs = {i.name: _dims(i) for i in model.graph.input}
    lead = [int(T)] if form == "unrolled" else []

    def declared(key: str, name: str, dims: list) -> None:
        if graph_inputs.get(name) != dims:
            refuse(key, f"the graph's inputs (its '{name}' is "
                        f"{graph_inputs.get(name, 'no input')}, not {dims})")

    spec = {"name": str, "shape": list, "static": bool}
    for s in parsed("snncc.inputs", "a JSON list of inputs (name, shape, static)",
                    lambda v: isinstance(v, list) and v and all(
                        isinstance(s, dict) and all(isinstance(s.get(k), t)
                                                    for k, t in spec.items())
                        and _is_shape(s["shape"]) for s in v)):
        declared("snncc.inputs", s["name"],
                 [*([] if s["static"] else lead), BATCH, *s["shape"]])
    graph_outputs = {o.name for o in model.graph.output}
    parsed("snncc.outputs", "a JSON list of the graph's output names",
           lambda v: names(v) and v and set(v) <= graph_outputs)
    made = {o for n in model.graph.node for o in n.output}
    steps = [None] if form == "step" else range(int(T))
    parsed("snncc.neurons", "a JSON list of neurons whose spike tensors the graph computes",
           lambda v: names(v) and all(spike_tensor(n, t) in made for n in v for t in steps))
    if form == "step":
        for s in parsed("snncc.state", "a JSON list of states (name, shape, batch_axis, init)",
                        lambda v: isinstance(v, list) and all(_state(s) for s in v)):
            dims = list(s["shape"])
            dims.insert(s["batch_axis"], BATCH)
            declared("snncc.state", s["name"], dims)
            if f"{s['name']}.next" not in graph_outputs:
                refuse("snncc.state", f"states the graph outputs ('{s['name']}.next' is none)")
    return meta


def _is_shape(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)


def _state(s) -> bool:
    """A ``snncc.state`` entry as the emitter writes it: its init broadcastable to its shape."""
    if not (isinstance(s, dict) and isinstance(s.get("name"), str) and _is_shape(s.get("shape"))
            and isinstance(s.get("batch_axis"), int)
            and 0 <= s["batch_axis"] <= len(s["shape"])):
        return False
    try:
        init = np.asarray(s.get("init"), dtype=np.float64)
        return np.broadcast_shapes(init.shape, tuple(s["shape"])) == tuple(s["shape"])
    except (TypeError, ValueError):
        return False


def read_metadata(path_or_dir, form: str = "unrolled") -> dict[str, str]:
    """The ``metadata_props`` of an snncc ONNX model (``snncc.dtype``, ``snncc.output_layout``
    ...), read without decoding its graph and weights ({} for a file that is not one)."""
    try:
        import mmap

        with open(_file(path_or_dir, form), "rb") as f, \
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _top_level_metadata(buf)
    except (OSError, ValueError, IndexError, DecodeError):
        return {}


def read_graph_meta(artifact) -> dict:
    """The graph metadata the target cares about (``output_layout``), from the model's
    metadata alone."""
    return {"output_layout": read_metadata(artifact).get("snncc.output_layout")}


def _varint(buf, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _top_level_metadata(buf) -> dict[str, str]:
    """ModelProto's field 14 (metadata_props) from the serialized bytes, skipping the other
    fields (the graph and its weights) by their lengths."""
    meta, i = {}, 0
    while i < len(buf):
        tag, i = _varint(buf, i)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            if field == 14:
                entry = onnx.StringStringEntryProto.FromString(bytes(buf[i:i + size]))
                meta[entry.key] = entry.value
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    return meta


#: ``optimization`` levels of :func:`session` (onnxruntime's graph optimisation levels)
OPTIMIZATION = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def session(model: onnx.ModelProto, threads: int = 1, optimization: str = "all",
            arena: bool = True) -> ort.InferenceSession:
    """An onnxruntime session: ``threads`` intra-op CPU threads (default one: parity runs are
    small, and onnxruntime's spinning thread pool only competes with everything else on a shared
    machine; 0 lets onnxruntime choose), graph optimisations at ``optimization`` (a key of
    :data:`OPTIMIZATION`), on CUDA where an onnxruntime with the CUDA provider is installed
    (ops it lacks fall back to the CPU). ``arena``: onnxruntime's CPU memory arena, which keeps
    what it once allocated for reuse (faster; without it a run holds only its live tensors)."""
    if optimization not in OPTIMIZATION:
        raise SnnccError(f"optimization must be one of {list(OPTIMIZATION)}, got {optimization!r}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = int(threads)
    opts.graph_optimization_level = OPTIMIZATION[optimization]
    opts.enable_cpu_mem_arena = arena
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(model.SerializeToString(), opts, providers=providers)


def _inputs(meta: dict, inputs, T: int | None, dtype) -> tuple[dict[str, np.ndarray], int]:
    """Validate and cast the inputs (array or dict by name); returns them and T."""
    specs = json.loads(meta["snncc.inputs"])
    if not isinstance(inputs, dict):
        if len(specs) != 1:
            raise SnnccError(f"model has {len(specs)} inputs; pass a dict by name")
        inputs = {specs[0]["name"]: inputs}
    out = {}
    for s in specs:
        if s["name"] not in inputs:
            raise SnnccError(f"missing input '{s['name']}'")
        x = np.asarray(inputs[s["name"]], dtype=dtype)
        lead = 1 if s["static"] else 2
        if x.ndim != lead + len(s["shape"]) or list(x.shape[lead:]) != s["shape"]:
            layout = "[B, " if s["static"] else "[T, B, "
            raise ShapeError(f"input '{s['name']}' must be {layout}"
                             f"{', '.join(map(str, s['shape']))}], got {x.shape}")
        if not s["static"]:
            if T is not None and x.shape[0] != T:
                raise ShapeError(f"input '{s['name']}' has {x.shape[0]} steps, T={T}")
            T = x.shape[0]
        out[s["name"]] = x
    if T is None:
        T = int(meta["snncc.T"]) if meta.get("snncc.T") else None
    if T is None:
        raise SnnccError("T is unknown: pass T (every input is static)")
    return out, int(T)


def _batch(xs: dict[str, np.ndarray], meta: dict) -> int:
    spec = json.loads(meta["snncc.inputs"])[0]
    return xs[spec["name"]].shape[0 if spec["static"] else 1]


def run_onnx(path_or_dir, inputs, T: int | None = None, form: str = "unrolled",
             trace: bool = True, threads: int = 1, optimization: str = "all"
             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Run an snncc ONNX model in onnxruntime.

    ``path_or_dir``: a ``.onnx`` file, or the directory the emitter wrote (``form`` picks
    ``model.onnx``, "unrolled", or ``model.step.onnx``, "step"). ``inputs`` as for the
    simulator: an array (single input) or a dict by input name, sequences ``[T, B, ...]`` and
    static inputs ``[B, ...]``. Returns ``(outputs, traces)``: each IR Output's value at the
    last step ``[B, ...]``, and (``trace``) each neuron's spikes and each Output's value at
    every step, ``[T, B, ...]``, keyed by IR node name. Arrays are in the model's dtype
    (``snncc.dtype``). ``threads``, ``optimization``: the session's (:func:`session`)."""
    model, meta, path = _load(path_or_dir, form)
    dtype = NP_DTYPE[meta["snncc.dtype"]]
    xs, T = _inputs(meta, inputs, T, dtype)
    if meta["snncc.form"] == "unrolled" and T != int(meta["snncc.T"]):
        raise ShapeError(f"the unrolled model has T={meta['snncc.T']}, got T={T}")
    if trace:
        model = with_traces(model)
    try:  # (its inputs are checked: what onnxruntime refuses now is in the file)
        # a traced run is a parity check's, whose batch is sized to the memory budget by live
        # values: without the arena the 15M model at 224x224, batch 4, float64 peaks at
        # 3.7 GiB, not 5.1 GiB (in 15-25% more time)
        sess = session(model, threads, optimization, arena=not trace)
        if meta["snncc.form"] == "step":
            return _run_step(sess, meta, xs, T, trace, dtype)
        names = [o.name for o in sess.get_outputs()]
        res = dict(zip(names, sess.run(None, xs)))
    except ORT_ERRORS as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FormatError(f"{path}: onnxruntime cannot run this model ({first})") from None
    outputs = {k: res[k] for k in json.loads(meta["snncc.outputs"])}
    # each step's array is dropped as its trace is stacked: one copy of the traces, not two
    traces = {n: np.stack([res.pop(spike_tensor(n, t)) for t in range(T)])
              for n in json.loads(meta["snncc.neurons"])} if trace else {}
    if trace and (T == 1 or output_steps(model, meta)):
        traces.update({o: np.stack([res.pop(f"t{t}/{o}") for t in range(T - 1)] + [v])
                       for o, v in outputs.items()})
    return outputs, traces


def initial_state(meta: dict, batch: int, dtype) -> dict[str, np.ndarray]:
    """The step model's state at t = 0 (membranes at v_init, empty FIFOs, zero sums)."""
    state = {}
    for s in json.loads(meta["snncc.state"]):
        shape = list(s["shape"])
        shape.insert(s["batch_axis"], batch)
        state[s["name"]] = np.broadcast_to(np.asarray(s["init"], dtype=dtype), shape).copy()
    return state


def _run_step(sess, meta, xs, T, trace, dtype):
    specs = {s["name"]: s for s in json.loads(meta["snncc.inputs"])}
    state = initial_state(meta, _batch(xs, meta), dtype)
    wants_t = any(i.name == STEP_INDEX for i in sess.get_inputs())
    names = [o.name for o in sess.get_outputs()]
    outs, spikes = {}, {n: [] for n in json.loads(meta["snncc.neurons"])} if trace else {}
    out_seq = {k: [] for k in json.loads(meta["snncc.outputs"])}
    for t in range(T):
        feed = {k: (x if specs[k]["static"] else x[t]) for k, x in xs.items()}
        feed.update(state)
        if wants_t:
            feed[STEP_INDEX] = np.asarray(t, dtype=np.int64)
        res = dict(zip(names, sess.run(None, feed)))
        state = {k: res[f"{k}.next"] for k in state}
        outs = {k: res[k] for k in json.loads(meta["snncc.outputs"])}
        for n in spikes:
            spikes[n].append(res[spike_tensor(n)])
        for k in out_seq if trace else ():
            out_seq[k].append(outs[k])
    return outs, {k: np.stack(v) for k, v in {**spikes, **out_seq}.items() if v}
