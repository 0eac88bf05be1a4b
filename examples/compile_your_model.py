"""Compile your own spiking network with snncc's Python API.

A small convolutional SNN written with spikingjelly's own modules (multi-step, input
``[T, B, C, H, W]``) stands in for your model. The script traces it, checks that the
simulator and a target compute the same spikes as PyTorch at every neuron, compiles it and
runs the artifact::

    python examples/compile_your_model.py --target onnx --out out/my-model

The same from the command line, with the model's state_dict and this file as its code::

    snncc compile weights.pt --model examples/compile_your_model.py:ConvSNN \\
        --model-args '{"classes": 10}' --input-shape 2,16,16 --T 4 --target onnx -o out/m
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

import snncc


class ConvSNN(nn.Module):
    """conv-BN-LIF, conv-BN-LIF, max-pool, linear-IF, and the firing rate over time."""

    def __init__(self, channels: int = 2, width: int = 8, classes: int = 10, size: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            layer.Conv2d(channels, width, 3, padding=1, bias=False), layer.BatchNorm2d(width),
            neuron.LIFNode(tau=2.0),
            layer.Conv2d(width, 2 * width, 3, padding=1, bias=False), layer.BatchNorm2d(2 * width),
            neuron.LIFNode(tau=2.0, decay_input=False),
            layer.MaxPool2d(2), layer.Flatten())
        self.head = nn.Sequential(layer.Linear(2 * width * (size // 2) ** 2, classes),
                                  neuron.IFNode(v_threshold=0.5))
        functional.set_step_mode(self, "m")

    def forward(self, x):  # x: [T, B, C, H, W] -> firing rate per class [B, classes]
        return self.head(self.features(x)).mean(0)


def pretend_trained(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics far from identity, as training would leave them."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 1.0)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.3 + 0.6)
        elif isinstance(m, nn.Linear):
            m.weight.data.mul_(4.0)
    return model.eval()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="onnx", help="sim, onnx, nir or lava")
    ap.add_argument("--out", default="out/my-model", help="artifact path")
    ap.add_argument("--T", type=int, default=4)
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    model = pretend_trained(ConvSNN())
    x = torch.randn(args.T, 3, 2, 16, 16)  # [T, B, C, H, W]: the first axis of length T is time

    graph = snncc.trace(model, x, T=args.T)
    print(f"traced {len(graph)} nodes, {graph.param_count():,} parameters, input layout "
          f"{graph.meta['input_layout']}")

    report = snncc.check(model, x, target=args.target, T=args.T)
    print(report.format())

    path = snncc.compile(model, x, target=args.target, out=args.out, T=args.T)
    y = snncc.run(path, x)
    with torch.no_grad():
        functional.reset_net(model)
        expected = model.double()(x.double()).numpy()
    print(f"compiled to {path}; its output equals PyTorch's: {np.array_equal(y, expected)}")
    return {"report": report, "path": path, "output": y, "expected": expected}


if __name__ == "__main__":
    main()
