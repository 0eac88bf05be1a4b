"""Zoo spiking transformers through the Lava back-end, against the PyTorch model itself:
Spikformer (CIFAR SPS stem, 2 blocks) and Meta-SpikeFormer (conv and transformer stages,
SDSA-3, membrane shortcuts), small configurations with randomised BN (negative and zero gammas
among the channels), traced, compiled with the lava target's passes, emitted, run in Lava
(Loihi2SimCfg floating_pt). Every neuron layer's spikes equal PyTorch's in float64 after the
latency shift, T = 4, 2 seeds (Meta-SpikeFormer under ``-m slow`` only), firing
rates in [5%, 95%]. Also with the CLI's pipeline (``for_target``), which leaves the BN folds
that round to the Lava lowering (``weight_folds="when_written"``)."""

from __future__ import annotations

import numpy as np
import pytest

from snncc import ir
from snncc.backends.lava.artifact import emit
from snncc.backends.lava.runner import run_artifact
from snncc.frontends.tracer import trace
from snncc.frontends.zoo import small
from snncc.parity import torch_neuron_traces
from snncc.pipeline import for_target, run_passes
from snncc.targets import get_target

from conftest import assert_rates_in_range

T = 4


CASES = [("spikformer-cifar", 0, "passes"), ("spikformer-cifar", 1, "passes"),
         # ~170 processes, ~20 s each: CI keeps spikingjelly's SDT and MS-ResNet in Lava
         # (tests/test_spikingjelly_models.py)
         pytest.param("meta-spikeformer", 0, "passes", marks=pytest.mark.slow),
         pytest.param("meta-spikeformer", 1, "passes", marks=pytest.mark.slow),
         ("spikformer-cifar", 0, "for_target"),
         pytest.param("meta-spikeformer", 0, "for_target", marks=pytest.mark.slow)]


@pytest.mark.parametrize("family, seed, pipeline", CASES)
def test_zoo_model_spikes_in_lava_equal_pytorch(family, seed, pipeline, tmp_path):
    case = small(family, seed)
    graph = trace(case.model, case.inputs, T=T, name=family)
    if pipeline == "passes":  # the target's own passes: every BN folded by the pass
        compiled = run_passes(graph, list(get_target("lava").default_passes), log=lambda s: None)
        assert not compiled.of_type(ir.BatchNorm)
    else:  # BN folds that round are left to the lowering, which does them as it writes
        compiled = for_target("lava", log=lambda s: None).run(graph)
        left = compiled.meta["reports"]["fold_batchnorm_into_weights"]["folded_when_written"]
        assert left and {n.name for n in compiled.of_type(ir.BatchNorm)} == set(left)
    x = case.inputs.numpy()
    res = run_artifact(emit(compiled, tmp_path / "lava"), x, T)
    (out, *_), ref = torch_neuron_traces(case.model, graph, x, "float64")
    neurons = [n.name for n in graph.of_type(ir.Neuron)]
    assert neurons and set(neurons) <= set(ref)
    for k in neurons:
        assert np.array_equal(res["trace"][k], ref[k]), \
            f"{k}: {int((res['trace'][k] != ref[k]).sum())} of {ref[k].size} spikes differ"
    assert_rates_in_range({k: ref[k].mean() for k in neurons})
    (lava_out,) = res["outputs"].values()
    np.testing.assert_allclose(lava_out, out, rtol=1e-12, atol=1e-12)
