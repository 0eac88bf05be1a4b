"""The feed-forward prefix of a quantized network as a lava-dl netx HDF5 file.

netx (lava-dl ``lib/dl/netx``, ``netx.hdf5.Network``) describes a network as ``layer/0 ..
layer/n-1`` groups run in sequence: ``input`` {type, shape}, ``flatten``, ``conv`` {type, shape,
inChannels, outChannels, kernelSize, stride, padding, dilation, groups, weight, bias, neuron} and
``dense`` {type, shape, inFeatures, outFeatures, weight, bias, neuron}; shapes (C, H, W), conv
weights in torch's (C_out, C_in, kH, kW) layout. netx builds **fixed-point** Lava processes only
(``Loihi2SimCfg(select_tag="fixed_pt")``): a dense layer's weights go through netx's own
``optimize_weight_bits`` (8-bit mantissas, a weight exponent and sign mode it chooses) into
Lava's bit-accurate ``Dense``; a conv layer's integers go to Lava's ``Conv`` as they are; the
neuron is Lava's ``LIF`` / ``LIFReset`` with ``vth = vThMant``, ``du = iDecay - 1``,
``dv = vDecay``, ``bias_mant = bias`` (cast to int) and ``bias_exp = 6``.

So snncc writes a netx file only for a graph quantized by ``quantize_for_loihi2``, in those
units: the integer weights of the quantized graph; ``vThMant`` its integer threshold (its
``>=`` was already legalised to Lava's ``>`` by an integer threshold that keeps every spike);
``vDecay`` its 12-bit dv, ``iDecay`` 4096 (du = 4095: no current filter); ``bias`` its
effective bias in V units over 2^6, which must be an integer 13-bit mantissa (what
``quantize_for_loihi2`` makes by default: ``bias_exp = 6``). Every value is
checked to be what netx and Lava's models compute exactly; the chain stops at the first layer
that is not, and :func:`netx_prefix` says which and why. A float graph gets no file.

**Input.** A real-valued input reaches the chip through the host's encoder
``clip(round(x * inputScale), +-2^(b-1))``: the first layer then takes b-bit graded spikes,
which netx's file format cannot declare (an ``input`` layer with a neuron would re-spike the
values to 0/1). The file says so in its attributes ``inputScale`` and ``inputMessageBits``, and
the loader must be told: ``netx.hdf5.Network(..., input_message_bits=b)`` (without it Lava's
Conv and Dense read the input as 0/1). A spike input needs nothing.

**Timing.** Each layer is one Lava synapse + LIF pair, so layer i's output at step t is the
snncc layer's step t - (i + 1); a neuron with a bias integrates it from Lava's first step, before
its input arrives, so load with ``reset_interval = T + layers`` and ``reset_offset = 1``: netx
then resets layer i at the step its first input arrives (what snncc's own runner does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from snncc import fixed_point as fxp
from snncc import ir
from snncc.errors import UnsupportedError
from snncc.graph import Graph
from snncc.passes.quantize import NETX_BIAS_EXP  # netx's bias_exp: its bias is V / 2^6
#: the most groups Lava's Conv models hold (an int8 Var; snncc's own Conv models read the
#: groups from the shapes)
LAVA_CONV_GROUPS_MAX = 127
RESET_OFFSET = 1  # netx adds the layer index + 1: layer i resets when its input first arrives
FLOAT_REASON = ("a float network: netx builds fixed-point Lava models only, so it is written "
                "for a quantized graph (compile with --fixed-point)")


@dataclass
class NetxPrefix:
    layers: list[dict]  # netx layer descriptions (datasets by name; "neuron" a dict)
    nodes: list[str]  # IR nodes covered
    stops_at: str | None  # first node not covered (None: the whole network)
    reason: str
    output: str | None = None  # the last neuron covered: the file's output
    input_message_bits: int = 0  # graded input bits the loader must be given (0: spikes)
    input_scale: float | None = None  # the host's encoder factor (a real input)

    @property
    def depth(self) -> int:
        """Synapse layers: the Lava steps between the input and the output."""
        return sum(layer["type"] in ("conv", "dense") for layer in self.layers)


# ----------------------------------------------------------------------------- exactness


def netx_keeps_dense_weights(w: np.ndarray) -> bool:
    """Whether netx's dense layer computes ``w @ x`` exactly for integer weights ``w``: lava-dl's
    ``netx.utils.optimize_weight_bits`` (sign mode, weight bits and an exponent it chooses; the
    weights shifted left by -exponent), then Lava's ``PyDenseModelBitAcc`` (its own sign mode,
    clip to 8 bits, truncate to the weight bits, the sum shifted back by the exponent). False
    where netx clips, shifts right or truncates a weight."""
    w = np.asarray(w, dtype=np.int64)
    lo, hi = int(w.min()), int(w.max())
    if (hi > 254 and lo < 0) or (lo < -256 and hi > 0) or lo == hi == 0:
        return False  # netx clips (with a printed warning) / divides by a zero maximum
    signed = int(lo < 0 <= hi)  # netx's mixed sign mode
    if hi < 0:
        scale = -256 / lo
    elif lo >= 0:
        scale = 255 / hi
    else:
        scale = min(127 / hi if hi else math.inf, -128 / lo)
    shift = math.floor(math.log2(scale)) + signed
    if shift < 0:
        return False
    trailing = next((k for k in range(8, 0, -1) if not np.any(w % 2 ** k)), 0) - signed
    s = w << shift
    mixed, neg = s.min() < 0 < s.max(), s.min() < 0 <= -s.max()  # Lava's sign mode
    m = np.clip(-s if neg else s, -256 if mixed else 0, 255)
    drop = shift + trailing + int(mixed)  # 8 - num_weight_bits + mixed
    m = (m >> drop) << drop
    return bool(np.array_equal(-m if neg else m, s))


def _neuron(q: fxp.Loihi2Neuron, shape: tuple) -> tuple[dict, np.ndarray]:
    """netx's CUBA neuron for quantized neuron layer ``q`` and its bias (V / 2^6, per neuron);
    raises UnsupportedError saying what netx's neuron cannot hold."""
    lif = fxp.lava_lif_params(q, shape)  # raises for what Lava's LIF lacks
    bias = np.broadcast_to(q.bias, shape)
    unit = 2 ** NETX_BIAS_EXP
    if np.any(bias % unit):
        raise UnsupportedError("its bias is finer than netx's bias_exp = 6 allows (not a whole "
                               "number of input units; quantize_for_loihi2 makes them whole "
                               "with bias_exp = 6, its default)")
    if np.any(bias // unit < fxp.BIAS_MANT_MIN) or np.any(bias // unit > fxp.BIAS_MANT_MAX):
        raise UnsupportedError("its bias / 2^6 is not a 13-bit mantissa (netx fixes bias_exp = 6)")
    return ({"type": "CUBA", "iDecay": lif["du"] + 1, "vDecay": lif["dv"], "vThMant": lif["vth"],
             "refDelay": 1, "gradedSpike": False}, bias // unit)


def _conv_bias(bias: np.ndarray) -> np.ndarray:
    """netx's conv bias: one per channel where it allows, else per neuron in (W, H, C)."""
    per_channel = bias.reshape(bias.shape[0], -1)[:, 0]
    if np.all(bias == per_channel[:, None, None]):
        return per_channel
    return bias.transpose(2, 1, 0)


def _synapse_layer(syn: ir.Node, neuron: ir.Neuron, q: fxp.Loihi2Neuron) -> dict:
    """netx description of synapse ``syn`` + neuron ``neuron``; raises UnsupportedError."""
    if syn.bias is not None:
        raise UnsupportedError("its bias is on the synapse (netx adds biases in the neuron)")
    if isinstance(syn, ir.Conv1d):  # (an ir.Conv2d subclass)
        raise UnsupportedError("a Conv1d: netx's conv layers are 2-D")
    cell, bias = _neuron(q, neuron.shape)
    w = syn.weight.astype(np.int64)
    if isinstance(syn, ir.Conv2d) and syn.groups > LAVA_CONV_GROUPS_MAX:
        raise UnsupportedError(f"its {syn.groups} groups overflow the int8 Var Lava's Conv "
                               f"holds them in (netx runs it on Lava's Conv models)")
    if isinstance(syn, ir.Conv2d):
        layer = {"type": "conv", "inChannels": w.shape[1] * syn.groups,
                 "outChannels": w.shape[0], "kernelSize": np.array(w.shape[2:]),
                 "stride": np.array(syn.stride), "padding": np.array(syn.padding),
                 "dilation": np.array(syn.dilation), "groups": syn.groups,
                 "bias": _conv_bias(bias)}
    else:
        if not netx_keeps_dense_weights(w):
            raise UnsupportedError("netx's weight optimisation does not keep its integer "
                                   "weights (netx clips or truncates them)")
        layer = {"type": "dense", "inFeatures": w.shape[1], "outFeatures": w.shape[0],
                 "bias": bias}
    return {**layer, "shape": np.array(neuron.shape), "weight": w, "neuron": cell}


# ----------------------------------------------------------------------------- the chain


def _input_layer(graph: Graph, view: fxp.FixedPointView, cons: dict):
    """(the node the chain continues from, the input layer's fields) or raise."""
    inp = graph.inputs[0]
    fields = {"layers": [{"type": "input", "shape": np.array(inp.shape)}], "nodes": [inp.name]}
    if inp.kind is ir.Kind.SPIKE:
        return inp, fields
    nxt = cons[inp.name]
    if inp.kind is ir.Kind.REAL and len(nxt) == 1 and nxt[0] in view.encoders:
        enc = graph[nxt[0]]
        fields["nodes"].append(enc.name)
        return enc, {**fields, "input_message_bits": view.encoders[enc.name],
                     "input_scale": float(np.asarray(enc.factor).item())}
    raise UnsupportedError(f"its values are {inp.kind.value}s that reach the chip without "
                           "snncc's encoder (netx takes spikes or encoded graded spikes)")


def netx_prefix(graph: Graph) -> NetxPrefix:
    """The longest chain input -> (conv | [flatten] dense)* of a quantized graph that netx
    holds exactly (module doc)."""
    first = graph.inputs[0].name if graph.inputs else None
    if "loihi2" not in graph.meta:
        return NetxPrefix([], [], first, FLOAT_REASON)
    if len(graph.inputs) != 1:
        return NetxPrefix([], [], first, "netx describes networks with one input")
    view = fxp.fixed_point_view(graph)
    cons = graph.consumers()
    try:
        cur, fields = _input_layer(graph, view, cons)
    except UnsupportedError as e:
        return NetxPrefix([], [], first, f"{first}: {e.message}")
    prefix = NetxPrefix(reason="", stops_at=None, **fields)
    flatten = None
    while True:
        stop = _next_layer(graph, view, cons, cur, flatten)
        if isinstance(stop, tuple):
            node, reason = stop
            prefix.stops_at, prefix.reason = node, reason
            return prefix
        if stop.op in ("Flatten", "Reshape"):
            flatten = stop
            cur = stop
            continue
        syn, neuron = stop, graph[cons[stop.name][0]]
        if flatten is not None:
            prefix.layers.append({"type": "flatten", "shape": np.array(flatten.shape)})
            prefix.nodes.append(flatten.name)
            flatten = None
        try:
            prefix.layers.append(_synapse_layer(syn, neuron, view.neurons[neuron.name]))
        except UnsupportedError as e:
            prefix.stops_at, prefix.reason = syn.name, f"{syn.name} -> {neuron.name}: {e.message}"
            return prefix
        prefix.nodes += [syn.name, neuron.name]
        prefix.output = neuron.name
        cur = neuron


def _next_layer(graph: Graph, view, cons: dict, cur: ir.Node, flatten):
    """The next flatten or synapse (whose neuron follows it) after ``cur``, or (node, why the
    chain stops there)."""
    if len(cons[cur.name]) != 1:
        return cur.name, f"{cur.name} feeds several nodes (netx layers are sequential)"
    n = graph[cons[cur.name][0]]
    if n.op == "Output":
        return n.name, "the network's output"
    if n.op in ("Flatten", "Reshape") and len(n.shape) == 1 and flatten is None \
            and len(cur.shape) == 3:
        return n
    if not isinstance(n, (ir.Conv2d, ir.Linear)):
        return n.name, f"{n.name} ({n.op}): netx has no such layer"
    if isinstance(n, ir.Linear) and len(n.shape) != 1:
        return n.name, f"{n.name}: a Linear over tokens (netx's dense takes one vector)"
    if n.name not in view.chip:
        return n.name, f"{n.name}: not on the chip (its input is not an integer)"
    after = cons[n.name]
    if len(after) != 1 or not isinstance(graph[after[0]], ir.Neuron):
        return n.name, f"{n.name}: its value does not go to one neuron alone (a netx layer " \
                       "is a synapse and its neuron)"
    return n


# ----------------------------------------------------------------------------- the file


def load_arguments(prefix: NetxPrefix, T: int) -> dict:
    """The ``netx.hdf5.Network`` arguments that run the file as snncc does (module doc)."""
    return {"input_message_bits": prefix.input_message_bits,
            "reset_interval": T + prefix.depth, "reset_offset": RESET_OFFSET}


def write_netx(path: Path, prefix: NetxPrefix, T: int) -> bool:
    """Write ``prefix`` as a netx HDF5 file; False (nothing written) when it has no layer."""
    import h5py

    if prefix.depth == 0:
        return False
    with h5py.File(path, "w") as f:
        f.attrs["quantized"] = True
        f.attrs["generator"] = "snncc"
        f.attrs["inputMessageBits"] = prefix.input_message_bits
        if prefix.input_scale is not None:
            f.attrs["inputScale"] = prefix.input_scale
        f.create_dataset("simulation/Ts", data=1)
        f.create_dataset("simulation/tSample", data=T)
        for i, layer in enumerate(prefix.layers):
            grp = f.create_group(f"layer/{i}")
            for key, value in layer.items():
                if key == "type":
                    grp.create_dataset("type", (1,), "S10", [value.encode("ascii")])
                elif key == "neuron":
                    for k, v in value.items():
                        grp.create_dataset(f"neuron/{k}", data=v.encode("ascii")
                                           if isinstance(v, str) else v)
                else:
                    grp.create_dataset(key, data=value)
    return True


def manifest_entry(prefix: NetxPrefix, written: bool, T: int, name: str) -> dict:
    """What ``manifest.json["netx"]`` says about the file."""
    entry = {"file": name if written else None, "nodes": prefix.nodes,
             "stops_at": prefix.stops_at, "reason": prefix.reason}
    if written:
        entry.update(output=prefix.output, layers=prefix.depth, input_scale=prefix.input_scale,
                     load=load_arguments(prefix, T))
    return entry
