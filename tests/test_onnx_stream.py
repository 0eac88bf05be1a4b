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


@pytest.mark.parametrize("shape, dtype", [((3, 4), np.float64), ((0, 5), np.float32),
                                          ((), np.float64), ((2, 3), np.int64)])
def test_a_tensor_is_written_as_protobuf_serializes_it(shape, dtype):
    """Each initializer is written from the array's memory, field for field what
    ``TensorProto.SerializeToString`` gives (also empty and 0-d arrays), and as the model's
    float type when one is given (integers stay)."""
    from snncc.backends.onnx.stream import _write_tensor, tensor

    a = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    for floats in (None, np.float32):
        buf = io.BytesIO()
        _write_tensor(buf, "w", a.T if a.ndim == 2 else a, floats)
        whole = tensor("w", a.T if a.ndim == 2 else a, floats).SerializeToString()
        prefix = bytes([5 << 3 | 2]) + len(whole).to_bytes(1, "little")  # a short message
        assert buf.getvalue() == prefix + whole
