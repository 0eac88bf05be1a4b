"""The reference simulator: runs an IR graph over T steps on a batch with exactly the
semantics of DESIGN.md, in float64 or float32, vectorised over batch and neurons (torch
kernels), optionally recording every node's output at every step.

At each step t = 0 .. T-1 nodes are evaluated in topological order; a static input gives the
same value at every step; :class:`~snncc.ir.Delay` nodes emit what their input produced
``steps`` steps earlier; neurons follow :mod:`snncc.neuron`.

**Time folding** (the default, ``fold=True``). A stateless node's value at step t depends only
on its inputs at step t, so where those inputs do not depend on the same node's earlier steps
the node is evaluated once over all T steps, time folded into the batch (``[T * B, ...]``),
with the same kernel as the step-by-step walk. The run is planned in *units*, in an order in
which every unit comes after the units it reads:

- a stateless node: one kernel call over ``[T * B, ...]``; if every input is *static* (the same
  at every step: a static Input and what is computed from it alone) one call on ``[B, ...]``,
  as a static image's first layers are the same at every step;
- a neuron: its own step over t = 0 .. T-1 on its precomputed input ``[T, B, ...]``;
- a Readout: the running sum over t, divided by t + 1 at each step;
- a Delay outside every cycle: a shift in time (zeros for the first ``steps`` steps);
- a strongly connected component (a cycle through Delays): evaluated step by step, each node
  with the same per-step code as the unfolded walk, its outside inputs read at step t.

Each op has one implementation (:meth:`Simulator._kernel`, :meth:`Simulator._neuron_step`)
used by both walks; float64 spikes are identical in both (tested). ``fold=False`` keeps the
step-by-step walk of the whole graph (the reference for those tests, and the fallback when the
time-folded values would not fit the memory budget).

**Arithmetic.** ``Simulator`` computes in floats, on a CPU or a CUDA device (``device``). In
float64 it runs the kernels PyTorch eager runs in float64, so that parity is exact; float32 on a
CPU runs convolutions in oneDNN with weights reordered once, on channels-last activations
(:func:`_onednn_conv`): faster, and equal to eager float32 up to rounding.
:class:`FixedPointSimulator` chooses Loihi 2's fixed-point kernels (from :mod:`snncc.fixed_point`,
which knows nothing of the simulator) for the encoders, on-chip convolutions and neurons of a
quantized graph.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from . import fixed_point as fxp
from . import ir
from . import neuron as nrn
from .errors import DeviceError, ShapeError, SnnccError
from .graph import Graph, node_with
from .limits import fmt_bytes, max_memory, nbytes, require_fits

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


def _t(a, dtype, device=None) -> torch.Tensor | None:
    return None if a is None else torch.as_tensor(np.asarray(a), dtype=dtype, device=device)


def resolve_device(device=None) -> torch.device:
    """``device`` ('cpu', 'cuda', 'cuda:N') as a torch device; None: torch's default device
    (``with torch.device(...)`` included). A CUDA device that is absent is refused
    (DeviceError) before any work."""
    try:
        dev = torch.device(device) if device is not None else torch.get_default_device()
    except (RuntimeError, TypeError):
        raise DeviceError(f"device must be cpu or cuda[:N], got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise DeviceError(f"device must be cpu or cuda[:N], got {str(dev)!r}")
    if dev.type == "cuda" and not (torch.cuda.is_available()
                                   and (dev.index or 0) < torch.cuda.device_count()):
        raise DeviceError(f"device {str(dev)!r}: no such CUDA device is available to this "
                          f"process (CUDA available: {torch.cuda.is_available()}, devices: "
                          f"{torch.cuda.device_count()})")
    return dev


def _onednn_conv(n: ir.Conv2d, w: torch.Tensor, b: torch.Tensor | None):
    """The float32 CPU kernel of a convolution: oneDNN's, with the weight reordered into
    oneDNN's blocked layout for the input's shape (``F.conv2d`` reorders it at every call, a
    cost that dominates small batches), on channels-last activations (oneDNN's fast layout for
    these kernels, ~15 % over NCHW at batch 32; the output stays channels-last, and elementwise
    ops and neurons keep that layout). Conv1d runs as a 2-D convolution of height 1. The same
    products and sums as ``F.conv2d`` in another order: float32 rounding may differ.

    The layout is chosen for the input's shape, and again when that changes (one packed copy
    held at a time): packed without the shape, oneDNN picks a default layout that on an AVX2
    CPU sends some shapes to a slow kernel (15M at 64x64: 512 -> 128 channels 3x3 on 8x8, 43
    against 3.1 ms; measured)."""
    one_d = isinstance(n, ir.Conv1d)
    lead = [0] if one_d else []
    pad, stride = lead + list(n.padding), [1] * len(lead) + list(n.stride)
    dilation = [1] * len(lead) + list(n.dilation)
    w = w.unsqueeze(2) if one_d else w
    conv = torch.ops.mkldnn._convolution_pointwise
    packed: dict[tuple, torch.Tensor] = {}

    def kernel(x):
        x = (x.unsqueeze(2) if one_d else x).contiguous(memory_format=torch.channels_last)
        shape = tuple(x.shape)
        if shape not in packed:
            packed.clear()
            packed[shape] = torch.ops.mkldnn._reorder_convolution_weight(
                w, pad, stride, dilation, n.groups, list(shape))
        y = conv(x, packed[shape], b, pad, stride, dilation, n.groups, "none", [], "")
        return y.squeeze(2) if one_d else y
    return kernel


def _empty_steps(T: int, step: torch.Tensor, keep_layout: bool) -> torch.Tensor:
    """An uninitialised [T, *step.shape]; with ``keep_layout`` every step has ``step``'s memory
    layout (a neuron after a channels-last convolution writes channels-last spikes), else it
    is contiguous."""
    like = torch.empty_like(step, memory_format=torch.preserve_format if keep_layout
                            else torch.contiguous_format)
    return torch.empty_strided((T, *like.shape), (like.numel(), *like.stride()),
                               dtype=like.dtype, device=like.device)


def _align(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """[B, *s] -> [B, 1.., *s] so that per-sample shapes broadcast like numpy's."""
    extra = ndim - (x.dim() - 1)
    return x.reshape(x.shape[0], *([1] * extra), *x.shape[1:]) if extra > 0 else x


