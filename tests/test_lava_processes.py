"""Each Lava mapping on its own, in real Lava (Loihi2SimCfg, floating_pt), against the IR
simulator: the compatibility shim, Lava's own Dense/Sparse/Conv/LIF, every custom process
(ops, delay, readout, the per-neuron canonical LIF) and the virtual-port reshapes."""

from __future__ import annotations

import numpy as np
import pytest

from snncc import ir
from snncc.backends.lava.compat import lava
from snncc.backends.lava.lower import lower
from snncc.backends.lava.runner import run_network
from snncc.graph import Graph
from snncc.passes.latency import latency_plan
from snncc.simulator import simulate

T, B = 4, 2


def check_against_simulator(g: Graph, x, exact: bool = True) -> dict:
    """Run g in Lava and in the simulator; every observable non-input node must agree
    (bit for bit unless ``exact`` is False: then to 1e-13 relative). Returns the Lava net."""
    g.verify()
    net = lower(g, latency_plan(g))
    nodes = [k for k in [*net.values, *net.levels] if g[k].op != "Input"]
    got = run_network(net, x, record=nodes)["trace"]  # T from the sequences or the graph
    ref = simulate(g, x, T, record=True).trace
    for k in nodes:
        assert got[k].shape == ref[k].shape, k
        if exact:
            assert np.array_equal(got[k], ref[k]), f"{k}: max diff {np.abs(got[k] - ref[k]).max()}"
        else:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-13, atol=1e-15, err_msg=k)
    return net


def spikes(rng, shape, p=0.4):
    return (rng.random((T, B, *shape)) < p).astype(np.float64)


def graph(*nodes: ir.Node, out: str) -> Graph:
    g = Graph("unit", {"T": T})
    for n in nodes:
        g.add(n)
    g.add(ir.Output("out", (out,)))
    return g


def test_compat_shim_makes_var_model_import_without_sharing_defaults():
    vm = lava(".magma.compiler.var_model")
    a, b = vm.CoreEncoder(), vm.CoreEncoder()
    assert a.x == vm.ByteEncoder() and a.x is not b.x


def test_lava_dense_and_lif_match_the_canonical_neuron(rng):
    """Lava's own Dense + LIF(Reset): gamma folded into the weights, '>=' legalised."""
    w, b = rng.normal(0.3, 0.6, (5, 6)), rng.normal(0.2, 0.1, 5)
    g = graph(ir.Input("x", input_shape=(6,), input_kind="spike"),
              ir.Linear("fc", ("x",), weight=w, bias=b),
              ir.Neuron("n", ("fc",), alpha=0.5, gamma=0.5, beta=0.1, theta=0.6), out="n")
    net = check_against_simulator(g, spikes(rng, (6,)))
    assert {s.type for s in net.processes} == {"Dense", "LIFReset"}
    assert "fc" not in net.values  # the neuron absorbed its bias and scale


def unary_case(op: ir.Node, shape, kind="spike"):
    def build(rng):
        x = spikes(rng, shape) if kind == "spike" else rng.normal(size=(T, B, *shape))
        return graph(ir.Input("x", input_shape=shape, input_kind=kind), op, out=op.name), x
    return build


def multi_input_case(rng):
    """Add of three (one broadcast), Hadamard, both spike matmuls, a three-way Concat."""
    x = spikes(rng, (2, 3, 4))
    g = graph(ir.Input("x", input_shape=(2, 3, 4), input_kind="spike"),
              ir.Transpose("xt", ("x",), perm=(0, 2, 1)),
              ir.Scale("r", ("xt",), factor=rng.normal(size=(4, 1))),
              ir.Sum("s", ("x",), axes=(0,), keepdim=True),
              ir.Add("add", ("x", "s", "x")),
              ir.Hadamard("had", ("x", "add")),
              ir.SpikeMatMul("qk", ("x", "xt")),
              ir.AddressedAccumulate("acc", ("x", "r")),
              ir.Concat("cat", ("had", "x", "add"), axis=2),
              ir.Add("tail", ("qk", "acc")),
              ir.Flatten("f1", ("tail",)), ir.Flatten("f2", ("cat",)),
              ir.Concat("both", ("f1", "f2")), out="both")
    return g, x


def conv_case(rng):
    """Conv2d with groups, dilation and asymmetric stride/padding, then a Conv1d; biases that
    no neuron absorbs become Bias processes."""
    x = spikes(rng, (4, 7, 6))
    g = graph(ir.Input("x", input_shape=(4, 7, 6), input_kind="spike"),
              ir.Conv2d("c2", ("x",), weight=rng.normal(size=(6, 2, 3, 2)),
                        bias=rng.normal(size=6), stride=(2, 1), padding=(1, 0),
                        dilation=(1, 2), groups=2),
              ir.Reshape("r", ("c2",), target=(6, 16)),
              ir.Conv1d("c1", ("r",), weight=rng.normal(size=(3, 6, 3)), stride=(2,),
                        padding=(1,)), out="c1")
    return g, x


