"""Choosing encodings by the model's output: every option emulated, the decision built and run.

An option is one method for every activation and one for every weight (or each weight's best
SQNR on itself). All options are scored on the same batches by one emulated model
(:class:`~encanalyze.onnx._emulate.Emulator`: one session, an option is one feed), and the
default is left only for an option that is significantly better on those samples; the
decision and the simple option (min-max everywhere) are then built as QDQ models by ONNX
Runtime and run, and min-max everywhere replaces the decision where it is significantly better.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._calibration import CalibrationResult
from .._io import SIDECAR, load_model, own_model
from .._memory import release_freed_memory
from .._output_errors import OutputErrors
from .._report import sqnr_rank
from ._calibrate import QUANTIZABLE_OPS, model_inputs, run_batch, session
from ._emulate import Emulator
from ._qdq import check_qdq, model_outputs, output_pieces, stage_qdq_model

__all__ = [
    "BEST_TENSOR_SQNR",
    "DEFAULT",
    "Choice",
    "KEPT_BYTES",
    "Kept",
    "Option",
    "candidates_of",
    "choose_encodings",
]

BEST_TENSOR_SQNR = "best-tensor-sqnr"
"""The weights' option that keeps each weight's best SQNR on itself (what ``calibrate`` keeps)."""

SIMPLE = "minmax"

DEFAULT = ("percentile", "minmax")
"""The option kept unless another is significantly better: percentile activations and
min-max weights, the deployment default of ONNX Runtime, TensorRT and QNN."""

Z = 1.645
"""Standard errors by which an option's gain must exceed zero to leave the default (a one-sided
95% normal bound)."""


@dataclass(frozen=True)
class Option:
    """One method for every activation and one for every weight (``None``: left as they are)."""

    activations: str | None
    weights: str | None

    @property
    def label(self) -> str:
        """``activations+weights``, e.g. ``percentile+minmax`` (one name where one varies)."""
        return "+".join(m for m in (self.activations, self.weights) if m is not None)

    def apply(self, result: CalibrationResult) -> CalibrationResult:
        """Return ``result`` with this option's encodings."""
        if self.activations is not None:
            result = result.with_method("activation", self.activations)
        if self.weights not in (None, BEST_TENSOR_SQNR):
            result = result.with_method("param", self.weights)
        return result


@dataclass(frozen=True)
class Choice:
    """What :func:`choose_encodings` kept and why.

    ``emulated``: each option's output SQNR in dB (the mean over the model's float outputs)
    in the emulation, by label; ``gains``: each option's gain in dB over the option it was
    compared with (``default``, then the activations kept with the default weights) and its
    standard error; ``checked``: the QDQ models' output SQNR of the options that were built
    (the decision and ``simple``); ``note`` says when the simple option was kept against the
    decision; ``qdq_model`` is the chosen option's QDQ model where the caller asked to keep
    it, and ``opset`` what its opset got. ``unit`` is ``"%"`` where the model has no float
    output: every score is then its integer or bool outputs' mean agreement in % (and the
    gains in percentage points).
    """

    chosen: Option
    simple: Option
    default: Option
    emulated: dict[str, float] = field(default_factory=dict)
    gains: dict[str, tuple[float, float]] = field(default_factory=dict)
    checked: dict[str, float] = field(default_factory=dict)
    note: str | None = None
    qdq_model: Path | None = None
    opset: str | None = None
    unit: str = "dB"

    @property
    def measure(self) -> str:
        """What the scores are: ``output_sqnr_db`` or ``output_agreement_percent``."""
        return "output_sqnr_db" if self.unit == "dB" else "output_agreement_percent"

    def as_dict(self) -> dict:
        """Return the choice as JSON-ready values (the scores' keys name :attr:`measure`)."""
        gain = "gain_db" if self.unit == "dB" else "gain_percent_points"
        return {
            "activations": self.chosen.activations,
            "weights": self.chosen.weights,
            "default": self.default.label,
            f"emulated_{self.measure}": dict(self.emulated),
            gain: {k: {"gain": g, "standard_error": e} for k, (g, e) in self.gains.items()},
            f"qdq_{self.measure}": dict(self.checked),
            "simple": self.simple.label,
            "note": self.note,
        }


def candidates_of(result: CalibrationResult, activations: bool, weights: bool) -> tuple[list, list]:
    """Return the activations' and the weights' methods to choose from, the simple one first.

    ``[None]`` for a kind that is not chosen (its tensors are left as they are).
    """

    def methods(kind: str) -> list[str]:
        names = {n for n, e in result.encodings.items() if e.kind == kind}
        found = dict.fromkeys(m for n, c in result.candidates.items() if n in names for m in c)
        return list(found)

    acts = methods("activation") if activations else []
    params = [BEST_TENSOR_SQNR, *methods("param")] if weights and methods("param") else []
    acts = sorted(acts or [None], key=lambda m: m != SIMPLE)  # min-max first: the simple one
    params = sorted(params or [None], key=lambda m: m != SIMPLE)
    if len(acts) * len(params) < 2:
        raise ValueError("the result holds one method for each tensor: calibrate with several")
    return acts, params


