"""The image data sets torchvision downloads, read from the files it leaves on disk, without
torchvision and without running code from them.

- CIFAR-10 (``cifar-10-batches-py/``: ``data_batch_1`` .. ``_5``, ``test_batch``,
  ``batches.meta``) and CIFAR-100 (``cifar-100-python/``: ``train``, ``test``, ``meta``; its
  100 fine labels): Python pickles of a dict holding ``data``, uint8 ``[N, 3072]`` (each image
  its red, green and blue planes, 32x32), and the labels. They are unpickled by
  :class:`_ArraysOnly`, which builds dicts, lists, strings, numbers and uint8 numpy arrays and
  refuses any other reference a file makes (a pickle can name any function to call), so a
  forged batch is refused before anything it names runs.
- MNIST, Fashion-MNIST and KMNIST (``<name>/raw/``: ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte``, ``train-...``, each possibly ``.gz``): the IDX format, a
  big-endian header of dimensions and then the bytes. A gzip member is read only up to the
  bytes its header declares (checked against the memory budget first), so a small file that
  inflates without end is refused, not read.

:func:`find_set` recognises a folder (the set's own folder, the ``raw`` folder, or the root
torchvision was given); :func:`read_set` returns the split's images as uint8 ``[N, C, H, W]``,
its labels and the class names. What the caller holds is the split's bytes: 30 MB for CIFAR's
test split, 150 MB for its train split, 7.8 MB / 47 MB for MNIST's.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FormatError, SnnccError
from .limits import require_fits

SPLITS = ("test", "train")


@dataclass(frozen=True)
class _Format:
    name: str  # as torchvision names the data set
    folder: str  # the folder its files are in, below torchvision's root
    files: dict  # split -> the files of that split
    shape: tuple  # (C, H, W)
    classes: int = 10
    labels: str = ""  # pickled sets: the key of the labels
    meta: tuple = ()  # pickled sets: (meta file, key of the class names)
    names: tuple = ()  # IDX sets: the class names (the pickled ones are in their meta file)


_CIFAR10 = _Format("CIFAR-10", "cifar-10-batches-py",
                   {"test": ("test_batch",),
                    "train": tuple(f"data_batch_{i}" for i in range(1, 6))},
                   (3, 32, 32), 10, "labels", ("batches.meta", "label_names"))
_CIFAR100 = _Format("CIFAR-100", "cifar-100-python", {"test": ("test",), "train": ("train",)},
                    (3, 32, 32), 100, "fine_labels", ("meta", "fine_label_names"))
_IDX_FILES = {s: (f"{p}-images-idx3-ubyte", f"{p}-labels-idx1-ubyte")
              for s, p in (("test", "t10k"), ("train", "train"))}
_DIGITS = tuple(str(d) for d in range(10))
_MNISTS = tuple(
    _Format(name, f"{name}/raw", _IDX_FILES, (1, 28, 28), names=names) for name, names in (
        ("MNIST", _DIGITS),
        ("FashionMNIST", ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                          "Shirt", "Sneaker", "Bag", "Ankle boot")),
        ("KMNIST", ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"))))
FORMATS = (_CIFAR10, _CIFAR100) + _MNISTS


def _is_idx(fmt: _Format) -> bool:
    return not fmt.meta


def _present(folder: Path, name: str) -> Path | None:
    """``folder/name`` or, for IDX files, ``folder/name.gz``."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _holds(folder: Path, fmt: _Format) -> bool:
    """Whether ``folder`` holds some split of ``fmt`` (and a pickled set's meta file, which
    tells CIFAR-100's generic file names from any folder's)."""
    if not _is_idx(fmt) and not (folder / fmt.meta[0]).is_file():
        return False
    return any(all(_present(folder, f) for f in files) for files in fmt.files.values())


def _idx_format(folder: Path) -> _Format:
    """The MNIST-like set of IDX files in ``folder``: named by the folder (``FashionMNIST/raw``
    as torchvision lays it out), else MNIST (whose class names are the digits)."""
    name = folder.parent.name if folder.name == "raw" else folder.name
    return next((f for f in _MNISTS if f.name == name), _MNISTS[0])


def find_set(root: Path) -> tuple[_Format, Path] | None:
    """The torchvision set in ``root``: its own folder, torchvision's root holding it, or for
    the MNISTs the folder above ``raw``; None if there is none, an error if several."""
    found = {}
    for fmt in (_CIFAR10, _CIFAR100):
        for folder in (root, root / fmt.folder):
            if folder.is_dir() and _holds(folder, fmt):
                found[folder] = fmt
    for folder in (root, root / "raw", *(root / f.folder for f in _MNISTS)):
        if folder.is_dir() and _holds(folder, _MNISTS[0]):
            found[folder] = _idx_format(folder)
    if len(found) > 1:
        listed = ", ".join(f"{fmt.name} in {folder}" for folder, fmt in found.items())
        raise SnnccError(f"{root} holds several data sets ({listed}): give the folder of one")
    return next(((fmt, folder) for folder, fmt in found.items()), None)


