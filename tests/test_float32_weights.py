"""A float32 model's synapse weights stay float32 in the IR (``ir.Node.float32_arrays``: half
the memory, and shared with a model compiled from a checkpoint) and change nothing else.

The reference is the same traced graph with those weights widened to float64, which is what the
IR held before: for every small zoo family, every target's default pipeline (and the Loihi 2
quantizer) must give graphs equal array for array, and the float64 simulator the same spikes
(firing 5-95%); artifacts and ``.snnir`` files keep the values exactly.
"""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from snncc import ir
from snncc.errors import UnsupportedError
from snncc.frontends import zoo
from snncc.frontends.tracer import trace
from snncc.passes.common import node_with
from snncc.pipeline import for_target
from snncc.serialize import load, save
from snncc.simulator import simulate

T = 4


def traced32(family: str, seed: int = 0):
    """(graph traced from the float32 model with shared weights, that graph with its float32
    arrays widened to float64, float64 input)."""
    case = zoo.small(family, seed, dtype=torch.float32)
    x = case.inputs
    g = trace(case.model, x, T=T, static=x.dim() == 4, name=family, share_weights=True)
    wide = g.copy()
    for n in list(wide):
        narrow = {a: np.asarray(getattr(n, a), np.float64) for a in n.arrays
                  if getattr(n, a) is not None and getattr(n, a).dtype == np.float32}
        if narrow:
            wide.replace(n.name, node_with(n, **narrow))
    x = x.double().numpy()
    if x.ndim == 5 and g.meta.get("input_layout") == "BT":
        x = np.swapaxes(x, 0, 1)
    return g, wide, x


def assert_same_arrays(a, b):
    assert [(n.name, n.op, n.inputs) for n in a] == [(n.name, n.op, n.inputs) for n in b]
    for m, n in zip(a, b):
        assert m.attrs() == n.attrs(), m.name
        for k in m.arrays:
            u, v = getattr(m, k), getattr(n, k)
            assert (u is None) == (v is None), (m.name, k)
            if u is not None:
                assert np.array_equal(np.asarray(u, np.float64), v), (m.name, k)


@pytest.mark.parametrize("family", zoo.FAMILIES)
def test_only_synapse_weights_are_float32_and_shared(family):
    case = zoo.small(family, 0, dtype=torch.float32)
    g, _, _ = traced32(family)
    narrow = {(n.op, k) for n in g for k in n.arrays
              if getattr(n, k) is not None and getattr(n, k).dtype == np.float32}
    assert narrow and narrow <= {("Conv2d", "weight"), ("Conv1d", "weight"), ("Linear", "weight")}
    params = {p.data_ptr() for p in case.model.parameters()}
    shared = trace(case.model, case.inputs, T=T, static=case.inputs.dim() == 4,
                   share_weights=True)
    copied = trace(case.model, case.inputs, T=T, static=case.inputs.dim() == 4)
    for graph, owned in ((shared, False), (copied, True)):
        for n in graph.of_type(ir.Conv2d, ir.Linear):
            if n.weight.dtype == np.float32:
                assert (n.weight.ctypes.data not in params) == owned, n.name


@pytest.mark.parametrize("target", ["sim", "onnx", "nir", "lava"])
@pytest.mark.parametrize("family", zoo.FAMILIES)
def test_pipelines_give_the_float64_graph(family, target):
    g, wide, x = traced32(family)
    try:
        reference = for_target(target, log=lambda s: None).run(wide)
    except UnsupportedError as err:
        with pytest.raises(UnsupportedError, match=re.escape(str(err))):
            for_target(target, log=lambda s: None).run(g)
        pytest.skip(f"{target} does not take {family}: {err}")
    compiled = for_target(target, log=lambda s: None).run(g)
    assert_same_arrays(compiled, reference)
    if target == "sim":
        got = simulate(compiled, x, T=T, record=True)
        want = simulate(reference, x, T=T, record=True)
        rates = []
        for n in reference.of_type(ir.Neuron):
            assert np.array_equal(got.membrane[n.name], want.membrane[n.name]), n.name
            assert np.array_equal(got.trace[n.name], want.trace[n.name]), n.name
            rates.append(float(np.mean(want.trace[n.name])))
        assert 0.05 <= float(np.mean(rates)) <= 0.95


@pytest.mark.parametrize("family", ["spikformer-cifar", "spikformer-dvs"])
def test_fixed_point_quantizer_gives_the_float64_graph(family):
    g, wide, _ = traced32(family)
    pm = for_target("sim", fixed_point=True, log=lambda s: None)
    assert_same_arrays(pm.run(g), pm.run(wide))


