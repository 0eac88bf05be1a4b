"""Checkpoints: reading a ``model.pt`` safely, loading it into a zoo architecture with every
mismatch listed, and the two front-end entry points that give a model and its IR graph.

A checkpoint is a safetensors file (read here: nothing in it is code), or a ``state_dict`` or a
dict holding one under ``state_dict`` or ``model`` (possibly nested; ``module.`` prefixes from
``DataParallel`` are removed; a training module's keys under the attribute holding the model,
PyTorch Lightning's ``model.``, are the model's).
Without ``trust`` the file is read with ``torch.load(weights_only=True)``, which refuses pickled
Python objects (a whole ``nn.Module``) and TorchScript archives: unpickling runs code (an
argparse ``Namespace``, which timm's train.py saves, is data and loads). With ``trust`` both
load, and their ``state_dict()`` is used.
"""

from __future__ import annotations

import argparse
import collections
import difflib
import json
import math
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from snncc.errors import CheckpointError, FormatError, UnsupportedError
from snncc.files import CHECKPOINT, refuse_foreign_format
from snncc.graph import Graph
from snncc.limits import ResourceError, fmt_bytes, nbytes, positive_int, require_fits, warn

from .tracer import trace

_CONTAINER_KEYS = ("state_dict", "model")
_LISTED = 8  # keys named per category in a mismatch message
# torch.load(weights_only=True) refusing code (not a damaged file, which fails otherwise)
_NEEDS_CODE = re.compile(r"Unsupported global|unsupported class|unrecognized function|"
                         r"allowlisted", re.IGNORECASE)


def load_state_dict(path: str | Path, trust: bool = False,
                    expected: Mapping[str, torch.Tensor] | None = None,
                    arch: str = "") -> dict[str, torch.Tensor]:
    """The state_dict in ``path``: unwrapped, prefixes removed, every value a finite tensor.

    Before anything is unpickled, the archive's declared sizes (zip members, and the tensors
    and storages ``data.pkl`` describes, read without loading them) are checked against the
    file and the memory budget; with ``expected`` (a model's state_dict) the keys and shapes
    are compared first, so a checkpoint that does not fit is refused without loading it."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    refuse_foreign_format(path, CHECKPOINT)
    safetensors = _safetensors_header(path)
    described = None if safetensors else _prescan(path)
    if expected is not None and described is not None:
        _check_fit(expected, under_one_attribute(_strip_prefix(described), expected, path),
                   arch, path)
    loaded = _read_safetensors(path, *safetensors) if safetensors else _unwrap(
        _load(path, trust), path)
    state = under_one_attribute(_strip_prefix(loaded), expected, path, say=True)
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: key '{key}' holds a {type(value).__name__}, "
                                  "not a tensor")
        if value.is_complex():
            raise CheckpointError(f"{path}: key '{key}' holds complex values ({value.dtype}); "
                                  "refusing to drop their imaginary part")
        if value.is_floating_point() and value.numel() and not (  # extremes: no mask copy
                math.isfinite(value.min()) and math.isfinite(value.max())):
            raise CheckpointError(f"{path}: key '{key}' contains NaN or infinite values")
        if expected is not None and key in expected:
            state[key] = _exact_cast(path, key, value, expected[key].dtype)
    return state


def _exact_cast(path: Path, key: str, value: torch.Tensor, want: torch.dtype) -> torch.Tensor:
    """An integer/bool tensor for a floating-point parameter: cast when every value survives
    the cast exactly (saying so), else refused."""
    if not want.is_floating_point or value.is_floating_point():
        return value
    cast = value.to(want)
    if not torch.equal(cast.to(value.dtype), value) or (
            value.numel() and float(value.abs().max()) > 2 / torch.finfo(want).eps):
        raise CheckpointError(f"{path}: key '{key}' holds {value.dtype} values that {want} "
                              "cannot represent exactly")
    warn(f"{path}: key '{key}' holds {value.dtype} values; cast exactly to {want}")
    return cast


# ----------------------------------------------------------------------------- pre-scan
#: A zip member may be compressed at most this much (deflate's limit is about 1032:1).
MAX_RATIO = 1100


@dataclass
class _Described:
    """A tensor as ``data.pkl`` describes it, without its data."""

    shape: tuple
    dtype: torch.dtype
    storage: str


class _Storage:
    def __init__(self, dtype):
        self.dtype = dtype


class _Unsupported(Exception):
    """data.pkl holds more than a plain state_dict: leave it to torch.load's own checks."""


