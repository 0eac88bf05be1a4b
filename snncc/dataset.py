"""Checking a whole labelled data set: streamed in batches, aggregated over the set, sharded over
processes with torchrun, resumable.

- :func:`open_dataset` turns a spec into a :class:`Dataset` that yields batches in the IR layout:
  ``digits`` / ``digits:test`` / ``digits:train`` (built in, scikit-learn's 8x8 digits), a
  ``.npz`` with ``x`` ([N, ...] per sample) and ``y`` ([N] class indices), read per batch
  (memory-mapped when the member is stored, streamed from the zip member when compressed), or a
  folder in torchvision's ImageFolder layout (one sub-folder per class, sorted names = class
  indices), decoded with Pillow, resized to the model's input and normalised; or such a folder
  of one array per sample (``.npy``, or ``.npz`` with ``frames`` as spikingjelly saves the
  event frames of DVS128 Gesture or CIFAR10-DVS, ``[T, C, H, W]``), read without unpickling;
  or the files torchvision downloads for CIFAR-10/100 and the MNISTs
  (:mod:`snncc.torchvision_sets`), held as uint8 and transformed as an image folder's images.
- :class:`DatasetCheck` accumulates what :func:`snncc.parity.check_parity` gives per batch into
  integer counts (correct / agreeing predictions per engine, equal and emitted spikes per layer,
  spike-count dot products) plus the worst samples, so the report over the set is exact, the
  same whatever the batches are split into processes, and its state is a few numbers per layer.
- :func:`check_dataset` is the loop: compile once, emit the artifact once, stream the batches of
  this process's shard, checkpoint every N batches (``resume``), reduce over the ranks of a
  ``torch.distributed`` job, and return a :class:`DatasetReport` (rank 0's is the one to write).

Memory: one batch of inputs, the three engines' recorded runs of that batch (what ``snncc
check`` on one batch needs, refused up front by the memory budget when it cannot fit), the
model, and O(layers + worst samples) of statistics. The image folder's list of files (a path
and a label per image) and the labels of a ``.npz`` are the only parts that grow with the set:
about 100 bytes and 8 bytes per sample; a torchvision set is held whole, as its files hold it
(one byte per pixel: 30 MB for CIFAR's test split).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import struct
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from . import ir
from .errors import FormatError, NoInputShapeError, SnnccError
from .limits import fmt_bytes, max_memory, nbytes, positive_int, require_fits
from .progress import report_to
from .torchvision_sets import SPLITS, find_set, read_set

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff",
                  ".webp")
ARRAY_SUFFIXES = (".npy", ".npz")
WORST = 10  # worst samples kept in a report


# --------------------------------------------------------------------------- data sets
@dataclass
class Batch:
    index: int  # batch number in the whole (limited) set
    start: int  # index of its first sample in the set
    x: np.ndarray  # IR layout: [B, ...] static, [T, B, ...] sequence
    y: np.ndarray  # [B] int64 labels


class Dataset:
    """Samples ``0 .. len-1`` read ``batch`` at a time; :meth:`batches` yields a shard's."""

    name: str = ""
    classes: int | None = None

    def __init__(self, graph, n: int, batch: int, limit: int | None):
        self.graph = graph
        self.batch = positive_int(batch, "--batch")
        if limit is not None:
            n = min(n, positive_int(limit, "--limit"))
        if n < 1:
            raise SnnccError(f"data set {self.name} holds no samples")
        self.n = n
        (self.inp,) = graph.inputs
        T = int(graph.meta.get("T", 1))
        self.sample_shape = self.inp.input_shape if self.inp.static else (T,) + \
            self.inp.input_shape
        require_fits(nbytes((self.batch,) + self.sample_shape) * 4,
                     f"a batch of {self.batch} samples of shape {self.sample_shape}")

    def __len__(self) -> int:
        return self.n

    def limit_batch(self, batch: int) -> None:
        """Read at most ``batch`` samples at a time (fewer than opened with)."""
        self.batch = min(self.batch, positive_int(batch, "batch"))

    @property
    def num_batches(self) -> int:
        return -(-self.n // self.batch)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Samples [start, stop) as ([B, *sample_shape] float64, [B] labels)."""
        raise NotImplementedError

    def batches(self, rank: int = 0, world: int = 1, skip: int = 0) -> Iterator[Batch]:
        """The batches ``b`` with ``b % world == rank`` (the shard), less the first ``skip`` of
        them (already counted by a resumed run)."""
        mine = range(rank, self.num_batches, world)
        for b in list(mine)[skip:]:
            start, stop = b * self.batch, min(self.n, (b + 1) * self.batch)
            x, y = self.read(start, stop)
            x = np.asarray(x, dtype=np.float64)
            if not np.isfinite(x).all():
                bad = start + int(np.flatnonzero((~np.isfinite(x.reshape(len(x), -1))).any(1))[0])
                raise FormatError(f"{self.name}: sample {bad} contains NaN or infinity")
            if not self.inp.static:
                x = np.swapaxes(x, 0, 1)  # [B, T, ...] -> [T, B, ...]
            yield Batch(b, start, np.ascontiguousarray(x), np.asarray(y).ravel())

    def close(self) -> None:
        pass


class DigitsDataset(Dataset):
    def __init__(self, graph, split: str, batch: int, limit: int | None):
        from snncc.frontends.digits import digits_split

        self.name = f"digits:{split}"
        (inp,) = graph.inputs
        shape = inp.input_shape
        if not inp.static or len(shape) != 3 or shape[0] != 1 or shape[1] != shape[2] \
                or shape[1] % 8:
            raise SnnccError(f"--dataset digits needs a model taking one-channel square images "
                             f"whose side is a multiple of 8, not input {list(shape)}"
                             f"{'' if inp.static else ' sequences'}")
        train, test = digits_split(size=shape[1])
        self.x, self.y = train if split == "train" else test
        self.classes = 10
        super().__init__(graph, len(self.y), batch, limit)

    def read(self, start, stop):
        return self.x[start:stop], self.y[start:stop]


class _NpzMember:
    """One ``.npy`` member of a ``.npz``, read by rows without loading it: memory-mapped by
    offset when stored uncompressed (np.savez), else read from the zip member's stream (a
    forward seek when the batches are read in order, as they are)."""

    def __init__(self, path: Path, zf: zipfile.ZipFile, name: str):
        self.path, self.zf, self.name = path, zf, name
        info = zf.getinfo(name)
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            self.shape, fortran, self.dtype = np.lib.format._read_array_header(f, version)
            self.header = f.tell()
        if fortran and len(self.shape) > 1:
            raise FormatError(f"{path}: '{name}' is stored in Fortran order; save it C-ordered "
                              "(np.ascontiguousarray) to stream it")
        if self.dtype.hasobject:
            raise FormatError(f"{path}: '{name}' holds Python objects, not numbers")
        self.row = nbytes(self.shape[1:], self.dtype.itemsize)
        need = nbytes(self.shape, self.dtype.itemsize)
        if info.file_size < self.header + need:
            raise FormatError(f"{path}: '{name}' declares shape {self.shape} but holds fewer "
                              "bytes (truncated or forged)")
        self.memmap = None
        self.stream = None
        if info.compress_type == zipfile.ZIP_STORED and need:
            with open(path, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)
            if local[:4] != b"PK\x03\x04":
                raise FormatError(f"{path}: corrupt zip local header for '{name}'")
            n, e = struct.unpack("<HH", local[26:30])
            offset = info.header_offset + 30 + n + e + self.header
            self.memmap = np.memmap(path, dtype=self.dtype, mode="r", offset=offset,
                                    shape=tuple(self.shape))

    def rows(self, start: int, stop: int) -> np.ndarray:
        if self.memmap is not None:
            return np.array(self.memmap[start:stop])
        if self.stream is None or self.stream.tell() > self.header + start * self.row:
            if self.stream is not None:
                self.stream.close()
            self.stream = self.zf.open(self.name)
        self.stream.seek(self.header + start * self.row)
        data = self.stream.read((stop - start) * self.row)
        return np.frombuffer(bytearray(data), dtype=self.dtype).reshape((stop - start,) + self.shape[1:])

    def close(self):
        if self.stream is not None:
            self.stream.close()
        self.memmap = None


class NpzDataset(Dataset):
    def __init__(self, graph, path: Path, batch: int, limit: int | None):
        self.name = str(path)
        try:
            self.zf = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as e:
            raise FormatError(f"{path}: not a readable .npz ({e})") from None
        names = set(self.zf.namelist())
        missing = [k for k in ("x", "y") if f"{k}.npy" not in names]
        if missing:
            raise FormatError(f"{path}: a data set .npz needs arrays 'x' and 'y'; missing "
                              f"{missing} (has {sorted(n[:-4] for n in names)})")
        try:
            self.x = _NpzMember(path, self.zf, "x.npy")
            self.y = _NpzMember(path, self.zf, "y.npy")
        except (ValueError, EOFError, SyntaxError, TypeError, zipfile.BadZipFile) as e:
            raise FormatError(f"{path}: unreadable array header ({e})") from None
        if self.x.dtype.kind not in "biuf":
            raise FormatError(f"{path}: x has dtype {self.x.dtype}, not real numbers")
        if len(self.y.shape) != 1 or not self.x.shape or self.x.shape[0] != self.y.shape[0]:
            raise FormatError(f"{path}: x {self.x.shape} and y {self.y.shape} must be [N, ...] "
                              "and [N] with the same N")
        super().__init__(graph, self.y.shape[0], batch, limit)
        if tuple(self.x.shape[1:]) != tuple(self.sample_shape):
            raise FormatError(f"{path}: x holds samples of shape {list(self.x.shape[1:])}; the "
                              f"model takes {list(self.sample_shape)} per sample"
                              + ("" if self.inp.static else " ([T, ...] per sample)"))
        from .parity import check_labels, output_classes

        # held whole (8 bytes a sample) and checked up front: a bad label is named by its
        # index in the set (a batch's check named it by its index in the batch, as --labels')
        self.labels = check_labels(self.y.rows(0, self.n), self.n, output_classes(graph),
                                   f"{path}: y")
        self.y.close()

    def read(self, start, stop):
        return self.x.rows(start, stop), self.labels[start:stop]

    def close(self):
        self.x.close()
        self.zf.close()


def parse_transform(options: list[str] | None) -> dict:
    """``--transform`` options: ``mean=0.5`` or ``mean=0.485,0.456,0.406``, ``std=...``,
    ``scale=255`` (pixel value divided by it first), ``resize=H,W`` (default: the model's)."""
    out: dict = {}
    for opt in options or []:
        key, sep, value = opt.partition("=")
        key = key.strip()
        if not sep or key not in ("mean", "std", "scale", "resize"):
            raise SnnccError(f"--transform '{opt}' is not one of mean=..., std=..., scale=..., "
                             "resize=H,W")
        try:
            nums = [float(v) for v in value.split(",")]
        except ValueError:
            raise SnnccError(f"--transform '{opt}': '{value}' is not comma-separated "
                             "numbers") from None
        if key == "resize" and (len(nums) != 2 or min(nums) < 1 or any(v % 1 for v in nums)):
            raise SnnccError(f"--transform '{opt}': resize takes two positive whole numbers H,W")
        if key in ("std", "scale") and min(nums) <= 0:
            raise SnnccError(f"--transform '{opt}': {key} must be positive")
        out[key] = [int(v) for v in nums] if key == "resize" else nums
    return out


def _class_folders(root: Path) -> list[str]:
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir()
                     and not d.name.startswith("."))
    if not classes:
        raise FormatError(f"{root}: an image or array folder needs one sub-folder per class; "
                          "it has none")
    return classes


