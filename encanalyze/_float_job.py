"""The command's float and block number formats: each tensor's scales by every method.

``encanalyze calibrate --number-format NAME`` calibrates with :mod:`encanalyze.formats`
instead of integer grids: FP8 / FP6 / FP4 elements with an FP32 scale per tensor, channel or
block (methods minmax, percentile, mse, sqnr from one histogram per encoding), OCP MX blocks
of 32 (minmax: the references' floor exponent; mse: the least-error exponent) and NVFP4
(blocks of 16, two-level scaling; minmax: amax block scales, mse: the least-error ones).
Each method's SQNR is measured by quantize-dequantize of the tensor on the format's real grid.
The FP8 model job (``--data``) is :func:`calibrate_model_float`.
"""

from __future__ import annotations

import time

import numpy as np

from . import formats
from ._backends import to_numpy
from ._command_io import cell, config_of, db, note, number, selected, strict_json, write_json
from ._registry import ACTIVATION_PERCENTILE
from ._report import Layout, layout_for, sqnr_db, sqnr_rank
from ._rules.percentile import PercentileEncodingAnalyzer
from ._shapes import plan, to_rows
from ._xp import namespace_of

__all__ = [
    "NUMBER_FORMATS",
    "calibrate_float",
    "calibrate_model_float",
    "check_model_number_format",
    "check_number_format",
    "encodings_file",
    "plot_weights",
    "scaled_json",
]

NUMBER_FORMATS = {
    "int": None,
    "float8_e4m3fn": ("scaled", formats.E4M3FN),
    "float8_e5m2": ("scaled", formats.E5M2),
    "float6_e3m2": ("scaled", formats.E3M2),
    "float6_e2m3": ("scaled", formats.E2M3),
    "float4_e2m1": ("scaled", formats.E2M1),
    "mxfp8_e4m3": ("mx", formats.E4M3FN),
    "mxfp8_e5m2": ("mx", formats.E5M2),
    "mxfp6_e3m2": ("mx", formats.E3M2),
    "mxfp6_e2m3": ("mx", formats.E2M3),
    "mxfp4": ("mx", formats.E2M1),
    "mxint8": ("mx", formats.INT8),
    "nvfp4": ("nvfp4", formats.E2M1),
}
"""``--number-format`` choices: ``(scheme, element format)``; ``int`` is the integer grids."""

SCHEME_METHODS = {
    "scaled": formats.FLOAT_METHODS,
    "mx": ("minmax", "mse"),
    "nvfp4": ("minmax", "mse"),
}
"""The methods each scheme has (MX: the floor exponent or the least-error one; NVFP4: the amax
block scale or the least-error E4M3 neighbour)."""

ONNX_FLOAT8 = {"float8_e4m3fn": "FLOAT8E4M3FN", "float8_e5m2": "FLOAT8E5M2"}
"""Number formats ONNX's QuantizeLinear has as an output type (opset 19)."""


def check_number_format(args) -> str | None:
    """Return the reason ``args`` do not fit ``--number-format`` (``None`` when they do)."""
    spec = NUMBER_FORMATS[args.number_format]
    if spec is None:
        return None
    scheme, _ = spec
    if args.bits != 8:
        return (
            f"--bits sets the integer grids; --number-format {args.number_format} has its own "
            "element format"
        )
    if scheme != "scaled":
        tuned = (args.num_bins, args.percentile, args.gamma) != (2048, ACTIVATION_PERCENTILE, 3.0)
        if tuned:
            return (
                f"--num-bins/--percentile/--gamma: the {args.number_format} methods (minmax, mse) "
                "work on each block's own values, with no histogram"
            )
    if args.method not in ("all", "auto", *SCHEME_METHODS[scheme]):
        return (
            f"--method {args.method} has no {args.number_format} version (its methods: "
            f"{', '.join(SCHEME_METHODS[scheme])}, all)"
        )
    if scheme != "scaled" and (args.per_channel is not None or args.block_size is not None):
        size = formats.MX_BLOCK if scheme == "mx" else formats.NVFP4_BLOCK
        return (
            f"--number-format {args.number_format} has its own layout (blocks of {size} along "
            "--block-axis); drop --per-channel/--block-size"
        )
    if args.output_format == "aimet":
        return (
            "--output-format aimet: AIMET's encodings (1.0.0, 2.0.0) have no field for float or "
            "block scales; use --output-format encanalyze (or onnx-qdq for FP8)"
        )
    if args.output_format == "onnx-qdq" and args.number_format not in ONNX_FLOAT8:
        return f"--output-format onnx-qdq: ONNX has no {args.number_format} QuantizeLinear"
    return None


