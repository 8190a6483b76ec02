"""Choosing encodings by the model's output: every option emulated, the best few built and run.

An option is one method for every activation and one for every weight (or each weight's best
SQNR on itself). All options are scored on the same batches by one emulated model
(:class:`~encanalyze.onnx._emulate.Emulator`: one session, an option is one feed); the best
``check`` of them and the simple option (min-max everywhere) are then built as QDQ models by
ONNX Runtime and run, and the best of those is kept, so the choice is never below min-max
everywhere on those batches.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._calibration import CalibrationResult
from .._onnx_graph import own_model
from .._report import sqnr_rank
from ._calibrate import QUANTIZABLE_OPS
from ._emulate import Emulator
from ._qdq import check_qdq, model_outputs, outputs_sqnr, stage_qdq_model

__all__ = ["BEST_TENSOR_SQNR", "Choice", "Option", "candidates_of", "choose_encodings"]

BEST_TENSOR_SQNR = "best-tensor-sqnr"
"""The weights' option that keeps each weight's best SQNR on itself (what ``calibrate`` keeps)."""

SIMPLE = "minmax"


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

    ``emulated``: each option's output SQNR in dB (the mean over the model's outputs) in the
    emulation, by label; ``checked``: the QDQ models' output SQNR of the options that were
    built (the best emulated ones and ``simple``); ``note`` says when the simple option was
    kept against the emulation's preference; ``qdq_model`` is the chosen option's QDQ model
    where the caller asked to keep it, and ``opset`` what its opset got.
    """

    chosen: Option
    simple: Option
    emulated: dict[str, float] = field(default_factory=dict)
    checked: dict[str, float] = field(default_factory=dict)
    note: str | None = None
    qdq_model: Path | None = None
    opset: str | None = None

    def as_dict(self) -> dict:
        """Return the choice as JSON-ready values."""
        return {
            "activations": self.chosen.activations,
            "weights": self.chosen.weights,
            "emulated_output_sqnr_db": dict(self.emulated),
            "qdq_output_sqnr_db": dict(self.checked),
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
    check: int = 2,
    op_types=QUANTIZABLE_OPS,
    providers=None,
    stage: Path | None = None,
) -> tuple[CalibrationResult, Choice]:
    """Pick the encodings whose quantized model's output is closest to the float model's.

    ``result`` comes from :func:`encanalyze.onnx.calibrate` with several ``activations``
    methods and, for ``weights``, several weight methods (its ``candidates``). An option is
    one method for every activation (``activations``) and one for every weight or each
    weight's best SQNR on itself (``"best-tensor-sqnr"``; ``weights``), scored by the output
    SQNR (the mean over the model's outputs) of one emulated model on ``batches``, which should
    be held-out samples, not the calibration ones: first each activation method with min-max
    weights, then each weight option with the best activations (options with the same
    encodings are run once). The ``check`` best and the simple option (min-max everywhere,
    else the first methods) are then built as QDQ models by ONNX Runtime and run on the same
    batches, and the best of those is kept (ties: the simple option), so the result is never
    below min-max everywhere on these batches. Returns the result with the chosen encodings and
    the :class:`Choice`. With ``stage`` (a file name in a folder of the caller's), the QDQ
    models are built there, each in a folder of its own, and the chosen one is kept
    (``Choice.qdq_model``, with what its opset got in ``Choice.opset``) for the caller to
    publish instead of building it again.
    """
    check_qdq(result)
    acts, params = candidates_of(result, activations, weights)
    batches = list(batches)
    proto = own_model(model)
    names = [o.name for o in proto.graph.output]
    reference = list(model_outputs(proto, batches, names, providers))  # the float model once
    del proto
    emulated: dict[str, float] = {}
    seen: dict[bytes, float] = {}
    simple = Option(acts[0], params[0])
    with Emulator(model, result, op_types=op_types, providers=providers) as emulator:

        def score(option: Option) -> float:
            feed = emulator.feed(option.apply(result).encodings)
            key = b"".join(k.encode() + v.tobytes() for k, v in sorted(feed.items()))
            if key not in seen:  # options with the same encodings run once
                seen[key] = _mean(outputs_sqnr(names, reference, emulator.outputs(feed, batches)))
            emulated[option.label] = seen[key]
            return seen[key]

        # the activations with the simple weights, then the weights with the best activations
        act = max(acts, key=lambda a: sqnr_rank(score(Option(a, simple.weights))))
        for w in params:
            score(Option(act, w))
    options = {o.label: o for a in acts for w in params for o in [Option(a, w)]}
    ranked = sorted(
        (options[label] for label in emulated), key=lambda o: -sqnr_rank(emulated[o.label])
    )
    candidates = [simple, *[o for o in ranked[:check] if o != simple]]
    checked: dict[str, float] = {}
    built: dict[str, tuple[Path, str]] = {}
    with contextlib.ExitStack() as stack:
        parent = stage.parent if stage is not None else Path(stack.enter_context(_temporary()))
        name = stage.name if stage is not None else "model.onnx"
        for option in candidates:
            folder = Path(tempfile.mkdtemp(dir=parent, prefix=".option-"))
            built[option.label] = stage_qdq_model(
                model, option.apply(result), folder / name, op_types=op_types
            )
            outputs = model_outputs(own_model(built[option.label][0]), batches, names, providers)
            checked[option.label] = _mean(outputs_sqnr(names, reference, outputs))
        chosen = max(candidates, key=lambda o: sqnr_rank(checked[o.label]))  # first on ties
        for label, (path, _) in built.items():
            if stage is None or label != chosen.label:
                shutil.rmtree(path.parent, ignore_errors=True)
    note = None
    if chosen == simple and ranked[0] != simple:
        note = (
            f"the emulation preferred {ranked[0].label}, but its QDQ model's output was not "
            f"closer than {simple.label}'s: {simple.label} kept"
        )
    kept = built[chosen.label] if stage is not None else (None, None)
    choice = Choice(chosen, simple, emulated, checked, note, *kept)
    return chosen.apply(result), choice


def _temporary():
    return tempfile.TemporaryDirectory(prefix="encanalyze-")


def _mean(sqnr: dict) -> float:
    return float(np.mean(list(sqnr.values())))