def _class_files(root: Path, classes: list[str], suffixes: tuple) -> tuple[list, list]:
    """(files, labels): the files of each class folder ending in ``suffixes``, sorted, the
    label the index of their folder among the sorted class folders."""
    files, labels = [], []
    for k, c in enumerate(classes):
        names = sorted(e.name for e in os.scandir(root / c) if e.is_file()
                       and e.name.lower().endswith(suffixes))
        files += [os.path.join(root, c, n) for n in names]
        labels += [k] * len(names)
    return files, labels


class _ClassFolder(Dataset):
    """One sub-folder per class (sorted names: class indices), one file per sample."""

    def __init__(self, graph, root: Path, batch: int, limit: int | None, classes: list[str],
                 suffixes: tuple, what: str):
        self.name = str(root)
        self.files, self.labels = _class_files(root, classes, suffixes)
        if not self.files:
            raise FormatError(f"{root}: no {what} ({', '.join(suffixes)}) in its "
                              f"{len(classes)} class folder(s)")
        self.classes = len(classes)
        self.class_names = classes
        super().__init__(graph, len(self.files), batch, limit)

    def decode(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def read(self, start, stop):
        return (np.stack([self.decode(i) for i in range(start, stop)]),
                np.asarray(self.labels[start:stop], dtype=np.int64))


class ArrayFolderDataset(_ClassFolder):
    """One ``.npy`` (or ``.npz``: its ``frames``, or its only array) per sample, of the model's
    per-sample shape (``[T, ...]`` for a sequence model): spikingjelly's event frames."""

    def __init__(self, graph, root: Path, batch: int, limit: int | None, classes: list[str]):
        super().__init__(graph, root, batch, limit, classes, ARRAY_SUFFIXES, "arrays")

    def decode(self, i: int) -> np.ndarray:
        from .files import load_array

        path = Path(self.files[i])
        a = load_array(path) if path.suffix.lower() == ".npy" else self._npz_sample(path)
        if tuple(a.shape) != tuple(self.sample_shape):
            raise FormatError(self._shape_error(path, a.shape))
        return a.astype(np.float64)

    def _shape_error(self, path: Path, shape) -> str:
        return (f"{path}: a sample of shape {list(shape)}; the model takes "
                f"{list(self.sample_shape)} per sample"
                + ("" if self.inp.static else " ([T, ...] per sample)"))

    def _npz_sample(self, path: Path) -> np.ndarray:
        """Its ``frames`` or its only array, the header checked (shape, objects, size) before
        any data is read."""
        try:
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n.endswith(".npy")]
                name = "frames.npy" if "frames.npy" in names else \
                    names[0] if len(names) == 1 else None
                if name is None:
                    raise FormatError(f"{path}: a sample .npz needs an array 'frames' or "
                                      f"exactly one array; it has {[n[:-4] for n in names]}")
                member = _NpzMember(path, zf, name)
                try:
                    if tuple(member.shape) != tuple(self.sample_shape):
                        raise FormatError(self._shape_error(path, member.shape))
                    if member.dtype.kind not in "biuf":
                        raise FormatError(f"{path}: dtype {member.dtype}, not real numbers")
                    return member.rows(0, member.shape[0])
                finally:
                    member.close()
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise FormatError(f"{path}: not a readable .npz ({' '.join(str(e).split())})") \
                from None


