"""The model job: ``encanalyze calibrate model.onnx --data SOURCE``, one skeleton, three grids.

:class:`ModelJob` runs the job's steps in one order for every number format: read the data,
calibrate, choose by the model's output, print the notes and the table (or JSON), build the
outputs at their staged paths (``--plot``, ``--output``, ``--report``, ``--qdq-model``). What
differs is a strategy's: :class:`IntJob` (integer grids, ONNX Runtime's ``quantize_static``),
:class:`Float8Job` (FP8 QDQ models) and :class:`BlockJob` (MX / NVFP4 weight-only models).
The caller publishes the staged outputs together (the output transaction).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from .. import formats
from .._backends import to_numpy
from .._calibration import Progress, progress_bar
from .._html_report import write_report
from .._io import float_weights, printable
from .._memory import map_large_blocks
from .._registry import AUTO_ACTIVATIONS
from .._report import layout_for
from ..distributed import launched_ranks
from ..onnx import calibrate as calibrate_onnx
from ..onnx import choose_encodings, compare_outputs, correct_biases
from ..onnx._blocks import BLOCK_METHODS, block_qdq_model, calibrate_blocks
from ..onnx._calibrate import quantizable_weights
from ..onnx._choose import candidates_of
from ..onnx._float8 import (
    FLOAT8_SESSION,
    calibrate_float8,
    choose_float8_activations,
)
from ..onnx._qdq import compare_outputs_on, stage_qdq_model
from ..onnx._qdq_graph import save_model
from ..onnx._report import model_report
from ._data import JobData, iter_rows, job_data, weight_methods
from ._float import encodings_file, scaled_json
from ._output import (
    cell,
    config_of,
    db,
    judged_by,
    note,
    number,
    plot,
    score,
    scores,
    selected,
    strict_json,
    write_json,
)
from ._parser import ONNX_BITS, method_options

__all__ = ["BlockJob", "Float8Job", "IntJob", "JobError", "ModelJob", "model_job"]


class JobError(ValueError):
    """A failure of the model job as a whole: one line, exit status 1, no output written."""


class _Counted:
    """Batches that advance ``progress`` as they are taken, with their number (``len``)."""

    def __init__(self, batches, progress: Progress) -> None:
        self.batches, self.progress = batches, progress

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(progress_bar(self.batches, self.progress, "SQNR batch"))


class ModelJob:
    """The model job's skeleton; a strategy (subclass) fills in its steps.

    Parameters
    ----------
    args
        The parsed, checked options.
    staged
        Where each output is built, by option (``--output``, ``--report``, ``--qdq-model``,
        ``--plot``): the caller publishes them together when :meth:`run` returns.
    """

    job = "ONNX model"

    def __init__(self, args, staged: dict[str, Path]) -> None:
        self.args, self.staged = args, staged
        self.notes: list[str] = []  # said after the progress bar, before the table

    def run(self) -> int:
        """Run the job; return the exit status.

        Under ``torchrun`` (:func:`encanalyze.distributed.launched_ranks`) each rank calibrates
        its shard of the calibration batches, the statistics are all-reduced, and rank 0 goes
        on alone (the choice, the table, the outputs) with the encodings of all the data.
        """
        started = time.perf_counter()
        map_large_blocks()  # a model's activations come and go on every run: no heap growth
        self.ranks = launched_ranks()
        data = job_data(self.args)
        mine = data
        if self.ranks is not None:
            mine = dataclasses.replace(data, calib=self.ranks.shard(data.calib))
        steps = self.steps(data) - len(data.calib) + len(mine.calib)
        first = self.ranks is None or self.ranks.first
        with Progress(steps, None if first else False) as progress:
            count = len(mine.calib)
            progress.phase(f"calibrating on {count} batch{'' if count == 1 else 'es'}")
            self.calibrate(mine, progress)
            if not first:
                return 0  # its statistics are in rank 0's encodings
            self.choose(data, progress)
        if self.ranks is not None:
            self.notes.append(
                f"calibrated on {self.ranks.size} ranks ({len(data.calib)} batches in all); "
                "rank 0 chose and wrote the outputs"
            )
        for message in data.notes + self.notes:
            note(message)
        for name, reason in self.result.unquantized.items():
            note(f"{name} left in floating point: {reason}")
        for name, branch in getattr(self.result, "branches", {}).items():
            note(
                f"the If producing {name} takes its {branch} on every batch: inlined, so its "
                "activations are calibrated (and the QDQ model serves that branch)"
            )
        if self.args.format == "json":
            found = {"config": config_of(self.args), "data": data.split_json(), **self.json(data)}
            print(strict_json(found))
        else:
            print(f"{self.table(data)}\n{data.split_line()}")
        if "--plot" in self.staged:
            weights = float_weights(data.model)
            plot(self.plot_entries(weights), weights, self.staged["--plot"])
        if "--output" in self.staged:
            write_json(self.staged["--output"], self.encodings_file())
        if "--report" in self.staged:
            progress.phase("the report: sensitivity and comparison")
            summary = {
                "job": self.job,
                "model": printable(str(self.args.files[0])),
                "data": printable(str(self.args.data)),
                "batches": f"{len(data.calib)} calibration, {len(data.judged)} judged "
                f"({data.measured_on})",
                **self.summary(),
                "calibration took": f"{time.perf_counter() - started:.1f} s",
            }
            before = time.perf_counter()
            page = model_report(
                data.model, self.result, list(data.calib), list(data.judged), summary=summary,
                comparison=self.comparison(data), measured_on=data.measured_on,
                sample_axes=data.calib.axes, layers=self.args.report_layers,
                **self.report_options(),
            )  # fmt: skip
            write_report(self.staged["--report"], page)
            seconds = time.perf_counter() - started
            note(
                f"report: {self.args.report} (the report {time.perf_counter() - before:.1f} s "
                f"of {seconds:.1f} s in all)"
            )
        if "--qdq-model" in self.staged:
            self.write_qdq_model(self.staged["--qdq-model"])
        return 0

    # -- the strategy's steps ---------------------------------------------------------------
    def steps(self, data: JobData) -> int:
        """Return the progress bar's number of steps."""
        raise NotImplementedError

    def calibrate(self, data: JobData, progress: Progress) -> None:
        """Calibrate: set ``self.result`` (:class:`JobError` where nothing could be).

        ``data.calib`` is this rank's shard; the statistics are all-reduced over
        :attr:`group`.
        """
        raise NotImplementedError

    @property
    def group(self):
        """The process group of a ``torchrun`` launch (``None``: one process)."""
        return None if self.ranks is None else self.ranks.group

    def choose(self, data: JobData, progress: Progress) -> None:
        """Choose among the methods by the model's output (``self.result`` becomes the choice)."""
        raise NotImplementedError

    def json(self, data: JobData) -> dict:
        """Return ``--format json``'s content (after its ``config``)."""
        raise NotImplementedError

    def table(self, data: JobData) -> str:
        """Return the human table and the choice's lines."""
        raise NotImplementedError

    def plot_entries(self, weights: dict[str, np.ndarray]) -> list[dict]:
        """Return the ``--plot`` entries of the weights (each method's range)."""
        raise NotImplementedError

    def encodings_file(self) -> dict:
        """Return the ``--output`` content."""
        raise NotImplementedError

    def summary(self) -> dict:
        """Return the report's summary rows of this grid."""
        raise NotImplementedError

    def comparison(self, data: JobData) -> list[dict]:
        """Return the report's comparison rows (the output SQNR by option)."""
        raise NotImplementedError

    def report_options(self) -> dict:
        """Return the keyword arguments :func:`model_report` takes from this grid."""
        return {}

    def write_qdq_model(self, path: Path) -> None:
        """Write the chosen QDQ model at ``path`` (staged)."""
        raise NotImplementedError


