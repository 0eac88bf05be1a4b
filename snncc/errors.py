"""Error types. Every error snncc raises on bad input is one of these; the CLI prints
``str(err)`` as one line and exits non-zero."""

from __future__ import annotations


class SnnccError(Exception):
    """Base class. ``node`` and ``path`` locate the problem in the graph / source model."""

    exit_code = 1

    def __init__(self, message: str, *, node: str | None = None, path: str | None = None):
        self.message = message
        self.node = node
        self.path = path
        super().__init__(message)

    def __str__(self) -> str:
        where = []
        if self.node:
            where.append(f"node '{self.node}'")
        if self.path and self.path != self.node:
            where.append(f"module '{self.path}'")
        prefix = f"{' / '.join(where)}: " if where else ""
        return f"{prefix}{self.message}"


class IRError(SnnccError):
    """A malformed IR node or graph (bad parameters, shapes, kinds, edges)."""


class ShapeError(IRError):
    """Shapes of a node's inputs or parameters do not fit together."""


class VerificationError(IRError):
    """The graph verifier found a structural problem (dangling edge, unreachable node, cycle)."""


class FormatError(SnnccError):
    """A file (.snnir, checkpoint, .nir, inputs) is corrupt, truncated or of the wrong version."""


class OutputError(SnnccError):
    """An output path snncc must not or cannot write (a user's file, a full disk ...)."""


class ResourceError(SnnccError):
    """What a file or a run declares it needs does not fit the memory budget (or is
    implausible for the file's size)."""


class NoInputShapeError(SnnccError):
    """A model without an example input declares no per-sample input shape, and none was
    given (a data-set check may take its images' shape: :func:`snncc.dataset.loaded_for`)."""


class DeviceError(SnnccError):
    """The device asked for (``--device cuda``) is not available to this process."""


class UnsupportedError(SnnccError):
    """A model contains an op or layer snncc (or the chosen target) cannot express."""


class CheckpointError(SnnccError):
    """A checkpoint does not fit the chosen architecture (missing / unexpected / mis-shaped keys)."""


class PassError(SnnccError):
    """A pass could not apply; the message says why."""


class ParityError(SnnccError):
    """A parity check found disagreement above the allowed threshold."""

    exit_code = 2
