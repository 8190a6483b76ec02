"""torchao's MX and NVFP4 tensors from :mod:`encanalyze.formats` results (needs torchao)."""

from __future__ import annotations

import torch

from .. import formats
from .._backends import to_torch

__all__ = ["to_mx_tensor", "to_nvfp4_tensor"]


TORCHAO_ELEMENTS = (formats.E4M3FN, formats.E5M2, formats.E3M2, formats.E2M3, formats.E2M1)
"""The element formats torchao's ``MXTensor`` holds (MXINT8 has none)."""


def _elem_dtype(fmt: formats.FloatFormat):
    from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2

    return {
        formats.E4M3FN: torch.float8_e4m3fn,
        formats.E5M2: torch.float8_e5m2,
        formats.E3M2: DTYPE_FP6_E3M2,
        formats.E2M3: DTYPE_FP6_E2M3,
        formats.E2M1: torch.float4_e2m1fn_x2,
    }[fmt]


def _codes(values: torch.Tensor, fmt: formats.FloatFormat) -> torch.Tensor:
    """Return the element codes torchao keeps for ``fmt`` values (exact: they are its values)."""
    from torchao.prototype.mx_formats import kernels

    if fmt in (formats.E4M3FN, formats.E5M2):
        return values.to(_elem_dtype(fmt))
    if fmt is formats.E2M1:
        return kernels.pack_uint4(kernels.f32_to_f4_unpacked(values))
    convert = {
        formats.E3M2: kernels.f32_to_f6_e3m2_unpacked,
        formats.E2M3: kernels.f32_to_f6_e2m3_unpacked,
    }[fmt]
    return convert(values)


def to_mx_tensor(elements, exponents, fmt: formats.FloatFormat, block_size: int = 32):
    """Return torchao's ``MXTensor`` holding :func:`encanalyze.formats.mx_quantize`'s result.

    ``elements`` (``fmt`` values) and ``exponents`` (biased E8M0) of any namespace; the tensor
    dequantizes to :func:`~encanalyze.formats.mx_dequantize`'s values.
    """
    from torchao.prototype.mx_formats.mx_tensor import MXTensor
    from torchao.quantization.quantize_.common import KernelPreference

    if fmt not in TORCHAO_ELEMENTS:
        names = ", ".join(f.name for f in TORCHAO_ELEMENTS)
        raise ValueError(f"torchao's MXTensor holds {names} elements, not {fmt!r}")
    values = to_torch(elements).to(torch.float32).contiguous()
    blocks = (*values.shape[:-1], values.shape[-1] // block_size) if values.ndim else ()
    exponents = to_torch(formats.check_scales("exponents", exponents, blocks))
    scale = exponents.to(torch.uint8).view(torch.float8_e8m0fnu).contiguous()
    return MXTensor(
        _codes(values, fmt),
        scale,
        _elem_dtype(fmt),
        block_size,
        torch.float32,
        KernelPreference.EMULATED,
        None,
        False,
    )


def to_nvfp4_tensor(elements, block_scales, tensor_scale=None):
    """Return torchao's ``NVFP4Tensor`` holding :func:`encanalyze.formats.nvfp4_quantize`'s result.

    ``elements`` (E2M1 values), ``block_scales`` (E4M3 values) and the optional FP32
    ``tensor_scale``; it dequantizes to :func:`~encanalyze.formats.nvfp4_dequantize`'s values.
    """
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor

    values = to_torch(elements).to(torch.float32).contiguous()
    scales = to_torch(block_scales).to(torch.float32).to(torch.float8_e4m3fn).contiguous()
    ts = None if tensor_scale is None else to_torch(tensor_scale).to(torch.float32).reshape(())
    return NVFP4Tensor(_codes(values, formats.E2M1), scales, 16, torch.float32, ts)
