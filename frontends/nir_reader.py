"""NIR front-end: a ``.nir`` file (snncc's own, extension subgraphs included, or one written by
another exporter) as an IR graph.

Conventions (docs/nir.md): neurons are stepped with forward Euler at ``dt`` (the ``dt``
argument, else the graph's metadata ``dt``, else the dialect's; a node needing dt in a file
without one is refused) through :mod:`snncc.neuron`, or read in a producer's dialect
(:mod:`snncc.frontends.nir_dialects`); IF and I
add ``R x`` per step (the ecosystem's convention); several edges into one node are summed in
edge order (an IR ``Add``); a cycle that passes through no ``Delay`` gets a one-step Delay on
the edge leaving the node where a depth-first search from the inputs enters the cycle, so that
node's output reaches the rest of the cycle one step late (a recurrent LIF's spikes at t-1);
nested (non-snncc) subgraphs with one Input and one Output are inlined.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py
import nir
import numpy as np

from snncc import ir
from snncc import neuron as nrn
from snncc.backends.nir.extensions import (ATTRS, decode, extension_nodes, ir_name,
                                           is_extension, sources, text)
from snncc.errors import FormatError, IRError, UnsupportedError, VerificationError
from snncc.frontends.nir_dialects import Dialect, convert as dialect_convert, parse_dialect
from snncc.files import NIR_GRAPH, refuse_foreign_format
from snncc.graph import Graph
from snncc.limits import (ResourceError, SnnccWarning, exact_float64, fmt_bytes, nbytes,
                          positive_int, require_fits, warn)

__all__ = ["read_nir", "from_nir_graph"]


#: An HDF5 dataset may be compressed at most this much (gzip's limit is about 1032:1); one
#: declaring more holds unwritten space (the fill value), not data.
MAX_RATIO = 1100


#: Nested NIRGraphs deeper than this are refused before anything is read: files nest a few
#: levels (a recurrent block, an extension subgraph), while a deep chain costs HDF5's path
#: lookups and nir.read's validation time quadratic in the depth (400 levels, a 2.4 MB file:
#: 51 s; 1,000 levels: minutes).
MAX_NESTING = 32

#: NIR neuron types whose ``v_reset`` field NIR 1.0.4 and older did not have.
_RESET_TYPES = ("LIF", "IF", "CubaLIF")


def _node_name(group: str) -> str:
    """'node/nodes/a/nodes/b' -> 'a.b' (the reader's name of a nested node)."""
    parts = group.split("/")
    return ".".join(parts[i + 1] for i in range(len(parts) - 1) if parts[i] == "nodes")


def _prescan(path: Path) -> set[str]:
    """Every dataset's declared size (shape x dtype), read from the HDF5 metadata before any
    data: each checked against what the file stores, their sum against the memory budget;
    links and external storage into other files are refused; a node group without a ``type``
    is refused by name. Returns the names of the neuron nodes stored without ``v_reset``
    (files of NIR <= 1.0.4, whose neurons had no reset convention)."""
    total, count, problems, no_reset = 0, 0, [], set()

    def group(name, obj):
        parts = name.split("/")
        if len(parts) < 3 or parts[-2] != "nodes":
            return
        owner = obj.parent.parent  # the graph whose node table holds this group
        if "type" not in owner:  # only a nir.write that stopped part-way leaves this
            problems.append(FormatError(
                f"{path}: graph '{_node_name(owner.name.lstrip('/')) or 'top level'}' has no "
                f"'type' (seen at node '{_node_name(name)}'): the file was left by a "
                "nir.write that failed part-way (sinabs.to_nir leaves a conv net's Conv2d "
                "input_shape unset, which nir 1.0.4 cannot write: call graph.infer_types() "
                "before nir.write)"))
            return
        if text(owner["type"][()]) != "NIRGraph":
            return
        if "type" not in obj:
            problems.append(FormatError(
                f"{path}: node '{_node_name(name)}' has no 'type' (an exporter wrote a node it "
                "could not convert, e.g. norse's to_nir writes a conv net's Flatten as None; "
                "export again without that layer or fix the exporter)"))
            return
        t = obj["type"][()]
        if text(t) in _RESET_TYPES and "v_reset" not in obj:
            no_reset.add(_node_name(name))

    # (raising inside h5py's visit callbacks confuses its lock: the callbacks collect)
    def visit(name, obj):
        nonlocal total, count
        if isinstance(obj, h5py.Group) and not problems:
            group(name, obj)
        if not isinstance(obj, h5py.Dataset) or problems:
            return
        count += 1
        declared = nbytes(obj.shape or (), obj.dtype.itemsize)
        if obj.is_virtual:
            _check_virtual_sources(path, name, obj, problems)
        if obj.id.get_create_plist().get_external_count():
            problems.append(FormatError(f"{path}: dataset '{name}' keeps its data in external "
                                        "files, which NIR files do not do"))
        elif not obj.is_virtual and declared > MAX_RATIO * (stored := obj.id.get_storage_size()) \
                + 65536:
            problems.append(ResourceError(
                f"{path}: dataset '{name}' declares shape {obj.shape} ({fmt_bytes(declared)}) "
                f"but the file stores {fmt_bytes(stored)} of it (unwritten data read back as "
                "the HDF5 fill value); refusing to allocate it"))
        total += declared

    def link(name, lnk):
        if isinstance(lnk, h5py.ExternalLink) and not problems:
            problems.append(FormatError(f"{path}: '{name}' links to another file "
                                        f"({lnk.filename}), which NIR files do not do"))

    def too_deep(name: bytes):  # a link's path: stop the walk at the first one too deep
        return name if name.split(b"/").count(b"nodes") > MAX_NESTING else None

    try:
        with h5py.File(path, "r") as f:
            deep = f.id.links.visit(too_deep)
            if deep is not None:
                problems.append(FormatError(
                    f"{path}: graphs nested more than {MAX_NESTING} levels deep (at "
                    f"'{_node_name(deep.decode(errors='replace'))}'); NIR files nest a few "
                    "levels, and reading a deeper chain takes time growing with the square of "
                    "its depth: refused"))
            else:
                f.visititems_links(link)
            if not problems:
                f.visititems(visit)
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FormatError(f"{path}: is a directory, not a .nir file") from None
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
        raise FormatError(f"{path}: not a readable NIR (HDF5) file ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:200]})") from None
    if problems:
        raise problems[0]
    require_fits(total, f"{path}: its {count} datasets")
    return no_reset


def _check_virtual_sources(path: Path, name: str, ds, problems: list) -> None:
    """An HDF5 virtual dataset (snncc writes NIR's batched Affine/Linear weight as one matrix
    it repeats, :func:`snncc.backends.nir.writer._write_repeated`) is read only from sources
    stored in this same file; it counts against the memory budget at its declared size, which
    is what reading it allocates."""
    for source in ds.virtual_sources():
        target = ds.file.get(source.dset_name) if source.file_name == "." else None
        if not isinstance(target, h5py.Dataset) or target.is_virtual:
            problems.append(FormatError(
                f"{path}: dataset '{name}' maps its data from "
                f"'{source.file_name}:{source.dset_name}', which is not a dataset stored in "
                "this file"))
            return


def _nir_read(path: Path) -> nir.NIRGraph:
    """``nir.read(path, type_check=False)``, except that a matrix a virtual dataset repeats
    over its leading axes (:func:`_repeated`) is read once, as a view repeating it."""
    from nir.serialization import try_byte_to_str

    def read(group) -> dict:
        return {try_byte_to_str(k): read(v) if isinstance(v, h5py.Group)
                else try_byte_to_str(_repeated(v) if v.is_virtual else v[()])
                for k, v in group.items()}

    with h5py.File(path, "r") as f:
        d = read(f["node"])
    if "type_check" in d:  # (as nir.read refuses it)
        raise ValueError("the graph has a 'type_check' key, which nir.read refuses")
    d["type_check"] = False
    return nir.dict2NIRNode(d)


def _repeated(ds) -> np.ndarray:
    """A virtual dataset that maps one whole source matrix to each position of its leading
    axes, each once (as snncc writes NIR's batched Affine/Linear weight), as that matrix
    broadcast (no copies); any other as HDF5 reads it."""
    sources = ds.virtual_sources()
    names = {s.dset_name for s in sources}
    one = ds.file[next(iter(names))] if len(names) == 1 else None
    if one is None or ds.ndim < 3 or one.shape != ds.shape[-2:] \
            or len(sources) != math.prod(ds.shape[:-2]):
        return ds[()]
    size, last = math.prod(one.shape), tuple(n - 1 for n in one.shape)
    places = set()
    for s in sources:
        (start, end), npoints = s.vspace.get_select_bounds(), s.vspace.get_select_npoints()
        whole = s.src_space.get_select_type() == h5py.h5s.SEL_ALL
        if whole and npoints == size and start[-2:] == (0, 0) and end == (*start[:-2], *last):
            places.add(start[:-2])
    if len(places) != len(sources):
        return ds[()]
    return np.broadcast_to(one[()], ds.shape)


def read_nir(path, dt: float | None = None, dialect: str | None = None) -> Graph:
    """Read a ``.nir`` file into a verified IR graph (see the module docstring);
    ``meta['extensions']`` lists the file's non-standard (snncc extension) nodes. Declared
    sizes are checked against the file and the memory budget before any array is read.
    ``dt``: the time step (else the file's metadata ``dt``; a file without one is refused where
    a time constant needs it). ``dialect``: read a producer's own conventions
    (:mod:`snncc.frontends.nir_dialects`: ``snntorch:subtract``, ``snntorch:zero``, ``norse``,
    ``sinabs[:single-spike|spike-input]``)."""
    path = Path(path)
    d = parse_dialect(dialect)
    if path.is_file():
        refuse_foreign_format(path, NIR_GRAPH)
    no_reset = _prescan(path)
    try:
        g = _nir_read(path)
    except FileNotFoundError:
        raise FormatError(f"{path}: no such file") from None
    except (OSError, KeyError, ValueError, AssertionError, TypeError, AttributeError,
            IndexError, RuntimeError) as e:
        detail = " ".join(str(e).split())[:200] or "a node of an unknown type or missing a field"
        raise FormatError(f"{path}: not a readable NIR file ({type(e).__name__}: {detail})") \
            from None
    if not isinstance(g, nir.NIRGraph):
        raise FormatError(f"{path}: holds a single {type(g).__name__}, not a NIR graph")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SnnccWarning)
            graph = from_nir_graph(g, dt, name=path.stem, dialect=d, no_reset=no_reset)
        for w in caught:
            warnings.warn_explicit(f"{path}: {w.message}" if issubclass(w.category, SnnccWarning)
                                   else w.message, w.category, w.filename, w.lineno)
    except (IRError, FormatError) as e:
        raise FormatError(f"{path}: {e}") from None
    except (UnsupportedError, ResourceError) as e:
        raise type(e)(f"{path}: {e}") from None
    require_fits(sum(nbytes(n.shape) for n in graph.nodes.values()),
                 f"{path}: one time step of one sample ({len(graph)} nodes)")
    graph.meta["extensions"] = [f"{name} ({op}{', ' + p if p else ''})"
                                for name, op, p in extension_nodes(g)]
    return graph


