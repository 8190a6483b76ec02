"""What the command reports: encoding layouts, quantization quality, and encodings files.

The layout helpers turn a tensor shape and the command's options into an analyzer's ``shape``
and ``block_size``; :func:`quantization_quality` measures an encoding on the tensor itself;
:func:`aimet_encodings` and :func:`onnx_qdq_encodings` build the exported files' content.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._backends import clip, to_numpy
from ._histograms import wide_dtype
from ._shapes import Plan, to_rows
from ._xp import Array, Namespace, device_of

__all__ = [
    "Layout",
    "aimet_encodings",
    "encoding_lists",
    "layout_for",
    "onnx_qdq_encodings",
    "quantization_quality",
    "sqnr_db",
    "sqnr_rank",
]


@dataclass(frozen=True)
class Layout:
    """An encoding layout for one tensor: analyzer ``shape``/``block_size`` and its kind."""

    shape: tuple[int, ...]
    block_size: tuple[int, ...] | None
    enc_type: str  # PER_TENSOR, PER_CHANNEL or PER_BLOCK
    axis: int | None = None
    block: int | None = None
    block_axis: int | None = None


def layout_for(
    tensor_shape: tuple[int, ...],
    per_channel: int | None,
    block_size: int | None = None,
    block_axis: int = 1,
) -> Layout:
    """Return the layout for a tensor; ``ValueError`` (a reason to skip it) where none fits.

    ``per_channel`` is the channel axis (negative counts from the end) or ``None`` for one
    encoding per tensor; ``block_size`` splits ``block_axis`` into blocks of that many values,
    one encoding per (channel, block).
    """
    ndim = len(tensor_shape)
    if per_channel is None:
        if block_size is not None:
            raise ValueError("blocks need a channel axis: block_size needs per_channel")
        return Layout((1,), None, "PER_TENSOR")
    if not -ndim <= per_channel < ndim:
        raise ValueError(f"has no axis {per_channel} (shape {tuple(tensor_shape)})")
    axis = per_channel % ndim
    shape = [1] * ndim
    shape[axis] = tensor_shape[axis]
    if block_size is None:
        return Layout(tuple(shape), None, "PER_CHANNEL", axis=axis)
    if not -ndim <= block_axis < ndim or block_axis % ndim == axis:
        raise ValueError(f"has no block axis {block_axis} apart from channel axis {axis}")
    baxis = block_axis % ndim
    if tensor_shape[baxis] % block_size:
        raise ValueError(
            f"axis {baxis} of length {tensor_shape[baxis]} does not split into blocks of "
            f"{block_size}"
        )
    shape[baxis] = tensor_shape[baxis] // block_size
    blocks = tuple(block_size if i == baxis else (1 if i == axis else -1) for i in range(ndim))
    return Layout(tuple(shape), blocks, "PER_BLOCK", axis, block_size, baxis)


QUALITY_CHUNK = 1 << 20
"""Values per chunk of the quality measurement (its float64 temporaries stay this small)."""


def quantization_quality(
    xp: Namespace, x: Array, p: Plan, scale: Array, offset: Array, num_steps: int
) -> tuple[float, float]:
    """Return ``(clipped fraction, SQNR in dB)`` of quantize-dequantize of ``x`` itself.

    ``q = round(x / scale) - offset`` is clipped to ``[0, n]`` and ``x_hat = (q + offset) *
    scale``; SQNR is ``10 log10(sum(x**2) / sum((x - x_hat)**2))`` (inf for an exact grid).
    Non-finite values are left out. Arithmetic in float64 where the device has it, on chunks
    of :data:`QUALITY_CHUNK` values, so that memory does not grow with the tensor.
    """
    wd = wide_dtype(xp, device_of(x))
    rows = to_rows(xp, x, p)
    s = xp.reshape(xp.astype(scale, wd), (-1, 1))
    o = xp.reshape(xp.astype(offset, wd), (-1, 1))
    step = max(1, QUALITY_CHUNK // max(1, rows.shape[0]))  # bounded float64 temporaries
    signal = noise = 0.0
    count = num_clipped = 0
    num_values = rows.shape[1]
    for start in range(0, max(num_values, 1), step):
        chunk = xp.astype(rows[:, start : min(start + step, num_values)], wd)
        finite = xp.isfinite(chunk)
        chunk = xp.where(finite, chunk, 0.0)
        q = xp.round(chunk / s) - o
        num_clipped += int(xp.count_nonzero(((q < 0) | (q > num_steps)) & finite))
        err = xp.where(finite, chunk - (clip(xp, q, 0.0, float(num_steps)) + o) * s, 0.0)
        signal += float(xp.sum(chunk * chunk))
        noise += float(xp.sum(err * err))
        count += int(xp.count_nonzero(finite))
    fraction = num_clipped / count if count else 0.0
    return fraction, sqnr_db(signal, noise)


def sqnr_db(signal: float, noise: float) -> float:
    """Return ``10 log10(signal / noise)``: ``inf`` without noise, ``-inf`` without signal."""
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def sqnr_rank(sqnr: float | None) -> float:
    """Return an SQNR as a sort key where ``None`` and NaN never win."""
    return -math.inf if sqnr is None or math.isnan(sqnr) else sqnr


def encoding_lists(lo: Array, hi: Array, scale: Array, offset: Array) -> dict:
    """Return an encoding as flat JSON-ready lists: ``min``, ``max``, ``scale``, ``offset``."""

    def flat(a: Array, kind: type) -> list:
        return to_numpy(a).reshape(-1).astype(kind).tolist()

    return {
        "min": flat(lo, float),
        "max": flat(hi, float),
        "scale": flat(scale, float),
        "offset": flat(offset, int),
    }


def aimet_encodings(entries: list[dict], bits: int, symmetric: bool) -> dict:
    """Return the AIMET 1.0.0 encodings layout for ``entries`` (name, scale, offset, layout).

    Entries with ``kind == "activation"`` go to ``activation_encodings``, the others to
    ``param_encodings``; an entry's own ``symmetric`` overrides ``symmetric``.
    """
    params, activations = [], []
    for e in entries:
        layout: Layout = e["layout"]
        item = {
            "name": e["name"],
            "dtype": "INT",
            "bw": bits,
            "is_sym": bool(e.get("symmetric", symmetric)),
            "scale": [float(v) for v in e["scale"]],
            "offset": [int(v) for v in e["offset"]],
            "enc_type": layout.enc_type,
        }
        if layout.enc_type == "PER_BLOCK":
            item["block_size"] = layout.block
        (activations if e.get("kind") == "activation" else params).append(item)
    return {"version": "1.0.0", "activation_encodings": activations, "param_encodings": params}


def onnx_qdq_encodings(entries: list[dict], bits: int, symmetric: bool) -> dict:
    """Return ``scale``/``zero_point`` per tensor as ONNX QuantizeLinear takes them.

    ``y = saturate(round(x / scale) + zero_point)``: asymmetric grids are unsigned with
    ``zero_point = -offset``; symmetric grids are signed with ``zero_point = -offset -
    2**(bits-1)`` (0). ``axis`` (and ``block_size``) give the per-channel (per-block) axis. An
    entry's own ``symmetric`` overrides ``symmetric``.
    """
    half = 2 ** (bits - 1)
    out = {}
    for e in entries:
        layout: Layout = e["layout"]
        symmetric_e = bool(e.get("symmetric", symmetric))
        shift = half if symmetric_e else 0
        zero_points = [-int(v) - shift for v in e["offset"]]
        item = {
            "scale": [float(v) for v in e["scale"]],
            "zero_point": zero_points,
            "zero_point_dtype": f"{'int' if symmetric_e else 'uint'}{bits}",
            "axis": None if layout.enc_type == "PER_TENSOR" else layout.axis,
        }
        if layout.enc_type == "PER_BLOCK":
            item["axis"], item["block_size"] = layout.block_axis, layout.block
            item["shape"] = list(layout.shape)
        out[e["name"]] = item
    return {"version": 1, "tensors": out}