def choose_encodings(
    model,
    result: CalibrationResult,
    batches,
    *,
    activations: bool = True,
    weights: bool = True,
    z: float = Z,
    op_types=QUANTIZABLE_OPS,
    providers=None,
    stage: Path | None = None,
    sample_axes: Mapping[str, int | None] | None = None,
) -> tuple[CalibrationResult, Choice]:
    """Pick the encodings whose quantized model's output is closest to the float model's.

    ``result`` comes from :func:`encanalyze.onnx.calibrate` with several ``activations``
    methods and, for ``weights``, several weight methods (its ``candidates``). An option is
    one method for every activation (``activations``) and one for every weight or each
    weight's best SQNR on itself (``"best-tensor-sqnr"``; ``weights``), scored by the output
    SQNR (the mean over the model's float outputs; integer and bool outputs, compared exactly,
    judge only a model with no float output, by their agreement) of one emulated model on
    ``batches``, which should
    be held-out samples, not the calibration ones (options with the same encodings run once).
    First each activation method is scored with the default weights, then each weight option
    with the activations kept. The default (:data:`DEFAULT`: percentile activations, min-max
    weights, what ONNX Runtime, TensorRT and QNN deploy) is left only for an option whose gain
    over it is more than ``z`` standard errors (a jackknife over the samples, the rows of the
    outputs' first axis): on a few samples the output SQNR of a confident classifier moves by
    several dB from one sample set to the next, and a choice by the best score alone follows
    that noise. The decision and the simple option (min-max everywhere) are then built as QDQ
    models by ONNX Runtime and run on the same batches, and min-max everywhere replaces the
    decision where its gain over it passes the same gate, so the result is never significantly
    below min-max everywhere on these batches; ``z=0`` gives the best emulated options and a
    result never below min-max everywhere on these batches at all (a 16-sample check of that
    kind kept min-max for a classifier whose 64 other samples gave it 17.9 dB against the
    decision's 23.6). Returns the result with the chosen encodings and the
    :class:`Choice`. With ``stage`` (a file name in a folder of the caller's), the QDQ models
    are built there, each in a folder of its own, and the chosen one is left at ``stage``
    itself (``Choice.qdq_model``, with what its opset got in ``Choice.opset``; external data
    beside it) for the caller to publish instead of building it again. ``sample_axes``: each
    input's sample axis; given, batches are run in pieces of samples whose outputs take about
    32 MiB (:func:`~encanalyze.onnx._qdq.output_pieces`), and the float model's outputs past
    :data:`KEPT_BYTES` wait in files of a temporary folder: memory does not grow with the
    judged samples.
    """
    check_qdq(result)
    acts, params = candidates_of(result, activations, weights)
    proto, _ = load_model(model)
    names = [o.name for o in proto.graph.output]
    inputs = model_inputs(proto)
    run = session(proto, providers)
    del proto
    simple = Option(acts[0], params[0])
    default = Option(*(d if d in c else c[0] for d, c in zip(DEFAULT, (acts, params), strict=True)))
    emulated: dict[str, float] = {}
    gains: dict[str, tuple[float, float]] = {}
    seen: dict[bytes, tuple] = {}
    checked: dict[str, float] = {}
    measured: dict[str, tuple] = {}
    built: dict[str, tuple[Path, str]] = {}
    with contextlib.ExitStack() as stack:
        parent = stage.parent if stage is not None else Path(stack.enter_context(_temporary()))
        name = stage.name if stage is not None else "model.onnx"
        reference = Kept(Path(tempfile.mkdtemp(dir=parent, prefix=".reference-")))
        stack.callback(shutil.rmtree, reference.folder, True)
        judged = []  # the float model once, on pieces of samples (memory: a few samples)
        for feed in output_pieces(run, inputs, names, batches, sample_axes):
            judged.append(feed)
            reference.append(run_batch(run, names, feed))
        del run
        release_freed_memory(collect=False)  # the float session's

        def build(option: Option) -> tuple[Path, str]:
            folder = Path(tempfile.mkdtemp(dir=parent, prefix=".option-"))
            return stage_qdq_model(model, option.apply(result), folder / name, op_types=op_types)

        # one weight option: the weights are quantized once, in the emulator's graph
        fixed = None if len(params) > 1 else Option(acts[0], params[0]).apply(result).encodings
        fixed = fixed and {n: e for n, e in fixed.items() if e.kind == "param"}
        with Emulator(
            model, result, op_types=op_types, providers=providers, fixed=fixed
        ) as emulator:

            def per_sample(option: Option) -> tuple:
                feed = emulator.feed(option.apply(result).encodings)
                key = b"".join(k.encode() + v.tobytes() for k, v in sorted(feed.items()))
                if key not in seen:  # options with the same encodings run once
                    got = emulator.outputs(feed, judged)
                    seen[key] = OutputErrors.measure(names, reference, got)
                emulated[option.label] = _score(seen[key])
                return seen[key]

            def keep_or_switch(base: Option, options: list[Option]) -> Option:
                """Return ``base``, or the best-scoring option significantly better than it."""
                ref = per_sample(base)
                significant = []
                for option in options:
                    gain, se = _gain(per_sample(option), ref)
                    if option != base:
                        gains[option.label] = (gain, se)
                        if _beats(gain, se, z):
                            significant.append(option)
                return max(significant, key=lambda o: emulated[o.label], default=base)

            base = keep_or_switch(default, [Option(a, default.weights) for a in acts])
            decision = keep_or_switch(base, [Option(base.activations, w) for w in params])
        for option in dict.fromkeys([simple, decision]):  # after the emulation: memory
            release_freed_memory()  # the emulation's, then each build's
            built[option.label] = build(option)
            outputs = model_outputs(own_model(built[option.label][0]), judged, names, providers)
            measured[option.label] = OutputErrors.measure(names, reference, outputs)
            checked[option.label] = _score(measured[option.label])
        # min-max everywhere replaces the decision where it is the better one by the same gate
        gain, se = _gain(measured[simple.label], measured[decision.label])
        below = decision != simple and (
            _beats(gain, se, z) or not sqnr_rank(checked[decision.label]) > -math.inf
        )
        chosen = simple if below else decision
        if stage is not None:  # the chosen model (and its external data) to the staged name
            path = built[chosen.label][0]
            for suffix in (SIDECAR, ""):
                made = path.with_name(path.name + suffix)
                if made.exists():
                    os.replace(made, stage.with_name(stage.name + suffix))
        for path, _ in built.values():
            shutil.rmtree(path.parent, ignore_errors=True)
    unit = measured[simple.label].unit
    points = " dB" if unit == "dB" else " percentage points"
    note = None
    if below:
        note = (
            f"{decision.label}'s QDQ model was further from the float model than "
            f"{simple.label}'s on these batches ({gain:+.2f} +- {se:.2f}{points}): "
            f"{simple.label} kept"
        )
    elif gain > 0 and decision != simple:
        note = (
            f"{simple.label}'s QDQ model scored {gain:.2f}{points} above {decision.label}'s on "
            f"these batches, within their noise ({se:.2f}{points} standard error): "
            f"{decision.label} kept"
        )
    if unit == "%":
        judged = "the model has no float output: options scored by the agreement of its outputs"
        note = judged if note is None else f"{judged}; {note}"
    kept = (stage, built[chosen.label][1]) if stage is not None else (None, None)
    choice = Choice(chosen, simple, default, emulated, gains, checked, note, *kept, unit)
    return chosen.apply(result), choice