class _Normalised:
    """``--transform`` for a model taking static ``[C, H, W]`` images of 1 or 3 channels:
    pixels resized (Pillow, bilinear) to the model's input, divided by ``scale`` and
    normalised by ``mean`` / ``std`` per channel."""

    def _setup(self, graph, transform: dict | None, what: str, shape: tuple | None = None):
        """``shape``: the images' (C, H, W) where the model takes them flattened."""
        (inp,) = graph.inputs
        shape = shape or inp.input_shape
        if not inp.static or len(shape) != 3 or shape[0] not in (1, 3):
            raise SnnccError(f"{what} needs a model taking static [C, H, W] images with 1 or 3 "
                             f"channels, not input {list(inp.input_shape)} (a folder of "
                             "per-sample .npy/.npz arrays takes any input)")
        self.C, self.H, self.W = shape
        t = dict(transform or {})
        self.size = tuple(t.get("resize", (self.H, self.W)))
        if self.size != (self.H, self.W):
            raise SnnccError(f"--transform resize={self.size[0]},{self.size[1]} differs from "
                             f"the model's input {self.H}x{self.W}")
        self.scale = t.get("scale", [255.0])[0]
        self.mean = self._per_channel(t.get("mean", [0.0]), "mean")
        self.std = self._per_channel(t.get("std", [1.0]), "std")

    def _per_channel(self, v, what):
        if len(v) not in (1, self.C):
            raise SnnccError(f"--transform {what} has {len(v)} values for {self.C} channel(s)")
        return np.asarray(v, dtype=np.float64).reshape(-1, 1, 1)

    def _resized(self, im):
        """A Pillow image at the model's input size, as a float64 [C, H, W] array."""
        from PIL import Image

        if im.size != (self.W, self.H):
            im = im.resize((self.W, self.H), Image.BILINEAR)
        a = np.asarray(im, dtype=np.float64)
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)

    def _normalise(self, a: np.ndarray) -> np.ndarray:
        return (a / self.scale - self.mean) / self.std


