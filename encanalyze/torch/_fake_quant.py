"""Quantize-dequantize inside a torch model, as ONNX Runtime's QDQ nodes compute it.

``fake_quant`` is the integer arithmetic; :class:`Quantizer` holds one tensor's integer grid
and :class:`FloatQuantizer` its float-format scale (FP8, FP6, FP4) as buffers (they follow the
model across devices); :func:`attach` gives a model's layers their quantizers with forward hooks
that run them, and swaps its weights for their quantize-dequantized values (MX and NVFP4
weights: their blocks' values).
"""

from __future__ import annotations

import torch

from .. import formats
from .._backends import to_numpy
from .._calibration import TensorEncoding
from .._encoding import to_scale_offset
from .._registry import METHODS
from ..onnx._blocks import BlockCalibration, dequantized
from ..onnx._float8 import Float8Calibration, Float8Encoding

__all__ = [
    "FloatQuantizer",
    "Quantizer",
    "TokenQuantizer",
    "attach",
    "attach_tokens",
    "fake_quant",
    "module_of",
    "reencode",
]

_ON_GRID = "_encanalyze_on_grid"
"""Attribute set on a tensor an output quantizer returned: the next layer's input quantizer
leaves it as it is (one quantizer per tensor, as a QDQ model has)."""


def fake_quant(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, num_steps: int):
    """``(clip(round(x / scale) - offset, 0, num_steps) + offset) * scale`` (ties to even)."""
    return (torch.clamp(torch.round(x / scale) - offset, 0, num_steps) + offset) * scale


