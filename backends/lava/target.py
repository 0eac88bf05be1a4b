"""The ``lava`` target's declaration: the neuron features Lava's own LIF expresses (the back-end's
custom processes cover the rest, see docs/lava.md) and the passes a graph needs before the
emitter (BatchNorm folded into weights, one threshold per layer kept; the latency plan last).
A graph quantized by ``quantize_for_loihi2`` runs in Loihi 2's fixed-point arithmetic: its chip
on Lava's fixed_pt models, spikes equal to ``simulate(graph, x, arithmetic="loihi2")``."""

from snncc.targets import Target, register_target

from .lower import SUPPORTED_OPS

TARGET = register_target(Target(
    name="lava",
    description="Lava processes for Loihi 2, run in Loihi2SimCfg floating_pt, or fixed_pt "
                "for a quantized graph (directory: manifest.json, weights.npz, netx.h5)",
    ops=SUPPORTED_OPS,
    cmps=frozenset({">"}),
    resets=frozenset({"hard"}),
    per_neuron_threshold=False,
    per_neuron_decay=False,
    fixed_point=True,
    custom_neuron=True,
    default_passes=("eliminate_dead_nodes", "fold_batchnorm_into_weights",
                    "balance_synaptic_latency"),
    emitter="snncc.backends.lava.artifact:emit",
    marker="manifest.json",
    runner="snncc.backends.lava.runner:run",
    meta_reader="snncc.backends.lava.artifact:read_meta",
    hardware_report="snncc.loihi2:loihi2_report",
    weight_folds="when_written",
))
