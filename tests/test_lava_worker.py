"""Lava runs in a worker process (backends/lava/worker.py): the same spikes as a run in the
host, the run's errors raised in the host with their type, and a worker that is killed or
stopped leaves no Lava process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from snncc import ir
from snncc.backends.lava.lower import lower
from snncc.backends.lava.runner import run_network
from snncc.backends.lava.worker import WorkerError, _session, run_in_worker
from snncc.passes.latency import latency_plan
from snncc.simulator import simulate

from test_lava_network import T, assert_same_spikes, cnn_graph, compiled


def network(seed: int = 0):
    g, x = cnn_graph(seed)
    c = compiled(g)
    return g, x, lower(c, latency_plan(c))


@pytest.mark.parametrize("seed", [0, 1])
def test_worker_run_equals_a_run_in_the_host(seed):
    g, x, net = network(seed)
    neurons = [n.name for n in g.of_type(ir.Neuron)]
    here = run_network(net, x, record=neurons, worker=False)
    there = run_network(net, x, record=neurons, worker=True)
    assert here.keys() == there.keys() and there["processes"] == here["processes"]
    for k, v in here["trace"].items():
        np.testing.assert_array_equal(there["trace"][k], v, err_msg=k)
    assert_same_spikes(g, there["trace"], simulate(g, x, T, record=True))


def test_an_error_in_the_worker_is_raised_in_the_host():
    with pytest.raises(AttributeError, match="processes"):
        run_in_worker({"net": None, "seqs": {}, "B": 1, "names": [], "lanes": 1}, "run", 1)


def _worker_pid(host: int | None = None) -> int:
    me = str(host or os.getpid())
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    cmd = f.read()
                with open(f"/proc/{p}/stat") as f:
                    ppid = f.read().rsplit(")", 1)[1].split()[1]
            except OSError:
                continue
            if b"snncc.backends.lava.worker" in cmd and ppid == me:
                return int(p)
    return 0


def _shared_memory() -> set[str]:
    return {f for f in os.listdir("/dev/shm") if f.startswith("psm_")}


def _until(done, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_a_worker_that_ends_early_leaves_no_lava_process(how):
    """Killed (as out of memory would) or stopped (as the host does when it is interrupted)
    while Lava runs: the run is refused saying how the worker ended, its Lava processes, which
    would wait forever for their peers, are ended with its session, and the shared memory of
    their channels is unlinked."""
    g, x, net = network()
    seen: dict = {}
    before = _shared_memory()

    def end_worker_once_lava_runs():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pid = _worker_pid()
            if pid and len(_session(pid)) > 3:  # the worker and its Lava processes
                seen["pid"] = pid
                os.kill(pid, how)
                return
            time.sleep(0.05)
    killer = threading.Thread(target=end_worker_once_lava_runs)
    killer.start()
    with pytest.raises(WorkerError, match="killed \\(SIGKILL\\): out of memory\\?"
                       if how == signal.SIGKILL else "exit code 143"):
        run_network(net, x, T=5000, worker=True)  # long enough to be caught running
    killer.join()
    _until(lambda: not _session(seen["pid"]))  # SIGKILL is delivered within moments
    assert _session(seen["pid"]) == []
    _until(lambda: _shared_memory() <= before)
    assert _shared_memory() <= before


HOST = """
import sys
sys.path.insert(0, sys.argv[1])
from test_lava_worker import network
from snncc.backends.lava.runner import run_network
g, x, net = network()
run_network(net, x, T=100000, worker=True)
"""


def test_an_interrupted_host_ends_its_worker():
    """Ctrl-C in the host while the worker runs Lava: the host stops the worker, whose Lava
    processes end with its session, and their shared memory is unlinked."""
    before = _shared_memory()
    host = subprocess.Popen([sys.executable, "-c", HOST, str(Path(__file__).parent)],
                            stderr=subprocess.PIPE, text=True)
    try:
        _until(lambda: (p := _worker_pid(host.pid)) != 0 and len(_session(p)) > 3, 120)
        pid = _worker_pid(host.pid)
        assert pid, "no worker running Lava"
        host.send_signal(signal.SIGINT)
        _, err = host.communicate(timeout=60)
    finally:
        host.kill()
    assert host.returncode != 0 and "KeyboardInterrupt" in err
    _until(lambda: not _session(pid))
    assert _session(pid) == []
    _until(lambda: _shared_memory() <= before)
    assert _shared_memory() <= before


FIXED_START = """
import multiprocessing, sys
import torch
if sys.argv[2] == "dataloader":  # a DataLoader with workers fixes the default method (fork)
    list(torch.utils.data.DataLoader(torch.zeros(4, 2), batch_size=2, num_workers=1))
