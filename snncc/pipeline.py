"""The pass manager: an ordered pipeline of named passes (plain functions Graph -> Graph), the
graph verified after each, with hooks to print or dump the IR after any stage.

Passes register themselves by name with :func:`register_pass`; ``snncc.passes`` imports every
pass module so the registry is complete once it is imported. A pass receives a copy of the
graph (it may change nodes freely but must not modify arrays in place) and returns the new
graph. What it wants to tell the user goes into ``graph.meta['reports'][pass_name]``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PassError, SnnccError
from .graph import Graph

PassFn = Callable[..., Graph]


@dataclass(frozen=True)
class PassInfo:
    name: str
    fn: PassFn
    doc: str
    lossy: bool = False  # lossy passes (quantization) may change spikes and must report it


PASSES: dict[str, PassInfo] = {}


def register_pass(name: str | None = None, lossy: bool = False):
    """Decorator: ``@register_pass()`` registers ``fn`` under its own name."""

    def deco(fn: PassFn) -> PassFn:
        key = name or fn.__name__
        PASSES[key] = PassInfo(key, fn, (fn.__doc__ or "").strip().split("\n")[0], lossy)
        return fn
    return deco


def available_passes() -> dict[str, PassInfo]:
    importlib.import_module("snncc.passes")
    return PASSES


def report(graph: Graph, pass_name: str, **entries) -> None:
    """Record what a pass did (JSON-able values) in the graph's metadata."""
    graph.meta.setdefault("reports", {}).setdefault(pass_name, {}).update(entries)


@dataclass
class PassManager:
    """Runs ``passes`` in order. ``print_ir_after``: pass names (or ``"all"``) after which the
    IR is printed with ``log``; ``dump_ir_dir``: write ``NN-name.snnir`` and ``.txt`` after
    every pass. ``options``: per-pass keyword arguments."""

    passes: list[str]
    verify: bool = True
    print_ir_after: set[str] = field(default_factory=set)
    dump_ir_dir: Path | None = None
    log: Callable[[str], None] = print
    options: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self):
        registry = available_passes()
        unknown = [p for p in self.passes if p not in registry]
        if unknown:
            raise PassError(f"unknown pass(es) {unknown}; available: {sorted(registry)}")
        bad = [p for p in self.print_ir_after if p != "all" and p not in self.passes]
        if bad:
            raise PassError(f"--print-ir-after names pass(es) not in the pipeline: {bad}; "
                            f"pipeline: {self.passes}")

    def run(self, graph: Graph) -> Graph:
        graph.verify(allow_dead=True)
        self._after("input", 0, graph)
        for i, name in enumerate(self.passes, 1):
            info = PASSES[name]
            # the input is not kept: arrays the pass replaces are freed as it goes
            work, graph = graph.copy(), None
            try:
                graph = info.fn(work, **self.options.get(name, {}))
            except SnnccError:
                raise
            except Exception as e:  # a bug in a pass: say which pass, keep the cause chained
                raise PassError(f"pass '{name}' failed: {type(e).__name__}: {e}") from e
            if self.verify:
                try:
                    graph.verify(allow_dead=True)
                except SnnccError as e:
                    raise PassError(f"IR invalid after pass '{name}': {e}") from e
            graph.meta.setdefault("passes", []).append(name)
            self._after(name, i, graph)
        return graph

    def _after(self, name: str, index: int, graph: Graph) -> None:
        if "all" in self.print_ir_after or name in self.print_ir_after:
            self.log(f"// ----- IR after {name} -----\n{graph.format()}")
        if self.dump_ir_dir is not None:
            from .files import TEXT, atomic_write
            from .serialize import save

            stem = Path(self.dump_ir_dir) / f"{index:02d}-{name}"
            save(graph, stem.with_suffix(".snnir"))
            atomic_write(stem.with_suffix(".txt"), lambda f: f.write(graph.format() + "\n"),
                         binary=False, replaces=TEXT)


def run_passes(graph: Graph, passes: list[str], **kw) -> Graph:
    return PassManager(list(passes), **kw).run(graph)


QUANTIZE = "quantize_for_loihi2"
BN_FOLDS = ("fold_batchnorm_into_threshold", "fold_batchnorm_into_weights")


def for_target(target: str, passes: list[str] | None = None, *, fixed_point: bool = False,
               calibrate=None, **kw) -> PassManager:
    """The pass manager that compiles for ``target``: its default pipeline
    (``snncc.passes.default_pipeline``) unless ``passes`` overrides it, with ``legalize_for``
    told the target. ``fixed_point`` adds ``quantize_for_loihi2`` (calibrated on ``calibrate``
    inputs, default random ones) after legalization, before the target's own timing passes;
    the target must declare that it runs quantized graphs. A float graph's BN folds do what the
    target declares (``Target.weight_folds``) where a weight fold would round (one that is
    quantized folds every BN)."""
    from snncc.passes import default_pipeline

    from .targets import get_target

    t = get_target(target)
    names = default_pipeline(target, fixed_point) if passes is None else list(passes)
    options = {"legalize_for": {"target": target}, **kw.pop("options", {})}
    if t.weight_folds != "any" and not fixed_point and QUANTIZE not in names:
        for fold in BN_FOLDS:  # a quantized graph has every BN folded
            options.setdefault(fold, {"weight_folds": t.weight_folds})
    if fixed_point:
        if not t.fixed_point:
            raise PassError(f"target '{target}' cannot run Loihi 2 fixed point; use sim or lava")
        if QUANTIZE not in names:
            at = names.index("legalize_for") + 1 if "legalize_for" in names else len(names)
            names.insert(at, QUANTIZE)
        if calibrate is not None:
            options[QUANTIZE] = {"calibrate": calibrate}
    return PassManager(names, options=options, **kw)
