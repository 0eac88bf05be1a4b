"""The torch.fx front-end: a PyTorch spiking network and an example input -> snncc IR.

1. **Concrete tracing.** A ``torch.fx`` tracer whose leaves are the spiking neurons, torch's
   layers and the layers a library's adapter declares leaves runs every op while it records
   it: on shaped tensors of the example input's shape (:mod:`.shaped`: shapes and dtypes, no
   values), or on the example input itself when the model's code reads activation values.
   Ops on constants only compute real values (they become the graph's constants). What is
   library-specific (which modules are neurons, their canonical
   parameters, step modes, state) comes from :mod:`snncc.frontends.adapters`; this module knows
   no library. Shape queries (``x.shape``, ``len(x)``, iterating a tensor) return plain Python
   values, so code that reads shapes or loops over time traces (loops unroll).
2. **Time layouts.** Every traced tensor is ``[frame..., *per-step shape]`` where the frame is
   ``[T, B]``, ``[T*B]`` (after ``x.flatten(0, 1)``), ``[B]`` (a static value, one step of an
   unrolled loop, or the mean over time), ``[1, B]`` (a static value before ``.repeat(T, ...)``)
   or ``[B, T]`` (DVS inputs). IR nodes are per-step ops on the per-step shape; reshapes that
   only move between frames are no-ops.
3. **Lazy IR.** Each traced value becomes an :class:`Expr`; the graph is built from the outputs
   backwards, so only what the output needs is emitted, and structurally identical nodes are
   merged, so the T copies of an unrolled loop body become one.
4. **Loops over time** (single-step neurons, as in SNASNet): a single-step neuron's call with the
   state of its call at step t-1 (or, when the module keeps its state, its t-th call) is its
   step t. A value computed at step s and used at a later step t becomes a ``Delay(t - s)`` of
   the node that computes the same program site (module, Python call stack) in the last step,
   which closes the loop's cycles; an op that combines such a value with a static one is
   evaluated in the consuming step. At t = 0 a delay gives 0, which is how such models start
   (they add nothing from "step -1"). The per-step computation must be the same at every step
   t >= 1 (checked); a sum over all steps divided by T becomes a ``Readout``, a ``torch.stack``
   of the steps a sequence. What does differ from step to step (a list's module called at the
   step of its index, ``self.bntt[t](x)``; a constant with a time axis, TEBN's scale per step)
   is every step's value computed at every step, the step's own picked by the spikes of a step
   counter (:meth:`_Builder.step_selected`).

Anything else raises :class:`~snncc.errors.UnsupportedError` naming every unsupported op with its
module path, e.g. ``module 'blocks.0.attn': op 'torch.softmax' is not supported``.
"""

from __future__ import annotations

import collections
import copy
import functools
import hashlib
import math
import operator
import os
import re
import string
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair, _single, _triple

from snncc import ir
from snncc import neuron as cn
from snncc.errors import IRError, SnnccError, UnsupportedError
from snncc.graph import Graph
from snncc.limits import freeing_what_it_leaves
from snncc.models import (attributes_kept, compiled_functions_run_eagerly,
                          returned_items)
from snncc.passes.common import is_power_of_two

from .adapters import (STATE_KEPT, STEP_MULTI, Adapter, Integrator, NeuronCircuit,
                       adapter_for)
from .adapters import reset_state
from .adapters.circuits import running_sum
from .shaped import ShapedTensor, on_broadcast_constants, release_fake_mode, shaped_like

STATIC, SEQ, READOUT = "static", "seq", "readout"
#: tensor methods and functions an operator is recorded as where its left operand is a constant
#: tensor -> the operator (a loop's first step computes on its starting state, a constant)
_OPERATOR_OF = {f"{owner}.{name}": f"operator.{op}" for owner in ("Tensor", "torch")
                for name, op in [("add", "add"), ("sub", "sub"), ("mul", "mul"), ("div", "truediv"),
                                 ("true_divide", "truediv"), ("matmul", "matmul"), ("gt", "gt"),
                                 ("lt", "lt"), ("ge", "ge"), ("le", "le")]}
#: the code of frames a site leaves out (:meth:`_ConcreteTracer._site`)
_INTERNAL_CODE = (str(Path(torch.__file__).parent) + os.sep, __file__)
#: the steps of a loop whose calls' constant operands are kept: the values a loop's state has
#: before its first step (:meth:`_Builder._start_values`), for Delays of up to that many steps
_EARLY_STEPS = 4
TB, BT, TBM, BTM, B, B1 = ("T", "B"), ("B", "T"), ("TB",), ("BT",), ("B",), ("1", "B")
#: per-sample windows folded into the batch, ``[T, B*W, ...]`` and ``[T*B*W, ...]`` (a window
#: attention's partition, SGLFormer's LocalSSA): one frame axis fewer than the tensor's leading
#: axes, as the windows are the IR value's first axis, of W where the tensor's is B*W (so a
#: tensor's axis d >= len(frame) is the IR's axis d - len(frame), as in every other frame)
TW, TWM = ("T",), ()
WINDOWED = (TW, TWM)
_LAYOUT_NAMES = {TB: "TB", BT: "BT", TBM: "T*B", BTM: "B*T", B: "B", B1: "1B", TW: "T,B*W",
                 TWM: "T*B*W"}


class _CutAt(BaseException):
    """The model called the module the graph ends before (``until``): its arguments are the
    graph's outputs. (Not an Exception: a model's own ``except Exception`` around the call
    must not swallow it.)"""

    def __init__(self, args: tuple):
        super().__init__()
        self.args_of_call = args


class _Refuse(Exception):
    """Raised by a handler for an op it cannot map; the message says why."""


# ============================================================================ concrete tracing

#: attributes a proxy answers with its value's: shape and placement, and ``requires_grad``,
#: False as in the inference it is traced for (a surrogate's ``if x.requires_grad:``)
_TENSOR_ATTRS = frozenset({"shape", "ndim", "dtype", "device", "is_cuda", "layout",
                           "requires_grad"})
#: attributes that are the tensor transposed (x.T, x.mT)
_TRANSPOSED_ATTRS = frozenset({"T", "mT", "H", "mH"})
#: the packages whose code sees a traced value as the proxy it is (isinstance of a Proxy);
#: torch.is_tensor, which the model calls, sees the tensor
_SEES_THE_PROXY = frozenset({"torch", "snncc"})


@functools.lru_cache(maxsize=4096)
def _isinstance_call_at(code, offset: int) -> bool:
    """Whether the instruction at ``offset`` of ``code`` is a call written ``isinstance(...)``
    (the source its positions span begins so)."""
    import dis
    import linecache

    ins = next((i for i in dis.get_instructions(code) if i.offset == offset), None)
    pos = getattr(ins, "positions", None)
    # (3.11 runs a specialized isinstance call inside its PRECALL instruction)
    if ins is None or not ins.opname.startswith(("CALL", "PRECALL")) or pos is None \
            or pos.lineno is None or pos.col_offset is None:
        return False
    line = linecache.getline(code.co_filename, pos.lineno)
    return line[pos.col_offset:].lstrip().startswith("isinstance(")


def _calls_isinstance(frame) -> bool:
    """Whether ``frame`` (of code outside torch and snncc, or torch.is_tensor) is calling the
    builtin ``isinstance`` now."""
    package = frame.f_globals.get("__name__", "").partition(".")[0]
    if package in _SEES_THE_PROXY and frame.f_code is not torch.is_tensor.__code__:
        return False
    return _isinstance_call_at(frame.f_code, frame.f_lasti)
#: methods (and torch functions) that read a tensor's shape, dtype or layout, not its values:
#: answered from the example's value, as Python
_SHAPE_METHODS = frozenset({"size", "dim", "ndimension", "numel", "nelement", "stride",
                            "is_contiguous", "is_floating_point", "is_complex", "is_signed",
                            "element_size", "get_device"})
_SHAPE_FUNCTIONS = frozenset({torch.numel, torch.is_floating_point, torch.is_complex})
#: methods making a tensor of the dtype and device of theirs, from their arguments alone
#: (``mem = x.new_zeros(shape)``): a tensor made in forward, as ``torch.zeros`` makes
_NEW_TENSOR_METHODS = frozenset({"new_zeros", "new_ones", "new_full", "new_empty"})
#: methods that read a tensor's values into Python
_TO_PYTHON = frozenset({"item", "tolist", "numpy", "__float__", "__int__", "__index__"})
#: methods that read only the shape and dtype of their other tensor (y.view_as(x))
_SHAPE_OF_OTHER = frozenset({"view_as", "reshape_as", "expand_as", "type_as"})
#: in-place tensor methods that change a tensor's shape or autograd state, not its memory (no
#: other tensor sees them)
_METADATA_IN_PLACE = frozenset({"unsqueeze_", "squeeze_", "transpose_", "t_", "swapaxes_",
                                "swapdims_", "detach_"})
# ops whose result may be (or share memory with) their input
_VIEW_METHODS = frozenset({
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "squeeze", "unsqueeze",
    "transpose", "permute", "t", "expand", "expand_as", "narrow", "select", "unbind", "chunk",
    "split", "contiguous", "detach", "swapaxes", "swapdims", "movedim", "diagonal",
    "as_strided", "unfold", "__getitem__"})
_VIEW_FUNCTIONS = frozenset({
    operator.getitem, torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze,
    torch.transpose, torch.permute, torch.narrow, torch.select, torch.chunk, torch.split,
    torch.unbind, torch.movedim, torch.swapaxes, torch.t, torch.detach, F.dropout,
    getattr})  # x.data, x.T, ...
_VIEW_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.modules.dropout._DropoutNd)
#: ops returning views of disjoint pieces of their input, one per item (by method name and
#: function): an item shares no memory with its siblings
_PIECES = frozenset({"chunk", "split", "unbind", "tensor_split", "split_with_sizes",
                     torch.chunk, torch.split, torch.unbind, torch.tensor_split})
#: ops returning several new tensors (values and indices), none a view
_FRESH_ITEMS = frozenset({"topk", "sort", "max", "min", "kthvalue", "median", "mode", "aminmax",
                          torch.topk, torch.sort, torch.max, torch.min, torch.kthvalue,
                          torch.median, torch.mode, torch.aminmax, torch.var_mean,
                          torch.std_mean})


def _defaults_after_input(model: nn.Module) -> dict:
    """The parameters of ``model.forward`` after its input that have defaults, at those values:
    the model is called with its input alone. fx would make each a placeholder, which the
    model's ``if hook is not None`` took for a value given (Spike-Driven Transformer's
    ``forward(x, hook=None)``)."""
    import inspect

    params = list(inspect.signature(model.forward).parameters.values())[1:]
    return {p.name: p.default for p in params
            if p.default is not inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _refuse_hooks(m: nn.Module, path: str) -> None:
    """Refuse a leaf or root module with forward hooks: the graph has its ``forward`` only (a
    hook that scales the output was left out, without a word). Hooks of the modules traced
    through are traced with them; torch.nn.utils.prune's, which make the weight the graph
    reads, are no change."""
    from torch.nn.modules import module as torch_module
    from torch.nn.utils.prune import BasePruningMethod

    hooks = [*torch_module._global_forward_pre_hooks.values(),
             *torch_module._global_forward_hooks.values(),
             *m._forward_pre_hooks.values(), *m._forward_hooks.values()]
    if any(not isinstance(h, BasePruningMethod) for h in hooks):
        raise UnsupportedError(f"op '{type(m).__name__}' is not supported (it has forward hooks "
                               "(register_forward_hook, register_forward_pre_hook), which the "
                               "graph would leave out: remove them)", path=path or None)


#: the name of a tensor made in forward (not the model's) in the fx graph
_MADE_IN_FORWARD = "_snncc_constant"
_SHARED = ("an in-place op on a tensor that shares memory with another (a parameter, a buffer or "
           "a view) would change that one too: write it out of place")
_MODEL_STATE = ("an in-place op on a parameter or buffer of the model, or on a view of one, "
                "would change the model itself: write it out of place")
_RECURRENT_SPIKES = ("an in-place op on the spikes a recurrent neuron returned, which it keeps as "
                     "the state its next step reads (snnTorch's RLeaky or RSynaptic with "
                     "init_hidden=True), would change that step's recurrent input, which the "
                     "graph computes from the neuron's own spikes: write it out of place")
_STALE = ("reading a tensor that shares memory with one changed in place since (a view of it, "
          "or the tensor it views), where the graph has its value before the change: write the "
          "change out of place (y = y + x instead of y += x)")


#: torch's random draws: a graph would hold one draw made while tracing, or none, in place of
#: the model's draw at every call. Functions -> None, or where they draw only in training the
#: position and default of their ``training`` argument
_RANDOM_FUNCTIONS = {
    **dict.fromkeys((torch.rand, torch.rand_like, torch.randn, torch.randn_like, torch.randint,
                     torch.randint_like, torch.randperm, torch.bernoulli, torch.poisson,
                     torch.normal, torch.multinomial, torch._standard_gamma,
                     torch._sample_dirichlet)),
    **dict.fromkeys((F.dropout, F.dropout1d, F.dropout2d, F.dropout3d), (2, True)),
    **dict.fromkeys((F.alpha_dropout, F.feature_alpha_dropout), (2, False)),
    F.rrelu: (3, False)}
_RANDOM_METHODS = frozenset({
    "bernoulli", "bernoulli_", "uniform_", "normal_", "exponential_", "geometric_", "cauchy_",
    "log_normal_", "random_", "multinomial"})
_RANDOM = ("a random draw, as a stochastic encoder, noise or dropout in training makes: the graph "
           "would hold one draw, not the model's; encode the input outside the model and give "
           "its spikes as the input [T, B, ...] (layout TB)")


class _WhileTracing(torch.overrides.TorchFunctionMode):
    """Every torch call while the model is traced, traced tensors or not:

    * a random draw is refused where it is made, naming it, also where it reads no traced
      tensor (``torch.rand(T, *x.shape) < x``), whose result would otherwise enter the graph as
      a constant;
    * an op on a tensor made in forward and changed since by traced values (``out[t] = v``) is
      recorded on its value now (``out.mean(0)`` would otherwise run in Python on its old
      values, and enter the graph as a constant)."""

    def __init__(self, tracer: _ConcreteTracer):
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if getattr(torch.Tensor, name, None) is func and name in _RANDOM_METHODS:
            op = f"Tensor.{name}"
        elif func in _RANDOM_FUNCTIONS:
            gate = _RANDOM_FUNCTIONS[func]
            draws = gate is None or kwargs.get(
                "training", args[gate[0]] if len(args) > gate[0] else gate[1])
            op = f"torch.{name}" if draws else None
        else:
            op = None
        if op is not None:
            raise UnsupportedError(f"op '{op}' is not supported ({_RANDOM})",
                                   path=self.tracer.scope.module_path or None)
        if func is torch.einsum and any(isinstance(a, fx.Proxy) for a in _walk(args)):
            return _einsum_as_matmul(*args)
        if self.tracer.changed and name != "__get__":  # (a property: shape, dtype... as it was)
            if (name == "__setitem__" or _in_place(name) or name in _IN_PLACE_OPERATORS) \
                    and args and self.tracer.current(args[0]) is not args[0]:  # changed again
                return self.tracer.create_proxy(
                    "call_method", _IN_PLACE_OPERATORS.get(name, name), args, kwargs)
            now = fx.node.map_aggregate((args, kwargs), self.tracer.current)
            if any(a is not b for a, b in zip(_walk((args, kwargs)), _walk(now))):
                return _ConcreteProxy.__torch_function__(func, types, *now)
        return func(*args, **kwargs)


#: Python's in-place operators as the tensor methods they are
_IN_PLACE_OPERATORS = {"__iadd__": "add_", "__isub__": "sub_", "__imul__": "mul_",
                       "__itruediv__": "div_"}


def _einsum_as_matmul(equation: str, *operands):
    """``torch.einsum`` of two tensors as the permutes, reshapes and one matmul it is, on the
    proxies (whose ops the graph knows): indices in both operands and the output are batch
    axes, in both but not the output contracted, in one and the output free."""
    if len(operands) == 1 and isinstance(operands[0], (tuple, list)):
        operands = tuple(operands[0])
    if len(operands) != 2 or equation.count(",") != 1:
        raise UnsupportedError(f"op 'torch.einsum' is not supported (only two operands, as in "
                               f"'tbc,cd->tbd': {equation!r})")
    a, b = operands
    ia, ib, io = _einsum_indices(equation, a.dim(), b.dim())
    if any(len(set(i)) != len(i) for i in (ia, ib, io)) or set(io) - set(ia + ib) \
            or (set(ia) ^ set(ib)) - set(io):
        raise UnsupportedError(f"op 'torch.einsum' is not supported (an index repeated in one "
                               f"operand, or summed in one operand alone: {equation!r})")
    batch = [i for i in io if i in ia and i in ib]
    contracted = [i for i in ia if i in ib and i not in io]
    a_free, b_free = [i for i in ia if i not in ib], [i for i in ib if i not in ia]
    size = {i: n for idx, t in ((ia, a), (ib, b)) for i, n in zip(idx, t.shape)}
    if any(size[i] != n for idx, t in ((ia, a), (ib, b)) for i, n in zip(idx, t.shape)):
        raise UnsupportedError(f"op 'torch.einsum' is not supported (an index of different "
                               f"sizes in the two operands, broadcast: {equation!r})")
    k = math.prod(size[i] for i in contracted)
    m = math.prod(size[i] for i in b_free)
    a = a.permute(*(ia.index(i) for i in batch + a_free + contracted))
    a = a.reshape(*(size[i] for i in batch + a_free), k)
    if not a_free:
        a = a.unsqueeze(-2)
    b = b.permute(*(ib.index(i) for i in batch + contracted + b_free))
    # a's free axes before its last are batch axes of the matmul too: b broadcasts over them
    ones = [1] * (len(a_free) - 1) if batch and len(a_free) > 1 else []
    b = b.reshape(*(size[i] for i in batch), *ones, k, m)
    out = a @ b
    if not a_free:
        out = out.squeeze(-2)
    out = out.reshape(*(size[i] for i in batch + a_free + b_free))
    order = batch + a_free + b_free
    return out.permute(*(order.index(i) for i in io))


def _einsum_indices(equation: str, *ranks: int) -> tuple[str, ...]:
    """The operands' and the output's indices of an einsum ``equation`` on operands of
    ``ranks``, each '...' written out as letters the equation does not use (right-aligned
    across operands, as einsum broadcasts them), an implicit output (no '->') made explicit as
    torch makes it: the '...' axes, then the indices that occur once, in alphabetical order."""
    spec = equation.replace(" ", "")
    ins, _, out = spec.partition("->")
    ins = ins.split(",")
    spare = [ch for ch in string.ascii_letters if ch not in spec]
    widths = [r - (len(i) - 3) if "..." in i else 0 for i, r in zip(ins, ranks)]
    if min(widths) < 0 or max(widths) > len(spare):
        raise UnsupportedError(f"op 'torch.einsum' is not supported (its '...' does not fit "
                               f"the operands' ranks {ranks}: {equation!r})")
    ell = "".join(spare[:max(widths)])
    if "->" not in spec:
        letters = "".join(ins).replace("...", "")
        out = "..." + "".join(sorted(ch for ch in set(letters) if letters.count(ch) == 1))
    ins = [i.replace("...", ell[len(ell) - w:]) for i, w in zip(ins, widths)]
    return (*ins, out.replace("...", ell))


def _in_place(method: str) -> bool:
    """``method`` is a tensor method that changes the tensor (``mul_``, ``zero_``)."""
    return method.endswith("_") and not method.startswith("_") and method != "requires_grad_"


def _model_code_line() -> str:
    """``file:line`` of the innermost frame outside torch and snncc's front-ends: the model's
    code (or a library's it calls) that is being traced."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith((_TORCH_DIR,
                                                                      _FRONTENDS_DIR)):
        frame = frame.f_back
    return "an unknown line" if frame is None else \
        f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _running(function) -> bool:
    """``function``'s code is running: a frame of it is on the stack."""
    code, frame = getattr(function, "__code__", None), sys._getframe(1)
    while frame is not None and frame.f_code is not code:
        frame = frame.f_back
    return frame is not None


_TORCH_DIR = str(Path(torch.__file__).parent)
_FRONTENDS_DIR = str(Path(__file__).parent) + os.sep  # (the tracer, the user-model wrapper)


def _sharing_memory(node: fx.Node, root: nn.Module) -> set[fx.Node]:
    """The nodes of the trace whose tensors may share memory with ``node``'s: back through the
    views and in-place results it was made by to the tensor they view, then every view of that
    and the in-place results of each, transitively. (``reshape`` and ``contiguous`` count as
    views, which they may be.) Of a ``chunk``'s pieces, only the one on the way up: the
    others are disjoint from it."""
    base, piece = node, {}  # a call splitting its input into pieces -> the piece on the way
    while True:
        up = base.meta.get("in_place_of")
        if up is None and _views(base, root) and base.args and isinstance(base.args[0], fx.Node):
            up = base.args[0]
            if _call_target(up) in _PIECES and base.target is operator.getitem:
                piece[up] = base.args[1]
        if up is None:
            break
        base = up
    shared, stack = set(), [base]
    while stack:
        n = stack.pop()
        if n not in shared:
            shared.add(n)
            stack.extend(u for u in n.users if (_views(u, root) or u.meta.get("in_place_of") is n)
                         and (n not in piece or u.args[1] == piece[n]))
    return shared


def _call_target(node: fx.Node):
    """The method name or function a call node calls (None for other nodes)."""
    return node.target if node.op in ("call_method", "call_function") else None


def _shares_model_memory(t: torch.Tensor, root: nn.Module) -> bool:
    """For ``t.op_(y)`` on a tensor ``t`` made in forward with a traced ``y`` (STBP's
    ``sumspike = torch.zeros(...)`` then ``sumspike += spike`` at every step), recorded as
    ``t.op(y)``, which ``+=`` binds to the name: whether ``t`` is a view, a parameter or a
    buffer, which would change too. ``t`` itself keeps its value in the graph, so it may not be
    read again (``_ConcreteTracer.create_arg``)."""
    from .user_model import storage_owners

    return t._base is not None or isinstance(t, nn.Parameter) or \
        t.untyped_storage().data_ptr() in storage_owners(root)


def _item_shares_memory(item: fx.Node, root: nn.Module) -> bool:
    """Whether an item of what a call returned may share memory with the call's other items or
    inputs (a ``chunk``'s pieces do): not where the call is a library neuron, which returns
    new tensors (snnTorch's ``spk, mem = lif(x, mem)``, norse's ``z, s = cell(x, s)``), or an
    op returning new values and indices (``topk``)."""
    call = item.args[0]
    return not (call.op == "call_module"
                and _neuron_adapter(root.get_submodule(call.target)) is not None
                or _call_target(call) in _FRESH_ITEMS)


def _recurrent_spikes(node: fx.Node, root: nn.Module) -> str | None:
    """The neuron's path if ``node`` is the spikes a neuron returned (alone, or first of its
    result) that it also keeps as its next step's state
    (:meth:`Adapter.recurs_on_returned_spikes`), else None."""
    if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0 \
            and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    if node.op != "call_module":
        return None
    m = root.get_submodule(node.target)
    adapter = _neuron_adapter(m)
    return node.target if adapter is not None and adapter.recurs_on_returned_spikes(m) else None


def _views(node: fx.Node, root: nn.Module) -> bool:
    if node.op == "call_method":
        return node.target in _VIEW_METHODS
    if node.op == "call_function" and node.target is operator.getitem and node.args \
            and isinstance(node.args[0], fx.Node) \
            and isinstance(node.args[0].meta.get("value"), (tuple, list)):
        return _item_shares_memory(node, root)
    if node.op == "call_function":
        return node.target in _VIEW_FUNCTIONS
    return node.op == "call_module" and isinstance(root.get_submodule(node.target), _VIEW_MODULES)


class _ConcreteProxy(fx.Proxy):
    """A proxy that knows its value on the example input: shape queries, ``len`` and iteration
    use that value, so Python code reading shapes runs as Python."""

    def __getattr__(self, k):
        if k in _TENSOR_ATTRS:
            return getattr(self.node.meta["value"], k)
        if k in _TRANSPOSED_ATTRS:  # a value, whose shape the model's code may read
            return self.tracer.create_proxy("call_function", getattr, (self, k), {})
        return super().__getattr__(k)

    @property
    def __class__(self):
        """The class of the value to an ``isinstance(x, ...)`` call in the model's own code, so
        that ``isinstance(x, torch.Tensor)`` holds there as it does when the model runs (a
        Block branching on it returned None from neither branch). Only there: torch's C++
        code asks the same question when the model passes the proxy to a function, and a yes
        makes it read the proxy as a tensor's memory (a segmentation fault)."""
        value = self.node.meta.get("value")
        if not isinstance(value, torch.Tensor) or not _calls_isinstance(sys._getframe(1)):
            return type(self)
        return torch.Tensor if isinstance(value, ShapedTensor) else type(value)

    def __len__(self):
        return len(self.node.meta["value"])

    def __deepcopy__(self, memo):
        """``copy.deepcopy(x)`` of a traced tensor is its copy, ``x.clone()`` (fx's own
        deepcopy of a proxy copies its node out of the graph; SpikeZIP-TF's neurons deepcopy
        the value they keep from the step before)."""
        if isinstance(self.node.meta.get("value"), torch.Tensor):
            return self.clone()
        return super().__deepcopy__(memo)

    def __float__(self):
        return float(self._python_value("float"))

    def __int__(self):
        return int(self._python_value("int"))

    def __index__(self):
        return int(self._python_value("int"))

    def _python_value(self, op: str):
        """The value of a tensor computed from the model's parameters only (a constant); one
        computed from the input is refused (:meth:`_ConcreteTracer.to_number`)."""
        if self.node.meta.get("from_input"):
            self.tracer.to_number(op)
        return self.node.meta["value"]

    def __iter__(self):
        return (self[i] for i in range(len(self.node.meta["value"])))

    def __setattr__(self, name, value):
        """``y.data = v``, and ``y.data += v``, which Python ends with it (fx's attribute proxy
        has no ``__iadd__``, so ``v`` is ``y.data + v``): ``y`` reads ``v`` from then on, as every
        name for the tensor does, and the tensors sharing its memory are stale, as after an
        in-place op. Set on the proxy object, it changed nothing the graph reads: wrong spikes
        without a word."""
        if name != "data":
            return super().__setattr__(name, value)
        if not isinstance(value, fx.Proxy):
            raise UnsupportedError("y.data = a tensor not computed from the input: write "
                                   "y = that tensor", path=self.tracer.scope.module_path or None)
        shared = self.tracer.changing_in_place(self.node, "Tensor.data")
        self.tracer.rebind(self, value.node)
        self.tracer.stale |= shared - {value.node}

    def __setitem__(self, index, value):
        """``x[index] = value`` is recorded as ``x = _assigned(x, index, value)``: later uses of
        this proxy read the assignment's result (see :meth:`_ConcreteTracer.changing_in_place`)."""
        shared = self.tracer.changing_in_place(self.node, "Tensor.__setitem__")
        node = self.tracer.create_proxy("call_function", _assigned, (self, index, value), {}).node
        node.meta["in_place_of"] = self.node
        self.tracer.rebind(self, node)
        self.tracer.stale |= shared


def _in_place_operator(method: str):
    """``x += y`` as ``x.add_(y)``: fx's proxy has no ``__iadd__``, so Python would bind
    ``x = x + y`` to the name, and another name for the same tensor (``identity = x`` before)
    would keep the old value, which in PyTorch changes too."""
    def apply(self, other):
        return self.tracer.create_proxy("call_method", method, (self, other), {})

    apply.__name__ = method
    return apply


for _operator, _method in (("iadd", "add_"), ("isub", "sub_"), ("imul", "mul_"),
                           ("itruediv", "div_")):
    setattr(_ConcreteProxy, f"__{_operator}__", _in_place_operator(_method))


def _assigned(x: torch.Tensor, index, value) -> torch.Tensor:
    """``x`` with ``x[index] = value``, as a new tensor (of ``x``'s shape: a shaped tensor's
    stand-in without running the assignment on fake tensors)."""
    if isinstance(x, ShapedTensor) or isinstance(value, ShapedTensor):
        return shaped_like(x)
    y = x.clone()
    y[index] = value
    return y


def _concrete(obj):
    return fx.node.map_aggregate(
        obj, lambda a: a.node.meta["value"] if isinstance(a, fx.Proxy) else a)


def _membrane_after(spikes: torch.Tensor, steps: bool = False) -> torch.Tensor:
    """The membrane a never-firing neuron's module holds after the call that returned
    ``spikes`` (:meth:`Adapter.held_membrane`), or with ``steps`` the membranes of every step a
    multi-step one keeps (``v_seq``, ``store_v_seq=True``); here, a tensor of its shape."""
    return shaped_like(spikes) if isinstance(spikes, ShapedTensor) else torch.zeros_like(spikes)


def _neuron_adapter(m: nn.Module) -> Adapter | None:
    """The adapter of ``m`` if ``m`` is a spiking neuron."""
    adapter = adapter_for(m)
    return adapter if adapter is not None and adapter.is_neuron(m) else None


class _ConcreteTracer(fx.Tracer):
    """Records the model's ops and runs each on the example input (``node.meta['value']``).

    ``node.meta['scope']`` is the module path the op was called in; ``node.meta['site']``
    identifies the op's place in the program (module, Python call stack, and how often that
    stack occurred before in the same module call), the same in every iteration of a loop.

    ``shaped``: ops on values derived from the input run on shaped tensors (shapes and dtypes,
    no data: :mod:`.shaped`), so tracing a full-size model neither computes nor keeps its
    activations; the IR needs only their shapes. Ops on constants only, and ``*_like``
    constructors, whose values become constants of the graph, still compute real values. A
    model whose Python code reads activation values (``if x.max() > 0``) fails on shaped
    tensors: :func:`trace` then traces it again on real values."""

    proxy_buffer_attributes = True

    def __init__(self, example: torch.Tensor, shaped: bool, until: str | None = None):
        super().__init__()
        self.example = example
        self.until = until  # the module the graph ends before
        self._shaped = shaped
        self._input = shaped_like(example) if shaped else example
        self._running = 0
        self._constants = 0
        self._placeholders = 0
        # tensors made in forward and changed since by traced values (t += x, t[i] = x): id ->
        # (the tensor, held so that no other takes its id; the node of its value now)
        self.changed: dict[int, tuple[torch.Tensor, fx.Node]] = {}
        # id -> the proxies that stand for such a tensor (what its in-place ops returned, bound
        # to a name: `total += x`), which follow its later changes through another name
        self._standing: dict[int, list[fx.Proxy]] = {}
        self.stale: set[fx.Node] = set()  # see changing_in_place
        self._shape_read: tuple = ()  # the arguments of the op recorded whose shape alone it reads
        self._occurrences: dict[tuple, int] = {}
        self._stacks: dict[tuple, int] = {}
        self._codes: list[list] = []
        self._own_stacks: dict[tuple, int] = {}  # a stack without torch's and our frames -> n
        # the stack below the tracer's maker (alive while it traces) is the same for every op:
        # not walked; its id, as the frame itself would make a cycle holding the trace's values
        self._base = id(sys._getframe(1))
        self._names: dict[tuple[str, int], tuple[str, nn.Module, str]] | None = None
        # id(neuron) -> the membrane its module holds after its last call (Adapter.held_membrane)
        self._held: dict[int, torch.Tensor] = {}
        # neuron -> its start where the model set it (_from_membrane_set)
        self._membranes_set: dict[str, float | None] = {}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        adapter = adapter_for(m)
        if adapter is not None:
            leaf = True if adapter.is_neuron(m) else adapter.is_leaf(m)
            if leaf is not None:
                return leaf
        return super().is_leaf_module(m, qualname)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ConcreteProxy(node, self)

    def to_number(self, op: str):
        """``float(y)``, ``int(y)``, ``y.item()``, ``y.tolist()``, ``y.numpy()`` of a traced
        tensor: a Python value of the example input, which one graph would keep as a constant
        for every input."""
        raise UnsupportedError(f"op '{op}' is not supported (it reads a value computed from the "
                               f"input into Python, at {_model_code_line()}: the graph would keep "
                               "the example input's)", path=self.scope.module_path or None)

    def to_bool(self, obj):
        """``if``, ``while``, ``assert`` or ``bool()`` on a traced tensor: which way it goes
        depends on the input, and one graph cannot branch (fx's own error names neither the
        module nor the line). On a tensor computed from the model's parameters only (``if
        self.tau > 1``), its value."""
        if isinstance(obj, fx.Proxy) and not obj.node.meta.get("from_input", True):
            return bool(obj.node.meta["value"])
        raise UnsupportedError("Python control flow on a traced tensor (an if, while, assert or "
                               f"bool() of one, at {_model_code_line()}): one graph cannot take "
                               "both ways", path=self.scope.module_path or None)

    def call_module(self, m, forward, args, kwargs):
        if self._running:  # a leaf being evaluated: plain PyTorch
            return forward(*args, **kwargs)
        try:
            path = self.path_of_module(m)
        except NameError:  # kept in a plain list or attribute of another object
            if _neuron_adapter(m) is None and next(m.parameters(), None) is None \
                    and next(m.buffers(), None) is None:
                return forward(*args, **kwargs)  # (stateless: its ops, traced)
            raise UnsupportedError(
                f"a {type(m).__name__} called at {_model_code_line()} is not a submodule of the "
                "model (kept in a plain list or dict, not an nn.ModuleList or nn.ModuleDict): "
                "its parameters and state are not the model's; register it") from None
        if path == self.until:
            raise _CutAt((*args, *kwargs.values()))
        if isinstance(m, torch.jit.ScriptModule):
            raise UnsupportedError(
                f"a TorchScript module ({type(m).__name__}, a torch.jit.ScriptModule or a module "
                "torch.jit.script made) runs compiled code that snncc cannot trace: build it as "
                "the Python module it was written as (without torch.jit)", path=path)
        leaf = self.is_leaf_module(m, path)
        if leaf:
            _refuse_hooks(m, path)
        adapter = _neuron_adapter(m) if leaf else None
        held = adapter.held_membrane(m) if adapter is not None else None
        if adapter is not None and path not in self._membranes_set:  # (at its first call)
            self._membranes_set[path] = adapter.membrane_set(m)
        if held is not None and id(m) in self._held:  # its own value back, to run the call
            setattr(m, held, self._held[id(m)])
        out = super().call_module(m, forward, args, kwargs)
        if held is not None and isinstance(out, fx.Proxy):  # what the model reads after it
            self._held[id(m)] = getattr(m, held)
            setattr(m, held, self.create_proxy("call_function", _membrane_after, (out,), {}))
        if adapter is not None and isinstance(out, fx.Proxy) and \
                adapter.step_mode(m) == STEP_MULTI and getattr(m, "store_v_seq", False):
            # (a firing neuron's too, which the graph refuses where it is read: left as the
            # module had it, None after a reset, it was an output left out, silently)
            m.v_seq = self.create_proxy("call_function", _membrane_after, (out, True), {})
        first = out[0] if isinstance(out, tuple) and out else out  # (spikes, state)
        if not leaf and isinstance(first, fx.Proxy):  # what the module returns (check compares
            first.node.meta.setdefault("returned_by", []).append(path)  # a neuron written so)
        if leaf and isinstance(out, fx.Proxy) and type(out.node.meta["value"]) is tuple:
            # a leaf returning a tuple (norse's LIF: spikes and state) as a tuple of proxies,
            # so that code asking `isinstance(x, tuple)` (norse's Lift) takes it apart
            return tuple(out[i] for i in range(len(out.node.meta["value"])))
        return out

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        """fx's ``getattr``, without its scan of every parameter and buffer of the model at each
        access (a tenth of tracing Meta-SpikeFormer 15M)."""
        if self._running or not isinstance(attr_val, torch.Tensor):
            return attr_val
        name = self._attribute_name(attr_val)
        if name is None:
            return attr_val
        cached = parameter_proxy_cache.get(name)
        if cached is None or cached.node.meta.get("value") is not attr_val:  # (a buffer the
            # forward registered anew: sinabs' state made at the first call, rockpool's reset)
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]

    def _attribute_name(self, value: torch.Tensor) -> str | None:
        """The name fx gives ``value``: its first name among the root's parameters if it is a
        parameter, else among its buffers; None if it is neither. Names are looked up by
        identity in an index, rebuilt when it misses (a buffer a forward replaced)."""
        kind = "_parameters" if isinstance(value, nn.Parameter) else "_buffers"
        for rebuild in (self._names is None, True):
            if rebuild:
                self._names = {}
                for prefix, m in self.root.named_modules():
                    for table in ("_parameters", "_buffers"):
                        for attr, t in getattr(m, table).items():
                            if t is not None:
                                self._names.setdefault((table, id(t)), (prefix, m, attr))
            found = self._names.get((kind, id(value)))
            if found is not None and getattr(found[1], kind).get(found[2]) is value:
                return f"{found[0]}.{found[2]}" if found[0] else found[2]
        return None

    def changing_in_place(self, node: fx.Node, op: str) -> set[fx.Node]:
        """For an in-place op on ``node``'s tensor, which the graph records as a new value that
        the proxy changed reads from then on: the nodes that keep their old values in the graph
        (``node`` and the other tensors sharing its memory: views of it, the tensor it views,
        the model's input among them), which the caller marks stale once the op is recorded, so
        that reading one again is refused (:meth:`create_arg`). Refused now if one is the
        model's own parameter or buffer."""
        shared = _sharing_memory(node, self.root)
        if any(n.op == "get_attr" and not n.target.startswith(_MADE_IN_FORWARD) for n in shared):
            raise UnsupportedError(f"op '{op}' is not supported ({_MODEL_STATE})",
                                   path=self.scope.module_path or None)
        neuron = next(filter(None, (_recurrent_spikes(n, self.root) for n in shared)), None)
        if neuron is not None:
            raise UnsupportedError(f"op '{op}' is not supported ({_RECURRENT_SPIKES})",
                                   path=neuron)
        return shared

    def rebind(self, proxy: fx.Proxy, node: fx.Node) -> None:
        """``proxy``'s tensor now has the value of ``node`` (an in-place change): so has a tensor
        made in forward that the proxy stands for (``total = kept = torch.zeros(...)``, then
        ``total += x`` twice: the first binds ``total`` to a proxy, ``kept`` stays the
        tensor)."""
        for tensor, was in list(self.changed.values()):
            if was is proxy.node:
                self._change(tensor, node)
        proxy.node = node

    def _change(self, tensor: torch.Tensor, node: fx.Node) -> None:
        """``tensor`` (made in forward) has the value of ``node`` from now on, and so have the
        proxies standing for it."""
        self.changed[id(tensor)] = tensor, node
        for other in self._standing.get(id(tensor), ()):
            other.node = node

    def current(self, a):
        """A tensor made in forward and changed since by traced values: a proxy of its value
        now; a view of one is refused (the graph has its value before the change)."""
        if not isinstance(a, torch.Tensor):
            return a
        changed = self.changed.get(id(a))
        if changed is not None and changed[0] is a:
            return self.proxy(changed[1])
        base = self.changed.get(id(a._base)) if a._base is not None else None
        if base is not None and base[0] is a._base:
            raise UnsupportedError(_STALE, path=self.scope.module_path or None)
        return a

    def create_arg(self, a):
        a = self.current(a)
        if isinstance(a, fx.Proxy) and a.node in self.stale and \
                not any(a is b for b in self._shape_read):
            raise UnsupportedError(_STALE, path=self.scope.module_path or None)
        if isinstance(a, torch.Tensor) and not isinstance(a, nn.Parameter) \
                and not any(a is buf for buf in self.root.buffers()):
            # a tensor made in forward: keep it in the graph, not as an attribute of the model;
            # its value now (the model may change it in place afterwards: that is another value)
            node = self.create_node("get_attr", f"{_MADE_IN_FORWARD}{self._constants}", (), {})
            self._constants += 1
            node.meta["value"] = a.clone()
            return node
        arg = super().create_arg(a)
        if isinstance(a, torch.Tensor) and isinstance(arg, fx.Node) and arg.op == "get_attr":
            # the tensor itself: a buffer the forward registered in place of another (sinabs'
            # state made at the first call) is not the module's once the trace restores it
            arg.meta.setdefault("value", a)
        return arg

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None,
                     proxy_factory_fn=None):
        if kind == "call_method" and target in _TO_PYTHON and isinstance(args[0], fx.Proxy) \
                and args[0].node.meta.get("from_input"):
            self.to_number(f"Tensor.{target}")
        if kind == "call_method" and target in _RANDOM_METHODS:  # (torch functions: the mode's)
            raise UnsupportedError(f"op 'Tensor.{target}' is not supported ({_RANDOM})",
                                   path=self.scope.module_path or None)
        changes = None  # a tensor made in forward that a traced value changes (STBP's
        # `sumspike += spike`, norse's `voltages[ts] = v`): recorded out of place, its new value
        # what the tensor reads from then on (current)
        if kind == "call_method" and args and isinstance(args[0], torch.Tensor) \
                and (target == "__setitem__" or _in_place(target)):
            changes, op = args[0], f"Tensor.{target}"
            if _shares_model_memory(changes, self.root):
                raise UnsupportedError(f"op '{op}' is not supported ({_SHARED})",
                                       path=self.scope.module_path or None)
            if target == "__setitem__":
                kind, target = "call_function", _assigned
            elif callable(getattr(torch.Tensor, target[:-1], None)):
                target = target[:-1]
        out = kwargs.get("out") if kind in ("call_function", "call_method") else None
        if out is not None:  # op(..., out=t) changes t as an in-place op would
            kwargs = {k: v for k, v in kwargs.items() if k != "out"}
            if isinstance(out, torch.Tensor):
                if _shares_model_memory(out, self.root):
                    raise UnsupportedError(f"op '{getattr(target, '__name__', target)}' with out= "
                                           f"is not supported ({_SHARED})",
                                           path=self.scope.module_path or None)
                changes, out = out, None
        args, kwargs = fx.node.map_aggregate((args, kwargs), self.current)
        cargs, ckwargs = _concrete((args, kwargs))
        if kind == "call_method" and (target in _SHAPE_METHODS | _NEW_TENSOR_METHODS
                                      or target == "type" and len(cargs) == 1 and not ckwargs):
            return getattr(cargs[0], target)(*cargs[1:], **ckwargs)
        if kind == "call_function" and target in _SHAPE_FUNCTIONS:
            return target(*cargs, **ckwargs)
        receiver = args[0] if kind == "call_method" and _in_place(target) else None
        shared = set()
        if receiver is not None:  # x.op_(...): recorded as x.op(...), see below
            # refused here, even where nothing reads the result, which the tensor would hold
            if not callable(getattr(torch.Tensor, target[:-1], None)):
                raise UnsupportedError(f"op 'Tensor.{target}' is not supported (an in-place op "
                                       "with no out-of-place form)",
                                       path=self.scope.module_path or None)
            if target not in _METADATA_IN_PLACE:
                shared = self.changing_in_place(receiver.node, f"Tensor.{target}")
            target = target[:-1]
        if isinstance(out, fx.Proxy):
            receiver = out
            shared = self.changing_in_place(out.node, f"{getattr(target, '__name__', target)} "
                                                      "with out=")
        value = self._evaluate(kind, target, cargs, ckwargs)
        if self._shaped and kind.startswith("call"):
            value = _compact_constant(value)
        self._shape_read = args[1:] if kind == "call_method" and target in _SHAPE_OF_OTHER \
            else args[:1] if target in _CONSTANT_LIKE else ()
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr,
                                     proxy_factory_fn)
        self._shape_read = ()
        if changes is not None:
            self._change(changes, proxy.node)
            self._standing.setdefault(id(changes), []).append(proxy)
        proxy.node.meta["value"] = value
        proxy.node.meta["from_input"] = (kind == "placeholder" and value is self._input) or any(
            n.meta.get("from_input") for n in proxy.node.all_input_nodes)
        if kind == "placeholder":
            proxy.node.meta["example"] = self.example
            # a later parameter at its default (_defaults_after_input): that value, no input
            proxy.node.meta["default"] = value is not self._input
            self._placeholders += 1
        proxy.node.meta["scope"] = self.scope.module_path
        proxy.node.meta["site"] = self._site()
        if not self.scope.module_path and kind != "placeholder" and \
                _running(type(self.root).forward):
            # the root's ops have no module path to name them by: their line of its forward
            # (not of an attribute fx reads lazily, once it has returned: `return s, state.v`)
            proxy.node.meta["line"] = _model_code_line()
        if kind == "call_module":
            self._note_dynamics(proxy.node)
        if receiver is not None:
            # the in-place op's result, computed without changing the value it was called on:
            # the proxy the model holds reads it from now on, as the tensor itself would (an
            # attribute's, `y.data`, is no name the model holds)
            proxy.node.meta["in_place_of"] = receiver.node
            self.stale |= shared
            if isinstance(receiver, fx.proxy.Attribute) and receiver.attr == "data" \
                    and isinstance(receiver.root, _ConcreteProxy):  # y.data.add_(v): y changes
                self.rebind(receiver.root, proxy.node)
            if isinstance(receiver, _ConcreteProxy):
                self.rebind(receiver, proxy.node)
                return receiver
        return proxy

    def _note_dynamics(self, node: fx.Node) -> None:
        """A neuron's parameters as they are when it is called (``node.meta['dynamics']``, or
        the error saying why it has none): a model may change them between its calls (a
        threshold per step), and the graph is built after the model's forward has ended."""
        m = self.root.get_submodule(node.target)
        adapter = _neuron_adapter(m)
        if adapter is not None:
            self._running += 1  # its parameters as values, not proxies
            try:
                node.meta["dynamics"] = self._from_membrane_set(
                    adapter.canonical(m, node.target), node.target)
            except UnsupportedError as e:
                node.meta["dynamics"] = e
            finally:
                self._running -= 1

    def _from_membrane_set(self, params, path: str):
        """A neuron's parameters starting from the membrane the model set before its first call
        (:meth:`Adapter.membrane_set`), where it did."""
        start = self._membranes_set.get(path)
        if start is None:
            return params
        if not isinstance(params, cn.CanonicalParams):
            raise UnsupportedError(f"a membrane set to {start} before the neuron's first call "
                                   "is taken only for a neuron of one membrane", path=path)
        return replace(params, v_init=start)

    def _site(self) -> tuple:
        """(module, call stack, occurrence). A stack is a number, one per distinct stack of
        (code, line) frames: sites are hashed again and again, and a tuple of code objects
        hashes each one's bytecode and constants (a 40-frame stack: 10 us per hash, 0.3 as ints).
        Frames are told apart by their code's id, the code held so that no id is reused.
        torch's frames and the tracer's are left out: the same line of the model reaches here
        by other ones where an operand is a constant (``b0 * 0.9 + x``, the plain tensor's
        ``__add__`` through the torch function mode) than where all are traced."""
        call = next(reversed(self.module_stack), "")
        frame, stack, codes = sys._getframe(2), [], []
        while frame is not None and id(frame) != self._base:
            codes.append(frame.f_code)
            stack += (id(frame.f_code), frame.f_lineno)
            frame = frame.f_back
        stack = tuple(stack)
        number = self._stacks.get(stack)
        if number is None:  # (the frames left out once per stack)
            own = tuple(v for k, code in enumerate(codes)
                        if not code.co_filename.startswith(_INTERNAL_CODE)
                        for v in stack[2 * k:2 * k + 2])
            number = self._stacks[stack] = self._own_stacks.setdefault(own,
                                                                        len(self._own_stacks))
            self._codes.append(codes)
        key = (call, number)
        n = self._occurrences[key] = self._occurrences.get(key, -1) + 1
        return re.sub(r"@\d+$", "", call), number, n

    def _evaluate(self, kind, target, args, kwargs):
        if kind == "placeholder":
            return args[0] if self._placeholders > 0 and args else self._input
        shaped = any(isinstance(a, ShapedTensor) for a in _walk((args, kwargs)))
        if shaped and target in _CONSTANT_LIKE and isinstance(args[0], ShapedTensor):
            return _uniform_like(target, args, kwargs)
        self._running += 1
        try:
            return self._run(kind, target, args, kwargs, shaped)
        finally:
            self._running -= 1

    def _run(self, kind, target, args, kwargs, shaped: bool):
        if kind == "get_attr":
            return _fetch(self.root, target)
        if kind == "call_module":
            m = self.root.get_submodule(target)
            if shaped and (isinstance(m, _SHAPE_PRESERVING) or _multi_step_neuron(m)):
                return shaped_like(args[0])  # a BN runs ~20 ops, a neuron ~10 T
            return m(*args, **kwargs)
        func = getattr(type(args[0]), target) if kind == "call_method" else target
        if not shaped:  # an op on constants: those repeated over time and batch computed once
            value = on_broadcast_constants(func, args, kwargs)
            if value is not None:
                return value
        return func(*args, **kwargs)


