"""snncc's model zoo: the spiking transformers of the papers as plain multi-step PyTorch modules
whose ``state_dict`` keys are those of the official repositories (``ZOO``, ``build``).

``small(name_or_family, seed)`` gives a small, randomised instance of a family with an input
that makes its neurons fire (for parity tests: 16x16 to 64x64 inputs, dims 16-64, T = 4).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from snncc.errors import UnsupportedError

from .auto_spikformer import (AUTO_SPIKFORMER_CANDIDATES, AUTO_SPIKFORMER_SUPERNETS,
                              adapt_state_dict, auto_spikformer)
from .auto_spikformer import description as _auto_spikformer_description
from .meta import Spiking_vit_MetaFormer
from .options import arch_options, describe, hyperparameters
from .neurons import IF, LIF, LIFSpec
from .sdt import SpikeDrivenTransformer
from .snasnet import CIFAR10_BW_CELL, CIFAR100_BW_CELL, SNASNet
from .spikformer import Spikformer
from .testing import randomize_bn

__all__ = ["IF", "LIF", "LIFSpec", "ZOO", "ZooEntry", "SmallCase", "FAMILIES", "build", "small",
           "auto_spikformer", "randomize_bn", "arch_options", "describe", "hyperparameters"]


@dataclass(frozen=True)
class ZooEntry:
    """One named configuration: ``builder(**kwargs)`` makes the model.

    ``input_shape`` is (C, H, W) of one static image; ``sequence_input`` models (DVS) take
    ``[B, T, C, H, W]`` instead of ``[B, C, H, W]``."""

    family: str
    builder: Callable[..., nn.Module]
    description: str
    input_shape: tuple[int, int, int]
    T: int
    num_classes: int
    kwargs: dict = field(default_factory=dict)
    sequence_input: bool = False
    #: ``adapt_state_dict(state, model) -> (state, notes)``: turns an official checkpoint
    #: that is not the model's own shape (Auto-Spikformer's supernets) into the model's.
    adapt_state_dict: Callable | None = None
    #: the shape-free constructor arguments no checkpoint records (heads, T, tau, thresholds,
    #: scale ...): printed on loading, overridable (``--arch-option``); see ``options.py``
    options: tuple[str, ...] = ()
    #: the official file(s) those values come from
    source: str = ""

    def build(self, **overrides) -> nn.Module:
        return self.builder(**{**self.kwargs, **overrides})


def _register() -> dict[str, ZooEntry]:
    zoo: dict[str, ZooEntry] = {}

    def add(name, family, builder, description, input_shape, steps, classes, /,
            sequence_input=False, options=(), source="", **kwargs):
        zoo[name] = ZooEntry(family, builder, description, input_shape, steps, classes, kwargs,
                             sequence_input, options=tuple(options), source=source)

    # shape-free hyper-parameters, with the official files they come from (issue 13)
    lif = dict(tau=2.0, v_threshold=1.0, attn_v_threshold=0.5)  # MultiStepLIFNode(tau=2.0)
    sf_opts = ("num_heads", "T", "tau", "v_threshold", "attn_v_threshold", "scale")

    def spikformer(name, variant, depth, dim, heads, T, classes, img, *, description, source,
                   patch=16, in_ch=3, sequence_input=False, scale=0.125):
        add(name, f"spikformer-{variant}", Spikformer, f"{description}; {source}",
            (in_ch, img, img), T, classes, sequence_input, options=sf_opts, source=source,
            variant=variant, img_size_h=img, img_size_w=img, patch_size=patch,
            in_channels=in_ch, num_classes=classes, embed_dims=dim, num_heads=heads,
            depths=depth, T=T, **lif, scale=scale)

    zk = "ZK-Zhou/spikformer "
    for depth, dim in ((4, 384), (2, 384)):
        spikformer(f"spikformer-cifar-{depth}-{dim}", "cifar", depth, dim, 12, 4, 10, 32,
                   patch=4, description=f"Spikformer-{depth}-{dim}, CIFAR10",
                   source=zk + "cifar10/cifar10.yml (num_heads 12, time_step 4"
                   + ("" if depth == 4 else "; layer 2") + "), cifar10/model.py (LIFs, scale)")
    spikformer("spikformer-cifar-4-256", "cifar", 4, 256, 8, 4, 10, 32, patch=4,
               description="Spikformer-4-256, CIFAR10; heads: 8 = head dim 32 as in "
               "cifar10.yml's 384/12 (no official file has dim 256; 12 does not divide it)",
               source=zk + "cifar10/cifar10.yml (time_step 4), cifar10/model.py (LIFs, scale)")
    for depth, dim in ((8, 384), (6, 512), (8, 512), (10, 512), (8, 768)):
        spikformer(f"spikformer-imagenet-{depth}-{dim}", "imagenet", depth, dim, 8, 4, 1000, 224,
                   description=f"Spikformer-{depth}-{dim}, ImageNet",
                   source=zk + "imagenet/model.py (spikformer(): num_heads=8; forward: T = 4; "
                   "LIFs, scale)")
    spikformer("spikformer-dvs-2-256", "dvs", 2, 256, 16, 16, 10, 128, in_ch=2,
               sequence_input=True, scale=0.25, description="Spikformer-2-256, CIFAR10-DVS",
               source=zk + "cifar10dvs/model.py (spikformer(): num_heads=16; scale 0.25; LIFs), "
               "cifar10dvs/train.py (--T 16)")
    for dim in (384, 512):
        spikformer(f"spikformer-v2-8-{dim}", "v2", 8, dim, dim // 64, 4, 1000, 224,
                   description=f"Spikformer V2-8-{dim}, ImageNet, SCS stem (paper 002)",
                   source="no official code: heads = dim/64 and T = 4 are snncc's choice; LIFs "
                   "and scale as " + zk + "imagenet/model.py")

    sdt = "BICLab/Spike-Driven-Transformer "
    sdt_opts = ("num_heads", "T", "tau", "v_threshold", "attn_v_threshold")
    sdt_lifs = "module/ms_conv.py, model/spikeformer.py (LIFs)"
    for depth, dim in ((8, 384), (6, 512), (8, 512), (10, 512), (8, 768)):
        conf = "10_384" if (depth, dim) == (10, 512) else f"{depth}_{dim}"  # sic: layer 10, dim 512
        src = f"{sdt}conf/imagenet/{conf}_300E_t4.yml (num_heads 8, time_steps 4), {sdt_lifs}"
        add(f"sdt-v1-{depth}-{dim}", "sdt-v1", SpikeDrivenTransformer,
            f"Spike-Driven Transformer-{depth}-{dim}, ImageNet; {src}", (3, 224, 224), 4, 1000,
            options=sdt_opts, source=src,
            num_classes=1000, embed_dims=dim, num_heads=8, depths=depth, T=4, pooling_stat="1111",
            **lif)
    for dim in (256, 512):
        src = f"{sdt}conf/cifar10/2_{dim}_300E_t4.yml (num_heads 8, time_steps 4), {sdt_lifs}"
        add(f"sdt-v1-cifar10-2-{dim}", "sdt-v1", SpikeDrivenTransformer,
            f"Spike-Driven Transformer-2-{dim}, CIFAR10; {src}", (3, 32, 32), 4, 10,
            options=sdt_opts, source=src,
            num_classes=10, embed_dims=dim, num_heads=8, depths=2, T=4, pooling_stat="0011",
            **lif)
    src = f"{sdt}conf/cifar10-dvs/2_256_200E_t10_TET.yml (num_heads 8, time_steps 10), {sdt_lifs}"
    add("sdt-v1-cifar10dvs-2-256", "sdt-v1-dvs", SpikeDrivenTransformer,
        f"Spike-Driven Transformer-2-256, CIFAR10-DVS; {src}", (2, 64, 64), 10, 10,
        sequence_input=True, options=sdt_opts, source=src,
        in_channels=2, num_classes=10, embed_dims=256, num_heads=8, depths=2, T=10,
        pooling_stat="0011", dvs_mode=True, **lif)

    meta_opts = sf_opts + ("head_lif", "kd")
    meta = "BICLab/Spike-Driven-Transformer-V2 classification/"
    for size, widths, fn in (("15m", (64, 128, 256, 360), None),
                             ("31m", (96, 192, 384, 480), "metaspikformer_8_384"),
                             ("55m", (128, 256, 512, 640), "metaspikformer_8_512")):
        src = (f"{meta}models.py ({fn or 'as metaspikformer_8_384'}: num_heads=8; LIFs, scale, "
               f"spiking head), classification/train_finetune_from_t1_to_t4.sh (--time_steps 4)")
        add(f"meta-spikeformer-{size}", "meta-spikeformer", Spiking_vit_MetaFormer,
            f"Meta-SpikeFormer {size[:-1]}M, stage widths {list(widths)}"
            + (" (paper 001 Table 1; no official function)" if fn is None else "")
            + ", SDSA-3, spiking head head(lif(x)) of the current official code (head_lif=false: "
            f"the earlier head(x)); {src}", (3, 224, 224), 4, 1000, options=meta_opts,
            source=src, embed_dim=widths, num_classes=1000, num_heads=8, T=4, **lif, scale=0.125,
            head_lif=True)

    for key, cand in AUTO_SPIKFORMER_CANDIDATES.items():
        add(f"auto-spikformer-{key}", "auto-spikformer", auto_spikformer,
            _auto_spikformer_description(key), (3, 32, 32), int(cand[-2]), 10, candidate=cand,
            **AUTO_SPIKFORMER_SUPERNETS[key[:2]])
        zoo[f"auto-spikformer-{key}"] = dataclasses.replace(
            zoo[f"auto-spikformer-{key}"], adapt_state_dict=adapt_state_dict)

    # the built-in default models, trained by examples/train_digits.py on sklearn's 8x8 digits
    own = "examples/train_digits.py (snncc's own model, trained with these values)"
    add("digits-spikformer", "spikformer-cifar", Spikformer,
        f"built-in default: Spikformer-1-32 (CIFAR SPS stem) for 8x8 digits; {own}", (1, 8, 8),
        4, 10,
        options=sf_opts, source=own,
        variant="cifar", img_size_h=8, img_size_w=8, patch_size=4, in_channels=1,
        num_classes=10, embed_dims=32, num_heads=2, depths=1, T=4, **lif, scale=0.125)
    add("digits-meta-spikeformer", "meta-spikeformer", Spiking_vit_MetaFormer,
        "built-in default: Meta-SpikeFormer widths [16, 32, 48, 64], SDSA-3, for digits "
        "upsampled to 32x32; the earlier head head(x) (head_lif=false), which its shipped "
        f"checkpoint was trained with; {own}", (1, 32, 32), 4, 10, options=meta_opts, source=own,
        in_channels=1, embed_dim=(16, 32, 48, 64), num_heads=2, num_classes=10, T=4,
        stage_blocks=(1, 1), **lif, scale=0.125, head_lif=False)

    snas = ("Intelligent-Computing-Lab-Yale/Neural-Architecture-Search-for-Spiking-Neural-Networks "
            "config.py (--timestep 5, --tau 4/3, --threshold 1.0), model_snn.py")
    snasnet_presets = {  # model_snn.py's per-dataset settings; the cells and the second pooling
        # of the README's checkpoints (CIFAR10: --second_avgpooling 4)
        "cifar10": dict(num_classes=10, num_cluster=10, img_size=32, channel_ratio=2,
                        second_avgpooling=4, con_mat=CIFAR10_BW_CELL),
        "cifar100": dict(num_classes=100, num_cluster=5, img_size=32, con_mat=CIFAR100_BW_CELL),
        "tinyimagenet": dict(num_classes=200, num_cluster=5, img_size=64,
                             classifier_inter_ch=4096, stem_stride=2, con_mat=CIFAR100_BW_CELL),
    }
    cells = {"cifar10": "--cnt_mat 0303 0030 2002 0200 --second_avgpooling 4 (README, the "
                        "CIFAR10 checkpoint), channel_ratio 2: 256/512 channels",
             "cifar100": "--cnt_mat 0302 0030 3003 0000 (README, the CIFAR100 checkpoint)",
             "tinyimagenet": "--cnt_mat 0302 0030 3003 0000 (the CIFAR100 cell; no official "
                             "TinyImageNet cell)"}
    for cell, backward in (("bw", True), ("fw", False)):
        for data, preset in snasnet_presets.items():
            add(f"snasnet-{cell}-{data}", f"snasnet-{cell}", SNASNet,
                f"SNASNet-{cell.capitalize()} on {data}, cell {cells[data]}"
                + ("" if backward else ", forward edges only") + f", T = 5; {snas}",
                (3, preset["img_size"], preset["img_size"]), 5, preset["num_classes"],
                options=("T", "tau", "v_threshold"), source=snas,
                backward=backward, T=5, tau=4 / 3, v_threshold=1.0, **preset)
    return zoo


ZOO: dict[str, ZooEntry] = _register()


def _entry(name: str) -> ZooEntry:
    if name not in ZOO:
        close = difflib.get_close_matches(name, list(ZOO), n=5, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(ZOO)}"
        raise UnsupportedError(f"unknown zoo architecture '{name}'{hint}")
    return ZOO[name]


def build(name: str, **overrides) -> nn.Module:
    """Build the named configuration; ``overrides`` replace the entry's constructor arguments."""
    return _entry(name).build(**overrides)


