"""The tensor job in float and block number formats: each tensor's scales by every method.

``encanalyze calibrate --number-format NAME`` calibrates with :mod:`encanalyze.formats`
instead of integer grids: FP8 / FP6 / FP4 elements with an FP32 scale per tensor, channel or
block (methods minmax, percentile, mse, sqnr from one histogram per encoding), OCP MX blocks
of 32 (minmax: the references' floor exponent; mse: the least-error exponent) and NVFP4
(blocks of 16, two-level scaling; minmax: amax block scales, mse: the least-error ones).
Each method's SQNR is measured by quantize-dequantize of the tensor on the format's real grid.
"""

from __future__ import annotations

import numpy as np

from .. import formats
from .._backends import to_numpy
from .._report import Layout, layout_for, sqnr_db, sqnr_rank
from .._rules.percentile import PercentileEncodingAnalyzer
from .._shapes import plan, to_rows
from .._xp import namespace_of

__all__ = ["calibrate_float", "encodings_file", "scaled_json"]


def calibrate_float(name: str, array: np.ndarray, args, convert) -> dict:
    """Calibrate one tensor in ``args.number_format`` with each method; return its entry.

    The entry has the integer job's keys (``methods`` with ``min``/``max`` = ``-+amax``, the
    range the grid spans, ``scale``, ``offset`` 0, ``clipped_fraction``, ``sqnr_db``) plus
    ``number_format``; ``_export`` holds what the encodings file needs.
    """
    spec = formats.NUMBER_FORMATS[args.number_format]
    scheme, fmt, methods = spec.scheme, spec.element, spec.methods
    if args.method not in ("all", "auto"):
        methods = (args.method,)
    x = convert(array)
    if scheme == "scaled":
        layout, found = _scaled(x, fmt, array.shape, methods, args)
    else:
        layout, found = _blocked(x, fmt, scheme, methods, args)
    results = {}
    for method, (scale, rows, q, export) in found.items():
        clipped, sqnr = _quality(rows, q, scale, fmt)
        amax = [float(v) * fmt.max for v in scale]
        results[method] = {
            "min": [-v for v in amax],
            "max": amax,
            "scale": [float(v) for v in scale],
            "offset": [0] * len(amax),
            "clipped_fraction": clipped,
            "sqnr_db": sqnr,
            "_export": export,
        }
    best = max(results, key=lambda m: sqnr_rank(results[m]["sqnr_db"]))
    return {
        "name": name,
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "number_format": args.number_format,
        "encoding_shape": list(layout.shape),
        "enc_type": layout.enc_type,
        "nan_values": int(np.isnan(array).sum()),
        "methods": results,
        "best": best,
        "_layout": layout,
        "_notes": [],
    }


HISTOGRAM_BYTES = 1 << 26
"""The most bytes the histograms of one piece of a tensor's encodings take (64 MiB)."""


