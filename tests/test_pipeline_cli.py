"""Pass manager hooks and the CLI's contract: real subprocesses, one-line errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from snncc import ir, serialize
from snncc.errors import PassError
from snncc.pipeline import PassManager, register_pass
from snncc.simulator import simulate

from test_core_parity import build_ir, make_params


def with_dead_branch():
    g = build_ir(make_params(0))
    g.add(ir.Linear("unused", ("flat",), weight=np.ones((2, 96))))
    return g


def test_pass_manager_runs_verifies_prints_and_dumps(tmp_path):
    logged = []
    pm = PassManager(["eliminate_dead_nodes"], print_ir_after={"eliminate_dead_nodes"},
                     dump_ir_dir=tmp_path, log=logged.append)
    g0 = with_dead_branch()
    g = pm.run(g0)
    assert "unused" not in g and "unused" in g0  # the input graph is untouched
    assert g.meta["reports"]["eliminate_dead_nodes"]["removed"] == ["unused"]
    assert "IR after eliminate_dead_nodes" in logged[0] and "%unused" not in logged[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "00-input.snnir", "00-input.txt", "01-eliminate_dead_nodes.snnir",
        "01-eliminate_dead_nodes.txt"]
    x = np.random.default_rng(0).normal(0.5, 1, (2, 2, 8, 8))
    np.testing.assert_array_equal(simulate(g0, x).output, simulate(g, x).output)


def test_pass_manager_rejects_unknown_pass_and_invalid_result():
    with pytest.raises(PassError, match="unknown pass"):
        PassManager(["no_such_pass"])

    @register_pass("break_shapes_for_test")
    def break_shapes(graph):
        graph.nodes["fc"] = ir.Linear("fc", ("flat",), weight=np.ones((5, 3)))
        return graph
    with pytest.raises(PassError, match="after pass 'break_shapes_for_test'.*'fc'"):
        PassManager(["break_shapes_for_test"]).run(build_ir(make_params(0)))


def snncc(*args):
    return subprocess.run([sys.executable, "-m", "snncc.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_inspect_prints_graph_and_parameter_counts(tmp_path):
    g = build_ir(make_params(0))
    path = serialize.save(g, tmp_path / "m.snnir")
    r = snncc("inspect", path, "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert "%lif1 = Neuron(%bn1)" in r.stdout
    total = [l for l in r.stdout.splitlines() if l.startswith("total")][0]
    assert total.split()[-1] == f"{g.param_count():,}"
    assert g.param_count() == 8 * 2 * 9 + 8 + 16 + 6 * 8 * 9 + 12 + 5 * 96 + 5
    assert '"total_parameters"' in (tmp_path / "r.json").read_text()


def test_cli_compile_sim_with_print_ir_after(tmp_path):
    path = serialize.save(build_ir(make_params(0)), tmp_path / "m.snnir")
    r = snncc("compile", path, "--target", "sim", "-o", tmp_path / "out", "--passes",
              "eliminate_dead_nodes", "--print-ir-after", "eliminate_dead_nodes")
    assert r.returncode == 0, r.stderr
    assert "IR after eliminate_dead_nodes" in r.stdout
    assert serialize.load(tmp_path / "out" / "model.snnir").format() == \
        serialize.load(path).format()


@pytest.mark.parametrize("args,needle", [
    (["inspect", "nope.snnir"], "no such file"),
    (["compile", "nope.snnir", "-o", "x", "--target", "bogus"], "unknown target 'bogus'"),
    (["compile", "ckpt.pt", "-o", "x"], "no such file"),
    (["frobnicate"], "No such command"),
])
def test_cli_errors_are_one_line(tmp_path, args, needle):
    r = subprocess.run([sys.executable, "-m", "snncc.cli", *args], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("snncc: error:") and needle in lines[0], \
        r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args", [["compile", "ckpt.pt", "--arch", "meta-spikeformer-15m",
                                   "-t", "lava", "-o", "x"],
                                  ["check", "nope.snnir", "-t", "onnx"]])
def test_a_command_refused_before_any_work_does_not_import_torch(tmp_path, args):
    """Importing torch takes about 2 s: a mistyped path is answered without it."""
    code = ("import sys\nfrom snncc.cli import main\nsys.stdout.write(str(main(sys.argv[1:])))\n"
            "sys.stdout.write(' torch' if 'torch' in sys.modules else ' no torch')")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       cwd=tmp_path, timeout=120)
    assert r.stdout == "1 no torch" and "no such file" in r.stderr, (r.stdout, r.stderr)


def test_the_process_exits_with_the_code_and_its_exit_handlers_run(tmp_path):
    """The command ends with its objects frozen out of the collection at exit: the exit code,
    exit handlers and buffered output are as with a plain exit, and a file the command wrote
    is complete."""
    code = ("import atexit, gc, sys\nfrom snncc.cli import exit_process\n"
            "atexit.register(lambda: print('handler ran, frozen', gc.get_freeze_count() > 0))\n"
            "sys.stdout.write('buffered ')\nexit_process(4)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (4, "buffered handler ran, frozen True\n"), r
    path = serialize.save(build_ir(make_params(0)), tmp_path / "m.snnir")
    r = snncc("compile", path, "--target", "onnx", "-o", tmp_path / "out", "--passes",
              "eliminate_dead_nodes")
    assert r.returncode == 0, r.stderr
    assert snncc("check", path, "--artifact", tmp_path / "out", "-t", "onnx").returncode == 0


def test_cli_corrupt_snnir_one_line(tmp_path):
    (tmp_path / "bad.snnir").write_bytes(b"\x00" * 100)
    r = snncc("inspect", tmp_path / "bad.snnir")
    assert r.returncode == 1 and "corrupt or truncated" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
