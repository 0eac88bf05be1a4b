"""Models outside the zoo: a user's ``nn.Module`` from a whole-model pickle or from their own
code plus a state_dict, and the example input its trace needs.

- A whole-model pickle (``torch.save(model)``) runs code when it is unpickled, so it is loaded
  only with ``trust=True`` (``--trust-checkpoint``).
- ``--model package.module:factory`` or ``--model path/to/file.py:ClassName`` imports and runs
  that code to build the model (``--model-args`` are its keyword arguments); the state_dict is
  then loaded safely and strictly, every mismatch listed.
- The input layout is ``static`` (one image ``[B, ...]`` the model repeats over T), ``TB`` (a
  sequence ``[T, B, ...]``) or ``BT`` (``[B, T, ...]``, DVS); where the caller does not name it,
  :func:`layouts_to_try` says which readings of the input are possible, most likely first.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import sys
import textwrap
from collections.abc import Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from snncc.errors import (CheckpointError, FormatError, NoInputShapeError, SnnccError,
                          UnsupportedError)
from snncc.models import returned_items

from .checkpoint import _NEEDS_CODE, _load, load_into

LAYOUTS = ("static", "TB", "BT")


def load_pickled_model(path: str | Path, trust: bool) -> nn.Module:
    """The ``nn.Module`` a ``torch.save(model)`` file holds; refused without ``trust``."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    try:
        with _importable_from_cwd():
            obj = _load(path, trust)
    except CheckpointError as e:
        if _NEEDS_CODE.search(str(e)) or "pickled" in str(e):
            raise CheckpointError(
                f"{path}: holds a pickled model (torch.save(model)); loading it runs code from "
                "the file, so pass --trust-checkpoint if you trust it, or save "
                "model.state_dict() and pass --model package.module:factory") from None
        raise
    except FormatError as e:
        missing = re.search(r"No module named '([^']+)'", str(e))
        if missing:
            raise FormatError(f"{path}: the pickled model's code is in module "
                              f"'{missing.group(1)}', which cannot be imported here: run snncc "
                              "where it can (the current directory is searched) or add it to "
                              "PYTHONPATH") from None
        raise
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a state_dict, not a model: name its architecture "
                              "with --arch (`snncc zoo`) or your code with --model "
                              "package.module:factory (or path/to/file.py:ClassName)")
    raise FormatError(f"{path}: holds a {type(obj).__name__}, neither a model nor a state_dict")


