"""How much memory snncc may use, and checks of declared sizes against it.

Every reader and runner estimates what a file or a run *declares* it needs (tensor shapes x
dtype, T x batch x nodes, delay FIFOs, archive members) and calls :func:`require_fits` before
allocating it, so a small file that declares gigabytes is refused in one line instead of
exhausting the machine.

The budget is, in order: what :func:`set_max_memory` set (the CLI's ``--max-memory``), the
environment variable ``SNNCC_MAX_MEMORY``, else half of the physical memory (or of the
cgroup's limit, when that is lower). Sizes are written like ``8G``, ``512M``, ``1.5G`` or a
plain number of bytes.
"""

from __future__ import annotations

import ctypes
import gc
import os
import re
from contextlib import contextmanager

import numpy as np

from .errors import FormatError, ResourceError, SnnccError  # noqa: F401 (ResourceError: re-exported)

DEFAULT_FRACTION = 0.5  # of physical memory
ENV = "SNNCC_MAX_MEMORY"
OVERRIDE = ("to allow it, rerun as `snncc --max-memory SIZE <command> ...` (e.g. 32G) or set "
            "SNNCC_MAX_MEMORY")

_UNITS = {"": 1, "B": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
_budget: int | None = None


def parse_size(text: str | int | float) -> int:
    """``8G`` / ``512M`` / ``1.5g`` / ``1000000`` (bytes) / ``4GiB`` -> bytes."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*",
                         str(text))
        if m is None:
            raise SnnccError(f"memory size {text!r} is not a size like 8G, 512M or 1000000")
        value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if not (value >= 1 and np.isfinite(value)):
        raise SnnccError(f"memory size {text!r} must be at least one byte")
    return int(value)


def physical_memory() -> int:
    """Physical memory in bytes (the cgroup's limit when lower)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(f) as fh:
                v = fh.read().strip()
            if v.isdigit() and 0 < int(v) < total:
                total = int(v)
        except OSError:
            pass
    return total


def max_memory() -> int:
    """The budget in bytes (see the module docstring)."""
    if _budget is not None:
        return _budget
    env = os.environ.get(ENV)
    if env:
        return parse_size(env)
    return int(physical_memory() * DEFAULT_FRACTION)


def set_max_memory(size: str | int | None) -> None:
    """Set the budget for this process (``None``: back to the default)."""
    global _budget
    _budget = None if size is None else parse_size(size)


@contextmanager
def memory_budget(size: str | int | None):
    """``with memory_budget("2G"): ...`` (the Python API's ``--max-memory``)."""
    global _budget
    old = _budget
    set_max_memory(size)
    try:
        yield
    finally:
        _budget = old


def fmt_bytes(n: float) -> str:
    """3.2 GB, 512.0 MB, 900 bytes (powers of 1024)."""
    n = float(n)
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1024 or unit == "PB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def require_fits(nbytes: float, what: str) -> None:
    """Raise :class:`ResourceError` when ``nbytes`` exceeds the budget. ``what`` names the
    file / node / run and what it declares (the message says the size and the override)."""
    budget = max_memory()
    if nbytes > budget:
        raise ResourceError(f"{what} would take {fmt_bytes(nbytes)}, more than the memory "
                            f"budget of {fmt_bytes(budget)}; {OVERRIDE}")


def nbytes(shape, itemsize: int = 8) -> int:
    """Bytes of an array of ``shape`` (Python integers: no overflow)."""
    n = int(itemsize)
    for d in shape:
        n *= int(d)
    return n


def largest_fitting(need, most: int) -> int:
    """The largest batch ``b`` in 1 .. ``most`` whose ``need(b)`` (bytes, growing with ``b``)
    fits the memory budget; 1 when none does (what then runs refuses, saying why)."""
    lo, hi = 1, most
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if need(mid) <= max_memory():
            lo = mid
        else:
            hi = mid - 1
    return lo


def smaller_batch_that_fits(need, batch: int) -> int | None:
    """For a ``batch`` whose ``need`` exceeds the memory budget: the largest smaller batch whose
    need fits (what the refusal can suggest); None when ``batch`` fits or none smaller does."""
    if batch <= 1 or need(batch) <= max_memory():
        return None
    fits = largest_fitting(need, batch - 1)
    return fits if need(fits) <= max_memory() else None


def positive_int(value, what: str, error=SnnccError) -> int:
    """``value`` as an int >= 1 (a bool, a float that is not whole, a string: refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float,
                                                                       np.floating)):
        raise error(f"{what} must be a whole number >= 1, got {value!r}")
    if isinstance(value, (float, np.floating)) and not (np.isfinite(value)
                                                       and float(value).is_integer()):
        raise error(f"{what} must be a whole number >= 1, got {value!r}")
    if int(value) < 1:
        raise error(f"{what} must be >= 1, got {int(value)}")
    return int(value)


def exact_float64(a, what: str, notes: list | None = None, error=FormatError) -> np.ndarray:
    """An array read from a file as float64: floats pass; bool and integer arrays are cast only
    when every value is exactly representable (and ``notes`` gets a line saying so); complex,
    object, string and inexact integer arrays are refused with ``error`` naming ``what``."""
    a = np.asarray(a)
    kind = a.dtype.kind
    if kind == "f":
        return a.astype(np.float64, copy=False)
    if kind in "biu":
        if kind in "iu" and a.size and (int(a.min()) < -2 ** 53 or int(a.max()) > 2 ** 53):
            raise error(f"{what}: {a.dtype} values beyond 2**53 have no exact float64 value")
        out = a.astype(np.float64)
        if kind in "iu" and not np.array_equal(out.astype(a.dtype), a):
            raise error(f"{what}: {a.dtype} values have no exact float64 value")
        if notes is not None:
            notes.append(f"{what}: {a.dtype} values cast exactly to float64")
        return out
    raise error(f"{what}: {a.dtype} values are not real numbers (refusing to cast them to "
                "float64)")


class SnnccWarning(UserWarning):
    """Something snncc accepted but changed or doubts (the CLI prints it as one line)."""


def warn(message: str) -> None:
    """Say that an input was accepted with a change (e.g. integers cast exactly to float64)."""
    import warnings

    warnings.warn(message, SnnccWarning, stacklevel=2)


def print_warnings_as_lines() -> None:
    """Show every :class:`SnnccWarning` as one ``snncc: warning: ...`` line on stderr (the
    CLI's form); other warnings keep Python's format."""
    import sys
    import warnings

    if getattr(warnings.showwarning, "_snncc", False):
        return
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, SnnccWarning):
            print(f"snncc: warning: {' '.join(str(message).split())}", file=file or sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)

    show._snncc = True
    warnings.showwarning = show


def require_npy_fits(path) -> None:
    """Check a ``.npy`` file's declared shape x dtype against the bytes the file holds and the
    memory budget, reading only its header (np.load allocates the declared size first).
    Files that are not plain .npy arrays are left to np.load to report."""
    from pathlib import Path

    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            shape, _, dtype = np.lib.format._read_array_header(f, version)
            offset = f.tell()
        size = path.stat().st_size
    except (OSError, ValueError, EOFError, SyntaxError, TypeError):
        return
    if dtype.hasobject:
        return
    need = nbytes(shape, dtype.itemsize)
    if need > size - offset:
        raise FormatError(f"{path}: declares an array of shape {shape} ({fmt_bytes(need)}) but "
                          f"holds {fmt_bytes(size - offset)} of data (truncated or forged)")
    require_fits(need, f"{path}: an array of shape {shape}")


@contextmanager
def freeing_what_it_leaves():
    """Run a block that leaves much garbage (a trace), then collect its reference cycles and
    hand the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing
    elsewhere). Tracing Meta-SpikeFormer 15M frees about 30 MB in small blocks that glibc
    keeps otherwise, and the large arrays allocated after it are mmapped, never reusing them:
    they add to the peak. The objects that exist before the block are frozen out of the
    collection (``gc.freeze``), which then takes 0.02 s instead of 0.1 s, unless the program
    froze objects itself."""
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    try:
        yield
        gc.collect()
    finally:
        if freeze:
            gc.unfreeze()
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim(0)


_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def map_large_blocks(threshold: int = 256 * 1024) -> None:
    """Have this process's C allocations of ``threshold`` bytes or more mapped each on its own,
    so that freeing one returns it to the system (glibc's ``M_MMAP_THRESHOLD``; nothing
    elsewhere). glibc's default raises that threshold to the largest block freed so far (up to
    32 MB): after that, blocks of a few MB come from the heap, and the holes they leave there
    when freed stay in the process. For a process that allocates few large blocks, as
    ``snncc compile`` does (tracing Meta-SpikeFormer 15M peaked 16 MB lower); not for one that
    allocates the same activations at every step, which would pay for fresh pages each time."""
    mallopt = _glibc("mallopt")
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, threshold)


def _glibc(name: str):
    """glibc's function ``name``, or None under another C library."""
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None
