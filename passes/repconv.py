"""Re-parameterization: a linear chain of Conv2d, BatchNorm and (BN-value) Pad nodes with a BN
between two convs (Meta-SpikeFormer's RepConv, any conv -> BN -> conv chain) becomes one Conv2d.

The chain is composed left to right into one affine conv ``K = (W, b, stride, padding)`` on
the chain's input, with dense weights:

- **BN** ``a y + c`` after K: ``W <- a W``, ``b <- a b + c`` (per output channel).
- **Conv C** ``(Wc, bc, stride sc, no padding)`` after K of stride 1: cross-correlations
  compose into one, ``(Wc * (W * x))[u] = sum_t (sum_{v + w = t} Wc[v] W[w]) x[u + t]``, so the
  new kernel is the full convolution of the two kernels (size kh + kh_c - 1), stride sc, and the
  bias ``bc + sum_m Wc[:, m].sum() b[m]``. After K of stride s > 1 only a 1x1 C composes
  (``W <- Wc W``, stride s sc). Grouped (depthwise) convs are expanded to dense weights.
- **Padding** (a Pad node, or C's own zero padding) after K: where K is pointwise (1x1,
  stride 1) its output on padded input equals b everywhere in the border, so padding the
  output with the value b is padding the input with zeros: the pad moves to K's input padding.
  RepConv's ``BNAndPadLayer`` pads with exactly the BN's value of a zero input, which is K's
  bias at that point (the front-end computes it with its own operation order, so equality is
  checked up to a few rounding errors); C's zero padding moves when b = 0.

Composition reorders floating-point sums, so the merged conv agrees with the chain up to
rounding. The chain extends while the next node is the only consumer and composes; a chain
with a BN between two convs is merged (a conv -> conv pair without a BN between, such as a
depthwise-separable conv, is a deliberate factorisation and is left alone, as is a single
conv -> BN, which the BN passes handle).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from snncc import ir
from snncc.graph import Graph
from snncc.pipeline import register_pass, report

from .common import Decline, where


def _dense(weight: np.ndarray, groups: int) -> np.ndarray:
    """Grouped conv weights (C_out, C_in/groups, kh, kw) as dense (C_out, C_in, kh, kw)."""
    c_out, cig, kh, kw = weight.shape
    cog = c_out // groups
    dense = np.zeros((c_out, cig * groups, kh, kw))
    for g in range(groups):
        dense[g * cog:(g + 1) * cog, g * cig:(g + 1) * cig] = weight[g * cog:(g + 1) * cog]
    return dense


def _mix_channels(m: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``einsum('om,mihw->oihw', m, W)`` as one matrix product (BLAS; numpy's einsum does not
    use it here, which made this pass most of a 15M model's compile time)."""
    return (m @ W.reshape(W.shape[0], -1)).reshape((m.shape[0],) + W.shape[1:])


@dataclass
class _Affine:
    """The composed chain so far: ``conv2d(pad(x, padding), W, stride) + b``."""

    W: np.ndarray
    b: np.ndarray
    stride: tuple[int, int]
    padding: tuple[int, int]

    @property
    def pointwise(self) -> bool:
        return self.W.shape[2:] == (1, 1) and self.stride == (1, 1)

    def then(self, n: ir.Node) -> "_Affine":
        if isinstance(n, ir.BatchNorm):
            a, c = n.scale_shift()
            return _Affine(self.W * a[:, None, None, None], a * self.b + c, self.stride,
                           self.padding)
        if isinstance(n, ir.Pad):
            left, right, top, bottom = n.pads
            value = np.broadcast_to(n.value.ravel(), self.b.shape)
            if not (self.pointwise and left == right and top == bottom):
                raise Decline(f"Pad {where(n)} follows a non-pointwise conv or is asymmetric")
            if not np.allclose(value, self.b, rtol=1e-12, atol=1e-12 * np.abs(self.b).max()):
                raise Decline(f"Pad {where(n)} pads with a value other than the conv's bias")
            return self._padded((top, left))
        return self._then_conv(n)

    def _padded(self, extra) -> "_Affine":
        return _Affine(self.W, self.b, self.stride,
                       tuple(p + e for p, e in zip(self.padding, extra)))

    def _then_conv(self, n: ir.Conv2d) -> "_Affine":
        if n.dilation != (1, 1):
            raise Decline(f"conv {where(n)} is dilated")
        k = self
        if any(n.padding):
            if not (self.pointwise and not np.any(self.b)):
                raise Decline(f"conv {where(n)} zero-pads the output of a non-pointwise or "
                              "biased conv")
            k = self._padded(n.padding)
        depthwise = n.weight.shape[1] == 1 and n.groups == n.weight.shape[0] == k.W.shape[0]
        # a depthwise conv mixes no channels: tap (i, j) scales each channel of K, the same
        # values as the expanded dense weights give (their other terms are exact zeros)
        # without a (C, C, kh, kw) array and C times the work
        wc = np.asarray(n.weight, np.float64) if depthwise else _dense(n.weight, n.groups)
        bc = np.zeros(wc.shape[0]) if n.bias is None else n.bias
        bias = bc + (wc.sum(axis=(1, 2, 3)) * k.b if depthwise else wc.sum(axis=(2, 3)) @ k.b)

        def tap(i: int, j: int) -> np.ndarray:
            return wc[:, 0, i, j, None, None, None] * k.W if depthwise \
                else _mix_channels(wc[:, :, i, j], k.W)
        if wc.shape[2:] == (1, 1):  # one tap: no kernel to widen, any stride of K
            return _Affine(tap(0, 0), bias, tuple(s * t for s, t in zip(k.stride, n.stride)),
                           k.padding)
        if k.stride == (1, 1):
            kh, kw = k.W.shape[2:]
            W = np.zeros((wc.shape[0], k.W.shape[1], kh + wc.shape[2] - 1, kw + wc.shape[3] - 1))
            for i in range(wc.shape[2]):
                for j in range(wc.shape[3]):
                    W[:, :, i:i + kh, j:j + kw] += tap(i, j)
            return _Affine(W, bias, n.stride, k.padding)
        raise Decline(f"conv {where(n)} of kernel > 1 follows a strided conv")


