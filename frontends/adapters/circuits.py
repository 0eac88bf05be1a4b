"""Building blocks for neurons that are not the canonical neuron alone (:class:`NeuronCircuit`):
a library's membrane update computed by Scale/Add/Hadamard/Delay nodes in the library's own
operation order, fired on by a threshold neuron. Shared by the snntorch and norse adapters."""

from __future__ import annotations

import numpy as np
import torch

from snncc import ir
from snncc import neuron as cn
from snncc.errors import UnsupportedError

from . import Integrator, NeuronCircuit


class Circuit:
    """Collects the IR nodes of one neuron circuit; node names are ``{name}:{part}``."""

    def __init__(self, name: str, path: str, shape: tuple):
        self.name, self.path, self.shape = name, path, tuple(shape)
        self.nodes: list[ir.Node] = []

    def _node(self, cls, part: str, inputs, **kw) -> str:
        node = cls(f"{self.name}:{part}", tuple(inputs), path=self.path, **kw)
        self.nodes.append(node)
        return node.name

    def prev(self, src: str, kind: ir.Kind = ir.Kind.REAL, start: float = 0.0) -> str:
        """``src`` one step back, ``start`` at t = 0 (the state's value before the first step:
        :func:`~snncc.ir.started_delay` where it is not 0); one Delay per source."""
        own = "s[t-1]" if kind is ir.Kind.SPIKE else "v[t-1]"  # a neuron's spikes, a cell's value
        part = own if src == self.name else f"{src.rsplit(':', 1)[-1]}[t-1]"
        name = f"{self.name}:{part}"
        if not any(n.name == name for n in self.nodes):
            self._node(ir.Delay, part, (src,), steps=1, shape_hint=self.shape, kind_hint=kind)
        started = f"{name}.started"
        if start != 0.0 and not any(n.name == started for n in self.nodes):
            self.nodes.extend(ir.started_delay(started, name, np.full(self.shape, float(start)),
                                               self.path))
        return name if start == 0.0 else started

    def spikes_before(self) -> str:
        return self.prev(self.name, ir.Kind.SPIKE)

    def scale(self, src: str, k: float, part: str) -> str:
        return self._node(ir.Scale, part, (src,), factor=np.asarray(k, dtype=np.float64))

    def add(self, a: str, b: str, part: str) -> str:
        return self._node(ir.Add, part, (a, b))

    def affine(self, src: str, a: float, b: float, part: str) -> str:
        """``a * src + b`` as a BatchNorm of scale a and bias b: one rounding, so ``b - src``
        (a = -1) and ``src + b`` (a = 1) are torch's."""
        node = ir.BatchNorm.affine(f"{self.name}:{part}", (src,), np.full(self.shape[0], a),
                                   np.full(self.shape[0], b), self.path)
        self.nodes.append(node)
        return node.name

    def weighted_window(self, x: str, weights, oldest_first: bool = False) -> str:
        """sum over k of weights[k] * x[t - k] (k = 0 .. len(weights) - 1, 0 before step 0): ``x``
        and its Delays, each scaled (part ``w{k}``), added newest first, or oldest first as a
        causal convolution sums them (partial sums ``h{k}``)."""
        lagged = [x]
        for _ in range(1, len(weights)):
            lagged.append(self.prev(lagged[-1]))
        first, *rest = range(len(weights) - 1, -1, -1) if oldest_first else range(len(weights))
        h = self.scale(lagged[first], weights[first], f"w{first}")
        for k in rest:
            h = self.add(h, self.scale(lagged[k], weights[k], f"w{k}"), f"h{k}")
        return h

    def mul(self, spikes: str, real: str, part: str) -> str:
        return self._node(ir.Hadamard, part, (spikes, real))

    def linear(self, src: str, weight: torch.Tensor, bias: torch.Tensor | None,
               part: str) -> str:
        return self._node(ir.Linear, part, (src,), weight=_np(weight),
                          bias=None if bias is None else _np(bias))

    def conv2d(self, src: str, m: nn.Conv2d, part: str) -> str:
        return self._node(ir.Conv2d, part, (src,), weight=_np(m.weight),
                          bias=None if m.bias is None else _np(m.bias), stride=m.stride,
                          padding=m.padding, dilation=m.dilation, groups=m.groups)

    def neuron(self, src: str, params: cn.CanonicalParams, part: str, path: str) -> str:
        """A canonical neuron on ``src`` (its own module ``path``: the spikes it fires are not
        the module's output)."""
        node = ir.Neuron(f"{self.name}:{part}", (src,), path=path, **params.fields())
        self.nodes.append(node)
        return node.name

    def integrator(self, x: str, alpha: float, part: str) -> str:
        """v[t] = alpha * v[t-1] + x[t] (``alpha * v`` first, then ``+ x``), v[-1] = 0: the
        NIR reader's leaky integrator (Scale, Delay, Add), named ``{name}:{part}``."""
        from snncc.frontends.nir_reader import _integrator

        full = np.full(self.shape, alpha, dtype=np.float64)
        name = f"{self.name}:{part}"
        self.nodes += _integrator(name, x, full, np.ones(self.shape), np.zeros(self.shape),
                                  self.path)
        return name


