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
from .base import (FLOAT_IN, FLOAT_OUT, FLOAT_VAR, AbstractProcess, InPort, LavaPyType, OutPort,
                   PyInPort, PyLoihiProcessModel, PyOutPort, Var, floating_pt_model)

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


class BlockDense(AbstractProcess):
    """``blocks`` copies of one weight matrix on a flat vector: the float run of what the
    fixed-point graph gives Lava as ``Sparse`` with ``kron(I_blocks, W)`` (a Linear over
    tokens, blocks = lanes x tokens). s_in (blocks * in,), a_out (blocks * out,)."""

    def __init__(self, *, blocks: int, weights: np.ndarray, num_message_bits: int = 0,
                 name: str | None = None):
        super().__init__(name=name)
        n_out, n_in = weights.shape
        self.s_in = InPort(shape=(blocks * n_in,))
        self.a_out = OutPort(shape=(blocks * n_out,))
        self.weights = Var(shape=weights.shape, init=weights)
        self.a_buff = Var(shape=(blocks * n_out,), init=0)
        self.num_message_bits = Var(shape=(1,), init=num_message_bits)


@floating_pt_model(BlockDense)
class PyBlockDenseModel(PyLoihiProcessModel):
    """Lava's ``PySparseModelFloat`` (one step late; the sum of the weights of the spiking
    inputs, or the dot product of graded ones) on the blocks at once: ``einsum`` reduces each
    block's row with the same kernel over the same inputs whatever the number of blocks, so a
    sample's sums do not depend on the lanes beside it, at a tenth of the time of Lava's
    column slicing of the block-diagonal matrix (8 lanes of 64 tokens)."""

    s_in: PyInPort = FLOAT_IN
    a_out: PyOutPort = FLOAT_OUT
    a_buff: np.ndarray = FLOAT_VAR
    weights: np.ndarray = FLOAT_VAR
    num_message_bits: np.ndarray = LavaPyType(np.ndarray, int, precision=5)

    def run_spk(self):
        self.a_out.send(self.a_buff)
        s_in = self.s_in.recv()
        if self.num_message_bits.item() == 0:
            s_in = s_in.astype(bool)
        x = s_in.astype(float).reshape(-1, self.weights.shape[1])
        self.a_buff = np.einsum("bi,oi->bo", x, self.weights).reshape(-1)