def _rebuild(storage, offset, size, stride, *rest):
    key, dtype, numel = storage
    return _Described(tuple(int(s) for s in size), dtype, key)


class _ScanUnpickler(pickle.Unpickler):
    """Reads data.pkl into dicts of :class:`_Described` (no storage is loaded); any global
    beyond dicts, tensors and storages stops the scan."""

    def __init__(self, f, storages: dict):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, hooks, *rest: data
        if module == "torch" and name.endswith("Storage"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TypedStorage is deprecated
                st = getattr(torch, name, None)
                dtype = getattr(st, "dtype", None) if st is not None else None
            if isinstance(dtype, torch.dtype):
                return _Storage(dtype)
        raise _Unsupported(f"{module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Unsupported("persistent id")
        _, st, key, _, numel = pid
        dtype = st.dtype if isinstance(st, _Storage) else getattr(st, "dtype", None)
        if not isinstance(dtype, torch.dtype) or not isinstance(numel, int) or numel < 0:
            raise _Unsupported("storage type")
        self.storages[str(key)] = (dtype, numel)
        return (str(key), dtype, numel)


def _prescan(path: Path) -> dict | None:
    """Check a zip checkpoint's declared sizes before torch.load allocates them; return
    {key: _Described} when data.pkl is a plain (possibly wrapped) state_dict, else None."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        return None  # not a zip (legacy format or garbage): torch.load decides
    with zf:
        infos = zf.infolist()
        total = 0
        for info in infos:
            if info.file_size > MAX_RATIO * max(info.compress_size, 1) + 4096:
                raise ResourceError(f"{path}: member '{info.filename}' declares "
                                    f"{fmt_bytes(info.file_size)} stored in "
                                    f"{fmt_bytes(info.compress_size)}, more than any real "
                                    "tensor compresses (a zip bomb?)")
            total += info.file_size
        if sum(i.compress_size for i in infos) > path.stat().st_size:
            raise ResourceError(f"{path}: its members overlap (together they claim more bytes "
                                "than the file has: a zip bomb?)")
        require_fits(total, f"{path}: its {len(infos)} members")
        pkl = [i for i in infos if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"]
        if len(pkl) != 1:
            return None
        prefix = pkl[0].filename[:-len("data.pkl")]
        storages: dict = {}
        try:
            with zf.open(pkl[0]) as f:
                obj = _ScanUnpickler(f, storages).load()
        except _Unsupported:
            return None
        except Exception:  # a damaged pickle: torch.load reports it
            return None
        need = 0
        sizes = {i.filename: i.file_size for i in infos}
        for key, (dtype, numel) in storages.items():
            nb = numel * _itemsize(dtype)
            have = sizes.get(f"{prefix}data/{key}")
            if have is None or have < nb:
                raise FormatError(f"{path}: storage '{key}' declares {numel} {dtype} values "
                                  f"({fmt_bytes(nb)}) but the archive holds "
                                  f"{fmt_bytes(have or 0)} for it (corrupt or forged?)")
            if have > nb + 4096:  # torch reads the whole member to load the storage
                raise ResourceError(f"{path}: member '{prefix}data/{key}' holds "
                                    f"{fmt_bytes(have)} for a storage of {fmt_bytes(nb)} "
                                    "(a zip bomb?)")
            need += nb
        require_fits(need, f"{path}: its {len(storages)} tensor storages")
    try:
        state = _unwrap(obj, path)
    except FormatError:
        return None
    if not all(isinstance(v, _Described) for v in state.values()):
        return None
    return state


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _check_fit(expected: Mapping, state: Mapping, arch: str, path: Path) -> None:
    """The key and shape comparison of :func:`load_into`, on shapes alone."""
    try:
        _mismatch(expected, state, arch)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


#: safetensors' dtype names (HuggingFace's format: an 8-byte header length, a JSON header, the
#: tensors' raw bytes; nothing in it is code)
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                       "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                       "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                       "BOOL": torch.bool}
_SAFETENSORS_HEADER_MAX = 100 << 20  # (the format's own limit)


def _safetensors_header(path: Path) -> tuple[dict, int] | None:
    """A safetensors file's header and where its data starts; None for another file (a zip
    checkpoint starts with 'PK', a legacy one with a pickle opcode, not a length and '{')."""
    with open(path, "rb") as f:
        head = f.read(9)
        if len(head) < 9 or head[8:9] != b"{":
            return None
        n, size = int.from_bytes(head[:8], "little"), path.stat().st_size
        if n > min(size - 8, _SAFETENSORS_HEADER_MAX):
            raise FormatError(f"{path}: a safetensors header of {n} bytes in a file of {size}")
        f.seek(8)
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FormatError(f"{path}: a safetensors header that is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: a safetensors header that is not a JSON object")
    return header, 8 + n


def _read_safetensors(path: Path, header: dict, start: int) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, each entry's dtype, shape and byte range checked
    against the file (ranges within it, not overlapping, of the size the shape declares) and
    their total against the memory budget before any is read."""
    data, spans = path.stat().st_size - start, []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype")) if isinstance(entry, dict) else None
        shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if dtype else (0, 0)
        if dtype is None or not isinstance(shape, list) or not isinstance(offsets, list) or \
                len(offsets) != 2 or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 0
                    for v in (*shape, *offsets)):
            raise FormatError(f"{path}: safetensors entry '{key}' is not a tensor's "
                              "dtype, shape and data_offsets")
        begin, end = offsets
        if end - begin != nbytes(shape, dtype.itemsize) or not begin <= end <= data:
            raise FormatError(f"{path}: safetensors entry '{key}' declares bytes {begin}-{end} "
                              f"for shape {shape} of {entry['dtype']} in {data} bytes of data")
        spans.append((begin, end, key, dtype, tuple(shape)))
    spans.sort(key=lambda span: span[:2])
    for (_, end, key, *_), (begin, _, other, *_) in zip(spans, spans[1:]):
        if begin < end:
            raise FormatError(f"{path}: safetensors entries '{key}' and '{other}' overlap")
    require_fits(sum(e - b for b, e, *_ in spans), f"{path}: its {len(spans)} tensors")
    state = {}
    with open(path, "rb") as f:
        for begin, end, key, dtype, shape in spans:
            f.seek(start + begin)
            raw = bytearray(f.read(end - begin))
            state[key] = torch.frombuffer(raw, dtype=dtype).reshape(shape) if raw \
                else torch.empty(shape, dtype=dtype)
    return state


