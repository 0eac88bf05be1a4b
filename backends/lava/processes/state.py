"""The stateful snncc nodes other than neurons, as Lava processes (no latency)."""

from __future__ import annotations

import numpy as np

from .base import (FLOAT_IN, FLOAT_OUT, FLOAT_VAR, INT_IN, INT_OUT, INT_VAR, AbstractProcess,
                   InPort, OutPort, PyLoihiProcessModel, Var, fixed_pt_model, floating_pt_model,
                   local_step, on_phase)


class Delay(AbstractProcess):
    """y[t] = x[t - steps] (a FIFO; ``steps`` may be 0). The inputs received at local steps
    ``mute_from`` .. ``mute_from + mute_steps - 1`` (mod period) are taken as zeros: they become
    an IR Delay's first outputs, which are 0 (a latency-balancing delay mutes none)."""

    def __init__(self, *, shape: tuple, steps: int, period: int, mute_from: int,
                 mute_steps: int, name=None):
        super().__init__(shape=shape, steps=steps, period=period, mute_from=mute_from,
                         mute_steps=mute_steps, name=name)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.fifo = Var(shape=(max(steps, 1), *shape), init=np.zeros((max(steps, 1), *shape)))


@floating_pt_model(Delay)
class PyDelayModel(PyLoihiProcessModel):
    a_in = FLOAT_IN
    s_out = FLOAT_OUT
    fifo = FLOAT_VAR

    def _received(self):
        x = self.a_in.recv()
        p = self.proc_params
        muted = (local_step(self) - p["mute_from"]) % p["period"] < p["mute_steps"]
        return np.zeros_like(x) if muted else x

    def run_spk(self):
        if self.proc_params["steps"] == 0:  # on a loop, some other process sends first
            self.s_out.send(self._received())
            return
        self.s_out.send(self.fifo[0].copy())
        self.fifo[:-1] = self.fifo[1:]
        self.fifo[-1] = self._received()


@fixed_pt_model(Delay)
class PyDelayModelFixed(PyDelayModel):
    """The same FIFO on the chip's integers."""

    a_in = INT_IN
    s_out = INT_OUT
    fifo = INT_VAR


class Readout(AbstractProcess):
    """Mean over time: y[t] = (x[0] + ... + x[t]) / (t + 1), t counted from local step
    ``start`` of each period, one step every ``dilation`` local steps."""

    def __init__(self, *, shape: tuple, period: int, start: int, dilation: int = 1, name=None):
        super().__init__(shape=shape, period=period, start=start, dilation=dilation, name=name)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.total = Var(shape=shape, init=np.zeros(shape))


@floating_pt_model(Readout)
class PyReadoutModel(PyLoihiProcessModel):
    a_in = FLOAT_IN
    s_out = FLOAT_OUT
    total = FLOAT_VAR

    def run_spk(self):
        x = self.a_in.recv()
        t = (local_step(self) - self.proc_params["start"]) // self.proc_params["dilation"]
        if not on_phase(self):
            self.s_out.send(np.zeros_like(x))
            return
        if t == 0:
            self.total[:] = 0.0
        self.total[:] = self.total + x
        self.s_out.send(self.total / (t + 1) if t >= 0 else np.zeros_like(x))
