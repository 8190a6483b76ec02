"""Quantizing and calibrating PyTorch models: hooks on the quantizable modules (needs torch).

See :func:`quantize` (a runnable, exportable quantized model), :func:`calibrate` and the user
guide's "Calibrating a model".
"""

from . import _report as _report  # registers its measurements for CalibrationResult.report
from ._batchnorm import fold_batchnorm
from ._calibrate import CalibrationResult, TensorEncoding, calibrate, quantizable_modules
from ._fake_quant import FloatQuantizer, Quantizer, TokenQuantizer
from ._quantize import QuantizedModel, quantize
from ._torchao import to_mx_tensor, to_nvfp4_tensor

__all__ = [
    "CalibrationResult",
    "FloatQuantizer",
    "QuantizedModel",
    "Quantizer",
    "TensorEncoding",
    "TokenQuantizer",
    "calibrate",
    "fold_batchnorm",
    "quantizable_modules",
    "quantize",
    "to_mx_tensor",
    "to_nvfp4_tensor",
]