class ImageFolderDataset(_Normalised, _ClassFolder):
    def __init__(self, graph, root: Path, batch: int, limit: int | None, classes: list[str],
                 transform: dict | None = None):
        self._setup(graph, transform, "an image folder")
        super().__init__(graph, root, batch, limit, classes, IMAGE_SUFFIXES, "images")

    def decode(self, i: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.files[i]) as im:
                a = self._resized(im.convert("L" if self.C == 1 else "RGB"))
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            # (the last: a header declaring more pixels than Pillow decodes, 1.8e8)
            raise FormatError(f"{self.files[i]}: not a readable image "
                              f"({' '.join(str(e).split())})") from None
        return self._normalise(a)


class TorchvisionDataset(_Normalised, Dataset):
    """CIFAR-10, CIFAR-100, MNIST, Fashion-MNIST or KMNIST in the files torchvision downloads
    (:mod:`snncc.torchvision_sets`), held as uint8 and transformed batch by batch as an image
    folder's images are; flattened for a model taking ``[C*H*W]`` vectors (snnTorch's
    tutorials' MNIST networks)."""

    def __init__(self, graph, fmt, folder: Path, split: str, batch: int, limit: int | None,
                 transform: dict | None = None):
        self.name = f"{fmt.name} {split} ({folder})"
        (inp,) = graph.inputs
        self.flat = tuple(inp.input_shape) == (int(np.prod(fmt.shape)),)
        self._setup(graph, transform, f"{fmt.name}", fmt.shape if self.flat else None)
        if self.C != fmt.shape[0]:
            raise SnnccError(f"{fmt.name} has {fmt.shape[0]}-channel images; the model takes "
                             f"{self.C} channel(s)")
        self.x, self.y, self.class_names = read_set(fmt, folder, split)
        self.classes = len(self.class_names)
        super().__init__(graph, len(self.y), batch, limit)

    def read(self, start, stop):
        from PIL import Image

        x = self.x[start:stop]
        if x.shape[2:] != (self.H, self.W):
            x = [self._resized(Image.fromarray(a[0] if self.C == 1 else a.transpose(1, 2, 0)))
                 for a in x]
        x = self._normalise(np.asarray(x, dtype=np.float64))
        return (x.reshape(len(x), -1) if self.flat else x), self.y[start:stop]


#: Samples per batch of a data-set check, at most, unless told: fewer where the memory budget
#: does not hold the check of so many (15M Meta-SpikeFormer at 224x224 in float64, under the
#: default budget of half of 24 GB: 10).
DEFAULT_BATCH = 64


def open_dataset(spec: str, graph, *, batch: int = DEFAULT_BATCH, limit: int | None = None,
                 transform: dict | list[str] | None = None) -> Dataset:
    """The data set named by ``spec`` for ``graph``'s input: ``digits[:test|train]``, a
    ``.npz`` path, the folder of a torchvision download (``[:test|train]``), or a class-folder
    directory of images or of per-sample arrays (arrays where its folders hold no image). Bad
    specs raise a one-line error."""
    if len(graph.inputs) != 1:
        raise SnnccError(f"a data-set check takes models with one input; "
                         f"'{graph.name}' has {len(graph.inputs)}")
    if isinstance(transform, list):
        transform = parse_transform(transform)
    if spec == "digits" or spec.startswith("digits:"):
        if transform:
            raise SnnccError(_TRANSFORM_OF_IMAGES)
        split = spec.partition(":")[2] or "test"
        if split not in ("test", "train"):
            raise SnnccError(f"--dataset {spec}: the digits split is 'test' or 'train'")
        return DigitsDataset(graph, split, batch, limit)
    path, split, found = _torchvision_set(spec)
    if found:
        return TorchvisionDataset(graph, *found, split or "test", batch, limit, transform)
    if split:
        raise SnnccError(f"--dataset {spec}: a split (':{split}') is taken by digits and the "
                         "torchvision sets (CIFAR-10/100, MNIST, Fashion-MNIST, KMNIST) only")
    if transform and not path.is_dir():
        raise SnnccError(_TRANSFORM_OF_IMAGES)
    if path.is_dir():
        classes = _class_folders(path)
        if not _class_files(path, classes, IMAGE_SUFFIXES)[0] and \
                _class_files(path, classes, ARRAY_SUFFIXES)[0]:
            if transform:
                raise SnnccError(_TRANSFORM_OF_IMAGES)
            return ArrayFolderDataset(graph, path, batch, limit, classes)
        return ImageFolderDataset(graph, path, batch, limit, classes, transform)
    if path.suffix == ".npz":
        if not path.is_file():
            raise SnnccError(f"--dataset {spec}: no such file")
        return NpzDataset(graph, path, batch, limit)
    if not path.exists():
        raise SnnccError(f"--dataset {spec}: no such file or folder (expected {_SPECS})")
    raise SnnccError(f"--dataset {spec}: not {_SPECS}")


def input_shapes_of(spec: str) -> list[tuple[int, ...]]:
    """The per-sample input shapes a model may take a data set's images in, most likely
    first, where the model declares none: digits' 1x8x8; a torchvision set's images, then
    flattened (snnTorch's tutorials' MNIST networks); none for others (an image folder's
    images are resized to the model's input, an array's reading is the model's)."""
    if spec == "digits" or spec.startswith("digits:"):
        return [(1, 8, 8)]
    found = _torchvision_set(spec)[2]
    return [found[0].shape, (int(np.prod(found[0].shape)),)] if found else []