def calibrate_float(name: str, array: np.ndarray, args, convert) -> dict:
    """Calibrate one tensor in ``args.number_format`` with each method; return its entry.

    The entry has the integer job's keys (``methods`` with ``min``/``max`` = ``-+amax``, the
    range the grid spans, ``scale``, ``offset`` 0, ``clipped_fraction``, ``sqnr_db``) plus
    ``number_format``; ``_export`` holds what the encodings file needs.
    """
    scheme, fmt = NUMBER_FORMATS[args.number_format]
    methods = SCHEME_METHODS[scheme]
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
    """MX or NVFP4 blocks along ``--block-axis`` (the only axis of a 1-D tensor)."""
    xp = namespace_of(x)
    axis = 0 if x.ndim == 1 else args.block_axis
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"has no block axis {axis} (shape {tuple(x.shape)})")
    axis %= x.ndim
    size = formats.MX_BLOCK if scheme == "mx" else formats.NVFP4_BLOCK
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
        if scheme == "mx":
            mode = "floor" if method == "minmax" else "mse"
            elements, exps = formats.mx_quantize(moved, fmt, mode=mode)
            q = formats.mx_dequantize(elements, exps)
            e = to_numpy(exps).reshape(-1)
            scale = np.where(e == 255, np.nan, np.ldexp(1.0, e - 127)).astype(np.float32)
            export = formats.to_json("mx", exps, fmt, block_axis=axis)
        else:
            ts = formats.nvfp4_tensor_scale(moved)
            mode = "amax" if method == "minmax" else "mse"
            elements, block_scales = formats.nvfp4_quantize(moved, ts, mode=mode)
            q = formats.nvfp4_dequantize(elements, block_scales, ts)
            scale = to_numpy(block_scales).reshape(-1) * np.float32(to_numpy(ts))
            export = formats.to_json("nvfp4", block_scales, tensor_scale=ts, block_axis=axis)
        found[method] = (scale, rows, xp.reshape(q, (-1, size)), export)
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
                "zero_point_dtype": ONNX_FLOAT8[number_format],
                "axis": layout.axis,
            }
        return {"version": 1, "tensors": out}
    tensors = {e["name"]: e["methods"][e["best"]]["_export"] for e in entries}
    return {
        "format_version": formats.JSON_VERSION,
        "number_format": number_format,
        "tensors": tensors,
    }


def check_model_number_format(args) -> str | None:
    """Return the reason ``args`` do not fit the FP8 or block model job (``None`` when they do)."""
    scheme = NUMBER_FORMATS[args.number_format][0]
    if scheme == "scaled" and args.number_format not in ONNX_FLOAT8:
        return (
            f"--data with --number-format {args.number_format}: ONNX QDQ models take "
            f"{' or '.join(ONNX_FLOAT8)}, the MX and NVFP4 block formats (weights) or int"
        )
    if scheme != "scaled":
        if args.activation_method != "auto":
            return (
                f"--activation-method with --number-format {args.number_format}: its "
                "activations stay in floating point (quantized block by block at run time)"
            )
        if args.per_tensor_weights:
            return f"--per-tensor-weights: {args.number_format} weights are in blocks"
        if args.block_axis != 1:
            return "--block-axis with --data: each weight's blocks run along its reduction axis"
    elif args.activation_method not in ("auto", *formats.FLOAT_METHODS):
        return f"--activation-method {args.activation_method} has no {args.number_format} version"
    if args.per_channel is not None:
        return "--per-channel with --number-format: no float format has per-channel activations"
    if args.weight_grid != "symmetric" or args.symmetric:
        return "float grids are symmetric: drop --weight-grid/--symmetric"
    return None


