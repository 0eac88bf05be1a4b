"""Norse (``norse`` 1.1): ``IAFCell`` / ``IAF``, ``LIFBoxCell``, ``LIFCell`` / ``LIF``, the
recurrent ``LIFRecurrentCell`` / ``LIFRecurrent``, and the leaky-integrator readouts
``LICell`` / ``LI`` and ``LIBoxCell``.

What Norse computes per step (``norse/torch/functional/iaf.py``, ``lif_box.py``, ``lif.py``;
k = dt * tau_mem_inv and ks = -dt * tau_syn_inv evaluated as the forward evaluates them)::

    IAF      h = v + x
    LIFBox   h = v + k * ((x + v_leak) - v)
    LIF      i' = i + x;  h = v + k * ((v_leak - v) + i');  i = i' + ks * i'
    LIFRec   LIF with i' = (i + W_in x) + W_rec z[t-1] (its own input and recurrent weights,
             used as they are: norse zeroes the autapses' weights once, at construction)
    LI       LIF's current and charge, with v = h: no threshold, no reset; the output is v
    LIBox    v = v + k * ((v_leak - v) + x): no current, threshold or reset; the output is v
    LSNN     h = v + k * ((v_leak - v) + i);  b' = b + kb * (v_th - b), kb = dt * tau_adapt_inv;
             fires on h - b' > 0;  b = b' + z * beta;  i = (i + ks * i) + x  (the membrane
             reads the current of the step before; LSNNRec: + W_in x + W_rec z[t-1])
    fires    z = H(h - v_th) with H(u) = (u > 0), i.e. strictly h > v_th, for every ``method``
             Norse's threshold() accepts (heaviside, super, triangle, tanh, circ, heavi_erfc:
             they differ only in the surrogate gradient)
    reset    v = (1 - z) * h + z * v_reset   (LIFBox's reset_subtract: (1 - z) * h + z * (h - v_th))

IAF is the canonical neuron (alpha = gamma = 1, hard reset to v_reset, '>', starting at
v_reset). LIFBox and LIF charge in another operation order than ``alpha * v + gamma * x``, so
they are a :class:`NeuronCircuit` (Scale/Add/Hadamard/Delay nodes computing exactly Norse's
arithmetic, the current ``i`` as a second state, and a threshold neuron firing on ``h``; the
recurrent LIF's two Linears inside it); LI is an :class:`Integrator`, the same nodes without the
neuron, its output the membrane (LIBox likewise, without the current). LSNN (Bellec et al.'s
adaptive LIF) is a circuit with its threshold b a third state, fired on ``h - b'`` at 0. The
membrane starts at v_leak and LSNN's b at v_th: their Delays are followed by that start.

Refused, naming the module: per-neuron (tensor) parameters, the adjoint cells, an unknown
threshold method or reset function, and every other Norse neuron (LIFRefrac, LIFAdEx, the
other recurrent cells, ...). Cells take and return their state (``z, s = cell(x, s)``, ``s=None`` at
step 0); ``IAF`` / ``LIF`` loop over the time axis of a ``[T, B, ...]`` input from their initial
state.
Containers (``SequentialState``) are traced through.
"""

from __future__ import annotations

import torch
from torch import nn

from snncc import neuron as cn
from snncc.errors import UnsupportedError

from snncc import ir

from . import STEP_MULTI, STEP_SINGLE, Adapter, Integrator, NeuronCircuit
from .circuits import Circuit, scalar, threshold

_PACKAGE = "norse"
_METHODS = ("heaviside", "super", "triangle", "tanh", "circ", "heavi_erfc")
_CELLS = {"IAFCell": "IAF", "LIFBoxCell": "LIFBox", "LIFCell": "LIF", "LICell": "LI",
          "LIBoxCell": "LIBox", "LIFRecurrentCell": "LIFRec", "LSNNCell": "LSNN",
          "LSNNRecurrentCell": "LSNNRec"}
_SEQUENCES = {"IAF": "IAF", "LIF": "LIF", "LI": "LI", "LIFRecurrent": "LIFRec", "LSNN": "LSNN",
              "LSNNRecurrent": "LSNNRec"}
#: the step functions of LSNN's cells (their adjoint ones are refused)
_LSNN_STEPS = ("lsnn_feed_forward_step", "lsnn_step")


#: a Norse neuron written before its SNN base classes (traced through, its spikes ended in a
#: refusal naming the layer after it; its LILinearCell, a Linear and a leaky integrator in
#: tensor ops, traces exactly)
_UNBASED_NEURONS = frozenset({"CobaLIFCell"})


def _base(m: nn.Module) -> str:
    """The names of Norse's neuron base classes among ``m``'s classes."""
    names = {c.__name__ for c in type(m).__mro__ if c.__module__.startswith(_PACKAGE)}
    return next((n for n in ("SNNCell", "SNN", "SNNRecurrentCell", "SNNRecurrent") if n in names),
                "")