def loaded_for(spec: str, load: Callable, log: Callable[[str], None] = lambda s: None):
    """``load(input_shape)`` for a check of the data set ``spec``: ``load(None)``, or where the
    model declares no input shape (:class:`NoInputShapeError`), the first of
    :func:`input_shapes_of` it traces with (the last one's error if none does)."""
    try:
        return load(None)
    except NoInputShapeError:
        shapes = input_shapes_of(spec)
        if not shapes:
            raise
    for i, shape in enumerate(shapes):
        try:
            loaded = load(shape)
        except SnnccError:
            if i == len(shapes) - 1:
                raise
            continue
        log(f"input shape {','.join(map(str, shape))}: the data set's (the model declares none)")
        return loaded


_TRANSFORM_OF_IMAGES = "--transform applies to images (a folder or a torchvision set)"
_SPECS = ("digits, digits:train, a .npz with x and y, an image folder, or the folder of a "
          "torchvision download of CIFAR-10/100 or (Fashion-/K)MNIST")


def _torchvision_set(spec: str) -> tuple[Path, str | None, tuple | None]:
    """(path, split, the torchvision set there or None) of ``folder[:test|train]`` or a plain
    path."""
    head, sep, tail = spec.rpartition(":")
    path, split = (Path(head), tail) if sep and tail in SPLITS and Path(head).is_dir() \
        else (Path(spec), None)
    return path, split, find_set(path) if path.is_dir() else None


# --------------------------------------------------------------------------- statistics
class DatasetCheck:
    """Statistics over many batches, as exact integers (and maxima): adding batches in any
    grouping, or merging the states of shards, gives the same numbers. Holds no batch."""

    def __init__(self, target: str, reference: str, layers: list[tuple[str, str, int]],
                 worst: int = WORST):
        self.target, self.reference = target, reference
        self.layers = layers  # (node, path, neurons) in topological order
        self.worst_k = worst
        self.engines = [reference, "simulator", target]
        self.n = 0
        self.correct = {e: 0 for e in self.engines}
        self.agree = {e: 0 for e in self.engines}  # argmax equal to the reference's
        # per layer: elements compared, equal spikes (sim/ref, tgt/ref, sim/tgt), spikes
        self.elements = {name: 0 for name, _, _ in layers}
        self.equal = {k: {name: 0 for name, _, _ in layers} for k in ("sim", "target",
                                                                       "sim_target")}
        self.spikes = {k: {name: 0 for name, _, _ in layers} for k in ("reference", "sim",
                                                                        "target")}
        self.cos = {k: 0 for k in ("ref_sim", "ref_tgt", "ref_ref", "sim_sim", "tgt_tgt")}
        self.max_diff = {"sim": 0.0, "target": 0.0}
        self.seconds = {e: 0.0 for e in ("reference", "simulator", "target")}
        self.worst: list = []  # (mismatches, max |diff|, -index, record): a min-heap
        self.output_over_steps = False  # parity.compared_outputs: compared at every step

    # ------------------------------------------------------------------ adding
    def add(self, start: int, labels: np.ndarray, details: dict) -> None:
        out, tr = details["outputs"], details["traces"]
        B = len(labels)
        ref_cls = np.argmax(out["reference"], -1)
        preds = {}
        for key, e in (("reference", self.reference), ("simulator", "simulator"),
                       ("target", self.target)):
            cls = np.argmax(out[key], -1)
            preds[e] = cls
            self.correct[e] += int(np.sum(cls == labels))
            self.agree[e] += int(np.sum(cls == ref_cls))
        mism = np.zeros(B, dtype=np.int64)
        cnt = {}
        for name, _, _ in self.layers:
            r, s, t = (tr[k].get(name) for k in ("reference", "simulator", "target"))
            if r is None:
                continue
            self.elements[name] += int(r.size)
            for key, a, b in (("sim", r, s), ("target", r, t), ("sim_target", s, t)):
                if a is not None and b is not None and a.shape == b.shape:
                    eq = a == b
                    self.equal[key][name] += int(np.count_nonzero(eq))
                    if key != "sim_target":
                        mism += (~eq).reshape(eq.shape[0], B, -1).sum((0, 2))
                elif key != "sim_target":
                    mism += r[0].size // B * r.shape[0]
            for key, a in (("reference", r), ("sim", s), ("target", t)):
                if a is not None:
                    self.spikes[key][name] += int(np.count_nonzero(a))
                    cnt.setdefault(key, []).append(np.rint(a.sum(0)).astype(np.int64)
                                                   .reshape(B, -1))
        if cnt.get("reference"):
            c = {k: np.concatenate(v, 1) for k, v in cnt.items()}
            for key, a, b in (("ref_sim", "reference", "sim"), ("ref_tgt", "reference", "target"),
                              ("ref_ref", "reference", "reference"), ("sim_sim", "sim", "sim"),
                              ("tgt_tgt", "target", "target")):
                if a in c and b in c and c[a].shape == c[b].shape:
                    self.cos[key] += int(np.sum(c[a] * c[b]))
        diffs = {}
        later = details.get("later_output_diffs", {})  # the outputs after the first: maxima
        for key, engine in (("sim", "simulator"), ("target", "target")):
            diffs[key] = d = details["output_diffs"][engine]
            self.max_diff[key] = max(self.max_diff[key], float(d.max()) if B else 0.0,
                                     later.get(engine, 0.0))
        self.output_over_steps = bool(details["output_over_steps"])
        for e, s in details.get("seconds", {}).items():
            self.seconds[e] = self.seconds.get(e, 0.0) + float(s)
        for i in range(B):
            disagree = any(preds[e][i] != ref_cls[i] for e in preds)
            if not (mism[i] or disagree):
                continue
            rec = {"index": start + i, "label": int(labels[i]),
                   "spike_mismatches": int(mism[i]),
                   "prediction": {e: int(preds[e][i]) for e in self.engines},
                   "output_max_abs_diff": max(float(diffs["sim"][i]), float(diffs["target"][i]))}
            self._push(rec)
        self.n += B

    def _key(self, rec):
        return (rec["spike_mismatches"], rec["output_max_abs_diff"], -rec["index"])

    def _push(self, rec):
        item = (self._key(rec), rec)
        if len(self.worst) < self.worst_k:
            heapq.heappush(self.worst, item)
        elif item[0] > self.worst[0][0]:
            heapq.heapreplace(self.worst, item)

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        """Everything counted so far, JSON-serialisable (a checkpoint; what ranks reduce)."""
        return {"n": self.n, "correct": self.correct, "agree": self.agree,
                "elements": self.elements, "equal": self.equal, "spikes": self.spikes,
                "cos": self.cos, "max_diff": self.max_diff, "seconds": self.seconds,
                "worst": [rec for _, rec in self.worst],
                "output_over_steps": self.output_over_steps}

    def load(self, state: dict) -> None:
        self.n = 0
        self.merge(state)

    def merge(self, state: dict) -> None:
        """Add another shard's (or an earlier run's) state."""
        self.n += int(state["n"])
        for mine, theirs in ((self.correct, state["correct"]), (self.agree, state["agree"]),
                             (self.elements, state["elements"]), (self.cos, state["cos"])):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + int(v)
        for d, theirs in ((self.equal, state["equal"]), (self.spikes, state["spikes"])):
            for key, per in theirs.items():
                for k, v in per.items():
                    d[key][k] += int(v)
        for k, v in state["max_diff"].items():
            self.max_diff[k] = max(self.max_diff[k], float(v))
        for k, v in state["seconds"].items():
            self.seconds[k] = self.seconds.get(k, 0.0) + float(v)
        for rec in state["worst"]:
            self._push(rec)
        self.output_over_steps |= bool(state.get("output_over_steps", False))

    # ------------------------------------------------------------------ report
    def report(self, **run) -> "DatasetReport":
        def frac(a, b):
            return a / b if b else 1.0

        layers = []
        for name, path, neurons in self.layers:
            n = self.elements[name]
            if not n:
                continue
            layers.append({
                "node": name, "path": path, "neurons": neurons,
                "agreement_sim": frac(self.equal["sim"][name], n),
                "agreement_target": frac(self.equal["target"][name], n),
                "agreement_sim_target": frac(self.equal["sim_target"][name], n),
                "rate_reference": self.spikes["reference"][name] / n,
                "rate_sim": self.spikes["sim"][name] / n,
                "rate_target": self.spikes["target"][name] / n})

        def cosine(ab, aa, bb):
            den = np.sqrt(float(self.cos[aa])) * np.sqrt(float(self.cos[bb]))
            return float(self.cos[ab] / den) if den else float(self.cos[aa] == self.cos[bb])

        engines = {}
        for e in self.engines:
            engines[e] = {"accuracy": frac(self.correct[e], self.n),
                          "agreement_with_reference": frac(self.agree[e], self.n)}
        return DatasetReport(
            target=self.target, reference=self.reference, samples=self.n, engines=engines,
            layers=layers,
            first_divergent_sim=next((r["node"] for r in layers if r["agreement_sim"] < 1), None),
            first_divergent_target=next((r["node"] for r in layers
                                         if r["agreement_target"] < 1), None),
            output_max_abs_diff_sim=self.max_diff["sim"],
            output_max_abs_diff_target=self.max_diff["target"],
            activity_cosine_sim=cosine("ref_sim", "ref_ref", "sim_sim"),
            activity_cosine_target=cosine("ref_tgt", "ref_ref", "tgt_tgt"),
            worst_samples=[rec for _, rec in sorted(self.worst, key=lambda it: it[0],
                                                    reverse=True)],
            output_over_steps=self.output_over_steps,
            run={**run, "engine_seconds": dict(self.seconds)})


