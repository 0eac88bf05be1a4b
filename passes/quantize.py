"""Quantization for Loihi 2 (lossy): the float network as the integer network Lava's
bit-accurate models run (:mod:`snncc.fixed_point` states that arithmetic).

**Scales.** Every value on the chip becomes an integer ``x_int = S x`` for a scale S > 0 per
value. Spikes and their sums (max-pools, spike matmuls, residual Adds of spikes) keep S = 1; a
real-valued input gets an *encoder* (a ``Scale`` by S_x <= (2^(b-1) - 1) / max |x| on the
calibration inputs, rounded by the host to b bits, default 8); a synapse's output has its own
S, and its weights become ``round(W S_out / S_in)``; the inputs of an Add (a membrane stream
summing several synapses) share one S; a positive ``Scale`` by f on the chip is absorbed
(``S_out = S_in / f``, the node disappears). Where an on-chip value is read by the host (a
classifier head after the token mean) a ``Scale`` by 1/S restores the float value.

**Choosing S.** The scales are chosen together, in logs, to minimise the synapses' total
relative weight rounding error: a synapse whose largest weight uses the fraction e^l of its
8-bit range (Lava's Dense: mixed [-128, 127], excitatory [0, 255], inhibitory [-255, 0]) costs
e^-l, one whose weights need an exponent (l > 0; they keep 64 .. 127 levels) a little more than
1; an encoder's input counts like weights. Each scale is bounded by the 17-bit thresholds and
13-bit biases of the neurons reading the value and, on the calibration inputs with one bit to
spare (HEADROOM), by the 24-bit current ``a_in << 6`` and voltage, every graded value and
convolution accumulator. So a value only synapses produce gets the scale that fills the 8-bit
range of the synapse needing the largest one (the others take an exponent), and a value inside
a chain of synapses (a separable convolution) is balanced between the weights writing and
reading it. When every neuron reading a value has the same ``S theta / gamma``, S is then
lowered to make that an integer, so the threshold is exact.

**Neurons.** The neuron's charge is linear, so multiplying the whole membrane by
``k = g S / gamma`` keeps its spikes: a_in = g x_int (g an integer, 1 after a synapse), and
threshold, bias and reset values are multiplied by k: ``vth = round(k theta)``, ``bias = 64 k
(beta + gamma b)`` (b: the bias of a synapse feeding only this neuron, moved into the neuron)
as a 13-bit mantissa << ``bias_exp``, ``V_reset = 64 k v_reset``; the decay becomes the
12-bit ``dv = round(4096 (1 - alpha))``. A neuron that reads exact integers (spike counts in
attention) with a decay of 12 bits is made *exact*: g is the smallest power of two that keeps
k h[t] an integer for the T steps (so the voltage is a multiple of 64, the decay's rounding
toward zero never acts, and ``h >= theta`` is ``V > 64 (ceil(k theta) - 1)`` to the bit); ties
at the threshold, common with counts, then behave as in float.

**Bias exponent.** ``bias_exp`` (default 6, :data:`NETX_BIAS_EXP`) is the one exponent of every
bias: whole input units up to 4095, the only biases lava-dl netx holds (it fixes bias_exp = 6),
so the netx file of ``--target lava --fixed-point`` is the prefix of the very graph the
simulator and the Lava fixed-point network run. Its cost is small: at most 0.6% of a threshold
per step on the zoo and digits models, spike agreement with float within 0.6 points of
``bias_exp=None`` (each bias's smallest exponent 0 .. 7, finer and twice the range).

**Report** (``graph.meta['reports']['quantize_for_loihi2']``): per layer the scale and what
set it, the weight quantization error (RMS error over the RMS of the weights clipped at their
99th percentile, so an outlier cannot hide the error it causes), the headroom before 24-bit
saturation at the peak seen on the calibration inputs, each neuron layer's bias rounding error
(``bias_error``: in thresholds per step) and spike agreement
with the float network on those inputs (``calibrate``: an input array or dict as the simulator
takes; default: :func:`calibration_inputs`, random inputs of the model's shape, as many as
:func:`calibration_batch` allows); the overall
spike and output-argmax agreement. ``warnings`` lists, and :class:`QuantizationWarning` raises,
every place where quantization costs more than rounding, naming the layer and the error: weights
that do not fit 8 bits with one exponent (an outlier, or a scale another limit keeps small),
thresholds that lose precision or range, biases saturated or rounded by more than 5% of a
threshold, overflow on the calibration inputs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from snncc import fixed_point as fxp
from snncc import ir
from snncc import neuron as nrn
from snncc.errors import PassError
from snncc.graph import Graph, node_with
from snncc.limits import SnnccWarning, largest_fitting
from snncc.pipeline import register_pass, report
from snncc.progress import progress

from .common import LAYOUT, SYNAPSES, bypass, carry_labels, channel_labels, compact, where

#: the most a value, current or voltage may reach on the calibration inputs: 2^23 / HEADROOM
HEADROOM = 2.0
STATE_LIMIT = (nrn.LOIHI2_STATE_MAX - 1) / HEADROOM
V_UNIT = 2 ** nrn.LOIHI2_ACT_SHIFT  # one synaptic input unit in the 24-bit voltage
HOST_OPS = (ir.Mean, ir.AvgPool2d, ir.Readout, ir.BatchNorm, ir.Output)
SCALE_PRESERVING = LAYOUT + (ir.Gather, ir.MaxPool2d, ir.Delay, ir.Sum, ir.Pad)
PRODUCTS = (ir.Hadamard, ir.SpikeMatMul, ir.AddressedAccumulate)
MAX_GAMMA_BITS = 16  # the largest input multiplier g tried for a neuron reading counts
OUTLIER_RATIO = 4.0  # largest |w| over the 99th percentile that makes a weight an outlier
MAX_THRESHOLD_ERROR = 0.05  # a larger relative threshold rounding error is warned about
MAX_BIAS_ERROR = 0.05  # a larger bias rounding error (in thresholds per step) is warned about
NETX_BIAS_EXP = 6  # lava-dl netx gives every neuron bias_exp = 6: biases in whole input units


class QuantizationWarning(SnnccWarning):
    """Quantization for Loihi 2 loses more than rounding somewhere; the message names where
    (the CLI prints each as one line)."""


# ----------------------------------------------------------------------------- scale classes


class _Scales:
    """Weighted union-find over values that must share a scale: ``scale(node) = ratio *
    scale(root)``; a root is pinned (its scale known) or free (chosen later)."""

    def __init__(self):
        self.parent: list[int] = []
        self.rel: list[float] = []
        self.pinned: list[float | None] = []

    def new(self, pinned: float | None = None) -> int:
        self.parent.append(len(self.parent))
        self.rel.append(1.0)
        self.pinned.append(pinned)
        return len(self.parent) - 1

    def find(self, c: int) -> tuple[int, float]:
        r = 1.0
        while self.parent[c] != c:
            r *= self.rel[c]
            c = self.parent[c]
        return c, r

    def union(self, a: tuple[int, float], b: tuple[int, float], node: ir.Node) -> None:
        """Make value a (class, ratio) and value b share their scale."""
        (ra, fa), (rb, fb) = self.find(a[0]), self.find(b[0])
        fa, fb = fa * a[1], fb * b[1]  # scale(a) = fa S_ra, scale(b) = fb S_rb
        if ra == rb:
            if not math.isclose(fa, fb, rel_tol=1e-12):
                raise PassError(f"{where(node)} adds values of scales {fa} and {fb} that one "
                                "integer scale cannot serve")
            return
        if self.pinned[rb] is not None and self.pinned[ra] is None:
            (ra, fa), (rb, fb) = (rb, fb), (ra, fa)
        if self.pinned[ra] is not None and self.pinned[rb] is not None and not math.isclose(
                fa * self.pinned[ra], fb * self.pinned[rb], rel_tol=1e-12):
            raise PassError(f"{where(node)} adds values whose scales are fixed and differ "
                            f"({fa * self.pinned[ra]:.6g} and {fb * self.pinned[rb]:.6g})")
        self.parent[rb], self.rel[rb] = ra, fa / fb

    def scale(self, v: tuple[int, float], free: dict[int, float]) -> float:
        root, r = self.find(v[0])
        s = self.pinned[root] if self.pinned[root] is not None else free[root]
        return r * v[1] * s


@dataclass
class _Plan:
    """Where each node's value lives (``val``: (class, ratio) on the chip; absent: the host)."""

    scales: _Scales = field(default_factory=_Scales)
    val: dict[str, tuple[int, float]] = field(default_factory=dict)
    unit: int = 0
    encoders: dict[str, float] = field(default_factory=dict)  # real Input -> S_x (its
    # largest 8-bit scale until the scales are chosen)
    absorbed: list[str] = field(default_factory=list)  # on-chip Scale nodes removed
    free: dict[int, float] = field(default_factory=dict)  # free root -> chosen scale
    folded: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)  # neuron ->
    # (synapse whose bias moves into it, the synapse channel of every neuron element)
    bound: dict[int, str] = field(default_factory=dict)  # free root -> what limited it
    bias_exp: int | None = None  # the one bias exponent of every neuron (None: each its own)
    host_neurons: list[str] = field(default_factory=list)  # after the chip (a spiking head)

    def scale(self, name: str) -> float:
        return self.scales.scale(self.val[name], self.free)

    def root(self, name: str) -> int:
        return self.scales.find(self.val[name][0])[0]


