"""Numpy kernels of the stateless snncc ops that run inside Lava processes.

Each works on a stack of samples (a leading lane axis: the samples a process runs side by side)
and follows the reference simulator's torch kernel (:mod:`snncc.simulator`) operation for
operation, so results agree to the last bit wherever the operation order is the same; attributes
(axes, pads, factors) are the IR's, per sample. Lava process models must not call torch (torch
inside a forked Lava process hangs), hence numpy. ``UNARY`` and ``BINARY`` map IR op names to
kernel factories ``factory(**attrs) -> f``.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from snncc import neuron as nrn


def _window_taps(x, kernel_size, stride, padding, dilation, fill):
    """The kH x kW (L, C, H', W') views of x (L, C, H, W) padded with ``fill``, one per kernel
    position, row by row: tap (i, j) holds element (i, j) of every pooling window."""
    (ph, pw), (sh, sw), (dh, dw) = padding, stride, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    h_out = (xp.shape[2] - dh * (kernel_size[0] - 1) - 1) // sh + 1
    w_out = (xp.shape[3] - dw * (kernel_size[1] - 1) - 1) // sw + 1
    return [xp[:, :, i * dh:i * dh + sh * (h_out - 1) + 1:sh,
               j * dw:j * dw + sw * (w_out - 1) + 1:sw]
            for i in range(kernel_size[0]) for j in range(kernel_size[1])]


def lava_conv(x, weight, stride, padding, dilation):
    """Lava's convolution (``lava.proc.conv.utils.conv``) vectorised over samples and channels:
    x (L, W, H, C_in), weight (C_out, kW, kH, C_in / groups), all pairs in (W, H) order; a true
    convolution, i.e. the correlation with the spatially flipped kernel:

        y[l, x, y, o] = sum_{i, j, c} x_pad[l, x sW + i dW, y sH + j dH, c] w[o, kW-1-i, kH-1-j, c]

    computed as one matrix product per sample and group (a stacked matmul: every sample's sums
    come out the same whatever the number of lanes). The groups are C_in over the weight's last
    axis: Lava's Conv holds ``groups`` in an int8 Var, which a depthwise convolution of 128
    channels or more overflows (Meta-SpikeFormer's 256: 0)."""
    (pw, ph), (sw, sh), (dw, dh) = padding, stride, dilation
    c_out, kw, kh, c_grp = weight.shape
    groups = x.shape[-1] // c_grp
    xp = np.pad(x, ((0, 0), (pw, pw), (ph, ph), (0, 0)))
    win = sliding_window_view(xp, (dw * (kw - 1) + 1, dh * (kh - 1) + 1), axis=(1, 2))
    win = win[:, ::sw, ::sh, :, ::dw, ::dh]  # (L, W', H', C_in, kW, kH)
    lanes, w_out, h_out = win.shape[:3]
    cols = win.reshape(lanes, w_out * h_out, groups, c_grp * kw * kh).transpose(0, 2, 1, 3)
    w = weight[:, ::-1, ::-1].transpose(0, 3, 1, 2).reshape(groups, c_out // groups, -1)
    y = np.ascontiguousarray(cols) @ np.ascontiguousarray(w.transpose(0, 2, 1))  # (L, g, M, o)
    return y.transpose(0, 2, 1, 3).reshape(lanes, w_out, h_out, c_out)


def max_pool(kernel_size, stride, padding, dilation):
    """y[l, c, i, j] = max of the window of x padded with -inf."""
    return lambda x: functools.reduce(
        np.maximum, _window_taps(x, kernel_size, stride, padding, dilation, -np.inf))


def avg_pool(kernel_size, stride, padding, divisors):
    """y[l, c, i, j] = (sum of the window of x padded with 0, row by row) / divisors[i, j]
    (:meth:`snncc.ir.AvgPool2d.divisors`), the order torch's CPU kernel adds in."""
    def f(x):
        total = 0.0
        for tap in _window_taps(x, kernel_size, stride, padding, (1, 1), 0.0):
            total = total + tap
        return total / np.asarray(divisors)
    return f


def pad(pads, value):
    """x padded by (left, right, top, bottom) with the per-channel fill ``value``:
    y = pad0(x) + border * value, as the simulator computes it."""
    left, right, top, bottom = pads

    def f(x):
        c, h, w = x.shape[1], x.shape[2] + top + bottom, x.shape[3] + left + right
        border = np.ones((c, h, w))
        border[:, top:h - bottom, left:w - right] = 0
        border = border * np.asarray(value).reshape(-1, 1, 1)
        return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))) + border
    return f


def scale(factor):
    """y = x * factor."""
    return lambda x: x * factor


def divide(divisor):
    """y = x / divisor."""
    return lambda x: x / divisor


def affine(scale, shift):
    """y = x * scale + shift (a BatchNorm no synapse before it absorbed, per channel)."""
    return lambda x: x * scale + shift


def count(cmps, thetas):
    """y = how many of the comparisons ``x cmp_d theta_d`` hold: an Add of comparison neurons
    of one value (the levels of an integer spike, round(clamp(x, 0, D))) in one process, each
    comparison the neuron's own (:func:`snncc.neuron.fire`)."""
    return lambda x: functools.reduce(np.add, (nrn.as_spikes(nrn.fire(x, t, c), x)
                                               for t, c in zip(thetas, cmps)))


def gather(axis, index):
    """y = take(x, index) along the sample's ``axis`` (>= 0)."""
    index = np.asarray(index, dtype=np.int64)
    return lambda x: np.take(x, index, axis=axis + 1)


def add_constant(constant):
    """y = x + constant (a synaptic bias that no neuron absorbed)."""
    return lambda x: x + constant


def reduce(fn):
    """Factory of y = fn(x, axes, keepdims) over axes of the sample shape (after the lane
    axis)."""
    def factory(axes, keepdim):
        return lambda x: fn(x, axis=tuple(a % (x.ndim - 1) + 1 for a in axes), keepdims=keepdim)
    return factory


def concat(axis):
    """y = concatenate((a, b), axis) along the sample's ``axis`` (>= 0)."""
    return lambda a, b: np.concatenate((a, b), axis=axis + 1)


def _same_rank(a, b):
    """(a, b) with unit axes after the lane axis of the lower-rank one, so the samples broadcast
    as numpy broadcasts them one at a time (from the trailing axis)."""
    rank = max(a.ndim, b.ndim)
    lift = lambda x: x.reshape(x.shape[0], *(1,) * (rank - x.ndim), *x.shape[1:])  # noqa: E731
    return lift(a), lift(b)


def per_sample(fn):
    """Factory of y = fn(a, b) sample by sample (Add, Hadamard, the spike matmuls)."""
    return lambda: lambda a, b: fn(*_same_rank(a, b))


UNARY = {
    "MaxPool2d": max_pool,
    "AvgPool2d": avg_pool,
    "Pad": pad,
    "Gather": gather,
    "Scale": scale,
    "Divide": divide,
    "BatchNorm": affine,
    "Count": count,
    "Bias": add_constant,
    "Sum": reduce(np.sum),
    "Mean": reduce(np.mean),
}

BINARY = {
    "Add": per_sample(np.add),
    "Hadamard": per_sample(np.multiply),
    "SpikeMatMul": per_sample(np.matmul),
    "AddressedAccumulate": per_sample(np.matmul),
    "Concat": concat,
}


def kernel(op: str, attrs: dict):
    """The kernel of ``op`` with its attributes bound."""
    return {**UNARY, **BINARY}[op](**attrs)