def _scaled(x, fmt, shape: tuple[int, ...], methods, args) -> tuple[Layout, dict]:
    """FP32 scales of one histogram per encoding: ``{method: (scales, rows, qdq rows, json)}``.

    The encodings are histogrammed a piece of rows at a time, so that the histograms stay
    within :data:`HISTOGRAM_BYTES` (an LLM weight in blocks of 128 has a million encodings).
    """
    xp = namespace_of(x)
    layout = layout_for(shape, args.per_channel, args.block_size, args.block_axis)
    rows = to_rows(xp, x, plan(tuple(shape), layout.shape, layout.block_size))
    step = max(1, HISTOGRAM_BYTES // (8 * (args.num_bins + 1)))
    pieces = {m: [] for m in methods}
    for start in range(0, rows.shape[0], step):
        part = rows[start : start + step]
        if set(methods) - {"minmax"}:
            analyzer = PercentileEncodingAnalyzer((part.shape[0], 1), args.num_bins)
            stats = analyzer.update_stats(part)
        for method in methods:
            if method == "minmax":  # the exact range (the histogram's edges may round it)
                scale = formats.amax_scale(part, fmt, axis=1)
            else:
                scale = formats.compute_scale(
                    stats, fmt, method, percentile=args.percentile, gamma=args.gamma
                )
                if method in formats.SEARCH_METHODS:  # never worse than amax on the values
                    scale = formats.no_worse_than_amax(part, fmt, scale, axis=1)
            pieces[method].append(xp.reshape(scale, (-1, 1)))
    found = {}
    for method in methods:
        scale = xp.concat(pieces[method], axis=0)
        q = formats.quantize_scaled(rows, fmt, scale=scale)
        values = to_numpy(scale).reshape(-1)
        found[method] = (values, rows, q, scaled_json(fmt, layout, values))
    return layout, found


def scaled_json(fmt, layout: Layout, scales: np.ndarray) -> dict:
    """Return the ``scaled`` scheme's JSON for FP32 ``scales`` of ``layout`` (encodings file)."""
    return {
        "format_version": formats.JSON_VERSION,
        "scheme": "scaled",
        "element_format": fmt.name,
        "scale_format": "float32",
        "enc_type": layout.enc_type,
        "axis": layout.axis,
        "block_axis": layout.block_axis,
        "block_size": layout.block,
        "scales": np.asarray(scales, np.float32).reshape(layout.shape).astype(float).tolist(),
    }


def _blocked(x, fmt, scheme: str, methods, args) -> tuple[Layout, dict]:
    """MX, NVFP4 or INT4-group blocks along ``--block-axis`` (the only axis of a 1-D tensor)."""
    xp = namespace_of(x)
    axis = 0 if x.ndim == 1 else args.block_axis
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"has no block axis {axis} (shape {tuple(x.shape)})")
    axis %= x.ndim
    size = formats.BLOCK_SIZES[scheme]
    if x.shape[axis] % size:
        raise ValueError(
            f"axis {axis} of length {x.shape[axis]} does not split into blocks of {size}"
        )
    moved = xp.moveaxis(x, axis, -1)
    enc_shape = list(x.shape)
    enc_shape[axis] //= size
    layout = Layout(tuple(enc_shape), None, "PER_BLOCK", None, size, axis)
    rows = xp.reshape(xp.astype(moved, xp.float32), (-1, size))
    found = {}
    for method in methods:
        enc = formats.block_encode(moved, scheme, fmt, method, block_axis=axis)
        scale = to_numpy(enc.scales).reshape(-1).astype(np.float32)
        found[method] = (scale, rows, xp.reshape(enc.dequantized, (-1, size)), enc.export)
    return layout, found


def _quality(rows, q, scale: np.ndarray, fmt) -> tuple[float, float]:
    """Return ``(clipped fraction, SQNR dB)`` of ``q`` against ``rows`` (finite values only).

    A value is clipped where ``|x| / scale`` (in float32, as quantization divides) is beyond
    the rounding interval of the format's largest value (half its spacing above it).
    """
    r32 = to_numpy(rows).astype(np.float32)
    finite = np.isfinite(r32)
    s = np.asarray(scale, dtype=np.float32).reshape(-1, 1)
    values = fmt.values()
    limit = values[-1] + (values[-1] - values[-2]) / 2
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        clipped = int(np.count_nonzero((np.abs(r32 / s) > limit) & finite))
    r = np.where(finite, r32.astype(np.float64), 0.0)
    d = np.where(finite, to_numpy(q).astype(np.float64), 0.0)
    count = int(np.count_nonzero(finite))
    signal, noise = float(np.sum(r * r)), float(np.sum((r - d) ** 2))
    return (clipped / count if count else 0.0), sqnr_db(signal, noise)


def encodings_file(entries: list[dict], number_format: str, output_format: str) -> dict:
    """Return the ``--output`` content: the best method's encodings of each tensor.

    ``encanalyze``: :func:`encanalyze.formats.to_json`'s layout per tensor; ``onnx-qdq`` (FP8):
    QuantizeLinear's ``scale`` and a zero ``zero_point`` of the FLOAT8 type, per tensor or axis.
    """
    if output_format == "onnx-qdq":
        out = {}
        for e in entries:
            layout, r = e["_layout"], e["methods"][e["best"]]
            if layout.enc_type == "PER_BLOCK":
                raise ValueError(f"{e['name']}: ONNX QDQ export of FP8 blocks is not supported")
            out[e["name"]] = {
                "scale": r["scale"],
                "zero_point": [0.0] * len(r["scale"]),
                "zero_point_dtype": formats.NUMBER_FORMATS[number_format].onnx_type,
                "axis": layout.axis,
            }
        return {"version": 1, "tensors": out}
    tensors = {e["name"]: e["methods"][e["best"]]["_export"] for e in entries}
    return {
        "format_version": formats.JSON_VERSION,
        "number_format": number_format,
        "tensors": tensors,
    }