def _is_conv2d(n: ir.Node) -> bool:
    return type(n) is ir.Conv2d


def _chain_from(graph: Graph, first: ir.Conv2d, cons: dict):
    """The longest mergeable chain starting at ``first`` as (nodes, composed affine), or None
    when no BN sits between two of its convs; and why a conv after a BN did not compose."""
    if first.dilation != (1, 1) or not _has_conv_after_bn(graph, first, cons):
        return None, ""  # nothing to merge: compose no weights (a dense 512x512x7x7 is 100 MB)
    k = _Affine(_dense(first.weight, first.groups),
                np.zeros(first.weight.shape[0]) if first.bias is None else first.bias,
                first.stride, first.padding)
    chain, best = [first], None
    after_bn = qualifies = False
    for n in _candidates(graph, first, cons):
        try:
            k = k.then(n)
        except Decline as why:
            return best, str(why) if after_bn and best is None else ""
        chain.append(n)
        qualifies = qualifies or (_is_conv2d(n) and after_bn)
        after_bn = isinstance(n, ir.BatchNorm) or (after_bn and isinstance(n, ir.Pad))
        if qualifies:
            best = (list(chain), k)
    return best, ""


def _candidates(graph: Graph, first: ir.Conv2d, cons: dict):
    """The nodes after ``first`` that a chain could take: single consumers in a row, each a
    Conv2d, Pad or channel BatchNorm."""
    node = first
    while len(cons[node.name]) == 1:
        node = graph[cons[node.name][0]]
        if not (_is_conv2d(node) or isinstance(node, ir.Pad)
                or (isinstance(node, ir.BatchNorm) and node.axis == 0)):
            return
        yield node


def _has_conv_after_bn(graph: Graph, first: ir.Conv2d, cons: dict) -> bool:
    """Whether a conv follows a BN (with only pads between) among the candidates: otherwise no
    prefix of the chain qualifies, whatever composes."""
    after_bn = False
    for n in _candidates(graph, first, cons):
        if _is_conv2d(n) and after_bn:
            return True
        after_bn = isinstance(n, ir.BatchNorm) or (after_bn and isinstance(n, ir.Pad))
    return False


def _module_prefix(paths) -> str:
    """The longest common dotted prefix of module paths (the module a chain came from)."""
    parts = [p.split(".") for p in paths if p]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


@register_pass()
def reparameterize_repconv(graph: Graph) -> Graph:
    """Merge each linear conv -> BN -> [pad] -> conv ... chain into one Conv2d."""
    merged, declined = {}, {}
    cons = graph.consumers()  # made again after a merge, the only step that changes the graph
    for first in [n for n in graph.topological_order() if _is_conv2d(n)]:
        if first.name not in graph:
            continue
        found, why = _chain_from(graph, first, cons)
        if why:
            declined[first.name] = why
        if found is None:
            continue
        chain, k = found
        last = chain[-1]
        path = _module_prefix(n.path for n in chain)
        graph.replace(last.name, ir.Conv2d(last.name, first.inputs, path, weight=k.W, bias=k.b,
                                           stride=k.stride, padding=k.padding))
        for n in chain[:-1]:
            graph.remove(n.name)
        cons = graph.consumers()
        merged[last.name] = [n.name for n in chain]
    graph.verify()
    report(graph, "reparameterize_repconv", merged=merged, declined=declined)
    return graph
