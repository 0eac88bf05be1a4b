"""The canonical neuron (:mod:`snncc.neuron`) as a Lava process, for neurons Lava's own LIF
cannot express (per-neuron threshold or decay, soft reset, v_reset or v_init != 0, an input
scale gamma that cannot be folded into the incoming weights)::

    x[t] = a_in[t] + x_bias                      (x_bias: the synaptic bias it absorbed)
    h[t] = alpha * v[t-1] + gamma * x[t] + beta
    s[t] = h[t] CMP theta
    v[t] = v_reset if s[t] else h[t]   |   h[t] - theta * s[t]
    v = v_init at local step ``start`` of every period

In a dilated network (``dilation`` D > 1: every IR step takes D Lava steps) it updates only at
local steps start + t * D and sends no spikes at the others. Every parameter is per neuron; the
arithmetic is snncc.neuron.step itself, so the spikes are the simulator's to the bit.
"""

from __future__ import annotations

import numpy as np

from snncc import neuron as nrn

from .base import (FLOAT_IN, FLOAT_OUT, FLOAT_VAR, INT_IN, INT_OUT, INT_VAR, AbstractProcess,
                   InPort, OutPort, PyLoihiProcessModel, Var, fixed_pt_model, floating_pt_model,
                   local_step, on_phase)

PARAMS = ("alpha", "gamma", "beta", "theta", "v_reset", "v_init", "x_bias")


class CanonicalLIF(AbstractProcess):
    """Per-neuron canonical LIF; ``params`` holds the arrays named in PARAMS (each of
    ``shape``); ``cmp`` is '>=' or '>', ``reset`` 'hard' or 'soft'."""

    def __init__(self, *, shape: tuple, params: dict, cmp: str, reset: str, period: int,
                 start: int, dilation: int = 1, name=None):
        super().__init__(shape=shape, cmp=cmp, reset=reset, period=period, start=start,
                         dilation=dilation, name=name)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.v = Var(shape=shape, init=np.array(params["v_init"], dtype=float))
        for p in PARAMS:
            setattr(self, p, Var(shape=shape, init=np.array(params[p], dtype=float)))


@floating_pt_model(CanonicalLIF)
class PyCanonicalLIFModel(PyLoihiProcessModel):
    a_in = FLOAT_IN
    s_out = FLOAT_OUT
    v = FLOAT_VAR
    alpha = gamma = beta = theta = v_reset = v_init = x_bias = FLOAT_VAR

    def run_spk(self):
        x = self.a_in.recv() + self.x_bias
        if not on_phase(self):
            self.s_out.send(np.zeros_like(x))
            return
        if local_step(self) == self.proc_params["start"]:
            self.v[:] = self.v_init
        s, self.v[:], _ = nrn.step(self.v, x, self.alpha, self.gamma, self.beta, self.theta,
                                self.v_reset, self.proc_params["cmp"], self.proc_params["reset"])
        self.s_out.send(s)


# ---------------------------------------------------------------------------- fixed point
LOIHI2_PARAMS = ("gamma", "dv", "vth", "bias", "v_reset", "v_init")


class Loihi2LIF(AbstractProcess):
    """Loihi 2's fixed-point LIF with per-neuron integer parameters, for a quantized neuron
    Lava's ``LIF`` cannot express (per-neuron dv or vth, soft reset, V_reset or V_init != 0)::

        u[t], v[t] = snncc.neuron.loihi2_fixed_step(u, v, gamma * a_in[t], du, dv, vth, bias,
                                                    v_reset, reset)
        u = 0, v = v_init at local step ``start`` of every period (updating once per
        ``dilation`` steps, as CanonicalLIF)

    ``params``: the arrays of LOIHI2_PARAMS (``bias``, ``v_reset``, ``v_init`` in V units,
    the 24-bit voltage), each of ``shape``; ``du`` one integer."""

    def __init__(self, *, shape: tuple, params: dict, du: int, reset: str, period: int,
                 start: int, dilation: int = 1, name=None):
        super().__init__(shape=shape, du=du, reset=reset, period=period, start=start,
                         dilation=dilation, name=name)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.u = Var(shape=shape, init=np.zeros(shape, dtype=np.int64))
        self.v = Var(shape=shape, init=np.array(params["v_init"], dtype=np.int64))
        for p in LOIHI2_PARAMS:
            setattr(self, p, Var(shape=shape, init=np.array(params[p], dtype=np.int64)))


@fixed_pt_model(Loihi2LIF)
class PyLoihi2LIFModel(PyLoihiProcessModel):
    a_in = INT_IN
    s_out = INT_OUT
    u = v = INT_VAR
    gamma = dv = vth = bias = v_reset = v_init = INT_VAR

    def run_spk(self):
        a = self.gamma.astype(np.int64) * self.a_in.recv().astype(np.int64)
        if not on_phase(self):
            self.s_out.send(np.zeros_like(a))
            return
        if local_step(self) == self.proc_params["start"]:
            self.u[:] = 0
            self.v[:] = self.v_init
        s, u, v, _ = nrn.loihi2_fixed_step(
            self.u.astype(np.int64), self.v.astype(np.int64), a, self.proc_params["du"],
            self.dv.astype(np.int64), self.vth.astype(np.int64), self.bias.astype(np.int64),
            self.v_reset.astype(np.int64), self.proc_params["reset"])
        self.u[:], self.v[:] = u, v
        self.s_out.send(s)