def _ratio(plan: _Plan, name: str) -> float:
    """scale(name) / scale(its class's root)."""
    return plan.scales.find(plan.val[name][0])[1] * plan.val[name][1]


def _peak(a) -> float:
    return float(np.max(np.abs(a), initial=0.0))


def _by_input(graph: Graph, x) -> dict:
    """Inputs as the simulator takes them (an array for the single input, or a dict by name),
    by name (the simulator validates them)."""
    return dict(x) if isinstance(x, dict) else {graph.inputs[0].name: x}


def _classify(graph: Graph, input_peaks: dict[str, float], input_bits: int,
              bias_exp: int | None) -> _Plan:
    """Assign every on-chip value a scale class (module doc) and find the synapse biases that
    move into neurons. Needs no run (``input_peaks``: each input's largest magnitude), so
    what has no integer form is refused before the calibration runs."""
    plan = _Plan(bias_exp=bias_exp)
    plan.unit = plan.scales.new(pinned=1.0)
    seen, closing = set(), []  # Delays met before their source close a loop: a scale of their
    for n in graph.topological_order():  # own now, joined with the source's once it has one
        seen.add(n.name)
        if isinstance(n, ir.Delay) and n.inputs[0] not in seen:
            plan.val[n.name] = (plan.scales.new(), 1.0)
            closing.append(n)
            continue
        if any(i not in plan.val for i in n.inputs) or isinstance(n, HOST_OPS):
            if isinstance(n, ir.Neuron):
                src = graph[n.inputs[0]]
                if not _after_the_chip(graph, plan, src):
                    cause = _first_off_the_chip(graph, plan, src)
                    raise PassError(
                        f"neuron {where(n)} reads {where(src)} ({src.op}), " + (
                            "which" if cause is src else
                            f"computed from {where(cause)} ({cause.op}), which") +
                        " has no integer form on the chip" + (
                            " (fold BatchNorm first)" if cause.op == "BatchNorm" else ""))
                plan.host_neurons.append(n.name)  # after the chip: on the host, in float
            continue
        if isinstance(n, ir.Input):
            if n.kind.integral:
                plan.val[n.name] = (plan.unit, 1.0)
            else:
                peak = input_peaks.get(n.name, 0.0)  # (one missing: the run refuses it)
                plan.encoders[n.name] = (2 ** (input_bits - 1) - 1) / peak if peak > 0 else 1.0
                plan.val[n.name] = (plan.scales.new(), 1.0)
        elif isinstance(n, SYNAPSES):
            plan.val[n.name] = (plan.scales.new(), 1.0)
        elif isinstance(n, ir.Neuron):
            plan.val[n.name] = (plan.unit, 1.0)
        elif isinstance(n, SCALE_PRESERVING):
            plan.val[n.name] = plan.val[n.inputs[0]]
        elif isinstance(n, ir.Scale):
            if n.factor.size != 1 or not n.factor.item() > 0:
                raise PassError(f"{where(n)}: only a positive scalar Scale can be absorbed into "
                                "an integer scale on the chip" + _in_a_circuit(n))
            c, r = plan.val[n.inputs[0]]
            plan.val[n.name] = (c, r / n.factor.item())
            plan.absorbed.append(n.name)
        elif isinstance(n, (ir.Add, ir.Concat)):
            for i in n.inputs[1:]:
                plan.scales.union(plan.val[n.inputs[0]], plan.val[i], n)
            plan.val[n.name] = plan.val[n.inputs[0]]
        elif isinstance(n, PRODUCTS):
            plan.val[n.name] = _product(plan, n)
        else:
            raise PassError(f"{where(n)}: no integer form of {n.op} on the chip"
                            + _in_a_circuit(n))
    for d in closing:
        if d.inputs[0] not in plan.val:
            raise PassError(f"{where(d)} closes a loop through {where(graph[d.inputs[0]])}, "
                            "which has no integer form on the chip" + _in_a_circuit(d))
        plan.scales.union(plan.val[d.inputs[0]], plan.val[d.name], d)
    cons = graph.consumers()
    for n in graph.of_type(ir.Neuron):
        syn, labels = _folded_bias(graph, n, cons)
        if syn is not None and syn.name in plan.val:
            plan.folded[n.name] = (syn.name, labels)
    return plan