else:
    multiprocessing.set_start_method(sys.argv[2])
fixed = multiprocessing.get_start_method(allow_none=True)
sys.path.insert(0, sys.argv[1])
from test_lava_worker import network  # imports Lava, which sets 'fork' as it is imported
from snncc import ir
from snncc.backends.lava.runner import run_network
from snncc.errors import SnnccError
from snncc.simulator import simulate
from test_lava_network import T, assert_same_spikes
g, x, net = network()
out = run_network(net, x, record=[n.name for n in g.of_type(ir.Neuron)])
assert_same_spikes(g, out["trace"], simulate(g, x, T, record=True))
assert multiprocessing.get_start_method() == fixed, "the process's start method changed"
if fixed != "fork":
    try:
        run_network(net, x, worker=False)
        raise SystemExit("Lava ran in a process that fixed " + fixed)
    except SnnccError as e:
        assert "needs the 'fork' start method" in str(e), e
print("ok", fixed)
"""


@pytest.mark.parametrize("how", ["dataloader", "spawn"])
def test_lava_runs_whatever_start_method_the_process_fixed(how):
    """Lava's import calls ``set_start_method('fork')``, which raised "context has already been
    set" (an internal error) once the user's process had fixed the method: a DataLoader with
    workers or a tqdm bar (fork), a script that chose spawn. Now it runs exactly, in this process
    under fork, in a worker under spawn (Lava cannot pickle its models), and the process keeps
    the method it chose."""
    run = subprocess.run([sys.executable, "-c", FIXED_START, str(Path(__file__).parent), how],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[-2:] == ["ok", "fork" if how == "dataloader" else how]


def test_a_lava_stop_that_never_returns_ends_the_run_with_its_outputs(monkeypatch):
    """Lava's ``stop`` once waited on a futex for processes that had ended, every step already
    received (a CI run hung for minutes). Past runner.LAVA_STOP_SECONDS the run's processes are
    ended and its complete outputs returned; none of its Lava processes is left."""
    from lava.magma.runtime.runtime import Runtime

    from snncc.backends.lava import runner

    released, stop = threading.Event(), Runtime.stop
    hung = []

    def stop_that_hangs(self):
        if not hung:  # the run's own stop (not the one Lava's __del__ makes later)
            hung.append(self)
            released.wait(60)
            return None
        return stop(self)

    monkeypatch.setattr(Runtime, "stop", stop_that_hangs)
    monkeypatch.setattr(runner, "LAVA_STOP_SECONDS", 1)
    g, x, net = network(0)
    neurons = [n.name for n in g.of_type(ir.Neuron)]
    started = time.monotonic()
    try:
        out = run_network(net, x, record=neurons, worker=False)
    finally:
        released.set()
    assert hung and time.monotonic() - started < 30
    assert_same_spikes(g, out["trace"], simulate(g, x, T, record=True))
    actors = [a for rt in hung for a in rt._messaging_infrastructure.actors]
    assert actors and not any(a.is_alive() for a in actors)


def test_a_call_in_a_thread_returns_raises_is_checked_and_gives_up():
    from snncc.backends.lava.failures import in_thread

    assert in_thread(lambda: None, 0.2)
    with pytest.raises(ZeroDivisionError):
        in_thread(lambda: 1 / 0, 0.2)
    checks = []

    def check():
        checks.append(1)
        if len(checks) == 2:
            raise RuntimeError("a process failed")
    with pytest.raises(RuntimeError, match="a process failed"):
        in_thread(lambda: time.sleep(5), 0.2, check=check)
    blocked = threading.Event()
    started = time.monotonic()
    assert not in_thread(lambda: blocked.wait(10), 0.2, seconds=0.5)
    assert time.monotonic() - started < 5
    blocked.set()
