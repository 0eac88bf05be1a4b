"""NIR back-end and front-end with real nir.write / nir.read files: IR -> NIR -> IR gives
identical spikes (hand-built graphs of tests/test_onnx_backend.py, 3 seeds, T = 4); standard
ops become standard NIR, the rest extension subgraphs that strict mode lists; NIR graphs
written by hand the way other exporters write them import and simulate with the spikes NIR's
documented equations give (computed here with numpy, independently of snncc.neuron)."""

from __future__ import annotations

import os
from pathlib import Path

import nir
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from snncc import ir
from snncc.errors import FormatError, UnsupportedError
from snncc.simulator import simulate
from snncc.targets import get_target

from test_onnx_backend import GRAPHS, SEEDS, T, make_inputs

DT = 1e-4

EXTENSIONS = {
    "conv": {"bn1", "pad", "bn2", "lif2"},  # pool1 (max of spikes), mean: standard
    "attention": {"q_bn", "k_bn", "v_bn", "q_heads", "k_heads", "v_heads", "q_t", "k_t", "v_t",
                  "k_T", "kv", "qkv", "gate", "merge_t", "tok_sum", "cat"},  # head_mean: standard
    "recurrent": set(),
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """(graph name, seed) -> (graph, inputs, .nir path), written through the target."""
    root, out = tmp_path_factory.mktemp("nir"), {}
    for name, make in GRAPHS.items():
        for seed in SEEDS:
            g = make(seed)
            out[name, seed] = g, make_inputs(g, seed), get_target("nir").emit(
                g, root / f"{name}{seed}.nir")
    return out


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_round_trip_identical_spikes(written, name, seed, dtype):
    from snncc.frontends.nir_reader import read_nir

    g, x, path = written[name, seed]
    back = read_nir(path)
    a, b = simulate(g, x, dtype=dtype, record=True), simulate(back, x, dtype=dtype, record=True)
    neurons = [n.name for n in g.of_type(ir.Neuron)]
    assert neurons and set(neurons) <= set(back.nodes)
    for k in neurons:
        np.testing.assert_array_equal(b.trace[k], a.trace[k], err_msg=k)
    for k, v in a.outputs.items():
        np.testing.assert_array_equal(b.outputs[k], v, err_msg=k)
    assert back.meta["T"] == T and back.meta["dt"] == DT


@pytest.mark.parametrize("name", GRAPHS)
def test_written_file_is_nir_with_extensions_listed(written, name):
    from snncc.backends.nir.extensions import check_nir_types, extension_nodes

    g, _, path = written[name, 0]
    loaded = nir.read(path, type_check=False)
    check_nir_types(loaded)
    assert {n for n, _, _ in extension_nodes(loaded)} == EXTENSIONS[name]
    assert loaded.metadata["dt"] == DT
    for n, op, _ in extension_nodes(loaded):
        assert op == g[n].op


def test_type_check_refuses_a_shape_mismatch_as_nirs_own(written):
    """snncc's check (NIR's inference, found inputs kept) refuses what NIR's own type check
    refuses: a convolution that declares another input size than its producer gives."""
    from snncc.errors import FormatError
    from snncc.backends.nir.extensions import check_nir_types

    loaded = nir.read(written["conv", 0][2], type_check=False)
    check_nir_types(loaded)
    conv = next(v for v in loaded.nodes.values() if isinstance(v, nir.Conv2d))
    conv.input_shape = np.asarray(conv.input_shape) + 2
    conv.input_type = {"input": np.asarray(conv.input_type["input"])}
    conv.input_type["input"][1:] += 2
    with pytest.raises(FormatError, match="NIR type check failed"):
        check_nir_types(loaded)
    with pytest.raises(ValueError):
        nir.NIRGraph(nodes=loaded.nodes, edges=loaded.edges, type_check=True)


def test_standard_nodes_are_standard(written):
    loaded = nir.read(written["conv", 0][2], type_check=False)
    kinds = {k: type(v).__name__ for k, v in loaded.nodes.items()}
    assert kinds == {**kinds, "img": "Input", "conv1": "Conv2d", "lif1": "LIF", "conv2": "Conv2d",
                     "pool2": "AvgPool2d", "sum": "SumPool2d", "if3": "IF", "flat": "Flatten",
                     "fc": "Affine", "lif4": "LIF", "logits": "Output"}
    lif = loaded.nodes["lif1"]
    assert lif.tau.shape == lif.v_threshold.shape == (6, 10, 10)
    att = nir.read(written["attention", 0][2], type_check=False).nodes
    assert type(att["q_lin"]).__name__ == "Linear" and att["q_lin"].weight.shape == (8, 8, 8)
    assert type(att["merge"]).__name__ == "Flatten" and type(att["res"]).__name__ == "Scale"
    assert type(att["tok_late"]).__name__ == "Delay" and np.allclose(att["tok_late"].delay, 2 * DT)


def test_all_standard_graph_passes_plain_nir_read(written):
    g = nir.read(written["recurrent", 0][2])  # NIR's own type inference and checks
    assert {type(v).__name__ for v in g.nodes.values()} == {
        "Input", "Linear", "Affine", "Delay", "Scale", "LIF", "Output"}


def test_ge_becomes_strict_threshold_one_below(written):
    g, _, path = written["conv", 0]
    lif = nir.read(path, type_check=False).nodes["lif1"]
    theta = np.broadcast_to(g["lif1"].theta, lif.v_threshold.shape)
    assert np.all(lif.v_threshold < theta)
    assert np.array_equal(np.nextafter(lif.v_threshold, np.inf), theta)
    assert np.allclose(1 - DT / lif.tau, 0.5) and np.allclose(DT * lif.r / lif.tau, 0.5)


@pytest.mark.parametrize("name", ["conv", "attention"])
def test_strict_mode_lists_every_non_standard_node(written, name, tmp_path):
    g = written[name, 0][0]
    with pytest.raises(UnsupportedError) as e:
        get_target("nir").emit(g, tmp_path / "x.nir", strict=True)
    listed = {line.split(" (")[0].strip() for line in str(e.value).splitlines()[1:]}
    assert listed == EXTENSIONS[name]
    assert not (tmp_path / "x.nir").exists()


def test_reader_refuses_garbage(tmp_path):
    from snncc.frontends.nir_reader import read_nir

    bad = tmp_path / "bad.nir"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(FormatError):
        read_nir(bad)
    with pytest.raises(FormatError):
        read_nir(tmp_path / "missing.nir")


# ----------------------------------------------------------------------------- other exporters


def _lif_params(rng, n):
    """How snnTorch / Norse write an LIF: r = tau / dt (a per-step gain of 1)."""
    tau = rng.uniform(2e-4, 1e-3, n)
    return dict(tau=tau, r=tau / DT, v_leak=np.zeros(n), v_threshold=rng.uniform(.5, 1., n),
                v_reset=np.zeros(n))


def _lif_step(v, i, p):
    """NIR's LIF, forward Euler: v += dt/tau (v_leak - v + r I); spike if v > thr; reset."""
    v = v + DT / p["tau"] * (p["v_leak"] - v + p["r"] * i)
    s = v > p["v_threshold"]
    return s.astype(float), np.where(s, p["v_reset"], v)


def _recurrent_nir(seed: int):
    rng = np.random.default_rng(seed)
    p1, p2 = _lif_params(rng, 4), _lif_params(rng, 5)
    w1, b1 = rng.normal(.4, .6, (4, 3)), rng.normal(.2, .1, 4)
    w2, wr, br = rng.normal(.25, .5, (5, 4)), rng.normal(-.3, .4, (5, 5)), rng.normal(0, .1, 5)
    w3, r_if, th_if = rng.normal(.4, .3, (2, 5)), rng.uniform(.5, 1., 2), np.full(2, 1.2)
    rnn = nir.NIRGraph(  # a recurrent LIF <-> Affine subgraph, as snnTorch's RLeaky exports
        nodes={"input": nir.Input(np.array([5])), "lif": nir.LIF(**p2),
               "w_rec": nir.Affine(weight=wr, bias=br), "output": nir.Output(np.array([5]))},
        edges=[("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")])
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(np.array([3])), "fc1": nir.Affine(weight=w1, bias=b1),
               "lif1": nir.LIF(**p1), "fc2": nir.Linear(weight=w2), "rnn": rnn,
               "fc3": nir.Linear(weight=w3), "if1": nir.IF(r=r_if, v_threshold=th_if),
               "output": nir.Output(np.array([2]))},
        edges=[("input", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "rnn"),
               ("rnn", "fc3"), ("fc3", "if1"), ("if1", "output")])

    def expected(x):
        v1, v2, v3 = np.zeros((x.shape[1], 4)), np.zeros((x.shape[1], 5)), np.zeros((x.shape[1], 2))
        s2 = np.zeros_like(v2)
        out = {"lif1": [], "rnn.lif": [], "if1": []}
        for t in range(x.shape[0]):
            s1, v1 = _lif_step(v1, x[t] @ w1.T + b1, p1)
            s2, v2 = _lif_step(v2, s1 @ w2.T + (s2 @ wr.T + br), p2)  # spikes fed back at t-1
            v3 = v3 + r_if * (s2 @ w3.T)  # NIR's IF steps v += r I
            s3 = v3 > th_if
            v3 = np.where(s3, 0.0, v3)
            for k, s in zip(out, (s1, s2, s3.astype(float))):
                out[k].append(s)
        return {k: np.stack(v) for k, v in out.items()}
    return graph, expected


