"""Spike-Driven Transformer V3's classification network (Yao et al., "Scaling Spike-driven
Transformer with Efficient Spike Firing Approximation Training"), written from the official code
(BICLab/Spike-Driven-Transformer-V3 at 00fcd1f, ``SDT_V3/Classification/Model_Base/models.py``)
with the same operations in the same order: integer spikes ``MultiSpike`` (``round(clamp(x, 0,
4)) / 4`` through an autograd Function, T = 1), ``BNAndPadLayer`` padding by assignment,
``RepConv`` Q/K/V, the linear attention ``(Q K^T) V`` and the RepConv one ``Q (K^T V)`` on
counts, ``MS_MLP`` as 1-D convolutions. Sizes are parameters (the official presets are 224x224
with ``embed_dim`` [32, 64, 128, 192] and more); timm's ``DropPath`` is the identity in eval
mode and is left out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Quant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, i, min_value, max_value):
        ctx.min, ctx.max = min_value, max_value
        ctx.save_for_backward(i)
        return torch.round(torch.clamp(i, min=min_value, max=max_value))

    @staticmethod
    def backward(ctx, grad_output):
        grad_input = grad_output.clone()
        i, = ctx.saved_tensors
        grad_input[i < ctx.min] = 0
        grad_input[i > ctx.max] = 0
        return grad_input, None, None


class MultiSpike(nn.Module):
    def __init__(self, min_value=0, max_value=4, Norm=None):
        super().__init__()
        self.Norm = max_value if Norm is None else Norm
        self.min_value, self.max_value = min_value, max_value

    def forward(self, x):
        return Quant.apply(x, self.min_value, self.max_value) / self.Norm


class BNAndPadLayer(nn.Module):
    def __init__(self, pad_pixels, num_features):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features)
        self.pad_pixels = pad_pixels

    def forward(self, input):
        output = self.bn(input)
        if self.pad_pixels > 0:
            pad_values = (self.bn.bias.detach() - self.bn.running_mean * self.bn.weight.detach()
                          / torch.sqrt(self.bn.running_var + self.bn.eps))
            output = F.pad(output, [self.pad_pixels] * 4)
            pad_values = pad_values.view(1, -1, 1, 1)
            p = self.pad_pixels
            output[:, :, 0:p, :] = pad_values
            output[:, :, -p:, :] = pad_values
            output[:, :, :, 0:p] = pad_values
            output[:, :, :, -p:] = pad_values
        return output


class RepConv(nn.Module):
    def __init__(self, in_channel, out_channel):
        super().__init__()
        conv1x1 = nn.Conv2d(in_channel, in_channel, 1, 1, 0, bias=False)
        bn = BNAndPadLayer(pad_pixels=1, num_features=in_channel)
        conv3x3 = nn.Sequential(
            nn.Conv2d(in_channel, in_channel, 3, 1, 0, groups=in_channel, bias=False),
            nn.Conv2d(in_channel, out_channel, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channel))
        self.body = nn.Sequential(conv1x1, bn, conv3x3)

    def forward(self, x):
        return self.body(x)


class SepConv_Spike(nn.Module):
    def __init__(self, dim, expansion_ratio=2, kernel_size=7, padding=3):
        super().__init__()
        med = int(expansion_ratio * dim)
        self.spike1 = MultiSpike()
        self.pwconv1 = nn.Sequential(nn.Conv2d(dim, med, 1, bias=False), nn.BatchNorm2d(med))
        self.spike2 = MultiSpike()
        self.dwconv = nn.Sequential(
            nn.Conv2d(med, med, kernel_size, padding=padding, groups=med, bias=False),
            nn.BatchNorm2d(med))
        self.spike3 = MultiSpike()
        self.pwconv2 = nn.Sequential(nn.Conv2d(med, dim, 1, bias=False), nn.BatchNorm2d(dim))

    def forward(self, x):
        x = self.pwconv1(self.spike1(x))
        x = self.dwconv(self.spike2(x))
        return self.pwconv2(self.spike3(x))


class MS_ConvBlock_spike_SepConv(nn.Module):
    def __init__(self, dim, mlp_ratio=4):
        super().__init__()
        self.Conv = SepConv_Spike(dim=dim)
        self.mlp_ratio = mlp_ratio
        self.spike1 = MultiSpike()
        self.conv1 = nn.Conv2d(dim, dim * mlp_ratio, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(dim * mlp_ratio)
        self.spike2 = MultiSpike()
        self.conv2 = nn.Conv2d(dim * mlp_ratio, dim, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x):
        B, C, H, W = x.shape
        x = self.Conv(x) + x
        x_feat = x
        x = self.spike1(x)
        x = self.bn1(self.conv1(x)).reshape(B, self.mlp_ratio * C, H, W)
        x = self.spike2(x)
        x = self.bn2(self.conv2(x)).reshape(B, C, H, W)
        return x_feat + x


class MS_MLP(nn.Module):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1_conv = nn.Conv1d(in_features, hidden_features, 1)
        self.fc1_bn = nn.BatchNorm1d(hidden_features)
        self.fc1_spike = MultiSpike()
        self.fc2_conv = nn.Conv1d(hidden_features, in_features, 1)
        self.fc2_bn = nn.BatchNorm1d(in_features)
        self.fc2_spike = MultiSpike()
        self.c_hidden = hidden_features

    def forward(self, x):
        B, C, H, W = x.shape
        N = H * W
        x = self.fc1_spike(x.flatten(2))
        x = self.fc1_bn(self.fc1_conv(x)).reshape(B, self.c_hidden, N).contiguous()
        x = self.fc2_spike(x)
        return self.fc2_bn(self.fc2_conv(x)).reshape(B, C, H, W).contiguous()


def _heads(x, B, N, heads, C):
    return x.flatten(2).transpose(-1, -2).reshape(B, N, heads, C // heads) \
        .permute(0, 2, 1, 3).contiguous()


class MS_Attention_RepConv_qkv_id(nn.Module):
    """Q (K^T V) * scale on counts (``MS_Block``'s attention)."""

    def __init__(self, dim, num_heads=8):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.head_spike = MultiSpike()
        self.q_conv = nn.Sequential(RepConv(dim, dim), nn.BatchNorm2d(dim))
        self.k_conv = nn.Sequential(RepConv(dim, dim), nn.BatchNorm2d(dim))
        self.v_conv = nn.Sequential(RepConv(dim, dim), nn.BatchNorm2d(dim))
        self.q_spike, self.k_spike, self.v_spike = MultiSpike(), MultiSpike(), MultiSpike()
        self.attn_spike = MultiSpike()
        self.proj_conv = nn.Sequential(RepConv(dim, dim), nn.BatchNorm2d(dim))

    def forward(self, x):
        B, C, H, W = x.shape
        N = H * W
        x = self.head_spike(x)
        q, k, v = self.q_conv(x), self.k_conv(x), self.v_conv(x)
        q = _heads(self.q_spike(q), B, N, self.num_heads, C)
        k = _heads(self.k_spike(k), B, N, self.num_heads, C)
        v = _heads(self.v_spike(v), B, N, self.num_heads, C)
        x = k.transpose(-2, -1) @ v
        x = (q @ x) * self.scale
        x = x.transpose(2, 3).reshape(B, C, N).contiguous()
        x = self.attn_spike(x).reshape(B, C, H, W)
        return self.proj_conv(x).reshape(B, C, H, W)


class MS_Attention_linear(nn.Module):
    """(Q K^T) V * 2 scale on counts, V ``lamda_ratio`` times wider (``MS_Block_Spike_SepConv``'s
    attention)."""

    def __init__(self, dim, num_heads=8, lamda_ratio=4):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.lamda_ratio = lamda_ratio
        self.head_spike = MultiSpike()
        self.q_conv = nn.Sequential(nn.Conv2d(dim, dim, 1, 1, bias=False), nn.BatchNorm2d(dim))
        self.q_spike = MultiSpike()
        self.k_conv = nn.Sequential(nn.Conv2d(dim, dim, 1, 1, bias=False), nn.BatchNorm2d(dim))
        self.k_spike = MultiSpike()
        wide = int(dim * lamda_ratio)
        self.v_conv = nn.Sequential(nn.Conv2d(dim, wide, 1, 1, bias=False), nn.BatchNorm2d(wide))
        self.v_spike = MultiSpike()
        self.attn_spike = MultiSpike()
        self.proj_conv = nn.Sequential(nn.Conv2d(wide, dim, 1, 1, bias=False),
                                       nn.BatchNorm2d(dim))

    def forward(self, x):
        B, C, H, W = x.shape
        N = H * W
        C_v = int(C * self.lamda_ratio)
        x = self.head_spike(x)
        q, k, v = self.q_conv(x), self.k_conv(x), self.v_conv(x)
        q = _heads(self.q_spike(q), B, N, self.num_heads, C)
        k = _heads(self.k_spike(k), B, N, self.num_heads, C)
        v = _heads(self.v_spike(v), B, N, self.num_heads, C_v)
        x = q @ k.transpose(-2, -1)
        x = (x @ v) * (self.scale * 2)
        x = x.transpose(2, 3).reshape(B, C_v, N).contiguous()
        x = self.attn_spike(x).reshape(B, C_v, H, W)
        return self.proj_conv(x).reshape(B, C, H, W)


class MS_Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4):
        super().__init__()
        self.attn = MS_Attention_RepConv_qkv_id(dim, num_heads=num_heads)
        self.mlp = MS_MLP(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.mlp(x)


class MS_Block_Spike_SepConv(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4):
        super().__init__()
        self.conv = SepConv_Spike(dim=dim, kernel_size=3, padding=1)
        self.attn = MS_Attention_linear(dim, num_heads=num_heads, lamda_ratio=4)
        self.mlp = MS_MLP(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.conv(x)
        x = x + self.attn(x)
        return x + self.mlp(x)


class MS_DownSampling(nn.Module):
    def __init__(self, in_channels, embed_dims, kernel_size=3, stride=2, padding=1,
                 first_layer=True):
        super().__init__()
        self.encode_conv = nn.Conv2d(in_channels, embed_dims, kernel_size, stride, padding)
        self.encode_bn = nn.BatchNorm2d(embed_dims)
        if not first_layer:
            self.encode_spike = MultiSpike()

    def forward(self, x):
        if hasattr(self, "encode_spike"):
            x = self.encode_spike(x)
        return self.encode_bn(self.encode_conv(x))


class Spiking_vit_MetaFormer_Spike_SepConv(nn.Module):
    """The official network (``Efficient_Spiking_Transformer_*``: its stages with ``blocks3`` /
    ``blocks4`` transformer blocks, 6 and 2 in the presets); ``block=MS_Block`` takes the
    RepConv attention instead."""

    def __init__(self, in_channels=3, num_classes=10, embed_dim=(16, 32, 64, 96), num_heads=8,
                 mlp_ratios=4, blocks3=6, blocks4=2, block=MS_Block_Spike_SepConv):
        super().__init__()
        self.downsample1_1 = MS_DownSampling(in_channels, embed_dim[0] // 2, 7, 2, 3, True)
        self.ConvBlock1_1 = nn.ModuleList([MS_ConvBlock_spike_SepConv(embed_dim[0] // 2,
                                                                      mlp_ratios)])
        self.downsample1_2 = MS_DownSampling(embed_dim[0] // 2, embed_dim[0], 3, 2, 1, False)
        self.ConvBlock1_2 = nn.ModuleList([MS_ConvBlock_spike_SepConv(embed_dim[0], mlp_ratios)])
        self.downsample2 = MS_DownSampling(embed_dim[0], embed_dim[1], 3, 2, 1, False)
        self.ConvBlock2_1 = nn.ModuleList([MS_ConvBlock_spike_SepConv(embed_dim[1], mlp_ratios)])
        self.ConvBlock2_2 = nn.ModuleList([MS_ConvBlock_spike_SepConv(embed_dim[1], mlp_ratios)])
        self.downsample3 = MS_DownSampling(embed_dim[1], embed_dim[2], 3, 2, 1, False)
        self.block3 = nn.ModuleList([block(embed_dim[2], num_heads, mlp_ratios)
                                     for _ in range(blocks3)])
        self.downsample4 = MS_DownSampling(embed_dim[2], embed_dim[3], 3, 1, 1, False)
        self.block4 = nn.ModuleList([block(embed_dim[3], num_heads, mlp_ratios)
                                     for _ in range(blocks4)])
        self.head = nn.Linear(embed_dim[3], num_classes)
        self.spike = MultiSpike(Norm=1)

    def forward_features(self, x):
        """The official order: each downsampling, then its stage's blocks."""
        stages = [(self.downsample1_1, self.ConvBlock1_1), (self.downsample1_2, self.ConvBlock1_2),
                  (self.downsample2, [*self.ConvBlock2_1, *self.ConvBlock2_2]),
                  (self.downsample3, self.block3), (self.downsample4, self.block4)]
        for downsample, blocks in stages:
            x = downsample(x)
            for blk in blocks:
                x = blk(x)
        return x

    def forward(self, x):
        x = self.forward_features(x).flatten(2).mean(2)
        return self.head(self.spike(x))
