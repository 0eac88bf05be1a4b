"""Shape-free hyper-parameters of the zoo's entries: the values no checkpoint records.

A ``state_dict`` fixes every tensor's shape but not the head count, the number of time steps,
the neurons' tau and thresholds or the attention scale; loading the same weights with other
values silently gives other outputs. Each :class:`~snncc.frontends.zoo.ZooEntry` therefore
names these constructor arguments (``options``) and the official file its values come from
(``source``). This module reads them (:func:`hyperparameters`), checks and converts the user's
overrides (:func:`arch_options`: ``--arch-option name=value`` on the command line,
``arch_options={...}`` in the Python API) and formats the line the CLI prints when it loads a
checkpoint (:func:`describe`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence

from snncc.errors import SnnccError

#: What each option means (``snncc zoo --verbose`` and the error for an unknown name).
MEANINGS = {
    "num_heads": "attention heads",
    "T": "time steps",
    "tau": "LIF membrane time constant",
    "v_threshold": "LIF firing threshold",
    "attn_v_threshold": "threshold of the attention neuron",
    "scale": "factor on the attention product",
    "head_lif": "spiking head head(lif(x)) (true) or head(x) (false)",
    "kd": "distillation head head_kd (the official T=4 fine-tuned checkpoints have it)",
}
_POSITIVE_INTS = ("num_heads", "T")


def _default(entry, name: str):
    if name in entry.kwargs:
        return entry.kwargs[name]
    param = inspect.signature(entry.builder).parameters.get(name)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def hyperparameters(entry, overrides: Mapping | None = None) -> dict:
    """``{option: value}`` of ``entry`` (a ZooEntry) with ``overrides`` applied, in the entry's
    order."""
    overrides = overrides or {}
    return {k: overrides[k] if k in overrides else _default(entry, k) for k in entry.options}


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return text if len(text) <= 12 else format(value, ".10g")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def format_values(values: Mapping) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())


def describe(name: str, overrides: Mapping | None = None) -> str:
    """One line: the entry's hyper-parameters as loaded, where they come from, and which the
    user set (``arch NAME: num_heads=8, T=4, ... (from FILE); set by --arch-option: ...``)."""
    from . import _entry

    entry = _entry(name)
    overrides = {k: v for k, v in (overrides or {}).items() if k in entry.options}
    values = hyperparameters(entry, overrides)
    if not values:
        return f"arch {name}: no shape-free hyper-parameters listed ({entry.description})"
    line = f"arch {name}: {format_values(values)} (source: {entry.source or 'the entry'})"
    changed = {k: v for k, v in overrides.items() if v != _default(entry, k)}
    if changed:
        line += f"; overridden: {format_values(changed)}"
    return line


def _convert(name: str, text: str, like):
    """``text`` as the type of the option's default ``like``."""
    t = text.strip()
    if isinstance(like, bool):
        low = t.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError("true or false")
    if isinstance(like, (list, tuple)):  # per-block values
        items = [s for s in t.strip("[]()").split(",") if s.strip()]
        return [_convert(name, s, like[0] if like else 0.0) for s in items]
    if isinstance(like, int) or name in _POSITIVE_INTS:
        return int(t)
    if isinstance(like, float) or like is None:
        return float(t)
    raise ValueError(f"a value like {like!r}")


def _check_value(name: str, value) -> None:
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if name in _POSITIVE_INTS:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SnnccError(f"--arch-option {name} must be a whole number >= 1, got {v!r}")
        elif name in ("head_lif", "kd"):
            if not isinstance(v, bool):
                raise SnnccError(f"--arch-option {name} must be true or false, got {v!r}")
        elif (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
              or v <= 0):
            raise SnnccError(f"--arch-option {name} must be a finite number > 0, got {v!r}")


def arch_options(name: str, options: Mapping | Sequence[str] | None) -> dict:
    """The user's overrides for zoo entry ``name`` as constructor keyword arguments:
    ``options`` is a mapping (Python API) or ``name=value`` strings (``--arch-option``, values
    converted to the type of the entry's own). Unknown names and bad values are refused with
    one line naming the valid options."""
    from . import _entry

    if not options:
        return {}
    entry = _entry(name)
    valid = ", ".join(entry.options) if entry.options else "none"
    if isinstance(options, Mapping):
        items = list(options.items())
    else:
        items = []
        for text in options:
            key, sep, value = str(text).partition("=")
            if not sep or not key.strip():
                raise SnnccError(f"--arch-option takes name=value, got '{text}' (options of "
                                 f"'{name}': {valid})")
            items.append((key.strip(), value))
    result = {}
    for key, value in items:
        if key not in entry.options:
            raise SnnccError(f"unknown --arch-option '{key}' for '{name}'; valid: {valid}")
        if isinstance(value, str):
            like = _default(entry, key)
            try:
                value = _convert(key, value, like)
            except ValueError:
                raise SnnccError(f"--arch-option {key}={value}: expected "
                                 f"{'true or false' if isinstance(like, bool) else 'a number'}"
                                 ) from None
        elif isinstance(value, tuple):
            value = list(value)
        _check_value(key, value)
        result[key] = value
    return result