@contextmanager
def _importable_from_cwd():
    """Modules in the current directory import, as for ``python -m`` (a console script's
    ``sys.path`` starts at its own directory instead): the user's model code is usually there."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def import_factory(spec: str):
    """``package.module:attr`` or ``path/to/file.py:attr`` -> that object (imported, so the
    module's code runs)."""
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise SnnccError(f"--model '{spec}': expected package.module:factory or "
                         "path/to/file.py:ClassName")
    if where.endswith(".py"):
        file = Path(where)
        if not file.is_file():
            raise FormatError(f"--model '{spec}': {file}: no such file")
        name = f"snncc_user_model_{abs(hash(str(file.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up by name
        sys.path.insert(0, str(file.resolve().parent))  # its sibling imports
        try:
            module_spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            raise SnnccError(f"--model '{spec}': importing {file} failed: "
                             f"{type(e).__name__}: {e}") from None
        finally:
            sys.path.remove(str(file.resolve().parent))
    else:
        try:
            with _importable_from_cwd():
                module = importlib.import_module(where)
        except Exception as e:
            raise SnnccError(f"--model '{spec}': cannot import '{where}': "
                             f"{type(e).__name__}: {e}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SnnccError(f"--model '{spec}': '{where}' has no attribute '{attr}'") from None


def build_model(spec: str, args: str | Mapping | None = None, meta: bool = False) -> nn.Module:
    """Call the factory ``spec`` names with the keyword arguments ``args`` (JSON or a dict);
    ``meta``: on the meta device (the factory's module imported before, on the CPU: its
    module-level tensors stay there)."""
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError as e:
            raise SnnccError(f"--model-args: not JSON ({e})") from None
    if args is not None and not isinstance(args, Mapping):
        raise SnnccError("--model-args: expected a JSON object of keyword arguments")
    factory = import_factory(spec)
    try:
        with _on_meta() if meta else nullcontext():
            model = factory(**dict(args or {}))
    except Exception as e:
        raise SnnccError(f"--model '{spec}': building the model failed: "
                         f"{type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise SnnccError(f"--model '{spec}' returned a {type(model).__name__}, not an nn.Module")
    return model


class _MetaFillsNothing(torch.overrides.TorchFunctionMode):
    """In-place ops that only write values (initialisation: ``normal_``, ``erfinv_``,
    ``clamp_`` ...) are skipped on meta tensors, which hold none: on meta several of them go
    through Python references that import torch._dynamo on first use (about 1 s: SEW-ResNet-18's
    kaiming_normal_). Ops that change a tensor's shape or flags still run."""

    _KEEP = frozenset({"resize_", "resize_as_", "t_", "transpose_", "squeeze_", "unsqueeze_",
                       "as_strided_", "set_", "swapdims_", "swapaxes_", "requires_grad_",
                       "share_memory_", "detach_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if (name.endswith("_") and not name.endswith("__") and name not in self._KEEP and args
                and isinstance(args[0], torch.Tensor) and args[0].is_meta):
            return args[0]
        return func(*args, **(kwargs or {}))


@contextmanager
def _on_meta():
    with torch.device("meta"), _MetaFillsNothing():
        yield


def build_with_weights(spec: str, args, path: str | Path, trust: bool = False) -> nn.Module:
    """The model the factory ``spec`` builds, holding the state_dict in ``path`` (strictly).
    Built on the meta device, it takes the checkpoint's tensors instead of initialising its own
    and copying them in (spikingjelly's default Spike-Driven Transformer, 64 MiB of weights:
    the compile's peak above the interpreter's 155-157 MiB, now 104-122); a factory that cannot
    build there, or a model left holding meta tensors (a buffer or attribute the checkpoint does
    not hold), is built again as the factory builds it and the weights copied in."""
    from .checkpoint import load_state_dict, under_one_attribute

    state = load_state_dict(path, trust)
    try:
        model = build_model(spec, args, meta=True)
    except SnnccError:
        model = None
    if model is not None:
        state = under_one_attribute(state, model.state_dict(), path, say=True)
        load_into(model, state, spec)
        if not _holds_meta(model):
            return model
    full = build_model(spec, args)
    if model is None:
        state = under_one_attribute(state, full.state_dict(), path, say=True)
    return load_into(full, state, spec)


def kept_tensors(model: nn.Module):
    """(name, tensor) for each tensor a module keeps outside its parameters, buffers and
    submodules: an attribute, or an item of a list, tuple or dict attribute (nested)."""
    def walk(name: str, v):
        if isinstance(v, torch.Tensor):
            yield name, v
        elif isinstance(v, dict):
            for k, item in v.items():
                yield from walk(f"{name}[{k!r}]", item)
        elif isinstance(v, (list, tuple)):
            for k, item in enumerate(v):
                yield from walk(f"{name}[{k}]", item)
    for path, m in model.named_modules():
        for attr, v in vars(m).items():
            if attr not in ("_parameters", "_buffers", "_modules"):
                yield from walk(f"{path}.{attr}" if path else attr, v)


def floating_dtype(model: nn.Module) -> torch.dtype | None:
    """The float dtype most of the model's parameters are in (by elements; None without float
    parameters): what the model computes in where a stray parameter is in another (a token
    SpikeZIP-TF's reset restores from a float32 copy into a float64 model)."""
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.get) if counts else None


def _holds_meta(model: nn.Module) -> bool:
    """Whether a parameter, buffer or kept tensor (:func:`kept_tensors`) is on meta: a slice of
    a weight kept in a dict (a supernet's chosen sub-network) stays on meta when the
    checkpoint's tensors replace the weights."""
    return any(t.is_meta for t in (*model.parameters(), *model.buffers())) or any(
        t.is_meta for _, t in kept_tensors(model))


def storage_owners(model: nn.Module) -> dict[int, str]:
    """The address of each parameter's and buffer's memory -> the first name it has (meta
    tensors, which have no memory, left out, and a traced value a forward stored in a buffer
    while it is traced: rockpool's neurons keep their last state so)."""
    owners: dict[int, str] = {}
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        if isinstance(t, torch.Tensor) and not t.is_meta:
            owners.setdefault(t.untyped_storage().data_ptr(), name)
    return owners


def held_views(model: nn.Module) -> list[tuple[str, str]]:
    """(kept tensor, parameter) for each kept tensor (:func:`kept_tensors`) that shares memory
    with a parameter or buffer: a weight-sharing supernet's slices of its larger kernels, made
    when a sub-network is chosen (Auto-Spikformer's ``set_sample_config``)."""
    owners = storage_owners(model)
    return [(name, owners[ptr]) for name, t in kept_tensors(model)
            if not isinstance(t, nn.Parameter) and not t.is_meta
            and (ptr := t.untyped_storage().data_ptr()) in owners]


def declared_T(model: nn.Module) -> int | None:
    """The number of time steps a model declares (spikingjelly's and the zoo's ``model.T``)."""
    T = getattr(model, "T", None)
    return int(T) if isinstance(T, int) and not isinstance(T, bool) and T > 0 else None


def declared_input_shape(model: nn.Module) -> tuple[int, ...] | None:
    """A per-sample input shape the model declares as ``model.input_shape``."""
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, (tuple, list)) and shape and all(isinstance(d, int) for d in shape):
        return tuple(shape)
    return None


def layouts_to_try(x: torch.Tensor, T: int) -> list[str]:
    """The readings of an example input the tracer can tell apart, most likely first: a first
    axis of length T is time, else a static batch of T images; a second axis of length T may
    be time (``[B, T, ...]``) or a channel axis of a static image."""
    if x.dim() >= 3 and x.shape[0] == T:
        return ["TB", "static"]
    if x.dim() >= 3 and x.shape[1] == T:
        return ["static", "BT"]
    return ["static"]


def example_for(input_shape: tuple[int, ...], T: int, layout: str, spikes: bool = False,
                dtype=torch.float64) -> torch.Tensor:
    """A random example input of ``layout`` for a per-sample ``input_shape``."""
    batch = 3 if T == 2 else 2  # the tracer tells time and batch axes apart by their sizes
    lead = {"static": (batch,), "TB": (T, batch), "BT": (batch, T)}[layout]
    gen = torch.Generator().manual_seed(0)
    if spikes:
        return (torch.rand((*lead, *input_shape), generator=gen) < 0.3).to(dtype)
    return torch.randn((*lead, *input_shape), generator=gen, dtype=dtype)


_NO_T = "the model declares no number of time steps (model.T): set T= (--T)"


def _neuron_calls(model: nn.Module, x: torch.Tensor) -> set[int] | None:
    """How many times one forward on ``x`` calls each single-step library neuron that fires
    (the set of those numbers; empty without such neurons; None where the model has a
    multi-step neuron or its forward fails, which the trace that follows reports). The forward
    runs as the trace runs it (eval, no autograd, its state restored) and as `check` runs it
    (casts to float32 or float64 in ``x``'s dtype)."""
    from snncc.parity import floats_in

    from .adapters import STEP_SINGLE, adapter_for
    from .tracer import _inference

    neurons, steps = {}, set()
    for path, m in model.named_modules():  # (a neuron that never fires may add up any calls)
        if (a := adapter_for(m)) is not None and a.is_neuron(m) and not a.held_membrane(m):
            neurons[path] = m
            steps.add(a.step_mode(m))
    if not neurons:
        return set()  # (not run: a large model without library neurons costs a forward)
    if steps != {STEP_SINGLE}:
        return None
    calls = dict.fromkeys(neurons, 0)

    def count(path):
        return lambda m, args: calls.__setitem__(path, calls[path] + 1)

    hooks = [m.register_forward_pre_hook(count(path)) for path, m in neurons.items()]
    try:
        with _inference(model), floats_in(x.dtype):
            model(x)
    except Exception:
        return None
    finally:
        for h in hooks:
            h.remove()
    return set(calls.values())


def _held_state(module: nn.Module) -> dict:
    """The numbers and tensors a module holds in plain attributes (not parameters, buffers or
    submodules) and in a library's ``_memories`` dict: where a forward keeps a state."""
    held = {**vars(module), **vars(module).get("_memories", {})}
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in held.items()
            if isinstance(v, (torch.Tensor, float, int)) and not isinstance(v, bool)}


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) \
            and a.shape == b.shape and bool(torch.equal(a, b))
    return a == b


