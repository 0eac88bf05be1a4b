"""Shared test helpers: small hand-built graphs and a plain-PyTorch reference written from the
equations (not from snncc.neuron), so the simulator is checked against an independent source."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# one thread: on a 2-core machine torch's default thread pool makes float64 tests several times
# slower when tests and other processes compete for the cores
torch.set_num_threads(1)


def randomized_bn(rng: np.random.Generator, c: int) -> dict:
    """BN parameters far from identity (fresh BN would hide folding bugs)."""
    return {"weight": rng.uniform(0.5, 2.0, c) * rng.choice([-1.0, 1.0], c, p=[0.2, 0.8]),
            "bias": rng.normal(0.3, 0.5, c), "mean": rng.normal(0.0, 0.5, c),
            "var": rng.uniform(0.2, 2.0, c)}


def assert_rates_in_range(rates: dict, lo: float = 0.05, hi: float = 0.95) -> None:
    """Thresholds must actually be crossed, so spike equality is not 'all zeros == all zeros'."""
    assert rates, "no neurons recorded"
    for name, r in rates.items():
        assert lo <= r <= hi, f"firing rate of {name} is {r:.3f}, outside [{lo}, {hi}]"


def library_spikes(model, x: torch.Tensor, paths: set[str], reset):
    """The model's own forward from fresh state (``reset``: the library's reset_net): its output
    and the concatenated outputs of every hooked module in ``paths``."""
    calls: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
    hooks = [model.get_submodule(p).register_forward_hook(
        lambda _m, _i, out, p=p: calls[p].append(out.detach())) for p in paths]
    reset(model)
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for h in hooks:
            h.remove()
        reset(model)
    return y.numpy(), {p: torch.cat(c).numpy() for p, c in calls.items() if c}


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