def _meta(node) -> dict:
    return dict(getattr(node, "metadata", None) or {})


# ----------------------------------------------------------------------------- graph surgery


def _check_structure(graph: nir.NIRGraph, notes: list, prefix: str = "") -> None:
    """Edges name existing nodes; every value array is real (integers cast exactly, with a
    warning); extension nodes carry readable metadata."""
    if not isinstance(graph.nodes, dict) or not isinstance(graph.edges, (list, tuple)):
        raise FormatError(f"graph '{prefix or 'top level'}' has no node table or edge list")
    seen = set()
    for e in graph.edges:
        if len(e) != 2 or any(not isinstance(x, str) for x in e):
            raise FormatError(f"malformed edge {e!r}" + (f" in '{prefix[:-1]}'" if prefix else ""))
        for end in e:
            if end not in graph.nodes:
                raise FormatError(f"edge {e[0]} -> {e[1]} names node '{prefix}{end}', which "
                                  "the graph does not have")
        if tuple(e) in seen:  # (a 32 KB file held 300,000 copies of one, each a summand)
            raise FormatError(f"edge {prefix}{e[0]} -> {prefix}{e[1]} appears more than once; "
                              "a NIR graph's edges are a set")
        seen.add(tuple(e))
    for name, node in graph.nodes.items():
        full = prefix + name
        for field in _VALUES:
            v = getattr(node, field, None)
            if v is not None and not isinstance(v, (str, bytes)):
                a = exact_float64(v, f"node '{full}': '{field}'", notes)
                if not np.all(np.isfinite(a)) and not (field.startswith("tau")
                                                       and np.all(a[~np.isfinite(a)] > 0)):
                    raise FormatError(f"'{field}' contains NaN or infinity", node=full)
        if is_extension(node):
            try:
                src = sources(node)
                if not isinstance(src, list) or not all(isinstance(x, str) for x in src):
                    raise TypeError("'snncc.inputs' is not a list of names")
                kw = json.loads(text(node.metadata.get(ATTRS, "{}")))
                if not isinstance(kw, dict):
                    raise TypeError("'snncc.attrs' is not a JSON object")
                for x in src:
                    if x not in graph.nodes:
                        raise KeyError(f"operand '{x}' is not a node of the graph")
            except (KeyError, TypeError, ValueError) as e:
                raise FormatError(f"snncc extension node with unreadable metadata "
                                  f"({type(e).__name__}: {e})", node=full) from None
        elif isinstance(node, nir.NIRGraph):
            _check_structure(node, notes, full + ".")


