"""Producer dialects of NIR (``read_nir(path, dialect=...)``, ``--nir-dialect``): what a
framework's own exporter means by the fields it writes, where that differs from NIR's
continuous-time reading or is not recorded in the file (docs/nir.md, "Dialects").

* ``snntorch`` (``snntorch.export_nir.export_to_nir``, dt hard-coded to 1e-4): ``LIF`` is a
  ``Leaky`` with beta = 1 - dt/tau and r = tau/dt (no input gain), ``CubaLIF`` a ``Synaptic``
  (alpha from tau_syn, w_in = tau_syn/dt); one in a cycle through its ``w_rec`` is an ``RLeaky`` /
  ``RSynaptic``. The exporter does not record ``reset_mechanism``:
  ``snntorch:subtract`` (Leaky's default, reset_delay=True) or ``snntorch:zero`` says which.
  The neuron is then snnTorch's own arithmetic (the snntorch adapter's circuits), so spikes
  agree with snnTorch's forward bit for bit. beta is recovered in the file's float type and
  checked: the exporter's ``dt / (1 - beta)`` must give the stored tau exactly, else refused.
* ``norse`` (``norse.torch.to_nir``, dt = 1e-3 unless ``dt=`` says otherwise): ``tau`` holds
  ``dt / tau_mem_inv`` (not 1/tau_mem_inv); ``LIF`` is a ``LIFBoxCell`` (h = v + k((x + v_leak)
  - v), k = dt * tau_mem_inv), ``CubaLIF`` a ``LIFCell``, ``IF`` an ``IAFCell``; no reset is
  recorded and norse's default (``reset_value`` to v_reset = 0) is assumed, as norse's own
  ``from_nir`` does. tau_mem_inv is recovered in float32 and checked against the stored tau.
* ``sinabs`` (``sinabs.to_nir``, sinabs 3.1.3 with nir 1.0.4): ``tau`` counts time steps (no
  dt is written; alpha = exp(-1/tau) in the file's float type, as sinabs computes it), ``r`` is
  1 and no reset is written: ``IF`` is an ``IAF``, ``LIF`` an ``LIF`` with ``norm_input=False``
  (how sinabs's ``from_nir`` reads it), both subtracting the threshold on a spike, ``LI`` an
  ``ExpLeak``. sinabs's default ``MultiSpike`` emits floor(v / threshold) spikes per step;
  snncc's neuron (fire on v >= threshold, subtract it) is the same exactly when no step can
  reach twice the threshold, which the reader proves from an upper bound of the neuron's input
  (spikes into Linear / Conv2d / sum-pooling) or refuses. ``sinabs:single-spike`` says the
  layers used ``SingleSpike`` (the exporter does not record ``spike_fn``), ``sinabs:spike-input``
  that the model's inputs are 0/1 events (the bound then starts there). ``min_v_mem`` is not
  written either: the layers' default (none) is assumed.
* ``spikingjelly`` (``spikingjelly.activation_based.nir_exchange.export_to_nir``, spikingjelly
  2.0, dt = 1e-4 unless ``dt=`` said otherwise, not written): ``IF`` is an ``IFNode`` (r =
  1/dt: gain 1, where NIR's ecosystem steps IF as ``v + r x``), ``LIF`` a ``LIFNode`` with
  tau = tau_file/dt (recovered so that the exporter's ``tau * dt`` gives the stored value
  exactly) and ``decay_input`` from r (1: True, tau: False), v_leak = v_reset; both fire on
  ``>=`` (spikingjelly's Heaviside) and reset hard; one value per layer, as spikingjelly's
  ``import_from_nir`` requires. The canonical neuron is :func:`snncc.neuron.from_lif` /
  :func:`~snncc.neuron.from_if`, as for the module traced. ``CubaLIF`` (``CUBALIFNode``) is
  refused: snncc's spikingjelly adapter has no form of it.
* ``nir``: NIR's own meaning as ``nir.read`` (nir >= 1.0.5) gives it, for producers without a
  dialect here: a neuron stored without ``v_reset`` (a file of nir <= 1.0.4) resets to 0; dt
  from the file or ``--nir-dt`` (no default).

Anything a dialect cannot represent exactly (per-neuron values where the framework's circuit
has one per layer, a gain, a leak voltage) is refused, naming the node, the value and what
would resolve it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from snncc import ir
from snncc import neuron as nrn
from snncc.errors import SnnccError, UnsupportedError

DIALECTS = ("snntorch", "norse", "sinabs", "spikingjelly", "nir")
SNNTORCH_DT = 1e-4
SPIKINGJELLY_DT = 1e-4  # nir_exchange.export_to_nir's default
NORSE_DT = 1e-3
SINABS_DT = 1.0  # sinabs's tau counts time steps
OPTIONS = {"snntorch": ("subtract", "zero"), "norse": (), "nir": (), "spikingjelly": (),
           "sinabs": ("single-spike", "spike-input")}


@dataclass(frozen=True)
class Dialect:
    name: str
    option: str | None = None  # snntorch: Leaky's reset_mechanism; sinabs: see OPTIONS

    @property
    def default_dt(self) -> float | None:
        return {"snntorch": SNNTORCH_DT, "sinabs": SINABS_DT, "norse": NORSE_DT,
                "spikingjelly": SPIKINGJELLY_DT}.get(self.name)

    def __str__(self) -> str:
        return self.name + (f":{self.option}" if self.option else "")


def parse_dialect(spec) -> Dialect | None:
    """``None`` / ``''`` (NIR's own meaning), ``snntorch[:subtract|zero]``, ``norse``,
    ``sinabs[:single-spike|spike-input]``, ``spikingjelly`` or ``nir``."""
    if spec is None or isinstance(spec, Dialect):
        return spec
    spec = str(spec).strip().lower()
    if not spec:
        return None
    name, _, opt = spec.partition(":")
    if name not in DIALECTS:
        raise SnnccError(f"--nir-dialect '{spec}': unknown (known: {', '.join(DIALECTS)})")
    if opt and opt not in OPTIONS[name]:
        known = " or ".join(f"'{o}'" for o in OPTIONS[name]) or "none"
        raise SnnccError(f"--nir-dialect '{spec}': {name}'s options are {known}")
    return Dialect(name, opt or None)


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
    wrote as ``dt / tau_inv``: tau_inv is the float32 value that gives the stored tau exactly;
    where several neighbours do (float32 division maps some to one tau: 120 and the float32
    below it give the same), the one with the shortest mantissa, the value a person wrote (its
    products differ: dt * 120 and dt * 119.99999 are 0.12000000 and 0.11999999)."""
    import torch

    t = torch.as_tensor(np.asarray(tau, dtype=np.float32))
    if not bool((t > 0).all()):
        raise UnsupportedError(f"{field} is not positive", node=name)
    c0 = torch.as_tensor((dt / np.asarray(tau, dtype=np.float64)).astype(np.float32))
    up, down = torch.full_like(c0, float("inf")), torch.full_like(c0, float("-inf"))
    above, below = torch.nextafter(c0, up), torch.nextafter(c0, down)
    candidates = [c0, above, below, torch.nextafter(above, up), torch.nextafter(below, down)]
    inv = torch.full_like(t, float("nan"))
    best = torch.full(t.shape, -1, dtype=torch.int32)
    for c in candidates:
        bits = c.view(torch.int32) & 0x7FFFFF
        zeros = torch.where(bits == 0, 23, torch.log2((bits & -bits).float()).int())
        ok = ((dt / c) == t) & (zeros > best)
        inv[ok], best[ok] = c[ok], zeros[ok]
    if bool(torch.isnan(inv).any()):
        bad = float(t[torch.isnan(inv)].reshape(-1)[0])
        raise UnsupportedError(
            f"{field} = {bad!r} is not dt / tau_inv for any float32 tau_inv at dt = {dt:g} "
            "(norse's exporter); give --nir-dt with the dt norse exported at", node=name)
    return _one((dt * inv).to(torch.float64).numpy(), "norse's cell", name, f"dt/{field}")


def _circuit_nodes(name: str, x: str, nc, shape, path: str) -> list[ir.Node]:
    nodes, membrane = nc.build(name, x, shape)
    return _at(path, nodes) + [ir.Neuron(name, (membrane,), path=path, **nc.fire.fields())]


def _at(path: str, nodes: list[ir.Node]) -> list[ir.Node]:
    """``nodes`` (a circuit's) marked as computed for the file's node ``path``."""
    for n in nodes:
        n.path = path
    return nodes


# ----------------------------------------------------------------------------- snntorch


def _snntorch_reset(d: Dialect, name: str) -> str:
    if d.option is None:
        raise UnsupportedError(
            "snnTorch's export_to_nir does not record Leaky's reset_mechanism: give "
            "--nir-dialect snntorch:subtract (Leaky's default) or snntorch:zero", node=name)
    return d.option


def _on_cycle(graph, x: str, name: str) -> bool:
    """Whether the neuron ``name`` being built on input ``x`` feeds itself: some ancestor of
    ``x`` reads a node not built yet (the reader builds a cycle's closing Delay before its
    source, and every other node after its sources, so that source lies downstream of the
    neuron), ``name`` included."""
    seen, stack = set(), [x]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n == name or n not in graph.nodes:
            return True
        stack.extend(graph.nodes[n].inputs)
    return False


def _snntorch_lif(d, name, node, x, shape, dt, path, graph):
    from snncc.frontends.adapters.snntorch import _late_reset, _leaky

    mode = _snntorch_reset(d, name)
    b = _snntorch_decay(node.tau, dt, name, "tau")
    _gain_one(node.r, node.tau, dt, name, "r")
    _must_be(node.v_leak, 0.0, name, "v_leak", "snnTorch's Leaky has no leak voltage")
    _must_be(node.v_reset, 0.0, name, "v_reset", "snnTorch's Leaky resets to 0")
    thr = np.asarray(node.v_threshold, dtype=np.float64)
    if mode == "zero" and _on_cycle(graph, x, name):
        # an RLeaky (the exporter writes its LIF as Leaky's, in a cycle through its w_rec), whose
        # zero reset also clears the new input
        what = "snnTorch's zero-reset RLeaky"
        nc = _late_reset(_one(b, what, name, "beta"), _one(thr, what, name, "v_threshold"),
                         mode)
        return _circuit_nodes(name, x, nc, shape, path)
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


def _snntorch_cuba(d, name, node, x, shape, dt, path, graph):
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


def _norse_leak(node, name, what: str) -> float:
    """The potential a norse cell leaks to and starts at; it has no input gain."""
    _must_be(node.r, 1.0, name, "r", "norse's cells have no input gain (its exporter writes 1)")
    return _one(node.v_leak, what, name, "v_leak")


def _norse_common(node, name, what: str) -> float:
    _must_be(node.v_reset, 0.0, name, "v_reset", "norse's exporter writes no v_reset (its "
             "default reset to 0 is assumed)")
    return _norse_leak(node, name, what)


def _norse_lif(d, name, node, x, shape, dt, path, graph):
    from snncc.frontends.adapters.norse import _lif_box

    what = "norse's LIFBoxCell"
    v_leak = _norse_common(node, name, what)
    k = _norse_k(node.tau, dt, name, "tau")
    nc = _lif_box(k, _one(node.v_threshold, what, name, "v_threshold"), 0.0, v_leak,
                  subtract=False)
    return _circuit_nodes(name, x, nc, shape, path)


def _norse_cuba(d, name, node, x, shape, dt, path, graph):
    from snncc.frontends.adapters.norse import _lif

    what = "norse's LIFCell"
    v_leak = _norse_common(node, name, what)
    _must_be(node.w_in, 1.0, name, "w_in", "norse's LIFCell has no input gain")
    k = _norse_k(node.tau_mem, dt, name, "tau_mem")
    ks = -_norse_k(node.tau_syn, dt, name, "tau_syn")
    nc = _lif(k, ks, _one(node.v_threshold, what, name, "v_threshold"), 0.0, v_leak)
    return _circuit_nodes(name, x, nc, shape, path)


def _norse_li(d, name, node, x, shape, dt, path, graph):
    """norse's exporter writes its LIBoxCell as an LI (r = 1, tau = dt / tau_mem_inv)."""
    from snncc.frontends.adapters.norse import _li_box

    v_leak = _norse_leak(node, name, "norse's LIBoxCell")
    return _at(path, _li_box(_norse_k(node.tau, dt, name, "tau"), v_leak).build(name, x, shape))


def _norse_if(d, name, node, x, shape, dt, path, graph):
    _must_be(node.r, 1.0, name, "r", "norse's IAFCell has no input gain")
    _must_be(node.v_reset, 0.0, name, "v_reset", "norse's exporter writes no v_reset")
    return [ir.Neuron(name, (x,), path=path, alpha=1.0, gamma=1.0, beta=0.0,
                      theta=np.asarray(node.v_threshold, dtype=np.float64), v_reset=0.0,
                      v_init=0.0, cmp=nrn.CMP_GT, reset=nrn.RESET_HARD)]


# ----------------------------------------------------------------------------- sinabs

#: Rounding slack of a bound on a Linear / Conv2d output: (fan-in + 1) units of float32's
#: roundoff on the terms' magnitudes (a float64 sum errs less).
_ROUNDOFF = 2.0 ** -23
#: An input below this fraction of the threshold keeps h = alpha v + x below 2 * threshold
#: (v < threshold after every step, by induction), with room for the addition's rounding.
_ONE_SPIKE = 1.0 - 2.0 ** -20


def _affine_max(n, hi: float) -> np.ndarray:
    """Upper bound of a Linear's / Conv's output per output unit (Linear: (out,), Conv:
    (out, 1[, 1])) for inputs in [0, hi]: bias + hi * (sum of the positive weights)."""
    w = np.asarray(n.weight, dtype=np.float64).reshape(n.weight.shape[0], -1)
    b = np.zeros(w.shape[0]) if n.bias is None else np.asarray(n.bias, dtype=np.float64)
    slack = (w.shape[1] + 1) * _ROUNDOFF * (np.abs(b) + hi * np.abs(w).sum(1))
    up = b + hi * np.clip(w, 0, None).sum(1) + slack
    return up if isinstance(n, ir.Linear) else up.reshape(-1, *(1,) * (n.weight.ndim - 2))


def _spikes_max(graph, x: str) -> float | None:
    """hi when every value of node ``x`` lies in [0, hi] (spikes, their pooled sums), else
    None."""
    n = graph[x]
    if n.kind is ir.Kind.SPIKE:
        return 1.0
    if isinstance(n, (ir.Flatten, ir.Reshape, ir.MaxPool2d, ir.AvgPool2d)):
        return _spikes_max(graph, n.inputs[0])
    if (isinstance(n, (ir.Linear, ir.Conv2d)) and np.all(n.weight >= 0)
            and (n.bias is None or np.all(n.bias >= 0))):  # sum-pooling, as snncc reads it
        hi = _spikes_max(graph, n.inputs[0])
        return None if hi is None else float(np.max(_affine_max(n, hi)))
    return None


def _input_max(graph, x: str):
    """An upper bound of node ``x``'s values (array broadcastable to its shape), or None."""
    hi = _spikes_max(graph, x)
    if hi is not None:
        return hi
    n = graph[x]
    if isinstance(n, (ir.Linear, ir.Conv2d)):
        hi = _spikes_max(graph, n.inputs[0])
        return None if hi is None else _affine_max(n, hi)
    return None


def _sinabs_one_spike(d: Dialect, name: str, x: str, graph, theta: np.ndarray, what: str):
    """sinabs's MultiSpike fires trunc(h / theta) spikes. For theta > 0, fl(h / theta) >= 1
    exactly when h >= theta (a float below theta divides to below 1 after rounding), so with
    at most one spike per step it is snncc's ``>=`` neuron with subtract reset: refused unless
    the input bound proves h < 2 theta (or the layers used SingleSpike: v >= theta)."""
    if d.option == "single-spike":
        return
    up = _input_max(graph, x)
    if up is None:
        why = ("its input is not bounded (real values" +
               ("" if d.option == "spike-input" else "; --nir-dialect sinabs:spike-input says "
                "the model's inputs are 0/1 events") + ")")
    else:
        up, th = np.broadcast_arrays(np.asarray(up, dtype=np.float64), theta)
        over = up >= th * _ONE_SPIKE
        if not over.any():
            return
        why = (f"its input can reach {up[over].ravel()[0]:g} >= v_threshold = "
               f"{th[over].ravel()[0]:g}")
    raise UnsupportedError(
        f"sinabs's {what} (MultiSpike) emits floor(v / v_threshold) spikes per step, snncc's "
        f"neurons one: the same only while no step reaches 2 * v_threshold, but {why}; give "
        "--nir-dialect sinabs:single-spike if its layers used spike_fn=SingleSpike", node=name)


def _sinabs_common(node, name: str, what: str) -> np.ndarray | None:
    """The checks every sinabs neuron shares; returns its thresholds (positive), if any."""
    _must_be(node.r, 1.0, name, "r", f"sinabs's exporter writes 1 (its {what} has no input "
             "gain, and sinabs's from_nir ignores r)")
    if hasattr(node, "v_leak"):
        _must_be(node.v_leak, 0.0, name, "v_leak", f"sinabs's {what} has no leak voltage")
    if not hasattr(node, "v_threshold"):
        return None
    theta = np.asarray(node.v_threshold, dtype=np.float64)
    if not np.all(theta >= np.finfo(np.float32).tiny):
        raise UnsupportedError(f"v_threshold = {theta[~(theta > 0)].ravel()[0]:g}: sinabs's "
                               "MultiSpike is read exactly for positive thresholds only",
                               node=name)
    return theta


def _sinabs_alpha(tau, name: str) -> np.ndarray:
    """sinabs's decay ``exp(-1 / tau_mem)``, tau in time steps, computed by torch in the
    file's float type as sinabs's forward computes it (tau = inf: no leak)."""
    import torch

    t = torch.as_tensor(np.asarray(tau, dtype=_float_type(tau)))
    if not bool((t > 0).all()):
        raise UnsupportedError(f"tau = {float(t[~(t > 0)].reshape(-1)[0]):g} is not positive "
                               "(sinabs's tau counts time steps)", node=name)
    return torch.exp(-1.0 / t).to(torch.float64).numpy()


def _sinabs_neuron(d, name, x, path, graph, alpha, theta, what):
    _sinabs_one_spike(d, name, x, graph, theta, what)
    return [ir.Neuron(name, (x,), path=path, alpha=alpha, gamma=1.0, beta=0.0, theta=theta,
                      v_reset=0.0, v_init=0.0, cmp=nrn.CMP_GE, reset=nrn.RESET_SOFT)]


def _sinabs_lif(d, name, node, x, shape, dt, path, graph):
    theta = _sinabs_common(node, name, "LIF")
    return _sinabs_neuron(d, name, x, path, graph, _sinabs_alpha(node.tau, name), theta, "LIF")


def _sinabs_if(d, name, node, x, shape, dt, path, graph):
    theta = _sinabs_common(node, name, "IAF")
    return _sinabs_neuron(d, name, x, path, graph, 1.0, theta, "IAF")


def _sinabs_li(d, name, node, x, shape, dt, path, graph):
    from snncc.frontends.nir_reader import _integrator

    _sinabs_common(node, name, "ExpLeak")
    alpha = np.broadcast_to(_sinabs_alpha(node.tau, name), shape).copy()
    return _integrator(name, x, alpha, 1.0, 0.0, path)


# ----------------------------------------------------------------------------- spikingjelly


def _spikingjelly_tau(tau, dt: float, name: str) -> float:
    """spikingjelly's tau from the ``tau * dt`` its exporter wrote (float64): the value whose
    product with dt is the stored one, the shortest among those (3.0, not the 3.0000000000000004
    that stored / dt gives)."""
    stored = _one(tau, "spikingjelly's LIFNode", name, "tau")
    near = [stored / dt]
    for direction in (np.inf, -np.inf):  # the two floats on either side
        c = near[0]
        for _ in range(2):
            c = np.nextafter(c, direction)
            near.append(c)
    found = [c for c in near if c * dt == stored]
    tau = min(found, key=lambda c: len(repr(c))) if found else None
    if tau is None or not tau > 1:
        raise UnsupportedError(f"tau = {stored!r} is not tau * dt for a tau > 1 at dt = {dt:g} "
                               "(spikingjelly's exporter); give --nir-dt if it used another step",
                               node=name)
    return float(tau)


def _spikingjelly_if(d, name, node, x, shape, dt, path, graph):
    what = "spikingjelly's IFNode"
    _must_be(node.r, 1.0 / dt, name, "r", f"{what} has no input gain (its exporter writes 1/dt)")
    p = nrn.from_if(_one(node.v_threshold, what, name, "v_threshold"),
                    _one(node.v_reset, what, name, "v_reset"))
    return [ir.Neuron(name, (x,), path=path, **p.fields())]


def _spikingjelly_lif(d, name, node, x, shape, dt, path, graph):
    what = "spikingjelly's LIFNode"
    tau = _spikingjelly_tau(node.tau, dt, name)
    r = _one(node.r, what, name, "r")
    if r not in (1.0, tau):
        raise UnsupportedError(f"r = {r:g}, but {what} takes 1 (decay_input) or tau = {tau:g}",
                               node=name)
    v_reset = _one(node.v_reset, what, name, "v_reset")
    _must_be(node.v_leak, v_reset, name, "v_leak", f"{what} leaks to v_reset = {v_reset:g}")
    p = nrn.from_lif(tau, _one(node.v_threshold, what, name, "v_threshold"), v_reset,
                     decay_input=r == 1.0)
    return [ir.Neuron(name, (x,), path=path, **p.fields())]


def _refuse(d, name, node, x, shape, dt, path, graph):
    raise UnsupportedError(f"--nir-dialect {d.name}: a {type(node).__name__} is not what "
                           f"{d.name}'s exporter writes for any neuron snncc can read exactly",
                           node=name)


_HANDLERS = {
    "snntorch": {"LIF": _snntorch_lif, "CubaLIF": _snntorch_cuba, "IF": _refuse,
                 "LI": _refuse, "CubaLI": _refuse, "I": _refuse},
    "norse": {"LIF": _norse_lif, "CubaLIF": _norse_cuba, "IF": _norse_if, "LI": _norse_li,
              "CubaLI": _refuse, "I": _refuse},
    "sinabs": {"LIF": _sinabs_lif, "IF": _sinabs_if, "LI": _sinabs_li, "CubaLIF": _refuse,
               "CubaLI": _refuse, "I": _refuse},
    "spikingjelly": {"LIF": _spikingjelly_lif, "IF": _spikingjelly_if, "CubaLIF": _refuse,
                     "LI": _refuse, "CubaLI": _refuse, "I": _refuse},
    "nir": {},
}


def convert(d: Dialect, name: str, node, x: str, dt: float, path: str, graph):
    """The IR nodes of a neuron ``node`` reading IR node ``x`` of ``graph`` (the graph built
    so far) as dialect ``d`` reads it, or None when the dialect reads this type as NIR does
    (a Delay closing a cycle among them: its source is not built yet, so its shape is asked
    only of what a handler reads)."""
    fn = _HANDLERS[d.name].get(type(node).__name__)
    return None if fn is None else fn(d, name, node, x, tuple(graph[x].shape), dt, path, graph)
