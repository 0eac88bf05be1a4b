"""Loihi 2 fixed-point arithmetic of a quantized graph: what Lava's bit-accurate (``fixed_pt``)
process models compute, so the IR simulator can stand in for Lava.

A graph is *quantized for Loihi 2* (the pass ``quantize_for_loihi2`` makes one) when every value
on the chip is an integer and every chip parameter is one Loihi 2 can hold. In the
``"loihi2"`` arithmetic (``simulate(graph, x, arithmetic="loihi2")``) nodes compute:

- **Encoder** (a ``Scale`` named in ``graph.meta["loihi2"]["encoders"]`` with its bit width b,
  right after a real-valued Input): the host's encoding ``clip(round(x * factor), -2^(b-1),
  2^(b-1) - 1)`` (round half to even).
- **Conv1d / Conv2d** on integers (Lava ``Conv``, ``PyConvModelFixed``): ``wrap24(conv(x, W)) +
  b``, where wrap24 is Lava's ``signed_clamp(., 24)``, ``(y + 2^23) mod 2^24 - 2^23``; b is a
  bias process after the synapse (Lava's Conv has none). W are integers ``m * 2^e`` (below).
- **Linear** on integers (Lava ``Dense`` / ``Sparse``, ``PyDenseModelBitAcc``): ``W x + b``,
  exact integers (Lava's model does not wrap its int32 accumulator).
- **Neuron** (Lava ``LIF``, ``PyLifModelBitAcc``): :func:`snncc.neuron.loihi2_fixed_step` with
  du = 4095 (u[t] = a_in[t] << 6, no current filter), on ``a_in = gamma * x``. The IR parameters
  of a quantized neuron are the integer ones read in units of one synaptic input (v = V / 64, V
  the 24-bit voltage): ``alpha = (4096 - dv) / 4096``, ``gamma`` an integer, ``beta = (bias_mant
  << bias_exp) / 64``, ``theta = vth`` (an integer, 0 .. 2^17 - 1, with ``cmp = '>'``),
  ``v_reset = V_reset / 64``, ``v_init = V_init / 64``. So the float simulator on the same graph
  computes the same network in real arithmetic (without rounding the decay toward zero and
  without saturation).
- Every other node computes as in float; on integers the chip's ops (layout, max-pool, Add,
  spike matmuls, Sum, Concat, Delay, Pad and Scale by integers) stay exact integers. Mean,
  AvgPool and Readout leave the chip: what follows them (the classifier head) runs on the host in
  float64, weights as they are.

**Weights.** Loihi 2 stores an 8-bit mantissa m per synapse and one exponent per layer; Lava's
Dense takes a sign mode: mixed (m in [-128, 127]; Lava truncates the given weight's least
significant bit, so it is given as 2 m with ``weight_exp = e - 1``), excitatory (m in [0, 255])
or inhibitory (m in [-255, 0]), given as m with ``weight_exp = e``. The effective weight is
``m * 2^e``; quantized graphs use e >= 0 so that every weight is an integer (Lava's Dense shifts
its sum right for e < 0, rounding toward -inf, and Lava's fixed Conv ignores ``weight_exp``
altogether: it is given the effective integer weights). :func:`weight_format` finds (sign mode,
e) of integer weights; :func:`lava_dense_params` gives Lava's Dense arguments.

**Where Lava's models are inexact.** ``PyConvModelFixed`` convolves in float32 (torch), exact
while every partial sum stays below 2^24 in magnitude (always for binary spikes and 8-bit
weights up to a fan-in of 2^15; not for wide graded inputs): this module computes the exact
integers. Lava's LIF shifts ``a_in`` in int32, so |a_in| must stay below 2^25.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from . import ir
from . import neuron as nrn
from .errors import UnsupportedError
from .graph import Graph

if TYPE_CHECKING:  # the kernels take tensors; the rest of this module runs without torch
    import torch

#: the largest threshold mantissa (unsigned 17-bit) and decay (unsigned 12-bit)
VTH_MAX = 2 ** 17 - 1
DECAY_MAX = 4095
#: bias: signed 13-bit mantissa, exponent 0 .. 7
BIAS_MANT_MIN, BIAS_MANT_MAX = -4096, 4095
BIAS_EXP_MAX = 7
BIAS_MAX = BIAS_MANT_MAX << BIAS_EXP_MAX
#: mantissa range of one synaptic weight in each of Lava's sign modes
SIGN_MODES = {"mixed": (-128, 127), "excitatory": (0, 255), "inhibitory": (-255, 0)}
#: Lava's ``lava.utils.weightutils.SignMode`` member names
LAVA_SIGN_MODE = {"mixed": "MIXED", "excitatory": "EXCITATORY", "inhibitory": "INHIBITORY"}
#: a 24-bit synaptic accumulator wraps at +-2^23 (Lava's fixed Conv)
ACC_MAX = 2 ** 23
SYNAPSES = (ir.Conv1d, ir.Conv2d, ir.Linear)


def sign_mode(w: np.ndarray) -> str:
    """Lava's ``determine_sign_mode``: excitatory if no weight is negative, inhibitory if none
    is positive, else mixed (all-zero weights count as excitatory)."""
    if np.min(w, initial=0.0) >= 0:
        return "excitatory"
    return "inhibitory" if np.max(w, initial=0.0) <= 0 else "mixed"


def is_integer(a) -> bool:
    a = np.asarray(a)
    head = a.ravel()[:1024]  # a float model's weights fail here, without a pass over them all
    return bool(np.all(head == np.round(head)) and np.all(a == np.round(a)))


# ----------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class WeightFormat:
    """Integer weights as Loihi 2 stores them: ``weights = mantissa * 2^exp``."""

    sign_mode: str
    exp: int
    mantissa: np.ndarray


def weight_format(w: np.ndarray) -> WeightFormat | None:
    """The smallest exponent e >= 0 at which the integer weights ``w`` are 8-bit mantissas of
    their sign mode times 2^e, or None if no e works (not integers, or too large)."""
    if not is_integer(w):
        return None
    mode = sign_mode(w)
    lo, hi = SIGN_MODES[mode]
    w = np.asarray(w, dtype=np.int64)
    e = 0
    while np.all((w >> e) << e == w):  # ends: a nonzero w is not a multiple of every 2^e
        m = w >> e
        if m.min(initial=0) >= lo and m.max(initial=0) <= hi:
            return WeightFormat(mode, e, m)
        e += 1
    return None


def lava_dense_params(w: np.ndarray) -> dict:
    """Arguments of Lava's ``Dense`` / ``Sparse`` (``weights``, ``weight_exp``,
    ``num_weight_bits``, and ``sign_mode``: the name of a ``SignMode`` member, to be passed as
    ``SignMode[name]``) whose bit-accurate model computes
    ``w @ x`` exactly for integer weights w that :func:`weight_format` accepts. A mixed-sign
    mantissa m is given as 2 m with ``weight_exp = e - 1`` (the model clears the given weight's
    lowest bit, then shifts the even sum right by one: exact)."""
    f = weight_format(w)
    if f is None:
        raise UnsupportedError("weights are not 8-bit mantissas with one exponent")
    mixed = f.sign_mode == "mixed"
    return {"weights": (f.mantissa * (2 if mixed else 1)).astype(np.int32),
            "weight_exp": f.exp - int(mixed), "num_weight_bits": 8,
            "sign_mode": LAVA_SIGN_MODE[f.sign_mode]}


# ----------------------------------------------------------------------------- biases


def bias_format(b) -> tuple[np.ndarray, np.ndarray] | None:
    """(bias_mant, bias_exp) per element for the integer effective biases ``b`` (V units): the
    smallest exponent in 0 .. 7 at which b is a 13-bit mantissa times 2^exp; None if some
    element has none."""
    b = np.asarray(b, dtype=np.float64)
    if not is_integer(b):
        return None
    b = b.astype(np.int64)
    mant, exp = np.zeros_like(b), np.full(b.shape, -1)
    for e in range(BIAS_EXP_MAX, -1, -1):
        m = b >> e
        ok = (m << e == b) & (m >= BIAS_MANT_MIN) & (m <= BIAS_MANT_MAX)
        mant, exp = np.where(ok, m, mant), np.where(ok, e, exp)
    return None if np.any(exp < 0) else (mant, exp)


def quantize_bias(b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The representable effective bias nearest to real ``b`` (V units): returns (mant, exp,
    saturated mask); the exponent is the smallest that fits, +-4095 * 2^7 where none does."""
    b = np.asarray(b, dtype=np.float64)
    exp = np.full(b.shape, BIAS_EXP_MAX)
    for e in range(BIAS_EXP_MAX, -1, -1):
        m = np.round(b / 2.0 ** e)
        exp = np.where((m >= BIAS_MANT_MIN) & (m <= BIAS_MANT_MAX), e, exp)
    mant = np.round(b / 2.0 ** exp)
    saturated = (mant > BIAS_MANT_MAX) | (mant < BIAS_MANT_MIN)
    return np.clip(mant, BIAS_MANT_MIN, BIAS_MANT_MAX).astype(np.int64), exp, saturated


