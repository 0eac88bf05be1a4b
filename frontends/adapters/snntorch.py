"""snnTorch (``snntorch`` 1.0): ``Leaky``, ``Synaptic``, ``RLeaky``, ``RSynaptic``, ``Lapicque``
and ``Alpha`` neurons.

What snnTorch computes per call (``_neurons/leaky.py``, ``synaptic.py``, ``rleaky.py``,
``rsynaptic.py``, ``lapicque.py``, ``alpha.py``; b, a are
``beta``, ``alpha`` clamped to [0, 1] by the forward itself, thr the threshold, m the stored
membrane, r = H(m[t-1] - thr) the previous step's spike recomputed from the stored membrane)::

    Leaky     base = b*m + x                              (x: the input current)
    Synaptic  syn  = a*syn + x;  base = b*m + syn
    RLeaky    base = b*m + x + recurrent(s[t-1])          (Linear, Conv2d or x*V)
    RSynaptic syn  = a*syn + x + recurrent(s[t-1]);  base = b*m + syn
    Lapicque  base = x*R*(1/(R*C))*dt + (1 - dt/(R*C))*m  (its buffers R, C, time_step)
    Alpha     exc = a*exc + x;  inh = b*inh - x;  m = tau*(exc + inh),
              tau = log(a) / (log(b) - log(a)) + 1; its reset acts on all three (below)
    reset     "subtract": m = base - r*thr  (all but Alpha: exc -= r*thr, inh -= r*inh,
                          m -= r*(-inh[t-1]))
              "zero":     Leaky m = b*((1 - r)*m) + x;  the others m = base - r*base
                          (Alpha: each of exc, inh, m less r times itself)
              "none":     m = base
    fires     s = H(m - thr) with H(u) = (u > 0): strictly m > thr (exact in IEEE arithmetic)

The reset from the previous step's spike is applied *after* the decay (subtract) or to the whole new
membrane (Synaptic/RLeaky/RSynaptic zero). Only Leaky's "zero" reset is the canonical neuron itself
(alpha = b, gamma = 1, hard reset to 0, '>'); every other form is a :class:`NeuronCircuit`:
Scale/Add/Hadamard nodes compute snnTorch's membrane in snnTorch's operation order from the input, a
Delay of the membrane and a Delay of the neuron's own spikes, and a threshold neuron (alpha = 0)
fires on it, so ties and rounding agree spike for spike.

``reset_delay=False`` (the reset in the same step): with "zero" it is the canonical hard reset
(Leaky) / integrator + canonical neuron (Synaptic); with "none" nothing changes; with
"subtract" snnTorch may subtract the threshold twice in one step (``do_reset = spk - reset``),
which is refused. Also refused, naming the module: graded spikes, inhibition, state
quantisation, a spike function not from ``snntorch.surrogate``, a per-neuron (tensor)
alpha, a negative threshold (snnTorch then fires a reset before step 0), and every other
snnTorch neuron (LeakyParallel, SLSTM, ...). ``StateLeaky`` (snnTorch 1.0, multi-step on
``[T, B, C]``, no reset, its membrane a causal convolution of the window) is a circuit of
Delays (:func:`_state_leaky`). ``beta`` and ``threshold`` may be tensors, one per
neuron (snnTorch's regression tutorial's ``torch.rand(hidden)``), broadcast as snnTorch does.

Calls: ``init_hidden=False`` neurons take and return their state (``spk, mem = lif(x, mem)``;
``spk, syn, mem = syn_lif(x, syn, mem)``; ``spk, mem = rlif(x, spk, mem)``;
``spk, syn, mem = rsyn(x, spk, syn, mem)``), with ``init_leaky()`` / ``init_synaptic()`` /
``init_rleaky()`` / ``init_rsynaptic()`` (empty tensors) as the state at step 0;
``init_hidden=True`` neurons keep it in the module (``spk = lif(x)``, the k-th call is step k);
with ``output=True`` they return it too (``spk, mem = lif(x)``, snnTorch's tutorials' last
layer), which the model may record or drop but not compute with: snncc compiles the spikes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from snncc import ir
from snncc import neuron as cn
from snncc.errors import UnsupportedError

from . import STATE_KEPT, STEP_MULTI, STEP_SINGLE, Adapter, Integrator, NeuronCircuit
from .circuits import Circuit, circuit, on_current, per_neuron, scalar, threshold

_PACKAGE = "snntorch"
_NEURONS = "snntorch._neurons"
_SUPPORTED = ("Leaky", "Synaptic", "RLeaky", "RSynaptic", "Lapicque", "Alpha", "StateLeaky")
#: the state a neuron taking it from the caller takes and returns after its spikes, in order
_STATE = {"Leaky": ("mem",), "Lapicque": ("mem",), "Synaptic": ("syn", "mem"),
          "RLeaky": ("spk", "mem"), "RSynaptic": ("spk", "syn", "mem"),
          "Alpha": ("syn_exc", "syn_inh", "mem")}


# ----------------------------------------------------------------------------- the adapter

class SnnTorchAdapter(Adapter):
    name = "snntorch"

    def owns(self, m: nn.Module) -> bool:
        return type(m).__module__.startswith(_PACKAGE)

    def is_neuron(self, m: nn.Module) -> bool:
        return type(m).__module__.startswith(_NEURONS)

    def canonical(self, m: nn.Module, path: str):
        kind = type(m).__name__
        if kind not in _SUPPORTED:
            raise UnsupportedError(f"snntorch's {kind} is not supported (supported: "
                                   f"{', '.join(_SUPPORTED)})", path=path)
        _check_common(m, path)
        if kind == "StateLeaky":
            return _state_leaky(m, path)
        b = np.clip(per_neuron(m.beta, "beta", path), 0.0, 1.0)  # the forward clamps it
        thr = per_neuron(m.threshold, "threshold", path)
        if np.any(thr < 0):
            raise UnsupportedError(f"threshold {np.min(thr)} < 0: snntorch resets before the "
                                   "first step (H(0 - threshold) = 1)", path=path)
        mode = _mode(m, path)
        delayed = bool(getattr(m, "reset_delay", True))
        if not delayed and mode == "subtract":
            raise UnsupportedError(
                "reset_delay=False with reset_mechanism='subtract' can subtract the threshold "
                "twice in one step (do_reset = spk - reset), which no IR neuron computes",
                path=path)
        if kind == "Leaky":
            return _leaky(b, thr, mode)
        if kind == "Synaptic":
            return _synaptic(_alpha(m, path), b, thr, mode, delayed)
        if kind == "Lapicque":
            return _lapicque(m, thr, mode, path)
        if kind == "Alpha":
            return _alpha_neuron(m, b, thr, mode, path)
        return _recurrent(m, b, thr, mode, delayed, path,
                          _alpha(m, path) if kind == "RSynaptic" else None)

    def step_mode(self, m: nn.Module) -> str:
        return STEP_MULTI if type(m).__name__ == "StateLeaky" else STEP_SINGLE

    def returns_state(self, m: nn.Module) -> bool:
        return type(m).__name__ == "StateLeaky" and bool(m.output)  # (spk, mem)

    def single_step_call(self, m: nn.Module, args: tuple, kwargs: dict, value) -> tuple:
        kind = type(m).__name__
        if kind == "StateLeaky":  # [T, B, C] -> (spk, mem), or mem alone (output=False)
            x = args[0] if args else kwargs.get("input_")
            return (x, None, True, value[0]) if m.output else (x, None, False, value)
        x = args[0] if args else kwargs.get("input_")
        if m.init_hidden:  # with output=True it returns its state too, (spk, [syn,] mem)
            if m.output:
                return x, STATE_KEPT, len(_STATE[kind]) - kind.startswith("R"), value[0]
            return x, None, False, value
        names = _STATE[kind]
        given = [args[1 + i] if len(args) > 1 + i else kwargs.get(n)
                 for i, n in enumerate(names)]
        spk, *state = given if kind.startswith("R") else (None, *given)
        if not all(_same_state(state[0], other) for other in state[1:]):
            raise UnsupportedError(f"its {' and '.join(names[-len(state):])} arguments are not "
                                   "all its own state from the step before (or all its "
                                   "initial state)")
        if kind.startswith("R") and not _own_spikes(spk, state[-1]):
            raise UnsupportedError("its spk argument is not its own spikes from the step "
                                   "before (or its initial state)")
        return x, state[-1], len(state), value[0]

    def recurs_on_returned_spikes(self, m: nn.Module) -> bool:
        return type(m).__name__ in ("RLeaky", "RSynaptic") and bool(m.init_hidden)

    def reset_state(self, model: nn.Module) -> None:
        for m in model.modules():
            if not self.is_neuron(m):
                continue
            for buf in ("mem", "syn", "spk", "syn_exc", "syn_inh"):
                if isinstance(getattr(m, buf, None), torch.Tensor):
                    setattr(m, buf, torch.zeros(0))


def _same_state(a, b) -> bool:
    """Two state arguments that are both None, the same traced state, or both constants."""
    if a is None or b is None:
        return a is None and b is None
    if type(a).__name__ == "Membrane":
        return a == b
    return type(a).__name__ == "Const" and type(b).__name__ == "Const"


def _own_spikes(spk, mem) -> bool:
    """RLeaky's spk argument: its own spikes of the step the membrane comes from, or (with an
    initial membrane) a constant initial state."""
    if spk is None or mem is None:
        return spk is None and mem is None
    if type(mem).__name__ == "Membrane":
        e = getattr(spk, "expr", None)
        return getattr(e, "path", None) == mem.path and getattr(e, "step", None) == mem.step \
            and type(e).__name__ == "_NeuronStep"
    return type(spk).__name__ == "Const" and not torch.as_tensor(spk.value).any()


def _state_leaky(m: nn.Module, path: str) -> NeuronCircuit | Integrator:
    """StateLeaky (snnTorch 1.0): no reset; its membrane is a causal convolution over its
    ``[T, B, C]`` window, mem[t] = sum over k < K of exp(-k / tau) x[t - k], K = T or
    ``kernel_truncation_steps`` (taps per channel where tau is): the input and its Delays, each
    weighted, summed oldest first as the convolution sums; with ``output=True`` a threshold
    neuron fires on mem > threshold, else the membrane is its output (an Integrator)."""
    tau = m.tau.detach().to("cpu", torch.float64)
    truncation = m.kernel_truncation_steps

    def membrane(name, x, shape, steps):
        taps = min(steps, truncation or steps)
        weight = torch.exp(-torch.arange(taps, dtype=torch.float64).view(-1, 1) / tau.view(1, -1))
        c = Circuit(name, path, shape)
        return c, c.weighted_window(x, weight.numpy(), oldest_first=True)

    if not m.output:
        def integrate(name, x, shape, steps):
            c, h = membrane(name, x, shape, steps)
            return [*c.nodes, ir.Scale(name, (h,), path=path, factor=1.0)]
        return Integrator(integrate, window=True)

    def build(name, x, shape, steps):
        c, h = membrane(name, x, shape, steps)
        return c.nodes, h
    return NeuronCircuit(threshold(per_neuron(m.threshold, "threshold", path)), build,
                         window=True)


def _check_common(m: nn.Module, path: str) -> None:
    if getattr(m, "inhibition", False):
        raise UnsupportedError("inhibition=True (only the largest membrane fires) is not "
                               "supported", path=path)
    if getattr(m, "state_quant", False):
        raise UnsupportedError("a quantised state (state_quant) is not supported", path=path)
    gsf = getattr(m, "graded_spikes_factor", 1.0)
    if torch.as_tensor(gsf).numel() != 1 or float(torch.as_tensor(gsf)) != 1.0:
        raise UnsupportedError("graded spikes (graded_spikes_factor != 1) are not spikes",
                               path=path)
    fn = m.spike_grad
    module = getattr(fn, "__module__", "") or ""
    qual = getattr(fn, "__qualname__", "") or ""
    if not (module == "snntorch.surrogate" or qual.endswith("_surrogate_bypass")):
        raise UnsupportedError(
            f"spike_grad {qual or type(fn).__name__!r} is not one of snntorch.surrogate's (whose "
            "forward is H(mem - threshold) = mem > threshold); its forward is unknown", path=path)


def _mode(m: nn.Module, path: str) -> str:
    """The reset the forward really applies: ``state_function`` is chosen in ``__init__``, so
    it wins over a ``reset_mechanism`` changed afterwards (which must then agree)."""
    fn = getattr(getattr(m, "state_function", None), "__name__", "")
    mode = {"_base_sub": "subtract", "_base_zero": "zero", "_base_int": "none"}.get(fn)
    if mode is None:
        raise UnsupportedError(f"unknown state function {fn!r}", path=path)
    declared = {0: "subtract", 1: "zero", 2: "none"}.get(int(m.reset_mechanism_val))
    if declared != mode:
        raise UnsupportedError(f"reset_mechanism was changed to {declared!r} after construction; "
                               f"the forward still integrates as {mode!r}", path=path)
    return mode


def _leaky(b: float, thr: float, mode: str):
    if mode == "zero":
        # m = b * ((1 - r) * m) + x: after a spike b * 0 + x = x, exactly a hard reset to 0
        return cn.CanonicalParams(alpha=b, gamma=1.0, beta=0.0, theta=thr, v_reset=0.0,
                                  reset=cn.RESET_HARD, cmp=cn.CMP_GT, v_init=0.0)
    if mode == "none":
        return circuit(thr, lambda c, x: c.integrator(x, b, "mem"))
    return _late_reset(b, thr, mode)  # m = (b * m[t-1] + x) - thr * s[t-1]


def _with_prev_mem(thr: float, body) -> NeuronCircuit:
    """A circuit whose body reads ``{name}:mem`` one step back (the Delay is made here; the body
    refers to the delayed membrane by the name ``{name}:mem`` and must produce it)."""

    def wrapped(c: Circuit, x: str) -> str:
        prev = c.prev(f"{c.name}:mem")
        start = len(c.nodes)
        out = body(c, x)
        for n in c.nodes[start:]:  # read m[t-1] where the body named m
            n.inputs = tuple(prev if i == f"{c.name}:mem" and n.name != prev else i
                             for i in n.inputs)
        return out
    return circuit(thr, wrapped)


def _synaptic(a: float, b: float, thr: float, mode: str, delayed: bool):
    if mode == "zero" and not delayed:
        # the same-step zero reset leaves r = 0 at every step (thr >= 0), so the membrane is the
        # canonical neuron on the current: integrator -> hard reset to 0
        return on_current(a, cn.CanonicalParams(alpha=b, gamma=1.0, beta=0.0, theta=thr,
                                                v_reset=0.0, reset=cn.RESET_HARD,
                                                cmp=cn.CMP_GT, v_init=0.0))

    def membrane(c: Circuit, x: str) -> str:
        syn = c.integrator(x, a, "syn")  # syn = a * syn + x
        base = c.add(c.scale(f"{c.name}:mem", b, "b*mem"), syn, "base")
        return _reset(c, base, thr, mode)
    return _with_prev_mem(thr, membrane)


def _reset(c: Circuit, base: str, thr: float, mode: str) -> str:
    """snnTorch's late reset of the new membrane ``base`` by the previous step's spike."""
    if mode == "none":
        return _rename(c, base, "mem")
    if mode == "subtract":  # base - r * thr
        return c.add(base, c.scale(c.spikes_before(), -thr, "reset"), "mem")
    # zero: base - base * r (0 after a spike, base otherwise)
    return c.add(base, c.scale(c.mul(c.spikes_before(), base, "r*base"), -1.0, "-r*base"), "mem")


def _late_reset(b: float, thr: float, mode: str) -> NeuronCircuit:
    """base = b*m + x reset late (:func:`_reset`): Leaky's subtract reset, and RLeaky's whose
    input ``x`` already holds ``recurrent(s[t-1])`` (a NIR file's cycle through the neuron),
    whose zero reset clears the new input too (Leaky's keeps it)."""
    def membrane(c: Circuit, x: str) -> str:
        return _reset(c, c.add(c.scale(f"{c.name}:mem", b, "b*mem"), x, "base"), thr, mode)
    return _with_prev_mem(thr, membrane)


def _rename(c: Circuit, node: str, part: str) -> str:
    """Give the last node ``node`` the name ``{name}:{part}`` (it is nobody's input yet)."""
    new = f"{c.name}:{part}"
    (last,) = [n for n in c.nodes if n.name == node]
    last.name = new
    return new


def _lapicque(m: nn.Module, thr: float, mode: str, path: str) -> NeuronCircuit:
    """base = ((x*R) * (1/(R*C))) * dt + (1 - dt/(R*C)) * m, the forward's operation order;
    its constants as float64 arithmetic on the buffers gives them (the model run in float64).
    (Lapicque has no reset_delay: its reset is always the late one.)"""
    R, C, dt = (scalar(getattr(m, k), k, path) for k in ("R", "C", "time_step"))
    inv_rc, keep = 1 / (R * C), 1 - dt / (R * C)

    def membrane(c: Circuit, x: str) -> str:
        drive = c.scale(c.scale(c.scale(x, R, "x*R"), inv_rc, "x*R/RC"), dt, "x*R/RC*dt")
        return _reset(c, c.add(drive, c.scale(f"{c.name}:mem", keep, "k*mem"), "base"), thr,
                      mode)
    return _with_prev_mem(thr, membrane)


def _alpha_neuron(m: nn.Module, b: float, thr: float, mode: str, path: str) -> NeuronCircuit:
    """Alpha: an excitatory and an inhibitory current and m = tau*(exc + inh), tau computed
    with torch in float64 as the model run in float64 computes it; the late reset of the three
    in snnTorch's order (``_base_sub``, ``_base_zero``)."""
    a = _alpha(m, path)
    la, lb = (torch.log(torch.tensor(v, dtype=torch.float64)) for v in (a, b))
    tau = float(la / (lb - la) + 1)

    def less_r_times(c: Circuit, v: str, part: str) -> str:  # v - r*v: 0 after a spike
        return c.add(v, c.scale(c.mul(c.spikes_before(), v, f"r*{part}"), -1.0, f"-r*{part}"),
                     part)

    def membrane(c: Circuit, x: str) -> str:
        exc_before, inh_before = c.prev(f"{c.name}:exc"), c.prev(f"{c.name}:inh")
        kept = mode == "none"  # the new currents are the states, else their reset values
        exc = c.add(c.scale(exc_before, a, "a*exc"), x, "exc" if kept else "a*exc+x")
        inh = c.add(c.scale(inh_before, b, "b*inh"), c.scale(x, -1.0, "-x"),
                    "inh" if kept else "b*inh-x")
        mem = c.scale(c.add(exc, inh, "exc+inh"), tau, "tau*(exc+inh)")
        if mode == "subtract":
            r = c.spikes_before()
            c.add(exc, c.scale(r, -thr, "-r*thr"), "exc")
            less_r_times(c, inh, "inh")
            return c.add(mem, c.mul(r, inh_before, "r*inh[t-1]"), "mem")
        if mode == "zero":
            less_r_times(c, exc, "exc")
            less_r_times(c, inh, "inh")
            return less_r_times(c, mem, "mem")
        return mem
    return circuit(thr, membrane)


def _alpha(m: nn.Module, path: str) -> float:
    return min(max(scalar(m.alpha, "alpha", path), 0.0), 1.0)  # the forward clamps it


def _recurrent(m: nn.Module, b: float, thr: float, mode: str, delayed: bool, path: str,
               a: float | None):
    """RLeaky, or with ``a`` RSynaptic, whose current takes the recurrent term:
    syn = (a*syn + x) + recurrent(s[t-1]), base = b*m + syn."""
    rec = m.recurrent
    if isinstance(rec, nn.Linear) or isinstance(rec, nn.Conv2d):
        if isinstance(rec, nn.Conv2d) and (rec.padding_mode != "zeros"
                                           or isinstance(rec.padding, str)):
            raise UnsupportedError("a recurrent Conv2d without explicit zero padding", path=path)
        layer = rec
    elif type(rec).__name__ == "RecurrentOneToOne":
        layer = scalar(rec.V, "recurrent weight V", path)
    else:
        raise UnsupportedError(f"recurrent layer {type(rec).__name__} is not supported", path=path)
    if not delayed and mode == "zero":
        raise UnsupportedError(f"{type(m).__name__} with reset_delay=False and "
                               "reset_mechanism='zero' is not supported", path=path)

    def membrane(c: Circuit, x: str) -> str:
        s = c.spikes_before()
        if isinstance(layer, nn.Linear):
            r = c.linear(s, layer.weight, layer.bias, "recurrent")
        elif isinstance(layer, nn.Conv2d):
            r = c.conv2d(s, layer, "recurrent")
        else:
            r = c.scale(s, layer, "recurrent")
        if a is None:
            base = c.add(c.add(c.scale(f"{c.name}:mem", b, "b*mem"), x, "b*mem+x"), r, "base")
        else:
            syn_before = c.scale(c.prev(f"{c.name}:syn"), a, "a*syn")
            syn = c.add(c.add(syn_before, x, "a*syn+x"), r, "syn")
            base = c.add(c.scale(f"{c.name}:mem", b, "b*mem"), syn, "base")
        return _reset(c, base, thr, mode)
    return _with_prev_mem(thr, membrane)


ADAPTER = SnnTorchAdapter()
