"""Calibrating ONNX models: weights from the graph, activations with ONNX Runtime.

Needs onnx; onnxruntime for activations and QDQ models.

See :func:`calibrate`, :func:`write_qdq_model` and the user guide's "Calibrating a model".
"""

from .._calibration import CalibrationResult, TensorEncoding
from .._onnx_graph import ModelFileError, float_weights, load_model
from ._calibrate import QUANTIZABLE_OPS, ModelRunError, calibrate, quantizable_weights
from ._choose import Choice, Option, choose_encodings
from ._qdq import output_sqnr, write_qdq_model

__all__ = [
    "QUANTIZABLE_OPS",
    "CalibrationResult",
    "ModelFileError",
    "ModelRunError",
    "Choice",
    "Option",
    "TensorEncoding",
    "calibrate",
    "choose_encodings",
    "float_weights",
    "load_model",
    "output_sqnr",
    "quantizable_weights",
    "write_qdq_model",
]