# ----------------------------------------------------------------------------- neurons


@dataclass(frozen=True)
class Loihi2Neuron:
    """The integer parameters of one quantized neuron layer (arrays broadcast to its shape);
    ``v_reset``, ``v_init`` and the effective ``bias`` are in V units (24-bit voltage)."""

    gamma: np.ndarray
    dv: np.ndarray
    vth: np.ndarray
    bias_mant: np.ndarray
    bias_exp: np.ndarray
    v_reset: np.ndarray
    v_init: np.ndarray
    reset: str
    du: int = DECAY_MAX  # the canonical neuron does not filter its input current

    @property
    def bias(self) -> np.ndarray:
        return nrn.loihi2_bias(self.bias_mant, self.bias_exp)


def loihi2_neuron(n: ir.Neuron) -> tuple[Loihi2Neuron | None, list[str]]:
    """The integer parameters of a quantized neuron (module doc), or (None, the reasons why
    ``n`` is not one)."""
    scale = 2 ** nrn.LOIHI2_ACT_SHIFT
    dv = nrn.LOIHI2_DECAY_UNITY * (1 - n.alpha)
    bias, v_reset, v_init = n.beta * scale, n.v_reset * scale, n.v_init * scale
    fmt = bias_format(bias)
    checks = [
        (n.cmp == nrn.CMP_GT, f"comparison {n.cmp!r} (Loihi 2 fires on v > vth)"),
        (is_integer(n.gamma), "gamma is not an integer"),
        (is_integer(dv) and np.all((dv >= 0) & (dv <= DECAY_MAX)),
         "alpha is not (4096 - dv) / 4096 with an integer dv in 0 .. 4095"),
        (is_integer(n.theta) and np.all((n.theta >= 0) & (n.theta <= VTH_MAX)),
         f"theta is not an integer threshold in 0 .. {VTH_MAX}"),
        (fmt is not None, "64 * beta is not a 13-bit bias mantissa << exponent 0 .. 7"),
        (is_integer(v_reset) and is_integer(v_init)
         and np.all(np.abs(v_reset) < nrn.LOIHI2_STATE_MAX)
         and np.all(np.abs(v_init) < nrn.LOIHI2_STATE_MAX),
         "64 * v_reset or 64 * v_init is not a 24-bit integer"),
    ]
    problems = [msg for ok, msg in checks if not ok]
    if problems:
        return None, problems
    return Loihi2Neuron(gamma=_int(n.gamma), dv=_int(dv), vth=_int(n.theta), bias_mant=fmt[0],
                        bias_exp=fmt[1], v_reset=_int(v_reset), v_init=_int(v_init),
                        reset=n.reset), []