# --- small configurations for tests --------------------------------------------------------

@dataclass(frozen=True)
class _Small:
    kwargs: dict
    input_shape: tuple[int, ...]  # without the batch: (C, H, W) or (T, C, H, W) for DVS
    events: float = 0.0  # > 0: binary event frames with this density instead of N(0, 1) pixels
    bn: dict = field(default_factory=lambda: dict(negative_gammas=0.1, zero_gammas=0.05))
    weight_gain: dict = field(default_factory=dict)  # parameter name -> factor (layers without BN)


def _residual_bn(patterns: tuple[str, ...]) -> dict:
    """BN options for membrane-shortcut models: zero-mean biases for the BNs whose output is
    added to the residual membrane stream (positive ones would saturate the deeper neurons)."""
    return dict(negative_gammas=0.1, zero_gammas=0.05,
                overrides={p: dict(bias_range=(-0.3, 0.3)) for p in patterns})


_SDT_RESIDUAL = ("*attn.proj_bn", "*mlp.fc2_bn", "patch_embed.rpe_bn", "patch_embed.proj_bn3")
_META_RESIDUAL = ("*.bn2", "*attn.proj_conv.1", "*mlp.fc2_bn")
_SNASNET = dict(con_mat=CIFAR100_BW_CELL, first_out_channel=16, classifier_inter_ch=64, img_size=16,
                num_classes=10, num_cluster=2, T=4)