class NorseAdapter(Adapter):
    name = "norse"
    multi_step_returns_state = True

    def owns(self, m: nn.Module) -> bool:
        return type(m).__module__.startswith(_PACKAGE)

    def is_neuron(self, m: nn.Module) -> bool:
        return bool(_base(m)) or (self.owns(m) and type(m).__name__ in _UNBASED_NEURONS)

    def canonical(self, m: nn.Module, path: str):
        kind = type(m).__name__
        model = _CELLS.get(kind) or _SEQUENCES.get(kind)
        if model is None or type(m).__module__.split(".")[-1] not in (
                "iaf", "lif", "lif_box", "leaky_integrator", "leaky_integrator_box", "lsnn"):
            raise UnsupportedError(f"norse's {kind} is not supported (supported: IAFCell, IAF, "
                                   "LIFBoxCell, LIFCell, LIF, LIFRecurrentCell, LIFRecurrent, "
                                   "LICell, LI, LIBoxCell, LSNNCell, LSNN, LSNNRecurrentCell, "
                                   "LSNNRecurrent)", path=path)
        p, dt = m.p, float(m.dt)
        if model == "LIBox":
            return _li_box(_rate(p, "tau_mem_inv", dt, path), _v_leak(p, path))
        if model == "LI":
            return _li(_rate(p, "tau_mem_inv", dt, path), _rate(p, "tau_syn_inv", -dt, path),
                       _v_leak(p, path))
        if p.method not in _METHODS:
            raise UnsupportedError(f"method {p.method!r} is not a Heaviside threshold snncc knows "
                                   f"(supported: {', '.join(_METHODS)})", path=path)
        v_th = scalar(p.v_th, "v_th", path)
        v_reset = scalar(p.v_reset, "v_reset", path)
        if model == "IAF":
            return cn.CanonicalParams(alpha=1.0, gamma=1.0, beta=0.0, theta=v_th,
                                      v_reset=v_reset, reset=cn.RESET_HARD, cmp=cn.CMP_GT,
                                      v_init=v_reset)
        k, v_leak = _rate(p, "tau_mem_inv", dt, path), _v_leak(p, path)
        weights = (m.input_weights, m.recurrent_weights) if model.endswith("Rec") else None
        if model.startswith("LSNN"):
            step = getattr(getattr(m, "activation", None), "__name__", "")
            if step not in _LSNN_STEPS:
                raise UnsupportedError(f"norse's {kind} with step function {step!r} is not "
                                       "supported (its adjoint cells; supported: "
                                       f"{', '.join(_LSNN_STEPS)})", path=path)
            return _lsnn(k, _rate(p, "tau_syn_inv", -dt, path), _rate(p, "tau_adapt_inv", dt, path),
                         v_th, v_reset, v_leak, scalar(p.beta, "beta", path), weights)
        if model == "LIFBox":
            reset = getattr(p, "reset_method", None)
            name = getattr(reset, "__name__", "")
            if name not in ("reset_value", "reset_subtract") or \
                    not getattr(reset, "__module__", "").startswith(_PACKAGE):
                raise UnsupportedError(f"reset method {name or reset!r} is not supported",
                                       path=path)
            return _lif_box(k, v_th, v_reset, v_leak, subtract=name == "reset_subtract")
        return _lif(k, _rate(p, "tau_syn_inv", -dt, path), v_th, v_reset, v_leak, weights)

    def step_mode(self, m: nn.Module) -> str:
        return STEP_SINGLE if _base(m).endswith("Cell") else STEP_MULTI

    def single_step_call(self, m: nn.Module, args: tuple, kwargs: dict, value) -> tuple:
        x = args[0] if args else kwargs.get("input_tensor")
        state = args[1] if len(args) > 1 else kwargs.get("state")
        return x, state, True, value[0]


def _rate(p, field: str, dt: float, path: str) -> float:
    """``dt * p.<field>`` as the forward computes it (dt negated for a decay: ``-dt *
    tau_syn_inv``): ``dt * tau_mem_inv``, ``dt * tau_adapt_inv``."""
    scalar(getattr(p, field), field, path)
    return scalar(dt * getattr(p, field), f"{'-' * (dt < 0)}dt * {field}", path)


def _v_leak(p, path: str) -> float:
    """The potential the membrane leaks to, and starts at."""
    return scalar(p.v_leak, "v_leak", path)


def _leak(c: Circuit, v: str, v_leak: float) -> str:
    """v_leak - v (the negation where v_leak is 0)."""
    return c.affine(v, -1.0, v_leak, "v_leak-v") if v_leak else c.scale(v, -1.0, "-v")


def _charge(c: Circuit, v: str, drive: str, k: float) -> str:
    """h = v + k * drive, drive already computed."""
    return c.add(v, c.scale(drive, k, "dv"), "h")


def _reset_value(c: Circuit, h: str, v_reset: float) -> str:
    """(1 - z) * h + z * v_reset as h - z*h (+ z*v_reset): both give h or v_reset exactly."""
    z = c.name  # the firing node, this step
    v = c.add(h, c.scale(c.mul(z, h, "z*h"), -1.0, "-z*h"), "mem" if v_reset == 0 else "h-z*h")
    return v if v_reset == 0 else c.add(v, c.scale(z, v_reset, "z*v_reset"), "mem")


