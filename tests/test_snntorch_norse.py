"""Networks built from snnTorch's and Norse's own modules (conv + BN + neuron + linear, BN
statistics randomised), traced into IR through the library adapters, against the library's own
forward in float64: identical spikes at every neuron and the same output in the simulator,
in onnxruntime (unrolled and step models) and after writing NIR and reading it back; Lava for
a net without recurrence (slow). Plus the refusals, which name the module.

snnTorch's spike functions return float32 (``(u > 0).float()``), so a ``.double()`` snnTorch
model fails in its next layer; the reference is the float64 copy of the model with each neuron's
spike function cast to the membrane's dtype (0/1 either way). The traced model is the float32
original: its parameters are float32 values, exactly the float64 copy's.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from snncc import ir
from snncc.errors import UnsupportedError
from snncc.frontends.tracer import trace
from snncc.frontends.zoo import randomize_bn
from snncc.simulator import simulate
from snncc.targets import get_target

from conftest import assert_rates_in_range, driven, stacked_spikes

snn = pytest.importorskip("snntorch")
norse = pytest.importorskip("norse.torch")
from snntorch import utils as snn_utils  # noqa: E402

T, B = 4, 3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- networks

class LeakyLoop(nn.Module):
    """snnTorch's tutorial style: states passed explicitly, a Python loop over T on a static
    image, the output spikes recorded and stacked."""

    def __init__(self, mode: str = "subtract", delay: bool = True):
        super().__init__()
        kw = dict(reset_mechanism=mode, reset_delay=delay)
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.lif1 = snn.Leaky(beta=0.7, threshold=0.6, **kw)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(6 * 4 * 4, 10)
        self.lif2 = snn.Leaky(beta=0.9, threshold=0.25, **kw)

    def forward(self, x):
        mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        out = []
        for _ in range(T):
            spk1, mem1 = self.lif1(self.bn(self.conv(x)), mem1)
            spk2, mem2 = self.lif2(self.fc(self.pool(spk1).flatten(1)), mem2)
            out.append(spk2)
        return torch.stack(out)


class RSynapticNet(nn.Module):
    """snnTorch's RSynaptic (the current takes its own spikes back through a Linear), stepped
    with its state handed back (``spk, syn, mem = rsyn(x, spk, syn, mem)``) or kept in the
    module (``init_hidden=True``), then a Leaky readout layer."""

    def __init__(self, mode: str = "subtract", hidden: bool = False):
        super().__init__()
        self.hidden = hidden
        self.fc1 = nn.Linear(8, 12)
        self.rsyn = snn.RSynaptic(alpha=0.6, beta=0.8, threshold=0.7, linear_features=12,
                                  reset_mechanism=mode, init_hidden=hidden)
        self.fc2 = nn.Linear(12, 5)
        self.out = snn.Leaky(beta=0.9, threshold=0.4, reset_mechanism=mode)
        with torch.no_grad():
            self.rsyn.recurrent.weight.mul_(0.5)

    def forward(self, x):
        if self.hidden:
            snn_utils.reset(self.rsyn)
        else:
            spk, syn, mem = self.rsyn.init_rsynaptic()
        mem2 = self.out.init_leaky()
        out = []
        for t in range(T):
            if self.hidden:
                spk = self.rsyn(self.fc1(x[t]))
            else:
                spk, syn, mem = self.rsyn(self.fc1(x[t]), spk, syn, mem)
            spk2, mem2 = self.out(self.fc2(spk), mem2)
            out.append(spk2)
        return torch.stack(out)


class LapicqueNet(nn.Module):
    """snnTorch's tutorial-2 neuron, RC-parameterised (R, C, time_step) and from beta alone."""

    def __init__(self, mode: str = "subtract"):
        super().__init__()
        self.fc1 = nn.Linear(8, 12)
        self.rc = snn.Lapicque(R=5.1, C=5e-3, time_step=1e-3, threshold=0.5,
                               reset_mechanism=mode)
        self.fc2 = nn.Linear(12, 5)
        self.beta = snn.Lapicque(beta=0.85, time_step=1e-3, threshold=0.3, reset_mechanism=mode)
        with torch.no_grad():  # the drive is x * dt / C: 0.2 and 0.16 of the current
            self.fc1.weight.mul_(3.0)
            self.fc2.weight.mul_(12.0)

    def forward(self, x):
        mem1, mem2 = self.rc.init_lapicque(), self.beta.init_lapicque()
        out = []
        for t in range(T):
            spk1, mem1 = self.rc(self.fc1(x[t]), mem1)
            spk2, mem2 = self.beta(self.fc2(spk1), mem2)
            out.append(spk2)
        return torch.stack(out)


class AlphaNet(nn.Module):
    """snnTorch's Alpha neuron (excitatory and inhibitory currents), its state handed back."""

    def __init__(self, mode: str = "subtract"):
        super().__init__()
        self.fc1 = nn.Linear(8, 12)
        self.lif1 = snn.Alpha(alpha=0.9, beta=0.8, threshold=0.5, reset_mechanism=mode)
        self.fc2 = nn.Linear(12, 5)
        self.lif2 = snn.Alpha(alpha=0.85, beta=0.6, threshold=0.3, reset_mechanism=mode)
        with torch.no_grad():
            self.fc1.weight.mul_(2.0)
            self.fc2.weight.mul_(5.0)

    def forward(self, x):
        exc1, inh1, mem1 = self.lif1.init_alpha()
        exc2, inh2, mem2 = self.lif2.init_alpha()
        out = []
        for t in range(T):
            spk1, exc1, inh1, mem1 = self.lif1(self.fc1(x[t]), exc1, inh1, mem1)
            spk2, exc2, inh2, mem2 = self.lif2(self.fc2(spk1), exc2, inh2, mem2)
            out.append(spk2)
        return torch.stack(out)


class HiddenSequential(nn.Module):
    """``init_hidden=True``: the neurons keep their state; an nn.Sequential called per step."""

    def __init__(self, mode: str = "subtract"):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6),
            snn.Leaky(beta=0.8, threshold=0.5, init_hidden=True, reset_mechanism=mode),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, 10),
            snn.Leaky(beta=0.6, threshold=0.2, init_hidden=True, reset_mechanism=mode))

    def forward(self, x):
        return torch.stack([self.net(x) for _ in range(T)])


class TutorialNet(nn.Module):
    """snnTorch's tutorials' network: an nn.Sequential whose neurons keep their state
    (``init_hidden=True``), the last one with ``output=True`` returning its state too; the loop
    over time records the spikes and the membranes and returns the spikes (``membranes=True``:
    the membranes instead)."""

    def __init__(self, last: str = "Leaky", membranes: bool = False):
        super().__init__()
        out = (snn.Leaky(beta=0.6, threshold=0.2, init_hidden=True, output=True)
               if last == "Leaky" else
               snn.Synaptic(alpha=0.5, beta=0.6, threshold=0.3, init_hidden=True, output=True))
        self.net = nn.Sequential(
            nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6),
            snn.Leaky(beta=0.8, threshold=0.5, init_hidden=True), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(6 * 4 * 4, 10), out)
        self.membranes = membranes

    def forward(self, x):
        snn_utils.reset(self.net)
        spk_rec, mem_rec = [], []
        for _ in range(T):
            spk, *state = self.net(x)
            spk_rec.append(spk)
            mem_rec.append(state[-1])
        return torch.stack(mem_rec if self.membranes else spk_rec)