#: The fields of NIR nodes that hold real values (others are shapes and sizes).
_VALUES = ("weight", "bias", "tau", "tau_mem", "tau_syn", "r", "v_leak", "v_threshold",
           "v_reset", "w_in", "scale", "delay", "threshold")


def _inline(graph: nir.NIRGraph, prefix: str = ""):
    """(nodes, edges, junctions) with every nested non-snncc NIRGraph inlined; its Input and
    Output become junctions (pass-through points) that :func:`_drop_junctions` removes."""
    nodes, edges, junctions, alias = {}, [], set(), {}
    for name, node in graph.nodes.items():
        full = prefix + name
        if isinstance(node, nir.NIRGraph) and not is_extension(node):
            ins = [k for k, v in node.nodes.items() if isinstance(v, nir.Input)]
            outs = [k for k, v in node.nodes.items() if isinstance(v, nir.Output)]
            if len(ins) != 1 or len(outs) != 1:
                raise UnsupportedError(f"nested graph with {len(ins)} inputs and {len(outs)} "
                                       "outputs (one each is supported)", node=full)
            sub_nodes, sub_edges, sub_junctions = _inline(node, full + ".")
            nodes.update(sub_nodes)
            edges += sub_edges
            alias[full] = (f"{full}.{ins[0]}", f"{full}.{outs[0]}")
            junctions |= sub_junctions | set(alias[full])
        else:
            nodes[full] = node
    for s, d in graph.edges:
        s, d = prefix + s, prefix + d
        edges.append((alias[s][1] if s in alias else s, alias[d][0] if d in alias else d))
    return nodes, edges, junctions


def _drop_junctions(nodes: dict, edges: list, junctions: set) -> list:
    """Replace each junction j by edges from every source of j to every target of j (summing
    into j and passing on is the same as summing the sources into each target)."""
    for j in junctions:
        srcs = [s for s, d in edges if d == j]
        new = []
        for s, d in edges:
            if d == j:
                continue
            new += [(x, d) for x in srcs] if s == j else [(s, d)]
        if len(set(new)) != len(new):
            raise UnsupportedError("inlining a nested graph would duplicate an edge", node=j)
        edges = new
        del nodes[j]
    return edges


