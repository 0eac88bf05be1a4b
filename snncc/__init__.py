"""snncc: compile PyTorch spiking transformers to neuromorphic targets.

The public API (:mod:`snncc.api`)::

    import snncc
    graph  = snncc.trace(model, example_input, T=4)
    path   = snncc.compile(model, example_input, target="lava", out="out/", T=4)
    report = snncc.check(model, example_input, target="onnx", T=4)
    y      = snncc.run(path, inputs)

The names are imported on first use, so ``import snncc`` stays cheap (no torch).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"
_API = ("trace", "compile", "check", "run", "load")
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(".api", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