def _load(path: Path, trust: bool):
    try:
        # (torch's own advice: the errors below say what to do) timm's train.py, which the
        # Spikformer family trains with, saves its argparse Namespace beside the weights: data
        with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as err:  # torch.load raises many types on damaged files
        text = " ".join(str(err).split())
        if not trust and _NEEDS_CODE.search(text):
            found = re.search(r"GLOBAL (\S+)", text)
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(f"{path}: the file holds pickled Python objects{what}; "
                                  "unpickling runs code, so it is loaded only when trusted "
                                  "(--trust-checkpoint)") from None
        if not trust and "TorchScript" in text:
            raise CheckpointError(f"{path}: a TorchScript archive runs code when loaded; it is "
                                  "loaded only when trusted (--trust-checkpoint)") from None
        detail = text.split(". ")[0][:200]
        raise FormatError(f"{path}: cannot read it as a PyTorch checkpoint (corrupt or "
                          f"truncated?): {type(err).__name__}" + (f": {detail}" if detail else "")
                          ) from None


def _unwrap(obj, path: Path) -> dict:
    """Descend through modules and ``state_dict`` / ``model`` entries to the state_dict."""
    while True:
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            raise FormatError(f"{path}: holds a {type(obj).__name__}, not a state_dict")
        key = next((k for k in _CONTAINER_KEYS
                    if isinstance(obj.get(k), (Mapping, nn.Module))), None)
        if key is None:
            return dict(obj)
        obj = obj[key]


