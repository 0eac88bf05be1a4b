"""Lava's own ``Dense`` process with a leading lane axis, and its float model.

Lava's ``Dense`` takes one vector. :class:`BatchDense` is that process (same weights and
parameters) with its ports and buffer given a leading lane axis. :class:`PyBatchDenseModel` is
Lava's ``PyDenseModelFloat`` (one step late; the sum of the weights of the spiking inputs when
num_message_bits is 0, the dot product otherwise) lane by lane, with Lava's own expressions, so
a sample's sums are the same on any number of lanes. (A fixed-point Dense on several lanes is a
block-diagonal ``Sparse``: its integer sums are exact in any order.)
"""

from __future__ import annotations

import numpy as np

from ..compat import lava
from .base import InPort, OutPort, Var, floating_pt_model

Dense = lava(".proc.dense.process").Dense


class BatchDense(Dense):
    """Lava's ``Dense`` on ``lanes`` samples: s_in (lanes, in), a_out (lanes, out)."""

    def __init__(self, *, lanes: int, weights: np.ndarray, **dense_args):
        super().__init__(weights=weights, **dense_args)
        n_out, n_in = weights.shape
        self.s_in = InPort(shape=(lanes, n_in))
        self.a_out = OutPort(shape=(lanes, n_out))
        self.a_buff = Var(shape=(lanes, n_out), init=0)


@floating_pt_model(Dense)  # Lava's Dense model, run on a BatchDense (a Dense)
class PyBatchDenseModel(lava(".proc.dense.models").PyDenseModelFloat):
    def run_spk(self):
        self.a_out.send(self.a_buff)
        s_in = self.s_in.recv()
        if self.num_message_bits.item() > 0:
            self.a_buff = np.stack([self.weights.dot(s) for s in s_in])
        else:
            self.a_buff = np.stack([self.weights[:, s].sum(axis=1) for s in s_in.astype(bool)])