def calibrate_model_float(args) -> int:
    """Run the model job in FP8: weights and activations, the activations' method by the output.

    Weights keep their best-SQNR method (``--method``: one for all); activations are scored by
    the FP8 QDQ model's output SQNR on the held-out batches (``--activation-method``: one).
    """
    from . import _model_command, cli
    from ._calibration import Progress
    from .onnx._calibrate import quantizable_weights
    from .onnx._float8 import (
        FLOAT8_SESSION,
        calibrate_float8,
        choose_float8_activations,
        save_model,
    )
    from .onnx._qdq import output_sqnr, publish, staging

    started = time.perf_counter()
    model, calib, held, judged, more, notes = _model_command.job_data(args)
    judged = list(judged)
    statistics = {} if args.report is not None else None
    fmt = NUMBER_FORMATS[args.number_format][1]
    weight_methods = formats.FLOAT_METHODS if args.method in ("all", "auto") else (args.method,)
    act_methods = (
        formats.FLOAT_METHODS if args.activation_method == "auto" else (args.activation_method,)
    )
    total = len(quantizable_weights(model)) + len(calib) + len(act_methods)
    with Progress(total) as progress:
        result = calibrate_float8(
            model,
            calib,
            fmt,
            methods=tuple(dict.fromkeys((*act_methods, *weight_methods))),
            per_channel_weights=not args.per_tensor_weights,
            num_bins=args.num_bins,
            percentile=args.percentile,
            gamma=args.gamma,
            tensors=lambda name: selected(name, args),
            progress=progress,
            statistics=statistics,
        )
        result = _weights_by(result, weight_methods)
        if not result.encodings:
            raise cli.JobError("no tensor of the model could be calibrated")
        progress.stage("choosing the activations' method")
        method, scores, qdq = choose_float8_activations(model, result, judged, act_methods)
        progress.advance(len(act_methods))
        result = result.with_activations(method)
    for message in notes + more:
        note(message)
    for name, reason in result.unquantized.items():
        note(f"{name} left in floating point: {reason}")
    measured_on = "held-out" if len(held) else "calibration"
    rows = [_model_row(e) for e in result.encodings.values()]
    on_calib = None
    if args.qdq_model is not None and len(held):
        on_calib = output_sqnr(model, qdq, list(calib), None, FLOAT8_SESSION)
    if args.format == "json":
        report = {
            "config": config_of(args),
            "number_format": args.number_format,
            "activations": {"method": method, "measured_on": measured_on, "output_sqnr_db": scores},
            "tensors": rows,
            "unquantized": [{"name": n, "reason": r} for n, r in result.unquantized.items()],
            "calibration_output_sqnr_db": on_calib,
        }
        print(strict_json(report))
    else:
        print(_model_table(rows))
        shown = ", ".join(f"{m} {np.mean(list(v.values())):.2f} dB" for m, v in scores.items())
        print(
            f"activations: {method}, by the FP8 QDQ model's output SQNR on the {measured_on} "
            f"data ({shown})"
        )
    if args.output is not None:
        entries = []
        for e in result.encodings.values():
            layout = layout_for(_shape(e), e.axis)
            r = {"scale": e.scale.astype(float).tolist()}
            r["_export"] = scaled_json(fmt, layout, e.scale)
            entries.append({"name": e.name, "_layout": layout, "best": e.method})
            entries[-1]["methods"] = {e.method: r}
        write_json(args.output, encodings_file(entries, args.number_format, args.output_format))
    if args.plot is not None:
        plot_weights(args.plot, model, result.fmt, {
            e.name: ({m: (s, e.sqnr_db[m]) for m, s in e.scales.items()}, e.method)
            for e in result.encodings.values() if e.kind == "param"
        })  # fmt: skip
    if args.report is not None:
        seconds = time.perf_counter() - started
        data = (calib, judged, measured_on, statistics)
        _float8_report(args, model, result, data, scores, seconds)
        note(f"report: {args.report} ({time.perf_counter() - started:.1f} s in all)")
    if args.qdq_model is not None:
        target = cli.check_output(args.qdq_model)
        with staging(target) as folder:
            staged = folder / target.name
            save_model(qdq, staged)
            publish(staged, target)
    return 0