def _lif_box(k: float, v_th: float, v_reset: float, v_leak: float,
             subtract: bool) -> NeuronCircuit:
    def build(name, x, shape):
        c = Circuit(name, name, shape)
        v = c.prev(f"{name}:mem", start=v_leak)
        if v_leak:
            x = c.affine(x, 1.0, v_leak, "x+v_leak")
        drive = c.add(x, c.scale(v, -1.0, "-v"), "x-v")  # (x + v_leak) - v
        h = _charge(c, v, drive, k)
        if subtract:  # (1 - z) * h + z * (h - v_th)
            c.add(h, c.scale(name, -v_th, "-z*v_th"), "mem")
        else:
            _reset_value(c, h, v_reset)
        return c.nodes, h
    return NeuronCircuit(threshold(v_th), build)


def _current_drive(c: Circuit, v: str, x: str, ks: float, v_leak: float,
                   recurrent: str | None = None) -> str:
    """LIF's and LI's synaptic current: i' = i + x (+ recurrent, the recurrent LIF's), the next
    i = i' + ks * i'; returns the drive (v_leak - v) + i' of the membrane."""
    i_new = c.add(c.prev(f"{c.name}:cur"), x, "i+x")
    if recurrent is not None:
        i_new = c.add(i_new, recurrent, "i+x+rec")
    c.add(i_new, c.scale(i_new, ks, "di"), "cur")  # i' + (-dt * tau_syn_inv) * i'
    return c.add(_leak(c, v, v_leak), i_new, "-v+i")


def _lif(k: float, ks: float, v_th: float, v_reset: float, v_leak: float,
         weights=None) -> NeuronCircuit:
    """LIF; with ``weights`` (input, recurrent) the recurrent LIF, whose input x is weighted
    first and whose current takes W_rec z[t-1] (``lif_step``: F.linear without bias)."""
    def build(name, x, shape):
        c = Circuit(name, name, shape)
        v = c.prev(f"{name}:mem", start=v_leak)
        recurrent = None
        if weights is not None:
            x = c.linear(x, weights[0], None, "input")
            recurrent = c.linear(c.spikes_before(), weights[1], None, "recurrent")
        h = _charge(c, v, _current_drive(c, v, x, ks, v_leak, recurrent), k)
        _reset_value(c, h, v_reset)
        return c.nodes, h
    return NeuronCircuit(threshold(v_th), build)


def _integrator(k: float, v_leak: float, drive) -> Integrator:
    """A leaky integrator whose output, the node named after the cell, is its membrane
    v + k * drive(circuit, v, x), v its own value a step before (v_leak before the first)."""
    def build(name, x, shape):
        c = Circuit(name, name, shape)
        v = c.prev(name, start=v_leak)
        dv = c.scale(drive(c, v, x), k, "dv")
        return [*c.nodes, ir.Add(name, (v, dv), path=name)]
    return Integrator(build)


def _li(k: float, ks: float, v_leak: float) -> Integrator:
    """Norse's leaky integrator: LIF's current and charge, no threshold and no reset; its output
    is the membrane v + k * ((v_leak - v) + i')."""
    return _integrator(k, v_leak, lambda c, v, x: _current_drive(c, v, x, ks, v_leak))


def _li_box(k: float, v_leak: float) -> Integrator:
    """Norse's leaky integrator without a current (``LIBoxCell``; its exporter's NIR ``LI``):
    the output is v + k * ((v_leak - v) + x)."""
    return _integrator(k, v_leak, lambda c, v, x: c.add(_leak(c, v, v_leak), x, "-v+x"))


def _lsnn(k: float, ks: float, kb: float, v_th: float, v_reset: float, v_leak: float,
          beta: float, weights=None) -> NeuronCircuit:
    """LSNN (``lsnn_feed_forward_step``; with ``weights``, ``lsnn_step``'s input and recurrent
    weights): its membrane reads the current of the step before, the step's input joins the
    current after; the threshold b decays to v_th, starting there, and each spike adds beta."""
    def build(name, x, shape):
        c = Circuit(name, name, shape)
        v = c.prev(f"{name}:mem", start=v_leak)
        i = c.prev(f"{name}:cur")
        b = c.prev(f"{name}:thr", start=v_th)
        h = _charge(c, v, c.add(_leak(c, v, v_leak), i, "-v+i"), k)
        i_decayed = c.add(i, c.scale(i, ks, "di"), "i_decayed")
        b_decayed = c.add(b, c.scale(c.affine(b, -1.0, v_th, "v_th-b"), kb, "db"), "b_decayed")
        fire = c.add(h, c.scale(b_decayed, -1.0, "-b_decayed"), "h-b")
        _reset_value(c, h, v_reset)
        c.add(b_decayed, c.scale(name, beta, "z*beta"), "thr")
        if weights is None:
            c.add(i_decayed, x, "cur")
        else:
            i_in = c.add(i_decayed, c.linear(x, weights[0], None, "input"), "i+input")
            c.add(i_in, c.linear(c.spikes_before(), weights[1], None, "recurrent"), "cur")
        return c.nodes, fire
    return NeuronCircuit(threshold(0.0), build)


ADAPTER = NorseAdapter()
