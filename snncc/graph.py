"""The IR graph: named nodes with ordered input edges, a topological order in which cycles may
only pass through state (:class:`~snncc.ir.Delay`), a verifier that names the offending node,
and a one-line-per-node printer."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Iterator

import numpy as np

from . import ir
from .errors import IRError, VerificationError


class Graph:
    """A directed graph of IR nodes. ``meta`` holds JSON-able facts about the model (T, dt, the
    source architecture, pass reports)."""

    def __init__(self, name: str = "model", meta: dict | None = None):
        self.name = name
        self.meta: dict = dict(meta or {})
        self.nodes: dict[str, ir.Node] = {}

    # ------------------------------------------------------------------ building
    def add(self, node: ir.Node) -> str:
        """Add a node, infer its shape and kind if its inputs are known; return its name."""
        if node.name in self.nodes:
            raise IRError("duplicate node name", node=node.name, path=node.path)
        self.nodes[node.name] = node
        hinted = node.breaks_cycles and node.shape_hint is not None
        if all(i in self.nodes for i in node.inputs) and not hinted:
            self._infer(node)
        return node.name

    def add_unchecked(self, node: ir.Node) -> str:
        """Add a node without inferring it (its inputs may come later, as when reading a file
        written in any order); :meth:`verify` infers every node in topological order."""
        if node.name in self.nodes:
            raise IRError("duplicate node name", node=node.name, path=node.path)
        self.nodes[node.name] = node
        return node.name

    def fresh(self, prefix: str) -> str:
        """A node name starting with ``prefix`` not yet used."""
        if prefix not in self.nodes:
            return prefix
        i = 1
        while f"{prefix}_{i}" in self.nodes:
            i += 1
        return f"{prefix}_{i}"

    def replace(self, name: str, node: ir.Node) -> None:
        """Put ``node`` in place of node ``name`` (keeping insertion order); renames edges."""
        if node.name != name:
            if node.name in self.nodes:
                raise IRError("duplicate node name", node=node.name)
            self.nodes = {(node.name if k == name else k): v for k, v in self.nodes.items()}
            self.rewire(name, node.name)
        self.nodes[node.name] = node

    def remove(self, name: str) -> None:
        del self.nodes[name]

    def rewire(self, old: str, new: str) -> None:
        """Make every consumer of ``old`` read ``new`` instead."""
        for n in self.nodes.values():
            if old in n.inputs and n.name != new:
                n.inputs = tuple(new if i == old else i for i in n.inputs)

    def copy(self) -> "Graph":
        """A copy whose nodes can be changed without touching this graph (arrays are shared;
        passes never modify arrays in place)."""
        g = Graph(self.name, copy.deepcopy(self.meta))
        g.nodes = {k: _shallow_copy(v) for k, v in self.nodes.items()}
        return g

    # ------------------------------------------------------------------ queries
    def __getitem__(self, name: str) -> ir.Node:
        return self.nodes[name]

    def __contains__(self, name: str) -> bool:
        return name in self.nodes

    def __iter__(self) -> Iterator[ir.Node]:
        return iter(self.nodes.values())

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def inputs(self) -> list[ir.Input]:
        return [n for n in self.nodes.values() if isinstance(n, ir.Input)]

    @property
    def outputs(self) -> list[ir.Output]:
        return [n for n in self.nodes.values() if isinstance(n, ir.Output)]

    def of_type(self, *types: type) -> list[ir.Node]:
        return [n for n in self.nodes.values() if isinstance(n, types)]

    def consumers(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {k: [] for k in self.nodes}
        for n in self.nodes.values():
            for i in n.inputs:
                if i in out:
                    out[i].append(n.name)
        return out

    def topological_order(self) -> list[ir.Node]:
        """Nodes so that each comes after its inputs, except inputs of cycle-breaking (state)
        nodes, which are read at the end of a step. Raises on a cycle through stateless nodes."""
        deps = {n.name: ([] if n.breaks_cycles else [i for i in n.inputs if i in self.nodes])
                for n in self.nodes.values()}
        order, state = [], {}

        for root in self.nodes:
            if root in state:
                continue
            stack = [(root, iter(deps[root]))]
            state[root] = 1
            while stack:
                name, it = stack[-1]
                nxt = next(it, None)
                if nxt is None:
                    stack.pop()
                    state[name] = 2
                    order.append(self.nodes[name])
                elif state.get(nxt) == 1:
                    cycle = [s[0] for s in stack[[s[0] for s in stack].index(nxt):]]
                    raise VerificationError(
                        f"cycle without a Delay: {' -> '.join(cycle + [nxt])}", node=nxt,
                        path=self.nodes[nxt].path)
                elif nxt not in state:
                    state[nxt] = 1
                    stack.append((nxt, iter(deps[nxt])))
        return order

    # ------------------------------------------------------------------ verification
    def _infer(self, node: ir.Node) -> None:
        if node.arity is not None and len(node.inputs) != node.arity:
            node.fail(f"{node.op} takes {node.arity} input(s), got {len(node.inputs)}",
                      VerificationError)
        if node.arity is None and not node.inputs:
            node.fail(f"{node.op} needs at least one input", VerificationError)
        srcs = [self.nodes[i] for i in node.inputs]
        node.shape, node.kind = node.infer([s.shape for s in srcs], [s.kind for s in srcs])
        node.shape = tuple(int(d) for d in node.shape)

    def verify(self, allow_dead: bool = False) -> "Graph":
        """Check edges, arity, cycles, shapes and kinds, and that every node is reachable
        from an input and (unless ``allow_dead``: intermediate graphs a pass will clean up)
        reaches an output. Re-infers every node's shape and kind."""
        for n in self.nodes.values():
            for i in n.inputs:
                if i not in self.nodes:
                    raise VerificationError(f"input '{i}' does not exist (dangling edge)",
                                            node=n.name, path=n.path)
        if not self.outputs:
            raise VerificationError("graph has no Output node", node=self.name)
        done: set[str] = set()
        closing = []
        cons = None
        for n in self.topological_order():
            if n.breaks_cycles and n.inputs[0] not in done:
                # closes a cycle: its input is computed later in the step, so the node
                # declares the shape and kind it carries; checked below once the input is known
                if n.shape_hint is not None:
                    n.shape, n.kind = tuple(n.shape_hint), ir.Kind(n.kind_hint)
                else:
                    cons = cons or self.consumers()
                    if n.inputs[0] in self.closure(cons[n.name], cons.__getitem__):
                        raise VerificationError("a Delay closing a cycle needs shape_hint",
                                                node=n.name, path=n.path)
                    # on no cycle, only placed before its input (a pass inserted that input
                    # later): its input's shape as last inferred, checked below likewise
                    src = self.nodes[n.inputs[0]]
                    n.shape, n.kind = src.shape, src.kind
                closing.append(n)
            else:
                self._infer(n)
            done.add(n.name)
        for n in closing:
            declared = (n.shape, n.kind)
            self._infer(n)
            if declared != (n.shape, n.kind):
                raise VerificationError(f"declared {declared[0]} {declared[1].value} disagrees "
                                        f"with its input's {n.shape} {n.kind.value}",
                                        node=n.name, path=n.path)
        self._check_reachability(allow_dead)
        return self

    def _check_reachability(self, allow_dead: bool) -> None:
        cons = self.consumers()
        fwd = self.closure([n.name for n in self.inputs], lambda k: cons[k])
        bwd = self.closure([n.name for n in self.outputs], lambda k: self.nodes[k].inputs)
        for n in self.nodes.values():
            if n.name not in fwd:
                raise VerificationError("unreachable: no path from any Input", node=n.name,
                                        path=n.path)
            # an Input is the model's interface even where the model ignores it
            if n.name not in bwd and not allow_dead and not isinstance(n, ir.Input):
                raise VerificationError("unreachable: its result reaches no Output (dead node)",
                                        node=n.name, path=n.path)

    @staticmethod
    def closure(start: Iterable[str], nxt) -> set[str]:
        """The names in ``start`` and every name reached from them by ``nxt(name)`` (the
        consumers, or the inputs, of a node)."""
        seen, stack = set(), list(start)
        while stack:
            k = stack.pop()
            if k not in seen:
                seen.add(k)
                stack.extend(nxt(k))
        return seen

    # ------------------------------------------------------------------ reporting
    def param_count(self) -> int:
        return sum(n.param_count() for n in self.nodes.values())

    def format(self) -> str:
        """One line per node, in topological order."""
        lines = [f"graph {self.name}  ({len(self.nodes)} nodes, {self.param_count():,} parameters"
                 + "".join(f", {k}={self.meta[k]}" for k in ("T", "dt") if k in self.meta) + ")"]
        for n in self.topological_order():
            lines.append(format_node(n))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _fmt_value(v) -> str:
    if isinstance(v, np.ndarray):
        if v.size == 1:
            return f"{v.item():.6g}"
        return f"<{'x'.join(map(str, v.shape))}>"
    if isinstance(v, ir.Kind):
        return v.value
    return repr(v) if isinstance(v, str) else str(v)