class _Scaled(torch.nn.Module):
    """A tensor's ``scale`` buffer (float32) along ``axis``, or per tensor (``axis`` None)."""

    def __init__(self, encoding) -> None:
        super().__init__()
        scale = torch.as_tensor(to_numpy(encoding.scale), dtype=torch.float32).reshape(-1)
        self.axis = encoding.axis if scale.numel() > 1 else None
        self.tensor = encoding.name
        self.register_buffer("scale", scale)

    def set_encoding(self, encoding) -> None:
        """Take ``encoding``'s scale (of the same layout) in place."""
        with torch.no_grad():
            self.scale.copy_(torch.as_tensor(to_numpy(encoding.scale)).reshape(-1))
        self.tensor = encoding.name

    def along(self, buffer: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Return ``buffer`` shaped to broadcast against ``x`` (its values on ``axis``)."""
        shape = [1] * x.ndim
        if self.axis is not None:
            shape[self.axis] = buffer.numel()
        return buffer.reshape(shape)

    def extra_repr(self) -> str:
        where = "per tensor" if self.axis is None else f"axis {self.axis}"
        return f"{self.tensor!r}, {where}, {self.grid()}"


class Quantizer(_Scaled):
    """One tensor's integer grid: ``scale`` and ``offset`` buffers along ``axis`` (or per tensor).

    Computes in float32 (the encodings' type, as ``QuantizeLinear`` does) and returns the input's
    dtype.
    """

    def __init__(self, encoding: TensorEncoding, num_steps: int) -> None:
        super().__init__(encoding)
        offset = torch.as_tensor(to_numpy(encoding.offset), dtype=torch.float32).reshape(-1)
        self.num_steps = int(num_steps)
        self.register_buffer("offset", offset)

    def set_encoding(self, encoding: TensorEncoding) -> None:
        """Take ``encoding``'s scale and offset (of the same layout) in place."""
        super().set_encoding(encoding)
        with torch.no_grad():
            self.offset.copy_(torch.as_tensor(to_numpy(encoding.offset)).reshape(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, o = self.along(self.scale, x), self.along(self.offset, x)
        return fake_quant(x.float(), s, o, self.num_steps).to(x.dtype)

    def grid(self) -> str:
        return f"{self.num_steps + 1} levels"


class FloatQuantizer(_Scaled):
    """One tensor's float-format quantize-dequantize: ``scale`` along ``axis`` (or per tensor).

    ``formats.quantize_scaled`` of ``x / scale`` (round to nearest even, saturating: ONNX's
    ``QuantizeLinear`` to FLOAT8 with ``saturate``), in float32; returns the input's dtype.
    """

    def __init__(self, encoding: Float8Encoding, fmt: formats.FloatFormat) -> None:
        super().__init__(encoding)
        self.fmt = fmt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.along(self.scale, x) if self.axis is not None else self.scale.reshape(())
        return formats.quantize_scaled(x.float(), self.fmt, scale=scale).to(x.dtype)

    def grid(self) -> str:
        return self.fmt.name


class TokenQuantizer(torch.nn.Module):
    """Quantize-dequantize each token on a grid of its own, found at run time (per token).

    Each row of the input's last axis (one token's hidden vector) gets the encoding of its own
    finite values: the min-max encoding on an integer grid of ``num_steps`` steps
    (``symmetric``: signed, zero point 0; a min-max analyzer's
    :meth:`~encanalyze.EncodingAnalyzer.compute_dynamic_encodings` with one encoding per row,
    then :func:`~encanalyze.to_scale_offset`), or,
    for a float element format ``fmt`` (FP8, FP6, FP4), its FP32 amax scale
    (:func:`encanalyze.formats.quantize_scaled` along the row). This is how torchao's dynamic
    activation configurations and LLM runtimes quantize a linear layer's input: no calibrated
    range, one scale per token. Computes in float32; returns the input's dtype.
    """

    def __init__(self, num_steps: int = 255, symmetric: bool = True, fmt=None) -> None:
        super().__init__()
        self.num_steps, self.symmetric, self.fmt = int(num_steps), bool(symmetric), fmt
        self.tensor = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 0 or x.numel() == 0:
            return x
        rows = x.float().reshape(-1, x.shape[-1])
        if self.fmt is not None:
            out = formats.quantize_scaled(rows, self.fmt, axis=1)
        else:
            # the range of the finite values (and 0, which every grid holds): infinities
            # saturate and NaN stays NaN, as in the FP8 path
            finite = torch.where(torch.isfinite(rows), rows, 0.0)
            analyzer = METHODS["minmax"].analyzer((rows.shape[0], 1))
            lo, hi = analyzer.compute_dynamic_encodings(finite, self.num_steps, self.symmetric)
            scale, offset = to_scale_offset(lo, hi, self.num_steps, self.symmetric)
            out = fake_quant(rows, scale, offset, self.num_steps)
        return out.reshape(x.shape).to(x.dtype)

    def grid(self) -> str:
        if self.fmt is not None:
            return self.fmt.name
        return f"{self.num_steps + 1} levels{', symmetric' if self.symmetric else ''}"

    def extra_repr(self) -> str:
        return f"{self.tensor!r}, per token, {self.grid()}"


def attach_tokens(model: torch.nn.Module, names, make) -> torch.nn.Module:
    """Give each module of ``names`` an ``input_quantizer`` ``make()`` (a per-token one).

    A forward pre-hook runs it, as :func:`attach`'s static input quantizers are run.
    """
    modules = dict(model.named_modules())
    for name in names:
        quantizer = make()
        quantizer.tensor = f"{name}:input"
        modules[name].input_quantizer = quantizer
        modules[name].register_forward_pre_hook(_quantize_input)
    return model


def kind_of(encoding) -> str:
    """Return an encoding's kind: ``"param"`` or ``"activation"`` (block weights: params)."""
    return getattr(encoding, "kind", "param")


def module_of(name: str, encoding) -> tuple[str, str]:
    """Return ``(module name, where)`` of an encoding: ``"input"``, ``"output"`` or ``"weight"``."""
    if kind_of(encoding) == "activation":
        module, _, where = name.rpartition(":")
        return module, where
    return (name[: -len(".weight")] if name != "weight" else ""), "weight"


def _quantize_input(module: torch.nn.Module, args: tuple):
    i = next((k for k, a in enumerate(args) if isinstance(a, torch.Tensor)), None)
    if i is None or getattr(args[i], _ON_GRID, False):
        return None
    return (*args[:i], module.input_quantizer(args[i]), *args[i + 1 :])


def _quantize_output(module: torch.nn.Module, args: tuple, out):
    if not isinstance(out, torch.Tensor):
        return None
    q = module.output_quantizer(out)
    setattr(q, _ON_GRID, True)
    return q


def attach(model: torch.nn.Module, result) -> torch.nn.Module:
    """Make ``model`` (the caller's own copy) run ``result``'s quantize-dequantize; return it.

    ``result``: a :class:`~encanalyze.torch.CalibrationResult` (integer grids), a
    :class:`~encanalyze.onnx.Float8Calibration` (float formats) or a
    :class:`~encanalyze.onnx.BlockCalibration` (MX, NVFP4 weights), keyed by the model's
    tensor names. Each weight with an encoding is replaced by its quantize-dequantized values;
    each module with an activation encoding gets an ``input_quantizer`` / ``output_quantizer``
    run by a forward (pre-)hook. A layer's input that is the quantized output of the layer
    before it is quantized once (by that output's quantizer).
    """
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, e in result.encodings.items():
            module_name, where = module_of(name, e)
            module = modules[module_name]
            if isinstance(result, BlockCalibration):
                values = dequantized(e, result.method, result.block_size)
                module.weight.copy_(torch.as_tensor(values).to(module.weight))
                continue
            quantizer = _quantizer(result, e).to(_device_of(module))
            if where == "weight":
                module.weight.copy_(quantizer(module.weight))
            elif where == "input":
                module.input_quantizer = quantizer
                module.register_forward_pre_hook(_quantize_input)
            else:
                module.output_quantizer = quantizer
                module.register_forward_hook(_quantize_output)
    return model


def _quantizer(result, encoding) -> torch.nn.Module:
    if isinstance(result, Float8Calibration):
        return FloatQuantizer(encoding, result.fmt)
    return Quantizer(encoding, 2**result.bits - 1)


def _device_of(module: torch.nn.Module) -> torch.device:
    first = next(iter(module.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def reencode(model: torch.nn.Module, result) -> None:
    """Give ``model``'s activation quantizers (:func:`attach`'s) ``result``'s encodings."""
    modules = dict(model.named_modules())
    for name, e in result.encodings.items():
        module_name, where = module_of(name, e)
        if where != "weight":
            getattr(modules[module_name], f"{where}_quantizer").set_encoding(e)