def _score(errors: OutputErrors) -> float:
    """Return the score of every sample together (:meth:`OutputErrors.statistic`)."""
    return float(errors.statistic(errors.signal.sum(axis=1), errors.noise.sum(axis=1)))


def _gain(option: OutputErrors, base: OutputErrors) -> tuple[float, float]:
    """Return the option's score minus the base's, and its jackknife standard error."""
    gain = _score(option) - _score(base)
    count = option.signal.shape[1]
    if count < 3 or not np.isfinite(gain):
        return gain, math.inf
    loo = [  # the score with each sample left out
        e.statistic(e.signal.sum(axis=1, keepdims=True) - e.signal,
                    e.noise.sum(axis=1, keepdims=True) - e.noise)
        for e in (option, base)
    ]  # fmt: skip
    diff = loo[0] - loo[1]
    if not np.all(np.isfinite(diff)):
        return gain, math.inf
    se = math.sqrt((count - 1) / count * float(np.sum((diff - diff.mean()) ** 2)))
    return gain, se


def _beats(gain: float, se: float, z: float) -> bool:
    """Return whether ``gain`` is more than ``z`` standard errors ``se`` (z = 0: above 0)."""
    if math.isinf(z):
        return z < 0 and not math.isnan(gain)
    if not math.isfinite(se):  # too few samples to tell: only z <= 0 lets a gain through
        return z <= 0 and gain > (0.0 if z == 0 else -math.inf)
    return gain > z * se


KEPT_BYTES = 1 << 27
"""Bytes of the float model's outputs that the choice keeps in memory (128 MiB); the rest of
the judged batches' outputs are kept in ``.npz`` files and read back one batch at a time."""


class Kept(Sequence):
    """Batches of outputs (lists of arrays), in memory up to :data:`KEPT_BYTES`, then in files.

    ``folder``: where the files go (the caller removes it).
    """

    def __init__(self, folder: Path) -> None:
        self.folder, self._items, self._bytes = folder, [], 0

    def append(self, arrays: list) -> None:
        """Keep one batch's outputs."""
        size = sum(getattr(a, "nbytes", 0) for a in arrays)
        plain = all(isinstance(a, np.ndarray) and a.dtype.kind in "biufc" for a in arrays)
        if not plain or self._bytes + size <= KEPT_BYTES:
            self._bytes += size
            self._items.append(arrays)
            return
        path = self.folder / f"{len(self._items)}.npz"
        np.savez(path, *arrays)
        self._items.append(path)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):
        item = self._items[index]
        if not isinstance(item, Path):
            return item
        with np.load(item, allow_pickle=False) as saved:
            return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def _temporary():
    return tempfile.TemporaryDirectory(prefix="encanalyze-")