class SynapticRLeaky(nn.Module):
    """A sequence input [T, B, 8]: Synaptic (a second state, the current) and RLeaky (its own
    spikes fed back through a Linear)."""

    def __init__(self, mode: str = "subtract"):
        super().__init__()
        self.fc1 = nn.Linear(8, 12)
        self.bn = nn.BatchNorm1d(12)
        self.syn = snn.Synaptic(alpha=0.6, beta=0.8, threshold=0.7, reset_mechanism=mode)
        self.fc2 = nn.Linear(12, 10)
        self.rlif = snn.RLeaky(beta=0.7, threshold=0.3, linear_features=10, reset_mechanism=mode)
        self.fc3 = nn.Linear(10, 4)
        with torch.no_grad():
            self.rlif.recurrent.weight.mul_(0.5)

    def forward(self, x):
        syn, mem = self.syn.init_synaptic()
        spk2, mem2 = self.rlif.init_rleaky()
        out = []
        for t in range(T):
            spk1, syn, mem = self.syn(self.bn(self.fc1(x[t])), syn, mem)
            spk2, mem2 = self.rlif(self.fc2(spk1), spk2, mem2)
            out.append(self.fc3(spk2))
        return torch.stack(out).mean(0)


def _norse_p(kind: str, **kw):
    from norse.torch.functional.iaf import IAFParameters
    from norse.torch.functional.leaky_integrator import LIParameters
    from norse.torch.functional.leaky_integrator_box import LIBoxParameters
    from norse.torch.functional.lif import LIFParameters
    from norse.torch.functional.lif_box import LIFBoxParameters
    from norse.torch.functional.lsnn import LSNNParameters

    cls = {"iaf": IAFParameters, "lif": LIFParameters, "box": LIFBoxParameters,
           "li": LIParameters, "li_box": LIBoxParameters, "lsnn": LSNNParameters}[kind]
    return cls(**{k: v if isinstance(v, str) else torch.as_tensor(v) for k, v in kw.items()})


class NorseCells(nn.Module):
    """Norse's SequentialState of cells called once per step with the state list handed back."""

    def __init__(self):
        super().__init__()
        self.seq = norse.SequentialState(
            nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6),
            norse.LIFBoxCell(_norse_p("box", tau_mem_inv=200.0, v_th=0.3)),
            nn.AvgPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, 12),
            norse.LIFCell(_norse_p("lif", tau_syn_inv=300.0, tau_mem_inv=250.0, v_th=0.12)),
            nn.Linear(12, 10),
            norse.IAFCell(_norse_p("iaf", v_th=0.8)))

    def forward(self, x):
        state, out = None, []
        for _ in range(T):
            z, state = self.seq(x, state)
            out.append(z)
        return torch.stack(out)


class NorseReadout(nn.Module):
    """Norse's tutorials' classifier: spiking layers, then a leaky integrator (``LICell``, the
    multi-step ``LI``, or ``LIBoxCell`` without a current) whose voltage over time is the
    output."""

    def __init__(self, multi_step: bool = False, box: bool = False):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.lif = norse.LIFCell(_norse_p("lif", tau_syn_inv=300.0, tau_mem_inv=250.0,
                                          v_th=0.12))
        self.fc = nn.Linear(6 * 8 * 8, 10)
        li = _norse_p("li", tau_syn_inv=150.0, tau_mem_inv=120.0)
        self.li = (norse.LIBoxCell(_norse_p("li_box", tau_mem_inv=120.0)) if box else
                   norse.LI(li) if multi_step else norse.LICell(li))
        self.multi_step = multi_step

    def forward(self, x):
        s, out = None, []
        for _ in range(T):
            z, s = self.lif(self.bn(self.conv(x)), s)
            out.append(self.fc(z.flatten(1)))
        if self.multi_step:
            v, _ = self.li(torch.stack(out))
            return v
        s, volts = None, []
        for current in out:
            v, s = self.li(current, s)
            volts.append(v)
        return torch.stack(volts)


class NorseMultiStep(nn.Module):
    """Norse's multi-step modules over a [T, B, ...] sequence."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 12)
        self.lif = norse.LIF(_norse_p("lif", tau_syn_inv=400.0, tau_mem_inv=300.0, v_th=0.15))
        self.fc2 = nn.Linear(12, 10)
        self.iaf = norse.IAF(_norse_p("iaf", v_th=0.3, v_reset=-0.2))
        self.head = nn.Linear(10, 4)

    def forward(self, x):
        z, _ = self.lif(self.fc1(x))
        z, _ = self.iaf(self.fc2(z))
        return self.head(z.mean(0))


class NorseRecurrent(nn.Module):
    """Norse's recurrent LIF (its own input and recurrent weights, autapses zeroed), stepped as
    a cell with its state handed back or as the multi-step layer, then a LIF readout layer."""

    def __init__(self, multi_step: bool = False):
        super().__init__()
        from norse.torch.module.lif import LIFRecurrent, LIFRecurrentCell

        p = _norse_p("lif", tau_syn_inv=300.0, tau_mem_inv=250.0, v_th=0.1)
        self.rec = (LIFRecurrent if multi_step else LIFRecurrentCell)(8, 12, p)
        with torch.no_grad():
            self.rec.input_weights.mul_(4.0)
            self.rec.recurrent_weights.mul_(3.0)
        self.fc = nn.Linear(12, 6)
        self.out = norse.LIF(_norse_p("lif", tau_syn_inv=400.0, tau_mem_inv=300.0, v_th=0.1))
        self.multi_step = multi_step

    def forward(self, x):
        if self.multi_step:
            z, _ = self.rec(x)
        else:
            s, steps = None, []
            for t in range(x.shape[0]):
                z, s = self.rec(x[t], s)
                steps.append(z)
            z = torch.stack(steps)
        z, _ = self.out(self.fc(z))
        return z


class NorseLeaking(nn.Module):
    """Norse's cells with membranes that leak to v_leak != 0 (and start there), stepped with
    their states handed back: LIFBox, LIF, and an LIBox readout whose voltage is the output."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 12), nn.Linear(12, 10), nn.Linear(10, 4)
        self.box = norse.LIFBoxCell(_norse_p("box", tau_mem_inv=200.0, v_th=0.3, v_leak=0.1))
        self.lif = norse.LIFCell(_norse_p("lif", tau_syn_inv=300.0, tau_mem_inv=250.0,
                                          v_th=0.12, v_leak=-0.05))
        self.li = norse.LIBoxCell(_norse_p("li_box", tau_mem_inv=120.0, v_leak=0.25))

    def forward(self, x):
        s1 = s2 = s3 = None
        volts = []
        for t in range(x.shape[0]):
            z, s1 = self.box(self.fc1(x[t]), s1)
            z, s2 = self.lif(self.fc2(z), s2)
            v, s3 = self.li(self.fc3(z), s3)
            volts.append(v)
        return torch.stack(volts)


class NorseLSNN(nn.Module):
    """Norse's LSNN (Bellec et al.'s adaptive threshold, starting at v_th) as a cell stepped
    with its state handed back or as the multi-step layer, feed-forward or recurrent (its own
    input and recurrent weights), then a LIF layer."""

    def __init__(self, multi_step: bool, recurrent: bool):
        super().__init__()
        from norse.torch.module import lsnn

        p = _norse_p("lsnn", tau_syn_inv=300.0, tau_mem_inv=250.0, tau_adapt_inv=200.0,
                     v_th=0.2, v_leak=0.02, beta=0.15)
        if recurrent:
            self.fc = nn.Identity()
            self.lsnn = (lsnn.LSNNRecurrent if multi_step else lsnn.LSNNRecurrentCell)(8, 12, p)
            with torch.no_grad():
                self.lsnn.input_weights.mul_(4.0)
                self.lsnn.recurrent_weights.mul_(3.0)
        else:
            self.fc = nn.Linear(8, 12)
            self.lsnn = (lsnn.LSNN if multi_step else lsnn.LSNNCell)(p)
        self.out_fc = nn.Linear(12, 6)
        self.out = norse.LIF(_norse_p("lif", tau_syn_inv=400.0, tau_mem_inv=300.0, v_th=0.1))
        self.multi_step = multi_step

    def forward(self, x):
        if self.multi_step:
            z, _ = self.lsnn(self.fc(x))
        else:
            s, steps = None, []
            for t in range(x.shape[0]):
                z, s = self.lsnn(self.fc(x[t]), s)
                steps.append(z)
            z = torch.stack(steps)
        z, _ = self.out(self.out_fc(z))
        return z


