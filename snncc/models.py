"""Loading what the user names into a graph (and, where there is one, the PyTorch model it came
from): a ``.snnir`` or ``.nir`` file; a checkpoint of a zoo architecture (``arch``); a
state_dict plus the user's own code (``factory``, ``package.module:factory`` or
``path/to/file.py:ClassName``); or a whole-model pickle (only with ``trust``).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import FormatError, SnnccError
from .graph import Graph

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")


@contextmanager
def compiled_functions_run_eagerly():
    """Functions a model's code decorates with ``torch.compile`` (Spiking Wavelet Transformer's
    Haar transforms) run as the Python they are: torch.fx traces them (dynamo refuses to be
    traced otherwise), and PyTorch runs them eagerly as the reference (its arithmetic, and no
    compiler needed on the checking machine). Without a compiled function dynamo was never
    imported (torch.compile imports it), and is not now: it costs about 1 s and 70 MB."""
    import sys

    if "torch._dynamo" not in sys.modules:
        yield
        return
    import torch

    with sys.modules["torch._dynamo"].config.patch(error_on_nested_fx_trace=False), \
            torch.compiler.set_stance("force_eager"):
        yield


@contextmanager
def attributes_kept(model):
    """Every module's attributes, and the dicts and lists they hold, as they were before, once
    the block has run the model: a state a forward keeps in a plain attribute (a membrane
    ``self.v``, a library's ``_memories``, which no known library's reset clears) or a proxy a
    trace left there. Parameters and buffers are the same objects after."""
    saved = [(m, dict(m.__dict__), {k: v.copy() for k, v in m.__dict__.items()
                                     if isinstance(v, (dict, list))})
             for m in model.modules()]
    try:
        yield
    finally:
        for m, attrs, contents in saved:
            m.__dict__.clear()
            m.__dict__.update(attrs)
            for k, held in contents.items():  # the containers themselves, changed in place
                attrs[k].clear()
                attrs[k].update(held) if isinstance(held, dict) else attrs[k].extend(held)


def returned_items(out) -> list:
    """What a model's forward returns, as the list of its outputs in order: a dict's values, a
    tuple's or list's items, nested ones in turn (StereoSpike's ``([depth1, ...], [spikes,
    ...])``), else ``out`` itself; None left out (an auxiliary output a model returns empty in
    inference: Spike-Driven Transformer's ``(logits, hook)`` with no hook)."""
    if isinstance(out, Mapping):
        out = tuple(out.values())
    if isinstance(out, (tuple, list)):
        return [o for item in out for o in returned_items(item)]
    return [] if out is None else [out]


@dataclass
class LoadedModel:
    graph: Graph
    torch_model: object | None = None  # torch.nn.Module when the source is a PyTorch model
    arch: str | None = None
    #: a zoo checkpoint's shape-free hyper-parameters as loaded, one line (``zoo.describe``)
    arch_info: str | None = None

    def release(self) -> Graph:
        """The graph, handed over: this object keeps neither it nor the PyTorch model, so a
        compile that goes on with the graph alone holds neither (a full-size model's weights
        and the traced graph's arrays that passes replace)."""
        graph, self.graph, self.torch_model = self.graph, None, None
        return graph


def load_model(source: str | Path, arch: str | None = None, *, trust: bool = False,
               T: int | None = None, factory: str | None = None, factory_args=None,
               input_shape=None, layout: str | None = None, arch_options=None,
               nir_dialect: str | None = None, nir_dt: float | None = None,
               until: str | None = None) -> LoadedModel:
    """``source``: a ``.snnir`` / ``.nir`` file, or a PyTorch file: a checkpoint loaded into the
    zoo architecture ``arch`` or into the model ``factory`` builds, or (``trust``) a pickled
    ``nn.Module``. ``T``, ``input_shape`` and ``layout`` shape the example the model is traced
    on (defaults: what the model declares). ``arch_options`` (a dict, or ``name=value``
    strings) override the architecture's shape-free hyper-parameters (heads, T, tau, thresholds,
    scale: ``snncc zoo --verbose`` lists them); the values used are in ``arch_info``.
    ``nir_dialect`` / ``nir_dt``: how a ``.nir`` file is read (docs/nir.md, "Dialects").
    ``until``: the module of the model's own code the graph ends before (--until)."""
    if T is not None and T < 1:
        raise SnnccError(f"--T must be at least 1, got {T}")
    path = Path(source)
    suffix = path.suffix.lower()
    if until is not None and (arch is not None or suffix in (".snnir", ".nir")):
        raise SnnccError("--until applies to a model's own code (--model, or a pickled "
                         "model with --trust-checkpoint), not to a zoo architecture or a graph")
    if suffix in (".snnir", ".nir"):
        if suffix == ".snnir":
            if nir_dialect is not None or nir_dt is not None:
                raise SnnccError("--nir-dialect / --nir-dt apply to a .nir file only")
            from .serialize import load as read

            g = read(path)
        else:
            from snncc.frontends.nir_reader import read_nir

            g = read_nir(path, dt=nir_dt, dialect=nir_dialect)
        if T is not None:
            g.meta["T"] = T
        return LoadedModel(g)
    if not path.exists():
        raise FormatError(f"{path}: no such file")
    if arch is not None and factory is not None:
        raise SnnccError("give either --arch (a zoo architecture) or --model (your code), "
                         "not both")
    if arch_options and arch is None:
        raise SnnccError("--arch-option needs --arch (a zoo architecture)")
    if arch is not None:
        from snncc.frontends import from_checkpoint
        from snncc.frontends.zoo import arch_options as resolve_options
        from snncc.frontends.zoo import describe

        overrides = resolve_options(arch, arch_options)
        if T is not None:
            if overrides.get("T", T) != T:
                raise SnnccError(f"--T {T} and --arch-option T={overrides['T']} disagree")
            overrides["T"] = T
        try:
            model, graph = from_checkpoint(path, arch, trust=trust, **overrides)
        except ValueError as e:  # the constructor refusing the values (heads not dividing a width)
            if not arch_options:
                raise
            raise SnnccError(f"--arch-option for '{arch}': {e}") from None
        return LoadedModel(graph, model, arch, describe(arch, overrides))
    from snncc.frontends import user_model

    if factory is not None:
        model = user_model.build_with_weights(factory, factory_args, path, trust)
    else:
        model = user_model.load_pickled_model(path, trust)
    model = user_model.unwrapped(model)
    graph, model = user_model.trace_user_model(model.eval(), T=T, layout=layout,
                                               input_shape=input_shape, name=path.stem,
                                               share_weights=True, until=until)  # ours
    return LoadedModel(graph, model)