_SMALL: dict[str, tuple[Callable[..., nn.Module], _Small]] = {
    "spikformer-cifar": (Spikformer, _Small(
        dict(variant="cifar", embed_dims=32, num_heads=2, depths=2, T=4, num_classes=10),
        (3, 16, 16))),
    "spikformer-imagenet": (Spikformer, _Small(
        dict(variant="imagenet", embed_dims=32, num_heads=1, depths=2, T=4, num_classes=10),
        (3, 32, 32))),
    "spikformer-dvs": (Spikformer, _Small(
        dict(variant="dvs", embed_dims=32, num_heads=2, depths=2, T=4, num_classes=10,
             img_size_h=32, img_size_w=32, in_channels=2), (4, 2, 32, 32), events=0.3,
        bn=dict(negative_gammas=0.1, zero_gammas=0.05,
                overrides={"patch_embed.*": dict(bias_range=(0.8, 1.6))}))),
    "spikformer-v2": (Spikformer, _Small(
        dict(variant="v2", embed_dims=32, num_heads=2, depths=2, T=4, num_classes=10),
        (3, 64, 64))),
    "auto-spikformer": (auto_spikformer, _Small(
        dict(candidate=(2, 3.0, 2.0, 2, 4, 1.2, 0.8, 2.0, 1.5, 4, 48)), (3, 16, 16))),
    "sdt-v1": (SpikeDrivenTransformer, _Small(
        dict(embed_dims=32, num_heads=2, depths=2, T=4, num_classes=10, pooling_stat="0011"),
        (3, 16, 16), bn=_residual_bn(_SDT_RESIDUAL))),
    "sdt-v1-dvs": (SpikeDrivenTransformer, _Small(
        dict(in_channels=2, embed_dims=32, num_heads=2, depths=2, T=4, num_classes=10,
             pooling_stat="0011", dvs_mode=True), (4, 2, 16, 16), events=0.3,
        bn=_residual_bn(_SDT_RESIDUAL))),
    "meta-spikeformer": (Spiking_vit_MetaFormer, _Small(
        dict(embed_dim=(16, 32, 48, 64), num_heads=2, T=4, num_classes=10, stage_blocks=(1, 1)),
        (3, 32, 32), bn=_residual_bn(_META_RESIDUAL))),
    "snasnet-bw": (SNASNet, _Small(
        dict(backward=True, **_SNASNET), (3, 16, 16), weight_gain={"classifier.1.weight": 4.0})),
    "snasnet-fw": (SNASNet, _Small(
        dict(backward=False, **_SNASNET), (3, 16, 16), weight_gain={"classifier.1.weight": 4.0})),
}