def _after_the_chip(graph: Graph, plan: _Plan, n: ir.Node) -> bool:
    """Whether host value ``n`` follows a mean of chip values over tokens or time (a Mean or
    Readout: the head, a spiking one on the token mean): a neuron reading it runs on the host
    after the chip. One after a pooling or a real-valued Add inside the network does not: the
    network is refused there, not moved off the chip."""
    seen, stack = set(), [n.name]
    while stack:
        k = stack.pop()
        if k in seen or k in plan.val:
            continue
        seen.add(k)
        node = graph[k]
        if isinstance(node, (ir.Mean, ir.Readout)) and any(i in plan.val for i in node.inputs):
            return True
        stack.extend(node.inputs)
    return False


def _first_off_the_chip(graph: Graph, plan: _Plan, n: ir.Node) -> ir.Node:
    """The op that takes ``n``'s value off the chip: up from ``n`` through values off it, the
    first whose inputs are all on it (an AvgPool of spikes before a convolution)."""
    while True:
        off = [i for i in n.inputs if i not in plan.val]
        if not off:
            return n
        n = graph[off[0]]


def _product(plan: _Plan, n: ir.Node) -> tuple[int, float]:
    """A product of a unit-scale operand (spikes, counts) and another keeps the other's scale
    (times the unit operand's ratio)."""
    a, b = n.inputs
    for unit, other in ((a, b), (b, a)):
        if plan.root(unit) == plan.unit:
            c, r = plan.val[other]
            return c, r * _ratio(plan, unit)
    raise PassError(f"{where(n)} multiplies two scaled real values; no integer form"
                    + _in_a_circuit(n))


def _in_a_circuit(n: ir.Node) -> str:
    """For a refusal at a node of the circuit a library neuron maps to (named
    ``<its path>:<part>``, frontends/adapters): what that means to the user."""
    if not (n.path and n.name.startswith(f"{n.path}:")):
        return ""
    return (f" (a node of the circuit that computes neuron '{n.path}' in its library's "
            "operation order; on Loihi 2 a neuron must be of the canonical LIF form: "
            "snncc's, spikingjelly's LIFNode/IFNode or snnTorch's Leaky with reset to zero)")


# ----------------------------------------------------------------------------- choosing scales


def _weight_bound(w: np.ndarray) -> float:
    """The largest factor f with round(f w) an 8-bit mantissa of w's sign mode (exponent 0)."""
    lo, hi = fxp.SIGN_MODES[fxp.sign_mode(w)]
    pos, neg = float(np.max(w, initial=0.0)), -float(np.min(w, initial=0.0))
    return min(hi / pos if pos > 0 else math.inf, -lo / neg if neg > 0 else math.inf)


@dataclass
class _NeuronUse:
    """A neuron reading a value: its scale ratio to the value's root, and calibration peaks."""

    node: ir.Neuron
    ratio: float
    peak_x: float
    peak_h: float


def _charge_peak(n: ir.Neuron, x: np.ndarray, v: np.ndarray) -> float:
    """max |h| of the float run: h[t] = alpha v[t-1] + gamma x[t] + beta."""
    prev = np.concatenate([np.broadcast_to(n.v_init, v[:1].shape), v[:-1]])
    return _peak(n.alpha * prev + n.gamma * x + n.beta)


@dataclass
class _FloatPeaks:
    """What the scales are chosen from: the float network's largest magnitudes over all the
    calibration inputs, per node (``value``), per convolution without its bias
    (``accumulator``), per neuron of its charge h (``charge``). Gathered run by run
    (:meth:`add`), so that the inputs can be run a batch at a time."""

    value: dict[str, float] = field(default_factory=dict)
    accumulator: dict[str, float] = field(default_factory=dict)
    charge: dict[str, float] = field(default_factory=dict)

    def add(self, graph: Graph, run) -> None:
        """Take in the peaks of ``run``, which recorded every node and membrane."""
        def raise_to(peaks: dict, name: str, value: float) -> None:
            peaks[name] = max(peaks.get(name, 0.0), value)

        for name, v in run.trace.items():
            raise_to(self.value, name, _peak(v))
        for n in graph.of_type(ir.Conv2d):
            raise_to(self.accumulator, n.name, _peak(
                run.trace[n.name] if n.bias is None else
                run.trace[n.name] - n.bias.reshape(-1, *[1] * (len(n.shape) - 1))))
        for n in graph.of_type(ir.Neuron):
            raise_to(self.charge, n.name,
                     _charge_peak(n, run.trace[n.inputs[0]], run.membrane[n.name]))


@dataclass
class _Link:
    """A synapse (or an encoder: ``src`` None) between scale classes: ``level = x[dst] -
    x[src] - kappa`` (x: log scales) is the log of the fraction of its 8-bit range its largest
    weight (input) uses; above 0 its weights need an exponent."""

    node: ir.Node
    src: int | None
    dst: int
    kappa: float

    def level(self, x: dict) -> float:
        return x[self.dst] - (0.0 if self.src is None else x[self.src]) - self.kappa


#: the cost of a synapse whose weights need an exponent, per e-fold above their 8-bit range
#: (they keep 64 .. 127 levels); below it the relative rounding error grows as e^-level
EXPONENT_COST = 0.1


def _cost_slope(level: float) -> float:
    """d/dlevel of the convex cost e^-level (level <= 0), 1 + EXPONENT_COST level (above)."""
    return -math.exp(-level) if level <= 0 else EXPONENT_COST