@pytest.mark.parametrize("seed", SEEDS)
def test_exporter_style_recurrent_graph(tmp_path, seed):
    from snncc.frontends.nir_reader import read_nir

    graph, expected = _recurrent_nir(seed)
    nir.write(tmp_path / "rnn.nir", graph)
    with pytest.raises(FormatError, match=r"node 'lif1': LIF tau = .* needs the time step dt.*"
                                          r"--nir-dt"):
        read_nir(tmp_path / "rnn.nir")  # no dt in the file: refused, not guessed
    g = read_nir(tmp_path / "rnn.nir", dt=DT)
    x = np.random.default_rng(seed).uniform(0, 1.5, (12, 2, 3))
    got, want = simulate(g, x, record=True).trace, expected(x)
    for k, v in want.items():
        assert 0.05 < v.mean() < 0.95, (k, v.mean())
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    assert g["lif1"].cmp == ">" and isinstance(g[g["rnn.w_rec"].inputs[0]], ir.Delay)


def test_exporter_style_conv_graph(tmp_path):
    """Conv2d -> CubaLIF -> SumPool2d -> Flatten -> Scale -> Threshold, plus Delay, LI, two
    edges summed into one node."""
    from snncc.frontends.nir_reader import read_nir

    rng = np.random.default_rng(7)
    w, b = rng.normal(.3, .5, (2, 1, 3, 3)), rng.normal(0, .1, 2)
    tau_syn, tau_mem = np.full((2, 6, 6), 3e-4), rng.uniform(2e-4, 6e-4, (2, 6, 6))
    cuba = dict(tau_syn=tau_syn, tau_mem=tau_mem, r=tau_mem / DT, v_leak=np.zeros((2, 6, 6)),
                v_threshold=np.full((2, 6, 6), .6), w_in=tau_syn / DT)
    scale, thr = rng.uniform(.5, 1.5, 18), np.full(18, 1.5)
    wa, wb = rng.normal(0, .5, (4, 18)), rng.normal(0, .5, (4, 18))
    li = dict(tau=np.full(4, 5e-4), r=np.full(4, 5.0), v_leak=np.zeros(4))
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(np.array([1, 6, 6])),
               "conv": nir.Conv2d(input_shape=(6, 6), weight=w, stride=1, padding=1, dilation=1,
                                  groups=1, bias=b),
               "cuba": nir.CubaLIF(**cuba),
               "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                                     padding=np.array([0, 0])),
               "flat": nir.Flatten(input_type={"input": np.array([2, 3, 3])}, start_dim=0),
               "scale": nir.Scale(scale), "thr": nir.Threshold(thr),
               "late": nir.Delay(np.full(18, 2 * DT)), "fa": nir.Linear(weight=wa),
               "fb": nir.Linear(weight=wb), "li": nir.LI(**li),
               "output": nir.Output(np.array([4]))},
        edges=[("input", "conv"), ("conv", "cuba"), ("cuba", "pool"), ("pool", "flat"),
               ("flat", "scale"), ("scale", "thr"), ("thr", "fa"), ("thr", "late"),
               ("late", "fb"), ("fa", "li"), ("fb", "li"), ("li", "output")])
    nir.write(tmp_path / "conv.nir", graph)
    g = read_nir(tmp_path / "conv.nir", dt=DT)
    x = rng.uniform(0, 1, (T + 2, 2, 1, 6, 6))
    res = simulate(g, x, record=True)

    i = v = np.zeros((2, 2, 6, 6))
    v_li, spikes, potentials, history = np.zeros((2, 4)), [], [], []
    for t in range(x.shape[0]):
        cur = F.conv2d(torch.from_numpy(x[t]), torch.from_numpy(w), torch.from_numpy(b),
                       padding=1).numpy()
        i = i + DT / tau_syn * (-i + cuba["w_in"] * cur)
        v = v + DT / tau_mem * (-v + cuba["r"] * i)
        s = v > .6
        v = np.where(s, 0.0, v)
        pooled = s.reshape(2, 2, 3, 2, 3, 2).sum(axis=(3, 5)).reshape(2, 18)
        z = (pooled * scale > thr).astype(float)
        history.append(z)
        late = history[t - 2] if t >= 2 else np.zeros_like(z)
        v_li = v_li + DT / li["tau"] * (-v_li + li["r"] * (z @ wa.T + late @ wb.T))
        spikes.append(s)
        potentials.append(v_li)
    np.testing.assert_array_equal(res.trace["cuba"], np.stack(spikes).astype(float))
    np.testing.assert_array_equal(res.trace["thr"], np.stack(history))
    assert 0.05 < np.stack(spikes).mean() < 0.95 and 0.05 < np.stack(history).mean() < 0.95
    np.testing.assert_allclose(res.output_sequence["output"], np.stack(potentials), rtol=1e-12,
                               atol=1e-12)


