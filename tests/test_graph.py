"""Verifier, printer, cycles through state, and the .snnir file format."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from snncc import ir, serialize
from snncc.errors import FormatError, IRError, OutputError, ShapeError, VerificationError
from snncc.graph import Graph
from snncc.simulator import simulate

from test_core_parity import build_ir, make_params


def small_graph() -> Graph:
    g = Graph("small", {"T": 3})
    g.add(ir.Input("x", input_shape=(4,)))
    g.add(ir.Linear("fc", ("x",), weight=np.ones((3, 4))))
    g.add(ir.Neuron("n", ("fc",)))
    g.add(ir.Output("out", ("n",)))
    return g


def test_shape_mismatch_names_the_node():
    g = small_graph()
    with pytest.raises(ShapeError, match="fc2") as e:
        g.add(ir.Linear("fc2", ("n",), weight=np.ones((2, 5)), path="head.fc"))
    assert "expects last axis 5" in str(e.value) and "head.fc" in str(e.value)


def _numpy_broadcasts(shape, to) -> bool:
    try:
        return np.broadcast_shapes(shape, to) == to
    except ValueError:
        return False


@pytest.mark.parametrize("shape", [(), (1,), (3,), (5,), (4, 1, 1), (1, 5, 1), (4, 5, 5),
                                   (2, 1, 1), (1, 4, 5, 5), (4, 5), (5, 5)])
def test_neuron_parameters_broadcast_as_numpy_does(shape):
    g = Graph("per_channel", {"T": 2})
    g.add(ir.Input("x", input_shape=(4, 5, 5)))
    neuron = ir.Neuron("n", ("x",), theta=np.full(shape, 0.5), path="blocks.0.lif")
    if _numpy_broadcasts(shape, (4, 5, 5)):
        g.add(neuron)
        assert g.nodes["n"].shape == (4, 5, 5)
    else:
        with pytest.raises(ShapeError, match=r"'theta' of shape .* does not broadcast") as e:
            g.add(neuron)
        assert "blocks.0.lif" in str(e.value)


def test_shape_mismatch_found_by_verify_after_edit():
    g = small_graph()
    g.nodes["fc"] = ir.Linear("fc", ("x",), weight=np.ones((3, 7)))
    with pytest.raises(ShapeError, match="'fc'"):
        g.verify()


def test_unreachable_and_dead_nodes_named():
    g = small_graph()
    g.add(ir.Linear("orphan", ("x",), weight=np.ones((2, 4))))
    with pytest.raises(VerificationError, match="'orphan'.*reaches no Output"):
        g.verify()
    g = small_graph()
    g.add(ir.Delay("d", ("loop",), shape_hint=(3,)))
    g.add(ir.Neuron("loop", ("d",)))
    g.add(ir.Add("sum", ("n", "loop")))
    g.nodes["out"].inputs = ("sum",)
    with pytest.raises(VerificationError, match="no path from any Input"):
        g.verify()


def test_dangling_edge_and_stateless_cycle_refused():
    g = small_graph()
    g.nodes["n"].inputs = ("missing",)
    with pytest.raises(VerificationError, match="'missing' does not exist"):
        g.verify()
    g = Graph("cyc")
    g.add(ir.Input("x", input_shape=(3,)))
    g.add(ir.Add("a", ("x", "b")))
    g.add(ir.Neuron("b", ("a",)))
    g.add(ir.Output("o", ("b",)))
    with pytest.raises(VerificationError, match="cycle without a Delay"):
        g.verify()


def recurrent_graph() -> Graph:
    """x -> add(x, delay(s)) -> neuron s: the neuron sees its own spikes from t-1."""
    g = Graph("rec", {"T": 5})
    g.add(ir.Input("x", input_shape=(3,)))
    g.add(ir.Delay("d", ("s",), shape_hint=(3,)))
    g.add(ir.Scale("w", ("d",), factor=np.array([-0.5, 0.25, 1.0])))
    g.add(ir.Add("a", ("x", "w")))
    g.add(ir.Neuron("s", ("a",), alpha=0.5, gamma=1.0, theta=0.6))
    g.add(ir.Output("o", ("s",)))
    return g.verify()


def test_cycle_through_delay_simulates_recurrence():
    g = recurrent_graph()
    x = np.random.default_rng(0).uniform(0, 1, (5, 2, 3))
    got = simulate(g, x, record=True).trace["s"]
    v, prev, ref = np.zeros((2, 3)), np.zeros((2, 3)), []
    for t in range(5):
        h = 0.5 * v + (x[t] + prev * np.array([-0.5, 0.25, 1.0]))
        s = (h >= 0.6).astype(float)
        v, prev = np.where(s == 1, 0.0, h), s
        ref.append(s)
    np.testing.assert_array_equal(got, np.stack(ref))


def test_delay_closing_a_cycle_needs_a_correct_hint():
    g = recurrent_graph()
    g.nodes["d"] = ir.Delay("d", ("s",), shape_hint=(4,))
    with pytest.raises((VerificationError, ShapeError)):
        g.verify()


def test_a_delay_on_no_cycle_may_come_before_its_input():
    """A pass that inserts a Delay's input afterwards (quantize_for_loihi2's encoder in front
    of a Delay of a real input) leaves the Delay first in the node order: it is no cycle and
    needs no hint (verify used to refuse it as 'a Delay closing a cycle needs shape_hint');
    a Delay really closing one still does."""
    g = Graph("late", {"T": 3})
    g.add(ir.Input("x", input_shape=(3,)))
    g.add_unchecked(ir.Delay("d", ("enc",)))
    g.add(ir.Neuron("n", ("d",)))
    g.add(ir.Output("o", ("n",)))
    g.add(ir.Scale("enc", ("x",), factor=2.0))
    g.verify()
    assert g["d"].shape == (3,)
    x = np.random.default_rng(0).uniform(0, 2, (3, 2, 3))
    np.testing.assert_array_equal(simulate(g, x, record=True).trace["d"][1:], 2.0 * x[:-1])
    g = recurrent_graph()
    g.nodes["d"] = ir.Delay("d", ("s",))
    with pytest.raises(VerificationError, match="closing a cycle needs shape_hint"):
        g.verify()


def test_printer_one_line_per_node():
    g = build_ir(make_params(0))
    text = g.format().splitlines()
    assert len(text) == len(g) + 1
    assert text[3].startswith("%bn1 = BatchNorm(%conv1)") and text[3].endswith("real")
    assert "%lif1 = Neuron(%bn1)" in text[4] and "spike" in text[4]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_refused_wherever_they_are(dtype, bad):
    """``all_finite`` reads an array's extremes: a NaN or infinity anywhere is found."""
    for i in (0, 7, 23):
        w = np.arange(24, dtype=dtype).reshape(4, 6) - 5
        w.flat[i] = bad
        assert not ir.all_finite(w)
        with pytest.raises(IRError, match="NaN or infinity"):
            ir.Linear("fc", ("x",), weight=w)
    assert ir.all_finite(np.arange(6, dtype=dtype)) and ir.all_finite(np.zeros(0, dtype))
    assert ir.all_finite(np.arange(6)) and not ir.all_finite(np.array([1 + 1j, np.nan]))


