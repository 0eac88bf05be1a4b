"""The model zoo: parameter counts of the papers, official state_dict keys, the LIF against
snncc.neuron, small configurations that fire, and torch.fx traceability."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F

from snncc import neuron as cn
from snncc.errors import UnsupportedError
from snncc.frontends.zoo import FAMILIES, IF, LIF, ZOO, auto_spikformer, build, small
from snncc.frontends.zoo.meta import BNAndPadLayer
from snncc.frontends.zoo.testing import firing_rates, randomize_bn, spike_recorder

# --- (a) full-size parameter counts (papers: 002 Tables II/IV/V, 001 Table 1) ----------------

PAPER_PARAMS_M = {
    "spikformer-cifar-4-384": 9.32, "spikformer-cifar-4-256": 4.15, "spikformer-cifar-2-384": 5.76,
    "spikformer-imagenet-8-384": 16.81, "spikformer-imagenet-6-512": 23.37,
    "spikformer-imagenet-8-512": 29.68, "spikformer-imagenet-10-512": 36.01,
    "spikformer-imagenet-8-768": 66.34, "spikformer-dvs-2-256": 2.59,
    "spikformer-v2-8-384": 29.11, "spikformer-v2-8-512": 51.55,
    "meta-spikeformer-15m": 15.1, "meta-spikeformer-31m": 31.3, "meta-spikeformer-55m": 55.4,
}


def n_params(model: torch.nn.Module) -> int:
    """Parameters only (BN running statistics are buffers), as the papers count."""
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_full_size_parameter_count_matches_paper(name):
    n = n_params(build(name)) / 1e6
    assert n == pytest.approx(PAPER_PARAMS_M[name], rel=0.005), f"{name}: {n:.3f}M"


def test_meta_spikeformer_sdsa2_drops_the_value_branch():
    # paper 001, Table 5: SDSA-3 -> SDSA-2 gives 28.6M instead of 31.3M
    assert n_params(build("meta-spikeformer-31m", sdsa=2)) / 1e6 == pytest.approx(28.6, rel=0.005)
    sdsa3 = n_params(build("meta-spikeformer-31m"))
    assert n_params(build("meta-spikeformer-31m", sdsa=1)) == sdsa3
    assert n_params(build("meta-spikeformer-31m", sdsa=4)) == sdsa3 + 8  # a learnable scale per block


# --- registry -----------------------------------------------------------------------------

def test_registry_entries_describe_their_inputs():
    families = {e.family for e in ZOO.values()}
    assert families == set(FAMILIES)
    for name, e in ZOO.items():
        assert len(e.input_shape) == 3 and e.T > 0 and e.num_classes > 0 and e.description, name


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnsupportedError, match="spikformer-cifar-4-384"):
        build("spikformer-cifar-4-348")


def test_build_overrides_constructor_arguments():
    m = build("spikformer-cifar-4-256", num_classes=100, T=2)
    assert m.head.out_features == 100 and m.T == 2


def test_auto_spikformer_candidate_sets_per_block_neurons():
    m = auto_spikformer((2, 3.0, 2.0, 2, 4, 1.2, 0.8, 2.0, 1.5, 3, 48))
    assert m.T == 3 and len(m.block) == 2
    assert m.block[0].mlp.fc1_linear.out_features == 144
    assert m.block[1].mlp.fc1_linear.out_features == 96
    assert (m.block[0].attn.num_heads, m.block[1].attn.num_heads) == (2, 4)
    for blk, theta, tau in zip(m.block, (1.2, 0.8), (2.0, 1.5)):
        # the official code (not eq. 1): spikingjelly's LIF with decay_input, the searched
        # threshold on mlp.fc1_lif only, the attention LIF's 0.5 kept (model.py 75, 180-187);
        # tests/test_auto_spikformer.py checks every LIF of the zoo entries
        p = blk.mlp.fc1_lif.canonical()
        assert (p.theta, p.alpha, p.gamma) == (theta, 1 - 1 / tau, 1 / tau)
        assert blk.attn.attn_lif.canonical().theta == 0.5
        assert blk.mlp.fc2_lif.canonical().theta == blk.attn.q_lif.canonical().theta == 1.0
    assert m.patch_embed.proj_lif.canonical() == cn.from_lif(2.0)
    with pytest.raises(ValueError):
        auto_spikformer((2, 3.0, 2.0, 2, 4))


# --- the neuron ---------------------------------------------------------------------------

def _reference(x, p: cn.CanonicalParams):
    v = torch.full_like(x[0], p.v_init)
    out = []
    for t in range(x.shape[0]):
        s, v, _ = cn.step(v, x[t], p.alpha, p.gamma, p.beta, p.theta, p.v_reset, p.cmp, p.reset)
        out.append(s)
    return torch.stack(out)


@pytest.mark.parametrize("neuron", [
    LIF(), LIF(tau=1.5, v_threshold=0.5), LIF(tau=3.0, v_reset=None), LIF(decay_input=False),
    LIF(tau=4 / 3, cmp=">"), LIF(v_reset=-0.25), IF(), IF(v_reset=None)], ids=repr)
def test_lif_is_exactly_snncc_neuron_step(neuron):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 5, generator=g, dtype=torch.float64) * 2
    x[2, 0] = neuron.canonical().theta  # ties
    assert torch.equal(neuron(x), _reference(x, neuron.canonical()))
    assert not list(neuron.parameters()) and not list(neuron.buffers())


def test_lif_ties_follow_cmp():
    # constant input 2 with gamma 1/2: h = 1 at t = 0, exactly the threshold
    x = torch.full((1, 1), 2.0, dtype=torch.float64).expand(3, 1).clone()
    assert LIF(cmp=">=")(x)[0].item() == 1.0
    assert LIF(cmp=">")(x)[0].item() == 0.0


def test_single_step_lif_matches_multi_step():
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    m, s = LIF(tau=1.5), LIF(tau=1.5, step_mode="s")
    v, spikes = None, []
    for t in range(5):
        out, v = s(x[t], v)
        spikes.append(out)
    assert torch.equal(torch.stack(spikes), m(x))


def test_lif_has_a_surrogate_gradient():
    x = (torch.randn(4, 3, 8) + 1.0).requires_grad_()
    LIF()(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_snasnet_neuron_is_the_official_codes():
    # eq. 2's charge with the official spikingjelly LIFNode's `>=` (eq. 3 writes a strict `>`)
    m = build("snasnet-bw-cifar100")
    assert m.last_act[1].canonical() == cn.from_lif(4 / 3, 1.0, 0.0, True, cn.CMP_GE)


# --- (d) state_dict keys as in the official code ------------------------------------------

def _bn(prefix):
    return [f"{prefix}.{k}"
            for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


# ZK-Zhou/spikformer cifar10/model.py: Block(norm1, attn=SSA(q/k/v/proj _linear, _bn), norm2,
# mlp=MLP(fc1/fc2 _linear, _bn)); LIF nodes have no state.
SPIKFORMER_CIFAR_BLOCK0 = [
    "block.0.norm1.weight", "block.0.norm1.bias",
    "block.0.attn.q_linear.weight", "block.0.attn.q_linear.bias", *_bn("block.0.attn.q_bn"),
    "block.0.attn.k_linear.weight", "block.0.attn.k_linear.bias", *_bn("block.0.attn.k_bn"),
    "block.0.attn.v_linear.weight", "block.0.attn.v_linear.bias", *_bn("block.0.attn.v_bn"),
    "block.0.attn.proj_linear.weight", "block.0.attn.proj_linear.bias",
    *_bn("block.0.attn.proj_bn"),
    "block.0.norm2.weight", "block.0.norm2.bias",
    "block.0.mlp.fc1_linear.weight", "block.0.mlp.fc1_linear.bias", *_bn("block.0.mlp.fc1_bn"),
    "block.0.mlp.fc2_linear.weight", "block.0.mlp.fc2_linear.bias", *_bn("block.0.mlp.fc2_bn"),
]

SPIKFORMER_SPS = [
    "patch_embed.proj_conv.weight", *_bn("patch_embed.proj_bn"),
    "patch_embed.proj_conv1.weight", *_bn("patch_embed.proj_bn1"),
    "patch_embed.proj_conv2.weight", *_bn("patch_embed.proj_bn2"),
    "patch_embed.proj_conv3.weight", *_bn("patch_embed.proj_bn3"),
    "patch_embed.rpe_conv.weight", *_bn("patch_embed.rpe_bn"),
]


def _repconv(prefix):
    # RepConv.body = Sequential(Conv1x1, BNAndPadLayer(.bn), Sequential(DWConv3x3, Conv1x1, BN)),
    # wrapped as Sequential(RepConv, BatchNorm2d)
    return [f"{prefix}.0.body.0.weight", *_bn(f"{prefix}.0.body.1.bn"),
            f"{prefix}.0.body.2.0.weight", f"{prefix}.0.body.2.1.weight",
            *_bn(f"{prefix}.0.body.2.2"), *_bn(f"{prefix}.1")]


# BICLab/Spike-Driven-Transformer-V2 classification/models.py: MS_Block(attn =
# MS_Attention_RepConv_qkv_id(q_conv, k_conv, v_conv, proj_conv), mlp = MS_MLP(fc1/fc2 _conv, _bn))
META_BLOCK3_0 = [
    *_repconv("block3.0.attn.q_conv"), *_repconv("block3.0.attn.k_conv"),
    *_repconv("block3.0.attn.v_conv"), *_repconv("block3.0.attn.proj_conv"),
    "block3.0.mlp.fc1_conv.weight", "block3.0.mlp.fc1_conv.bias", *_bn("block3.0.mlp.fc1_bn"),
    "block3.0.mlp.fc2_conv.weight", "block3.0.mlp.fc2_conv.bias", *_bn("block3.0.mlp.fc2_bn"),
]

# MS_ConvBlock(Conv = SepConv(pwconv1, bn1, dwconv, pwconv2, bn2), conv1, bn1, conv2, bn2)
META_CONVBLOCK1_1 = [
    "ConvBlock1_1.0.Conv.pwconv1.weight", *_bn("ConvBlock1_1.0.Conv.bn1"),
    "ConvBlock1_1.0.Conv.dwconv.weight", "ConvBlock1_1.0.Conv.pwconv2.weight",
    *_bn("ConvBlock1_1.0.Conv.bn2"),
    "ConvBlock1_1.0.conv1.weight", *_bn("ConvBlock1_1.0.bn1"),
    "ConvBlock1_1.0.conv2.weight", *_bn("ConvBlock1_1.0.bn2"),
]

# BICLab/Spike-Driven-Transformer module/ms_conv.py: MS_SSA_Conv keeps an unused talking_heads conv
SDT_BLOCK0_ATTN = [
    "block.0.attn.q_conv.weight", *_bn("block.0.attn.q_bn"),
    "block.0.attn.k_conv.weight", *_bn("block.0.attn.k_bn"),
    "block.0.attn.v_conv.weight", *_bn("block.0.attn.v_bn"),
    "block.0.attn.talking_heads.weight",
    "block.0.attn.proj_conv.weight", "block.0.attn.proj_conv.bias", *_bn("block.0.attn.proj_bn"),
]


def _keys(model, prefix):
    return [k for k in model.state_dict() if k.startswith(prefix)]


def test_spikformer_cifar_keys_are_official():
    m = build("spikformer-cifar-4-384")
    assert _keys(m, "block.0.") == SPIKFORMER_CIFAR_BLOCK0
    assert _keys(m, "patch_embed.") == SPIKFORMER_SPS
    assert list(m.state_dict())[-2:] == ["head.weight", "head.bias"]


def test_spikformer_imagenet_and_dvs_keys_are_official():
    conv = build("spikformer-imagenet-8-512")
    keys = _keys(conv, "block.0.attn.")
    assert keys[:2] == ["block.0.attn.q_conv.weight", "block.0.attn.q_bn.weight"]  # no bias
    assert "block.0.attn.proj_conv.bias" in keys
    assert "block.0.mlp.fc1_conv.bias" in _keys(conv, "block.0.mlp")
    assert conv.block[0].attn.q_conv.weight.dim() == 3  # Conv1d
    assert conv.block[0].mlp.fc1_conv.weight.dim() == 4  # Conv2d
    dvs = build("spikformer-dvs-2-256")
    sd = list(dvs.state_dict())
    assert sd[0] == "pos_embed"
    assert sd[-4:] == ["norm.weight", "norm.bias", "head.weight", "head.bias"]
    assert dvs.pos_embed.shape == (1, 64, 256)


def test_meta_spikeformer_keys_are_official():
    m = build("meta-spikeformer-15m")
    assert _keys(m, "block3.0.") == META_BLOCK3_0
    assert _keys(m, "ConvBlock1_1.") == META_CONVBLOCK1_1
    assert _keys(m, "downsample1_1.") == ["downsample1_1.encode_conv.weight",
                                          "downsample1_1.encode_conv.bias",
                                          *_bn("downsample1_1.encode_bn")]
    tops = {k.split(".")[0] for k in m.state_dict()}
    assert tops == {"downsample1_1", "ConvBlock1_1", "downsample1_2", "ConvBlock1_2",
                    "downsample2", "ConvBlock2_1", "ConvBlock2_2", "downsample3", "block3",
                    "downsample4", "block4", "head"}
    assert len(m.block3) == 6 and len(m.block4) == 2


def test_sdt_keys_are_official():
    m = build("sdt-v1-8-512")
    assert _keys(m, "block.0.attn.") == SDT_BLOCK0_ATTN
    assert _keys(m, "patch_embed.") == SPIKFORMER_SPS  # MS_SPS has the same names


def test_snasnet_keys_are_official():
    m = build("snasnet-bw-cifar100")  # --cnt_mat 0302 0030 3003 0000
    weights = [k for k in m.state_dict() if k.endswith("weight")]
    assert weights == [
        "stem.0.weight", "stem.1.weight",
        "cell1.cell_architecture.0.1.weight", "cell1.cell_architecture.0.2.weight",
        "cell1.cell_architecture.2.1.weight", "cell1.cell_architecture.2.2.weight",
        "cell1.cell_architecture.3.1.weight", "cell1.cell_architecture.3.2.weight",
        "cell1.cell_architecture.5.1.weight", "cell1.cell_architecture.5.2.weight",
        "cell1.cell_architecture_back.1.1.weight", "cell1.cell_architecture_back.1.2.weight",
        "downconv1.0.weight", "downconv1.2.weight", "downconv1.3.weight",
        "cell2.cell_architecture.0.1.weight", "cell2.cell_architecture.0.2.weight",
        "cell2.cell_architecture.2.1.weight", "cell2.cell_architecture.2.2.weight",
        "cell2.cell_architecture.3.1.weight", "cell2.cell_architecture.3.2.weight",
        "cell2.cell_architecture.5.1.weight", "cell2.cell_architecture.5.2.weight",
        "cell2.cell_architecture_back.1.1.weight", "cell2.cell_architecture_back.1.2.weight",
        "last_act.0.weight", "classifier.1.weight", "classifier.3.weight"]
    assert m.cell1.cell_architecture[3][1].kernel_size == (1, 1)
    assert m.classifier[1].in_features == 256 * 8 * 8 and m.classifier[3].out_features == 500


@pytest.mark.parametrize("family", FAMILIES)
def test_state_dict_round_trips_strictly(family):
    a, b = small(family, 0).model, small(family, 1).model
    b.load_state_dict(a.state_dict(), strict=True)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


# --- (b) small configurations fire; (c) they trace -----------------------------------------

class LeafTracer(fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return isinstance(m, LIF) or super().is_leaf_module(m, qualname)


CASES = [(f, {}) for f in FAMILIES] + [("meta-spikeformer", {"sdsa": s}) for s in (1, 2, 4)]


def _case_id(case):
    family, kw = case
    return family + "".join(f"-{k}{v}" for k, v in kw.items())


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_config_fires_between_5_and_95_percent(case, seed):
    family, kw = case
    c = small(family, seed, **kw)
    rates = firing_rates(c.model, c.inputs)
    assert rates
    for name, r in rates.items():
        assert 0.05 <= r <= 0.95, f"{family} seed {seed}: firing rate of {name} is {r:.3f}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_small_config_traces_with_lif_leaves(case):
    family, kw = case
    c = small(family, 0, **kw)
    graph = LeafTracer().trace(c.model)
    gm = fx.GraphModule(c.model, graph)
    called = {n.target for n in graph.nodes if n.op == "call_module"}
    lifs = {name for name, m in c.model.named_modules() if isinstance(m, LIF)}
    assert lifs <= called  # every neuron is a leaf call
    assert not any(t.startswith(tuple(f"{name}." for name in lifs)) for t in called)
    with torch.no_grad(), spike_recorder(c.model) as eager_spikes:
        eager = c.model(c.inputs)
    with torch.no_grad(), spike_recorder(gm) as traced_spikes:
        traced = gm(c.inputs)
    assert eager.dtype == torch.float64 and eager.shape == (c.inputs.shape[0], 10)
    assert torch.equal(eager, traced)
    assert eager_spikes.keys() == traced_spikes.keys()
    for name in eager_spikes:
        assert all(torch.equal(a, b) for a, b in zip(eager_spikes[name], traced_spikes[name])), name


def test_small_accepts_zoo_names():
    c = small("spikformer-imagenet-8-768", 3)
    assert c.family == "spikformer-imagenet" and c.inputs.shape == (2, 3, 32, 32)
    assert small("spikformer-dvs-2-256", 0).inputs.shape == (2, 4, 2, 32, 32)
    with pytest.raises(UnsupportedError):
        small("no-such-model", 0)


# --- family-specific semantics --------------------------------------------------------------

def test_bn_and_pad_layer_matches_the_official_in_place_version():
    layer = BNAndPadLayer(pad_pixels=1, num_features=4).double()
    randomize_bn(layer, 0, negative_gammas=0.25, zero_gammas=0.25)
    layer.eval()
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    with torch.no_grad():
        out = layer.bn(x)  # the official forward, verbatim in effect
        pad_values = (layer.bn.bias - layer.bn.running_mean * layer.bn.weight
                      / torch.sqrt(layer.bn.running_var + layer.bn.eps))
        out = F.pad(out, [1] * 4)
        pad_values = pad_values.view(1, -1, 1, 1)
        out[:, :, 0:1, :] = pad_values
        out[:, :, -1:, :] = pad_values
        out[:, :, :, 0:1] = pad_values
        out[:, :, :, -1:] = pad_values
        assert torch.equal(layer(x), out)


def test_snasnet_backward_edges_act_from_the_second_step():
    bw = small("snasnet-bw", 0, T=1).model
    fw = small("snasnet-fw", 0, T=1).model
    missing, unexpected = fw.load_state_dict(bw.state_dict(), strict=False)
    assert not missing and unexpected and all("cell_architecture_back" in k for k in unexpected)
    x = small("snasnet-bw", 0).inputs
    with torch.no_grad():
        assert torch.equal(bw(x), fw(x))  # t = 0: nothing from t - 1 yet
        bw.T = fw.T = 4
        assert not torch.equal(bw(x), fw(x))


def test_sequence_input_models_take_batch_first_frames():
    for name in ("spikformer-dvs-2-256", "sdt-v1-dvs"):
        c = small(name, 0)
        assert c.inputs.dim() == 5
        with torch.no_grad():
            out = c.model(c.inputs)
        assert out.shape == (2, 10)
