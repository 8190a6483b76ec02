"""The command's options checked before any work, and its inputs and outputs declared.

Every check raises :class:`UsageError` (one line, exit status 2): nothing has run or been
written yet.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from .. import formats
from .._io import OutputPathError, Outputs, model_files
from .._observers.histogram import validate_num_bins
from .._registry import ACTIVATION_PERCENTILE
from .._rules.percentile import validate_percentile
from ._data import DataError, data_files, parse_sample_axes
from ._parser import (
    MIN_BINS,
    ONNX_BITS,
    UsageError,
)

__all__ = ["check_options", "declare_io"]


def check_options(args) -> None:
    """Check the parsed options (defaults filled in); :class:`UsageError` names the misfit."""
    if args.output_format is None:
        args.output_format = "aimet" if args.number_format == "int" else "encanalyze"
    if args.number_format == "int" and args.output_format == "encanalyze":
        raise UsageError("--output-format encanalyze is for float and block number formats")
    reason = _check_number_format(args)
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


def _check_model_options(args) -> None:
    model_only = (
        "qdq_model", "batch_size", "per_tensor_weights", "sample_axis", "fold_batchnorm",
        "cross_layer_equalization", "bias_correction",
    )  # fmt: skip
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
        reason = _check_model_number_format(args)
        if reason is not None:
            raise UsageError(reason)
    for name, default in (("block_size", None), ("block_axis", 1), ("backend", "numpy")):
        if getattr(args, name) != default:
            raise UsageError(
                f"--{name.replace('_', '-')} does not apply with --data (weights are per output "
                "channel on each operator's axis, --per-tensor-weights for one encoding each)"
            )
    if args.bias_correction and (args.qdq_model is None or args.number_format != "int"):
        raise UsageError(
            "--bias-correction corrects the biases of an integer QDQ model: it needs "
            "--qdq-model (and the int number format)"
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
        parse_sample_axes(args.sample_axis)
    except DataError as err:
        raise UsageError(str(err)) from None
    for module in ("onnx", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"--data needs {module} (pip install 'encanalyze[onnx]')")


def _check_number_format(args) -> str | None:
    """Return the reason ``args`` do not fit ``--number-format`` (``None`` when they do)."""
    spec = formats.NUMBER_FORMATS[args.number_format]
    if spec.scheme == "int":
        return None
    scheme = spec.scheme
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
    if args.method not in ("all", "auto", *spec.methods):
        return (
            f"--method {args.method} has no {args.number_format} version (its methods: "
            f"{', '.join(spec.methods)}, all)"
        )
    if scheme != "scaled" and (args.per_channel is not None or args.block_size is not None):
        return (
            f"--number-format {args.number_format} has its own layout (blocks of "
            f"{spec.block_size} along "
            "--block-axis); drop --per-channel/--block-size"
        )
    if args.output_format == "aimet":
        return (
            "--output-format aimet: AIMET's encodings (1.0.0, 2.0.0) have no field for float or "
            "block scales; use --output-format encanalyze (or onnx-qdq for FP8)"
        )
    if args.output_format == "onnx-qdq" and spec.onnx_type is None:
        return f"--output-format onnx-qdq: ONNX has no {args.number_format} QuantizeLinear"
    return None


def _check_model_number_format(args) -> str | None:
    """Return the reason ``args`` do not fit the FP8 or block model job (``None`` when they do)."""
    spec = formats.NUMBER_FORMATS[args.number_format]
    scheme = spec.scheme
    if scheme == "scaled" and spec.onnx_type is None:
        onnx_float8 = [n for n, f in formats.NUMBER_FORMATS.items() if f.onnx_type]
        return (
            f"--data with --number-format {args.number_format}: ONNX QDQ models take "
            f"{' or '.join(onnx_float8)}, the MX and NVFP4 block formats (weights) or int"
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


def declare_io(args, outputs: Outputs) -> dict[str, Path]:
    """Declare the job's inputs and outputs in ``outputs``; return the staged paths by option.

    Inputs: the FILES, each ONNX model's external data, the ``--data`` file or folder (and its
    ``.npy`` files). Outputs: ``--output``, ``--qdq-model`` (with its ``.data`` sidecar),
    ``--report`` and the ``--plot`` folder. An output that names an input or another output is
    a :class:`UsageError`.
    """
    try:
        for f in args.files:
            for source in model_files(f) if Path(f).suffix.lower() == ".onnx" else [f]:
                outputs.add_input(source)
        if args.data is not None:
            for f in data_files(args.data):
                outputs.add_input(f, "--data")
        staged = {}
        for option, path in (("--output", args.output), ("--report", args.report)):
            if path is not None:
                staged[option] = outputs.file(path, option)
        if args.qdq_model is not None:
            staged["--qdq-model"] = outputs.file(args.qdq_model, "--qdq-model", sidecar=True)
        if args.plot is not None:
            staged["--plot"] = outputs.folder(args.plot, "--plot")
    except OutputPathError as err:
        raise UsageError(str(err)) from None
    return staged
