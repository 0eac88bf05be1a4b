"""Differential fuzzing of the front-end: random spiking PyTorch models written the ways users
write them, compiled by snncc and compared with their own forward (used by
tests/test_fuzz_models.py and benchmarks/fuzz_models.py).

**Generator.** :func:`build_model` draws a model from a seed: a stem and 2-5 blocks over a
``[T, B, C, H, W]`` sequence (spikingjelly 2.0 multi-step layers, ``SeqToANNContainer``, or
plain ``nn`` layers on ``x.flatten(0, 1)`` reshaped back, as Spikformer writes them) or a
static image looped over T by the model itself (single-step spikingjelly or snnTorch neurons,
outputs stacked or averaged). Blocks: convolutions (1x1, 3x3, strided, depthwise, with or
without bias) with randomised BatchNorm before a neuron, SEW residuals (spikes added; SEW
ResNet's downsampling block, a strided 3x3 and a 1x1 shortcut), membrane shortcuts (real
values added before a neuron), max/avg pooling, a channel
concatenation of two branches, a channel slice, nearest upsampling, Spikformer's self-attention
(``q @ k^T * scale @ v`` over heads) and spike-driven attention (``q * k`` summed over tokens);
forms drawn from streams of their own (:data:`LATER_FORMS`): tdBN's BatchNorm, spikingjelly's
``Delay`` before a convolution, a token MLP's per-head Linears written into zeros position
by position (STMixer's), and norms that differ per step (spikingjelly's TEBN and BNTT).
Neurons (:data:`NEURONS`): spikingjelly's LIF (tau, decay_input, hard or soft reset, threshold
drawn), IF, PLIF, SimpleLIF and CUBA LIF; snnTorch's Leaky, Synaptic, Lapicque, Alpha and the
recurrent RLeaky and RSynaptic (beta, alpha, threshold, reset by subtraction or to zero, with
hidden or threaded state); norse's LIF, LIFBox, IAF and LSNN cells. Heads: mean over space (or
every position flattened), Linear, and the mean over time, the sum over time (spike counts) or
the sequence.

**Runner.** :func:`run_model` compiles the model for each target with the public API and runs
the artifact on the example input (float64), comparing the output with the model's own forward
(exactly, up to 1e-9), and runs ``snncc.check`` (layer-by-layer spikes, agreement 1). The
firing rates of the model's own neurons (hooks) are returned, so a caller can tell a vacuous
case. Outcomes: ``exact``, ``refused`` (an :class:`~snncc.errors.SnnccError` with its message:
the model uses something snncc does not support, and says so), ``mismatch`` (compiled, but the
artifact or the check differs from the model: a silent wrong answer) and ``crash`` (any other
exception).
"""

from __future__ import annotations

import copy
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

import snncc
from snncc.api import run_outputs, to_ir_layout
from snncc.errors import SnnccError
from snncc.parity import PER_STEP_LAYOUTS, output_in_ir_layout

STYLES = ("multistep", "seq_to_ann", "flatten", "loop_sj", "loop_snntorch", "loop_snntorch_state",
          "loop_norse")
#: how often each style is drawn: the multi-step ones (the spiking transformers') half the time
STYLE_WEIGHTS = (1 / 6, 1 / 6, 1 / 6, 1 / 8, 1 / 8, 1 / 8, 1 / 8)
#: styles whose model loops over the steps itself, calling single-step neurons
LOOPS = ("loop_sj", "loop_snntorch", "loop_snntorch_state", "loop_norse")
#: the neuron classes drawn
NEURONS = ("LIFNode", "IFNode", "ParametricLIFNode", "SimpleLIFNode", "CUBALIFNode", "Leaky",
           "Synaptic", "Lapicque", "Alpha", "RLeaky", "RSynaptic", "LIFCell", "LIFBoxCell",
           "IAFCell", "LSNNCell")
BLOCKS = ("conv", "sew", "shortcut", "pool", "concat", "slice", "upsample", "ssa", "sdsa",
          "sps", "mlp", "twice", "down", "window")


def _bn(rng: np.random.Generator, c: int, dims: int = 2) -> nn.Module:
    """A BatchNorm with running statistics far from identity, so neurons after it fire."""
    bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(c)
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, c)
                                         * rng.choice([-1.0, 1.0], c, p=[0.2, 0.8])))
        bn.bias.copy_(torch.from_numpy(rng.normal(0.8, 0.5, c)))
        bn.running_mean.copy_(torch.from_numpy(rng.normal(0.0, 0.5, c)))
        bn.running_var.copy_(torch.from_numpy(rng.uniform(0.2, 2.0, c)))
    return bn


