"""The command's parser: ``encanalyze calibrate`` and its options (argparse lives in cli/ only)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import formats
from .._registry import ACTIVATION_PERCENTILE
from .._registry import METHODS as REGISTRY
from .._version import __version__

__all__ = [
    "METHODS",
    "MIN_BINS",
    "ONNX_BITS",
    "UsageError",
    "build_parser",
    "method_options",
]

METHODS = tuple(name for name, m in REGISTRY.items() if m.in_command)  # --method all's
"""The methods the command offers (``--method``), in the order it reports them."""
ONNX_BITS = (4, 8, 16)
"""Bit widths with an ONNX integer type (int4/uint4, int8/uint8, int16/uint16)."""
MIN_BINS = 8


def method_options(args, method: str) -> dict:
    """Return the analyzer options that ``--num-bins``, ``--percentile``, ``--gamma`` give."""
    return REGISTRY[method].options(vars(args))


class UsageError(Exception):
    """A bad option value: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise UsageError(message)


def _layers(text: str) -> int | None:
    """``--report-layers``: a count of at least 1, or ``all`` (``None``: every layer)."""
    if text == "all":
        return None
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a count of at least 1 or 'all', got {text!r}")


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
        choices=(*REGISTRY, "all", "auto"),
        default="auto",
        help="method to run; all runs each and marks the best SQNR; auto (default): all for "
        "tensor files, minmax for a model with --data (all: every method's weights, chosen with "
        "the activations by the output)",
    )
    cal.add_argument("--bits", type=int, default=8, help="bit width (2..16, default 8)")
    cal.add_argument(
        "--number-format",
        choices=tuple(formats.NUMBER_FORMATS),
        default="int",
        metavar="NAME",
        help="int (default: integer grids of --bits), or a float / block format: "
        + ", ".join(n for n in formats.NUMBER_FORMATS if n != "int"),
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
    cal.add_argument(
        "--report-layers",
        type=_layers,
        default="8",
        metavar="N|all",
        help="the report's sensitivity runs the N layers whose quantizers' own SQNR is lowest "
        "(8; all: every layer, one run of the held-out data each, two per layer)",
    )
    model = cal.add_argument_group("calibrating an ONNX model's activations (needs onnxruntime)")
    model.add_argument(
        "--data",
        default=None,
        metavar="SOURCE",
        help="calibration data for the one .onnx FILE: a .npz or a folder of .npy files by "
        "input name (samples along axis 0), a folder of .npz files (one group of samples per "
        "file: groups may differ in shape, e.g. sequence length), or 'random'",
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
        choices=(*REGISTRY, "auto"),
        default="auto",
        help="method for the activations; auto (default): the one whose QDQ model's output is "
        "closest to the float model's on the held-out samples; --method sets the weights'",
    )
    model.add_argument(
        "--holdout",
        type=float,
        default=0.25,
        metavar="FRACTION",
        help="fraction of the samples held out (0.25; the last ones, batched on their own): "
        "statistics from the rest, the choice of activations and the reported output SQNR "
        "from them (random data: of the batches)",
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
        "--fold-batchnorm",
        action="store_true",
        help="fold each BatchNormalization into the Conv before it first, as integer runtimes "
        "(and ONNX Runtime's quant_pre_process) run it: the folded weights and the normalized "
        "outputs are calibrated, and the QDQ model carries them (the model file is not changed)",
    )
    model.add_argument(
        "--cross-layer-equalization",
        action="store_true",
        help="equalize the weight ranges of each Conv pair (a Conv feeding another alone, "
        "through a Relu or not; AIMET's CLE), after --fold-batchnorm: for per-tensor weights "
        "of depthwise-separable networks (the model file is not changed)",
    )
    model.add_argument(
        "--bias-correction",
        action="store_true",
        help="the QDQ model's biases absorb the mean error of their layer's quantized weights "
        "on the calibration batches (AIMET's empirical bias correction; needs --qdq-model)",
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
