"""The Lava runner's batch: the samples run side by side in every process (a leading lane axis,
one copy of the state per sample), the rest of a batch in rounds when the lanes are fewer.
A batch of B gives, at every recorded neuron, exactly the spikes of B runs of one sample, on a
residual network (membrane shortcut, spike residual, custom per-channel-threshold neuron,
balancing delays, Dense head), a Spikformer block (Sparse token linears, spike attention, token
mean) and a quantized network on Lava's fixed_pt models; 2 seeds each, firing rates in
[5%, 95%]."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from snncc import ir
from snncc.backends.lava.lower import lower
from snncc.backends.lava.runner import estimate_bytes, run_network
from snncc.limits import memory_budget
from snncc.passes.latency import require_plan
from snncc.pipeline import run_passes

from conftest import assert_rates_in_range
from test_lava_fixed_point import quantized, shortcut_graph
from test_lava_network import T, attention_graph, compiled, residual_graph

B = 4


def lava_net(make, seed: int, batch: int = B):
    """(lowered network, its neurons, a batch of inputs)."""
    g, _ = make(seed)
    g = quantized(g) if make is shortcut_graph else compiled(g)
    x = np.random.default_rng(1000 + seed).normal(0, 1, (batch, *g.inputs[0].shape))
    return lower(g, require_plan(g)), [n.name for n in g.of_type(ir.Neuron)], x


def assert_same(a: dict, b: dict, neurons: list[str], samples=slice(None)) -> None:
    """Every neuron's spikes and every output of run a equal run b's (b's samples ``samples``)."""
    for k in neurons:
        got, want = a["trace"][k], b["trace"][k][:, samples]
        assert np.array_equal(got, want), f"{k}: {int((got != want).sum())} spikes differ"
    for o, y in a["outputs"].items():
        np.testing.assert_array_equal(y, b["outputs"][o][samples], err_msg=o)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("make", [residual_graph, attention_graph, shortcut_graph],
                         ids=["residual", "attention", "fixed_point"])
def test_batch_equals_runs_of_one_sample(make, seed):
    """B lanes in one round against one lane in B rounds (the samples one after another, the
    state re-initialised between them: B runs of one sample)."""
    net, neurons, x = lava_net(make, seed)
    batch = run_network(net, x, T, record=neurons)
    assert (batch["lanes"], batch["steps"]) == (B, net.period)
    one_by_one = run_network(net, x, T, record=neurons, lanes=1)
    assert one_by_one["steps"] == B * net.period
    assert_same(batch, one_by_one, neurons)
    assert_rates_in_range({k: batch["trace"][k].mean() for k in neurons})


def test_a_network_whose_processes_exceed_the_budget_is_refused_before_lava_starts():
    """Each Lava process is an OS process of its own: a network of more processes than the
    budget holds is refused, naming the run, before any starts."""
    from snncc.backends.lava.runner import PROCESS_BYTES
    from snncc.limits import ResourceError

    net, neurons, x = lava_net(residual_graph, 0, batch=1)
    assert estimate_bytes(net, T, 1, neurons, 1) > PROCESS_BYTES * (len(net.processes) + 2)
    with memory_budget(PROCESS_BYTES * len(net.processes)):
        with pytest.raises(ResourceError, match=f"running '{net.name}' in Lava"):
            run_network(net, x, T, record=neurons)


def test_rounds_under_a_tight_memory_budget_equal_fresh_runs():
    """Under a budget too small for 3 lanes the runner takes 2 (3 samples on 2 lanes: two
    rounds, the second with a spare lane); each sample's spikes are those of a fresh run of
    that sample alone."""
    net, neurons, x = lava_net(residual_graph, 0, batch=3)
    names = list(dict.fromkeys([*neurons, *net.outputs]))
    budget = estimate_bytes(net, T, 3, names, 2)
    assert budget < estimate_bytes(net, T, 3, names, 3)
    with memory_budget(budget):
        rounds = run_network(net, x, T, record=neurons)
    assert (rounds["lanes"], rounds["steps"]) == (2, 2 * net.period)
    for b in range(3):
        assert_same(run_network(net, x[b:b + 1], T, record=neurons), rounds, neurons,
                    slice(b, b + 1))


@pytest.mark.parametrize("lanes", [1, 3])
def test_the_channels_shared_memory_is_what_the_estimate_counts(lanes, monkeypatch):
    """Lava allocates each channel's messages in shared memory, 64 per channel by default (the
    15M Meta-SpikeFormer at 224x224 filled 10 GB of it before its first step). The runner asks
    for CHANNEL_SLOTS; what Lava then allocates is within the estimate's share for channels,
    and the messages between processes take most of it."""
    from snncc.backends.lava.compat import lava
    from snncc.backends.lava.runner import CHANNEL_SLOTS, RECORD_BUFFER, channel_bytes

    channel = lava(".magma.compiler.channels.pypychannel").PyPyChannel
    allocated, original = [], channel.__init__

    def counting(self, *args, **kwargs):
        a = inspect.signature(original).bind(self, *args, **kwargs).arguments
        if "service" not in a["src_name"]:  # not the runtime's one-number command channels
            allocated.append((a["size"], int(np.prod(a["shape"])) *
                              np.dtype(a["dtype"]).itemsize * a["size"]))
        original(self, *args, **kwargs)

    monkeypatch.setattr(channel, "__init__", counting)
    net, neurons, x = lava_net(residual_graph, 0, batch=3)
    run_network(net, x, T, record=neurons, lanes=lanes)
    names = list(dict.fromkeys([*neurons, *net.outputs]))
    total, expected = sum(b for _, b in allocated), channel_bytes(net, T, 3, names, lanes)
    assert 0.5 * expected < total <= expected
    pipe = min(-(-3 // lanes) * net.period, RECORD_BUFFER)  # the recorder's, to the host
    assert sorted(n for n, _ in allocated)[-2:] == [CHANNEL_SLOTS, pipe]
