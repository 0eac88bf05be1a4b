"""Loading what the user names into a graph (and, where there is one, the PyTorch model it came
from): a ``.snnir`` or ``.nir`` file; a checkpoint of a zoo architecture (``arch``); a
state_dict plus the user's own code (``factory``, ``package.module:factory`` or
``path/to/file.py:ClassName``); or a whole-model pickle (only with ``trust``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import FormatError, SnnccError
from .graph import Graph

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")


@dataclass
class LoadedModel:
    graph: Graph
    torch_model: object | None = None  # torch.nn.Module when the source is a PyTorch model
    arch: str | None = None


def load_model(source: str | Path, arch: str | None = None, *, trust: bool = False,
               T: int | None = None, factory: str | None = None, factory_args=None,
               input_shape=None, layout: str | None = None) -> LoadedModel:
    """``source``: a ``.snnir`` / ``.nir`` file, or a PyTorch file: a checkpoint loaded into the
    zoo architecture ``arch`` or into the model ``factory`` builds, or (``trust``) a pickled
    ``nn.Module``. ``T``, ``input_shape`` and ``layout`` shape the example the model is traced
    on (defaults: what the model declares)."""
    if T is not None and T < 1:
        raise SnnccError(f"--T must be at least 1, got {T}")
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in (".snnir", ".nir"):
        if suffix == ".snnir":
            from .serialize import load as read
        else:
            from snncc.frontends.nir_reader import read_nir as read
        g = read(path)
        if T is not None:
            g.meta["T"] = T
        return LoadedModel(g)
    if not path.exists():
        raise FormatError(f"{path}: no such file")
    if arch is not None and factory is not None:
        raise SnnccError("give either --arch (a zoo architecture) or --model (your code), "
                         "not both")
    if arch is not None:
        from snncc.frontends import from_checkpoint

        overrides = {} if T is None else {"T": T}
        model, graph = from_checkpoint(path, arch, trust=trust, **overrides)
        return LoadedModel(graph, model, arch)
    from snncc.frontends import user_model

    if factory is not None:
        model = user_model.load_weights(user_model.build_model(factory, factory_args), path,
                                        factory, trust)
    else:
        model = user_model.load_pickled_model(path, trust)
    graph = user_model.trace_user_model(model.eval(), T=T, layout=layout,
                                        input_shape=input_shape, name=path.stem)
    return LoadedModel(graph, model)