def _out_shape(name: str, node) -> tuple:
    t = next(iter((node.output_type or {}).values()), None)
    if t is None:
        raise UnsupportedError("cannot tell the shape a recurrent edge carries from this node",
                               node=name)
    return tuple(int(v) for v in np.asarray(t).ravel())


def _break_cycles(nodes: dict, edges: list, dt: float) -> tuple[list, dict]:
    """Insert a one-step nir.Delay into every cycle that has none. A depth-first search from
    the inputs (ignoring edges into Delays, whose cycles are already delayed) enters each cycle
    at some node v; the cycle is cut on its edge leaving v, so the recurrent signal is v's own
    output one step late (a recurrent LIF's spikes, as snnTorch's RLeaky feeds them back).
    Returns the new edges and {(source, target): inserted delay}."""
    succ = {n: [] for n in nodes}
    for s, d in edges:
        if not isinstance(nodes[d], nir.Delay):
            succ[s].append(d)
    roots = [n for n, v in nodes.items() if isinstance(v, nir.Input)] + list(nodes)
    state, cut = {}, {}
    for root in roots:
        if root in state:
            continue
        state[root], stack = 1, [(root, iter(succ[root]))]
        while stack:
            u, it = stack[-1]
            v = next(it, None)
            if v is None:
                stack.pop()
                state[u] = 2
            elif state.get(v) == 1:
                path = [name for name, _ in stack]
                i = path.index(v)
                cut[(v, path[i + 1] if i + 1 < len(path) else v)] = None
            elif v not in state:
                state[v] = 1
                stack.append((v, iter(succ[v])))
    delayed = {}
    for u, v in cut:
        d = delayed[(u, v)] = f"{u}>{v}:delay"
        shape = _out_shape(u, nodes[u])
        require_fits(nbytes(shape), f"the recurrent edge {u} -> {v} (shape {shape})")
        nodes[d] = nir.Delay(np.full(shape, dt))
        i = edges.index((u, v))
        edges[i:i + 1] = [(u, d), (d, v)]
    return edges, delayed


def _topological(nodes: dict, incoming: dict) -> list[str]:
    """Names so that each comes after its sources, except the sources of Delays."""
    order, seen = [], set()

    def deps(n):
        return iter([] if isinstance(nodes[n], nir.Delay) else incoming[n])

    for root in nodes:
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, deps(root))]
        while stack:
            u, it = stack[-1]
            v = next(it, None)
            if v is None:
                stack.pop()
                order.append(u)
            elif v not in seen:
                seen.add(v)
                stack.append((v, deps(v)))
    return order


# ----------------------------------------------------------------------------- node conversion


@dataclass
class _Ctx:
    graph: Graph
    dt: float | None  # None: the file records none and none was given
    dialect: Dialect | None = None
    no_reset: frozenset = frozenset()
    loop_delays: frozenset = frozenset()  # the one-step Delays that close recurrent cycles
    zero_reset: bool = False  # a missing v_reset is 0 (snncc wrote it for NIR 1.0.4; dialect nir)

    def step(self, name: str, node, field: str) -> float:
        """dt for a node whose ``field`` needs it; refused (one line) when there is none."""
        if self.dt is None:
            v = np.asarray(getattr(node, field), dtype=np.float64).ravel()
            raise FormatError(
                f"{type(node).__name__} {field} = {v[0] if v.size else float('nan'):g} needs the "
                "time step dt, which the file does not record: give --nir-dt SECONDS "
                "(read_nir(dt=...)) or the producer with --nir-dialect snntorch:subtract|"
                "snntorch:zero|norse|sinabs", node=name)
        return self.dt

    def reset_known(self, name: str, node) -> None:
        if name in self.no_reset and not self.zero_reset:
            raise UnsupportedError(
                f"{type(node).__name__} without v_reset (a file of NIR <= 1.0.4, whose neurons had "
                "no reset convention; sinabs subtracts, others reset to 0): its reset is unknown; "
                "give --nir-dialect with the producer, or nir to reset to 0 as nir.read does",
                node=name)


def _path(node) -> str:
    return text(_meta(node).get("snncc.path", ""))


def _exact(node, alpha, gamma, beta, theta):
    """snncc's exact canonical parameters from the node's metadata when they agree with its
    standard fields (else the standard ones): (alpha, gamma, beta, theta, cmp)."""
    m = _meta(node)
    keys = [f"snncc.{a}" for a in ("alpha", "gamma", "beta", "theta", "cmp")]
    if not all(k in m for k in keys):
        return alpha, gamma, beta, theta, nrn.CMP_GT
    a, g, b, th = (np.asarray(m[k], dtype=np.float64) for k in keys[:4])
    cmp = text(m["snncc.cmp"])
    close = all(np.allclose(np.broadcast_to(x, y.shape), y, rtol=1e-9, atol=1e-12)
                for x, y in ((a, alpha), (g, gamma), (b, beta)))
    same = cmp in nrn.CMPS and any(  # float64's strict threshold, or float32's (--nir-compat)
        np.array_equal(np.broadcast_to(nrn.strict_threshold(th.astype(ft), cmp, ft)
                                       .astype(np.float64), theta.shape), theta)
        for ft in (np.float64, np.float32))
    return (a, g, b, th, cmp) if close and same else (alpha, gamma, beta, theta, nrn.CMP_GT)


