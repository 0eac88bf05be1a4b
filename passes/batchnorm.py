"""BatchNorm folding, into neuron thresholds or into synapse weights (DESIGN.md, "BN into
thresholds").

A BN maps its input per channel to ``a x + c`` (``BatchNorm.scale_shift``). Three ways to
remove it, each exact in real arithmetic (the equations of :mod:`snncc.passes.common`):

1. **Into the thresholds** (synapse weights untouched up to sign): for ``SN(BN(W x + b))`` the
   neuron's input is ``a (W x + b) + c = |a| (sign(a) (W x + b) + c/|a|)``; dividing the membrane
   by k = |a| leaves a neuron on ``sign(a) W x + sign(a) b + c/|a|`` with theta/|a|,
   v_reset/|a|, beta/|a|, v_init/|a|. For a < 0 the channel's weights and bias are negated and
   the comparison stays as it is: the division is by |a| > 0, so ``h >= theta`` becomes
   ``h/|a| >= theta/|a|`` (and ``>`` stays ``>``); the sign went into the input, not the
   comparison, so there is nothing to legalize. For a = 0 the channel is the constant c: k = 1,
   the channel's weights become 0 and its bias c, a neuron driven by a constant current. Between
   the BN and the neuron may sit layout nodes, max/avg pooling and an Add of several such
   branches (a membrane shortcut): every branch is then divided by the same k, taken from this
   BN (a branch's other BN or plain synapse gets the factor a'/k into its weights), or the fold
   declines naming the node that prevents it (typically an Add that also feeds the rest of the
   residual stream).
2. **Into the neuron** when no conv/linear precedes the BN (or it feeds other nodes) and the BN
   reaches the neuron through layout or pooling nodes only: with the threshold, gamma' =
   gamma sign(a) (0 for a = 0), k = |a|, e = c/|a| (:func:`~snncc.passes.common.divide_membrane`);
   with weights kept, gamma' = gamma a, beta' = beta + gamma c and theta unchanged. Max-pooling
   commutes with this only for a >= 0, average pooling only without padding.
3. **Into the weights**: ``W' = a W``, ``b' = a b + c`` per output channel (the classic fold,
   for targets with one threshold per layer); the BN's output is unchanged, so it applies
   whatever the BN feeds.

**Exact ties.** Each fold is exact in real arithmetic; in floating point it can also round,
and a membrane that equals theta exactly in the unfolded network (common with integer or
coarse-grid weights) may then land on the other side of the folded threshold, in either
direction, and with a soft reset the membrane drifts from then on. A fold is *exact* when it
adds no rounding of its own:

- the BN's a and c are computed without rounding (sqrt(var + eps) a power of two, so every
  way of computing them, the simulator's torch ``batch_norm`` included, gives the same
  numbers);
- every new parameter (weights, bias, gamma, beta, theta, v_reset, v_init) is the exact real
  result (checked with error-free float64 products, sums and quotients,
  :func:`~snncc.passes.common.exact_mul` and friends);
- a divided membrane is divided by a power of two (otherwise ``v/|a|`` is not representable
  and the state drifts even where theta/|a| is exact), and an average pooling between the BN
  and the neuron divides by a power of two when the scale moves across it (form 2).

Then every value of the folded network is the unfolded one times a power of two, up to the
order of additions (the BN's shift joins the synapse's bias or the neuron's beta): spikes are
identical, ties included, wherever those sums are exact (integer or fixed-point values, coarse
grids); with arbitrary float values a reordered sum rounds differently by an ulp, which decides
a spike only at an exact tie, where general float data essentially never lands.

``fold_batchnorm_into_threshold`` tries 1, then 2 (threshold form), then 2 with the scale kept
in gamma (gamma' = gamma a, beta' = beta + gamma c, theta, v_reset and v_init unchanged:
weights untouched and no division), then 3, and takes the first exact fold;
``fold_batchnorm_into_weights`` tries 3, then 2 (weights form), likewise. If none is exact the
first that applies is taken and the report lists the BN under ``ties_may_differ`` with the
reason (every folded BN not listed there is exact). A BN none of them applies to stays, with
its one-line reason in the report.

**Weight folds left to the target** (``Target.weight_folds``). Scaled float32 weights are
float64 arrays, twice the checkpoint's memory; a BN that only a rounding weight fold removes
(typically one on a residual stream, which no neuron follows alone) can stay in the IR beside
the model's float32 weights:

- ``weight_folds="exact"`` (the simulator, ONNX: they compute a BN per channel as the model
  does) folds into the weights only where that rounds nowhere; otherwise the BN stays;
- ``weight_folds="when_written"`` (NIR, Lava: no BN primitive) leaves such a fold to the
  target's writer, which does this very fold one layer at a time as it writes
  (:func:`~snncc.passes.common.folded_synapse_arrays`; a BN right after such a BN is left to
  it too, and folded after it); the report lists the BN under ``folded_when_written`` and, as
  the fold rounds, under ``ties_may_differ``.
"""