def test_target_runner(written):
    """The runner the CLI's parity check calls: read back and simulate."""
    g, x, path = written["recurrent", 1]
    outputs, traces = get_target("nir").run(path, x, T)
    ref = simulate(g, x, record=True)
    np.testing.assert_array_equal(outputs["y"], ref.outputs["y"])
    np.testing.assert_array_equal(traces["lif"], ref.trace["lif"])


# ----------------------------------------------------------------------------- real conv nets


def _conv_nets():
    """The conv-BN-LIF-conv-BN-LIF-maxpool-linear-IF net of examples/compile_your_model.py
    (firing rate over T as output) and an avg-pool variant, traced and run through the nir
    target's default passes (BN folded into thresholds)."""
    import sys
    from pathlib import Path

    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import functional, layer, neuron
    from torch import nn

    import snncc
    from snncc.pipeline import for_target

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from compile_your_model import ConvSNN, pretend_trained

    class AvgSNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                layer.Conv2d(2, 8, 3, padding=1, bias=False), layer.BatchNorm2d(8),
                neuron.LIFNode(tau=2.0), layer.AvgPool2d(2), layer.Flatten())
            self.head = nn.Sequential(layer.Linear(8 * 8 * 8, 10), neuron.IFNode(v_threshold=0.5))
            functional.set_step_mode(self, "m")

        def forward(self, x):
            return self.head(self.features(x)).mean(0)

    torch.manual_seed(0)
    x = torch.randn(4, 3, 2, 16, 16)
    out = {}
    for name, model in (("maxpool", ConvSNN()), ("avgpool", AvgSNN())):
        g = for_target("nir", None).run(snncc.trace(pretend_trained(model), x, T=4))
        out[name] = g, x.numpy().astype(np.float64)
    return out


