"""The analysis report's data from a calibration: the tensor job's and the model job's.

:func:`tensor_report` turns the command's tensor entries (every method's range and SQNR per
tensor) into the page's data; :func:`model_quantizers` turns a model's
:class:`~encanalyze.onnx.CalibrationResult` (its candidates by method, the weights, the
activations' histograms and per-batch ranges) into its quantizer rows. What each flag means:
``dead`` (no finite value, or all zero), ``constant`` (one value), ``clipped`` (the chosen range
clips more than 1% of the values), ``NaN`` (NaN values dropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._backends import to_numpy
from ._html_report import histogram_of, rebin

__all__ = [
    "CLIPPED_FLAG",
    "LayerSensitivity",
    "Sensitivity",
    "activation_histogram",
    "QuantizerView",
    "model_quantizers",
    "per_axis",
    "scaled_range",
    "tensor_report",
]

CLIPPED_FLAG = 0.01
"""A quantizer whose chosen range clips more than this fraction of its values is flagged."""


def _layout(enc_type: str, encoding_shape) -> str:
    n = int(np.prod(encoding_shape)) if encoding_shape else 1
    return enc_type.lower().replace("_", " ") + (f" ({n})" if n > 1 else "")


def _flags(values: np.ndarray | None, clipped: float | None, nan_values: int) -> list[str]:
    flags = []
    if values is not None:
        finite = values[np.isfinite(values)]
        if finite.size == 0 or not np.any(finite):
            flags.append("dead")
        elif finite.min() == finite.max():
            flags.append("constant")
    if clipped is not None and clipped > CLIPPED_FLAG:
        flags.append("clipped")
    if nan_values:
        flags.append("NaN")
    return flags


def tensor_report(entries: list[dict], tensors: dict, summary: dict, methods) -> dict:
    """Return the report data of the tensor job: one quantizer per tensor, every method."""
    quantizers = []
    for e in entries:
        values = np.asarray(tensors[e["name"]])
        rows = {
            m: {
                "min": float(min(r["min"])),
                "max": float(max(r["max"])),
                "sqnr_db": r["sqnr_db"],
                "clipped": r["clipped_fraction"],
            }
            for m, r in e["methods"].items()
        }
        best = e["best"]
        quantizers.append(
            {
                "name": e["name"],
                "kind": "tensor",
                "shape": list(values.shape),
                "layout": _layout(e["enc_type"], e["encoding_shape"]),
                "best": best,
                "methods": rows,
                "hist": histogram_of(values),
                "flags": _flags(values, rows[best]["clipped"], e.get("nan_values", 0)),
            }
        )
    return {
        "title": "encanalyze calibration report",
        "summary": summary,
        "methods": list(methods),
        "quantizers": quantizers,
    }


@dataclass(frozen=True)
class QuantizerView:
    """What the report shows of one quantizer, whatever its number format.

    ``kind``: ``"param"`` or ``"activation"``; ``layout``: its layout in words; ``best``: the
    method chosen; ``methods``: each method's ``{"min", "max", "sqnr_db"}`` (a weight's own
    quantize-dequantize SQNR, ``None`` for an activation).
    """

    name: str
    kind: str
    layout: str
    best: str
    methods: dict[str, dict]


def scaled_range(scales, fmt, sqnr_db: float | None) -> dict:
    """Return a method's report row: ``+-`` its largest scale times the format's largest value."""
    amax = float(np.max(scales)) * fmt.max
    return {"min": -amax, "max": amax, "sqnr_db": sqnr_db}


def per_axis(axis: int | None, count: int) -> str:
    """Return a per-tensor or per-channel layout in words."""
    return "per tensor" if axis is None else f"per channel ({count}, axis {axis})"


def model_quantizers(result, weights: dict, histograms: dict, ranges: dict) -> list[dict]:
    """Return the quantizer rows of a calibrated model: each tensor's range and SQNR by method.

    ``result`` is any calibration result with ``quantizer_views()`` (integer, FP8 or block
    encodings: :class:`QuantizerView`), ``weights`` the float weights by name, ``histograms``
    each activation's report histogram and ``ranges`` its per-batch ``[min, max]``.
    """
    out = []
    for q in result.quantizer_views():
        param = q.kind == "param"
        values = np.asarray(weights[q.name]) if param and q.name in weights else None
        out.append(
            {
                "name": q.name,
                "kind": "weight" if param else "activation",
                "shape": list(values.shape) if values is not None else [],
                "layout": q.layout,
                "best": q.best,
                "methods": q.methods,
                "hist": histogram_of(values) if values is not None else histograms.get(q.name),
                "batches": ranges.get(q.name, []),
                "flags": _flags(values, None, 0),
                "own_sqnr_db": q.methods[q.best]["sqnr_db"] if param else None,
            }
        )
    return out


def activation_histogram(stats) -> dict | None:
    """Return the report histogram of an activation's :class:`~encanalyze.Histogram`."""
    if stats is None:
        return None
    counts = to_numpy(stats.histogram).reshape(-1)
    edges = to_numpy(stats.bin_edges).reshape(-1).astype(np.float64)
    if not np.isfinite(edges).all() or counts.sum() == 0:
        return None
    return rebin(counts, edges[0], edges[-1])


@dataclass(frozen=True)
class LayerSensitivity:
    """One quantized node's effect on the model's output.

    The output SQNR (mean over the model's outputs, dB) with only its weights quantized and
    with only its activations (inputs and outputs) quantized.
    """

    layer: str
    op: str
    weights: tuple[str, ...]
    activations: tuple[str, ...]
    weights_sqnr_db: float | None
    activations_sqnr_db: float | None

    def worst(self) -> float:
        """Return the lower of the two SQNRs (``inf`` without either)."""
        values = [v for v in (self.weights_sqnr_db, self.activations_sqnr_db) if v is not None]
        return min(values) if values else float("inf")

    def as_dict(self) -> dict:
        """Return the report's row."""
        return {
            "layer": self.layer,
            "op": self.op,
            "weights_sqnr_db": self.weights_sqnr_db,
            "activations_sqnr_db": self.activations_sqnr_db,
            "weights": list(self.weights),
            "activations": list(self.activations),
        }


@dataclass(frozen=True)
class Sensitivity:
    """What :func:`sensitivity` measured: everything quantized, each layer, each quantizer.

    ``gain_db`` maps each quantizer to what the output gains (dB) when only it stays in floating
    point; ``layers`` are most sensitive first (the lower of their two SQNRs). ``unit`` is
    ``"%"`` for a model with no float output: every score is then its outputs' agreement in %
    (the gains in percentage points), despite the fields' names.
    """

    output_sqnr_db: float
    layers: list[LayerSensitivity]
    gain_db: dict[str, float]
    unit: str = "dB"