def _int(a) -> np.ndarray:
    return np.asarray(a).astype(np.int64)


def lava_lif_params(q: Loihi2Neuron, shape: tuple) -> dict:
    """Arguments of Lava's ``LIF`` / ``LIFReset`` whose bit-accurate model runs the quantized
    neuron layer ``q`` on input ``a_in`` = x: ``du``, ``dv``, ``vth`` (one per process),
    ``bias_mant``, ``bias_exp`` (per neuron). Raises UnsupportedError naming what Lava's LIF
    lacks: gamma != 1 (a Scale in front must multiply), per-neuron dv or vth, a soft reset,
    v_reset or v_init != 0 (snncc's custom neuron covers those)."""
    lacks = [why for bad, why in [
        (np.any(q.gamma != 1), "an input multiplier gamma != 1"),
        (np.unique(q.dv).size > 1, "per-neuron decays"),
        (np.unique(q.vth).size > 1, "per-neuron thresholds"),
        (q.reset != nrn.RESET_HARD or np.any(q.v_reset != 0), "a reset other than to 0"),
        (np.any(q.v_init != 0), "a start other than 0")] if bad]
    if lacks:
        raise UnsupportedError("Lava's LIF has no " + ", ".join(lacks))
    full = lambda a: np.broadcast_to(a, shape).copy()  # noqa: E731
    return {"du": q.du, "dv": int(q.dv.flat[0]), "vth": int(q.vth.flat[0]),
            "bias_mant": full(q.bias_mant), "bias_exp": full(q.bias_exp)}


