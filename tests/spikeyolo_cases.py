"""SpikeYOLO's backbone (Luo et al., "Integer-Valued Training and Spike-Driven Inference Spiking
Neural Network for High-performance and Energy-efficient Object Detection"), written from the
official code (BICLab/SpikeYOLO at 309ef5e, ``ultralytics/nn/modules/yolo_spikformer.py``) with
the same operations in the same order: its integer LIF ``mem_update``, a loop over T written
with tensor ops (mem = (mem_old - spike) * decay + x[t], spike = round(clamp(mem, 0, 4)) through
an autograd Function, the output assigned step by step), RepConv and SepRepConv (a BatchNorm on
the counts of a neuron, then convolutions), the MetaFormer blocks, SPPF's max-pools and a
[T, B, ...] repeat of the image. The detection head (softmax, sigmoid, anchors) is left out."""

from __future__ import annotations

import torch
from torch import nn

from sdt_v3_cases import BNAndPadLayer

decay = 0.25


class MultiSpike4(nn.Module):

    class quant4(torch.autograd.Function):

        @staticmethod
        def forward(ctx, input):
            ctx.save_for_backward(input)
            return torch.round(torch.clamp(input, min=0, max=4))

        @staticmethod
        def backward(ctx, grad_output):
            input, = ctx.saved_tensors
            grad_input = grad_output.clone()
            grad_input[input < 0] = 0
            grad_input[input > 4] = 0
            return grad_input

    def forward(self, x):
        return self.quant4.apply(x)


class mem_update(nn.Module):
    def __init__(self):
        super().__init__()
        self.qtrick = MultiSpike4()

    def forward(self, x):
        spike = torch.zeros_like(x[0]).to(x.device)
        output = torch.zeros_like(x)
        mem_old = 0
        for i in range(x.shape[0]):
            if i >= 1:
                mem = (mem_old - spike.detach()) * decay + x[i]
            else:
                mem = x[i]
            spike = self.qtrick(mem)
            mem_old = mem.clone()
            output[i] = spike
        return output


def autopad(k, p=None, d=1):
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


class RepConv(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size=3, group=1):
        super().__init__()
        padding = int((kernel_size - 1) / 2)
        conv1x1 = nn.Conv2d(in_channel, in_channel, 1, 1, 0, bias=False, groups=group)
        bn = BNAndPadLayer(pad_pixels=padding, num_features=in_channel)
        conv3x3 = nn.Sequential(
            nn.Conv2d(in_channel, in_channel, kernel_size, 1, 0, groups=in_channel, bias=False),
            nn.Conv2d(in_channel, out_channel, 1, 1, 0, groups=group, bias=False),
            nn.BatchNorm2d(out_channel))
        self.body = nn.Sequential(conv1x1, bn, conv3x3)

    def forward(self, x):
        return self.body(x)


class SepRepConv(nn.Module):
    """A BatchNorm (padding with its constant) straight on the counts of a neuron, then a 1x1
    and a depthwise convolution."""

    def __init__(self, in_channel, out_channel, kernel_size=3, group=1):
        super().__init__()
        padding = int((kernel_size - 1) / 2)
        bn = BNAndPadLayer(pad_pixels=padding, num_features=in_channel)
        conv3x3 = nn.Sequential(
            nn.Conv2d(in_channel, out_channel, 1, 1, 0, groups=group, bias=False),
            nn.Conv2d(out_channel, out_channel, kernel_size, 1, 0, groups=out_channel,
                      bias=False))
        self.body = nn.Sequential(bn, conv3x3)

    def forward(self, x):
        return self.body(x)


class SepConv(nn.Module):
    def __init__(self, dim, expansion_ratio=2, kernel_size=3):
        super().__init__()
        padding = int((kernel_size - 1) / 2)
        med_channels = int(expansion_ratio * dim)
        self.pwconv1 = nn.Conv2d(dim, med_channels, kernel_size=1, stride=1, bias=False)
        self.dwconv2 = nn.Conv2d(med_channels, med_channels, kernel_size=kernel_size,
                                 padding=padding, groups=med_channels, bias=False)
        self.pwconv3 = SepRepConv(med_channels, dim)
        self.bn1 = nn.BatchNorm2d(med_channels)
        self.bn2 = nn.BatchNorm2d(med_channels)
        self.bn3 = nn.BatchNorm2d(dim)
        self.lif1, self.lif2, self.lif3 = mem_update(), mem_update(), mem_update()

    def forward(self, x):
        T, B, C, H, W = x.shape
        x = self.lif1(x)
        x = self.bn1(self.pwconv1(x.flatten(0, 1))).reshape(T, B, -1, H, W)
        x = self.lif2(x)
        x = self.bn2(self.dwconv2(x.flatten(0, 1))).reshape(T, B, -1, H, W)
        x = self.lif3(x)
        return self.bn3(self.pwconv3(x.flatten(0, 1))).reshape(T, B, -1, H, W)


class MS_ConvBlock(nn.Module):
    def __init__(self, input_dim, mlp_ratio=4., sep_kernel_size=7):
        super().__init__()
        self.Conv = SepConv(dim=input_dim, kernel_size=sep_kernel_size)
        self.mlp_ratio = mlp_ratio
        self.lif1, self.lif2 = mem_update(), mem_update()
        self.conv1 = RepConv(input_dim, int(input_dim * mlp_ratio))
        self.bn1 = nn.BatchNorm2d(int(input_dim * mlp_ratio))
        self.conv2 = RepConv(int(input_dim * mlp_ratio), input_dim)
        self.bn2 = nn.BatchNorm2d(input_dim)

    def forward(self, x):
        T, B, C, H, W = x.shape
        x = self.Conv(x) + x
        x_feat = x
        x = self.bn1(self.conv1(self.lif1(x).flatten(0, 1))).reshape(
            T, B, int(self.mlp_ratio * C), H, W)
        x = self.bn2(self.conv2(self.lif2(x).flatten(0, 1))).reshape(T, B, C, H, W)
        return x_feat + x