def _float_entries(weights: dict, by_weight: dict, fmt) -> list[dict]:
    """Plot entries: ``by_weight`` is ``{name: ({method: (scales, SQNR dB)}, chosen method)}``.

    A method's range is ``+-`` its scales times the format's largest value.
    """
    entries = []
    for name, (by_method, best) in by_weight.items():
        methods = {}
        for m, (scales, sqnr) in by_method.items():
            amax = (np.asarray(scales, np.float64).reshape(-1) * fmt.max).tolist()
            methods[m] = {"min": [-a for a in amax], "max": amax, "sqnr_db": sqnr}
        shape = list(np.shape(weights[name]))
        entries.append({"name": name, "shape": shape, "methods": methods, "best": best})
    return entries


class IntJob(ModelJob):
    """Integer grids: weights and activations, the activations' method chosen by the output."""

    def steps(self, data: JobData) -> int:
        """Weights, calibration batches, the choice, the QDQ model's own runs."""
        self.methods = self._activation_methods()
        qdq = 1 + len(data.judged) + len(data.calib) if "--qdq-model" in self.staged else 0
        choosing = 1 if len(self.methods) > 1 else 0  # the choice is one step of the bar
        return len(quantizable_weights(data.model)) + len(data.calib) + choosing + qdq

    def _activation_methods(self) -> list[str]:
        """Return ``--activation-method`` as a list of methods.

        ``auto`` gives its candidates where a QDQ model can judge them (a bit width ONNX has,
        per-tensor activations), else percentile (with a note).
        """
        args = self.args
        if args.activation_method != "auto":
            return [args.activation_method]
        if args.bits not in ONNX_BITS or args.per_channel is not None:
            self.notes.append(
                "--activation-method auto needs a QDQ model to compare methods (4, 8 or 16 "
                "bits, per-tensor activations): percentile used"
            )
            return ["percentile"]
        return list(AUTO_ACTIVATIONS)

    def calibrate(self, data: JobData, progress: Progress) -> None:
        """Weights and activations by :func:`encanalyze.onnx.calibrate`."""
        args, methods = self.args, self.methods
        self.statistics = {} if args.report is not None else None
        options = {m: method_options(args, m) for m in methods}
        self.result = calibrate_onnx(
            data.model,
            data.calib,
            activations=methods if len(methods) > 1 else methods[0],
            weights=weight_methods(args),  # all: each weight's best SQNR, then by the output
            activation_options=options if len(methods) > 1 else options[methods[0]],
            bits=args.bits,
            symmetric=args.symmetric,
            weight_symmetric=args.weight_grid == "symmetric",
            per_channel_weights=not args.per_tensor_weights,
            progress=progress,
            tensors=lambda name: selected(name, args),
            activation_axis=args.per_channel,
            statistics=self.statistics,
            group=self.group,
            sample_axes=data.calib.axes,
        )
        if not self.result.encodings:
            raise JobError("no tensor of the model could be calibrated")

    def choose(self, data: JobData, progress: Progress) -> None:
        """Activations and weights together by the output (auto), then the QDQ model's SQNR."""
        self.chosen = self.qdq = self.staged_model = None
        stage = self.staged.get("--qdq-model")
        result = self.result
        if len(self.methods) > 1 and any(e.kind == "activation" for e in result.encodings.values()):
            acts, params = candidates_of(result, True, True)
            progress.phase(f"choosing the encodings ({len(acts) + len(params) - 1} options)")
            self.result, chosen = choose_encodings(
                data.model, result, data.judged, stage=stage, sample_axes=data.calib.axes
            )
            self.staged_model, self.opset = chosen.qdq_model, chosen.opset  # built while choosing
            progress.advance()
            self.chosen = chosen
        if stage is None:
            return
        progress.phase("writing the QDQ model")
        if self.args.bias_correction:  # the chosen encodings' weight errors, from the biases
            corrected, layers = correct_biases(data.model, self.result, data.calib)
            self.notes.append(
                f"--bias-correction: {len(layers)} layer(s)' biases absorb the mean error of "
                "their quantized weights on the calibration batches (in the QDQ model)"
            )
            self.staged_model, self.opset = stage_qdq_model(corrected, self.result, stage)
        elif self.staged_model is None:
            self.staged_model, self.opset = stage_qdq_model(data.model, self.result, stage)
        progress.advance()
        progress.phase("the QDQ model's output SQNR")
        sets = [data.judged, data.calib] if len(data.held) else [data.judged]
        self.errors, *others = compare_outputs_on(
            data.model,
            self.staged_model,
            [_Counted(b, progress) for b in sets],
            sample_axes=data.calib.axes,
        )
        self.calib_errors = others[0] if others else self.errors
        self.qdq = {
            "path": str(self.args.qdq_model),
            "opset": self.opset,
            "measured_on": data.measured_on,
            **self.errors.as_json(),
            **self.calib_errors.as_json("calibration_"),
        }

    def json(self, data: JobData) -> dict:
        """Grids, the choice, every encoding, the tensors left in float, the QDQ model."""
        result, choice = self.result, None
        if self.chosen is not None:
            choice = {"measured_on": data.measured_on, **self.chosen.as_dict()}
        return {
            "grids": result.grids(),
            "choice": choice,
            "tensors": list(iter_rows(result)),
            "unquantized": [{"name": n, "reason": r} for n, r in result.unquantized.items()],
            "branches": result.branches,
            "qdq_model": self.qdq,
        }

    def table(self, data: JobData) -> str:
        """Return the result's table, its grids, the choice and the QDQ model's output SQNR."""
        lines = [self.result.table(), f"grids: {self.result.grids()}"]
        choice, qdq = self.chosen, self.qdq
        if choice is not None:
            unit, emulated = choice.unit, choice.emulated
            checked = ", ".join(f"{m} {score(v, unit)}" for m, v in choice.checked.items())
            lines.append(
                f"chosen by the output on the {data.measured_on} data: activations "
                f"{choice.chosen.activations}, weights {choice.chosen.weights or 'as calibrated'} "
                f"(default {choice.default.label}; {len(emulated)} options emulated; QDQ models: "
                f"{checked})"
            )
            points = " dB" if unit == "dB" else " points"
            for label, (gain, se) in choice.gains.items():
                lines.append(
                    f"   {label}: {score(emulated[label], unit)} emulated, {gain:+.2f} "
                    f"+- {se:.2f}{points}"
                )
            if choice.note:
                lines.append(f"   {choice.note}")
        if qdq is not None:
            where = printable(qdq["path"])
            exact = "" if self.errors.exact.any() else " SQNR"
            lines.append(
                f"QDQ model: {where} ({qdq['opset']}); output{exact} on the "
                f"{qdq['measured_on']} data: {scores(self.errors)}"
            )
            if qdq["measured_on"] == "held-out":
                lines.append(f"   on the calibration data: {scores(self.calib_errors)}")
        return "\n".join(lines)

    def plot_entries(self, weights: dict[str, np.ndarray]) -> list[dict]:
        """Return the weights' chosen method's range."""
        out = []
        for e in self.result.encodings.values():
            if e.kind == "param":
                lo, hi = (to_numpy(a).reshape(-1).tolist() for a in (e.min, e.max))
                one = {"min": lo, "max": hi, "sqnr_db": e.sqnr_db}
                shape = list(weights[e.name].shape)
                out.append(
                    {"name": e.name, "shape": shape, "methods": {e.method: one}, "best": e.method}
                )
        return out

    def encodings_file(self) -> dict:
        """AIMET 1.0.0 encodings or ONNX QuantizeLinear's scales and zero points."""
        aimet = self.args.output_format == "aimet"
        return self.result.aimet() if aimet else self.result.onnx_qdq()

    def summary(self) -> dict:
        """Grids, methods, the choice and the QDQ model's output SQNR."""
        args, choice, qdq = self.args, self.chosen, self.qdq
        out = {
            "grids": self.result.grids(),
            "weights' methods": args.method,
            "activations' methods": args.activation_method,
        }
        if choice is not None:
            chosen = choice.chosen
            used = {e.method for e in self.result.encodings.values() if e.kind == "param"}
            weights = chosen.weights or f"{', '.join(sorted(used)) or 'none'} (the only method)"
            out["chosen"] = f"activations {chosen.activations}, weights {weights}"
        if qdq is not None:
            label = "QDQ model's output" + ("" if self.errors.exact.any() else " SQNR")
            out[label] = scores(self.errors)
        return out

    def comparison(self, data: JobData) -> list[dict]:
        """Each activation method's QDQ model, and the written one."""
        measured_on = data.measured_on
        rows = []
        if self.chosen is not None:
            for method, value in self.chosen.checked.items():
                label = f"encanalyze, activations {method} (QDQ model)"
                rows.append({"label": label, "output_sqnr_db": value, "measured_on": measured_on})
        if self.qdq is not None:
            label = f"encanalyze, the written QDQ model ({printable(self.qdq['path'])})"
            value = self.errors.score()
            rows.append({"label": label, "output_sqnr_db": value, "measured_on": measured_on})
        return rows

    def report_options(self) -> dict:
        """Return the statistics; ONNX Runtime's calibrators where they can compare."""
        peers = self.args.bits in ONNX_BITS and self.args.per_channel is None
        return {"statistics": self.statistics, "peers": peers}

    def write_qdq_model(self, path: Path) -> None:
        """Keep the QDQ model staged at ``path`` while choosing (or after): nothing to write."""


