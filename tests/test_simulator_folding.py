"""The simulator's time-folded walk (stateless nodes evaluated once over all T steps, time in the
batch; neurons, readouts and cycles through Delays stepped) against its step-by-step walk
(``fold=False``): bit-identical float64 values at every node (spikes, currents, membranes,
outputs), the same addition counts, on every zoo family (SNASNet's backward cells are a cycle
through Delays), on graphs compiled for the sim target (addressed additions), with
hand-built delays in and out of cycles, and in Loihi 2's fixed-point arithmetic (with the
same register peaks)."""

from __future__ import annotations

import numpy as np
import pytest

from snncc import ir
from snncc import neuron as nrn
from snncc.graph import Graph
from snncc.simulator import (SPIKES, FixedPointSimulator, Simulator, estimate_bytes, plan,
                             simulate)

T = 4


#: Rows of one float64 GEMM: the BLAS computes each row the same whatever the number of rows
#: only from 4 rows up (MKL on this AVX-512 machine takes another kernel for 1-3 rows, so a
#: head Linear stepped at batch 3 differs from its time-folded 12 rows by an ulp). Both walks
#: see at least BATCH rows (5: the tracer wants a batch unlike T); they are then bit-identical.
BATCH = 5


def _zoo(family: str, seed: int = 0, batch: int = BATCH, **overrides):
    from snncc.frontends.tracer import trace
    from snncc.frontends.zoo import small

    case = small(family, seed, batch=batch, **overrides)
    g = trace(case.model, case.inputs, T=T, static=case.inputs.dim() == 4, name=family)
    x = case.inputs.numpy()
    if g.meta.get("input_layout") == "BT":
        x = np.swapaxes(x, 0, 1)  # the IR's sequence input is [T, B, ...]
    return g, x


def assert_identical(g: Graph, x, **kw):
    """Both walks, with and without record: every array equal to the bit."""
    step = simulate(g, x, record=True, fold=False, **kw)
    fold = simulate(g, x, record=True, fold=True, **kw)
    assert set(fold.trace) == set(step.trace) == set(g.nodes)
    for k, v in step.trace.items():
        np.testing.assert_array_equal(fold.trace[k], v, err_msg=k)
    for d in ("membrane", "additions", "output_sequence", "outputs"):
        a, b = getattr(step, d), getattr(fold, d)
        assert set(a) == set(b), d
        for k in a:
            np.testing.assert_array_equal(b[k], a[k], err_msg=f"{d} {k}")
    quick = simulate(g, x, fold=True, **kw)  # without record: values freed as they go
    for k in step.outputs:
        np.testing.assert_array_equal(quick.outputs[k], step.outputs[k])
    for k in step.additions:
        np.testing.assert_array_equal(quick.additions[k], step.additions[k])
    # record=SPIKES (parity checks, the sim and nir runners): the neurons' and outputs' traces
    # only, no membranes, each equal to the bit to the full record's, values freed as they go
    # (and a neuron that writes its spikes over its input does not when that input is kept)
    kept = {n.name for n in g.nodes.values() if isinstance(n, (ir.Neuron, ir.Output))}
    for walk in (False, True):
        spikes = simulate(g, x, record=SPIKES, fold=walk, **kw)
        assert set(spikes.trace) == kept and not spikes.membrane
        for k in kept:
            np.testing.assert_array_equal(spikes.trace[k], step.trace[k], err_msg=k)
        np.testing.assert_array_equal(spikes.output, step.output)
    assert estimate_bytes(g, T, BATCH, SPIKES) < estimate_bytes(g, T, BATCH, True)
    # a set of names (snncc inspect's energy counts): those traces, equal to the bit
    chosen = frozenset(list(g.nodes)[::3])
    for walk in (False, True):
        some = simulate(g, x, record=chosen, fold=walk, **kw)
        assert set(some.trace) == chosen and not some.membrane
        for k in chosen:
            np.testing.assert_array_equal(some.trace[k], step.trace[k], err_msg=k)
    return step


def _families():
    from snncc.frontends.zoo import FAMILIES

    return FAMILIES


@pytest.mark.parametrize("family", _families())
def test_zoo_family_folded_equals_stepped(family):
    g, x = _zoo(family)
    res = assert_identical(g, x)
    rates = [float(res.trace[n.name].mean()) for n in g.of_type(ir.Neuron)]
    assert 0 < np.mean(rates) < 1  # the models do fire (ties and all)
    if family == "snasnet-bw":
        assert Simulator(g).plan.cyclic_nodes > 0  # backward edges: a cycle, stepped