from __future__ import annotations

import numpy as np

from snncc import ir
from snncc.errors import IRError, PassError
from snncc.graph import Graph
from snncc.pipeline import register_pass, report

from .common import (LAYOUT, POOLS, Branch, Decline, axis_labels, bn_branch, bypass,
                     carry_labels, divide_membrane, exact_add, exact_div, exact_mul, input_region,
                     is_power_of_two, nodes_between, per_label, scale_region, scaled_synapse,
                     unbroadcast, where)


def _downstream_neuron(graph: Graph, bn: ir.BatchNorm, cons: dict, through_add: bool):
    """The neuron the BN's output reaches through single-consumer layout, pooling (and Add)
    nodes, with the nodes passed on the way."""
    path, name = [], bn.name
    passable = LAYOUT + POOLS + ((ir.Add,) if through_add else ())
    while True:
        if len(cons[name]) != 1:
            what = "it" if name == bn.name else where(graph[name])
            raise Decline(f"{what} feeds {len(cons[name])} nodes, not a neuron alone")
        nxt = graph[cons[name][0]]
        if isinstance(nxt, ir.Neuron):
            return nxt, path
        if not isinstance(nxt, passable):
            raise Decline(f"{'it' if name == bn.name else where(graph[name])} feeds "
                          f"{where(nxt)} ({nxt.op}), not a neuron")
        path.append(nxt)
        name = nxt.name


# ----------------------------------------------------------------------------- rounding checks
# Each returns '' when the fold adds no rounding (module doc, "Exact ties"), else why not.


def _bn_rounding(bn: ir.BatchNorm) -> str:
    s = np.sqrt(bn.var + bn.eps)
    a, _ = bn.scale_shift()
    if not (exact_add(bn.var, bn.eps) and is_power_of_two(s) and np.all(s * s == bn.var + bn.eps)
            and exact_div(bn.weight, s)):
        return (f"the scale of {where(bn)} rounds (sqrt(var + eps) is not a power of two)")
    if not (exact_mul(a, bn.mean) and exact_add(bn.bias, -a * bn.mean)):
        return f"the shift bias - a mean of {where(bn)} rounds"
    return ""


def _membrane_rounding(neuron: ir.Neuron, k, g, e) -> str:
    """Rounding in :func:`~snncc.passes.common.divide_membrane` (``neuron``, k, g, e)."""
    p = neuron.params()  # each broadcasts to the neuron, as k, g and e do
    if not is_power_of_two(k):
        return (f"dividing the membrane of {where(neuron)} by |a| (not a power of two) rounds "
                "theta/|a| and the membrane itself")
    if not (exact_mul(p["gamma"], g) and exact_mul(p["gamma"], e) and exact_div(p["beta"], k)
            and exact_add(p["gamma"] * e, p["beta"] / k)
            and all(exact_div(p[nm], k) for nm in ("theta", "v_reset", "v_init"))):
        return f"the new parameters of {where(neuron)} round"
    return ""


def _synapse_rounding(node: ir.Node, w, shift) -> str:
    """Rounding in :func:`~snncc.passes.common.scaled_synapse` (``node``, w, shift)."""
    bias = np.zeros(node.weight.shape[0]) if node.bias is None else node.bias
    if not (exact_mul(node.weight, w.reshape((-1,) + (1,) * (node.weight.ndim - 1)))
            and exact_mul(w, bias) and exact_add(w * bias, shift)):
        return f"the new weights or bias of {where(node)} round"
    return ""


# ----------------------------------------------------------------------------- the folds
# Each checks that it applies (else Decline) and what it would round, changing nothing, and
# returns ('' or why it rounds, a function that does the fold and returns the removed BNs).


def _into_thresholds(graph: Graph, bn: ir.BatchNorm, cons: dict):
    neuron, _ = _downstream_neuron(graph, bn, cons, through_add=True)
    branches = input_region(graph, neuron, cons)
    mine = next(b for b in branches if b.bn is bn)
    a = np.abs(mine.a[unbroadcast(mine.labels)])
    k = np.where(a == 0, 1.0, a)
    divide_membrane(neuron, k)  # raises here, not half-way through the fold, if it overflows
    rounding = _membrane_rounding(neuron, k, 1.0, 0.0)
    for b in branches:
        k_syn = per_label(k, b.labels, b.channels,
                          f"the factor for {where(b.synapse)} into {where(neuron)}")
        rounding = (rounding or (_bn_rounding(b.bn) if b.bn else "")
                    or ("" if exact_div(b.a, k_syn) and exact_div(b.c, k_syn)
                        else f"a/|a| or c/|a| of {where(b.synapse)} rounds")
                    or _synapse_rounding(b.synapse, b.a / k_syn, b.c / k_syn))

    def fold():
        scale_region(graph, neuron, branches, k)
        return [b.bn.name for b in branches if b.bn is not None]
    return rounding, fold


