"""The ``encanalyze`` command: calibrate tensor files and ONNX models, export encodings, plot.

``encanalyze calibrate [FILES...]`` (also ``python -m encanalyze``) reads tensors, calibrates
each with every registered method (min-max, percentile, SQNR, MSE, entropy, moving-average
min-max), and reports per tensor and method the encoding, its clipped fraction and the SQNR of
quantize-dequantize on the tensor itself; with ``--data`` it calibrates one ONNX model.

:func:`main` is the command's one exception boundary: a bad option is one line and exit
status 2, a failed job one line and exit status 1, Ctrl-C 130, SIGTERM 143 and SIGHUP 129;
in every case no output was written (they are published together at the end of a job).
"""

from __future__ import annotations

import signal
import sys
import warnings

from .._io import Outputs, Terminated, printable, stopping_signals
from ._model_job import model_job
from ._options import check_options, declare_io
from ._output import note, one_line
from ._parser import METHODS, UsageError, build_parser
from ._tensor_job import tensor_job

__all__ = ["METHODS", "build_parser", "calibrate", "main"]


def calibrate(args) -> int:
    """Run ``encanalyze calibrate`` with parsed ``args``; return the exit status.

    The options are checked and every input and output declared before any work; the outputs
    are built at staged paths and published together when the job has succeeded.
    """
    check_options(args)
    with Outputs() as outputs:
        staged = declare_io(args, outputs)
        job = tensor_job if args.data is None else model_job
        status = job(args, staged)
        if status == 0:
            outputs.commit()
        return status


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``encanalyze`` command; return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "calibrate")  # calibrate is the default command
    with stopping_signals():  # SIGTERM, SIGHUP: the same clean-up as Ctrl-C
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
                        note(message)
        except UsageError as err:
            print(f"encanalyze: error: {printable(str(err))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: no traceback
            print("encanalyze: interrupted", file=sys.stderr)
            return 130
        except Terminated as err:
            print(f"encanalyze: {err}", file=sys.stderr)
            return 128 + err.signum
        except Exception as err:  # noqa: BLE001 - the command's one boundary
            print(f"encanalyze: error: {printable(one_line(err))}", file=sys.stderr)
            return 1
