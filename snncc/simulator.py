"""The reference simulator: runs an IR graph over T steps on a batch with exactly the
semantics of DESIGN.md, in float64 or float32, vectorised over batch and neurons (torch
kernels), optionally recording every node's output at every step.

At each step t = 0 .. T-1 nodes are evaluated in topological order; a static input gives the
same value at every step; :class:`~snncc.ir.Delay` nodes emit what their input produced
``steps`` steps earlier; neurons follow :mod:`snncc.neuron`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from . import ir
from . import neuron as nrn
from .errors import ShapeError, SnnccError
from .graph import Graph
from .limits import fmt_bytes, nbytes, require_fits

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class SimResult:
    """What a run produced. Arrays are numpy, time first."""

    T: int
    outputs: dict[str, np.ndarray]  # value of each Output at the last step, [B, ...]
    output_sequence: dict[str, np.ndarray]  # [T, B, ...]
    trace: dict[str, np.ndarray] = field(default_factory=dict)  # node -> [T, B, ...]
    membrane: dict[str, np.ndarray] = field(default_factory=dict)  # neuron -> v[t], [T, B, ...]
    additions: dict[str, np.ndarray] = field(default_factory=dict)  # AddressedAccumulate -> [T]

    @property
    def output(self) -> np.ndarray:
        """The single output's final value."""
        (v,) = self.outputs.values()
        return v

    def firing_rates(self, graph: Graph) -> dict[str, float]:
        """Mean spike rate of every recorded neuron."""
        return {k: float(v.mean()) for k, v in self.trace.items()
                if isinstance(graph[k], ir.Neuron)}


def _t(a, dtype) -> torch.Tensor | None:
    return None if a is None else torch.as_tensor(np.asarray(a), dtype=dtype)


