"""Building the Lava processes of a lowered network (or of an artifact directory, without the
PyTorch model) and running them in ``Loihi2SimCfg`` (floating_pt; fixed_pt for the chip of a
graph quantized by ``quantize_for_loihi2``, whose artifact says ``"arithmetic": "loihi2"``).

``build`` returns the processes and a :class:`LavaIO` to connect one's own sources and sinks;
``run_network`` / ``run_artifact`` drive a whole batch and hand back outputs and per-node traces
in the simulator's layout ([T, B, ...], IR time), the latency already removed.

Batch layout: the samples follow each other in one Lava run, ``period`` = T + latency steps
apart. Sample b's input is presented at steps b * period + [0, T); a node of depth d shows its
IR step t at step b * period + d + t. Lava's Dense/Conv/LIF are not vectorised over a batch axis
(Dense takes one vector), so time is the batch axis; the processes are built once per run.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from snncc.errors import ShapeError, SnnccError
from snncc.limits import nbytes, positive_int, require_fits

from . import processes as custom
from .compat import lava
from .lower import CUSTOM_NEURON, FIXED_NEURON, LavaNet, ProcSpec

RECORD_BUFFER = 32  # steps the recorder may run ahead of the host reading them


# ---------------------------------------------------------------------------- process factories
# A process whose params say ``fixed_pt`` (the chip of a quantized graph) gets its fixed_pt
# model: Lava's bit-accurate Dense / Sparse / LIFReset, snncc's exact integer Conv model and the
# int32 models of the custom processes; the host's processes stay floating_pt.
def _fixed(s: ProcSpec) -> bool:
    return bool(s.params.get("fixed_pt", False))


def _conv(s: ProcSpec, period: int):
    p = s.params
    proc = lava(".proc.conv.process").Conv(
        weight=s.arrays["weight"], input_shape=tuple(p["input_shape"]),
        padding=tuple(p["padding"]), stride=tuple(p["stride"]), dilation=tuple(p["dilation"]),
        groups=p["groups"], num_message_bits=p["num_message_bits"], name=s.name)
    return proc, custom.PyVectorConvModelFixed if _fixed(s) else custom.PyVectorConvModel


def _weight_args(s: ProcSpec) -> dict:
    """Lava's Dense / Sparse arguments of a fixed-point synapse's 8-bit mantissas."""
    if not _fixed(s):
        return {}
    sign_mode = lava(".utils.weightutils").SignMode[s.params["sign_mode"]]
    return {"weight_exp": s.params["weight_exp"], "num_weight_bits": s.params["num_weight_bits"],
            "sign_mode": sign_mode}


def _dense(s: ProcSpec, period: int):
    proc = lava(".proc.dense.process").Dense(
        weights=s.arrays["weights"], num_message_bits=s.params["num_message_bits"], name=s.name,
        **_weight_args(s))
    models = lava(".proc.dense.models")
    return proc, models.PyDenseModelBitAcc if _fixed(s) else models.PyDenseModelFloat


def _sparse(s: ProcSpec, period: int):
    from scipy import sparse

    w = s.arrays["weights"]
    w = sparse.kron(sparse.identity(s.params["blocks"], dtype=w.dtype), w, format="csr")
    proc = lava(".proc.sparse.process").Sparse(
        weights=w, num_message_bits=s.params["num_message_bits"], name=s.name, **_weight_args(s))
    models = lava(".proc.sparse.models")
    return proc, models.PySparseModelBitAcc if _fixed(s) else models.PySparseModelFloat


def _lif(s: ProcSpec, period: int):
    """Lava's LIFReset zeroes u and v when time_step % period == offset, before integrating
    that step; time_step counts from 1, so offset = start + 1 resets at local step ``start``.
    Fixed point: integer du, dv, vth, bias_mant, bias_exp and the bit-accurate model."""
    p = s.params
    extra = {"bias_exp": s.arrays["bias_exp"]} if _fixed(s) else {}
    proc = lava(".proc.lif.process").LIFReset(
        shape=tuple(s.shape), du=p["du"], dv=p["dv"], vth=p["vth"],
        bias_mant=s.arrays["bias_mant"], reset_interval=period,
        reset_offset=(p["start"] + 1) % period, name=s.name, **extra)
    models = lava(".proc.lif.models")
    return proc, models.PyLifResetModelBitAcc if _fixed(s) else models.PyLifResetModelFloat


def _loihi2_lif(s: ProcSpec, period: int):
    p = s.params
    return custom.Loihi2LIF(shape=tuple(s.shape), params=s.arrays, du=p["du"], reset=p["reset"],
                            period=period, start=p["start"], name=s.name), \
        custom.PyLoihi2LIFModel


def _canonical_lif(s: ProcSpec, period: int):
    p = s.params
    return custom.CanonicalLIF(shape=tuple(s.shape), params=s.arrays, cmp=p["cmp"],
                               reset=p["reset"], period=period, start=p["start"], name=s.name), \
        custom.PyCanonicalLIFModel


def _unary(s: ProcSpec, period: int):
    p = s.params
    model = custom.PyUnaryOpModel
    if _fixed(s):
        model = custom.PyEncoderModel if p["op"] == "Encode" else custom.PyUnaryOpModelFixed
    return custom.UnaryOp(op=p["op"], shape_in=tuple(p["shape_in"]), shape=tuple(s.shape),
                          attrs={**p["attrs"], **s.arrays}, name=s.name), model


def _binary(s: ProcSpec, period: int):
    p = s.params
    return custom.BinaryOp(op=p["op"], shape_a=tuple(p["shape_a"]), shape_b=tuple(p["shape_b"]),
                           shape=tuple(s.shape), attrs=dict(p["attrs"]), name=s.name), \
        custom.PyBinaryOpModelFixed if _fixed(s) else custom.PyBinaryOpModel


def _delay(s: ProcSpec, period: int):
    p = s.params
    return custom.Delay(shape=tuple(s.shape), steps=p["steps"], period=period,
                        clear_at=p["clear_at"], name=s.name), \
        custom.PyDelayModelFixed if _fixed(s) else custom.PyDelayModel


def _readout(s: ProcSpec, period: int):
    return custom.Readout(shape=tuple(s.shape), period=period, start=s.params["start"],
                          name=s.name), custom.PyReadoutModel


FACTORIES = {
    "Conv": _conv, "Dense": _dense, "Sparse": _sparse, "LIFReset": _lif,
    CUSTOM_NEURON: _canonical_lif, FIXED_NEURON: _loihi2_lif, "UnaryOp": _unary,
    "BinaryOp": _binary, "Delay": _delay, "Readout": _readout,
}


# ---------------------------------------------------------------------------- building
def _through(port, transforms) -> object:
    """A Lava port seen through virtual-port transforms."""
    for kind, arg in transforms:
        port = port.reshape(tuple(arg)) if kind == "reshape" else port.transpose(list(arg))
    return port


@dataclass
class LavaIO:
    """Handles to connect a built network to one's own processes.

    ``connect_input(name, out_port)`` feeds an Input node; ``port(node)`` is the (virtual)
    out-port showing an IR node's value, to connect a sink (for a value derived from an input
    alone, after that input is connected); ``run_cfg(extra)`` is the
    Loihi2SimCfg whose exception_proc_model_map (keyed by process instance) names the model
    of every process, plus ``extra`` {process: model} for one's own I/O processes."""

    net: LavaNet
    processes: dict
    models: dict
    pending: list = field(default_factory=list)  # (Input node, transforms, in-port)
    sources: dict = field(default_factory=dict)  # Input node -> the out-port feeding it

    @property
    def period(self) -> int:
        return self.net.period

    def connect_input(self, name: str, out_port) -> None:
        self.sources[name] = out_port
        for node, transforms, in_port in self.pending:
            if node == name:
                _through(out_port, transforms).connect(in_port)

    def port(self, node: str):
        if node not in self.net.values:
            raise SnnccError(f"node '{node}' has no observable value in the Lava network "
                             f"(a neuron absorbed its bias or scale)")
        v = self.net.values[node]
        src = self.sources[v.process] if v.port == "input" else \
            getattr(self.processes[v.process], v.port)
        return _through(src, v.transforms)

    def run_cfg(self, extra: dict | None = None):
        """floating_pt, or fixed_pt for a quantized network (every process's model is named
        per instance either way: the host's processes of a quantized network stay
        floating_pt)."""
        tag = "fixed_pt" if self.net.arithmetic == "loihi2" else "floating_pt"
        return lava(".magma.core.run_configs").Loihi2SimCfg(
            select_tag=tag, exception_proc_model_map={**self.models, **(extra or {})})


