"""Auto-Spikformer sub-nets (Che et al., paper 000) as the official code runs them
(github CheKaiWei/Auto-spikformer, ``model.py``, ``BN_super.py``, ``Linear_super.py``).

The official code trains one supernet (``cifar100.yml``: ``dim 384``, ``num_heads 12``,
``layer 4``, ``mlp_ratio 4``) and runs a candidate by ``Spikformer.set_sample_config``
(model.py 330-364), which slices leading rows/columns out of the supernet's tensors:

- SPS (model.py 234-240, 243-274): ``proj_conv``, ``proj_conv1``, ``proj_conv2`` and their
  BNs stay at the supernet's widths (D/8, D/4, D/2 of the supernet's D); ``proj_conv3`` keeps
  its D/2 inputs and only its outputs are cut to the candidate's embed dim s; ``rpe_conv`` is cut
  to (s, s); ``proj_bn3`` and ``rpe_bn`` are ``BNSuper`` (keys ``proj_bn3.bn.weight``, ...).
- blocks (model.py 154-187, SSA 83-113): every q/k/v/proj ``LinearSuper`` to (s, s), fc1 to
  (int(s * ratio_j), s), fc2 to (s, int(s * ratio_j)), every BN a ``BNSuper`` cut to its
  layer's width; blocks past the candidate's depth become identities. The blocks' ``norm1`` /
  ``norm2`` LayerNorms (never called) stay at the supernet's width.
- the head (``LinearSuper``, model.py 308, 364): its inputs cut to s.

Neurons: spikingjelly's ``MultiStepLIFNode(tau=2.0, detach_reset=True)`` everywhere, i.e.
``decay_input=True`` (h = v + (x - v) / tau), threshold 1, hard reset to 0; the attention LIF has
threshold 0.5 (model.py 75). ``Block.set_sample_config`` (model.py 180-187) sets block j's tau_j
on all seven of its LIFs but the searched threshold th_j on ``mlp.fc1_lif`` only; the SPS LIFs
keep tau 2, threshold 1. ``SSA.set_sample_config`` stores the candidate's head count but the
forward (model.py 122-136) splits heads with ``self.num_heads``, the supernet's: every block
runs with the supernet's head count, whatever the tuple says (``supernet_heads``;
``per_block_heads=True`` gives the tuple's instead).

Not reproduced: ``BNSuper.forward(x, training=True)`` (BN_super.py 38-40) is never called with
``training=False``, so the official forward normalises with the *batch's* statistics even in
``model.eval()`` (and updates the running ones). snncc's BNs use the running statistics, which
is what a per-sample inference (and every back-end) can compute.

:func:`adapt_state_dict` turns an official (supernet) state_dict into the sub-net's: it renames
the ``.bn.`` keys, slices exactly what ``set_sample_config`` slices, drops the blocks past the
candidate's depth, and rebuilds the supernet-width modules (stem stages 0-2, LayerNorms) at
the checkpoint's widths when they differ from the model's; it returns one note per kind.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .neurons import LIF, LIFSpec
from .spikformer import Spikformer

__all__ = ["Candidate", "auto_spikformer", "adapt_state_dict", "AUTO_SPIKFORMER_CANDIDATES",
           "AUTO_SPIKFORMER_SUPERNETS", "AUTO_SPIKFORMER_NOTES", "PAPER_TABLE4_PARAMS_M"]


@dataclass(frozen=True)
class Candidate:
    """A decoded candidate tuple (paper 000, Table 3; ``decode_cand_tuple`` in search.py)::

        (depth d, MLP ratio x d, heads x d, threshold x d, tau x d, time-step, embed dim)"""

    depth: int
    mlp_ratios: tuple[float, ...]
    num_heads: tuple[int, ...]
    thresholds: tuple[float, ...]
    taus: tuple[float, ...]
    T: int
    embed_dim: int

    @classmethod
    def parse(cls, candidate: Sequence) -> Candidate:
        d = int(candidate[0])
        if d < 1 or len(candidate) != 4 * d + 3:
            raise ValueError(f"candidate of depth {d} needs {4 * d + 3} values, "
                             f"got {len(candidate)}")
        part = lambda i: tuple(candidate[1 + i * d:1 + (i + 1) * d])  # noqa: E731
        return cls(d, tuple(float(r) for r in part(0)), tuple(int(h) for h in part(1)),
                   tuple(float(t) for t in part(2)), tuple(float(t) for t in part(3)),
                   int(candidate[-2]), int(candidate[-1]))

    def hidden(self, j: int) -> int:
        """Block j's MLP width, ``int(s * ratio_j)`` as model.py 166."""
        return int(self.embed_dim * self.mlp_ratios[j])


