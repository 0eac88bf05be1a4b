"""spikingjelly (``spikingjelly.activation_based``, 2.0, and ``spikingjelly.clock_driven``, the
API of 0.0.0.0.14 that the official code of Spikformer, Spike-Driven Transformer and QKFormer
imports): neurons, layer wrappers and state.

- **Neurons** (modules of the ``neuron`` package, and the model zoo's
  ``spike_dhs.save_v_LIFNode``, a ``LIFNode`` that also records its mean pre-spike membrane) are
  leaves. ``LIFNode``, ``IFNode`` and ``ParametricLIFNode`` (its tau = 1 / sigmoid(w), fixed after
  training) map onto the canonical neuron (DESIGN.md, "Models from other libraries"), and so do
  2.0's ``HalfThresholdIFNode`` (the soft-reset IF starting at half its threshold that
  ``ann2snn``'s channel-wise conversion makes), ``SimpleIFNode`` / ``SimpleLIFNode`` (the same
  charges written in plain PyTorch, starting at 0 whatever ``v_reset``) and ``CUBALIFNode``
  (c = c_decay * c + x, h = v_decay * v + c: a current before the canonical neuron).
  ``ILIFNode`` (the integer LIF of SpikeYOLO and Spike-Driven Transformer V3) emits counts,
  c = round(clamp(h / theta, 0, D)), not spikes: a circuit (:func:`_integer_lif`).
  ``SlidingPSN`` (the causal parallel spiking neuron: a weighted sum of its last k inputs) is
  a circuit of Delays (:func:`_sliding_psn`). ``MPBNLIFNode`` (a BatchNorm of the charged
  membrane) is, in eval, the canonical LIF scaled per channel (:func:`_membrane_batch_norm_lif`).
  The PSN and MaskedPSN (whose steps weigh later inputs or each step's own) and the online
  training neurons (OTTT, SLTT) are refused by name. Every other neuron model (the non-spiking
  readouts ``NonSpikingLIFNode`` and ``NonSpikingIFNode``, the ternary, DSR and
  resonate-and-fire neurons ...), and a subclass defining its own charge, fire or step, is
  traced through, not a leaf: the library's code as the tracer takes any model's, exact or
  refused at an op it cannot map (``EIFNode``'s exp).
  ``step_mode`` is the module's own: ``"m"`` takes ``[T, B, ...]``; ``"s"`` keeps its membrane
  in the module, so its k-th call is step k.
- **Layer wrappers** (``layer.Conv2d``, ``layer.BatchNorm2d``, ``layer.AdaptiveAvgPool2d``, ...)
  are leaves mapped as the torch layer they subclass, applied to every step when their
  ``step_mode`` is ``"m"``. ``layer.Dropout`` is the identity in eval mode; the
  weight-standardised ``WSConv2d`` / ``WSLinear`` are the plain layer with the standardised
  weight; threshold-dependent batch norm (tdBN, ``ThresholdDependentBatchNorm1d/2d``) is, in
  eval mode, the batch norm it subclasses over the steps folded into the batch (its
  ``alpha * v_th`` only initialises the weight). TEBN (``TemporalEffectiveBatchNorm``: that
  batch norm times a learned scale per step) is traced through, BNTT (``BatchNormThroughTime``:
  a batch norm of its own at each step) maps each step's norm (both: the tracer's
  ``step_selected``). Wrappers that compute something else (NeuNorm, DropConnect) are
  refused. Containers (``SeqToANNContainer``, ``MultiStepContainer``, ...) and everything else
  (attention blocks, the model zoo's blocks) are traced through.
- **clock_driven** (0.0.0.0.14): the same neuron models (the same charge, fire and reset
  operations) in single-step classes (``LIFNode``, ``IFNode``, ``ParametricLIFNode``: step
  ``"s"``) and multi-step ones (``MultiStepLIFNode``, ...: step ``"m"``, whatever their
  ``backend``); its ``Dropout`` family is the identity in eval mode, its multi-step tdBN the
  batch norm it subclasses over the steps folded into the batch; ``SeqToANNContainer`` and
  ``MultiStepContainer`` are traced through; every other module of its ``layer`` (stateful
  filters, NeuNorm, DropConnect, recurrent containers) is refused by name. A multi-step neuron
  with ``backend='cupy'`` compiles, but its model's own forward (``snncc check``) then needs
  CUDA tensors. 0.0.0.0.14's own ``activation_based`` keeps its layers in one ``layer`` module:
  its classes are leaves or traced through as 2.0's of the same names.
- **State**: a neuron keeps its membrane in the module until ``reset()``, so a multi-step call
  goes on from the one before (:meth:`keeps_state`: the tracer refuses a second call).
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from snncc import ir
from snncc import neuron as cn
from snncc.errors import UnsupportedError
from snncc.passes.common import is_power_of_two

from . import STEP_MULTI, STEP_SINGLE, Adapter, Integrator, NeuronCircuit
from .circuits import Circuit, on_current, scalar, threshold

_PACKAGE = "spikingjelly.activation_based"
_LEGACY = "spikingjelly.clock_driven"
_NEURON_MODULES = (f"{_PACKAGE}.neuron", f"{_LEGACY}.neuron")
#: the neuron models with a canonical form; clock_driven's multi-step classes are these models
#: with a ``MultiStep`` prefix
_CANONICAL = ("LIFNode", "IFNode", "ParametricLIFNode", "HalfThresholdIFNode", "SimpleIFNode",
              "SimpleLIFNode", "CUBALIFNode", "ILIFNode", "MPBNLIFNode")
_MULTI_STEP = "MultiStep"
#: neuron models refused by name, not traced: the parallel spiking neurons whose steps weigh
#: later steps' inputs or each step's own, and the online-training ones (OTTT, SLTT)
_NOT_TRACED = ("PSN", "MaskedPSN", "OTTTLIFNode", "SLTTLIFNode")
# neurons defined outside the neuron package whose spikes are those of a neuron class there:
# spike_dhs's save_v_LIFNode is a LIFNode (the same charge, fire and reset operations) that also
# records its mean pre-spike membrane as an observation
_NEURONS_ELSEWHERE = {f"{_PACKAGE}.model.spike_dhs.save_v_LIFNode": "LIFNode"}
# the modules of spikingjelly's layer package whose classes are single layers (leaves)
_LEAF_LAYERS = tuple(f"{_PACKAGE}.layer.{m}" for m in ("stateless_wrapper", "bn", "dropout"))
# 0.0.0.0.14 keeps each API's layers in one module, beside the classes traced through: those 2.0
# keeps outside its leaf modules (containers, misc), and clock_driven's containers
_TRACED_THROUGH = {
    f"{_PACKAGE}.layer": frozenset({
        "MultiStepContainer", "SeqToANNContainer", "StepModeContainer",
        "ElementWiseRecurrentContainer", "LinearRecurrentContainer", "PrintShapeModule",
        "VotingLayer", "TemporalWiseAttention", "MultiDimensionalAttention"}),
    f"{_LEGACY}.layer": frozenset({"SeqToANNContainer", "MultiStepContainer",
                                   "PrintShapeModule"}),
}
# leaf layers that compute exactly what the torch layer they subclass computes
_PLAIN_WRAPPERS = frozenset({
    "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
    "Linear", "Flatten", "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d",
    "AvgPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "Upsample",
    "GroupNorm", "MaxUnpool1d", "MaxUnpool2d", "MaxUnpool3d", "BatchNorm1d", "BatchNorm2d",
    "BatchNorm3d",
})


class SpikingJellyAdapter(Adapter):
    name = "spikingjelly"

    def owns(self, m: nn.Module) -> bool:
        base = _library_class(m)
        return base is not None and (self.is_neuron(m) or not _overridden(m))

    def is_neuron(self, m: nn.Module) -> bool:
        """A neuron class of spikingjelly's, or a subclass that only fixes its arguments (one
        that defines how it charges, fires or steps, the RL examples' ``NonSpikingLIFNode``
        or AutoSNN's PLIF, is traced through: its code, with the library's it calls), of a
        model with a canonical form or refused by name; the other models (ternary, DSR,
        resonate-and-fire ...) are traced through too, exact or refused at an op."""
        base = _library_class(m)
        return base is not None and (base.__module__.startswith(_NEURON_MODULES)
                                     or _qualname(m) in _NEURONS_ELSEWHERE) \
            and not _overridden(m) and _kind(m) in (*_CANONICAL, "SlidingPSN", *_NOT_TRACED) \
            and _fires_on_heaviside(m)

    def canonical(self, m: nn.Module, path: str):
        base, kind = _library_class(m), _kind(m)
        if kind == "SlidingPSN":
            return _sliding_psn(m, path)
        if kind not in _CANONICAL:
            raise UnsupportedError(
                f"spikingjelly's {base.__name__} has no exact canonical form (supported: "
                f"{', '.join((*_CANONICAL, 'SlidingPSN'))}"
                + (", and their MultiStep classes)" if _legacy(m) else ")"), path=path)
        if getattr(m, "_neuron_precision", None) is not None:
            raise UnsupportedError("a neuron with a reduced-precision state (set_neuron_precision)"
                                   " computes in another dtype than the model", path=path)
        v_reset = None if m.v_reset is None else scalar(m.v_reset, "v_reset", path)
        if kind == "MPBNLIFNode":
            return _membrane_batch_norm_lif(m, v_reset, path)
        theta = scalar(m.v_threshold, "v_threshold", path)
        if kind == "ILIFNode":
            return _integer_lif(m, theta, path)
        if kind == "HalfThresholdIFNode":  # its reset() sets v = v_threshold / 2.0
            return replace(cn.from_if(theta, None), v_init=theta / 2.0)
        if kind == "CUBALIFNode":  # IF's fire, reset and start, its membrane decaying
            neuron = replace(cn.from_if(theta, v_reset), alpha=scalar(m.v_decay, "v_decay", path))
            return on_current(scalar(m.c_decay, "c_decay", path), neuron)
        if kind in ("IFNode", "SimpleIFNode"):
            params = cn.from_if(theta, v_reset)
        else:
            if kind == "ParametricLIFNode":
                tau = 1.0 / float(torch.sigmoid(m.w.detach().double()))
            else:
                tau = float(m.tau)
            params = cn.from_lif(tau, theta, v_reset, bool(m.decay_input))
        # the Simple* neurons' membrane is registered as 0.0 whatever v_reset
        return replace(params, v_init=0.0) if kind.startswith("Simple") else params

    def membrane_set(self, m: nn.Module) -> float | None:
        v = m.__dict__.get("_memories", {}).get("v")
        start = m.__dict__.get("_memories_rv", {}).get("v")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v != start:
            return float(v)
        return None

    def held_membrane(self, m: nn.Module) -> str | None:
        """``v`` of an IFNode whose threshold is +inf (StereoSpike's "I-neurons", whose
        membranes are its depth maps): it never fires, never resets, and sums its inputs from
        its v_reset 0. (With v_reset None its soft reset subtracts 0 * inf from the membrane at
        every step: spikingjelly's membrane is NaN, found by tests/fuzz_models.py; not taken.)"""
        kind = _library_class(m).__name__.removeprefix(_MULTI_STEP) if _legacy(m) \
            else _library_class(m).__name__
        threshold, start = getattr(m, "v_threshold", None), getattr(m, "v_reset", None)
        return "v" if kind == "IFNode" and isinstance(threshold, (int, float)) \
            and math.isinf(threshold) and threshold > 0 and start == 0.0 else None

    def step_mode(self, m: nn.Module) -> str:
        if _legacy(m):
            return STEP_MULTI if _library_class(m).__name__.startswith(_MULTI_STEP) \
                else STEP_SINGLE
        return getattr(m, "step_mode", STEP_SINGLE)

    def keeps_state(self, m: nn.Module) -> bool:
        return True  # its membrane stays in the module until reset()

    def is_leaf(self, m: nn.Module) -> bool | None:
        base = _library_class(m)
        if base.__name__.startswith(_TIME_SCALED_NORM):
            return False
        traced_through = _TRACED_THROUGH.get(base.__module__)
        if traced_through is not None:
            return base.__name__ not in traced_through
        return True if base.__module__ in _LEAF_LAYERS else None

    def module_handler(self, m: nn.Module):
        name = _library_class(m).__name__
        if name in _PLAIN_WRAPPERS:
            return None
        if name in _IDENTITIES:
            return nn.Identity()
        if name in ("WSConv2d", "WSLinear"):
            return _standardised(m)
        if name in _TDBN:
            return _as_class(m, _TDBN[name])
        if name.startswith("BatchNormThroughTime"):
            return _norm_per_step
        return _refuse(f"spikingjelly's {name} has no IR mapping")

    def reset_state(self, model: nn.Module) -> None:
        for m in model.modules():
            if self.owns(m) and callable(getattr(m, "reset", None)):
                m.reset()
            elif _vendored_memories(m):  # as spikingjelly's MemoryModule.reset does
                m._memories.update({k: copy.deepcopy(v) for k, v in m._memories_rv.items()})


def _membrane_batch_norm_lif(m: nn.Module, v_reset: float | None,
                             path: str) -> cn.CanonicalParams:
    """MPBNLIFNode (Guo et al.'s membrane potential batch norm): LIFNode's charge h, then, in
    eval, its BatchNorm's a * h + c per channel (a = weight / sqrt(var + eps), c = bias -
    a * mean), fired on (>=) and reset: the canonical LIF with alpha, gamma and beta scaled by
    a and c added to beta, one per channel, at its threshold (exp of the learned one with
    ``learnable_vth``). Its threshold folded into the norm (``re_parameterize_v_threshold``:
    the norm gone, one threshold per channel of a shape the module no longer tells) is
    refused, as is the training mode and a residual normalised by a mask."""
    why = ("in training mode (its norm reads the batch)" if m.training else
           "normalising its residual membrane (normalize_residual)"
           if getattr(m, "normalize_residual", False) else
           "with its threshold folded into its norm (re_parameterize_v_threshold): compile the "
           "model before folding" if m.fold_bn else None)
    if why:
        raise UnsupportedError(f"an MPBNLIFNode {why} is not supported", path=path)
    bn = m.vbn
    if m.learnable_vth:
        if v_reset is None:
            raise UnsupportedError("an MPBNLIFNode with a learned threshold and a soft reset "
                                   "(which subtracts v_threshold, not the threshold it fires "
                                   "at) is not supported", path=path)
        theta = torch.exp(m.a.detach().double())
    else:
        theta = torch.tensor(scalar(m.v_threshold, "v_threshold", path), dtype=torch.float64)
    params = cn.from_lif(float(m.tau), 1.0, v_reset, bool(m.decay_input))
    a, c = np.float64(1.0), np.float64(0.0)
    if not isinstance(bn, nn.Identity):
        n = bn.num_features

        def stat(t, default: np.ndarray | None = None) -> np.ndarray:
            return default if t is None else t.detach().double().numpy()
        a, c = ir.batchnorm_scale_shift(stat(bn.weight, np.ones(n)), stat(bn.bias, np.zeros(n)),
                                        stat(bn.running_mean), stat(bn.running_var), bn.eps)
    channel_axes = (1, 1) if isinstance(bn, nn.BatchNorm2d) else ()
    alpha, gamma, beta, theta = [
        float(t) if np.ndim(t) == 0 else np.reshape(t, (*np.shape(t), *channel_axes))
        for t in (a * params.alpha, a * params.gamma, a * params.beta + c, theta.numpy())]
    return replace(params, alpha=alpha, gamma=gamma, beta=beta, theta=theta)


#: the most count levels of an I-LIF (its papers use 4; each level is a layer of comparisons)
MAX_LEVELS = 64


def _sliding_psn(m: nn.Module, path: str) -> NeuronCircuit:
    """SlidingPSN: h[t] = B + sum_i W[k-1-i] x[t-i] over its last k inputs (none before step
    0), firing on h >= 0 (its surrogate's Heaviside): the input and its k - 1 Delays, each
    scaled by its weight and summed, fired on by a threshold neuron at -B."""
    weight = m.weight.detach().to("cpu", torch.float64).numpy()
    bias = scalar(m.bias, "bias", path)

    def build(name, x, shape):
        c = Circuit(name, path, shape)
        h = c.weighted_window(x, weight[::-1])  # (its last weight is the newest input's)
        return c.nodes, h
    return NeuronCircuit(threshold(-bias, cn.CMP_GE), build)


def _integer_lif(m: nn.Module, theta: float, path: str) -> Integrator:
    """``ILIFNode`` as spikingjelly's reference computes it (``_ops/ilif/reference.py``)::

        h = (1 - 1/tau) * v + x;  c = round(clamp(h / theta, 0, D));  v = h - c * theta

    with v starting at 0: a Delay keeps v, and c is the sum of D neurons that only compare,
    level d firing when round(h / theta) >= d: h / theta > d - 1/2 for odd d, >= for even d
    (torch rounds halves to even). h / theta is a Scale by 1 / theta, the same value only when
    theta is a power of two (the default 1); another threshold is refused."""
    count = getattr(m.surrogate_function, "max_spike_count", None)
    if count is None or count != int(count) or not 1 <= count <= MAX_LEVELS:
        raise UnsupportedError(f"I-LIF's spike count limit {count!r} is not an integer from 1 to "
                               f"{MAX_LEVELS} (snncc builds one comparison per level)", path=path)
    if theta <= 0 or not is_power_of_two(theta):
        raise UnsupportedError(
            f"v_threshold {theta} is not a power of two: I-LIF divides its membrane by it, "
            "which snncc computes exactly only as a product with 1 / v_threshold", path=path)
    decay = 1.0 - 1.0 / scalar(m.tau, "tau", path)

    def build(name, x, shape):
        c = Circuit(name, path, shape)
        v = c.prev(f"{name}:mem")
        h = c.add(c.scale(v, decay, "decay*v"), x, "h")
        scaled = h if theta == 1.0 else c.scale(h, 1.0 / theta, "h/theta")
        levels = [c.neuron(scaled, threshold(d - 0.5, cn.CMP_GE if d % 2 == 0 else cn.CMP_GT),
                           f"level{d}", f"{path}.level{d}") for d in range(1, int(count) + 1)]
        c.add(h, c.scale(name, -theta, "-c*theta"), "mem")
        return [*c.nodes, ir.Add(name, tuple(levels), path=path)]
    return Integrator(build, levels=int(count))


def _vendored_memories(m: nn.Module) -> bool:
    """Whether ``m`` keeps its state as spikingjelly's ``MemoryModule`` does (``_memories``,
    with their reset values in ``_memories_rv``) in a copy of spikingjelly a repository vendors
    under another name (Spike-Driven Transformer V3's ``Qtrick_architecture``): its modules are
    traced through, and their state is reset like the library's."""
    memories, reset_values = (getattr(m, k, None) for k in ("_memories", "_memories_rv"))
    return isinstance(memories, dict) and isinstance(reset_values, dict) \
        and memories.keys() == reset_values.keys()


def _library_class(m: nn.Module) -> type | None:
    """The class of spikingjelly's that ``m`` is: its own, or the one a class defined elsewhere
    subclasses (a repository's ``class LIF(neuron.LIFNode)`` that fixes the constructor's
    arguments, as SpikingResformer's)."""
    return next((c for c in type(m).__mro__ if c.__module__.startswith((_PACKAGE, _LEGACY))),
                None)


_PARAMETRIZE = "torch.nn.utils.parametrize"
#: what a subclass may define without changing what its spikingjelly class computes
_INERT = frozenset({"__init__", "__module__", "__qualname__", "__doc__", "__annotations__",
                    "__dict__", "__weakref__", "__slots__", "extra_repr"})


def _kind(m: nn.Module) -> str:
    """The neuron model of ``m``'s spikingjelly class (clock_driven's without "MultiStep")."""
    kind = _NEURONS_ELSEWHERE.get(_qualname(m), _library_class(m).__name__)
    return kind.removeprefix(_MULTI_STEP) if _legacy(m) else kind


def _overridden(m: nn.Module) -> list[str]:
    """What the classes between ``type(m)`` and its spikingjelly class define besides a
    constructor (the class torch's parametrizations, such as ``weight_norm``, put in between
    only computes the weight, which is read through it)."""
    base, names = _library_class(m), set()
    for cls in type(m).__mro__:
        if cls is base:
            break
        if cls.__module__ != _PARAMETRIZE:
            names |= set(vars(cls))
    return sorted(names - _INERT)


#: the library's surrogate functions whose forward is not the Heaviside step even with
#: ``spiking=True``: a random draw, and I-LIF's count (which its own canonical form reads)
_NOT_HEAVISIDE = frozenset({"PoissonPass", "MultiLevelSpikeCount"})


def _fires_on_heaviside(m: nn.Module) -> bool:
    """Its ``surrogate_function`` (if any: I-LIF's is its count) is one of the library's with
    ``spiking=True``, whose forward is H(v - v_threshold) = v >= v_threshold, as the canonical
    form fires. Another (``spiking=False``: a real value; a user's, shifted or scaled; a random
    one) makes the neuron traced through, its surrogate's forward computed as written: it was
    taken for H, silently (agreement 0.0 to 0.93)."""
    fn = getattr(m, "surrogate_function", None)
    if fn is None or _kind(m) == "ILIFNode":
        return True
    cls = type(fn)
    return cls.__module__ in (f"{_PACKAGE}.surrogate", f"{_LEGACY}.surrogate") \
        and cls.__name__ not in _NOT_HEAVISIDE and getattr(fn, "spiking", True) is True


def _qualname(m: nn.Module) -> str:
    base = _library_class(m)
    return f"{base.__module__}.{base.__name__}"


def _legacy(m: nn.Module) -> bool:
    return _library_class(m).__module__.startswith(_LEGACY)


# dropouts: the identity in eval mode
_IDENTITIES = frozenset({"Dropout", "Dropout2d", "MultiStepDropout", "MultiStepDropout2d"})
_TDBN = {"ThresholdDependentBatchNorm1d": nn.BatchNorm1d,
         "ThresholdDependentBatchNorm2d": nn.BatchNorm2d,
         "MultiStepThresholdDependentBatchNorm1d": nn.BatchNorm1d,
         "MultiStepThresholdDependentBatchNorm2d": nn.BatchNorm2d}


#: TEBN: a batch norm over the steps folded into the batch, then times a per-step scale (traced
#: through: the scale a constant that differs along the time axis)
_TIME_SCALED_NORM = "TemporalEffectiveBatchNorm"


def _norm_per_step(builder, call, m: nn.Module, x):
    """BNTT: a batch norm of its own at each step, the t-th of ``bn_list`` at step t."""
    return builder.module_per_step(
        call, [(f"{call.path}.bn_list.{t}", bn) for t, bn in enumerate(m.bn_list)], x)


def _as_class(m: nn.Module, cls: type) -> nn.Module:
    """``m`` (sharing its parameters and buffers) as the torch layer ``cls`` it computes."""
    plain = copy.copy(m)
    plain.__class__ = cls
    return plain


def _standardised(m: nn.Module) -> nn.Module:
    """The plain Conv2d / Linear with the weight ``m`` computes from its parameters."""
    plain = copy.deepcopy(m)
    plain.__class__ = nn.Conv2d if isinstance(m, nn.Conv2d) else nn.Linear
    with torch.no_grad():
        plain.weight = nn.Parameter(m.get_weight().detach().clone())
    return plain


def _refuse(message: str):
    def handler(builder, call, m, *args, **kwargs):
        raise UnsupportedError(message, path=call.path)
    return handler


ADAPTER = SpikingJellyAdapter()


def provide_weight_loader_without_torchvision() -> bool:
    """Let spikingjelly's model files (``spikingjelly.activation_based.model``) import where
    torchvision cannot: they import it only for ``load_state_dict_from_url``, to download
    pretrained weights. PyPI's torchvision wheels are CUDA builds that fail to load beside the
    CPU torch snncc pins (``RuntimeError: operator torchvision::nms does not exist``). When
    torchvision does not import, this registers a ``torchvision`` module holding just that one
    name, taken from ``torch.hub`` (the same function); a working torchvision is left alone.
    Call it before importing the model files. Returns True if it registered the stand-in."""
    import sys
    import types

    try:
        import torchvision  # noqa: F401
        return False
    except (ImportError, RuntimeError):
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]  # what a failed import left half-initialised
    utils = types.ModuleType("torchvision._internally_replaced_utils")
    utils.load_state_dict_from_url = torch.hub.load_state_dict_from_url
    package = types.ModuleType("torchvision")
    package._internally_replaced_utils = utils
    sys.modules.update({"torchvision": package, utils.__name__: utils})
    return True