def _stateful_calls(model: nn.Module, x: torch.Tensor) -> set[int] | None:
    """How many times one forward on ``x`` calls each module that carries a state from one
    forward to the next in its attributes (a neuron written with tensor ops keeping its
    membrane in ``self.v``, as CLIF's and spikingjelly 0.0.0.0.14's single-step networks do,
    stepped by a loop outside the model): those holding other values after a second forward
    than after the first, or the model itself where only its output differs. Empty: none;
    None where the forward fails. Run as :func:`_neuron_calls` runs it."""
    from snncc.parity import floats_in

    from .adapters import STEP_MULTI, adapter_for
    from .tracer import _inference

    modules = dict(model.named_modules())
    calls = dict.fromkeys(modules, 0)

    def count(path):
        return lambda m, args: calls.__setitem__(path, calls[path] + 1)

    try:
        with _inference(model), floats_in(x.dtype):
            first = returned_items(model(x.clone()))  # (a forward may change it in place)
            after_first = {p: _held_state(m) for p, m in modules.items()}
            hooks = [m.register_forward_pre_hook(count(p)) for p, m in modules.items()]
            try:
                second = returned_items(model(x.clone()))
            finally:
                for h in hooks:
                    h.remove()
            after_second = {p: _held_state(m) for p, m in modules.items()}
    except Exception:
        return None
    changed = {p for p in modules if p and not all(_same(v, after_first[p].get(k))
                                                   for k, v in after_second[p].items())}
    if any((a := adapter_for(modules[p])) is not None and a.step_mode(modules[p]) == STEP_MULTI
           for p in changed):
        return None  # (a library's multi-step module traced through: a sequence model)
    if not changed and not all(_same(a, b) for a, b in zip(first, second)):
        changed = {""}
    return {calls[p] for p in changed}


