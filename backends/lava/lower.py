"""Lowering an IR graph to a Lava process network, as plain data (no Lava import).

What maps where:

- Conv2d / Conv1d -> ``lava.proc.conv`` ``Conv`` (weights flipped and laid out (C_out, W, H,
  C_in): Lava convolves, torch correlates; padding/stride/dilation in (W, H) order);
  Linear -> ``Dense`` on a 1-D input, ``Sparse`` with the block-diagonal kron(I, W) when it acts
  on the last axis of a larger tensor. Both deliver one step late; they carry no bias.
- A BatchNorm the BN fold left to the writer (``weight_folds="when_written"``: a weight fold
  that rounds) is folded into the synapse before it here: the synapse takes the new bias and
  its weights are scaled as the artifact writes them (:class:`ChannelScaled`, times a neuron's
  gamma after it as below); the BN's value is the synapse's, which is no longer observable.
- Neuron -> ``LIFReset`` (Lava's LIF that re-initialises at a fixed phase of a period) whenever
  :func:`snncc.neuron.to_lava_lif` can express it: gamma folded into the weights of a synapse
  feeding only this neuron (else a Scale process in front), the synapse's bias into
  ``bias_mant``; otherwise the custom per-neuron ``CanonicalLIF``.
- Reshape / Flatten / Transpose -> Lava virtual ports (reshape / transpose on the connection);
  the (C, H, W) <-> (W, H, C) layout change around each Conv is a transpose port too.
- Everything else (pooling, padding, Add, Scale, Hadamard, spike matmuls, reductions, Concat,
  Delay, Readout, an unabsorbed bias, a BatchNorm after no synapse) -> the custom processes of
  :mod:`.processes`.

Values between processes keep the IR layout (C, H, W) / (N, D), row-major, and everything here is
per sample: the runner gives every process a leading lane axis (the samples of a batch side by
side) when it builds them, so the network does not depend on the batch. A run proceeds in rounds
of period P = T * D + latency; a node of depth d (see :mod:`snncc.passes.latency`) shows its IR
step t at local step d + t * D, and every stateful process re-initialises at local step d, so
nothing leaks between rounds or from warm-up steps. D, the plan's dilation, is 1 unless a loop
passes more synapses than delay steps; then every neuron is the custom one, which (like the
readout) updates once per D steps, at its own phase.

**Fixed point.** A graph quantized by ``quantize_for_loihi2`` (``graph.meta["loihi2"]``; see
:mod:`snncc.fixed_point`) lowers with ``arithmetic = "loihi2"``: every process on the chip is
marked ``fixed_pt`` (integer messages): the encoder (a host-side ``UnaryOp`` "Encode" that
rounds the real input to its bits), Conv with the effective integer weights, Dense / Sparse with
8-bit mantissas, exponent and sign mode (:func:`snncc.fixed_point.lava_dense_params`), neurons
as Lava's ``LIFReset`` with :func:`snncc.fixed_point.lava_lif_params` (an integer gamma != 1 as a
Scale in front) or the custom per-neuron ``Loihi2LIF``; synaptic biases stay Bias processes
(nothing is folded: the quantized parameters are already the neuron's). What leaves the chip
(Mean, AvgPool, Readout and everything after them: the classifier head) stays floating_pt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from snncc import fixed_point as fxp
from snncc import ir
from snncc import neuron as nrn
from snncc.errors import UnsupportedError
from snncc.graph import Graph, node_with
from snncc.passes.batchnorm import folds_left_to_writer
from snncc.passes.common import (ChannelScaled, bypass, compact, folded_synapse_arrays,
                                  nodes_between)
from snncc.passes.latency import SYNAPSE_OPS

WHC = (2, 1, 0)  # (C, H, W) <-> (W, H, C)
GRADED_BITS = 24  # message bits of a real-valued (graded) synaptic input
CUSTOM_NEURON = "CanonicalLIF"
#: why every neuron of a dilated network is the custom one: Lava's LIF updates every step
_DILATED = ("a loop passes more synapses than delay steps, so every IR step takes {} Lava steps, "
            "and Lava's LIF cannot skip the steps between")
FIXED_NEURON = "Loihi2LIF"  # the custom neuron of a quantized graph (fixed_pt)
REARRANGING = ("Reshape", "Flatten", "Transpose")
#: what leaves the chip of a quantized graph (real values: the host computes them in float)
HOST_OPS = frozenset({"Mean", "AvgPool2d", "Readout", "Output"})
BINARY_PRESERVING = frozenset({"Reshape", "Flatten", "Transpose", "Gather", "MaxPool2d", "Pad",
                               "Delay", "Concat", "Hadamard", "Output"})


@dataclass(frozen=True)
class Port:
    """Where a per-step value is: out-port ``port`` of process ``process`` (for a network input,
    ``process`` is the Input node and ``port`` is "input"), seen through Lava virtual-port
    ``transforms`` applied in order: ("reshape", shape) or ("transpose", axes)."""

    process: str
    port: str
    transforms: tuple = ()

    def then(self, kind: str, arg) -> "Port":
        """This port seen through one more transform; a transpose right after a transpose is
        one transpose (none if they cancel: a BN between them folded into the synapse)."""
        arg = tuple(int(a) for a in arg)
        if kind == "transpose" and self.transforms and self.transforms[-1][0] == "transpose":
            last = self.transforms[-1][1]
            both = tuple(last[i] for i in arg)
            rest = self.transforms[:-1]
            return replace(self, transforms=rest if both == tuple(range(len(both)))
                           else rest + (("transpose", both),))
        return replace(self, transforms=self.transforms + ((kind, arg),))

    def to_json(self) -> dict:
        return {"process": self.process, "port": self.port,
                "transforms": [[k, list(a)] for k, a in self.transforms]}

    @staticmethod
    def from_json(d: dict) -> "Port":
        return Port(d["process"], d["port"], tuple((k, tuple(a)) for k, a in d["transforms"]))


@dataclass
class ProcSpec:
    """One Lava process: its type (a key of runner.FACTORIES), output shape, where each in-port
    reads from, JSON-able parameters, arrays, and the IR node it realises ("" for a
    latency-balancing delay)."""

    name: str
    type: str
    shape: tuple
    inputs: dict[str, Port]
    params: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    node: str = ""


@dataclass
class LavaNet:
    """The lowered network. ``values``: the port showing each observable IR node's per-step
    value (a synapse whose bias or scale a neuron absorbed is not observable); ``depth``,
    ``shapes``: every IR node's depth and shape; ``custom_neurons``: why each neuron needs the
    custom process."""

    name: str
    T: int
    dt: float | None
    latency: int
    depth: dict[str, int]
    shapes: dict[str, tuple]
    inputs: list[dict]
    outputs: list[str]
    values: dict[str, Port]
    processes: list[ProcSpec]
    custom_neurons: dict[str, str]
    arithmetic: str = "float"  # "loihi2": a quantized graph, chip processes run fixed_pt
    dilation: int = 1  # Lava steps per IR step
    # a comparison neuron computed inside a Count process: node -> (the count's node, d); it
    # fires when the count is at least d (:func:`counted_levels`)
    levels: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def period(self) -> int:
        return self.period_for(self.T)

    def period_for(self, T: int) -> int:
        """Lava steps of one round of ``T`` IR steps."""
        return T * self.dilation + self.latency


@dataclass(frozen=True)
class NeuronChoice:
    """How a neuron maps: Lava's LIF (``lif`` set) or the custom process (``reason`` says why).
    ``synapse``: the synapse feeding only this neuron, directly or through the reshapes and
    transposes in ``path``; the neuron absorbs its bias. Lava's LIF takes gamma either folded
    into that synapse's weights (``scale``, per output channel) or, when it cannot be, from a
    Scale process in front (``input_scale``: x -> gamma * x, the canonical product itself)."""

    lif: nrn.LavaLIF | None
    reason: str
    synapse: str | None
    path: tuple = ()
    scale: np.ndarray | None = None
    input_scale: np.ndarray | None = None


def _channel_vector(a, shape: tuple, axis: int) -> np.ndarray | None:
    """``a`` broadcast to ``shape`` as one value per index of ``axis``, or None if it also
    varies along another axis."""
    full = np.moveaxis(np.broadcast_to(np.asarray(a, dtype=np.float64), shape), axis, 0)
    vec = full.reshape(full.shape[0], -1)[:, 0]
    return vec if np.all(full == vec.reshape((-1,) + (1,) * (full.ndim - 1))) else None


def counted_levels(graph: Graph, plan: dict) -> dict[str, list[ir.Neuron]]:
    """The Adds that count comparisons of one value: Add node -> its comparison neurons (h = x,
    alpha 0, gamma 1, beta 0, one threshold each), every one read by that Add alone, none
    delayed for balance. Such comparisons are nested ({x > theta} and {x >= theta} are all
    upper sets of the reals), so ordered by (theta, '>' after '>='), the d-th fires exactly when
    the count is at least d: one Count process computes them all (4 neuron and 3 Add processes
    per integer spike of Spike-Driven Transformer V3 become one)."""
    cons, found = graph.consumers(), {}
    for add in graph.of_type(ir.Add):
        levels = [graph[i] for i in add.inputs]
        undelayed = not any(plan["balance"].get(add.name, [0]))
        if undelayed and len(set(add.inputs)) == len(levels) >= 2 \
                and all(_level(n, levels[0].inputs, add.name, cons, plan) for n in levels):
            found[add.name] = sorted(levels, key=lambda n: (float(n.theta), n.cmp == nrn.CMP_GT))
    return found


def _level(n: ir.Node, x: tuple, add: str, cons: dict, plan: dict) -> bool:
    """Whether ``n`` compares the value ``x`` (h = x: alpha 0, gamma 1, beta 0; one threshold)
    and only ``add`` reads it, undelayed."""
    return (isinstance(n, ir.Neuron) and n.inputs == x and cons[n.name] == [add]
            and not any(plan["balance"].get(n.name, [0])) and np.size(n.theta) == 1
            and bool(np.all(n.alpha == 0) and np.all(n.gamma == 1) and np.all(n.beta == 0)))


class Lowerer:
    """Walks the graph inputs first, one ``_op_<IR op>`` method per op, each returning the port
    that shows the node's value."""

    def __init__(self, graph: Graph, plan: dict, bn_scale: dict | None = None):
        self.g, self.plan = graph, plan
        self.bn_scale = bn_scale or {}  # synapse -> its weights as the BNs folded here scale them
        self.depth: dict[str, int] = plan["depth"]
        self.consumers = graph.consumers()
        self.values: dict[str, Port] = {}
        self.hidden: set[str] = set()
        self.procs: list[ProcSpec] = []
        self.delay_inputs: list[tuple[ProcSpec, str]] = []  # (a Delay's process, its source)
        self.view = fxp.fixed_point_view(graph) if "loihi2" in graph.meta else None
        self.chip = self._chip_nodes() if self.view else set()
        self.fixed_reasons: dict[str, str] = {}
        # (float, undilated: a quantized or dilated neuron keeps its own process)
        self.counts = {} if self.view or plan["dilation"] > 1 else counted_levels(graph, plan)
        self.levels = {n.name: (add, d) for add, levels in self.counts.items()
                       for d, n in enumerate(levels, start=1)}
        # a quantized neuron's parameters are already integers of its own: nothing is folded
        # (a neuron on the host after the chip of a quantized graph is a float one)
        self.choice = {n.name: self._neuron_choice(n) for n in graph.of_type(ir.Neuron)
                       if n.name not in self.levels and not self._on_chip_neuron(n.name)}
        self.absorbed = {c.synapse: c for c in self.choice.values() if c.synapse}

    # ------------------------------------------------------------------ helpers
    def _chip_nodes(self) -> set[str]:
        """The nodes of a quantized graph whose values are the chip's integers: the view's chip
        less what leaves it (Mean, AvgPool, Readout) and everything after that (the largest
        such set: a loop whose every input is on the chip stays on it)."""
        chip = {n.name for n in self.g if n.name in self.view.chip and n.op not in HOST_OPS}
        while True:
            off = {k for k in chip if k not in self.view.encoders
                   and not all(i in chip for i in self.g[k].inputs)}
            if not off:
                return chip
            chip -= off

    def add(self, spec: ProcSpec, out: str = "s_out", chip: bool | None = None) -> Port:
        """Append a process; its out-port ``out`` (Lava's synapses call theirs a_out). In a
        quantized graph a process on the chip (``chip``, default: its IR node is) is marked
        ``fixed_pt`` (integer messages, Lava's bit-accurate or snncc's fixed_pt models)."""
        if self.view is not None:
            spec.params["fixed_pt"] = bool(spec.node in self.chip if chip is None else chip)
        self.procs.append(spec)
        return Port(spec.name, out)

    def source(self, n: ir.Node, i: int) -> Port:
        """Input i of n, through a balancing delay when the plan asks for one."""
        src = self.g[n.inputs[i]]
        port = self.values[src.name]
        k = self.plan["balance"].get(n.name, [0] * len(n.inputs))[i]
        if k == 0:
            return port
        return self.add(ProcSpec(f"{n.name}/balance{i}", "Delay", src.shape, {"a_in": port},
                                 {"steps": k, "mute_from": 0, "mute_steps": 0}),
                        chip=src.name in self.chip)

    def _sole_synapse(self, n: ir.Neuron) -> tuple[str | None, tuple]:
        """(synapse, rearranging nodes after it) when a synapse's value reaches only n, through
        reshapes/transposes that each feed only the next node; else (None, ())."""
        path, node = [], n
        while self.consumers[node.inputs[0]] == [node.name]:
            src = self.g[node.inputs[0]]
            if src.op in SYNAPSE_OPS:
                return src.name, tuple(path[::-1])
            if src.op not in REARRANGING:
                break
            path.append(src)
            node = src
        return None, ()

    def _neuron_choice(self, n: ir.Neuron) -> NeuronChoice:
        synapse, path = self._sole_synapse(n)
        if self.plan["dilation"] > 1:
            return NeuronChoice(None, _DILATED.format(self.plan["dilation"]), synapse, path)
        try:
            lif = nrn.to_lava_lif(n.alpha, n.gamma, n.beta, n.theta, n.v_reset, n.v_init,
                                  n.cmp, n.reset)
        except UnsupportedError as e:
            return NeuronChoice(None, e.message, synapse, path)
        gamma = lif.weight_scale
        if np.all(gamma == 1.0):
            return NeuronChoice(lif, "", synapse, path)
        scale = None if synapse is None else self._channel_scale(gamma, self.g[synapse], path)
        if scale is None:
            return NeuronChoice(lif, "", synapse, path, input_scale=gamma)
        return NeuronChoice(lif, "", synapse, path, scale=scale)

    @staticmethod
    def _channel_scale(gamma: np.ndarray, syn: ir.Node, path: tuple) -> np.ndarray | None:
        """gamma as one factor per output channel of ``syn`` (None if it varies otherwise;
        through a reshape or transpose only a uniform gamma is followed)."""
        axis = -1 if syn.op == "Linear" else 0
        if np.all(gamma == gamma.flat[0]):
            return np.full(syn.shape[axis], float(gamma.flat[0]))
        return None if path else _channel_vector(gamma, syn.shape, axis)

    def _absorbed_bias(self, c: NeuronChoice, shape: tuple):
        """The bias of the neuron's synapse laid out like the neuron (0.0 if none)."""
        syn = self.g[c.synapse] if c.synapse else None
        if syn is None or syn.bias is None:
            return 0.0
        b = np.broadcast_to(syn.bias.reshape(_channel_shape(syn)), syn.shape)
        for r in c.path:
            b = b.transpose(r.perm) if r.op == "Transpose" else b.reshape(r.shape)
        return b.reshape(shape)

    def _bn_scaled(self, n: ir.Node, weight):
        """``weight`` (output channels on axis 0) times the scales of the BNs folded into
        synapse ``n`` here, in order, as a :class:`ChannelScaled` (or ``weight`` itself)."""
        for s in self.bn_scale.get(n.name, ()):
            weight = ChannelScaled(weight, s)
        return weight

    def _weight_scale(self, n: ir.Node) -> np.ndarray | None:
        """Per-output-channel factor a neuron's gamma puts on this synapse's weights."""
        return self.absorbed[n.name].scale if n.name in self.absorbed else None

    def _bias_unless_absorbed(self, n: ir.Node, port: Port) -> Port:
        """The synapse's IR value: its bias goes to the neuron that absorbs it (the Lava
        output then differs from the IR value and is hidden) or into a Bias process."""
        if n.name in self.absorbed:
            if n.bias is not None or self._weight_scale(n) is not None:
                self.hidden.update([n.name, *(r.name for r in self.absorbed[n.name].path)])
            return port
        if n.bias is None:
            return port
        return self.add(ProcSpec(f"{n.name}/bias", "UnaryOp", n.shape, {"a_in": port},
                                 {"op": "Bias", "shape_in": list(n.shape), "attrs": {}},
                                 {"constant": n.bias.reshape(_channel_shape(n))}, n.name))

    # ------------------------------------------------------------------ ops
    def _op_Input(self, n: ir.Input) -> Port:
        return Port(n.name, "input")

    def _op_Output(self, n: ir.Output) -> Port:
        return self.values[n.inputs[0]]

    def _op_Reshape(self, n) -> Port:
        return self.values[n.inputs[0]].then("reshape", n.shape)

    _op_Flatten = _op_Reshape

    def _op_Transpose(self, n: ir.Transpose) -> Port:
        return self.values[n.inputs[0]].then("transpose", n.perm)

    def _op_Conv2d(self, n: ir.Conv2d) -> Port:
        """Lava convolves in (W, H, C): w_lava[o, x, y, i] = w[o, i, kH-1-y, kW-1-x], stride,
        padding and dilation in (W, H) order; a Conv1d is the 2-D case with H = 1."""
        w, shape_in, shape_out, hyper = _as_2d(n, self.g[n.inputs[0]].shape)
        scale = self._weight_scale(n)
        src = self.source(n, 0)
        if isinstance(n, ir.Conv1d):
            src = src.then("reshape", shape_in)
        params = {k: v[::-1] for k, v in hyper.items()}
        params.update(input_shape=shape_in[::-1], groups=n.groups,
                      num_message_bits=self._message_bits(n))
        lava_w = w.transpose(0, 3, 2, 1)[:, ::-1, ::-1]  # a view: the artifact writes it in C order
        lava_w = self._bn_scaled(n, lava_w)  # output channels stay axis 0
        if scale is not None:
            lava_w = ChannelScaled(lava_w, scale)
        if n.name in self.chip:  # the effective integer weights (Lava's fixed Conv has no exp)
            lava_w = np.asarray(lava_w).astype(np.int64)
        spec = ProcSpec(n.name, "Conv", shape_out[::-1], {"s_in": src.then("transpose", WHC)},
                        params, {"weight": lava_w}, n.name)
        out = self.add(spec, "a_out").then("transpose", WHC)
        if isinstance(n, ir.Conv1d):
            out = out.then("reshape", n.shape)
        return self._bias_unless_absorbed(n, out)

    _op_Conv1d = _op_Conv2d

    def _op_Linear(self, n: ir.Linear) -> Port:
        """Dense on a vector; on (..., in) the block-diagonal kron(I, W) as Sparse."""
        scale = self._weight_scale(n)
        w = np.asarray(self._bn_scaled(n, n.weight))
        w = w if scale is None else w * scale[:, None]
        shape_in = self.g[n.inputs[0]].shape
        src = self.source(n, 0)
        if len(shape_in) > 1:
            src = src.then("reshape", (math.prod(shape_in),))
        params = {"blocks": math.prod(shape_in[:-1]), "num_message_bits": self._message_bits(n)}
        if n.name in self.chip:  # 8-bit mantissas, an exponent and a sign mode
            dense = fxp.lava_dense_params(n.weight)
            w = dense.pop("weights")
            params.update(dense)
        spec = ProcSpec(n.name, "Dense" if len(shape_in) == 1 else "Sparse",
                        (math.prod(n.shape),), {"s_in": src}, params, {"weights": w}, n.name)
        out = self.add(spec, "a_out")
        if len(n.shape) > 1:
            out = out.then("reshape", n.shape)
        return self._bias_unless_absorbed(n, out)

    def _op_Neuron(self, n: ir.Neuron) -> Port:
        """Lava's LIFReset (bias_mant = gamma b + beta, b the absorbed synaptic bias; gamma in
        the weights or a Scale process) or the custom neuron (x_bias = b); both re-initialise
        at local step depth(n)."""
        if self._on_chip_neuron(n.name):
            return self._fixed_neuron(n)
        if n.name in self.levels:  # computed by its count's process
            self.hidden.add(n.name)
            return None
        c = self.choice[n.name]
        bias = self._absorbed_bias(c, n.shape)
        start = self.depth[n.name]
        if c.lif is not None:
            src = self.source(n, 0)
            if c.input_scale is not None:
                src = self.add(ProcSpec(f"{n.name}/gamma", "UnaryOp", n.shape, {"a_in": src},
                                        {"op": "Scale", "shape_in": list(n.shape), "attrs": {}},
                                        {"factor": c.input_scale}, n.name))
            return self.add(ProcSpec(
                n.name, "LIFReset", n.shape, {"a_in": src},
                {"du": c.lif.du, "dv": c.lif.dv, "vth": c.lif.vth, "start": start},
                {"bias_mant": compact(c.lif.weight_scale * bias + c.lif.bias, n.shape)}, n.name))
        arrays = {p: compact(getattr(n, p), n.shape) for p in n.arrays}
        arrays["x_bias"] = compact(bias, n.shape)
        return self.add(ProcSpec(n.name, CUSTOM_NEURON, n.shape, {"a_in": self.source(n, 0)},
                                 {"cmp": n.cmp, "reset": n.reset, "start": start}, arrays, n.name))

    def _on_chip_neuron(self, name: str) -> bool:
        return self.view is not None and name in self.view.neurons

    def _fixed_neuron(self, n: ir.Neuron) -> Port:
        """A quantized neuron: Lava's LIFReset (bit-accurate model) with
        :func:`snncc.fixed_point.lava_lif_params`, an integer gamma != 1 as a Scale process in
        front; otherwise the custom fixed-point ``Loihi2LIF`` (per-neuron integer parameters,
        any reset)."""
        q, start, src = self.view.neurons[n.name], self.depth[n.name], self.source(n, 0)
        try:
            if self.plan["dilation"] > 1:
                raise UnsupportedError(_DILATED.format(self.plan["dilation"]))
            lif = fxp.lava_lif_params(replace(q, gamma=np.ones_like(q.gamma)), n.shape)
        except UnsupportedError as e:
            self.fixed_reasons[n.name] = e.message
            arrays = {"gamma": q.gamma, "dv": q.dv, "vth": q.vth, "bias": q.bias,
                      "v_reset": q.v_reset, "v_init": q.v_init}
            arrays = {k: np.broadcast_to(v, n.shape).astype(np.int64) for k, v in arrays.items()}
            return self.add(ProcSpec(n.name, FIXED_NEURON, n.shape, {"a_in": src},
                                     {"du": int(q.du), "reset": q.reset, "start": start},
                                     arrays, n.name))
        if np.any(q.gamma != 1):
            gamma = np.broadcast_to(q.gamma, n.shape).astype(np.int64)
            src = self.add(ProcSpec(f"{n.name}/gamma", "UnaryOp", n.shape, {"a_in": src},
                                    {"op": "Scale", "shape_in": list(n.shape), "attrs": {}},
                                    {"factor": gamma}, n.name))
        arrays = {k: lif.pop(k).astype(np.int64) for k in ("bias_mant", "bias_exp")}
        return self.add(ProcSpec(n.name, "LIFReset", n.shape, {"a_in": src},
                                 {**{k: int(v) for k, v in lif.items()}, "start": start},
                                 arrays, n.name))

    def _unary(self, n: ir.Node, attrs: dict, arrays: dict | None = None, *,
               name: str | None = None, op: str | None = None) -> Port:
        """``n``'s op on its input in a UnaryOp process (``name`` / ``op``: another node's
        process computing another op on ``n``'s input, a Count on its levels' value)."""
        name = name or n.name
        return self.add(ProcSpec(name, "UnaryOp", n.shape, {"a_in": self.source(n, 0)}, {
            "op": op or n.op, "shape_in": list(self.g[n.inputs[0]].shape), "attrs": attrs},
            arrays or {}, name))

    def _op_MaxPool2d(self, n: ir.MaxPool2d) -> Port:
        return self._unary(n, {"kernel_size": n.kernel_size, "stride": n.stride,
                               "padding": n.padding, "dilation": n.dilation})

    def _op_AvgPool2d(self, n: ir.AvgPool2d) -> Port:
        return self._unary(n, {"kernel_size": n.kernel_size, "stride": n.stride,
                               "padding": n.padding},
                           {"divisors": n.divisors(self.g[n.inputs[0]].shape[1:])})

    def _op_Gather(self, n: ir.Gather) -> Port:
        return self._unary(n, {"axis": n.axis % len(n.shape), "index": list(n.index)})

    def _op_Pad(self, n: ir.Pad) -> Port:
        return self._unary(n, {"pads": n.pads}, {"value": n.value})

    def _op_Scale(self, n: ir.Scale) -> Port:
        if self.view is not None and n.name in self.view.encoders:  # host -> chip integers
            return self.add(ProcSpec(n.name, "UnaryOp", n.shape, {"a_in": self.source(n, 0)}, {
                "op": "Encode", "shape_in": list(self.g[n.inputs[0]].shape),
                "attrs": {"bits": int(self.view.encoders[n.name])}},
                {"factor": np.asarray(n.factor, dtype=np.float64)}, n.name))
        return self._unary(n, {}, {"factor": n.factor})

    def _op_Divide(self, n: ir.Divide) -> Port:
        return self._unary(n, {}, {"divisor": n.divisor})

    def _op_BatchNorm(self, n: ir.BatchNorm) -> Port:
        """A BatchNorm after no synapse (on a neuron's spikes or counts) as x * a + c per
        channel (``scale_shift``): within an ulp of torch's fused multiply-add."""
        a, c = n.scale_shift()
        per_channel = (-1,) + (1,) * (len(n.shape) - 1 - n.axis)
        return self._unary(n, {}, {"scale": a.reshape(per_channel),
                                   "shift": c.reshape(per_channel)})

    def _op_Sum(self, n: ir.Sum) -> Port:
        return self._unary(n, {"axes": n.axes, "keepdim": n.keepdim})

    _op_Mean = _op_Sum

    def _chain(self, n: ir.Node, attrs: dict) -> Port:
        """Binary processes left to right: ((x0 op x1) op x2) ..., as the simulator adds."""
        acc, shape = self.source(n, 0), self.g[n.inputs[0]].shape
        for i in range(1, len(n.inputs)):
            b_shape = self.g[n.inputs[i]].shape
            out_shape = n.shape if i == len(n.inputs) - 1 else _combined(n, shape, b_shape)
            name = n.name if i == len(n.inputs) - 1 else f"{n.name}/{i}"
            acc = self.add(ProcSpec(name, "BinaryOp", out_shape,
                                    {"a_in0": acc, "a_in1": self.source(n, i)},
                                    {"op": n.op, "shape_a": list(shape), "shape_b": list(b_shape),
                                     "attrs": attrs}, node=n.name))
            shape = out_shape
        return acc

    def _op_Add(self, n) -> Port:
        if n.name in self.counts:
            levels = self.counts[n.name]
            return self._unary(levels[0], {"cmps": [c.cmp for c in levels]},
                               {"thetas": np.array([float(c.theta) for c in levels])},
                               name=n.name, op="Count")
        return self._chain(n, {})

    _op_Hadamard = _op_SpikeMatMul = _op_AddressedAccumulate = _op_Add

    def _op_Concat(self, n: ir.Concat) -> Port:
        return self._chain(n, {"axis": n.axis % len(n.shape)})

    def _op_Delay(self, n: ir.Delay) -> Port:
        """A FIFO of the IR steps not absorbed by the loop's synapses (passes.latency) and the
        balancing steps, zeroing the inputs that become the first ``n.steps`` IR steps: the
        source's values before its depth (warm-up, or the previous round). Its input is wired
        once every node is built, as a Delay may close a cycle."""
        balance = self.plan["balance"].get(n.name, [0])[0]
        steps = n.steps * self.plan["dilation"]  # in Lava steps
        fifo = steps - self.plan["absorbed"].get(n.name, 0) + balance
        spec = ProcSpec(n.name, "Delay", n.shape, {}, {
            "steps": fifo, "mute_from": self.depth[n.inputs[0]] - steps,
            "mute_steps": steps}, node=n.name)
        self.delay_inputs.append((spec, n.inputs[0]))
        return self.add(spec)

    def _op_Readout(self, n: ir.Readout) -> Port:
        return self.add(ProcSpec(n.name, "Readout", n.shape, {"a_in": self.source(n, 0)},
                                 {"start": self.depth[n.name]}, node=n.name))

    def _message_bits(self, n: ir.Node) -> int:
        """Values proven 0/1 travel as 1-bit spike events; anything else as graded messages."""
        return 0 if self._binary(self.g[n.inputs[0]]) else GRADED_BITS

    def _binary(self, n: ir.Node, visiting: frozenset = frozenset()) -> bool:
        """Whether n's values are certainly 0/1: a neuron, a spike input, or a selection,
        rearrangement or AND of such values (an IR kind alone is not enough: the IR types a sum
        of spikes as spikes). On a loop of such nodes, the loop's Delay starts at 0 and each
        step keeps 0/1, so a node met again counts as 0/1."""
        if n.op in ("Neuron", "Input"):
            return n.kind is ir.Kind.SPIKE
        if n.op == "Pad" and np.any(n.value != 0):
            return False
        if n.name in visiting:
            return True
        return n.op in BINARY_PRESERVING and all(
            self._binary(self.g[i], visiting | {n.name}) for i in n.inputs)

    # ------------------------------------------------------------------ driver
    def lower(self) -> LavaNet:
        for n in self.g.topological_order():
            self.values[n.name] = getattr(self, f"_op_{n.op}")(n)
        for spec, src in self.delay_inputs:
            spec.inputs["a_in"] = self.values[src]
        g = self.g
        return LavaNet(
            name=g.name, T=int(g.meta.get("T", 1)), dt=g.meta.get("dt"),
            latency=int(self.plan["latency"]), depth=dict(self.depth),
            shapes={n.name: n.shape for n in g},
            inputs=[{"node": i.name, "shape": list(i.shape), "static": i.static,
                     "kind": i.kind.value} for i in g.inputs],
            outputs=[o.name for o in g.outputs],
            values={k: v for k, v in self.values.items() if k not in self.hidden},
            processes=self.procs,
            custom_neurons={**{k: c.reason for k, c in self.choice.items() if c.lif is None},
                            **self.fixed_reasons},
            arithmetic="loihi2" if self.view is not None else "float",
            dilation=int(self.plan["dilation"]), levels=self.levels)


