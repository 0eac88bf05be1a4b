"""spikingjelly's own models at their default (ImageNet, 224x224) sizes, as a user's code would
build them, for ``bench_compile.py --library``: each name is a factory ``snncc compile --model
benchmarks/library_models.py:NAME`` calls. ``SEQUENCE``: the models that take a ``[T, B, ...]``
sequence (the others repeat a static image over T themselves)."""

from snncc.frontends.adapters.spikingjelly import provide_weight_loader_without_torchvision

provide_weight_loader_without_torchvision()
from spikingjelly.activation_based import functional, neuron  # noqa: E402
from spikingjelly.activation_based.model import (  # noqa: E402
    qkformer, sew_resnet, spike_driven_transformer, spikformer)

T = 4
SEQUENCE = {"sew_resnet18"}


def spikformer_default():
    return spikformer.Spikformer(T=T)


def sdt_default():
    return spike_driven_transformer.SpikeDrivenTransformer(T=T)


def qkformer_default():
    return qkformer.QKFormer(T=T)


def sew_resnet18():
    model = sew_resnet.sew_resnet18(cnf="ADD", spiking_neuron=neuron.IFNode, detach_reset=True)
    functional.set_step_mode(model, "m")
    return model


NAMES = ["spikformer_default", "sdt_default", "qkformer_default", "sew_resnet18"]
