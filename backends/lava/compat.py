"""The one compatibility shim that lets lava-nc 0.10.0 import on Python 3.11.

lava-nc 0.10.0 declares Python < 3.11. The only thing that breaks on 3.11 is
``lava.magma.compiler.var_model``: its dataclasses use dataclass *instances* as defaults
(``x: ByteEncoder = ByteEncoder()``), which Python 3.11 refuses ("mutable default ... use
default_factory") because a dataclass with ``eq=True`` is unhashable. :func:`install` imports
that one module with ``dataclasses.dataclass`` temporarily wrapped so that each such default
becomes ``field(default_factory=...)`` producing a copy of it (what 3.10 code meant, without the
sharing). Everything else in Lava is untouched.

A second trap: Lava's message infrastructure calls ``multiprocessing.set_start_method('fork')``
when it is imported, which raises "context has already been set" once anything in the process
has fixed the start method: a ``tqdm`` progress bar (it makes a multiprocessing lock), a
``DataLoader`` with workers, a script that chose ``spawn``. :func:`install` imports that module
with the method unset for the moment and then gives back the one that was fixed (a process that
fixed another method than fork runs Lava in a fresh interpreter, :func:`runs_in_this_process`).

Every module of ``snncc.backends.lava`` imports Lava through :func:`lava`, never directly, so the
shims are always applied first.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import multiprocessing
import sys

_BROKEN_MODULE = "lava.magma.compiler.var_model"
_FORKING_MODULE = "lava.magma.runtime.message_infrastructure.multiprocessing"


def _with_default_factories(cls):
    """Replace class-level defaults that are unhashable dataclass instances by factories."""
    for name in getattr(cls, "__annotations__", {}):
        default = cls.__dict__.get(name)
        if dataclasses.is_dataclass(default) and not isinstance(default, type) \
                and type(default).__hash__ is None:
            setattr(cls, name, dataclasses.field(default_factory=lambda d=default: copy.copy(d)))
    return cls


def _patched_dataclass(original):
    def dataclass(cls=None, /, **kw):
        def wrap(c):
            return original(_with_default_factories(c), **kw)
        return wrap if cls is None else wrap(cls)
    return dataclass


def install() -> None:
    """Import the one module 3.11 rejects with the default-factory fix, and the one that sets
    the start method whatever the process fixed before; idempotent."""
    if _BROKEN_MODULE not in sys.modules:
        original = dataclasses.dataclass
        dataclasses.dataclass = _patched_dataclass(original)
        try:
            importlib.import_module(_BROKEN_MODULE)
        finally:
            dataclasses.dataclass = original
    if _FORKING_MODULE not in sys.modules:
        fixed = multiprocessing.get_start_method(allow_none=True)
        multiprocessing.set_start_method(None, force=True)  # unset: Lava's own call passes
        try:
            importlib.import_module(_FORKING_MODULE)
        finally:
            if fixed is not None:
                multiprocessing.set_start_method(fixed, force=True)


def runs_in_this_process() -> bool:
    """Whether Lava can run its processes from this one: its runtime starts them with the
    default start method and needs fork (which it sets when nothing else was fixed)."""
    return multiprocessing.get_start_method(allow_none=True) in (None, "fork")


def lava(module: str):
    """``lava(".proc.lif.process")`` -> the module ``lava.proc.lif.process``, shim applied."""
    install()
    return importlib.import_module("lava" + module)
