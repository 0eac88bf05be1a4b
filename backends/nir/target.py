"""The ``nir`` target declaration (cheap to import: no nir import here)."""

from snncc import ir
from snncc.targets import Target, register_target

TARGET = register_target(Target(
    name="nir",
    description="Neuromorphic Intermediate Representation (.nir, the file nir.write writes); "
                "ops NIR lacks become snncc extension subgraphs, refused with strict=True "
                "(--strict-nir); "
                "compat= (--nir-compat) writes for snntorch, norse or nir-1.0.4",
    ops=frozenset(ir.NODE_TYPES),
    cmps=frozenset({">=", ">"}),
    resets=frozenset({"hard", "soft"}),
    per_neuron_threshold=True,
    per_neuron_decay=True,
    default_passes=("eliminate_dead_nodes", "remove_identities", "fold_batchnorm_into_threshold"),
    emitter=f"{__package__}.writer:emit_nir",
    suffix=".nir",
    replaces=f"{__package__}.writer:WRITTEN_BY_SNNCC",
    options=frozenset({"strict", "compat"}),
    runner=f"{__package__}.runner:run_nir",
    run_options=frozenset({"dtype", "device"}),
    meta_reader=f"{__package__}.runner:read_meta",
    weight_folds="when_written",
))
