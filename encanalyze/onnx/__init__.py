"""Calibrating ONNX models: weights from the graph, activations with ONNX Runtime.

Needs onnx; onnxruntime for activations and QDQ models.

See :func:`calibrate`, :func:`write_qdq_model` and the user guide's "Calibrating a model";
:func:`calibrate_float8` and :func:`float8_qdq_model` for FP8 QDQ models,
:func:`calibrate_blocks` and :func:`block_qdq_model` for MX and NVFP4 weights.
"""

from .._calibration import CalibrationResult, TensorEncoding
from .._io import ModelFileError, float_weights, load_model
from .._output_errors import OutputErrors
from . import _report as _report  # registers its measurements for CalibrationResult.report
from ._blocks import BlockCalibration, BlockWeight, block_qdq_model, calibrate_blocks
from ._calibrate import QUANTIZABLE_OPS, ModelRunError, calibrate, quantizable_weights
from ._choose import Choice, Option, choose_encodings
from ._float8 import (
    FLOAT8_SESSION,
    Float8Calibration,
    Float8Encoding,
    calibrate_float8,
    choose_float8_activations,
    float8_qdq_model,
)
from ._ptq import correct_biases, equalize_layers, fold_batchnorm
from ._qdq import compare_outputs, output_sqnr, write_qdq_model

__all__ = [
    "BlockCalibration",
    "BlockWeight",
    "FLOAT8_SESSION",
    "QUANTIZABLE_OPS",
    "CalibrationResult",
    "ModelFileError",
    "ModelRunError",
    "Choice",
    "Float8Calibration",
    "Float8Encoding",
    "Option",
    "OutputErrors",
    "TensorEncoding",
    "block_qdq_model",
    "calibrate",
    "calibrate_blocks",
    "calibrate_float8",
    "choose_float8_activations",
    "choose_encodings",
    "compare_outputs",
    "correct_biases",
    "equalize_layers",
    "float8_qdq_model",
    "float_weights",
    "fold_batchnorm",
    "load_model",
    "output_sqnr",
    "quantizable_weights",
    "write_qdq_model",
]