class MS_StandardConv(nn.Module):
    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, d=1):
        super().__init__()
        self.c2, self.s = c2, s
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.lif = mem_update()

    def forward(self, x):
        T, B, C, H, W = x.shape
        x = self.bn(self.conv(self.lif(x).flatten(0, 1)))
        return x.reshape(T, B, self.c2, int(H / self.s), int(W / self.s))


class MS_AllConvBlock(nn.Module):
    def __init__(self, input_dim, mlp_ratio=4., sep_kernel_size=7):
        super().__init__()
        self.Conv = SepConv(dim=input_dim, kernel_size=sep_kernel_size)
        self.conv1 = MS_StandardConv(input_dim, int(input_dim * mlp_ratio), 3)
        self.conv2 = MS_StandardConv(int(input_dim * mlp_ratio), input_dim, 3)

    def forward(self, x):
        x = self.Conv(x) + x
        return x + self.conv2(self.conv1(x))


class MS_DownSampling(nn.Module):
    def __init__(self, in_channels=2, embed_dims=256, kernel_size=3, stride=2, padding=1,
                 first_layer=True):
        super().__init__()
        self.encode_conv = nn.Conv2d(in_channels, embed_dims, kernel_size=kernel_size,
                                     stride=stride, padding=padding)
        self.encode_bn = nn.BatchNorm2d(embed_dims)
        if not first_layer:
            self.encode_lif = mem_update()

    def forward(self, x):
        T, B, _, _, _ = x.shape
        if hasattr(self, "encode_lif"):
            x = self.encode_lif(x)
        x = self.encode_conv(x.flatten(0, 1))
        _, C, H, W = x.shape
        return self.encode_bn(x).reshape(T, B, -1, H, W).contiguous()


class MS_GetT(nn.Module):
    def __init__(self, T=4):
        super().__init__()
        self.T = T

    def forward(self, x):
        return (x.unsqueeze(0)).repeat(self.T, 1, 1, 1, 1)


class SpikeConv(nn.Module):
    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, d=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.lif = mem_update()
        self.bn = nn.BatchNorm2d(c2)
        self.s = s

    def forward(self, x):
        T, B, C, H, W = x.shape
        x = self.lif(x)
        return self.bn(self.conv(x.flatten(0, 1))).reshape(T, B, -1, int(H / self.s),
                                                           int(W / self.s))


class SpikeSPPF(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = SpikeConv(c1, c_, 1, 1)
        self.cv2 = SpikeConv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        x = self.cv1(x)
        T, B, C, H, W = x.shape
        y1 = self.m(x.flatten(0, 1)).reshape(T, B, -1, H, W)
        y2 = self.m(y1.flatten(0, 1)).reshape(T, B, -1, H, W)
        y3 = self.m(y2.flatten(0, 1)).reshape(T, B, -1, H, W)
        return self.cv2(torch.cat((x, y1, y2, y3), 2))


class Backbone(nn.Module):
    """The image repeated over T, the first stages of SpikeYOLO's backbone (both block kinds,
    SPPF) and, in place of the detection head, the mean over T and positions and a classifier
    (``MS_CancelT``'s ``mean(0)``)."""

    def __init__(self, T=4, width=16, classes=10):
        super().__init__()
        self.T = T
        self.get_t = MS_GetT(T)
        self.down1 = MS_DownSampling(3, width, 7, 4, 2, first_layer=True)
        self.block1 = MS_AllConvBlock(width, 2, 7)
        self.down2 = MS_DownSampling(width, 2 * width, 3, 2, 1, first_layer=False)
        self.block2 = MS_ConvBlock(2 * width, 2, 7)
        self.sppf = SpikeSPPF(2 * width, 2 * width, 5)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.down2(self.block1(self.down1(self.get_t(x))))
        x = self.sppf(self.block2(x))
        return self.head(x.mean(0).flatten(2).mean(2))


class Neck(Backbone):
    """The backbone's stages (its ``block2`` left out) with the official neck's first top-down
    path (``snn_yolov8.yaml``, head layers 10-13): ``MS_StandardConv``, ``nn.Upsample(None,
    (1, 2, 2), 'nearest')`` on ``[T, B, C, H, W]`` (a 3-D upsampling whose first axis is the
    channels), ``MS_ConvBlock``, and ``Concat`` with the backbone's P4 on the channels (dim 2);
    then a classifier in place of ``SpikeDetect``."""

    def __init__(self, T=4, width=16, classes=10):
        super().__init__(T, width, classes)
        del self.block2
        self.reduce = MS_StandardConv(2 * width, width, 1, 1)
        self.up = nn.Upsample(None, (1, 2, 2), "nearest")
        self.block = MS_ConvBlock(width, 2, 7)

    def forward(self, x):
        p4 = self.block1(self.down1(self.get_t(x)))
        y = self.block(self.up(self.reduce(self.sppf(self.down2(p4)))))
        y = torch.cat([y, p4], 2)
        return self.head(y.mean(0).flatten(2).mean(2))