def _spiking(name, node, x, params, path) -> ir.Neuron:
    alpha, gamma, beta, theta, v_reset = params
    alpha, gamma, beta, theta, cmp = _exact(node, alpha, gamma, beta, theta)
    return ir.Neuron(name, (x,), path=path, alpha=alpha, gamma=gamma, beta=beta, theta=theta,
                     v_reset=v_reset, v_init=0.0, cmp=cmp, reset=nrn.RESET_HARD)


def _integrator(name: str, x: str, alpha, gamma, beta, path: str) -> list[ir.Node]:
    """v[t] = alpha * v[t-1] + gamma * x[t] + beta with v[-1] = 0, output v (a leaky
    integrator, no spikes) built from Scale, Delay and Add."""
    alpha, gamma, beta = (np.asarray(a, dtype=np.float64) for a in (alpha, gamma, beta))
    prev, h = f"{name}:v[t-1]", f"{name}:h" if np.any(beta != 0) else name
    nodes = [ir.Scale(f"{name}:gx", (x,), path=path, factor=gamma),
             ir.Delay(prev, (name,), path=path, shape_hint=alpha.shape, kind_hint=ir.Kind.REAL),
             ir.Scale(f"{name}:av", (prev,), path=path, factor=alpha),
             ir.Add(h, (f"{name}:av", f"{name}:gx"), path=path)]
    if h != name:
        if beta.ndim != 1:
            raise UnsupportedError("a leak voltage on a multi-axis integrator", node=name)
        one = np.ones(beta.shape)
        nodes.append(ir.BatchNorm(name, (h,), path=path, weight=one, bias=beta, mean=0 * one,
                                  var=one, eps=0.0))
    return nodes


def _from_nir(name, node, tau_field: str, r, v_leak, v_threshold, v_reset, ctx):
    """:func:`nrn.from_nir` after checking that there is a dt, that tau is positive and that
    the Euler step gives a decay in [0, 1]: alpha = 1 - dt/tau < 0 means dt > tau (usually dt
    and tau in different units, or a producer's own convention such as norse's tau =
    dt/tau_mem_inv), which no discretisation of the leak can mean. alpha = 0 exactly (tau ==
    dt, a neuron without memory, e.g. snnTorch's Leaky(beta=0)) is accepted."""
    dt = ctx.step(name, node, tau_field)
    tau = np.asarray(getattr(node, tau_field), dtype=np.float64)
    if np.any(tau <= 0):
        bad = tau[tau <= 0].ravel()[0]
        raise FormatError(f"{tau_field} = {bad:g} must be positive (a time constant)", node=name)
    alpha = 1.0 - dt / tau
    if np.any(alpha < 0):
        i = np.unravel_index(np.argmin(alpha), alpha.shape) if alpha.ndim else ()
        raise FormatError(
            f"{tau_field} = {tau[i]:g} with dt = {dt:g} gives a leak alpha = 1 - dt/{tau_field} "
            f"= {alpha[i]:g} < 0 (dt and {tau_field} in different units?): give the producer's "
            "step with --nir-dt or its conventions with --nir-dialect (norse writes tau = "
            "dt/tau_mem_inv)", node=name)
    return nrn.from_nir(tau, r, v_leak, v_threshold, v_reset, dt)


def _lif(name, node, x, ctx):
    ctx.reset_known(name, node)
    return [_spiking(name, node, x, _from_nir(name, node, "tau", node.r, node.v_leak,
                                              node.v_threshold, node.v_reset, ctx),
                     _path(node))]


def _if(name, node, x, ctx):
    ctx.reset_known(name, node)
    return [_spiking(name, node, x, nrn.from_nir_if(node.r, node.v_threshold, node.v_reset),
                     _path(node))]


def _threshold(name, node, x, ctx):
    return [ir.Neuron(name, (x,), path=_path(node), alpha=0.0, gamma=1.0, beta=0.0,
                      theta=node.threshold, cmp=nrn.CMP_GT)]


def _li(name, node, x, ctx):
    a, g, b, _, _ = _from_nir(name, node, "tau", node.r, node.v_leak, 0.0, 0.0, ctx)
    return _integrator(name, x, a, g, b, _path(node))


def _i(name, node, x, ctx):
    a, g, b, _, _ = nrn.from_nir_if(node.r, 0.0, 0.0)
    return _integrator(name, x, a, g, b, _path(node))


def _synapse(name, node, x, ctx) -> tuple[str, list[ir.Node]]:
    """The current of a Cuba neuron: tau_syn dI/dt = -I + w_in x, stepped like an LI."""
    a, g, b, _, _ = _from_nir(name, node, "tau_syn", node.w_in, 0.0, 0.0, 0.0, ctx)
    return f"{name}:I", _integrator(f"{name}:I", x, a, g, b, _path(node))


def _cuba_lif(name, node, x, ctx):
    ctx.reset_known(name, node)
    current, syn = _synapse(name, node, x, ctx)
    params = _from_nir(name, node, "tau_mem", node.r, node.v_leak, node.v_threshold,
                       node.v_reset, ctx)
    return syn + [_spiking(name, node, current, params, _path(node))]


def _cuba_li(name, node, x, ctx):
    current, syn = _synapse(name, node, x, ctx)
    a, g, b, _, _ = _from_nir(name, node, "tau_mem", node.r, node.v_leak, 0.0, 0.0, ctx)
    return syn + _integrator(name, current, a, g, b, _path(node))