FAMILIES = tuple(_SMALL)


@dataclass
class SmallCase:
    """A small model (eval mode, BN statistics randomised) and an input batch that drives it."""

    family: str
    model: nn.Module
    inputs: torch.Tensor


def small(name_or_family: str, seed: int = 0, *, batch: int = 2,
          dtype: torch.dtype = torch.float64, **overrides) -> SmallCase:
    """A small configuration of a family (or of a zoo name's family), weights drawn from
    ``seed``, BN randomised with :func:`randomize_bn` (10% negative and 5% zero gammas), and a
    random input batch (N(0, 1) pixels, or binary event frames for DVS models); the
    configurations are tuned so that every neuron layer fires at 5-95% (checked for seeds 0-11).
    ``overrides`` go to the constructor (e.g. ``sdsa=1`` for Meta-SpikeFormer)."""
    family = name_or_family if name_or_family in _SMALL else _entry(name_or_family).family
    builder, cfg = _SMALL[family]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = builder(**{**cfg.kwargs, **overrides})
    randomize_bn(model, seed, **cfg.bn)
    with torch.no_grad():
        params = dict(model.named_parameters())
        for pname, gain in cfg.weight_gain.items():
            params[pname].mul_(gain)
    model = model.to(dtype).eval()
    gen = torch.Generator().manual_seed(seed + 7919)
    shape = (batch, *cfg.input_shape)
    if cfg.events:
        x = (torch.rand(shape, generator=gen, dtype=dtype) < cfg.events).to(dtype)
    else:
        x = torch.randn(shape, generator=gen, dtype=dtype)
    return SmallCase(family, model, x)
