"""A Lava run in a fresh interpreter, for networks of many processes.

Lava's runtime forks one OS process per Lava process from the process that runs the network.
Each fork copies the pages of its parent's Python objects that it touches (reference counts,
the garbage collector), so a network of hundreds of processes forked from a host holding a
PyTorch model, a graph and reference runs costs several times its own memory (the runner's
``WORKER_PROCESSES`` has the measurement). :func:`run_in_worker` runs the network in a new
interpreter that holds little besides Lava: the job (the lowered network and its inputs) and
the result travel as pickles in a private temporary directory, the steps one byte each through
a pipe, so the host reports the run's progress and notices at once a worker that dies.

The worker runs in a session of its own. When the host is interrupted it stops the worker
(SIGTERM: the worker exits at once), and whenever the worker has exited the host kills what
is left of its session; a worker whose host has gone ends when a step finds the pipe closed.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from snncc.errors import SnnccError
from snncc.progress import progress

from .runner import POLL_SECONDS, run_job

JOB, RESULT = "job.pkl", "result.pkl"
#: seconds a host gives a worker it has asked to stop to exit (it leaves at once) before
#: killing it with the rest of its session
STOP_SECONDS = 10


class WorkerError(SnnccError):
    """The worker process running a Lava network ended without a result."""


def run_in_worker(job: dict, what: str, steps: int) -> dict:
    """:func:`~snncc.backends.lava.runner.run_job` on ``job`` in a new interpreter; its
    progress reported as ``what`` over ``steps`` steps. Raises what the run raised."""
    with tempfile.TemporaryDirectory(prefix="snncc-lava-") as tmp:
        with open(Path(tmp) / JOB, "wb") as f:
            pickle.dump(job, f, protocol=pickle.HIGHEST_PROTOCOL)
        read, write = os.pipe()
        try:  # a session of its own: its Lava processes can be ended with it, as a group
            worker = subprocess.Popen([sys.executable, "-m", __name__, tmp, str(write)],
                                      pass_fds=(write,), stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        finally:
            os.close(write)
        try:
            with progress(what, steps, "steps") as done:
                # until the worker has exited (its Lava processes hold the pipe too: a worker
                # that was killed may leave them behind, and the pipe open)
                while not _exited(worker):
                    if select.select([read], [], [], POLL_SECONDS)[0]:
                        done.advance(len(os.read(read, 65536)))
        except BaseException:
            worker.terminate()
            _exited(worker, STOP_SECONDS)
            raise
        finally:
            os.close(read)
            _end_session(worker)
        code = worker.wait()
        result = Path(tmp) / RESULT
        if not result.exists():
            raise WorkerError(f"the worker process running the Lava network ended without a "
                              f"result ({_ending(code)})")
        with open(result, "rb") as f:
            out = pickle.load(f)  # (written by our worker, in our private directory)
    if "error" in out:
        raise out["error"]
    return out["result"]


def _exited(worker: subprocess.Popen, wait: float = 0.0) -> bool:
    """Whether ``worker`` has exited, waiting up to ``wait`` seconds; not reaped, so that its
    process id, and the id of its session, stay its own until :func:`_end_session`."""
    deadline = time.monotonic() + wait
    while os.waitid(os.P_PID, worker.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _end_session(worker: subprocess.Popen) -> None:
    """Kill what is left of the worker's session, the worker too, and reap it: the Lava
    processes of a worker that did not end them (stopped, killed, out of memory) would wait
    forever for their peers. multiprocessing's resource tracker is spared: once the others
    are gone it unlinks the shared memory they leave."""
    for pid in _session(worker.pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"multiprocessing.resource_tracker" in f.read():
                    continue
            os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError):  # ended meanwhile
            pass
    worker.wait()


def _session(sid: int) -> list[int]:
    """The live processes of the session ``sid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    state, _, _, session = f.read().rsplit(")", 1)[1].split()[:4]
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(session) == sid and state != "Z":
                out.append(int(entry))
    return out


def _ending(code: int) -> str:
    if code == -signal.SIGKILL:
        return "killed (SIGKILL): out of memory?"
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


def main(directory: str, fd: int) -> None:
    # Stopped, the worker leaves at once: the host ends the rest of its session (unwinding
    # through Lava here could stop inside a lock the next forked process then waits on).
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(128 + signum))
    # Lava's processes, forked from here, keep the default: Lava ends them with SIGTERM
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    tmp = Path(directory)
    with open(tmp / JOB, "rb") as f:
        job = pickle.load(f)  # (written by the host, in its private directory)
    try:
        out = {"result": run_job(**job, advance=lambda: os.write(fd, b"."))}
    except Exception as e:  # handed to the host, which raises it
        try:
            pickle.dumps(e)
        except Exception:
            e = SnnccError(f"the Lava run failed: {type(e).__name__}: {e}")
        out = {"error": e}
    part = tmp / (RESULT + ".part")
    with open(part, "wb") as f:
        pickle.dump(out, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(part, tmp / RESULT)
    sys.stdout.flush()
    sys.stderr.flush()
    # not multiprocessing's exit, which waits for every child: the host ends any Lava process
    # a failed run left
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