# ----------------------------------------------------------------------------- the chip region

#: ops whose output is an integer when every input is
EXACT_OPS = (ir.Reshape, ir.Flatten, ir.Transpose, ir.Gather, ir.MaxPool2d, ir.Add, ir.Concat,
             ir.Hadamard, ir.SpikeMatMul, ir.AddressedAccumulate, ir.Sum, ir.Delay)


@dataclass
class FixedPointView:
    """How the ``"loihi2"`` arithmetic reads a quantized graph: ``encoders`` (Scale node ->
    bits), ``chip`` (the nodes whose values are integers), ``neurons`` (integer parameters)."""

    encoders: dict[str, int]
    chip: set[str] = field(default_factory=set)
    neurons: dict[str, Loihi2Neuron] = field(default_factory=dict)


def encoders(graph: Graph) -> dict[str, int]:
    return dict(graph.meta.get("loihi2", {}).get("encoders", {}))


def fixed_point_view(graph: Graph) -> FixedPointView:
    """Check that ``graph`` is quantized for Loihi 2 (module doc) and say how to run it; raises
    UnsupportedError listing every node that is not, with its module path."""
    # A Delay closing a loop comes before its input: taken to be on the chip, and the walk
    # repeated without those whose input turns out not to be (the loop's largest integer part).
    assumed = {n.name for n in graph.of_type(ir.Delay)}
    while True:
        view, problems, closing = _walk_chip(graph, assumed)
        off = {d for d in closing if graph[d].inputs[0] not in view.chip}
        if not off:
            break
        assumed -= off
    if problems:
        raise UnsupportedError("not quantized for Loihi 2 (run quantize_for_loihi2): "
                               + "; ".join(problems), node=graph.name)
    return view