def _choose_free_scales(graph: Graph, plan: _Plan, ref: _FloatPeaks) -> None:
    """Pick the scale of every free class: in logs x, minimise the total cost of the synapses'
    (and encoders') levels (:func:`_cost_slope`: the relative rounding error below the 8-bit
    range, a small cost for an exponent above it) within each class's limits
    (:func:`_limits`). A value only synapses produce gets the scale that fills the 8-bit range
    of the synapse needing the largest one (the others take an exponent); an intermediate value
    of a synapse chain is balanced between its producers and consumers. Exact coordinate
    minimisation (the cost of one class's x is convex: bisection on its slope)."""
    members: dict[int, list[str]] = {}
    for name in plan.val:
        members.setdefault(plan.root(name), []).append(name)
    x = {r: math.log(plan.scales.pinned[r]) for r in members if plan.scales.pinned[r] is not None}
    free = [r for r in members if r not in x]
    limits = {r: _limits(graph, plan, ref, members[r]) for r in free}
    links = [_Link(graph[name], None, plan.root(name), math.log(s / _ratio(plan, name)))
             for name, s in plan.encoders.items()]
    for n in graph.of_type(*SYNAPSES):
        if n.name in plan.val and np.any(n.weight):
            src, dst = plan.root(n.inputs[0]), plan.root(n.name)
            if src != dst:
                links.append(_Link(n, src, dst, math.log(
                    _weight_bound(n.weight) * _ratio(plan, n.inputs[0]) / _ratio(plan, n.name))))
    for r in free:
        x[r] = min(limits[r].values(), default=0.0)
    for _ in range(100):
        change = 0.0
        for r in free:
            new = _best_log_scale(r, x, limits[r], links)
            change, x[r] = max(change, abs(new - x[r])), new
        if change < 1e-9:
            break
    for r in free:
        plan.bound[r] = _binding(r, x, limits[r], links)
        plan.free[r] = _exact_threshold_scale(graph, plan, members[r], math.exp(x[r]))
    for name in plan.encoders:
        plan.encoders[name] = plan.scale(name)


def _best_log_scale(r: int, x: dict, limits: dict, links: list) -> float:
    """The largest minimiser of class r's convex cost, within its limits."""
    mine = [ln for ln in links if r in (ln.src, ln.dst)]
    if not mine:
        return min(limits.values(), default=0.0)

    def slope(v: float) -> float:
        y = {**x, r: v}
        return sum(_cost_slope(ln.level(y)) * (1 if ln.dst == r else -1) for ln in mine)

    hi = min(limits.values(), default=math.inf)
    anchors = [x[r] - ln.level(x) for ln in mine]  # where each link's level is 0
    top = min(hi, max(anchors) + 1.0)
    if slope(top) <= 0:
        return top
    lo = min(*anchors, top) - 60.0
    for _ in range(100):
        mid = 0.5 * (lo + top)
        lo, top = (mid, top) if slope(mid) <= 0 else (lo, mid)
    return lo


def _binding(r: int, x: dict, limits: dict, links: list) -> str:
    """What set the scale of class r, for the report."""
    for what, v in limits.items():
        if math.isclose(v, x[r], abs_tol=1e-9):
            return what
    for ln in links:
        if ln.dst == r and abs(ln.level(x)) < 1e-6:
            return f"8-bit {'input' if ln.src is None else 'weights'} of {where(ln.node)}"
    return "balance between the synapses writing and reading it"


def _limits(graph: Graph, plan: _Plan, ref: _FloatPeaks, names: list[str]
            ) -> dict[str, float]:
    """Upper limits (logs) on a class's scale, other than its synapses' weights: the input
    encoding's bits, 24-bit values and convolution accumulators, and for each neuron reading it
    a 17-bit threshold, a 13-bit bias, a 24-bit input current and voltage (calibration peaks
    with HEADROOM to spare)."""
    out: dict[str, float] = {}

    def bound(what: str, value: float):
        if value > 0 and math.isfinite(value):
            out[what] = min(out.get(what, math.inf), math.log(value))

    ratio = {m: _ratio(plan, m) for m in names}
    for m in names:
        n = graph[m]
        if m in plan.encoders:
            bound(f"the input encoding of {where(n)}", plan.encoders[m] / ratio[m])
        if ref.accumulator.get(m):
            bound(f"24-bit accumulator of {where(n)}",
                  STATE_LIMIT / (ref.accumulator[m] * ratio[m]))
        if ref.value[m]:
            bound(f"24-bit values of {where(n)}", STATE_LIMIT / (ref.value[m] * ratio[m]))
    for u in _neuron_uses(graph, ref, ratio):
        n, gamma = u.node, float(np.min(u.node.gamma))
        syn, labels = plan.folded.get(n.name, (None, None))
        bias = _peak(n.beta + (0.0 if syn is None or graph[syn].bias is None
                               else n.gamma * graph[syn].bias[labels]))
        if bias:
            bound(f"13-bit bias of {where(n)}",
                  _bias_max(plan.bias_exp) * gamma / (V_UNIT * u.ratio * bias))
        if np.max(n.theta) > 0:
            bound(f"17-bit threshold of {where(n)}",
                  fxp.VTH_MAX * gamma / (u.ratio * float(np.max(n.theta))))
        if u.peak_x:
            bound(f"24-bit input current of {where(n)}",
                  STATE_LIMIT / (V_UNIT * u.ratio * u.peak_x))
        if u.peak_h:
            bound(f"24-bit voltage of {where(n)}",
                  STATE_LIMIT * gamma / (V_UNIT * u.ratio * u.peak_h))
    return out


def _exact_threshold_scale(graph: Graph, plan: _Plan, names: list[str], s: float) -> float:
    """``s`` lowered so that k theta = s * ratio * theta / gamma is an integer when every neuron
    reading the class has the same value of it per unit of s (its threshold is then exact)."""
    ratio = {m: _ratio(plan, m) for m in names}
    per_unit = {float(ratio[n.inputs[0]] * np.max(n.theta) / np.min(n.gamma))
                for n in graph.of_type(ir.Neuron) if n.inputs[0] in ratio}
    uniform = all(np.unique(n.theta).size == 1 and np.unique(n.gamma).size == 1
                  for n in graph.of_type(ir.Neuron) if n.inputs[0] in ratio)
    if len(per_unit) == 1 and uniform:
        (c,) = per_unit
        if c > 0 and math.floor(s * c) >= 1:
            return math.floor(s * c) / c
    return s


def _neuron_uses(graph: Graph, ref: _FloatPeaks, ratio: dict) -> list[_NeuronUse]:
    """The neurons reading a value of a class (``ratio``: its members' ratios to its root)."""
    return [_NeuronUse(n, ratio[n.inputs[0]], ref.value[n.inputs[0]], ref.charge[n.name])
            for n in graph.of_type(ir.Neuron) if n.inputs[0] in ratio]


# ----------------------------------------------------------------------------- neurons