@pytest.mark.parametrize("family", ["spikformer-cifar", "sdt-v1", "meta-spikeformer"])
def test_compiled_for_sim_target_folded_equals_stepped(family):
    """After the sim target's passes (BN into thresholds, attention lowered to addressed
    additions, static hoisting): the same values and additions either way (without record,
    neurons write their spikes over their inputs)."""
    from snncc.passes import default_pipeline
    from snncc.pipeline import run_passes

    g, x = _zoo(family)
    g.meta["target"] = "sim"
    c = run_passes(g, default_pipeline("sim"), log=lambda s: None)
    assert Simulator(c).plan.overwrite
    res = assert_identical(c, x)
    if c.of_type(ir.AddressedAccumulate):
        assert sum(int(v.sum()) for v in res.additions.values()) > 0


def _lif(name, src):
    return ir.Neuron(name, (src,), **nrn.from_lif(2.0, 0.5, 0.0).fields())


def test_delays_inside_and_outside_cycles():
    """A Delay of 2 steps outside any cycle (a shift in time), a recurrent layer through a
    Delay (a cycle, stepped), a readout, a static input mixed with a sequence, and T shorter
    than a delay."""
    rng = np.random.default_rng(0)
    g = Graph("delays", {"T": 5})
    g.add(ir.Input("img", input_shape=(6,), static=True))
    g.add(ir.Input("seq", input_shape=(6,)))
    g.add(ir.Linear("fi", ("img",), weight=rng.normal(0, 0.5, (6, 6)), bias=rng.normal(0, .1, 6)))
    g.add(ir.Add("mix", ("fi", "seq")))
    g.add(_lif("a", "mix"))
    g.add(ir.Delay("d2", ("a",), steps=2))
    g.add(ir.Delay("back", ("b",), steps=1, shape_hint=(6,)))
    g.add(ir.Linear("wr", ("back",), weight=rng.normal(0, 0.7, (6, 6))))
    g.add(ir.Linear("wf", ("d2",), weight=rng.normal(0, 0.9, (6, 6))))
    g.add(ir.Add("cur", ("wf", "wr", "fi")))
    g.add(_lif("b", "cur"))
    g.add(ir.Delay("d9", ("b",), steps=9))
    g.add(ir.Add("both", ("b", "d9")))
    g.add(ir.Readout("mean", ("both",)))
    g.add(ir.Output("out", ("mean",)))
    g.verify()
    p = plan(g)
    (cycle,) = [{n.name for n in nodes} for cyc, nodes in p.units if cyc]
    assert cycle == {"back", "wr", "cur", "b"}
    assert p.static == {"img", "fi"}
    x = {"img": rng.normal(0, 1, (3, 6)), "seq": rng.normal(0, 1, (5, 3, 6))}
    res = assert_identical(g, x)
    assert 0 < res.trace["b"].mean() < 1
    np.testing.assert_array_equal(res.trace["d2"][2:], res.trace["a"][:-2])
    assert not res.trace["d9"].any()


def test_fixed_point_folded_equals_stepped():
    """Loihi 2 arithmetic: the same spikes, membranes and register peaks either way."""
    from snncc.passes import default_pipeline
    from snncc.passes.quantize import calibration_inputs
    from snncc.pipeline import run_passes

    g, _ = _zoo("spikformer-cifar", batch=2)
    g.meta["target"] = "lava"
    g = run_passes(g, default_pipeline("lava"), log=lambda s: None)
    q = run_passes(g, ["quantize_for_loihi2"], log=lambda s: None)
    x = calibration_inputs(g)
    assert_identical(q, x, arithmetic="loihi2")
    a, b = FixedPointSimulator(q, fold=False), FixedPointSimulator(q, fold=True)
    a.run(x, record=True)
    b.run(x)
    assert a.peaks and a.peaks == b.peaks


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("alpha,gamma,beta,v_reset", [
    (0.5, 0.5, 0.0, 0.0), (1.0, 1.0, 0.0, 0.0), (0.75, 1.0, 0.25, -0.5),
    ("per", "per", "per", "per")])
