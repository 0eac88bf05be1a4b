"""The ``.snnir`` file: one zip archive (numpy ``.npz``) holding a JSON header with the graph's
structure and every parameter array, float64, bit-exact. Versioned; loading never unpickles.

Layout: ``__snnir__`` is the UTF-8 JSON header as uint8 bytes::

    {"format": "snnir", "version": 1, "name": ..., "meta": {...},
     "nodes": [{"op": "Conv2d", "name": ..., "inputs": [...], "path": ..., "attrs": {...},
                "arrays": {"weight": "a0", "bias": null}}, ...]}

and each array is stored under its key (``a0``, ``a1`` ...).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from . import ir
from .errors import FormatError, IRError
from .files import Ours, atomic_write
from .graph import Graph

FORMAT = "snnir"
VERSION = 1
HEADER = "__snnir__"


def _jsonable(v):
    if isinstance(v, ir.Kind):
        return v.value
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.integer, np.floating)):
        return v.item()
    return v


def to_bytes_dict(graph: Graph) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    nodes = []
    for n in graph.nodes.values():
        refs = {}
        for a in n.arrays:
            v = getattr(n, a)
            if v is None:
                refs[a] = None
            else:
                key = f"a{len(arrays)}"
                arrays[key] = np.asarray(v, dtype=np.float64)
                refs[a] = key
        nodes.append({"op": n.op, "name": n.name, "inputs": list(n.inputs), "path": n.path,
                      "attrs": {k: _jsonable(v) for k, v in n.attrs().items()}, "arrays": refs})
    header = {"format": FORMAT, "version": VERSION, "name": graph.name, "meta": graph.meta,
              "nodes": nodes}
    arrays[HEADER] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    return arrays


def save(graph: Graph, path: str | Path) -> Path:
    """Write ``graph`` to ``path`` atomically (a crash never leaves a half-written file)."""
    graph.verify(allow_dead=True)
    arrays = to_bytes_dict(graph)
    return atomic_write(path, lambda f: np.savez(f, **arrays), replaces=SNNIR_FILE)


def _is_snnir(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return f"{HEADER}.npy" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


SNNIR_FILE = Ours("a .snnir file", _is_snnir)


def load(path: str | Path) -> Graph:
    """Read a ``.snnir`` file; a corrupt, truncated or foreign file raises FormatError."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if HEADER not in z.files:
                raise FormatError(f"{path}: not a .snnir file (no header)")
            header = json.loads(bytes(z[HEADER]).decode())
            arrays = {k: z[k] for k in z.files if k != HEADER}
    except FormatError:
        raise
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, UnicodeDecodeError,
            json.JSONDecodeError) as e:
        raise FormatError(f"{path}: corrupt or truncated .snnir file ({type(e).__name__}: {e})") \
            from None
    if header.get("format") != FORMAT:
        raise FormatError(f"{path}: not a .snnir file")
    if header.get("version") != VERSION:
        raise FormatError(f"{path}: .snnir version {header.get('version')} is not supported "
                          f"(this snncc reads version {VERSION})")
    g = Graph(header["name"], header.get("meta", {}))
    try:
        for rec in header["nodes"]:
            cls = ir.NODE_TYPES.get(rec["op"])
            if cls is None:
                raise FormatError(f"{path}: unknown node type '{rec['op']}'")
            kw = dict(rec["attrs"])
            for a, key in rec["arrays"].items():
                kw[a] = None if key is None else arrays[key]
            g.add_unchecked(cls(name=rec["name"], inputs=tuple(rec["inputs"]), path=rec["path"],
                                **kw))
        g.verify(allow_dead=True)
    except IRError as e:
        raise FormatError(f"{path}: invalid graph: {e}") from None
    except (KeyError, TypeError) as e:
        raise FormatError(f"{path}: malformed .snnir header ({type(e).__name__}: {e})") from None
    return g