def test_bad_parameters_refused_at_construction():
    with pytest.raises(IRError, match="NaN"):
        ir.Linear("fc", ("x",), weight=np.array([[np.nan]]))
    with pytest.raises(ShapeError, match="bias"):
        ir.Conv2d("c", ("x",), weight=np.ones((4, 1, 3, 3)), bias=np.ones(3))
    with pytest.raises(IRError, match="groups"):
        ir.Conv2d("c", ("x",), weight=np.ones((4, 1, 3, 3)), groups=3)


# ----------------------------------------------------------------------------- .snnir


def test_snnir_round_trip_bit_identical(tmp_path):
    g = build_ir(make_params(1))
    path = serialize.save(g, tmp_path / "m.snnir")
    g2 = serialize.load(path)
    assert g2.format() == g.format() and g2.meta == g.meta
    for a, b in zip(g, g2):
        for name in a.arrays:
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None and y is None) or (x.tobytes() == y.tobytes())
    x = np.random.default_rng(3).normal(0.5, 1.0, (3, 2, 8, 8))
    r1, r2 = simulate(g, x, record=True), simulate(g2, x, record=True)
    for k in r1.trace:
        assert r1.trace[k].tobytes() == r2.trace[k].tobytes()


def test_snnir_recurrent_round_trip(tmp_path):
    g = recurrent_graph()
    g2 = serialize.load(serialize.save(g, tmp_path / "r.snnir"))
    x = np.random.default_rng(0).uniform(0, 1, (5, 2, 3))
    np.testing.assert_array_equal(simulate(g, x).output, simulate(g2, x).output)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_snnir_refused(tmp_path, damage):
    path = serialize.save(build_ir(make_params(2)), tmp_path / "m.snnir")
    data = path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        i = len(data) // 3
        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
    elif damage == "garbage":
        data = b"not an snnir file at all"
    else:
        data = b""
    path.write_bytes(data)
    with pytest.raises(FormatError, match="m.snnir"):
        serialize.load(path)


def test_wrong_version_refused(tmp_path):
    g = build_ir(make_params(0))
    arrays = serialize.to_bytes_dict(g)
    header = bytes(arrays[serialize.HEADER]).decode().replace('"version": 1', '"version": 99')
    arrays[serialize.HEADER] = np.frombuffer(header.encode(), dtype=np.uint8)
    np.savez(tmp_path / "v.snnir", **arrays)
    (tmp_path / "v.snnir.npz").rename(tmp_path / "v.snnir")
    with pytest.raises(FormatError, match="version 99"):
        serialize.load(tmp_path / "v.snnir")


def test_failed_save_leaves_previous_file(tmp_path, monkeypatch):
    path = serialize.save(build_ir(make_params(0)), tmp_path / "m.snnir")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(serialize, "_write_npy", boom)  # the disk fills as an array is written
    with pytest.raises(OutputError, match="no space left on the device"):
        serialize.save(build_ir(make_params(1)), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.snnir"]