def read_set(fmt: _Format, folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, list]:
    """``(x, y, class names)`` of ``split``: x uint8 [N, C, H, W], y int64 [N]."""
    files = [_present(folder, f) for f in fmt.files[split]]
    if None in files:
        missing = [f for f, p in zip(fmt.files[split], files) if p is None]
        raise SnnccError(f"{folder}: the {fmt.name} {split} split needs {', '.join(missing)}")
    if _is_idx(fmt):
        x = _idx(files[0], 3)
        y = _idx(files[1], 1)
        names = list(fmt.names)
        x = x[:, None]
    else:
        parts = [_batch(p, fmt) for p in files]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        names = _class_names(folder, fmt)
    if x.shape[1:] != fmt.shape:
        raise FormatError(f"{files[0]}: images of shape {list(x.shape[1:])}, not "
                          f"{fmt.name}'s {list(fmt.shape)}")
    if len(y) != len(x):
        raise FormatError(f"{folder}: {len(x)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() >= len(names)):
        raise FormatError(f"{folder}: a label outside 0..{len(names) - 1} ({fmt.name} has "
                          f"{len(names)} classes)")
    return x, y.astype(np.int64), names


# --------------------------------------------------------------------------- pickled batches

def _reconstruct_empty(cls, shape, dtype):
    """numpy's ``_reconstruct``, as numpy pickles an array: an empty array whose data the
    pickle then sets (so a forged shape cannot make it allocate)."""
    if cls is not np.ndarray or tuple(shape) != (0,):
        raise pickle.UnpicklingError("an array reconstructed other than as numpy pickles one")
    return np.ndarray.__new__(np.ndarray, (0,), dtype)


def _latin1_bytes(text, encoding):
    """``_codecs.encode``, as Python 3 pickles bytes in protocol 2 (numpy's array data)."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("bytes encoded other than as pickle encodes them")
    return text.encode("latin1")


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays; any other global a pickle
    names (a function to call, a class to build) is refused before it is looked up."""

    GLOBALS = {("numpy.core.multiarray", "_reconstruct"): _reconstruct_empty,
               ("numpy._core.multiarray", "_reconstruct"): _reconstruct_empty,
               ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _latin1_bytes}

    def find_class(self, module, name):
        try:
            return self.GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a data batch does "
                                         "not hold (not run)") from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("it refers to an object outside the file")


def _unpickle(path: Path) -> object:
    require_fits(path.stat().st_size * 2, f"{path} ({path.stat().st_size} bytes, unpickled)")
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, struct.error, MemoryError, RecursionError) as e:
        raise FormatError(f"{path}: not a readable data batch pickle "
                          f"({' '.join(str(e).split()) or type(e).__name__})") from None


def _batch(path: Path, fmt: _Format) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(path)
    if not isinstance(d, dict) or "data" not in d or fmt.labels not in d:
        keys = sorted(map(str, d)) if isinstance(d, dict) else type(d).__name__
        raise FormatError(f"{path}: a {fmt.name} batch is a dict with 'data' and "
                          f"'{fmt.labels}'; found {keys}")
    data, labels = d["data"], d[fmt.labels]
    size = int(np.prod(fmt.shape))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != size:
        what = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else \
            type(data).__name__
        raise FormatError(f"{path}: 'data' is {what}, not uint8 [N, {size}]")
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise FormatError(f"{path}: '{fmt.labels}' is not a list of integers")
    return data.reshape((-1,) + fmt.shape), np.asarray(labels, dtype=np.int64)


def _class_names(folder: Path, fmt: _Format) -> list:
    """The class names in the set's meta file (which :func:`find_set` found beside it)."""
    meta_file, key = fmt.meta
    path = folder / meta_file
    meta = _unpickle(path)
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != fmt.classes or \
            not all(isinstance(n, str) for n in names):
        raise FormatError(f"{path}: '{key}' is not a list of {fmt.classes} class names")
    return names


# --------------------------------------------------------------------------- IDX files

_IDX_UBYTE = 0x08


def _idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions (``.gz`` or not)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\0\0" or head[2] != _IDX_UBYTE or head[3] != ndim:
                raise FormatError(f"{path}: not an IDX file of unsigned bytes with {ndim} "
                                  f"dimension(s) (magic {head.hex() or 'missing'})")
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise FormatError(f"{path}: truncated IDX header")
            dims = struct.unpack(f">{ndim}I", dims_raw)
            need = int(np.prod(dims, dtype=object))
            require_fits(need, f"{path} (IDX {list(dims)})")
            data = f.read(need)
            extra = f.read(1)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise FormatError(f"{path}: not a readable IDX file ({' '.join(str(e).split())})") \
            from None
    if len(data) < need or extra:
        raise FormatError(f"{path}: its header declares {list(dims)} ({need} bytes) but it "
                          f"holds {'fewer' if len(data) < need else 'more'}")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)
