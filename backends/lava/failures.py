"""Lava runs that end with an error instead of waiting forever.

A process model that raises leaves Lava 0.10's runtime waiting for it: the model joins its
ports instead of exiting, or the runtime service stops every other process and reports the
error only to a caller that waits for the run to end, so a host reading a process's output
(snncc's recorder) or a blocking ``run`` waits forever. :func:`watching` makes each process
model that raises write its traceback where the parent looks, and gives the parent a check to
call while it waits: it raises :class:`LavaProcessError` with those tracebacks, or when a Lava
process has exited before the run ended, after terminating the run's processes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from snncc.errors import SnnccError

from .compat import lava


class LavaProcessError(SnnccError):
    """A Lava process model raised while the network ran (its traceback is the message), or a
    Lava process exited before the run ended."""


#: the phases of a step a process model's own code runs in
PHASES = ("_spike", "_pre_mgmt", "_post_mgmt", "_lrn")

_error_dir: str | None = None  # where a failing process model writes its traceback


def _report_failures(phase):
    """``phase`` writing its traceback to :data:`_error_dir` when it raises (then raising)."""
    def run(self):
        try:
            return phase(self)
        except Exception:
            if _error_dir is not None:
                name = Path(_error_dir) / f"{type(self).__name__}.{os.getpid()}.txt"
                name.write_text(traceback.format_exc())
            raise
    return run


def _infrastructure(process):
    """The message infrastructure of the runtime ``process`` runs in (None before it runs)."""
    return getattr(getattr(process, "runtime", None), "_messaging_infrastructure", None)


def _actors(process) -> list:
    """The OS processes of the runtime ``process`` runs in (none before it runs)."""
    return list(getattr(_infrastructure(process), "actors", []))


def _exit_codes(process) -> list:
    """The exit codes of the run's OS processes that have ended (None: one Lava has joined and
    closed)."""
    codes = []
    for actor in _actors(process):
        try:
            if actor.exitcode is not None:
                codes.append(actor.exitcode)
        except ValueError:  # closed: it has ended
            codes.append(None)
    return codes


def terminate(process) -> None:
    """End the OS processes of the runtime ``process`` runs in (they would wait forever) and
    its shared memory manager, with the channels' shared memory; the runtime is marked stopped
    (its ``stop``, which the process's ``__del__`` calls, would message the ended processes)."""
    actors = _actors(process)
    for actor in actors:
        with contextlib.suppress(ValueError):  # an actor Lava already closed
            actor.terminate()
    for actor in actors:
        # the OS process's end only: Lava's own join also reads the actor's exception pipe,
        # which Lava's thread of a blocking run may be reading at the same time (EOFError,
        # "handle is closed"); the tracebacks come from the files instead
        with contextlib.suppress(ValueError):
            multiprocessing.Process.join(actor)
    smm = getattr(_infrastructure(process), "smm", None)
    if smm is not None:
        smm.shutdown()
    runtime = getattr(process, "runtime", None)
    if runtime is not None:
        runtime._is_started = runtime._is_running = False


def in_thread(call, poll: float, check=None, seconds: float | None = None) -> bool:
    """``call()`` in a thread, calling ``check()`` (:func:`watching`'s) every ``poll`` seconds
    while it runs; False if it has not returned within ``seconds`` (it is left waiting), else
    True or what it raised. Lava's ``run`` and ``wait`` do not notice a process that has failed
    or exited, and its ``stop`` once waited on a futex for processes that had ended."""
    outcome = {}

    def target():
        try:
            call()
        except BaseException as e:  # raised in the caller's thread below
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    start = time.monotonic()
    while thread.is_alive():
        thread.join(poll)
        if check is not None:
            check()
        if seconds is not None and time.monotonic() - start > seconds:
            return False
    if "error" in outcome:
        raise outcome["error"]
    return True


@contextmanager
def watching(process):
    """Within: process models forked from here report their failures; yields ``check()``,
    which raises :class:`LavaProcessError` (the run's processes terminated) if one has failed
    or if one of the processes of ``process``'s run has exited. Call it while waiting on the
    run, never after stopping it."""
    global _error_dir
    model = lava(".magma.core.model.py.model").PyLoihiProcessModel
    originals = {name: getattr(model, name) for name in PHASES}

    def check() -> None:
        failures = sorted(Path(d).iterdir())
        exit_codes = _exit_codes(process)
        if not failures and not exit_codes:
            return
        if failures:
            message = "a Lava process failed:\n" + "\n".join(
                f"{f.name.split('.')[0]}: {f.read_text()}" for f in failures)
        else:
            message = f"{len(exit_codes)} Lava process(es) exited before the run ended"
            if exit_codes[0] is not None:
                message += f" (exit code {exit_codes[0]})"
        terminate(process)
        raise LavaProcessError(message)

    with tempfile.TemporaryDirectory() as d:
        _error_dir = d
        for name, phase in originals.items():
            setattr(model, name, _report_failures(phase))
        try:
            yield check
        finally:
            _error_dir = None
            for name, phase in originals.items():
                setattr(model, name, phase)