class Float8Job(ModelJob):
    """FP8: weights by their best SQNR, the activations' method by the FP8 model's output."""

    job = "ONNX model, FP8"

    def steps(self, data: JobData) -> int:
        """Weights, calibration batches, one QDQ model per activation method."""
        args = self.args
        self.fmt = formats.NUMBER_FORMATS[args.number_format].element
        every = formats.FLOAT_METHODS
        self.weight_methods = every if args.method in ("all", "auto") else (args.method,)
        auto = args.activation_method == "auto"
        self.act_methods = every if auto else (args.activation_method,)
        return len(quantizable_weights(data.model)) + len(data.calib) + len(self.act_methods)

    def calibrate(self, data: JobData, progress: Progress) -> None:
        """Weights and activations by :func:`encanalyze.onnx.calibrate_float8`."""
        args = self.args
        self.statistics = {} if args.report is not None else None
        result = calibrate_float8(
            data.model,
            data.calib,
            self.fmt,
            methods=tuple(dict.fromkeys((*self.act_methods, *self.weight_methods))),
            per_channel_weights=not args.per_tensor_weights,
            num_bins=args.num_bins,
            percentile=args.percentile,
            gamma=args.gamma,
            tensors=lambda name: selected(name, args),
            progress=progress,
            statistics=self.statistics,
            group=self.group,
            sample_axes=data.calib.axes,
        )
        self.result = _weights_by(result, self.weight_methods)
        if not self.result.encodings:
            raise JobError("no tensor of the model could be calibrated")

    def choose(self, data: JobData, progress: Progress) -> None:
        """Choose the activations' method by the FP8 QDQ model's output SQNR."""
        progress.phase("choosing the activations' method")
        judged = list(data.judged)
        self.method, self.scores, self.qdq = choose_float8_activations(
            data.model, self.result, judged, self.act_methods, sample_axes=data.calib.axes
        )
        progress.advance(len(self.act_methods))
        self.result = self.result.with_activations(self.method)

    def _rows(self) -> list[dict]:
        return [
            {
                "name": e.name,
                "kind": e.kind,
                "axis": e.axis,
                "method": e.method,
                "scale": e.scale.astype(float).tolist(),
                "sqnr_db": None if e.sqnr_db is None else e.sqnr_db[e.method],
            }
            for e in self.result.encodings.values()
        ]

    def json(self, data: JobData) -> dict:
        """Return the choice, every encoding and the QDQ model on the calibration data."""
        on_calib = None
        if self.args.qdq_model is not None and len(data.held):
            on_calib = compare_outputs(
                data.model, self.qdq, data.calib, None, FLOAT8_SESSION, data.calib.axes
            )
        return _scored_json(self, data, "activations", on_calib)

    def table(self, data: JobData) -> str:
        """Every encoding's median scale, and the activations' choice."""
        rows = self._rows()
        width = min(60, max([6, *(len(r["name"]) for r in rows)]))
        head = (
            f"{'tensor':<{width + 1}}{'kind':<11}{'method':<11}{'scale':>11}{'scales':>8}"
            f"{'SQNR dB':>9}"
        )
        lines = [head, "-" * len(head)]
        for r in rows:
            lines.append(
                f"{cell(r['name'], width)} {r['kind']:<11}{r['method']:<11}"
                f"{number(float(np.median(r['scale'])))}{len(r['scale']):>8}{db(r['sqnr_db'])}"
            )
        lines.append(
            "scale: the median of a tensor's scales; SQNR: a weight's own quantize-dequantize"
        )
        unit = self.scores[self.method].unit
        shown = ", ".join(f"{m} {score(v.score(), unit)}" for m, v in self.scores.items())
        lines.append(
            f"activations: {self.method}, by the FP8 QDQ model's {judged_by(unit)} on the "
            f"{data.measured_on} data ({shown})"
        )
        return "\n".join(lines)

    def plot_entries(self, weights: dict[str, np.ndarray]) -> list[dict]:
        """Each weight's range by every method."""
        by_weight = {
            e.name: ({m: (s, e.sqnr_db[m]) for m, s in e.scales.items()}, e.method)
            for e in self.result.encodings.values()
            if e.kind == "param"
        }
        return _float_entries(weights, by_weight, self.result.fmt)

    def encodings_file(self) -> dict:
        """Encanalyze's float layout, or QuantizeLinear's FP8 scales (``onnx-qdq``)."""
        entries = []
        for e in self.result.encodings.values():
            layout = layout_for((1,) if e.axis is None else (*([1] * e.axis), e.scale.size), e.axis)
            r = {"scale": e.scale.astype(float).tolist()}
            r["_export"] = scaled_json(self.fmt, layout, e.scale)
            entries.append({"name": e.name, "_layout": layout, "best": e.method})
            entries[-1]["methods"] = {e.method: r}
        return encodings_file(entries, self.args.number_format, self.args.output_format)

    def summary(self) -> dict:
        """Return the format, the methods and the choice."""
        acts = [e.method for e in self.result.encodings.values() if e.kind == "activation"]
        return {
            "number format": self.args.number_format,
            "weights' methods": self.args.method,
            "activations' methods": self.args.activation_method,
            "chosen": (f"activations {acts[0]}" if acts else "no activations")
            + ", weights: each its best SQNR",
        }

    def comparison(self, data: JobData) -> list[dict]:
        """Each activation method's FP8 QDQ model."""
        return [
            {
                "label": f"encanalyze {self.args.number_format}, activations {m} (QDQ model)",
                "output_sqnr_db": v.score(),
                "measured_on": data.measured_on,
            }
            for m, v in self.scores.items()
        ]

    def report_options(self) -> dict:
        """Return the activations' statistics."""
        return {"statistics": self.statistics}

    def write_qdq_model(self, path: Path) -> None:
        """Write the chosen activations' FP8 QDQ model."""
        save_model(self.qdq, path)


