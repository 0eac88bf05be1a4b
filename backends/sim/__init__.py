"""The ``sim`` target: the graph itself, written as ``.snnir`` for the reference simulator."""

from snncc import ir
from snncc.targets import Target, register_target

TARGET = register_target(Target(
    name="sim",
    description="reference simulator (.snnir file)",
    ops=frozenset(ir.NODE_TYPES),
    cmps=frozenset({">=", ">"}),
    resets=frozenset({"hard", "soft"}),
    per_neuron_threshold=True,
    per_neuron_decay=True,
    weight_folds="exact",
    default_passes=(),
    emitter="snncc.serialize:save",
    suffix=".snnir",
    replaces="snncc.serialize:SNNIR_FILE",
    meta_reader="snncc.serialize:read_meta",
    runner="snncc.simulator:run_snnir",
    run_options=frozenset({"dtype", "device"}),
    fixed_point=True,
))
