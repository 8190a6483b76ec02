"""Calibrating PyTorch models: forward hooks on the quantizable modules (needs torch).

See :func:`calibrate` and the user guide's "Calibrating a model".
"""

from ._calibrate import CalibrationResult, TensorEncoding, calibrate, quantizable_modules

__all__ = ["CalibrationResult", "TensorEncoding", "calibrate", "quantizable_modules"]
