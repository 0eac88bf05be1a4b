"""Tracing on shaped tensors (shapes only) gives the graph of tracing on real values, node for
node and array for array; a model whose Python code reads activation values is traced on real
values instead; a failed attempt leaves the model's state as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from snncc.frontends import tracer, zoo
from snncc.serialize import to_bytes_dict

T = 4


def same_graph(a, b) -> bool:
    da, db = to_bytes_dict(a), to_bytes_dict(b)
    return da.keys() == db.keys() and all(
        np.array_equal(np.asarray(da[k]), np.asarray(db[k])) for k in da)


def both(model, x, static=True):
    batch = x.shape[0] if static or x.shape[0] != T else x.shape[1]
    return (tracer._trace(model, x, T, batch, static, "m", shaped=True),
            tracer._trace(model, x, T, batch, static, "m", shaped=False))


@pytest.mark.parametrize("family", zoo.FAMILIES)
def test_shaped_trace_equals_real_trace_for_every_zoo_family(family, monkeypatch):
    """... and trace() needs no second attempt on real values for any of them."""
    case = zoo.small(family, 1)
    shaped, real = both(case.model, case.inputs, static=case.inputs.dim() == 4)
    assert same_graph(shaped, real)
    used, original = [], tracer._trace
    monkeypatch.setattr(tracer, "_trace", lambda *a, **k: used.append(k["shaped"])
                        or original(*a, **k))
    tracer.trace(case.model, case.inputs, T=case.model.T, static=case.inputs.dim() == 4)
    assert used == [True]


def test_spikingjelly_models_trace_on_shaped_tensors():
    pytest.importorskip("spikingjelly.activation_based")
    from spikingjelly.activation_based import functional, layer, neuron

    torch.manual_seed(0)
    model = nn.Sequential(layer.Conv2d(2, 4, 3, padding=1), layer.BatchNorm2d(4),
                          neuron.LIFNode(tau=2.0), layer.MaxPool2d(2), layer.Flatten(),
                          layer.Linear(64, 5), neuron.IFNode())
    functional.set_step_mode(model, "m")
    x = torch.rand(T, 3, 2, 8, 8).double()
    model.double()
    shaped, real = both(model, x, static=False)
    assert same_graph(shaped, real)


def _snntorch_loop(neuron=None):
    """snnTorch's Leaky in a loop over time. With reset_delay=False its forward reads the value
    of a buffer (``if self.reset_mechanism_val == 0``), a constant that fake tensors could not
    answer (``aten._local_scalar_dense``) and shaped tensors can."""
    snn = pytest.importorskip("snntorch")

    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)
            self.lif = (neuron or snn.Leaky)(beta=0.7, reset_mechanism="zero",
                                             reset_delay=False)

        def forward(self, x):
            mem = self.lif.init_leaky()
            out = []
            for _ in range(T):
                spk, mem = self.lif(self.fc(x), mem)
                out.append(spk)
            return torch.stack(out)

    torch.manual_seed(0)
    return Loop()


def _reads_activation_values():
    """A Leaky whose forward checks its input's values: only real values answer. (Placed in
    snnTorch's module, as a patched snnTorch would have it, so that the adapter takes it for a
    neuron and runs its forward as a leaf.)"""
    snn = pytest.importorskip("snntorch")

    class Leaky(snn.Leaky):
        def forward(self, input_, mem=None):
            if not torch.isfinite(input_).all():
                raise ValueError("non-finite input")
            return super().forward(input_, mem)
    Leaky.__module__ = snn.Leaky.__module__
    return _snntorch_loop(Leaky)


def test_a_model_reading_constant_values_traces_on_shaped_tensors():
    model, x = _snntorch_loop(), torch.randn(2, 3)
    assert same_graph(tracer._trace(model, x, T, 2, True, "m", shaped=True),
                      tracer._trace(model, x, T, 2, True, "m", shaped=False))


def test_a_model_reading_activation_values_is_traced_on_real_values():
    model, x = _reads_activation_values(), torch.randn(2, 3)
    with pytest.raises(Exception, match="_local_scalar_dense"):
        tracer._trace(model, x, T, 2, True, "m", shaped=True)
    graph = tracer.trace(model, x, T=T, name="m")
    assert len(graph) > 3
    assert same_graph(graph, tracer._trace(_snntorch_loop(), x, T, 2, True, "m", shaped=False))


def test_a_failed_trace_leaves_the_model_state_as_it_was():
    """snnTorch keeps its membrane in a buffer that tracing rebinds: a trace that fails half-way
    must not leave a proxy there for the next trace (it did: KeyError in the retry)."""
    model, x = _reads_activation_values(), torch.randn(2, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(Exception):
        tracer._trace(model, x, T, 2, True, "m", shaped=True)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(tracer._trace(model, x, T, 2, True, "m", shaped=False)) > 3


def test_trace_uses_shaped_tensors_and_real_values_when_the_code_reads_them(monkeypatch):
    """trace() traces on shaped tensors, and on real values when the model's code reads
    activation values: the same graph both ways."""
    case = zoo.small("spikformer-cifar", 2)
    used = []
    original = tracer._trace

    def spy(*args, **kwargs):
        used.append(kwargs["shaped"])
        return original(*args, **kwargs)
    monkeypatch.setattr(tracer, "_trace", spy)
    graph = tracer.trace(case.model, case.inputs, T=T, name="m")
    assert used == [True]
    assert same_graph(graph, original(case.model, case.inputs, T, 2, True, "m", shaped=False))
    used.clear()
    model, x = _reads_activation_values(), torch.randn(2, 3)
    tracer.trace(model, x, T=T)
    assert used == [True, False]


def test_constants_repeated_over_time_and_batch_are_held_once():
    """Meta-SpikeFormer's padding border (``ones_like`` of an activation, padded, times the BN's
    value per channel) is a real constant of the activation's [T*B, C, H, W] shape: kept as one
    slice expanded, with the same graph as on real values."""
    torch.manual_seed(0)
    model = zoo.meta.BNAndPadLayer(pad_pixels=1, num_features=64).double().eval()
    zoo.testing.randomize_bn(model, 0)
    x = torch.rand(T * 2, 64, 48, 48, dtype=torch.float64)
    border = 1.0 - nn.functional.pad(torch.ones_like(x[:, :1]), [1] * 4)
    value = border * torch.rand(1, 64, 1, 1, dtype=torch.float64)
    assert value.nbytes > 2**20
    held = tracer._compact_constant(value)
    assert torch.equal(held, value) and held.stride()[0] == 0
    assert held.untyped_storage().nbytes() == value.nbytes // (T * 2)
    varying = value * torch.arange(T * 2, dtype=torch.float64).view(-1, 1, 1, 1)
    assert tracer._compact_constant(varying) is varying

    class Folded(nn.Module):  # [T, B, ...] -> the layer on [T*B, ...]
        def __init__(self):
            super().__init__()
            self.layer = model

        def forward(self, x):
            return self.layer(x.flatten(0, 1)).reshape(T, 2, *x.shape[2:3], 50, 50)

    shaped, real = both(Folded(), x.reshape(T, 2, 64, 48, 48), static=False)
    assert same_graph(shaped, real)