@pytest.fixture(scope="module")
def conv_nets():
    return _conv_nets()


@pytest.mark.parametrize("name", ["maxpool", "avgpool"])
def test_strict_nir_accepts_spiking_conv_nets(conv_nets, name, tmp_path):
    """--strict-nir writes the example's conv net (max-pool of spikes as SumPool2d + Threshold,
    the mean over T as I + Scale(1/T)) and its avg-pool variant in standard NIR only; plain
    nir.read type-checks them; snncc reads back the same ops and the same spikes."""
    from snncc.frontends.nir_reader import read_nir

    g, x = conv_nets[name]
    path = get_target("nir").emit(g, tmp_path / f"{name}.nir", strict=True)
    loaded = nir.read(path)  # NIR's own type inference and checks
    kinds = sorted(type(v).__name__ for v in loaded.nodes.values())
    pool = ["SumPool2d", "Threshold"] if name == "maxpool" else ["AvgPool2d"]
    lifs = ["LIF", "LIF"] if name == "maxpool" else ["LIF"]
    assert kinds == sorted(["Input", "Output", "Flatten", "Affine", "IF", "I", "Scale", *pool,
                            *lifs, *(["Conv2d"] * len(lifs))])
    back = read_nir(path)
    assert [n.op for n in back.topological_order()] == [n.op for n in g.topological_order()]
    for dtype in ("float64", "float32"):
        a, b = simulate(g, x, record=True, dtype=dtype), simulate(back, x, record=True,
                                                                 dtype=dtype)
        for n in g.of_type(ir.Neuron):
            assert 0.02 < a.trace[n.name].mean() < 0.98, n.name
            np.testing.assert_array_equal(b.trace[n.name], a.trace[n.name], err_msg=n.name)
        np.testing.assert_array_equal(b.outputs["output"], a.outputs["output"])


