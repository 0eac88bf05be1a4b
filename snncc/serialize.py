"""The ``.snnir`` file: one zip archive (numpy ``.npz``) holding a JSON header with the graph's
structure and every parameter array, bit-exact: float64, or float32 where the IR keeps it
(a float32 model's synapse weights, ``ir.Node.float32_arrays``). Versioned; loading never
unpickles.

Layout: ``__snnir__`` is the UTF-8 JSON header as uint8 bytes::

    {"format": "snnir", "version": 1, "name": ..., "meta": {...},
     "nodes": [{"op": "Conv2d", "name": ..., "inputs": [...], "path": ..., "attrs": {...},
                "arrays": {"weight": "a0", "bias": null}}, ...]}

and each array is stored under its key (``a0``, ``a1`` ...).
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from . import ir
from .errors import FormatError, IRError
from .files import Ours, atomic_write
from .graph import Graph
from .limits import (ResourceError, exact_float64, fmt_bytes, nbytes, positive_int,
                     require_fits, warn)

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
                arrays[key] = v if v.dtype == np.float32 else np.asarray(v, dtype=np.float64)
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
    return atomic_write(path, lambda f: write_npz(f, arrays), replaces=SNNIR_FILE)


def write_npz(f, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez(f, **arrays)``, except that a failed write (disk full) closes the archive
    at once: np.savez leaves it open, and its ``__del__`` later prints a traceback."""
    zf = zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True)
    try:
        for key, value in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                _write_npy(member, np.asanyarray(value))
    except BaseException:
        try:
            zf.close()
        except (OSError, ValueError):
            pass
        raise
    zf.close()


def _write_npy(f, a: np.ndarray) -> None:
    """``np.lib.format.write_array(f, a)`` for a numeric array, its data written from the
    array's memory: write_array copies it to bytes first when ``f`` is not a real file (a zip
    member), a second copy of the largest weight at the peak of a compile."""
    if a.dtype.hasobject:
        raise ValueError("object arrays cannot be saved without pickling")
    if not (a.flags.c_contiguous or a.flags.f_contiguous):
        a = a.copy(order="C")
    np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(a))
    f.write(a.reshape(-1, order="A").view(np.uint8).data)


def _float(a: np.ndarray, what: str, notes: list) -> np.ndarray:
    """A float32 array as it is (the node keeps or widens it), anything else as float64."""
    return a if a.dtype == np.float32 else exact_float64(a, what, notes)


