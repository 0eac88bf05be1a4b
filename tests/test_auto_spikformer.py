"""Auto-Spikformer as the official code runs it (github CheKaiWei/Auto-spikformer, ``model.py``,
``BN_super.py``, ``Linear_super.py``; the repository has no licence, so its code is not copied:
``official_*`` below re-implement it, citing file and lines).

- an official *supernet* state_dict (the official modules' keys and shapes, random values)
  loads into the zoo's sub-net by slicing what ``set_sample_config`` slices, and says so;
- the loaded sub-net's spikes, layer by layer, equal the official forward's (spikingjelly's
  LIF charge ``v + (x - v) / tau``, the searched threshold on ``mlp.fc1_lif`` only, the
  supernet's head count in every block);
- parameter counts against the paper's Table 4; neuron parameters per LIF.

One deviation is deliberate and stated in ``frontends/zoo/auto_spikformer.py``: the official
``BNSuper`` normalises with the batch's statistics even in eval mode; the reference here, like
snncc, uses the running statistics.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from snncc import neuron as cn
from snncc.errors import CheckpointError
from snncc.frontends import from_checkpoint, load_into
from snncc.frontends.zoo import AUTO_SPIKFORMER_CANDIDATES, ZOO, auto_spikformer, build
from snncc.frontends.zoo.testing import spike_recorder
from snncc.limits import SnnccWarning

#: Paper 000, Table 4 (parameters in millions).
PAPER_TABLE4_PARAMS_M = {"ts1": 4.69, "ts2": 4.64, "tl1": 7.09, "tl2": 9.20, "tl3": 8.46}


@dataclass(frozen=True)
class Candidate:
    """search.py ``decode_cand_tuple``: (depth d, MLP ratio x d, heads x d, threshold x d,
    tau x d, time-step, embed dim)."""

    depth: int
    mlp_ratios: tuple
    num_heads: tuple
    thresholds: tuple
    taus: tuple
    T: int
    embed_dim: int

    @classmethod
    def parse(cls, cand):
        d = int(cand[0])
        part = [tuple(cand[1 + i * d:1 + (i + 1) * d]) for i in range(4)]
        return cls(d, *part, int(cand[-2]), int(cand[-1]))

    def hidden(self, j: int) -> int:
        return int(self.embed_dim * self.mlp_ratios[j])  # model.py 166

# --- the official supernet's state_dict (model.py 15-33, 49-81, 142-152, 201-232, 297-308) --

BN_STATS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def official_supernet_shapes(dim: int, mlp_ratio: float, depth: int, num_classes: int,
                             in_channels: int = 3) -> dict[str, tuple]:
    """Keys and shapes of ``Spikformer(embed_dims=dim, mlp_ratios=mlp_ratio, depths=depth)``:
    SPS stages 0-2 plain BatchNorm2d, ``proj_bn3``/``rpe_bn`` and every block BN a ``BNSuper``
    (its BatchNorm under ``.bn``), every linear a ``LinearSuper`` (an ``nn.Linear``)."""
    shapes: dict[str, tuple] = {}

    def bn(prefix, n, sup):
        for p in BN_STATS:
            shapes[f"{prefix}{'.bn' if sup else ''}.{p}"] = () if p == BN_STATS[-1] else (n,)

    widths = [in_channels, dim // 8, dim // 4, dim // 2, dim]
    for i, s in enumerate(("", "1", "2", "3")):
        shapes[f"patch_embed.proj_conv{s}.weight"] = (widths[i + 1], widths[i], 3, 3)
        bn(f"patch_embed.proj_bn{s}", widths[i + 1], sup=s == "3")
    shapes["patch_embed.rpe_conv.weight"] = (dim, dim, 3, 3)
    bn("patch_embed.rpe_bn", dim, sup=True)
    hidden = int(dim * mlp_ratio)
    for j in range(depth):
        b = f"block.{j}."
        shapes[b + "norm1.weight"] = shapes[b + "norm1.bias"] = (dim,)
        for n in ("q", "k", "v", "proj"):
            shapes[f"{b}attn.{n}_linear.weight"], shapes[f"{b}attn.{n}_linear.bias"] = \
                (dim, dim), (dim,)
            bn(f"{b}attn.{n}_bn", dim, sup=True)
        shapes[b + "norm2.weight"] = shapes[b + "norm2.bias"] = (dim,)
        for n, (c_in, c_out) in (("fc1", (dim, hidden)), ("fc2", (hidden, dim))):
            shapes[f"{b}mlp.{n}_linear.weight"], shapes[f"{b}mlp.{n}_linear.bias"] = \
                (c_out, c_in), (c_out,)
            bn(f"{b}mlp.{n}_bn", c_out, sup=True)
    shapes["head.weight"], shapes["head.bias"] = (num_classes, dim), (num_classes,)
    return shapes


def official_supernet_state(seed: int, **kw) -> dict[str, torch.Tensor]:
    """Random values for :func:`official_supernet_shapes` that make the neurons fire: weights
    N(0, 1/fan_in), BN as the zoo's ``randomize_bn`` (a tenth of the gammas negative)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_supernet_shapes(**kw).items():
        n = shape[0] if shape else 0

        def u(lo, hi, n=n):
            return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)

        if key.endswith("num_batches_tracked"):
            t = torch.tensor(1000)
        elif key.endswith("running_mean"):
            t = torch.randn(n, generator=g, dtype=torch.float64) * 0.1
        elif key.endswith("running_var"):
            t = u(0.05, 0.2)
        elif ".norm" in key:
            t = u(0.5, 1.5)
        elif len(shape) == 1 and re.search(r"_bn\d?(\.bn)?\.weight$", key):
            t = u(0.5, 1.5) * torch.where(torch.rand(n, generator=g) < 0.1, -1.0, 1.0)
        elif len(shape) == 1:
            t = u(0.5, 1.5) if "_bn" in key else torch.randn(n, generator=g,
                                                              dtype=torch.float64) * 0.1
        else:
            fan_in = torch.Size(shape[1:]).numel()
            t = torch.randn(shape, generator=g, dtype=torch.float64) / fan_in ** 0.5
        state[key] = t
    return state