#: Auto-Spikformer's selected sub-nets (Table 3 / Table 4: S_Ts1, S_Ts2, S_Tl1, S_Tl2, S_Tl3).
AUTO_SPIKFORMER_CANDIDATES = {
    "ts1": (2, 3.8, 3.6, 12, 12, 1.4, 2.0, 5, 2, 4, 348),
    "ts2": (2, 3.6, 3.6, 6, 12, 1.8, 2.0, 5, 2, 4, 348),
    "tl1": (2, 3.8, 3.2, 6, 12, 0.8, 1.2, 3, 1.5, 4, 432),
    "tl2": (2, 4.2, 4.2, 12, 12, 0.8, 1.2, 3, 1.5, 4, 480),
    "tl3": (3, 3.2, 3.6, 3.2, 6, 12, 6, 1.4, 1.8, 0.8, 3, 5, 5, 4, 480),
}

#: The supernets the sub-nets are cut from: the largest embed dim of each search space
#: (Table 1: S_Ts (336, 384, 12), S_Tl (336, 480, 48)) and the shipped ``num_heads: 12``
#: (cifar100.yml). Only S_Ts's supernet is in the repository; S_Tl's width 480 is the one that
#: gives Table 4's parameter counts (384 would give 6.77M / 8.86M for S_Tl1 / S_Tl2).
AUTO_SPIKFORMER_SUPERNETS = {"ts": dict(supernet_dim=384, supernet_heads=12),
                             "tl": dict(supernet_dim=480, supernet_heads=12)}

#: Paper 000, Table 4 (parameters in millions).
PAPER_TABLE4_PARAMS_M = {"ts1": 4.69, "ts2": 4.64, "tl1": 7.09, "tl2": 9.20, "tl3": 8.46}

#: Where the paper's tables and the official code disagree about an entry (for the zoo).
AUTO_SPIKFORMER_NOTES = {
    "ts2": "the official forward runs both blocks with the supernet's 12 heads, not the "
           "tuple's (6, 12)",
    "tl1": "the official forward runs both blocks with the supernet's 12 heads, not the "
           "tuple's (6, 12)",
    "tl3": "the official forward runs all blocks with the supernet's 12 heads, not the "
           "tuple's (6, 12, 6); Table 4's 8.46M is not this three-block tuple (10.86M) but "
           "its first two blocks (8.45M)",
}


def description(key: str) -> str:
    """The zoo description of entry ``auto-spikformer-<key>``."""
    cand = AUTO_SPIKFORMER_CANDIDATES[key]
    sup = AUTO_SPIKFORMER_SUPERNETS[key[:2]]
    text = (f"Auto-Spikformer S_T{key[1:]} {cand} (paper 000, Table 3; "
            f"{PAPER_TABLE4_PARAMS_M[key]:.2f}M in Table 4), cut from a {sup['supernet_dim']}-wide supernet with "
            f"{sup['supernet_heads']} heads as set_sample_config does (CheKaiWei/Auto-spikformer "
            "model.py); spikingjelly LIFs (decay_input), th_j on mlp.fc1_lif only")
    if key in AUTO_SPIKFORMER_NOTES:
        text += "; " + AUTO_SPIKFORMER_NOTES[key]
    return text


