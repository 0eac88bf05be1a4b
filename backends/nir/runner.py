"""Runner of the ``nir`` target: a ``.nir`` file read back with snncc's NIR reader and run in
the reference simulator (NIR has no execution engine of its own)."""

from __future__ import annotations

from snncc.frontends.nir_reader import read_nir
from snncc.simulator import SPIKES, simulate


def read_meta(artifact) -> dict:
    """The graph metadata (``snncc.meta``) a ``.nir`` file snncc wrote records, without reading
    its weights ({} for other files)."""
    import json

    import h5py

    try:
        with h5py.File(artifact, "r") as f:
            raw = f["node/metadata"]["snncc.meta"][()]
        return dict(json.loads(raw.decode() if isinstance(raw, bytes) else str(raw)))
    except (OSError, KeyError, ValueError, TypeError):
        return {}


def run_nir(artifact, inputs, T=None, dtype: str = "float64", device=None):
    """(outputs at the last step, the neurons' spikes and the outputs [T, B, ...] by IR node
    name), simulated in ``dtype`` on ``device``."""
    res = simulate(read_nir(artifact), inputs, T, dtype=dtype, record=SPIKES, device=device)
    return res.outputs, res.trace
