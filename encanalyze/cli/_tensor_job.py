"""The tensor job: ``encanalyze calibrate [FILES...]`` without ``--data``.

Each tensor of the files (the built-in samples when none is given) is calibrated with every
selected method; the table or JSON goes to stdout, and the outputs (``--output``, ``--plot``,
``--report``) are built at their staged paths and published together by the caller.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

from .._calibration import Progress, encodings_by_rows
from .._encoding import to_scale_offset
from .._html_report import write_report
from .._io import load_model, printable, read_tensors, sample_tensors
from .._report import (
    aimet_encodings,
    encoding_lists,
    layout_for,
    onnx_qdq_encodings,
    quantization_quality,
    sqnr_rank,
)
from .._report_data import tensor_report
from .._shapes import plan, to_rows
from .._xp import namespace_of
from ..onnx._calibrate import QUANTIZABLE_OPS, weights_of
from ._float import calibrate_float, encodings_file
from ._output import (
    cell,
    config_of,
    db,
    note,
    number,
    one_line,
    plot,
    selected,
    strict_json,
    write_json,
)
from ._parser import METHODS, UsageError, method_options

__all__ = ["calibrate_one", "format_table", "tensor_job"]


def _converter(backend: str, device):
    if backend == "numpy":
        return np.asarray
    if backend == "torch":
        import torch

        try:
            dev = torch.device(device or "cpu")
            torch.empty(0, device=dev)
        except (RuntimeError, AssertionError, ValueError, TypeError) as err:
            raise UsageError(f"--device {device}: {str(err).splitlines()[0]}") from None
        if dev.type == "meta":
            raise UsageError("--device meta holds no data: choose cpu or an accelerator")
        return lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev)
    import cupy

    dev = int(str(device or "0").removeprefix("cuda:"))

    def to_cupy(a):
        with cupy.cuda.Device(dev):
            return cupy.asarray(a)

    return to_cupy


def _load(args) -> dict[str, np.ndarray]:
    if not args.files:
        note("no FILES given: calibrating the built-in sample tensors")
        return sample_tensors()
    tensors: dict[str, np.ndarray] = {}
    for f in args.files:
        found = read_tensors(f)
        if Path(f).suffix.lower() == ".onnx":
            found = _onnx_weights(f, found, args)
        for name, array in found.items():
            tensors[_unique(name, f, tensors)] = array
    return tensors


def _onnx_weights(path: str, weights: dict[str, np.ndarray], args) -> dict[str, np.ndarray]:
    """Keep the weights that a quantizer quantizes (of Conv, ConvTranspose, Gemm and MatMul).

    Biases, BatchNorm statistics and shape constants are left out with one note, unless an
    ``--include`` pattern names them; a model without such operators keeps every weight.
    """
    model, _ = load_model(path)
    keep = weights_of(model, QUANTIZABLE_OPS, weights)
    if not keep:  # no such operator: a file of weights, all of them calibrated
        return weights
    named = {n for n in weights if args.include and selected(n, args)}
    others = [n for n in weights if n not in keep and n not in named]
    if others:
        note(
            f"{path}: {len(others)} other float initializers (biases, BatchNorm statistics, "
            "constants) are not operator weights and are left out; --include NAME takes one"
        )
    return {n: a for n, a in weights.items() if n in keep or n in named}


def _unique(name: str, source: str, taken) -> str:
    """``name``, else ``source:name``, else ``source:name#2``, ... (never a taken key)."""
    if name not in taken:
        return name
    key = f"{source}:{name}"
    n = 2
    while key in taken:
        key, n = f"{source}:{name}#{n}", n + 1
    return key


def _skip_reason(array: np.ndarray) -> str | None:
    if not np.issubdtype(array.dtype, np.floating):
        return f"not floating point ({array.dtype})"
    if array.size < 2:
        return f"too small ({array.size} value{'s' if array.size != 1 else ''})"
    if not np.isfinite(array).any():
        return "no finite value"
    return None


