"""The lava target's artifact: a directory a user loads without the PyTorch model.

    manifest.json   processes (type, IR node, shape, parameters), connections (with the virtual
                    -port transforms), the port showing each IR node, depths, latency, T, dt
    weights.npz     every process array, keyed "<process>/<array>"
    netx.h5         a quantized network's feed-forward prefix that lava-dl's netx holds exactly
                    (see :mod:`.netx`); absent for a float network

:func:`emit` writes it atomically; :func:`load` reads it back as a :class:`~.lower.LavaNet`
(what :mod:`.runner` builds processes from).
"""

from __future__ import annotations

import json
import zipfile
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import numpy as np

from snncc.errors import FormatError
from snncc.files import atomic_directory
from snncc.graph import Graph
from snncc.serialize import read_npz, write_npz
from snncc.passes.latency import require_plan

from .lower import CUSTOM_NEURON, FIXED_NEURON, LavaNet, Port, ProcSpec, lower
from .netx import manifest_entry, netx_prefix, write_netx

FORMAT, VERSION = "snncc-lava", 2  # 2: Delays mute their first inputs (v1: cleared)
MANIFEST, WEIGHTS, NETX = "manifest.json", "weights.npz", "netx.h5"


def _jsonable(x):
    """numpy scalars in parameters as plain numbers."""
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON-able: {type(x).__name__}")


def manifest(net: LavaNet) -> dict:
    """The JSON description of ``net`` (arrays are named, not included)."""
    return {
        "format": FORMAT, "version": VERSION, "graph": net.name, "T": net.T, "dt": net.dt,
        "latency": net.latency, "period": net.period, "dilation": net.dilation,
        "synapse_delay": 1,
        "inputs": net.inputs, "outputs": net.outputs, "depth": net.depth,
        "shapes": {k: list(v) for k, v in net.shapes.items()},
        "processes": [{"name": s.name, "type": s.type, "node": s.node, "shape": list(s.shape),
                       "params": s.params, "arrays": sorted(s.arrays)} for s in net.processes],
        "connections": [{"to": s.name, "port": p, "from": src.to_json()}
                        for s in net.processes for p, src in s.inputs.items()],
        "values": {k: v.to_json() for k, v in net.values.items()},
        "custom_neurons": net.custom_neurons,
        "arithmetic": net.arithmetic,
        "levels": net.levels,
    }


#: the graph's metadata the manifest records (what :func:`snncc.api.run` reads of it)
RECORDED_META = ("output_layout", "output_layouts", "T", "steps_fixed")


def read_meta(directory) -> dict:
    """The graph metadata a manifest records, without its weights ({} where it records none,
    written before it did, or cannot be read: the runner says why)."""
    try:
        doc = json.loads((Path(directory) / MANIFEST).read_text())
        return dict(doc.get("graph_meta", {}))
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def write(net: LavaNet, graph: Graph, directory: Path) -> None:
    """Write manifest, weights and the netx prefix of ``net`` (lowered from ``graph``)."""
    prefix = netx_prefix(graph)
    written = write_netx(directory / NETX, prefix, net.T)
    doc = {**manifest(net), "netx": manifest_entry(prefix, written, net.T, NETX),
           "graph_meta": {k: graph.meta[k] for k in RECORDED_META if k in graph.meta}}
    (directory / MANIFEST).write_text(json.dumps(doc, indent=1, default=_jsonable))
    with open(directory / WEIGHTS, "wb") as f:
        write_npz(f, {f"{s.name}/{k}": v for s in net.processes for k, v in s.arrays.items()})


def emit(graph: Graph, out: str | Path) -> Path:
    """The lava target's emitter: lower ``graph`` (which must carry a current latency plan from
    ``balance_synaptic_latency``) and write the artifact directory ``out`` atomically."""
    net = lower(graph, require_plan(graph))
    return atomic_directory(out, lambda d: write(net, graph, d), target="lava")


