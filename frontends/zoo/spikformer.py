"""Spikformer V1 (Zhou et al., ICLR 2023; github ZK-Zhou/spikformer), its Auto-Spikformer
sub-nets (Che et al.) and Spikformer V2 (Zhou et al. 2024, paper 002: no official code).

The official repository has one ``model.py`` per dataset; they differ in the layout of the
tokens and in the layer types, which this module expresses with ``layout``:

- ``"tokens"`` (``cifar10/model.py``): tokens ``[T, B, N, C]``; q/k/v/proj/MLP are ``nn.Linear``
  (with bias) followed by ``BatchNorm1d`` over the transposed tokens; ``attn = (q @ k^T) * s``,
  ``x = attn @ v``; SPS max-pools only after its 3rd and 4th conv.
- ``"image"`` (``imagenet/model.py``): feature maps ``[T, B, C, H, W]``; q/k/v are bias-free
  ``Conv1d`` over the flattened tokens, the MLP is ``Conv2d`` 1x1; ``x = q @ (k^T @ v) * s``;
  SPS max-pools after every conv.
- ``"channels"`` (``cifar10dvs/model.py``): ``[T, B, C, N]``; ``Conv1d`` everywhere;
  ``x = (q @ k^T @ v) * s`` with s = 0.25; input ``[B, T, C, H, W]``; the model also carries an
  (unused) ``pos_embed`` and final ``norm``.

Spiking self-attention (paper 002, eqs. 11-13)::

    Q = SN_Q(BN(X W_Q)),  K = SN_K(BN(X W_K)),  V = SN_V(BN(X W_V))
    SSA'(Q, K, V) = SN(Q K^T V * s)                    (SN with threshold 0.5)
    SSA(Q, K, V)  = SN(BN(Linear(SSA'(Q, K, V))))

and each encoder block is ``x = x + SSA(x); x = x + MLP(x)`` (spike + spike residuals), the
head a ``Linear`` on the spike rates averaged over tokens and time.

The V1 blocks carry ``norm1``/``norm2`` LayerNorms that the official forward never calls; they
are kept so that official checkpoints load with ``strict=True`` (and they are counted in the
papers' parameter numbers).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .common import (add_sps_stages, merge_heads, repeat_static, split_heads, stage_suffix,
                     step_wise, token_bn)
from .neurons import LIF, LIFSpec

LAYOUTS = ("tokens", "image", "channels")
ATTN_ORDERS = ("qk_v", "q_kv", "qkv")


class SPS(nn.Module):
    """Spiking Patch Splitting: four ``Conv3x3-BN-LIF[-MaxPool]`` stages (widths D/8, D/4, D/2,
    D) and a relative position embedding ``x + LIF(BN(Conv3x3(x)))``.

    ``pool_stages`` lists the stages followed by ``MaxPool2d(3, 2, 1)`` (``maxpool``,
    ``maxpool1``, ...): (2, 3) in the CIFAR code, (0, 1, 2, 3) for ImageNet and DVS. Input
    ``[T, B, C, H, W]``; output in ``layout`` (see the module docstring).
    """

    def __init__(self, in_channels: int = 3, embed_dims: int = 384,
                 pool_stages: Sequence[int] = (2, 3), layout: str = "tokens",
                 neuron: LIFSpec = LIFSpec()):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.layout = layout
        self.pool_stages = tuple(pool_stages)
        add_sps_stages(self, in_channels, embed_dims, pooled=lambda i: i in self.pool_stages)
        for i in range(4):  # the stem's LIFs with the model's neuron parameters
            setattr(self, f"proj_lif{stage_suffix(i)}", neuron.make())
        self.rpe_lif = neuron.make()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(4):
            s = stage_suffix(i)
            x = getattr(self, f"proj_lif{s}")(
                step_wise(x, getattr(self, f"proj_conv{s}"), getattr(self, f"proj_bn{s}")))
            if i in self.pool_stages:
                x = step_wise(x, getattr(self, f"maxpool{s}"))
        x = self.rpe_lif(step_wise(x, self.rpe_conv, self.rpe_bn)) + x
        if self.layout == "tokens":
            return x.flatten(-2).transpose(-1, -2)
        if self.layout == "channels":
            return x.flatten(-2)
        return x


class SCSBlock(nn.Module):
    """One SCS block (see :class:`SCS`)::

        x = LIF(BN(Conv2x2, stride 2 (x)))                  (downsampling, no max-pool)
        x = x + LIF(BN(Conv3x3(LIF(BN(Conv3x3(x))))))        (MLP-like pair, expansion ratio r)
    """

    def __init__(self, in_channels: int, channels: int, ratio: int = 4,
                 neuron: LIFSpec = LIFSpec()):
        super().__init__()
        self.down_conv = nn.Conv2d(in_channels, channels, 2, 2, bias=False)
        self.down_bn = nn.BatchNorm2d(channels)
        self.down_lif = neuron.make()
        self.conv1 = nn.Conv2d(channels, ratio * channels, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ratio * channels)
        self.lif1 = neuron.make()
        self.conv2 = nn.Conv2d(ratio * channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.lif2 = neuron.make()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down_lif(step_wise(x, self.down_conv, self.down_bn))
        y = self.lif1(step_wise(x, self.conv1, self.bn1))
        return x + self.lif2(step_wise(y, self.conv2, self.bn2))


class SCS(nn.Module):
    """Spiking Convolutional Stem of Spikformer V2 (paper 002, Sec. 4.1 and Fig. 5b): four
    :class:`SCSBlock` of widths D/8, D/4, D/2, D, each halving the resolution (patch size 16).

    The paper has no code, so the names are ours. Expansion ratio r = 4, bias-free convs and no
    position embedding give 29.11M / 51.55M parameters for V2-8-384 / V2-8-512 (Table II) to
    within 0.01%; the spike + spike shortcut around the conv pair follows the paper's "similar
    to the MLP Block" (it has no parameters, so the counts do not confirm it).
    """

    def __init__(self, in_channels: int = 3, embed_dims: int = 384, ratio: int = 4,
                 neuron: LIFSpec = LIFSpec()):
        super().__init__()
        widths = [in_channels, embed_dims // 8, embed_dims // 4, embed_dims // 2, embed_dims]
        self.blocks = nn.ModuleList(SCSBlock(widths[i], widths[i + 1], ratio, neuron)
                                    for i in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return x


def _fc(layout: str, c_in: int, c_out: int, bias: bool, conv2d: bool) -> nn.Module:
    """The official per-layout "linear" layer: Linear (tokens), Conv2d 1x1 (image-layout MLP,
    ``conv2d``), Conv1d 1x1 (otherwise)."""
    if layout == "tokens":
        return nn.Linear(c_in, c_out, bias=bias)
    if conv2d:
        return nn.Conv2d(c_in, c_out, 1, 1, bias=bias)
    return nn.Conv1d(c_in, c_out, 1, 1, bias=bias)


class SSA(nn.Module):
    """Spiking self-attention (eqs. 11-13 above). ``order`` is the official association:
    ``"qk_v"`` = ``((q @ k^T) * s) @ v`` (CIFAR), ``"q_kv"`` = ``(q @ (k^T @ v)) * s`` (ImageNet),
    ``"qkv"`` = ``((q @ k^T) @ v) * s`` (DVS). q/k/v are bias-free except in the tokens layout
    (the CIFAR code uses ``nn.Linear(dim, dim)``). The attention neuron's threshold is
    ``attn_v_threshold``, or half the block's (``None``: 0.5 in the official code)."""

    def __init__(self, dim: int, num_heads: int, layout: str = "tokens", scale: float = 0.125,
                 order: str = "qk_v", neuron: LIFSpec = LIFSpec(),
                 attn_v_threshold: float | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} should be divided by num_heads {num_heads}.")
        if order not in ATTN_ORDERS:
            raise ValueError(f"order must be one of {ATTN_ORDERS}, got {order!r}")
        self.dim, self.num_heads, self.layout = dim, num_heads, layout
        self.scale, self.order = scale, order
        self._fc_name = "linear" if layout == "tokens" else "conv"
        for name in ("q", "k", "v"):
            setattr(self, f"{name}_{self._fc_name}",
                    _fc(layout, dim, dim, bias=layout == "tokens", conv2d=False))
            setattr(self, f"{name}_bn", nn.BatchNorm1d(dim))
            setattr(self, f"{name}_lif", neuron.make())
        self.attn_lif = (neuron.make(0.5) if attn_v_threshold is None else
                         LIF(neuron.tau, attn_v_threshold, 0.0, neuron.decay_input))
        setattr(self, f"proj_{self._fc_name}", _fc(layout, dim, dim, bias=True, conv2d=False))
        self.proj_bn = nn.BatchNorm1d(dim)
        self.proj_lif = neuron.make()

    def _fc_bn(self, name: str, x: torch.Tensor) -> torch.Tensor:
        fc, bn = getattr(self, f"{name}_{self._fc_name}"), getattr(self, f"{name}_bn")
        return step_wise(x, fc, token_bn(bn) if self.layout == "tokens" else bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if self.layout == "image":
            x = x.flatten(3)
        tokens = self.layout == "tokens"
        q, k, v = (split_heads(getattr(self, f"{n}_lif")(self._fc_bn(n, x)), self.num_heads, tokens)
                   for n in ("q", "k", "v"))
        if self.order == "qk_v":
            x = ((q @ k.transpose(-2, -1)) * self.scale) @ v
        elif self.order == "q_kv":
            x = (q @ (k.transpose(-2, -1) @ v)) * self.scale
        else:
            x = ((q @ k.transpose(-2, -1)) @ v) * self.scale
        x = self.attn_lif(merge_heads(x, tokens))
        x = self.proj_lif(self._fc_bn("proj", x))
        return x.reshape(shape)


class MLP(nn.Module):
    """Spiking MLP: ``LIF(BN(fc2(LIF(BN(fc1(x))))))`` with the layout's fc (Linear / Conv2d 1x1 /
    Conv1d 1x1, all with bias)."""

    def __init__(self, in_features: int, hidden_features: int, layout: str = "tokens",
                 neuron: LIFSpec = LIFSpec()):
        super().__init__()
        self.layout = layout
        self._fc_name = "linear" if layout == "tokens" else "conv"
        image = layout == "image"
        widths = {"fc1": (in_features, hidden_features), "fc2": (hidden_features, in_features)}
        for name, (c_in, c_out) in widths.items():
            setattr(self, f"{name}_{self._fc_name}",
                    _fc(layout, c_in, c_out, bias=True, conv2d=image))
            setattr(self, f"{name}_bn", nn.BatchNorm2d(c_out) if image else nn.BatchNorm1d(c_out))
            setattr(self, f"{name}_lif", neuron.make())
        self.c_hidden = hidden_features
        self.c_output = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in ("fc1", "fc2"):
            fc, bn = getattr(self, f"{name}_{self._fc_name}"), getattr(self, f"{name}_bn")
            x = getattr(self, f"{name}_lif")(
                step_wise(x, fc, token_bn(bn) if self.layout == "tokens" else bn))
        return x


class Block(nn.Module):
    """Spikformer encoder block: ``x = x + SSA(x); x = x + MLP(x)``. ``norm1``/``norm2`` are the
    official code's unused LayerNorms (V1 only, ``norm_layers=True``)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, layout: str = "tokens",
                 scale: float = 0.125, order: str = "qk_v", neuron: LIFSpec = LIFSpec(),
                 norm_layers: bool = True, attn_v_threshold: float | None = None):
        super().__init__()
        if norm_layers:
            self.norm1 = nn.LayerNorm(dim)
        self.attn = SSA(dim, num_heads, layout, scale, order, neuron, attn_v_threshold)
        if norm_layers:
            self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, int(dim * mlp_ratio), layout, neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


def _per_block(value, depths: int, what: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * depths
    if len(values) != depths:
        raise ValueError(f"{what}: expected {depths} per-block values, got {len(values)}")
    return values


class Spikformer(nn.Module):
    """Spikformer: stem, ``depths`` encoder blocks, ``head(features.mean(0))``.

    ``variant`` selects the official file: ``"cifar"``, ``"imagenet"`` or ``"dvs"`` (V1, SPS stem)
    or ``"v2"`` (Spikformer V2: SCS stem and the ImageNet blocks without the unused
    LayerNorms). ``num_heads``, ``mlp_ratios`` and ``neurons`` (a :class:`LIFSpec`) may be given
    per block, which is how Auto-Spikformer sub-nets are built. Static variants take
    ``[B, C, H, W]`` and repeat it over ``T``; ``"dvs"`` takes ``[B, T, C, H, W]``.

    Neurons: ``tau`` and ``v_threshold`` are those of every LIF (the official
    ``MultiStepLIFNode(tau=2.0)``: threshold 1, hard reset to 0) except the blocks' when
    ``neurons`` gives them per block; ``attn_v_threshold`` is the attention LIF's threshold
    (official 0.5; ``None``: half the block's threshold); ``scale`` multiplies the attention
    product (``None``: the variant's official 0.125, or 0.25 for ``"dvs"``).
    """

    VARIANTS = {  # layout, SPS max-pool stages, attention order, scale
        "cifar": ("tokens", (2, 3), "qk_v", 0.125),
        "imagenet": ("image", (0, 1, 2, 3), "q_kv", 0.125),
        "dvs": ("channels", (0, 1, 2, 3), "qkv", 0.25),
        "v2": ("image", None, "q_kv", 0.125),
    }

    def __init__(self, variant: str = "cifar", img_size_h: int = 32, img_size_w: int = 32,
                 patch_size: int = 4, in_channels: int = 3, num_classes: int = 10,
                 embed_dims: int = 384, num_heads: int | Sequence[int] = 12,
                 mlp_ratios: float | Sequence[float] = 4.0, depths: int = 4, T: int = 4,
                 neurons: LIFSpec | Sequence[LIFSpec] | None = None, tau: float = 2.0,
                 v_threshold: float = 1.0, attn_v_threshold: float | None = None,
                 scale: float | None = None):
        super().__init__()
        if variant not in self.VARIANTS:
            raise ValueError(f"variant must be one of {sorted(self.VARIANTS)}, got {variant!r}")
        layout, pool_stages, order, variant_scale = self.VARIANTS[variant]
        scale = variant_scale if scale is None else scale
        stem_neuron = LIFSpec(tau, v_threshold)
        neurons = stem_neuron if neurons is None else neurons
        self.variant, self.layout, self.T, self.num_classes = variant, layout, T, num_classes
        if variant == "dvs":
            num_patches = (img_size_h // patch_size) * (img_size_w // patch_size)
            self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, embed_dims))
        if variant == "v2":
            self.patch_embed = SCS(in_channels, embed_dims, neuron=stem_neuron)
        else:
            self.patch_embed = SPS(in_channels, embed_dims, pool_stages, layout, stem_neuron)
        heads = _per_block(num_heads, depths, "num_heads")
        ratios = _per_block(mlp_ratios, depths, "mlp_ratios")
        specs = _per_block(neurons, depths, "neurons")
        self.block = nn.ModuleList(
            Block(embed_dims, heads[j], ratios[j], layout, scale, order, specs[j],
                  norm_layers=variant != "v2", attn_v_threshold=attn_v_threshold)
            for j in range(depths))
        if variant == "dvs":
            self.norm = nn.LayerNorm(embed_dims)
        self.head = nn.Linear(embed_dims, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(1, 0, 2, 3, 4) if self.variant == "dvs" else repeat_static(x, self.T)
        x = self.patch_embed(x)
        for blk in self.block:
            x = blk(x)
        if self.layout == "tokens":
            x = x.mean(2)
        elif self.layout == "image":
            x = x.flatten(3).mean(3)
        else:
            x = x.mean(3)
        return self.head(x.mean(0))