# --- the official forward of a sub-net, from the supernet's tensors -----------------------

def sj_lif(x: torch.Tensor, tau: float, v_th: float) -> torch.Tensor:
    """spikingjelly ``clock_driven.neuron.MultiStepLIFNode(tau, detach_reset=True)``, torch
    backend, over ``x [T, ...]``: ``LIFNode.neuronal_charge`` with ``decay_input`` (the
    default) and ``v_reset == 0``: ``v = v + (x - v) / tau``; ``neuronal_fire``: Heaviside
    ``v - v_threshold >= 0``; ``neuronal_reset``: ``v = (1 - s) v + s v_reset``, v_reset 0."""
    v = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        v = v + (x[t] - v) / tau
        s = (v - v_th >= 0).to(x.dtype)
        v = (1.0 - s) * v + s * 0.0
        out.append(s)
    return torch.stack(out)


def official_forward(state: dict, candidate: tuple, x: torch.Tensor, supernet_heads: int):
    """``Spikformer.set_sample_config(config)`` then ``forward(x)`` (model.py), with the
    config that search.py's ``is_legal`` makes from a candidate tuple (search.py 412-420).
    Returns (logits, {snncc LIF name: spikes})."""
    c = Candidate.parse(candidate)
    s, T = c.embed_dim, c.T
    rec: dict[str, torch.Tensor] = {}

    def bn(prefix, y, n, sup=True):
        # BNSuper.set_sample_config (BN_super.py 28-36): the first n of each statistic
        p = f"{prefix}.bn." if sup else f"{prefix}."
        return F.batch_norm(y, state[p + "running_mean"][:n], state[p + "running_var"][:n],
                            state[p + "weight"][:n], state[p + "bias"][:n], False, 0.1, 1e-5)

    def lif(name, y, tau=2.0, v_th=1.0):
        rec[name] = sj_lif(y, tau, v_th)
        return rec[name]

    def linear(prefix, y, n_out, n_in):
        # LinearSuper.set_sample_config / sample_weight (Linear_super.py 37-49, 73-82)
        return F.linear(y, state[prefix + ".weight"][:n_out, :n_in],
                        state[prefix + ".bias"][:n_out])

    # Spikformer.forward (model.py 398-404) and SPS.forward (model.py 243-274)
    x = x.unsqueeze(0).repeat(T, 1, 1, 1, 1)
    _, B, _, H, W = x.shape
    pe = "patch_embed."
    y = x.flatten(0, 1)
    for i, sfx in enumerate(("", "1", "2")):
        y = F.conv2d(y, state[f"{pe}proj_conv{sfx}.weight"], padding=1)
        n = y.shape[1]
        y = bn(f"{pe}proj_bn{sfx}", y, n, sup=False).reshape(T, B, -1, H, W)
        y = lif(f"{pe}proj_lif{sfx}", y).flatten(0, 1)
    y = F.max_pool2d(y, 3, 2, 1)
    # SPS.set_sample_config (model.py 234-240): proj_conv3 outputs and rpe_conv cut to s
    y = F.conv2d(y, state[f"{pe}proj_conv3.weight"][:s], padding=1)
    y = bn(f"{pe}proj_bn3", y, s).reshape(T, B, -1, H // 2, W // 2)
    y = lif(f"{pe}proj_lif3", y).flatten(0, 1)
    y = F.max_pool2d(y, 3, 2, 1)
    feat = y.reshape(T, B, -1, H // 4, W // 4)
    y = F.conv2d(y, state[f"{pe}rpe_conv.weight"][:s, :s], padding=1)
    y = bn(f"{pe}rpe_bn", y, s).reshape(T, B, -1, H // 4, W // 4)
    x = lif(f"{pe}rpe_lif", y) + feat
    x = x.flatten(-2).transpose(-1, -2)

    heads = supernet_heads  # SSA.forward uses self.num_heads (model.py 122, 127, 132)
    for j in range(c.depth):  # blocks past the depth are identities (model.py 157-159, 192)
        b, tau, th, hid = f"block.{j}.", c.taus[j], c.thresholds[j], c.hidden(j)
        # SSA.forward (model.py 115-140); Block.set_sample_config sets tau on all seven LIFs
        # and the threshold on mlp.fc1_lif only (model.py 180-187)
        Tn, Bn, N, C = x.shape
        xf = x.flatten(0, 1)

        def qkv(n, view):
            out = linear(f"{b}attn.{n}_linear", xf, s, s)
            out = bn(f"{b}attn.{n}_bn", out.transpose(-1, -2), s).transpose(-1, -2)
            out = lif(f"{b}attn.{n}_lif", out.reshape(view), tau)
            return out.reshape(Tn, Bn, N, heads, C // heads).permute(0, 1, 3, 2, 4)

        q = qkv("q", (Tn, Bn, N, C))
        k = qkv("k", (Tn, Bn, C, N))  # (sic: model.py 125, 130 reshape to T, B, C, N)
        v = qkv("v", (Tn, Bn, C, N))
        a = ((q @ k.transpose(-2, -1)) * 0.125) @ v
        a = lif(f"{b}attn.attn_lif", a.transpose(2, 3).reshape(Tn, Bn, N, C), tau, 0.5)
        a = linear(f"{b}attn.proj_linear", a.flatten(0, 1), s, s)
        a = bn(f"{b}attn.proj_bn", a.transpose(-1, -2), s).transpose(-1, -2)
        x = x + lif(f"{b}attn.proj_lif", a.reshape(Tn, Bn, N, C), tau)
        # MLP.forward (model.py 35-46)
        m = linear(f"{b}mlp.fc1_linear", x.flatten(0, 1), hid, s)
        m = bn(f"{b}mlp.fc1_bn", m.transpose(-1, -2), hid).transpose(-1, -2)
        m = lif(f"{b}mlp.fc1_lif", m.reshape(Tn, Bn, N, hid), tau, th)
        m = linear(f"{b}mlp.fc2_linear", m.flatten(0, 1), s, hid)
        m = bn(f"{b}mlp.fc2_bn", m.transpose(-1, -2), s).transpose(-1, -2)
        x = x + lif(f"{b}mlp.fc2_lif", m.reshape(Tn, Bn, N, C), tau)
    x = x.mean(2)  # forward_features (model.py 396)
    n_cls = state["head.weight"].shape[0]  # head.set_sample_config(s, num_classes) (364)
    return linear("head", x.mean(0), n_cls, s), rec


def _load(model, state, arch):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_into(model, state, arch)
    return [str(w.message) for w in caught if issubclass(w.category, SnnccWarning)]


# a small supernet (64 wide, 4 heads, 3 blocks) and two sub-nets of it: the first with
# per-block heads the official forward ignores, taus whose 1/tau is inexact, and a
# depth below the supernet's
SMALL_SUPERNET = dict(dim=64, mlp_ratio=4.0, depth=3, num_classes=10)
SMALL_CANDIDATES = [(2, 3.5, 3.0, 2, 8, 1.2, 0.8, 1.5, 3.0, 4, 48),
                    (3, 4.0, 2.5, 3.0, 4, 4, 4, 0.6, 1.4, 2.0, 2.0, 5.0, 1.25, 3, 64)]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("cand", SMALL_CANDIDATES, ids=["depth2-48", "depth3-64"])
def test_sliced_subnet_spikes_equal_the_official_forward(cand, seed):
    state = official_supernet_state(seed, **SMALL_SUPERNET)
    model = auto_spikformer(cand, img_size=16, supernet_dim=64, supernet_heads=4).double()
    notes = _load(model, state, "auto-spikformer-ts1")  # any auto-spikformer entry: its adapter
    assert any(n.startswith("auto-spikformer-ts1: sliced ") for n in notes)
    model.eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed + 10),
                    dtype=torch.float64)
    ref_y, ref = official_forward(state, cand, x, supernet_heads=4)
    with torch.no_grad(), spike_recorder(model) as rec:
        y = model(x)
    assert set(rec) == set(ref)
    for name, spikes in rec.items():
        got = spikes[0]
        assert torch.equal(got, ref[name].reshape(got.shape)), name
        assert 0.0 < float(got.mean()) < 1.0, f"{name} never or always fires"
    assert torch.allclose(y, ref_y, rtol=0, atol=1e-12)


def test_supernet_checkpoint_loads_by_slicing_with_a_report(tmp_path):
    # the shipped supernet (cifar100.yml: dim 384, num_heads 12, layer 4, mlp_ratio 4)
    state = official_supernet_state(0, dim=384, mlp_ratio=4.0, depth=4, num_classes=10)
    n_bn = sum(".bn." in k and not k.startswith(("block.2.", "block.3.")) for k in state)
    path = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 3, "state_dict": state}, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, graph = from_checkpoint(path, "auto-spikformer-ts1")
    notes = [str(w.message) for w in caught if issubclass(w.category, SnnccWarning)]
    assert len(notes) == 3, notes
    assert notes[0] == (f"auto-spikformer-ts1: renamed {n_bn} supernet BN keys "
                        "'<layer>.bn.<param>' to '<layer>.<param>' (the official BNSuper wraps "
                        "a BatchNorm as .bn)") and n_bn == 70
    assert notes[1].startswith("auto-spikformer-ts1: dropped 92 keys of supernet block(s) 2, 3")
    assert notes[2].startswith(
        "auto-spikformer-ts1: sliced 83 supernet tensors to the candidate as the official "
        "set_sample_config does: block.0.mlp.fc1_linear.weight (1536, 384) -> (1322, 348), "
        "block.1.mlp.fc1_linear.weight (1536, 384) -> (1252, 348), ")
    got = {k: v.double() for k, v in model.double().state_dict().items()}
    want = {k: v.float().double() for k, v in state.items()}  # the model loads in float32
    assert torch.equal(got["block.1.mlp.fc1_linear.weight"],
                       want["block.1.mlp.fc1_linear.weight"][:1252, :348])
    assert torch.equal(got["block.1.mlp.fc1_bn.running_var"],
                       want["block.1.mlp.fc1_bn.bn.running_var"][:1252])
    assert torch.equal(got["patch_embed.proj_conv3.weight"],
                       want["patch_embed.proj_conv3.weight"][:348])
    assert torch.equal(got["patch_embed.rpe_conv.weight"],
                       want["patch_embed.rpe_conv.weight"][:348, :348])
    assert torch.equal(got["patch_embed.proj_conv2.weight"],  # not cut (model.py 218)
                       want["patch_embed.proj_conv2.weight"])
    assert torch.equal(got["head.weight"], want["head.weight"][:, :348])
    assert graph.meta["arch"] == "auto-spikformer-ts1"
    # the sub-net's own state_dict fits as it is: nothing to say
    assert _load(build("auto-spikformer-ts1"), model.state_dict(), "auto-spikformer-ts1") == []


def test_the_issues_supernet_rebuilds_the_stem_at_its_width():
    # a 348-wide supernet with MLP ratio 3.8 and 2 blocks (the example of issue 13)
    state = official_supernet_state(1, dim=348, mlp_ratio=3.8, depth=2, num_classes=10)
    model = build("auto-spikformer-ts1")
    notes = _load(model, state, "auto-spikformer-ts1")
    assert any("first three stages at the checkpoint's supernet widths 43/87/174 (the model "
               "had 48/96/192)" in n for n in notes)
    assert any("block.1.mlp.fc1_linear.weight (1322, 348) -> (1252, 348)" in n for n in notes)
    assert model.patch_embed.proj_conv3.weight.shape == (348, 174, 3, 3)


def test_a_supernet_smaller_than_the_candidate_is_refused_naming_only_that():
    state = official_supernet_state(2, dim=336, mlp_ratio=4.0, depth=2, num_classes=10)
    with pytest.raises(CheckpointError) as err:
        _load(build("auto-spikformer-ts1"), state, "auto-spikformer-ts1")
    msg = str(err.value)
    # the first keys of another shape, and a count of the rest
    assert "key 'patch_embed.rpe_bn.bias' has shape (336,) in the checkpoint but (348,) in the " \
        "model" in msg and msg.endswith("more keys of another shape")
    assert ".bn." not in msg and "missing" not in msg and "unexpected" not in msg


# --- structure: parameter counts (paper 000, Table 4) -------------------------------------

def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_table4():
    # the stem's first stages at the supernet's width (384 for S_Ts, 480 for S_Tl) give
    # Table 4 to within 0.25% (CIFAR-10 head: 4.687, 4.638, 7.076, 9.188M); cut to the
    # sub-net's width S_Ts1/S_Ts2/S_Tl1 were 2% short (S_Tl2 is as wide as its supernet)
    counts = {key: n_params(build(f"auto-spikformer-{key}")) / 1e6
              for key in ("ts1", "ts2", "tl1", "tl2")}
    for key, n in counts.items():
        assert n == pytest.approx(PAPER_TABLE4_PARAMS_M[key], rel=0.0025), f"{key}: {n:.4f}M"


def test_tl3_tuple_and_table4_disagree_as_the_zoo_says():
    # Table 4's 8.46M for S_Tl3 is the tuple's first two blocks, not its three
    full = n_params(build("auto-spikformer-tl3")) / 1e6
    two = n_params(auto_spikformer((2, 3.2, 3.6, 6, 12, 1.4, 1.8, 3, 5, 4, 480),
                                   supernet_dim=480, supernet_heads=12)) / 1e6
    assert full == pytest.approx(10.86, abs=0.005)
    assert two == pytest.approx(PAPER_TABLE4_PARAMS_M["tl3"], rel=0.0025)
    assert "8.46M is not this three-block tuple (10.86M) but its first two blocks (8.45M)" \
        in ZOO["auto-spikformer-tl3"].description


# --- neurons and heads (model.py 24-81, 180-187, 212-232; SSA.forward 122-136) ---------------

@pytest.mark.parametrize("key", sorted(AUTO_SPIKFORMER_CANDIDATES))
def test_neurons_and_heads_are_the_official_ones(key):
    c = Candidate.parse(AUTO_SPIKFORMER_CANDIDATES[key])
    m = build(f"auto-spikformer-{key}")
    lifs = {n: mod.canonical() for n, mod in m.named_modules() if hasattr(mod, "canonical")}
    assert len(lifs) == 5 + 7 * c.depth
    for name, p in lifs.items():
        j = int(name.split(".")[1]) if name.startswith("block.") else None
        tau = 2.0 if j is None else c.taus[j]
        theta = (0.5 if name.endswith("attn_lif") else
                 c.thresholds[j] if name.endswith("mlp.fc1_lif") else 1.0)
        assert p == cn.from_lif(tau, theta, 0.0, decay_input=True), name
    # the official forward splits every block into the supernet's 12 heads
    assert [blk.attn.num_heads for blk in m.block] == [12] * c.depth
    paper = auto_spikformer(AUTO_SPIKFORMER_CANDIDATES[key], supernet_dim=c.embed_dim,
                            supernet_heads=12, per_block_heads=True)
    assert [blk.attn.num_heads for blk in paper.block] == list(c.num_heads)


@pytest.mark.parametrize("key, supernet", [
    ("ts2", dict(dim=384, mlp_ratio=4.0, depth=4)),   # cifar100.yml's supernet
    ("tl1", dict(dim=480, mlp_ratio=5.0, depth=6)),   # S_Tl's largest (Table 1)
])
def test_full_size_entry_spikes_equal_the_official_forward(key, supernet):
    state = official_supernet_state(3, num_classes=10, **supernet)
    model = build(f"auto-spikformer-{key}").double()
    assert _load(model, state, f"auto-spikformer-{key}")
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref_y, ref = official_forward(state, AUTO_SPIKFORMER_CANDIDATES[key], x, supernet_heads=12)
    with torch.no_grad(), spike_recorder(model) as rec:
        y = model(x)
    assert set(rec) == set(ref)
    for name, spikes in rec.items():
        assert torch.equal(spikes[0], ref[name].reshape(spikes[0].shape)), name
        assert 0.05 < float(spikes[0].mean()) < 0.95, name
    assert torch.allclose(y, ref_y, rtol=0, atol=1e-12)