# ----------------------------------------------------------------------------- the plan

#: nodes with state over time, or that pass values through (evaluated in run(), not by a kernel)
_SPECIAL = (ir.Output, ir.Input, ir.Neuron, ir.Delay, ir.Readout)
#: nodes whose kernel returns a new tensor, never a view of an input
_FRESH = (ir.Conv2d, ir.Linear, ir.BatchNorm, ir.Pad, ir.Scale, ir.Divide, ir.Hadamard,
          ir.SpikeMatMul, ir.AddressedAccumulate, ir.Gather)


@dataclass
class Plan:
    """How a time-folded run walks a graph (module doc): ``units`` in evaluation order, each
    (cyclic, nodes in topological order); ``static``: nodes whose value is the same at every
    step (computed once on [B, ...]); ``last_use``: per node, the index of the last unit that
    reads its value (after which a run without ``record`` frees it); ``overwrite``: neurons
    that a run without ``record`` lets write their spikes over their input's sequence (a new
    tensor, not static, that no other node reads), which saves allocating, and on large
    batches page-faulting, a [T, B, ...] tensor per neuron."""

    units: list[tuple[bool, list[ir.Node]]]
    static: set[str]
    last_use: dict[str, int]
    overwrite: set[str] = field(default_factory=set)

    @property
    def cyclic_nodes(self) -> int:
        return sum(len(u) for c, u in self.units if c)