def steps_per_forward(model: nn.Module, x: torch.Tensor) -> int | None:
    """The time steps a model takes a static input over, where it does not declare them: how
    many times one forward on ``x`` calls its single-step library neurons, when they all agree
    and it is at least 2 (snnTorch's tutorials loop ``for step in range(num_steps)`` over a
    global). Once: a one-step forward (:class:`StepLoop`), which says nothing of T."""
    steps = _neuron_calls(model, x)
    return steps.pop() if steps and len(steps) == 1 and min(steps) >= 2 else None


class StepLoop(nn.Module):
    """A model whose forward is one time step (each of its single-step neurons called once:
    spikingjelly's single-step networks, snnTorch's ``init_hidden`` ones, trained by a loop
    outside the model), run as that loop: T calls on the same static input, or on step t of
    a sequence, each output stacked ``[T, B, ...]`` (each tensor of a tuple or dict). It shares the
    model's modules, parameters and buffers, so module paths and state-dict keys are the
    model's own; the model's state is reset by the caller (the trace, `check`) as for any
    model."""

    def __init__(self, model: nn.Module, T: int, layout: str):
        super().__init__()
        object.__setattr__(self, "stepped", model)  # not a submodule: no path prefix
        self._modules, self._parameters, self._buffers = \
            model._modules, model._parameters, model._buffers
        self.T, self.layout = T, layout

    def train(self, mode: bool = True):
        self.stepped.training = mode
        return super().train(mode)

    def forward(self, x):
        # its forward, not its call: a module call is a submodule's to the trace, and the
        # model's own calls are this one's
        steps = [self.stepped.forward(x if self.layout == "static" else x[t]
                                      if self.layout == "TB" else x[:, t])
                 for t in range(self.T)]
        if isinstance(steps[0], Mapping):
            return {k: torch.stack([s[k] for s in steps]) for k in steps[0]}
        if isinstance(steps[0], (tuple, list)):
            return tuple(torch.stack(each) for each in zip(*steps))
        return torch.stack(steps)


