"""Float and block formats of a torch model: FP8 / FP6 / FP4 scales, MX and NVFP4 weights.

The same arithmetic as the ONNX model job's (:func:`encanalyze.onnx.calibrate_float8`,
:func:`encanalyze.onnx.calibrate_blocks`), on the model's own tensors, keyed by torch names.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .. import formats
from ..onnx._blocks import BLOCK_METHODS, BlockCalibration, block_weight
from ..onnx._float8 import Float8Calibration, Float8Encoding, activation_scales, float8_weight
from ._calibrate import calibrate, channel_axis, quantizable_modules

__all__ = ["INT_ONLY", "calibrate_format", "number_format"]

INT_ONLY = ("bits", "symmetric", "weight_symmetric", "per_channel_activations")
"""Options of the integer grids that no float or block format takes."""


def number_format(name: str) -> formats.NumberFormat:
    """Return the number format named ``name`` (:data:`encanalyze.formats.NUMBER_FORMATS`)."""
    if name not in formats.NUMBER_FORMATS:
        raise ValueError(
            f"unknown number_format {name!r}; choose from {list(formats.NUMBER_FORMATS)}"
        )
    return formats.NUMBER_FORMATS[name]


def _methods(weights, allowed: tuple, what: str) -> tuple:
    names = (weights,) if isinstance(weights, str) else tuple(weights)
    bad = [m for m in names if m not in allowed]
    if bad or not names:
        raise ValueError(f"{what} takes the methods {list(allowed)}, got {list(names)}")
    return names


def calibrate_format(
    model: torch.nn.Module,
    batches,
    fmt: formats.NumberFormat,
    config: Mapping,
    *,
    batch_to_inputs=None,
    progress=None,
    statistics: dict | None = None,
) -> Float8Calibration | BlockCalibration:
    """Calibrate ``model`` (eval mode) for the float or block format ``fmt``.

    ``"scaled"`` formats (FP8, FP6, FP4 with an FP32 scale): each weight gets its scales per
    output channel (``per_channel_weights``) by each of ``weights``' methods (default: all
    of the format's), keeping the best SQNR on it; each activation (layer inputs, and outputs
    with ``outputs``) one histogram, and its scales by every method of the format; the first is
    in use (``activations`` names another). ``"mx"`` / ``"nvfp4"``: the weights in blocks along
    the axis they sum over, by ``weights``' methods (default both; MSE in use); activations stay
    in floating point (quantized block by block at run time). ``config``: the options
    :func:`~encanalyze.torch.quantize` takes (the integer grids' own are refused).
    """
    given = sorted(set(INT_ONLY) & set(config))
    if given:
        raise ValueError(f"{given[0]!r} sets an integer grid; number_format {fmt.name!r} has none")
    chosen = quantizable_modules(model, config.get("modules"))
    if fmt.scheme in ("mx", "nvfp4", "int_groups"):
        methods = _methods(config.get("weights", BLOCK_METHODS), BLOCK_METHODS, fmt.name)
        weights, unquantized = {}, {}
        for name, module in chosen.items():
            key = f"{name}.weight" if name else "weight"
            w = module.weight.detach().float().cpu().numpy()
            if not torch.isfinite(module.weight).all():
                unquantized[key] = "it holds a value that is not finite"
                continue
            channel = channel_axis(module)
            weights[key] = block_weight(key, w, channel, fmt.scheme, fmt.element, methods)
        method = "mse" if "mse" in methods else methods[0]
        return BlockCalibration(
            fmt.scheme, fmt.element, fmt.block_size, weights, unquantized, method
        )
    methods = _methods(config.get("weights", fmt.methods), fmt.methods, fmt.name)
    statistics = {} if statistics is None else statistics
    result = calibrate(
        model,
        batches,
        activations="percentile",
        activation_options={"percentile": 100.0},  # the histogram; every method reads it
        per_channel_weights=config.get("per_channel_weights", True),
        modules=config.get("modules"),
        outputs=config.get("outputs", False),
        batch_to_inputs=batch_to_inputs,
        progress=progress,
        statistics=statistics,
    )
    modules = dict(model.named_modules())
    encodings, unquantized = {}, dict(result.unquantized)
    for key, e in result.encodings.items():
        if e.kind == "param":
            module = modules[key[: -len(".weight")] if key != "weight" else ""]
            w = module.weight.detach().float().cpu().numpy()
            found = float8_weight(key, w, e.axis, fmt.element, methods)
        else:
            scales = activation_scales(fmt.element, statistics["stats"][key], fmt.methods)
            found = Float8Encoding(key, "activation", None, scales, fmt.methods[0])
        if isinstance(found, str):
            unquantized[key] = found
        else:
            encodings[key] = found
    return Float8Calibration(fmt.element, encodings, unquantized, {}, result.num_batches)