def _scored_json(job, data: JobData, chosen: str, on_calib) -> dict:
    """Return a float or block job's JSON: what was ``chosen`` by the output, the rows.

    ``job.scores`` holds each method's ``OutputErrors``; ``on_calib`` the chosen one's on the
    calibration data (``None``: not measured).
    """
    by_method = {m: e.as_json() for m, e in job.scores.items()}
    keys = dict.fromkeys(k for e in by_method.values() for k in e)
    calibration = {"calibration_output_sqnr_db": None}
    if on_calib is not None:
        calibration = on_calib.as_json("calibration_")
    return {
        "number_format": job.args.number_format,
        chosen: {
            "method": job.method,
            "measured_on": data.measured_on,
            **{k: {m: e[k] for m, e in by_method.items()} for k in keys},
        },
        "tensors": job._rows(),
        "unquantized": [{"name": n, "reason": r} for n, r in job.result.unquantized.items()],
        **calibration,
    }


def _weights_by(result, methods):
    """Return ``result`` with each weight on its best-SQNR method among ``methods``."""
    encodings = {}
    for name, e in result.encodings.items():
        if e.kind == "param":
            best = max(methods, key=lambda m: (e.sqnr_db[m], -methods.index(m)))
            e = dataclasses.replace(e, method=best)
        encodings[name] = e
    return dataclasses.replace(result, encodings=encodings)


