"""snncc's custom Lava processes, each an ``AbstractProcess`` with a floating_pt
``PyLoihiProcessModel`` (and a fixed_pt one with int32 messages for the chip of a quantized
graph), for what Lava has no process for; and Lava's own Conv and Dense processes with a lane
axis (``BatchConv``, ``BatchDense``) and their models. Every port carries a leading lane axis
(the samples run side by side). Lava gets the models through ``exception_proc_model_map``
keyed by process instance (a Recorder's model depends on its number of in-ports:
``recorder_model(k)``)."""

from .conv import BatchConv, PyVectorConvModel, PyVectorConvModelFixed
from .dense import BatchDense, BlockDense, PyBatchDenseModel, PyBlockDenseModel
from .neuron import CanonicalLIF, Loihi2LIF, PyCanonicalLIFModel, PyLoihi2LIFModel
from .ops import (BinaryOp, PyBinaryOpModel, PyBinaryOpModelFixed, PyEncoderModel,
                  PyUnaryOpModel, PyUnaryOpModelFixed, UnaryOp)
from .recorder import Recorder, recorder_model
from .state import Delay, PyDelayModel, PyDelayModelFixed, PyReadoutModel, Readout

__all__ = ["BatchConv", "BatchDense", "BlockDense", "BinaryOp", "CanonicalLIF", "Delay", "Loihi2LIF",
           "PyBatchDenseModel", "PyBlockDenseModel", "PyBinaryOpModel", "PyBinaryOpModelFixed", "PyCanonicalLIFModel",
           "PyDelayModel", "PyDelayModelFixed", "PyEncoderModel", "PyLoihi2LIFModel",
           "PyReadoutModel", "PyUnaryOpModel", "PyUnaryOpModelFixed", "PyVectorConvModel",
           "PyVectorConvModelFixed", "Readout", "Recorder", "UnaryOp", "recorder_model"]
