"""Lava's own ``Conv`` process with a leading lane axis, and vectorised models for it.

Lava's ``Conv`` takes one (W, H, C) sample. :class:`BatchConv` is that process (same weights,
parameters and validation) with its ports and buffer given a leading lane axis, so the samples
of a batch run side by side in one process.

Lava's ``PyConvModelFloat`` convolves with one ``scipy.signal.convolve2d`` call per pair of
input and output channels (C_in x C_out calls per step; most of a step's time in a network with
64-channel layers). :class:`PyVectorConvModel` implements the same behaviour (it sends the
convolution of the previous step's input; binary spikes when num_message_bits is 0) for every
lane at once by :func:`.kernels.lava_conv`, a stacked matrix product.
"""

from __future__ import annotations

import numpy as np

from snncc.fixed_point import ACC_MAX

from ..compat import lava
from .base import InPort, OutPort, Var, fixed_pt_model, floating_pt_model
from .kernels import lava_conv

Conv = lava(".proc.conv.process").Conv


class BatchConv(Conv):
    """Lava's ``Conv`` on ``lanes`` samples: s_in (lanes, W, H, C_in), a_out (lanes, W', H',
    C_out)."""

    def __init__(self, *, lanes: int, **conv_args):
        super().__init__(**conv_args)
        self.s_in = InPort(shape=(lanes, *self.input_shape))
        self.a_out = OutPort(shape=(lanes, *self.output_shape))
        self.a_buf = Var(shape=(lanes, *self.output_shape), init=0)


@floating_pt_model(Conv)  # Lava's Conv model, run on a BatchConv (a Conv)
class PyVectorConvModel(lava(".proc.conv.models").PyConvModelFloat):
    def run_spk(self):
        self.a_out.send(self.a_buf)
        s_in = self.s_in.recv()
        if self.num_message_bits.item() == 0:
            s_in = s_in.astype(bool)
        self.a_buf = lava_conv(s_in.astype(float), self.weight, self.stride, self.padding,
                               self.dilation)


@fixed_pt_model(Conv)
class PyVectorConvModelFixed(lava(".proc.conv.models").PyConvModelFixed):
    """Lava's ``PyConvModelFixed`` (24-bit wrap of the accumulator, ``signed_clamp``) computed
    exactly in int64: Lava's own model convolves in float32, inexact once a partial sum passes
    2^24 (graded inputs). Weights are the effective integers (``weight_exp`` is not applied,
    as in Lava's model)."""

    def run_spk(self):
        self.a_out.send(self.a_buf)
        s_in = self.s_in.recv()
        s_in = s_in.astype(bool) if self.num_message_bits.item() == 0 else s_in
        acc = lava_conv(s_in.astype(np.int64), self.weight.astype(np.int64), self.stride,
                        self.padding, self.dilation)
        self.a_buf = (acc + ACC_MAX) % (2 * ACC_MAX) - ACC_MAX