def _into_weights(graph: Graph, bn: ir.BatchNorm, cons: dict):
    b = bn_branch(graph, bn, cons)

    def fold():  # the new weights computed only for a fold that is done (15M: 93 of its 133
        # BNs are left to the target, which computes them or folds them as it writes; the
        # pass takes 30% less time)
        graph.replace(b.synapse.name, scaled_synapse(b.synapse, b.a, b.c))
        bypass(graph, bn.name)
        return [bn.name]
    return _bn_rounding(bn) or _synapse_rounding(b.synapse, b.a, b.c), fold


def _into_neuron(graph: Graph, bn: ir.BatchNorm, cons: dict, threshold: bool):
    """Form 2: into the threshold (divide the membrane by |a|) or, with ``threshold=False``,
    into gamma and beta."""
    neuron, path = _downstream_neuron(graph, bn, cons, through_add=False)
    a, c = bn.scale_shift()
    labels = axis_labels(bn.shape, bn.axis)
    rounding = _bn_rounding(bn)
    for n in path:
        if isinstance(n, ir.MaxPool2d) and np.any(a < 0):
            raise Decline(f"max-pooling {where(n)} does not commute with its negative scales")
        if isinstance(n, ir.AvgPool2d):
            if any(n.padding) and n.count_include_pad and np.any(c != 0):
                raise Decline(f"padded average pooling {where(n)} does not commute with its "
                              "shift")
            # the mean of a x + c is a mean(x) + c only up to the rounding of the division
            divisors = n.divisors(graph[n.inputs[0]].shape[1:])
            if not is_power_of_two(divisors):
                rounding = rounding or (f"average pooling {where(n)} divides by "
                                        f"{', '.join(map(str, np.unique(divisors).astype(int)))}"
                                        f", not a power of two")
        labels = carry_labels(n, labels)
    a, c = a[unbroadcast(labels)], c[unbroadcast(labels)]
    if threshold:
        k = np.where(a == 0, 1.0, np.abs(a))
        rounding = (rounding or ("" if exact_div(c, k) else f"c/|a| of {where(bn)} rounds")
                    or _membrane_rounding(neuron, k, np.sign(a), c / k))
        new = divide_membrane(neuron, k, g=np.sign(a), e=c / k)
    else:
        rounding = rounding or _membrane_rounding(neuron, 1.0, a, c)
        new = divide_membrane(neuron, 1.0, g=a, e=c)

    def fold():
        graph.replace(neuron.name, new)
        bypass(graph, bn.name)
        return [bn.name]
    return rounding, fold


WEIGHT_FOLDS = ("any", "exact", "when_written")
WHEN_WRITTEN = "folded_when_written"  # the report's list of BNs left to the writer


def _weight_folds(label: str, method, weight_folds: str):
    """The weight fold ``method`` (named ``label``) as ``weight_folds`` wants it (module doc,
    "Weight folds left to the target"): a fold that would round is declined ("exact"), or
    leaves the graph as it is ("when_written": no BN is removed, the caller reports it; a BN
    after such a BN is left to the writer too, which folds both in order)."""
    if weight_folds not in WEIGHT_FOLDS:
        raise PassError(f"weight_folds must be one of {WEIGHT_FOLDS}, got {weight_folds!r}")
    left: set[str] = set()

    def fold_as_wanted(graph: Graph, bn: ir.BatchNorm, cons: dict):
        try:
            rounding, fold = method(graph, bn, cons)
        except Decline as declined:
            if weight_folds != "when_written" or not left:
                raise
            try:
                b = bn_branch(graph, bn, cons, through=left)
            except Decline:
                raise declined from None
            left.add(bn.name)
            return f"it follows {', '.join(sorted(left & set(nodes_between(graph, b))))}", list
        if rounding and weight_folds == "exact":
            raise Decline(f"{label} would round ({rounding}); the target computes the BN itself")
        if rounding and weight_folds == "when_written":
            left.add(bn.name)
            return rounding, list
        return rounding, fold
    return method if weight_folds == "any" else fold_as_wanted