def _multi_step_neuron(m: nn.Module) -> bool:
    """A neuron whose call on ``[T, B, ...]`` returns its spikes alone, of the input's shape
    (norse's return their state too: they run on the shaped tensors, so that code taking the
    pair apart, norse's ``Lift``, sees it)."""
    adapter = adapter_for(m)
    return adapter is not None and adapter.is_neuron(m) and adapter.step_mode(m) == STEP_MULTI \
        and not adapter.returns_state(m)


#: layers whose output has their input's shape and dtype
_SHAPE_PRESERVING = (nn.modules.batchnorm._BatchNorm, nn.Identity, nn.Dropout)
#: ops on a traced value whose result is a constant of the graph (its shape and dtype only)
_CONSTANT_LIKE = frozenset({torch.zeros_like, torch.ones_like, torch.full_like})


def _compact_constant(v):
    """A real op result (an op on constants) that repeats along its leading axes, kept as one
    slice expanded to its shape: a constant broadcast over time and batch, such as a padding
    border made from ``ones_like`` of an activation, holds T*B times less while the trace keeps
    it (Meta-SpikeFormer 55M: 136 MB of them)."""
    if (not isinstance(v, torch.Tensor) or isinstance(v, ShapedTensor)
            or v.layout != torch.strided or v.nbytes < 2**20 or 0 in v.stride()[:2]):
        return v
    base = v
    for axis in range(min(2, v.dim())):
        one = base.narrow(axis, 0, 1)
        if base.shape[axis] > 1 and torch.equal(base, one.expand(base.shape)):
            base = one
    return v if base is v else base.clone().expand(v.shape)


def _uniform_like(target, args, kwargs) -> torch.Tensor:
    """``zeros_like`` / ``ones_like`` / ``full_like`` of a shaped tensor: its uniform value made
    for one time step and sample and broadcast over the leading (time and batch) axes, so that
    the constants computed from it are held once (:func:`on_broadcast_constants`)."""
    x = args[0]
    lead = min(2, x.dim())
    one = torch.empty((1,) * lead + tuple(x.shape[lead:]), dtype=x.dtype, device=x.device)
    return target(one, *args[1:], **kwargs).expand(x.shape)


