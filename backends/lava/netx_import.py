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
import sys
import types
from contextlib import contextmanager

from .compat import install as install_lava_shim
from .failures import in_thread, watching

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


def run_network(net, steps: int, run_cfg, poll_s: float = 0.2) -> None:
    """``net.run(RunSteps(steps), run_cfg)``, raising LavaProcessError with the traceback of any
    process model that fails (Lava itself would wait forever); the failed run's processes are
    terminated."""
    compat = importlib.import_module("snncc.backends.lava.compat")
    steps_cond = compat.lava(".magma.core.run_conditions").RunSteps(num_steps=steps)
    with watching(net) as check:
        in_thread(lambda: net.run(condition=steps_cond, run_cfg=run_cfg), poll_s, check=check)