def plot_weights(directory, model, fmt, weights: dict) -> None:
    """Draw each weight's histogram with every method's range (``--plot``) for a model job.

    ``weights``: ``{name: ({method: (scales, SQNR dB)}, chosen method)}``; a method's range is
    ``+-`` its scales times the format's largest value.
    """
    from . import cli
    from ._onnx_graph import float_weights

    values = float_weights(model)
    entries = []
    for name, (by_method, best) in weights.items():
        methods = {}
        for m, (scales, sqnr) in by_method.items():
            amax = (np.asarray(scales, np.float64).reshape(-1) * fmt.max).tolist()
            methods[m] = {"min": [-a for a in amax], "max": amax, "sqnr_db": sqnr}
        shape = list(np.shape(values[name]))
        entries.append({"name": name, "shape": shape, "methods": methods, "best": best})
    cli._plot(entries, values, directory)


def _float8_report(args, model, result, data, scores: dict, seconds: float) -> None:
    """Write the FP8 model job's report (:func:`encanalyze.onnx._report.model_report`).

    Every method's scales per tensor, the sensitivity of the FP8 QDQ model's layers, its
    output by activation method and ONNX Runtime's FP8 model's. ``data``: the calibration
    batches, the judged ones, what they are and the activations' statistics.
    """
    from ._files import printable
    from ._html_report import write_report
    from .onnx._report import model_report

    calib, judged, measured_on, statistics = data
    comparison = [
        {
            "label": f"encanalyze {args.number_format}, activations {m} (QDQ model)",
            "output_sqnr_db": float(np.mean(list(v.values()))) if v else None,
            "measured_on": measured_on,
        }
        for m, v in scores.items()
    ]
    acts = [e.method for e in result.encodings.values() if e.kind == "activation"]
    summary = {
        "job": "ONNX model, FP8",
        "model": printable(str(args.files[0])),
        "data": printable(str(args.data)),
        "batches": f"{len(calib)} calibration, {len(judged)} judged ({measured_on})",
        "number format": args.number_format,
        "weights' methods": args.method,
        "activations' methods": args.activation_method,
        "chosen": (f"activations {acts[0]}" if acts else "no activations")
        + ", weights: each its best SQNR",
        "calibration took": f"{seconds:.1f} s",
    }
    report = model_report(
        model, result, list(calib), judged, statistics=statistics, summary=summary,
        comparison=comparison, measured_on=measured_on,
    )  # fmt: skip
    write_report(args.report, report)


def _weights_by(result, methods):
    """Return ``result`` with each weight on its best-SQNR method among ``methods``."""
    import dataclasses

    encodings = {}
    for name, e in result.encodings.items():
        if e.kind == "param":
            best = max(methods, key=lambda m: (e.sqnr_db[m], -methods.index(m)))
            e = dataclasses.replace(e, method=best)
        encodings[name] = e
    return dataclasses.replace(result, encodings=encodings)


def _shape(e) -> tuple[int, ...]:
    return (1,) if e.axis is None else (*([1] * e.axis), e.scale.size)


def _model_row(e) -> dict:
    return {
        "name": e.name,
        "kind": e.kind,
        "axis": e.axis,
        "method": e.method,
        "scale": e.scale.astype(float).tolist(),
        "sqnr_db": None if e.sqnr_db is None else e.sqnr_db[e.method],
    }


def _model_table(rows: list[dict]) -> str:
    width = min(60, max([6, *(len(r["name"]) for r in rows)]))
    head = (
        f"{'tensor':<{width + 1}}{'kind':<11}{'method':<11}{'scale':>11}{'scales':>8}{'SQNR dB':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        n = len(r["scale"])
        lines.append(
            f"{cell(r['name'], width)} {r['kind']:<11}{r['method']:<11}"
            f"{number(float(np.median(r['scale'])))}{n:>8}{db(r['sqnr_db'])}"
        )
    lines.append("scale: the median of a tensor's scales; SQNR: a weight's own quantize-dequantize")
    return "\n".join(lines)