class BlockJob(ModelJob):
    """MX / NVFP4 weights in blocks, the block method chosen by the output; activations float."""

    def steps(self, data: JobData) -> int:
        """Weights, one weight-only model per block method."""
        args = self.args
        spec = formats.NUMBER_FORMATS[args.number_format]
        self.scheme, self.fmt = spec.scheme, spec.element
        self.methods = BLOCK_METHODS if args.method in ("all", "auto") else (args.method,)
        self.job = f"ONNX model, {args.number_format} weights (activations in floating point)"
        return len(quantizable_weights(data.model)) + len(self.methods)

    def calibrate(self, data: JobData, progress: Progress) -> None:
        """Every weight in blocks by each method (:func:`encanalyze.onnx.calibrate_blocks`)."""
        self.result = calibrate_blocks(
            data.model, self.scheme, self.fmt, methods=self.methods,
            tensors=lambda n: selected(n, self.args), progress=progress,
        )  # fmt: skip
        if not self.result.weights:
            raise JobError("no weight of the model could be put in blocks: nothing to quantize")

    def choose(self, data: JobData, progress: Progress) -> None:
        """Choose the method whose weight-only model's output is closest to the float one."""
        self.scores, self.models = {}, {}
        judged = list(data.judged)
        for method in self.methods:
            progress.phase(f"the {method} model's output")
            self.models[method] = block_qdq_model(data.model, self.result, method)
            self.scores[method] = compare_outputs(
                data.model, self.models[method], judged, sample_axes=data.calib.axes
            )
            progress.advance()
        self.mean = {m: v.score() for m, v in self.scores.items()}
        rank = {m: -np.inf if np.isnan(v) else v for m, v in self.mean.items()}
        self.method = max(self.methods, key=rank.__getitem__)  # minmax first on ties
        self.result = self.result.with_method(self.method)

    def _rows(self) -> list[dict]:
        return [
            {
                "name": w.name,
                "shape": list(w.elements[self.method].shape),
                "block_axis": w.axis,
                "blocks": int(w.scales[self.method].size),
                "sqnr_db": w.sqnr_db,
            }
            for w in self.result.weights.values()
        ]

    def json(self, data: JobData) -> dict:
        """Return the choice, every weight's blocks and the model on the calibration data."""
        on_calib = None
        if len(data.held):
            on_calib = compare_outputs(
                data.model, self.models[self.method], data.calib, sample_axes=data.calib.axes
            )
        return _scored_json(self, data, "weights", on_calib)

    def table(self, data: JobData) -> str:
        """Every weight's blocks and SQNR by method, and the choice."""
        rows, methods = self._rows(), self.methods
        width = min(60, max([6, *(len(r["name"]) for r in rows)]))
        head = f"{'weight':<{width + 1}}{'shape':<20}{'axis':>5}{'blocks':>9}"
        head += "".join(f"{m + ' dB':>11}" for m in methods)
        lines = [head, "-" * len(head)]
        for r in rows:
            shape = "x".join(map(str, r["shape"]))
            line = f"{cell(r['name'], width)} {shape:<20}{r['block_axis']:>5}{r['blocks']:>9}"
            lines.append(line + "".join(f"{db(r['sqnr_db'][m]):>11}" for m in methods))
        lines.append("dB: the SQNR of each weight's own quantize-dequantize, by method")
        unit = self.scores[self.method].unit
        shown = ", ".join(f"{m} {score(self.mean[m], unit)}" for m in methods)
        lines.append(
            f"weights: {self.method}, by the {self.args.number_format} model's {judged_by(unit)} "
            f"on the {data.measured_on} data ({shown}); activations stay in floating point"
        )
        return "\n".join(lines)

    def plot_entries(self, weights: dict[str, np.ndarray]) -> list[dict]:
        """Each weight's range by every method."""
        by_weight = {
            w.name: ({m: (w.scales[m], w.sqnr_db[m]) for m in self.methods}, self.method)
            for w in self.result.weights.values()
        }
        return _float_entries(weights, by_weight, self.fmt)

    def encodings_file(self) -> dict:
        """Encanalyze's block layout of the chosen method."""
        tensors = {w.name: w.export[self.method] for w in self.result.weights.values()}
        return {
            "format_version": formats.JSON_VERSION,
            "number_format": self.args.number_format,
            "tensors": tensors,
        }

    def summary(self) -> dict:
        """Return the format, the methods and the choice."""
        return {
            "number format": self.args.number_format,
            "methods": ", ".join(self.mean),
            "chosen": f"weights {self.result.method}, by the model's output",
        }

    def comparison(self, data: JobData) -> list[dict]:
        """Each block method's weight-only model."""
        return [
            {
                "label": f"encanalyze {self.args.number_format}, weights {m} (QDQ model)",
                "output_sqnr_db": v,
                "measured_on": data.measured_on,
            }
            for m, v in self.mean.items()
        ]

    def report_options(self) -> dict:
        """No peers: ONNX Runtime's calibrators have no block formats."""
        return {"peers": False}

    def write_qdq_model(self, path: Path) -> None:
        """Write the chosen method's weight-only model."""
        save_model(self.models[self.method], path)


def model_job(args, staged: dict[str, Path]) -> int:
    """Run the model job of ``args.number_format``; return the exit status."""
    scheme = formats.NUMBER_FORMATS[args.number_format].scheme
    strategy = {"int": IntJob, "scaled": Float8Job}.get(scheme, BlockJob)
    return strategy(args, staged).run()