def _same_slices(a: np.ndarray, keep: int, name: str) -> np.ndarray:
    """A batched parameter (*lead, *rest) that must repeat over lead -> its first slice."""
    if not any(a.strides[:a.ndim - keep]):  # a view repeating one slice (_repeated)
        return a[(0,) * (a.ndim - keep)].copy()  # a view of it is read-only (torch warns)
    flat = a.reshape(-1, *a.shape[a.ndim - keep:])
    if not np.all(flat == flat[0]):
        raise UnsupportedError("a batched Affine/Linear with different weights per slice",
                               node=name)
    return flat[0]


def _affine(name, node, x, ctx):
    w = np.asarray(_same_slices(np.asarray(node.weight), 2, name), dtype=np.float64)
    bias = getattr(node, "bias", None)
    if bias is not None:
        bias = np.asarray(_same_slices(np.asarray(bias), 1, name), dtype=np.float64)
    return [ir.Linear(name, (x,), path=_path(node), weight=w, bias=bias)]


def _per_axis(v, nd: int) -> tuple[int, ...]:
    v = np.atleast_1d(np.asarray(v)).astype(int)
    return tuple(int(i) for i in (np.repeat(v, nd) if v.size == 1 else v))


def _conv_padding(node, nd: int, dilation) -> tuple[int, ...]:
    p = node.padding
    if isinstance(p, (str, bytes)):
        if text(p) == "valid":
            return (0,) * nd
        total = [d * (k - 1) for d, k in zip(dilation, node.weight.shape[2:])]
        if any(t % 2 for t in total) or any(s != 1 for s in _per_axis(node.stride, nd)):
            raise UnsupportedError("padding='same' that is not symmetric")
        return tuple(t // 2 for t in total)
    return _per_axis(p, nd)


def _conv(name, node, x, ctx):
    nd = node.weight.ndim - 2
    dilation = _per_axis(node.dilation, nd)
    bias = np.asarray(node.bias, dtype=np.float64)
    cls = ir.Conv1d if nd == 1 else ir.Conv2d
    return [cls(name, (x,), path=_path(node), weight=node.weight,
                bias=None if np.all(bias == 0) else bias, stride=_per_axis(node.stride, nd),
                padding=_conv_padding(node, nd, dilation), dilation=dilation,
                groups=int(node.groups))]


def _sumpool(name, node, x, ctx):
    """SumPool2d as a depthwise Conv2d with all-ones kernels (an exact sum)."""
    c = ctx.graph[x].shape[0]
    k = _per_axis(node.kernel_size, 2)
    require_fits(nbytes((c, 1, *k)), f"node '{name}': a sum-pool kernel {k} over {c} channels")
    return [ir.Conv2d(name, (x,), path=_path(node), weight=np.ones((c, 1, *k)), groups=c,
                      stride=_per_axis(node.stride, 2), padding=_per_axis(node.padding, 2))]


def _avgpool(name, node, x, ctx):
    return [ir.AvgPool2d(name, (x,), path=_path(node), kernel_size=_per_axis(node.kernel_size, 2),
                         stride=_per_axis(node.stride, 2), padding=_per_axis(node.padding, 2))]


def _flatten(name, node, x, ctx):
    k = len(ctx.graph[x].shape)
    for d in (node.start_dim, node.end_dim):
        if not -k <= int(d) < k:
            raise FormatError(f"flatten axis {int(d)} is out of range for its input of shape "
                              f"{ctx.graph[x].shape}", node=name)
    return [ir.Flatten(name, (x,), path=_path(node), start=int(node.start_dim),
                       end=int(node.end_dim))]


def _scale(name, node, x, ctx):
    return [ir.Scale(name, (x,), path=_path(node), factor=node.scale)]


def _delay(name, node, x, ctx):
    d = np.asarray(node.delay, dtype=np.float64)
    if name in ctx.loop_delays:
        return [ir.Delay(name, (x,), path=_path(node), steps=1, shape_hint=d.shape)]
    dt = ctx.step(name, node, "delay")
    steps = d / dt
    k = int(np.rint(steps.flat[0])) if d.size else 0
    if k < 1 or not np.allclose(steps, k, rtol=1e-6, atol=0):
        raise UnsupportedError(f"delay {d.ravel()[:4]} is not one whole number (>= 1) of steps "
                               f"of dt={dt}", node=name)
    return [ir.Delay(name, (x,), path=_path(node), steps=k, shape_hint=d.shape)]


def _output(name, node, x, ctx):
    return [ir.Output(name, (x,), path=_path(node))]


_CONVERT = {
    "LIF": _lif, "IF": _if, "Threshold": _threshold, "LI": _li, "I": _i, "CubaLIF": _cuba_lif,
    "CubaLI": _cuba_li, "Affine": _affine, "Linear": _affine, "Conv1d": _conv, "Conv2d": _conv,
    "SumPool2d": _sumpool, "AvgPool2d": _avgpool, "Flatten": _flatten, "Scale": _scale,
    "Delay": _delay, "Output": _output,
}


def _input(name, node, spikes: bool = False) -> ir.Input:
    """``spikes``: the producer's dialect says the input is 0/1 events (sinabs:spike-input)."""
    m = _meta(node)
    shape = np.asarray((node.input_type or {}).get("input", ()))
    if shape.dtype.kind not in "iu" or shape.ndim != 1 or not shape.size:
        raise FormatError(f"input shape {shape.tolist()!r} is not a list of sizes", node=name)
    return ir.Input(name, path=_path(node), input_shape=tuple(int(v) for v in shape),
                    static=bool(m.get("snncc.static", False)),
                    input_kind="spike" if spikes else text(m.get("snncc.kind", "real")))


def _ir_nodes(name: str, node, srcs: list[str], ctx: _Ctx) -> list[ir.Node]:
    """The IR nodes of one NIR node reading the IR names ``srcs`` (its incoming edges)."""
    if isinstance(node, nir.Input):
        spikes = ctx.dialect is not None and ctx.dialect.option == "spike-input"
        return [_input(name, node, spikes)]
    if is_extension(node):
        try:
            return [decode(name, node, srcs)]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise FormatError(f"snncc extension node does not decode ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]})", node=name) from None
    if (isinstance(node, nir.Scale) and text(_meta(node).get("snncc.op", "")) == "Add"
            and np.all(node.scale == 1)):
        return [ir.Add(name, tuple(srcs), path=_path(node))]
    if isinstance(node, nir.AvgPool2d) and _marker(node) == "Mean" and len(srcs) == 1:
        mean = _restore(ctx, ir.Mean(name, (srcs[0],), path=_path(node), axes=(1, 2),
                                     keepdim=True), _whole_plane(node, ctx.graph[srcs[0]].shape))
        if mean is not None:
            return [mean]
    fn = _CONVERT.get(type(node).__name__)
    if fn is None:
        raise UnsupportedError(f"NIR node type {type(node).__name__} is not supported", node=name)
    if not srcs:
        raise UnsupportedError("node has no incoming edge", node=name)
    pre = []
    if len(srcs) > 1:  # several edges into one node are summed
        pre = [ir.Add(f"{name}:in", tuple(srcs), path=_path(node))]
        for n in pre:
            ctx.graph.add(n)
        srcs = [pre[0].name]
    if ctx.dialect is not None:
        out = dialect_convert(ctx.dialect, name, node, srcs[0],
                              ctx.dt if ctx.dt is not None else ctx.dialect.default_dt,
                              _path(node), ctx.graph)
        if out is not None:
            return out
    return fn(name, node, srcs[0], ctx)


# ----------------------------------------------------------------------------- snncc's pairs

# snncc writes some IR ops as two standard NIR nodes, marked in metadata ``snncc.op`` ("X:sum" /
# "X:pool" on the first, "X" on the second): MaxPool2d of spikes as SumPool2d -> Threshold,
# Readout as I -> Scale(1/T), a spatial Mean as AvgPool2d (-> Flatten). The reader restores the
# IR op when the standard fields say the same thing; otherwise it reads the standard nodes.


def _marker(node) -> str:
    return text(_meta(node).get("snncc.op", ""))


def _fused_pairs(nodes: dict, edges: list, incoming: dict) -> dict[str, str]:
    """{first: second} for every marked pair whose first node feeds only the second and whose
    second reads only the first."""
    outgoing: dict[str, list] = {n: [] for n in nodes}
    for s, d in edges:
        outgoing[s].append(d)
    pairs = {}
    for b, node in nodes.items():
        op = _marker(node)
        if op not in _FUSE or len(incoming[b]) != 1:
            continue
        a = incoming[b][0]
        if _marker(nodes[a]).startswith(op + ":") and outgoing[a] == [b]:
            pairs[a] = b
    return pairs


def _restore(ctx, node: ir.Node, agrees: bool) -> ir.Node | None:
    """``node`` if the standard fields agree and it fits its input, else None."""
    if not agrees:
        return None
    try:
        node.infer([ctx.graph[i].shape for i in node.inputs],
                   [ctx.graph[i].kind for i in node.inputs])
    except (IRError, ValueError, TypeError):
        return None
    return node


def _whole_plane(node, shape) -> bool:
    """An AvgPool2d whose window is the whole (H, W) plane of a (C, H, W) input."""
    return (len(shape) == 3 and _per_axis(node.kernel_size, 2) == tuple(shape[1:])
            and _per_axis(node.stride, 2) == tuple(shape[1:])
            and _per_axis(node.padding, 2) == (0, 0))


def _fuse_maxpool(name, a, b, x, ctx):
    t = np.asarray(b.threshold, dtype=np.float64)
    return _restore(ctx, ir.MaxPool2d(name, (x,), path=_path(b),
                                      kernel_size=_per_axis(a.kernel_size, 2),
                                      stride=_per_axis(a.stride, 2),
                                      padding=_per_axis(a.padding, 2)),
                    isinstance(a, nir.SumPool2d) and isinstance(b, nir.Threshold)
                    and ctx.graph[x].kind is ir.Kind.SPIKE and bool(np.all((t >= 0) & (t < 1))))


def _fuse_readout(name, a, b, x, ctx):
    try:
        T = int(_number(_meta(b).get("snncc.T")))
    except (TypeError, ValueError):
        return None
    return _restore(ctx, ir.Readout(name, (x,), path=_path(b)),
                    isinstance(a, nir.I) and isinstance(b, nir.Scale) and T >= 1
                    and bool(np.all(np.asarray(a.r) == 1))
                    and bool(np.all(np.asarray(b.scale) == 1.0 / T)))


def _fuse_mean(name, a, b, x, ctx):
    return _restore(ctx, ir.Mean(name, (x,), path=_path(b), axes=(1, 2), keepdim=False),
                    isinstance(a, nir.AvgPool2d) and isinstance(b, nir.Flatten)
                    and _whole_plane(a, ctx.graph[x].shape)
                    and int(b.start_dim) == 0 and int(b.end_dim) in (-1, 2))


def _fuse_avgpool(name, a, b, x, ctx):
    """SumPool2d then Scale by 1 / the counts of each window's positions inside the input: an
    average pooling without count_include_pad (torch divides by the count, not by its
    reciprocal's product)."""
    if not (isinstance(a, nir.SumPool2d) and isinstance(b, nir.Scale)):
        return None
    pool = ir.AvgPool2d(name, (x,), path=_path(b), kernel_size=_per_axis(a.kernel_size, 2),
                        stride=_per_axis(a.stride, 2), padding=_per_axis(a.padding, 2),
                        count_include_pad=False)
    shape = ctx.graph[x].shape
    counts = pool.divisors(shape[1:]) if len(shape) == 3 else None
    scale = np.asarray(b.scale, dtype=np.float64)
    return _restore(ctx, pool, counts is not None and scale.shape[-2:] == counts.shape
                    and bool(np.all(scale == 1.0 / counts)))


_FUSE = {"MaxPool2d": _fuse_maxpool, "Readout": _fuse_readout, "Mean": _fuse_mean,
         "AvgPool2d": _fuse_avgpool}


# ----------------------------------------------------------------------------- entry point


def _verify(g: Graph) -> Graph:
    """Verify, fixing the kind each cycle-closing Delay declares (a recurrent edge may carry
    spikes or real values; the verifier reports which)."""
    delays = g.of_type(ir.Delay)
    for _ in range(len(delays) + 1):
        try:
            return g.verify()
        except VerificationError:
            wrong = [d for d in delays if d.kind != d.kind_hint]
            if not wrong:
                raise
            for d in wrong:
                d.kind_hint = d.kind
    return g.verify()


def _number(v):
    """A metadata value as a number when it reads as one (h5py gives bytes, 0-d arrays)."""
    v = text(v) if isinstance(v, bytes) else v
    if isinstance(v, np.ndarray) and v.ndim == 0:
        v = v.item()
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            pass
    return v


def _positive_dt(v) -> float:
    v = _number(v)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                              np.floating)):
        raise FormatError(f"the time step dt = {v!r} is not a number")
    if not (np.isfinite(v) and v > 0):
        raise FormatError(f"the time step dt = {v!r} must be positive and finite (the graph's "
                          "metadata 'dt')")
    return float(v)