def _combined(n: ir.Node, a: tuple, b: tuple) -> tuple:
    """Shape of a partial result of an n-ary Add / Concat chain."""
    if n.op == "Concat":
        ax = n.axis % len(a)
        return tuple(a[i] + b[i] if i == ax else a[i] for i in range(len(a)))
    return tuple(np.broadcast_shapes(a, b))


def _as_2d(n: ir.Conv2d, shape_in: tuple):
    """(weight (C_out, C_in/g, kH, kW), input and output (C, H, W), {stride, padding,
    dilation} in (H, W) order); a Conv1d over (C, L) is the H = 1 case."""
    if not isinstance(n, ir.Conv1d):
        hyper = {"stride": n.stride, "padding": n.padding, "dilation": n.dilation}
        return n.weight, shape_in, n.shape, {k: list(v) for k, v in hyper.items()}
    hyper = {"stride": [1, n.stride[0]], "padding": [0, n.padding[0]],
             "dilation": [1, n.dilation[0]]}
    return (n.weight[:, :, None, :], (shape_in[0], 1, shape_in[1]), (n.shape[0], 1, n.shape[1]),
            hyper)


def _channel_shape(synapse: ir.Node) -> tuple:
    """Shape that broadcasts a synapse's per-output-channel vector over its output."""
    return (-1,) if synapse.op == "Linear" else (-1,) + (1,) * (len(synapse.shape) - 1)