def _one_step(model: nn.Module, x: torch.Tensor, T: int, layout: str) -> bool:
    """Whether ``model`` computes one step of T >= 2 on the reading ``layout`` of ``x``: its
    neurons are called once on a step (the image, ``x[0]``, ``x[:, 0]``); a sequence model is
    not, though a step may read as a shorter sequence to it: on the whole sequence it calls
    them more than once (a one-step model there fails, or calls them once on [T, B, ...])."""
    if T < 2:
        return False

    def calls(x):  # (a model without library neurons: its modules carrying a state)
        neurons = _neuron_calls(model, x)
        return _stateful_calls(model, x) if neurons == set() else neurons
    if layout == "static":
        return calls(x) == {1}
    step = x[0] if layout == "TB" else x[:, 0]
    return calls(step) == {1} and calls(x) in (None, {1})


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside ``nn.DataParallel`` / ``DistributedDataParallel`` wrappers (their
    forward scatters inputs to devices; the module paths then lose the ``module.`` prefix, as
    checkpoint keys do) and ``torch.compile``'s ``OptimizedModule`` (its forward compiles the
    model it holds with dynamo, which the tracer cannot follow; the module paths lose
    ``_orig_mod.``)."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif f"{type(model).__module__}.{type(model).__name__}" == _COMPILED:
            model = model._orig_mod
        else:
            return model


_COMPILED = "torch._dynamo.eval_frame.OptimizedModule"  # its module imports slowly: by name


def trace_user_model(model: nn.Module, example=None, *, T: int | None = None,
                     layout: str | None = None, input_shape=None, name: str = "model",
                     share_weights: bool = False, until: str | None = None):
    """Trace a user's model into an IR graph. ``example``: an input batch; without one, a
    random batch of ``input_shape`` (or the model's declared ``input_shape``). ``T``: the time
    steps (default: the model's ``T``, or the length of a sequence example). ``layout``:
    'static', 'TB' or 'BT'; when not given, each possible reading is tried, most likely first.
    ``share_weights``, ``until``: as :func:`~snncc.frontends.tracer.trace` (a model loaded here;
    the module the graph ends before). Returns (graph, the model it is of: ``model``, or a
    :class:`StepLoop` of it where its forward is one time step)."""
    from .tracer import trace

    if isinstance(model, torch.jit.ScriptModule):
        raise SnnccError(
            "a TorchScript module (torch.jit.script / torch.jit.trace) has no Python forward to "
            "trace: give the model's code and take the weights from it (--model file.py:Class "
            "with the archive as the checkpoint; in Python, load its state_dict into the model)")
    if layout is not None and layout not in LAYOUTS:
        raise SnnccError(f"layout must be one of {list(LAYOUTS)}, got '{layout}'")
    T = T if T is not None else declared_T(model)
    dtype = floating_dtype(model) or torch.float32
    if example is None:
        shape = tuple(input_shape) if input_shape else declared_input_shape(model)
        if shape is None:
            raise NoInputShapeError("the model declares no input shape: give an example input or "
                                    "the per-sample input shape (input_shape=(C, H, W), "
                                    "--input-shape C,H,W)")
        if T is None and layout in (None, "static"):
            T = steps_per_forward(model, torch.randn((2, *shape), dtype=dtype))
        if T is None:
            raise SnnccError(_NO_T)
        candidates = [layout] if layout else ["static", "TB"]
        examples = {c: example_for(shape, T, c, dtype=dtype) for c in candidates}
    else:
        x = torch.as_tensor(example)
        x = x.to(dtype) if x.is_floating_point() or x.dtype == torch.bool else x
        if T is None and layout in ("TB", "BT"):
            T = x.shape[0 if layout == "TB" else 1]
        elif T is None:
            T = steps_per_forward(model, x) if layout in (None, "static") else None
            if T is None:
                raise SnnccError(_NO_T)
        candidates = [layout] if layout else layouts_to_try(x, T)
        examples = {c: x for c in candidates}
    if T < 1:
        raise SnnccError(f"T must be at least 1, got {T}")
    failures = []
    for c in candidates:
        traced = StepLoop(model, T, c) if _one_step(model, examples[c], T, c) else model
        try:
            graph = trace(traced, examples[c], T=T, static=c == "static", name=name,
                          share_weights=share_weights, until=until,
                          layout=c if layout else None)  # (said, it tells B = T apart)
        except (SnnccError, ValueError, RuntimeError, TypeError, IndexError) as e:
            failures.append((c, e))
            continue
        if c != "static" and graph.meta.get("input_layout") != c:
            failures.append((c, SnnccError(f"the example reads as {graph.meta.get('input_layout')}"
                                           f", not {c}")))
            continue
        graph.meta["input_layout"] = c
        if traced is not model:
            graph.meta["steps_outside"] = True
        return graph, traced
    err = _trace_failure(failures, examples, explicit=layout is not None)
    declared = declared_T(model)
    if declared not in (None, T):  # (what the model's own loop repeats, model.T, comes first)
        err.message = (f"the model declares T={declared} (model.T) and T={T} was given: a "
                       f"model that repeats its input model.T times computes {declared} "
                       f"steps, whatever T says; give T={declared} or build the model with "
                       f"T={T} ({err.message})")
    raise err