def running_sum() -> Integrator:
    """v[t] = v[t-1] + x[t] from v[-1] = 0, the output v: the membrane of an integrate-and-fire
    neuron that never fires (spikingjelly's IFNode at v_threshold=inf, multi-step)."""
    def build(name, x, shape):
        c = Circuit(name, name, shape)
        v = c.prev(name)
        return [*c.nodes, ir.Add(name, (v, x), path=name)]
    return Integrator(build)


def threshold(theta, cmp: str = cn.CMP_GT) -> cn.CanonicalParams:
    """A neuron that only compares its input: h = x, spike if h > theta (or ``cmp``, >=)
    (alpha = 0); ``theta`` a number or one per neuron."""
    theta = float(theta) if np.ndim(theta) == 0 else theta
    return cn.CanonicalParams(alpha=0.0, gamma=1.0, beta=0.0, theta=theta, v_reset=0.0,
                              reset=cn.RESET_HARD, cmp=cmp, v_init=0.0)


def on_current(alpha: float, neuron: cn.CanonicalParams) -> NeuronCircuit:
    """A current-based neuron: the current syn = alpha * syn + x (:meth:`Circuit.integrator`)
    is the input of the canonical neuron ``neuron``."""

    def build(name, x, shape):
        c = Circuit(name, name, shape)
        return c.nodes, c.integrator(x, alpha, "syn")
    return NeuronCircuit(neuron, build)


def circuit(theta: float, body, v_init: float = 0.0) -> NeuronCircuit:
    """A NeuronCircuit whose membrane ``body(c, x)`` computes in a :class:`Circuit` ``c``, fired
    on by a threshold neuron at ``theta``."""

    def build(name, x, shape, path=""):
        c = Circuit(name, path or name, shape)
        membrane = body(c, x)
        return c.nodes, membrane
    return NeuronCircuit(threshold(theta), build, v_init)


def _np(t) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def per_neuron(value, what: str, path: str) -> float | np.ndarray:
    """A parameter that is one number (:func:`scalar`) or one per neuron: a tensor the library
    broadcasts against its layer's ``[B, ...]``, as the IR broadcasts it against a step's shape
    (one that does not broadcast so is refused when the neuron's nodes are built)."""
    t = torch.as_tensor(value).detach()
    if t.numel() == 1:
        return scalar(value, what, path)
    a = t.to("cpu", torch.float64).numpy()
    if not np.isfinite(a).all():
        raise UnsupportedError(f"{what} holds a value that is not finite", path=path)
    return a


def scalar(value, what: str, path: str) -> float:
    """A parameter that must be one number (a scalar tensor or a one-element one, or a Python
    number, kept in float64 as the library's arithmetic with it is)."""
    t = torch.as_tensor(value, dtype=torch.float64 if isinstance(value, (int, float)) else None)
    t = t.detach()
    if t.numel() != 1:
        raise UnsupportedError(f"a per-neuron {what} (a tensor of shape {tuple(t.shape)}) is not "
                               "supported; snncc maps one value per layer", path=path)
    v = float(t.reshape(()).to(torch.float64))
    if not np.isfinite(v):
        raise UnsupportedError(f"{what} = {v} is not finite", path=path)
    return v
