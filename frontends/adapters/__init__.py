"""Front-end adapters: what the library-agnostic tracer (:mod:`snncc.frontends.tracer`) needs to
know about one spiking-network library. One module per library; a module of this package that
defines ``ADAPTER = SomeAdapter()`` is registered when the package is imported, so supporting a
new library is one new file.

An :class:`Adapter` answers, for a module ``m`` it :meth:`~Adapter.owns`:

- :meth:`~Adapter.is_neuron`: ``m`` is a spiking neuron (a leaf of the trace; its spikes are an
  ``ir.Neuron``). :meth:`~Adapter.canonical` gives its :class:`snncc.neuron.CanonicalParams`, or
  raises :class:`snncc.errors.UnsupportedError` (with ``path``) when the canonical neuron cannot
  compute exactly what ``m`` computes; or a :class:`NeuronCircuit` (other IR nodes computing the
  membrane in the library's operation order, a canonical neuron firing on it); or, for a cell
  that does not spike (a leaky-integrator readout), an :class:`Integrator`.
- :meth:`~Adapter.step_mode`: ``"m"``, multi-step: ``m`` takes a whole ``[T, B, ...]`` sequence
  and returns one (a neuron starting from its initial state; a non-neuron leaf is its per-step
  layer applied to every step), or ``"s"``, single-step: one call per time step on ``[B, ...]``.
- :meth:`~Adapter.single_step_call`: how to read one call of a neuron (either step mode):
  returns ``(x, state, returns_state, spikes)`` where ``x`` is the input current argument,
  ``state`` the membrane/state argument passed in, ``returns_state`` whether the call returns
  ``(spikes, state)`` (spikes first; an int n > 1: ``(spikes, state_1, ..., state_n)``, each
  handed back as the same opaque state), and ``spikes`` the spike tensor of the call's ``value``.
  A single-step call's time step follows from ``state``:

  ===================================  ===========================================================
  ``state``                            the call is step ...
  ===================================  ===========================================================
  ``None``, ``returns_state`` false    the module keeps its state itself: its k-th call is step k
  ``None``, ``returns_state`` true     0 (no state passed: the neuron starts from ``v_init``)
  :data:`STATE_KEPT`                   the module keeps its state and also returns it (snnTorch's
                                       ``init_hidden`` with ``output``): its k-th call is step k
  a constant equal to ``v_init``       0 (an initial state made without the input)
  the state its previous call returned t + 1, where t is the step of that call
  ===================================  ===========================================================

  The tracer hands the state it returned back opaquely: model code may only pass it to the
  same neuron again.
- :meth:`~Adapter.is_leaf`: ``True``/``False`` to make ``m`` a leaf of the trace or trace through
  its ``forward``; ``None`` lets the tracer decide (torch's own layers are leaves, everything
  else is traced through). Neurons are always leaves.
- :meth:`~Adapter.keeps_state`: whether a multi-step neuron ``m`` keeps its membrane when a
  call ends, so that a second call would go on from it (spikingjelly's, until reset); the tracer
  then refuses a second call in one forward.
- :meth:`~Adapter.recurs_on_returned_spikes`: whether the spike tensor ``m`` returns is also
  the state its next step reads (the tracer refuses an in-place change of it).
- :meth:`~Adapter.module_handler`: for a non-neuron leaf: ``None`` (the tracer maps it by its
  torch layer class), an equivalent ``torch.nn.Module`` (what ``m`` computes on one step in
  eval mode, e.g. ``nn.Identity()`` for a dropout), or a handler function
  ``handler(builder, call, m, *args, **kwargs)`` (the tracer's own handler protocol); a handler
  or :meth:`canonical` that cannot map an op raises ``UnsupportedError`` and the tracer lists it
  with every other unsupported op.
- :meth:`~Adapter.reset_state`: clear the hidden state of ``model``'s modules of this library
  (called before and after tracing, so tracing runs from fresh state and leaves none behind).

snncc's own neurons (any module with a ``canonical()`` method, such as the zoo's ``LIF``) are the
built-in :class:`CanonicalMethodAdapter`, consulted first.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from snncc import neuron as cn
from snncc.errors import UnsupportedError

STEP_MULTI, STEP_SINGLE = "m", "s"
#: ``single_step_call``'s ``state`` of a neuron that keeps its state and returns it too
STATE_KEPT = "kept"


@dataclass(frozen=True)
class NeuronCircuit:
    """What :meth:`Adapter.canonical` returns for a neuron whose update the canonical neuron
    alone cannot compute with the same operations (a reset applied one step late, a second
    state such as a synaptic current): other IR nodes (Scale, Add, Hadamard, Delay, ...)
    compute its membrane from its input and, through one-step Delays, from its own spikes and
    the circuit's values; the ``fire`` neuron (usually a pure threshold: alpha = 0, gamma = 1)
    fires on that membrane and is the neuron's node. ``build(name, x, shape)`` returns
    ``(nodes, membrane)``: ``name`` is the firing node's name (the circuit's nodes are named
    ``name:...`` and may read ``name`` through a Delay), ``x`` the input node, ``shape`` the
    per-step shape. ``v_init``: the state value a constant initial-state argument must have.
    ``window``: ``build`` also takes ``steps=T`` (a multi-step neuron's kernel over its window,
    snnTorch's StateLeaky)."""

    fire: cn.CanonicalParams
    build: Callable[..., tuple[list, str]]
    v_init: float = 0.0
    window: bool = False


@dataclass(frozen=True)
class Integrator:
    """What :meth:`Adapter.canonical` returns for a cell that does not spike (Norse's ``LI``, a
    leaky-integrator readout): its output is its membrane, which IR nodes (Scale/Add/Delay)
    compute from its input and, through one-step Delays, from their own earlier values, in the
    library's operation order. ``build(name, x, shape)`` returns the nodes; the last one, named
    ``name``, is the output. ``levels`` > 0: the output counts (an integer LIF), and the neurons
    among the nodes are its levels d = 1..levels, in order, each firing when the count is at
    least d (``check`` compares them with the module's counts). ``window``: as a
    :class:`NeuronCircuit`'s."""

    build: Callable[..., list]
    levels: int = 0
    window: bool = False


class Adapter:
    """One library's answers to the tracer's questions (see the module docstring). The defaults
    describe a library with no neurons whose modules the tracer handles on its own."""

    name: str = ""
    #: a multi-step neuron's call returns ``(spikes, state)`` (norse's), not its spikes alone
    multi_step_returns_state: bool = False

    def owns(self, m: nn.Module) -> bool:
        return False

    def is_neuron(self, m: nn.Module) -> bool:
        return False

    def returns_state(self, m: nn.Module) -> bool:
        """Whether multi-step neuron ``m``'s call returns ``(spikes, state)``."""
        return self.multi_step_returns_state

    def canonical(self, m: nn.Module, path: str) -> cn.CanonicalParams:
        raise UnsupportedError(f"{type(m).__name__} has no canonical form", path=path)

    def step_mode(self, m: nn.Module) -> str:
        return STEP_SINGLE

    def single_step_call(self, m: nn.Module, args: tuple, kwargs: dict, value) -> tuple:
        return args[0], None, False, value

    def is_leaf(self, m: nn.Module) -> bool | None:
        return None

    def membrane_set(self, m: nn.Module) -> float | None:
        """The membrane neuron ``m`` holds before a call where the model set it to a number
        other than the one its reset leaves (``self.lif.v = 0.5`` after ``reset_net``: an
        ANN-to-SNN conversion's precharge), else None."""
        return None

    def held_membrane(self, m: nn.Module) -> str | None:
        """The attribute of neuron ``m`` that holds its membrane, where ``m`` never fires and
        the model reads that membrane after a call (an output neuron "without spikes"), else
        None."""
        return None

    def keeps_state(self, m: nn.Module) -> bool:
        return False

    def recurs_on_returned_spikes(self, m: nn.Module) -> bool:
        """Whether the spike tensor neuron ``m`` returns is also the state its next step reads
        (snnTorch's RLeaky with hidden state): an in-place change of it would change that step,
        which the graph computes from the neuron's own spikes."""
        return False

    def module_handler(self, m: nn.Module):
        return None

    def reset_state(self, model: nn.Module) -> None:
        return None


class CanonicalMethodAdapter(Adapter):
    """snncc's own neurons: a ``canonical()`` method; ``step_mode`` ``"m"`` (``lif(x)`` on
    ``[T, B, ...]``) or ``"s"`` (``lif(x, v)`` returning ``(spikes, v)``, ``v=None`` at t = 0)."""

    name = "snncc"

    def owns(self, m: nn.Module) -> bool:
        return callable(getattr(m, "canonical", None))

    def is_neuron(self, m: nn.Module) -> bool:
        return True

    def canonical(self, m: nn.Module, path: str) -> cn.CanonicalParams:
        return m.canonical()

    def step_mode(self, m: nn.Module) -> str:
        return getattr(m, "step_mode", STEP_MULTI)

    def single_step_call(self, m: nn.Module, args: tuple, kwargs: dict, value) -> tuple:
        state = args[1] if len(args) > 1 else kwargs.get("v")
        if self.step_mode(m) == STEP_MULTI:
            return args[0], state, False, value
        return args[0], state, True, value[0]


def _discover() -> list[Adapter]:
    """The built-in adapter, then every module of this package that defines ``ADAPTER``, in
    name order. A library adapter whose library is not installed still imports (it imports the
    library only when it meets one of its modules)."""
    found: list[Adapter] = [CanonicalMethodAdapter()]
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        adapter = getattr(module, "ADAPTER", None)
        if isinstance(adapter, Adapter):
            found.append(adapter)
    return found


ADAPTERS: list[Adapter] = _discover()


def adapter_for(m: nn.Module) -> Adapter | None:
    """The adapter that owns ``m``, or None (a plain torch module or user code)."""
    return next((a for a in ADAPTERS if a.owns(m)), None)


def is_neuron(m: nn.Module) -> bool:
    adapter = adapter_for(m)
    return adapter is not None and adapter.is_neuron(m)


def reset_state(model: nn.Module) -> None:
    """Clear the hidden neuron state every library keeps in ``model``'s modules."""
    for adapter in ADAPTERS:
        adapter.reset_state(model)