_READINGS = {"static": "a static [B, ...] image the model repeats over T",
             "TB": "a [T, B, ...] sequence", "BT": "a [B, T, ...] sequence"}


def _trace_failure(failures, examples, explicit: bool) -> SnnccError:
    """The first reading's error (the most likely one), saying how the input was read, what the
    other readings failed on (a model that is not the first reading's fails there on its
    layout, before the op that stops the right reading) and which argument changes that."""
    layout, err = failures[0]
    shape = tuple(examples[layout].shape)
    how = f"input {shape} read as {_READINGS[layout]}"
    others = "".join(f"; read as {_READINGS[c]}: "
                     f"{textwrap.shorten(str(e), 300, placeholder=' ...')}"
                     for c, e in failures[1:])
    hint = "" if explicit else (
        "; tried " + ", ".join(c for c, _ in failures) + f"{others} (set layout= / --layout to "
        "one of static, TB, BT, and T= / --T, if the input means something else)")
    if isinstance(err, SnnccError):
        err.message = f"{err.message} ({how}{hint})"
        return err
    text = " ".join(str(err).split())
    where = _model_line(err)
    if where is not None and _in_vmap(err):
        return UnsupportedError(
            f"torch.vmap, called at {where}, is not supported: it runs the function on each "
            "slice of an axis apart from the traced model; write it as that function on the "
            "whole tensor or a loop over the axis (spikingjelly's TLast containers: use their "
            f"time-first forms) ({how}{hint})")
    if where is not None:  # (the trace tells PyTorch's own failures apart: this one is not)
        return SnnccError(f"tracing failed in the model's code at {where}, which runs in "
                          f"PyTorch: {type(err).__name__}: {text} ({how}{hint})")
    return SnnccError(f"running the model on the example input failed: {type(err).__name__}: "
                      f"{text} ({how}{hint})")


def _in_vmap(err: BaseException) -> bool:
    """Whether ``err`` was raised inside ``torch.vmap`` (torch's functorch)."""
    import traceback

    return any("/torch/_functorch/" in f.filename
               for f in traceback.extract_tb(err.__traceback__))


def _model_line(err: BaseException) -> str | None:
    """``file:line`` of the last frame of ``err``'s traceback in code that is neither torch's
    nor snncc's (the model's, or a library it calls), or None."""
    import traceback

    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not any(part in f.filename for part in ("/torch/", "/snncc/", "/frontends/",
                                                         "/backends/", "/passes/"))]
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None