def _align(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """[B, *s] -> [B, 1.., *s] so that per-sample shapes broadcast like numpy's."""
    extra = ndim - (x.dim() - 1)
    return x.reshape(x.shape[0], *([1] * extra), *x.shape[1:]) if extra > 0 else x


class Simulator:
    """Build once per graph and dtype; call :meth:`run` for each input batch."""

    def __init__(self, graph: Graph, dtype: str = "float64"):
        if dtype not in DTYPES:
            raise SnnccError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        self.graph = graph.verify(allow_dead=True)
        self.dtype = DTYPES[dtype]
        self.order = graph.topological_order()
        self._kernels = {n.name: self._kernel(n) for n in self.order}

    # ------------------------------------------------------------------ kernels
    def _kernel(self, n: ir.Node):
        dt = self.dtype
        if isinstance(n, ir.Conv2d):  # Conv1d included
            conv = F.conv1d if isinstance(n, ir.Conv1d) else F.conv2d
            w, b = _t(n.weight, dt), _t(n.bias, dt)
            return lambda x: conv(x, w, b, n.stride, n.padding, n.dilation, n.groups)
        if isinstance(n, ir.Linear):
            w, b = _t(n.weight, dt), _t(n.bias, dt)
            return lambda x: F.linear(x, w, b)
        if isinstance(n, ir.BatchNorm):
            p = [_t(getattr(n, a), dt) for a in ("mean", "var", "weight", "bias")]
            ax = n.axis + 1

            def bn(x):
                y = F.batch_norm(x.movedim(ax, 1), p[0], p[1], p[2], p[3], False, 0.0, n.eps)
                return y.movedim(1, ax)
            return bn
        if isinstance(n, ir.MaxPool2d):
            return lambda x: F.max_pool2d(x, n.kernel_size, n.stride, n.padding, n.dilation)
        if isinstance(n, ir.AvgPool2d):
            return lambda x: F.avg_pool2d(x, n.kernel_size, n.stride, n.padding,
                                          count_include_pad=True)
        if isinstance(n, ir.Pad):
            c, h, w = n.shape
            l, r, t, b = n.pads
            border = torch.ones((1, c, h, w), dtype=dt)
            border[..., t:h - b, l:w - r] = 0
            border = border * _t(n.value, dt).reshape(-1, 1, 1)
            return lambda x: F.pad(x, (l, r, t, b)) + border
        if isinstance(n, ir.Reshape):
            return lambda x: x.reshape(x.shape[0], *n.target)
        if isinstance(n, ir.Flatten):
            k = len(self.graph[n.inputs[0]].shape)
            return lambda x: x.flatten(n.start % k + 1, n.end % k + 1)
        if isinstance(n, ir.Transpose):
            perm = (0, *(p + 1 for p in n.perm))
            return lambda x: x.permute(perm)
        if isinstance(n, ir.Add):
            k = len(n.shape)

            def add(*xs):
                y = _align(xs[0], k)
                for x in xs[1:]:
                    y = y + _align(x, k)
                return y
            return add
        if isinstance(n, ir.Scale):
            f = _t(n.factor, dt)
            return lambda x: x * f
        if isinstance(n, ir.Hadamard):
            k = len(n.shape)
            return lambda a, b: _align(a, k) * _align(b, k)
        if isinstance(n, (ir.SpikeMatMul, ir.AddressedAccumulate)):
            k = len(n.shape)
            return lambda a, b: torch.matmul(_align(a, k), _align(b, k))
        if isinstance(n, ir.Mean):
            return lambda x: x.mean(dim=tuple(a % (x.dim() - 1) + 1 for a in n.axes),
                                    keepdim=n.keepdim)
        if isinstance(n, ir.Sum):
            return lambda x: x.sum(dim=tuple(a % (x.dim() - 1) + 1 for a in n.axes),
                                   keepdim=n.keepdim)
        if isinstance(n, ir.Concat):
            return lambda *xs: torch.cat(xs, dim=n.axis % len(n.shape) + 1)
        if isinstance(n, (ir.Output, ir.Input, ir.Neuron, ir.Delay, ir.Readout)):
            return None  # stateful or pass-through: handled in run()
        raise SnnccError(f"the simulator has no kernel for {n.op}", node=n.name, path=n.path)

    # ------------------------------------------------------------------ neurons
    def _neuron_state(self, n: ir.Neuron, batch: int) -> dict:
        """A neuron's state at the start of a run: its parameters and membrane v[-1]."""
        p = {a: _t(v, self.dtype) for a, v in n.params().items()}
        return {"p": p, "v": p["v_init"].expand(batch, *n.shape).clone()}

    def _neuron_step(self, n: ir.Neuron, state: dict, x: torch.Tensor):
        """One step of :func:`snncc.neuron.step`; returns (spikes, membrane v[t])."""
        p = state["p"]
        s, state["v"], _ = nrn.step(state["v"], x, p["alpha"], p["gamma"], p["beta"],
                                    p["theta"], p["v_reset"], n.cmp, n.reset)
        return s, state["v"]

    # ------------------------------------------------------------------ running
    def _prepare_inputs(self, inputs, T: int | None, batch: int | None):
        ins = self.graph.inputs
        if not isinstance(inputs, dict):
            if len(ins) != 1:
                raise SnnccError(f"graph has {len(ins)} inputs; pass a dict {[i.name for i in ins]}")
            inputs = {ins[0].name: inputs}
        missing = [i.name for i in ins if i.name not in inputs]
        if missing:
            raise SnnccError(f"missing input(s): {missing}")
        out = {}
        for node in ins:
            x = torch.as_tensor(np.asarray(inputs[node.name]), dtype=self.dtype)
            want = len(node.input_shape) + (1 if node.static else 2)
            if x.dim() != want or tuple(x.shape[want - len(node.input_shape):]) != node.input_shape:
                layout = "[B, " if node.static else "[T, B, "
                raise ShapeError(f"input must be {layout}{', '.join(map(str, node.input_shape))}]"
                                 f", got {tuple(x.shape)}", node=node.name, path=node.path)
            if not torch.isfinite(x).all():
                raise ShapeError("input contains NaN or infinity", node=node.name)
            if not node.static:
                if T is not None and x.shape[0] != T:
                    raise ShapeError(f"sequence has {x.shape[0]} steps, T={T}", node=node.name)
                T = x.shape[0]
            b = x.shape[0 if node.static else 1]
            if b == 0:
                raise ShapeError("the batch is empty (0 samples)", node=node.name)
            if batch is not None and b != batch:
                raise ShapeError(f"batch {b} differs from other inputs' {batch}", node=node.name)
            batch = b
            out[node.name] = x
        return out, T, batch

    def run(self, inputs, T: int | None = None, record: bool = False) -> SimResult:
        """Simulate. ``inputs``: an array (single input) or a dict by Input name; static inputs
        are ``[B, ...]``, sequences ``[T, B, ...]``. ``T`` defaults to the sequence length or
        the graph's ``meta['T']``. ``record`` keeps every node's output and every membrane."""
        xs, T, B = self._prepare_inputs(inputs, T, None)
        T = int(T if T is not None else self.graph.meta.get("T", 1))
        if T < 1:
            raise SnnccError(f"T must be >= 1, got {T}")
        require_run_fits(self.graph, T, B, record, self.dtype.itemsize)
        g, dt = self.graph, self.dtype
        state: dict[str, object] = {}
        for n in self.order:
            if isinstance(n, ir.Neuron):
                state[n.name] = self._neuron_state(n, B)
            elif isinstance(n, ir.Delay):
                state[n.name] = deque(torch.zeros((B, *n.shape), dtype=dt) for _ in range(n.steps))
            elif isinstance(n, ir.Readout):
                state[n.name] = torch.zeros((B, *n.shape), dtype=dt)
        trace = {n.name: [] for n in self.order} if record else {}
        membrane = {n.name: [] for n in self.order if isinstance(n, ir.Neuron)} if record else {}
        additions = {n.name: [] for n in self.order if isinstance(n, ir.AddressedAccumulate)}
        out_seq = {n.name: [] for n in g.outputs}

        for t in range(T):
            val: dict[str, torch.Tensor] = {}
            for n in self.order:
                args = [val[i] for i in n.inputs] if not n.breaks_cycles else []
                if isinstance(n, ir.Input):
                    x = xs[n.name]
                    y = x if n.static else x[t]
                elif isinstance(n, ir.Neuron):
                    y, v = self._neuron_step(n, state[n.name], args[0])
                    if record:
                        membrane[n.name].append(v)
                elif isinstance(n, ir.Delay):
                    y = state[n.name][0]
                elif isinstance(n, ir.Readout):
                    state[n.name] = state[n.name] + args[0]
                    y = state[n.name] / (t + 1)
                elif isinstance(n, ir.Output):
                    y = args[0]
                    out_seq[n.name].append(y)
                else:
                    y = self._kernels[n.name](*args)
                    if isinstance(n, ir.AddressedAccumulate):
                        additions[n.name].append(addressed_additions(args, n.spike_operand))
                val[n.name] = y
                if record:
                    trace[n.name].append(y)
            for n in self.order:
                if isinstance(n, ir.Delay):
                    q = state[n.name]
                    q.popleft()
                    q.append(val[n.inputs[0]])

        def stack(d):
            return {k: torch.stack(v).cpu().numpy() for k, v in d.items() if v}
        seq = stack(out_seq)
        return SimResult(T=T, outputs={k: v[-1] for k, v in seq.items()}, output_sequence=seq,
                         trace=stack(trace), membrane=stack(membrane),
                         additions={k: np.asarray(v) for k, v in additions.items()})


#: Python and torch overhead of one queued tensor in a Delay's FIFO (measured: ~0.3 KB)
_TENSOR_OVERHEAD = 512


def estimate_parts(graph: Graph, T: int, batch: int, record: bool = False,
                   itemsize: int = 8) -> dict[str, int]:
    """Memory a run of ``graph`` takes beyond its inputs, estimated from the declared shapes
    before anything is allocated, by part: one step's values of every node, neuron states,
    each delay's FIFO (``steps`` tensors), the outputs' sequences (T steps) and, with
    ``record``, every node's and membrane's trace over T (twice: lists and stacked arrays)."""
    parts = {"one step of every node": 0}
    for n in graph.nodes.values():
        size = nbytes(n.shape, itemsize) * batch
        parts["one step of every node"] += size
        if record:
            parts["traces"] = parts.get("traces", 0) + T * (2 * size + _TENSOR_OVERHEAD)
        if isinstance(n, ir.Neuron):
            parts["neuron states"] = parts.get("neuron states", 0) + size * (
                1 + 2 * T if record else 1)
        elif isinstance(n, ir.Delay):
            parts[f"Delay '{n.name}' of {n.steps} steps"] = n.steps * (size + _TENSOR_OVERHEAD)
        elif isinstance(n, ir.Output):
            parts["output sequences"] = parts.get("output sequences", 0) + 2 * T * size
    return parts


def estimate_bytes(graph: Graph, T: int, batch: int, record: bool = False,
                   itemsize: int = 8) -> int:
    """The total of :func:`estimate_parts`."""
    return sum(estimate_parts(graph, T, batch, record, itemsize).values())


def require_run_fits(graph: Graph, T: int, batch: int, record: bool = False,
                     itemsize: int = 8) -> None:
    """Refuse (ResourceError) a run whose estimate exceeds the memory budget, naming its
    largest part."""
    parts = estimate_parts(graph, T, batch, record, itemsize)
    big = max(parts, key=parts.get)
    require_fits(sum(parts.values()),
                 f"simulating '{graph.name}' for T={T} on a batch of {batch}"
                 + (" with every node's trace" if record else "")
                 + f" (largest part: {big}, {fmt_bytes(parts[big])})")


def addressed_additions(operands, spike_operand: int) -> int:
    """Row additions of ``S @ R`` (spike_operand 0) or ``R @ S`` (1) done by addressing:
    every spike selects one row (column) of the other operand, so additions = spikes x row
    length, summed over the batch."""
    s, r = operands[spike_operand], operands[1 - spike_operand]
    row = r.shape[-1] if spike_operand == 0 else r.shape[-2]
    return int(torch.count_nonzero(s)) * int(row)


def simulate(graph: Graph, inputs, T: int | None = None, dtype: str = "float64",
             record: bool = False, arithmetic: str | None = None) -> SimResult:
    """One-shot convenience: ``Simulator(graph, dtype).run(inputs, T, record)``;
    ``arithmetic="loihi2"`` runs a quantized graph in Loihi 2's fixed-point arithmetic
    (:class:`snncc.fixed_point.FixedPointSimulator`, which ignores ``dtype``). By default a
    graph quantized by ``quantize_for_loihi2`` runs in that arithmetic, any other in floats."""
    if arithmetic is None:
        arithmetic = "loihi2" if "loihi2" in graph.meta else "float"
    if arithmetic == "loihi2":
        from .fixed_point import FixedPointSimulator

        return FixedPointSimulator(graph).run(inputs, T, record)
    if arithmetic != "float":
        raise SnnccError(f"arithmetic must be 'float' or 'loihi2', got {arithmetic!r}")
    return Simulator(graph, dtype).run(inputs, T, record)


def run_snnir(artifact, inputs, T):
    """Runner of the ``sim`` target: (outputs, traces) of a ``.snnir`` file."""
    from .serialize import load

    res = simulate(load(artifact), inputs, T, record=True)
    return res.outputs, res.trace