def _revive_dead_encodings(
    array: np.ndarray, p, encoding_shape: tuple[int, ...]
) -> tuple[np.ndarray, list[str]]:
    """Give encodings without a finite value the values of an all-zero channel.

    A pruned or diverged channel (all NaN or infinite) has no range to calibrate; it gets the
    encoding of an all-zero channel (the smallest range around 0) so that the tensor's other
    encodings are computed and exported. Returns the array (a copy where it changed) and notes.
    """
    dead = ~np.isfinite(to_rows(np, array, p)).any(axis=1)
    if not dead.any():
        return array, []
    mask = dead.reshape(encoding_shape)
    for axis, (enc, size) in enumerate(zip(encoding_shape, array.shape, strict=True)):
        if enc not in (1, size):  # blocks along this axis
            mask = np.repeat(mask, size // enc, axis=axis)
    which = np.flatnonzero(dead)
    shown = ", ".join(map(str, which[:8])) + (", ..." if len(which) > 8 else "")
    note = (
        f"{len(which)} of {dead.size} encodings (#{shown}) have no finite value; encoded as an "
        "all-zero channel"
    )
    return np.where(np.broadcast_to(mask, array.shape), 0, array).astype(array.dtype), [note]


def calibrate_one(name: str, array: np.ndarray, args, convert, progress=None) -> dict:
    """Calibrate one tensor with every selected method; return its report entry."""
    layout = layout_for(array.shape, args.per_channel, args.block_size, args.block_axis)
    num_steps = 2**args.bits - 1
    p = plan(tuple(array.shape), layout.shape, layout.block_size)
    nan_values = int(np.isnan(array).sum())
    array, notes = _revive_dead_encodings(array, p, layout.shape)
    x = convert(array)
    xp = namespace_of(x)
    methods = METHODS if args.method in ("all", "auto") else (args.method,)
    options = {m: method_options(args, m) for m in methods}
    if progress is not None:
        progress.stage(f"{name} statistics")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN counts: reported below
        # each tensor is histogrammed once for the methods that share statistics, its channels
        # in blocks (memory near the tensor's size)
        found = encodings_by_rows(
            x, layout.shape, layout.block_size, options, num_steps, args.symmetric
        )
    results = {}
    for method in methods:
        if progress is not None:
            progress.stage(f"{name} {method}")
            progress.advance(array.size)
        if isinstance(found[method], Exception):
            if len(methods) == 1:
                raise found[method]
            notes.append(f"{method}: {one_line(found[method])}")
            continue
        lo, hi = found[method]
        scale, offset = to_scale_offset(lo, hi, num_steps, args.symmetric)
        if not bool(xp.all(xp.isfinite(xp.astype(scale, xp.float64)))):
            notes.append(f"{method}: the range overflows {array.dtype}; not encodable")
            continue
        clipped, sqnr = quantization_quality(xp, x, p, scale, offset, num_steps)
        results[method] = {
            **encoding_lists(lo, hi, scale, offset),
            "clipped_fraction": clipped,
            "sqnr_db": sqnr,
        }
    if not results:
        raise ValueError(f"no method gives finite scales (the range overflows {array.dtype})")
    best = max(results, key=lambda m: sqnr_rank(results[m]["sqnr_db"]))  # NaN never wins
    return {
        "name": name,
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "encoding_shape": list(layout.shape),
        "enc_type": layout.enc_type,
        "nan_values": nan_values,
        "methods": results,
        "best": best,
        "_layout": layout,
        "_notes": notes,
    }


NAME_WIDTH = 60
"""Names longer than this are elided in the middle in the table (``--format json`` has them
whole)."""


def format_table(entries: list[dict]) -> str:
    """Return the human table: one row per tensor and method, the best method marked."""
    width = min(NAME_WIDTH, max([6, *(len(printable(e["name"])) for e in entries)]))
    head = (
        f"{'tensor':<{width + 1}}{'shape':<18}{'method':<11}{'min':>11}{'max':>11}{'scale':>11}"
        f"{'offset':>8}{'clipped %':>10}{'SQNR dB':>9}"
    )
    lines = [head, "-" * len(head)]
    for e in entries:
        for method, r in e["methods"].items():
            per_tensor = len(r["scale"]) == 1
            offset = (
                f"{r['offset'][0]:>8d}" if per_tensor else f"{'(' + str(len(r['offset'])) + ')':>8}"
            )
            scale = number(r["scale"][0]) if per_tensor else number(float(np.median(r["scale"])))
            mark = " *" if method == e["best"] else ""
            lines.append(
                f"{cell(e['name'], width)} {str(tuple(e['shape']))[:17]:<18}{method:<11}"
                f"{number(min(r['min']))}{number(max(r['max']))}{scale}{offset}"
                f"{100 * r['clipped_fraction']:>10.3f}{db(r['sqnr_db'])}{mark}"
            )
    lines.append(
        "* best SQNR per tensor; per-channel rows show min(min), max(max), median "
        "scale and (number of encodings)"
    )
    return "\n".join(lines)


def tensor_job(args, staged: dict[str, Path]) -> int:
    """Run the tensor job; return the exit status.

    Every tensor is calibrated (a failure of one tensor is a note); the table or JSON is
    printed and the outputs built at ``staged`` (by option), which the caller publishes.
    """
    started = time.perf_counter()
    convert = _converter(args.backend, args.device)
    tensors = _load(args)
    chosen = {k: v for k, v in tensors.items() if selected(k, args)}
    if not chosen:
        raise UsageError("no tensor matches --include/--exclude")
    entries, skipped, layout_errors = [], [], []
    methods = len(METHODS) if args.method in ("all", "auto") else 1
    floating = args.number_format != "int"
    progress = Progress(sum(a.size for a in chosen.values()) * methods, None, "value", True)
    try:
        for name, array in chosen.items():
            reason = _skip_reason(array)
            if reason is None:
                try:
                    layout_for(array.shape, args.per_channel, args.block_size, args.block_axis)
                except ValueError as err:
                    reason = str(err)
                    layout_errors.append(reason)
            if reason is None:
                try:
                    if floating:
                        progress.stage(f"{name} {args.number_format}")
                        entry = calibrate_float(name, array, args, convert)
                        progress.advance(array.size * methods)
                    else:
                        entry = calibrate_one(name, array, args, convert, progress)
                    entries.append(entry)
                except Exception as err:  # noqa: BLE001 - one tensor's failure is one note
                    reason = one_line(err)
            if reason is not None:
                skipped.append({"name": name, "reason": reason})
                progress.advance(array.size * methods)
    finally:
        progress.close()
    if not entries and layout_errors and len(layout_errors) == len(skipped):
        raise UsageError(f"--per-channel/--block-size fit no tensor ({layout_errors[0]})")
    for s in skipped:
        note(f"skipped {s['name']}: {s['reason']}")
    for e in entries:
        for message in e.pop("_notes"):
            note(f"{e['name']}: {message}")
    if not entries:
        print("encanalyze: error: no tensor could be calibrated", file=sys.stderr)
        return 1
    if args.plot is not None:
        plot(entries, chosen, staged["--plot"])
    public = [_public(e) for e in entries]
    if args.format == "json":
        print(strict_json({"config": config_of(args), "tensors": public, "skipped": skipped}))
    else:
        print(format_table(public))
    if args.output is not None and floating:
        content = encodings_file(entries, args.number_format, args.output_format)
        write_json(staged["--output"], content)
    elif args.output is not None:
        export = [
            {
                "name": e["name"],
                "scale": e["methods"][e["best"]]["scale"],
                "offset": e["methods"][e["best"]]["offset"],
                "layout": e["_layout"],
            }
            for e in entries
        ]
        build = aimet_encodings if args.output_format == "aimet" else onnx_qdq_encodings
        write_json(staged["--output"], build(export, args.bits, args.symmetric))
    if args.report is not None:
        _tensor_report(args, staged["--report"], entries, chosen, skipped, started)
    return 0


def _tensor_report(args, path: Path, entries: list[dict], tensors: dict, skipped: list, started):
    """Write the tensor job's report page at ``path``."""
    seconds = time.perf_counter() - started
    methods = list(dict.fromkeys(m for e in entries for m in e["methods"]))
    grid = (
        f"{args.bits}-bit integers, {'symmetric' if args.symmetric else 'asymmetric'}"
        if args.number_format == "int"
        else args.number_format
    )
    summary = {
        "job": "tensor files" if args.files else "built-in sample tensors",
        "data": ", ".join(map(str, args.files)) or "built-in samples",
        "grid": grid,
        "methods": ", ".join(methods),
        "tensors": f"{len(entries)} calibrated, {len(skipped)} skipped",
        "time taken": f"{seconds:.2f} s",
    }
    write_report(path, tensor_report(entries, tensors, summary, methods))


def _public(entry: dict) -> dict:
    """``entry`` without its private keys (``_layout``, ``_export``, ...)."""
    out = {k: v for k, v in entry.items() if not k.startswith("_")}
    out["methods"] = {
        m: {k: v for k, v in r.items() if not k.startswith("_")} for m, r in out["methods"].items()
    }
    return out
