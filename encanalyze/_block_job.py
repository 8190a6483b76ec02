"""The model job in MX and NVFP4 (``--number-format mxfp4 ... --data``): weight-only blocks.

Every quantized operator's weight is split into blocks along its reduction axis and quantized
by each block method (:func:`encanalyze.onnx._blocks.calibrate_blocks`); one weight-only QDQ
model per method runs on the held-out batches, and the method whose output is closest to the
float model's is kept (``--method minmax|mse``: that one).
"""

from __future__ import annotations

import time

import numpy as np

from . import formats
from ._command_io import cell, config_of, db, note, selected, strict_json, write_json

__all__ = ["calibrate_model_blocks"]


def calibrate_model_blocks(args) -> int:
    """Run the model job in a block format; return the exit status."""
    from . import _model_command, cli
    from ._calibration import Progress
    from ._float_job import NUMBER_FORMATS
    from .onnx._blocks import BLOCK_METHODS, block_qdq_model, calibrate_blocks
    from .onnx._calibrate import quantizable_weights
    from .onnx._float8 import save_model
    from .onnx._qdq import output_sqnr, publish, staging

    started = time.perf_counter()
    model, calib, held, judged, more, notes = _model_command.job_data(args)
    judged = list(judged)
    scheme, fmt = NUMBER_FORMATS[args.number_format]
    methods = BLOCK_METHODS if args.method in ("all", "auto") else (args.method,)
    with Progress(len(quantizable_weights(model)) + len(methods)) as progress:
        result = calibrate_blocks(
            model, scheme, fmt, methods=methods, tensors=lambda n: selected(n, args),
            progress=progress,
        )  # fmt: skip
        if not result.weights:
            raise cli.JobError("no weight of the model could be put in blocks: nothing to quantize")
        scores, models = {}, {}
        for method in methods:
            progress.stage(f"the {method} model's output")
            models[method] = block_qdq_model(model, result, method)
            scores[method] = output_sqnr(model, models[method], judged)
            progress.advance()
    for message in notes + more:
        note(message)
    for name, reason in result.unquantized.items():
        note(f"{name} left in floating point: {reason}")
    mean = {m: float(np.mean(list(v.values()))) if v else -np.inf for m, v in scores.items()}
    method = max(methods, key=lambda m: mean[m])  # the references' minmax first on ties
    result = result.with_method(method)
    measured_on = "held-out" if len(held) else "calibration"
    rows = [
        {
            "name": w.name,
            "shape": list(w.elements[method].shape),
            "block_axis": w.axis,
            "blocks": int(w.scales[method].size),
            "sqnr_db": w.sqnr_db,
        }
        for w in result.weights.values()
    ]
    if args.format == "json":
        on_calib = output_sqnr(model, models[method], list(calib)) if len(held) else None
        report = {
            "config": config_of(args),
            "number_format": args.number_format,
            "weights": {"method": method, "measured_on": measured_on, "output_sqnr_db": scores},
            "tensors": rows,
            "unquantized": [{"name": n, "reason": r} for n, r in result.unquantized.items()],
            "calibration_output_sqnr_db": on_calib,
        }
        print(strict_json(report))
    else:
        print(_table(rows, methods))
        shown = ", ".join(f"{m} {mean[m]:.2f} dB" for m in methods)
        print(
            f"weights: {method}, by the {args.number_format} model's output SQNR on the "
            f"{measured_on} data ({shown}); activations stay in floating point"
        )
    if args.output is not None:
        tensors = {w.name: w.export[method] for w in result.weights.values()}
        content = {
            "format_version": formats.JSON_VERSION,
            "number_format": args.number_format,
            "tensors": tensors,
        }
        write_json(args.output, content)
    if args.plot is not None:
        from ._float_job import plot_weights

        plot_weights(args.plot, model, fmt, {
            w.name: ({m: (w.scales[m], w.sqnr_db[m]) for m in methods}, method)
            for w in result.weights.values()
        })  # fmt: skip
    if args.report is not None:
        seconds = time.perf_counter() - started
        _report(args, model, result, mean, (calib, judged, measured_on), seconds)
    if args.qdq_model is not None:
        target = cli.check_output(args.qdq_model)
        with staging(target) as folder:
            staged = folder / target.name
            save_model(models[method], staged)
            publish(staged, target)
    return 0


def _table(rows: list[dict], methods) -> str:
    width = min(60, max([6, *(len(r["name"]) for r in rows)]))
    head = f"{'weight':<{width + 1}}{'shape':<20}{'axis':>5}{'blocks':>9}"
    head += "".join(f"{m + ' dB':>11}" for m in methods)
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        line = f"{cell(r['name'], width)} {shape:<20}{r['block_axis']:>5}{r['blocks']:>9}"
        lines.append(line + "".join(f"{db(r['sqnr_db'][m]):>11}" for m in methods))
    lines.append("dB: the SQNR of each weight's own quantize-dequantize, by method")
    return "\n".join(lines)


def _report(args, model, result, mean, data, seconds) -> None:
    """Write the report: every weight's blocks by method, the sensitivity, the output by method.

    ``data``: the calibration batches, the judged ones and what they are.
    """
    from ._files import printable
    from ._html_report import write_report
    from .onnx._report import model_report

    calib, judged, measured_on = data
    comparison = [
        {
            "label": f"encanalyze {args.number_format}, weights {m} (QDQ model)",
            "output_sqnr_db": v,
            "measured_on": measured_on,
        }
        for m, v in mean.items()
    ]
    summary = {
        "job": f"ONNX model, {args.number_format} weights (activations in floating point)",
        "model": printable(str(args.files[0])),
        "data": printable(str(args.data)),
        "batches": f"{len(calib)} calibration, {len(judged)} judged ({measured_on})",
        "number format": args.number_format,
        "methods": ", ".join(mean),
        "chosen": f"weights {result.method}, by the model's output",
        "calibration took": f"{seconds:.1f} s",
    }
    report = model_report(
        model, result, list(calib), judged, summary=summary, comparison=comparison,
        measured_on=measured_on, peers=False,
    )  # fmt: skip
    write_report(args.report, report)
    note(f"report: {args.report}")
