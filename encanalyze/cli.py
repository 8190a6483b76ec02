"""The ``encanalyze`` command: calibrate tensor files, compare methods, export encodings, plot.

``encanalyze calibrate [FILES...]`` (also ``python -m encanalyze``) reads tensors, calibrates
each with every registered method (min-max, percentile, SQNR, MSE, entropy, moving-average
min-max), and reports per tensor and method the encoding, its clipped fraction and the SQNR of
quantize-dequantize on the tensor itself. Methods that share statistics (the histogram methods)
gather them once per tensor.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import math
import re
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from . import __version__, _model_command
from ._backends import to_numpy
from ._block_job import calibrate_model_blocks
from ._calibration import Progress, encodings_by_rows, progress_bar
from ._command_io import cell as _cell
from ._command_io import config_of as _config
from ._command_io import db as _db
from ._command_io import note as _note
from ._command_io import number as _fmt
from ._command_io import selected as _selected
from ._command_io import strict_json as _json
from ._command_io import write_json as _write_json
from ._encoding import to_scale_offset
from ._files import OutputPathError, check_output, printable
from ._float_job import (
    NUMBER_FORMATS,
    calibrate_float,
    calibrate_model_float,
    check_model_number_format,
    check_number_format,
    encodings_file,
)
from ._observers.histogram import validate_num_bins
from ._onnx_graph import ModelFileError, external_locations, float_weights, load_model
from ._registry import ACTIVATION_PERCENTILE
from ._registry import METHODS as REGISTRY
from ._report import (
    aimet_encodings,
    encoding_lists,
    layout_for,
    onnx_qdq_encodings,
    quantization_quality,
    sqnr_rank,
)
from ._rules.percentile import validate_percentile
from ._samples import sample_tensors
from ._shapes import plan, to_rows
from ._tensor_io import TensorFileError, read_tensors
from ._xp import namespace_of

__all__ = ["main"]

METHODS = tuple(name for name, m in REGISTRY.items() if m.in_command)
ONNX_BITS = (4, 8, 16)
"""Bit widths with an ONNX integer type (int4/uint4, int8/uint8, int16/uint16)."""
MIN_BINS = 8


class UsageError(Exception):
    """A bad option value: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """Return the command's argument parser."""
    parser = _Parser(
        prog="encanalyze",
        description="encanalyze: calibrate tensor files and ONNX models, compare the methods, "
        "export encodings, plot.",
    )
    parser.add_argument("--version", action="version", version=f"encanalyze {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    cal = sub.add_parser(
        "calibrate",
        help="calibrate tensors (built-in samples when no file is given)",
        description="Calibrate the tensors of FILES (.npy, .npz, .safetensors, .pt/.pth, "
        ".onnx initializers), or a built-in sample set when none is given.",
    )
    cal.add_argument(
        "files",
        nargs="*",
        metavar="FILES",
        help=".npy, .npz, .safetensors, .pt/.pth or .onnx files (default: built-in samples)",
    )
    cal.add_argument(
        "--method",
        choices=(*METHODS, "all", "auto"),
        default="auto",
        help="method to run; all runs each and marks the best SQNR; auto (default): all for "
        "tensor files, minmax for a model with --data (all: every method's weights, chosen with "
        "the activations by the output)",
    )
    cal.add_argument("--bits", type=int, default=8, help="bit width (2..16, default 8)")
    cal.add_argument(
        "--number-format",
        choices=tuple(NUMBER_FORMATS),
        default="int",
        metavar="NAME",
        help="int (default: integer grids of --bits), or a float / block format: "
        + ", ".join(n for n in NUMBER_FORMATS if n != "int"),
    )
    cal.add_argument("--symmetric", action="store_true", help="symmetric grids")
    cal.add_argument(
        "--per-channel",
        type=int,
        metavar="AXIS",
        default=None,
        help="one encoding per index of AXIS (default: per tensor)",
    )
    cal.add_argument(
        "--block-size",
        type=int,
        default=None,
        help="block-wise: blocks of this many values along --block-axis, per channel",
    )
    cal.add_argument("--block-axis", type=int, default=1, help="axis split into blocks (1)")
    cal.add_argument(
        "--percentile",
        type=float,
        default=ACTIVATION_PERCENTILE,
        help=f"for percentile ({ACTIVATION_PERCENTILE})",
    )
    cal.add_argument("--num-bins", type=int, default=2048, help="histogram bins (2048)")
    cal.add_argument("--gamma", type=float, default=3.0, help="SQNR clipping weight (3.0)")
    cal.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only tensors whose name matches (glob; repeatable)",
    )
    cal.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help="skip tensors whose name matches (glob; repeatable)",
    )
    cal.add_argument("--backend", choices=("numpy", "torch", "cupy"), default="numpy")
    cal.add_argument("--device", default=None, help="device for torch/cupy (e.g. cuda:0)")
    cal.add_argument("--output", type=Path, default=None, help="write an encodings file")
    cal.add_argument(
        "--output-format",
        choices=("aimet", "onnx-qdq", "encanalyze"),
        default=None,
        help="AIMET 1.0.0 encodings (the default for int), ONNX QuantizeLinear scale/zero_point, "
        "or encanalyze's float and block layout (the default for the other number formats)",
    )
    cal.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="DIR",
        help="write one histogram PNG per tensor (needs matplotlib)",
    )
    cal.add_argument(
        "--format", choices=("table", "json"), default="table", help="what goes to stdout"
    )
    cal.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="HTML",
        help="write the analysis report: one self-contained HTML page (tables, histograms, "
        "and for a model the layer sensitivity and ONNX Runtime's calibrators)",
    )
    model = cal.add_argument_group("calibrating an ONNX model's activations (needs onnxruntime)")
    model.add_argument(
        "--data",
        default=None,
        metavar="SOURCE",
        help="calibration data for the one .onnx FILE: a .npz or a folder of .npy files by "
        "input name (samples along axis 0), or 'random'",
    )
    model.add_argument(
        "--sample-axis",
        action="append",
        default=[],
        metavar="NAME=AXIS",
        help="the axis of input NAME that holds the samples (default 0), or NAME=none for a "
        "constant fed whole with every batch (inputs declared as scalars are constants)",
    )
    model.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="samples per batch (default: the model's fixed batch size, else 16)",
    )
    model.add_argument(
        "--activation-method",
        choices=(*METHODS, "auto"),
        default="auto",
        help="method for the activations; auto (default): the one whose QDQ model's output is "
        "closest to the float model's on the held-out samples; --method sets the weights'",
    )
    model.add_argument(
        "--holdout",
        type=float,
        default=0.25,
        metavar="FRACTION",
        help="fraction of the batches held out (0.25): statistics from the rest, the choice of "
        "activations and the reported output SQNR from them",
    )
    model.add_argument(
        "--weight-grid",
        choices=("symmetric", "asymmetric"),
        default="symmetric",
        help="the weights' grid (symmetric: signed, zero point 0, as ONNX Runtime, TensorRT and "
        "QNN deploy them); --symmetric sets the activations' (default asymmetric)",
    )
    model.add_argument(
        "--per-tensor-weights",
        action="store_true",
        help="one encoding per weight (default: per output channel on each operator's axis)",
    )
    model.add_argument(
        "--qdq-model",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write a QDQ model (ONNX Runtime's quantize_static with these encodings) "
        "and report its output SQNR",
    )
    return parser


def _check_options(args) -> None:
    if args.output_format is None:
        args.output_format = "aimet" if args.number_format == "int" else "encanalyze"
    if args.number_format == "int" and args.output_format == "encanalyze":
        raise UsageError("--output-format encanalyze is for float and block number formats")
    reason = check_number_format(args)
    if reason is not None:
        raise UsageError(reason)
    if not 2 <= args.bits <= 16:
        raise UsageError(f"--bits must be in 2..16, got {args.bits}")
    if args.output_format == "onnx-qdq" and args.bits not in ONNX_BITS:
        raise UsageError(
            f"--output-format onnx-qdq: ONNX has no {args.bits}-bit integer type; use --bits "
            f"{', '.join(map(str, ONNX_BITS))}"
        )
    if args.num_bins < MIN_BINS:
        raise UsageError(
            f"--num-bins must be at least {MIN_BINS}, got {args.num_bins}: coarser histograms "
            "give meaningless encodings"
        )
    for name, check in (("--percentile", validate_percentile), ("--num-bins", validate_num_bins)):
        try:
            check(getattr(args, name[2:].replace("-", "_")))
        except (TypeError, ValueError) as err:
            raise UsageError(f"{name}: {err}") from None
    if not math.isfinite(args.gamma) or args.gamma < 0:
        raise UsageError(f"--gamma must be a finite number >= 0, got {args.gamma}")
    if args.block_size is not None and args.block_size < 1:
        raise UsageError(f"--block-size must be positive, got {args.block_size}")
    if args.block_size is not None and args.per_channel is None:
        raise UsageError("--block-size needs --per-channel AXIS")
    if args.backend != "numpy" and importlib.util.find_spec(args.backend) is None:
        raise UsageError(f"--backend {args.backend}: {args.backend} is not installed")
    if args.device is not None and args.backend == "numpy":
        raise UsageError("--device needs --backend torch or cupy")
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib (pip install matplotlib)")
    _check_model_options(args)
    _check_paths(args)


def _check_paths(args) -> None:
    """Output paths are checked before any work (and never name temporary files).

    No output may name an input: a tensor file, the model or its external data, the ``--data``
    file, or anything inside a ``--data`` folder; two outputs may not name one file.
    """
    inputs = list(args.files)
    if args.data is not None:
        inputs += [*_model_command.data_files(args.data), *_external_files(args.files[0])]
    named = {"--output": args.output, "--qdq-model": args.qdq_model, "--report": args.report}
    named = {k: p for k, p in named.items() if p is not None}
    outputs = list(named.values())
    try:
        targets = [check_output(p, inputs) for p in outputs]
    except OutputPathError as err:
        raise UsageError(str(err)) from None
    options = list(named)
    for i, j in itertools.combinations(range(len(targets)), 2):
        if targets[i] == targets[j]:
            raise UsageError(f"{options[i]} and {options[j]} name the same file {outputs[i]}")
    folder = Path(args.data).resolve() if args.data not in (None, "random") else None
    sidecar = None
    if args.qdq_model is not None:
        qdq = targets[options.index("--qdq-model")]
        sidecar = qdq.with_name(qdq.name + ".data")
    for path, target in zip(outputs, targets, strict=True):
        if folder is not None and folder.is_dir() and target.is_relative_to(folder):
            raise UsageError(
                f"{path}: lies inside the --data folder {args.data}; not writing there"
            )
        if target == sidecar:
            raise UsageError(f"{path}: is where the QDQ model's external data goes")
    if args.plot is not None and args.plot.exists() and not args.plot.is_dir():
        raise UsageError(f"--plot {args.plot}: exists and is not a folder")


def _external_files(model: str) -> list[Path]:
    """Return the external data files an ONNX model names (read before any output is written)."""
    try:
        import onnx

        proto = onnx.load(model, load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable model is reported when it is loaded
        return []
    return [Path(model).parent / loc for loc in external_locations(proto) if "\x00" not in loc]


def _check_model_options(args) -> None:
    model_only = ("qdq_model", "batch_size", "per_tensor_weights", "sample_axis")
    if args.data is None and args.holdout != 0.25:
        raise UsageError("--holdout needs --data")
    if args.data is None and args.weight_grid != "symmetric":
        raise UsageError("--weight-grid needs --data (tensor files take --symmetric)")
    if args.data is None:
        for name in model_only:
            if getattr(args, name) not in (None, False, []):
                raise UsageError(f"--{name.replace('_', '-')} needs --data")
        return
    if len(args.files) != 1 or Path(args.files[0]).suffix.lower() != ".onnx":
        raise UsageError("--data calibrates one .onnx model: give exactly one .onnx FILE")
    if args.number_format != "int":
        reason = check_model_number_format(args)
        if reason is not None:
            raise UsageError(reason)
    for name, default in (("block_size", None), ("backend", "numpy")):
        if getattr(args, name) != default:
            raise UsageError(
                f"--{name.replace('_', '-')} does not apply with --data (weights are per output "
                "channel on each operator's axis, --per-tensor-weights for one encoding each)"
            )
    if args.per_channel is not None and args.qdq_model is not None:
        raise UsageError(
            "--per-channel with --data calibrates activations per channel, which "
            "ONNX Runtime's QDQ models cannot hold: drop --qdq-model or it"
        )
    if args.batch_size is not None and args.batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    if not 0 <= args.holdout < 1:
        raise UsageError(f"--holdout must be in [0, 1), got {args.holdout}")
    if args.qdq_model is not None and args.bits not in ONNX_BITS:
        raise UsageError(
            f"--qdq-model: QDQ models take {', '.join(map(str, ONNX_BITS))} bits, "
            f"not --bits {args.bits}"
        )
    try:
        _model_command.parse_sample_axes(args.sample_axis)
    except _model_command.DataError as err:
        raise UsageError(str(err)) from None
    for module in ("onnx", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"--data needs {module} (pip install 'encanalyze[onnx]')")


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
        _note("no FILES given: calibrating the built-in sample tensors")
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
    from .onnx._calibrate import QUANTIZABLE_OPS, weights_of

    model, _ = load_model(path)
    keep = weights_of(model, QUANTIZABLE_OPS, weights)
    if not keep:  # no such operator: a file of weights, all of them calibrated
        return weights
    named = {n for n in weights if args.include and _selected(n, args)}
    others = [n for n in weights if n not in keep and n not in named]
    if others:
        _note(
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
    options = {m: REGISTRY[m].command_options(args) for m in methods}
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
            notes.append(f"{method}: {_reason(found[method])}")
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
            scale = _fmt(r["scale"][0]) if per_tensor else _fmt(float(np.median(r["scale"])))
            mark = " *" if method == e["best"] else ""
            lines.append(
                f"{_cell(e['name'], width)} {str(tuple(e['shape']))[:17]:<18}{method:<11}"
                f"{_fmt(min(r['min']))}{_fmt(max(r['max']))}{scale}{offset}"
                f"{100 * r['clipped_fraction']:>10.3f}{_db(r['sqnr_db'])}{mark}"
            )
    lines.append(
        "* best SQNR per tensor; per-channel rows show min(min), max(max), median "
        "scale and (number of encodings)"
    )
    return "\n".join(lines)


def _plot(entries: list[dict], tensors: dict[str, np.ndarray], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written, stems = [], set()
    palette = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
    colors = {m: palette[i % len(palette)] for i, m in enumerate(METHODS)}
    for e in entries:
        values = tensors[e["name"]].astype(np.float64).ravel()
        values = values[np.isfinite(values)]
        fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
        ax.hist(values, bins=256, color="0.6", log=True)
        for method, r in e["methods"].items():
            lo, hi = min(r["min"]), max(r["max"])
            label = f"{method}: [{lo:.4g}, {hi:.4g}], SQNR {r['sqnr_db']:.2f} dB"
            if method == e["best"]:
                label += " (best)"
            ax.axvline(lo, color=colors[method], linestyle="--", label=label)
            ax.axvline(hi, color=colors[method], linestyle="--")
        ax.set_title(f"{printable(e['name'])} {tuple(e['shape'])}")
        ax.set_xlabel("value")
        ax.set_ylabel("count (log)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        stem = base = re.sub(r"[^A-Za-z0-9._-]+", "_", e["name"])
        n = 2
        while stem in stems:  # a/b and a_b: a_b.png and a_b-2.png
            stem, n = f"{base}-{n}", n + 1
        stems.add(stem)
        path = directory / f"{stem}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


class JobError(Exception):
    """A failure of the model job as a whole: one line, exit status 1, no output written."""


def calibrate_model(args) -> int:
    """Run the model job (``--data``): weights and activations of one ONNX model.

    One exception boundary: a tensor that cannot be encoded is a note (it stays in floating
    point); any failure of the run is one line and exit status 1, and no output is written:
    the ``--qdq-model`` is built in a folder beside its target and moved into place after the
    report and ``--output`` are written.
    """
    try:
        return _model_job(args)
    except (UsageError, KeyboardInterrupt, MemoryError, _model_command.DataError):
        raise
    except (ModelFileError, TensorFileError, OSError) as err:
        raise JobError(str(err)) from err
    except Exception as err:  # noqa: BLE001 - the model job's one boundary
        raise JobError(_reason(err)) from err


def _model_job(args) -> int:
    from .onnx import calibrate as calibrate_onnx
    from .onnx import choose_encodings, output_sqnr
    from .onnx._calibrate import quantizable_weights
    from .onnx._choose import candidates_of
    from .onnx._qdq import publish, stage_qdq_model, staging

    started = time.perf_counter()
    model, calib, held, judged, more, notes = _model_command.job_data(args)
    methods = _activation_methods(args, more)
    weights = quantizable_weights(model)
    qdq_steps = 1 + len(judged) + len(calib) if args.qdq_model is not None else 0
    weight_methods = _model_command.weight_methods(args)
    choosing = 1 if len(methods) > 1 else 0  # the choice is one step of the bar
    total = len(weights) + len(calib) + choosing + qdq_steps
    statistics = {} if args.report is not None else None
    with contextlib.ExitStack() as stack:
        progress = stack.enter_context(Progress(total))
        options = {m: REGISTRY[m].command_options(args) for m in methods}
        result = calibrate_onnx(
            model,
            calib,
            activations=methods if len(methods) > 1 else methods[0],
            weights=weight_methods,  # all: each weight's best SQNR, then chosen by the output
            activation_options=options if len(methods) > 1 else options[methods[0]],
            bits=args.bits,
            symmetric=args.symmetric,
            weight_symmetric=args.weight_grid == "symmetric",
            per_channel_weights=not args.per_tensor_weights,
            progress=progress,
            tensors=lambda name: _selected(name, args),
            activation_axis=args.per_channel,
            statistics=statistics,
        )
        if not result.encodings:
            raise JobError("no tensor of the model could be calibrated")
        qdq = staged = target = stage = choice = None
        if args.qdq_model is not None:
            target = check_output(args.qdq_model)
            stage = stack.enter_context(staging(target)) / target.name
        if len(methods) > 1 and any(e.kind == "activation" for e in result.encodings.values()):
            # auto: activations and weights together, by the output on held-out data
            acts, params = candidates_of(result, True, True)
            progress.stage(f"choosing the encodings ({len(acts) + len(params) - 1} options)")
            result, chosen = choose_encodings(model, result, judged, stage=stage)
            staged, opset = chosen.qdq_model, chosen.opset  # built while choosing
            progress.advance()
            choice = {"measured_on": "held-out" if len(held) else "calibration"}
            choice.update(chosen.as_dict())
        if stage is not None:
            progress.stage("writing the QDQ model")
            if staged is None:
                staged, opset = stage_qdq_model(model, result, stage)
            progress.advance()
            sqnr = output_sqnr(model, staged, progress_bar(judged, progress, "SQNR batch"))
            on_calib = sqnr
            if len(held):
                on_calib = output_sqnr(model, staged, progress_bar(calib, progress, "SQNR batch"))
            qdq = {
                "path": str(args.qdq_model),
                "opset": opset,
                "measured_on": "held-out" if len(held) else "calibration",
                "output_sqnr_db": sqnr,
                "calibration_output_sqnr_db": on_calib,
            }
        progress.close()
        for message in notes + more:
            _note(message)
        for name, reason in result.unquantized.items():
            _note(f"{name} left in floating point: {reason}")
        for name, branch in result.branches.items():
            _note(
                f"the If producing {name} takes its {branch} on every batch: inlined, so its "
                "activations are calibrated (and the QDQ model serves that branch)"
            )
        _report_model(args, result, qdq, choice)
        if args.plot is not None:
            weights = float_weights(model)
            _plot(_weight_entries(result, weights), weights, args.plot)
        if args.output is not None:
            aimet = args.output_format == "aimet"
            _write_json(args.output, result.aimet() if aimet else result.onnx_qdq())
        if args.report is not None:
            seconds = time.perf_counter() - started
            _model_report(
                args, model, result, calib, list(judged), statistics, choice, qdq, seconds
            )
            _note(f"report: {args.report} ({time.perf_counter() - started:.1f} s in all)")
        if staged is not None:
            publish(staged, target)
    return 0


def _model_report(args, model, result, calib, judged, statistics, choice, qdq, seconds) -> None:
    """Write the model job's report: quantizers, sensitivity, ONNX Runtime's calibrators."""
    from ._html_report import write_report
    from .onnx._report import model_report

    measured_on = (choice or qdq or {}).get("measured_on", "held-out")
    rows = []
    for method, db in ((choice or {}).get("qdq_output_sqnr_db") or {}).items():
        label = f"encanalyze, activations {method} (QDQ model)"
        rows.append({"label": label, "output_sqnr_db": db, "measured_on": measured_on})
    if qdq is not None:
        values = list(qdq["output_sqnr_db"].values())
        db = sum(values) / len(values) if values else None
        label = f"encanalyze, the written QDQ model ({printable(qdq['path'])})"
        rows.append({"label": label, "output_sqnr_db": db, "measured_on": measured_on})
    summary = {
        "job": "ONNX model",
        "model": printable(args.files[0]),
        "data": printable(str(args.data)),
        "batches": f"{len(calib)} calibration, {len(judged)} judged ({measured_on})",
        "grids": result.grids(),
        "weights' methods": args.method,
        "activations' methods": args.activation_method,
    }
    if choice is not None:
        summary["chosen"] = f"activations {choice['activations']}, weights {choice['weights']}"
    if qdq is not None:
        summary["QDQ model's output SQNR"] = ", ".join(
            f"{k} {v:.2f} dB" for k, v in qdq["output_sqnr_db"].items()
        )
    summary["calibration took"] = f"{seconds:.1f} s"
    peers = args.bits in ONNX_BITS and args.per_channel is None
    data = model_report(
        model, result, calib, judged, statistics=statistics, summary=summary,
        comparison=rows, measured_on=measured_on, peers=peers,
    )  # fmt: skip
    write_report(args.report, data)


def _activation_methods(args, notes: list[str]) -> list[str]:
    """Return ``--activation-method`` as a list of methods.

    ``auto`` gives its candidates where a QDQ model can judge them (a bit width ONNX has,
    per-tensor activations), else percentile (with a note).
    """
    if args.activation_method != "auto":
        return [args.activation_method]
    if args.bits not in ONNX_BITS or args.per_channel is not None:
        notes.append(
            "--activation-method auto needs a QDQ model to compare methods (4, 8 or 16 "
            "bits, per-tensor activations): percentile used"
        )
        return ["percentile"]
    return list(_model_command.AUTO_ACTIVATIONS)


def _report_model(args, result, qdq: dict | None, choice: dict | None) -> None:
    unquantized = [{"name": n, "reason": r} for n, r in result.unquantized.items()]
    if args.format == "json":
        rows = list(_model_command.iter_rows(result))
        print(
            _json(
                {
                    "config": _config(args),
                    "grids": result.grids(),
                    "choice": choice,
                    "tensors": rows,
                    "unquantized": unquantized,
                    "branches": result.branches,
                    "qdq_model": qdq,
                }
            )
        )
        return
    print(result.table())
    print(f"grids: {result.grids()}")
    if choice is not None:
        checked = ", ".join(f"{m} {v:.2f} dB" for m, v in choice["qdq_output_sqnr_db"].items())
        emulated = choice["emulated_output_sqnr_db"]
        print(
            f"chosen by the output on the {choice['measured_on']} data: activations "
            f"{choice['activations']}, weights {choice['weights'] or 'as calibrated'} "
            f"(default {choice['default']}; {len(emulated)} options emulated; QDQ models: "
            f"{checked})"
        )
        for label, g in choice["gain_db"].items():
            print(
                f"   {label}: {emulated[label]:.2f} dB emulated, {g['gain']:+.2f} "
                f"+- {g['standard_error']:.2f} dB"
            )
        if choice["note"]:
            print(f"   {choice['note']}")
    if qdq is not None:
        where = printable(qdq["path"])
        sqnr = ", ".join(f"{k} {v:.2f} dB" for k, v in qdq["output_sqnr_db"].items())
        line = (
            f"QDQ model: {where} ({qdq['opset']}); output SQNR on the {qdq['measured_on']} data: "
        )
        print(line + printable(sqnr))
        if qdq["measured_on"] == "held-out":
            calib = ", ".join(
                f"{k} {v:.2f} dB" for k, v in qdq["calibration_output_sqnr_db"].items()
            )
            print(f"   on the calibration data: {printable(calib)}")


def _weight_entries(result, weights: dict[str, np.ndarray]) -> list[dict]:
    """Return the model's weight encodings as plot entries (the chosen method's range)."""
    out = []
    for e in result.encodings.values():
        if e.kind == "param":
            lo, hi = (to_numpy(a).reshape(-1).tolist() for a in (e.min, e.max))
            one = {"min": lo, "max": hi, "sqnr_db": e.sqnr_db}
            shape = list(weights[e.name].shape)
            out.append(
                {"name": e.name, "shape": shape, "methods": {e.method: one}, "best": e.method}
            )
    return out


def calibrate(args) -> int:
    """Run ``encanalyze calibrate``; return the exit status.

    Order: options and output paths are checked first; every tensor is calibrated (a failure
    of one tensor is a note); plots are drawn, the report printed, and the ``--output`` file
    written last, so that a failure on the way leaves no file behind.
    """
    _check_options(args)
    if args.data is not None and args.number_format != "int":
        blocks = NUMBER_FORMATS[args.number_format][0] != "scaled"  # MX, NVFP4: weights only
        try:
            return (calibrate_model_blocks if blocks else calibrate_model_float)(args)
        except (UsageError, KeyboardInterrupt, MemoryError, _model_command.DataError, JobError):
            raise
        except (ModelFileError, TensorFileError, OSError) as err:
            raise JobError(str(err)) from err
        except Exception as err:  # noqa: BLE001 - the model job's one boundary
            raise JobError(_reason(err)) from err
    if args.data is not None:
        return calibrate_model(args)
    started = time.perf_counter()
    convert = _converter(args.backend, args.device)
    tensors = _load(args)
    chosen = {k: v for k, v in tensors.items() if _selected(k, args)}
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
                    reason = _reason(err)
            if reason is not None:
                skipped.append({"name": name, "reason": reason})
                progress.advance(array.size * methods)
    finally:
        progress.close()
    if not entries and layout_errors and len(layout_errors) == len(skipped):
        raise UsageError(f"--per-channel/--block-size fit no tensor ({layout_errors[0]})")
    for s in skipped:
        _note(f"skipped {s['name']}: {s['reason']}")
    for e in entries:
        for message in e.pop("_notes"):
            _note(f"{e['name']}: {message}")
    if not entries:
        print("encanalyze: error: no tensor could be calibrated", file=sys.stderr)
        return 1
    if args.plot is not None:
        _plot(entries, chosen, args.plot)
    public = [_public(e) for e in entries]
    if args.format == "json":
        print(_json({"config": _config(args), "tensors": public, "skipped": skipped}))
    else:
        print(format_table(public))
    if args.output is not None and floating:
        _write_json(args.output, encodings_file(entries, args.number_format, args.output_format))
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
        _write_json(args.output, build(export, args.bits, args.symmetric))
    if args.report is not None:
        _tensor_report(args, entries, chosen, skipped, time.perf_counter() - started)
    return 0


def _tensor_report(args, entries: list[dict], tensors: dict, skipped: list, seconds: float):
    from ._html_report import write_report
    from ._report_data import tensor_report

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
    write_report(args.report, tensor_report(entries, tensors, summary, methods))


def _public(entry: dict) -> dict:
    """``entry`` without its private keys (``_layout``, ``_export``, ...)."""
    out = {k: v for k, v in entry.items() if not k.startswith("_")}
    out["methods"] = {
        m: {k: v for k, v in r.items() if not k.startswith("_")} for m, r in out["methods"].items()
    }
    return out


def _reason(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}" if not isinstance(err, ValueError) else text


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``encanalyze`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "calibrate")  # calibrate is the default command
    try:
        args = build_parser().parse_args(argv)
        if args.command != "calibrate":
            raise UsageError("expected the command 'calibrate'")
        with warnings.catch_warnings(record=True) as caught:  # the filters still apply
            try:
                return calibrate(args)
            finally:  # each warning once, as one line (no source lines)
                lines = ((str(w.message).splitlines() or [""])[0] for w in caught)
                for message in dict.fromkeys(lines):
                    _note(message)
    except UsageError as err:
        print(f"encanalyze: error: {printable(str(err))}", file=sys.stderr)
        return 2
    except (TensorFileError, ModelFileError, _model_command.DataError, JobError, OSError) as err:
        print(f"encanalyze: error: {printable(str(err))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not end in a traceback
        print("encanalyze: interrupted", file=sys.stderr)
        return 130
