"""Import lava-dl's netx (``lava.lib.dl.netx``) on snncc's environment.

lava-dl 0.6.0 is installed without its dependencies (``scripts/lava_dl_env.sh``): it pins
torch < 2.4, torchvision and opencv. netx itself needs none of them, but importing it imports
all of ``lava.lib.dl.slayer``, whose object-detection modules run ``import cv2`` and ``from
torchvision import ops, transforms`` at load time. :func:`netx` puts empty stand-in modules for
those two names into ``sys.modules`` for the duration of that one import and removes them again,
so ``import torchvision`` / ``import cv2`` keep failing everywhere else (other code relies on
torchvision being absent). Lava's own 3.11 shim (:mod:`.compat`) is applied first.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
import tempfile
import threading
import traceback
import types
from contextlib import contextmanager
from pathlib import Path

from snncc.errors import SnnccError

from .compat import install as install_lava_shim

#: modules slayer imports at load time that netx never uses
STAND_INS = ("cv2", "torchvision", "torchvision.ops", "torchvision.transforms")


class _StandIn(types.ModuleType):
    """A module whose every attribute is a further stand-in (for ``from x import y``)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _StandIn(f"{self.__name__}.{name}")


@contextmanager
def _stand_ins():
    missing = [m for m in STAND_INS if m not in sys.modules]
    for m in missing:
        sys.modules[m] = _StandIn(m)
    try:
        yield
    finally:
        for m in missing:
            sys.modules.pop(m, None)


def available() -> bool:
    """Whether lava-dl is installed (without importing it)."""
    try:
        return importlib.util.find_spec("lava.lib.dl.netx") is not None
    except ModuleNotFoundError:
        return False


def netx():
    """The module ``lava.lib.dl.netx``; ImportError if lava-dl is not installed."""
    install_lava_shim()
    if "lava.lib.dl.netx" not in sys.modules:
        with _stand_ins(), contextlib.redirect_stdout(io.StringIO()):  # slayer's dataset notice
            importlib.import_module("lava.lib.dl.netx")
    return sys.modules["lava.lib.dl.netx"]


# ----------------------------------------------------------------------------- running


class LavaProcessError(SnnccError):
    """A Lava process model raised while the network ran (its traceback is the message)."""


_error_dir: str | None = None  # where a failing process model writes its traceback


def _report_failures(run_spk):
    """A process model that raises leaves Lava 0.10 waiting for it forever (it joins its ports
    instead of exiting, and its peers wait on its messages): write the traceback where the
    parent watches, before Lava's own handling."""
    def spike(self):
        try:
            return run_spk(self)
        except Exception:
            if _error_dir is not None:
                name = Path(_error_dir) / f"{type(self).__name__}.{os.getpid()}.txt"
                name.write_text(traceback.format_exc())
            raise
    return spike


def run_network(net, steps: int, run_cfg, poll_s: float = 0.2) -> None:
    """``net.run(RunSteps(steps), run_cfg)``, raising LavaProcessError with the traceback of any
    process model that fails (Lava itself would wait forever); the failed run's processes are
    terminated."""
    global _error_dir
    compat = importlib.import_module("snncc.backends.lava.compat")
    model = compat.lava(".magma.core.model.py.model").PyLoihiProcessModel
    steps_cond = compat.lava(".magma.core.run_conditions").RunSteps(num_steps=steps)
    original = model._spike
    result: dict = {}

    def target():
        try:
            net.run(condition=steps_cond, run_cfg=run_cfg)
        except BaseException as e:  # reported to the caller below
            result["error"] = e

    with tempfile.TemporaryDirectory() as d:
        _error_dir, model._spike = d, _report_failures(original)
        try:
            worker = threading.Thread(target=target, daemon=True)
            worker.start()
            while worker.is_alive():
                worker.join(poll_s)
                failures = sorted(Path(d).iterdir())
                if failures:
                    _terminate(net)
                    raise LavaProcessError("a Lava process failed:\n" + "\n".join(
                        f"{f.name.split('.')[0]}: {f.read_text()}" for f in failures))
        finally:
            _error_dir, model._spike = None, original
    if "error" in result:
        raise result["error"]


def _terminate(net) -> None:
    """End the Lava processes of ``net``'s runtime (they would wait forever)."""
    infra = getattr(net.runtime, "_messaging_infrastructure", None)
    for actor in getattr(infra, "actors", []):
        with contextlib.suppress(ValueError):  # an actor Lava already closed
            actor.terminate()
