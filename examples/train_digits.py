"""Train the built-in default models on scikit-learn's 8x8 digits set (shipped with
scikit-learn: nothing is downloaded) with surrogate gradients, and save their state_dicts to
``examples/checkpoints/<arch>.pt``.

    .venv/bin/python examples/train_digits.py                      # both default models
    .venv/bin/python examples/train_digits.py --arch digits-spikformer --epochs 40

The zoo's LIF has a sigmoid surrogate gradient; its forward is exactly snncc's neuron, so the
trained network is the network snncc compiles.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from snncc.files import Ours, atomic_write
from snncc.frontends.digits import DEFAULT_MODELS, checkpoint, digits_for
from snncc.frontends.zoo import build

def evaluate(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        out = model(torch.as_tensor(x, dtype=torch.float32))
    return float((out.argmax(-1).numpy() == y).mean())


def train(arch: str, epochs: int, seed: int, lr: float) -> float:
    torch.manual_seed(seed)
    (xtr, ytr), (xte, yte) = digits_for(arch)
    model = build(arch).float()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    gen = np.random.default_rng(seed)
    xtr_t, ytr_t = torch.as_tensor(xtr, dtype=torch.float32), torch.as_tensor(ytr)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        for idx in np.array_split(gen.permutation(len(xtr)), len(xtr) // 64):
            loss = torch.nn.functional.cross_entropy(model(xtr_t[idx]), ytr_t[idx])
            opt.zero_grad()
            loss.backward()
            # small models' attention neurons rarely fire at first; BN on their all-zero
            # output has zero batch variance and 1/sqrt(eps) gradients without clipping
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        sched.step()
        if epoch % 5 == 4 or epoch == epochs - 1:
            print(f"{arch} epoch {epoch + 1}: loss {loss.item():.3f}, "
                  f"test accuracy {evaluate(model, xte, yte):.4f} ({time.time() - start:.0f} s)")
    acc = evaluate(model, xte, yte)
    path = checkpoint(arch)
    atomic_write(path, lambda f: torch.save(model.state_dict(), f),
                 replaces=Ours("a checkpoint", lambda p: p.suffix == ".pt"))
    print(f"saved {path} (test accuracy {acc:.4f})")
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=list(DEFAULT_MODELS), action="append")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=3e-3)
    args = ap.parse_args()
    for arch in args.arch or list(DEFAULT_MODELS):
        train(arch, args.epochs, args.seed, args.lr)


if __name__ == "__main__":
    main()