def build_network(net: LavaNet) -> tuple[dict, LavaIO]:
    """Instantiate and connect the processes of ``net``; returns ({name: process}, io)."""
    procs, models = {}, {}
    io = LavaIO(net, procs, models)
    for spec in net.processes:
        proc, model = FACTORIES[spec.type](spec, net.period)
        procs[spec.name], models[proc] = proc, model
        for in_name, src in spec.inputs.items():
            in_port = getattr(proc, in_name)
            if src.process in procs:
                _through(getattr(procs[src.process], src.port), src.transforms).connect(in_port)
            else:  # a network input
                io.pending.append((src.process, src.transforms, in_port))
    return procs, io


def build(artifact: str | Path, T: int | None = None) -> tuple[dict, LavaIO]:
    """The Lava processes of an artifact directory (``T`` overrides the compiled one)."""
    from .artifact import load

    net = load(artifact)
    return build_network(net if T is None else replace(net, T=int(T)))


# ---------------------------------------------------------------------------- running
def _batch_inputs(net: LavaNet, inputs, T: int | None) -> tuple[dict[str, np.ndarray], int, int]:
    """({Input: [T, B, *shape]}, T, B) from an array (one input) or a dict: static inputs
    [B, ...] are repeated over T; T defaults to the sequences' length, else the compiled T."""
    if not isinstance(inputs, dict):
        if len(net.inputs) != 1:
            raise SnnccError(f"network has {len(net.inputs)} inputs; pass a dict by name")
        inputs = {net.inputs[0]["node"]: inputs}
    missing = [s["node"] for s in net.inputs if s["node"] not in inputs]
    if missing:
        raise SnnccError(f"missing input(s) {missing}")
    arrays = {s["node"]: np.asarray(inputs[s["node"]], dtype=np.float64) for s in net.inputs}
    if T is None:
        T = next((len(arrays[s["node"]]) for s in net.inputs if not s["static"]), net.T)
    T = positive_int(T, "T (time steps)")
    seqs, batch = {}, None
    for spec in net.inputs:
        name, shape, x = spec["node"], tuple(spec["shape"]), arrays[spec["node"]]
        if spec["static"]:
            x = np.broadcast_to(x, (T, *x.shape))
        if x.ndim != len(shape) + 2 or x.shape[2:] != shape or x.shape[0] != T:
            layout = "[B, " if spec["static"] else f"[T={T}, B, "
            raise ShapeError(f"input must be {layout}{', '.join(map(str, shape))}], got "
                             f"{np.shape(inputs[name])}", node=name)
        if batch is not None and x.shape[1] != batch:
            raise ShapeError(f"batch {x.shape[1]} differs from other inputs' {batch}", node=name)
        if x.shape[1] == 0:
            raise ShapeError("the batch is empty (0 samples)", node=name)
        if not np.all(np.isfinite(arrays[name])):
            raise ShapeError("input contains NaN or infinity", node=name)
        seqs[name], batch = x, x.shape[1]
    return seqs, int(T), batch