def _sccs(names: list[str], succ: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    for root in names:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        work = [(root, iter(succ[root]))]
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(succ[w])))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                u = work[-1][0]
                low[u] = min(low[u], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                out.append(comp)
    return out


def plan(graph: Graph, order: list[ir.Node] | None = None) -> Plan:
    """The time-folded evaluation plan of ``graph`` (module doc). Every edge counts here,
    including a Delay's input, so a Delay outside every cycle comes after what it delays and a
    cycle through Delays becomes one unit stepped through time."""
    order = order if order is not None else graph.topological_order()
    names = [n.name for n in order]
    pos = {nm: i for i, nm in enumerate(names)}
    succ: dict[str, list[str]] = {nm: [] for nm in names}
    for n in order:
        for i in n.inputs:
            if i in succ:
                succ[i].append(n.name)
    comps = _sccs(names, succ)
    comp_of = {nm: k for k, c in enumerate(comps) for nm in c}
    cyclic = [len(c) > 1 or c[0] in succ[c[0]] for c in comps]
    csucc: list[set[int]] = [set() for _ in comps]
    indeg = [0] * len(comps)
    for a in names:
        for b in succ[a]:
            ka, kb = comp_of[a], comp_of[b]
            if ka != kb and kb not in csucc[ka]:
                csucc[ka].add(kb)
                indeg[kb] += 1
    heap = [(min(pos[nm] for nm in c), k) for k, c in enumerate(comps) if not indeg[k]]
    heapq.heapify(heap)
    units: list[tuple[bool, list[ir.Node]]] = []
    while heap:
        _, k = heapq.heappop(heap)
        units.append((cyclic[k], [graph[nm] for nm in sorted(comps[k], key=pos.get)]))
        for j in csucc[k]:
            indeg[j] -= 1
            if not indeg[j]:
                heapq.heappush(heap, (min(pos[nm] for nm in comps[j]), j))
    static: set[str] = set()
    last_use: dict[str, int] = {}
    for u, (cyc, nodes) in enumerate(units):
        for n in nodes:
            for i in n.inputs:
                last_use[i] = u
            if cyc:
                continue
            if isinstance(n, ir.Input):
                if n.static:
                    static.add(n.name)
            elif (not isinstance(n, _SPECIAL) or isinstance(n, ir.Output)) and n.inputs \
                    and all(i in static for i in n.inputs):
                static.add(n.name)
    overwrite = {n.name for cyc, nodes in units if not cyc for n in nodes
                 if isinstance(n, ir.Neuron) and n.inputs[0] not in static
                 and isinstance(graph[n.inputs[0]], _FRESH) and succ[n.inputs[0]] == [n.name]}
    return Plan(units, static, last_use, overwrite)


def _folded_peak(graph: Graph, p: Plan, T: int, batch: int, itemsize: int) -> int:
    """Bytes of the values a time-folded run without ``record`` holds at once, at its peak:
    the live sequences ([T, B, ...], static ones [B, ...]) plus the largest new one (the
    temporaries of a kernel or a neuron's loop)."""
    def size(nm):
        return nbytes(graph[nm].shape, itemsize) * batch * (1 if nm in p.static else T)
    live, held, peak = {}, 0, 0
    for u, (_, nodes) in enumerate(p.units):
        new = sum(size(n.name) for n in nodes)
        for n in nodes:
            live[n.name] = size(n.name)
        held += new
        peak = max(peak, held + new)
        for n in nodes:
            for nm in (n.name, *n.inputs):
                if nm in live and p.last_use.get(nm, -1) <= u:
                    held -= live.pop(nm)
    return peak


class Simulator:
    """Build once per graph, dtype and device; call :meth:`run` for each input batch.
    ``fold``: evaluate stateless nodes once over all T steps (module doc); False walks the
    whole graph step by step. ``device``: where it computes ('cpu', 'cuda[:N]'; None: torch's
    default device). float64 runs the kernels PyTorch eager runs in float64 (exact parity);
    float32 on a CPU runs convolutions in oneDNN on channels-last activations
    (:func:`_onednn_conv`), faster and equal up to float32 rounding."""

    def __init__(self, graph: Graph, dtype: str = "float64", fold: bool = True, device=None):
        if dtype not in DTYPES:
            raise SnnccError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        self.graph = graph.verify(allow_dead=True)
        self.dtype = DTYPES[dtype]
        self.device = resolve_device(device)
        self.onednn = (self.dtype == torch.float32 and self.device.type == "cpu"
                       and torch.backends.mkldnn.is_available())
        self.fold = bool(fold)
        self.order = graph.topological_order()
        self.plan = plan(self.graph, self.order)
        self._params: dict[str, tuple] = {}  # neuron -> (parameter tensors, what they skip)
        self._walks: dict[tuple, bool] = {}  # (T, B, record) -> fold (memory checked)
        self._kernels = {n.name: self._kernel(n) for n in self.order}

    # ------------------------------------------------------------------ kernels
    def _kernel(self, n: ir.Node):
        """The node's per-step function of its inputs ``[B, ...]`` (B may be T * B: every
        kernel treats axis 0 as independent samples)."""
        dt, dev = self.dtype, self.device
        if isinstance(n, ir.Conv2d):  # Conv1d included
            conv = F.conv1d if isinstance(n, ir.Conv1d) else F.conv2d
            w, b = _t(n.weight, dt, dev), _t(n.bias, dt, dev)
            if self.onednn:
                return _onednn_conv(n, w, b)
            return lambda x: conv(x, w, b, n.stride, n.padding, n.dilation, n.groups)
        if isinstance(n, ir.Linear):
            w, b = _t(n.weight, dt, dev), _t(n.bias, dt, dev)
            return lambda x: F.linear(x, w, b)
        if isinstance(n, ir.BatchNorm):
            p = [_t(getattr(n, a), dt, dev) for a in ("mean", "var", "weight", "bias")]
            ax = n.axis + 1

            def bn(x):
                y = F.batch_norm(x.movedim(ax, 1), p[0], p[1], p[2], p[3], False, 0.0, n.eps)
                return y.movedim(1, ax)
            return bn
        if isinstance(n, ir.MaxPool2d):
            return lambda x: F.max_pool2d(x, n.kernel_size, n.stride, n.padding, n.dilation)
        if isinstance(n, ir.AvgPool2d):
            return lambda x: F.avg_pool2d(x, n.kernel_size, n.stride, n.padding,
                                          count_include_pad=n.count_include_pad)
        if isinstance(n, ir.Pad):
            c, h, w = n.shape
            l, r, t, b = n.pads
            border = torch.ones((1, c, h, w), dtype=dt, device=dev)
            border[..., t:h - b, l:w - r] = 0
            border = border * _t(n.value, dt, dev).reshape(-1, 1, 1)
            return lambda x: F.pad(x, (l, r, t, b)) + border
        if isinstance(n, ir.Reshape):
            return lambda x: x.reshape(x.shape[0], *n.target)
        if isinstance(n, ir.Flatten):
            k = len(self.graph[n.inputs[0]].shape)
            return lambda x: x.flatten(n.start % k + 1, n.end % k + 1)
        if isinstance(n, ir.Transpose):
            perm = (0, *(p + 1 for p in n.perm))
            return lambda x: x.permute(perm)
        if isinstance(n, ir.Gather):
            index = torch.tensor(n.index, device=dev)
            axis = n.axis % len(n.shape) + 1
            return lambda x: x.index_select(axis, index)
        if isinstance(n, ir.Add):
            k = len(n.shape)

            def add(*xs):
                y = _align(xs[0], k)
                for x in xs[1:]:
                    y = y + _align(x, k)
                return y
            return add
        if isinstance(n, ir.Scale):
            f = _t(n.factor, dt, dev)
            return lambda x: x * f
        if isinstance(n, ir.Divide):
            d = _t(n.divisor, dt, dev)
            return lambda x: x / d
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
        if isinstance(n, _SPECIAL):
            return None  # stateful or pass-through: handled in run()
        raise SnnccError(f"the simulator has no kernel for {n.op}", node=n.name, path=n.path)

    # ------------------------------------------------------------------ neurons
    def _neuron_state(self, n: ir.Neuron, batch: int, like: torch.Tensor | None = None) -> dict:
        """A neuron's state at the start of a run: its parameters, which of them change
        nothing (alpha = 1, gamma = 1, beta = 0, v_reset = 0) and membrane v[-1] (in the memory
        layout of ``like``, one step of its input, when given: elementwise kernels on operands
        of one layout are several times faster than on mixed ones)."""
        if n.name not in self._params:  # once per simulator
            p = {a: _t(v, self.dtype, self.device) for a, v in n.params().items()}
            skip = {"alpha": bool(np.all(n.alpha == 1)), "gamma": bool(np.all(n.gamma == 1)),
                    "beta": bool(np.all(n.beta == 0)),
                    "zero_reset": bool(np.all(n.v_reset == 0))}
            self._params[n.name] = p, skip
        p, skip = self._params[n.name]
        v = p["v_init"].expand(batch, *n.shape)
        return {"p": p, "skip": skip,
                "v": v.clone() if like is None else torch.empty_like(like).copy_(v)}

    def _neuron_step(self, n: ir.Neuron, state: dict, x: torch.Tensor, out=None,
                     reuse: bool = False):
        """One step of :func:`snncc.neuron.step`: the same operations in the same order, so
        the same numbers, without its multiplications by 1 and additions of 0 (``h + 0`` and
        ``h * (1 - s) + 0 * s`` differ from ``h`` only in the sign of a zero, which no
        comparison or later sum sees), and with the comparison written straight into spikes of
        h's dtype (torch's bool tensors are several times slower); returns (spikes, membrane
        v[t]); the spikes are written into ``out`` when given. ``reuse``: nothing else holds
        the previous membrane (no record), so the new one is computed in its memory (no
        allocation: ~25 % of a large neuron's step)."""
        p, skip, v = state["p"], state["skip"], state["v"]
        gx = x if skip["gamma"] else p["gamma"] * x
        if skip["alpha"]:
            h = v.add_(gx) if reuse else v + gx
        else:
            h = (v.mul_(p["alpha"]) if reuse else p["alpha"] * v).add_(gx)
        if not skip["beta"]:
            h.add_(p["beta"])
        cmp = torch.ge if n.cmp == nrn.CMP_GE else torch.gt
        s = cmp(h, p["theta"], out=torch.empty_like(h) if out is None else out)  # nrn.fire
        if n.reset != nrn.RESET_HARD:  # h - theta * s in one kernel (theta * s is exact)
            v = h.addcmul_(p["theta"], s, value=-1)
        else:  # h * (1 - s) as h - h * s (one kernel; equal up to the sign of a zero)
            v = h.addcmul_(h, s, value=-1)
            if not skip["zero_reset"]:
                v.add_(p["v_reset"] * s)
        state["v"] = v
        return s, v

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
            x = torch.as_tensor(np.asarray(inputs[node.name]), dtype=self.dtype,
                                device=self.device)
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

    def _zeros(self, *shape: int) -> torch.Tensor:
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    def _initial_state(self, nodes, B: int) -> dict:
        """Neuron states, Delay FIFOs (``steps`` zeros) and Readout sums at the start."""
        state: dict[str, object] = {}
        for n in nodes:
            if isinstance(n, ir.Neuron):
                state[n.name] = self._neuron_state(n, B)
            elif isinstance(n, ir.Delay):
                state[n.name] = deque(self._zeros(B, *n.shape) for _ in range(n.steps))
            elif isinstance(n, ir.Readout):
                state[n.name] = self._zeros(B, *n.shape)
        return state

    def _step_node(self, n: ir.Node, t: int, args: list, state: dict, xs: dict,
                   rec) -> torch.Tensor:
        """Node ``n``'s value at step t from its inputs' values at step t (the step-by-step
        walk, shared by the unfolded run and the cycles of a folded one). ``rec`` holds the
        run's membrane (None without record) and addition lists."""
        if isinstance(n, ir.Input):
            x = xs[n.name]
            return x if n.static else x[t]
        if isinstance(n, ir.Neuron):
            y, v = self._neuron_step(n, state[n.name], args[0],
                                     reuse=rec.membrane is None)
            if rec.membrane is not None:
                rec.membrane[n.name].append(v)
            return y
        if isinstance(n, ir.Delay):
            return state[n.name][0]
        if isinstance(n, ir.Readout):
            state[n.name] = state[n.name] + args[0]
            return state[n.name] / (t + 1)
        if isinstance(n, ir.Output):
            return args[0]
        y = self._kernels[n.name](*args)
        if isinstance(n, ir.AddressedAccumulate):
            rec.additions[n.name].append(addressed_additions(args, n.spike_operand))
        return y

    def run(self, inputs, T: int | None = None, record=False) -> SimResult:
        """Simulate. ``inputs``: an array (single input) or a dict by Input name; static inputs
        are ``[B, ...]``, sequences ``[T, B, ...]``. ``T`` defaults to the sequence length or
        the graph's ``meta['T']``. ``record=True`` keeps every node's output and every
        membrane, ``record=SPIKES`` the neurons' spikes and the outputs, a set of node names
        those nodes' outputs."""
        if isinstance(record, (set, frozenset)):
            unknown = sorted(record - set(self.graph.nodes))
            if unknown:
                raise SnnccError(f"record names node(s) not in the graph: {unknown[:8]}")
            record = frozenset(record)
        with torch.inference_mode():  # no autograd bookkeeping on any tensor
            return self._run(inputs, T, record)

    def _run(self, inputs, T: int | None, record) -> SimResult:
        xs, T, B = self._prepare_inputs(inputs, T, None)
        T = int(T if T is not None else self.graph.meta.get("T", 1))
        if T < 1:
            raise SnnccError(f"T must be >= 1, got {T}")
        fold = self._walks.get((T, B, record))
        if fold is None:  # checked once per (T, batch, record)
            fold = self.fold
            if fold and record is not True and not _fits(self.graph, T, B, record,
                                                         self.dtype.itemsize, True, self.plan):
                fold = False  # the step-by-step walk holds one step of every node instead
            require_run_fits(self.graph, T, B, record, self.dtype.itemsize, fold, self.plan)
            self._walks[T, B, record] = fold
        rec = _Record(self.order, record)
        if fold:
            self._run_folded(xs, T, B, rec)
        else:
            self._run_stepped(xs, T, B, rec)

        def stack(d):
            return {k: (v if torch.is_tensor(v) else torch.stack(v)).cpu().numpy()
                    for k, v in d.items() if len(v)}
        seq = stack(rec.out_seq)
        return SimResult(T=T, outputs={k: v[-1] for k, v in seq.items()}, output_sequence=seq,
                         trace=stack(rec.trace), membrane=stack(rec.membrane or {}),
                         additions={k: np.asarray(v) for k, v in rec.additions.items()})

    def _run_stepped(self, xs: dict, T: int, B: int, rec: "_Record") -> None:
        """The whole graph step by step: at each t every node in topological order."""
        state = self._initial_state(self.order, B)
        for t in range(T):
            val: dict[str, torch.Tensor] = {}
            for n in self.order:
                args = [val[i] for i in n.inputs] if not n.breaks_cycles else []
                y = val[n.name] = self._step_node(n, t, args, state, xs, rec)
                if isinstance(n, ir.Output):
                    rec.out_seq[n.name].append(y)
                if n.name in rec.trace:
                    rec.trace[n.name].append(y)
            for n in self.order:
                if isinstance(n, ir.Delay):
                    q = state[n.name]
                    q.popleft()
                    q.append(val[n.inputs[0]])

    def _run_folded(self, xs: dict, T: int, B: int, rec: "_Record") -> None:
        """The plan's units in order (module doc); values are [T, B, ...], static ones
        [B, ...]."""
        static = self.plan.static
        vals: dict[str, torch.Tensor] = {}

        def seq(nm: str) -> torch.Tensor:  # [T, B, ...]
            v = vals[nm]
            return v.unsqueeze(0).expand(T, *v.shape) if nm in static else v

        def folded(nm: str) -> torch.Tensor:  # [T * B, ...]
            return seq(nm).reshape(T * B, *vals[nm].shape[1 if nm in static else 2:])

        for u, (cyclic, nodes) in enumerate(self.plan.units):
            if cyclic:
                self._run_cycle(nodes, vals, seq, xs, T, B, rec)
            else:
                (n,) = nodes
                nm = n.name
                if isinstance(n, ir.Input):
                    vals[nm] = xs[nm]
                elif isinstance(n, ir.Output):
                    vals[nm] = vals[n.inputs[0]]
                    rec.out_seq[nm] = seq(nm)
                elif isinstance(n, ir.Neuron):
                    x = seq(n.inputs[0])
                    st = self._neuron_state(n, B, x[0] if self.onednn else None)
                    # (an input that is recorded keeps its values)
                    spikes = (x if nm in self.plan.overwrite and n.inputs[0] not in rec.trace
                              else _empty_steps(T, x[0], self.onednn))
                    for t in range(T):
                        _, v = self._neuron_step(n, st, x[t], spikes[t],
                                                 reuse=rec.membrane is None)
                        if rec.membrane is not None:
                            rec.membrane[nm].append(v)
                    vals[nm] = spikes
                elif isinstance(n, ir.Delay):
                    k = min(n.steps, T)
                    vals[nm] = torch.cat([self._zeros(k, B, *n.shape),
                                          seq(n.inputs[0])[:T - k]])
                elif isinstance(n, ir.Readout):
                    x, acc, out = seq(n.inputs[0]), self._zeros(B, *n.shape), []
                    for t in range(T):
                        acc = acc + x[t]
                        out.append(acc / (t + 1))
                    vals[nm] = torch.stack(out)
                elif nm in static:
                    vals[nm] = self._kernels[nm](*(vals[i] for i in n.inputs))
                else:
                    y = self._kernels[nm](*(folded(i) for i in n.inputs))
                    vals[nm] = y.reshape(T, B, *y.shape[1:])
                if isinstance(n, ir.AddressedAccumulate):
                    s = seq(n.inputs[n.spike_operand]).reshape(T, -1)
                    row = addressed_row(self.graph[n.inputs[1 - n.spike_operand]].shape,
                                        n.spike_operand)
                    counts = s.sum(dim=1, dtype=torch.float64)  # a count c: c additions
                    rec.additions[nm] = [int(c) * row for c in counts.tolist()]
            for n in nodes:
                if n.name in rec.trace:
                    rec.trace[n.name] = seq(n.name).contiguous()
            for n in nodes:
                for nm in (n.name, *n.inputs):  # free what no later unit reads
                    if nm in vals and self.plan.last_use.get(nm, -1) <= u:
                        del vals[nm]

    def _run_cycle(self, nodes, vals, seq, xs, T: int, B: int, rec: "_Record") -> None:
        """A cycle through Delays: its nodes step by step, reading outside inputs at step t."""
        inside = {n.name for n in nodes}
        outside = {i: seq(i) for n in nodes for i in n.inputs if i not in inside}
        state = self._initial_state(nodes, B)
        hist: dict[str, list] = {n.name: [] for n in nodes}
        for t in range(T):
            val: dict[str, torch.Tensor] = {}

            def at(i):
                return val[i] if i in inside else outside[i][t]
            for n in nodes:
                args = [at(i) for i in n.inputs] if not n.breaks_cycles else []
                y = val[n.name] = self._step_node(n, t, args, state, xs, rec)
                hist[n.name].append(y)
            for n in nodes:
                if isinstance(n, ir.Delay):
                    q = state[n.name]
                    q.popleft()
                    q.append(at(n.inputs[0]))
        for n in nodes:
            vals[n.name] = torch.stack(hist[n.name])
            if isinstance(n, ir.Output):
                rec.out_seq[n.name] = vals[n.name]


#: ``record=SPIKES``: keep only the neurons' spikes and the outputs over T (what a parity
#: check compares), not every node's value and membrane (15M Meta-SpikeFormer at 224x224, batch
#: 2: 0.7 GB of spikes against 3.4 GB of traces and 1.6 GB of neuron states).
SPIKES = "spikes"


def _recorded(n: ir.Node, record) -> bool:
    """Whether a run with ``record`` (False, True, :data:`SPIKES` or a set of node names) keeps
    ``n``'s trace."""
    if record == SPIKES:
        return isinstance(n, (ir.Neuron, ir.Output))
    if isinstance(record, (set, frozenset)):
        return n.name in record
    if record not in (True, False):
        raise SnnccError(f"record must be True, False, {SPIKES!r} or a set of node names, "
                         f"got {record!r}")
    return record


class _Record:
    """What a run collects besides values: traces (``record``: every node's, with
    :data:`SPIKES` the neurons' and outputs', or a set of names' own), membranes
    (``record=True``), the outputs' sequences and the additions of AddressedAccumulate
    nodes."""

    def __init__(self, order, record):
        self.trace = {n.name: [] for n in order if _recorded(n, record)}
        self.membrane = ({n.name: [] for n in order if isinstance(n, ir.Neuron)}
                         if record is True else None)
        self.additions = {n.name: [] for n in order if isinstance(n, ir.AddressedAccumulate)}
        self.out_seq = {n.name: [] for n in order if isinstance(n, ir.Output)}


class FixedPointSimulator(Simulator):
    """The reference simulator in Loihi 2's fixed-point arithmetic (:mod:`snncc.fixed_point`):
    the same walks, with the encoders, on-chip convolutions and neurons replaced by their
    integer forms (values travel as float64 holding integers, exact below 2^53; neuron state is
    int64).

    After each :meth:`run`, ``peaks`` holds per on-chip node the largest magnitude seen:
    neurons ``{"v": |h| (V units, before the spike decision), "input": |a_in << 6|}``,
    convolutions ``{"acc": |W x|}`` before the 24-bit wrap."""

    def __init__(self, graph: Graph, fold: bool = True):
        self.view = fxp.fixed_point_view(graph)
        self.peaks: dict[str, dict[str, int]] = {}
        super().__init__(graph, "float64", fold)

    def run(self, inputs, T: int | None = None, record=False):
        self.peaks = {}
        return super().run(inputs, T, record)

    def _peak(self, node: str, what: str, x: torch.Tensor) -> None:
        if x.numel():
            p = self.peaks.setdefault(node, {})
            p[what] = max(p.get(what, 0), int(x.abs().max()))

    def _kernel(self, n: ir.Node):
        if n.name in self.view.encoders:
            bits = self.view.encoders[n.name]
            f = torch.as_tensor(np.asarray(n.factor), dtype=torch.float64)
            return lambda x: fxp.encode(x, f, bits)
        if isinstance(n, ir.Conv2d) and n.name in self.view.chip:
            conv = super()._kernel(node_with(n, bias=None))
            b = 0.0 if n.bias is None else torch.as_tensor(
                n.bias.reshape(-1, *[1] * (len(n.shape) - 1)), dtype=torch.float64)

            def wrapped(x):
                y = conv(x)
                self._peak(n.name, "acc", y)
                return fxp.signed_wrap24(y) + b
            return wrapped
        return super()._kernel(n)

    def _neuron_state(self, n: ir.Neuron, batch: int, like=None) -> dict:
        if n.name not in self.view.neurons:  # on the host: floating point
            return super()._neuron_state(n, batch, like)
        return fxp.neuron_state(self.view.neurons[n.name], n.shape, batch)

    def _neuron_step(self, n: ir.Neuron, state: dict, x: torch.Tensor, out=None,
                     reuse: bool = False):
        """:func:`snncc.fixed_point.neuron_step`; returns (spikes, v[t] / 64 as float64: the
        membrane in the IR's units); the spikes are written into ``out`` when given (``reuse``
        is the float kernel's). A neuron on the host steps in floating point."""
        if n.name not in self.view.neurons:
            return super()._neuron_step(n, state, x, out, reuse)
        s, v, a_in, h = fxp.neuron_step(state, x, n.reset)
        self._peak(n.name, "input", a_in)
        self._peak(n.name, "v", h)
        s = s.to(torch.float64) if out is None else out.copy_(s)
        return s, v.to(torch.float64) / 2 ** nrn.LOIHI2_ACT_SHIFT


#: Python and torch overhead of one queued tensor in a Delay's FIFO (measured: ~0.3 KB)
_TENSOR_OVERHEAD = 512


def estimate_parts(graph: Graph, T: int, batch: int, record=False,
                   itemsize: int = 8, fold: bool = True, plan_: Plan | None = None
                   ) -> dict[str, int]:
    """Memory a run of ``graph`` takes beyond its inputs, estimated from the declared shapes
    before anything is allocated, by part: one step of every node, neuron states, each delay's
    FIFO (``steps`` tensors), the outputs' sequences (T steps) and the traces ``record`` keeps
    over T (every node's and membrane's, with :data:`SPIKES` the neurons' and outputs', or
    those of a set of names;
    twice for what steps: lists and stacked arrays; once for what a time-folded run computes
    over T at once). A time-folded run (``fold``) without ``record=True`` also holds the
    sequences [T, B, ...] of the values alive at once (:class:`Plan`); with it the traces hold
    them."""
    parts = {"one step of every node": 0}
    p = (plan_ if plan_ is not None else plan(graph)) if fold else None
    stepped = ({n.name for cyc, nodes in p.units if cyc for n in nodes} if fold
               else set(graph.nodes))
    for n in graph.nodes.values():
        size = nbytes(n.shape, itemsize) * batch
        parts["one step of every node"] += size
        if _recorded(n, record):  # stepped: T tensors, then stacked; folded: one [T, B, ...]
            parts["traces"] = parts.get("traces", 0) + (
                T * (2 * size + _TENSOR_OVERHEAD) if n.name in stepped else T * size)
        if isinstance(n, ir.Neuron):
            parts["neuron states"] = parts.get("neuron states", 0) + size * (
                1 + 2 * T if record is True else 1)
        elif isinstance(n, ir.Delay):
            parts[f"Delay '{n.name}' of {n.steps} steps"] = n.steps * (size + _TENSOR_OVERHEAD)
        elif isinstance(n, ir.Output):
            parts["output sequences"] = parts.get("output sequences", 0) + 2 * T * size
    if fold and record is not True:
        parts["time-folded values alive at once"] = _folded_peak(graph, p, T, batch, itemsize)
    return parts


def estimate_bytes(graph: Graph, T: int, batch: int, record=False,
                   itemsize: int = 8, fold: bool = True) -> int:
    """The total of :func:`estimate_parts`."""
    return sum(estimate_parts(graph, T, batch, record, itemsize, fold).values())


def _fits(graph, T, batch, record, itemsize, fold, plan_=None) -> bool:
    return sum(estimate_parts(graph, T, batch, record, itemsize, fold, plan_).values()) \
        <= max_memory()


def require_run_fits(graph: Graph, T: int, batch: int, record=False,
                     itemsize: int = 8, fold: bool = False, plan_: Plan | None = None) -> None:
    """Refuse (ResourceError) a run whose estimate exceeds the memory budget, naming its
    largest part."""
    parts = estimate_parts(graph, T, batch, record, itemsize, fold, plan_)
    big = max(parts, key=parts.get)
    require_fits(sum(parts.values()),
                 f"simulating '{graph.name}' for T={T} on a batch of {batch}"
                 + ({True: " with every node's trace", SPIKES: " with the neurons' spikes"}
                    .get(record, "") if not isinstance(record, (set, frozenset))
                    else f" with {len(record)} nodes' traces")
                 + f" (largest part: {big}, {fmt_bytes(parts[big])})")


def addressed_additions(operands, spike_operand: int) -> int:
    """Row additions of ``S @ R`` (spike_operand 0) or ``R @ S`` (1) done by addressing:
    every spike selects one row (column) of the other operand, so additions = spikes x row
    length, summed over the batch (a count c selects its row c times)."""
    s, r = operands[spike_operand], operands[1 - spike_operand]
    return int(s.sum(dtype=torch.float64)) * addressed_row(r.shape, spike_operand)


def addressed_row(other_shape, spike_operand: int) -> int:
    """Additions one spike makes in ``S @ R`` (spike_operand 0: a row of R) or ``R @ S`` (1: a
    column of R), from the shape of the other operand R."""
    return int(other_shape[-1] if spike_operand == 0 else other_shape[-2])


def simulate(graph: Graph, inputs, T: int | None = None, dtype: str = "float64",
             record=False, arithmetic: str | None = None, fold: bool = True,
             device=None) -> SimResult:
    """One-shot convenience: ``Simulator(graph, dtype, fold, device).run(inputs, T, record)``;
    ``arithmetic="loihi2"`` runs a quantized graph in Loihi 2's fixed-point arithmetic
    (:class:`FixedPointSimulator`, which ignores ``dtype`` and computes on torch's default
    device). By default a graph quantized by ``quantize_for_loihi2`` runs in that arithmetic,
    any other in floats."""
    if arithmetic is None:
        arithmetic = "loihi2" if "loihi2" in graph.meta else "float"
    if arithmetic == "loihi2":
        if device is not None and resolve_device(device) != torch.get_default_device():
            raise DeviceError("the Loihi 2 fixed-point simulator computes on torch's default "
                              f"device only, not {str(device)!r}")
        return FixedPointSimulator(graph, fold).run(inputs, T, record)
    if arithmetic != "float":
        raise SnnccError(f"arithmetic must be 'float' or 'loihi2', got {arithmetic!r}")
    return Simulator(graph, dtype, fold, device).run(inputs, T, record)


def run_snnir(artifact, inputs, T, dtype: str = "float64", device=None):
    """Runner of the ``sim`` target: (outputs, the neurons' spikes and the outputs over T) of a
    ``.snnir`` file, simulated in ``dtype`` on ``device``."""
    from .serialize import load

    res = simulate(load(artifact), inputs, T, dtype=dtype, record=SPIKES, device=device)
    return res.outputs, res.trace
