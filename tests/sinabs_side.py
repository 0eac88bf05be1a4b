"""The sinabs side of tests/test_sinabs_interop.py, run with the nir 1.0.4 + sinabs environment's
python (scripts/nir104_env.sh), which cannot import snncc:

    python sinabs_side.py export DIR   # sinabs models -> DIR/<model>.nir (sinabs.to_nir) and
                                       # DIR/<model>.npz (inputs x [T, B, ...], every layer's
                                       # output [T, B, ...] from sinabs's own forward)
    python sinabs_side.py load DIR     # every DIR/<name>.nir with DIR/<name>.x.npy: loaded by
                                       # sinabs.from_nir, run -> DIR/<name>.sinabs.npy

T = 8, batch 3, float32 (sinabs's spike functions return float32 whatever the model's dtype);
sinabs's Squeeze layers take (batch * time, ...), batch-major.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nir
import numpy as np
import sinabs
import sinabs.layers as sl
import torch
from sinabs.activation import SingleSpike

T, B = 8, 3


def _to_sinabs(x: torch.Tensor) -> torch.Tensor:
    """[T, B, ...] -> [B * T, ...] (batch-major, as the Squeeze layers unfold it)."""
    return x.transpose(0, 1).reshape(-1, *x.shape[2:])


def _from_sinabs(y: torch.Tensor) -> np.ndarray:
    return y.reshape(B, T, *y.shape[1:]).transpose(0, 1).detach().numpy()


def _positive_weights(layer: torch.nn.Module, seed: int) -> None:
    """Mostly excitatory weights so that spikes flow through every layer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(layer.weight.shape, generator=g) * 1.2 - 0.2)
        if layer.bias is not None:
            layer.bias.copy_(torch.rand(layer.bias.shape, generator=g) * 0.2 - 0.1)


def _bound(layer: torch.nn.Module, hi: float) -> float:
    """The largest input a layer fed values in [0, hi] can give one neuron."""
    w = layer.weight.detach().reshape(layer.weight.shape[0], -1).clamp(min=0).sum(1) * hi
    b = 0 if layer.bias is None else layer.bias.detach()
    return float((w + b).max())


def mlp_multi(seed: int):
    """Linear-IAF-Linear-LIF, sinabs's default MultiSpike, 0/1 event input, each threshold
    just above the layer's largest possible input (so a step never reaches 2 thresholds)."""
    torch.manual_seed(seed)
    fc1, fc2 = torch.nn.Linear(6, 16), torch.nn.Linear(16, 4)
    _positive_weights(fc1, seed)
    _positive_weights(fc2, seed + 1)
    net = torch.nn.Sequential(
        fc1, sl.IAFSqueeze(batch_size=B, spike_threshold=torch.tensor(_bound(fc1, 1) * 1.05)),
        fc2, sl.LIFSqueeze(tau_mem=torch.full((4,), 64.0), batch_size=B, norm_input=False,
                           spike_threshold=torch.full((4,), _bound(fc2, 1) * 1.05)))
    x = (torch.rand(T, B, 6, generator=torch.Generator().manual_seed(seed)) < 0.5).float()
    return net, x, (6,)


def mlp_single(seed: int):
    """Linear-IAF-Linear-LIF-Linear-ExpLeak, SingleSpike, real-valued input."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 16),
        sl.IAFSqueeze(batch_size=B, spike_fn=SingleSpike, spike_threshold=torch.tensor(2.0)),
        torch.nn.Linear(16, 4),
        sl.LIFSqueeze(tau_mem=torch.full((4,), 3.0), batch_size=B, norm_input=False,
                      spike_fn=SingleSpike, spike_threshold=torch.full((4,), 0.2)),
        torch.nn.Linear(4, 3),
        sl.ExpLeakSqueeze(tau_mem=torch.full((3,), 5.0), batch_size=B, norm_input=False))
    _positive_weights(net[0], seed)
    x = torch.rand(T, B, 6, generator=torch.Generator().manual_seed(seed)) * 1.5
    return net, x, (6,)


def conv(seed: int):
    """Conv2d-IAF-SumPool2d-Flatten-Linear-IAF, MultiSpike, event input."""
    torch.manual_seed(seed)
    c, fc = torch.nn.Conv2d(2, 4, 3, padding=1, bias=False), torch.nn.Linear(4 * 4 * 4, 5)
    _positive_weights(c, seed)
    _positive_weights(fc, seed + 1)
    net = torch.nn.Sequential(
        c, sl.IAFSqueeze(batch_size=B, spike_threshold=torch.tensor(_bound(c, 1) * 1.05)),
        sl.SumPool2d(2), torch.nn.Flatten(),
        fc, sl.IAFSqueeze(batch_size=B, spike_threshold=torch.tensor(_bound(fc, 4) * 1.05)))
    x = (torch.rand(T, B, 2, 8, 8, generator=torch.Generator().manual_seed(seed)) < 0.4).float()
    return net, x, (2, 8, 8)


MODELS = {"mlp_multi": mlp_multi, "mlp_single": mlp_single, "conv": conv}
SEEDS = (1, 2, 3)


def export(out: Path) -> None:
    for name, make in MODELS.items():
        for seed in SEEDS:
            net, x, shape = make(seed)
            g = sinabs.to_nir(net, torch.zeros(B, *shape, dtype=x.dtype))
            g.infer_types()  # sinabs leaves a Conv2d's input_shape unset: nir.write fails
            nir.write(out / f"{name}_{seed}.nir", g)
            sinabs.reset_states(net)
            layers, h = {}, _to_sinabs(x)
            with torch.no_grad():
                for i, layer in enumerate(net):
                    h = layer(h)
                    layers[str(i)] = _from_sinabs(h)
            np.savez(out / f"{name}_{seed}.npz", x=x.numpy(), **layers)


def load(out: Path) -> None:
    for path in sorted(out.glob("*.nir")):
        x = torch.as_tensor(np.load(out / f"{path.stem}.x.npy")).float()
        net = sinabs.from_nir(nir.read(path), batch_size=B)
        with torch.no_grad():
            y = net(_to_sinabs(x))
        y = y[0] if isinstance(y, tuple) else y
        np.save(out / f"{path.stem}.sinabs.npy", _from_sinabs(y))


if __name__ == "__main__":
    {"export": export, "load": load}[sys.argv[1]](Path(sys.argv[2]))