def estimate_bytes(net: LavaNet, T: int, B: int, record: list[str]) -> int:
    """Host memory of a run: the input ring buffers (B x period steps per input), the
    recorded traces ([T, B, ...] per recorded node) and the delay FIFOs (steps x shape, held
    by the process and its model), in float64."""
    P = T + net.latency
    inputs = sum(nbytes((B, P, *s["shape"])) * 2 for s in net.inputs)
    fifos = sum(nbytes((int(p.params.get("steps", 1)), *p.shape)) * 2
                for p in net.processes if p.type == "Delay")
    return inputs + fifos + sum(nbytes((T, B, *net.shapes[k])) for k in record)


def _default_record(net: LavaNet) -> list[str]:
    """Every neuron and every output."""
    neurons = [s.node for s in net.processes
               if s.type in ("LIFReset", CUSTOM_NEURON, FIXED_NEURON)]
    return neurons + [o for o in net.outputs if o not in neurons]


def run_network(net: LavaNet, inputs, T: int | None = None,
                record: Iterable[str] | None = None) -> dict:
    """Run ``net`` on a batch in Loihi2SimCfg.

    ``T`` defaults to the length of the sequence inputs, else the compiled T. Returns
    {"outputs": {Output: [B, ...] at the last step}, "trace": {node: [T, B, ...]},
    "latency": L, "period": P, "steps": Lava steps run, "processes": how many, "seconds":
    startup and stepping times}. ``record``: IR nodes to trace (default: every neuron and
    output); outputs are always traced."""
    seqs, T, B = _batch_inputs(net, inputs, T)
    names = list(dict.fromkeys([*(_default_record(net) if record is None else record),
                                *net.outputs]))
    unknown = [k for k in names if k not in net.shapes]
    if unknown:
        raise SnnccError(f"cannot record {unknown}: not nodes of the Lava network")
    require_fits(estimate_bytes(net, T, B, names),
                 f"running '{net.name}' in Lava for T={T} on a batch of {B}")
    net = replace(net, T=T)
    procs, io = build_network(net)
    P, steps = net.period, B * net.period
    source = lava(".proc.io.source")
    io_models = {}
    integer = {s["node"]: net.arithmetic == "loihi2" and s["kind"] != "real" for s in net.inputs}
    for name, x in seqs.items():
        data = np.zeros((B, P, *x.shape[2:]))
        data[:, :net.T] = np.swapaxes(x, 0, 1)
        data = np.moveaxis(data.reshape(steps, *x.shape[2:]), 0, -1)
        if integer[name]:  # spikes / counts straight onto the chip of a quantized network
            if not np.array_equal(data, np.round(data)):
                raise SnnccError(f"input '{name}' of a fixed-point network must be integers")
            src = source.RingBuffer(data=data.astype(np.int32))
            io_models[src] = source.PySendModelFixed
        else:
            src = source.RingBuffer(data=data)
            io_models[src] = source.PySendModelFloat
        io.connect_input(name, src.s_out)
    recorder = custom.Recorder(shapes=[tuple(net.shapes[k]) for k in names],
                               buffer=min(steps, RECORD_BUFFER))
    for i, node in enumerate(names):
        io.port(node).connect(getattr(recorder, f"a_in{i}"))
    io_models[recorder] = custom.recorder_model(len(names))
    trace = {k: np.zeros((net.T, B, *net.shapes[k])) for k in names}

    def keep(step: int, values: list) -> None:
        """Store what a step shows of IR step t = local step - depth, for t in [0, T)."""
        b, local = divmod(step, P)
        for k, v in zip(names, values):
            if 0 <= local - net.depth[k] < net.T:
                trace[k][local - net.depth[k], b] = v

    seconds = _run(next(iter(io_models)), io.run_cfg(io_models), recorder, steps, keep)
    return {"outputs": {o: trace[o][-1] for o in net.outputs}, "trace": trace,
            "latency": net.latency, "period": P, "steps": steps, "seconds": seconds,
            "processes": len(procs) + len(io_models)}