class NorseLifted(nn.Module):
    """norse's own VGG and MobileNetV2 are built so (``norse.torch.models``): ``Lift`` applies a
    layer step by step and takes apart the ``(spikes, state)`` pair a multi-step ``LIF``
    returns; ``LIF`` returns that pair to the next ``Lift``; a residual sum of spikes."""

    def __init__(self):
        super().__init__()
        from norse.torch.module.lift import Lift

        self.stem = nn.Sequential(Lift(nn.Conv2d(2, 6, 3, padding=1)), Lift(nn.BatchNorm2d(6)),
                                  norse.LIF(_norse_p("lif", v_th=0.2)),
                                  Lift(nn.MaxPool2d(2)))
        self.block = nn.Sequential(Lift(nn.Conv2d(6, 6, 3, padding=1, bias=False)),
                                   Lift(nn.BatchNorm2d(6)), norse.LIF(_norse_p("lif", v_th=0.2)))
        self.head = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        z = self.stem(x)
        z = z + self.block(z)[0]
        return self.head(z.flatten(2)).mean(0)


# ----------------------------------------------------------------------------- harness

def _f64_reference(model: nn.Module) -> nn.Module:
    """The model in float64; snnTorch's float32 spikes cast to the membrane's dtype."""
    ref = copy.deepcopy(model).double().eval()
    for m in ref.modules():
        if type(m).__module__.startswith("snntorch._neurons"):
            m.spike_grad = (lambda g: lambda u: g(u).to(u.dtype))(m.spike_grad)
    return ref


def library_spikes(model: nn.Module, x: torch.Tensor, paths: set[str]):
    """The library's own forward in float64: (output, {module path: spikes [T, B, ...]})."""
    return stacked_spikes(_f64_reference(model), x.double(), paths, snn_utils.reset)


def sim_layout(graph, x: torch.Tensor) -> np.ndarray:
    return x.double().numpy()


def target_runs(graph, x: np.ndarray, tmp_path, targets) -> dict:
    """{target: (outputs by Output name, traces by node name)} for sim, onnx (both forms), nir,
    lava."""
    runs = {}
    sim = simulate(graph, x, T, record=True)
    runs["sim"] = (sim.outputs, sim.trace, sim)
    if "onnx" in targets:
        from snncc.backends.onnx.runner import run_onnx

        path = get_target("onnx").emit(graph, tmp_path / "m", dtype="float64")
        for form in ("unrolled", "step"):
            runs[f"onnx-{form}"] = run_onnx(path, x, form=form)
    if "nir" in targets:
        from snncc.frontends.nir_reader import read_nir

        back = simulate(read_nir(get_target("nir").emit(graph, tmp_path / "m.nir")), x, T,
                        record=True)
        runs["nir"] = (back.outputs, back.trace)
    if "lava" in targets:
        from snncc.backends.lava.runner import run_artifact
        from snncc.pipeline import run_passes

        lava = get_target("lava")
        compiled = run_passes(graph, list(lava.default_passes), log=lambda s: None)
        res = run_artifact(lava.emit(compiled, tmp_path / "lava"), x,
                           record=[n.name for n in compiled.of_type(ir.Neuron)])
        runs["lava"] = (res["outputs"], res["trace"])
    return runs


def check(model: nn.Module, x: torch.Tensor, static: bool, tmp_path,
          targets=("onnx", "nir")) -> dict:
    """Trace, run every target, assert identical spikes at every neuron against the library and
    the same output; return {target: min spike agreement} and the reference firing rates."""
    graph = trace(model, x, T=T, static=static, name=type(model).__name__)
    neurons = graph.of_type(ir.Neuron)
    paths = {n.path for n in neurons}
    y, ref = library_spikes(model, x, paths)
    assert set(ref) == paths, f"neurons without a library call: {paths - set(ref)}"
    xs = sim_layout(graph, x)
    runs = target_runs(graph, xs, tmp_path, targets)
    sim = runs["sim"][2]
    (out,) = graph.outputs
    got = sim.output if graph.meta["output_layout"] == "B" else sim.output_sequence[out.name]
    np.testing.assert_allclose(got, y, rtol=0, atol=1e-10)
    agreement = {}
    for name, (outputs, traces, *_) in runs.items():
        worst = 1.0
        for n in neurons:
            r, s = ref[n.path], traces.get(n.name)
            assert s is not None and r.shape == s.shape, (name, n.name)
            worst = min(worst, float(np.mean(r == s)))
        agreement[name] = worst
        for k, v in sim.outputs.items():
            np.testing.assert_allclose(outputs[k], v, rtol=1e-9, atol=1e-9, err_msg=name)
    rates = {n.path: float(ref[n.path].mean()) for n in neurons}
    print(f"{type(model).__name__}: agreement {agreement}, rates {rates}")
    assert all(a == 1.0 for a in agreement.values()), agreement
    assert_rates_in_range(rates)
    return agreement


def _image(seed: int, scale: float = 1.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(B, 2, 8, 8, generator=g)).float()


def _sequence(seed: int, scale: float = 1.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(T, B, 8, generator=g)).float()


def _sequence_image(seed: int, scale: float = 1.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(T, B, 2, 8, 8, generator=g)).float()