def _is_snnir(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return f"{HEADER}.npy" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


SNNIR_FILE = Ours("a .snnir file", _is_snnir)


#: A member may be compressed (np.savez_compressed) at most this much: deflate's own limit
#: is about 1032:1, so a member declaring more is a zip bomb, not an array.
MAX_RATIO = 1100


def _members(path: Path, zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by array key, their declared sizes checked against the file's
    size (compression ratio) and the memory budget before anything is decompressed."""
    members, total = {}, 0
    for info in zf.infolist():
        if info.is_dir() or not info.filename.endswith(".npy"):
            raise FormatError(f"{path}: member '{info.filename}' is not an array (.npy)")
        key = info.filename[:-4]
        if key in members:
            raise FormatError(f"{path}: member '{info.filename}' appears twice")
        if info.file_size > MAX_RATIO * max(info.compress_size, 1) + 4096:
            raise ResourceError(f"{path}: member '{info.filename}' declares "
                                f"{fmt_bytes(info.file_size)} stored in "
                                f"{fmt_bytes(info.compress_size)}, more than any real array "
                                "compresses (a zip bomb?)")
        members[key] = info
        total += info.file_size
    if sum(i.compress_size for i in members.values()) > path.stat().st_size:
        raise ResourceError(f"{path}: its members overlap (together they claim more bytes than "
                            "the file has: a zip bomb?)")
    require_fits(total, f"{path}: its {len(members)} arrays")
    return members


def _read_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One .npy member, its header (shape, dtype) checked before its data is read."""
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"unknown .npy version {version}")
        shape, fortran, dtype = np.lib.format._read_array_header(f, version)
        if dtype.hasobject:
            raise FormatError(f"{path}: member '{info.filename}' holds Python objects")
        need = nbytes(shape, dtype.itemsize)
        if need > info.file_size:
            raise FormatError(f"{path}: member '{info.filename}' declares shape {shape} "
                              f"({fmt_bytes(need)}) but holds {fmt_bytes(info.file_size)}")
        require_fits(need, f"{path}: member '{info.filename}' (shape {shape})")
        return _read_data(f, shape, fortran, dtype)


def read_meta(path: Path) -> dict:
    """The graph metadata a ``.snnir`` file records, read from its header alone ({} for a file
    that is not one)."""
    try:
        with zipfile.ZipFile(path) as zf:
            header = json.loads(bytes(_read_member(path, zf, _members(path, zf)[HEADER])).decode())
        return dict(header.get("meta") or {})
    except (OSError, KeyError, ValueError, TypeError, AttributeError, zipfile.BadZipFile,
            FormatError, ResourceError):
        return {}


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive (snncc's artifacts), declared sizes checked before
    anything is decompressed; never unpickles."""
    with zipfile.ZipFile(path) as zf:
        return {k: _read_member(path, zf, info) for k, info in _members(path, zf).items()}


def _read_data(f, shape, fortran, dtype) -> np.ndarray:
    count = nbytes(shape, 1)
    data = f.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise ValueError("array data is truncated")
    a = np.frombuffer(data, dtype=dtype, count=count).copy()
    return a.reshape(shape[::-1]).transpose() if fortran else a.reshape(shape)


def _expect(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise FormatError(f"{path}: malformed .snnir header: {what}")


def _check_header(path: Path, header) -> None:
    """The header's structure, before any of it is used."""
    _expect(isinstance(header, dict), path, f"expected a JSON object, got "
                                            f"{type(header).__name__}")
    if header.get("format") != FORMAT:
        raise FormatError(f"{path}: not a .snnir file")
    if header.get("version") != VERSION:
        raise FormatError(f"{path}: .snnir version {header.get('version')!r} is not supported "
                          f"(this snncc reads version {VERSION})")
    _expect(isinstance(header.get("name"), str), path, "'name' is not a string")
    meta = header.get("meta", {})
    _expect(isinstance(meta, dict), path, "'meta' is not an object")
    if meta.get("T") is not None:
        positive_int(meta["T"], f"{path}: meta 'T' (time steps)", FormatError)
    if meta.get("dt") is not None:
        dt = meta["dt"]
        _expect(isinstance(dt, (int, float)) and not isinstance(dt, bool) and dt > 0
                and np.isfinite(dt), path, f"meta 'dt' must be a positive number, got {dt!r}")
    nodes = header.get("nodes")
    _expect(isinstance(nodes, list), path, "'nodes' is not a list")
    for i, rec in enumerate(nodes):
        _expect(isinstance(rec, dict), path, f"node #{i} is not an object")
        for key, typ in (("op", str), ("name", str), ("inputs", list), ("attrs", dict),
                         ("arrays", dict)):
            _expect(isinstance(rec.get(key), typ), path,
                    f"node #{i} ({rec.get('name')!r}): '{key}' is missing or not a "
                    f"{'string' if typ is str else typ.__name__}")
        _expect(all(isinstance(x, str) for x in rec["inputs"]), path,
                f"node '{rec['name']}': inputs are not names")
        _expect(isinstance(rec.get("path", ""), str), path,
                f"node '{rec['name']}': 'path' is not a string")
        _expect(all(v is None or isinstance(v, str) for v in rec["arrays"].values()), path,
                f"node '{rec['name']}': array references are not names")


def load(path: str | Path) -> Graph:
    """Read a ``.snnir`` file; a corrupt, truncated, foreign or oversized file raises
    FormatError / ResourceError (declared sizes are checked before anything is allocated)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            members = _members(path, zf)
            if HEADER not in members:
                raise FormatError(f"{path}: not a .snnir file (no header)")
            require_fits(members[HEADER].file_size * 8, f"{path}: its header")
            header = json.loads(bytes(_read_member(path, zf, members[HEADER])).decode())
            _check_header(path, header)
            used = {k for rec in header["nodes"] for k in rec["arrays"].values() if k}
            extra = sorted(set(members) - used - {HEADER})
            if extra:
                raise FormatError(f"{path}: member '{extra[0]}' "
                                  f"({fmt_bytes(members[extra[0]].file_size)}) is not used by "
                                  f"any node" + (f" (and {len(extra) - 1} more)"
                                                 if len(extra) > 1 else "")
                                  + "; not a file snncc wrote")
            missing = sorted(used - set(members))
            if missing:
                raise FormatError(f"{path}: array '{missing[0]}' named by a node is missing")
            notes: list[str] = []
            arrays = {k: _float(_read_member(path, zf, members[k]), f"{path}: array '{k}'",
                                notes) for k in sorted(used)}
            for note in notes:
                warn(note)
    except (FormatError, ResourceError):
        raise
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FormatError(f"{path}: is a directory, not a .snnir file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, UnicodeDecodeError,
            json.JSONDecodeError, RecursionError, zlib.error, NotImplementedError) as e:
        raise FormatError(f"{path}: corrupt or truncated .snnir file ({type(e).__name__}: {e})") \
            from None
    g = Graph(header["name"], header.get("meta", {}))
    name = "?"
    try:
        for rec in header["nodes"]:
            name = rec["name"]
            cls = ir.NODE_TYPES.get(rec["op"])
            if cls is None:
                raise FormatError(f"{path}: unknown node type '{rec['op']}'")
            kw = dict(rec["attrs"])
            for a, key in rec["arrays"].items():
                kw[a] = None if key is None else arrays[key]
            g.add_unchecked(cls(name=rec["name"], inputs=tuple(rec["inputs"]),
                                path=rec.get("path", ""), **kw))
        require_fits(sum(nbytes(n.input_shape) for n in _declared(g)),
                     f"{path}: one time step of one sample ({len(g)} nodes)")
        g.verify(allow_dead=True)
    except IRError as e:
        raise FormatError(f"{path}: invalid graph: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as e:
        raise FormatError(f"{path}: malformed node '{name}' ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]})") from None
    require_fits(sum(nbytes(n.shape) for n in g.nodes.values()),
                 f"{path}: one time step of one sample ({len(g)} nodes)")
    return g


def _declared(g: Graph):
    """Input nodes (whose shapes are declared before inference), for the size check done
    before the graph is inferred."""
    return [n for n in g.nodes.values() if isinstance(n, ir.Input)]