def linear_on_tokens_case(rng):
    """A Linear over the last axis of (N, D) tokens: Lava's Sparse with kron(I_N, W)."""
    x = rng.normal(size=(T, B, 3, 5))
    g = graph(ir.Input("x", input_shape=(3, 5)),
              ir.Linear("fc", ("x",), weight=rng.normal(size=(4, 5)), bias=rng.normal(size=4)),
              out="fc")
    return g, x


def canonical_lif_case(rng):
    """What Lava's LIF cannot express: per-channel threshold, soft reset, v_init != 0, '>=',
    alpha = 0.3 (1 - (1 - 0.3) != 0.3 in floats)."""
    x = rng.normal(0.5, 1.0, (T, B, 2, 3, 3))
    g = graph(ir.Input("x", input_shape=(2, 3, 3)),
              ir.Neuron("n", ("x",), alpha=0.3, gamma=0.7, beta=0.05,
                        theta=np.array([0.4, 0.9]).reshape(2, 1, 1), v_init=0.2,
                        reset="soft"), out="n")
    return g, x


def count_graph(also_output: bool = False) -> Graph:
    """round(clamp(x, 0, 4)) as the tracer builds it: four comparisons of one value (x > 0.5,
    x >= 1.5, x > 2.5, x >= 3.5, listed out of order) summed by one Add."""
    levels = [(2.5, ">"), (0.5, ">"), (3.5, ">="), (1.5, ">=")]
    nodes = [ir.Input("x", input_shape=(2, 5))]
    nodes += [ir.Neuron(f"l{i}", ("x",), alpha=0.0, gamma=1.0, beta=0.0, theta=t, cmp=c)
              for i, (t, c) in enumerate(levels)]
    nodes.append(ir.Add("count", tuple(f"l{i}" for i in range(4))))
    g = graph(*nodes, out="count")
    if also_output:
        g.add(ir.Output("level", ("l2",)))
    return g


def count_case(rng):
    """Halves and values on both sides of every threshold."""
    x = rng.choice([-1.0, 0.5, 0.7, 1.5, 2.2, 2.5, 3.5, 5.0], size=(T, B, 2, 5))
    return count_graph(), x


def stateful_case(rng):
    """An IR Delay (zeros for its first steps) beside the undelayed input, and a Readout."""
    x = rng.normal(size=(T, B, 3))
    g = graph(ir.Input("x", input_shape=(3,)), ir.Delay("d", ("x",), steps=2),
              ir.Add("add", ("x", "d")), ir.Readout("mean", ("add",)), out="mean")
    return g, x


CASES = {
    "maxpool": unary_case(ir.MaxPool2d("op", ("x",), kernel_size=(3, 3), stride=(2, 2),
                                       padding=(1, 1)), (2, 6, 5)),
    "avgpool": unary_case(ir.AvgPool2d("op", ("x",), kernel_size=(2, 2), stride=(2, 1)),
                          (2, 4, 5), kind="real"),
    "pad": unary_case(ir.Pad("op", ("x",), pads=(1, 0, 2, 1), value=np.array([0.5, -1.0])),
                      (2, 3, 3)),
    "scale": unary_case(ir.Scale("op", ("x",), factor=np.array([0.5, -2.0, 3.0])), (2, 3),
                        kind="real"),
    "sum": unary_case(ir.Sum("op", ("x",), axes=(1,)), (3, 4, 5)),
    # on a neuron's spikes (SpikeYOLO's SepRepConv): no synapse before it to fold into
    "batchnorm": unary_case(ir.BatchNorm("op", ("x",), weight=np.array([1.5, -0.7]),
                                         bias=np.array([0.2, 0.9]), mean=np.array([0.3, -0.1]),
                                         var=np.array([0.8, 2.0]), eps=1e-5), (2, 3, 3)),
    "mean": unary_case(ir.Mean("op", ("x",), axes=(-1, 0), keepdim=True), (3, 4, 5),
                       kind="real"),
    "ports": unary_case(ir.Transpose("op", ("x",), perm=(1, 2, 0)), (2, 3, 4)),
    "multi_input": multi_input_case,
    "conv": conv_case,
    "linear_tokens": linear_on_tokens_case,
    "canonical_lif": canonical_lif_case,
    "count": count_case,
    "stateful": stateful_case,
}