@dataclass
class DatasetReport:
    target: str
    reference: str
    samples: int
    engines: dict  # engine -> {accuracy, agreement_with_reference}
    layers: list[dict]
    first_divergent_sim: str | None
    first_divergent_target: str | None
    output_max_abs_diff_sim: float
    output_max_abs_diff_target: float
    activity_cosine_sim: float
    activity_cosine_target: float
    worst_samples: list[dict]
    lossy: bool = False
    dataset: str = ""
    T: int = 0
    batch: int = 0
    dtype: str = "float64"
    output_over_steps: bool = False  # as ParityReport's
    batch_coupled: dict = field(default_factory=dict)  # as ParityReport's
    run: dict = field(default_factory=dict)  # timings, processes, device: not part of equality

    @property
    def min_agreement(self) -> float:
        if self.lossy:
            return min([1.0] + [r["agreement_sim_target"] for r in self.layers])
        return min([1.0] + [min(r["agreement_sim"], r["agreement_target"],
                                r["agreement_sim_target"]) for r in self.layers])

    @property
    def accuracy(self) -> dict[str, float]:
        return {e: v["accuracy"] for e, v in self.engines.items()}

    @property
    def unexplained_output_difference(self) -> str | None:
        """As a check's (:func:`snncc.parity.unexplained_output_difference`), where this run
        checked a batch (``run`` says the target's arithmetic)."""
        from .parity import unexplained_output_difference

        if "target_dtype" not in self.run:
            return None
        return unexplained_output_difference(
            self.target, self.lossy, self.dtype, self.run["target_dtype"], self.min_agreement,
            self.output_max_abs_diff_sim, self.output_max_abs_diff_target,
            self.run["unmatched"])

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {**asdict(self), "min_agreement": self.min_agreement}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def format(self) -> str:
        from .parity import MEAN_PREDICTION, OVER_STEPS, per_sample_reference_note

        lines = [f"data set {self.dataset}: {self.samples} samples, T={self.T}, batch "
                 f"{self.batch}, {self.dtype}; {self.reference} vs simulator vs {self.target}"
                 + ("  [lossy: quantized]" if self.lossy else ""),
                 f"{'engine':<14} {'accuracy':>9} {'agrees with ' + self.reference:>22}"
                 + (MEAN_PREDICTION if self.output_over_steps else "")]
        for e, v in self.engines.items():
            lines.append(f"{e:<14} {v['accuracy']:>9.4f} {v['agreement_with_reference']:>22.4f}")
        lines.append(f"{'layer':<36} {'neurons':>8} {'agree sim':>10} "
                     f"{'agree ' + self.target:>12} {'sim=' + self.target:>10} {'rate ref':>9}")
        for r in self.layers:
            lines.append(f"{r['node']:<36} {r['neurons']:>8} {r['agreement_sim']:>10.6f} "
                         f"{r['agreement_target']:>12.6f} {r['agreement_sim_target']:>10.6f} "
                         f"{r['rate_reference']:>9.4f}")
        lines += [f"first divergent layer: simulator {self.first_divergent_sim or 'none'}, "
                  f"{self.target} {self.first_divergent_target or 'none'}",
                  f"output max |diff|{OVER_STEPS if self.output_over_steps else ''}: simulator "
                  f"{self.output_max_abs_diff_sim:.3g}, {self.target} "
                  f"{self.output_max_abs_diff_target:.3g}"]
        if self.worst_samples:
            lines.append("worst samples (index: spike mismatches, predictions): " + "; ".join(
                f"{w['index']}: {w['spike_mismatches']}, "
                + "/".join(str(p) for p in w['prediction'].values())
                for w in self.worst_samples))
        else:
            lines.append("worst samples: none (every sample agrees everywhere)")
        if (unexplained := self.unexplained_output_difference) is not None:
            lines.append(f"error: {unexplained}")
        if self.batch_coupled:
            lines.append(per_sample_reference_note(self.batch_coupled))
        r = self.run
        if r.get("seconds"):
            lines.append(f"{r['seconds']:.1f} s, {r.get('images_per_second', 0):.1f} images/s "
                         f"on {r.get('processes', 1)} process(es), device {r.get('device')}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- the loop
def _dist():
    """(rank, world, torch.distributed or None): a job launched by torchrun (WORLD_SIZE > 1)
    joins its process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    import torch.distributed as dist

    return dist.get_rank(), dist.get_world_size(), dist


def _init_dist(device: str) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            import torch

            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def _fingerprint(**what) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def checkpoint_path(resume: Path, rank: int, world: int) -> Path:
    """One checkpoint file per shard: ``FILE`` alone, ``FILE.rank{r}-of-{w}`` under torchrun."""
    resume = Path(resume)
    return resume if world == 1 else resume.with_name(f"{resume.name}.rank{rank}-of-{world}")


def _is_checkpoint(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(40).startswith(b'{"snncc": "check-checkpoint"')
    except OSError:
        return False


def _write_checkpoint(path: Path, doc: dict) -> None:
    from .files import Ours, atomic_write

    atomic_write(path, lambda f: json.dump(doc, f), binary=False,
                 replaces=Ours("a checkpoint of snncc check", _is_checkpoint))


class _Progress:
    """A rich progress bar on stderr (images/s, ETA), only on a terminal and on rank 0; the
    progress lines of the runs inside (:mod:`snncc.progress`) are held back meanwhile."""

    def __init__(self, total: int, done: int, enabled: bool, world: int):
        self.bar = None
        self.world = world
        if not enabled:
            return
        self.lines = report_to(None)
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        class Rate(TextColumn):
            def render(self, task):
                speed = task.finished_speed or task.speed
                from rich.text import Text

                return Text(f"{speed:,.1f} images/s" if speed else "- images/s")

        self.bar = Progress(TextColumn("checking"), BarColumn(), MofNCompleteColumn(),
                            Rate(""), TimeElapsedColumn(), TextColumn("ETA"),
                            TimeRemainingColumn(), console=Console(stderr=True),
                            transient=False)
        self.task = self.bar.add_task("check", total=total, completed=done)
        self.bar.start()

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n * self.world)  # the shards advance together

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            report_to(*self.lines)


def check_dataset(loaded, spec: str, *, target: str = "sim", T: int | None = None,
                  batch: int | None = None, limit: int | None = None, transform=None,
                  dtype: str = "float64", passes: list[str] | None = None,
                  artifact: Path | None = None, fixed_point: bool = False, calibrate=None,
                  device: str = "cpu", resume: Path | None = None, checkpoint_every: int = 10,
                  progress: bool = False, worst: int = WORST,
                  on_batch: Callable[[int], None] | None = None,
                  log: Callable[[str], None] = lambda s: None) -> DatasetReport:
    """Check ``loaded`` against the simulator and ``target`` on every sample of the data set
    ``spec`` (see :func:`open_dataset`), ``batch`` samples at a time (by default the largest
    up to :data:`DEFAULT_BATCH` whose check fits the memory budget); under torchrun each rank
    checks every ``world``-th batch and the statistics are reduced onto every rank.
    ``resume``: a checkpoint file (per rank under torchrun) written every ``checkpoint_every``
    batches and on interruption; an existing one from the same run is continued.
    ``on_batch(i)`` is called after each batch this process counted."""
    import tempfile

    from .parity import check_parity, largest_batch, output_classes
    from .pipeline import available_passes, for_target
    from .targets import get_target

    from .simulator import resolve_device

    resolve_device(device)  # refused (DeviceError) before any work
    checkpoint_every = positive_int(checkpoint_every, "--checkpoint-every")
    _init_dist(device)
    rank, world, dist = _dist()
    graph = loaded.graph
    steps = int(T or graph.meta.get("T", 4))
    # opened (a bad spec refused) before the compile; the batch limited once it is known
    data = open_dataset(spec, graph, batch=DEFAULT_BATCH if batch is None else batch,
                        limit=limit, transform=transform)
    if data.classes is not None and data.classes > output_classes(graph):
        raise SnnccError(f"--dataset {data.name}: {data.classes} classes, but the model has "
                         f"{output_classes(graph)} outputs")
    tgt = get_target(target)
    compiled = for_target(tgt.name, passes, fixed_point=fixed_point, calibrate=calibrate,
                          log=lambda s: None).run(graph)
    if batch is None:
        data.limit_batch(largest_batch(loaded, compiled, steps, dtype, DEFAULT_BATCH))
        if data.batch < DEFAULT_BATCH:
            log(f"batch {data.batch}: the largest up to {DEFAULT_BATCH} whose check fits the "
                f"memory budget of {fmt_bytes(max_memory())} (--batch chooses another)")
    reference = "pytorch" if loaded.torch_model is not None else "reference"
    layers = [(n.name, n.path, int(np.prod(n.shape))) for n in graph.topological_order()
              if isinstance(n, ir.Neuron) and n.name in compiled.nodes]  # (as check_parity)
    acc = DatasetCheck(tgt.name, reference, layers, worst)
    fp = _fingerprint(dataset=str(spec), n=len(data), batch=data.batch, target=tgt.name,
                      T=steps, dtype=dtype, passes=passes, fixed_point=fixed_point,
                      graph=graph.name, layers=layers, world=world, transform=transform,
                      artifact=str(artifact) if artifact else None)
    ckpt = checkpoint_path(resume, rank, world) if resume else None
    done = 0
    if ckpt is not None and ckpt.exists():
        try:
            doc = json.loads(ckpt.read_text())
            ok = doc.get("fingerprint") == fp
            ok = ok and doc.get("snncc") == "check-checkpoint"
        except (OSError, ValueError, AttributeError):
            raise SnnccError(f"--resume {ckpt}: not a checkpoint of snncc check") from None
        if doc.get("snncc") != "check-checkpoint":
            raise SnnccError(f"--resume {ckpt}: not a checkpoint of snncc check")
        if not ok:
            raise SnnccError(f"--resume {ckpt}: the checkpoint is of a different run (data "
                             "set, limit, batch, model, target, options or number of "
                             "processes differ); remove it or pass another file")
        acc.load(doc["state"])
        done = int(doc["batches_done"])
        log(f"resuming from {ckpt}: {acc.n} samples already checked on this shard")
    elif resume is not None and world > 1 and checkpoint_path(resume, 0, 1).exists():
        raise SnnccError(f"--resume {resume}: that checkpoint is of a 1-process run; resume it "
                         "with 1 process")

    def save():
        if ckpt is not None:
            _write_checkpoint(ckpt, {"snncc": "check-checkpoint", "fingerprint": fp,
                                     "rank": rank, "world": world, "batches_done": done,
                                     "state": acc.state()})

    shard_batches = len(range(rank, data.num_batches, world))
    bar = _Progress(len(data), min(len(data), acc.n * world), progress and rank == 0, world)
    start = time.perf_counter()
    fresh = 0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = artifact
            if path is None:
                options = {"dtype": dtype} if "dtype" in tgt.options else {}
                path = tgt.emit(compiled, Path(tmp) / f"model{tgt.suffix}", **options)
            for b in data.batches(rank, world, skip=done):
                details: dict = {}
                checked = check_parity(loaded, tgt.name, b.x, T=steps, labels=b.y,
                                       dtype=dtype, artifact=path, compiled=compiled,
                                       device=device, details=details)
                acc.add(b.start, b.y.astype(np.int64), details)
                del details
                done += 1
                fresh += len(b.y)
                bar.advance(len(b.y))
                if done % checkpoint_every == 0 and done < shard_batches:
                    save()
                if on_batch is not None:
                    on_batch(done)
    except BaseException:
        save()  # what was counted survives Ctrl-C, SIGTERM and errors
        bar.close()
        data.close()
        raise
    bar.close()
    data.close()
    save()
    seconds = time.perf_counter() - start
    if dist is not None:
        states = [None] * world
        dist.all_gather_object(states, acc.state())
        times = [None] * world
        dist.all_gather_object(times, (seconds, fresh))
        acc = DatasetCheck(tgt.name, reference, layers, worst)
        for s in states:
            acc.merge(s)
        seconds = max(t for t, _ in times)
        fresh = sum(n for _, n in times)
    report = acc.report(seconds=seconds, processes=world, device=str(device),
                        images_checked_now=fresh,
                        images_per_second=fresh / seconds if seconds > 0 else 0.0)
    es = report.run["engine_seconds"]
    report.run["engine_images_per_second"] = {
        k: acc.n * world / v if v > 0 else 0.0 for k, v in es.items()}
    report.lossy = any(available_passes()[p].lossy for p in compiled.meta.get("passes", []))
    report.dataset, report.T, report.batch, report.dtype = str(spec), steps, data.batch, dtype
    if report.reference == "pytorch":
        report.batch_coupled = dict(loaded.graph.meta.get("batch_coupled") or {})
    if fresh:  # the arithmetic the target ran in, as a batch's outputs came back
        report.run.update(target_dtype=checked.target_dtype, unmatched=checked.unmatched)
    return report


def finish_dist(barrier: bool = True) -> None:
    """Leave the torchrun process group (after rank 0 wrote the report; ``barrier=False`` on
    an error, when the other ranks may never arrive)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
