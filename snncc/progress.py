"""Progress of long runs (a Lava run's steps, calibration's batches): a line every
:data:`EVERY` seconds while one lasts, so that a run of minutes (the 15M model in Lava: 6
minutes) is not silent. Lines go where :func:`report_to` sends them: the CLI sends them to
stderr (every ``$SNNCC_PROGRESS_EVERY`` seconds if set; 0: never), library calls stay
silent; a run shorter than the interval prints nothing.

A thread writes the lines, because the long parts are single calls (Lava starting hundreds of
processes, one simulator run); the CLI writes them with one ``os.write`` each, which holds no
lock a process forked meanwhile (Lava forks one per process) could inherit held."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

#: Seconds between two lines of a run (the first comes this long after the start).
EVERY = 15.0

_write: Callable[[str], None] | None = None
_every = EVERY


def report_to(write: Callable[[str], None] | None, every: float | None = None):
    """Send the progress lines to ``write`` (None: nowhere), one every ``every`` seconds
    (default :data:`EVERY`); returns where and how often they went before
    (``report_to(*old)`` restores it)."""
    global _write, _every
    old = (_write, _every)
    _write, _every = write, EVERY if every is None else every
    return old


class Progress:
    """How far a run is: ``done`` of ``total`` ``unit``."""

    def __init__(self, what: str, total: int, unit: str):
        self.what, self.total, self.unit = what, total, unit
        self.done = 0
        self.start = time.monotonic()
        self._first: tuple[float, int] | None = None  # (time, done) at the first advance

    def advance(self, n: int = 1) -> None:
        if self._first is None:  # the rate is measured from here: start-up is not a step
            self._first = (time.monotonic(), self.done)
        self.done += n

    def line(self) -> str:
        now = time.monotonic()
        text = f"{self.what}: {self.done}/{self.total} {self.unit}, {now - self.start:.0f} s"
        if self._first is not None and self.done > self._first[1] and self.done < self.total:
            rate = (self.done - self._first[1]) / max(now - self._first[0], 1e-9)
            text += f", about {(self.total - self.done) / rate:.0f} s left"
        return text


@contextmanager
def progress(what: str, total: int, unit: str) -> Iterator[Progress]:
    """A :class:`Progress` to advance while the ``with`` block runs; its line is written at
    the interval :func:`report_to` set until the block ends."""
    p, write, every = Progress(what, total, unit), _write, _every
    if write is None:
        yield p
        return
    stop = threading.Event()

    def tick():
        while not stop.wait(every):
            write(p.line())
    ticker = threading.Thread(target=tick, name="snncc-progress", daemon=True)
    ticker.start()
    try:
        yield p
    finally:
        stop.set()
        ticker.join()