@pytest.mark.parametrize("cmp", nrn.CMPS)
@pytest.mark.parametrize("reset", nrn.RESETS)
def test_neuron_kernel_computes_snncc_neuron_step(dtype, alpha, gamma, beta, v_reset, cmp, reset):
    """The simulator's neuron kernel (which skips multiplications by 1 and additions of 0 and
    resets in one ``addcmul``), in fresh memory and in the previous membrane's, gives
    :func:`snncc.neuron.step`'s spikes and membranes exactly, ties at the threshold included
    (inputs on a grid of 1/8)."""
    import torch

    rng = np.random.default_rng(1)
    per = lambda lo, hi: rng.integers(lo, hi, (3, 1)) / 8  # noqa: E731
    kw = dict(alpha=per(4, 9) if alpha == "per" else alpha,
              gamma=per(1, 9) if gamma == "per" else gamma,
              beta=per(-2, 3) if beta == "per" else beta, theta=per(2, 9),
              v_reset=per(-3, 1) if v_reset == "per" else v_reset, cmp=cmp, reset=reset)
    n = ir.Neuron("n", ("x",), **kw)
    n.shape = (3, 5)
    sim = Simulator.__new__(Simulator)
    sim.dtype, sim.device, sim._params = getattr(torch, dtype), torch.device("cpu"), {}
    state = sim._neuron_state(n, 4)
    tt = lambda a: torch.as_tensor(np.asarray(a), dtype=sim.dtype)  # noqa: E731
    reused = sim._neuron_state(n, 4)
    v = tt(n.v_init).expand(4, 3, 5).clone()
    fired = 0
    for _ in range(12):
        x = tt(rng.integers(-4, 12, (4, 3, 5)) / 8)
        s, got = sim._neuron_step(n, state, x)
        s2, got2 = sim._neuron_step(n, reused, x, reuse=True)  # in the previous v's memory
        assert torch.equal(s2, s) and torch.equal(got2, got)
        s_ref, v, _ = nrn.step(v, x, *(tt(kw[k]) for k in ("alpha", "gamma", "beta", "theta",
                                                              "v_reset")), cmp, reset)
        assert torch.equal(s, s_ref) and torch.equal(got, v)
        fired += int(s.sum())
    assert 0 < fired < 12 * 60


def test_fixed_point_does_not_import_the_simulator():
    """One-way dependency: the simulator chooses fixed-point kernels; fixed_point.py knows
    nothing of the simulator."""
    import ast
    from pathlib import Path

    import snncc.fixed_point as fixed_point

    tree = ast.parse(Path(fixed_point.__file__).read_text())
    imported = {(node.module or "") + "." + a.name if isinstance(node, ast.ImportFrom) else a.name
                for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for a in node.names}
    assert not [m for m in imported if "simulator" in m], imported


@pytest.mark.parametrize("op,kw,shape", [
    (ir.Conv2d, dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=1), (4, 9, 11)),
    (ir.Conv2d, dict(padding=(1, 1), groups=4), (4, 6, 6)),
    (ir.Conv1d, dict(stride=(2,), padding=(1,), dilation=(2,), groups=2), (4, 13)),
])
def test_float32_onednn_convolution_is_the_convolution_up_to_rounding(op, kw, shape):
    """float32 on a CPU runs convolutions in oneDNN (weight reordered for the input's shape,
    channels-last activations): F.conv's values up to float32 rounding, at one batch size,
    then another (the weight reordered again), then the first again; float64 keeps F.conv's
    kernel."""
    import torch
    import torch.nn.functional as F

    from snncc.simulator import _onednn_conv

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    rng = np.random.default_rng(0)
    k = (3,) * (len(shape) - 1)
    w = rng.standard_normal((8, shape[0] // kw["groups"], *k))
    n = op("c", ("x",), weight=w, bias=rng.standard_normal(8), **kw)
    conv = F.conv1d if op is ir.Conv1d else F.conv2d
    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    kernel = _onednn_conv(n, t(w), t(n.bias))
    first = None
    for batch in (5, 2, 5):
        x = torch.as_tensor(rng.random((batch, *shape)) < 0.3, dtype=torch.float32)
        ref = conv(x, t(w), t(n.bias), n.stride, n.padding, n.dilation, n.groups)
        got = kernel(x)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        first = first if first is not None else (x, got)
    torch.testing.assert_close(kernel(first[0]), first[1], rtol=0, atol=0)


def test_float32_simulator_agrees_with_float64_up_to_rounding():
    """The float32 fast path (oneDNN convolutions on channels-last activations, neurons in
    that layout) on a zoo model: the same spikes as float64 but for rounding ties, outputs
    within float32 rounding; float64 never takes it."""
    g, x = _zoo("meta-spikeformer")
    assert not Simulator(g, "float64").onednn
    a = simulate(g, x, record=True, dtype="float64")
    b = simulate(g, x, record=True, dtype="float32")
    for k, v in a.trace.items():
        if isinstance(g[k], ir.Neuron):
            assert (b.trace[k] == v).mean() > 0.999, k
    for k, v in a.outputs.items():
        np.testing.assert_allclose(b.outputs[k], v, rtol=1e-3, atol=1e-3)
