"""Parameters, FLOPs, SOPs and theoretical energy per layer, counted the way the papers count
(DESIGN.md, "Energy model"; Auto-Spikformer eqs. 2-5):

    SOPs(l)  = (firing rate of l's input) x T x FLOPs(l)
    E        = E_MAC x MACs(analog-input layers) + E_AC x sum of SOPs of every other layer

with firing rates measured by the simulator. A synaptic layer whose input is real-valued
(the first layer on the image; the head after the mean over T) does MACs; a layer on spikes does
one accumulate per spike and synapse; on integer counts, one per unit of count. A layer on a
static input that ``hoist_static_input`` marked runs once, not T times; so do layers after the
mean over T (:class:`~snncc.ir.Readout`). Addressed accumulations report the additions the
simulator counted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from . import ir
from .graph import Graph

if TYPE_CHECKING:  # torch and the simulator when counting: the passes use this module without
    import torch

    from .simulator import SimResult

E_MAC_PJ = 4.6
E_AC_PJ = 0.9
SYNAPTIC = (ir.Conv1d, ir.Conv2d, ir.Linear, ir.SpikeMatMul, ir.AddressedAccumulate)


def flops(node: ir.Node, graph: Graph) -> int:
    """Multiply-accumulates of one step of a synaptic node (0 for other nodes)."""
    if isinstance(node, ir.Conv2d):  # Conv1d included
        return int(math.prod(node.shape) * node.fan_in())
    if isinstance(node, ir.Linear):
        return int(math.prod(node.shape) * node.fan_in())
    if isinstance(node, (ir.SpikeMatMul, ir.AddressedAccumulate)):
        k = graph[node.inputs[0]].shape[-1]
        return int(math.prod(node.shape) * k)
    return 0


def _after_readout(graph: Graph) -> set[str]:
    """Nodes downstream of a mean over T: computed once per sample."""
    cons = graph.consumers()
    return Graph.closure([c for r in graph.of_type(ir.Readout) for c in cons[r.name]],
                         cons.__getitem__)


def upstream_static(graph: Graph) -> set[str]:
    """Nodes whose value is the same at every step (only static inputs upstream, no state)."""
    static = set()
    for n in graph.topological_order():
        if isinstance(n, ir.Input):
            if n.static:
                static.add(n.name)
        elif not isinstance(n, (ir.Neuron, ir.Delay, ir.Readout)) and n.inputs and \
                all(i in static for i in n.inputs):
            static.add(n.name)
    return static


@dataclass
class LayerEnergy:
    node: str
    op: str
    path: str
    params: int
    flops_per_step: int  # MACs of one step
    input_kind: str
    input_rate: float  # mean input value per step (spike rate for spike inputs)
    runs: int  # how many times the layer computes per sample (T, or 1)
    macs: float  # MAC operations per sample
    sops: float  # accumulate operations per sample (exact synaptic events)
    sops_paper: float  # firing rate x runs x FLOPs, the papers' formula
    energy_uj: float


@dataclass
class EnergyReport:
    T: int
    layers: list[LayerEnergy]

    @property
    def total_macs(self) -> float:
        return sum(r.macs for r in self.layers)

    @property
    def total_sops(self) -> float:
        return sum(r.sops for r in self.layers)

    @property
    def total_energy_uj(self) -> float:
        return sum(r.energy_uj for r in self.layers)

    @property
    def total_params(self) -> int:
        return sum(r.params for r in self.layers)

    def to_dict(self) -> dict:
        return {"T": self.T, "layers": [asdict(r) for r in self.layers],
                "total_params": self.total_params, "total_macs": self.total_macs,
                "total_sops": self.total_sops, "total_energy_uj": self.total_energy_uj,
                "e_mac_pj": E_MAC_PJ, "e_ac_pj": E_AC_PJ}

    def format(self) -> str:
        lines = [f"{'layer':<36} {'op':<20} {'params':>10} {'FLOPs/step':>12} {'in rate':>8} "
                 f"{'MACs':>12} {'SOPs':>12} {'energy uJ':>10}"]
        for r in self.layers:
            lines.append(f"{r.node:<36} {r.op:<20} {r.params:>10,} {r.flops_per_step:>12,} "
                         f"{r.input_rate:>8.4f} {r.macs:>12,.0f} {r.sops:>12,.0f} "
                         f"{r.energy_uj:>10.4f}")
        lines.append(f"{'total':<36} {'':<20} {self.total_params:>10,} {'':>12} {'':>8} "
                     f"{self.total_macs:>12,.0f} {self.total_sops:>12,.0f} "
                     f"{self.total_energy_uj:>10.4f}")
        return "\n".join(lines)


def fan_out(node: ir.Node, in_shape: tuple[int, ...]) -> torch.Tensor:
    """Number of synapses leaving each input element of a conv/linear (exact at borders).

    A conv's fan-out separates: an input element feeds every output channel of its group at
    each (output position, kernel tap) pair that reads it, counted along each spatial axis
    on its own."""
    import torch

    if isinstance(node, ir.Linear):
        return torch.full(in_shape, float(node.weight.shape[0]), dtype=torch.float64)
    out = torch.full((), float(node.weight.shape[0] // node.groups), dtype=torch.float64)
    for d, (size, k) in enumerate(zip(in_shape[1:], node.weight.shape[2:])):
        taps = (torch.arange(node.shape[1 + d])[:, None] * node.stride[d] - node.padding[d]
                + torch.arange(k)[None, :] * node.dilation[d]).ravel()
        reads = torch.bincount(taps[(taps >= 0) & (taps < size)], minlength=size)
        out = out[..., None] * reads.to(torch.float64)
    return out.expand(in_shape)


def _spike_operand(graph: Graph, n: ir.Node) -> int:
    if isinstance(n, ir.AddressedAccumulate):
        return n.spike_operand
    return ir.address_operand([graph[i].kind for i in n.inputs])


def energy_record(graph: Graph) -> frozenset[str]:
    """The nodes whose traces :func:`energy_report` and ``SimResult.firing_rates`` read, for a
    run's ``record``: every neuron's output and the spike (or count) input of every synaptic
    layer, not every node's value and membrane (15M Meta-SpikeFormer at 224x224, batch 4: a
    run estimated at 4.2 GB instead of 11.6 GB)."""
    names = {n.name for n in graph.of_type(ir.Neuron)}
    for n in graph.of_type(*SYNAPTIC):
        if isinstance(n, (ir.SpikeMatMul, ir.AddressedAccumulate)):
            names.add(n.inputs[_spike_operand(graph, n)])
        elif not any(graph[i].kind is ir.Kind.REAL for i in n.inputs):
            names.add(n.inputs[0])
    return frozenset(names)


def energy_report(graph: Graph, result: SimResult) -> EnergyReport:
    """Per-layer counts per sample, from a simulator run that recorded at least
    :func:`energy_record`.

    Accumulates are counted exactly: sum over steps and inputs of (input value x fan-out), so a
    spike on a border pixel counts only the synapses that exist; for a uniform fan-out this is
    the papers' firing rate x T x FLOPs (reported as ``sops_paper``)."""
    import torch

    from .simulator import addressed_row

    T = result.T
    hoisted = set(graph.meta.get("hoisted", [])) & upstream_static(graph)
    once = _after_readout(graph) | hoisted
    batch = next(iter(result.output_sequence.values())).shape[1]
    layers = []
    for n in graph.topological_order():
        if not isinstance(n, SYNAPTIC):
            continue
        fl = flops(n, graph)
        runs = 1 if n.name in once else T
        if isinstance(n, (ir.SpikeMatMul, ir.AddressedAccumulate)):
            k = _spike_operand(graph, n)
            spikes = torch.as_tensor(result.trace[n.inputs[k]][:runs])
            kind, rate = graph[n.inputs[k]].kind.value, float(spikes.mean())
            # a count c adds its row c times (spikes: once per 1)
            sops = (float(spikes.sum())
                    * addressed_row(graph[n.inputs[1 - k]].shape, k) / batch)
            macs = 0.0
        elif any(graph[i].kind is ir.Kind.REAL for i in n.inputs):
            kind, rate, macs, sops = "real", 1.0, float(fl * runs), 0.0
        else:
            src = graph[n.inputs[0]]
            x = torch.as_tensor(result.trace[src.name][:runs])
            kind, rate = src.kind.value, float(x.mean())
            sops, macs = float((x * fan_out(n, src.shape)).sum()) / batch, 0.0
        layers.append(LayerEnergy(
            node=n.name, op=n.op, path=n.path, params=n.param_count(), flops_per_step=fl,
            input_kind=kind, input_rate=rate, runs=runs, macs=macs, sops=sops,
            sops_paper=0.0 if macs else rate * runs * fl,
            energy_uj=(E_MAC_PJ * macs + E_AC_PJ * sops) * 1e-6))
    return EnergyReport(T, layers)


def plot_report(report: EnergyReport, rates: dict[str, float], path) -> None:
    """Bar charts of firing rate per neuron layer and energy per synaptic layer (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .files import PNG, atomic_write

    fig, (a, b) = plt.subplots(2, 1, figsize=(max(8, 0.35 * len(report.layers)), 8))
    a.bar(range(len(rates)), list(rates.values()), color="tab:blue")
    a.set_xticks(range(len(rates)), list(rates), rotation=90, fontsize=6)
    a.set_ylabel("firing rate")
    a.set_title("firing rate per neuron layer")
    b.bar(range(len(report.layers)), [r.energy_uj for r in report.layers],
          color=["tab:red" if r.macs else "tab:green" for r in report.layers])
    b.set_xticks(range(len(report.layers)), [r.node for r in report.layers], rotation=90,
                 fontsize=6)
    b.set_ylabel("energy per sample (uJ)")
    b.set_title(f"energy per layer (red: MAC, green: AC); total {report.total_energy_uj:.3f} uJ")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120), replaces=PNG)
    plt.close(fig)