def _fetch(root: nn.Module, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


@contextmanager
def _inference(model: nn.Module):
    """Eval mode, no autograd and fresh neuron state while tracing; restored after. A trace
    leaves proxies or shaped tensors in the modules' attributes, buffers and the dicts and
    lists they hold (neuron state: a membrane kept in an attribute, a library's ``_memories``
    dict, which no known library's reset clears): all are put back as they were."""
    modes = [(m, m.training) for m in model.modules()]

    model.eval()
    reset_state(model)
    try:
        with attributes_kept(model), torch.no_grad(), compiled_functions_run_eagerly():
            yield
    finally:
        reset_state(model)
        for m, mode in modes:
            m.training = mode


# ============================================================================ values

@dataclass(eq=False)
class Expr:
    """A per-step value, not yet in the graph: ``make(name, inputs)`` builds its IR node.

    ``time``: static (the same at every step), seq (varies) or readout (mean over time);
    ``step``: the time step of a value inside an unrolled loop over time (None otherwise)."""

    make: Callable[[str, tuple[str, ...]], ir.Node] | None
    args: tuple["Expr", ...]
    op: str
    hint: str
    path: str
    shape: tuple[int, ...]
    time: str = SEQ
    step: int | None = None
    site: tuple | None = None  # the op's place in the program (see _ConcreteTracer)
    tainted: bool = field(default=False, init=False)  # depends on an unsupported op

    def __post_init__(self):
        self.tainted = any(_depends_on_refused(a) for a in self.args)


def _held_vals(a) -> list:
    """The traced values a lazy value (an AxisFirst, an Assembled's steps ...) holds."""
    if isinstance(a, Val):
        return [a]
    if isinstance(a, (tuple, list)):
        return [v for i in a for v in _held_vals(i)]
    if is_dataclass(a) and isinstance(a, _FROM_INPUT):
        return [v for f in fields(a) for v in _held_vals(getattr(a, f.name))]
    return []


def _depends_on_refused(e: Expr) -> bool:
    """Whether ``e`` is an op that cannot be mapped or depends on one."""
    return e.tainted or isinstance(e, _Refused)


@dataclass(eq=False)
class _StepOf(Expr):
    """``x[step]`` of a whole sequence ``x`` (args[0])."""


@dataclass(eq=False)
class _NeuronStep(Expr):
    """The spikes of the single-step neuron at ``path`` at ``step``."""


@dataclass(eq=False)
class _MembraneStep(Expr):
    """The membrane the single-step neuron at ``path`` returned at ``step``: the value its
    spikes are fired on, where IR nodes compute it (a :class:`NeuronCircuit`'s)."""


@dataclass(eq=False)
class _Slice(Expr):
    """``args[0][..., start:stop, ...]`` along per-step ``axis`` (a piece of chunk/split); its
    nodes depend on the input's kind, known once the input is built."""

    axis: int = 0
    start: int = 0
    stop: int = 0


@dataclass(eq=False)
class _OverSteps(Expr):
    """args = one value per step 0..T-1 of a loop: stacked into a sequence, or averaged.
    ``starts``: a sequence recorded k = len(starts) steps late (a membrane appended before the
    step updates it): its first k entries these constants, args its later ones."""

    reduce: str = "stack"
    starts: tuple = ()


@dataclass(eq=False)
class _RunningMax(Expr):
    """The maximum of args[0] over the steps so far and ``floor`` (the max over time of a
    sequence, read at the last step)."""

    floor: object = None


@dataclass(eq=False)
class _RunningSum(Expr):
    """The sum of args[0] over the steps so far (the sum over time of a sequence, read at the
    last step: a spike count)."""


@dataclass(eq=False)
class _ConvOverTime(Expr):
    """A convolution whose kernel spans the whole time axis, moved last (SGLFormer's head, a
    depthwise ``Conv2d`` of kernel (N, T) over ``[B, C, N, T]``): the sum over the steps k of
    step k's value (args[0], per-sample shape ``steps_shape``) convolved with the kernel's
    slice k, ``convs[k]`` (make(name, input) of a convolution over ``(*steps_shape, 1)``; the
    bias in slice 0's), read at the last step."""

    convs: tuple = ()
    steps_shape: tuple = ()


@dataclass(eq=False)
class _Refused(Expr):
    """An op that cannot be mapped; an error only if the output needs it. ``unknown``: an op
    the tracer has no mapping for at all."""

    message: str = ""
    unknown: bool = False


@dataclass(frozen=True)
class Val:
    """A traced tensor: its expression and its frame (the leading time/batch axes)."""

    expr: Expr
    frame: tuple[str, ...]


@dataclass(frozen=True)
class Const:
    """A tensor that does not depend on the input (parameters and what is computed from them);
    ``frame``: the time/batch axes it has when made ``*_like`` a traced tensor.
    ``as_in_float64``: ``value`` is what the model run in float64 has here (upcast, where it is
    in another float dtype): a parameter or buffer, or what is computed from them."""

    value: object
    frame: tuple[str, ...] = ()
    as_in_float64: bool = False


@dataclass(frozen=True)
class ConstMinus:
    """``k - y`` for k = 1 (or 0) and a traced ``y``. The IR adds no constant to a tensor, so it
    is only taken as a factor: ``x * (1 - y) = x - x*y`` (SEW-ResNet's IAND connection)."""

    k: float
    y: Val


@dataclass(frozen=True)
class Clamped:
    """``clamp(x, 0, D)`` of a traced real ``x`` with D a positive integer, plus ``shift``: taken
    only by ``round`` (shift 0) or ``floor`` (0 <= shift < 1: ``floor(clamp(x, 0, D) + 0.5)``,
    rounding halves up), which make it a count (:func:`_rounded_count`, :func:`_floored_count`)."""

    x: Val
    top: int
    shift: float = 0.0


@dataclass(frozen=True)
class CountResidual:
    """``q - y``, ``q`` the count that ``round``/``floor`` made of the clamp ``y``: taken only
    added back to ``y``, ``y + (q - y).detach()`` (a straight-through estimator), which is q
    in every float: q - y is exact where q > 0 (Sterbenz) but for a floor's shift, whose
    error is at most half an ulp of 1 and rounds back to the integer q."""

    q: Val
    clamp: Clamped


@dataclass(frozen=True)
class Rounded:
    """``round(x)`` of a traced real ``x``: taken only by ``clamp(., 0, D)`` (a count)."""

    x: Val


@dataclass(frozen=True)
class SumOverTime:
    """``x.sum(0)`` of a ``[T, B, ...]`` value: divided by T, its mean over time (a Readout), as
    ``x.mean(0)`` is (torch's mean is that sum divided by T); otherwise ``total``, the running
    sum read at the last step (spike counts: snnTorch's ``torch.stack(spk_rec).sum(0)``)."""

    x: Val
    total: Val


@dataclass(frozen=True)
class AfterStart:
    """``torch.stack([s, y_0, ..., y_{T-1}])``: a loop's T steps ``steps`` after a constant
    entry ``start`` (one sample's), T + 1 entries (spytorch's ``out_rec = [out]`` then one per
    step): taken only by a maximum over the time axis, which starts from it."""

    start: np.ndarray
    steps: Val


@dataclass(frozen=True)
class TimeAxisLast:
    """A ``[T, B, ...]`` (or ``[B, T, ...]``) value with its time axis moved last and the rest in
    order, ``[B, ..., T]`` (einops' ``'(t b) c -> b c t'``, BrainCog's readout): taken only by a
    mean or sum over that last axis, which is the mean or sum over time."""

    x: Val


@dataclass(frozen=True)
class FrameMoved:
    """A ``[T, B, ...]`` (or ``[B, T, ...]``) value whose time and batch axes transposes moved
    among its per-sample axes (tdBN's ``batch_norm_2d``, copied by EMS-YOLO and MS-ResNet:
    ``[T, B, C, H, W]`` to ``[B, C, T, H, W]`` for a ``BatchNorm3d``). Taken only by further
    transposes (back to a layout of the value) and by a BatchNorm of its axis 1 where that is a
    per-sample axis: the same per-channel scale and shift at every position, whatever axes
    the statistics were gathered over."""

    x: Val
    perm: tuple[int, ...]  # the tensor's axes, as axes of x


@dataclass(frozen=True)
class AxisFirst:
    """``x.permute(perm)`` of a ``[T, B, ...]`` value moving one per-sample axis ahead of the
    time and batch axes, which follow in order (timm's attention: ``qkv.reshape(T, B, N, 3, h,
    d).permute(3, 0, 1, 4, 2, 5)``): taken only by indexing that axis, ``qkv[0]`` or
    ``qkv.unbind(0)``, each position of which is a value of the usual layout."""

    x: Val
    perm: tuple[int, ...]


@dataclass(frozen=True)
class Stacked:
    """``torch.stack(items)`` of values of one step on a new first axis, ahead of the time and
    batch axes: a neuron's state kept as one tensor (tudelft's event_flow ConvLIF returns
    ``torch.stack([v, z])`` and reads ``v, z = prev_state`` at the next step), taken only apart
    again by position."""

    items: tuple


@dataclass(frozen=True)
class Membrane:
    """The membrane a neuron returned at ``step``: passed back to it as its state, or used as
    a value (:class:`_MembraneStep`; snnTorch's tutorials record and return it)."""

    path: str
    step: int
    shape: tuple[int, ...] = ()
    multi_step: bool = False  # a multi-step neuron's: its state after the last step


def _bordered_array(shape: tuple[int, ...], pads: tuple[int, ...],
                    value: np.ndarray) -> np.ndarray:
    """The (C, H, W) array of a padded tensor's border holding ``value`` per channel, zero
    inside."""
    return np.where(_border(shape, pads), value[:, None, None], 0.0)


def _border(shape: tuple[int, ...], pads: tuple[int, ...]) -> np.ndarray:
    """The (H, W) cells of a padded (C, H, W) tensor that ``pads`` (left, right, top, bottom)
    added."""
    left, right, top, bottom = pads
    H, W = shape[-2:]
    border = np.ones((H, W), bool)
    border[top:H - bottom, left:W - right] = False
    return border


@dataclass(frozen=True, eq=False)
class PaddedBorder:
    """``F.pad(inner)`` whose border was assigned in part (``out[:, :, :p, :] = v``) and is not
    one value per channel yet: taken only by further assignments (see assign_border)."""

    inner: Val
    pads: tuple[int, ...]
    full: np.ndarray
    frame: tuple[str, ...]


@dataclass(frozen=True)
class Assembled:
    """A sequence assigned step by step (``out[t] = v``), or a tensor position by position along
    a per-sample axis (``out[:, i] = v``), some not yet: see _assemble."""

    axis: int  # of the time steps: 0 ([T, B, ...]) or 1 ([B, T, ...]); or the per-sample axis
    steps: tuple  # Val or None per step (or position)
    per_sample: bool = False


#: what the tracer's values computed from the input are (an op on none of them is a constant)
_FROM_INPUT = (Val, Membrane, ConstMinus, SumOverTime, TimeAxisLast, AxisFirst, FrameMoved,
               PaddedBorder, Assembled, Clamped, Rounded, Stacked, AfterStart, CountResidual)


@dataclass(frozen=True)
class _Call:
    """Where an op was called: module path, op name (for messages), node name hint, the op's
    value on the example input, and its site."""

    path: str
    op: str
    hint: str
    value: object
    site: tuple | None = None


@dataclass
class _SteppedNeuron:
    params: cn.CanonicalParams
    shape: tuple[int, ...]
    calls: dict[int, Expr]  # step -> input
    name: str | None = None
    membrane: str | None = None  # a circuit's membrane node, once connected
    tap: ir.Node | None = None  # the node reading it for values taken before then


def _start_array(operand, shape: tuple) -> np.ndarray | None:
    """A loop state's value before the first step as a call read it (a constant or a number),
    one sample's, or None where it is neither or differs across the batch."""
    if isinstance(operand, (int, float)) and not isinstance(operand, bool):
        return np.full(shape, float(operand))
    if not isinstance(operand, Const) or not isinstance(operand.value, torch.Tensor) \
            or isinstance(operand.value, ShapedTensor):
        return None
    try:
        lead = max(operand.value.dim() - len(shape), 0)
        return np.broadcast_to(_np(_one_step(operand.value, lead)), shape)
    except (_Refuse, ValueError):
        return None


def _same_dynamics(a, b, shape: tuple) -> bool:
    """Whether two calls of a single-step neuron compute the same: equal canonical parameters,
    or circuits that build the same nodes (a model may change a threshold between its steps)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, cn.CanonicalParams):
        return a.same_as(b)
    if isinstance(a, NeuronCircuit) and (not a.fire.same_as(b.fire) or a.v_init != b.v_init):
        return False
    built = [p.build("n", "x", shape) for p in (a, b)]
    if isinstance(a, NeuronCircuit):
        built = [nodes for nodes, _ in built]
    return len(built[0]) == len(built[1]) and all(map(_same_node, *built))


def _same_node(a: ir.Node, b: ir.Node) -> bool:
    return _node_key(a) == _node_key(b) and _same_arrays(a, b)


def _one_step(v: torch.Tensor, lead: int) -> torch.Tensor:
    """``v`` without its ``lead`` leading (time and batch) axes, along which it must not vary."""
    if not lead:
        return v
    first = v[(0,) * lead]
    if not torch.equal(v, first.expand(v.shape)):
        raise _Refuse("a constant that differs across time or batch")
    return first


def _np(t) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _weights(b: "_Builder", t: torch.Tensor) -> np.ndarray:
    """A synapse's weights. float32 ones stay float32 (the IR's ``float32_arrays``): shared
    with the model when the builder may (a model snncc built from a checkpoint; IR arrays are
    never changed in place), else copied, so that a graph never changes when the user's model
    does."""
    if t.dtype != torch.float32:
        return _np(t)
    w = t.detach().cpu().numpy()
    return w if b.share_weights else w.copy()


def _neuron_node(name: str, inputs, path: str, p: cn.CanonicalParams) -> ir.Neuron:
    return ir.Neuron(name, inputs, path=path,
                     **(p.fire if isinstance(p, NeuronCircuit) else p).fields())


def _node_key(n: ir.Node) -> tuple:
    """Structural identity but for parameter values (:func:`_same_arrays`): op, inputs, module
    path, attributes."""
    return n.op, n.inputs, n.path, repr(sorted(n.attrs().items()))


def _same_arrays(a: ir.Node, b: ir.Node) -> bool:
    """Whether nodes of the same :func:`_node_key` hold the same parameter values, compared
    only then (15M: hashing every node's arrays took 0.03 s)."""
    for k in a.arrays:
        x, y = getattr(a, k), getattr(b, k)
        if (x is None) != (y is None) or (x is not None and _array_key(x) != _array_key(y)):
            return False
    return True


def _array_key(a: np.ndarray) -> tuple:
    """An array's identity, hashed from its memory: a constant broadcast over time and batch
    (stride 0) is hashed once, not copied out to its full size (100 MB at 15M)."""
    broadcast = tuple(step == 0 for step in a.strides)
    one = np.ascontiguousarray(a[tuple(slice(0, 1) if b else slice(None) for b in broadcast)])
    return a.shape, a.dtype.str, broadcast, hashlib.sha1(memoryview(one).cast("B")).hexdigest()


def _computed_in_float64(node: fx.Node, value: torch.Tensor, args, kwargs):
    """The op ``node`` on constants computed as the model run in float64 computes it (its
    parameters and buffers upcast; tensors made in forward as they are), or None where no
    operand is the model's or it cannot be. snncc's parity is against the model in float64:
    traced in float32, SpikingResformer's ``1 / sqrt(firing_rate * d)`` kept float32 rounding
    and flipped one spike in 33 million."""
    if not any(isinstance(a, Const) and a.as_in_float64 for a in _walk((args, kwargs))):
        return None

    def operand(a):
        if not isinstance(a, Const):
            return a
        v = a.value
        if a.as_in_float64 and isinstance(v, torch.Tensor) and v.is_floating_point() \
                and v.dtype != torch.float64:
            return _upcast(v)
        return v

    cargs, ckwargs = fx.node.map_aggregate((args, kwargs), operand)
    fn = getattr(type(cargs[0]), node.target) if node.op == "call_method" else node.target
    try:  # (in-place ops are recorded out of place: no operand is changed)
        out = on_broadcast_constants(fn, cargs, ckwargs)
        out = fn(*cargs, **ckwargs) if out is None else out
    except (RuntimeError, TypeError, ValueError):  # as the model in float64 would fail
        return None
    return out if isinstance(out, torch.Tensor) and out.shape == value.shape else None


def _module_in_float64(m: nn.Module, args, kwargs) -> torch.Tensor | None:
    """A layer's output on constants as the model run in float64 computes it (a copy of the
    layer in float64 on its operands upcast), or None where it cannot be: a recurrent
    convolution of the zero state at the first step, ``rec(z)`` with z made in forward."""
    cargs, ckwargs = fx.node.map_aggregate((args, kwargs), lambda a: _upcast(a.value) if (
        isinstance(a, Const) and isinstance(a.value, torch.Tensor)
        and a.value.is_floating_point()) else a.value if isinstance(a, Const) else a)
    try:
        with torch.no_grad():
            return copy.deepcopy(m).double()(*cargs, **ckwargs)
    except (RuntimeError, TypeError, ValueError):  # as the model in float64 would fail
        return None


def _upcast(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float64, axes it is broadcast along (stride 0) kept broadcast: a constant
    repeated over time and batch is not made whole."""
    one = t
    for axis, (n, stride) in enumerate(zip(t.shape, t.stride())):
        if stride == 0 and n > 1:
            one = one.narrow(axis, 0, 1)
    return one.to(torch.float64).expand(t.shape)


def _walk(obj):
    """Every leaf of nested tuples/lists/dicts/slices."""
    out = []
    fx.node.map_aggregate(obj, lambda a: out.append(a))
    return out


# ============================================================================ the builder

class _Builder:
    """Interprets the traced graph into :class:`Val` / :class:`Expr` values, then emits the IR."""

    def __init__(self, root: nn.Module, T: int, batch: int, name: str,
                 share_weights: bool = False):
        self.root, self.T, self.share_weights = root, T, share_weights
        self.size = {"T": T, "B": batch, "TB": T * batch, "BT": T * batch, "1": 1}
        self.graph = Graph(name, {"T": T, "source": "torch.fx"})
        self.errors: dict[tuple[str, str], None] = {}
        self.neurons: dict[str, _SteppedNeuron] = {}
        self._done: dict[tuple[Expr, int | None], str | None] = {}
        self._delays: dict[tuple[Expr, int], str] = {}
        self._keys: dict[tuple, list[str]] = {}
        # F.pad outputs: the padded value, its pads and its border's per-channel value (None:
        # zeros); the value, not the border's array, so that no traced constant is held
        self._pad_borders: dict[Expr, tuple[Val, tuple[int, ...], np.ndarray | None]] = {}
        # cat of a value with constants: its zero-padded value and the constants (_cat_constants)
        self._cat_constants: dict[Expr, tuple[Val, np.ndarray]] = {}
        self._multi_step_called: set[str] = set()  # neurons that keep their state (keeps_state)
        self.held: dict[str, Val] = {}  # never-firing neuron -> its membrane after its last call
        self.held_after: dict[int, tuple] = {}  # id(its zeros) -> (them, membrane, v_seq)
        self._step_terms: dict[Expr, list[Expr]] = {}
        self._sites: dict[tuple, Expr | None] = {}  # site -> its value in the latest step
        self._step_occurrences: dict[tuple, int] = {}  # (module, stack, op, step, ...) -> n
        # a loop's calls (their traced values): the calls reading each site's values, (site,
        # steps later, operand position), and the operands of its first steps' calls
        # (:meth:`_start_values`)
        self._called: set[Expr] = set()
        self._consumers: dict[tuple, set[tuple[tuple, int, int]]] = {}
        self._early: dict[tuple[tuple, int], list] = {}
        self._queue: list[Callable[[], None]] = []  # edges closed once the rest is built
        self.comparisons: set[str] = set()  # Neuron nodes that are a comparison (x > k)
        self.counts: dict[Expr, list[Val]] = {}  # round(clamp(x, 0, D)): its D level comparisons
        self.integers: set[Expr] = set()  # values integer by construction: counts, their products
        # value -> (v, f): the value is f * v, f a power of two (a count divided by its
        # maximum, Spike-Driven Transformer V3's spikes), so a matmul can take v
        # (:func:`_unscaled_matmul`)
        self.scaled: dict[Expr, tuple[Val, float]] = {}
        self.booleans: set[Expr] = set()  # a comparison's values, as torch has them (bool)
        # values an op is exact on only where they are of some kinds (a clamp's operand:
        # integers; relu's: spikes) -> (path, op, the kinds, why), checked once the graph
        # knows their kinds
        self.kinds_needed: dict[Expr, tuple[str, str, frozenset, str]] = {}
        # clamp(x, 0, 1)'s comparison -> x: taken by floor or round, x may be real (a value of
        # x's kind is needed only where the comparison is in the graph)
        self.clamped_to_one: dict[Expr, Val] = {}
        # a count round/floor made of a clamp -> that clamp, unshifted (a straight-through
        # estimator subtracts it from the count: CountResidual)
        self.count_source: dict[Expr, Clamped] = {}
        self._returned: dict[str, list[Val]] = {}  # module path -> what each call returned
        self._module_calls: collections.Counter = collections.Counter()  # path -> its calls

    # ------------------------------------------------------------------ interpretation
    def interpret(self, graph: fx.Graph, static: bool):
        # each value is dropped after its last use (as fx.Interpreter does): a constant's
        # float64 value (_computed_in_float64) would otherwise live until the trace ends
        last_uses: dict[fx.Node, list[fx.Node]] = {}
        used: set[fx.Node] = set()
        for node in reversed(graph.nodes):
            fresh = [n for n in node.all_input_nodes if n not in used]
            used.update(fresh)
            last_uses[node] = fresh
        env: dict[fx.Node, object] = {}
        self._module_calls = collections.Counter(n.target for n in graph.nodes
                                                 if n.op == "call_module")
        for node in graph.nodes:
            args = fx.node.map_arg(node.args, env.__getitem__)
            if node.op == "output":
                return args[0]
            kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
            value = env[node] = self._eval(node, args, kwargs, static)
            made = value[0] if isinstance(value, tuple) and value and all(
                isinstance(v, Membrane) for v in value[1:]) else value  # (spikes and state)
            if node.op.startswith("call_") and isinstance(made, Val) \
                    and made.expr.step is not None:
                self._record(node, made.expr, _walk((args, kwargs)))
            if isinstance(value, Val):
                for path in node.meta.get("returned_by", ()):
                    self._returned.setdefault(path, []).append(value)
            for done in last_uses[node]:
                del env[done]
            if node not in used:
                del env[node]
        raise UnsupportedError("the traced model has no output")

    def _eval(self, node: fx.Node, args, kwargs, static: bool):
        if node.op == "get_attr":
            if node.target.startswith(_MADE_IN_FORWARD):
                return Const(node.meta["value"])
            value = node.meta["value"] if "value" in node.meta else _fetch(self.root, node.target)
            return Const(value, as_in_float64=True)  # a parameter or buffer
        if node.op == "placeholder":
            if node.meta["default"]:
                value = node.meta["value"]
                return Const(value) if isinstance(value, torch.Tensor) else value
            return self._input(node, static)
        c = self._call(node)
        try:
            if node.op == "call_module":
                return self._module(self.root.get_submodule(node.target), c, args, kwargs,
                                    node.meta.get("dynamics"))
            return self._function(node, c, args, kwargs)
        except (_Refuse, UnsupportedError) as err:  # the latter from an adapter
            reason = err.message if isinstance(err, UnsupportedError) else str(err)
            msg = f"op '{c.op}' is not supported" + (f" ({reason})" if reason else "")
            if "line" in node.meta:
                msg += f", at {node.meta['line']}"
            return self._refused(c, msg, not reason, args, kwargs)

    def _record(self, node: fx.Node, e: Expr, operands: list) -> None:
        """A call of a loop over time computed ``e`` from ``operands``. A call that returned
        a value it did not make (``x - 0`` at the first step, where later steps subtract a
        traced value; ``x.to(dtype)``) takes its occurrence of the op at e's step all the
        same, so that the calls after it have their later steps' sites."""
        if e in self._called or e.site is None:
            c = self._call(node)
            site = self.loop_site(c.site, e.step, c.op)
            if site is not None and e.step < _EARLY_STEPS and \
                    any(isinstance(a, Const) for a in operands):
                # its constant operands (``s * (n < 2)`` at step 0, n starting at 0: ``s * 1``,
                # which returned s) are where a value it reads at later steps starts
                self._early.setdefault((site, e.step), operands)
            return
        self._called.add(e)
        for k, a in enumerate(operands):
            if isinstance(a, Val) and a.expr.step is not None and a.expr.site is not None:
                self._consumers.setdefault(a.expr.site, set()).add(
                    (e.site, e.step - a.expr.step, k))
        if e.step < _EARLY_STEPS:
            self._early[(e.site, e.step)] = operands

    def _call(self, node: fx.Node) -> _Call:
        value, scope, site = node.meta["value"], node.meta["scope"], node.meta["site"]
        if node.op == "call_module":
            return _Call(node.target, type(self.root.get_submodule(node.target)).__name__,
                         node.target, value, site)
        base = re.sub(r"_\d+$", "", node.name)
        if node.op == "call_method":
            op = f"Tensor.{node.target}"
        elif node.target is _assigned:
            op = "Tensor.__setitem__"
        elif node.target is _membrane_after:  # (read from the module called)
            called = node.args[0]
            op = f"{called.target if called.op == 'call_module' else 'a neuron'}." + \
                ("v_seq" if node.args[1:] == (True,) else "v")
        else:
            mod = getattr(node.target, "__module__", None) or "torch"
            mod = "torch" if mod.startswith("torch._") else mod.lstrip("_")
            op = f"{mod}.{getattr(node.target, '__name__', base)}"
        return _Call(scope, op, f"{scope}.{base}" if scope else base, value, site)

    def _input(self, node: fx.Node, static: bool) -> Val:
        x, T = node.meta["example"], self.T
        if any(isinstance(n, ir.Input) for n in self.graph):
            raise UnsupportedError("the model takes more than one tensor input")
        if static:
            frame = B
        elif x.dim() >= 2 and x.shape[0] == T:
            frame = TB
        elif x.dim() >= 2 and x.shape[1] == T:
            frame = BT
        else:
            raise UnsupportedError(f"a sequence input must be [T, B, ...] or [B, T, ...] with "
                                   f"T={T}, got {tuple(x.shape)}")
        shape = tuple(x.shape[len(frame):])
        kind = ir.Kind.SPIKE if bool(((x == 0) | (x == 1)).all()) else ir.Kind.REAL
        self.graph.meta["input_layout"] = "static" if static else _LAYOUT_NAMES[frame]

        def make(name, inputs):
            return ir.Input(name, inputs, input_shape=shape, input_kind=kind, static=static)
        return Val(Expr(make, (), "input", node.name, "", shape,
                        time=STATIC if static else SEQ), frame)

    def _function(self, node: fx.Node, c: _Call, args, kwargs):
        if node.target is _membrane_after:  # of the zeros a never-firing neuron returned
            held = self.held_after.get(id(args[0]))
            if held is not None:
                return held[2] if args[1:] == (True,) else held[1]
            if isinstance(args[0], Val) and not _depends_on_refused(args[0].expr):
                raise _Refuse("a firing neuron's membrane read from its module after a call: "
                              "snncc maps what such a neuron returns, its spikes (the membrane "
                              "of an IFNode that never fires, v_threshold=inf from v_reset 0, "
                              "is taken)")
            return args[0]  # (its call was refused: that refusal)
        leaves = _walk((args, kwargs))
        if not any(isinstance(a, _FROM_INPUT) for a in leaves):
            if isinstance(c.value, torch.Tensor):  # computed from constants only
                frames = [a.frame for a in leaves if isinstance(a, Const) and a.frame]
                value = _computed_in_float64(node, c.value, args, kwargs)
                return Const(c.value if value is None else value, frames[0] if frames else (),
                             value is not None)
            return c.value
        table = _METHODS if node.op == "call_method" else _FUNCTIONS
        handler = table.get(node.target)
        if handler is None:
            raise _Refuse("")
        if handler not in _ON_WINDOWS and _windowed(leaves):
            raise _Refuse(_WINDOWS_REFUSED)
        kwargs = {_TORCH_NAMES.get(k, k): v for k, v in kwargs.items()}
        out = handler(self, c, *args, **kwargs)
        x = args[0] if args else None
        if handler in _LAYOUT_HANDLERS and isinstance(x, Val) and x.expr in self.scaled \
                and isinstance(out, Val):  # the same layout of the unscaled value, made lazily
            unscaled, factor = self.scaled[x.expr]
            moved = handler(self, replace(c, site=None), unscaled, *args[1:], **kwargs)
            self.scaled[out.expr] = (moved, factor)
            if unscaled.expr in self.integers:
                self.integers.add(moved.expr)
        return out

    def _refused(self, c: _Call, msg: str, unknown: bool, args, kwargs):
        # (a value moved about is its value: an op refused on one computed from a refused op
        # is not a cause of its own)
        vals = [a.x if isinstance(a, FrameMoved) else a for a in _walk((args, kwargs))
                if isinstance(a, (Val, FrameMoved))]
        frame = vals[0].frame if vals else B
        vals += [v for a in _walk((args, kwargs)) if not isinstance(a, (Val, FrameMoved))
                 for v in _held_vals(a)]  # (what lazy values hold: their taint is theirs)

        def poison(v):
            if isinstance(v, (tuple, list)):
                items = [poison(i) for i in v]
                return type(v)(*items) if hasattr(v, "_fields") else type(v)(items)  # NamedTuple
            if isinstance(v, (bool, int, float, complex)) and vals:  # y.abs().max().item():
                # a number the graph would keep as the example's, which nothing then refuses
                self.errors[(c.path, f"{msg} (it reads a number computed from the input, which "
                                     "the graph would keep as the example input's)")] = None
            if not isinstance(v, torch.Tensor):
                return v
            shape = tuple(v.shape[len(frame):])
            if frame in WINDOWED and shape and shape[0] % self.samples_before(frame) == 0:
                shape = self.per_sample(tuple(v.shape), frame)  # (the windows' axis kept)
            return Val(_Refused(None, tuple(a.expr for a in vals), c.op, c.hint, c.path, shape,
                                message=msg, unknown=unknown), frame)
        return poison(c.value)

    # ------------------------------------------------------------------ helpers for handlers
    def new(self, c: _Call, make, operands: list[Val], frame, *, shape=None, time=None,
            hint=None) -> Val:
        """A new value computed by ``make`` from ``operands`` (time and step joined). ``shape``
        and ``hint`` are for the extra nodes of an op that maps to several (their site is the
        op's, told apart by the hint)."""
        t, s = _join_time([v.expr for v in operands])
        if shape is None:
            shape = self.per_sample(tuple(c.value.shape), frame)
        site = c.site if hint is None or c.site is None else (*c.site, hint)
        e = Expr(make, tuple(v.expr for v in operands), c.op, hint or c.hint, c.path,
                 tuple(shape), time or t, s, self.loop_site(site, s, c.op))
        if s is not None and e.site is not None:
            self._note_site(e)
        return Val(e, frame)

    def loop_site(self, site: tuple | None, step: int | None, op: str) -> tuple | None:
        """``site`` (module, stack, occurrence, ...) of an ``op`` value at ``step`` with its
        occurrence counted among the same op at that step, not within its module call: the
        same in every iteration of a loop over time, whether the loop calls a module once per
        step or runs inside one forward (a neuron written with tensor ops, ``for t in range(T):
        mem = mem * tau + x[:, t]``, runs each op of its stacks once per step; the product there
        is of step t - 1, the sum of step t). A module called at several places of one line
        has its calls told apart by their order at each step. An operator is named so also
        where a constant tensor's method recorded it (``b0 * 0.9 + x``: ``Tensor.add``)."""
        if site is None or step is None:
            return site
        module, stack, _, *rest = site
        op = _OPERATOR_OF.get(op, op)
        key = (module, stack, op, step, *rest)
        n = self._step_occurrences[key] = self._step_occurrences.get(key, -1) + 1
        return (module, stack, op, n, *rest)

    def _note_site(self, e: Expr) -> None:
        """Remember the latest step's value of each site; a site that occurs twice in one step
        or as different ops is ambiguous (None)."""
        old = self._sites.get(e.site, e)
        if old is None or (old is not e and (old.step == e.step or old.op != e.op
                                             or old.shape != e.shape)):
            self._sites[e.site] = None
        elif e.step >= old.step:
            self._sites[e.site] = e

    def per_sample(self, shape: tuple[int, ...], frame: tuple[str, ...]) -> tuple[int, ...]:
        """The IR's per-sample shape of a tensor of ``shape`` in ``frame``: its axes after the
        frame's; in a windowed frame the first of them holds one sample's windows."""
        shape = tuple(shape[len(frame):])
        if frame not in WINDOWED:
            return shape
        return (shape[0] // self.samples_before(frame), *shape[1:])

    def samples_before(self, frame: tuple[str, ...]) -> int:
        """How many samples (and steps) a windowed frame's first per-sample axis holds the
        windows of: B in ``[T, B*W, ...]``, T*B in ``[T*B*W, ...]``."""
        return self.size["B" if frame == TW else "TB"]

    def reshaped(self, x: Val, out: tuple[int, ...]) -> tuple[tuple[str, ...], tuple]:
        """The frame and IR per-sample shape of a reshape of ``x`` to ``out``: the frame's
        merged/split form, or windows of each sample moved into the batch axis and back
        (``[T, B, W, ...] -> [T, B*W, ...]``, :data:`WINDOWED`)."""
        size, n = self.size, math.prod(x.expr.shape)
        if x.frame in (TB, TBM, *WINDOWED):
            for f in WINDOWED:
                if len(out) <= len(f) or out[:len(f)] != tuple(size[d] for d in f) \
                        or out[len(f)] % self.samples_before(f):
                    continue
                shape = self.per_sample(out, f)
                if shape[0] > 1 and math.prod(shape) == n:
                    return f, shape
            if x.frame in WINDOWED:
                for f in (TB, TBM):
                    if out[:len(f)] == tuple(size[d] for d in f) \
                            and math.prod(out[len(f):]) == n:
                        return f, out[len(f):]
                raise _Refuse("it moves windows of each sample that were folded into the batch "
                              "axis ([T, B*W, ...]) anywhere but back into their samples")
        f = self.reframe(x, out)
        return f, out[len(f):]

    def reframe(self, x: Val, out: tuple[int, ...]) -> tuple[str, ...]:
        """The frame of a reshape of ``x`` to ``out``: the same one or its merged/split form."""
        for f in _RESHAPE_FRAMES[x.frame]:
            sizes = tuple(self.size[d] for d in f)
            if out[:len(f)] == sizes and math.prod(out[len(f):]) == math.prod(x.expr.shape):
                return f
        if x.frame == TB and len(out) > 2 and 1 < out[0] < self.T and out[0] * out[1] == self.T:
            raise _Refuse(f"it splits the time axis into {out[0]} chunks of {out[1]} steps "
                          "(STAtten's attention over chunks, spikingjelly's TemporalBinSum): a "
                          "step's values would depend on the other steps of its chunk, later "
                          "ones included, which a network computing one step after another "
                          "cannot have")
        if x.frame == TBM and out[:2] == (self.size["B"], self.T) != (self.T, self.size["B"]):
            raise _Refuse("it reads time and batch folded time first ([T*B, ...]) as batch "
                          f"first ([B, T, ...] = view(-1, {self.T}, ...)): each 'sample' would "
                          "hold steps of several samples")
        raise _Refuse("it mixes the time or batch axis with feature axes")

    def const(self, k, x: Val) -> np.ndarray:
        """A constant operand of ``x``'s op as a per-step array."""
        if not isinstance(k, Const):
            return np.asarray(float(k))
        v = _one_step(torch.as_tensor(k.value), len(k.frame))
        lead = v.dim() - len(x.expr.shape)
        if lead > 0:  # axes of the time and batch frame: one value along them (or expanded)
            if lead > len(x.frame) or any(n not in (1, self.size[f]) for n, f in
                                          zip(v.shape[:lead], x.frame[len(x.frame) - lead:])):
                raise _Refuse("a constant that broadcasts over the time or batch axis")
            v = _one_step(v, lead)
        return _np(v)

    def const_steps(self, k, x: Val) -> list[np.ndarray] | None:
        """A constant operand of ``x``'s op that differs from one step of ``x``'s time axis to
        the next (TEBN's per-step scale ``k.view(-1, 1, 1, 1, 1)`` of a ``[T, B, ...]`` value)
        as its T per-step arrays; None where it does not vary along that axis."""
        if not isinstance(k, Const) or k.frame or x.frame not in (TB, BT):
            return None
        v = torch.as_tensor(k.value)
        lead = v.dim() - len(x.expr.shape)
        axis = x.frame.index("T") - (len(x.frame) - lead)  # (of v's leading axes)
        if not 0 <= axis < lead or v.shape[axis] != self.T or self.T == 1:
            return None
        if torch.equal(v, v.narrow(axis, 0, 1).expand(v.shape)):
            return None
        return [self.const(Const(v.select(axis, t).unsqueeze(axis)), x) for t in range(self.T)]

    def step_selected(self, c: _Call, x: Val, per_step: list[Val]) -> Val:
        """The value that is ``per_step[t]`` at step t: each Hadamard-multiplied by whether the
        step is t (spikes of a step counter, :meth:`_step_counter`) and summed, which is
        exact, every other term being zero. All T values are computed at every step."""
        counter = self._step_counter(c, x)
        ones = (1,) * len(per_step[0].expr.shape)  # (a rank of its own: Lava's lanes)
        terms = []
        for t, v in enumerate(per_step):
            at = self.new(c, lambda n, i, t=t: ir.Gather(n, i, path=c.path, axis=0, index=(t,)),
                          [counter], x.frame, shape=(1,), hint=f"{c.hint}.step{t}")
            at = self.new(c, lambda n, i: ir.Reshape(n, i, path=c.path, target=ones), [at],
                          x.frame, shape=ones, hint=f"{c.hint}.step{t}.r")
            terms.append(self.new(c, lambda n, i: ir.Hadamard(n, i, path=c.path), [v, at],
                                  x.frame, shape=v.expr.shape, hint=f"{c.hint}.at{t}"))
        return self.new(c, lambda n, i: ir.Add(n, i, path=c.path), terms, x.frame,
                        shape=per_step[0].expr.shape, hint=f"{c.hint}.by_step")

    def module_per_step(self, c: _Call, modules: list[tuple[str, nn.Module]], x: Val) -> Val:
        """The module ``modules[t]`` (path, module) applied at step t (BNTT's batch norm of
        each step): each one's value at every step, :meth:`step_selected` (a model holding
        fewer than T fails in PyTorch)."""
        return self.step_selected(c, x, [
            _module_handler(m, None)(self, replace(c, path=path, hint=path,
                                                   site=c.site and (*c.site, t)), x)
            for t, (path, m) in enumerate(modules[:self.T])])

    def _step_counter(self, c: _Call, x: Val) -> Val:
        """Spikes of shape (T,) whose element t fires at step t alone: neurons that ignore
        their input (gamma 0, read from ``x`` so that they are part of its graph) and count the
        steps (alpha 1, beta 1) past thresholds 0..T-1, reset far below them."""
        n, T = math.prod(x.expr.shape), self.T
        flat = self.new(c, lambda nm, i: ir.Reshape(nm, i, path=c.path, target=(n,)), [x],
                        x.frame, shape=(n,), hint=f"{c.hint}.flat")
        first = self.new(c, lambda nm, i: ir.Gather(nm, i, path=c.path, axis=0, index=(0,) * T),
                         [flat], x.frame, shape=(T,), hint=f"{c.hint}.first")
        return self.new(c, lambda nm, i: ir.Neuron(
            nm, i, path=c.path, alpha=np.float64(1.0), gamma=np.float64(0.0),
            beta=np.float64(1.0), theta=np.arange(float(T)), v_reset=np.float64(-T),
            v_init=np.float64(0.0), cmp=cn.CMP_GT, reset=cn.RESET_HARD),
            [first], x.frame, shape=(T,), time=SEQ, hint=f"{c.hint}.step_counter")

    def step_of(self, c: _Call, x: Val, t: int, dim: int = 0) -> Val:
        """Step ``t`` of ``x``'s time axis, axis ``dim`` (0 of [T, B, ...], 1 of [B, T, ...])."""
        if x.frame not in (TB, BT) or x.frame.index("T") != dim:
            raise _Refuse("only the time axis of a [T, B, ...] or [B, T, ...] tensor can be "
                          "indexed")
        # a static value's step too is a step of the loop: a recurrence over its steps (a
        # neuron written with tensor ops on a repeated image) is a recurrence in time
        return Val(_StepOf(None, (x.expr,), c.op, c.hint, c.path, x.expr.shape, step=t), B)

    def note_sum(self, out: Val, x: Val, y: Val) -> None:
        """Remember the terms of a sum of values of a loop over time (see mean_over_steps)."""
        if x.expr.step is not None and y.expr.step is not None:
            self._step_terms[out.expr] = [*self._step_terms.get(x.expr, [x.expr]),
                                          *self._step_terms.get(y.expr, [y.expr])]

    def note_zero_pad(self, out: Val, x: Val, pads: tuple[int, ...]) -> None:
        """Remember ``out = F.pad(x, pads)`` (zero fill), for fold_pad and assign_border."""
        self._pad_borders[out.expr] = (x, pads, None)

    def mean_over_steps(self, c: _Call, x: Val) -> Val | None:
        """``(y_0 + ... + y_{T-1}) / T`` over the steps of a loop -> Readout, or None."""
        terms = self._step_terms.get(x.expr)
        if terms is None or [t.step for t in terms] != list(range(self.T)):
            return None
        return Val(_OverSteps(None, tuple(terms), c.op, c.hint, c.path, x.expr.shape,
                              time=READOUT, reduce="readout"), B)

    def fold_pad(self, c: _Call, x: Val, k: np.ndarray) -> Val | None:
        """``F.pad(y) + border`` with a per-channel border constant -> one Pad with that value."""
        if x.expr not in self._pad_borders:
            return None
        inner, pads, value = self._pad_borders[x.expr]
        try:
            k = np.broadcast_to(k, x.expr.shape)
        except ValueError:
            return None
        if k[:, ~_border(x.expr.shape, pads)].any():
            return None
        full = k if value is None else _bordered_array(x.expr.shape, pads, value) + k
        out = self._bordered(c, inner, pads, full, x.frame)
        return out if isinstance(out, Val) else None

    def assign_border(self, c: _Call, x, index, k: np.ndarray):
        """``out[index] = k`` on ``out = F.pad(y)`` (Meta-SpikeFormer's BNAndPadLayer sets each
        side of the border to its BN's per-channel value, one assignment each): the Pad with
        that value once the border is one value per channel, before that a PaddedBorder."""
        if isinstance(x, PaddedBorder):
            inner, pads, full, frame = x.inner, x.pads, x.full, x.frame
            shape = full.shape
        elif isinstance(x, Val) and x.expr in self._pad_borders:
            (inner, pads, value), frame, shape = self._pad_borders[x.expr], x.frame, x.expr.shape
            full = None if value is None else _bordered_array(shape, pads, value)
        else:
            raise _Refuse("an assignment into a tensor (out[...] = v) is taken only into the "
                          "border F.pad added")
        lead = len(frame)  # the time and batch axes
        if not (isinstance(index, tuple) and len(index) == lead + len(shape)
                and all(isinstance(i, slice) for i in index)
                and all(i == slice(None) for i in index[:lead])):
            raise _Refuse("an assignment is taken only with slices of every axis, the time and "
                          "batch axes whole")
        region = np.zeros(shape, bool)
        region[index[lead:]] = True
        if (region & ~_border(shape, pads)).any():
            raise _Refuse("an assignment inside the tensor F.pad padded, not only to its border")
        full = np.zeros(shape) if full is None else full.copy()
        full[region] = np.broadcast_to(k, shape)[region]
        return self._bordered(c, inner, pads, full, frame)

    def _bordered(self, c: _Call, inner: Val, pads: tuple[int, ...], full: np.ndarray,
                  frame) -> "Val | PaddedBorder":
        """``inner`` padded with the border ``full`` holds (zero inside): one Pad if that is one
        value per channel, else a PaddedBorder."""
        edge = full[:, _border(full.shape, pads)]
        if not (edge == edge[:, :1]).all():
            return PaddedBorder(inner, pads, full, frame)
        value = edge[:, 0].copy()
        out = self.new(c, lambda n, i: ir.Pad(n, i, path=c.path, pads=pads, value=value),
                       [inner], frame)
        self._pad_borders[out.expr] = (inner, pads, value)
        return out

    # ------------------------------------------------------------------ modules
    def _module(self, m: nn.Module, c: _Call, args, kwargs, dynamics):
        adapter = adapter_for(m)
        if _windowed(_walk((args, kwargs))) \
                and not isinstance(_torch_equivalent(m, adapter), _MODULES_ON_WINDOWS) \
                and (adapter is None or not adapter.is_neuron(m) or adapter.held_membrane(m)):
            raise _Refuse(_WINDOWS_REFUSED)
        if adapter is not None and adapter.is_neuron(m):
            if adapter.held_membrane(m):
                return self._never_firing(adapter, m, c, args, kwargs)
            return self._neuron(adapter, m, c, args, kwargs, dynamics)
        leaves = _walk((args, kwargs))
        if not any(isinstance(a, _FROM_INPUT) for a in leaves) \
                and isinstance(c.value, torch.Tensor):  # a recurrent layer on a zero state
            frames = [a.frame for a in leaves if isinstance(a, Const) and a.frame]
            value = _module_in_float64(m, args, kwargs)
            return Const(c.value if value is None else value, frames[0] if frames else (),
                         value is not None)
        chosen = self._module_of_each_step(m, c, args, kwargs)
        if chosen is not None:
            return chosen
        handler = _module_handler(m, adapter)
        if adapter is not None and adapter.step_mode(m) == STEP_MULTI:
            # a multi-step layer: its per-step layer applied to x.flatten(0, 1)
            x = args[0]
            if not isinstance(x, Val) or x.frame not in (TB, TW):
                raise _Refuse("a multi-step layer needs a [T, B, ...] input")
            y = handler(self, replace(c, value=c.value.flatten(0, 1)),
                        Val(x.expr, TBM if x.frame == TB else TWM))
            return Val(y.expr, x.frame)
        return handler(self, c, *args, **kwargs)

    def _module_of_each_step(self, m: nn.Module, c: _Call, args, kwargs) -> Val | None:
        """A call ``modules[t](x)`` at step t of a loop over time, each module of the list
        called once in the model (BNTT's official code, ``self.bntt_list[i][t]``): the list's
        module of each step (:meth:`module_per_step`), the same nodes at every step."""
        owner, _, k = c.path.rpartition(".")
        x = args[0] if len(args) == 1 and not kwargs else None
        if not owner or not k.isdigit() or not isinstance(x, Val) or x.expr.step != int(k):
            return None
        modules = self.root.get_submodule(owner)
        if not isinstance(modules, (nn.ModuleList, nn.Sequential)) or len(modules) < self.T \
                or any(self._module_calls[f"{owner}.{i}"] > 1 for i in range(len(modules))):
            return None
        shapes = {n: p.shape for n, p in m.state_dict().items()}
        if any(type(s) is not type(m) or {n: p.shape for n, p in s.state_dict().items()}
               != shapes for s in modules):
            return None
        return self.module_per_step(replace(c, path=owner, hint=owner),
                                    [(f"{owner}.{i}", s) for i, s in enumerate(modules)], x)

    def _never_firing(self, adapter: Adapter, m: nn.Module, c: _Call, args, kwargs):
        """A neuron that never fires (:meth:`Adapter.held_membrane`): zeros for its spikes, and
        the membrane its module holds after the call, which the model reads, the sum of its
        inputs so far: every call of the module adds its input to it, in a step and from one
        step to the next (StereoSpike's depth maps, one neuron called at four scales)."""
        x, state, _, spikes = adapter.single_step_call(m, args, kwargs, c.value)
        multi = adapter.step_mode(m) == STEP_MULTI
        if state is not None or not isinstance(x, Val) or multi and x.frame != TB:
            raise _Refuse("a neuron that never fires is taken single-step on a per-step tensor, "
                          "or multi-step on a [T, B, ...] sequence")
        before = self.held.get(c.path)
        if multi:  # its membrane at each step: the sum of the sequence's steps so far
            if before is not None:
                raise _Refuse("a multi-step neuron that never fires is taken at one call")
            shape = tuple(spikes.shape[2:])
            sequence = self.new(c, lambda n, i: self._integrator(n, i[0], running_sum(), shape,
                                                                 c.path), [x], TB, time=SEQ)
            held = self.step_of(c, sequence, self.T - 1)
        else:
            sequence = None
            if before is not None:
                held = _add(self, replace(c, value=spikes), before, x)
            elif x.expr.step is not None:  # a loop's first step: x itself, at the site of the
                # later steps' sums, so that step 1 reads the state they read (an x of its own
                # made step 1 differ from the steps after it: refused at T = 3)
                held = self.new(c, lambda n, i: ir.Scale(n, i, path=c.path, factor=1.0), [x],
                                x.frame, shape=x.expr.shape)
            else:
                held = x
        self.held[c.path] = held
        zeros = Const(spikes, x.frame)
        self.held_after[id(zeros)] = (zeros, held, sequence)
        return zeros

    def _neuron(self, adapter: Adapter, m: nn.Module, c: _Call, args, kwargs, dynamics):
        """``dynamics``: its parameters at the call (_note_dynamics), or why it has none."""
        if isinstance(dynamics, UnsupportedError):
            raise dynamics
        p = dynamics
        x, state, returns_state, spikes = adapter.single_step_call(m, args, kwargs, c.value)
        if isinstance(x, Const) and x.frame == B and adapter.step_mode(m) != STEP_MULTI:
            # a loop's first steps reading a constant where later steps read a traced value of
            # an earlier step (spikingjelly's single-step Delay returns zeros at first): the
            # graph's Delay of that value starts at the constant (_start_values)
            return self._stepped_call(c, p, None, spikes, x.frame, state, returns_state)
        if isinstance(x, Const):
            raise _Refuse("its input does not depend on the model's input (a constant, such as "
                          "learned tokens): a neuron of the graph is driven by the input")
        if not isinstance(x, Val) or x.expr.time == READOUT:
            raise _Refuse("a neuron's input must be a per-step tensor")
        c = replace(c, value=spikes)
        one_step = adapter.step_mode(m) == STEP_MULTI and x.frame == B1 and state is None \
            and adapter.keeps_state(m)  # a sequence of one step: the k-th call is step k
        if adapter.step_mode(m) == STEP_MULTI and not one_step:
            folded = x.frame in (TBM, BTM)
            if x.frame not in (TB, TBM, BTM, TW) or x.expr.step is not None or state is not None:
                raise _Refuse("a multi-step neuron needs a [T, B, ...] input and no state")
            if folded:  # QKFormer's official code feeds its attention's proj_lif [T*B, C, N]
                self.graph.meta.setdefault("batch_coupled", {})[c.path] = _LAYOUT_NAMES[x.frame]
            if adapter.keeps_state(m):
                if c.path in self._multi_step_called or c.path in self.neurons:
                    raise _Refuse("called a second time in one forward, it goes on from the "
                                  "membrane its first call left: use one neuron module per call")
                self._multi_step_called.add(c.path)
            shape = self.per_sample(tuple(spikes.shape), x.frame)
            out = self.new(c, lambda n, i: self._integrator(n, i[0], p, shape, c.path)
                           if isinstance(p, Integrator) else _neuron_node(
                               n, (self._neuron_input(n, i[0], p, shape, c.path),), c.path, p),
                           [x], x.frame, time=SEQ)
            return (out, *[Membrane(c.path, self.T - 1, shape, True)] * int(returns_state)) \
                if returns_state else out
        if x.frame != B and not one_step:
            raise _Refuse("a single-step neuron needs a [B, ...] input")
        if one_step and c.path in self._multi_step_called:
            raise _Refuse("called on a whole sequence and on single steps in one forward")
        return self._stepped_call(c, p, x.expr, spikes, x.frame, state, returns_state)

    def _stepped_call(self, c: _Call, p, x: Expr | None, spikes, frame, state,
                      returns_state: bool):
        """A single-step neuron's call, on ``x`` (None: a constant, at a loop's first steps)."""
        shape = tuple(spikes.shape[len(frame):])
        rec = self.neurons.setdefault(c.path, _SteppedNeuron(p, shape, {}))
        if rec.calls and not _same_dynamics(p, rec.params, rec.shape):
            raise _Refuse("its parameters (threshold, decay, reset ...) differ from its first "
                          "call's: one neuron of the graph has one set")
        t = self._step_of_call(c.path, rec, state, returns_state)
        if t in rec.calls or (x is not None and (x.step or 0) > t) or t >= self.T:
            raise _Refuse(f"its call for step {t} does not fit a loop over T={self.T} steps")
        rec.calls[t] = x
        out = Val(_NeuronStep(None, (), c.op, c.hint, c.path, rec.shape, step=t, site=c.site),
                  frame)
        return (out, *[Membrane(c.path, t, rec.shape)] * int(returns_state)) \
            if returns_state else out

    def _integrator(self, name: str, x: str, p: Integrator, shape: tuple,
                    path: str) -> ir.Node:
        """The output node of a non-spiking cell reading ``x``; its other nodes (which read the
        output back through Delays) enter the graph here."""
        *nodes, out = p.build(name, x, shape, **({"steps": self.T} if p.window else {}))
        for n in nodes:
            self.graph.add(n)
        self._count_levels(path, nodes, p)
        return out

    def _count_levels(self, path: str, nodes: list, p: Integrator) -> None:
        """``graph.meta['count_modules']``: module path -> its level neurons (the neurons among
        ``nodes``), for a module whose output counts (``Integrator.levels``; ``check`` compares
        them)."""
        if p.levels:
            self.graph.meta.setdefault("count_modules", {})[path] = [
                n.name for n in nodes if isinstance(n, ir.Neuron)]

    def _neuron_input(self, name: str, x: str, p, shape: tuple, path: str) -> str:
        """The input node of neuron ``name``: ``x``, or the membrane a NeuronCircuit's nodes
        compute from ``x`` (added to the graph here)."""
        if not isinstance(p, NeuronCircuit):
            return x
        try:
            nodes, membrane = p.build(name, x, shape,
                                      **({"steps": self.T} if p.window else {}))
            for n in nodes:
                self.graph.add(n)
        except IRError as err:
            self.errors[(path, f"neuron circuit: {err.message}")] = None
            return x
        return membrane

    @staticmethod
    def _step_of_call(path: str, rec: _SteppedNeuron, state, returns_state: bool) -> int:
        """The time step of a single-step neuron's call (adapters' table in their docstring)."""
        if state is STATE_KEPT:
            return len(rec.calls)
        if state is None:
            return 0 if returns_state else len(rec.calls)
        if isinstance(state, Membrane) and state.path == path:
            return state.step + 1
        if isinstance(state, Const) and _is_initial_state(state.value, rec.params.v_init):
            return 0
        raise _Refuse("its state argument is neither its initial state nor its own state from "
                      "the step before")

    # ------------------------------------------------------------------ graph emission
    def finish(self, outputs) -> Graph:
        outs = [_val(o) if isinstance(o, (Membrane, SumOverTime)) else o
                for o in returned_items(outputs)]
        for o in outs:  # a partial form (x.permute(..., 0) not yet reduced, ...): why not one
            if isinstance(o, _FROM_INPUT) and not isinstance(o, Val):
                for v in vars(o).values():  # an unsupported op it holds the value of comes first
                    if isinstance(v, Val) and _depends_on_refused(v.expr):
                        self.materialize(v.expr, self.T - 1)
                if self.errors:
                    raise _unsupported(list(self.errors))
                try:
                    _val(o)
                except _Refuse as why:
                    raise UnsupportedError(f"the model's output: {why}") from None
        if not outs or not all(isinstance(o, Val) for o in outs):
            returned = ", ".join("a tensor" if isinstance(o, Val) else "a constant"
                                 if isinstance(o, Const) else type(o).__name__ for o in outs) \
                or "nothing the trace computes"
            why = ("; a constant or a number is a value the trace does not compute from the "
                   "input, such as a firing neuron's membrane read from its module after a call "
                   "('self.lif.v', 'self.lif.v_seq': snncc maps what such a neuron returns, its "
                   "spikes; the membrane of an IFNode that never fires, v_threshold=inf from "
                   "v_reset 0, is taken, as are spikingjelly's NonSpikingLIFNode's)"
                   if not outs or any(isinstance(o, (Const, int, float)) for o in outs) else "")
            raise UnsupportedError(f"the model must return tensors computed from its input; it "
                                   f"returns ({returned}){why}: wrap it in a module that returns "
                                   f"its output tensor(s) alone")
        for i, o in enumerate(outs):
            name = self.materialize(o.expr, self.T - 1)
            if name is not None:
                self.graph.add(ir.Output(self._fresh("output" if len(outs) == 1 else
                                                     f"output_{i}"), (name,)))
        while self._queue:
            self._queue.pop()()
        consumers = self.graph.consumers()
        for rec in self.neurons.values():  # only its membrane read (a readout that never fires)
            if rec.membrane is not None and not consumers.get(rec.name):
                self.graph.remove(rec.name)
        if any(o.frame in WINDOWED for o in outs) and not self.errors:
            raise UnsupportedError("the model returns windows of each sample folded into the "
                                   "batch axis ([T, B*W, ...]): put them back into their "
                                   "samples ([T, B, ...]) before returning them")
        self.graph.meta["output_layout"] = _LAYOUT_NAMES[outs[0].frame]
        self.graph.meta["output_layouts"] = [_LAYOUT_NAMES[o.frame] for o in outs]
        self.graph.meta["neuron_modules"], self.graph.meta["neuron_module_calls"] = \
            self._neuron_modules()
        if self.T > 1 and (self._delays or self.neurons or self._step_occurrences):
            # the model's own loop over time, unrolled: the graph is its latest steps' form,
            # which its first steps may not share (api.compile verifies it)
            self.graph.meta["own_loop"] = True
        self._counting_modules()
        if self.errors:
            raise _unsupported(list(self.errors))
        self.graph.verify()
        names = {e: n for (e, _), n in self._done.items() if n and e in self.kinds_needed}
        unused = {x.expr for e, x in self.clamped_to_one.items()
                  if not any(self._done.get((e, t)) for t in (None, *range(self.T)))}
        wrong = {(path, f"op '{op}' is not supported ({why}: this value is "
                        f"{self.graph[names[e]].kind.value})"): None
                 for e, (path, op, kinds, why) in self.kinds_needed.items()
                 if e in names and e not in unused and self.graph[names[e]].kind not in kinds}
        if wrong:
            raise _unsupported(list(wrong))
        return self.graph

    def _neuron_modules(self) -> tuple[dict[str, list[list[str]]], dict[str, list[int]]]:
        """Module path -> [node, layout] for each call of a module (a neuron written with plain
        tensor ops) that returns the spikes of a comparison of its own, in the layout it
        returns them ([node, layout, unit] for spikes times a unit: :meth:`_spikes_returned`);
        ``[[node, "steps"], ...]`` for a module called k times at every step of a loop (its
        calls are the steps of k nodes, one per place in the step), with, where k > 1, the
        node of each call in the order of the calls (layers sharing a spike function module:
        the second mapping). What ``check`` compares with the graph's nodes; other
        comparisons have no module output (a module reused at several places has one node per
        call)."""
        found, orders = {}, {}
        for path, calls in self._returned.items():
            steps = [v.expr.step for v in calls]
            per_step = None not in steps
            if per_step:
                place = [steps[:j].count(s) for j, s in enumerate(steps)]
                if len(set(collections.Counter(steps).values())) != 1 \
                        or set(steps) != set(range(self.T)):  # (a constant at a first step:
                    continue  # spikingjelly's RAFNode, traced: its node computes other values)
                calls = [v for v, s in zip(calls, steps) if s == max(steps)]
                if len(calls) > 1:
                    orders[path] = place
            elif any(s is not None for s in steps):
                continue
            spikes = [self._spikes_returned(self._done.get((v.expr, v.expr.step)), path)
                      for v in calls]
            if None not in spikes:
                found[path] = [[n, "steps" if per_step else _LAYOUT_NAMES[v.frame],
                                *([unit] if unit != 1 else [])]
                               for (n, unit), v in zip(spikes, calls)]
        return found, {p: order for p, order in orders.items() if p in found}

    def _spikes_returned(self, name: str | None, path: str) -> tuple[str, float] | None:
        """(comparison, unit) where the node ``name`` a call of module ``path`` returned is a
        comparison of the module's own (unit 1) or one times a nonzero number (QCFS's neuron
        returns ``spike * thre``); else None."""
        node = self.graph.nodes.get(name)
        unit = 1.0
        if isinstance(node, ir.Scale) and node.factor.size == 1 and node.factor.item() != 0:
            name, unit = node.inputs[0], node.factor.item()
        if name in self.comparisons and self.graph[name].path == path:
            return name, unit
        return None

    def _counting_modules(self) -> None:
        """``graph.meta['count_modules']`` (and ``'count_units'``) for a module called once that
        returns a count of its own, round(clamp(x, 0, D)), or that count times a power of two
        (Spike-Driven Transformer V3's ``MultiSpike``, count / D): its level neurons, which
        ``check`` compares with the module's output divided by the unit."""
        for path, calls in self._returned.items():
            v = calls[-1]  # a module called once per step: its last call's nodes are its steps'
            per_step = all(c.expr.step is not None for c in calls)
            if not per_step and (len(calls) != 1 or v.expr.step is not None
                                 or v.frame not in (TB, TBM) + ((B,) if self.T == 1 else ())):
                continue
            count, unit = self.scaled.get(v.expr, (v, 1.0))
            names = [self._done.get((lv.expr, lv.expr.step))
                     for lv in self.counts.get(count.expr, ())]
            if names and all(n in self.comparisons and self.graph[n].path == path
                             for n in names):
                self.graph.meta.setdefault("count_modules", {})[path] = names
                if unit != 1:
                    self.graph.meta.setdefault("count_units", {})[path] = unit

    def materialize(self, e: Expr, t: int | None) -> str | None:
        """The name of the node computing ``e`` as seen at step ``t`` (None: failed)."""
        if e.step is None:
            t = None
        elif t is None:
            t = e.step
        key = (e, t)
        if key not in self._done:
            self._done[key] = self._emit(e, t)
        return self._done[key]

    def _emit(self, e: Expr, t: int | None) -> str | None:
        if isinstance(e, _Refused):
            for a in e.args if e.tainted else ():  # the unsupported ops it depends on
                self.materialize(a, t)
            if e.unknown or not e.tainted:  # (a layout refusal may come from a tainted input)
                self.errors[(e.path, e.message)] = None
            return None
        if isinstance(e, _StepOf):  # (a static value is the same at every step: no delay)
            src = self.materialize(e.args[0], None)
            return src if e.args[0].time == STATIC else self._delay(src, t - e.step, e)
        if isinstance(e, _NeuronStep):
            return self._delay(self._stepped_neuron(e.path), t - e.step, e)
        if isinstance(e, _MembraneStep):
            return self._delay(self._membrane(e.path), t - e.step, e)
        if isinstance(e, _OverSteps):
            return self._over_steps(e)
        if isinstance(e, _RunningMax):
            return self._running_max(e, t)
        if isinstance(e, _RunningSum):
            return self._running_sum(e, t)
        if isinstance(e, _ConvOverTime):
            return self._conv_over_time(e, t)
        if t is not None and t > e.step and all(a.step is not None for a in e.args) \
                and (e in self._called or self._starts_at_zero(e, t - e.step)):
            return self._delayed(e, t - e.step)
        inputs = tuple(self.materialize(a, t) for a in e.args)
        if None in inputs:
            return None
        if isinstance(e, _Slice):
            return self._slice(e, inputs[0])
        return self._add(e, lambda: e.make(self._fresh(e.hint), inputs))

    def _chain(self, e: Expr, src: str, steps) -> str | None:
        """Nodes applied one after the other to ``src``: ``steps`` are (hint suffix, shape,
        make(name, input)); the last one has ``e``'s shape."""
        for suffix, shape, make in steps:
            if src is None:
                return None
            part = replace(e, shape=shape, hint=f"{e.hint}.{suffix}")
            src = self._add(part, lambda: make(self._fresh(part.hint), src))
        return src

    def _slice(self, e: _Slice, src: str) -> str | None:
        """A slice as existing nodes: seen as rows [r0, r1) of (P, R, W), rows of g elements of
        the axis. Spikes stay spikes: row r is a one-row MaxPool2d over a zero row prepended
        and row r (dilation r + 1), exact as spikes are >= 0; several rows are concatenated.
        Any other kind: a Linear with one-hot rows (exact: x * 1 + y * 0 == x)."""
        shape = self.graph[src].shape
        P, L, Q = math.prod(shape[:e.axis]), shape[e.axis], math.prod(shape[e.axis + 1:])
        if self.graph[src].kind is not ir.Kind.SPIKE:
            return self._chain(e, src, _select_columns(e, P, L, Q))
        g = math.gcd(e.start, e.stop, L)
        R, W = L // g, g * Q
        rows3 = self._chain(e, src, [("rows", (P, R, W), lambda n, i: ir.Reshape(
            n, (i,), path=e.path, target=(P, R, W)))])
        padded = self._chain(e, rows3, [("pad", (P, R + 1, W), lambda n, i: ir.Pad(
            n, (i,), path=e.path, pads=(0, 0, 1, 0)))]) if e.stop // g > 1 else None
        picked = [self._chain(e, padded if r else rows3,
                              [(f"row{r}", (P, 1, W), _pick_row(e, r, R))])
                  for r in range(e.start // g, e.stop // g)]
        if len(picked) > 1:
            joined = replace(e, shape=(P, len(picked), W), hint=f"{e.hint}.rows_cat")
            if None in picked:
                return None
            out = self._add(joined, lambda: ir.Concat(self._fresh(joined.hint), tuple(picked),
                                                      path=e.path, axis=1))
        else:
            out = picked[0]
        return self._chain(e, out, [("out", e.shape, lambda n, i: ir.Reshape(
            n, (i,), path=e.path, target=e.shape))])

    def _add(self, e: Expr, build: Callable[[], ir.Node]) -> str | None:
        try:
            node = build()
            key = _node_key(node)
            for name in self._keys.get(key, ()):
                if _same_arrays(node, self.graph[name]):
                    return name
            self.graph.add(node)
        except IRError as err:
            self.errors[(e.path, f"op '{e.op}' is not supported ({err.message})")] = None
            return None
        if node.shape != e.shape:
            self.errors[(e.path, f"op '{e.op}': traced shape {e.shape}, but the IR node has "
                                 f"{node.shape}")] = None
        self._keys.setdefault(key, []).append(node.name)
        return node.name

    def _fresh(self, hint: str) -> str:
        name, i = hint, 1
        while name in self.graph:
            name, i = f"{hint}_{i}", i + 1
        return name

    def _delay(self, name: str | None, steps: int, e: Expr) -> str | None:
        if name is None or steps == 0:
            return name
        kind = self.graph[name].kind if name in self.graph else ir.Kind.SPIKE

        def build():
            return ir.Delay(self._fresh(f"{name}.delay"), (name,), path=e.path, steps=steps,
                            shape_hint=e.shape, kind_hint=kind)
        return self._add(e, build)

    def _delayed(self, e: Expr, steps: int) -> str | None:
        """``e``, computed at an earlier step of the loop, ``steps`` steps later: a Delay of the
        node that computes e's site in the latest step (which every step then shares). The
        Delay may close a cycle, so its input is connected once the rest is built; until then
        it declares spikes, the kind every consumer accepts (verify re-checks the real one).
        Where the model's value before the first step is not 0 (:meth:`_start_values`), Delays
        of one step, each followed by its first value (:meth:`_started`)."""
        target = self._sites.get(e.site) or e
        if (target, steps) not in self._delays:
            starts = self._start_values(target, steps)
            if starts is not None and not any(v.any() for v in starts):
                starts = None
            node = ir.Delay(self._fresh(f"{target.hint}.delay"), (f"{target.hint}.pending",),
                            path=target.path, steps=1 if starts else steps,
                            shape_hint=target.shape)
            self.graph.add(node)
            self._delays[(target, steps)] = self._started_steps(target, node.name, starts or ())

            def connect():
                name = self.materialize(target, target.step)
                if name is not None:
                    node.inputs = (name,)
                    node.kind_hint = node.kind = self.graph[name].kind
            self._queue.append(connect)
        return self._delays[(target, steps)]

    def _starts_at_zero(self, e: Expr, steps: int) -> bool:
        """Whether e, delayed by ``steps``, starts at 0 in the model as far as its first steps
        tell (:meth:`_start_values`, of a call's value). One of the nodes an op maps to (its
        negation, ...) starts at 0 where its operands do; else it is built from its operands
        delayed (Delays commute with its per-step node) and gets no Delay of its own."""
        if e in self._called or not e.args:
            starts = self._start_values(self._sites.get(e.site) or e, steps)
            return starts is None or not any(v.any() for v in starts)
        return all(self._starts_at_zero(a, steps + e.step - a.step) for a in e.args
                   if a.step is not None)

    def _started_steps(self, e: Expr, delayed: str | None, starts) -> str | None:
        """``delayed`` (a Delay of one step) delayed further, len(starts) steps in all, its
        value at step k ``starts[k]``: one-step Delays, each followed by its start where it
        is not 0 (:meth:`_started`), step -1's first."""
        out = delayed
        for i, start in enumerate(reversed(starts)):
            if i:
                out = self._delay(out, 1, e)
            if out is not None and start.any():
                out = self._started(e, out, start)
        return out

    def _started(self, e: Expr, delayed: str, start: np.ndarray) -> str:
        """``delayed`` (of one step) but ``start`` at the first step."""
        name = self._fresh(f"{e.hint}.started")
        for node in ir.started_delay(name, delayed, start, e.path):
            self.graph.add(node)
        return name

    def _start_values(self, e: Expr, steps: int) -> list[np.ndarray] | None:
        """The values the site of ``e`` (an op's traced value in a loop over time) has in the
        model at steps -steps .. -1, before the loop's first step, or None where unknown: at
        the loop's first steps the op ran on constants (the state the loop starts with; SRNN's
        threshold ``b_j0 + beta * b`` from b0) and its value entered a call reading it, as a
        constant operand where the same call at later steps reads e's traced value. A call
        of step u reading e's value of step s reads, at step u - s - m, its value of step -m
        (its site numbers it among the same op at the same step: the same at every step), as
        a call of step u + 1 reads e's site's value of step u (the loop's last step's value has
        no call reading it: QCFS's membrane ``mem = 0.5 * thre`` before its loop)."""
        for site, lag, k in sorted(self._consumers.get(e.site, ()), key=repr):
            values = []
            for m in range(steps, 0, -1):
                operands = self._early.get((site, lag - m), ())
                value = _start_array(operands[k] if k < len(operands) else None, e.shape)
                if value is None:
                    break
                values.append(value)
            else:
                return values
        return None

    def _same_each_step(self, e: Expr, exprs: dict[int, Expr],
                        last: int | None = None) -> str | None:
        """The node of the last step's value (``exprs[last]``, of step ``last``: T - 1 unless
        given); checks the step before gives the same node. Step 0 may differ where the value
        reads a loop state (it starts elsewhere); a value of a static input alone may not (at
        T = 2, a loop reading ``x[:, t]`` of an input read as a static image: its channels)."""
        last = self.T - 1 if last is None else last
        name = self.materialize(exprs[last], last)
        first = 1 if exprs[last].time == STATIC else 2
        # a static value (of static inputs alone: no loop state explains a first step of its
        # own) is the same at every step, the first included (x - P, P the value before,
        # starting at 0: x at step 0, 0 after)
        earlier = [k for k in [last - 1] + ([0] if first == 1 and last > 1 else [])
                   if exprs.get(k) is not None]  # (None: a constant, at a loop's first steps)
        if last >= first and name is not None and any(
                self.materialize(exprs[k], k) != name for k in earlier):
            self.errors[(e.path, f"op '{e.op}': the loop over time does not compute the same "
                                 "thing at every step")] = None
            return None
        return name

    def _stepped_neuron(self, path: str) -> str:
        """The node of a single-step neuron. It enters the graph at once with its shape
        declared; its input (which may read it back through a delay) is connected later."""
        rec = self.neurons[path]
        if rec.name is None:
            pending = f"{path}.pending"
            if isinstance(rec.params, Integrator):  # its nodes now, their input connected later
                nodes = rec.params.build(self._fresh(path), pending, rec.shape)
                self._count_levels(path, nodes, rec.params)
                kind = ir.Kind.REAL
            else:
                nodes = [_neuron_node(self._fresh(path), (pending,), path, rec.params)]
                kind = ir.Kind.SPIKE
            for n in nodes:
                self.graph.add(n)
                n.shape, n.kind = rec.shape, kind
            node = nodes[-1]
            rec.name = node.name

            def connect():
                first = next((e for e in rec.calls.values() if e is not None), None)
                op = f"op '{type(self.root.get_submodule(path)).__name__}'"
                if sorted(rec.calls) != list(range(self.T)):
                    once = ("; if a loop outside the model calls it once per step, trace a "
                            "module that runs that loop" if sorted(rec.calls) == [0] else "")
                    self.errors[(path, f"{op}: called at steps {sorted(rec.calls)}, not at "
                                       f"every step 0..{self.T - 1}{once}")] = None
                elif rec.calls[self.T - 1] is None:
                    self.errors[(path, f"{op}: its input is a constant at the last step of the "
                                       "loop, not a per-step tensor")] = None
                elif (inp := self._same_each_step(first, rec.calls)) is None:
                    return
                elif kind is ir.Kind.REAL:
                    for n in nodes:
                        n.inputs = tuple(inp if i == pending else i for i in n.inputs)
                else:
                    node.inputs = (self._neuron_input(node.name, inp, rec.params, rec.shape,
                                                      path),)
                    rec.membrane = node.inputs[0]
                    if rec.tap is not None:
                        rec.tap.inputs = (rec.membrane,)
            self._queue.append(connect)
        return rec.name

    def _membrane(self, path: str) -> str | None:
        """The node of the membrane a single-step neuron returned, for a NeuronCircuit (whose
        nodes compute it; the canonical neuron keeps its own inside). Before the neuron's input
        is connected, an identity Scale that reads it once it is (removed by the passes)."""
        rec = self.neurons.get(path)
        if rec is None or not isinstance(rec.params, NeuronCircuit):
            self.errors[(path, "the membrane this neuron returns is its internal state (no IR "
                               "node computes it; snncc compiles the spikes): return or compute "
                               "with its spikes" + ("" if rec is None else ", or use a reset "
                               "whose membrane snncc builds (snnTorch's default 'subtract')"))] \
                = None
            return None
        self._stepped_neuron(path)
        if rec.membrane is not None:
            return rec.membrane
        if rec.tap is None:
            rec.tap = ir.Scale(self._fresh(f"{rec.name}.membrane"), (f"{path}.pending",),
                               path=path, factor=1.0)
            self.graph.add(rec.tap)
            rec.tap.shape, rec.tap.kind = rec.shape, ir.Kind.REAL
        return rec.tap.name

    def _over_steps(self, e: _OverSteps) -> str | None:
        if e.starts:  # the series at its own steps, delayed, its first values the starts
            name = self._same_each_step(e, dict(enumerate(e.args)), len(e.args) - 1)
            return self._started_steps(e, self._delay(name, 1, e), e.starts)
        name = self._same_each_step(e, dict(enumerate(e.args)))
        if name is None or e.reduce == "stack":
            return name
        return self._add(e, lambda: ir.Readout(self._fresh(e.hint), (name,), path=e.path))

    def _running_sum(self, e: _RunningSum, t: int | None) -> str | None:
        """s[t] = s[t-1] + x[t], s[-1] = 0 (a Delay's start): torch's sum over the time axis
        in its order, (x[0] + x[1]) + x[2] ..., read at the last step."""
        src = self.materialize(e.args[0], t)
        if src is None:
            return None
        name = self._fresh(e.hint)
        for node in (ir.Delay(f"{name}.before", (name,), path=e.path, steps=1, shape_hint=e.shape,
                              kind_hint=ir.Kind.REAL),
                     ir.Add(name, (f"{name}.before", src), path=e.path)):
            self.graph.add(node)
        return name

    def _conv_over_time(self, e: _ConvOverTime, t: int | None) -> str | None:
        """At the last step, step k's value is the input delayed T - 1 - k steps: each is
        convolved with its slice of the kernel and the terms added in the steps' order."""
        src = self.materialize(e.args[0], t)
        steps, total = len(e.convs), None
        column = (*e.steps_shape, 1)
        for k, conv in enumerate(e.convs):
            then = self._delay(src, steps - 1 - k, replace(e, shape=e.steps_shape))
            term = self._chain(e, then, [
                (f"step{k}.column", column,
                 lambda n, i: ir.Reshape(n, (i,), path=e.path, target=column)),
                (f"step{k}", e.shape, lambda n, i, conv=conv: conv(n, (i,)))])
            total = term if total is None else self._chain(e, term, [(
                f"upto{k}", e.shape, lambda n, i, before=total: ir.Add(n, (before, i),
                                                                      path=e.path))])
            if total is None:
                return None
        return total

    def _running_max(self, e: _RunningMax, t: int | None) -> str | None:
        """m[t] = max(m[t-1], x[t]), m[-1] the floor or below every finite float32: the two
        stacked on an axis and max-pooled (exact), m[t-1] a Delay started there
        (:func:`ir.started_delay`)."""
        src = self.materialize(e.args[0], t)
        if src is None:
            return None
        n, name = math.prod(e.shape), self._fresh(e.hint)
        floor = np.full(e.shape, -float(np.finfo(np.float32).max)) if e.floor is None \
            else e.floor
        nodes = [ir.Delay(f"{name}.before", (name,), path=e.path, steps=1, shape_hint=e.shape,
                          kind_hint=ir.Kind.REAL),
                 *ir.started_delay(f"{name}.from", f"{name}.before", floor, e.path),
                 ir.Reshape(f"{name}.so_far", (f"{name}.from",), path=e.path, target=(1, 1, n)),
                 ir.Reshape(f"{name}.now", (src,), path=e.path, target=(1, 1, n)),
                 ir.Concat(f"{name}.pair", (f"{name}.so_far", f"{name}.now"), path=e.path,
                           axis=1),
                 ir.MaxPool2d(f"{name}.max", (f"{name}.pair",), path=e.path, kernel_size=(2, 1),
                              stride=(2, 1)),
                 ir.Reshape(name, (f"{name}.max",), path=e.path, target=e.shape)]
        for node in nodes:
            self.graph.add(node)
        return name


_RESHAPE_FRAMES = {TB: (TB, TBM), TBM: (TBM, TB), B: (B, B1), B1: (B1, B), BT: (BT, BTM),
                   BTM: (BTM, BT)}
_FRAME_JOIN = {(TB, B): TB, (TB, B1): TB, (B1, B): B1}


def _join_time(exprs: list[Expr]) -> tuple[str, int | None]:
    times = {e.time for e in exprs} - {STATIC}
    if len(times) > 1:
        raise _Refuse("it mixes the mean over time with per-step values")
    steps = [e.step for e in exprs if e.step is not None]
    if steps and any(e.step is None and e.time != STATIC for e in exprs):
        raise _Refuse("it mixes one step of a loop over time with a whole sequence")
    return (times.pop() if times else STATIC), (max(steps) if steps else None)


def _join_frames(x: Val, y: Val) -> tuple[str, ...]:
    if len(x.expr.shape) != len(y.expr.shape):
        raise _Refuse("operands of different rank would broadcast across time or batch")
    if x.frame == y.frame:
        return x.frame
    for a, b in ((x, y), (y, x)):
        joined = _FRAME_JOIN.get((a.frame, b.frame))
        if joined and b.expr.time == STATIC:
            return joined
    raise _Refuse("its operands have different time/batch layouts")


def _unsupported(errors: list[tuple[str, str]]) -> UnsupportedError:
    if len(errors) == 1:
        path, msg = errors[0]
        return UnsupportedError(msg, path=path or None)
    listed = "; ".join(f"module '{p}': {m}" if p else m for p, m in errors)
    return UnsupportedError(f"{len(errors)} unsupported ops: {listed}")


# ============================================================================ neurons

def _is_initial_state(value, v_init: float) -> bool:
    """A constant state argument meaning "start from v_init": empty, or v_init everywhere."""
    v = torch.as_tensor(value)
    return v.numel() == 0 or bool((v == v_init).all())


# ============================================================================ op handlers
# Each takes (builder, call, *the op's arguments) with traced tensors as Val, constants as
# Const or Python numbers, and returns the op's value; _Refuse for what it cannot map.

#: numpy's names for arguments that torch's ops also accept under them
_TORCH_NAMES = {"axis": "dim", "keepdims": "keepdim"}


def _val(x) -> Val:
    if isinstance(x, SumOverTime):
        return x.total
    if isinstance(x, TimeAxisLast):
        raise _Refuse("it moves the time axis last, which only a mean or sum over that axis may "
                      "read")
    if isinstance(x, AxisFirst):
        raise _Refuse("it moves a per-sample axis ahead of the time and batch axes, which only "
                      "indexing that axis (qkv[0], qkv.unbind(0)) may read")
    if isinstance(x, AfterStart):
        raise _Refuse("a constant stacked before the T steps of a loop (T + 1 entries) is taken "
                      "only by a maximum over the time axis")
    if isinstance(x, Stacked):
        raise _Refuse("values stacked on a new first axis (a state, torch.stack([v, z])) are "
                      "taken only apart again (v, z = state; state[0]; state.unbind(0))")
    if isinstance(x, Membrane) and x.multi_step:
        raise _Refuse("the state a multi-step neuron returns beside its spikes is not computed "
                      "by the graph (snncc compiles the spikes): return or compute with them")
    if isinstance(x, Membrane):
        return Val(_MembraneStep(None, (), "membrane", f"{x.path}.membrane", x.path, x.shape,
                                 step=x.step), B)
    if isinstance(x, ConstMinus):
        raise _Refuse("(constant - tensor) is taken only as a factor of a product, x * (1 - y): "
                      "the IR adds no constant to a tensor")
    if isinstance(x, PaddedBorder):
        raise _Refuse("a padded tensor whose border was assigned in part is used before its "
                      "border is one value per channel (each side assigned the same values)")
    if isinstance(x, FrameMoved):
        raise _Refuse("it reads a value whose time or batch axis transposes moved among its "
                      "other axes (only transposes back and a BatchNorm of a per-sample channel "
                      "axis may)")
    if isinstance(x, Assembled) and x.per_sample:
        raise _Refuse("a tensor assigned position by position along an axis (out[:, i] = v) is "
                      "read before every position is assigned")
    if isinstance(x, Assembled):
        raise _Refuse("a sequence assigned step by step (out[t] = v) is read before each of its "
                      "T steps is assigned")
    if isinstance(x, CountResidual):
        raise _Refuse("a count minus the clamp it was made of is taken only added back to the "
                      "clamp, y + (round(y) - y).detach() (a straight-through estimator)")
    if isinstance(x, (Clamped, Rounded)):
        raise _Refuse("clamp(x, 0, D) of real values is supported only rounded, round(clamp(x, "
                      "0, D)), or floor(clamp(x, 0, D) + s) with 0 <= s < 1 (a count of D "
                      "levels); round(x) only clamped so")
    if not isinstance(x, Val):
        raise _Refuse("this operand must be a tensor computed from the input")
    return x


def _ndim(x: Val) -> int:
    return len(x.frame) + len(x.expr.shape)


def _full_shape(b, x: Val) -> tuple[int, ...]:
    return (*(b.size[d] for d in x.frame), *x.expr.shape)


def _identity(b, c, x, *args, **kwargs):
    return x


def _attribute(b, c, x, name: str):
    """``x.data``: the same values; ``x.T`` / ``x.mT`` (``.H`` / ``.mH`` of a real tensor): its
    axes reversed / its last two swapped (other tensor attributes are refused); a field of a
    result of traced values (``torch.max(x, d).values``)."""
    if isinstance(x, tuple):
        return getattr(x, name)
    if name == "data":
        return x
    if name in ("T", "H"):
        return _transposed(b, c, _val(x), list(range(_ndim(_val(x))))[::-1])
    if name in ("mT", "mH"):
        return _transpose(b, c, x, -2, -1)
    raise _Refuse(f"the tensor attribute '{name}'")


def _reshape(b, c, x, *args, **kwargs):
    x = _val(x)
    frame, shape = b.reshaped(x, tuple(c.value.shape))
    if shape == x.expr.shape:
        return Val(x.expr, frame)
    return b.new(c, lambda n, i: ir.Reshape(n, i, path=c.path, target=shape), [x], frame)


def _flatten(b, c, x, start_dim=0, end_dim=-1):
    x = _val(x)
    nd, f = _ndim(x), len(x.frame)
    s, e = start_dim % nd, end_dim % nd
    if s < f:
        return _reshape(b, c, x)  # e.g. flatten(0, 1): a change of frame
    if s == f and x.frame in WINDOWED and e > s:
        raise _Refuse("it merges the batch axis that holds windows of each sample with "
                      "per-sample axes")
    if s == e:
        return x
    return b.new(c, lambda n, i: ir.Flatten(n, i, path=c.path, start=s - f, end=e - f), [x],
                 x.frame)


def _transposed(b, c, x: Val, perm: list[int]) -> Val | TimeAxisLast | AxisFirst | FrameMoved:
    f, frame = len(x.frame), x.frame
    if frame in WINDOWED and perm[:f + 1] != list(range(f + 1)):
        raise _Refuse("it moves the batch axis that holds windows of each sample")
    if f == 2 and perm[:2] == [1, 0] and frame in (TB, BT):
        frame = frame[::-1]
    elif frame in (TB, BT) and perm == [p for p in range(len(perm)) if p != frame.index("T")] \
            + [frame.index("T")]:
        return TimeAxisLast(x)
    elif perm[0] >= f and perm[1:f + 1] == list(range(f)):
        return AxisFirst(x, tuple(perm))
    elif perm[:f] != list(range(f)) and frame in (TB, BT):
        return FrameMoved(x, tuple(perm))
    elif perm[:f] != list(range(f)):
        raise _Refuse("it moves the time or batch axis")
    per = tuple(p - f for p in perm[f:])
    if per == tuple(range(len(per))):
        return Val(x.expr, frame)
    return b.new(c, lambda n, i: ir.Transpose(n, i, path=c.path, perm=per), [x], frame)


def _permute(b, c, x, *dims):
    dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
    return _moved(b, c, x, [d % len(c.value.shape) for d in dims])


def _transpose(b, c, x, dim0, dim1):
    perm = list(range(len(c.value.shape)))
    a, d = dim0 % len(perm), dim1 % len(perm)
    perm[a], perm[d] = perm[d], perm[a]
    return _moved(b, c, x, perm)


def _moved(b, c, x, perm: list[int]):
    """``x`` with its axes permuted; of a FrameMoved or TimeAxisLast, the permutations
    composed."""
    if isinstance(x, (FrameMoved, TimeAxisLast)):
        return _transposed(b, c, x.x, [_moved_by(x)[p] for p in perm])
    return _transposed(b, c, _val(x), perm)


def _moved_by(x: FrameMoved | TimeAxisLast) -> tuple[int, ...]:
    """The permutation that made ``x`` of its value ``x.x``."""
    if isinstance(x, FrameMoved):
        return x.perm
    t = x.x.frame.index("T")
    return (*(p for p in range(len(x.x.frame) + len(x.x.expr.shape)) if p != t), t)


def _t(b, c, x):
    """``x.t()``: a 2-D tensor's two axes swapped (``[T, B]`` to ``[B, T]``)."""
    if _ndim(_val(x)) != 2:
        raise _Refuse("t() of a tensor that is not 2-D")
    return _transpose(b, c, x, 0, 1)


def _repeat(b, c, x, *sizes):
    """A static value repeated over time: ``x.unsqueeze(0).repeat(T, 1, ...)`` or
    ``x.repeat(T, 1, ...)`` with an axis more than ``x`` has, which torch adds first (MPBN's
    and IM-Loss's ``SpikeModel``) ([T, B, ...]), or ``x.unsqueeze(1).repeat(1, T, ...)``
    ([B, T, ...], as TET-style code writes it), or the batch axis tiled T times,
    ``x.repeat(T, 1, ...)`` ([T*B, ...], QCFS's ``x.unsqueeze_(1)`` first); and any value's
    per-sample axes tiled, ``x.repeat(1, k)``: a Gather of each one's positions."""
    x = _val(x)
    out = tuple(c.value.shape)
    if x.expr.time == STATIC and x.frame in (B1, B) and \
            out == (b.T, b.size["B"], *x.expr.shape):
        return Val(x.expr, TB)
    if x.expr.time == STATIC and x.frame == B and out == (b.size["TB"], *x.expr.shape):
        return Val(x.expr, TBM)
    if x.expr.time == STATIC and x.frame == B and x.expr.shape[:1] == (1,) and \
            out == (b.size["B"], b.T, *x.expr.shape[1:]):
        return b.new(c, lambda n, i: ir.Reshape(n, i, path=c.path, target=out[2:]), [x], BT)
    sizes = tuple(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) \
        else sizes
    f = len(x.frame)
    if c.op.endswith("repeat") and len(sizes) == f + len(x.expr.shape) \
            and all(k == 1 for k in sizes[:f]) and x.frame not in WINDOWED:
        # per-sample axes tiled (torch.cat([x] * k, d); expand's sizes are not counts)
        for axis, (k, n) in enumerate(zip(sizes[f:], x.expr.shape)):
            x = _gathered(b, c, x, axis, tuple(i % n for i in range(n * k)))
        return x
    raise _Refuse("only a static value's unit axis before or after the batch axis, or its "
                  "batch axis, can be repeated T times")


def _position_of_first(b, c, x: AxisFirst, index: int) -> Val:
    """Position ``index`` of the axis an AxisFirst moved first: that position of the value
    before the permute (:func:`_position`), its other axes then permuted as the permute had
    them."""
    axis, rest = x.perm[0], x.perm[1:]
    order = [a - (a > axis) for a in rest]  # the axes after the position, before the permute
    part = c.value.permute(*np.argsort(order).tolist())
    site = None if c.site is None else (*c.site, "position")
    one = _position(b, replace(c, value=part, hint=f"{c.hint}_position", site=site),
                    x.x, axis, index)
    return _transposed(b, c, one, order)


def _getitem(b, c, x, index):
    if isinstance(x, Stacked) and isinstance(index, int):
        return x.items[index]
    if isinstance(x, AxisFirst):
        parts = index if isinstance(index, tuple) else (index,)
        if not isinstance(parts[0], int) or any(
                p is not Ellipsis and p != slice(None) for p in parts[1:]):
            raise _Refuse("an axis moved ahead of the time and batch axes is taken only by one "
                          "position of it (qkv[0])")
        return _position_of_first(b, c, x, parts[0])
    if isinstance(x, Assembled) and not x.per_sample:  # a step already assigned, read back
        at = index if x.axis == 0 else index[1] if isinstance(index, tuple) and len(index) == 2 \
            and index[0] == slice(None) else None
        step = x.steps[at % b.T] if isinstance(at, int) else None
        if step is None:
            raise _Refuse("a sequence assigned step by step (out[t] = v) is read otherwise "
                          "than by a step already assigned (GLIF's out[t - 1])")
        return step
    if isinstance(x, Const):  # (indexed by a traced value: the index is computed from the input)
        raise _Refuse("a constant indexed by values computed from the input (a selection, as "
                      "token pruning's argsort or topk, that depends on the input: no graph "
                      "computes it)")
    if isinstance(x, _FROM_INPUT):
        x = _val(x)  # (a form no index reads: its own reason)
    if not isinstance(x, Val):
        return x[index]  # a tuple or list of traced values
    if isinstance(index, int):
        return _select(b, c, x, 0, index) if x.frame == B1 else b.step_of(c, x, index % b.T)
    parts = index if isinstance(index, tuple) else (index,)
    if any(p is None for p in parts):  # new axes: a reshape
        if not all(p is None or p is Ellipsis or (isinstance(p, slice) and p == slice(None))
                   for p in parts):
            raise _Refuse("a new axis (None) is taken only beside whole axes (x[:, :, None])")
        return _reshape(b, c, x)
    if parts.count(Ellipsis) > 1 or not all(p is Ellipsis or isinstance(p, (slice, int))
                                            for p in parts):
        raise _Refuse("only x[t] (one time step), slices (x[..., a:b, :]) and one position of a "
                      "per-sample axis (x[:, :, 0]) are supported")
    if Ellipsis in parts:
        k = parts.index(Ellipsis)
        parts = parts[:k] + (slice(None),) * (_ndim(x) - len(parts) + 1) + parts[k + 1:]
    shape = _full_shape(b, x)
    if len(parts) > len(shape):
        raise _Refuse("too many indices for the tensor")
    narrowed = [(dim, p) for dim, (p, n) in enumerate(zip(parts, shape))
                if isinstance(p, int) or p.indices(n) != (0, n, 1)]
    if not narrowed:
        return x
    if len(narrowed) > 1 or isinstance(narrowed[0][1], slice) and narrowed[0][1].step not in (
            None, 1):  # slices of several axes, or with a step (Swin's patch merging, 0::2)
        return _sliced_positions(b, c, x, narrowed, shape)
    dim, p = narrowed[0]
    if isinstance(p, int):
        return _select(b, c, x, dim, p)
    start, stop, _ = p.indices(shape[dim])
    return _narrowed(b, c, x, dim, start, stop, c.hint, c.site)


def _sliced_positions(b, c, x: Val, narrowed: list, shape) -> Val:
    """``x[..., a:b:s, :, c:d:t]``, slices of per-sample axes: a Gather of each one's
    positions."""
    if any(isinstance(p, int) for _, p in narrowed):
        raise _Refuse("a position of one axis is taken beside no other index (x[:, :, 0])")
    if x.frame in WINDOWED or any(dim < len(x.frame) for dim, _ in narrowed):
        raise _Refuse("it slices the time or batch axis")
    for dim, p in narrowed:
        index = tuple(range(*p.indices(shape[dim])))
        if not index:
            raise _Refuse("it takes an empty slice")
        x = _gathered(b, c, x, dim - len(x.frame), index)
    return x


def _roll(b, c, x, shifts, dims=None):
    """``torch.roll`` of per-sample axes (Swin's shifted windows): a Gather of each one's
    positions, rotated."""
    x = _val(x)
    if dims is None:
        raise _Refuse("a roll of the flattened tensor mixes the time and batch axes in")
    shifts, dims = ((shifts,), (dims,)) if isinstance(dims, int) else (tuple(shifts), dims)
    shape = _full_shape(b, x)
    for shift, dim in zip(shifts, dims):
        dim %= len(shape)
        if dim < len(x.frame) or x.frame in WINDOWED:
            raise _Refuse("it rolls the time or batch axis")
        n = shape[dim]
        x = _gathered(b, c, x, dim - len(x.frame), tuple((i - shift) % n for i in range(n)))
    return x


def _position(b, c, x: Val, dim: int, index: int) -> Val:
    """``x.select(dim, index)`` of a per-sample axis: that one-wide slice, the axis dropped."""
    index %= _full_shape(b, x)[dim]
    one = _narrowed(b, c, x, dim, index, index + 1, f"{c.hint}_slice",
                    None if c.site is None else (*c.site, "slice"))
    return _reshape(b, c, one)


def _narrow(b, c, x, dim, start, length):
    x = _val(x)
    dim %= _ndim(x)
    start %= _full_shape(b, x)[dim]
    return _narrowed(b, c, x, dim, start, start + length, c.hint, c.site)


def _select(b, c, x, dim, index):
    x = _val(x)
    dim %= _ndim(x)
    if dim == 0 and x.frame == B1 and index in (0, -1):
        return Val(x.expr, B)  # the unit axis of x.unsqueeze(0): a loop over its one step
    if dim < len(x.frame) and x.frame[dim] == "T":
        return b.step_of(c, x, index % b.T, dim)
    return _position(b, c, x, dim, index)


def _unbind(b, c, x, dim=0):
    if isinstance(x, Stacked) and dim == 0:
        return x.items
    if isinstance(x, AxisFirst) and dim == 0:
        return tuple(_position_of_first(b, replace(c, value=v, hint=f"{c.hint}{i}", site=None
                                                   if c.site is None else (*c.site, i)), x, i)
                     for i, v in enumerate(c.value))
    x = _val(x)
    dim %= _ndim(x)
    if dim >= len(x.frame) or x.frame[dim] != "T":
        raise _Refuse("only the time axis can be unbound")
    return tuple(b.step_of(c, x, t, dim) for t in range(b.T))


def _stack(b, c, tensors, dim=0):
    vals = [_val(v) if isinstance(v, _FROM_INPUT) else v for v in tensors]  # (else its reason)
    first = vals[0] if vals else None
    if len(vals) == b.T and isinstance(first, Val) and first.frame == B and \
            first.expr.time == STATIC and all(v == first for v in vals) and dim == 0:
        return Val(first.expr, TB)  # a static value T times: torch.stack([x] * T)
    if len(vals) == b.T + 1 and isinstance(first, Const) and isinstance(vals[-1], Val):
        start = _start_array(first, vals[-1].expr.shape)
        steps = _stack(b, c, vals[1:], dim)
        if start is not None and isinstance(steps, Val):
            return AfterStart(start, steps)
    lag = next((k for k, v in enumerate(vals) if not isinstance(v, Const)), len(vals))
    starts = [_start_array(v, vals[-1].expr.shape) for v in vals[:lag]] \
        if 0 < lag < len(vals) == b.T and isinstance(vals[-1], Val) else []
    if starts and all(v is not None for v in starts) and all(
            isinstance(v, Val) and v.frame == B and v.expr.step == t
            for t, v in enumerate(vals[lag:])):  # recorded `lag` steps late
        frame = {0: TB, 1: BT}.get(dim % (len(vals[-1].expr.shape) + 2))
        if frame is not None:
            return Val(_OverSteps(None, tuple(v.expr for v in vals[lag:]), c.op, c.hint,
                                  c.path, vals[-1].expr.shape, starts=tuple(starts)), frame)
    if len(vals) == b.T and all(
            isinstance(v, Val) and v.frame == B and v.expr.time == STATIC and v.expr.step is None
            and v.expr.shape == first.expr.shape for v in vals) and vals.count(first) < b.T \
            and dim % (_ndim(first) + 1) in (0, 1):
        # the T values of a loop over a static input, unrolled, as the steps of a sequence
        # (norse's constant-current encoder, spikes[ts] = z): each picked at its step
        return Val(b.step_selected(c, first, vals).expr, TB if dim % (_ndim(first) + 1) == 0
                   else BT)
    if vals and all(isinstance(v, Val) and v.frame == first.frame and v.expr.step ==
                    first.expr.step and v.expr.shape == first.expr.shape for v in vals) \
            and dim % (_ndim(first) + 1) >= len(first.frame):
        return _stacked_per_sample(b, c, vals, dim % (_ndim(first) + 1) - len(first.frame))
    if len(vals) != b.T or not all(
            isinstance(v, Val) and v.frame == B and v.expr.step == t for t, v in enumerate(vals)):
        traced = [v for v in vals if isinstance(v, Val)]
        if dim == 0 and all(isinstance(v, (Val, Const)) for v in vals) and traced \
                and traced[0].expr.step is not None \
                and len({(v.frame, v.expr.step) for v in traced}) == 1:
            return Stacked(tuple(vals))  # a state of one step's values, taken apart later
        loop = list(range(len(vals)))
        if len(vals) < b.T and b.neurons and all(sorted(r.calls) == loop
                                                 for r in b.neurons.values()) and \
                all(isinstance(v, Val) and v.frame == B and v.expr.step == t
                    for t, v in enumerate(vals)):  # (not a loop's steps of which some are left)
            raise _Refuse(f"stacks the {len(vals)} steps of a loop over time, but T={b.T}: the "
                          f"model's own loop runs {len(vals)} steps (give T={len(vals)}, or none)")
        steps = [v.expr.step if isinstance(v, Val) and v.frame == B else None for v in vals]
        if len(vals) == b.T and None not in steps:
            raise _Refuse(f"it stacks values of steps {steps} of a loop over time, not one of "
                          "each step: a value kept, then changed in place at a later step (v += "
                          "x), is the changed one, as in PyTorch")
        raise _Refuse("only stacking the T steps of a loop over time, or values to be taken "
                      "apart again (state = torch.stack([v, z]); v, z = state), is supported")
    frame = {0: TB, 1: BT}.get(dim % (len(vals[-1].expr.shape) + 2))
    if frame is None:
        raise _Refuse("the steps of a loop are stacked as axis 0 ([T, B, ...]) or 1 ([B, T, ...])")
    return Val(_OverSteps(None, tuple(v.expr for v in vals), c.op, c.hint, c.path,
                          vals[-1].expr.shape), frame)


def _narrowed(b, c, x: Val, dim: int, start: int, stop: int, hint: str, site) -> Val:
    """``x`` sliced to [start, stop) along its axis ``dim`` (a per-step axis)."""
    axis = dim - len(x.frame)
    if axis < 0 and stop - start == 1 and x.frame in (TB, BT) and x.frame[dim] == "T":
        return _reshape(b, c, b.step_of(c, x, start, dim))  # x[t:t + 1]: step t, a unit axis
    if axis < 0:
        raise _Refuse("it slices the time or batch axis")
    if stop <= start:
        raise _Refuse("it takes an empty slice")
    time, step = _join_time([x.expr])
    shape = list(x.expr.shape)
    shape[axis] = stop - start
    e = _Slice(None, (x.expr,), c.op, hint, c.path, tuple(shape), time, step,
               b.loop_site(site, step, c.op), axis=axis,
               start=start, stop=stop)
    if step is not None and site is not None:
        b._note_site(e)
    return Val(e, x.frame)


def _pieces(b, c, x, dim) -> tuple[Val, ...]:
    """The pieces ``c.value`` (chunk / split results) of ``x`` along ``dim`` as slices."""
    x = _val(x)
    dim %= _ndim(x)
    out, start = [], 0
    for k, piece in enumerate(c.value):
        stop = start + piece.shape[dim]
        out.append(_narrowed(b, c, x, dim, start, stop, f"{c.hint}_{k}",
                             None if c.site is None else (*c.site, k)))
        start = stop
    return tuple(out)


def _chunk(b, c, x, chunks, dim=0):
    return _pieces(b, c, x, dim)


def _split(b, c, x, split_size_or_sections, dim=0):
    return _pieces(b, c, x, dim)


def _select_columns(e: _Slice, P: int, L: int, Q: int) -> list:
    """Steps of a slice of a real value: (P, L, Q) -> (P, Q, L) -> one-hot Linear -> back (the
    last axis sliced, Q = 1: (P, 1, L) at once)."""
    m = e.stop - e.start
    onehot = np.zeros((m, L))
    onehot[np.arange(m), np.arange(e.start, e.stop)] = 1.0
    rows = (P, L, Q) if Q > 1 else (P, Q, L)
    steps = [("rows", rows, lambda n, i: ir.Reshape(n, (i,), path=e.path, target=rows))]
    if Q > 1:
        steps.append(("t", (P, Q, L), lambda n, i: ir.Transpose(n, (i,), path=e.path,
                                                               perm=(0, 2, 1))))
    steps.append(("select", (P, Q, m), lambda n, i: ir.Linear(n, (i,), path=e.path,
                                                              weight=onehot, bias=None)))
    if Q > 1:
        steps.append(("tb", (P, m, Q), lambda n, i: ir.Transpose(n, (i,), path=e.path,
                                                                perm=(0, 2, 1))))
    steps.append(("out", e.shape, lambda n, i: ir.Reshape(n, (i,), path=e.path,
                                                          target=e.shape)))
    return steps


def _pick_row(e: _Slice, r: int, R: int):
    """make(name, input) of the one-row MaxPool2d picking row r of (P, R, W) (see _slice; for
    r > 0 the input is (P, R + 1, W) with a zero row first)."""
    if r == 0:
        return lambda n, i: ir.MaxPool2d(n, (i,), path=e.path, kernel_size=(1, 1),
                                         stride=(R, 1), padding=(0, 0), dilation=(1, 1))
    return lambda n, i: ir.MaxPool2d(n, (i,), path=e.path, kernel_size=(2, 1),
                                     stride=(R + 1, 1), padding=(0, 0), dilation=(r + 1, 1))


def _stacked_per_sample(b, c, vals: list[Val], axis: int) -> Val:
    """``torch.stack`` of values of one step (or one sequence) on a new per-sample axis: each
    given a unit axis there (a Reshape) and concatenated along it."""
    shape = vals[0].expr.shape
    unit = shape[:axis] + (1,) + shape[axis:]
    parts = [b.new(c, lambda n, i: ir.Reshape(n, i, path=c.path, target=unit), [v], v.frame,
                   shape=unit, hint=f"{c.hint}.{k}") for k, v in enumerate(vals)]
    return b.new(c, lambda n, i: ir.Concat(n, i, path=c.path, axis=axis), parts, vals[0].frame)


def _cat(b, c, tensors, dim=0):
    traced = [v for v in tensors if isinstance(v, _FROM_INPUT)]
    if len(traced) == 1 and len(tensors) > 1:
        return _cat_constants(b, c, list(tensors), _val(traced[0]), dim)
    vals = [_val(v) for v in tensors]
    frame, rank = vals[0].frame, len(vals[0].expr.shape)
    if any(v.frame != frame or len(v.expr.shape) != rank for v in vals):
        raise _Refuse("its operands have different time/batch layouts")
    axis = dim % _ndim(vals[0]) - len(frame)
    if axis < 0 and sorted(frame) == ["1", "B"] and dim % _ndim(vals[0]) == frame.index("1"):
        # the T steps of a loop, each with a unit time axis (x_t.unsqueeze(0)), concatenated
        # along it: their stack
        return _stack(b, c, [Val(v.expr, B) for v in vals], frame.index("1"))
    if axis < 0:
        raise _Refuse("it concatenates along the time or batch axis")
    return b.new(c, lambda n, i: ir.Concat(n, i, path=c.path, axis=axis), vals, frame)


def _cat_constants(b, c, items: list, x: Val, dim: int) -> Val:
    """``cat`` of ``x`` with constants (a class token, ``cat([cls.expand(T, B, -1, -1), x])``):
    ``x`` padded with zeros where the constants go along the axis, then the constants (zeros
    over ``x``) added, exact: (P, L, Q) -> Pad of rows -> back -> :func:`_constant_added`."""
    axis = dim % _ndim(x) - len(x.frame)
    if axis < 0:
        raise _Refuse("it concatenates along the time or batch axis")
    shape = x.expr.shape
    parts = []
    for v in items:
        if isinstance(v, _FROM_INPUT):
            parts.append(np.zeros(shape))
            continue
        k = b.const(v, x)
        if k.ndim != len(shape):
            raise _Refuse("a constant of another rank")
        parts.append(np.broadcast_to(k, shape[:axis] + (k.shape[axis],) + shape[axis + 1:]))
    at = next(i for i, v in enumerate(items) if isinstance(v, _FROM_INPUT))
    before = sum(p.shape[axis] for p in parts[:at])
    after = sum(p.shape[axis] for p in parts[at + 1:])
    P, L, Q = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])
    out = shape[:axis] + (before + L + after,) + shape[axis + 1:]
    rows = b.new(c, lambda n, i: ir.Reshape(n, i, path=c.path, target=(P, L, Q)), [x], x.frame,
                 shape=(P, L, Q), hint=f"{c.hint}.rows")
    padded = b.new(c, lambda n, i: ir.Pad(n, i, path=c.path, pads=(0, 0, before, after),
                                          value=np.zeros(1)),
                   [rows], x.frame, shape=(P, before + L + after, Q), hint=f"{c.hint}.pad")
    joined = b.new(c, lambda n, i: ir.Reshape(n, i, path=c.path, target=out), [padded], x.frame,
                   shape=out, hint=f"{c.hint}.joined")
    k = np.concatenate(parts, axis=axis)
    result = _constant_added(b, c, joined, k)
    b._cat_constants[result.expr] = (joined, k)
    return result


def _binary(kind: str):
    """Handler of ``x <kind> y`` for kind in add, sub, mul, div, matmul."""

    def handler(b, c, x, y, *, alpha=1, rounding_mode=None, out=None):
        if alpha != 1 or rounding_mode is not None or out is not None:
            raise _Refuse("alpha, rounding_mode and out are not supported")
        x, y = (_val(v) if isinstance(v, Membrane) else v for v in (x, y))  # (not a number)
        if kind == "div" and isinstance(x, SumOverTime) and not isinstance(y, _FROM_INPUT) \
                and np.all(b.const(y, x.x) == b.T):
            return _readout(b, c, x.x)
        x, y = (v.total if isinstance(v, SumOverTime) else v for v in (x, y))  # (a count)
        if kind == "sub" and isinstance(x, Val) and isinstance(y, Val) and x.expr is y.expr \
                and x.frame == y.frame:  # g - g.detach(), a straight-through surrogate: 0
            return Const(torch.zeros(tuple(c.value.shape), dtype=torch.float64), x.frame)
        if kind == "sub" and isinstance(x, Val) and isinstance(y, Clamped) and \
                b.count_source.get(x.expr) == y:  # q - y: a straight-through estimator's
            return CountResidual(x, y)
        if kind == "add" and {type(x), type(y)} == {Clamped, CountResidual}:
            x, y = (x, y) if isinstance(x, Clamped) else (y, x)
            if y.clamp == x:  # y + (q - y), exactly q
                return y.q
        if isinstance(x, Val) and isinstance(y, Val):
            return _tensor_tensor(b, c, kind, x, y)
        if kind == "sub" and isinstance(y, Val) and not isinstance(x, _FROM_INPUT):
            return _const_minus(b, x, y)
        if kind == "mul" and {type(x), type(y)} == {Val, ConstMinus}:
            x, y = (x, y) if isinstance(y, ConstMinus) else (y, x)
            return _times_const_minus(b, c, x, y)
        if kind == "mul" and {type(x), type(y)} == {Const, ConstMinus}:
            k = x if isinstance(x, Const) else y
            if not torch.as_tensor(k.value).any():  # (k - y) * 0 is 0 (spikingjelly's
                return replace(k, value=c.value)  # SynapseFilter at step 0: its current 0)
        if kind == "add" and {type(x), type(y)} == {Val, ConstMinus}:
            x, y = (x, y) if isinstance(y, ConstMinus) else (y, x)
            if y.k == 0:  # x + (0 - v) is x - v, exactly (norse's (v_leak - v) + i, v_leak 0)
                return _tensor_tensor(b, c, "sub", x, y.y)
        if kind == "add" and isinstance(x, Clamped) != isinstance(y, Clamped):
            x, y = (x, y) if isinstance(x, Clamped) else (y, x)
            k = None if isinstance(y, _FROM_INPUT) else b.const(y, x.x)
            if k is None or k.size != 1 or x.shift:
                raise _Refuse("clamp(x, 0, D) is taken plus one constant only, floor(clamp(x, "
                              "0, D) + s)")
            return replace(x, shift=float(k.reshape(())))
        if kind == "matmul" and isinstance(x, Val) and not isinstance(y, _FROM_INPUT):
            w = _parameter(y, "matrix")  # x @ W with a constant W [in, out]: a Linear
            if w is None or w.dim() != 2:
                raise _Refuse("a value times a constant is supported as x @ W with W a matrix")
            return _affine(b, c, x, w.t(), None)
        for a in (x, y):  # a value of another form from the input: its own reason
            if isinstance(a, _FROM_INPUT):
                _val(a)
        if not isinstance(x, Val) and kind in ("add", "mul"):
            x, y = y, x
        return _tensor_const(b, c, kind, _val(x), y)
    return handler


def _const_minus(b, k, y: Val) -> ConstMinus:
    k = b.const(k, y)
    if k.size != 1 or float(k.reshape(())) not in (0.0, 1.0):
        raise _Refuse("(constant - tensor) is supported as 1 - tensor (or 0 - tensor) only: "
                      "another constant's product would round differently")
    return ConstMinus(float(k.reshape(())), y)


def _times_const_minus(b, c, x: Val, f: ConstMinus) -> Val:
    """``x * (k - y)`` as ``x - x*y`` (k = 1) or ``-(x*y)`` (k = 0): a Hadamard product, which
    needs one operand of spikes, and then the same numbers (either operand 0 or 1 makes each
    product and difference exact)."""
    frame = _join_frames(x, f.y)
    if not x.expr.shape == f.y.expr.shape == tuple(c.value.shape[len(frame):]):
        raise _Refuse("a product with (constant - tensor) that broadcasts")
    both = b.new(c, lambda n, i: ir.Hadamard(n, i, path=c.path), [x, f.y], frame,
                 hint=f"{c.hint}_and")
    neg = b.new(c, lambda n, i: ir.Scale(n, i, path=c.path, factor=-1.0), [both], frame,
                shape=both.expr.shape, hint=f"{c.hint}_neg" if f.k else None)
    if not f.k:
        return neg
    out = b.new(c, lambda n, i: ir.Add(n, i, path=c.path), [x, neg], frame)
    b.note_sum(out, x, neg)
    return out


_TENSOR_OPS = {
    "add": lambda n, i, p: ir.Add(n, i, path=p),
    "mul": lambda n, i, p: ir.Hadamard(n, i, path=p),
    "matmul": lambda n, i, p: ir.SpikeMatMul(n, i, path=p),
}


def _tensor_tensor(b, c, kind, x: Val, y: Val, hint: str | None = None) -> Val:
    """``x <kind> y`` of two traced values (``hint``: of an op that maps to more nodes after
    it, as a comparison of the difference)."""
    if kind == "matmul" and (x.expr in b.scaled or y.expr in b.scaled):
        return _unscaled_matmul(b, c, x, y)
    frame = _join_frames(x, y)
    if kind == "sub":
        y = b.new(c, lambda n, i: ir.Scale(n, i, path=c.path, factor=-1.0), [y], y.frame,
                  shape=y.expr.shape, hint=f"{c.hint}_neg")
        kind = "add"
    if kind not in _TENSOR_OPS:
        raise _Refuse("dividing by a tensor")
    make = _TENSOR_OPS[kind]
    out = b.new(c, lambda n, i: make(n, i, c.path), [x, y], frame, hint=hint)
    if kind == "add":
        b.note_sum(out, x, y)
    return out


def _unscaled_matmul(b, c, x: Val, y: Val) -> Val:
    """``(f x') @ (g y')`` as ``f g (x' @ y')`` for operands known as a power of two f, g times
    another value (:attr:`_Builder.scaled`): the same numbers, as scaling by a power of two
    commutes with rounding, and a matmul of counts (Spike-Driven Transformer V3's attention)
    is a SpikeMatMul only on the counts themselves."""
    (x, f), (y, g) = (b.scaled.get(v.expr, (v, 1.0)) for v in (x, y))
    product = _tensor_tensor(b, c, "matmul", x, y)
    if x.expr in b.integers and y.expr in b.integers:
        b.integers.add(product.expr)
    return _scaled_by(b, c, product, f * g)


def _scaled_by(b, c, x: Val, factor: float) -> Val:
    """``x * factor`` (a Scale of a matmul's product)."""
    if factor == 1:
        return x
    out = b.new(c, lambda n, i: ir.Scale(n, i, path=c.path, factor=np.asarray(factor)), [x],
                x.frame, shape=x.expr.shape, hint=f"{c.hint}_scale")
    _note_scaled(b, out, x, factor)
    return out


def _note_scaled(b, out: Val, x: Val, factor: float) -> None:
    """Note ``out = factor * x`` (:attr:`_Builder.scaled`) for a power-of-two ``factor`` and an
    ``x`` that is integer or itself so scaled."""
    if is_power_of_two(factor) and (x.expr in b.integers or x.expr in b.scaled):
        base, f = b.scaled.get(x.expr, (x, 1.0))
        b.scaled[out.expr] = (base, f * factor)


def _tensor_const(b, c, kind, x: Val, y) -> Val:
    steps = b.const_steps(y, x)
    if steps is not None:
        return b.step_selected(c, x, [
            _op_by_const(b, replace(c, hint=f"{c.hint}.k{t}", site=c.site and (*c.site, t)),
                         kind, x, k) for t, k in enumerate(steps)])
    return _op_by_const(b, c, kind, x, b.const(y, x))


def _op_by_const(b, c, kind, x: Val, k: np.ndarray) -> Val:
    full = np.broadcast_shapes(x.expr.shape, k.shape)  # (as torch has broadcast them)
    for axis, (n, m) in enumerate(zip(x.expr.shape, full)):  # a unit axis the constant widens
        if n != m:  # (a population encoder's obs.unsqueeze(-1) - means): x's positions copied
            x = _gathered(b, c, x, axis, (0,) * m)
    if kind in ("add", "sub"):
        if not k.any():
            return x
        folded = b.fold_pad(c, x, k) if kind == "add" else None
        return _constant_added(b, c, x, k if kind == "add" else -k) if folded is None else folded
    if kind == "div":
        if np.all(k == b.T) and (mean := b.mean_over_steps(c, x)) is not None:
            return mean
        if not is_power_of_two(k):  # (its reciprocal would round: the quotient itself)
            if not np.all(k != 0):
                raise _Refuse("division by a constant with a zero")
            return b.new(c, lambda n, i: ir.Divide(n, i, path=c.path, divisor=k), [x], x.frame)
        k = 1.0 / k
    elif kind != "mul":
        raise _Refuse("a matrix product with a constant")
    if np.all(k == 1):
        return x
    out = b.new(c, lambda n, i: ir.Scale(n, i, path=c.path, factor=k), [x], x.frame)
    if k.size == 1:
        _note_scaled(b, out, x, float(k.reshape(())))
    return out


def _constant_added(b, c, x: Val, k: np.ndarray) -> Val:
    """``x + k`` for a constant ``k`` of at most a step's shape (a position embedding): each
    element of a step its own channel of a BatchNorm of scale 1 (mean 0, variance 1, eps 0:
    ``x * 1 + k`` exactly) with ``k`` as its bias."""
    shape = x.expr.shape  # (k broadcasts to it: _op_by_const widened x where k is wider)
    if x.expr in b._cat_constants:  # one bias: (padded + k0) + k == padded + (k0 + k) exactly,
        x, k0 = b._cat_constants[x.expr]  # as padded is zero wherever k0 is not
        k = k0 + k
    bias = np.broadcast_to(k, shape).ravel()
    n = bias.size
    flat = b.new(c, lambda nm, i: ir.Reshape(nm, i, path=c.path, target=(n,)), [x], x.frame,
                 shape=(n,), hint=f"{c.hint}.flat")
    biased = b.new(c, lambda nm, i: ir.BatchNorm.affine(nm, i, np.ones(n), bias, c.path),
                   [flat], x.frame, shape=(n,), hint=f"{c.hint}.bias")
    return b.new(c, lambda nm, i: ir.Reshape(nm, i, path=c.path, target=shape), [biased],
                 x.frame)


_MIRRORED = {"gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}


def _compare(kind: str):
    """Handler of ``x <kind> k`` (gt, ge, lt, le) for a traced ``x`` and a constant ``k``: the
    spikes of a neuron that only compares, h = x (alpha 0), fired on ``>`` or ``>=`` (``<`` and
    ``<=`` as ``-x > -k`` and ``-x >= -k``, exact). With a reset written after it, it is a
    neuron written with plain tensor ops (``(mem - th > 0).float()``)."""

    def handler(b, c, x, y):
        op = kind
        if not isinstance(x, _FROM_INPUT):
            x, y, op = y, x, _MIRRORED[kind]
        x = _val(x)
        if isinstance(y, _FROM_INPUT):  # (x > y iff x - y > 0, for finite floats)
            x, y = _tensor_tensor(b, c, "sub", x, _val(y), hint=f"{c.hint}_diff"), 0.0
        k = b.const(y, x)
        if op in ("lt", "le"):
            x = b.new(c, lambda n, i: ir.Scale(n, i, path=c.path, factor=-1.0), [x], x.frame,
                      shape=x.expr.shape, hint=f"{c.hint}_neg")
            k, op = -k, _MIRRORED[op]
        out = _comparison(b, c, x, k, op)
        b.booleans.add(out.expr)
        return out
    return handler


def _comparison(b, c, x: Val, k, op: str) -> Val:
    """The spikes of a neuron that only compares: ``x > k`` (op "gt") or ``x >= k`` ("ge")."""

    def make(name, inputs):
        b.comparisons.add(name)
        return ir.Neuron(name, inputs, path=c.path, alpha=0.0, gamma=1.0, beta=0.0,
                         theta=k, v_reset=0.0, v_init=0.0, reset=cn.RESET_HARD,
                         cmp=cn.CMP_GT if op == "gt" else cn.CMP_GE)
    return b.new(c, make, [x], x.frame)


def _clamp(b, c, x, min=None, max=None):
    """``torch.clamp(x, 0, 1)`` of integer values (spikes and sums of them: an OR of spikes,
    ``clamp(x + y, 0, 1)``, XOR-Spikformer's ``or_clamp`` fusion) is ``x > 0``, exactly.
    ``clamp(x, 0, D)`` (D a positive integer) of a rounded value, or rounded after, is a count
    (Spike-Driven Transformer V3's and SpikeYOLO's integer spikes)."""
    rounded = isinstance(x, Rounded)
    x = x.x if rounded else _val(x)
    bounds = [None if v is None else b.const(v, x) for v in (min, max)]
    top = None if any(v is None or v.size != 1 for v in bounds) or float(bounds[0]) != 0 \
        else float(bounds[1])
    if top is None or top < 1 or top != int(top):
        raise _Refuse("only clamp(x, 0, 1) of integer values (an OR of spikes) and round(clamp("
                      "x, 0, D)) with D a positive integer (a count) are supported")
    if rounded:
        return _rounded_count(b, c, x, int(top))
    if top != 1:  # (an operand refused already keeps its own reason)
        return x if _depends_on_refused(x.expr) else Clamped(x, int(top))
    b.kinds_needed[x.expr] = (c.path, c.op, _INTEGERS, "only clamp(x, 0, 1) of integer values, "
                              "spikes and sums of them, an OR of spikes")
    out = _comparison(b, c, x, np.asarray(0.0), "gt")
    b.clamped_to_one[out.expr] = x
    return out


#: the most levels of a count round(clamp(x, 0, D)) (each is a layer of comparisons)
MAX_COUNT_LEVELS = 64


def _round(b, c, x, decimals=0):
    """``torch.round(x)``, taken with a clamp to [0, D] (:class:`Clamped`, :class:`Rounded`)."""
    if decimals != 0:
        raise _Refuse("round with decimals")
    if isinstance(x, Clamped) and x.shift == 0:
        q = _rounded_count(b, c, x.x, x.top)
        b.count_source[q.expr] = x
        return q
    if isinstance(x, Val) and x.expr in b.clamped_to_one:  # round(clamp(x, 0, 1)) of a real x
        return _rounded_count(b, c, b.clamped_to_one[x.expr], 1)
    x = _val(x)
    return x if _depends_on_refused(x.expr) else Rounded(x)


def _floor(b, c, x):
    """``torch.floor(clamp(x, 0, D) + s)`` (:class:`Clamped`): a count."""
    if isinstance(x, Clamped) and 0 <= x.shift < 1:
        q = _floored_count(b, c, x.x, x.top, x.shift)
        b.count_source[q.expr] = replace(x, shift=0.0)
        return q
    if isinstance(x, Val) and x.expr in b.clamped_to_one:  # floor(clamp(x, 0, 1)) of a real x
        return _floored_count(b, c, b.clamped_to_one[x.expr], 1, 0.0)
    if not isinstance(x, Clamped):
        _val(x)  # (another partial form: its own reason)
    raise _Refuse("floor is supported only of clamp(x, 0, D) + s with 0 <= s < 1 (a count)")


def _floored_count(b, c, x: Val, top: int, shift: float) -> Val:
    """``floor(clamp(x, 0, top) + shift)`` (Spike-Driven Transformer V3's large models: halves
    up): level d fires when fl(x + shift) >= d, i.e. x >= t_d, t_d the least float64 with that
    sum (found a few ulps from d - shift; exact in float64, and x above top reaches top)."""
    thresholds = []
    for d in range(1, min(top, MAX_COUNT_LEVELS + 1) + 1):  # (more: refused by _count_of)
        t = np.float64(d) - np.float64(shift)
        while np.float64(t) + np.float64(shift) < d:
            t = np.nextafter(t, np.inf)
        while np.nextafter(t, -np.inf) + np.float64(shift) >= d:
            t = np.nextafter(t, -np.inf)
        thresholds.append(t)
    return _count_of(b, c, x, [(t, "ge") for t in thresholds])


def _rounded_count(b, c, x: Val, top: int) -> Val:
    """``round(clamp(x, 0, top))``, the integer spikes of Spike-Driven Transformer V3: the sum
    of ``top`` comparisons, level d firing when round(x) >= d: x > d - 1/2 for odd d, x >= d -
    1/2 for even d (torch rounds halves to even), exactly."""
    return _count_of(b, c, x, [(d - 0.5, "ge" if d % 2 == 0 else "gt")
                               for d in range(1, top + 1)])


def _count_of(b, c, x: Val, levels: list[tuple[float, str]]) -> Val:
    """The sum of the comparisons ``x > t`` / ``x >= t`` (``levels``: (t, "gt" | "ge")), a
    count known as such (:attr:`_Builder.counts`)."""
    if len(levels) > MAX_COUNT_LEVELS:
        raise _Refuse(f"a count of up to {len(levels)} (snncc builds one comparison per level, "
                      f"at most {MAX_COUNT_LEVELS})")
    levels = [_comparison(b, c, x, np.asarray(t), op) for t, op in levels]
    out = levels[0] if len(levels) == 1 else b.new(c, lambda n, i: ir.Add(n, i, path=c.path),
                                                    levels, x.frame)
    b.counts[out.expr] = levels
    b.integers.add(out.expr)
    return out


_INTEGERS = frozenset({ir.Kind.SPIKE, ir.Kind.COUNT})


def _relu(b, c, x, *args, **kwargs):
    """``relu`` of spikes is the spikes (norse's ConvNet feeds ``relu(z)`` of its LIF's spikes
    to its readout)."""
    x = _val(x)
    b.kinds_needed[x.expr] = (c.path, c.op, frozenset({ir.Kind.SPIKE}),
                              "only relu of spikes, which is the spikes themselves")
    return x


def _heaviside(b, c, x, values):
    """``torch.heaviside(x, v)``: 1 above 0, ``v`` at 0, 0 below: ``x >= 0`` for v = 1 and
    ``x > 0`` for v = 0, as spikes (float); ``v`` a number or a tensor of one value
    (``torch.zeros_like(x)``)."""
    k = b.const(values, _val(x))
    if not k.size or np.any(k != k.flat[0]) or float(k.flat[0]) not in (0.0, 1.0):
        raise _Refuse("heaviside's value at 0 must be 0 or 1 (a spike or none)")
    return _compare("ge" if float(k.flat[0]) else "gt")(b, c, x, 0.0)


def _where(b, c, condition, x, y):
    """``torch.where(s, x, y)`` on a comparison's result ``s``, in the forms a neuron written
    with tensor ops takes: ``(s, 1, 0)`` its spikes, ``(s, 0, 1)`` one minus them, ``(s, v, 0)``
    a product with them and ``(s, 0, v)`` a reset to zero, ``v * (1 - s)``: exact, as each
    product is with 0 or 1."""
    if not isinstance(condition, Val) or condition.expr not in b.booleans:
        raise _Refuse("its condition must be a comparison of a value with a constant")

    def constant(a):
        k = b.const(a, condition)
        return float(k.flat[0]) if k.size and np.all(k == k.flat[0]) else None
    x_val, y_val = isinstance(x, Val), isinstance(y, Val)
    if not x_val and not y_val:
        pair = (constant(x), constant(y))
        if pair == (1.0, 0.0):
            return condition
        if pair == (0.0, 1.0):
            return ConstMinus(1.0, condition)
    elif x_val and not y_val and constant(y) == 0.0:
        return _tensor_tensor(b, c, "mul", x, condition)
    elif y_val and not x_val and constant(x) == 0.0:
        return _times_const_minus(b, c, y, ConstMinus(1.0, condition))
    raise _Refuse("torch.where(s, ...) on a comparison s is taken as (s, 1, 0), (s, 0, 1), "
                  "(s, v, 0) or (s, 0, v)")


def _masked_fill(b, c, x, mask, value):
    """``x.masked_fill(s, v)``: ``torch.where(s, v, x)`` (a reset to zero, ``v = 0``)."""
    return _where(b, c, mask, value, x)


def _cast(b, c, x, *args, **kwargs):
    """A cast to float32 or float64 (a comparison's booleans to spikes, ``x.float()`` of an
    event input or a state), or a move to a device: the same values, in the arithmetic the
    graph runs in; `check` runs the model's own such casts in its dtype too
    (``parity.floats_in``). Another dtype (half precision, integers) would round: refused."""
    if c.value.dtype not in (torch.float32, torch.float64):
        raise _Refuse("a cast is taken only to float32 or float64 (another dtype would round)")
    return x if isinstance(x, ConstMinus) else _val(x)  # (1 - s: the same values too)


def _as_bool(b, c, x):
    """``s.bool()`` of a comparison's result (also cast to spikes): the same values."""
    if not isinstance(x, Val) or x.expr not in b.booleans:
        raise _Refuse("it is taken only of a comparison's result (booleans)")
    return x


def _logical_not(b, c, x):
    """``~s`` or ``logical_not(s)`` of a comparison's result: ``1 - s``, taken as a factor
    (``mem * ~s``, a reset to zero)."""
    return ConstMinus(1.0, _as_bool(b, c, x))


def _equality(kind: str):
    """``s == k`` or ``s != k`` (``eq``, ``ne``) of spikes, a comparison's or a neuron's, with k
    0 or 1: the spikes, or one minus them as a factor (sinabs' reset to zero, ``v * (spikes ==
    0).float()``)."""

    def handler(b, c, x, y):
        if not isinstance(x, _FROM_INPUT):
            x, y = y, x
        x = _val(x)
        if isinstance(y, _FROM_INPUT):
            raise _Refuse("an equality of two tensors computed from the input")
        k = b.const(y, x)
        if k.size != 1 or float(k.reshape(())) not in (0.0, 1.0):
            raise _Refuse("an equality is taken only of spikes with 0 or 1")
        if x.expr not in b.booleans:
            b.kinds_needed[x.expr] = (c.path, c.op, frozenset({ir.Kind.SPIKE}),
                                      "only spikes compared equal to 0 or 1")
        return x if (float(k.reshape(())) == 1.0) == (kind == "eq") else ConstMinus(1.0, x)
    return handler


def _logical(kind: str):
    """``s & z`` or ``s | z`` (``logical_and``, ``logical_or``, ``bitwise_*``) of comparisons'
    results, and ``s & ~z``: the spikes of a neuron comparing their sum, ``s + z > 1``, ``s + z
    > 0`` and ``s - z > 0`` (exact, each is 0 or 1), so that ``check`` compares it as the
    spikes a module returns. The result is booleans again."""

    def handler(b, c, x, y):
        if isinstance(x, ConstMinus):
            x, y = y, x
        x, negated = _as_bool(b, c, x), isinstance(y, ConstMinus)
        if negated and kind == "or":
            raise _Refuse("s | ~z is not supported")
        y = _as_bool(b, c, y.y if negated else y)
        both = _tensor_tensor(b, c, "sub" if negated else "add", x, y, hint=f"{c.hint}_sum")
        out = _comparison(b, c, both, np.asarray(1.0 if kind == "and" and not negated else 0.0),
                          "gt")
        b.booleans.add(out.expr)
        return out
    return handler


def _neg(b, c, x):
    x = _val(x)
    return b.new(c, lambda n, i: ir.Scale(n, i, path=c.path, factor=-1.0), [x], x.frame)


def _reduce(mean: bool):
    cls = ir.Mean if mean else ir.Sum

    def handler(b, c, x, dim=None, keepdim=False, *, dtype=None):
        if isinstance(x, TimeAxisLast) and dim is not None and not keepdim and dtype is None:
            n = _ndim(x.x)
            if [d % n for d in (dim if isinstance(dim, (tuple, list)) else (dim,))] == [n - 1]:
                return _readout(b, c, x.x) if mean else _sum_over_time(c, x.x)
        x = _val(x)
        if dim is None or dtype is not None:
            raise _Refuse("a reduction needs explicit axes and no dtype")
        dims = sorted({d % _ndim(x) for d in (dim if isinstance(dim, (tuple, list)) else (dim,))})
        f = len(x.frame)
        if x.frame in (TB, BT) and dims == [x.frame.index("T")] and not keepdim:
            return _readout(b, c, x) if mean else _sum_over_time(c, x)
        if dims[0] < f:
            raise _Refuse("it reduces over the time or batch axis")
        axes = tuple(d - f for d in dims)
        return b.new(c, lambda n, i: cls(n, i, path=c.path, axes=axes, keepdim=bool(keepdim)),
                     [x], x.frame)
    return handler


def _max_of_spikes(b, c, x, dim=None, keepdim=False):
    """``x.amax(dim)`` of spikes over per-sample axes (a global max pooling): 1 where any of
    them fired, their sum > 0, as a max pooling of spikes is. Over the time axis alone, of any
    values: the running maximum, read at the last step (a readout's maximum membrane)."""
    floor = None
    if isinstance(x, AfterStart):
        floor, x = x.start, x.steps
    x = _val(x)
    if dim is None or isinstance(dim, _FROM_INPUT):
        raise _Refuse("a max is taken only over explicit axes of one tensor")
    dims = sorted({d % _ndim(x) for d in (dim if isinstance(dim, (tuple, list)) else (dim,))})
    if x.frame in (TB, BT) and dims == [x.frame.index("T")] and not keepdim:
        return Val(_RunningMax(None, (x.expr,), c.op, c.hint, c.path, x.expr.shape,
                               time=READOUT, floor=floor), B)
    if floor is not None:
        raise _Refuse("a constant stacked before the T steps of a loop (T + 1 entries) is taken "
                      "only by a maximum over the time axis")
    if dims[0] < len(x.frame):
        raise _Refuse("it reduces over the time or batch axis (over the time axis alone, "
                      "not keeping it, it is a running maximum)")
    axes = tuple(d - len(x.frame) for d in dims)
    b.kinds_needed[x.expr] = (c.path, c.op, frozenset({ir.Kind.SPIKE}),
                              "only the max of spikes (1 where any fired)")
    total = b.new(c, lambda n, i: ir.Sum(n, i, path=c.path, axes=axes, keepdim=bool(keepdim)),
                  [x], x.frame, hint=f"{c.hint}_sum")
    return _comparison(b, c, total, np.asarray(0.0), "gt")


def _max(b, c, x, dim=None, keepdim=False):
    """``x.max(dim)`` / ``torch.max(x, dim)``: the max of spikes (:func:`_max_of_spikes`) as its
    values; its indices are refused where they are used."""
    if not isinstance(c.value, tuple):  # x.max() or torch.max(x, y): refused there
        return _max_of_spikes(b, c, x, dim, keepdim)
    values = _max_of_spikes(b, replace(c, value=c.value[0]), x, dim, keepdim)
    indices = b._refused(replace(c, value=c.value[1]), "the indices of a max", False, (x,), {})
    return type(c.value)((values, indices))


def _sum_over_time(c, x: Val) -> SumOverTime:
    """The sum over the time axis of a ``[T, B, ...]`` value (:class:`SumOverTime`)."""
    return SumOverTime(x, Val(_RunningSum(None, (x.expr,), c.op, c.hint, c.path, x.expr.shape,
                                          time=READOUT), B))


def _post_processing(what: str):
    """``what`` (a softmax, log-softmax, argmax or argmin) has no IR form. Of a value read at the
    last step (after a mean, sum or maximum over time: a classifier's outputs, norse's
    ``log_softmax`` of its maximum voltage), it is post-processing of the model's outputs: the
    refusal says to leave it out and apply it to snncc's outputs."""

    def handler(b, c, x, *args, **kwargs):
        if isinstance(x, Val) and x.expr.time == READOUT:
            raise _Refuse(f"{what} of the model's outputs, after the time steps, is not part of "
                          "the spiking network: compile the model without it and apply it to "
                          "snncc's outputs")
        raise _Refuse("")
    return handler


def _readout(b, c, x: Val) -> Val:
    """The mean over time of a ``[T, B, ...]`` value."""
    return b.new(c, lambda n, i: ir.Readout(n, i, path=c.path), [x], B, time=READOUT)


def _pad(b, c, x, pad, mode="constant", value=None):
    x = _val(x)
    pads = tuple(int(p) for p in pad) + (0, 0) * (len(pad) == 2)
    if mode != "constant" or len(pads) != 4 or len(x.expr.shape) != 3:
        raise _Refuse("only constant padding of the last two axes of (C, H, W) is supported")
    fill = 0.0 if value is None else float(value)
    out = b.new(c, lambda n, i: ir.Pad(n, i, path=c.path, pads=pads, value=fill), [x], x.frame)
    if fill == 0:
        b.note_zero_pad(out, x, pads)
    return out


def _assign(b, c, x, index, value):
    if isinstance(index, Val):  # mem[s] = v, s a comparison's result of mem's shape; or
        # out[s] = 1 into zeros made in forward (spytorch's spike function: the spikes)
        if isinstance(x, _FROM_INPUT) and (index.frame != _val(x).frame
                                           or index.expr.shape != _val(x).expr.shape):
            raise _Refuse("an assignment through a mask is taken only with a mask of the "
                          "tensor's shape")
        return _masked_fill(b, c, x, index, value)
    if isinstance(value, _FROM_INPUT):
        return _assemble(b, c, x, index, _val(value))
    y = x if isinstance(x, PaddedBorder) else _val(x)
    return b.assign_border(c, y, index, b.const(value, y if isinstance(y, Val) else y.inner))


def _assemble(b, c, x, index, value: Val):
    """``out[t] = v`` (or ``out[:, t] = v``) into a tensor made in forward, step by step in a
    loop over time (norse's models: ``voltages[ts, :, :] = v``): once every step is assigned,
    the steps stacked as ``torch.stack`` would (``out`` is read only then)."""
    index = index if isinstance(index, tuple) else (index,)
    if Ellipsis in index:  # (the axes it stands for, as slices)
        at = index.index(Ellipsis)
        index = (*index[:at], *(slice(None),) * (c.value.dim() - len(index) + 1),
                 *index[at + 1:])
    axis = next((i for i, k in enumerate(index) if isinstance(k, int)), None)
    full = all(k == slice(None) for i, k in enumerate(index) if i != axis)
    if full and axis is not None and axis >= len(value.frame) and \
            (isinstance(x, Assembled) and x.per_sample or
             isinstance(x, Const) and x.frame == value.frame):
        return _assemble_positions(b, c, x, axis, index[axis], value)
    t = index[axis] % b.T if axis is not None else None  # (out[-1] = v: the last step)
    # (a static value at every step: EMS-YOLO's input[i] = x, the image repeated over time)
    if axis not in (0, 1) or not full or value.frame != B or isinstance(x, Assembled) and \
            x.per_sample or value.expr.step != t and value.expr.time != STATIC:
        raise _Refuse("a value computed from the input is assigned only as step t of a sequence "
                      "(out[t] = v or out[:, t] = v in a loop over t)")
    steps = x.steps if isinstance(x, Assembled) else (None,) * b.T
    lead = (b.T, b.size["B"]) if axis == 0 else (b.size["B"], b.T)
    if axis != (x.axis if isinstance(x, Assembled) else axis) or \
            tuple(c.value.shape) != (*lead, *value.expr.shape):
        raise _Refuse("the steps are assigned into a [T, B, ...] (or [B, T, ...]) tensor")
    steps = tuple(value if k == t else v for k, v in enumerate(steps))
    if all(v is not None for v in steps):
        return _stack(b, c, steps, axis)
    return Assembled(axis, steps)


def _assemble_positions(b, c, x, axis: int, index: int, value: Val):
    """``out[:, i] = v`` into a tensor made in forward (``zeros_like``), position by position
    along a per-sample axis (STMixer's heads, each its own Linear): once every position is
    assigned, the values stacked there as ``torch.stack(..., axis)`` would."""
    size = c.value.shape[axis]
    at = axis - len(value.frame)
    parts = x.steps if isinstance(x, Assembled) else (None,) * size
    first = next((v for v in parts if v is not None), value)
    shape = value.expr.shape
    if (isinstance(x, Assembled) and x.axis != axis) or \
            tuple(c.value.shape[len(value.frame):]) != (*shape[:at], size, *shape[at:]) or \
            (first.frame, first.expr.step, first.expr.shape) != (value.frame, value.expr.step,
                                                                 shape):
        raise _Refuse("values assigned position by position along an axis (out[:, i] = v) "
                      "fill it with values of one layout and shape")
    parts = tuple(value if k == index % size else v for k, v in enumerate(parts))
    if all(v is not None for v in parts):
        return _stacked_per_sample(b, c, list(parts), at)
    return Assembled(axis, parts, per_sample=True)


def _expand_as(b, c, x, other):
    """``x.expand_as(y)``: a constant (Real-Spike's per-channel amplitude) broadcast to y's
    shape, in y's layout; a traced ``x`` as ``expand`` to that shape."""
    if isinstance(x, Const):
        return Const(c.value, _val(other).frame)
    return _repeat(b, c, x)


def _like(b, c, x, *args, **kwargs):
    return Const(c.value, _val(x).frame)


def _parameter(a, what: str) -> torch.Tensor | None:
    """A functional layer's ``what`` (weight, bias, statistics): a constant, or None."""
    if a is None:
        return None
    if isinstance(a, _FROM_INPUT):
        raise _Refuse(f"its {what} is computed from the input")
    if not isinstance(a, Const) or not isinstance(a.value, torch.Tensor):
        raise _Refuse(f"its {what} is not a tensor")
    if a.frame:
        raise _Refuse(f"its {what} has the time or batch axes")
    return a.value


def _conv_function(b, c, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """``F.conv1d`` / ``F.conv2d`` with constant weights (a weight-sharing supernet's slice of
    a larger kernel) as the convolution module is."""
    return _convolution(b, c, x, _parameter(weight, "weight"), _parameter(bias, "bias"),
                        stride, padding, dilation, groups)


def _conv_transpose_function(b, c, x, weight, bias=None, stride=1, padding=0,
                             output_padding=0, groups=1, dilation=1):
    """``F.conv_transpose1d`` / ``2d`` with constant weights, as the module is."""
    return _conv_transpose(b, c, x, _parameter(weight, "weight"), _parameter(bias, "bias"),
                           stride, padding, groups, dilation)


def _linear_function(b, c, x, weight, bias=None):
    """``F.linear`` with constant weights, as ``nn.Linear`` is."""
    return _affine(b, c, x, _parameter(weight, "weight"), _parameter(bias, "bias"))


def _batch_norm_function(b, c, x, running_mean, running_var, weight=None, bias=None,
                         training=False, momentum=0.1, eps=1e-5):
    """``F.batch_norm`` with the given running statistics, as a BatchNorm module in eval mode.
    ``training=True`` normalises with the batch's own statistics: refused, as a sample's
    output then depends on the rest of its batch."""
    if training:
        raise _Refuse("training=True normalises with the batch's own statistics, so a "
                      "sample's output depends on the rest of its batch: call it with "
                      "training=False (or self.training) to use the running statistics")
    return _normalization(b, c, x, _parameter(running_mean, "running mean"),
                          _parameter(running_var, "running variance"),
                          _parameter(weight, "weight"), _parameter(bias, "bias"), eps)


def _avg_pool1d_function(b, c, x, kernel_size, stride=None, padding=0, ceil_mode=False,
                         count_include_pad=True):
    """``F.avg_pool1d`` (e.g. a voting layer averaging groups of outputs) as its module."""
    return _pool1d(b, c, nn.AvgPool1d(kernel_size, stride, padding, ceil_mode,
                                         count_include_pad), x)


def _max_pool1d_function(b, c, x, kernel_size, stride=None, padding=0, dilation=1,
                         ceil_mode=False, return_indices=False):
    """``F.max_pool1d`` as its module."""
    return _pool1d(b, c, nn.MaxPool1d(kernel_size, stride, padding, dilation, return_indices,
                                      ceil_mode), x)


def _max_pool2d_function(b, c, x, kernel_size, stride=None, padding=0, dilation=1,
                         ceil_mode=False, return_indices=False):
    """``F.max_pool2d`` as its module."""
    if return_indices:
        raise _Refuse("return_indices is not supported")
    pool = nn.MaxPool2d(kernel_size, stride, padding, dilation, False, ceil_mode)
    return _maxpool(b, c, pool, x)


def _avg_pool2d_function(b, c, x, kernel_size, stride=None, padding=0, ceil_mode=False,
                         count_include_pad=True, divisor_override=None):
    """``F.avg_pool2d`` as its module."""
    return _avgpool2d(b, c, nn.AvgPool2d(kernel_size, stride, padding, ceil_mode,
                                         count_include_pad, divisor_override), x)


def _lp_pool2d_function(b, c, x, norm_type, kernel_size, stride=None, ceil_mode=False):
    """``F.lp_pool2d`` of norm 1, a sum pooling (sinabs' ``SumPool2d``), as torch computes it:
    the average times the window's size (its sign and abs around it change nothing)."""
    if norm_type != 1:
        raise _Refuse(f"a norm of {norm_type}; norm 1, a sum pooling, is taken")
    avg = _avgpool2d(b, c, nn.AvgPool2d(kernel_size, stride, 0, ceil_mode), x,
                     hint=f"{c.hint}_avg")
    kw, kh = _pair(kernel_size)
    return b.new(c, lambda n, i: ir.Scale(n, i, path=c.path, factor=float(kw * kh)), [avg],
                 avg.frame)


def _adaptive_avg_pool_function(b, c, x, output_size):
    """``F.adaptive_avg_pool2d`` / ``1d`` as its module."""
    pool = nn.AdaptiveAvgPool2d if c.value.dim() - len(_val(x).frame) == 3 \
        else nn.AdaptiveAvgPool1d
    return _adaptive_avgpool(b, c, pool(output_size), x)


def _pixel_shuffle(b, c, x, factor: int, unshuffle: bool = False):
    """``F.pixel_shuffle`` (sub-pixel upsampling: (C r^2, H, W) -> (C, H r, W r)) and
    ``pixel_unshuffle``, its inverse: the reshape, permute and reshape torch computes."""
    x = _val(x)
    if len(x.expr.shape) != 3:
        raise _Refuse("it needs a (C, H, W) input per sample")
    r = int(factor)
    ch, h, w = x.expr.shape
    if unshuffle:
        steps = ((ch, h // r, r, w // r, r), (0, 2, 4, 1, 3), (ch * r * r, h // r, w // r))
    else:
        steps = ((ch // (r * r), r, r, h, w), (0, 3, 1, 4, 2), (ch // (r * r), h * r, w * r))
    split, perm, out = steps
    y = b.new(c, lambda n, i: ir.Reshape(n, i, path=c.path, target=split), [x], x.frame,
              shape=split, hint=f"{c.hint}.split")
    moved = tuple(split[p] for p in perm)
    y = b.new(c, lambda n, i: ir.Transpose(n, i, path=c.path, perm=perm), [y], x.frame,
              shape=moved, hint=f"{c.hint}.perm")
    return b.new(c, lambda n, i: ir.Reshape(n, i, path=c.path, target=out), [y], x.frame)


def _interpolate(b, c, x, size=None, scale_factor=None, mode="nearest", align_corners=None,
                 recompute_scale_factor=None, antialias=False):
    """``F.interpolate`` / ``nn.Upsample`` to any size, by ``size`` or ``scale_factor``: a
    decoder's or a detector neck's resampling (to a skip connection's size, StereoSpike's 17x22
    -> 37x48), also of ``[T, B, C, H, W]`` by ``(1, k, k)`` (SpikeYOLO's neck,
    ``nn.Upsample(None, (1, 2, 2))``, whose third axis is the channels). Both kinds are
    separable, one resampled axis after another: in ``nearest`` (or ``nearest-exact``) mode a
    Gather of the positions torch reads there (spikes stay spikes, exactly); in ``linear``,
    ``bilinear`` or ``trilinear`` mode (a U-Net's ``bilinear=True``) the two positions each
    output reads, each Gathered and Scaled by its weight, and their Add (torch's weights; within
    an ulp of its result, whose CPU kernel fuses the multiply and the add), the last axis first
    as torch nests them."""
    x = _val(x)
    if mode not in ("nearest", "nearest-exact", "linear", "bilinear", "trilinear"):
        raise _Refuse(f"mode {mode!r}: snncc resamples in nearest, nearest-exact, linear, "
                      "bilinear and trilinear mode")
    if antialias:
        raise _Refuse("antialias filters over more than two positions")
    full = (*c.value.shape[:len(x.frame)], *x.expr.shape)
    spatial, first = full[2:], 2 - len(x.frame)
    if first < 0:
        raise _Refuse("it resamples the time or batch axis")
    resampled = _linear_resampling if mode.endswith("linear") else _nearest_resampling
    y = x
    for k in reversed(range(len(spatial))):
        y = resampled(b, c, y, first + k, _resampling_probe(
            spatial, k, size, scale_factor, mode, align_corners, recompute_scale_factor))
    return y


def _resampling_probe(spatial, k, size, scale_factor, mode, align_corners, recompute):
    """``read(p)``: the same resampling, along axis ``k`` of ``spatial`` alone, of the probes
    ``p`` (``[N, n_in]``, the other axes of length 1, resampled to length 1): ``[N, n_out]``.
    Each axis is resampled as its own size or scale tells, whatever the others'."""
    def along_k(v, rest):
        axes = [rest] * len(spatial)
        axes[k] = v[k] if isinstance(v, (tuple, list)) else v
        return tuple(axes)

    at = along_k(spatial, 1)
    resize = (dict(size=along_k(size, 1)) if size is not None
              else dict(scale_factor=along_k(scale_factor, 1.0)))

    def read(p):
        out = F.interpolate(p.reshape(len(p), 1, *at), mode=mode, align_corners=align_corners,
                            recompute_scale_factor=recompute, **resize)
        return out.reshape(len(p), -1)

    return read


def _nearest_resampling(b, c, y: Val, axis: int, read) -> Val:
    """The positions nearest resampling reads along ``axis``: the probe of each position's
    index (torch's own rounding, in the model's dtype), as a Gather."""
    dtype = c.value.dtype if c.value.dtype in (torch.float32, torch.float64) else torch.float32
    index = tuple(int(v) for v in read(torch.arange(y.expr.shape[axis], dtype=dtype)[None])[0])
    return _gathered(b, c, y, axis, index)


def _gathered(b, c, y: Val, axis: int, index: tuple[int, ...]) -> Val:
    if index == tuple(range(y.expr.shape[axis])):
        return y
    shape = list(y.expr.shape)
    shape[axis] = len(index)
    return b.new(c, lambda n, i: ir.Gather(n, i, path=c.path, axis=axis, index=index), [y],
                 y.frame, shape=tuple(shape), hint=f"{c.hint}_axis{axis}")


def _linear_resampling(b, c, y: Val, axis: int, read) -> Val:
    """Linear resampling along ``axis``: each output reads two neighbouring positions (the
    same one at an edge) with weights found by resampling each one-hot input (torch's weight
    times one, exactly), in float64 as the model run in float64 computes them. Each position
    Gathered and Scaled by its weights, the two added."""
    n_in = y.expr.shape[axis]
    weights = read(torch.eye(n_in, dtype=torch.float64)).numpy()
    read_by = weights != 0
    if (read_by.sum(0) > 2).any():
        raise _Refuse("an output reads more than two positions")
    first = read_by.argmax(0)
    last = n_in - 1 - read_by[::-1].argmax(0)
    columns = np.arange(weights.shape[1])
    w_first = weights[first, columns]
    w_last = np.where(last != first, weights[last, columns], 0.0)
    trailing = (1,) * (len(y.expr.shape) - axis - 1)
    taps = []
    for index, weight, tap in ((first, w_first, "first"), (last, w_last, "second")):
        if not weight.any():
            continue
        g = _gathered(b, c, y, axis, tuple(int(i) for i in index))
        if (weight != 1).any():
            g = b.new(c, lambda n, i, w=weight.reshape(-1, *trailing): ir.Scale(
                n, i, path=c.path, factor=w), [g], g.frame, shape=g.expr.shape,
                hint=f"{c.hint}_axis{axis}_{tap}")
        taps.append(g)
    if len(taps) == 1:
        return taps[0]
    return b.new(c, lambda n, i: ir.Add(n, i, path=c.path), taps, y.frame,
                 shape=taps[0].expr.shape, hint=f"{c.hint}_axis{axis}_sum")


_add, _sub, _mul, _div, _matmul = (_binary(k) for k in ("add", "sub", "mul", "div", "matmul"))
_FUNCTIONS = {
    operator.add: _add, operator.iadd: _add, torch.add: _add,
    operator.sub: _sub, operator.isub: _sub, torch.sub: _sub,
    operator.mul: _mul, operator.imul: _mul, torch.mul: _mul,
    operator.truediv: _div, operator.itruediv: _div, torch.div: _div,
    operator.matmul: _matmul, torch.matmul: _matmul, torch.bmm: _matmul,
    operator.neg: _neg, torch.neg: _neg, operator.getitem: _getitem,
    torch.flatten: _flatten, torch.reshape: _reshape, torch.squeeze: _reshape,
    torch.unsqueeze: _reshape, torch.permute: _permute, torch.transpose: _transpose, torch.t: _t,
    torch.sum: _reduce(False), torch.mean: _reduce(True), torch.cat: _cat, torch.concat: _cat,
    torch.stack: _stack, torch.unbind: _unbind, torch.select: _select, F.pad: _pad,
    _assigned: _assign,
    torch.zeros_like: _like, torch.ones_like: _like, torch.full_like: _like,
    torch.clone: _identity, torch.chunk: _chunk, torch.split: _split,
    torch.narrow: _narrow, torch.roll: _roll,
    torch.avg_pool1d: _avg_pool1d_function, F.avg_pool1d: _avg_pool1d_function,
    F.max_pool1d: _max_pool1d_function, F.max_pool2d: _max_pool2d_function,
    F.avg_pool2d: _avg_pool2d_function, F.lp_pool2d: _lp_pool2d_function,
    F.conv1d: _conv_function, F.conv2d: _conv_function, F.linear: _linear_function,
    F.conv_transpose1d: _conv_transpose_function, F.conv_transpose2d: _conv_transpose_function,
    F.pixel_shuffle: _pixel_shuffle,
    F.pixel_unshuffle: lambda b, c, x, factor: _pixel_shuffle(b, c, x, factor, True),
    F.batch_norm: _batch_norm_function,
    operator.gt: _compare("gt"), operator.ge: _compare("ge"), operator.lt: _compare("lt"),
    operator.le: _compare("le"), torch.gt: _compare("gt"), torch.ge: _compare("ge"),
    torch.lt: _compare("lt"), torch.le: _compare("le"), torch.where: _where,
    torch.heaviside: _heaviside, torch.clamp: _clamp, torch.clip: _clamp, getattr: _attribute,
    torch.round: _round, torch.floor: _floor, torch.masked_fill: _masked_fill,
    operator.invert: _logical_not, torch.logical_not: _logical_not,
    operator.eq: _equality("eq"), torch.eq: _equality("eq"), operator.ne: _equality("ne"),
    torch.ne: _equality("ne"),
    **dict.fromkeys((operator.and_, operator.iand, torch.logical_and, torch.bitwise_and),
                    _logical("and")),
    **dict.fromkeys((operator.or_, operator.ior, torch.logical_or, torch.bitwise_or),
                    _logical("or")),
    torch.bitwise_not: _logical_not, torch.amax: _max_of_spikes, torch.max: _max,
    F.adaptive_avg_pool2d: _adaptive_avg_pool_function, F.interpolate: _interpolate,
    F.adaptive_avg_pool1d: _adaptive_avg_pool_function,
    F.relu: _relu, torch.relu: _relu,
    **{f: _post_processing(f.__name__) for f in (torch.softmax, F.softmax, torch.log_softmax,
                                                 F.log_softmax, torch.argmax, torch.argmin)},
    # (one that drops, in training, is refused while tracing: _WhileTracing)
    **dict.fromkeys((F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                     F.feature_alpha_dropout), _identity),
}
_METHODS = {
    "add": _add, "sub": _sub, "mul": _mul, "div": _div, "matmul": _matmul, "bmm": _matmul,
    "neg": _neg,
    "flatten": _flatten, "reshape": _reshape, "view": _reshape, "view_as": _reshape,
    "reshape_as": _reshape, "squeeze": _reshape, "unsqueeze": _reshape, "unflatten": _reshape,
    "permute": _permute, "transpose": _transpose, "t": _t, "contiguous": _identity,
    "clone": _identity,
    "detach": _identity, "sum": _reduce(False), "mean": _reduce(True), "repeat": _repeat,
    "expand": _repeat, "expand_as": _expand_as, "select": _select, "unbind": _unbind,
    "chunk": _chunk, "split": _split,
    "narrow": _narrow, "roll": _roll, "__getitem__": _getitem, "gt": _compare("gt"),
    "ge": _compare("ge"),
    "lt": _compare("lt"), "le": _compare("le"), "float": _cast, "to": _cast, "type": _cast,
    "type_as": _cast,
    "heaviside": _heaviside, "clamp": _clamp, "clip": _clamp, "relu": _relu, "round": _round,
    "floor": _floor, "masked_fill": _masked_fill, "cpu": _identity,
    **dict.fromkeys(("double", "half", "bfloat16", "int", "long"), _cast), "bool": _as_bool,
    "logical_not": _logical_not, "bitwise_not": _logical_not, "amax": _max_of_spikes,
    "eq": _equality("eq"), "ne": _equality("ne"),
    **dict.fromkeys(("logical_and", "bitwise_and", "__and__", "__iand__"), _logical("and")),
    **dict.fromkeys(("logical_or", "bitwise_or", "__or__", "__ior__"), _logical("or")),
    "max": _max,
    **{m: _post_processing(m) for m in ("softmax", "log_softmax", "argmax", "argmin")},
}
#: handlers of ops on windows folded into the batch (:data:`WINDOWED`): elementwise ones, and
#: moves of values that keep the windows' axis where it is (the handlers check), or take it
#: back into the samples; and the modules besides neurons
_ON_WINDOWS = frozenset({_add, _sub, _mul, _div, _matmul, _neg, _flatten, _reshape, _permute,
                         _transpose, _identity, _cast, _conv_function, _batch_norm_function})
_MODULES_ON_WINDOWS = (nn.Conv1d, nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.Dropout,
                       nn.Identity)
_WINDOWS_REFUSED = ("it computes on windows of each sample folded into the batch axis ([T, B*W, "
                    "...], a window attention's partition), where snncc takes only elementwise "
                    "ops, convolutions, BatchNorm, matmuls, multi-step neurons and moves of "
                    "values that keep the windows apart")


def _windowed(leaves) -> bool:
    return any(isinstance(a, Val) and a.frame in WINDOWED for a in leaves)


#: handlers that only move values, so they commute with a scale (:attr:`_Builder.scaled`)
_LAYOUT_HANDLERS = frozenset({_reshape, _flatten, _permute, _transpose, _t})


# ----------------------------------------------------------------------------- module handlers

def _one_sample_frame(x, rank: int) -> Val:
    x = _val(x)
    if len(x.frame) != 1 or len(x.expr.shape) != rank:
        raise _Refuse(f"it needs a [T*B or B, ...] input with {rank} per-sample axes")
    return x


def _convolution(b, c, x, weight: torch.Tensor, bias, stride, padding, dilation, groups):
    """A convolution of ``x`` with constant ``weight`` and ``bias`` (module or function)."""
    nd = weight.dim() - 2
    if nd not in (1, 2):
        raise _Refuse(f"a {nd}-D convolution")
    if isinstance(x, TimeAxisLast):
        return _convolution_over_time(b, c, x.x, weight, bias, stride, padding, dilation,
                                      groups)
    if isinstance(x, Val) and x.frame == TWM:
        return _convolution_of_windows(b, c, x, weight, bias, stride, padding, dilation,
                                       groups)
    x = _one_sample_frame(x, nd + 1)
    if isinstance(padding, str):
        raise _Refuse("only explicit zero padding is supported")
    cls, pack = (ir.Conv2d, _pair) if nd == 2 else (ir.Conv1d, _single)
    w, bias = _weights(b, weight), None if bias is None else _np(bias)
    stride, padding, dilation = pack(stride), pack(padding), pack(dilation)
    return b.new(c, lambda n, i: cls(n, i, path=c.path, weight=w, bias=bias, stride=stride,
                                     padding=padding, dilation=dilation, groups=groups),
                 [x], x.frame)


def _convolution_of_windows(b, c, x: Val, weight: torch.Tensor, bias, stride, padding,
                            dilation, groups) -> Val:
    """A convolution of windows folded into the batch (``[T*B*W, C, ...]``, the IR's ``(W, C,
    ...)``), each window convolved alone. A 1x1 one mixes channels at each position alone: the
    windows side by side, ``(C, W*h, w)``, one convolution, put back as ``(W, C', h, w)``. Any
    other: the windows stacked on the channel axis, ``(W*C, h, w)``, convolved with W times the
    groups and the kernel repeated for each window (its weights W times, as a chip holds them)."""
    nd = weight.dim() - 2
    if len(x.expr.shape) != nd + 2 or isinstance(padding, str):
        raise _Refuse("a convolution of windows folded into the batch axis ([T*B*W, ...]) "
                      "needs one (C, spatial...) input per window and explicit padding")
    pack = _pair if nd == 2 else _single
    stride, padding, dilation = pack(stride), pack(padding), pack(dilation)
    (wins, ch, *space), out = x.expr.shape, weight.shape[0]
    cls = ir.Conv2d if nd == 2 else ir.Conv1d
    if set(weight.shape[2:]) | set(stride) | set(dilation) == {1} and not any(padding):
        side = (ch, wins * space[0], *space[1:])
        steps = [("channels_first", (ch, wins, *space), lambda n, i: ir.Transpose(
                      n, i, path=c.path, perm=(1, 0, *range(2, nd + 2)))),
                 ("side_by_side", side, lambda n, i: ir.Reshape(n, i, path=c.path,
                                                                target=side)),
                 ("conv", (out, *side[1:]), lambda n, i: cls(
                     n, i, path=c.path, weight=_weights(b, weight), bias=None if bias is None
                     else _np(bias), stride=stride, padding=padding, dilation=dilation,
                     groups=groups)),
                 ("apart", (out, wins, *space), lambda n, i: ir.Reshape(
                     n, i, path=c.path, target=(out, wins, *space))),
                 ("windows_first", (wins, out, *space), lambda n, i: ir.Transpose(
                     n, i, path=c.path, perm=(1, 0, *range(2, nd + 2))))]
    else:
        stacked, y_space = (wins * ch, *space), tuple(c.value.shape[2:])
        steps = [("stacked", stacked, lambda n, i: ir.Reshape(n, i, path=c.path,
                                                               target=stacked)),
                 ("conv", (wins * out, *y_space), lambda n, i: cls(
                     n, i, path=c.path, weight=np.tile(_weights(b, weight), (wins,) + (1,) *
                                                       (nd + 1)),
                     bias=None if bias is None else np.tile(_np(bias), wins), stride=stride,
                     padding=padding, dilation=dilation, groups=groups * wins)),
                 ("apart", (wins, out, *y_space), lambda n, i: ir.Reshape(
                     n, i, path=c.path, target=(wins, out, *y_space)))]
    for hint, shape, make in steps[:-1]:
        x = b.new(c, make, [x], TWM, shape=shape, hint=f"{c.hint}.{hint}")
    return b.new(c, steps[-1][2], [x], TWM)


def _convolution_over_time(b, c, x: Val, weight: torch.Tensor, bias, stride, padding,
                           dilation, groups) -> Val:
    """A convolution of ``x`` with its time axis moved last whose kernel spans all T steps of
    that axis, unpadded: one output along it, the sum over the steps of each step's convolution
    with its slice of the kernel (:class:`_ConvOverTime`), read at the last step."""
    nd = weight.dim() - 2
    pack = _pair if nd == 2 else _single
    if not isinstance(padding, str):
        stride, padding, dilation = pack(stride), pack(padding), pack(dilation)
    if isinstance(padding, str) or len(x.expr.shape) != nd or weight.shape[-1] != b.T \
            or padding[-1] != 0 or dilation[-1] != 1:
        raise _Refuse("a convolution over the time axis moved last is taken only with a kernel "
                      "that spans all T steps of it, unpadded (one output along it)")
    cls = ir.Conv2d if nd == 2 else ir.Conv1d
    step_args = dict(stride=(*stride[:-1], 1), padding=(*padding[:-1], 0),
                     dilation=(*dilation[:-1], 1), groups=groups)
    convs = tuple(
        lambda n, i, w=_np(weight[..., k:k + 1]), bias=None if bias is None or k else _np(bias):
        cls(n, i, path=c.path, weight=w, bias=bias, **step_args) for k in range(b.T))
    return Val(_ConvOverTime(None, (x.expr,), c.op, c.hint, c.path, tuple(c.value.shape[1:]),
                             time=READOUT, convs=convs, steps_shape=x.expr.shape), B)


def _transposed_axis(size_in: int, size_out: int, k: int, s: int, p: int, d: int):
    """One axis of a transposed convolution as ``s`` correlations, one per output phase r
    (outputs r, r + s, ...), each over the same ``q = ceil(size_out / s)`` positions:
    y[q s + r] = sum of w[t] x[q + a] over the taps t with a = (r + p - t d) / s whole. Per
    phase: (left pad, right pad, {kernel index: tap}, kernel length), the pads making the
    kernel index a + left and the correlation's length q."""
    q = -(-size_out // s)
    phases = []
    for r in range(s):
        taps = {(r + p - t * d) // s: t for t in range(k) if (r + p - t * d) % s == 0}
        lo, hi = (min(taps), max(taps)) if taps else (0, 0)
        left, right = max(0, -lo), max(0, hi + q - size_in)
        phases.append((left, right, {a + left: t for a, t in taps.items()},
                       size_in + left + right + 1 - q))
    return q, phases


def _conv_transpose(b, c, x, weight: torch.Tensor, bias, stride, padding, groups, dilation):
    """A transposed convolution (a decoder's learned upsampling) as ordinary ones, exactly: each
    output phase (rh, rw) of the stride is a convolution of the padded input with the taps that
    reach it (the polyphase form: the transposed convolution's own multiplications, no zeros
    inserted into the input), the phases interleaved (:func:`_interleaved`), an incomplete last
    period cut off. A 1-D one is the 2-D one on an added axis. The output size
    (``output_padding``, ``output_size``) is the call's."""
    nd = weight.dim() - 2  # 1 or 2: only ConvTranspose1d / 2d and their functions come here
    x = _one_sample_frame(x, nd + 1)
    pack = _pair if nd == 2 else _single
    stride, padding, dilation = pack(stride), pack(padding), pack(dilation)
    out = tuple(c.value.shape[len(x.frame):])
    w = _weights(b, weight)
    c_in, k = w.shape[0], w.shape[2:]
    w = w.reshape(groups, c_in // groups, -1, *k).swapaxes(1, 2).reshape(-1, c_in // groups, *k)
    c_out, spatial_in = w.shape[0], x.expr.shape[1:]
    if nd == 1:
        w, spatial_in, out = w[:, :, None], (1, *spatial_in), (c_out, 1, out[1])
        stride, padding, dilation = (1, *stride), (0, *padding), (1, *dilation)
        x = b.new(c, lambda n, i: ir.Reshape(n, i, path=c.path, target=(c_in, *spatial_in)),
                  [x], x.frame, shape=(c_in, *spatial_in), hint=f"{c.hint}.rows")
    (qh, rows), (qw, cols) = (_transposed_axis(*a) for a in zip(
        spatial_in, out[1:], w.shape[2:], stride, padding, dilation))
    bias, padded, phases = None if bias is None else _np(bias), {}, []
    for rh, (top, bottom, taps_h, kh) in enumerate(rows):
        row = []
        for rw, (left, right, taps_w, kw) in enumerate(cols):
            pads = (left, right, top, bottom)
            if pads not in padded:
                padded[pads] = x if not any(pads) else b.new(
                    c, lambda n, i, p=pads: ir.Pad(n, i, path=c.path, pads=p), [x], x.frame,
                    shape=(c_in, spatial_in[0] + top + bottom, spatial_in[1] + left + right),
                    hint=f"{c.hint}.pad{len(padded)}")
            u = np.zeros((c_out, w.shape[1], kh, kw), w.dtype)
            for jh, th in taps_h.items():
                for jw, tw in taps_w.items():
                    u[:, :, jh, jw] = w[:, :, th, tw]
            row.append(b.new(c, lambda n, i, u=u: ir.Conv2d(n, i, path=c.path, weight=u,
                                                             bias=bias, groups=groups),
                             [padded[pads]], x.frame, shape=(c_out, qh, qw),
                             hint=f"{c.hint}.phase{rh}_{rw}"))
        phases.append(_interleaved(b, c, row, 2, f"{c.hint}.cols{rh}"))
    y = _interleaved(b, c, phases, 1, f"{c.hint}.rows")
    for axis, size in ((1, out[1]), (2, out[2])):
        if y.expr.shape[axis] > size:
            y = _narrowed(b, c, y, len(x.frame) + axis, 0, size, f"{c.hint}.cut{axis}",
                          None if c.site is None else (*c.site, f"cut{axis}"))
    if nd == 1:
        y = b.new(c, lambda n, i: ir.Reshape(n, i, path=c.path, target=(c_out, out[2])), [y],
                  x.frame)
    return y


def _interleaved(b, c, parts: list, axis: int, hint: str):
    """``parts`` of one shape interleaved along ``axis``: part r gives positions r, r + len,
    ...; each part on a new axis after ``axis``, concatenated there, the two axes folded."""
    if len(parts) == 1:
        return parts[0]
    shape, frame = parts[0].expr.shape, parts[0].frame
    unit = (*shape[:axis + 1], 1, *shape[axis + 1:])
    units = [b.new(c, lambda n, i: ir.Reshape(n, i, path=c.path, target=unit), [p], frame,
                   shape=unit, hint=f"{hint}_unit{r}") for r, p in enumerate(parts)]
    joined = (*shape[:axis + 1], len(parts), *shape[axis + 1:])
    y = b.new(c, lambda n, i: ir.Concat(n, i, path=c.path, axis=axis + 1), units, frame,
              shape=joined, hint=f"{hint}_cat")
    folded = (*shape[:axis], shape[axis] * len(parts), *shape[axis + 1:])
    return b.new(c, lambda n, i: ir.Reshape(n, i, path=c.path, target=folded), [y], frame,
                 shape=folded, hint=hint)


def _affine(b, c, x, weight: torch.Tensor, bias):
    """``x @ weight.T + bias`` over the last axis, ``weight`` and ``bias`` constant."""
    x = _val(x)
    if weight.dim() != 2:
        raise _Refuse(f"a weight of {weight.dim()} axes (a linear layer's has 2)")
    w, bias = _weights(b, weight), None if bias is None else _np(bias)
    return b.new(c, lambda n, i: ir.Linear(n, i, path=c.path, weight=w, bias=bias), [x], x.frame)


def _normalization(b, c, x, mean, var, weight, bias, eps: float):
    """Batch normalization of ``x``'s channel axis with constant statistics and affine (of a
    FrameMoved or TimeAxisLast: of the axis of its value that is its axis 1, the result moved
    as it is: Spiking PointNet's ``bn(x.permute(1, 2, 0))`` of ``[T, B, C]``)."""
    if isinstance(x, (FrameMoved, TimeAxisLast)):
        axis = _moved_by(x)[1] - len(x.x.frame)
        if axis < 0:
            raise _Refuse("its channel axis is the time or batch axis")
        y = _normalization_along(b, c, x.x, axis, mean, var, weight, bias, eps)
        return replace(x, x=y)
    x = _val(x)
    return _normalization_along(b, c, x, 1 - len(x.frame), mean, var, weight, bias, eps)


def _normalization_along(b, c, x: Val, axis: int, mean, var, weight, bias, eps: float):
    if axis < 0 or axis == 0 and x.frame in WINDOWED:
        raise _Refuse("its channel axis is the batch axis")
    if mean is None or var is None:
        raise _Refuse("a BatchNorm without running statistics")
    ch = x.expr.shape[axis]
    p = dict(weight=np.ones(ch) if weight is None else _np(weight),
             bias=np.zeros(ch) if bias is None else _np(bias), mean=_np(mean), var=_np(var))
    return b.new(c, lambda n, i: ir.BatchNorm(n, i, path=c.path, eps=eps, axis=axis, **p),
                 [x], x.frame, shape=x.expr.shape)


def _conv(b, c, m, x):
    if m.padding_mode != "zeros":
        raise _Refuse("only explicit zero padding is supported")
    return _convolution(b, c, x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)


def _pixel_shuffle_module(b, c, m, x):
    unshuffle = isinstance(m, nn.PixelUnshuffle)
    return _pixel_shuffle(b, c, x, m.downscale_factor if unshuffle else m.upscale_factor,
                          unshuffle)


def _conv_transpose_module(b, c, m, x, output_size=None):
    if m.padding_mode != "zeros":
        raise _Refuse("only explicit zero padding is supported")
    return _conv_transpose(b, c, x, m.weight, m.bias, m.stride, m.padding, m.groups, m.dilation)


def _linear(b, c, m, x):
    return _affine(b, c, x, m.weight, m.bias)


def _batchnorm(b, c, m, x):
    return _normalization(b, c, x, m.running_mean, m.running_var, m.weight, m.bias, m.eps)


def _pool2d(m, three: bool = False) -> dict:
    """kernel/stride/padding of a 2-D pool, or of a (1, k, k) 3-D pool (``three``)."""
    pack = _triple if three else _pair
    k, s, p = pack(m.kernel_size), pack(m.stride), pack(m.padding)
    if three:
        if (k[0], s[0], p[0]) != (1, 1, 0):
            raise _Refuse("only a (1, k, k) MaxPool3d is supported")
        k, s, p = k[1:], s[1:], p[1:]
    return dict(kernel_size=k, stride=s, padding=p)


def _maxpool(b, c, m, x):
    """MaxPool2d on [T*B or B, C, H, W]; MaxPool3d((1, k, k)) on [T, B, C, H, W] (the official
    spike-driven DVS "erode") is the same 2-D pool of every step's (C, H, W)."""
    three = isinstance(m, nn.MaxPool3d)
    x = _val(x)
    if (x.frame != TB if three else len(x.frame) != 1) or len(x.expr.shape) != 3:
        raise _Refuse("it needs a [T*B or B, C, H, W] input (MaxPool3d: [T, B, C, H, W])")
    dilation = _triple(m.dilation)[1:] if three else _pair(m.dilation)
    if m.return_indices or (three and _triple(m.dilation)[0] != 1):
        raise _Refuse("return_indices is not supported")
    args = _pool2d(m, three)
    _ceil_mode_check(m, c, x.expr.shape[-2:], dilation=dilation, **args)
    return b.new(c, lambda n, i: ir.MaxPool2d(n, i, path=c.path, dilation=dilation, **args),
                 [x], x.frame)


def _avgpool_check(m):
    if getattr(m, "divisor_override", None):
        raise _Refuse("divisor_override is not supported")


def _ceil_mode_check(m, c, sizes, kernel_size, stride, padding, dilation=(1, 1)):
    """A pool's ``ceil_mode`` changes nothing where the output has the size it has without it
    (an even size pooled by 2: MPBN's ResNets): taken there, refused where it adds a window
    overhanging the input."""
    if not m.ceil_mode:
        return
    floor = tuple((i + 2 * p - d * (k - 1) - 1) // s + 1
                  for i, k, s, p, d in zip(sizes, kernel_size, stride, padding, dilation))
    if tuple(c.value.shape[-len(sizes):]) != floor:
        raise _Refuse(f"ceil_mode adds a window overhanging the input (output "
                      f"{tuple(c.value.shape[-len(sizes):])}, {floor} without it); it is taken "
                      "where it changes nothing")


def _avgpool2d(b, c, m, x, hint=None):
    x = _one_sample_frame(x, 3)
    _avgpool_check(m)
    args = _pool2d(m)
    _ceil_mode_check(m, c, x.expr.shape[-2:], **args)
    return b.new(c, lambda n, i: ir.AvgPool2d(n, i, path=c.path,
                                              count_include_pad=m.count_include_pad, **args),
                 [x], x.frame, hint=hint)


def _lppool2d(b, c, m, x):
    return _lp_pool2d_function(b, c, x, m.norm_type, m.kernel_size, m.stride, m.ceil_mode)


def _pool1d(b, c, m, x):
    """AvgPool1d / MaxPool1d of the last axis as Reshape (rows, 1, L) -> the 2-D pool (1, k) ->
    Reshape back (torch's 1-D pools are its 2-D pools on an added axis: the same values)."""
    x = _val(x)
    k, s, p = (_single(v)[0] for v in (m.kernel_size, m.stride, m.padding))
    _ceil_mode_check(m, c, x.expr.shape[-1:], (k,), (s,), (p,),
                     _single(getattr(m, "dilation", 1)))
    if isinstance(m, nn.MaxPool1d):
        if m.return_indices:
            raise _Refuse("return_indices is not supported")
        d = _single(m.dilation)[0]

        def pool(n, i):
            return ir.MaxPool2d(n, i, path=c.path, kernel_size=(1, k), stride=(1, s),
                                padding=(0, p), dilation=(1, d))
    else:
        _avgpool_check(m)

        def pool(n, i):
            return ir.AvgPool2d(n, i, path=c.path, kernel_size=(1, k), stride=(1, s),
                                padding=(0, p), count_include_pad=m.count_include_pad)
    *lead, L = x.expr.shape
    rows, out = math.prod(lead), tuple(c.value.shape[len(x.frame):])
    y = b.new(c, lambda n, i: ir.Reshape(n, i, path=c.path, target=(rows, 1, L)), [x], x.frame,
              shape=(rows, 1, L), hint=f"{c.hint}.rows")
    y = b.new(c, pool, [y], x.frame, shape=(rows, 1, out[-1]), hint=f"{c.hint}.pool")
    return b.new(c, lambda n, i: ir.Reshape(n, i, path=c.path, target=out), [y], x.frame)


def _single_cell_sources(size_in: tuple, size_out: tuple) -> list[list[int]] | None:
    """Per pooled axis, the input index each output cell averages when every output cell of an
    adaptive average pool covers exactly one input cell (torch's cell j covers
    [floor(j I / O), ceil((j + 1) I / O)); that is when O is a multiple of I), else None."""
    sources = []
    for i, o in zip(size_in, size_out):
        starts = [j * i // o for j in range(o)]
        if any(-(-(j + 1) * i // o) - s != 1 for j, s in enumerate(starts)):
            return None
        sources.append(starts)
    return sources


def _replicate_cells(b, c, x: Val, sources: list[list[int]]) -> Val:
    """An adaptive pool whose output cells each average one input cell (``sources``) copies
    cells: Reshape (C, cells in) -> one-hot Linear -> Reshape (C, *size out). Each output is
    x * 1 plus zeros, exact for finite values."""
    size_in, size_out = x.expr.shape[1:], tuple(len(s) for s in sources)
    if size_out == tuple(size_in):
        return x
    ch, n_in = x.expr.shape[0], math.prod(size_in)
    weight = np.zeros((math.prod(size_out), n_in))
    cols = np.ravel_multi_index(np.meshgrid(*sources, indexing="ij"), size_in).ravel()
    weight[np.arange(len(cols)), cols] = 1.0
    y = b.new(c, lambda n, i: ir.Reshape(n, i, path=c.path, target=(ch, n_in)), [x], x.frame,
              shape=(ch, n_in), hint=f"{c.hint}.cells")
    y = b.new(c, lambda n, i: ir.Linear(n, i, path=c.path, weight=weight), [y], x.frame,
              shape=(ch, len(cols)), hint=f"{c.hint}.copy")
    return b.new(c, lambda n, i: ir.Reshape(n, i, path=c.path, target=(ch, *size_out)), [y],
                 x.frame)


def _adaptive_avgpool(b, c, m, x):
    """AdaptiveAvgPool1d/2d: to 1 (global) a Mean over the pooled axes; to a size that divides
    the input an AvgPool with kernel = stride = input / output; to a multiple of the input
    (every output cell covers one input cell: replication, or the same size) a copy of cells;
    anything else is refused."""
    x = _val(x)
    nd = 2 if isinstance(m, nn.AdaptiveAvgPool2d) else 1
    size_in = x.expr.shape[-nd:]
    size_out = tuple(c.value.shape[-nd:])
    if len(x.expr.shape) != nd + 1 or len(x.frame) != 1:
        raise _Refuse(f"it needs a [T*B or B, C, {'H, W' if nd == 2 else 'L'}] input")
    sources = _single_cell_sources(size_in, size_out)
    if sources is not None:
        return _replicate_cells(b, c, x, sources)
    if all(o == 1 for o in size_out):
        axes = tuple(range(1, nd + 1))
        return b.new(c, lambda n, i: ir.Mean(n, i, path=c.path, axes=axes, keepdim=True), [x],
                     x.frame)
    if any(i % o for i, o in zip(size_in, size_out)):
        raise _Refuse(f"output size {size_out} neither divides input size {size_in} nor is a "
                      f"multiple of it; use nn.AvgPool{nd}d with a fixed kernel")
    k = tuple(i // o for i, o in zip(size_in, size_out))
    pool = nn.AvgPool2d(k, k) if nd == 2 else nn.AvgPool1d(k, k)
    return (_avgpool2d if nd == 2 else _pool1d)(b, c, pool, x)


def _flatten_module(b, c, m, x):
    return _flatten(b, c, x, m.start_dim, m.end_dim)


def _identity_module(b, c, m, x):
    return _val(x)


def _relu_module(b, c, m, x):
    return _relu(b, c, x)


def _unflatten_module(b, c, m, x):
    return _reshape(b, c, x)


def _constant_pad_module(b, c, m, x):
    """``nn.ZeroPad2d`` / ``nn.ConstantPad2d``: ``F.pad`` with its padding and value."""
    return _pad(b, c, x, m.padding, value=m.value)


def _upsample_module(b, c, m, x):
    return _interpolate(b, c, x, m.size, m.scale_factor, m.mode, m.align_corners)


_MODULES: tuple[tuple[type, Callable], ...] = (
    (nn.Conv1d, _conv), (nn.Conv2d, _conv), (nn.Linear, _linear),
    (nn.ConvTranspose1d, _conv_transpose_module), (nn.ConvTranspose2d, _conv_transpose_module),
    (nn.PixelShuffle, _pixel_shuffle_module), (nn.PixelUnshuffle, _pixel_shuffle_module),
    (nn.BatchNorm1d, _batchnorm), (nn.BatchNorm2d, _batchnorm), (nn.BatchNorm3d, _batchnorm),
    (nn.MaxPool2d, _maxpool), (nn.MaxPool3d, _maxpool), (nn.AvgPool2d, _avgpool2d),
    (nn.LPPool2d, _lppool2d),
    (nn.AvgPool1d, _pool1d), (nn.MaxPool1d, _pool1d), (nn.AdaptiveAvgPool2d, _adaptive_avgpool),
    (nn.AdaptiveAvgPool1d, _adaptive_avgpool), (nn.Flatten, _flatten_module),
    (nn.Identity, _identity_module), (nn.Unflatten, _unflatten_module),
    (nn.ConstantPad2d, _constant_pad_module), (nn.ZeroPad2d, _constant_pad_module),
    (nn.Upsample, _upsample_module),
    (nn.modules.dropout._DropoutNd, _identity_module), (nn.ReLU, _relu_module),
)


def _torch_equivalent(m: nn.Module, adapter: Adapter | None) -> nn.Module | None:
    """The torch module that computes what the leaf ``m`` does (``m`` itself, or its
    adapter's equivalent); None where the adapter maps it with a handler of its own."""
    own = adapter.module_handler(m) if adapter is not None else None
    return m if own is None else own if isinstance(own, nn.Module) else None


def _module_handler(m: nn.Module, adapter: Adapter | None) -> Callable:
    """``handler(builder, call, *args, **kwargs)`` mapping a call of the leaf ``m``: the
    adapter's handler or equivalent torch module, else the handler of m's torch class."""
    own = adapter.module_handler(m) if adapter is not None else None
    if own is not None and not isinstance(own, nn.Module):
        return lambda b, c, *args, **kwargs: own(b, c, m, *args, **kwargs)
    torch_module = m if own is None else own
    for cls, handler in _MODULES:
        if isinstance(torch_module, cls):
            return lambda b, c, *args, **kwargs: handler(b, c, torch_module, *args, **kwargs)
    raise _Refuse("")


# ============================================================================ entry point

def _with_a_batch_apart_from_T(x: torch.Tensor, axis: int, T: int) -> torch.Tensor:
    """``x`` with its samples along ``axis`` repeated in turn to the fewest (at least 2) whose
    number is not T, where it has 1 or T of them (``x`` itself otherwise)."""
    batch = x.shape[axis]
    if batch >= 2 and batch != T:
        return x
    size = next(n for n in range(max(2, batch), batch + 3) if n != T)
    return x.index_select(axis, torch.arange(size) % batch)


def trace(model: nn.Module, example_input: torch.Tensor, *, T: int, static: bool = True,
          name: str = "model", share_weights: bool = False, until: str | None = None,
          layout: str | None = None) -> Graph:
    """Trace ``model`` on ``example_input`` into a verified IR graph.

    ``static``: the input is one image ``[B, ...]`` that the model repeats over ``T`` (an IR
    static input); otherwise a sequence ``[T, B, ...]`` or ``[B, T, ...]`` (DVS; the graph's
    ``meta['input_layout']`` says which; the IR input is ``[T, B, ...]``). The tracer tells
    time and batch axes apart by their sizes: an example batch of 1 sample, or of T, is traced
    with its samples repeated to a batch of another size (a sequence whose two leading axes
    both have length T is refused: either may be its batch, unless ``layout``, 'TB' or 'BT',
    says which).
    A 0/1 example input makes a spike input. The model is traced in eval mode without
    gradients; its training flags are restored after and neuron state is cleared
    before and after (the adapters' ``reset_state``). ``share_weights``: float32 synapse
    weights are the model's own memory instead of copies, for a model nothing else will
    change (the IR never changes an array in place). ``until``: the path of a module the graph
    ends before (its first call's tensor arguments are the outputs; ``meta['until']``), to
    compile the spiking part of a model whose head is not (a detector's box decoding).
    """
    if until is not None and until not in dict(model.named_modules()):
        children = ", ".join(n for n, _ in model.named_children()) or "none"
        raise SnnccError(f"until='{until}' names no module of the model (its modules: "
                         f"{children}, and theirs by dotted path)")
    x = torch.as_tensor(example_input)
    if T < 1 or x.dim() < 2:
        raise ValueError(f"need T >= 1 and a batched input, got T={T}, shape {tuple(x.shape)}")
    axis = 0 if static or x.shape[0] != T else 1  # (of the batch)
    if not static and layout in ("TB", "BT"):
        axis = layout.index("B")
    elif not static and x.dim() >= 3 and x.shape[0] == x.shape[1] == T:
        raise SnnccError(f"the example sequence {tuple(x.shape)} has T={T} along both "
                         "leading axes, so it reads as [T, B, ...] and as [B, T, ...]: give "
                         "layout='TB' or 'BT' (--layout), or an example of another batch size")
    example, x = x, _with_a_batch_apart_from_T(x, axis, T)
    try:
        return _traced(model, x, example, T, axis, static, name, share_weights, until)
    except SnnccError as err:
        if static and example.dim() >= 3 and example.shape[0] == T:
            err.message += (f" (the example's first axis has length T={T}, traced as a batch "
                            "of images: for a [T, B, ...] sequence input pass static=False, "
                            "layout='TB' in snncc's API)")
        raise


def _traced(model: nn.Module, x: torch.Tensor, example: torch.Tensor, T: int, axis: int,
            static: bool, name: str, share_weights: bool, until: str | None) -> Graph:
    """:func:`trace` on ``x``, ``example`` with its batch (``axis``) apart from T."""
    batch = x.shape[axis]
    args = (model, x, T, batch, static, name)
    options = {"share_weights": share_weights, "until": until}
    try:
        with freeing_what_it_leaves():  # before the passes allocate
            return _trace(*args, shaped=True, **options)
    except (SnnccError, RecursionError, MemoryError):
        raise
    except Exception:  # the model's code needs activation values: compute them
        pass
    try:
        return _trace(*args, shaped=False, **options)
    except (SnnccError, RecursionError, MemoryError):
        raise
    except Exception:
        own = _failure_in_pytorch(model, x)
        if own is not None and x is not example and _failure_in_pytorch(model, example) is None:
            own = SnnccError(f"{own.message} (the example's {example.shape[axis]} sample(s) "
                             f"repeated to {batch}, as the tracer tells batch and time apart "
                             f"by their sizes: give an example batch of 2 or more, other than "
                             f"T={T})")
        if own is not None:  # the model's fault, not the tracer's
            raise own from None
        raise


@contextmanager
def _method_replaced(cls: type, name: str, make: Callable[[Callable], Callable]):
    """``cls.name`` replaced by ``make(original)`` while the block runs (an inherited one
    inherited again after)."""
    own, original = name in cls.__dict__, getattr(cls, name, None)
    setattr(cls, name, make(original))
    try:
        yield
    finally:
        if own:
            setattr(cls, name, original)
        else:
            delattr(cls, name)


def _reassigned_tensors_kept(assign: Callable) -> Callable:
    """``nn.Module.__setattr__`` for ``self.p = self.p.to(x.device)`` in a forward (SNN-TAB's
    ``TAB_Layer``): ``to`` returns the parameter itself, which PyTorch assigns back; traced, it
    is a proxy, which a module refuses for a parameter or buffer (in a RecursionError). The
    assignment of a proxy of the very tensor the module holds is skipped, as it changes
    nothing."""
    def kept(module, name, value):
        if isinstance(value, fx.Proxy):
            tables = (module.__dict__.get("_parameters", {}), module.__dict__.get("_buffers", {}))
            held = next((t[name] for t in tables if t.get(name) is not None), None)
            if held is not None and value.node.meta.get("value") is held:
                return
        assign(module, name, value)
    return kept


def _copies_as_values(tracer: "_ConcreteTracer") -> Callable[[Callable | None], Callable]:
    """``Tensor.__copy__`` while tracing (a tensor has none: ``copy.copy`` takes it apart by
    ``__reduce_ex__``): ``copy.copy(t)`` of a tensor made in forward that traced values changed
    (rockpool's ``Sequential`` copies each module's output, which its LIF writes step by step)
    is its value now, whose storage the traced value has none of; any other tensor itself, as
    copy.copy's new tensor shares its memory."""
    def make(_):
        def copied(t):
            current = tracer.current(t)
            return current if isinstance(current, fx.Proxy) else t
        return copied
    return make


def _variables_of_traced_values(new: Callable) -> staticmethod:
    """``torch.autograd.Variable.__new__`` for ``Variable(v)`` of a traced value (SLAYER's spike
    function saves its threshold so for its backward): the value itself, as ``Variable`` of a
    tensor is that tensor; Variable's own check refuses a traced value ("Variable data has to
    be a tensor")."""
    def variable(cls, *args, **kwargs):
        if args and isinstance(args[0], fx.Proxy):
            return args[0]
        return new(cls, *args, **kwargs)
    return staticmethod(variable)


def _scripted_functions_as_python(call: Callable) -> Callable:
    """``torch.jit.ScriptFunction.__call__`` for a function of the model's code compiled by
    ``torch.jit.script`` (snetx's spike function): it runs as the Python it was made from where
    it gets a traced value, which TorchScript's argument checks refuse ("Expected a value of
    type 'Tensor'"); elsewhere as TorchScript."""
    def as_python(fn, *args, **kwargs):
        python = getattr(fn, "_torchdynamo_inline", None)
        if python is not None and any(isinstance(a, fx.Proxy) for a in _walk((args, kwargs))):
            return python(*args, **kwargs)
        return call(fn, *args, **kwargs)
    return as_python


def _failure_in_pytorch(model: nn.Module, x: torch.Tensor) -> SnnccError | None:
    """Why ``model`` fails on ``x`` run as PyTorch runs it (eval, no autograd, fresh neuron
    state), in one line naming the model's line; None if it runs. A trace that failed with an
    error of the model's own code is the model's fault when PyTorch alone fails too."""
    import traceback

    with _inference(model):
        try:
            model(x.clone())
        except Exception as err:
            # the innermost line of the model's own code, else of a library it calls
            frames = [f for f in traceback.extract_tb(err.__traceback__)
                      if not f.filename.startswith(_TORCH_DIR) and f.filename != __file__]
            own = [f for f in frames if not re.search(r"[/\\](site|dist)-packages[/\\]",
                                                      f.filename)]
            f = (own or frames or [None])[-1]
            at = f" ({f.filename}:{f.lineno}, in {f.name})" if f else ""
            return SnnccError(f"the model fails in PyTorch itself on the example input "
                              f"{tuple(x.shape)}: {type(err).__name__}: "
                              f"{' '.join(str(err).split())[:300]}{at}; snncc compiles what "
                              "PyTorch runs")
    return None


def _trace(model: nn.Module, x: torch.Tensor, T: int, batch: int, static: bool, name: str,
           shaped: bool, share_weights: bool = False, until: str | None = None) -> Graph:
    if "einops" in sys.modules:  # imported by the model's code
        _einops_on_proxies()
    tracer = _ConcreteTracer(x, shaped, until)
    with _inference(model):
        try:
            _refuse_hooks(model, "")
            with _WhileTracing(tracer), \
                    _method_replaced(nn.Module, "__setattr__", _reassigned_tensors_kept), \
                    _method_replaced(torch.jit.ScriptFunction, "__call__",
                                     _scripted_functions_as_python), \
                    _method_replaced(torch.autograd.Variable, "__new__",
                                     _variables_of_traced_values), \
                    _method_replaced(torch.Tensor, "__copy__", _copies_as_values(tracer)):
                fx_graph = tracer.trace(model, concrete_args=_defaults_after_input(model))
            if until is not None:
                raise UnsupportedError(f"the model never calls module '{until}' (until=): "
                                       "its graph would be the whole model")
        except _CutAt as cut:
            fx_graph = _ending_with(tracer.graph, cut.args_of_call, until)
        except fx.proxy.TraceError as err:
            raise UnsupportedError(f"cannot trace: {' '.join(str(err).split())}",
                                   path=tracer.scope.module_path or None) from None
        finally:
            release_fake_mode()
    builder = _Builder(model, T, batch, name, share_weights)
    with _recursion_limit(_EMISSION_DEPTH):
        outputs = builder.interpret(fx_graph, static)
        if until is not None and any(isinstance(v, Val) and v.expr.step is not None
                                     for v in _walk(outputs)):
            raise UnsupportedError(f"module '{until}' (until=) is called inside a loop over time "
                                   "steps, with one step's values: the graph can end only "
                                   "before a module given whole sequences")
        graph = builder.finish(outputs)
    if until is not None:
        graph.meta["until"] = until
    return graph


def _ending_with(graph: fx.Graph, args: tuple, until: str) -> fx.Graph:
    """The traced graph up to the call of module ``until``, its outputs the tensors that call
    was given (in order, lists and tuples taken apart): the rest of the model (a detection
    head's decoding, a classifier) is left to run elsewhere."""
    nodes = [a.node for a in _walk(args) if isinstance(a, fx.Proxy)]
    if not nodes:
        raise UnsupportedError(f"module '{until}' (until=) is called with no tensor computed "
                               "from the input")
    graph.output(nodes[0] if len(nodes) == 1 else tuple(nodes))
    return graph


@functools.cache
def _einops_on_proxies():
    """einops (``rearrange``, ``repeat``, ``reduce``, ``einsum``) on the tracer's proxies.
    einops finds a backend by the tensor's type and knows torch tensors only ("Tensor type
    unknown to einops"); this is its torch backend (tensor methods and torch functions, which
    the trace records, on the proxy's known shape) for the proxies. einops looks through the
    subclasses of its backends when it meets a new type, so defining the class is enough; it
    is returned, and so held: a class list holds its subclasses weakly."""
    try:
        from einops._backends import TorchBackend
    except ImportError:  # an einops without it: its own error names the proxy's type
        return None

    class ProxyBackend(TorchBackend):
        framework_name = __name__  # a module einops finds imported

        def is_appropriate_type(self, tensor):
            return isinstance(tensor, _ConcreteProxy)

    return ProxyBackend


# Emission recurses along the longest path of the model, about 3 frames per op: a 101- or
# 152-layer ResNet needs more than Python's default limit of 1000. (Python-to-Python calls do
# not grow the C stack in 3.11, so the higher limit is safe.)
_EMISSION_DEPTH = 50_000


@contextmanager
def _recursion_limit(limit: int):
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, limit))
    try:
        yield
    finally:
        sys.setrecursionlimit(previous)
