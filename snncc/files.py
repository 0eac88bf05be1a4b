"""Writing outputs atomically, never over a user's files, and reading inputs a user hands to
snncc without executing anything they contain.

Output rules (DESIGN.md, "Output paths"):

- ``-o`` may replace only what snncc wrote: a file the caller's ``may_replace`` recognises
  (a ``.snnir`` by its header, a ``.nir`` by snncc's metadata ...) or a directory holding the
  :data:`MARKER` file that :func:`atomic_directory` writes, or an empty directory. Anything
  else raises :class:`OutputError` and is left untouched.
- A new output is built beside the target under a temporary name and swapped in: a file with
  ``rename``, a directory with Linux ``renameat2(RENAME_EXCHANGE)``, so the old or the new
  artifact is at the path at every instant, and concurrent writers each either win or fail
  with one line.
- Temporary names carry the writer's process id (``.NAME.snncc-tmp-PID-XXXX``); a later write
  to the same path removes those whose process is gone (a writer killed with SIGKILL).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import FormatError, OutputError
from .ir import all_finite

MARKER = "snncc-artifact.json"
_TMP = ".snncc-tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{_TMP}{os.getpid()}-{secrets.token_hex(4)}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove temporaries of writes to ``path`` whose writer process no longer exists."""
    removed = []
    prefix = f".{path.name}{_TMP}"
    try:
        candidates = list(path.parent.iterdir()) if path.parent.is_dir() else []
    except OSError:
        return removed
    for p in candidates:
        if not p.name.startswith(prefix):
            continue
        pid = p.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            _remove(p)
            removed.append(p)
    return removed


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _write_failed(path: Path, e: OSError) -> OutputError:
    why = {errno.ENOSPC: "no space left on the device", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied", errno.EROFS: "read-only file system",
           errno.EDQUOT: "disk quota exceeded", errno.ENAMETOOLONG: "file name too long"}
    return OutputError(f"{path}: cannot write ({why.get(e.errno, e.strerror or str(e))}); "
                       f"nothing was changed there")


def _prepare_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{path}: a parent of the output path is a file") from None
    except OSError as e:
        raise _write_failed(path, e) from None
    if not path.parent.is_dir():
        raise OutputError(f"{path}: a parent of the output path is not a directory")
    remove_stale_temporaries(path)


# ---------------------------------------------------------------------------- swapping in
_AT_FDCWD = -100
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
try:
    _renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                           ctypes.c_uint]
except (AttributeError, OSError):  # not Linux / glibc < 2.28
    _renameat2 = None


def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where the system or file system lacks it."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _swap_in_directory(tmp: Path, path: Path, check: Callable[[Path], None]) -> None:
    """Move the complete directory ``tmp`` to ``path``; an existing ``path`` (which ``check``
    accepts) is exchanged with it in one step and then removed."""
    for _ in range(100):  # concurrent writers: each round either lands or sees a new state
        if not os.path.lexists(path):
            try:
                if _rename2(tmp, path, _RENAME_NOREPLACE):
                    return
                os.rename(tmp, path)  # no renameat2: an empty directory here is replaced too
                return
            except FileExistsError:
                continue
            except OSError as e:
                if e.errno != errno.ENOTEMPTY:
                    raise
                continue
        check(path)
        try:
            exchanged = _rename2(tmp, path, _RENAME_EXCHANGE)
        except FileNotFoundError:  # removed by someone else meanwhile: try again
            continue
        if not exchanged:  # without RENAME_EXCHANGE: two renames, the old copy kept aside
            aside = _temp_name(path)
            os.rename(path, aside)
            try:
                os.rename(tmp, path)
            except OSError:
                os.rename(aside, path)
                raise
            tmp = aside
        shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old artifact
        return
    raise OutputError(f"{path}: other writers keep replacing it; nothing was written")


# ---------------------------------------------------------------------------- what is ours
class Ours:
    """Which existing file an output may replace: ``what`` for messages, ``test(path)``."""

    def __init__(self, what: str, test: Callable[[Path], bool]):
        self.what, self.test = what, test