def _walk_chip(graph: Graph, assumed: set[str]) -> tuple[FixedPointView, list[str], list[str]]:
    """One walk of :func:`fixed_point_view`: (the view, the problems, the Delays closing a loop
    taken to be on the chip because they are in ``assumed``)."""
    view = FixedPointView(encoders(graph))
    problems, closing = [], []
    host: set[str] = set()  # the host's values after a mean of the chip's (the head)
    read: set[str] = set()  # Scales reading the chip's values on the host

    def bad(n: ir.Node, why: str):
        problems.append(f"{n.name}{' (' + n.path + ')' if n.path else ''}: {why}")

    done: set[str] = set()
    for n in graph.topological_order():
        if isinstance(n, ir.Delay) and n.inputs[0] not in done:
            done.add(n.name)
            if n.name in assumed:
                closing.append(n.name)
                view.chip.add(n.name)
            continue
        exact = bool(n.inputs) and all(i in view.chip for i in n.inputs)
        done.add(n.name)
        if isinstance(n, ir.Input):
            on = n.kind.integral
        elif n.name in view.encoders:
            on = True
        elif isinstance(n, ir.Scale):
            on = exact and is_integer(n.factor)
        elif isinstance(n, ir.Pad):
            on = exact and is_integer(n.value)
        elif isinstance(n, SYNAPSES):
            on = exact
            if exact and weight_format(n.weight) is None:
                bad(n, "weights are not 8-bit mantissas times 2^e (e >= 0)")
            if exact and n.bias is not None and not is_integer(n.bias):
                bad(n, "bias is not an integer")
        elif isinstance(n, ir.Neuron) and not exact and any(i in host for i in n.inputs):
            on = False  # on the host, in floating point (a spiking head on the token mean)
        elif isinstance(n, ir.Neuron):
            on = True
            if not exact:
                bad(n, "its input is not an integer on the chip")
            q, why = loihi2_neuron(n)
            for w in why:
                bad(n, w)
            if q is not None:
                view.neurons[n.name] = q
        else:  # (a Mean is a Sum, divided: not an integer)
            on = exact and isinstance(n, EXACT_OPS) and not isinstance(n, ir.Mean)
        if on:
            view.chip.add(n.name)
        elif isinstance(n, ir.Scale) and all(i in view.chip for i in n.inputs):
            read.add(n.name)  # the chip's integers as real values (a dequantizing Scale)
        if not on and (any(i in host for i in n.inputs) or (
                isinstance(n, (ir.Mean, ir.Readout))
                and any(i in view.chip or i in read for i in n.inputs))):
            host.add(n.name)
    return view, problems, closing


def signed_wrap24(x: torch.Tensor) -> torch.Tensor:
    """Lava's ``signed_clamp(x, 24)``: ``(x + 2^23) mod 2^24 - 2^23`` on integer values."""
    return (x + ACC_MAX).remainder(2 * ACC_MAX) - ACC_MAX


# ----------------------------------------------------------------------------- kernels
# What the simulator's "loihi2" arithmetic (snncc.simulator.FixedPointSimulator) computes where
# it differs from floats. This module does not import the simulator: the simulator chooses these
# kernels by arithmetic.


def encode(x: torch.Tensor, factor: torch.Tensor, bits: int) -> torch.Tensor:
    """The host's encoder: ``clip(round(x * factor), -2^(bits-1), 2^(bits-1) - 1)`` (round half
    to even)."""
    lim = 2 ** (bits - 1)
    return (x * factor).round().clamp(-lim, lim - 1)


def neuron_state(q: Loihi2Neuron, shape: tuple, batch: int) -> dict:
    """A quantized neuron layer's state at the start of a run: integer parameters (int64
    tensors), du, and u = 0, v = V_init per sample."""
    import torch

    p = {k: torch.as_tensor(np.asarray(getattr(q, k)), dtype=torch.int64)
         for k in ("gamma", "dv", "vth", "bias", "v_reset")}
    v = torch.as_tensor(q.v_init, dtype=torch.int64).expand(batch, *shape).clone()
    return {"p": p, "du": q.du, "u": torch.zeros_like(v), "v": v}


def neuron_step(state: dict, x: torch.Tensor, reset: str):
    """One step of :func:`snncc.neuron.loihi2_fixed_step` on ``a_in = gamma * x`` (x holds
    integers: :func:`fixed_point_view` checked), updating ``state`` (:func:`neuron_state`).
    Returns (spikes, v[t], a_in << 6, h[t]) as int64: v in V units (the IR's membrane is
    v / 64); the last two are what the chip's 24-bit registers must hold."""
    p = state["p"]
    a = p["gamma"] * x.long()
    s, state["u"], state["v"], h = nrn.loihi2_fixed_step(
        state["u"], state["v"], a, state["du"], p["dv"], p["vth"], p["bias"], p["v_reset"],
        reset)
    return s, state["v"], a << nrn.LOIHI2_ACT_SHIFT, h
