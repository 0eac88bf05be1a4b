"""Spike-Driven Transformer (Yao et al., NeurIPS 2023; github BICLab/Spike-Driven-Transformer,
``module/sps.py``, ``module/ms_conv.py``, ``model/spikeformer.py``), ``spike_mode="lif"``.

Membrane shortcuts: every residual adds real-valued BN outputs (membrane potentials), and each
sub-block starts with its own LIF, so all convolutions and matmuls see spikes. Spike-driven
self-attention (SDSA, the paper's eq. for "SDSA-1")::

    Q, K, V = SN(BN(Conv1x1(SN(U))))                              (SN(U): shortcut_lif)
    SDSA(Q, K, V) = Q (x) SN_0.5(SUM_tokens(K (x) V))           ((x): Hadamard, per head)
    U' = U + BN(Conv1x1(SDSA(Q, K, V)))
    U'' = U' + BN(Conv1x1(SN(BN(Conv1x1(SN(U'))))))

``SN_0.5`` is ``talking_heads_lif`` (threshold 0.5). The ``talking_heads`` Conv1d exists in the
official module (and so in its checkpoints) but its forward never calls it; it is kept only so
that ``load_state_dict(strict=True)`` accepts official checkpoints. The head is spiking:
``head(SN(mean over tokens)).mean(0)``. In ``dvs_mode`` (CIFAR10-DVS configs) K, V and K (x) V
and the output are eroded by a 3x3 max-pool, as in the official ``Erode``.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import (add_sps_stages, merge_heads, repeat_static, split_heads, stage_suffix,
                     step_wise)
from .neurons import LIF, LIFSpec


def _lif(neuron: LIFSpec, v_threshold: float | None = None) -> LIF:
    """A LIF of ``neuron`` (tau, threshold, hard reset to 0), optionally with its own threshold."""
    return LIF(neuron.tau, neuron.v_threshold if v_threshold is None else v_threshold, 0.0,
               neuron.decay_input)


class Erode(nn.Module):
    """``MaxPool3d((1, 3, 3), 1, (0, 1, 1))`` applied to a 5-D tensor (the official DVS trick)."""

    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 1, 1), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)


class MS_SPS(nn.Module):
    """Spike patch splitting of the Spike-Driven Transformer: four ``Conv3x3-BN`` stages (widths
    D/8, D/4, D/2, D), stage i followed by ``MaxPool2d(3, 2, 1)`` where ``pooling_stat[i] == "1"``;
    LIFs after the first three stages; the fourth stage's BN output (pooled) is the membrane
    shortcut of the relative position embedding ``BN(Conv3x3(LIF(x))) + x``. Output
    ``[T, B, D, H', W']`` (membrane potentials)."""

    def __init__(self, in_channels: int = 3, embed_dims: int = 512, pooling_stat: str = "1111",
                 neuron: LIFSpec = LIFSpec()):
        super().__init__()
        if len(pooling_stat) != 4 or set(pooling_stat) - {"0", "1"}:
            raise ValueError(f"pooling_stat must be 4 characters of 0/1, got {pooling_stat!r}")
        self.pooling_stat = pooling_stat
        # every stage has a max-pool module (official keys); pooling_stat says which run
        add_sps_stages(self, in_channels, embed_dims, pooled=lambda i: True)
        for i in range(4):  # the stem's LIFs with the model's neuron parameters
            setattr(self, f"proj_lif{stage_suffix(i)}", _lif(neuron))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(4):
            s = stage_suffix(i)
            x = step_wise(x, getattr(self, f"proj_conv{s}"), getattr(self, f"proj_bn{s}"))
            if i < 3:
                x = getattr(self, f"proj_lif{s}")(x)
            if self.pooling_stat[i] == "1":
                x = step_wise(x, getattr(self, f"maxpool{s}"))
        x_feat = x
        x = self.proj_lif3(x)
        return step_wise(x, self.rpe_conv, self.rpe_bn) + x_feat


class MS_SSA_Conv(nn.Module):
    """SDSA block with its membrane shortcut (module docstring); ``[T, B, C, H, W]`` in and out."""

    def __init__(self, dim: int, num_heads: int = 8, dvs: bool = False,
                 neuron: LIFSpec = LIFSpec(), attn_v_threshold: float = 0.5):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} should be divided by num_heads {num_heads}.")
        self.dim, self.num_heads, self.dvs = dim, num_heads, dvs
        if dvs:
            self.pool = Erode()
        for name in ("q", "k", "v"):
            setattr(self, f"{name}_conv", nn.Conv2d(dim, dim, 1, 1, bias=False))
            setattr(self, f"{name}_bn", nn.BatchNorm2d(dim))
            setattr(self, f"{name}_lif", _lif(neuron))
        self.talking_heads = nn.Conv1d(num_heads, num_heads, 1, 1, bias=False)
        self.talking_heads_lif = _lif(neuron, attn_v_threshold)
        self.proj_conv = nn.Conv2d(dim, dim, 1, 1)
        self.proj_bn = nn.BatchNorm2d(dim)
        self.shortcut_lif = _lif(neuron)

    def _erode(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) if self.dvs else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        T, B, C, H, W = x.shape
        x = self.shortcut_lif(x)
        qkv = []
        for name in ("q", "k", "v"):
            s = getattr(self, f"{name}_lif")(
                step_wise(x, getattr(self, f"{name}_conv"), getattr(self, f"{name}_bn")))
            if name != "q":
                s = self._erode(s)
            qkv.append(split_heads(s.flatten(3), self.num_heads, channels_last=False))
        q, k, v = qkv
        kv = self._erode(k.mul(v)).sum(dim=-2, keepdim=True)
        kv = self.talking_heads_lif(kv)
        x = self._erode(q.mul(kv))
        x = merge_heads(x, channels_last=False).reshape(T, B, C, H, W)
        return step_wise(x, self.proj_conv, self.proj_bn) + identity


class MS_MLP_Conv(nn.Module):
    """``U + BN(Conv1x1(SN(BN(Conv1x1(SN(U))))))``; when the hidden width equals the input width
    the official code adds a second membrane shortcut after fc1 (``self.res``)."""

    def __init__(self, in_features: int, hidden_features: int, neuron: LIFSpec = LIFSpec()):
        super().__init__()
        self.res = in_features == hidden_features
        self.fc1_conv = nn.Conv2d(in_features, hidden_features, 1, 1)
        self.fc1_bn = nn.BatchNorm2d(hidden_features)
        self.fc1_lif = _lif(neuron)
        self.fc2_conv = nn.Conv2d(hidden_features, in_features, 1, 1)
        self.fc2_bn = nn.BatchNorm2d(in_features)
        self.fc2_lif = _lif(neuron)
        self.c_hidden = hidden_features
        self.c_output = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        x = step_wise(self.fc1_lif(x), self.fc1_conv, self.fc1_bn)
        if self.res:
            x = identity + x
            identity = x
        x = step_wise(self.fc2_lif(x), self.fc2_conv, self.fc2_bn)
        return x + identity


class MS_Block_Conv(nn.Module):
    """``mlp(attn(x))`` (each sub-block carries its own membrane shortcut)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, dvs: bool = False,
                 neuron: LIFSpec = LIFSpec(), attn_v_threshold: float = 0.5):
        super().__init__()
        self.attn = MS_SSA_Conv(dim, num_heads, dvs, neuron, attn_v_threshold)
        self.mlp = MS_MLP_Conv(dim, int(dim * mlp_ratio), neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.attn(x))