def format_node(n: ir.Node) -> str:
    """``%name = Op(%a, %b) {attr=...} : (shape) kind  # module.path``"""
    args = ", ".join(f"%{i}" for i in n.inputs)
    attrs = {**{a: getattr(n, a) for a in n.arrays if getattr(n, a) is not None}, **n.attrs()}
    attr_s = ", ".join(f"{k}={_fmt_value(v)}" for k, v in attrs.items())
    shape = "x".join(map(str, n.shape)) or "scalar"
    line = f"%{n.name} = {n.op}({args})" + (f" {{{attr_s}}}" if attr_s else "")
    line += f" : {shape} {n.kind.value}"
    return line + (f"  # {n.path}" if n.path else "")


def _shallow_copy(node: ir.Node) -> ir.Node:
    """``copy.copy(node)`` (nodes define no copy protocol of their own) at a third of its cost:
    the pass manager copies every node before each pass (15M: 11,000 copies per compile)."""
    new = object.__new__(type(node))
    new.__dict__.update(node.__dict__)
    return new


def node_with(node: ir.Node, **changes) -> ir.Node:
    """A validated copy of ``node`` with some fields changed (passes build nodes this way)."""
    new = dataclasses.replace(node, **changes)
    new.shape, new.kind = node.shape, node.kind
    return new