@pytest.mark.parametrize("name", ["maxpool", "avgpool"])
def test_standard_meaning_of_conv_nets_without_snncc_metadata(conv_nets, name, tmp_path):
    """What a plain NIR consumer computes: the file with every node's metadata removed
    (--nir-compat nir-1.0.4 also drops v_reset, all 0) read by snncc as standard NIR: the
    SumPool2d + Threshold and the I + Scale(1/T) give the same spikes and, at T = 4 (1/T
    exact), the same output at the last step."""
    from snncc.frontends.nir_reader import read_nir

    g, x = conv_nets[name]
    path = get_target("nir").emit(g, tmp_path / f"{name}.nir", strict=True, compat="nir-1.0.4")
    back = read_nir(path)
    ops = {n.op for n in back.nodes.values()}
    assert "Readout" not in ops and "MaxPool2d" not in ops
    a, b = simulate(g, x, record=True), simulate(back, x, record=True)
    for n in g.of_type(ir.Neuron):
        np.testing.assert_array_equal(b.trace[n.name], a.trace[n.name], err_msg=n.name)
    np.testing.assert_array_equal(b.outputs["output"], a.outputs["output"])


def test_maxpool_of_real_values_and_unknown_T_stay_extensions(conv_nets, tmp_path):
    from snncc.backends.nir.writer import to_nir_graph

    g, _ = conv_nets["maxpool"]
    del g.meta["T"]
    try:
        with pytest.raises(UnsupportedError, match=r"mean \(Readout.*T unknown"):
            to_nir_graph(g, strict=True)
    finally:
        g.meta["T"] = 4
    real = ir.MaxPool2d("mp", ("x",), kernel_size=(2, 2), stride=(2, 2))
    from snncc.graph import Graph

    h = Graph("h", {"T": 2})
    h.add(ir.Input("x", input_shape=(1, 4, 4)))
    h.add(real)
    h.add(ir.Output("y", ("mp",)))
    with pytest.raises(UnsupportedError, match="mp .*non-spike"):
        to_nir_graph(h, strict=True)


# ----------------------------------------------------------------------------- NIR 1.0.4

NIR104 = Path(os.environ.get("SNNCC_NIR104_VENV",
                             Path(__file__).resolve().parents[1] / ".venv" / "nir104"))


@pytest.mark.skipif(not (NIR104 / "bin" / "python").exists(),
                    reason="no nir==1.0.4 environment (run scripts/nir104_env.sh)")