def auto_spikformer(candidate: Sequence, num_classes: int = 10, img_size: int = 32,
                    in_channels: int = 3, patch_size: int = 4, *,
                    supernet_dim: int | None = None, supernet_heads: int | None = None,
                    per_block_heads: bool = False, decay_input: bool = True,
                    **overrides) -> Spikformer:
    """The Spikformer (CIFAR variant) that the official code runs for ``candidate`` (see the
    module docstring): embed dim s, block j with MLP ratio_j, tau_j on all its LIFs and th_j on
    ``mlp.fc1_lif``; stem stages 0-2 and the LayerNorms at ``supernet_dim`` (default s: a
    sub-net without a wider supernet); every block with ``supernet_heads`` heads (default, or
    with ``per_block_heads``: the tuple's per-block heads). ``overrides`` go to
    :class:`Spikformer` (e.g. ``T``, ``num_heads``)."""
    c = Candidate.parse(candidate)
    s = c.embed_dim
    if per_block_heads or supernet_heads is None:
        heads = list(c.num_heads)
    else:
        heads = [int(supernet_heads)] * c.depth
    kwargs = dict(variant="cifar", img_size_h=img_size, img_size_w=img_size, patch_size=patch_size,
                  in_channels=in_channels, num_classes=num_classes, embed_dims=s,
                  num_heads=heads, mlp_ratios=list(c.mlp_ratios), depths=c.depth, T=c.T,
                  neurons=[LIFSpec(tau, 1.0, decay_input) for tau in c.taus])
    model = Spikformer(**{**kwargs, **overrides})
    for blk, th, tau in zip(model.block, c.thresholds, c.taus):
        blk.mlp.fc1_lif = LIF(tau, th, 0.0, decay_input)  # model.py 180: fc1_lif only
    w = int(supernet_dim) if supernet_dim is not None else s
    if w < s:
        raise ValueError(f"supernet_dim {w} is smaller than the candidate's embed dim {s}")
    if w != s:
        _set_stem_widths(model, (w // 8, w // 4, w // 2))
        _set_norm_width(model, w)
    return model


# --- supernet-width modules -------------------------------------------------------------

def _like(model: nn.Module, module: nn.Module) -> nn.Module:
    p = next(model.parameters())
    return module.to(device=p.device, dtype=p.dtype)


def _set_stem_widths(model: Spikformer, widths: tuple[int, int, int]) -> None:
    """Stem stages 0-2 at ``widths`` (the supernet's D/8, D/4, D/2) and ``proj_conv3`` from the
    last of them to the sub-net's s (model.py 210-223, 236)."""
    sps = model.patch_embed
    chans = [sps.proj_conv.in_channels, *widths]
    for i, name in enumerate(("", "1", "2")):
        setattr(sps, f"proj_conv{name}",
                _like(model, nn.Conv2d(chans[i], chans[i + 1], 3, 1, 1, bias=False)))
        setattr(sps, f"proj_bn{name}", _like(model, nn.BatchNorm2d(chans[i + 1])))
    s = sps.proj_conv3.out_channels
    sps.proj_conv3 = _like(model, nn.Conv2d(widths[2], s, 3, 1, 1, bias=False))


def _set_norm_width(model: Spikformer, width: int) -> None:
    """The blocks' unused LayerNorms at the supernet's width (model.py 146, 150)."""
    for blk in model.block:
        if hasattr(blk, "norm1"):
            blk.norm1 = _like(model, nn.LayerNorm(width))
            blk.norm2 = _like(model, nn.LayerNorm(width))


# --- loading a supernet state_dict --------------------------------------------------------

_BN_SUPER = re.compile(r"^(.*)\.bn\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
_BLOCK = re.compile(r"^block\.(\d+)\.")
#: Keys set_sample_config slices and the dims it slices (all slices are leading ranges).
_SLICED = [
    (re.compile(r"^patch_embed\.proj_conv3\.weight$"), (0,)),                     # model.py 236
    (re.compile(r"^patch_embed\.rpe_conv\.weight$"), (0, 1)),                     # model.py 237
    (re.compile(r"^patch_embed\.(proj_bn3|rpe_bn)\.(weight|bias|running_\w+)$"), (0,)),
    (re.compile(r"^block\.\d+\.(attn\.\w+|mlp\.fc[12])_linear\.weight$"), (0, 1)),  # 101-104
    (re.compile(r"^block\.\d+\.(attn\.\w+|mlp\.fc[12])_linear\.bias$"), (0,)),
    (re.compile(r"^block\.\d+\.(attn\.\w+|mlp\.fc[12])_bn\.(weight|bias|running_\w+)$"), (0,)),
    (re.compile(r"^head\.weight$"), (1,)),                                        # model.py 364
]
_LISTED = 3


def adapt_state_dict(state: Mapping[str, torch.Tensor], model: Spikformer
                     ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """An official Auto-Spikformer (supernet) state_dict as ``model``'s: ``(state, notes)``.

    Renames ``<bn>.bn.<param>`` to ``<bn>.<param>``, drops the blocks past the model's depth,
    rebuilds ``model``'s supernet-width modules (stem stages 0-2, LayerNorms) in place at the
    checkpoint's widths if they differ, and cuts the tensors ``set_sample_config`` cuts to the
    model's sizes (only where the checkpoint's are at least as large). A state_dict that already
    fits is returned unchanged with no notes; what still does not fit is left for the strict
    key/shape check to report."""
    expected = model.state_dict()
    out = dict(state)
    notes: list[str] = []

    renamed = 0
    for key in list(out):
        m = _BN_SUPER.match(key)
        if m and key not in expected and f"{m[1]}.{m[2]}" in expected and \
                f"{m[1]}.{m[2]}" not in out:
            out[f"{m[1]}.{m[2]}"] = out.pop(key)
            renamed += 1
    if renamed:
        notes.append(f"renamed {renamed} supernet BN keys '<layer>.bn.<param>' to "
                     "'<layer>.<param>' (the official BNSuper wraps a BatchNorm as .bn)")

    depth = len(model.block)
    extra = sorted({int(m[1]) for k in out if (m := _BLOCK.match(k)) and int(m[1]) >= depth})
    if extra:
        dropped = [k for k in out if (m := _BLOCK.match(k)) and int(m[1]) >= depth]
        for k in dropped:
            del out[k]
        notes.append(f"dropped {len(dropped)} keys of supernet block(s) "
                     f"{', '.join(map(str, extra))}: the candidate has depth {depth} and the "
                     "official forward makes the blocks past it identities")

    notes += _match_supernet_widths(out, model)
    expected = model.state_dict()

    sliced = []
    for key, want in expected.items():
        have = out.get(key)
        if have is None or tuple(have.shape) == tuple(want.shape) or have.dim() != want.dim():
            continue
        dims = next((d for pat, d in _SLICED if pat.match(key)), None)
        if dims is None:
            continue
        ok = all(h >= w if i in dims else h == w
                 for i, (h, w) in enumerate(zip(have.shape, want.shape)))
        if not ok:
            continue
        out[key] = have[tuple(slice(0, w) for w in want.shape)].contiguous()
        sliced.append(f"{key} {tuple(have.shape)} -> {tuple(want.shape)}")
    if sliced:
        # the most telling examples first: the MLP widths differ per block
        sliced.sort(key=lambda t: (".mlp.fc1_linear.weight" not in t, ".weight " not in t))
        more = f", and {len(sliced) - _LISTED} more" if len(sliced) > _LISTED else ""
        notes.append(f"sliced {len(sliced)} supernet tensors to the candidate as the official "
                     f"set_sample_config does: {', '.join(sliced[:_LISTED])}{more}")
    return out, notes


def _match_supernet_widths(state: dict, model: Spikformer) -> list[str]:
    """Rebuild the stem stages 0-2 and the LayerNorms at the checkpoint's (supernet) widths."""
    notes = []
    sps = model.patch_embed
    shapes = [state.get(f"patch_embed.proj_conv{n}.weight") for n in ("", "1", "2", "3")]
    if all(t is not None and t.dim() == 4 for t in shapes):
        widths = tuple(int(t.shape[0]) for t in shapes[:3])
        chained = (int(shapes[1].shape[1]), int(shapes[2].shape[1]), int(shapes[3].shape[1])) \
            == widths and int(shapes[0].shape[1]) == sps.proj_conv.in_channels
        have = (sps.proj_conv.out_channels, sps.proj_conv1.out_channels,
                sps.proj_conv2.out_channels)
        if chained and widths != have:
            _set_stem_widths(model, widths)
            notes.append(f"built the stem's first three stages at the checkpoint's supernet "
                         f"widths {'/'.join(map(str, widths))} (the model had "
                         f"{'/'.join(map(str, have))}); the official sub-net does not cut them")
    norm = state.get("block.0.norm1.weight")
    if norm is not None and norm.dim() == 1 and hasattr(model.block[0], "norm1") and \
            norm.shape[0] != model.block[0].norm1.normalized_shape[0]:
        old = model.block[0].norm1.normalized_shape[0]
        _set_norm_width(model, int(norm.shape[0]))
        notes.append(f"built the blocks' (unused) LayerNorms at the checkpoint's supernet width "
                     f"{norm.shape[0]} (the model had {old})")
    return notes