def load(directory: str | Path) -> LavaNet:
    """Read an artifact directory back into a LavaNet."""
    directory = Path(directory)
    try:
        doc = json.loads((directory / MANIFEST).read_text())
        weights = read_npz(directory / WEIGHTS)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise FormatError(f"{directory}: not a readable Lava artifact ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise FormatError(f"{directory}: not a {FORMAT} v{VERSION} artifact")
    if doc.get("version") != VERSION:
        raise FormatError(f"{directory}: a {FORMAT} artifact of version {doc.get('version')!r}, "
                          f"this snncc reads v{VERSION}: compile the model again")
    try:
        net = _net(doc, weights)
        _check_wiring(net)
        loop = _loop_without_sender(net.processes)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise FormatError(f"{directory}/{MANIFEST}: malformed ({type(e).__name__}: {e})") from None
    if loop:
        raise FormatError(f"{directory}/{MANIFEST}: processes {' -> '.join(loop)} form a loop in "
                          "which each waits for the one before it (no synapse or delay sends "
                          "first): Lava would wait forever")
    _check_values(net, directory / WEIGHTS)
    return net


def _check_values(net: LavaNet, path: Path) -> None:
    """No NaN in any process's arrays, nor an infinite synapse weight (a threshold may be
    infinite: a neuron that never fires)."""
    for s in net.processes:
        for key, a in s.arrays.items():
            if not np.issubdtype(a.dtype, np.number) and a.dtype != np.bool_:
                raise FormatError(f"{path}: process '{s.name}' array '{key}' is not numeric")
            if np.issubdtype(a.dtype, np.inexact) and (
                    np.isnan(a).any() or s.type in SENDS_FIRST and np.isinf(a).any()):
                raise FormatError(f"{path}: process '{s.name}' array '{key}' holds "
                                  f"{'NaN' if np.isnan(a).any() else 'infinite'} values")


#: the processes that send at a step before they receive (a synapse's one-step latency, a FIFO)
SENDS_FIRST = ("Conv", "Dense", "Sparse")
#: each process type's in-ports and out-port (the processes the runner builds, by type)
PORTS = {**{t: (("s_in",), "a_out") for t in SENDS_FIRST},
         **{t: (("a_in",), "s_out") for t in ("LIFReset", CUSTOM_NEURON, FIXED_NEURON, "UnaryOp",
                                               "Delay", "Readout")},
         "BinaryOp": (("a_in0", "a_in1"), "s_out")}


def _check_wiring(net: LavaNet) -> None:
    """Every process of a known type, reading its own in-ports from existing out-ports (a
    manifest is a file: anything else would fail inside Lava)."""
    specs = {s.name: s for s in net.processes}
    inputs = {i["node"] for i in net.inputs}
    for s in net.processes:
        if s.type not in PORTS:
            raise ValueError(f"process '{s.name}' has unknown type {s.type!r}")

    def require_out_port(src: Port, reader: str) -> None:
        ok = src.port == "input" if src.process in inputs else (
            src.process in specs and src.port == PORTS[specs[src.process].type][1])
        if not ok:
            raise ValueError(f"{reader} reads '{src.process}.{src.port}', which is no "
                             "process's out-port nor an input")

    for s in net.processes:
        for port, src in s.inputs.items():
            if port not in PORTS[s.type][0]:
                raise ValueError(f"process '{s.name}' ({s.type}) has no in-port '{port}'")
            require_out_port(src, f"process '{s.name}'")
    for node, src in net.values.items():
        require_out_port(src, f"the value of node '{node}'")


def _loop_without_sender(processes: list[ProcSpec]) -> list[str]:
    """A loop of connections through processes that all receive before they send (empty if
    none): what snncc lowers never has one (every IR loop holds a synapse or a delay step), a
    manifest may."""
    waits = {s.name for s in processes
             if s.type not in SENDS_FIRST and not (s.type == "Delay" and s.params["steps"] > 0)}
    try:
        TopologicalSorter({s.name: {p.process for p in s.inputs.values() if p.process in waits}
                           for s in processes if s.name in waits}).prepare()
    except CycleError as e:
        return list(e.args[1])
    return []


def _net(doc: dict, weights: dict[str, np.ndarray]) -> LavaNet:
    inputs: dict[str, dict[str, Port]] = {}
    for c in doc["connections"]:
        inputs.setdefault(c["to"], {})[c["port"]] = Port.from_json(c["from"])
    procs = [ProcSpec(p["name"], p["type"], tuple(p["shape"]), inputs.get(p["name"], {}),
                      p["params"], {k: weights[f"{p['name']}/{k}"] for k in p["arrays"]},
                      p["node"]) for p in doc["processes"]]
    return LavaNet(name=doc["graph"], T=doc["T"], dt=doc["dt"], latency=doc["latency"],
                   depth=doc["depth"], shapes={k: tuple(v) for k, v in doc["shapes"].items()},
                   inputs=doc["inputs"], outputs=doc["outputs"],
                   values={k: Port.from_json(v) for k, v in doc["values"].items()},
                   processes=procs, custom_neurons=doc["custom_neurons"],
                   arithmetic=doc.get("arithmetic", "float"),
                   dilation=_dilation(doc.get("dilation", 1)),
                   levels=_levels(doc.get("levels", {}), doc["values"], doc["shapes"]))


def _levels(levels: dict, values: dict, shapes: dict) -> dict[str, tuple[str, int]]:
    """Comparison neurons computed inside a Count process: each a node of the network naming
    a node with a value (its count) and a level d >= 1 ({} in artifacts written before counts
    were fused)."""
    out = {}
    for node, (count, d) in levels.items():
        if node not in shapes or count not in values or type(d) is not int or d < 1:
            raise ValueError(f"level '{node}' must name a count with a value and a level >= 1, "
                             f"got {[count, d]!r}")
        out[node] = (count, d)
    return out


def _dilation(d) -> int:
    """Lava steps per IR step: a positive integer (1 in artifacts written before dilation)."""
    if type(d) is not int or d < 1:
        raise ValueError(f"dilation must be a positive integer, got {d!r}")
    return d