class SpikeDrivenTransformer(nn.Module):
    """MS_SPS, ``depths`` MS blocks, spiking head ``head(SN(x.flatten(3).mean(3))).mean(0)``.

    Static input ``[B, C, H, W]`` is repeated over ``T``; with ``dvs_mode`` the input is
    ``[B, T, C, H, W]`` and is transposed to ``[T, B, ...]`` (official: chosen by the input's rank).

    ``tau`` and ``v_threshold`` are every LIF's (official ``MultiStepLIFNode(tau=2.0)``:
    threshold 1, hard reset to 0), ``attn_v_threshold`` the SDSA neuron's (``talking_heads_lif``,
    0.5). The official ``self.scale = 0.125`` is never used by SDSA-1, so there is no scale.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, embed_dims: int = 512,
                 num_heads: int = 8, mlp_ratios: float = 4.0, depths: int = 8, T: int = 4,
                 pooling_stat: str = "1111", dvs_mode: bool = False, tau: float = 2.0,
                 v_threshold: float = 1.0, attn_v_threshold: float = 0.5):
        super().__init__()
        self.T, self.dvs, self.num_classes = T, dvs_mode, num_classes
        n = LIFSpec(tau, v_threshold)
        self.patch_embed = MS_SPS(in_channels, embed_dims, pooling_stat, n)
        self.block = nn.ModuleList(
            MS_Block_Conv(embed_dims, num_heads, mlp_ratios, dvs_mode, n, attn_v_threshold)
            for _ in range(depths))
        self.head_lif = _lif(n)
        self.head = nn.Linear(embed_dims, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(0, 1) if self.dvs else repeat_static(x, self.T)
        x = self.patch_embed(x)
        for blk in self.block:
            x = blk(x)
        x = self.head_lif(x.flatten(3).mean(3))
        return self.head(x).mean(0)
