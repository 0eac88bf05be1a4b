"""Passes: plain functions Graph -> Graph, registered by name in snncc.pipeline.PASSES.
Importing this package imports every pass module so the registry is complete.

:func:`default_pipeline` gives the pass list a target compiles with: the optimisations, the BN
fold the target's thresholds call for, legalization, then the target's own passes."""

from snncc.targets import get_target

from . import attention  # noqa: F401
from . import circuits  # noqa: F401
from . import batchnorm  # noqa: F401
from . import hoist  # noqa: F401
from . import housekeeping  # noqa: F401
from . import latency  # noqa: F401
from . import legalize  # noqa: F401
from . import quantize  # noqa: F401
from . import repconv  # noqa: F401
from . import scale  # noqa: F401
from . import sdsa  # noqa: F401


def default_pipeline(target_name: str, quantized: bool = False) -> list[str]:
    """The default passes for a target: BN into thresholds where thresholds may differ per
    neuron, else into weights; ``legalize_for`` (it reads the target from
    ``graph.meta['target']`` or its ``target`` option); then the target's declared
    ``default_passes`` not already in the list (e.g. Lava's latency balancing).
    ``reparameterize_repconv`` runs only in a pipeline that is ``quantized`` for Loihi 2:
    Meta-SpikeFormer's RepConvs merged make their 1x1 / depthwise 3x3 / 1x1 chains dense 3x3
    convolutions (15M: simulator and onnxruntime 20-30% slower, compile 1.6-2 s slower and 170
    MB larger), which quantize within rounding where the chain's 8-bit weights lose 5-20% and
    need no Pad processes off the neuro cores."""
    t = get_target(target_name)
    passes = [
        "eliminate_dead_nodes", "fold_constants", "remove_identities",
        *(["reparameterize_repconv"] if quantized else []),
        "fold_batchnorm_into_threshold" if t.per_neuron_threshold
        else "fold_batchnorm_into_weights",
        "merge_sdsa_scale_into_threshold", "fold_power_of_two_scale_into_synapses",
        "lower_spike_matmul_to_addressed_additions",
        "remove_identities", "fuse_tensor_op_neurons", "hoist_static_input", "legalize_for"]
    return passes + [p for p in t.default_passes if p not in passes]
