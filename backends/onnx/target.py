"""The ``onnx`` target declaration (cheap to import: no onnx import here)."""

from snncc import ir
from snncc.targets import Target, register_target

TARGET = register_target(Target(
    name="onnx",
    description="ONNX (opset 18): model.onnx unrolled over T and model.step.onnx with explicit "
                "state, for onnxruntime",
    ops=frozenset(ir.NODE_TYPES),
    cmps=frozenset({">=", ">"}),
    resets=frozenset({"hard", "soft"}),
    per_neuron_threshold=True,
    per_neuron_decay=True,
    weight_folds="exact",
    default_passes=("eliminate_dead_nodes", "remove_identities"),
    emitter=f"{__package__}.models:emit_onnx",
    suffix="",
    marker="model.onnx",
    file_suffix=".onnx",  # model.onnx or model.step.onnx on its own
    options=frozenset({"dtype"}),
    runner=f"{__package__}.runner:run_onnx",
    meta_reader=f"{__package__}.runner:read_graph_meta",
))
