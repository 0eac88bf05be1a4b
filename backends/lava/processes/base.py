"""What every snncc custom Lava process shares: the Lava names they use (imported through the
compatibility shim), the decorator that declares a CPU floating_pt model, and the step counter
of a run.

All custom processes answer within the step (no synaptic latency). Every port and state carries a
leading lane axis: the samples of a batch run side by side, one per lane, all starting together.
A batch larger than the lanes runs in rounds, ``period`` steps apart; a stateful process
re-initialises its state at local step ``start`` of every period (its depth: the first step that
carries the round's samples).
"""

from __future__ import annotations

import numpy as np

from ..compat import lava

_process = lava(".magma.core.process.process")
_ports = lava(".magma.core.process.ports.ports")
_decorator = lava(".magma.core.decorator")
_model = lava(".magma.core.model.py.model")
_pyports = lava(".magma.core.model.py.ports")

AbstractProcess = _process.AbstractProcess
Var = lava(".magma.core.process.variable").Var
InPort, OutPort = _ports.InPort, _ports.OutPort
PyLoihiProcessModel = _model.PyLoihiProcessModel
PyInPort, PyOutPort = _pyports.PyInPort, _pyports.PyOutPort
LavaPyType = lava(".magma.core.model.py.type").LavaPyType

FLOAT_IN = LavaPyType(PyInPort.VEC_DENSE, float)
FLOAT_OUT = LavaPyType(PyOutPort.VEC_DENSE, float)
FLOAT_VAR = LavaPyType(np.ndarray, float)
#: integer messages and state of the fixed_pt models (Loihi 2 arithmetic on the chip)
INT_IN = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
INT_OUT = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
INT_VAR = LavaPyType(np.ndarray, np.int64, precision=24)


def _tagged(process_cls, tag: str):
    protocol = lava(".magma.core.sync.protocols.loihi_protocol").LoihiProtocol
    cpu = lava(".magma.core.resources").CPU

    def deco(model):
        model = _decorator.tag(tag)(model)
        model = _decorator.requires(cpu)(model)
        return _decorator.implements(proc=process_cls, protocol=protocol)(model)
    return deco


def floating_pt_model(process_cls):
    """Class decorator: ``model`` implements ``process_cls`` on the CPU, tag floating_pt."""
    return _tagged(process_cls, "floating_pt")


def fixed_pt_model(process_cls):
    """Class decorator: ``model`` implements ``process_cls`` on the CPU, tag fixed_pt (integer
    messages: the Loihi 2 arithmetic of a quantized graph)."""
    return _tagged(process_cls, "fixed_pt")


def to_int(x) -> np.ndarray:
    """An integer-valued array (float64 holding integers, or ints) as int64, exactly."""
    x = np.asarray(x)
    return x.astype(np.int64) if x.dtype.kind in "iub" else np.rint(x).astype(np.int64)


def local_step(model) -> int:
    """The step within the current round's period (Lava counts time_step from 1)."""
    return (model.time_step - 1) % model.proc_params["period"]


def on_phase(model) -> bool:
    """Whether a stateful process updates at this step: in a dilated network (every IR step
    takes ``dilation`` Lava steps) only at local steps ``start`` + t * dilation."""
    return (local_step(model) - model.proc_params["start"]) % model.proc_params["dilation"] == 0