def _graph_meta(meta: dict) -> dict:
    if "snncc.meta" not in meta:
        return {}
    try:
        m = json.loads(text(meta["snncc.meta"]))
    except (ValueError, TypeError) as e:
        raise FormatError(f"metadata 'snncc.meta' is not JSON ({e})") from None
    if not isinstance(m, dict):
        raise FormatError("metadata 'snncc.meta' is not a JSON object")
    if m.get("T") is not None:
        positive_int(m["T"], "metadata 'snncc.meta' T (time steps)", FormatError)
    return m


def from_nir_graph(graph: nir.NIRGraph, dt: float | None = None, name: str = "model",
                   dialect=None, no_reset=frozenset()) -> Graph:
    """An in-memory NIR graph as a verified IR graph (see the module docstring and
    :func:`read_nir`); ``no_reset``: names of neurons stored without ``v_reset``."""
    meta = _meta(graph)
    dia = parse_dialect(dialect)
    if dt is None and "dt" in meta:
        dt = meta["dt"]
    if dt is None and dia is not None:
        dt = dia.default_dt
    dt = None if dt is None else _positive_dt(dt)
    notes: list[str] = []
    _check_structure(graph, notes)
    for note in notes:
        warn(note)
    nodes, edges, junctions = _inline(graph)
    edges = _drop_junctions(nodes, edges, junctions)
    edges, delayed = _break_cycles(nodes, edges, dt if dt is not None else nrn.DEFAULT_DT)
    incoming = {n: [] for n in nodes}
    for s, d in edges:
        incoming[d].append(s)
    g = Graph(text(meta.get("snncc.name", name)), _graph_meta(meta))
    g.meta["dt"] = dt if dt is not None else nrn.DEFAULT_DT
    if dia is not None:
        g.meta["nir_dialect"] = str(dia)
    if "snncc.T" in meta:
        g.meta["T"] = positive_int(_number(meta["snncc.T"]), "metadata 'snncc.T' (time steps)",
                                   FormatError)
    ctx = _Ctx(g, dt, dia, frozenset(no_reset), frozenset(ir_name(v) for v in delayed.values()),
               zero_reset=("nir-1.0.4" in text(meta.get("snncc.compat", "")).split(",")
                           or (dia is not None and dia.name == "nir")))
    pairs, skip = _fused_pairs(nodes, edges, incoming), set()
    for n in _topological(nodes, incoming):
        node = nodes[n]
        if n in skip:
            continue
        if n in pairs and len(incoming[n]) == 1:
            b = pairs[n]
            fused = _FUSE[_marker(nodes[b])](ir_name(b), node, nodes[b], ir_name(incoming[n][0]),
                                             ctx)
            if fused is not None:
                g.add(fused)
                skip.add(b)
                continue
        srcs = ([delayed.get((s, n), s) for s in sources(node)] if is_extension(node)
                else incoming[n])
        for ir_node in _ir_nodes(ir_name(n), node, [ir_name(s) for s in srcs], ctx):
            g.add(ir_node)
    return _verify(g)