SUPPORTED_OPS = frozenset(op for op in ir.NODE_TYPES if hasattr(Lowerer, f"_op_{op}"))


def lower(graph: Graph, plan: dict) -> LavaNet:
    """The Lava network of ``graph`` with latency plan ``plan`` (see snncc.passes.latency).
    Fails listing every node whose op has no Lava mapping."""
    graph.verify()
    folded, bn_scale, shown_by = _fold_batchnorms_left_to_writer(graph)
    bad = [n for n in folded if n.op not in SUPPORTED_OPS]
    if bad:
        raise UnsupportedError("no Lava mapping for " + ", ".join(
            f"{n.name} ({n.op}{', ' + n.path if n.path else ''})" for n in bad), node=graph.name)
    net = Lowerer(folded.verify(), plan, bn_scale).lower()
    for bn, between in shown_by.items():  # the BN's value is the folded synapse's output
        port = net.values.pop(between[0], None)
        for k in between:
            net.values.pop(k, None)
        if port is not None:
            net.values[bn] = port
        net.shapes[bn] = graph[bn].shape
    return net


def _fold_batchnorms_left_to_writer(graph: Graph):
    """``graph`` without the BNs left to the writer, each folded into the synapse before it: the
    synapse's new bias, its unscaled weights (a depth the latency plan gives the BN too, as it
    is no synapse); returns (that graph, {synapse: the BN scales for its weights, in order},
    {BN: the nodes from its input up to the synapse, whose IR values the folded synapse no
    longer shows})."""
    left = folds_left_to_writer(graph)
    if not left:
        return graph, {}, {}
    folded, bn_scale, shown_by = graph.copy(), {}, {}
    for syn, branches in left.items():
        # the node as folded so far: an earlier bypass may have rewired its input
        weight, bias = folded_synapse_arrays(folded[syn], branches)
        folded.replace(syn, node_with(folded[syn], bias=bias))
        scales = []
        while isinstance(weight, ChannelScaled):  # the innermost factor first
            scales.insert(0, weight.scale)
            weight = weight.array
        bn_scale[syn] = scales
        for b in branches:
            shown_by[b.bn.name] = [*nodes_between(graph, b), syn]
            bypass(folded, b.bn.name)
    return folded, bn_scale, shown_by