def _starts_with(magic: bytes) -> Callable[[Path], bool]:
    def test(p: Path) -> bool:
        try:
            with open(p, "rb") as f:
                return f.read(len(magic)) == magic
        except OSError:
            return False
    return test


def _is_json(p: Path) -> bool:
    try:
        json.loads(p.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return True


NPY = Ours("a .npy array", _starts_with(b"\x93NUMPY"))
JSON = Ours("a JSON file", _is_json)
PNG = Ours("a PNG image", _starts_with(b"\x89PNG\r\n\x1a\n"))
TEXT = Ours("an IR listing", lambda p: p.suffix == ".txt")


def _refuse_existing(path: Path, what: str) -> OutputError:
    return OutputError(f"{path} exists and is not {what}; snncc replaces only its own "
                       f"outputs: move it away or choose another output path")


def _check_path_kind(path: Path) -> None:
    if path.is_symlink():
        raise OutputError(f"{path} is a symbolic link; give the real path as the output")


def check_replaceable_file(path: Path, replaces: Ours | None) -> None:
    """Refuse, leaving it untouched, an existing ``path`` that ``replaces`` does not
    recognise."""
    _check_path_kind(path)
    if path.is_dir():
        raise OutputError(f"{path} is a directory; the output is a file")
    if path.exists() and (replaces is None or not replaces.test(path)):
        raise _refuse_existing(path, replaces.what if replaces else "an output of snncc")


def atomic_write(path: str | Path, write: Callable, binary: bool = True, *,
                 replaces: Ours | None = None, by_name: bool = False) -> Path:
    """Call ``write(fileobj)`` on a temporary file beside ``path`` and rename it into place, so
    ``path`` is either the old file or the complete new one, never half-written. An existing
    ``path`` is replaced only if ``replaces`` recognises it. ``by_name``: ``write(tmp_path)``
    instead, the temporary file created empty, for a library that does its own I/O (HDF5's
    through a Python file object costs a call into Python per read and write)."""
    path = Path(path)
    check_replaceable_file(path, replaces)
    _prepare_parent(path)
    tmp = _temp_name(path)
    try:
        if by_name:
            open(tmp, "xb").close()  # made here, exclusively, as a file object's would be
            write(tmp)
        else:
            with open(tmp, "x+b" if binary else "x") as f:
                write(f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _write_failed(path, e) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _directory_entries(path: Path) -> set[str]:
    try:
        return {p.name for p in path.iterdir()}
    except OSError as e:
        raise _write_failed(path, e) from None


def _judge_directory(path: Path, target: str = "") -> None:
    """Refuse, leaving it untouched, an existing ``path`` that is not an empty directory or an
    artifact directory snncc wrote holding nothing but what it wrote."""
    _check_path_kind(path)
    if not os.path.lexists(path):
        return
    if not path.is_dir():
        raise OutputError(f"{path} exists and is a file; the {target or 'artifact'} output is "
                          f"a directory: move it away or choose another output path")
    entries = _directory_entries(path)
    if not entries:
        return
    if MARKER not in entries:
        raise _refuse_existing(path, "an empty directory or an artifact directory of snncc")
    try:
        listed = set(json.loads((path / MARKER).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        raise OutputError(f"{path}: its {MARKER} is unreadable; move the directory away or "
                          f"choose another output path") from None
    extra = sorted(entries - listed - {MARKER})
    if extra:
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        raise OutputError(f"{path} holds files snncc did not write ({shown}); move them away "
                          f"or choose another output path")


def check_replaceable_directory(path: Path, target: str = "") -> None:
    """Refuse, leaving it untouched, an existing ``path`` that is not an empty directory or an
    artifact directory snncc wrote holding nothing but what it wrote. Other writers may swap
    ``path`` meanwhile: a refusal counts only if ``path`` still names the directory that was
    judged (the one a concurrent writer just swapped out is being emptied, and looks
    foreign)."""
    for _ in range(100):
        try:
            before = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return  # gone: the caller's next round moves the new directory in
        pinned = _pin_directory(path)
        try:
            _judge_directory(path, target)
            return
        except OutputError:
            try:
                now = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                return
            if _same_file(now, os.fstat(pinned) if pinned is not None else before):
                raise
        finally:
            if pinned is not None:
                os.close(pinned)
    raise OutputError(f"{path}: other writers keep replacing it; nothing was written")


def _pin_directory(path: Path) -> int | None:
    """A descriptor of the directory ``path`` names (None if it names none): while it is open,
    no other directory can be given the same inode number, so comparing it with what ``path``
    names later is exact. Without it, a directory swapped out and removed by a concurrent writer
    had its number reused by the next one swapped in, and a refusal of the old, half-removed
    one counted (once in CI, 6 writers replacing one path 300 times)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def atomic_directory(path: str | Path, fill: Callable[[Path], None], target: str = "") -> Path:
    """Build a directory with ``fill(tmpdir)``, mark it as snncc's (:data:`MARKER`) and swap
    it in as ``path``: the old or the new directory is at ``path`` at every instant."""
    path = Path(path)
    check_replaceable_directory(path, target)
    _prepare_parent(path)
    tmp = _temp_name(path)
    try:
        tmp.mkdir(mode=0o777)
        fill(tmp)
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / MARKER).write_text(json.dumps({"format": "snncc-artifact", "version": 1,
                                              "target": target, "files": files}, indent=1))
        _swap_in_directory(tmp, path, lambda p: check_replaceable_directory(p, target))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failed(path, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_array(path: str | Path) -> np.ndarray:
    """Load a ``.npy`` array (never pickled objects); non-finite values are refused."""
    from .limits import require_npy_fits

    path = Path(path)
    require_npy_fits(path)
    try:
        a = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError) as e:
        raise FormatError(f"{path}: not a readable .npy array ({e})") from None
    if not isinstance(a, np.ndarray):
        raise FormatError(f"{path}: expected one array (.npy), got an archive")
    if a.dtype.kind not in "biuf":
        raise FormatError(f"{path}: array dtype {a.dtype} is not numeric")
    if not all_finite(a):
        raise FormatError(f"{path}: array contains NaN or infinity")
    return a


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
CHECKPOINT, NIR_GRAPH = "a PyTorch checkpoint", "a NIR graph"


def refuse_foreign_format(path: Path, expected: str) -> None:
    """Refuse, saying what it is and what to do, a file given where snncc ``expected``
    (:data:`CHECKPOINT` or :data:`NIR_GRAPH`) a file of one kind that is of another kind
    recognised here, told by its first bytes and an HDF5 or zip file's top-level names
    (another tool's file failed as a corrupt checkpoint or NIR file)."""
    with open(path, "rb") as f:
        head = f.read(8)
    found = None
    if head == _HDF5_MAGIC:
        import h5py

        try:
            with h5py.File(path, "r") as f:
                groups = set(f.keys())
        except (OSError, ValueError, RuntimeError):
            groups = set()
        found = (NIR_GRAPH, "give it as a .nir file") if "node" in groups else \
            ("a lava-dl netx network (HDF5: snncc writes these for Lava, it does not read "
             "them)", "compile the model it was made from") if "layer" in groups else \
            ("an HDF5 file (another framework's weights?)", "")
    elif head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            names = []
        if names and all(n.endswith(".npy") for n in names):
            found = ("a numpy .npz archive", "load its arrays into your model and save its "
                     "state_dict with torch.save")
        elif any(n.endswith("/data.pkl") for n in names):
            found = (CHECKPOINT, "give it with --arch or --model")
    elif path.suffix.lower() == ".onnx" and head[:1] == b"\x08":  # ONNX's ir_version field
        found = ("an ONNX model (a target of snncc, not a source)",
                 "compile the PyTorch model it was exported from")
    if found is not None and found[0] != expected:
        raise FormatError(f"{path}: {found[0]}, not {expected}" +
                          (f": {found[1]}" if found[1] else ""))
