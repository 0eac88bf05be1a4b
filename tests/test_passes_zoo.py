"""The passes on the zoo's small configurations, traced by the torch.fx front-end: BN statistics
randomised (10% negative and 5% zero gammas), firing rates 5-95%, T = 4, float64.

- each pass alone: identical spikes at every neuron (seeds 0 and 1);
- the default pipelines with the options the CLI gives them (sim: seeds 0-2, lava: seeds 0-1;
  the back-ends' own passes are theirs to test): identical spikes, no Scale before a neuron or
  SpikeMatMul left, in the graph and in its printed IR, and no BatchNorm but those the
  simulator computes itself (a weight fold would round), none of them folded into weights;
- the attention neuron's ties (input exactly at the threshold) survive the scale merge;
- the lowered attention's additions, as the simulator counts them, equal the spike-address x
  row-length events counted by a loop.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from snncc import ir
from snncc import neuron as nrn
from snncc.errors import UnsupportedError
from snncc.passes import default_pipeline
from snncc.pipeline import PASSES, for_target, run_passes
from snncc.simulator import simulate

from test_passes import apply, assert_same_spikes, check_additions

zoo = pytest.importorskip("snncc.frontends.zoo")
tracer = pytest.importorskip("snncc.frontends.tracer")

T = 4
OUR_MODULES = {"attention", "batchnorm", "hoist", "housekeeping", "legalize", "repconv", "sdsa"}
#: (family, constructor overrides); Meta-SpikeFormer also with SDSA-1/2 (Hadamard) and SDSA-4
FAMILIES = [(f, ()) for f in zoo.FAMILIES]
CASES = FAMILIES + [("meta-spikeformer", (("sdsa", s),)) for s in (1, 2, 4)]


def _id(case) -> str:
    return case[0] + "".join(f"-{k}{v}" for k, v in case[1])


PIPELINE_RUNS = ([(c, "sim", s) for s in (0, 1, 2) for c in CASES]
                 + [(c, "lava", s) for s in (0, 1) for c in FAMILIES])


@functools.lru_cache(maxsize=None)
def traced(family: str, overrides: tuple, seed: int):
    """(graph, simulator input, its recorded run) of a small zoo model; skips if the tracer
    cannot trace it."""
    case = zoo.small(family, seed, **dict(overrides))
    x = case.inputs
    sequence = x.dim() == 5
    try:
        g = tracer.trace(case.model, x, T=T, static=not sequence, name=family)
    except (UnsupportedError, RecursionError) as err:
        pytest.skip(f"the tracer cannot trace {family}: {str(err)[:200]}")
    x = x.numpy()
    if sequence and g.meta.get("input_layout") == "BT":
        x = np.swapaxes(x, 0, 1)
    return g, x, simulate(g, x, T=T, record=True)


ATTENTION_PASSES = ("merge_sdsa_scale_into_threshold", "lower_spike_matmul_to_addressed_additions")


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize("name", ("fold_batchnorm_into_threshold", "fold_batchnorm_into_weights",
                                  "reparameterize_repconv", "remove_identities",
                                  "fold_constants") + ATTENTION_PASSES)
def test_each_pass_alone(case, name, seed):
    if case[1] and name not in ATTENTION_PASSES:
        pytest.skip("the SDSA variants differ in the attention only")
    g, x, ref = traced(*case, seed)
    h = apply(g, name)
    if g.format() == h.format():
        pytest.skip(f"{name} has nothing to do here")
    assert_same_spikes(g, h, x, ref=ref)
    if name.startswith("fold_batchnorm"):
        assert not h.of_type(ir.BatchNorm), h.meta["reports"][name]["declined"]


@pytest.mark.parametrize("case", FAMILIES, ids=_id)
def test_hoist_marks_static_layers_only(case):
    """Hoisting changes no node (so no simulator result): it marks the layers on the image."""
    g, _, _ = traced(*case, 0)
    h = apply(g, "hoist_static_input")
    assert h.format() == g.format()
    static = any(i.static for i in g.inputs)
    assert bool(h.meta["hoisted"]) == static
    for k in h.meta["hoisted"]:
        assert all(i in h.meta["hoisted"] or h[i].op == "Input" for i in h[k].inputs)


def _scale_before_neuron(g) -> list[str]:
    cons = g.consumers()
    return [s.name for s in g.of_type(ir.Scale)
            if any(isinstance(g[c], ir.Neuron) for c in cons[s.name])]


@pytest.mark.parametrize("case, target, seed", PIPELINE_RUNS,
                         ids=[f"{_id(c)}-{t}-{s}" for c, t, s in PIPELINE_RUNS])
def test_default_pipeline(case, target, seed):
    g, x, ref = traced(*case, seed)
    g = g.copy()
    g.meta["target"] = target
    pm = for_target(target, [p for p in default_pipeline(target)  # a back-end's passes: its tests
                             if PASSES[p].fn.__module__.split(".")[-1] in OUR_MODULES],
                    log=lambda s: None)
    h = pm.run(g)
    assert not h.of_type(ir.SpikeMatMul) and not _scale_before_neuron(h)
    printed = h.format()
    assert "SpikeMatMul(" not in printed
    folds = h.meta["reports"]["fold_batchnorm_into_threshold" if target == "sim"
                              else "fold_batchnorm_into_weights"]
    kept = {n.name for n in h.of_type(ir.BatchNorm)}
    assert printed.count("BatchNorm(") == len(kept)
    if target == "sim":  # BN statistics are random: no weight fold is exact
        assert not folds["into_weights"]
        assert kept == set(folds["declined"])
        # (proj_conv's BN after a RepConv's last BN has no weights to fold into)
        assert all("the target computes the BN itself" in why
                   or "(BatchNorm) is not a conv/linear it could be folded into" in why
                   for why in folds["declined"].values())
    else:  # what only a rounding weight fold removes is left to the Lava writer
        assert kept == set(folds.get("folded_when_written", []))
    assert_same_spikes(g, h, x, ref=ref)


def test_the_simulator_keeps_residual_batchnorms_and_the_models_weights():
    """Meta-SpikeFormer's BNs on the residual stream (no neuron alone after them) would fold
    into the weights only with rounding: the simulator computes them, and every synapse keeps the
    traced weights: the very arrays, or (a fold into a threshold of a negative or zero BN
    scale) each channel's weights times 1, -1 or 0, same dtype; the lava pipeline leaves their
    fold to the writer."""
    g, x, ref = traced("meta-spikeformer", (), 0)
    g = g.copy()
    weights = {n.name: n.weight for n in g.of_type(ir.Conv2d, ir.Conv1d, ir.Linear)}
    h = for_target("sim").run(g)
    kept = {n.name for n in h.of_type(ir.BatchNorm)}
    assert {"block3.0.mlp.fc2_bn", "ConvBlock1_1.0.bn2"} <= kept, kept
    synapses = [n for n in h.of_type(ir.Conv2d, ir.Conv1d, ir.Linear) if n.name in weights]
    assert sum(n.weight is weights[n.name] for n in synapses) > len(synapses) // 2
    for n in synapses:
        assert n.weight.dtype == weights[n.name].dtype
        new, old = (w.reshape(len(w), -1) for w in (n.weight, weights[n.name]))
        assert all(any(np.array_equal(a, s * b) for s in (1, -1, 0))
                   for a, b in zip(new, old)), n.name
    assert_same_spikes(g, h, x, ref=ref)
    lava = for_target("lava").run(traced("meta-spikeformer", (), 0)[0].copy())
    left = lava.meta["reports"]["fold_batchnorm_into_weights"]["folded_when_written"]
    assert {"block3.0.mlp.fc2_bn", "ConvBlock1_1.0.bn2"} <= set(left)


def _nir_parameters(graph) -> dict:
    """Every float array of a NIR graph (weights, biases, neuron parameters) by (node, field),
    converted as ``nir.write`` converts it."""
    out = {}
    for name, node in graph.nodes.items():
        for f, v in node.to_dict().items():
            if f != "metadata" and hasattr(v, "__array__"):
                a = np.asarray(v)
                if a.dtype.kind == "f":
                    out[name, f] = a
    return out


@functools.lru_cache(maxsize=None)
def traced_float32(family: str):
    """A small zoo model in float32, as checkpoints are."""
    case = zoo.small(family, 0)
    x = case.inputs.float()
    return tracer.trace(case.model.float(), x, T=T, static=x.dim() == 4, name=family), x.numpy()


#: every family in float64, and Meta-SpikeFormer in float32
WHEN_WRITTEN_CASES = [(c, "float64") for c in FAMILIES] + [(("meta-spikeformer", ()), "float32")]


def _when_written_case(case, dtype):
    """(graph, simulator input)"""
    return traced(*case, 0)[:2] if dtype == "float64" else traced_float32(case[0])


@pytest.mark.parametrize("case, dtype", WHEN_WRITTEN_CASES,
                         ids=[f"{_id(c)}-{d}" for c, d in WHEN_WRITTEN_CASES])
def test_nir_folds_when_written_what_the_pass_would_fold(case, dtype, tmp_path):
    """The nir pipeline leaves a rounding weight fold to the writer (``weight_folds=
    "when_written"``): the IR keeps the BN and the traced weights, and the file holds the very
    arrays of a graph the pass folded (same nodes, edges, values and dtypes), the scaled
    weights computed one layer at a time as ``nir.write`` writes them. A RepConv's last BN (not
    merged by default) feeds another BN, which then folds into its neuron instead of across both
    BNs: the file read back gives the same spikes as the graph the pass folded."""
    from snncc.frontends.nir_reader import read_nir

    import nir

    from snncc.backends.nir.writer import emit_nir, to_nir_graph
    from snncc.passes.batchnorm import folds_left_to_writer
    from snncc.passes.common import ChannelScaled

    g, x = _when_written_case(case, dtype)
    new = for_target("nir", log=lambda s: None).run(g.copy())
    old = for_target("nir", log=lambda s: None, options={
        "fold_batchnorm_into_threshold": {"weight_folds": "any"}}).run(g.copy())
    report = new.meta["reports"]["fold_batchnorm_into_threshold"]
    left = report.get("folded_when_written", [])
    assert {n.name for n in new.of_type(ir.BatchNorm)} == set(left)
    assert set(left) <= set(report["ties_may_differ"])
    assert (report["ties_may_differ"].keys()
            == old.meta["reports"]["fold_batchnorm_into_threshold"]["ties_may_differ"].keys())
    if case[0] == "meta-spikeformer":
        assert "block3.0.mlp.fc2_bn" in left
    after_a_bn = any(isinstance(new[new[k].inputs[0]], ir.BatchNorm) for k in left)
    assert after_a_bn == (case[0] == "meta-spikeformer")  # a RepConv's last BN, proj_conv's
    if after_a_bn:  # a BN right after a BN left to the writer
        assert_same_spikes(old, read_nir(emit_nir(new, tmp_path / "m.nir")), x)
        return
    written = to_nir_graph(new)
    lazy = [k for k, v in written.nodes.items() if isinstance(getattr(v, "weight", None),
                                                              ChannelScaled)]
    assert len(lazy) == len(folds_left_to_writer(new))  # one per synapse, its BNs in it
    expected = to_nir_graph(old)
    assert sorted(written.edges) == sorted(expected.edges)
    computed = []  # each scaled weight is computed once, as it is written (not also to size it)
    to_array = ChannelScaled.__array__
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ChannelScaled, "__array__",
                   lambda self, *a, **k: computed.append(id(self)) or to_array(self, *a, **k))
        path = emit_nir(new, tmp_path / "m.nir")
    assert len(computed) == len(set(computed)) == len(lazy)
    for graph in (written, nir.read(path, type_check=False)):
        got, want = _nir_parameters(graph), _nir_parameters(expected)
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k


@pytest.mark.parametrize("case, dtype", WHEN_WRITTEN_CASES,
                         ids=[f"{_id(c)}-{d}" for c, d in WHEN_WRITTEN_CASES])
def test_lava_folds_when_written_what_the_pass_would_fold(case, dtype):
    """The lava pipeline leaves a rounding weight fold to the lowering (``weight_folds=
    "when_written"``): the lowered network has the processes, connections and arrays (each
    converted as the artifact writer converts it) of a graph the pass folded; a folded BN shows
    the value its synapse showed there."""
    from snncc.backends.lava.lower import lower
    from snncc.passes.latency import require_plan

    g, _ = _when_written_case(case, dtype)
    nets, reports = [], []
    for folds in ("when_written", "any"):
        try:
            h = for_target("lava", log=lambda s: None, options={
                "fold_batchnorm_into_weights": {"weight_folds": folds}}).run(g.copy())
        except UnsupportedError as e:  # SNASNet's recurrent cells: Lava needs feed-forward
            pytest.skip(f"not a Lava graph: {str(e)[:100]}")
        nets.append(lower(h, require_plan(h)))
        reports.append(h.meta["reports"]["fold_batchnorm_into_weights"])
    new, old = nets
    # random BN statistics: every weight fold rounds
    assert reports[0]["folded_when_written"] == reports[1]["into_weights"]
    assert reports[0]["ties_may_differ"].keys() == reports[1]["ties_may_differ"].keys()
    assert len(new.processes) == len(old.processes)
    for p, q in zip(new.processes, old.processes):
        assert (p.name, p.type, p.shape, p.inputs, p.params) == (q.name, q.type, q.shape,
                                                                 q.inputs, q.params)
        assert p.arrays.keys() == q.arrays.keys()
        for k in p.arrays:
            a, b = np.asarray(p.arrays[k]), np.asarray(q.arrays[k])
            assert a.dtype == b.dtype and np.array_equal(a, b), (p.name, k)
    for name, port in new.values.items():  # a folded BN: what its synapse showed there
        shown = name
        while shown not in old.values:
            shown = g[shown].inputs[0]
        assert port == old.values[shown], name
    assert new.shapes == old.shapes | {k: g[k].shape for k in new.shapes if k not in old.shapes}


@pytest.mark.parametrize("case", [(f, ()) for f in ("spikformer-cifar", "spikformer-imagenet",
                                                     "spikformer-dvs", "meta-spikeformer")],
                         ids=lambda c: c[0])
def test_attention_ties_survive_the_scale_merge(case):
    """The attention neuron charges integer counts with dyadic constants (tau 2, s = 1/8 or
    1/4, theta 1/2), so its membrane equals the threshold exactly at some steps: those ties
    must fire the same after theta/s."""
    g, x, ref = traced(*case, 0)
    h = apply(g, "merge_sdsa_scale_into_threshold")
    merged = h.meta["reports"]["merge_sdsa_scale_into_threshold"]["merged"]
    assert merged
    assert_same_spikes(g, h, x, ref=ref)
    res = simulate(h, x, T=T, record=True)
    ties = 0
    for entry in merged.values():
        n = h[entry["neuron"]]
        v = np.broadcast_to(n.v_init, res.membrane[n.name].shape[1:])
        for t in range(T):
            charged = nrn.charge(v, res.trace[n.inputs[0]][t], n.alpha, n.gamma, n.beta)
            ties += int(np.sum(charged == n.theta))
            v = res.membrane[n.name][t]
    assert ties > 0, "no membrane hit the threshold exactly: the tie case is not exercised"


@pytest.mark.parametrize("case", [c for c in FAMILIES if c[0] in ("spikformer-cifar", "sdt-v1",
                                                                    "meta-spikeformer")],
                         ids=_id)
def test_attention_additions_match_independent_count(case):
    g, x, _ = traced(*case, 0)
    g = apply(apply(g, "merge_sdsa_scale_into_threshold"),
              "lower_spike_matmul_to_addressed_additions")
    rep = g.meta["reports"]["lower_spike_matmul_to_addressed_additions"]
    assert rep["chains"] or rep["column_sums"]
    for chain in rep["chains"].values():
        assert chain["order"] and chain["heads"] >= 1
    assert check_additions(g, x) > 0