#: what wrappers put before every key: DataParallel / DistributedDataParallel, torch.compile
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _strip_prefix(state: dict) -> dict:
    """The keys without the prefixes wrappers put on all of them (nested in any order: a
    compiled DistributedDataParallel model's ``module._orig_mod.``)."""
    while state:
        prefix = next((p for p in _WRAPPER_PREFIXES
                       if all(isinstance(k, str) and k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def under_one_attribute(state: dict, expected, path: Path, say: bool = False) -> dict:
    """A training framework's checkpoint of a module that holds the model as an attribute
    (PyTorch Lightning's ``self.model``: keys ``model.features.0.weight``): when none of the
    model's keys is in ``state`` and all of them are the keys under one first name, those keys
    without it (the other attributes', a loss's, left out); two such names (a model and its
    EMA copy) are refused, naming both."""
    if expected is None or any(k in state for k in expected):
        return state
    fits = {}
    for head in sorted({k.split(".", 1)[0] for k in state if isinstance(k, str) and "." in k}):
        under = {k[len(head) + 1:]: v for k, v in state.items() if k.startswith(f"{head}.")}
        if under.keys() == expected.keys():
            fits[head] = under
    if len(fits) > 1:
        raise CheckpointError(f"{path}: the model's weights are under each of "
                              f"{', '.join(repr(h + '.') for h in fits)}; save the state_dict "
                              "of the one to compile")
    if not fits:
        return state
    (head, under), = fits.items()
    if say:
        others = len(state) - len(under)
        warn(f"{path}: the model's weights are the keys under '{head}.' (a training module "
             f"holding the model as its attribute '{head}')"
             + (f"; {others} other keys left out" if others else ""))
    return under


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], arch: str) -> nn.Module:
    """Load ``state_dict`` into ``model`` only if keys and shapes match exactly; otherwise
    raise CheckpointError listing missing, unexpected and mis-shaped keys (and likely renames:
    a missing key and an unexpected one of the same shape and a similar name).

    An architecture whose official checkpoints are not the model's own shape (Auto-Spikformer's
    supernets: its zoo entry's ``adapt_state_dict``) is adapted first, saying what changed."""
    state_dict = adapt(model, state_dict, arch)
    expected = model.state_dict()
    _mismatch(expected, state_dict, arch)
    if any(t.is_meta for t in expected.values()):  # built without storage: take the tensors
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state_dict.items()},
                              strict=True, assign=True)
    else:
        model.load_state_dict(state_dict, strict=True)
    return model


def _adapter(arch: str):
    from .zoo import ZOO

    return getattr(ZOO.get(arch), "adapt_state_dict", None)


def adapt(model: nn.Module, state_dict: Mapping[str, torch.Tensor], arch: str
          ) -> Mapping[str, torch.Tensor]:
    """``state_dict`` as the zoo entry ``arch``'s ``adapt_state_dict`` makes it fit ``model``
    (each note it returns becomes a warning), or unchanged for the other architectures."""
    fn = _adapter(arch)
    if fn is None:
        return state_dict
    state_dict, notes = fn(state_dict, model)
    for note in notes:
        warn(f"{arch}: {note}")
    return state_dict


