"""Targets and their declared capabilities.

Each back-end declares one :class:`Target` (in its package's ``target.py``, imported by
``snncc.backends``): the IR ops it can express, the neuron features it supports, the default
pass pipeline that legalizes a graph for it, and the function that writes the artifact.
``legalize_for(target)`` and the CLI read these declarations; no back-end is special-cased.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from .errors import SnnccError, UnsupportedError


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    ops: frozenset[str]  # IR op names the back-end maps
    cmps: frozenset[str]  # neuron comparisons it supports ('>=', '>')
    resets: frozenset[str]  # 'hard', 'soft'
    per_neuron_threshold: bool  # theta may differ per neuron (else one per layer)
    per_neuron_decay: bool  # alpha may differ per neuron
    default_passes: tuple[str, ...]
    emitter: str  # "module:function", called as fn(graph, out_path, **options) -> Path
    suffix: str = ""  # artifact file suffix ('' = a directory)
    marker: str = ""  # for a directory artifact: the file in it that says it is this target's
    file_suffix: str = ""  # a directory target whose runner also takes one file of this suffix
    options: frozenset[str] = frozenset()  # emitter keyword options the CLI may pass
    runner: str = ""  # "module:function", fn(artifact, inputs, T) -> (outputs, traces)
    run_options: frozenset[str] = frozenset()  # runner keyword options (`snncc run --dtype`)
    fixed_point: bool = False  # runs graphs quantized by quantize_for_loihi2 bit-exactly
    # a neuron the target's own neuron model cannot express (a soft reset, per-neuron decay,
    # '>=' beside a soft reset) runs in the back-end's custom neuron process: legalization
    # rewrites what it can for the native model and leaves the rest as it is
    custom_neuron: bool = False
    hardware_report: str = ""  # "module:function", fn(graph) -> report with .format()/.violations
    replaces: str = ""  # file artifacts: "module:NAME" of the files.Ours an output may replace
    meta_reader: str = ""  # "module:function", fn(artifact) -> the graph metadata it records
    # what the BN folds do where only a weight fold that rounds would remove a BN (the IR then
    # keeps the model's float32 weights, not float64 products): "any" folds it; "exact" keeps
    # the BN, which the target computes itself per channel, as the model does; "when_written"
    # leaves the fold to the target's writer, one layer at a time (passes/batchnorm.py)
    weight_folds: str = "any"

    def graph_meta(self, artifact: Path) -> dict:
        """The graph metadata (``output_layout`` ...) an artifact records, read without its
        weights; {} where it records none or cannot be read (its runner says why)."""
        if not self.meta_reader:
            return {}
        mod, fn = self.meta_reader.split(":")
        return getattr(importlib.import_module(mod), fn)(Path(artifact))

    def check_output(self, out: Path) -> None:
        """Refuse, before any work, an output path that writing this artifact would clobber."""
        from .files import check_replaceable_directory, check_replaceable_file

        if not self.suffix:
            check_replaceable_directory(Path(out), self.name)
            return
        mod, name = self.replaces.split(":") if self.replaces else ("", "")
        check_replaceable_file(Path(out), getattr(importlib.import_module(mod), name)
                               if mod else None)

    def resources(self, graph):
        """The target hardware's resource estimate and design-rule check, or None."""
        if not self.hardware_report:
            return None
        mod, fn = self.hardware_report.split(":")
        return getattr(importlib.import_module(mod), fn)(graph)

    def run(self, artifact, inputs, T, **options):
        """Run an artifact; returns (outputs by name, spike traces by IR node name [T,B,...]).
        ``options``: those of ``run_options`` (a runner that simulates takes ``dtype`` and
        ``device``); any other is refused."""
        if not self.runner:
            raise UnsupportedError(f"target '{self.name}' has no runner")
        other = sorted(set(options) - self.run_options)
        if other:
            takes = sorted(t.name for t in all_targets().values() if set(other) <= t.run_options)
            raise SnnccError(f"{', '.join('--' + o for o in other)} does not apply to running "
                             f"target '{self.name}'; targets that take it: {takes}")
        mod, fn = self.runner.split(":")
        return getattr(importlib.import_module(mod), fn)(artifact, inputs, T, **options)

    def emit(self, graph, out, **options):
        mod, fn = self.emitter.split(":")
        return getattr(importlib.import_module(mod), fn)(graph, out, **options)


TARGETS: dict[str, Target] = {}


def register_target(t: Target) -> Target:
    TARGETS[t.name] = t
    return t


def all_targets() -> dict[str, Target]:
    """Every declared target (importing ``snncc.backends`` registers them)."""
    importlib.import_module("snncc.backends")
    return TARGETS


def get_target(name: str) -> Target:
    if name not in all_targets():
        raise UnsupportedError(f"unknown target '{name}'; available: {sorted(TARGETS)}")
    return TARGETS[name]


def artifact_path(target: Target, out: str | Path) -> Path:
    """Where a target's artifact goes for ``out``: a file target's ``out`` without its suffix
    is a directory that receives ``model<suffix>``."""
    out = Path(out)
    if target.suffix and out.suffix != target.suffix:
        return out / f"model{target.suffix}"
    return out


def artifact_in(artifact: str | Path, target: str | None = None) -> tuple[Target, Path]:
    """The target that wrote ``artifact`` (``target`` when given) and the artifact to run: a file
    target's by its suffix, a directory target's by the marker file it holds; a directory that
    ``compile -o DIR`` filled for a file target stands for the artifact :func:`artifact_path`
    put in it."""
    artifact = Path(artifact)
    if target:
        tgt = get_target(target)
    else:
        matches = [t for t in all_targets().values()
                   if (t.suffix and artifact.suffix == t.suffix)
                   or (t.marker and (artifact / t.marker).is_file())
                   or (t.file_suffix and artifact.suffix == t.file_suffix
                       and artifact.is_file())]
        if not matches and artifact.is_dir():
            matches = [t for t in all_targets().values()
                       if t.suffix and artifact_path(t, artifact).is_file()]
        if len(matches) != 1:
            raise SnnccError(f"{artifact}: cannot tell the target; pass --target")
        tgt = matches[0]
    if artifact.is_dir() and artifact_path(tgt, artifact).is_file():
        artifact = artifact_path(tgt, artifact)
    return tgt, artifact
