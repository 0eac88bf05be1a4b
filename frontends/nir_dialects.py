"""Producer dialects of NIR (``read_nir(path, dialect=...)``, ``--nir-dialect``): what a
framework's own exporter means by the fields it writes, where that differs from NIR's
continuous-time reading or is not recorded in the file (docs/nir.md, "Dialects").

* ``snntorch`` (``snntorch.export_nir.export_to_nir``, dt hard-coded to 1e-4): ``LIF`` is a
  ``Leaky`` with beta = 1 - dt/tau and r = tau/dt (no input gain), ``CubaLIF`` a ``Synaptic``
  (alpha from tau_syn, w_in = tau_syn/dt). The exporter does not record ``reset_mechanism``:
  ``snntorch:subtract`` (Leaky's default, reset_delay=True) or ``snntorch:zero`` says which.
  The neuron is then snnTorch's own arithmetic (the snntorch adapter's circuits), so spikes
  agree with snnTorch's forward bit for bit. beta is recovered in the file's float type and
  checked: the exporter's ``dt / (1 - beta)`` must give the stored tau exactly, else refused.
* ``norse`` (``norse.torch.to_nir``, dt = 1e-3 unless ``dt=`` says otherwise): ``tau`` holds
  ``dt / tau_mem_inv`` (not 1/tau_mem_inv); ``LIF`` is a ``LIFBoxCell`` (h = v + k((x + v_leak)
  - v), k = dt * tau_mem_inv), ``CubaLIF`` a ``LIFCell``, ``IF`` an ``IAFCell``; no reset is
  recorded and norse's default (``reset_value`` to v_reset = 0) is assumed, as norse's own
  ``from_nir`` does. tau_mem_inv is recovered in float32 and checked against the stored tau.
* ``sinabs`` and ``spikingjelly``: not implemented (refused by name, not guessed).

Anything a dialect cannot represent exactly (per-neuron values where the framework's circuit
has one per layer, a gain, a leak voltage, a nested recurrent graph) is refused, naming the
node, the value and what would resolve it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from snncc import ir
from snncc import neuron as nrn
from snncc.errors import SnnccError, UnsupportedError

DIALECTS = ("snntorch", "norse", "sinabs", "spikingjelly")
SNNTORCH_DT = 1e-4
NORSE_DT = 1e-3
SNNTORCH_RESETS = ("subtract", "zero")


@dataclass(frozen=True)
class Dialect:
    name: str
    reset: str | None = None  # snntorch: Leaky's reset_mechanism

    @property
    def default_dt(self) -> float:
        return SNNTORCH_DT if self.name == "snntorch" else NORSE_DT

    def __str__(self) -> str:
        return self.name + (f":{self.reset}" if self.reset else "")


def parse_dialect(spec) -> Dialect | None:
    """``None`` / ``''`` (NIR's own meaning), ``snntorch[:subtract|zero]`` or ``norse``."""
    if spec is None or isinstance(spec, Dialect):
        return spec
    spec = str(spec).strip().lower()
    if not spec:
        return None
    name, _, opt = spec.partition(":")
    if name not in DIALECTS:
        raise SnnccError(f"--nir-dialect '{spec}': unknown (known: {', '.join(DIALECTS)})")
    if name in ("sinabs", "spikingjelly"):
        raise UnsupportedError(
            f"--nir-dialect {name} is not implemented: snncc has no {name} exporter to check its "
            "conventions against here (sinabs: tau in time steps, multi-spike IAF); refused "
            "rather than guessed")
    if name == "snntorch":
        if opt and opt not in SNNTORCH_RESETS:
            raise SnnccError(f"--nir-dialect '{spec}': snntorch's reset is 'subtract' or 'zero'")
        return Dialect(name, opt or None)
    if opt:
        raise SnnccError(f"--nir-dialect '{spec}': norse takes no option")
    return Dialect(name)


# ----------------------------------------------------------------------------- helpers


def _float_type(a) -> type:
    a = np.asarray(a)
    return np.float32 if a.dtype == np.float32 else np.float64


def _one(a, what: str, name: str, field: str) -> float:
    """The single value of a per-neuron array (the framework's circuit takes one per layer)."""
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0 or not np.all(a == a.flat[0]):
        raise UnsupportedError(f"{field} varies across neurons ({a.ravel()[:3].tolist()} ...); "
                               f"{what} takes one value per layer here", node=name)
    return float(a.flat[0])


def _must_be(a, value: float, name: str, field: str, why: str) -> None:
    a = np.asarray(a, dtype=np.float64)
    if not np.all(a == value):
        bad = a[a != value].ravel()[0]
        raise UnsupportedError(f"{field} = {bad:g}, but {why}", node=name)


def _snntorch_decay(tau, dt: float, name: str, field: str) -> np.ndarray:
    """snnTorch's beta (or alpha) from the tau its exporter wrote as ``dt / (1 - beta)`` in the
    parameter's float type: the value whose exporter arithmetic gives tau exactly (checked),
    clamped to [0, 1] as snnTorch's forward clamps it."""
    ft = _float_type(tau)
    t = np.asarray(tau, dtype=ft)
    if np.any(~(t > 0)):
        raise UnsupportedError(f"{field} = {t[~(t > 0)].ravel()[0]:g} is not positive", node=name)
    with np.errstate(divide="ignore", invalid="ignore"):
        b0 = (1.0 - dt / t.astype(np.float64)).astype(ft)
        out = np.full(t.shape, np.nan, dtype=ft)
        for c in (b0, np.nextafter(b0, ft(np.inf)), np.nextafter(b0, ft(-np.inf))):
            ok = np.isnan(out) & (ft(dt) / (ft(1) - c) == t)
            out[ok] = c[ok]
    if np.any(np.isnan(out)):
        i = np.argwhere(np.isnan(out))[0]
        raise UnsupportedError(
            f"{field} = {t[tuple(i)]!r} is not dt / (1 - beta) for any {ft.__name__} beta at "
            f"dt = {dt:g} (snnTorch's exporter); give --nir-dt if it used another step, or read "
            "it without --nir-dialect", node=name)
    return np.clip(out.astype(np.float64), 0.0, 1.0)


def _norse_k(tau, dt: float, name: str, field: str) -> float:
    """Norse's ``dt * tau_inv`` (float32, as its forward computes it) from the tau its exporter
    wrote as ``dt / tau_inv``: tau_inv is the float32 value that gives the stored tau exactly."""
    import torch

    t = torch.as_tensor(np.asarray(tau, dtype=np.float32))
    if not bool((t > 0).all()):
        raise UnsupportedError(f"{field} is not positive", node=name)
    c0 = torch.as_tensor((dt / np.asarray(tau, dtype=np.float64)).astype(np.float32))
    inv = torch.full_like(t, float("nan"))
    for c in (c0, torch.nextafter(c0, torch.full_like(c0, float("inf"))),
              torch.nextafter(c0, torch.full_like(c0, float("-inf")))):
        ok = torch.isnan(inv) & ((dt / c) == t)
        inv[ok] = c[ok]
    if bool(torch.isnan(inv).any()):
        bad = float(t[torch.isnan(inv)].reshape(-1)[0])
        raise UnsupportedError(
            f"{field} = {bad!r} is not dt / tau_inv for any float32 tau_inv at dt = {dt:g} "
            "(norse's exporter); give --nir-dt with the dt norse exported at", node=name)
    return _one((dt * inv).to(torch.float64).numpy(), "norse's cell", name, f"dt/{field}")


def _circuit_nodes(name: str, x: str, nc, shape, path: str) -> list[ir.Node]:
    nodes, membrane = nc.build(name, x, shape)
    for n in nodes:
        n.path = path
    return nodes + [ir.Neuron(name, (membrane,), path=path, **nc.fire.fields())]


# ----------------------------------------------------------------------------- snntorch


def _snntorch_reset(d: Dialect, name: str) -> str:
    if d.reset is None:
        raise UnsupportedError(
            "snnTorch's export_to_nir does not record Leaky's reset_mechanism: give "
            "--nir-dialect snntorch:subtract (Leaky's default) or snntorch:zero", node=name)
    return d.reset


def _snntorch_lif(d, name, node, x, shape, dt, path):
    from snncc.frontends.adapters.snntorch import _leaky

    mode = _snntorch_reset(d, name)
    b = _snntorch_decay(node.tau, dt, name, "tau")
    _gain_one(node.r, node.tau, dt, name, "r")
    _must_be(node.v_leak, 0.0, name, "v_leak", "snnTorch's Leaky has no leak voltage")
    _must_be(node.v_reset, 0.0, name, "v_reset", "snnTorch's Leaky resets to 0")
    thr = np.asarray(node.v_threshold, dtype=np.float64)
    if mode == "zero":  # exactly the canonical neuron (see the snntorch adapter)
        return [ir.Neuron(name, (x,), path=path, alpha=b, gamma=1.0, beta=0.0, theta=thr,
                          v_reset=0.0, v_init=0.0, cmp=nrn.CMP_GT, reset=nrn.RESET_HARD)]
    nc = _leaky(_one(b, "snnTorch's subtract-reset Leaky", name, "beta"),
                _one(thr, "snnTorch's subtract-reset Leaky", name, "v_threshold"), mode)
    return _circuit_nodes(name, x, nc, shape, path)


def _gain_one(r, tau, dt, name, field):
    """snnTorch writes r = tau/dt so that the per-step input gain dt r / tau is 1."""
    g = dt * np.asarray(r, dtype=np.float64) / np.asarray(tau, dtype=np.float64)
    if not np.allclose(g, 1.0, rtol=1e-6, atol=0):
        bad = np.asarray(r, dtype=np.float64).ravel()[0]
        raise UnsupportedError(f"{field} = {bad:g} gives an input gain dt*{field}/tau = "
                               f"{g.ravel()[0]:g}; snnTorch's neurons have none (gain 1)",
                               node=name)


def _snntorch_cuba(d, name, node, x, shape, dt, path):
    from snncc.frontends.adapters.snntorch import _synaptic

    mode = _snntorch_reset(d, name)
    a = _snntorch_decay(node.tau_syn, dt, name, "tau_syn")
    b = _snntorch_decay(node.tau_mem, dt, name, "tau_mem")
    _gain_one(node.w_in, node.tau_syn, dt, name, "w_in")
    _gain_one(node.r, node.tau_mem, dt, name, "r")
    _must_be(node.v_leak, 0.0, name, "v_leak", "snnTorch's Synaptic has no leak voltage")
    _must_be(node.v_reset, 0.0, name, "v_reset", "snnTorch's Synaptic resets to 0")
    what = "snnTorch's Synaptic"
    nc = _synaptic(_one(a, what, name, "alpha"), _one(b, what, name, "beta"),
                   _one(node.v_threshold, what, name, "v_threshold"), mode, True)
    return _circuit_nodes(name, x, nc, shape, path)


# ----------------------------------------------------------------------------- norse


def _norse_common(node, name):
    _must_be(node.r, 1.0, name, "r", "norse's cells have no input gain (its exporter writes 1)")
    _must_be(node.v_leak, 0.0, name, "v_leak", "snncc reads norse's cells with v_leak = 0 only "
             "(their state starts at v_leak)")
    _must_be(node.v_reset, 0.0, name, "v_reset", "norse's exporter writes no v_reset (its "
             "default reset to 0 is assumed)")


def _norse_lif(d, name, node, x, shape, dt, path):
    from snncc.frontends.adapters.norse import _lif_box

    _norse_common(node, name)
    k = _norse_k(node.tau, dt, name, "tau")
    nc = _lif_box(k, _one(node.v_threshold, "norse's LIFBoxCell", name, "v_threshold"), 0.0,
                  subtract=False)
    return _circuit_nodes(name, x, nc, shape, path)


def _norse_cuba(d, name, node, x, shape, dt, path):
    from snncc.frontends.adapters.norse import _lif

    _norse_common(node, name)
    _must_be(node.w_in, 1.0, name, "w_in", "norse's LIFCell has no input gain")
    k = _norse_k(node.tau_mem, dt, name, "tau_mem")
    ks = -_norse_k(node.tau_syn, dt, name, "tau_syn")
    nc = _lif(k, ks, _one(node.v_threshold, "norse's LIFCell", name, "v_threshold"), 0.0)
    return _circuit_nodes(name, x, nc, shape, path)


def _norse_if(d, name, node, x, shape, dt, path):
    _must_be(node.r, 1.0, name, "r", "norse's IAFCell has no input gain")
    _must_be(node.v_reset, 0.0, name, "v_reset", "norse's exporter writes no v_reset")
    return [ir.Neuron(name, (x,), path=path, alpha=1.0, gamma=1.0, beta=0.0,
                      theta=np.asarray(node.v_threshold, dtype=np.float64), v_reset=0.0,
                      v_init=0.0, cmp=nrn.CMP_GT, reset=nrn.RESET_HARD)]


def _refuse(d, name, node, x, shape, dt, path):
    raise UnsupportedError(f"--nir-dialect {d.name}: a {type(node).__name__} is not what "
                           f"{d.name}'s exporter writes for any neuron snncc can read exactly",
                           node=name)


_HANDLERS = {
    "snntorch": {"LIF": _snntorch_lif, "CubaLIF": _snntorch_cuba, "IF": _refuse,
                 "LI": _refuse, "CubaLI": _refuse, "I": _refuse},
    "norse": {"LIF": _norse_lif, "CubaLIF": _norse_cuba, "IF": _norse_if, "LI": _refuse,
              "CubaLI": _refuse, "I": _refuse},
}


def convert(d: Dialect, name: str, node, x: str, shape: tuple, dt: float, path: str):
    """The IR nodes of a neuron ``node`` as dialect ``d`` reads it, or None when the dialect
    reads this node type as NIR does."""
    fn = _HANDLERS[d.name].get(type(node).__name__)
    return None if fn is None else fn(d, name, node, x, tuple(shape), dt, path)
