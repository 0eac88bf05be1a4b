"""snncc's NIR extension subgraphs: how an IR node NIR has no primitive for is written as a
nested ``NIRGraph``, read back, listed and type-checked (docs/nir.md states the encoding).

An extension node is a ``NIRGraph`` holding one ``Input`` per operand (``input`` for one
operand, ``input_0``, ``input_1``, ... for several) with the operand's shape, one ``Output``
``output`` with the result's shape, an ``input -> output`` edge only when the op keeps its one
operand's shape, and this metadata:

* ``snncc.op``: the IR op name (``MaxPool2d``, ``SpikeMatMul``, ...);
* ``snncc.attrs``: JSON of the op's non-array fields (``kernel_size``, ``perm``, ``cmp``, ...);
* ``snncc.array.<field>``: each array field (float64, the IR's own shape);
* ``snncc.inputs``: JSON list of the operand sources' NIR node names, in operand order (NIR
  edges carry no port; the graph has one edge per distinct source);
* ``snncc.path``: the module path the node came from.

NIR 1.0.8's type checker handles one input per node and checks nested graphs edge by edge, so
a graph holding an extension with several operands or a changed shape loads with
``nir.read(path, type_check=False)`` only (so does one with a grouped convolution, which NIR
1.0.8 mis-types); :func:`check_nir_types` runs NIR's own checks on everything else (each
standard edge, and the declared types at every extension boundary).
"""

from __future__ import annotations

import copy
import json
from urllib.parse import quote, unquote

import nir
import numpy as np

from snncc import ir
from snncc.errors import FormatError

OP = "snncc.op"
ATTRS = "snncc.attrs"
INPUTS = "snncc.inputs"
PATH = "snncc.path"
ARRAY = "snncc.array."


def nir_name(ir_name: str) -> str:
    """A node name HDF5 can store ('/' separates groups); reversed by :func:`ir_name`."""
    return quote(ir_name, safe="") if ("/" in ir_name or "%" in ir_name) else ir_name


def ir_name(name: str) -> str:
    """The IR name of a NIR node name (inverse of :func:`nir_name`)."""
    return unquote(name)


def is_extension(node) -> bool:
    return isinstance(node, nir.NIRGraph) and OP in (node.metadata or {})


def meta_array(a):
    """An array as NIR metadata: float64, a 0-d array as a plain float (HDF5 cannot compress
    scalar datasets, and nir.write compresses every array)."""
    a = np.asarray(a, dtype=np.float64)
    return a if a.ndim else float(a)


def _operand_names(k: int) -> list[str]:
    return ["input"] if k == 1 else [f"input_{i}" for i in range(k)]


def encode(node: ir.Node, operand_shapes: list[tuple], sources: list[str]) -> nir.NIRGraph:
    """The extension subgraph of IR node ``node`` (its shape already inferred); ``sources`` are
    the NIR names of its operands, in order."""
    names = _operand_names(len(operand_shapes))
    nodes = {nm: nir.Input(np.array(s, dtype=np.int64)) for nm, s in zip(names, operand_shapes)}
    nodes["output"] = nir.Output(np.array(node.shape, dtype=np.int64))
    keeps_shape = len(names) == 1 and tuple(operand_shapes[0]) == tuple(node.shape)
    meta = {OP: node.op, ATTRS: json.dumps(node.attrs()), INPUTS: json.dumps(sources)}
    meta.update({ARRAY + a: meta_array(getattr(node, a))
                 for a in node.arrays if getattr(node, a) is not None})
    if node.path:
        meta[PATH] = node.path
    return nir.NIRGraph(nodes=nodes, edges=[("input", "output")] if keeps_shape else [],
                        metadata=meta, type_check=False)


def text(v) -> str:
    """A metadata string as read back (h5py may give bytes)."""
    return v.decode() if isinstance(v, bytes) else str(v)


def sources(node: nir.NIRGraph) -> list[str]:
    """The NIR names of an extension's operands, in operand order."""
    return json.loads(text(node.metadata[INPUTS]))


def decode(name: str, node: nir.NIRGraph, inputs: list[str]) -> ir.Node:
    """The IR node an extension subgraph encodes, reading ``inputs`` (IR names)."""
    meta = node.metadata
    op = text(meta[OP])
    cls = ir.NODE_TYPES.get(op)
    if cls is None:
        raise FormatError(f"unknown snncc extension op '{op}'", node=name)
    kw = json.loads(text(meta.get(ATTRS, "{}")))
    kw.update({k[len(ARRAY):]: np.asarray(v, dtype=np.float64) for k, v in meta.items()
               if k.startswith(ARRAY)})
    return cls(name=name, inputs=tuple(inputs), path=text(meta.get(PATH, "")), **kw)