def _onnx_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The initializers as the model computes with them: a float32 weight stored for a Cast
    node under its suffixed name is the widened array under the name the Cast gives it."""
    from snncc.backends.onnx.models import STORED_FLOAT32

    casts = {n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "Cast"}
    out = {}
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if t.name.endswith(STORED_FLOAT32):
            assert a.dtype == np.float32 and casts[t.name] == t.name[:-len(STORED_FLOAT32)]
            out[casts[t.name]] = a.astype(np.float64)
        else:
            out[t.name] = a
    return out


def test_artifacts_keep_the_values(tmp_path):
    """The ONNX models of the float32-weight graph hold the float64 graph's weights: a float64
    model stores the float32 weights as such (half their bytes), widened by a Cast."""
    from snncc.api import emit_options
    from snncc.backends.onnx.models import STORED_FLOAT32
    from snncc.targets import get_target

    g, wide, _ = traced32("spikformer-cifar")
    compiled = for_target("onnx", log=lambda s: None).run(g)
    reference = for_target("onnx", log=lambda s: None).run(wide)
    onnx_target = get_target("onnx")
    for dtype in ("float64", "float32"):
        files = [onnx_target.emit(h, tmp_path / f"{dtype}-{i}",
                                  **emit_options(onnx_target, dtype=dtype))
                 for i, h in enumerate((compiled, reference))]
        a, b = (onnx.load(str(f / "model.onnx") if f.is_dir() else str(f)) for f in files)
        wa, wb = _onnx_weights(a), _onnx_weights(b)
        assert wa.keys() == wb.keys()
        stored32 = [t.name for t in a.graph.initializer if t.name.endswith(STORED_FLOAT32)]
        assert bool(stored32) == (dtype == "float64")
        for k in wa:
            assert wa[k].dtype == wb[k].dtype and np.array_equal(wa[k], wb[k]), k
    save(compiled, tmp_path / "g.snnir")
    back = load(tmp_path / "g.snnir")
    assert_same_arrays(back, reference)
    assert any(n.weight.dtype == np.float32 for n in back.of_type(ir.Conv2d, ir.Linear))


@pytest.mark.parametrize("target", ["lava", "nir", "sim", "onnx"])
def test_artifacts_run_as_the_float64_graph(tmp_path, target):
    """Artifacts keep a float32 model's weights as float32; Lava's processes widen them, the
    NIR and .snnir readers keep them exactly, a float64 ONNX model casts them (onnxruntime
    folds the casts as it loads it): outputs equal those of the float64 graph's."""
    from snncc import api
    from snncc.api import emit_options
    from snncc.targets import get_target

    g, wide, x = traced32("spikformer-cifar")
    tgt = get_target(target)
    outs = []
    for i, h in enumerate((g, wide)):
        compiled = for_target(target, log=lambda s: None).run(h)
        path = tgt.emit(compiled, api.artifact_path(tgt, tmp_path / f"{i}"),
                        **emit_options(tgt))
        outs.append(api.run(path, x[:1] if target == "lava" else x, T=T, target=target))
    assert np.array_equal(outs[0], outs[1])
    assert np.any(outs[1])


def test_a_checkpoint_loaded_for_compile_shares_the_models_weights(tmp_path):
    """``snncc compile model.pt --arch ...`` builds the model itself: the IR's weights are the
    model's own memory, not a second copy."""
    from snncc.frontends.zoo import build
    from snncc.models import load_model

    torch.manual_seed(0)
    torch.save(build("digits-spikformer").state_dict(), tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt", "digits-spikformer")
    params = {p.data_ptr() for p in loaded.torch_model.parameters()}
    weights = [n.weight for n in loaded.graph.of_type(ir.Conv2d, ir.Conv1d, ir.Linear)]
    assert weights and all(w.dtype == np.float32 and w.ctypes.data in params for w in weights)


def test_onnxs_reference_evaluator_computes_the_widened_model(tmp_path):
    """ONNX's own reference implementation (``onnx.reference``, not onnxruntime) runs a float64
    model whose float32 weights are stored as float32 and widened by Cast nodes, with
    onnxruntime's spikes; its real-valued outputs within 1e-12 of onnxruntime's (numpy's BLAS
    and onnxruntime's sum a product in their own orders: 4.4e-16 apart on an AVX-512 machine,
    equal on an AVX2 one)."""
    from onnx.reference import ReferenceEvaluator

    from snncc.api import emit_options
    from snncc.backends.onnx.models import STORED_FLOAT32, spike_tensor
    from snncc.backends.onnx.runner import read_metadata, session
    from snncc.targets import get_target

    g, _, x = traced32("spikformer-cifar")
    tgt = get_target("onnx")
    path = tgt.emit(for_target("onnx", log=lambda s: None).run(g), tmp_path / "m",
                    **emit_options(tgt), trace=True)
    model = onnx.load(str(path / "model.onnx"))
    assert any(n.op_type == "Cast" and n.input[0].endswith(STORED_FLOAT32)
               for n in model.graph.node)
    feed = {model.graph.input[0].name: x}
    reference = ReferenceEvaluator(model).run(None, feed)
    runtime = session(model).run(None, feed)
    assert len(reference) == len(runtime) > 1
    names = [o.name for o in model.graph.output]
    spike_names = {spike_tensor(n, t) for n in json.loads(read_metadata(path)["snncc.neurons"])
                   for t in range(T)}
    for a, b, name in zip(reference, runtime, names):
        assert a.dtype == b.dtype
        if name in spike_names:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    spikes = np.concatenate([a.ravel() for a, name in zip(reference, names)
                             if name in spike_names])
    assert set(np.unique(spikes)) <= {0.0, 1.0} and 0.05 < spikes.mean() < 0.95
