"""The streamed ONNX writer: a file written one initializer at a time parses to the very model
that holds them all, onnxruntime runs it, and the weight-less check catches what the full check
catches."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from snncc.backends.onnx.models import build_unrolled_model
from snncc.backends.onnx.stream import check_without_weights, write_model

from test_onnx_backend import GRAPHS


def split(model: onnx.ModelProto):
    light = onnx.ModelProto()
    light.CopyFrom(model)
    light.graph.ClearField("initializer")
    return light, {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_streamed_file_is_the_whole_model(name, dtype):
    whole = build_unrolled_model(GRAPHS[name](0), dtype=dtype)
    assert len(whole.graph.initializer) > 3
    light, weights = split(whole)
    buf = io.BytesIO()
    write_model(light, weights, buf)
    back = onnx.load_from_string(buf.getvalue())
    assert back.SerializeToString() == whole.SerializeToString()
    check_without_weights(light, weights)


def test_weightless_check_still_catches_shape_errors():
    w = np.ones((3, 4))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.DOUBLE, [2, 5])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.DOUBLE, [2, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(Exception, match="(?i)shape|dimension|incompatible"):
        check_without_weights(model, {"w": w})