@pytest.mark.parametrize("name", ["maxpool", "avgpool"])
def test_nir_1_0_4_reads_compat_files(conv_nets, name, tmp_path):
    """`--nir-compat nir-1.0.4` files load with nir 1.0.4's own nir.read (the version sinabs
    pins), in a separate environment without torch; the default file does not."""
    import subprocess

    g, _ = conv_nets[name]
    compat = get_target("nir").emit(g, tmp_path / "compat.nir", compat="nir-1.0.4")
    plain = get_target("nir").emit(g, tmp_path / "plain.nir")
    script = ("import sys, nir; g = nir.read(sys.argv[1]); "
              "print(nir.version, sorted(type(v).__name__ for v in g.nodes.values()), "
              "g.metadata.get('dt'))")
    run = [str(NIR104 / "bin" / "python"), "-c", script]
    ok = subprocess.run([*run, str(compat)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("1.0.4 [") and "LIF" in ok.stdout and "0.0001" in ok.stdout
    bad = subprocess.run([*run, str(plain)], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "unexpected keyword argument" in bad.stderr


@pytest.mark.parametrize("name", GRAPHS)
def test_writer_dictionary_is_nirs_own_without_copies(name):
    """The writer writes NIR's own to_dict (Input/Output/Flatten fields, nested extension
    graphs) with the node arrays themselves, not NIR's deep copies; the per-neuron parameters
    are spreads (views with a zero stride), not copies."""
    from snncc.backends.nir.writer import _shallow_dict, to_nir_graph

    g = to_nir_graph(GRAPHS[name](0))
    ours, theirs = _shallow_dict(g), g.to_dict()

    def same(a, b):
        if isinstance(b, dict):
            assert a.keys() == b.keys()
            for k in b:
                same(a[k], b[k])
        elif isinstance(b, np.ndarray):
            assert np.array_equal(a, b) and a.dtype == b.dtype
        else:
            assert a == b
    same(ours, theirs)
    lif = next(n for n in g.nodes.values() if isinstance(n, (nir.LIF, nir.IF)))
    assert lif.v_threshold.size > 1 and 0 in lif.v_threshold.strides  # a spread, not a copy


def _datasets(path) -> dict:
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda k, o: out.update({k: (o[()], o.compression)})
                     if isinstance(o, h5py.Dataset) else None)
    return out


@pytest.mark.parametrize("chunk_bytes", [1 << 20, 1000])
@pytest.mark.parametrize("name", GRAPHS)
def test_written_file_is_what_nir_write_writes(name, chunk_bytes, tmp_path, monkeypatch):
    """snncc's writer gives ``nir.write``'s file: the same datasets and groups, values and
    dtypes, read back by h5py; per-neuron parameters gzip-compressed in chunks (small chunks:
    many per array, a partial last one, chunks of the same values written once and reused),
    a weight repeated over tokens (NIR's batched Affine) stored once under ``snncc.repeated``
    and read through a virtual dataset, everything else raw."""
    import h5py

    from snncc.backends.nir import writer

    monkeypatch.setattr(writer, "CHUNK_BYTES", chunk_bytes)
    g = writer.to_nir_graph(GRAPHS[name](0))
    writer._write(tmp_path / "ours.nir", g)
    nir.write(tmp_path / "theirs.nir", g, compression="gzip", compression_opts=1)
    ours, theirs = _datasets(tmp_path / "ours.nir"), _datasets(tmp_path / "theirs.nir")
    stored_once = {k for k in ours if k.startswith(writer.REPEATED)}
    assert ours.keys() - stored_once == theirs.keys()
    for k, (v, _) in ours.items():
        w = ours[k][0] if k in stored_once else theirs[k][0]
        assert np.asarray(v).dtype == np.asarray(w).dtype and np.array_equal(v, w), k

    def arrays(d, path, kind):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from arrays(v, f"{path}/{k}", kind)
            elif isinstance(v, np.ndarray) and kind(v):
                yield f"{path}/{k}"
    nodes = writer._shallow_dict(g)
    repeated = set(arrays(nodes, "node", writer._repeated_matrix))
    spread = set(arrays(nodes, "node", lambda v: v.size > 1 and 0 in v.strides)) - repeated
    assert spread and {k for k, (_, c) in ours.items() if c == "gzip"} == spread
    with h5py.File(tmp_path / "ours.nir", "r") as f:
        assert {k for k in repeated if f[k].is_virtual} == repeated
        assert len(stored_once) == len(repeated)
    if name == "attention":  # its Linear layers read tokens
        assert repeated
    assert all(c is None for k, (_, c) in ours.items() if k not in spread)
    # the small datasets were written with HDF5's conversion buffer cut to their size
    assert _conversion_buffer_bytes(writer._small_transfer()) == writer.COMPACT_BYTES


def _conversion_buffer_bytes(dxpl) -> int:
    import ctypes

    import h5py

    get_buffer = ctypes.CDLL(h5py.h5p.__file__).H5Pget_buffer
    get_buffer.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
    get_buffer.restype = ctypes.c_size_t
    return get_buffer(dxpl.id, None, None)


def test_non_ascii_node_names_are_written_as_nir_write_writes_them(tmp_path):
    """A node named after a module path in any script (Python identifiers may be non-ASCII):
    the same groups and datasets, and the same UTF-8 marking of their links, as ``nir.write``'s
    file; the name reads back."""
    import h5py

    from snncc.backends.nir import writer
    from snncc.frontends.nir_reader import read_nir

    g = writer.to_nir_graph(GRAPHS["conv"](0))
    old = next(k for k, v in g.nodes.items() if isinstance(v, nir.LIF))
    new = "schicht_ü.lif_λ"
    g.nodes = {new if k == old else k: v for k, v in g.nodes.items()}
    g.edges = [tuple(new if e == old else e for e in edge) for edge in g.edges]
    writer._write(tmp_path / "ours.nir", g)
    nir.write(tmp_path / "theirs.nir", g, compression="gzip", compression_opts=1)
    ours, theirs = _datasets(tmp_path / "ours.nir"), _datasets(tmp_path / "theirs.nir")
    assert ours.keys() == theirs.keys() and f"node/nodes/{new}/type" in ours

    def csets(path):
        out = {}
        with h5py.File(path, "r") as f:
            def visit(name, obj):
                parent, _, link = name.rpartition("/")
                group = f[parent or "/"]  # (held: its links proxy does not keep it open)
                out[name] = group.id.links.get_info(link.encode()).cset
            f.visititems(visit)
        return out
    assert csets(tmp_path / "ours.nir") == csets(tmp_path / "theirs.nir")
    assert csets(tmp_path / "ours.nir")[f"node/nodes/{new}"] == h5py.h5t.CSET_UTF8
    assert new in read_nir(tmp_path / "ours.nir").nodes


def test_a_weight_repeated_over_tokens_is_stored_and_read_once(tmp_path):
    """NIR's batched Affine repeats a Linear's weight over the tokens it reads: the file stores
    it once (a virtual dataset maps every token to it), snncc's reader reads it as a view (a
    Spikformer with Linear layers over 64 tokens: a 1.8 GB file, read in 5.9 GB, became 40 MB,
    read in 0.9 GB); a file mapping another matrix to one token is read as HDF5 reads it, and
    refused for weights that differ per token."""
    import h5py

    from snncc.backends.nir.writer import REPEATED, emit_nir
    from snncc.frontends.nir_reader import _nir_read, read_nir

    graph = GRAPHS["attention"](0)
    path = emit_nir(graph, tmp_path / "m.nir")
    with h5py.File(path, "r") as f:
        virtual = [k for k, v in f["node/nodes"].items() if "weight" in v
                   and v["weight"].is_virtual]
        assert virtual and len(f[REPEATED]) == len(virtual)
        name = virtual[0]
        matrix = f[f"{REPEATED}/0"][()]
    weight = _nir_read(path).nodes[name].weight
    assert weight.ndim == 3 and weight.strides[0] == 0 and weight.shape[1:] == matrix.shape
    back = read_nir(path)
    np.testing.assert_array_equal(back.nodes[name].weight, graph.nodes[name].weight)

    with h5py.File(path, "a") as f:  # token 1 of the first weight reads another matrix
        ds = f[f"node/nodes/{name}/weight"]
        shape, dtype = ds.shape, ds.dtype
        f["other"] = np.ones(shape[1:], dtype)
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        for i in range(shape[0]):
            layout[i] = h5py.VirtualSource(".", "other" if i == 1 else f"{REPEATED}/0",
                                           shape=shape[1:], dtype=dtype)
        del f[f"node/nodes/{name}/weight"]
        f[f"node/nodes/{name}"].create_virtual_dataset("weight", layout)
    read = _nir_read(path).nodes[name].weight
    assert read.strides[0] != 0 and np.all(read[1] == 1) and np.array_equal(read[0], matrix)
    with pytest.raises(UnsupportedError, match="different weights per slice"):
        read_nir(path)


class _Projection(torch.nn.Module):
    """``x @ W`` with a small constant W: the graph's Linear weight is W's transposed view."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(5, 3, generator=torch.Generator().manual_seed(0),
                                                dtype=torch.float64))

    def forward(self, x):
        mem, out = torch.zeros(x.shape[1], 3, dtype=x.dtype), []
        for t in range(x.shape[0]):
            mem = 0.5 * mem + x[t] @ self.w
            spikes = (mem > 0.5).to(x.dtype)
            mem = mem * (1.0 - spikes)
            out.append(spikes)
        return torch.stack(out)


def test_a_small_weight_that_is_a_transposed_view_is_written():
    """The writer's compact datasets take C order only: a small `x @ W` weight (W's transpose,
    a view) failed the write with h5py's "Array must be C-contiguous" (found with spytorch's
    `einsum("abc,cd->abd", (inputs, w1))`)."""
    import snncc

    x = 2 * torch.rand(T, 3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = _Projection()
    report = snncc.check(model, x, target="nir", layout="TB")
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target == 0.0
    with torch.no_grad():
        assert 0.05 < float(model(x).mean()) < 0.95