def _built(cls, seed: int, *args, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(cls(*args, **kwargs), seed).eval()


# ----------------------------------------------------------------------------- snnTorch

@pytest.mark.parametrize("mode", ["subtract", "zero", "none"])
def test_snntorch_leaky_loop(mode, tmp_path):
    check(_built(LeakyLoop, 0, mode), _image(0), True, tmp_path)


def test_snntorch_leaky_zero_without_reset_delay(tmp_path):
    """reset_delay=False with a zero reset is the same canonical neuron."""
    model = _built(LeakyLoop, 1, "zero", delay=False)
    graph = trace(model, _image(1), T=T)
    assert [n.op for n in graph.topological_order()].count("Neuron") == 2
    assert not graph.of_type(ir.Delay)
    check(model, _image(1), True, tmp_path, targets=())


@pytest.mark.parametrize("mode", ["subtract", "zero"])
def test_snntorch_init_hidden_sequential(mode, tmp_path):
    check(_built(HiddenSequential, 2, mode), _image(2), True, tmp_path)


@pytest.mark.parametrize("last", ["Leaky", "Synaptic"])
def test_snntorch_tutorial_net_whose_last_neuron_returns_its_state(last, tmp_path):
    """``init_hidden=True`` with ``output=True`` (the tutorials' last layer): the call's k-th
    call is step k as without ``output``; the state it returns may be recorded and dropped."""
    check(_built(TutorialNet, 4, last), _image(4), True, tmp_path)


class TutorialFive(nn.Module):
    """snnTorch's tutorial 5 network as its documentation writes it: ``init_hidden=False``
    neurons whose state the forward threads through a loop over a global number of steps (no
    ``model.T``), recording the last layer's spikes and membranes and returning both stacked,
    ``(spk_rec, mem_rec)``; its training takes the loss on the membranes."""

    def __init__(self, last: str = "Leaky", reset: str = "subtract"):
        super().__init__()
        self.fc1 = nn.Linear(2 * 8 * 8, 24)
        self.lif1 = snn.Leaky(beta=0.9, threshold=0.5, reset_mechanism=reset)
        self.fc2 = nn.Linear(24, 10)
        self.lif2 = snn.Leaky(beta=0.8, threshold=0.3, reset_mechanism=reset) \
            if last == "Leaky" else snn.Synaptic(alpha=0.6, beta=0.8, threshold=0.3,
                                                 reset_mechanism=reset)

    def forward(self, x):
        mem1 = self.lif1.init_leaky()
        state2 = (self.lif2.init_leaky(),) if isinstance(self.lif2, snn.Leaky) \
            else self.lif2.init_synaptic()
        spk2_rec, mem2_rec = [], []
        for _ in range(NUM_STEPS):
            spk1, mem1 = self.lif1(self.fc1(x.flatten(1)), mem1)
            spk2, *state2 = self.lif2(self.fc2(spk1), *state2)
            spk2_rec.append(spk2)
            mem2_rec.append(state2[-1])
        return torch.stack(spk2_rec, dim=0), torch.stack(mem2_rec, dim=0)


NUM_STEPS = 6  # the tutorial's global ``num_steps``


@pytest.mark.parametrize("last", ["Leaky", "Synaptic"])
def test_snntorch_tutorial_returns_spikes_and_membranes_exactly(last, tmp_path):
    """Both outputs compiled: the membranes snnTorch returns are the values its circuit
    computes (they were refused: "the state neuron returns may only be passed back"); T is
    taken from the forward's loop (6 calls of each neuron). Exact on every target."""
    from snncc import api

    model = _built(TutorialFive, 7, last).double()
    x = _image(7, scale=2.0).double()
    graph = api.load(model, x).graph
    assert graph.meta["T"] == NUM_STEPS and len(graph.outputs) == 2
    with torch.no_grad():
        spk, mem = _f64_reference(model)(x)
    res = simulate(graph, x.numpy(), NUM_STEPS)
    out_spk, out_mem = (res.output_sequence[o.name] for o in graph.outputs)
    np.testing.assert_array_equal(out_spk, spk.numpy())
    np.testing.assert_array_equal(out_mem, mem.numpy())
    assert 0.05 <= float(spk.mean()) <= 0.95 and np.ptp(out_mem) > 0.5
    for target in ("sim", "onnx", "nir", "lava"):
        rep = api.check(model, x, target=target)
        assert rep.outputs == 2 and rep.min_agreement == 1.0, (target, rep.format())
        assert rep.output_max_abs_diff_sim == rep.output_max_abs_diff_target == 0.0, target
        assert_rates_in_range({r.node: r.rate_reference for r in rep.layers})


def test_check_compares_every_output():
    """A difference in the second output alone (the membranes; the spikes and the first output
    unchanged) is what check reports."""
    from snncc import api
    from snncc.parity import check_parity

    model = _built(TutorialFive, 7).double()
    x = _image(7, scale=2.0).double()
    loaded = api.load(model, x)
    forward = model.forward
    model.forward = lambda x: (lambda s, m: (s, m + 0.25))(*forward(x))
    rep = check_parity(loaded, "onnx", x.numpy(), T=NUM_STEPS)
    assert rep.min_agreement == 1.0
    assert rep.output_max_abs_diff_sim == pytest.approx(0.25)
    assert rep.output_max_abs_diff_target == pytest.approx(0.25)
    assert "the 2 outputs' max |diff| (every step): simulator 0.25" in rep.format()


def test_snntorch_membrane_of_a_canonical_neuron_is_refused_saying_so():
    """With the 'zero' reset the Leaky neuron is the canonical neuron, whose membrane no node
    computes: returning it is refused, naming the neuron."""
    with pytest.raises(UnsupportedError) as err:
        trace(_built(TutorialFive, 4, reset="zero"), _image(4), T=NUM_STEPS)
    msg = str(err.value)
    assert "'lif2'" in msg and "membrane this neuron returns is its internal state" in msg, msg


class RegressionNet(nn.Module):
    """snnTorch's regression tutorial (part 1) network, as written there: per-neuron ``beta``
    and ``threshold`` (``torch.rand(hidden)``), a sequence input read ``x[step]``, and a
    non-firing readout (``reset_mechanism="none"``) whose membranes are the output."""

    def __init__(self, timesteps: int = T, hidden: int = 16):
        super().__init__()
        self.timesteps = timesteps
        self.fc1 = nn.Linear(8, hidden)
        self.lif_in = snn.Leaky(beta=torch.rand(hidden), threshold=torch.rand(hidden),
                                learn_beta=True)
        self.fc2 = nn.Linear(hidden, hidden)
        self.lif_hidden = snn.Leaky(beta=torch.rand(hidden), learn_beta=True)
        self.fc3 = nn.Linear(hidden, 1)
        self.li_out = snn.Leaky(beta=torch.rand(1), learn_beta=True, reset_mechanism="none")

    def forward(self, x):
        mem_1 = self.lif_in.init_leaky()
        mem_2 = self.lif_hidden.init_leaky()
        mem_3 = self.li_out.init_leaky()
        mem_3_rec = []
        for step in range(self.timesteps):
            spk_in, mem_1 = self.lif_in(self.fc1(x[step]), mem_1)
            spk_hidden, mem_2 = self.lif_hidden(self.fc2(spk_in), mem_2)
            _, mem_3 = self.li_out(self.fc3(spk_hidden), mem_3)
            mem_3_rec.append(mem_3)
        return torch.stack(mem_3_rec)


def test_snntorch_regression_tutorial_per_neuron_beta_and_threshold():
    """Per-neuron beta and threshold were refused ("a per-neuron beta ... snncc maps one value
    per layer"), and a readout whose spikes nobody reads left a dead neuron. Exact on every
    target, its membranes output equal to snnTorch's float64 forward."""
    from snncc import api

    model = _built(RegressionNet, 5).double()
    with torch.no_grad():
        model.fc2.weight.mul_(3)
    x = _sequence(5, scale=2.0).double()
    loaded = api.load(model, x)
    assert not any(n.path == "li_out" for n in loaded.graph.of_type(ir.Neuron))
    with torch.no_grad():
        want = _f64_reference(model)(x).numpy()
    res = simulate(loaded.graph, x.numpy(), T)
    np.testing.assert_array_equal(res.output_sequence[loaded.graph.outputs[0].name], want)
    for target in ("sim", "onnx", "nir", "lava"):
        rep = api.check(loaded, x.numpy(), target=target)
        assert rep.min_agreement == 1.0 and rep.output_max_abs_diff_target == 0.0, target
        assert_rates_in_range({r.node: r.rate_reference for r in rep.layers})


@pytest.mark.parametrize("mode", ["subtract", "zero", "none"])
def test_snntorch_per_neuron_beta_and_threshold_in_every_reset(mode, tmp_path):
    class PerNeuron(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 12)
            self.lif = snn.Leaky(beta=torch.linspace(0.2, 0.95, 12),
                                 threshold=torch.linspace(0.3, 1.2, 12), reset_mechanism=mode)

        def forward(self, x):
            mem = self.lif.init_leaky()
            out = []
            for step in range(T):
                spk, mem = self.lif(self.fc(x[step]), mem)
                out.append(spk)
            return torch.stack(out)

    check(_built(PerNeuron, 6), _sequence(6, scale=2.0), False, tmp_path,
          targets=("onnx", "nir", "lava"))


class OneStep(nn.Module):
    """A forward that is one time step (snnTorch tutorial 6's network: ``init_hidden``
    neurons, the last with ``output=True``; its ``forward_pass`` loops outside the model)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3)
        self.lif1 = snn.Leaky(beta=0.7, threshold=0.4, init_hidden=True)
        self.fc = nn.Linear(6 * 6 * 6, 10)
        self.lif2 = snn.Leaky(beta=0.8, threshold=0.3, init_hidden=True, output=True)

    def forward(self, x):
        return self.lif2(self.fc(self.lif1(self.conv(x)).flatten(1)))


def tutorial_forward_pass(net, x, T_steps, sequence=False):
    """snnTorch tutorial 6's ``forward_pass``, in float64: reset, call the net once per step,
    stack the spikes and the membranes."""
    net = _f64_reference(net)
    snn_utils.reset(net)
    spk_rec, mem_rec = [], []
    with torch.no_grad():
        for t in range(T_steps):
            spk, mem = net(x[t] if sequence else x)
            spk_rec.append(spk)
            mem_rec.append(mem)
    return torch.stack(spk_rec), torch.stack(mem_rec)


@pytest.mark.parametrize("sequence", [False, True])
def test_a_one_step_forward_is_compiled_as_the_loop_that_calls_it(sequence, tmp_path):
    """Each neuron called once per forward and T given: the graph is the loop a training
    script runs (T calls on the image, or on x[t] of a sequence; outputs stacked), module
    paths the model's own; exact against tutorial 6's forward_pass on every target. Without
    T it is not guessed."""
    from snncc import api
    from snncc.errors import SnnccError

    model = _built(OneStep, 3).double()
    x = (_sequence_image(3, scale=2.0) if sequence else _image(3, scale=2.0)).double()
    with pytest.raises(SnnccError, match=r"no number of time steps .model.T.: set T="):
        api.load(model, x[0] if sequence else x)
    loaded = api.load(model, x, T=T)
    graph = loaded.graph
    assert graph.meta["steps_outside"] and len(graph.outputs) == 2
    assert {n.path for n in graph.of_type(ir.Neuron)} >= {"lif1"}
    spk, mem = tutorial_forward_pass(model, x, T, sequence)
    res = simulate(graph, x.numpy(), T)
    np.testing.assert_array_equal(res.output_sequence[graph.outputs[0].name], spk.numpy())
    np.testing.assert_array_equal(res.output_sequence[graph.outputs[1].name], mem.numpy())
    assert 0.05 <= float(spk.mean()) <= 0.95
    for target in ("onnx", "lava"):
        rep = api.check(loaded, target=target)
        assert rep.outputs == 2 and rep.min_agreement == 1.0, rep.format()
        assert rep.output_max_abs_diff_target == 0.0
        assert_rates_in_range({r.node: r.rate_reference for r in rep.layers})


@pytest.mark.parametrize("mode", ["subtract", "zero", "none"])
def test_snntorch_synaptic_and_rleaky(mode, tmp_path):
    check(_built(SynapticRLeaky, 3, mode), _sequence(3), False, tmp_path)


@pytest.mark.parametrize("hidden", [False, True], ids=["state-handed-back", "init_hidden"])
@pytest.mark.parametrize("mode", ["subtract", "zero", "none"])
def test_snntorch_rsynaptic(mode, hidden, tmp_path):
    """syn = (a*syn + x) + recurrent(s[t-1]), base = b*m + syn, snnTorch's late reset: refused
    before ("not supported"). Identical at both layers on every target, Lava included."""
    check(_built(RSynapticNet, 8, mode, hidden), _sequence(8), False, tmp_path,
          targets=("onnx", "nir", "lava"))


@pytest.mark.parametrize("mode", ["subtract", "zero", "none"])
def test_snntorch_lapicque(mode, tmp_path):
    """base = ((x*R) * (1/(R*C))) * dt + (1 - dt/(R*C)) * m with its own buffers, then the
    late reset: refused before ("not supported"). Identical on every target, Lava included."""
    check(_built(LapicqueNet, 9, mode), _sequence(9, 3.0), False, tmp_path,
          targets=("onnx", "nir", "lava"))


@pytest.mark.parametrize("target", ["onnx", "nir", "lava"])
@pytest.mark.parametrize("mode", ["subtract", "zero", "none"])
def test_snntorch_alpha(mode, target, tmp_path):
    """exc = a*exc + x, inh = b*inh - x, m = tau*(exc + inh) with tau = log(a) / (log(b) -
    log(a)) + 1, and the reset of all three; refused before. Identical on every target."""
    check(_built(AlphaNet, 10, mode), _sequence(10, 3.0), False, tmp_path, targets=(target,))


def test_snntorch_mapping_shapes():
    """zero: one canonical neuron (alpha = beta, hard reset to 0, '>'); subtract: a circuit whose
    reset reads the neuron's own spikes one step back."""
    zero = trace(_built(LeakyLoop, 0, "zero"), _image(0), T=T)
    lif = zero["lif1"]
    assert (float(lif.alpha), float(lif.gamma), lif.cmp, lif.reset, float(lif.v_reset)) == \
        (pytest.approx(0.7), 1.0, ">", "hard", 0.0)
    sub = trace(_built(LeakyLoop, 0, "subtract"), _image(0), T=T)
    delays = {d.inputs[0] for d in sub.of_type(ir.Delay)}
    assert {"lif1", "lif1:mem", "lif2", "lif2:mem"} <= delays
    assert float(sub["lif1"].alpha) == 0.0 and float(sub["lif1"].theta) == pytest.approx(0.6)


# ----------------------------------------------------------------------------- Norse

def test_norse_cells_sequential_state(tmp_path):
    check(_built(NorseCells, 4), _image(4, 2.0), True, tmp_path)


@pytest.mark.parametrize("multi_step, box", [(False, False), (True, False), (False, True)],
                         ids=["LICell", "LI", "LIBoxCell"])
def test_norse_leaky_integrator_readout(multi_step, box, tmp_path):
    """The readout's voltage, computed by Scale/Add/Delay nodes in Norse's operation order (no
    spikes, no reset), equals the library's at every step, on every target."""
    model = _built(NorseReadout, 6, multi_step, box)
    graph = trace(model, _image(6, 2.0), T=T)
    assert graph.meta["output_layout"] == "TB" and len(graph.of_type(ir.Neuron)) == 1
    check(model, _image(6, 2.0), True, tmp_path)


@pytest.mark.parametrize("target", ["onnx", "nir", "lava"])
@pytest.mark.parametrize("multi_step", [False, True], ids=["LIFRecurrentCell", "LIFRecurrent"])
def test_norse_recurrent_lif(multi_step, target, tmp_path):
    """lif_step: i' = (i + W_in x) + W_rec z[t-1], then LIF's charge, current decay and reset;
    refused before ("not supported"). Identical spikes on every target, Lava included (the
    recurrent Linear is the loop's one synapse, paid for by its Delay)."""
    model = _built(NorseRecurrent, 7, multi_step)
    graph = trace(model, _sequence(7, 2.0), T=T, static=False)
    assert {"rec:input", "rec:recurrent", "rec:s[t-1]"} <= {n.name for n in graph}
    check(model, _sequence(7, 2.0), False, tmp_path, targets=(target,))


def test_norse_membranes_leaking_to_v_leak(tmp_path):
    """v_leak != 0 was refused (the membrane starts at v_leak, a Delay at 0): now its Delay is
    followed by v_leak at the first step, and the leak ``v_leak - v`` is one BatchNorm."""
    check(_built(NorseLeaking, 8), _sequence(8, 2.0), False, tmp_path)


@pytest.mark.parametrize("multi_step, recurrent", [(False, False), (True, False), (False, True),
                                                   (True, True)],
                         ids=["LSNNCell", "LSNN", "LSNNRecurrentCell", "LSNNRecurrent"])
def test_norse_lsnn(multi_step, recurrent, tmp_path):
    """LSNN was refused ("not supported"): a circuit with the threshold b a state of its own,
    starting at v_th, fired on ``h - b'`` in norse's operation order. Identical spikes on every
    target."""
    model = _built(NorseLSNN, 9, multi_step, recurrent)
    targets = ("onnx", "nir", "lava") if recurrent and not multi_step else ("onnx", "nir")
    check(model, _sequence(9, 2.0), False, tmp_path, targets=targets)


def test_norse_multistep_modules(tmp_path):
    model = _built(NorseMultiStep, 5)
    graph = trace(model, _sequence(5), T=T, static=False)
    vr = float(torch.tensor(-0.2))  # Norse's parameters are float32 tensors
    assert float(graph["iaf"].v_init) == vr and float(graph["iaf"].alpha) == 1.0
    check(model, _sequence(5, 2.0), False, tmp_path)


@pytest.mark.parametrize("name, targets", [("ConvNet", ("onnx", "nir")), ("ConvNet4", ("onnx",))])
def test_norse_own_conv_models(name, targets):
    """norse's own model constructors (``norse.torch.models.conv``), unmodified: a loop over
    steps writing each step's readout voltage into ``torch.zeros(T, B, 10)`` made in forward
    (``voltages[ts, :, :] = v``: the graph used to read the zeros, refused as a model returning
    a constant), ``relu`` of the LIF's spikes into ``LILinearCell``, whose ``(v_leak - v) + i``
    (v_leak 0) is ``i - v``. Exact at every neuron and at the output voltages, against the
    model's forward in float64."""
    import snncc
    from norse.torch.models import conv

    torch.manual_seed(0)
    model = getattr(conv, name)(num_channels=1, feature_size=28).eval()
    with torch.no_grad():
        model.fc1.weight.mul_(20)  # so that its LIF fires (default init: about 0%)
    x = (torch.rand(6, 2, 1, 28, 28, generator=torch.Generator().manual_seed(1)) < 0.5) * 10.0
    for target in targets:
        report = snncc.check(model, x, target=target, T=6)
        assert report.min_agreement == 1.0 and len(report.layers) == 3
        assert report.output_max_abs_diff_sim == report.output_max_abs_diff_target == 0.0
        assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


def test_norse_lift_takes_apart_the_pair_a_lif_returns(tmp_path):
    """Traced on shaped tensors, a norse LIF's value was its spikes alone (the adapters'
    contract for a multi-step neuron), while its node is the pair: norse's Lift then indexed
    time steps at trace time and tuple items in the graph (refused, naming MaxPool2d and the
    membrane); and a leaf's tuple was one proxy, which `isinstance(x, tuple)` does not take
    apart. norse's vgg11_bn and mobilenet_v2 (num_classes=10, 32x32) now trace, exact in the
    simulator (checked by hand)."""
    check(_built(NorseLifted, 3), _sequence_image(3, 3.0), False, tmp_path)


# ----------------------------------------------------------------------------- Lava

@pytest.mark.slow
def test_snntorch_zero_reset_net_in_lava(tmp_path):
    """Leaky with reset to zero is Lava's LIF (no circuit, no recurrence)."""
    from snncc.backends.lava.runner import run_artifact
    from snncc.pipeline import run_passes

    model = _built(LeakyLoop, 6, "zero")
    x = _image(6)
    graph = trace(model, x, T=T)
    assert not graph.of_type(ir.Delay)
    _, ref = library_spikes(model, x, {n.path for n in graph.of_type(ir.Neuron)})
    tgt = get_target("lava")
    compiled = run_passes(graph, list(tgt.default_passes), log=lambda s: None)
    art = tgt.emit(compiled, tmp_path / "art")
    res = run_artifact(art, x.double().numpy(),
                       record=[n.name for n in graph.of_type(ir.Neuron)])
    for n in graph.of_type(ir.Neuron):
        agreement = float(np.mean(res["trace"][n.name] == ref[n.path]))
        print(f"lava {n.name}: agreement {agreement}")
        assert agreement == 1.0


@pytest.mark.parametrize("make, static", [
    (lambda: (_built(LeakyLoop, 2, "subtract"), _image(2)), True),
    (lambda: (_built(HiddenSequential, 2, "subtract"), _image(2)), True),
    (lambda: (_built(SynapticRLeaky, 3, "zero"), _sequence(3)), False),
    (lambda: (_built(SynapticRLeaky, 3, "subtract"), _sequence(3)), False),
    (lambda: (_built(NorseCells, 4), _image(4, 2.0)), True),
    (lambda: (_built(NorseReadout, 6, False, False), _image(6, 2.0)), True)],
    ids=["Leaky-subtract", "init_hidden-subtract", "RSynaptic-RLeaky-zero",
         "RSynaptic-RLeaky-subtract", "norse-LIFCell", "norse-LICell"])
def test_recurrent_circuits_run_on_lava_exactly(make, static, tmp_path):
    """snnTorch's subtract reset (reading the neuron's own spikes a step late), RSynaptic and
    RLeaky's recurrent weights, norse's LIF and LI state: loops through Delays, which Lava
    used to refuse ("needs a feed-forward graph"). On Lava each loop's Delay gives up the
    steps its synapses take (passes/latency.py): every neuron identical to the library's."""
    model, x = make()
    check(model, x, static, tmp_path, targets=("lava",))


# ----------------------------------------------------------------------------- refusals

class One(nn.Module):
    def __init__(self, neuron: nn.Module, hidden: bool = False):
        super().__init__()
        self.fc = nn.Linear(8, 6)
        self.block = nn.Module()
        self.block.lif = neuron
        self.hidden = hidden

    def forward(self, x):
        if self.hidden:
            return torch.stack([self.block.lif(self.fc(x[t])) for t in range(T)])
        out, state = [], None
        for t in range(T):
            z, state = self.block.lif(self.fc(x[t]), state)
            out.append(z)
        return torch.stack(out)


@pytest.mark.parametrize("neuron, reason", [
    (lambda: snn.Leaky(beta=0.9, graded_spikes_factor=0.5, init_hidden=True), "graded spikes"),
    (lambda: snn.Leaky(beta=0.9, inhibition=True, init_hidden=True), "inhibition"),
    (lambda: snn.Synaptic(alpha=torch.full((6,), 0.5), beta=0.9, init_hidden=True),
     "per-neuron alpha"),
    (lambda: snn.Leaky(beta=0.9, reset_delay=False, init_hidden=True), "twice in one step"),
    (lambda: snn.Leaky(beta=0.9, threshold=-0.5, init_hidden=True), "threshold -0.5 < 0"),
    (lambda: snn.Leaky(beta=0.9, init_hidden=True, spike_grad=lambda u: (u > 0).float()),
     "spike_grad"),
    (lambda: snn.SLSTM(6, 6, init_hidden=True), "SLSTM is not supported"),
], ids=["graded", "inhibition", "per-neuron", "reset-delay", "negative-threshold",
        "spike-grad", "alpha"])
def test_snntorch_refusals_name_the_module(neuron, reason):
    with pytest.raises(UnsupportedError) as err:
        trace(One(neuron(), hidden=True), torch.randn(T, B, 8), T=T, static=False)
    assert "module 'block.lif'" in str(err.value) and reason in str(err.value), str(err.value)


@pytest.mark.parametrize("neuron, reason", [
    (lambda: norse.LIFRefracCell(), "LIFRefracCell is not supported"),
    (lambda: norse.LSNNCell(adjoint=True), "step function 'lsnn_feed_forward_adjoint_step'"),
    (lambda: norse.IAFCell(_norse_p("iaf", v_th=torch.full((6,), 0.5))), "per-neuron v_th"),
    # (written before Norse's neuron base classes: traced through, it was refused at the layer
    # after it, "this operand must be a tensor computed from the input")
    (lambda: norse.CobaLIFCell(6, 6), "CobaLIFCell is not supported"),
], ids=["refrac", "adjoint", "per-neuron", "coba"])
def test_norse_refusals_name_the_module(neuron, reason):
    with pytest.raises(UnsupportedError) as err:
        trace(One(neuron()), torch.randn(T, B, 8), T=T, static=False)
    assert "module 'block.lif'" in str(err.value) and reason in str(err.value), str(err.value)


# ----------------------------------------------------------------------------- ties

class CellLoop(nn.Module):
    def __init__(self, cell: nn.Module):
        super().__init__()
        self.cell = cell

    def forward(self, x):
        state, out = None, []
        for t in range(T):
            z, state = self.cell(x[t], state)
            out.append(z)
        return torch.stack(out)


@pytest.mark.parametrize("kind", ["box", "lif"])
def test_norse_threshold_tie_follows_norse_operation_order(kind, tmp_path):
    """The threshold is put exactly on a membrane value Norse computes at step 1, at a neuron
    where the canonical form's order of operations (alpha*v + gamma*x) rounds above it: Norse
    does not fire there (strictly >), the textbook mapping would, the compiled graph does not."""
    g = torch.Generator().manual_seed(7)
    x = 0.5 + torch.rand(T, B, 64, generator=g, dtype=torch.float64)
    kw = dict(tau_mem_inv=torch.tensor(130.0, dtype=torch.float64))
    if kind == "lif":
        kw["tau_syn_inv"] = torch.tensor(170.0, dtype=torch.float64)
    make = (lambda th: norse.LIFBoxCell(_norse_p("box", v_th=th, **kw))) if kind == "box" else \
        (lambda th: norse.LIFCell(_norse_p("lif", v_th=th, **kw)))
    quiet = make(torch.tensor(1e9, dtype=torch.float64))
    with torch.no_grad():
        z0, s0 = quiet(x[0])
        _, s1 = quiet(x[1], s0)
    k = 1e-3 * 130.0
    h0, h1 = s0.v.numpy(), s1.v.numpy()
    if kind == "box":
        naive = (1 - k) * h0 + k * x[1].numpy()
    else:
        i1 = s0.i.numpy() + x[1].numpy()
        naive = (1 - k) * h0 + k * i1
    flips = np.argwhere((naive > h1) & (h1 > h0))
    assert len(flips), "no neuron where the two orders round apart"
    theta = float(h1[tuple(flips[0])])
    model = CellLoop(make(torch.tensor(theta, dtype=torch.float64)))
    graph = trace(model, x, T=T, static=False)
    _, ref = library_spikes(model, x, {"cell"})
    assert ref["cell"][(1, *flips[0])] == 0  # the tie: Norse does not fire
    sim = simulate(graph, x.numpy(), T, record=True)
    np.testing.assert_array_equal(sim.trace["cell"], ref["cell"])


def test_a_model_keeping_float32_state_is_checked_in_float64():
    """snnTorch's RLeaky keeps its own spikes (``init_hidden``), made float32, and feeds them to
    its recurrent weights: converted to float64 alone, the library's forward fails. `check`
    runs the model with the tensors it makes in float64 too (``parity.floats_in``): exact,
    and in float32 as well."""
    import snncc

    model = _built(One, 5, snn.RLeaky(beta=0.9, threshold=0.3, linear_features=6,
                                      init_hidden=True), hidden=True)
    x = _sequence(5)
    for dtype in ("float64", "float32"):
        rep = snncc.check(model, x, T=T, target="onnx", dtype=dtype)
        assert rep.min_agreement == 1.0 and rep.dtype == dtype
        assert_rates_in_range({r.node: r.rate_reference for r in rep.layers})


class _StateLeakyNet(nn.Module):
    """snnTorch 1.0's StateLeaky on ``[T, B, C]``: ``(spk, mem)`` with ``output=True`` (its
    spikes used), else its membrane alone; one beta or one per channel; its kernel over the
    whole window or truncated."""

    def __init__(self, output: bool, per_channel: bool, truncation: int | None):
        super().__init__()
        from snntorch._neurons.stateleaky import StateLeaky

        self.T, self.output = 6, output
        self.fc = nn.Linear(4, 5)
        beta = torch.rand(5) * 0.5 + 0.4 if per_channel else 0.8
        self.lif = StateLeaky(beta=beta, channels=5, output=output,
                              kernel_truncation_steps=truncation)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        y = self.lif(self.fc(x))
        return self.head(y[0] if self.output else y).mean(0)


STATE_LEAKY = {"spikes": (True, False, None), "per-channel": (True, True, None),
               "truncated": (True, False, 3), "membrane": (False, True, None)}


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
@pytest.mark.parametrize("form", STATE_LEAKY)
def test_snntorch_state_leaky_is_a_kernel_of_delays(form, target):
    """StateLeaky (a causal convolution of its window with exp(-k / tau), no reset; refused
    before) as the input and its Delays, weighted per channel, then a threshold neuron or, for
    its membrane, the output. Spikes exact; its membrane, where it is the output, within an
    ulp of the convolution's (whose order of summation torch chooses)."""
    import snncc

    torch.manual_seed(0)
    model = _StateLeakyNet(*STATE_LEAKY[form]).double().eval()
    with torch.no_grad():
        model.fc.weight.mul_(2.0)
        model.fc.bias.add_(0.3)
    x = torch.rand(6, 3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    report = snncc.check(model, x, target=target)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    if STATE_LEAKY[form][0]:
        assert [r.path for r in report.layers] == ["lif"]
        assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


def test_snntorch_state_leaky_membrane_beside_its_spikes_is_refused():
    class Both(_StateLeakyNet):
        def forward(self, x):
            spk, mem = self.lif(self.fc(x))
            return self.head(spk + mem).mean(0)

    with pytest.raises(UnsupportedError, match="the state a multi-step neuron returns beside"):
        trace(Both(True, False, None).double(), torch.rand(6, 3, 4, dtype=torch.float64), T=6,
              static=False)


@pytest.mark.parametrize("target", ["sim", "lava"])
def test_snntorch_membrane_in_arithmetic_is_a_value(target):
    """``spk + mem * 0.5`` with snnTorch's returned membrane (subtract reset: a circuit that
    computes it) was refused ('this operand must be a tensor computed from the input') or, with
    the membrane on the right of a tensor, ended in an internal TypeError."""
    import snncc

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.T, self.fc, self.lif = 4, nn.Linear(4, 5), snn.Leaky(beta=0.8)

        def forward(self, x):
            mem, out = self.lif.init_leaky(), []
            for _ in range(self.T):
                spk, mem = self.lif(self.fc(x), mem)
                out.append(spk + mem * 0.5)
            return torch.stack(out).mean(0)

    torch.manual_seed(0)
    model = Mixed().double().eval()
    with torch.no_grad():
        model.fc.weight.mul_(2.0)
    x = torch.rand(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    report = snncc.check(model, x, target=target)
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target <= 1e-12
    assert_rates_in_range({r.node: r.rate_reference for r in report.layers})


class ChangedSpikes(nn.Module):
    """Cells that take and return their state (``spk, mem = lif(x, mem)``; norse's
    ``z, s = cell(x, s)``), their spikes then changed in place (SEW's ``z += skip``)."""

    def __init__(self, library: str):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        if library == "snntorch":
            self.cells = nn.ModuleList(snn.Leaky(beta=0.6, threshold=0.5) for _ in range(2))
        else:
            self.cells = nn.ModuleList(norse.LIFBoxCell(_norse_p("box", tau_mem_inv=400.0,
                                                                 v_th=0.3)) for _ in range(2))
        self.library = library

    def forward(self, x):
        states = [c.init_leaky() if self.library == "snntorch" else None for c in self.cells]
        out = []
        for _ in range(T):
            z1, states[0] = self.cells[0](self.fc1(x), states[0])
            z2, states[1] = self.cells[1](self.fc2(z1), states[1])
            z2 += z1
            out.append(self.fc3(z2))
        return torch.stack(out)


@pytest.mark.parametrize("library", ["snntorch", "norse"])
def test_spikes_a_cell_returned_beside_its_state_may_be_changed_in_place(library):
    """The items a library cell returns were taken for views of one tensor: changing the
    spikes in place made the state stale, and the model was refused ("reading a tensor that
    shares memory with one changed in place"; found by tests/fuzz_models.py)."""
    from snncc import api

    torch.manual_seed(0)
    model = ChangedSpikes(library).eval()
    driven(model, fc1=(3.0, 0.4), fc2=(3.0, 0.2))
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    ref = _f64_reference(model)
    for target in ("sim", "onnx"):
        rep = api.check(ref if library == "norse" else model, x.double(), target=target)
        assert rep.min_agreement == 1.0 and rep.output_max_abs_diff_sim == 0.0, rep.format()
        assert_rates_in_range({r.node: r.rate_reference for r in rep.layers})


class ChangedRecurrentSpikes(nn.Module):
    """An RLeaky whose spikes the model adds to in place: with hidden state, the tensor it
    returns is the one its next step reads back (snnTorch's ``self.spk``); threaded
    (``spk, mem = rlif(x, spk, mem)``), the model passes the changed tensor back itself."""

    def __init__(self, hidden: bool):
        super().__init__()
        self.hidden = hidden
        self.fc, self.out = nn.Linear(6, 6), nn.Linear(6, 3)
        self.rlif = snn.RLeaky(beta=0.7, V=0.5, all_to_all=False, init_hidden=hidden)

    def forward(self, x):
        state = () if self.hidden else self.rlif.init_rleaky()
        out = []
        for _ in range(T):
            h = self.fc(x)
            z = self.rlif(h) if self.hidden else self.rlif(h, *state)[0]
            if not self.hidden:
                state = (z, self.rlif.mem)
            z += h
            out.append(self.out(z))
        return torch.stack(out)


@pytest.mark.parametrize("hidden", [True, False])
def test_spikes_a_recurrent_neuron_reads_back_may_not_be_changed_in_place(hidden):
    """Changing RLeaky's spikes in place changes its next step's recurrent input in snnTorch.
    With hidden state the graph computed the recurrence from the unchanged spikes and only the
    check of the model's own loop refused the model, saying its first steps compute something
    else (found by tests/fuzz_models.py); now the in-place op is refused naming the neuron."""
    model = ChangedRecurrentSpikes(hidden).eval()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    with pytest.raises(UnsupportedError) as err:
        trace(model, x, T=T)
    message = str(err.value)
    if hidden:
        assert "module 'rlif'" in message and "recurrent neuron" in message, message
    else:
        assert "its spk argument is not its own spikes" in message, message


class SynapticNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)
        self.lif = snn.Synaptic(alpha=0.5, beta=0.8, init_hidden=True)

    def forward(self, x):
        return torch.stack([self.fc2(self.lif(self.fc1(x))) for _ in range(T)]).mean(0)


def test_a_neuron_circuit_refused_for_loihi2_is_named_as_the_neuron(tmp_path):
    """Loihi 2's fixed point takes neurons of the canonical LIF form; a library neuron that
    snncc computes as a circuit in its library's operation order (snnTorch's Synaptic) was
    refused at a node of that circuit ('lif:syn:av'), which the user never wrote: the refusal
    now says whose circuit it is and what Loihi 2 runs."""
    from snncc import api
    from snncc.errors import PassError

    with pytest.raises(PassError, match=r"'lif:syn:av' \(lif\): .* the circuit that computes "
                                        r"neuron 'lif' .* canonical LIF form"):
        api.compile(SynapticNet().eval(), torch.randn(5, 6), target="lava",
                    out=tmp_path / "out", fixed_point=True)
    assert not (tmp_path / "out").exists()


class SpikeCounts(nn.Module):
    """snnTorch's tutorial network returning its output layer's spike counts,
    ``torch.stack(spk_rec).sum(0)`` (the class is their argmax)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)
        self.lif1 = snn.Leaky(beta=0.8, init_hidden=True)
        self.lif2 = snn.Leaky(beta=0.8, init_hidden=True)

    def forward(self, x):
        spk_rec = [self.lif2(self.fc2(self.lif1(self.fc1(x)))) for _ in range(T)]
        return torch.stack(spk_rec).sum(0)


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_spike_counts_over_time_are_exact_on_every_target(target):
    """A sum over the time axis was taken only divided by T (the mean); the counts themselves
    are a running sum read at the last step."""
    from snncc import api

    torch.manual_seed(0)
    model = driven(SpikeCounts().eval(), fc1=(3.0, 0.3), fc2=(3.0, 0.3))
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    rep = api.check(model, x, target=target)
    assert rep.min_agreement == 1.0 and rep.output_max_abs_diff_target == 0.0, rep.format()
    assert_rates_in_range({r.node: r.rate_reference for r in rep.layers})


class _EncodedByNorse(nn.Module):
    """norse's own ``ConstantCurrentLIFEncoder`` (as its MNIST task uses it): a LIF looping over
    a static input, each step's spikes written into zeros, ``spikes[ts] = z``; then a ``LIFCell``
    stepped over them. Its loop never indexes time, so it is traced unrolled, and its T
    different values were refused as a sequence ("only stacking the T steps of a loop")."""

    def __init__(self):
        super().__init__()
        self.enc = norse.ConstantCurrentLIFEncoder(T)
        self.fc, self.lif = nn.Linear(6, 5), norse.LIFCell()

    def forward(self, x):
        spikes = self.enc(10 * x)
        state, out = None, []
        for t in range(T):
            z, state = self.lif(5 * self.fc(spikes[t]), state)
            out.append(z)
        return torch.stack(out)


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
def test_a_static_loops_values_written_into_a_sequence_are_its_steps(target):
    import snncc

    torch.manual_seed(0)
    model = _EncodedByNorse().eval()  # (its encoder's spikes are float32 whatever the model's)
    x = 5 * torch.rand(B, 6, generator=torch.Generator().manual_seed(0))
    report = snncc.check(model, x, target=target, T=T, dtype="float32")
    assert report.min_agreement == 1.0 and report.output_max_abs_diff_target == 0.0
    with torch.no_grad():
        rates = {"encoder": float(model.enc(10 * x).mean()), "lif": float(model(x).mean())}
    assert_rates_in_range(rates)


class _StateReturned(nn.Module):
    """A norse loop returning its cell's final state's membrane, ``s.v``, beside its spikes."""

    def __init__(self):
        super().__init__()
        self.fc, self.cell = nn.Linear(6, 4), norse.LIFCell()

    def forward(self, x):
        s, out = None, []
        for t in range(x.shape[0]):
            z, s = self.cell(self.fc(x[t]), s)
            out.append(z)
        return torch.stack(out), s.v


def test_a_refused_attribute_read_after_the_forward_names_no_line_of_snncc():
    """fx reads ``s.v`` once the forward has returned: its refusal named snncc's own
    frontends/user_model.py as the model's line."""
    with pytest.raises(UnsupportedError, match=r"the tensor attribute 'v'") as err:
        trace(_StateReturned().double(), torch.rand(T, 2, 6, dtype=torch.float64), T=T,
              static=False)
    assert "frontends" not in str(err.value) and ", at " not in str(err.value)