class _Model(nn.Module):
    """The drawn model: ``stem`` then ``blocks`` (each a kind and its modules) then ``head``.
    Its forward is ordinary Python over the blocks, as a user's model is; ``forms`` says how
    each operation is written (:data:`FORMS`), drawn per model."""

    def __init__(self, style: str, T: int, blocks: list, stem: nn.ModuleDict, head: nn.Module,
                 forms: dict):
        super().__init__()
        self.style, self.T, self.kinds, self.forms = style, T, [k for k, _ in blocks], forms
        self.blocks = nn.ModuleList(m for _, m in blocks)
        self.stem, self.head = stem, head

    def f(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A stateless layer on a sequence [T, B, ...] (multi-step styles) or one step."""
        if self.style == "flatten":
            T, B = x.shape[:2]
            fold, unfold = self.forms["fold"], self.forms["unfold"]
            y = layer(x.flatten(0, 1) if fold == "flatten" else x.reshape(T * B, *x.shape[2:])
                      if fold == "reshape" else x.contiguous().view(-1, *x.shape[2:]))
            return (y.reshape(T, B, *y.shape[1:]) if unfold == "reshape" else
                    y.unflatten(0, (T, B)) if unfold == "unflatten" else
                    y.view(T, -1, *y.shape[1:]))
        return layer(x)  # multi-step layers and SeqToANNContainer take [T, B, ...]

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """The network on one value: a sequence (multi-step styles) or one step (loops)."""
        x = self.stem["lif"](self.f(self.stem["conv"], x))
        for kind, m in zip(self.kinds, self.blocks):
            x = getattr(self, f"_{kind}")(m, x)
        if self.forms["readout"] == "full_size_conv":  # SGLFormer's head: [B, C, N, T]
            y = self.head["time_conv"](x.flatten(3).permute(1, 2, 3, 0))
            return self.head["fc"](self.head["time_bn"](y).reshape(x.shape[1], -1))
        y = self.f(self.head["fc"], _space_mean(self, x))
        if self.forms["readout"] != "membrane":
            return y
        out = self.head["out"]  # a neuron that never fires, its membranes the output
        out(y)
        return out.v if self.style in LOOPS else out.v_seq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, form = self.T, self.forms["input"]
        if self.style in LOOPS:
            for m in self.modules():  # states that the forward threads from step to step
                if isinstance(m, _Stateful):
                    m.start()
            frames = ([x] * T if form == "static" else list(x.unbind(1)) if form == "sequence_bt"
                      else x if self.forms["loop"] == "iterate" else [x[t] for t in range(T)])
            if self.forms["readout"] in ("mean", "sum") and self.forms["loop"] != "append":
                total = 0.0 if self.forms["loop"] == "iterate" else None
                for frame in frames:  # (a Python 0.0, or the first step's value, then sums)
                    y = self.step(frame)
                    total = y if total is None else total + y
                return total / T if self.forms["readout"] == "mean" else total
            y = torch.stack([self.step(frame) for frame in frames],
                            dim=int(self.forms["time_axis"]))
            reduce = {"mean": y.mean, "sum": y.sum}.get(self.forms["readout"])
            return y if reduce is None else reduce(int(self.forms["time_axis"]))
        if form == "sequence_bt":  # DVS code's [B, T, ...]
            x = x.transpose(0, 1)
        elif form != "sequence_tb":  # a static image made a sequence in forward (Spikformer)
            x = (x.unsqueeze(0).repeat(T, 1, 1, 1, 1) if form == "repeat" else
                 x.unsqueeze(0).expand(T, -1, -1, -1, -1) if form == "expand" else
                 torch.stack([x] * T))
        y = self.step(x)
        if self.forms["readout"] == "full_size_conv":  # (over time already)
            return y
        if self.forms["readout"] in ("mean", "sum"):
            return y.mean(0) if self.forms["readout"] == "mean" else y.sum(0)
        return y.transpose(0, 1) if self.forms["time_axis"] == "1" else y

    # ------------------------------------------------------------------ blocks
    def _add(self, a, b):
        """a + b as drawn; "inplace" adds into b, a neuron's fresh output (SEW's out += x),
        except where snnTorch's recurrent neurons return spikes that are their state too (an
        in-place change of those is refused, tests/test_snntorch_norse.py)."""
        form = self.forms["add"]
        if form == "inplace" and any(type(m).__name__ in ("RLeaky", "RSynaptic")
                                     for m in self.modules()):
            form = "plus"
        return (a + b if form == "plus" else a.add(b) if form == "method" else
                torch.add(a, b) if form == "torch" else b.add_(a))

    def _conv(self, m, x):
        x = m["delay"](x) if "delay" in m else x  # (spikingjelly's: zeros at the first steps)
        return m["lif"](self.f(m["conv"], x))

    def _sew(self, m, x):
        """SEW ResNet's connection of spikes: ADD, AND or IAND."""
        form, s = m.connect, m["lif"](self.f(m["conv"], x))
        return self._add(x, s) if form == "add" else x * s if form == "and" else (1.0 - s) * x

    def _sps(self, m, x):
        """Spikformer's patch splitting: convolution, BatchNorm, max pooling, then the neuron."""
        return m["lif"](self.f(m["pool"], self.f(m["conv"], x)))

    def _mlp(self, m, x):
        """Tokens through Linear layers on [..., N, C] (transposed), BatchNorm1d on [..., C, N]."""
        H, W = x.shape[-2:]
        t = x.flatten(-2)
        for i in (1, 2):
            y = self._swapped(t)
            y = self._mixed(m, y) if i == 1 and "mix" in m else y
            y = self._swapped(self.f(m[f"fc{i}"], y))
            t = m[f"lif{i}"](self.f(m[f"bn{i}"], y))
        return self._add(x, t.reshape(*t.shape[:-1], H, W))

    def _mixed(self, m, x):
        """STMixer's per-head Linears: each group of channels its own Linear, written into
        zeros position by position along the group axis (``y[..., i, :] = mix[i](...)``)."""
        g = x.unflatten(-1, (len(m["mix"]), -1))
        y = torch.zeros_like(g)
        for i, mix in enumerate(m["mix"]):
            at = ((..., i, slice(None)) if m["mix"].assign == "ellipsis" else
                  (slice(None),) * (g.dim() - 2) + (i,))
            y[at] = self.f(mix, g[at])
        return y.flatten(-2)

    def _swapped(self, x):  # the last two axes exchanged, as drawn
        if self.forms["swap"] == "transpose":
            return x.transpose(-1, -2)
        if self.forms["swap"] == "mT":
            return x.mT
        return x.permute(*range(x.dim() - 2), x.dim() - 1, x.dim() - 2)

    def _shortcut(self, m, x):
        return m["lif"](self._add(self.f(m["bn_in"], x), self.f(m["conv"], x)))

    def _pool(self, m, x):
        return self.f(m["pool"], x)

    def _concat(self, m, x):
        a, b = m["lif_a"](self.f(m["a"], x)), m["lif_b"](self.f(m["b"], x))
        form = self.forms["cat"]
        return (torch.cat([a, b], dim=-3) if form == "cat" else
                torch.concat((a, b), -3) if form == "concat" else
                torch.stack([a, b], dim=-4).flatten(-4, -3))

    def _slice(self, m, x):
        h, form = x.shape[-3] // 2, self.forms["slice"]
        x = (x[..., :h, :, :] if form == "index" else torch.chunk(x, 2, dim=-3)[0]
             if form == "chunk" else x.split(h, dim=-3)[0] if form == "split" else
             x.narrow(-3, 0, h))
        return m["lif"](self.f(m["conv"], x))

    def _down(self, m, x):
        """SEW ResNet's downsampling: both paths' spikes added (the shortcut's a neuron's too)."""
        return self._add(m["lif"](self.f(m["conv"], x)), m["lif_s"](self.f(m["short"], x)))

    def _twice(self, m, x):
        """One convolution called twice (shared weights), a neuron after each call."""
        return m["lif2"](self.f(m["conv"], m["lif"](self.f(m["conv"], x))))

    def _upsample(self, m, x):
        return m["lif"](self.f(m["conv"], self.f(m["up"], x)))

    def _heads(self, x, h):  # [..., C, N] -> [..., h, N, C/h]
        *lead, c, n = x.shape
        form = self.forms["heads"]
        if form == "einops":
            import einops

            return einops.rearrange(x, "... (h d) n -> ... h n d", h=h)
        split = x.view(*lead, h, c // h, n) if form == "view" else x.reshape(*lead, h, c // h, n)
        return split.transpose(-1, -2)

    def _merged(self, a, shape):  # [..., h, N, d] -> [..., C, N]
        if self.forms["heads"] == "einops":
            import einops

            return einops.rearrange(a, "... h n d -> ... (h d) n")
        return a.transpose(-1, -2).reshape(shape)

    def _matmul(self, a, b):
        form = self.forms["matmul"]
        return (a @ b if form == "at" else torch.matmul(a, b) if form == "matmul" else
                torch.einsum("...nd,...dm->...nm", a, b))

    def _scaled(self, a, cfg):
        form = self.forms["scale"]
        return (a * cfg.scale if form == "float" else a * cfg.scale_tensor if form == "buffer"
                else torch.mul(a, cfg.scale))

    def _ssa(self, m, x):
        """Spikformer's spiking self-attention on the tokens of x, added to x (SEW style)."""
        H, W = x.shape[-2:]
        t = x.flatten(-2)
        q, k, v = (self._heads(m[f"lif_{n}"](self.f(m[n], t)), m["cfg"].heads) for n in "qkv")
        a = self._matmul(self._matmul(q, k.transpose(-2, -1)), v)
        a = self._merged(m["lif_attn"](self._scaled(a, m["cfg"])), t.shape)
        out = m["lif_proj"](self.f(m["proj"], a))
        return self._add(x, out.reshape(*out.shape[:-1], H, W))

    def _window(self, m, x):
        """SGLFormer's local attention: each sample's 2x2 strided windows moved into the batch
        axis ([T, B*4, C, H/2, W/2], its Partition), Spikformer's attention within each window
        on 1x1 convolutions, and the windows put back (its Integration), added to x."""
        T, B, C, H, W = x.shape
        w = x.reshape(T, B, C, H // 2, 2, W // 2, 2).permute(0, 1, 4, 6, 2, 3, 5)
        w = w.reshape(T, -1, C, H // 2, W // 2)
        q, k, v = (self._heads(m[f"lif_{n}"](self.f(m[n], w)).flatten(-2), m["cfg"].heads)
                   for n in "qkv")
        a = self._matmul(self._matmul(q, k.transpose(-2, -1)), v)
        a = self._merged(m["lif_attn"](self._scaled(a, m["cfg"])), (*w.shape[:3], -1))
        y = m["lif_proj"](self.f(m["proj"], a.reshape(w.shape)))
        y = y.reshape(T, B, 2, 2, C, H // 2, W // 2).permute(0, 1, 4, 5, 2, 6, 3)
        return self._add(x, y.reshape(x.shape))

    def _sdsa(self, m, x):
        """Spike-driven self-attention: q * k summed over tokens, fired, gating v."""
        H, W = x.shape[-2:]
        t = x.flatten(-2)
        q, k, v = (m[f"lif_{n}"](self.f(m[n], t)) for n in "qkv")
        kv = m["lif_kv"]((q * k).sum(-1, keepdim=True))
        out = m["lif_proj"](self.f(m["proj"], kv * v))
        return self._add(x, out.reshape(*out.shape[:-1], H, W))


def _space_mean(model: _Model, x: torch.Tensor) -> torch.Tensor:
    form = model.forms["space_mean"]
    if form == "adaptive":
        return model.f(model.head["gap"], x).flatten(-3)
    if form == "flatten":  # no mean: the head reads every position (a CNN's classifier)
        return x.flatten(-3)
    return x.mean((-2, -1)) if form == "mean" else x.flatten(-2).mean(-1)


#: how each operation may be written; one form of each is drawn per model
FORMS = {"add": ("plus", "method", "torch", "inplace"), "cat": ("cat", "concat", "stack"),
         "slice": ("index", "chunk", "split", "narrow"), "heads": ("reshape", "view", "einops"),
         "matmul": ("at", "matmul", "einsum"), "scale": ("float", "buffer", "mul"),
         "space_mean": ("mean", "flatten_mean", "adaptive", "flatten"),
         "input": ("sequence_tb", "sequence_bt", "repeat", "expand", "stack"),
         "readout": ("mean", "sequence", "membrane", "sum", "full_size_conv"),
         "time_axis": ("0", "1"),
         "loop": ("index", "iterate", "append"),
         "fold": ("flatten", "reshape", "view"), "unfold": ("reshape", "unflatten", "view"),
         "swap": ("transpose", "mT", "permute")}
#: the forms of the input a model's own loop over time reads
LOOP_INPUTS = ("static", "sequence_tb", "sequence_bt")


class _FunctionalConvBN(nn.Module):
    """A convolution and BatchNorm written as function calls on their parameters."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x):
        c, bn = self.conv, self.bn
        y = F.conv2d(x, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups)
        return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                            bn.eps)


class _Stateful(nn.Module):
    """A neuron that takes and returns its state, carried between the model's calls of it: a
    norse cell (``z, s = cell(x, s)`` from ``s = None``) or an snnTorch neuron without hidden
    state (``spk, mem = lif(x, mem)``, ``spk, syn, mem = syn(x, syn, mem)``,
    ``spk, mem = rlif(x, spk, mem)``, ... from its ``init_<name>()``)."""

    def __init__(self, cell: nn.Module):
        super().__init__()
        self.cell, self.state = cell, None
        # snnTorch's recurrent neurons take their spikes back as state
        self.recurrent = type(cell).__name__ in ("RLeaky", "RSynaptic")

    def start(self):
        init = getattr(self.cell, f"init_{type(self.cell).__name__.lower()}", None)
        self.state = None if init is None else init()
        self.several = init is not None and isinstance(self.state, tuple)

    def forward(self, x):
        if not self.several:  # (norse's states, and snnTorch's of one tensor)
            z, self.state = self.cell(x, self.state)
            return z
        out = self.cell(x, *self.state)
        self.state = out if self.recurrent else out[1:]
        return out[0]


class _Cfg(nn.Module):
    """An attention block's settings, kept in its ModuleDict (the scale also as a buffer)."""

    def __init__(self, heads: int, scale: float):
        super().__init__()
        self.heads, self.scale = heads, scale
        self.register_buffer("scale_tensor", torch.tensor(scale))


class _TdBatchNorm(nn.Module):
    """tdBN's ``batch_norm_2d`` (EMS-YOLO, MS-ResNet): ``bn``'s statistics in a
    ``BatchNorm3d`` of ``[T, B, C, H, W]`` moved to ``[B, C, T, H, W]`` and back."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.bn = nn.BatchNorm3d(bn.num_features)
        self.bn.load_state_dict(bn.state_dict())

    def forward(self, x):
        y = x.transpose(0, 2).contiguous().transpose(0, 1).contiguous()
        return self.bn(y).contiguous().transpose(0, 1).contiguous().transpose(0, 2)


#: forms added after the fuzzer's runs were recorded, each drawn from a stream of its own (so
#: a recorded seed's model stays the model it was where the form is not drawn)
LATER_FORMS = ("tdbn", "delay", "assign", "per_step_norm")


class _Draw:
    """Draws the layers of one model in its style; ``later``: the stream of each of
    :data:`LATER_FORMS`."""

    def __init__(self, rng: np.random.Generator, style: str,
                 later: dict[str, np.random.Generator]):
        self.rng, self.style, self.later = rng, style, later
        self.T = 0  # (drawn after the generator is made)
        self.multi = style in ("multistep", "seq_to_ann", "flatten")

    def neuron(self, channels: int | None = None) -> nn.Module:
        """A neuron of the style; ``channels``: it reads a convolution's [B, C, H, W] output
        (snnTorch's recurrent neurons may then recur through a convolution)."""
        rng = self.rng
        if self.style in ("loop_snntorch", "loop_snntorch_state"):
            hidden = self.style == "loop_snntorch"
            lif = _snntorch_neuron(rng, hidden, channels)
            return lif if hidden else _Stateful(lif)
        if self.style == "loop_norse":
            return _Stateful(_norse_cell(rng))
        from spikingjelly.activation_based import neuron

        from spikingjelly.activation_based import surrogate

        kind = rng.choice(["lif", "lif", "lif", "if", "plif", "simple_lif", "cuba"])
        common = dict(v_threshold=float(rng.choice([0.5, 1.0])),
                      v_reset=None if rng.random() < 0.3 else 0.0,
                      step_mode="m" if self.multi else "s",
                      detach_reset=bool(rng.random() < 0.3),
                      surrogate_function=surrogate.ATan() if rng.random() < 0.5
                      else surrogate.Sigmoid())
        if kind == "cuba":  # (no step_mode, detach_reset or soft reset in its constructor)
            n = neuron.CUBALIFNode(c_decay=float(rng.choice([0.3, 0.5])),
                                   v_decay=float(rng.choice([0.5, 0.75])),
                                   v_threshold=common["v_threshold"])
            n.step_mode = common["step_mode"]
            return n
        if kind == "simple_lif":  # (its reset: v_reset, never soft)
            return neuron.SimpleLIFNode(tau=float(rng.choice([2.0, 4.0])),
                                        decay_input=bool(rng.random() < 0.5),
                                        **{**common, "v_reset": 0.0})
        if kind == "if":
            return neuron.IFNode(**common)
        if kind == "plif":
            return neuron.ParametricLIFNode(init_tau=float(rng.choice([1.5, 2.0, 3.0])),
                                            **common)
        return neuron.LIFNode(tau=float(rng.choice([2.0, 1.5, 4.0])),
                              decay_input=bool(rng.random() < 0.7), **common)

    def layer(self, *mods: nn.Module) -> nn.Module:
        """``mods`` in sequence, wrapped for the style (stateless layers over a sequence)."""
        if self.style == "multistep":
            return nn.Sequential(*map(_multistep, mods)) if len(mods) > 1 else _multistep(mods[0])
        if self.style == "seq_to_ann":
            from spikingjelly.activation_based import layer

            return layer.SeqToANNContainer(*mods)
        return nn.Sequential(*mods) if len(mods) > 1 else mods[0]

    def conv_bn(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                tdbn: bool = True, once: bool = True):
        """A convolution and its BatchNorm in the style (``tdbn``: the BatchNorm may be drawn
        as tdBN's, which moves time among the axes: not where the batch axis holds windows;
        ``once``: the model calls it once, so that it may be a BNTT, which counts its calls)."""
        conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups,
                         bias=bool(self.rng.random() < 0.5))
        extra = [nn.Dropout(0.2)] if self.rng.random() < 0.15 else []  # (identity in eval)
        if self.style != "multistep" and self.rng.random() < 0.2:
            return self.layer(_FunctionalConvBN(conv, _bn(self.rng, cout)), *extra)
        bn = _bn(self.rng, cout)
        if self.style == "multistep" and tdbn and self.later["tdbn"].random() < 0.3:
            return nn.Sequential(_multistep(conv), _TdBatchNorm(bn), *map(_multistep, extra))
        norm = self.per_step_norm(bn) if self.style == "multistep" and tdbn and once else None
        if norm is not None:
            return nn.Sequential(_multistep(conv), norm, *map(_multistep, extra))
        return self.layer(conv, bn, *extra)

    def per_step_norm(self, bn: nn.BatchNorm2d) -> nn.Module | None:
        """spikingjelly's TEBN (``bn`` times a scale of each step) or BNTT (a norm of each
        step, ``bn`` the first; theirs have no bias), or None (drawn)."""
        from spikingjelly.activation_based import layer

        rng, c = self.later["per_step_norm"], bn.num_features
        if rng.random() >= 0.2:
            return None
        if rng.random() < 0.5:
            norm = layer.TemporalEffectiveBatchNorm2d(self.T, c)
            scale = rng.uniform(0.5, 1.5, self.T) * rng.choice([-1.0, 1.0], self.T, p=[0.2, 0.8])
            norm.load_state_dict({**bn.state_dict(), "scale": torch.from_numpy(scale)})
            return norm
        norm = layer.BatchNormThroughTime2d(self.T, c, step_mode="m")
        for t, each in enumerate(norm.bn_list):
            drawn = (bn if t == 0 else _bn(rng, c)).state_dict()
            each.load_state_dict({k: v for k, v in drawn.items() if k != "bias"})
        return norm

    def delay(self, T: int) -> nn.Module | None:
        """spikingjelly's ``Delay`` of 1 or 2 steps (fewer than ``T``: a longer one gives the
        next neuron a constant at every step), or None (drawn)."""
        from spikingjelly.activation_based import layer

        rng = self.later["delay"]
        if rng.random() >= 0.2:
            return None
        return layer.Delay(int(rng.integers(1, min(3, T))),
                           step_mode="m" if self.multi else "s")

    def mixer(self, c: int) -> nn.ModuleList | None:
        """Two Linears of ``c / 2`` channels each, STMixer's per-head ones, or None (drawn;
        their weights from a torch stream of their own, so the other layers' stay as drawn)."""
        rng = self.later["assign"]
        if rng.random() >= 0.3:
            return None
        with torch.random.fork_rng():
            torch.manual_seed(int(rng.integers(2 ** 31)))
            mix = nn.ModuleList(self.layer(nn.Linear(c // 2, c // 2)) for _ in range(2))
        mix.assign = str(rng.choice(["ellipsis", "slices"]))
        return mix

    def conv1d_bn(self, c: int):
        return self.layer(nn.Conv1d(c, c, 1, bias=bool(self.rng.random() < 0.5)),
                          _bn(self.rng, c, dims=1))


def _snntorch_neuron(rng: np.random.Generator, hidden: bool, channels: int | None) -> nn.Module:
    """One of snnTorch's neurons with drawn settings; recurrent ones recur on each neuron's
    own spikes (``all_to_all=False``: any layer's shape) or, after a convolution of
    ``channels``, through a 3x3 convolution of the layer's spikes."""
    import snntorch as snn

    kind = rng.choice(["leaky", "leaky", "synaptic", "lapicque", "alpha", "rleaky",
                       "rsynaptic"])
    common = dict(threshold=float(rng.choice([0.5, 1.0])), init_hidden=hidden,
                  reset_mechanism=str(rng.choice(["subtract", "zero"])))
    beta = float(rng.choice([0.5, 0.75, 0.9]))
    if kind == "leaky":
        return snn.Leaky(beta=beta, **common)
    if kind == "lapicque":
        return snn.Lapicque(beta=beta, **common)
    if kind == "alpha":  # (its alpha above its beta)
        return snn.Alpha(alpha=0.9, beta=float(rng.choice([0.6, 0.8])), **common)
    alpha = float(rng.choice([0.5, 0.7]))
    if kind == "synaptic":
        return snn.Synaptic(alpha=alpha, beta=beta, **common)
    recurrent = dict(V=float(rng.choice([0.5, -0.5])), all_to_all=False, **common)
    if channels is not None and rng.random() < 0.5:
        recurrent = dict(all_to_all=True, conv2d_channels=channels, kernel_size=3, **common)
    if kind == "rleaky":
        return snn.RLeaky(beta=beta, **recurrent)
    return snn.RSynaptic(alpha=alpha, beta=beta, **recurrent)


def _norse_cell(rng: np.random.Generator) -> nn.Module:
    import norse.torch as norse
    from norse.torch.functional.iaf import IAFParameters
    from norse.torch.functional.lif import LIFParameters
    from norse.torch.functional.lif_box import LIFBoxParameters
    from norse.torch.functional.lsnn import LSNNParameters

    kind = rng.choice(["lif", "lif", "box", "iaf", "lsnn"])
    v_th = torch.as_tensor(float(rng.choice([0.2, 0.3])))
    if kind == "iaf":
        return norse.IAFCell(IAFParameters(v_th=torch.as_tensor(0.8)))
    tau_mem_inv = torch.as_tensor(float(rng.choice([200.0, 250.0, 400.0])))
    if kind == "lsnn":
        return norse.LSNNCell(LSNNParameters(
            tau_mem_inv=tau_mem_inv, v_th=v_th, beta=torch.as_tensor(float(rng.choice([0.1, 0.5]))),
            tau_adapt_inv=torch.as_tensor(float(rng.choice([50.0, 100.0])))))
    if kind == "box":
        return norse.LIFBoxCell(LIFBoxParameters(tau_mem_inv=tau_mem_inv, v_th=v_th))
    return norse.LIFCell(LIFParameters(tau_syn_inv=torch.as_tensor(
        float(rng.choice([200.0, 300.0]))), tau_mem_inv=tau_mem_inv, v_th=v_th))


def neuron_classes(model: nn.Module) -> set[str]:
    """The class names of ``model``'s neurons (of the cells its forward threads state for; not
    the modules inside a neuron, as RLeaky's recurrent weight)."""
    from snncc.frontends.adapters import is_neuron

    names = [n for n, m in model.named_modules() if is_neuron(m)]
    inside = {n for n in names for outer in names if n.startswith(f"{outer}.")}
    return {type(model.get_submodule(n)).__name__ for n in names if n not in inside}


def _unwrapped(layer: nn.Module) -> nn.Module:
    """The one layer a style's wrapper holds."""
    while isinstance(layer, nn.Sequential):  # (SeqToANNContainer is one)
        layer = layer[0]
    return layer


def _multistep(mod: nn.Module) -> nn.Module:
    """spikingjelly's multi-step layer of ``mod``'s class, with ``mod``'s settings and state."""
    from spikingjelly.activation_based import layer

    if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
        m = getattr(layer, type(mod).__name__)(
            mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride, mod.padding,
            groups=mod.groups, bias=mod.bias is not None, step_mode="m")
    elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
        m = getattr(layer, type(mod).__name__)(mod.num_features, step_mode="m")
    elif isinstance(mod, nn.Upsample):
        m = layer.Upsample(scale_factor=mod.scale_factor, mode=mod.mode, step_mode="m")
    elif isinstance(mod, nn.AdaptiveAvgPool2d):
        m = layer.AdaptiveAvgPool2d(mod.output_size, step_mode="m")
    elif isinstance(mod, nn.Linear):
        m = layer.Linear(mod.in_features, mod.out_features, step_mode="m")
    elif isinstance(mod, nn.Dropout):
        m = layer.Dropout(mod.p, step_mode="m")
    else:  # pooling
        m = getattr(layer, type(mod).__name__)(mod.kernel_size, mod.stride, mod.padding,
                                               step_mode="m")
    m.load_state_dict(mod.state_dict())
    return m


def build_model(seed: int):
    """(model in float64 eval mode, example input, description) drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    style = str(rng.choice(STYLES, p=STYLE_WEIGHTS))
    d = _Draw(rng, style, {form: np.random.default_rng([seed, i + 1])
                           for i, form in enumerate(LATER_FORMS)})
    T, B, c, size = int(rng.integers(2, 5)), 5, int(rng.choice([4, 8])), 8
    d.T = T
    stem = nn.ModuleDict({"conv": d.conv_bn(2, c), "lif": d.neuron(c)})
    blocks, kinds = [], []
    spikes = True  # whether the blocks' value is spikes (0/1) so far
    for _ in range(int(rng.integers(2, 6))):
        kind = str(rng.choice(BLOCKS))
        if kind in ("pool", "sps", "down") and size <= 2 or kind == "upsample" and size >= 16 \
                or kind == "window" and (size % 2 or style in LOOPS):  # (windows of [T, B])
            kind = "conv"
        m = nn.ModuleDict()
        if kind == "conv":
            k, stride = int(rng.choice([1, 3])), int(rng.choice([1, 1, 2])) if size > 2 else 1
            groups = c if rng.random() < 0.25 else 1
            m["conv"], m["lif"] = d.conv_bn(c, c, k, stride, groups), d.neuron(c)
            size = (size + 2 * (k // 2) - k) // stride + 1
            if (delay := d.delay(T)) is not None:
                m["delay"] = delay
        elif kind in ("sew", "shortcut"):
            m["conv"], m["lif"] = d.conv_bn(c, c, int(rng.choice([1, 3]))), d.neuron(c)
            if kind == "shortcut":
                m["bn_in"] = d.layer(_bn(rng, c))
            else:  # SEW's AND and IAND of spikes (ADD of anything)
                m.connect = str(rng.choice(["add", "and", "iand"] if spikes else ["add"]))
        elif kind == "down":  # SEW ResNet's downsampling block: strided 3x3, 1x1 shortcut
            m["conv"], m["lif"] = d.conv_bn(c, c, 3, 2), d.neuron(c)
            m["short"], m["lif_s"] = d.conv_bn(c, c, 1, 2), d.neuron(c)
            size = (size - 1) // 2 + 1
        elif kind == "twice":
            m["conv"], m["lif"], m["lif2"] = d.conv_bn(c, c, 3, once=False), d.neuron(), \
                d.neuron()
        elif kind == "sps":
            m["conv"], m["lif"] = d.conv_bn(c, c, 3), d.neuron()
            m["pool"] = d.layer(nn.MaxPool2d(3, 2, 1))
            size = (size - 1) // 2 + 1
        elif kind == "mlp":
            hidden = int(rng.choice([c, 2 * c]))
            m["fc1"], m["bn1"], m["lif1"] = d.layer(nn.Linear(c, hidden)), d.layer(
                _bn(rng, hidden, dims=1)), d.neuron()
            m["fc2"], m["bn2"], m["lif2"] = d.layer(nn.Linear(hidden, c)), d.layer(
                _bn(rng, c, dims=1)), d.neuron()
            if (mix := d.mixer(c)) is not None:
                m["mix"] = mix
        elif kind == "pool":
            m["pool"] = d.layer(nn.MaxPool2d(2) if rng.random() < 0.6 else nn.AvgPool2d(2))
            size //= 2
        elif kind == "concat":
            m["a"], m["lif_a"] = d.conv_bn(c, c // 2, 3), d.neuron()
            m["b"], m["lif_b"] = d.conv_bn(c, c - c // 2, 1), d.neuron()
        elif kind == "slice":
            m["conv"], m["lif"] = d.conv_bn(c // 2, c, 1), d.neuron(c)
        elif kind == "upsample":
            m["up"] = d.layer(nn.Upsample(scale_factor=2, mode="nearest"))
            m["conv"], m["lif"] = d.conv_bn(c, c, 3), d.neuron()
            size *= 2
        else:  # attention
            heads = int(rng.choice([1, 2]))
            k = int(rng.choice([1, 1, 3])) if kind == "window" else 1  # (3x3: per window)
            for n in ("q", "k", "v", "proj"):
                m[n], m[f"lif_{n}"] = (d.conv_bn(c, c, k, tdbn=False) if kind == "window"
                                       else d.conv1d_bn(c)), d.neuron()
            if kind in ("ssa", "window"):
                m["cfg"] = _Cfg(heads, float(rng.choice([0.25, 0.5, 0.3])))
                m["lif_attn"] = d.neuron()
            else:
                m["lif_kv"] = d.neuron()
        blocks.append((kind, m))
        kinds.append(kind)
        spikes = (kind in ("conv", "shortcut", "concat", "slice", "upsample", "sps")
                  or kind == "sew" and spikes and m.connect != "add"
                  or kind == "pool" and spikes and isinstance(_unwrapped(m["pool"]), nn.MaxPool2d))
    head = nn.ModuleDict({"fc": nn.Linear(c, int(rng.choice([3, 5]))),
                          "gap": d.layer(nn.AdaptiveAvgPool2d(1))})
    forms = {k: str(rng.choice(v)) for k, v in FORMS.items()}
    if forms["readout"] == "full_size_conv":
        if style in LOOPS:
            forms["readout"] = "mean"
        else:  # a depthwise convolution whose kernel spans every position and step
            head["time_conv"] = nn.Conv2d(c, c, (size * size, T), groups=c)
            head["time_bn"] = _bn(rng, c)
    if forms["space_mean"] == "flatten" and forms["readout"] != "full_size_conv":
        head["fc"] = nn.Linear(c * size * size, head["fc"].out_features)
    if forms["readout"] == "membrane":  # spikingjelly's IFNode that never fires: its
        from spikingjelly.activation_based import neuron  # membranes (StereoSpike's depth)

        multi = style not in LOOPS  # (a loop reads it after each step's call)
        head["out"] = neuron.IFNode(v_threshold=float("inf"), v_reset=0.0,
                                    step_mode="m" if multi else "s", store_v_seq=multi)
    if style in LOOPS:
        forms["input"] = str(rng.choice(LOOP_INPUTS))
    # snnTorch's spike functions return float32 ((u > 0).float()): its models stay float32
    dtype = torch.float32 if style.startswith("loop_snntorch") else torch.float64
    model = _Model(style, T, blocks, stem, head, forms).to(dtype).eval()
    gen = torch.Generator().manual_seed(seed)
    shape = {"sequence_tb": (T, B, 2, 8, 8), "sequence_bt": (B, T, 2, 8, 8)}.get(
        forms["input"], (B, 2, 8, 8))
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2).to(dtype)
    return model, x, f"seed {seed}: {style}, T={T}, c={c}, blocks {kinds}, forms {forms}"


def fuzz_model(seed: int) -> nn.Module:
    """The model :func:`build_model` draws from ``seed``: a factory for ``--model``."""
    return build_model(seed)[0]


@dataclass
class ModelResult:
    seed: int
    description: str
    outcome: dict[str, str] = field(default_factory=dict)  # target -> exact/refused/...
    detail: dict[str, str] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)

    @property
    def failures(self) -> dict[str, str]:
        return {t: f"{self.outcome[t]}: {self.detail.get(t, '')}" for t in self.outcome
                if self.outcome[t] in ("mismatch", "crash")}


def _reset(model: nn.Module) -> None:
    from spikingjelly.activation_based import functional

    functional.reset_net(model)
    for m in model.modules():
        if hasattr(m, "reset_mem"):  # snnTorch
            m.reset_mem()


def float64_copy(model: nn.Module) -> nn.Module:
    """The model in float64, snnTorch's float32 spikes cast to the membrane's dtype (0/1
    either way; a float32 model's parameters are exactly its float64 copy's)."""
    ref = copy.deepcopy(model).double().eval()
    for m in ref.modules():
        if type(m).__module__.startswith("snntorch._neurons") and hasattr(m, "spike_grad"):
            m.spike_grad = (lambda g: lambda u: g(u).to(u.dtype))(m.spike_grad)
    return ref


def reference(model: nn.Module, x: torch.Tensor):
    """The float64 model's output from fresh state and its neurons' firing rates (hooks)."""
    from conftest import hooked_calls

    model = float64_copy(model)
    neurons = {n for n, _ in model.named_modules() if "lif" in n.rsplit(".", 1)[-1]}
    y, calls = hooked_calls(model, x.double(), neurons, _reset)
    return y, {n: float(torch.cat([c.flatten() for c in cs]).mean()) for n, cs in calls.items()}


def run_model(seed: int, targets=("sim", "onnx", "nir")) -> ModelResult:
    model, x, desc = build_model(seed)
    res = ModelResult(seed, desc)
    ref, res.rates = reference(model, x)
    with tempfile.TemporaryDirectory() as tmp:
        for target in targets:
            try:
                art = snncc.compile(model, x, target=target, out=Path(tmp) / target)
                graph = snncc.trace(model, x)  # its layouts: the artifact runs [T, B, ...]
                outputs, _, sequence = run_outputs(art, to_ir_layout(graph, x.double()))
                y, ref_y = np.asarray(next(iter(outputs.values()))), ref
                if graph.meta.get("output_layout") in PER_STEP_LAYOUTS:
                    ref_y = output_in_ir_layout(graph, ref, y.shape[1] if sequence else len(y))
                    if not sequence:  # (a target that gives the last step only: Lava)
                        ref_y = ref_y[-1]
                report = snncc.check(model, x, target=target)
            except SnnccError as e:
                res.outcome[target], res.detail[target] = "refused", str(e).splitlines()[0]
                continue
            except Exception as e:  # noqa: BLE001 (a crash is what is being looked for)
                res.outcome[target] = "crash"
                res.detail[target] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                continue
            diff = float(np.abs(y - ref_y).max()) if y.shape == ref_y.shape else math.inf
            bad = [f"output shape {y.shape} vs {ref_y.shape}" if diff == math.inf else
                   "" if diff <= 1e-9 else f"output |diff| {diff:.3g}",  # (NaN: a difference)
                   f"check agreement {report.min_agreement:.6f} (first divergent "
                   f"{report.first_divergent_target or report.first_divergent_sim})"
                   if report.min_agreement < 1.0 else "",
                   "check: unexplained output difference"
                   if report.unexplained_output_difference is not None else ""]
            bad = [b for b in bad if b]
            res.outcome[target] = "mismatch" if bad else "exact"
            if bad:
                res.detail[target] = "; ".join(bad)
    return res