def _mismatch(expected: Mapping, state_dict: Mapping, arch: str) -> None:
    """CheckpointError listing missing, unexpected and mis-shaped keys (values need only a
    ``shape``)."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [k for k in expected if k in state_dict
                 and tuple(state_dict[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or misshaped:
        renames = _renames(missing, unexpected, expected, state_dict)
        parts = [f"key '{old}' is missing; checkpoint has '{new}' instead"
                 for old, new in renames[:_LISTED]]
        for old, new in renames:
            missing.remove(old)
            unexpected.remove(new)
        parts += [_more(len(renames), "renamed keys"),
                  _listing("missing keys", missing), _listing("unexpected keys", unexpected)]
        parts += [f"key '{k}' has shape {tuple(state_dict[k].shape)} in the checkpoint but "
                  f"{tuple(expected[k].shape)} in the model" for k in misshaped[:_LISTED]]
        parts.append(_more(len(misshaped), "keys of another shape"))
        fits = _fitting_architectures(state_dict, arch)
        if fits:
            parts.append(f"it fits architecture {', '.join(repr(a) for a in fits)}")
        raise CheckpointError(f"checkpoint does not fit architecture '{arch}': "
                              + "; ".join(p for p in parts if p))


def _more(count: int, what: str) -> str:
    return f"and {count - _LISTED} more {what}" if count > _LISTED else ""


def _fitting_architectures(state_dict: Mapping, arch: str) -> list[str]:
    """The zoo architectures other than ``arch`` (when it is one) whose keys and shapes are the
    checkpoint's, built on the meta device (the whole zoo in about 0.5 s)."""
    from .zoo import ZOO, build

    if arch not in ZOO:
        return []
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    fits = []
    for name in ZOO:
        if name == arch or _adapter(name) is not None:
            continue
        with torch.device("meta"):
            model = build(name)
        if {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes:
            fits.append(name)
    return fits


def _renames(missing, unexpected, expected, state_dict) -> list[tuple[str, str]]:
    pairs, left = [], list(unexpected)
    for key in missing:
        same_shape = [u for u in left
                      if tuple(state_dict[u].shape) == tuple(expected[key].shape)]
        best = difflib.get_close_matches(key, same_shape, n=1, cutoff=0.6)
        if best:
            pairs.append((key, best[0]))
            left.remove(best[0])
    return pairs


def _listing(what: str, keys: list[str]) -> str:
    if not keys:
        return ""
    shown = ", ".join(f"'{k}'" for k in keys[:_LISTED])
    more = f" and {len(keys) - _LISTED} more" if len(keys) > _LISTED else ""
    return f"{what} ({len(keys)}): {shown}{more}"


def from_checkpoint(path: str | Path, arch: str, trust: bool = False,
                    **overrides) -> tuple[nn.Module, Graph]:
    """Build the zoo architecture ``arch`` (constructor ``overrides``, e.g. ``T``), load the
    checkpoint into it strictly, and trace it: returns (model in eval mode, graph)."""
    from .zoo import build

    if overrides.get("T") is not None:
        overrides["T"] = positive_int(overrides["T"], "T (time steps)")
    with torch.device("meta"):  # no random initialisation the checkpoint then overwrites
        model = build(arch, **overrides)
    if _adapter(arch) is None:
        state = load_state_dict(path, trust, model.state_dict(), arch)
    else:  # a supernet checkpoint: checked against the model once adapted to it
        state = adapt(model, load_state_dict(path, trust, None, arch), arch)
        expected = model.state_dict()
        state = {k: _exact_cast(Path(path), k, v, expected[k].dtype) if k in expected else v
                 for k, v in state.items()}
    load_into(model, state, arch)  # built on meta: the model takes state's tensors, no copy
    return model.eval(), _trace_at(model, arch, overrides, state)


def _trace_at(model: nn.Module, arch: str, overrides: dict, state: Mapping) -> Graph:
    """The graph of ``model``. Tracing runs the model over all its T steps and keeps every
    value, but the IR is per step: when T is raised above the architecture's own, the model is
    traced at its own T and T + 1, and if the two graphs differ only in T that graph is used
    with the requested T; otherwise the full trace's memory is estimated first."""
    from .zoo import ZOO, build

    entry, T = ZOO.get(arch), overrides.get("T")
    if entry is None or T is None or T <= entry.T + 1:
        return from_model(model, arch, share_weights=True)
    graphs = []
    for t in (entry.T, entry.T + 1):
        small = build(arch, **{**overrides, "T": t})
        try:
            load_into(small, state, arch)
        except CheckpointError:
            break
        graphs.append(from_model(small.eval(), arch, share_weights=True))
    if len(graphs) == 2 and _same_but_T(*graphs):
        graphs[0].meta["T"] = T
        return graphs[0]
    per_step = sum(nbytes(n.shape, 1) for n in (graphs[0] if graphs else
                                                from_model(build(arch, **{**overrides,
                                                                          "T": entry.T}),
                                                           arch)).nodes.values())
    itemsize = next(model.parameters()).element_size()
    require_fits(per_step * itemsize * (3 if T == 2 else 2) * T,
                 f"tracing '{arch}' over T={T} steps")
    return from_model(model, arch, share_weights=True)


def _same_but_T(a: Graph, b: Graph) -> bool:
    """Whether two graphs are the same apart from meta['T'] (structure and every array)."""
    import json

    import numpy as np

    from snncc.serialize import HEADER, to_bytes_dict

    da, db = to_bytes_dict(a), to_bytes_dict(b)
    ha, hb = (json.loads(bytes(d.pop(HEADER)).decode()) for d in (da, db))
    for h in (ha, hb):
        h["meta"].pop("T", None)
    return ha == hb and da.keys() == db.keys() and all(np.array_equal(da[k], db[k]) for k in da)


def from_model(model: nn.Module, arch: str, share_weights: bool = False) -> Graph:
    """Trace an in-memory model of the zoo architecture ``arch`` on a random example of the
    architecture's input (``[B, C, H, W]`` images, or ``[B, T, C, H, W]`` binary event frames
    for sequence-input (DVS) architectures) with the model's ``T``. ``share_weights``: see
    :func:`~snncc.frontends.tracer.trace` (for a model built here from a checkpoint)."""
    from .zoo import ZOO

    entry = ZOO.get(arch)
    if entry is None:
        raise UnsupportedError(f"unknown zoo architecture '{arch}' (`snncc zoo` lists them)")
    T = int(getattr(model, "T", entry.T))
    batch = 3 if T == 2 else 2  # the tracer tells time and batch axes apart by their sizes
    dtype = next(model.parameters()).dtype
    gen = torch.Generator().manual_seed(0)
    if entry.sequence_input:
        x = (torch.rand((batch, T, *entry.input_shape), generator=gen) < 0.5).to(dtype)
    else:
        x = torch.randn((batch, *entry.input_shape), generator=gen, dtype=dtype)
    graph = trace(model, x, T=T, static=not entry.sequence_input, name=arch,
                  share_weights=share_weights)
    graph.meta["arch"] = arch
    return graph
