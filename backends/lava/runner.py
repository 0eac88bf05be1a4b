"""Building the Lava processes of a lowered network (or of an artifact directory, without the
PyTorch model) and running them in ``Loihi2SimCfg`` (floating_pt; fixed_pt for the chip of a
graph quantized by ``quantize_for_loihi2``, whose artifact says ``"arithmetic": "loihi2"``).

``build`` returns the processes and a :class:`LavaIO` to connect one's own sources and sinks;
``run_network`` / ``run_artifact`` drive a whole batch and hand back outputs and per-node traces
in the simulator's layout ([T, B, ...], IR time), the latency already removed; a network of
many processes runs in a worker interpreter of its own (:mod:`.worker`).

Batch layout: the samples run side by side. Every process is built with a leading *lane* axis
(``lanes`` copies of its state, one per sample): Lava's LIFReset on (lanes, ...), Lava's Conv
and Dense as ``BatchConv`` / ``BatchDense`` (their ports given the lane axis), Lava's Sparse on
one vector holding every lane's tokens (weights kron(I_lanes x blocks, W); a fixed-point Dense
on several lanes is such a Sparse), the custom processes on (lanes, ...). Lava synchronises
every process once a step whatever its size, so one step now serves ``lanes`` samples. A batch
larger than the lanes (``MAX_LANES``, or fewer when the memory budget asks) runs in rounds,
``period`` = T * D + latency steps apart (D, the dilation, is 1 unless a loop needs more Lava
steps per IR step): sample b runs on lane b % lanes in round r = b // lanes, its IR step t
presented at steps r * period + t * D + [0, D); a node of depth d shows its IR step t at step
r * period + d + t * D, and every stateful process re-initialises at local step d of each round.
The artifact is the same for every batch: lanes are chosen when the processes are built.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from snncc.errors import FormatError, ShapeError, SnnccError
from snncc.limits import max_memory, nbytes, positive_int, require_fits
from snncc.progress import progress

from . import processes as custom
from .compat import lava, runs_in_this_process
from .failures import in_thread, terminate, watching
from .lower import CUSTOM_NEURON, FIXED_NEURON, LavaNet, ProcSpec

RECORD_BUFFER = 32  # steps the recorder may run ahead of the host reading them
#: messages a channel between two processes holds (Lava's default, 64, is shared memory of 64
#: messages per connection: 15M Meta-SpikeFormer at 224x224 filled 10 GB before its first step);
#: the processes advance in lockstep, one message per connection per step
CHANNEL_SLOTS = 2
POLL_SECONDS = 0.2  # how often a host waiting for a step checks that no process failed
#: seconds Lava's stop may take once every step is received (well under one in practice)
LAVA_STOP_SECONDS = 60
#: a process's shape held per lane: state, in/out messages and what a process's model holds
#: besides (the channels' shared memory is counted on its own, :func:`channel_bytes`; at full
#: size the processes measured more than this estimate, RESULTS.md)
STATE_COPIES = 6
#: samples a run puts side by side (more run in rounds): past this, a step's numpy work (the
#: block-diagonal synapses grow with the lanes) outweighs the per-step synchronisation it shares
MAX_LANES = 128
SYNAPSES = ("Dense", "Sparse")  # fixed point: lanes x blocks copies of their weights


# ---------------------------------------------------------------------------- process factories
# A process whose params say ``fixed_pt`` (the chip of a quantized graph) gets its fixed_pt
# model: Lava's bit-accurate Dense / Sparse / LIFReset, snncc's exact integer Conv model and the
# int32 models of the custom processes; the host's processes stay floating_pt.
def _fixed(s: ProcSpec) -> bool:
    return bool(s.params.get("fixed_pt", False))


def _weights(s: ProcSpec, key: str) -> np.ndarray:
    """A synapse's weights as its process computes with them: float64 in a float run (the
    artifact keeps a float32 model's weights as they are, exactly), integers when fixed."""
    w = s.arrays[key]
    return w if _fixed(s) else np.asarray(w, np.float64)