@dataclass
class _NeuronQ:
    node: ir.Neuron
    k: np.ndarray
    exact: bool
    bias_saturated: int
    bias_error: float  # largest |quantized - exact bias| / threshold: charge lost per step
    threshold_clipped: int
    threshold_error: float  # largest |vth / k - theta| / |theta| (0 for an exact neuron)
    alpha_error: float


def _lattice_gamma(n: ir.Neuron, s_x: float, T: int) -> int | None:
    """The smallest power of two g that keeps k h[t] an integer for t < T (k = g s_x / gamma)
    given integer inputs, so the neuron is exact (module doc); None if no g up to
    2^MAX_GAMMA_BITS does (a decay that is not 12-bit, a non-dyadic parameter)."""
    alphas = {Fraction(a) for a in np.unique(n.alpha)}
    if any(a * 4096 != round(a * 4096) or not 0 < a <= 1 for a in alphas):
        return None
    powers = [a ** (T - 1) for a in alphas]
    consts = [Fraction(c) for p in ("beta", "v_reset", "v_init") for c in np.unique(getattr(n, p))]
    per_gamma = [Fraction(s_x) / Fraction(g) for g in np.unique(n.gamma)]
    for i in range(MAX_GAMMA_BITS + 1):
        g = 2 ** i
        if all((g * p).denominator == 1 for p in powers) and all(
                (g * k * c * p).denominator == 1
                for k in per_gamma for c in consts for p in powers):
            return g
    return None


def _bias_max(bias_exp: int | None) -> int:
    """The largest effective bias (V units) with exponent ``bias_exp`` (None: any, 0 .. 7)."""
    return fxp.BIAS_MANT_MAX << (fxp.BIAS_EXP_MAX if bias_exp is None else bias_exp)


