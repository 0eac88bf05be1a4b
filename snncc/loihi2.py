"""Loihi 2 resource estimate and design-rule check for a graph compiled for ``--target lava``.

Per-core limits are stated assumptions (``Loihi2Limits``), taken from Intel's public Loihi 2
brief and Lava's fixed-point process models: 8,192 neurons and 128 KiB of synaptic memory per
neuro core, 128 cores per chip, 8-bit synaptic weight mantissas (with a per-layer exponent),
24-bit membrane and current state, 12-bit decays. The estimate counts, per layer, neurons,
synapses (connections that exist, padding excluded) and synaptic memory (weights x 8 bits;
convolutions store their kernel once per core they span), and the cores needed. The check lists
every violation at once so a user can fix them together.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from . import ir
from .graph import Graph

NEURON_NODES = (ir.Neuron,)
SYNAPTIC_NODES = (ir.Conv1d, ir.Conv2d, ir.Linear)


@dataclass(frozen=True)
class Loihi2Limits:
    neurons_per_core: int = 8192
    synaptic_memory_per_core: int = 128 * 1024  # bytes
    cores_per_chip: int = 128
    weight_bits: int = 8  # signed mantissa bits per synaptic weight
    max_fan_in: int = 4096  # synapses into one neuron
    state_bits: int = 24


@dataclass
class LayerResources:
    node: str
    op: str
    path: str
    neurons: int
    synapses: int
    synaptic_memory: int  # bytes
    cores: int


@dataclass
class ResourceReport:
    limits: Loihi2Limits
    layers: list[LayerResources]
    violations: list[str] = field(default_factory=list)

    @property
    def cores(self) -> int:
        return sum(r.cores for r in self.layers)

    @property
    def chips(self) -> int:
        return max(1, math.ceil(self.cores / self.limits.cores_per_chip))

    def to_dict(self) -> dict:
        return {"limits": asdict(self.limits), "layers": [asdict(r) for r in self.layers],
                "cores": self.cores, "chips": self.chips, "violations": self.violations}

    def format(self) -> str:
        lines = [f"{'layer':<36} {'op':<12} {'neurons':>9} {'synapses':>11} {'syn. memory':>12} "
                 f"{'cores':>6}"]
        for r in self.layers:
            lines.append(f"{r.node:<36} {r.op:<12} {r.neurons:>9,} {r.synapses:>11,} "
                         f"{r.synaptic_memory:>12,} {r.cores:>6}")
        lines.append(f"total: {sum(r.neurons for r in self.layers):,} neurons, "
                     f"{sum(r.synapses for r in self.layers):,} synapses, {self.cores} cores "
                     f"({self.chips} chip(s) of {self.limits.cores_per_chip}), limits: "
                     f"{self.limits.neurons_per_core} neurons and "
                     f"{self.limits.synaptic_memory_per_core // 1024} KiB per core")
        if self.violations:
            lines.append(f"design-rule check: {len(self.violations)} violation(s)")
            lines += [f"  - {v}" for v in self.violations]
        else:
            lines.append("design-rule check: no violations")
        return "\n".join(lines)


def _synapses(node: ir.Node, in_shape: tuple[int, ...]) -> int:
    from .analysis import fan_out

    return int(fan_out(node, in_shape).sum())


def _weight_violation(node: ir.Node, weight: np.ndarray, bits: int) -> str | None:
    """Weights must be what Lava's bit-accurate Dense stores: integer mantissas of ``bits``
    bits in one sign mode times one exponent (:func:`snncc.fixed_point.weight_format`)."""
    from .fixed_point import weight_format

    if weight_format(weight) is not None:
        return None
    return (f"{node.name} ({node.path or node.op}): weights are not {bits}-bit integers with a "
            f"shared exponent (float weights: quantize them, --fixed-point)")


def _neuron_violations(n: ir.Neuron) -> list[str]:
    where = f"{n.name} ({n.path or 'Neuron'})"
    out = []
    if n.reset != "hard" or np.any(n.v_reset != 0):
        out.append(f"{where}: Loihi 2's LIF resets to 0 (hard); this neuron has "
                   f"{n.reset} reset to {np.unique(n.v_reset)[:3].tolist()}")
    if n.cmp != ">":
        out.append(f"{where}: Loihi 2 fires on v > vth; comparison {n.cmp!r} must be legalized")
    if np.unique(n.theta).size > 1:
        out.append(f"{where}: per-neuron thresholds need a custom neuron model (one vth per "
                   f"LIF process)")
    if np.unique(n.alpha).size > 1:
        out.append(f"{where}: per-neuron decays need a custom neuron model (one dv per process)")
    return out


def loihi2_report(graph: Graph, limits: Loihi2Limits = Loihi2Limits()) -> ResourceReport:
    """Resource estimate and every design-rule violation of ``graph``. A BN left to the writer
    is part of the synapse before it, whose weights are checked as they will be written."""
    from .passes.batchnorm import folds_left_to_writer
    from .passes.common import folded_synapse_arrays

    layers, violations = [], []
    left = folds_left_to_writer(graph)
    folded_bns = {b.bn.name for bs in left.values() for b in bs}
    for n in graph.topological_order():
        if n.name in folded_bns:
            continue
        if isinstance(n, SYNAPTIC_NODES):
            in_shape = graph[n.inputs[0]].shape
            syn = _synapses(n, in_shape)
            shared = isinstance(n, ir.Conv2d)
            kernel_bytes = n.weight.size * limits.weight_bits // 8
            mem_per_core = kernel_bytes if shared else syn * limits.weight_bits // 8
            neurons = math.prod(n.shape)
            cores = max(math.ceil(neurons / limits.neurons_per_core),
                        math.ceil(mem_per_core / limits.synaptic_memory_per_core))
            mem = kernel_bytes * cores if shared else mem_per_core
            layers.append(LayerResources(n.name, n.op, n.path, 0, syn, mem, cores))
            if n.fan_in() > limits.max_fan_in:
                violations.append(f"{n.name} ({n.path or n.op}): fan-in {n.fan_in()} exceeds "
                                  f"{limits.max_fan_in} synapses per neuron")
            weight = np.asarray(folded_synapse_arrays(n, left[n.name])[0] if n.name in left
                                else n.weight)
            v = _weight_violation(n, weight, limits.weight_bits)
            if v:
                violations.append(v)
        elif isinstance(n, NEURON_NODES):
            neurons = math.prod(n.shape)
            layers.append(LayerResources(n.name, n.op, n.path, neurons, 0, 0,
                                         math.ceil(neurons / limits.neurons_per_core)))
            violations += _neuron_violations(n)
        elif not isinstance(n, (ir.Input, ir.Output, ir.Reshape, ir.Flatten, ir.Transpose,
                                    ir.Delay)):  # layout changes are wiring, not processes
            violations.append(f"{n.name} ({n.path or n.op}): {n.op} is not a neuro-core "
                              f"primitive; it runs as a custom process off the neuro cores")
    return ResourceReport(limits, layers, violations)