def _fold_all(graph: Graph, pass_name: str, methods) -> Graph:
    """Fold every BN by the first exact method that applies, else the first that applies
    (module doc)."""
    folded: dict[str, list[str]] = {label: [] for label, _ in methods}
    when_written: list[str] = []
    not_first: dict[str, str] = {}
    declined: dict[str, str] = {}
    ties: dict[str, str] = {}
    cons = graph.consumers()  # made again after a fold, the only step that changes the graph
    for name in [n.name for n in graph.topological_order() if isinstance(n, ir.BatchNorm)]:
        if name not in graph:  # folded together with an earlier BN of the same region
            continue
        bn, reasons, chosen = graph[name], [], None
        with np.errstate(divide="ignore", invalid="ignore"):
            if not np.all(np.isfinite(bn.scale_shift())):
                declined[name] = f"BN {where(bn)}: var + eps is 0, so its scale is infinite"
                continue
        for label, method in methods:
            try:
                with np.errstate(over="ignore"):  # an overflow fails the node's finite check
                    rounding, fold = method(graph, bn, cons)
            except Decline as why:
                reasons.append(str(why))
                continue
            except IRError as why:  # a folded parameter overflows (a tiny |a|)
                reasons.append(f"{label}: {why}")
                continue
            if not rounding:
                chosen = (label, fold, "")
                break
            reasons.append(f"{label} would round: {rounding}")
            chosen = chosen or (label, fold, rounding)
        if chosen is None:
            declined[name] = f"BN {where(bn)}: " + "; ".join(reasons)
            continue
        label, fold, rounding = chosen
        bns = {k: n for k, n in graph.nodes.items()  # kept: the fold removes them
               if rounding and isinstance(n, ir.BatchNorm)}
        names = fold()
        if names:
            cons = graph.consumers()
        folded[label] += names
        if not names:  # the fold is left to the target's writer
            when_written.append(name)
        if label != methods[0][0]:
            not_first[name] = f"BN {where(bn)}: {reasons[0]}"
        for k in (names or [name]) if rounding else ():
            ties[k] = (f"BN {where(bns[k])}: {rounding}; spikes can differ from the unfolded "
                       "network where the membrane equals the threshold exactly")
    when_written = [k for k in when_written if k in graph]  # not taken by a later region
    report(graph, pass_name, **folded, declined=declined, fallback_reasons=not_first,
           ties_may_differ=ties, **({WHEN_WRITTEN: when_written} if when_written else {}))
    return graph


def folds_left_to_writer(graph: Graph) -> dict[str, list[Branch]]:
    """The BNs a fold pass left to the target's writer (``weight_folds="when_written"``), still
    in ``graph``, by the synapse they fold into, in the order to fold them
    (:func:`~snncc.passes.common.folded_synapse_arrays`)."""
    reports = graph.meta.get("reports", {})
    lists = [r.get(WHEN_WRITTEN) for r in (reports.values() if isinstance(reports, dict) else ())
             if isinstance(r, dict)]
    # a report is metadata a .snnir file carries: names of BNs only, anything else ignored
    names = [k for ks in lists if isinstance(ks, list) for k in ks if isinstance(k, str)]
    names = [k for k in dict.fromkeys(names) if isinstance(graph.nodes.get(k), ir.BatchNorm)]
    cons, out = graph.consumers(), {}
    for k in names:  # in the fold's order: a BN after another comes after it
        try:
            b = bn_branch(graph, graph[k], cons, through=frozenset(names))
        except Decline as why:  # a pass after the fold changed the graph
            raise PassError(f"BN {where(graph[k])} was left to the writer, but it can no "
                            f"longer be folded: {why}") from None
        out.setdefault(b.synapse.name, []).append(b)
    return out


@register_pass()
def fold_batchnorm_into_threshold(graph: Graph, weight_folds: str = "any") -> Graph:
    """Move each BN into the threshold (or, where dividing would round, the gain) of the neuron
    it feeds, weights untouched up to sign; else into the weights (``weight_folds``: where
    that rounds, "exact" keeps the BN and "when_written" leaves the fold to the writer)."""
    into_weights = _weight_folds("into_weights", _into_weights, weight_folds)
    return _fold_all(graph, "fold_batchnorm_into_threshold", (
        ("into_threshold", _into_thresholds),
        ("into_neuron", lambda g, bn, cons: _into_neuron(g, bn, cons, threshold=True)),
        ("into_neuron_gain", lambda g, bn, cons: _into_neuron(g, bn, cons, threshold=False)),
        ("into_weights", into_weights)))


@register_pass()
def fold_batchnorm_into_weights(graph: Graph, weight_folds: str = "any") -> Graph:
    """Fold each BN into the preceding conv/linear weights and bias (thresholds untouched);
    ``weight_folds`` as for :func:`fold_batchnorm_into_threshold`."""
    return _fold_all(graph, "fold_batchnorm_into_weights", (
        ("into_weights", _weight_folds("into_weights", _into_weights, weight_folds)),
        ("into_neuron", lambda g, bn, cons: _into_neuron(g, bn, cons, threshold=False))))
