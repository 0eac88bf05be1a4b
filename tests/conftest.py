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


def randomize_batchnorms(model, rng: np.random.Generator, positive_bias: bool = False):
    """``model`` with every BatchNorm's statistics and affine drawn by :func:`randomized_bn`, in
    module order (``positive_bias``: biases made >= 0, so that the neurons after them fire)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                bn = randomized_bn(rng, m.num_features)
                if m.weight is not None:  # (BNTT's norms have none of their own)
                    m.weight.copy_(torch.tensor(bn["weight"]))
                if m.bias is not None:
                    m.bias.copy_(torch.tensor(np.abs(bn["bias"]) if positive_bias
                                              else bn["bias"]))
                m.running_mean.copy_(torch.tensor(bn["mean"]))
                m.running_var.copy_(torch.tensor(bn["var"]))
    return model


def driven(model, **layers):
    """``model`` with each named layer's weight multiplied and bias shifted, ``name=(gain,
    shift)``, so that the neurons after it fire (untrained weights barely reach thresholds)."""
    with torch.no_grad():
        for name, (gain, shift) in layers.items():
            layer = model.get_submodule(name)
            layer.weight.mul_(gain)
            layer.bias.add_(shift)
    return model


def assert_rates_in_range(rates: dict, lo: float = 0.05, hi: float = 0.95) -> None:
    """Thresholds must actually be crossed, so spike equality is not 'all zeros == all zeros'."""
    assert rates, "no neurons recorded"
    for name, r in rates.items():
        assert lo <= r <= hi, f"firing rate of {name} is {r:.3f}, outside [{lo}, {hi}]"


def hooked_calls(model, x: torch.Tensor, paths: set[str], reset):
    """The model's own forward from fresh state (``reset``: the library's reset_net): its output
    and, for every module in ``paths`` that was called, the outputs of its calls (the first of a
    tuple: a neuron's spikes beside its state), copied before the model changes them in place
    (SEW's ``out += x``)."""
    calls: dict[str, list[torch.Tensor]] = {p: [] for p in paths}
    hooks = [m.register_forward_hook(
        lambda _m, _i, out, p=p: calls[p].append(
            (out[0] if isinstance(out, tuple) else out).detach().clone()))
        for p, m in model.named_modules() if p in calls]
    reset(model)
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for h in hooks:
            h.remove()
        reset(model)
    return y.numpy(), {p: c for p, c in calls.items() if c}


def library_spikes(model, x: torch.Tensor, paths: set[str], reset):
    """:func:`hooked_calls` with each module's calls concatenated (multi-step calls)."""
    y, calls = hooked_calls(model, x, paths, reset)
    return y, {p: torch.cat(c).numpy() for p, c in calls.items()}


def stacked_spikes(model, x: torch.Tensor, paths: set[str], reset):
    """:func:`hooked_calls` with each module's calls stacked as [T, B, ...] (a single-step
    neuron is called once per step; a multi-step one once)."""
    y, calls = hooked_calls(model, x, paths, reset)
    return y, {p: (torch.stack(c) if len(c) > 1 else c[0]).numpy() for p, c in calls.items()}


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_collection_modifyitems(config, items):
    """Lava, the slowest target (every layer an OS process), runs the first collected
    combination of the other parameters of a test parametrized over targets (``target``) in the
    default run, and the first of a Lava test's seeds (``seed``); ``-m slow`` runs the others
    too. Every other target keeps every combination."""
    kept: set[tuple] = set()
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        lava = params.get("target") == "lava" or \
            "seed" in params and "lava" in f"{item.path.name}::{item.originalname}"
        if not lava:
            continue
        group = (item.path, item.originalname,
                 *(() if params.get("target") == "lava" else
                   sorted((k, repr(v)) for k, v in params.items() if k != "seed")))
        if group in kept:
            item.add_marker(pytest.mark.slow)
        kept.add(group)