def _run(first, run_cfg, recorder, steps: int, keep) -> dict:
    """Run ``steps`` steps, handing each step's recorded values to ``keep(step, values)`` as
    they stream out: one step (compiling and starting every process), then the rest, timed
    apart. Returns {"startup", "steps", "per_step"} in seconds."""
    run_steps = lava(".magma.core.run_conditions").RunSteps
    try:
        t0 = time.perf_counter()
        first.run(condition=run_steps(num_steps=1), run_cfg=run_cfg)
        keep(0, recorder.receive())
        t1 = time.perf_counter()
        if steps > 1:
            first.run(condition=run_steps(num_steps=steps - 1, blocking=False), run_cfg=run_cfg)
            for step in range(1, steps):
                keep(step, recorder.receive())
            first.wait()
        t2 = time.perf_counter()
    finally:
        first.stop()
    return {"startup": t1 - t0, "steps": t2 - t1, "per_step": (t2 - t1) / max(steps - 1, 1)}


def run_artifact(artifact: str | Path, inputs, T: int | None = None,
                 record: Iterable[str] | None = None) -> dict:
    """Load an artifact directory and :func:`run_network` it."""
    from .artifact import load

    return run_network(load(artifact), inputs, T, record)


def run(artifact, inputs, T=None):
    """The lava target's runner: (outputs by Output name, traces by IR node [T, B, ...])."""
    res = run_artifact(artifact, inputs, T)
    return res["outputs"], res["trace"]

