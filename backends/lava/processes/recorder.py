"""One process that streams many values out of a running Lava network.

Lava's sink ``RingBuffer`` hands its buffer back through ``Var.get``, which moves one element
per message (minutes for a few layers), and an ``Extractor`` per recorded layer costs one OS
process each. A :class:`Recorder` takes any number of in-ports and sends, every step, all of
them flattened into one vector over an external pipe; :meth:`Recorder.receive` reads one step.
"""

from __future__ import annotations

import math
import queue
from functools import cache

import numpy as np

from .base import (FLOAT_IN, FLOAT_OUT, AbstractProcess, InPort, OutPort, PyLoihiProcessModel,
                   floating_pt_model)


class Recorder(AbstractProcess):
    """In-ports ``a_in0 .. a_in{k-1}`` of ``shapes``; ``buffer`` steps may wait unread."""

    def __init__(self, *, shapes: list[tuple], buffer: int, name=None):
        super().__init__(shapes=shapes, name=name)
        self.shapes = [tuple(s) for s in shapes]
        for i, shape in enumerate(self.shapes):
            setattr(self, f"a_in{i}", InPort(shape=shape))
        self.s_out = OutPort(shape=(sum(math.prod(s) for s in self.shapes),))
        self.s_out.flag_external_pipe(buffer_size=buffer)

    def receive(self, wait: float | None = None) -> list[np.ndarray] | None:
        """The values of one step, one array per in-port; None when no step has run within
        ``wait`` seconds (None: wait until one has)."""
        port = self.s_out.external_pipe_csp_recv_port
        if wait is not None:
            try:  # (the port's own recv has no timeout)
                port._queue.get(timeout=wait, peek=True)
            except queue.Empty:
                return None
        flat = port.recv()
        cuts = np.cumsum([math.prod(s) for s in self.shapes])[:-1]
        return [part.reshape(s) for part, s in zip(np.split(flat, cuts), self.shapes)]


def _run_spk(self):
    flat = [getattr(self, f"a_in{i}").recv().ravel() for i in range(self.n_inputs)]
    self.s_out.csp_ports[-1].send(np.concatenate(flat))


@cache
def recorder_model(n_inputs: int) -> type:
    """The floating_pt model of a Recorder with ``n_inputs`` in-ports (Lava matches a model's
    port declarations to the process's one by one, so each count has its class)."""
    attrs = {f"a_in{i}": FLOAT_IN for i in range(n_inputs)}
    model = type(f"PyRecorderModel{n_inputs}", (PyLoihiProcessModel,),
                 {**attrs, "s_out": FLOAT_OUT, "n_inputs": n_inputs, "run_spk": _run_spk})
    return floating_pt_model(Recorder)(model)
