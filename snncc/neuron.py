"""The neuron: snncc's one canonical discrete-time form (DESIGN.md, "The neuron").

For neuron i with input current x[t]::

    h[t] = alpha * v[t-1] + gamma * x[t] + beta        (charge)
    s[t] = 1 if h[t] CMP theta else 0                   (fire; CMP is >= or >)
    v[t] = v_reset if s[t] else h[t]                    (hard reset)
         | h[t] - theta * s[t]                          (soft reset)
    v[-1] = v_init

This module is the single place that states the formula. The simulator, the zoo's PyTorch
neurons, the passes and every back-end import it; the functions only use arithmetic and
comparisons, so they work unchanged on numpy arrays and torch tensors. The ``from_*``
functions map the papers' and frameworks' parameterisations onto the canonical form, and the
``to_*`` functions map it onto a target's own neuron model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .errors import UnsupportedError

CMP_GE = ">="
CMP_GT = ">"
RESET_HARD = "hard"
RESET_SOFT = "soft"
CMPS = (CMP_GE, CMP_GT)
RESETS = (RESET_HARD, RESET_SOFT)


def charge(v, x, alpha, gamma, beta):
    """h = alpha * v + gamma * x + beta (this operation order, everywhere)."""
    return alpha * v + gamma * x + beta


def fire(h, theta, cmp: str):
    """Boolean spike mask: h >= theta or h > theta."""
    return h >= theta if cmp == CMP_GE else h > theta


def reset(h, s, theta, v_reset, mode: str):
    """Membrane after the spike decision; ``s`` is the spike as 0/1 of h's dtype.

    Written with arithmetic only (no ``where``) so numpy and torch share it; both forms are
    exact: ``h * 1 + v_reset * 0 == h`` and ``h * 0 + v_reset * 1 == v_reset`` for finite h.
    """
    if mode == RESET_HARD:
        return h * (1 - s) + v_reset * s
    return h - theta * s


def as_spikes(mask, like):
    """Cast a boolean mask to 0/1 in the dtype of ``like`` (numpy or torch)."""
    if isinstance(like, np.ndarray) or np.isscalar(like):
        return np.asarray(mask).astype(np.asarray(like).dtype)
    return mask.to(like.dtype)


def step(v, x, alpha, gamma, beta, theta, v_reset, cmp: str, mode: str):
    """One time step; returns (spikes, new membrane, charged membrane h)."""
    h = charge(v, x, alpha, gamma, beta)
    s = as_spikes(fire(h, theta, cmp), h)
    return s, reset(h, s, theta, v_reset, mode), h


def next_below(theta, dtype=np.float64):
    """The largest value strictly below theta in ``dtype``: ``h >= theta`` == ``h > next_below``.

    For integer-valued (count) inputs a caller may use theta - 1 instead; this function is for
    real-valued membranes, where the exact equivalence needs the adjacent float.
    """
    t = np.asarray(theta, dtype=dtype)
    return np.nextafter(t, np.asarray(-np.inf, dtype=dtype))


@dataclass(frozen=True)
class CanonicalParams:
    """Canonical parameters produced by the ``from_*`` mappings: numbers, or arrays of one per
    neuron (broadcastable to a step's shape) where a library has them so (snnTorch's tensor
    ``beta``)."""

    alpha: float
    gamma: float
    beta: float
    theta: float
    v_reset: float
    reset: str
    cmp: str
    v_init: float = 0.0

    def same_as(self, other: "CanonicalParams") -> bool:
        """Equal field by field (arrays element by element; ``==`` cannot compare arrays)."""
        return all(np.array_equal(getattr(self, f.name), getattr(other, f.name))
                   for f in dataclasses.fields(self))

    def fields(self, **overrides) -> dict:
        """The keyword arguments of an ``ir.Neuron`` with these parameters (the field names are
        the same), with ``overrides`` replacing some."""
        return {**dataclasses.asdict(self), **overrides}


def from_lif(tau: float, v_threshold: float = 1.0, v_reset: float | None = 0.0,
             decay_input: bool = True, cmp: str = CMP_GE) -> CanonicalParams:
    """spikingjelly ``LIFNode`` (and the zoo's LIF): alpha = 1 - 1/tau; gamma = 1/tau if the
    input decays else 1; beta = v_reset/tau; ``v_reset=None`` means soft reset; H(0)=1 gives
    ``>=``. The membrane starts at v_reset (0 for soft reset), as in spikingjelly."""
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be positive and finite, got {tau}")
    vr = 0.0 if v_reset is None else float(v_reset)
    return CanonicalParams(
        alpha=1.0 - 1.0 / tau, gamma=(1.0 / tau) if decay_input else 1.0, beta=vr / tau,
        theta=float(v_threshold), v_reset=vr,
        reset=RESET_SOFT if v_reset is None else RESET_HARD, cmp=cmp, v_init=vr)


def from_if(v_threshold: float = 1.0, v_reset: float | None = 0.0) -> CanonicalParams:
    """spikingjelly ``IFNode``: h = v + x."""
    vr = 0.0 if v_reset is None else float(v_reset)
    return CanonicalParams(alpha=1.0, gamma=1.0, beta=0.0, theta=float(v_threshold), v_reset=vr,
                           reset=RESET_SOFT if v_reset is None else RESET_HARD, cmp=CMP_GE,
                           v_init=vr)


def from_decay_lif(decay: float, v_threshold: float, v_reset: float = 0.0) -> CanonicalParams:
    """Auto-Spikformer eq. 1 / Meta-SpikeFormer eqs. 4-6: h = decay * v + x, hard reset."""
    return CanonicalParams(alpha=float(decay), gamma=1.0, beta=0.0, theta=float(v_threshold),
                           v_reset=float(v_reset), reset=RESET_HARD, cmp=CMP_GE,
                           v_init=float(v_reset))


def from_snasnet_lif(tau: float, v_threshold: float) -> CanonicalParams:
    """SNASNet eqs. 2-3: h = (1 - 1/tau) v + x / tau, spike if h > theta (strict), reset to 0."""
    return CanonicalParams(alpha=1.0 - 1.0 / tau, gamma=1.0 / tau, beta=0.0,
                           theta=float(v_threshold), v_reset=0.0, reset=RESET_HARD, cmp=CMP_GT)


def from_nir(tau, r, v_leak, v_threshold, v_reset, dt: float):
    """NIR LIF ``tau dv/dt = (v_leak - v) + R I``, forward Euler at dt: alpha = 1 - dt/tau,
    gamma = dt R / tau, beta = dt v_leak / tau; NIR fires on ``v > v_threshold``.

    Arrays in, arrays out: returns (alpha, gamma, beta, theta, v_reset)."""
    tau = np.asarray(tau, dtype=np.float64)
    k = dt / tau
    return (1.0 - k, k * np.asarray(r, dtype=np.float64), k * np.asarray(v_leak, dtype=np.float64),
            np.asarray(v_threshold, dtype=np.float64), np.asarray(v_reset, dtype=np.float64))


def to_nir(alpha, gamma, beta, dt: float):
    """Inverse of :func:`from_nir` for 0 <= alpha < 1: returns (tau, r, v_leak).

    alpha = 1 (no leak) has no LIF form; callers map it to NIR's IF instead."""
    alpha = np.asarray(alpha, dtype=np.float64)
    k = 1.0 - alpha
    tau = dt / k
    return tau, np.asarray(gamma, dtype=np.float64) / k, np.asarray(beta, dtype=np.float64) / k


#: The NIR ecosystem's usual time step (snnTorch, Norse and Sinabs export with dt = 1e-4).
DEFAULT_DT = 1e-4


def from_nir_if(r, v_threshold, v_reset):
    """NIR IF (``dv/dt = R I``) as the NIR ecosystem steps it (Sinabs, Norse, snnTorch and the
    SpiNNaker2 / Lava converters): one step adds ``R x`` with no dt, so alpha = 1, gamma = R,
    beta = 0; fires on ``v > v_threshold``. Returns (alpha, gamma, beta, theta, v_reset).
    (An LIF written with r = tau/dt has gamma = dt r / tau = 1 in :func:`from_nir`, the same
    per-step gain.)"""
    r = np.asarray(r, dtype=np.float64)
    return (np.ones_like(r), r, np.zeros_like(r), np.asarray(v_threshold, dtype=np.float64),
            np.asarray(v_reset, dtype=np.float64))


def strict_threshold(theta, cmp: str, dtype=np.float64):
    """The threshold of the strict comparison equivalent to ``h CMP theta`` in ``dtype``:
    theta itself for '>', :func:`next_below` for '>=' (NIR and Lava only fire on '>')."""
    theta = np.asarray(theta, dtype=dtype)
    return theta if cmp == CMP_GT else next_below(theta, dtype)


def inclusive_threshold(theta, cmp: str, dtype=np.float64):
    """The threshold of the ``>=`` comparison equivalent to ``h CMP theta`` in ``dtype`` (for
    consumers that fire on ``>=``, as spikingjelly does): theta itself for '>=', the next value
    above it for '>'."""
    theta = np.asarray(theta, dtype=dtype)
    return theta if cmp == CMP_GE else np.nextafter(theta, np.asarray(np.inf, dtype=dtype))


@dataclass(frozen=True)
class LavaLIF:
    """Lava ``LIF`` parameters of one canonical neuron population (see :func:`to_lava_lif`)."""

    du: float
    dv: float
    vth: float
    bias: np.ndarray  # bias_mant = beta (a synaptic bias b folded in adds gamma * b)
    weight_scale: np.ndarray  # gamma: the factor the incoming weights must be multiplied by


def _uniform(a, name: str) -> float:
    a = np.asarray(a, dtype=np.float64)
    if not np.all(a == a.flat[0]):
        raise UnsupportedError(f"Lava's LIF has one {name} per process; this neuron's varies")
    return float(a.flat[0])


def to_lava_lif(alpha, gamma, beta, theta, v_reset, v_init, cmp: str, mode: str) -> LavaLIF:
    """The canonical neuron as Lava's LIF (``lava.proc.lif``, floating_pt model)::

        u[t] = (1 - du) * u[t-1] + a_in[t]
        v[t] = (1 - dv) * v[t-1] + u[t] + bias_mant
        s[t] = v[t] > vth;   v[t] = 0 where s[t]

    With du = 1 (u[t] = a_in[t]), a_in = gamma * x (gamma folded into the incoming weights),
    dv = 1 - alpha and bias_mant = beta this is v[t] = alpha * v[t-1] + gamma * x[t] + beta =
    h[t]; vth = :func:`strict_threshold` (theta for '>', next_below(theta) for '>=').

    Lava's LIF starts and resets at 0 and has one dv and one vth per process, so the neuron
    needs a hard reset, v_reset = v_init = 0, one alpha, one theta, and 1 - (1 - alpha) == alpha
    exactly (so Lava's decay is the canonical one to the bit). Raises UnsupportedError naming
    the first condition that fails.
    """
    if mode != RESET_HARD:
        raise UnsupportedError("Lava's LIF resets hard; this neuron resets by subtraction")
    if np.any(np.asarray(v_reset) != 0) or np.any(np.asarray(v_init) != 0):
        raise UnsupportedError("Lava's LIF starts and resets at 0; v_reset or v_init is not 0")
    a, th = _uniform(alpha, "decay"), _uniform(theta, "threshold")
    dv = 1.0 - a
    if 1.0 - dv != a:
        raise UnsupportedError(f"alpha={a!r} does not survive dv = 1 - alpha exactly")
    return LavaLIF(du=1.0, dv=dv, vth=float(strict_threshold(th, cmp)),
                   bias=np.asarray(beta, dtype=np.float64),
                   weight_scale=np.asarray(gamma, dtype=np.float64))


# ----------------------------------------------------------------------------- Loihi 2 fixed point

#: Loihi 2's fixed-point LIF, as Lava's bit-accurate model computes it
#: (``lava.proc.lif.models.AbstractPyLifModelFixed`` / ``PyLifModelBitAcc``): u and v are
#: signed 24-bit, du and dv unsigned 12-bit (decay unity 4096), and the synaptic input and the
#: threshold are shifted left by 6 bits to align them with v's most significant bits.
LOIHI2_STATE_MAX = 2 ** 23  # |u|, |v| < 2^23
LOIHI2_DECAY_UNITY = 4096
LOIHI2_DECAY_SHIFT = 12
LOIHI2_ACT_SHIFT = 6  # u gets a_in << 6
LOIHI2_VTH_SHIFT = 6  # spike if v > vth << 6


def loihi2_decay(x, d):
    """``x * (4096 - d) / 4096`` rounded toward zero (Lava: ``sign(p) * (|p| >> 12)`` with
    p = x * (4096 - d) in 64 bits). Integer numpy arrays or torch tensors."""
    p = x * (LOIHI2_DECAY_UNITY - d)
    return (abs(p) >> LOIHI2_DECAY_SHIFT) * (1 - 2 * (p < 0))


def loihi2_wrap(x):
    """Lava's 24-bit wrap of the current: ``x - 2^24`` where x > 2^23, then ``x + 2^24`` where
    x <= -2^23 (so +2^23 itself stays, as in Lava)."""
    m = LOIHI2_STATE_MAX
    x = x - (2 * m) * (x > m)
    return x + (2 * m) * (x <= -m)


def loihi2_clip(x):
    """Lava's saturation of the voltage to [-(2^23 - 1), 2^23 - 1]."""
    lo, hi = 1 - LOIHI2_STATE_MAX, LOIHI2_STATE_MAX - 1
    return x + (lo - x) * (x < lo) + (hi - x) * (x > hi)


def loihi2_bias(mant, exp):
    """The effective bias ``bias_mant << bias_exp`` (an arithmetic right shift by -bias_exp
    for a negative exponent), as Lava's ``scale_bias``."""
    mant, exp = np.asarray(mant, dtype=np.int64), np.asarray(exp, dtype=np.int64)
    return np.where(exp >= 0, mant << np.maximum(exp, 0), mant >> np.maximum(-exp, 0))


def loihi2_fixed_step(u, v, a_in, du, dv, vth, bias, v_reset=0, mode: str = RESET_HARD):
    """One step of Loihi 2's fixed-point LIF on integers (numpy or torch), exactly Lava's
    ``PyLifModelBitAcc.run_spk``::

        u[t] = wrap24(decay(u[t-1], du + 1) + (a_in[t] << 6))
        h[t] = clip24(decay(v[t-1], dv) + u[t] + bias)
        s[t] = h[t] > (vth << 6)
        v[t] = v_reset if s[t] else h[t]          (Lava's LIF: v_reset = 0)
             | h[t] - (vth << 6) * s[t]           (soft reset, for snncc's custom neuron)

    decay(x, d) = trunc(x (4096 - d) / 4096) (:func:`loihi2_decay`; Lava adds 1 to du, so
    du = 4095 clears u every step: u[t] = a_in[t] << 6), wrap24 / clip24 are
    :func:`loihi2_wrap` / :func:`loihi2_clip`, bias = :func:`loihi2_bias` (mant, exp).
    Returns (spikes as 0/1 integers, u, v, h). Only the comparison ``>`` exists on Loihi 2.
    """
    u = loihi2_wrap(loihi2_decay(u, du + 1) + (a_in << LOIHI2_ACT_SHIFT))
    h = loihi2_clip(loihi2_decay(v, dv) + u + bias)
    threshold = vth << LOIHI2_VTH_SHIFT
    s = (h > threshold) * 1
    v = h * (1 - s) + v_reset * s if mode == RESET_HARD else h - threshold * s
    return s, u, v, h