#: real-valued sums whose order numpy and torch choose differently (last-bit differences)
REORDERED_SUMS = {"conv", "linear_tokens", "mean",
                  "batchnorm"}  # (torch's BatchNorm fuses its multiply-add)


@pytest.mark.parametrize("case", sorted(CASES))
def test_mapping_matches_simulator(case, rng):
    g, x = CASES[case](rng)
    check_against_simulator(g, x, exact=case not in REORDERED_SUMS)


def test_a_count_of_comparisons_is_one_process(rng):
    """Its levels are no processes of their own; recorded, each is count >= d, d its place in
    the order of the thresholds (test_mapping_matches_simulator[count] compares them)."""
    net = lower(count_graph().verify(), latency_plan(count_graph()))
    assert [(p.type, p.params.get("op")) for p in net.processes] == [("UnaryOp", "Count")]
    assert net.levels == {"l1": ("count", 1), "l3": ("count", 2), "l0": ("count", 3),
                          "l2": ("count", 4)}


def test_a_level_read_elsewhere_keeps_its_process(rng):
    g = count_graph(also_output=True).verify()
    net = lower(g, latency_plan(g))
    assert not net.levels and sum(p.node == "count" for p in net.processes) == 3  # an Add chain
    x = rng.choice([0.5, 1.5, 2.5, 3.5, 4.0], size=(T, B, 2, 5))
    check_against_simulator(g, x)


def test_canonical_lif_is_used_and_says_why(rng):
    g, x = canonical_lif_case(rng)
    net = lower(g.verify(), latency_plan(g))
    assert net.custom_neurons == {"n": "Lava's LIF resets hard; this neuron resets by "
                                       "subtraction"}


def test_to_lava_lif_maps_the_canonical_neuron_or_says_why():
    """Lava's float LIF equations, written here from its docstring, with the mapped
    parameters reproduce the canonical neuron, ties at the threshold included."""
    from snncc import neuron as nrn
    from snncc.errors import UnsupportedError

    p = nrn.to_lava_lif(0.75, 0.5, 0.25, 1.0, 0.0, 0.0, ">=", "hard")
    x = np.array([1.5, 0.0, 2.0, 0.5, 1.0, 3.0])  # dyadic: h hits theta = 1.0 exactly
    v_can, v_lava, u = 0.0, 0.0, 0.0
    for xt in x:
        s_can, v_can, h = nrn.step(v_can, xt, 0.75, 0.5, 0.25, 1.0, 0.0, ">=", "hard")
        u = u * (1 - p.du) + p.weight_scale * xt
        v_lava = v_lava * (1 - p.dv) + u + p.bias
        s_lava = v_lava > p.vth
        v_lava = 0.0 if s_lava else v_lava
        assert (s_can, v_can) == (float(s_lava), v_lava)
    for args, why in [((0.5, 1, 0, 1.0, 0, 0, ">", "soft"), "subtraction"),
                      ((0.5, 1, 0, 1.0, 0.1, 0, ">", "hard"), "resets at 0"),
                      ((0.5, 1, 0, np.array([1.0, 2.0]), 0, 0, ">", "hard"), "threshold"),
                      ((0.3, 1, 0, 1.0, 0, 0, ">", "hard"), "exactly")]:
        with pytest.raises(UnsupportedError, match=why):
            nrn.to_lava_lif(*args)


@pytest.mark.parametrize("shape, k, stride, padding, dilation, groups", [
    ((7, 6, 4), (3, 2), (2, 1), (1, 0), (1, 2), 2),
    ((5, 9, 6), (3, 3), (1, 2), (2, 1), (2, 1), 6),
    ((4, 4, 8), (1, 1), (1, 1), (0, 0), (1, 1), 1)])
def test_vectorised_conv_model_is_lavas_convolution(shape, k, stride, padding, dilation, groups,
                                                    rng):
    """The Conv model snncc runs Lava's Conv process with computes lava.proc.conv.utils.conv
    (Lava's own float model: scipy, one call per channel pair), layout and flip included, for
    every lane of a stack of samples."""
    from snncc.backends.lava.processes.kernels import lava_conv

    x = rng.random((3, *shape)) < 0.4
    w = rng.normal(size=(6, *k, shape[2] // groups))
    got = lava_conv(x.astype(float), w, stride, padding, dilation)
    for lane in range(3):
        ref = lava(".proc.conv.utils").conv(x[lane], w, k, stride, padding, dilation, groups)
        np.testing.assert_allclose(got[lane], ref, rtol=1e-13, atol=1e-13)