def _per_neuron(s: ProcSpec, key: str) -> np.ndarray:
    """A neuron parameter over the process's shape (the artifact holds the smallest array that
    broadcasts to it, e.g. one value per channel)."""
    return np.broadcast_to(s.arrays[key], s.shape).copy()


def _lanes_of(s: ProcSpec, lanes: int) -> tuple:
    """The process's shape with the lane axis in front."""
    return (lanes, *s.shape)


def _conv(s: ProcSpec, net: LavaNet, lanes: int):
    p = s.params
    proc = custom.BatchConv(
        lanes=lanes, weight=_weights(s, "weight"), input_shape=tuple(p["input_shape"]),
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


def _dense(s: ProcSpec, net: LavaNet, lanes: int):
    """Lava's Dense on the lanes (Lava's float arithmetic lane by lane); a fixed-point one on
    several lanes as block-diagonal Sparse (integer sums: exact in any order)."""
    if not _fixed(s):
        return custom.BatchDense(lanes=lanes, weights=_weights(s, "weights"), name=s.name,
                                 num_message_bits=s.params["num_message_bits"]), \
            custom.PyBatchDenseModel
    if lanes > 1:
        return _sparse(s, net, lanes)
    return lava(".proc.dense.process").Dense(
        weights=s.arrays["weights"], num_message_bits=s.params["num_message_bits"], name=s.name,
        **_weight_args(s)), lava(".proc.dense.models").PyDenseModelBitAcc


def _sparse(s: ProcSpec, net: LavaNet, lanes: int):
    """Every lane's tokens in one vector: n = lanes x blocks copies of W. Fixed point: Lava's
    Sparse with kron(I_n, W) (bit-accurate); float: :class:`BlockDense`."""
    from scipy import sparse

    n = s.params["blocks"] * lanes
    if not _fixed(s):
        return custom.BlockDense(blocks=n, weights=_weights(s, "weights"), name=s.name,
                                 num_message_bits=s.params["num_message_bits"]), \
            custom.PyBlockDenseModel
    w = s.arrays["weights"]
    w = sparse.kron(sparse.identity(n, dtype=w.dtype), w, format="csr")
    proc = lava(".proc.sparse.process").Sparse(
        weights=w, num_message_bits=s.params["num_message_bits"], name=s.name, **_weight_args(s))
    return proc, lava(".proc.sparse.models").PySparseModelBitAcc


def _lif(s: ProcSpec, net: LavaNet, lanes: int):
    """Lava's LIFReset zeroes u and v when time_step % period == offset, before integrating
    that step; time_step counts from 1, so offset = start + 1 resets at local step ``start``.
    Fixed point: integer du, dv, vth, bias_mant, bias_exp and the bit-accurate model."""
    p = s.params
    extra = {"bias_exp": s.arrays["bias_exp"]} if _fixed(s) else {}
    proc = lava(".proc.lif.process").LIFReset(
        shape=_lanes_of(s, lanes), du=p["du"], dv=p["dv"], vth=p["vth"],
        bias_mant=_per_neuron(s, "bias_mant"), reset_interval=net.period,
        reset_offset=(p["start"] + 1) % net.period, name=s.name, **extra)
    models = lava(".proc.lif.models")
    return proc, models.PyLifResetModelBitAcc if _fixed(s) else models.PyLifResetModelFloat


def _loihi2_lif(s: ProcSpec, net: LavaNet, lanes: int):
    p = s.params
    return custom.Loihi2LIF(shape=_lanes_of(s, lanes), params=s.arrays, du=p["du"],
                            reset=p["reset"], period=net.period, start=p["start"],
                            dilation=net.dilation, name=s.name), \
        custom.PyLoihi2LIFModel


def _canonical_lif(s: ProcSpec, net: LavaNet, lanes: int):
    p = s.params
    return custom.CanonicalLIF(shape=_lanes_of(s, lanes),
                               params={k: _per_neuron(s, k) for k in s.arrays}, cmp=p["cmp"],
                               reset=p["reset"], period=net.period, start=p["start"],
                               dilation=net.dilation, name=s.name), \
        custom.PyCanonicalLIFModel


def _unary(s: ProcSpec, net: LavaNet, lanes: int):
    p = s.params
    model = custom.PyUnaryOpModel
    if _fixed(s):
        model = custom.PyEncoderModel if p["op"] == "Encode" else custom.PyUnaryOpModelFixed
    return custom.UnaryOp(op=p["op"], shape_in=(lanes, *p["shape_in"]),
                          shape=_lanes_of(s, lanes), attrs={**p["attrs"], **s.arrays},
                          name=s.name), model


def _binary(s: ProcSpec, net: LavaNet, lanes: int):
    p = s.params
    return custom.BinaryOp(op=p["op"], shape_a=(lanes, *p["shape_a"]),
                           shape_b=(lanes, *p["shape_b"]), shape=_lanes_of(s, lanes),
                           attrs=dict(p["attrs"]), name=s.name), \
        custom.PyBinaryOpModelFixed if _fixed(s) else custom.PyBinaryOpModel


def _delay(s: ProcSpec, net: LavaNet, lanes: int):
    p = s.params
    return custom.Delay(shape=_lanes_of(s, lanes), steps=p["steps"], period=net.period,
                        mute_from=p["mute_from"], mute_steps=p["mute_steps"], name=s.name), \
        custom.PyDelayModelFixed if _fixed(s) else custom.PyDelayModel


def _readout(s: ProcSpec, net: LavaNet, lanes: int):
    return custom.Readout(shape=_lanes_of(s, lanes), period=net.period, start=s.params["start"],
                          dilation=net.dilation, name=s.name), custom.PyReadoutModel


FACTORIES = {
    "Conv": _conv, "Dense": _dense, "Sparse": _sparse, "LIFReset": _lif,
    CUSTOM_NEURON: _canonical_lif, FIXED_NEURON: _loihi2_lif, "UnaryOp": _unary,
    "BinaryOp": _binary, "Delay": _delay, "Readout": _readout,
}


# ---------------------------------------------------------------------------- building
def _through(port, transforms, lanes: int) -> object:
    """A Lava port of (lanes, ...) seen through the per-sample virtual-port transforms."""
    for kind, arg in transforms:
        port = port.reshape((lanes, *arg)) if kind == "reshape" else \
            port.transpose([0, *(a + 1 for a in arg)])
    return port


def _connect(port, in_port) -> None:
    """Connect a (lanes, ...) value to an in-port (flattened for a vector one: Lava's Sparse,
    and its Dense on one lane)."""
    (port if port.shape == in_port.shape else port.reshape(in_port.shape)).connect(in_port)


@dataclass
class LavaIO:
    """Handles to connect a built network to one's own processes.

    Every value has a leading lane axis (``lanes`` samples side by side):
    ``connect_input(name, out_port)`` feeds an Input node from an out-port of shape
    (lanes, *input shape); ``port(node)`` is the (virtual) out-port showing an IR node's value
    as (lanes, *shape), to connect a sink (for a value derived from an input alone, after that
    input is connected); ``run_cfg(extra)`` is the Loihi2SimCfg whose exception_proc_model_map
    (keyed by process instance) names the model of every process, plus ``extra``
    {process: model} for one's own I/O processes."""

    net: LavaNet
    processes: dict
    models: dict
    lanes: int = 1
    pending: list = field(default_factory=list)  # (Input node, transforms, in-port)
    sources: dict = field(default_factory=dict)  # Input node -> the out-port feeding it

    @property
    def period(self) -> int:
        return self.net.period

    def connect_input(self, name: str, out_port) -> None:
        self.sources[name] = out_port
        for node, transforms, in_port in self.pending:
            if node == name:
                with _building(f"input '{name}' -> '{in_port.process.name}.{in_port.name}'"):
                    _connect(_through(out_port, transforms, self.lanes), in_port)

    def out_port(self, process: str, port: str):
        """A process's out-port as (lanes, *shape) (Lava's Sparse, and its Dense on one lane,
        send a vector)."""
        out = getattr(self.processes[process], port)
        shape = (self.lanes, *self.specs[process].shape)
        return out if out.shape == shape else out.reshape(shape)

    def port(self, node: str):
        if node not in self.net.values:
            raise SnnccError(f"node '{node}' has no observable value in the Lava network "
                             f"(a neuron absorbed its bias or scale)")
        v = self.net.values[node]
        src = self.sources[v.process] if v.port == "input" else self.out_port(v.process, v.port)
        return _through(src, v.transforms, self.lanes)

    @cached_property
    def specs(self) -> dict[str, ProcSpec]:
        return {s.name: s for s in self.net.processes}

    def run_cfg(self, extra: dict | None = None):
        """floating_pt, or fixed_pt for a quantized network (every process's model is named
        per instance either way: the host's processes of a quantized network stay
        floating_pt)."""
        tag = "fixed_pt" if self.net.arithmetic == "loihi2" else "floating_pt"
        return lava(".magma.core.run_configs").Loihi2SimCfg(
            select_tag=tag, exception_proc_model_map={**self.models, **(extra or {})})


def build_network(net: LavaNet, lanes: int = 1) -> tuple[dict, LavaIO]:
    """Instantiate and connect the processes of ``net``, each on ``lanes`` samples side by
    side; returns ({name: process}, io)."""
    procs, models = {}, {}
    io = LavaIO(net, procs, models, lanes)
    for spec in net.processes:
        with _building(f"process '{spec.name}' ({spec.type})"):
            proc, model = FACTORIES[spec.type](spec, net, lanes)
        procs[spec.name], models[proc] = proc, model
    for spec in net.processes:  # once all exist: a Delay closing a loop comes before its source
        for in_name, src in spec.inputs.items():
            in_port = getattr(procs[spec.name], in_name)
            if src.process in procs:
                with _building(f"'{src.process}.{src.port}' -> '{spec.name}.{in_name}'"):
                    _connect(_through(io.out_port(src.process, src.port), src.transforms,
                                      lanes), in_port)
            else:  # a network input
                io.pending.append((src.process, src.transforms, in_port))
    return procs, io


@contextmanager
def _building(what: str):
    """A process or connection that Lava cannot build from the network's arrays and shapes (a
    weight array of another shape than its neurons', in an artifact changed since it was
    written) is refused naming it, in one line."""
    ports = lava(".magma.core.process.ports.exceptions")
    shape_errors = (ports.ReshapeError, ports.ConcatShapeError, ports.TransposeShapeError,
                    ports.TransposeIndexError)
    try:
        yield
    except (ValueError, TypeError, IndexError, *shape_errors) as e:
        raise FormatError(f"the Lava network's {what} does not fit its shapes: {e}") from None


def build(artifact: str | Path, T: int | None = None, lanes: int = 1) -> tuple[dict, LavaIO]:
    """The Lava processes of an artifact directory (``T`` overrides the compiled one), on
    ``lanes`` samples side by side."""
    from .artifact import load

    net = load(artifact)
    return build_network(net if T is None else replace(net, T=int(T)),
                         positive_int(lanes, "lanes"))


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


#: Memory of a Lava process apart from its arrays: Lava's runtime runs each in an OS process of
#: its own, forked. Measured (proportional set size): 7.8 MiB each for the digits Spikformer's
#: 40; 13.2 MiB each beyond the arrays and channels this estimate counts for the 15M
#: Meta-SpikeFormer's 414 at 224x224 (12.64 GiB for the whole tree, the host's 1.0 GiB apart).
PROCESS_BYTES = 14 << 20


def estimate_bytes(net: LavaNet, T: int, B: int, record: list[str], lanes: int = 1) -> int:
    """Host memory of a run on ``lanes`` samples side by side, in float64: the input ring
    buffers (every round's period per lane), the recorded traces ([T, B, ...] per recorded
    node), and per lane the delay FIFOs (steps x shape), every process's state and messages
    (a few copies of its shape) and a fixed-point run's block-diagonal synapses (value and
    index per nonzero; a float run holds each weight matrix once);
    what a process holds counted twice (its description and its running model); the shared
    memory of the channels (:data:`CHANNEL_SLOTS` messages per connection, the recorder's pipe
    its buffer of steps); and :data:`PROCESS_BYTES` per process, the network's, each input's
    source and the recorder (15M Meta-SpikeFormer: 414 processes, 5.7 GiB before any array)."""
    P, rounds = net.period_for(T), -(-B // lanes)
    inputs = sum(nbytes((rounds * lanes, P, *s["shape"])) * 2 for s in net.inputs)
    fifos = sum(nbytes((lanes, int(p.params.get("steps", 1)), *p.shape)) * 2
                for p in net.processes if p.type == "Delay")
    states = sum(nbytes((lanes, *p.shape)) * STATE_COPIES for p in net.processes)
    synapses = sum(nbytes((lanes, p.params["blocks"], p.arrays["weights"].size), 12) * 2
                   for p in net.processes if p.type in SYNAPSES and _fixed(p))
    traces = sum(nbytes((T, B, *net.shapes[k])) for k in record)
    processes = PROCESS_BYTES * _os_processes(net)
    return inputs + fifos + states + synapses + traces + processes + \
        channel_bytes(net, T, B, record, lanes)


def _os_processes(net: LavaNet) -> int:
    """The OS processes of a run: the network's, each input's source and the recorder."""
    return len(net.processes) + len(net.inputs) + 1


def _steps(B: int, lanes: int, period: int) -> int:
    """Lava steps of a batch of ``B`` on ``lanes``: its rounds, ``period`` steps each."""
    return -(-B // lanes) * period


def recorded_nodes(net: LavaNet, names: list[str]) -> list[str]:
    """The nodes a run records to trace ``names``: a level computed inside a Count process is
    read from its count (the level is count >= d)."""
    return list(dict.fromkeys(net.levels[k][0] if k in net.levels else k for k in names))


def channel_bytes(net: LavaNet, T: int, B: int, record: list[str], lanes: int = 1) -> int:
    """The shared memory of a run's channels, in float64: :data:`CHANNEL_SLOTS` messages per
    connection (into every process, and from each recorded node to the recorder) and the
    recorder's pipe to the host, its buffer of steps."""
    size = {**{s["node"]: math.prod(s["shape"]) for s in net.inputs},
            **{p.name: math.prod(p.shape) for p in net.processes}}
    recorded = sum(math.prod(net.shapes[k]) for k in recorded_nodes(net, record))
    steps = _steps(B, lanes, net.period_for(T))
    messages = CHANNEL_SLOTS * (sum(size[port.process] for p in net.processes
                                    for port in p.inputs.values()) + recorded) \
        + min(steps, RECORD_BUFFER) * recorded
    return nbytes((lanes, messages))


def _lanes(net: LavaNet, T: int, B: int, record: list[str], lanes: int | None) -> int:
    """``lanes``, else the most of the batch, up to MAX_LANES, that fits the memory budget
    (the rest of the batch runs in rounds); the run must fit either way."""
    if lanes is None:
        lanes = min(B, MAX_LANES)
        while lanes > 1 and estimate_bytes(net, T, B, record, lanes) > max_memory():
            lanes -= 1
    lanes = positive_int(lanes, "lanes")
    require_fits(estimate_bytes(net, T, B, record, lanes),
                 f"running '{net.name}' in Lava for T={T} on a batch of {B} ({lanes} side by "
                 f"side)")
    return lanes


def _stream(x: np.ndarray, lanes: int, period: int) -> np.ndarray:
    """[T, B, ...] as a RingBuffer's data (lanes, ..., rounds x period): sample b on lane
    b % lanes, its T steps at the start of round b // lanes; zeros elsewhere."""
    T, B, shape = x.shape[0], x.shape[1], x.shape[2:]
    rounds = -(-B // lanes)
    data = np.zeros((period, rounds * lanes, *shape))
    data[:T, :B] = x
    data = np.swapaxes(data.reshape(period, rounds, lanes, *shape), 0, 1)
    return np.moveaxis(data.reshape(rounds * period, lanes, *shape), 0, -1)


def _default_record(net: LavaNet) -> list[str]:
    """Every neuron and every output."""
    neurons = [s.node for s in net.processes
               if s.type in ("LIFReset", CUSTOM_NEURON, FIXED_NEURON)] + list(net.levels)
    return neurons + [o for o in net.outputs if o not in neurons]


#: A network of more Lava processes than this runs in a fresh interpreter (:mod:`.worker`):
#: Lava forks an OS process per Lava process from the one that runs it, and each copies the
#: pages of that parent's Python objects it touches. Measured, Spikformer 2-384 (60 processes):
#: 0.9 GB for the processes forked from a fresh interpreter, 2.5 GB from a host holding 1.7
#: GB; a worker takes about 2 s to start (importing Lava).
WORKER_PROCESSES = 100


def run_network(net: LavaNet, inputs, T: int | None = None,
                record: Iterable[str] | None = None, lanes: int | None = None,
                worker: bool | None = None) -> dict:
    """Run ``net`` on a batch in Loihi2SimCfg, ``lanes`` samples side by side (default: the
    whole batch, up to MAX_LANES and the memory budget; the rest in rounds); in a worker
    process when ``worker`` (default: for more than :data:`WORKER_PROCESSES` processes).

    ``T`` defaults to the length of the sequence inputs, else the compiled T. Returns
    {"outputs": {Output: [B, ...] at the last step}, "trace": {node: [T, B, ...]},
    "latency": L, "period": P, "lanes", "steps": Lava steps run, "processes": how many,
    "seconds": startup and stepping times}. ``record``: IR nodes to trace (default: every
    neuron and output); outputs are always traced."""
    seqs, T, B = _batch_inputs(net, inputs, T)
    names = list(dict.fromkeys([*(_default_record(net) if record is None else record),
                                *net.outputs]))
    unknown = [k for k in names if k not in net.shapes]
    if unknown:
        raise SnnccError(f"cannot record {unknown}: not nodes of the Lava network")
    lanes = _lanes(net, T, B, names, lanes)
    net = replace(net, T=T)
    job = {"net": net, "seqs": seqs, "B": B, "names": names, "lanes": lanes}
    processes = _os_processes(net)
    what = f"Lava run ({processes} processes)"
    steps = _steps(B, lanes, net.period)
    if worker is None:
        worker = processes > WORKER_PROCESSES or not runs_in_this_process()
    elif not worker and not runs_in_this_process():
        raise SnnccError(f"Lava needs the 'fork' start method, and this process fixed "
                         f"{multiprocessing.get_start_method()!r}: run it in a worker "
                         "(worker=True or None)")
    if worker:
        from .worker import run_in_worker

        return run_in_worker(job, what, steps)
    with progress(what, steps, "steps") as done:
        return run_job(**job, advance=done.advance)


def run_job(net: LavaNet, seqs: dict, B: int, names: list[str], lanes: int,
            advance) -> dict:
    """:func:`run_network`'s run, here, once its arguments are checked; ``advance()`` is
    called after each step."""
    procs, io = build_network(net, lanes)
    P = net.period
    steps = _steps(B, lanes, P)
    source = lava(".proc.io.source")
    io_models = {}
    integer = {s["node"]: net.arithmetic == "loihi2" and s["kind"] != "real" for s in net.inputs}
    for name, x in seqs.items():
        data = _stream(np.repeat(x, net.dilation, axis=0), lanes, P)
        if integer[name]:  # spikes / counts straight onto the chip of a quantized network
            if not np.array_equal(data, np.round(data)):
                raise SnnccError(f"input '{name}' of a fixed-point network must be integers")
            src = source.RingBuffer(data=data.astype(np.int32))
            io_models[src] = source.PySendModelFixed
        else:
            src = source.RingBuffer(data=data)
            io_models[src] = source.PySendModelFloat
        io.connect_input(name, src.s_out)
    recorded = recorded_nodes(net, names)
    recorder = custom.Recorder(shapes=[(lanes, *net.shapes[k]) for k in recorded],
                               buffer=min(steps, RECORD_BUFFER))
    for i, node in enumerate(recorded):
        io.port(node).connect(getattr(recorder, f"a_in{i}"))
    io_models[recorder] = custom.recorder_model(len(recorded))
    trace = {k: np.zeros((net.T, B, *net.shapes[k])) for k in recorded}

    def keep(step: int, values: list) -> None:
        """Store what a step shows of IR step t = (local step - depth) / dilation, for t in
        [0, T), for the round's samples (the last round's spare lanes ran zeros)."""
        r, local = divmod(step, P)
        first = r * lanes
        n = min(lanes, B - first)
        for k, v in zip(recorded, values):
            t, phase = divmod(local - net.depth[k], net.dilation)
            if phase == 0 and 0 <= t < net.T:
                trace[k][t, first:first + n] = v[:n]

    seconds = _run(next(iter(io_models)), io.run_cfg(io_models), recorder, steps, keep,
                   advance)
    trace = {k: (trace[net.levels[k][0]] >= net.levels[k][1]).astype(np.float64)
             if k in net.levels else trace[k] for k in names}
    return {"outputs": {o: trace[o][-1] for o in net.outputs}, "trace": trace,
            "latency": net.latency, "period": P, "lanes": lanes, "steps": steps,
            "seconds": seconds, "processes": len(procs) + len(io_models)}


def _run(first, run_cfg, recorder, steps: int, keep, advance) -> dict:
    """Run ``steps`` steps in one Lava run, handing each step's recorded values to
    ``keep(step, values)`` as they stream out and calling ``advance()`` after each. Returns
    {"startup": compiling, starting every process and the first step, "steps": the other
    steps as they stream, "per_step"} in seconds (stopping the processes is in neither)."""
    run_steps = lava(".magma.core.run_conditions").RunSteps
    with watching(first) as check:
        def receive() -> list:
            while (values := recorder.receive(wait=POLL_SECONDS)) is None:
                check()
            advance()
            return values

        try:
            t0 = time.perf_counter()
            first.run(condition=run_steps(num_steps=steps, blocking=False), run_cfg=run_cfg,
                      compile_config={"pypy_channel_size": CHANNEL_SLOTS})
            keep(0, receive())
            t1 = time.perf_counter()
            for step in range(1, steps):
                keep(step, receive())
            t2 = time.perf_counter()
            in_thread(first.wait, POLL_SECONDS, check=check)
        except BaseException:  # (Lava's stop would wait for processes that may never answer)
            terminate(first)
            raise
        if not in_thread(first.stop, POLL_SECONDS, seconds=LAVA_STOP_SECONDS):
            terminate(first)  # every step is in: what was left is the processes' ending
    return {"startup": t1 - t0, "steps": t2 - t1, "per_step": (t2 - t1) / max(steps - 1, 1)}


def run_artifact(artifact: str | Path, inputs, T: int | None = None,
                 record: Iterable[str] | None = None, lanes: int | None = None) -> dict:
    """Load an artifact directory and :func:`run_network` it."""
    from .artifact import load

    return run_network(load(artifact), inputs, T, record, lanes)


def run(artifact, inputs, T=None):
    """The lava target's runner: (outputs by Output name, traces by IR node [T, B, ...])."""
    res = run_artifact(artifact, inputs, T)
    return res["outputs"], res["trace"]

