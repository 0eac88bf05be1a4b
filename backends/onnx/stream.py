"""Writing an ONNX model whose weights are numpy arrays one tensor at a time, and checking it
without its weights.

A model proto holding every weight, its serialized bytes and the checker's own parse of them
are three copies of the weights (a 55M-parameter model in float64: 1.3 GB). Protobuf lets a
message's fields come in any order and a length-delimited field be written as its bytes, so the
file is written as: the model without its graph, then the graph field (number 7) whose bytes are
the graph without initializers followed by each initializer (graph field 5), each serialized
only when it is written. The checker (``full_check``: types and shapes) gets the same model with
every initializer declared as a typed graph input instead, which has the same nodes, names,
types and shapes and no weight bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import BinaryIO

import numpy as np
import onnx
from onnx import helper

_MODEL_GRAPH = 7  # ModelProto.graph
_GRAPH_INITIALIZER = 5  # GraphProto.initializer
_TENSOR_RAW_DATA = 9  # TensorProto.raw_data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, length: int) -> bytes:
    """The key and length prefix of a length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(length)


def _dtype(array: np.ndarray, floats: np.dtype | None) -> np.dtype:
    """The dtype ``array`` is written in: ``floats`` (the model's float type) for a wider float
    array (a float64 weight in a float32 model: cast one at a time as written, never all at
    once); a narrower one as it is (a float32 weight a float64 model widens with a Cast)."""
    wider = floats is not None and array.dtype.kind == "f" and \
        array.dtype.itemsize > np.dtype(floats).itemsize
    return np.dtype(floats) if wider else array.dtype


def _header(name: str, array: np.ndarray, floats: np.dtype | None):
    """The TensorProto of ``array`` without its data (fields 1, 2 and 8), and the data's
    little-endian dtype."""
    dtype = _dtype(array, floats)
    t = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(dtype))
    t.dims.extend(array.shape)
    return t, dtype.newbyteorder("<")


def tensor(name: str, array: np.ndarray, floats: np.dtype | None = None) -> onnx.TensorProto:
    """``numpy_helper.from_array`` for numeric arrays: raw little-endian data."""
    t, dtype = _header(name, array, floats)
    t.raw_data = np.ascontiguousarray(array, dtype=dtype).tobytes()
    return t


#: Bytes of a weight cast to the model's dtype at a time as it is written.
CAST_CHUNK_BYTES = 1 << 20


def _write_tensor(f: BinaryIO, name: str, array: np.ndarray, floats: np.dtype | None) -> None:
    """``tensor(...).SerializeToString()`` written without building it: the header's fields
    come before raw_data (field 9) in protobuf's own order, and the data is written from the
    array's memory (no bytes object, no proto copy), cast to the model's dtype (float32 weights
    in a float64 model) :data:`CAST_CHUNK_BYTES` at a time."""
    t, dtype = _header(name, array, floats)
    flat = np.asarray(array).reshape(-1)  # C order: a copy only of a non-contiguous array
    nbytes = flat.size * dtype.itemsize
    f.write(_field(_GRAPH_INITIALIZER, _tensor_size(t, nbytes)))
    f.write(t.SerializeToString())
    f.write(_field(_TENSOR_RAW_DATA, nbytes))
    step = max(1, CAST_CHUNK_BYTES // dtype.itemsize)
    for start in range(0, flat.size, step):
        f.write(np.ascontiguousarray(flat[start:start + step], dtype=dtype).view(np.uint8).data)


def _tensor_size(header: onnx.TensorProto, nbytes: int) -> int:
    """The serialized size of ``header`` with ``nbytes`` of raw_data (always present)."""
    return header.ByteSize() + len(_field(_TENSOR_RAW_DATA, nbytes)) + nbytes


def write_model(model: onnx.ModelProto, initializers: Mapping[str, np.ndarray],
                f: BinaryIO, floats: np.dtype | None = None) -> None:
    """Write ``model`` (its graph without initializers) with ``initializers`` as its graph's
    initializers to ``f`` (wider float ones in ``floats`` when given); only one tensor is serialized
    at a time."""
    head = onnx.ModelProto()
    head.CopyFrom(model)  # no weights in it: small
    head.ClearField("graph")
    graph = model.graph.SerializeToString()
    sizes = []
    for key, array in initializers.items():
        t, dtype = _header(key, array, floats)
        sizes.append(_tensor_size(t, array.size * dtype.itemsize))
    body = len(graph) + sum(len(_field(_GRAPH_INITIALIZER, s)) + s for s in sizes)
    f.write(head.SerializeToString())
    f.write(_field(_MODEL_GRAPH, body))
    f.write(graph)
    for key, array in initializers.items():
        _write_tensor(f, key, array, floats)


def check_without_weights(model: onnx.ModelProto, initializers: Mapping[str, np.ndarray],
                          floats: np.dtype | None = None) -> None:
    """ONNX's full check (types and shapes) of ``model`` with its initializers declared as
    typed graph inputs (wider float ones in ``floats`` when given)."""
    light = onnx.ModelProto()
    light.CopyFrom(model)
    light.graph.input.extend(
        helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(_dtype(a, floats)),
                                      a.shape)
        for k, a in initializers.items())
    onnx.checker.check_model(light, full_check=True)
