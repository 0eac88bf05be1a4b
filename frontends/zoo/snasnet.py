"""SNASNet (Kim et al., ECCV 2022, "Neural Architecture Search for Spiking Neural Networks";
paper 003; github
Intelligent-Computing-Lab-Yale/Neural-Architecture-Search-for-Spiking-Neural-Networks,
``model_snn.py`` and ``searchcells/search_cell_snn.py``).

Neuron: the official code's spikingjelly ``LIFNode(v_threshold=args.threshold, v_reset=0.0,
tau=args.tau, surrogate_function=surrogate.ATan(), detach_reset=True)`` (``model_snn.py``,
``searchcells/search_cell_snn.py``; ``config.py``: tau = 4/3, threshold 1):
``u[t] = u[t-1] + (x[t] - u[t-1]) / tau``, i.e. ``(1 - 1/tau) u[t-1] + x[t] / tau`` (paper eq.
2), spike if ``u[t] - theta >= 0`` (the ATan surrogate's forward is spikingjelly's Heaviside with
H(0) = 1), reset to 0. The paper's eq. 3 writes a strict ``u[t] > theta``; snncc follows the
code (``cmp=">="``), which decides exact ties. These are single-step :class:`LIF` modules whose
membrane is passed explicitly from step to step.

Macro skeleton (Fig. 5; official code): an analog stem ``BN(Conv3x3(image))`` computed once,
then for every time step t::

    x = cell1(stem)  ->  downconv1 = Conv3x3(SN(BN(.))) + BN, C -> 2C  ->  AvgPool2d(2)
      -> cell2  ->  last_act = SN(BN(.))  ->  AvgPool2d(2)  ->  flatten
      -> classifier = Linear(no bias) -> SN -> Linear  ->  voting AvgPool1d(num_cluster)

and the output is the vote averaged over the T steps.

A cell has nodes 0 (input) .. 3 (output); every forward edge i -> j (i < j) carries one
operation of {0: zeroize, 1: skip, 2: SN-Conv1x1-BN, 3: SN-Conv3x3-BN, 4: AvgPool3x3} and node j
is the sum of its incoming edges. A backward cell also has edges j -> i (i < j) whose output
at step t-1 is added to node i at step t (the paper's backward connections). The operations
are ``con_mat[i][j]`` (the official ``--cnt_mat`` rows); the official code allows an edge in
only one direction per node pair. Because of the t-1 edges the model loops over time
explicitly; with a fixed ``T`` the loop unrolls under ``torch.fx``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .neurons import LIF

FORWARD_EDGES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
BACKWARD_EDGES = ((1, 0), (2, 0), (3, 0), (2, 1), (3, 1), (3, 2))
OPS = {0: "zeroize", 1: "skip", 2: "conv1x1", 3: "conv3x3", 4: "avgpool3x3"}

#: The searched backward cell of the official README (CIFAR100), ``--cnt_mat 0302 0030 3003 0000``.
CIFAR100_BW_CELL = ((0, 3, 0, 2), (0, 0, 3, 0), (3, 0, 0, 3), (0, 0, 0, 0))
#: The cell of the official CIFAR10 checkpoint (README), ``--cnt_mat 0303 0030 2002 0200``.
CIFAR10_BW_CELL = ((0, 3, 0, 3), (0, 0, 3, 0), (2, 0, 0, 2), (0, 2, 0, 0))


def snasnet_lif(tau: float = 4 / 3, v_threshold: float = 1.0) -> LIF:
    """The official neuron (spikingjelly ``LIFNode(tau, v_threshold, v_reset=0.0)``, fires on
    ``>=``) as a single-step LIF."""
    return LIF(tau, v_threshold, 0.0, decay_input=True, cmp=">=", step_mode="s")


class ScaleLayer(nn.Module):
    """The "zeroize" operation: ``x * 0`` (the official layer multiplies by ``tensor(0.)``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.0


class SpikingSequential(nn.Sequential):
    """``nn.Sequential`` (same child indices, so the same state_dict keys as the official
    ``nn.Sequential``) whose single-step LIF children get their membranes explicitly:
    ``forward(x, v)`` with ``v`` the list returned at the previous step (``None`` at t = 0)
    returns ``(y, v_new)``."""

    def forward(self, x: torch.Tensor, v: list | None = None):
        new_v = []
        for m in self:
            if isinstance(m, LIF):
                out = m(x, None if v is None else v[len(new_v)])
                x = out[0]
                new_v.append(out[1])
            else:
                x = m(x)
        return x, new_v


def _make_op(op: int, channels: int, tau: float, v_threshold: float) -> nn.Module:
    if op == 0:
        return ScaleLayer()
    if op == 1:
        return nn.Identity()
    if op in (2, 3):
        k = 1 if op == 2 else 3
        return SpikingSequential(
            snasnet_lif(tau, v_threshold),
            nn.Conv2d(channels, channels, k, 1, k // 2, bias=False),
            nn.BatchNorm2d(channels))
    if op == 4:
        return nn.AvgPool2d(3, 1, 1)
    raise ValueError(f"unknown SNASNet operation {op}; known: {OPS}")


def _apply(op: nn.Module, x: torch.Tensor, v):
    if isinstance(op, SpikingSequential):
        return op(x, v)
    return op(x), None


class Neuronal_Cell(nn.Module):
    """A searched cell (module docstring). ``backward=False`` is the official ``Neuronal_Cell``
    (upper triangle of ``con_mat`` only); ``backward=True`` is ``Neuronal_Cell_backward``.

    ``forward(x, state)`` -> ``(x_3, state)``; ``state`` (``None`` at t = 0) holds the op
    neurons' membranes and the backward edges' outputs of the previous step."""

    def __init__(self, channels: int, con_mat: Sequence[Sequence[int]], backward: bool,
                 tau: float = 4 / 3, v_threshold: float = 1.0):
        super().__init__()
        self.backward = backward
        self.cell_architecture = nn.ModuleList(
            _make_op(int(con_mat[i][j]), channels, tau, v_threshold) for i, j in FORWARD_EDGES)
        if backward:
            self.cell_architecture_back = nn.ModuleList(
                _make_op(int(con_mat[i][j]), channels, tau, v_threshold) for i, j in BACKWARD_EDGES)

    def forward(self, x_in: torch.Tensor, state: dict | None = None):
        prev = state or {}
        new = {}
        last = prev.get("last")
        # node j as seen by its outgoing edges: x_j plus the backward input from step t-1
        nodes = [x_in if last is None else x_in + last[0]]
        for dst in (1, 2, 3):
            acc = self._gather(self.cell_architecture, FORWARD_EDGES, dst, nodes, prev, new, "fwd")
            nodes.append(acc if last is None or dst == 3 else acc + last[dst])
        if self.backward:
            new["last"] = [self._gather(self.cell_architecture_back, BACKWARD_EDGES, dst, nodes,
                                        prev, new, "bwd") for dst in (0, 1, 2)]
        return nodes[3], new

    @staticmethod
    def _gather(ops, edges, dst, nodes, prev, new, kind):
        """Sum over the edges into ``dst`` (in the official order) of op(source node); records
        each op's new membranes in ``new[(kind, edge)]``."""
        acc = None
        for e, (src, d) in enumerate(edges):
            if d == dst:
                y, new[(kind, e)] = _apply(ops[e], nodes[src], prev.get((kind, e)))
                acc = y if acc is None else acc + y
        return acc


class SNASNet(nn.Module):
    """SNASNet with a searched cell ``con_mat`` (see the module docstring).

    Dataset presets of the official ``model_snn.py``: CIFAR10 (10 classes, 10-neuron voting
    clusters, ``channel_ratio = 2``), CIFAR100 (100 classes, clusters of 5), TinyImageNet (200
    classes, clusters of 5, stem stride 2, 4096 hidden, 64x64 input). The cells work at
    C = ``first_out_channel * channel_ratio`` (official: 128 x 1, or 128 x 2 = 256 for CIFAR10),
    the reduction cell C -> 2C. Dropout before the classifier is an identity (inference).
    ``tau`` and ``v_threshold`` are every LIF's (``config.py``: 4/3 and 1).
    """

    def __init__(self, con_mat: Sequence[Sequence[int]] = CIFAR100_BW_CELL, backward: bool = True,
                 in_channels: int = 3, num_classes: int = 100, num_cluster: int = 5,
                 img_size: int = 32, first_out_channel: int = 128, classifier_inter_ch: int = 1024,
                 stem_stride: int = 1, second_avgpooling: int = 2, T: int = 5,
                 tau: float = 4 / 3, v_threshold: float = 1.0, channel_ratio: int = 1):
        super().__init__()
        c = first_out_channel * channel_ratio
        self.T, self.num_classes = T, num_classes
        self.con_mat = [list(map(int, row)) for row in con_mat]
        spatial_decay = 2 * second_avgpooling * stem_stride
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, stem_stride, 1, bias=False),
                                  nn.BatchNorm2d(c))
        self.cell1 = Neuronal_Cell(c, self.con_mat, backward, tau, v_threshold)
        self.downconv1 = SpikingSequential(
            nn.BatchNorm2d(c), snasnet_lif(tau, v_threshold),
            nn.Conv2d(c, 2 * c, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * c))
        self.resdownsample1 = nn.AvgPool2d(2, 2)
        self.cell2 = Neuronal_Cell(2 * c, self.con_mat, backward, tau, v_threshold)
        self.last_act = SpikingSequential(nn.BatchNorm2d(2 * c), snasnet_lif(tau, v_threshold))
        self.resdownsample2 = nn.AvgPool2d(second_avgpooling, second_avgpooling)
        side = img_size // spatial_decay
        self.classifier = SpikingSequential(
            nn.Identity(),
            nn.Linear(2 * c * side * side, classifier_inter_ch, bias=False),
            snasnet_lif(tau, v_threshold),
            nn.Linear(classifier_inter_ch, num_classes * num_cluster, bias=True))
        self.boost = nn.AvgPool1d(num_cluster, num_cluster)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        static_x = self.stem(x)
        s1 = s2 = v_down = v_act = v_cls = None
        acc = None
        for _ in range(self.T):
            y, s1 = self.cell1(static_x, s1)
            y, v_down = self.downconv1(y, v_down)
            y = self.resdownsample1(y)
            y, s2 = self.cell2(y, s2)
            y, v_act = self.last_act(y, v_act)
            y = self.resdownsample2(y).flatten(1)
            y, v_cls = self.classifier(y, v_cls)
            y = self.boost(y.unsqueeze(1)).squeeze(1)
            acc = y if acc is None else acc + y
        return acc / self.T
