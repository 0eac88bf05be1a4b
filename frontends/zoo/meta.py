"""Meta-SpikeFormer / Spike-Driven Transformer V2 (Yao et al., ICLR 2024; paper 001; github
BICLab/Spike-Driven-Transformer-V2, ``classification/models.py``).

Macro structure (paper Fig. 2): two stages of Conv-based SNN blocks (widths C0/2, C0 and C1)
and two stages of Transformer-based SNN blocks (6 blocks at C2, 2 at C3), with stage widths
[64, 128, 256, 360] / [96, 192, 384, 480] / [128, 256, 512, 640] for the 15.1M / 31.3M / 55.4M
models (C = 32 / 48 / 64, Table 1). All shortcuts are membrane shortcuts: every block adds BN
outputs and starts with a LIF.

Conv-based block (eqs. 7-10)::

    U'  = U + SepConv(U),         SepConv(U) = Conv_pw2(Conv_dw7x7(SN(Conv_pw1(SN(U)))))
    U'' = U' + ChannelConv(U'),   ChannelConv(U') = Conv3x3(SN(Conv3x3(SN(U'))))

(SepConv expands the channels x2, ChannelConv x4; each Conv is followed by a BN).

Transformer-based block (eqs. 11-14)::

    Q_S = SN(RepConv_1(SN(U))),  K_S = SN(RepConv_2(SN(U))),  V_S = SN(RepConv_3(SN(U)))
    U'  = U + RepConv_4(SDSA(Q_S, K_S, V_S))
    U'' = U' + BN(Conv1x1(SN(BN(Conv1x1(SN(U'))))))

SDSA operators (Fig. 3, eq. 15), chosen with ``sdsa``:

- 3 (default, the official code): ``SN_0.5((Q_S (K_S^T V_S)) * 0.125)``, i.e. threshold 4 on the
  integer counts, per head.
- 4: as 3 with the scale a learnable parameter ``attn.scale`` (initialised to 0.125), i.e. a
  learnable threshold ``0.5 / scale`` on the counts.
- 1: the Spike-Driven Transformer operator ``Q_S (x) SN_0.5(SUM_tokens(K_S (x) V_S))``.
- 2: ``Q_S (x) SN_0.5(SUM_tokens(K_S))``: no value branch (``v_conv``/``v_lif`` are absent). The
  paper's appendix defining SDSA-2 is not available to us; this form is reconstructed from its
  ablation (Table 5: SDSA-2 has 28.6M parameters vs 31.3M, exactly the RepConv_3 + BN weights of
  the eight Transformer blocks) and from SDSA-1/2 being Hadamard-only.

RepConv (``RepConv`` + ``BNAndPadLayer``): ``Conv1x1 -> BN -> pad 1 pixel with the BN's value of
a zero input -> depthwise Conv3x3 (no padding) -> Conv1x1 -> BN``, which a re-parameterisation
pass can merge into one 3x3 conv.

The head (``head_lif``): the official forward at its current head (``classification/models.py``
since commit d95ad13, March 2024) is spiking, ``head(lif(x)).mean(0)`` on the time-step features
averaged over tokens, with ``self.lif = MultiStepLIFNode(tau=2.0, detach_reset=True)`` (threshold
1, hard reset to 0, ``>=``): ``head_lif=True``, the default. Before that commit the forward was
``head(x).mean(0)`` (non-spiking; ``self.lif`` fed only the distillation head):
``head_lif=False``. With ``kd=True`` (the official T = 4 fine-tuning runs with ``--kd``, so its
checkpoints carry ``head_kd``) the output is the official evaluation's
``(head(lif(x)).mean(0) + head_kd(lif(x)).mean(0)) / 2`` (``head(x)`` with ``head_lif=False``).

Shape-free hyper-parameters (none is in a checkpoint): ``num_heads`` (8 in every official
``metaspikformer_*``), ``T``, the LIFs' ``tau`` (2) and ``v_threshold`` (1), the SDSA neuron's
``attn_v_threshold`` (0.5) and ``scale`` (0.125).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .common import merge_heads, repeat_static, split_heads, step_wise
from .neurons import LIF, LIFSpec


def _lif(neuron: LIFSpec, v_threshold: float | None = None) -> LIF:
    """A LIF of ``neuron`` (tau, threshold, hard reset to 0), optionally with its own threshold."""
    return LIF(neuron.tau, neuron.v_threshold if v_threshold is None else v_threshold, 0.0,
               neuron.decay_input)


class BNAndPadLayer(nn.Module):
    """``BatchNorm2d`` then ``pad_pixels`` of padding whose per-channel value is what the BN
    gives for a zero input (``bias - running_mean * weight / sqrt(running_var + eps)``), so that
    the following unpadded conv sees the BN of a zero-padded input.

    The official code writes the border with in-place slice assignment; here the border is
    added as ``mask * pad_values`` on a zero-padded output (bit-identical, and fx-traceable).
    """

    def __init__(self, pad_pixels: int, num_features: int, eps: float = 1e-5,
                 momentum: float = 0.1):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps, momentum)
        self.pad_pixels = pad_pixels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(x)
        if self.pad_pixels == 0:
            return out
        pad = [self.pad_pixels] * 4
        pad_values = (self.bn.bias.detach() - self.bn.running_mean * self.bn.weight.detach()
                      / torch.sqrt(self.bn.running_var + self.bn.eps))
        border = 1.0 - F.pad(torch.ones_like(out[:, :1]), pad)
        return F.pad(out, pad) + border * pad_values.view(1, -1, 1, 1)


class RepConv(nn.Module):
    """``body = Sequential(Conv1x1, BNAndPadLayer(1), Sequential(DWConv3x3, Conv1x1, BN))``."""

    def __init__(self, in_channel: int, out_channel: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channel, in_channel, 1, 1, 0, bias=False),
            BNAndPadLayer(pad_pixels=1, num_features=in_channel),
            nn.Sequential(
                nn.Conv2d(in_channel, in_channel, 3, 1, 0, groups=in_channel, bias=False),
                nn.Conv2d(in_channel, out_channel, 1, 1, 0, bias=False),
                nn.BatchNorm2d(out_channel)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class SepConv(nn.Module):
    """Inverted separable conv (MobileNetV2): ``pwconv2(dwconv7x7(SN(bn1(pwconv1(SN(x))))))``
    followed by ``bn2``; expansion 2, no activation between the depthwise and pointwise conv."""

    def __init__(self, dim: int, expansion_ratio: int = 2, kernel_size: int = 7, padding: int = 3,
                 neuron: LIFSpec = LIFSpec()):
        super().__init__()
        med = int(expansion_ratio * dim)
        self.lif1 = _lif(neuron)
        self.pwconv1 = nn.Conv2d(dim, med, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(med)
        self.lif2 = _lif(neuron)
        self.dwconv = nn.Conv2d(med, med, kernel_size, padding=padding, groups=med, bias=False)
        self.pwconv2 = nn.Conv2d(med, dim, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = step_wise(self.lif1(x), self.pwconv1, self.bn1)
        return step_wise(self.lif2(x), self.dwconv, self.pwconv2, self.bn2)


class MS_ConvBlock(nn.Module):
    """Conv-based SNN block (eqs. 7-10): ``x + SepConv(x)``, then ``+ ChannelConv`` (3x3 convs,
    expansion ``mlp_ratio``)."""

    def __init__(self, dim: int, mlp_ratio: int = 4, neuron: LIFSpec = LIFSpec()):
        super().__init__()
        self.Conv = SepConv(dim, neuron=neuron)
        self.lif1 = _lif(neuron)
        self.conv1 = nn.Conv2d(dim, dim * mlp_ratio, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(dim * mlp_ratio)
        self.lif2 = _lif(neuron)
        self.conv2 = nn.Conv2d(dim * mlp_ratio, dim, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv(x) + x
        x_feat = x
        x = step_wise(self.lif1(x), self.conv1, self.bn1)
        x = step_wise(self.lif2(x), self.conv2, self.bn2)
        return x_feat + x


class MS_MLP(nn.Module):
    """Channel MLP (eq. 14) over the flattened tokens: ``BN1d(Conv1d(SN(BN1d(Conv1d(SN(x))))))``."""

    def __init__(self, in_features: int, hidden_features: int, neuron: LIFSpec = LIFSpec()):
        super().__init__()
        self.fc1_conv = nn.Conv1d(in_features, hidden_features, 1, 1)
        self.fc1_bn = nn.BatchNorm1d(hidden_features)
        self.fc1_lif = _lif(neuron)
        self.fc2_conv = nn.Conv1d(hidden_features, in_features, 1, 1)
        self.fc2_bn = nn.BatchNorm1d(in_features)
        self.fc2_lif = _lif(neuron)
        self.c_hidden = hidden_features
        self.c_output = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = step_wise(self.fc1_lif(x.flatten(3)), self.fc1_conv, self.fc1_bn)
        x = step_wise(self.fc2_lif(x), self.fc2_conv, self.fc2_bn)
        return x.reshape(shape)


SDSA_VARIANTS = (1, 2, 3, 4)


class MS_Attention_RepConv_qkv_id(nn.Module):
    """Transformer-block token mixer (eqs. 11-12 without the shortcut) with SDSA-``sdsa``;
    ``attn_v_threshold`` is the SDSA neuron's threshold (``attn_lif``), ``scale`` the factor on
    ``Q (K^T V)`` (SDSA-3; SDSA-4's learnable scale starts there)."""

    def __init__(self, dim: int, num_heads: int = 8, sdsa: int = 3, neuron: LIFSpec = LIFSpec(),
                 attn_v_threshold: float = 0.5, scale: float = 0.125):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} should be divided by num_heads {num_heads}.")
        if sdsa not in SDSA_VARIANTS:
            raise ValueError(f"sdsa must be one of {SDSA_VARIANTS}, got {sdsa!r}")
        self.dim, self.num_heads, self.sdsa = dim, num_heads, sdsa
        self.branches = ("q", "k") if sdsa == 2 else ("q", "k", "v")
        self.head_lif = _lif(neuron)
        for name in self.branches:
            setattr(self, f"{name}_conv", nn.Sequential(RepConv(dim, dim), nn.BatchNorm2d(dim)))
        for name in self.branches:
            setattr(self, f"{name}_lif", _lif(neuron))
        self.attn_lif = _lif(neuron, attn_v_threshold)
        # SDSA-4: a learnable scale, i.e. a learnable threshold 0.5 / scale on the counts
        self.scale = nn.Parameter(torch.tensor(float(scale))) if sdsa == 4 else scale
        self.proj_conv = nn.Sequential(RepConv(dim, dim), nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, C, H, W = x.shape
        x = self.head_lif(x)
        heads = {}
        for n in self.branches:
            s = getattr(self, f"{n}_lif")(step_wise(x, getattr(self, f"{n}_conv")))
            heads[n] = split_heads(s.flatten(3), self.num_heads, channels_last=False)
        q, k = heads["q"], heads["k"]
        if self.sdsa in (3, 4):
            x = (q @ (k.transpose(-2, -1) @ heads["v"])) * self.scale
            x = self.attn_lif(merge_heads(x, channels_last=False))
        else:
            kv = k.mul(heads["v"]) if self.sdsa == 1 else k
            x = merge_heads(q.mul(self.attn_lif(kv.sum(dim=-2, keepdim=True))), channels_last=False)
        return step_wise(x.reshape(T, B, C, H, W), self.proj_conv)


class MS_Block(nn.Module):
    """Transformer-based SNN block: ``x + attn(x)``, then ``+ mlp``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, sdsa: int = 3,
                 neuron: LIFSpec = LIFSpec(), attn_v_threshold: float = 0.5, scale: float = 0.125):
        super().__init__()
        self.attn = MS_Attention_RepConv_qkv_id(dim, num_heads, sdsa, neuron, attn_v_threshold,
                                                scale)
        self.mlp = MS_MLP(dim, int(dim * mlp_ratio), neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class MS_DownSampling(nn.Module):
    """``BN(Conv(SN(x)))`` (no SN before the first, analog-input layer); the conv has a bias."""

    def __init__(self, in_channels: int, embed_dims: int, kernel_size: int = 3, stride: int = 2,
                 padding: int = 1, first_layer: bool = True, neuron: LIFSpec = LIFSpec()):
        super().__init__()
        self.encode_conv = nn.Conv2d(in_channels, embed_dims, kernel_size, stride, padding)
        self.encode_bn = nn.BatchNorm2d(embed_dims)
        self.first_layer = first_layer
        if not first_layer:
            self.encode_lif = _lif(neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.first_layer:
            x = self.encode_lif(x)
        return step_wise(x, self.encode_conv, self.encode_bn)


class Spiking_vit_MetaFormer(nn.Module):
    """Meta-SpikeFormer (module docstring). ``embed_dim`` = the four stage widths; the official
    model has 1+1+2 Conv-based and 6+2 Transformer-based blocks regardless of ``depths``.

    ``head_lif``: the spiking head ``head(lif(x))`` of the current official code (default) or
    the earlier ``head(x)`` (``False``). ``tau`` and ``v_threshold`` are every LIF's (spikingjelly
    ``MultiStepLIFNode(tau=2.0)``: threshold 1, hard reset to 0), ``attn_v_threshold`` and
    ``scale`` the SDSA neuron's threshold and scale."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1000,
                 embed_dim: Sequence[int] = (96, 192, 384, 480), num_heads: int = 8,
                 mlp_ratios: int = 4, T: int = 4, sdsa: int = 3,
                 stage_blocks: Sequence[int] = (6, 2), kd: bool = False, head_lif: bool = True,
                 tau: float = 2.0, v_threshold: float = 1.0, attn_v_threshold: float = 0.5,
                 scale: float = 0.125):
        super().__init__()
        c0, c1, c2, c3 = embed_dim
        self.T, self.num_classes, self.kd, self.head_lif = T, num_classes, kd, head_lif
        n = LIFSpec(tau, v_threshold)
        self.downsample1_1 = MS_DownSampling(in_channels, c0 // 2, 7, 2, 3, first_layer=True)
        self.ConvBlock1_1 = nn.ModuleList([MS_ConvBlock(c0 // 2, mlp_ratios, n)])
        self.downsample1_2 = MS_DownSampling(c0 // 2, c0, 3, 2, 1, first_layer=False, neuron=n)
        self.ConvBlock1_2 = nn.ModuleList([MS_ConvBlock(c0, mlp_ratios, n)])
        self.downsample2 = MS_DownSampling(c0, c1, 3, 2, 1, first_layer=False, neuron=n)
        self.ConvBlock2_1 = nn.ModuleList([MS_ConvBlock(c1, mlp_ratios, n)])
        self.ConvBlock2_2 = nn.ModuleList([MS_ConvBlock(c1, mlp_ratios, n)])
        self.downsample3 = MS_DownSampling(c1, c2, 3, 2, 1, first_layer=False, neuron=n)
        self.block3 = nn.ModuleList(
            MS_Block(c2, num_heads, mlp_ratios, sdsa, n, attn_v_threshold, scale)
            for _ in range(stage_blocks[0]))
        self.downsample4 = MS_DownSampling(c2, c3, 3, 1, 1, first_layer=False, neuron=n)
        self.block4 = nn.ModuleList(
            MS_Block(c3, num_heads, mlp_ratios, sdsa, n, attn_v_threshold, scale)
            for _ in range(stage_blocks[1]))
        self.lif = _lif(n)  # official: MultiStepLIFNode(tau=2.0, detach_reset=True)
        self.head = nn.Linear(c3, num_classes)
        if kd:
            self.head_kd = nn.Linear(c3, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        stages = (self.downsample1_1, self.ConvBlock1_1, self.downsample1_2, self.ConvBlock1_2,
                  self.downsample2, self.ConvBlock2_1, self.ConvBlock2_2, self.downsample3,
                  self.block3, self.downsample4, self.block4)
        for stage in stages:
            for blk in (stage if isinstance(stage, nn.ModuleList) else (stage,)):
                x = blk(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(repeat_static(x, self.T)).flatten(3).mean(3)
        x_lif = self.lif(x) if self.head_lif or self.kd else x
        out = self.head(x_lif if self.head_lif else x).mean(0)
        if self.kd:
            return (out + self.head_kd(x_lif).mean(0)) / 2
        return out