def _quantize_bias(b: np.ndarray, bias_exp: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The representable effective bias (V units) nearest to ``b``, a 13-bit mantissa <<
    ``bias_exp`` (None: the smallest exponent that fits), and the mask of saturated ones."""
    if bias_exp is None:
        mant, exp, sat = fxp.quantize_bias(b)
    else:
        mant, exp = np.round(b / 2 ** bias_exp), bias_exp
        sat = (mant < fxp.BIAS_MANT_MIN) | (mant > fxp.BIAS_MANT_MAX)
        mant = np.clip(mant, fxp.BIAS_MANT_MIN, fxp.BIAS_MANT_MAX).astype(np.int64)
    return nrn.loihi2_bias(mant, exp), sat


def _quantize_neuron(n: ir.Neuron, s_x: float, exact_input: bool, peak_x: float,
                     peak_h: float, bias: np.ndarray, T: int,
                     bias_exp: int | None) -> tuple[ir.Neuron, _NeuronQ]:
    """The integer neuron (module doc) reading x_int = s_x x. ``exact_input``: x_int are
    exact integers of the float network (not rounded); ``bias``: the folded synaptic bias
    (per neuron element); ``bias_exp``: the one bias exponent (None: each bias its own)."""
    theta = np.broadcast_to(n.theta, n.shape)
    g, exact = 1, False
    if exact_input and n.reset == nrn.RESET_HARD:
        g_exact = _lattice_gamma(n, s_x, T)
        if g_exact is not None and _fits(n, g_exact, s_x, theta, peak_x, peak_h):
            g, exact = g_exact, True
    if not exact and exact_input:  # the finest input multiplier that fits
        g = max([2 ** i for i in range(MAX_GAMMA_BITS + 1)
                 if _fits(n, 2 ** i, s_x, theta, peak_x, peak_h)], default=1)
    k = np.broadcast_to(g * s_x / n.gamma, n.shape)
    if exact:
        vth = np.array([_exact_threshold(kk, th, n.cmp) for kk, th in
                        zip(k.ravel(), theta.ravel())]).reshape(n.shape)
    else:
        vth = np.round(k * theta)
    clipped = int(np.sum((vth < 0) | (vth > fxp.VTH_MAX)))
    vth = np.clip(vth, 0, fxp.VTH_MAX)
    dv = np.clip(np.round(nrn.LOIHI2_DECAY_UNITY * (1 - n.alpha)), 0, fxp.DECAY_MAX)
    alpha = (nrn.LOIHI2_DECAY_UNITY - dv) / nrn.LOIHI2_DECAY_UNITY
    exact_bias = V_UNIT * k * (n.beta + n.gamma * bias)
    int_bias, sat = _quantize_bias(exact_bias, bias_exp)
    new = node_with(n, alpha=compact(alpha, n.shape), gamma=compact(np.full(n.shape, g), n.shape),
                    beta=compact(int_bias / V_UNIT, n.shape),
                    theta=compact(vth, n.shape), v_reset=compact(_voltage(k, n.v_reset), n.shape),
                    v_init=compact(_voltage(k, n.v_init), n.shape), cmp=nrn.CMP_GT)
    off = np.abs(vth / k - theta)[theta != 0] / np.abs(theta[theta != 0])
    bias_off = np.abs(int_bias - exact_bias)[vth > 0] / (V_UNIT * vth[vth > 0])
    return new, _NeuronQ(new, compact(k, n.shape), exact, int(sat.sum()), _peak(bias_off),
                         clipped, 0.0 if exact else _peak(off),
                         float(np.max(np.abs(alpha - n.alpha))))


def _voltage(k, v) -> np.ndarray:
    """The membrane value v of the float neuron in the quantized one's units: V / 64 with V =
    round(64 k v) a 24-bit integer."""
    lim = nrn.LOIHI2_STATE_MAX - 1
    return np.clip(np.round(V_UNIT * k * v), -lim, lim) / V_UNIT


def _fits(n: ir.Neuron, g: int, s_x: float, theta, peak_x: float, peak_h: float) -> bool:
    k = float(np.max(g * s_x / np.abs(n.gamma)))
    return (k * float(np.max(theta)) <= fxp.VTH_MAX and V_UNIT * g * s_x * peak_x <= STATE_LIMIT
            and V_UNIT * k * peak_h <= STATE_LIMIT)


def _exact_threshold(k: float, theta: float, cmp: str) -> int:
    """For integer k h: ``h >= theta`` is ``k h > ceil(k theta) - 1``, ``h > theta`` is
    ``k h > floor(k theta)``."""
    t = Fraction(k) * Fraction(theta)
    return math.ceil(t) - 1 if cmp == nrn.CMP_GE else math.floor(t)


# ----------------------------------------------------------------------------- synapses


@dataclass
class _SynapseQ:
    node: ir.Node  # quantized
    weight: np.ndarray  # the float weights
    scale: float
    fmt: fxp.WeightFormat
    rms_error: float  # RMS(W_int / scale - W) / RMS(min(|W|, 99th percentile of |W|)): one
    # outlier cannot hide the error it causes by inflating the RMS
    max_error: float  # largest |W_int - scale W|, in mantissa steps
    zeroed: float  # fraction of nonzero weights that became 0
    bias: str


def _quantize_weights(w: np.ndarray, f: float) -> tuple[np.ndarray, fxp.WeightFormat]:
    """round(f w) as 8-bit mantissas of w's sign mode times the smallest 2^e that fits."""
    lo, hi = fxp.SIGN_MODES[fxp.sign_mode(w)]
    e = 0
    while True:
        m = np.round(f * w / 2 ** e)
        if m.min(initial=0) >= lo and m.max(initial=0) <= hi:
            q = m * 2 ** e
            return q, fxp.weight_format(q)
        e += 1


def _quantize_synapse(n: ir.Node, f: float, s_out: float,
                      folded_into: str | None) -> tuple[ir.Node, _SynapseQ]:
    """Integer weights round(f W); the bias stays on the synapse as an integer at its output
    scale ``s_out`` unless it moves into neuron ``folded_into``."""
    w = np.asarray(n.weight, np.float64)  # float32 weights: f * w in float64, as for others
    q, fmt = _quantize_weights(w, f)
    a = np.abs(w)
    typical = math.sqrt(float(np.mean(np.minimum(a, np.percentile(a, 99)) ** 2)))
    nz = w != 0
    stats = dict(
        rms_error=math.sqrt(float(np.mean((q / f - w) ** 2))) / typical
        if typical else 0.0,
        max_error=_peak(q - f * w) / 2 ** fmt.exp,
        zeroed=float(np.mean(q[nz] == 0)) if nz.any() else 0.0)
    if n.bias is None or folded_into:
        new = node_with(n, weight=q, bias=None)
        how = "none" if n.bias is None else f"moved into {folded_into}"
    else:
        new = node_with(n, weight=q, bias=np.round(s_out * n.bias))
        how = "integer"
    return new, _SynapseQ(new, w, f, fmt, bias=how, **stats)


def _folded_bias(graph: Graph, n: ir.Neuron, cons: dict) -> tuple[ir.Node | None, np.ndarray]:
    """The synapse whose bias moves into ``n``: one that feeds only n, through layout nodes
    that feed only the next; and the synapse channel of every element of n."""
    chain, name = [], n.inputs[0]
    while isinstance(graph[name], LAYOUT) and len(cons[name]) == 1:
        chain.append(graph[name])
        name = graph[name].inputs[0]
    syn = graph[name]
    if not isinstance(syn, SYNAPSES) or len(cons[name]) != 1:
        return None, None
    labels = channel_labels(syn)
    for c in reversed(chain):
        labels = carry_labels(c, labels)
    return syn, labels


# ----------------------------------------------------------------------------- the pass


#: Random calibration inputs, and calibration inputs run at a time, at most: fewer where the
#: memory budget does not hold their runs (:func:`calibration_batch`).
CALIBRATION_BATCH = 16


def calibration_batch(graph: Graph, T: int) -> int:
    """The largest batch up to :data:`CALIBRATION_BATCH` whose calibration runs fit the memory
    budget: the float run recording every node and membrane, then the float and fixed-point
    runs recording the neurons' spikes, held together (estimated with the float graph); 1 when
    none does (the run then refuses, saying why). The calibration inputs are run this many at a
    time, and random ones are this many. 15M Meta-SpikeFormer at 224x224: 5 under a budget of
    11.8 GB."""
    from snncc.simulator import SPIKES, estimate_bytes

    return largest_fitting(lambda b: max(estimate_bytes(graph, T, b, record=True),
                                         2 * estimate_bytes(graph, T, b, record=SPIKES)),
                           CALIBRATION_BATCH)


def _batches(graph: Graph, x, size: int) -> list[dict]:
    """The calibration inputs ``x`` (as the simulator takes them) in batches of ``size``
    (static inputs ``[B, ...]``, sequences ``[T, B, ...]``; the simulator checks them)."""
    x = _by_input(graph, x)
    axis = {n.name: 0 if n.static else 1 for n in graph.inputs}
    first = graph.inputs[0].name
    total = np.shape(x[first])[axis[first]] if first in x else 0
    if total <= size:
        return [x]
    return [{k: np.asarray(v)[(slice(None),) * axis.get(k, 0) + (slice(i, i + size),)]
             for k, v in x.items()} for i in range(0, total, size)]


@dataclass
class _Spikes:
    """A run's neuron spikes (by name, ``[T, B, ...]``) and its first output (the model's
    prediction, as a parity check reads it)."""

    neurons: dict[str, np.ndarray]
    output: np.ndarray

    @classmethod
    def of(cls, graph: Graph, run) -> "_Spikes":
        return cls({n.name: run.trace[n.name] for n in graph.of_type(ir.Neuron)},
                   run.outputs[graph.outputs[0].name])


def _float_peaks(graph: Graph, batches: list, T: int):
    """The float simulator, and its :class:`_FloatPeaks` over ``batches``, one recorded run at
    a time; and the spikes of a single batch's run (None for several: the report runs the
    float network again, batch by batch)."""
    from snncc.simulator import Simulator  # (and torch) here: importing the passes needs neither

    sim, peaks = Simulator(graph), _FloatPeaks()
    with progress("calibrating: float runs", len(batches), "batches") as done:
        for x in batches:
            run = sim.run(x, T, record=True)
            peaks.add(graph, run)
            kept = _Spikes.of(graph, run) if len(batches) == 1 else None
            del run  # before the next batch's run
            done.advance()
    return sim, peaks, kept


def calibration_inputs(graph: Graph, batch: int = CALIBRATION_BATCH,
                       seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the model's shape: N(0, 1) for real inputs, spikes with probability
    1/2 otherwise; ``[B, ...]`` for static inputs, ``[T, B, ...]`` for sequences."""
    rng = np.random.default_rng(seed)
    T = int(graph.meta.get("T", 1))
    out = {}
    for n in graph.inputs:
        shape = (batch, *n.input_shape) if n.static else (T, batch, *n.input_shape)
        out[n.name] = rng.standard_normal(shape) if n.input_kind is ir.Kind.REAL else \
            (rng.random(shape) < 0.5).astype(np.float64)
    return out


@register_pass(lossy=True)
def quantize_for_loihi2(graph: Graph, calibrate=None, input_bits: int = 8,
                        max_weight_error: float = 0.05,
                        bias_exp: int | None = NETX_BIAS_EXP) -> Graph:
    """Quantize weights (8 bits + exponent), thresholds, biases and decays for Loihi 2;
    every neuron's bias a 13-bit mantissa << ``bias_exp`` (None: the smallest exponent that
    fits, 0 .. 7)."""
    if bias_exp is not None and not 0 <= bias_exp <= fxp.BIAS_EXP_MAX:
        raise PassError(f"bias_exp must be 0 .. {fxp.BIAS_EXP_MAX} or None, not {bias_exp}")
    T = int(graph.meta.get("T", 1))
    size = calibration_batch(graph, T)
    x = calibrate if calibrate is not None else calibration_inputs(graph, size)
    plan = _classify(graph, {k: _peak(v) for k, v in _by_input(graph, x).items()}, input_bits,
                     bias_exp)
    batches = _batches(graph, x, size)
    float_graph = graph.copy()  # this graph's nodes are replaced below; its arrays are shared
    float_sim, peaks, float_spikes = _float_peaks(float_graph, batches, T)
    _choose_free_scales(graph, plan, peaks)
    rounded = {plan.root(m) for m in plan.val if isinstance(graph[m], SYNAPSES)}
    neurons, synapses = {}, {}
    for n in graph.of_type(ir.Neuron):
        if n.name in plan.host_neurons:  # float, as it is
            continue
        syn, labels = plan.folded.get(n.name, (None, None))
        bias = 0.0 if syn is None or graph[syn].bias is None else graph[syn].bias[labels]
        if np.any(n.gamma <= 0):
            raise PassError(f"neuron {where(n)}: gamma must be positive to scale its membrane")
        src = n.inputs[0]
        exact_input = plan.root(src) == plan.unit and plan.unit not in rounded
        new, q = _quantize_neuron(n, plan.scale(src), exact_input, peaks.value[src],
                                  peaks.charge[n.name], bias, T, bias_exp)
        graph.replace(n.name, new)
        neurons[n.name] = q
    folded = {syn: n for n, (syn, _) in plan.folded.items()}
    for n in graph.of_type(*SYNAPSES):
        if n.name in plan.val:
            new, synapses[n.name] = _quantize_synapse(
                n, plan.scale(n.name) / plan.scale(n.inputs[0]), plan.scale(n.name),
                folded.get(n.name))
            graph.replace(n.name, new)
    for n in graph.of_type(ir.Pad):
        if n.name in plan.val:
            graph.replace(n.name, node_with(n, value=np.round(plan.scale(n.name) * n.value)))
    encoders = _insert_encoders(graph, plan, input_bits)
    _insert_dequantizers(graph, plan)
    for name in plan.absorbed:
        bypass(graph, name)
    graph.meta["loihi2"] = {"encoders": encoders}
    graph.verify(allow_dead=True)
    _report(graph, plan, batches, calibrate is None, T, (float_sim, float_spikes), neurons,
            synapses, max_weight_error)
    return graph


def _insert_encoders(graph: Graph, plan: _Plan, bits: int) -> dict[str, int]:
    out = {}
    for name, s in plan.encoders.items():
        inp = graph[name]
        enc = ir.Scale(graph.fresh(f"{name}.encode"), (name,), inp.path, factor=s)
        graph.rewire(name, enc.name)
        graph.add(enc)
        plan.val[enc.name] = plan.val[name]
        out[enc.name] = bits
    return out


def _insert_dequantizers(graph: Graph, plan: _Plan) -> None:
    """A ``Scale`` by 1/S on every edge from the chip to the host whose value has S != 1."""
    for n in list(graph):
        if n.name in plan.val:
            continue
        for i in n.inputs:
            if i in plan.val and plan.scale(i) != 1.0:
                deq = ir.Scale(graph.fresh(f"{i}.dequantize"), (i,), graph[i].path,
                               factor=1.0 / plan.scale(i))
                graph.add(deq)
                n.inputs = tuple(deq.name if j == i else j for j in n.inputs)


# ----------------------------------------------------------------------------- the report


def _headroom(peak: int) -> float | None:
    """Bits to spare before 24-bit saturation at ``peak`` (None: never nonzero)."""
    return round(math.log2((nrn.LOIHI2_STATE_MAX - 1) / peak), 2) if peak else None


class _Agreement:
    """The float and fixed-point runs compared, batch by batch: per neuron layer the number of
    equal spikes, of spikes in each run and of values; equal output argmaxes, samples, and the
    most samples in one run."""

    def __init__(self):
        self.layers: dict[str, np.ndarray] = {}  # equal, float spikes, fixed spikes, values
        self.argmax_equal = self.samples = self.per_run = 0
        self.classes = True

    def add(self, ref: _Spikes, got: _Spikes) -> None:
        for name, s_f in ref.neurons.items():
            s_q = got.neurons[name]
            counts = np.array([np.count_nonzero(s_f == s_q), np.count_nonzero(s_f),
                               np.count_nonzero(s_q), s_f.size])
            self.layers[name] = self.layers.get(name, 0) + counts
        self.classes = ref.output.ndim > 1
        if self.classes:
            self.argmax_equal += int(np.sum(ref.output.argmax(-1) == got.output.argmax(-1)))
        self.samples += ref.output.shape[0]
        self.per_run = max(self.per_run, ref.output.shape[0])

    def of(self, name: str) -> tuple[float, float, float]:
        """Spike agreement, float rate and fixed-point rate of a neuron layer."""
        equal, ref, got, size = self.layers[name]
        return equal / size, ref / size, got / size


def _compare(graph: Graph, batches: list, T: int, float_runs) -> tuple[_Agreement, dict]:
    """The fixed-point network against the float one on ``batches``, one batch at a time
    (``float_runs``: the float simulator, and the spikes of a single batch's run if kept);
    and the fixed-point run's peaks (:attr:`FixedPointSimulator.peaks`) over all batches."""
    from snncc.simulator import SPIKES, FixedPointSimulator

    float_sim, kept = float_runs
    sim, agreement, peaks = FixedPointSimulator(graph), _Agreement(), {}
    with progress("calibrating: fixed point against float", len(batches), "batches") as done:
        for x in batches:
            ref = kept if kept is not None else \
                _Spikes.of(float_sim.graph, float_sim.run(x, T, record=SPIKES))
            agreement.add(ref, _Spikes.of(graph, sim.run(x, T, record=SPIKES)))
            for node, p in sim.peaks.items():
                mine = peaks.setdefault(node, {})
                for what, v in p.items():
                    mine[what] = max(mine.get(what, 0), v)
            done.advance()
    return agreement, peaks


def _report(graph: Graph, plan: _Plan, batches: list, random_inputs: bool, T: int, float_runs,
            neurons: dict, synapses: dict, max_weight_error: float) -> None:
    agreement, peaks = _compare(graph, batches, T, float_runs)
    notes: list[str] = []
    layers = []
    for n in graph.topological_order():
        if n.name in synapses:
            layers.append(_synapse_entry(graph, plan, synapses[n.name], peaks, notes,
                                         max_weight_error))
        elif n.name in neurons:
            layers.append(_neuron_entry(neurons[n.name], agreement, peaks, notes,
                                        plan.bias_exp))
    layer_agreement = [(e["spike_agreement"], e["neurons"]) for e in layers
                       if e["kind"] == "neuron"]
    summary = {
        "spike_agreement": sum(a * k for a, k in layer_agreement) /
        max(1, sum(k for _, k in layer_agreement)),
        "min_spike_agreement": min([a for a, _ in layer_agreement], default=1.0),
        "output_argmax_agreement": agreement.argmax_equal / agreement.samples
        if agreement.classes else None,
        "calibration": {"inputs": "random" if random_inputs else "given",
                        "batch": agreement.samples, "T": T, "per_run": agreement.per_run},
        "bias_exp": plan.bias_exp,
        "host_neurons": plan.host_neurons,
        "encoders": {k: {"scale": plan.encoders[graph[k].inputs[0]], "bits": b}
                     for k, b in graph.meta["loihi2"]["encoders"].items()},
    }
    for msg in notes:
        warnings.warn(msg, QuantizationWarning, stacklevel=3)
    report(graph, "quantize_for_loihi2", layers=layers, warnings=notes, **summary)


def _synapse_entry(graph, plan, q: _SynapseQ, peaks, notes, max_weight_error) -> dict:
    n = q.node
    entry = {"node": n.name, "path": n.path, "op": n.op, "kind": "synapse",
             "sign_mode": q.fmt.sign_mode, "exponent": q.fmt.exp, "scale": q.scale,
             "weight_error": q.rms_error, "max_error_steps": q.max_error,
             "zeroed_weights": q.zeroed, "bias": q.bias,
             "scale_limited_by": plan.bound.get(plan.root(n.name),
                                                "unit scale of the spikes it is added to")}
    acc = peaks.get(n.name, {}).get("acc")
    if acc is not None:
        entry["accumulator_headroom_bits"] = _headroom(acc)
        if acc >= fxp.ACC_MAX:
            notes.append(f"{where(n)}: its 24-bit accumulator wrapped on the calibration inputs "
                         f"(peak {acc})")
    if q.rms_error > max_weight_error:
        notes.append(_weight_warning(n, q, entry["scale_limited_by"]))
    return entry


def _weight_warning(n: ir.Node, q: _SynapseQ, limited_by: str) -> str:
    """Why a synapse's weights lost more than rounding: one outlier the shared exponent must
    fit, or a scale another limit kept small."""
    a = np.abs(q.weight[q.weight != 0])
    p99 = float(np.percentile(a, 99))
    lo, hi = fxp.SIGN_MODES[q.fmt.sign_mode]
    used, levels = int(_peak(q.fmt.mantissa)), hi if hi > 0 else -lo
    head = (f"{where(n)}: weight quantization error {q.rms_error:.1%} of the typical weight "
            f"({q.zeroed:.0%} of the nonzero weights become 0): ")
    if a.max() >= OUTLIER_RATIO * p99:
        return head + (f"one exponent per layer must fit its largest |w| = {a.max():.4g}, "
                       f"{a.max() / p99:.0f}x the 99th percentile ({p99:.4g}), so the weight "
                       f"step is {2 ** q.fmt.exp / q.scale:.4g} and most weights get few of "
                       f"the 8-bit levels")
    return head + (f"its largest weight uses {used} of {levels} levels because its scale is "
                   f"set by the {limited_by}")


def _neuron_entry(q: _NeuronQ, agreement: _Agreement, peaks, notes,
                  bias_exp: int | None) -> dict:
    n = q.node
    p = peaks.get(n.name, {})
    spike_agreement, rate_float, rate_fixed = agreement.of(n.name)
    entry = {"node": n.name, "path": n.path, "kind": "neuron", "neurons": int(np.prod(n.shape)),
             "scale": float(np.max(q.k)), "vth": int(np.max(n.theta)),
             "dv": int(np.max(nrn.LOIHI2_DECAY_UNITY * (1 - n.alpha))),
             "gamma": int(np.max(n.gamma)), "exact": q.exact,
             "threshold_error": q.threshold_error, "bias_error": q.bias_error,
             "alpha_error": q.alpha_error,
             "voltage_headroom_bits": _headroom(p.get("v", 0)),
             "current_headroom_bits": _headroom(p.get("input", 0)),
             "spike_agreement": float(spike_agreement), "rate_float": float(rate_float),
             "rate_fixed": float(rate_fixed)}
    problems = []
    if p.get("v", 0) >= nrn.LOIHI2_STATE_MAX - 1:
        problems.append("its 24-bit voltage saturated")
    if p.get("input", 0) >= nrn.LOIHI2_STATE_MAX:
        problems.append("its 24-bit current wrapped")
    if q.bias_saturated:
        problems.append(f"{q.bias_saturated} bias(es) exceed 13 bits << "
                        f"{fxp.BIAS_EXP_MAX if bias_exp is None else bias_exp} and were clipped")
    if q.bias_error > MAX_BIAS_ERROR:
        problems.append(f"its bias is off by {q.bias_error:.0%} of its threshold per step "
                        f"(bias exponent {'0 .. 7' if bias_exp is None else bias_exp})")
    if q.threshold_clipped:
        problems.append(f"{q.threshold_clipped} threshold(s) outside 0 .. {fxp.VTH_MAX} clipped")
    if q.threshold_error > MAX_THRESHOLD_ERROR:
        problems.append(f"its threshold is off by {q.threshold_error:.0%}: vth = "
                        f"{entry['vth']} at membrane scale {entry['scale']:.4g} (the scale of its "
                        f"input is too small)")
    if q.alpha_error > 1 / nrn.LOIHI2_DECAY_UNITY:
        problems.append(f"its decay is off by {q.alpha_error:.3g} (12-bit dv)")
    if problems:
        notes.append(f"{where(n)}: " + "; ".join(problems) +
                     f" (spike agreement {entry['spike_agreement']:.1%})")
    return entry