def extension_nodes(graph: nir.NIRGraph) -> list[tuple[str, str, str]]:
    """(name, snncc op, module path) of every extension node of a NIR graph, nested ones
    included (names joined with '.'), for ``snncc inspect``."""
    found = []
    for name, node in graph.nodes.items():
        if is_extension(node):
            found.append((ir_name(name), text(node.metadata[OP]),
                          text(node.metadata.get(PATH, ""))))
        elif isinstance(node, nir.NIRGraph):
            found += [(f"{ir_name(name)}.{n}", op, p) for n, op, p in extension_nodes(node)]
    return found


def _stub_types(node: nir.NIRGraph) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """An extension's declared operand shapes by source name, and its output shape."""
    names = _operand_names(len(sources(node)))
    shapes = {}
    for src, nm in zip(sources(node), names):
        shapes.setdefault(src, node.nodes[nm].input_type["input"])
    return shapes, node.nodes["output"].output_type["output"]


def _checkable(node):
    """A copy for NIR's checker, with a convolution's types computed here: NIR 1.0.8 types a
    convolution's input channels as ``weight.shape[1]``, which is C_in / groups, and its output
    with ``weight.shape[2]`` as the kernel size of *every* spatial axis, so a grouped
    convolution or a non-square kernel (3 x 2) would fail NIR's check although the node is
    right. Its declared input shape and the torch output-size formula per axis give the
    types."""
    node = copy.copy(node)  # the arrays are shared (never written), the types replaced
    for types in ("input_type", "output_type"):
        if getattr(node, types, None) is not None:
            setattr(node, types, dict(getattr(node, types)))
    if isinstance(node, (nir.Conv1d, nir.Conv2d)) and node.input_shape is not None \
            and not isinstance(node.padding, str):
        kernel = np.array(node.weight.shape[2:], dtype=np.int64)
        nd = len(kernel)

        def per_axis(v):
            return np.broadcast_to(np.asarray(v, dtype=np.int64).ravel(), (nd,))
        spatial = per_axis(node.input_shape)
        pad, stride, dil = per_axis(node.padding), per_axis(node.stride), per_axis(node.dilation)
        out = (spatial + 2 * pad - dil * (kernel - 1) - 1) // stride + 1
        node.input_type = {"input": np.array([node.weight.shape[1] * int(node.groups), *spatial])}
        node.output_type = {"output": np.array([node.weight.shape[0], *out])}
    return node


class _TypeCheckedGraph(nir.NIRGraph):
    """An NIRGraph whose ``inputs`` are found once per set of nodes: NIR 1.0.8's
    ``infer_types`` reads ``self.inputs``, a scan of every node, once per edge (15M: 468 scans
    of about 470 nodes, 0.06-0.1 s, most of the check)."""

    @property
    def inputs(self):
        key = (id(self.nodes), len(self.nodes))  # infer_types may add Input nodes first
        cached = self.__dict__.get("_found_inputs")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_found_inputs"] = (key, super().inputs)
        return cached[1]


def check_nir_types(graph: nir.NIRGraph) -> None:
    """NIR's own type inference and checks (``NIRGraph(type_check=True)``) on a copy of
    ``graph`` in which every extension node is cut out: its operand edges end in ``Output``
    stubs of the declared operand shapes, its consumers read an ``Input`` stub of its declared
    output shape. Raises FormatError with NIR's message on a mismatch."""
    nodes, edges = {}, []
    for name, node in graph.nodes.items():
        if not is_extension(node):
            nodes[name] = _checkable(node)
    for src, dst in graph.edges:
        a, b = src, dst
        if is_extension(graph.nodes[src]):
            a = f"{src}#output"
            nodes[a] = nir.Input(_stub_types(graph.nodes[src])[1])
        if is_extension(graph.nodes[dst]):
            b = f"{dst}#{src}#input"
            nodes[b] = nir.Output(_stub_types(graph.nodes[dst])[0][src])
        edges.append((a, b))
    try:
        _TypeCheckedGraph(nodes=nodes, edges=edges, metadata={}, type_check=True)
    except (ValueError, AssertionError, TypeError) as e:
        raise FormatError(f"NIR type check failed: {e}") from None

