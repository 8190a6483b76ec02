"""The result of calibrating a model, whatever the framework: encodings by tensor name."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ._analyzer import compute_encodings_together
from ._backends import to_numpy
from ._encoding import to_scale_offset
from ._errors import StatisticsNotFoundError
from ._html_report import write_report
from ._io import model_files, printable
from ._memory import release_freed_memory
from ._registry import METHODS, activation_defaults
from ._report import (
    Layout,
    aimet_encodings,
    layout_for,
    onnx_qdq_encodings,
    quantization_quality,
    sqnr_rank,
)
from ._report_data import QuantizerView, model_quantizers, per_axis
from ._shapes import plan, to_rows
from ._stats import Histogram
from ._warnings import labelled, warn
from ._xp import Array, namespace_of

__all__ = [
    "CalibrationResult",
    "TensorEncoding",
    "encode_activation",
    "encode_activations",
    "encode_weight",
    "file_under",
    "first_of_each",
    "measure_models",
    "Progress",
    "progress_bar",
    "share_within",
    "statistics_key",
    "update_shared",
    "weight_methods",
    "weight_or_reason",
]


@dataclass(frozen=True)
class TensorEncoding:
    """The encoding of one tensor.

    ``min``/``max`` (arrays of the encoding shape, in the namespace the statistics were gathered
    in), ``scale`` and integer ``offset``, ``kind`` (``"param"`` or ``"activation"``), the
    channel ``axis`` (``None`` per tensor), the ``method`` that computed it, ``sqnr_db``: the
    SQNR of quantize-dequantize of the tensor itself where it is at hand (weights), else
    ``None``, and whether its grid is ``symmetric`` (signed, zero point 0).
    """

    name: str
    kind: str
    min: Array
    max: Array
    scale: Array
    offset: Array
    axis: int | None
    method: str
    sqnr_db: float | None = None
    symmetric: bool = False

    def layout(self) -> Layout:
        """Return the encoding layout the exporters take."""
        return layout_for(tuple(self.min.shape), self.axis)


def encode_activation(
    name: str, analyzer, num_steps: int, symmetric: bool, axis: int | None, method: str
) -> TensorEncoding | str:
    """Encode an activation's analyzer, or say why the tensor stays in floating point.

    The encoding has no SQNR (no tensor is at hand). A tensor that no batch reached, that never
    held a finite value (in some channel, per channel), or whose range is infinite (min-max of
    infinite values) gets no encoding: the reason is returned instead, and the model's other
    tensors are calibrated as usual.
    """
    (found,) = encode_activations([(name, analyzer, axis, method)], num_steps, symmetric)
    return found


def encode_activations(items: list, num_steps: int, symmetric: bool) -> list:
    """:func:`encode_activation` of each ``(name, analyzer, axis, method)`` of ``items``.

    The analyzers' encodings are computed together
    (:func:`~encanalyze._analyzer.compute_encodings_together`: the histogram methods' rules
    once for all the tensors of each method).
    """
    reached = [i for i, (_, a, _, _) in enumerate(items) if a.get_stats() is not None]
    ranges = compute_encodings_together(
        [items[i][1] for i in reached], num_steps, symmetric, [items[i][0] for i in reached]
    )
    out: list = ["no calibration batch reached it"] * len(items)
    for i, found in zip(reached, ranges, strict=True):
        name, analyzer, axis, method = items[i]
        out[i] = _encoding_or_reason(name, analyzer, found, num_steps, symmetric, axis, method)
    return out


def _encoding_or_reason(name, analyzer, found, num_steps, symmetric, axis, method):
    """Return the activation's encoding from its ``(lo, hi)``, or the reason it has none."""
    if isinstance(found, StatisticsNotFoundError):
        total = math.prod(analyzer.shape)
        if total == 1:
            return "it never held a finite value in the calibration data"
        empty = str(found).split(" of ")[0]
        return f"{empty} of its {total} channels never held a finite value"
    lo, hi = found
    scale, offset = to_scale_offset(lo, hi, num_steps, symmetric)
    steps = to_numpy(scale)
    ends = np.abs(np.concatenate([to_numpy(lo).ravel(), to_numpy(hi).ravel()]))
    largest = np.finfo(ends.dtype).max if ends.dtype.kind == "f" else np.inf
    if not bool(np.all(np.isfinite(steps) & (steps > 0))) or bool(np.any(ends >= largest)):
        return "its range is not finite (it held infinite values)"  # or was clamped to one
    return TensorEncoding(name, "activation", lo, hi, scale, offset, axis, method, None, symmetric)


def weight_or_reason(
    name: str,
    tensor: Array,
    axis: int | None,
    methods: dict,
    num_steps: int,
    symmetric: bool,
    every: dict | None = None,
) -> TensorEncoding | str:
    """:func:`encode_weight`, or the reason the weight stays in floating point.

    Its warnings name the weight.
    """
    try:
        with labelled(name):
            return encode_weight(name, tensor, axis, methods, num_steps, symmetric, every)
    except StatisticsNotFoundError:
        return "the weight holds no finite value"
    except ValueError as err:  # a range its dtype cannot hold
        return str(err).splitlines()[0]


CLIPPED_WARNING = 0.05
"""A calibration warns of an activation whose encoding clips more than this fraction of the
values it saw."""


def clipped_fraction(stats, encoding: TensorEncoding) -> float | None:
    """Return the fraction of an activation's histogram values its encoding clips.

    A bin's values are clipped where all of it (within the observed range) lies more than half
    a step outside the encoding's range; a bin across that bound counts as kept (``stats``: a
    :class:`~encanalyze.Histogram`; ``None`` for other statistics, which keep no distribution).
    """
    if not isinstance(stats, Histogram):
        return None
    counts = to_numpy(stats.histogram).astype(np.float64)
    rows = counts.reshape(-1, counts.shape[-1])
    edges = to_numpy(stats.bin_edges).astype(np.float64).reshape(rows.shape[0], -1)
    seen_lo, seen_hi, lo, hi, step = (
        np.broadcast_to(to_numpy(a).astype(np.float64).reshape(-1, 1), (rows.shape[0], 1))
        for a in (stats.min, stats.max, encoding.min, encoding.max, encoding.scale)
    )
    low = np.maximum(edges[:, :-1], seen_lo)  # each bin's values lie in [low, high]
    high = np.minimum(edges[:, 1:], seen_hi)
    outside = (high < lo - step / 2) | (low > hi + step / 2)
    total = rows.sum()
    return float(rows[outside].sum() / total) if total else None


def warn_clipping(encodings: dict, stats: dict) -> None:
    """Warn of each activation whose encoding clips more than :data:`CLIPPED_WARNING` of it.

    ``stats``: each activation's statistics by name. One ``UserWarning`` names the tensors,
    their method and the fraction clipped.
    """
    found = []
    for name, st in stats.items():
        e = encodings.get(name)
        if not isinstance(e, TensorEncoding):  # (no encoding: the reason it has none)
            continue
        fraction = clipped_fraction(st, e)
        if fraction is not None and fraction > CLIPPED_WARNING:
            found.append(f"{name} ({e.method}: {100 * fraction:.1f}%)")
    if found:
        warn(
            f"the encodings of {len(found)} activation(s) clip more than "
            f"{100 * CLIPPED_WARNING:g}% of the values calibration saw: {', '.join(found)}; "
            "another method (min-max, SQNR) keeps their range",
            UserWarning,
        )


def file_under(name: str, found: TensorEncoding | str, encodings: dict, unquantized: dict) -> None:
    """Put an encoding into ``encodings``, or its reason for floating point into ``unquantized``."""
    if isinstance(found, str):
        unquantized[name] = found
    else:
        encodings[name] = found


def statistics_key(analyzer) -> tuple[str, str]:
    """Return what identifies the statistics an analyzer gathers: its observer and parameters."""
    observer = analyzer.observer
    return type(observer).__name__, json.dumps(observer.params(), sort_keys=True)


def first_of_each(made: dict) -> list:
    """Return the first analyzer of ``made``'s values for each kind of statistics.

    A tensor's analyzers that gather the same statistics (the histogram methods) are updated
    through the first of them; :func:`share_within` gives the others its statistics.
    """
    first: dict = {}
    for analyzer in made.values():
        first.setdefault(statistics_key(analyzer), analyzer)
    return list(first.values())


def share_within(made: dict) -> dict:
    """Give each analyzer of ``made`` the statistics of :func:`first_of_each`'s; return it."""
    first = {statistics_key(a): a for a in first_of_each(made)}
    for analyzer in made.values():
        source = first[statistics_key(analyzer)]
        if source is not analyzer:
            analyzer.share_stats(source)
    return made


def update_shared(analyzer, x: Array, gathered: dict) -> None:
    """Update ``analyzer`` with ``x``, or share the statistics of ``x`` already in ``gathered``.

    ``gathered`` maps an observer's kind and parameters to the analyzer that gathered them
    from ``x``: the histogram methods of one tensor histogram it once.
    """
    key = statistics_key(analyzer)
    if key in gathered:
        analyzer.share_stats(gathered[key])
    else:
        analyzer.observe(x)  # (no histogram of x alone: nobody reads it)
        gathered[key] = analyzer


def activation_methods(activations, given: dict | None) -> dict[str, dict]:
    """Return the model calibrators' ``activations`` argument as ``{method: analyzer options}``.

    ``activations`` is a method name or a list of them (the first is the result's encodings,
    the others its candidates); with several, ``given`` (options) maps each method to its options.
    Percentile gets the command's default (:func:`~encanalyze._registry.activation_defaults`);
    bad options raise here, at the call.
    """
    names = [activations] if isinstance(activations, str) else list(activations)
    if not names:
        raise ValueError("activations names no method")
    for m in names:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {sorted(METHODS)}")
    if len(names) > 1 and given is not None:
        if not set(given) <= set(names):
            raise ValueError(
                "with several activation methods, activation_options maps each "
                "method to its options"
            )
        methods = {m: activation_defaults(m, given.get(m)) for m in names}
    else:
        methods = {m: activation_defaults(m, given) for m in names}
    for m, method_options in methods.items():
        METHODS[m].analyzer((1,), **method_options)
    return methods


def weight_methods(weights, options: dict | None) -> dict[str, dict]:
    """Return the model calibrators' ``weights`` argument as ``{method: analyzer options}``.

    ``weights`` is a method name (with ``options``) or a dict of several methods, each with its
    options (``None``: the defaults).
    """
    if isinstance(weights, str):
        methods = {weights: dict(options or {})}
    elif isinstance(weights, Mapping):
        if options is not None:
            raise ValueError(
                "weight_options goes with one method: give each method's options "
                "as the values of the weights dict"
            )
        methods = {m: dict(o or {}) for m, o in weights.items()}
    else:
        raise TypeError(f"weights must be a method name or a dict of methods, got {weights!r}")
    if not methods:
        raise ValueError("weights names no method")
    for name, method_options in methods.items():
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
        METHODS[name].analyzer((1, 1), **method_options)  # bad options raise here, at the call
    return methods


ROW_BLOCK = 1 << 21
"""One-shot encodings (weights) histogram at most about this many ``rows x bins`` at a time."""


def encodings_by_rows(
    x: Array,
    shape: tuple[int, ...],
    block_size: tuple[int, ...] | None,
    methods: dict[str, dict],
    num_steps: int,
    symmetric: bool,
) -> dict[str, tuple[Array, Array] | Exception]:
    """Return each method's encodings ``(min, max)`` of the encoding ``shape`` for ``x`` alone.

    For data seen once (a weight): every encoding element is independent, so the rows of
    values (one per element) are calibrated in blocks of about :data:`ROW_BLOCK` histogram
    elements, and memory stays near the tensor's size whatever the number of channels (50,000
    channels of 2 values no longer hold 50,000 x 2,048 bins at once). The results are those of
    one analyzer over the whole tensor. Methods that gather the same statistics share them per
    block. A method that fails gives its exception instead of encodings.
    """
    xp = namespace_of(x)
    rows = to_rows(xp, x, plan(tuple(x.shape), tuple(shape), block_size))
    num_rows = rows.shape[0]
    hist = [o for m, o in methods.items() if METHODS[m].observer == "histogram"]
    bins = max([1, *(int(o.get("num_bins", 2048)) for o in hist)])
    step = max(1, ROW_BLOCK // bins)
    parts: dict[str, list] = {m: [] for m in methods}
    failed: dict[str, Exception] = {}
    for start in range(0, num_rows, step):  # bounded memory, not a loop per channel
        block = rows[start : min(start + step, num_rows), :]
        gathered: dict = {}
        for method, options in methods.items():
            if method in failed:
                continue
            analyzer = METHODS[method].analyzer((block.shape[0], 1), **options)
            try:
                update_shared(analyzer, block, gathered)
                parts[method].append(analyzer.compute_encodings(num_steps, symmetric))
            except (ValueError, ArithmeticError, StatisticsNotFoundError) as err:
                failed[method] = err
    out: dict[str, tuple[Array, Array] | Exception] = {}
    for method in methods:
        if method in failed:
            out[method] = failed[method]
            continue
        los, his = zip(*parts[method], strict=True)
        lo = xp.concat(los, axis=0) if len(los) > 1 else los[0]
        hi = xp.concat(his, axis=0) if len(his) > 1 else his[0]
        out[method] = (xp.reshape(lo, tuple(shape)), xp.reshape(hi, tuple(shape)))
    return out


def encode_weight(
    name: str,
    tensor: Array,
    axis: int | None,
    methods: dict[str, dict],
    num_steps: int,
    symmetric: bool,
    every: dict | None = None,
) -> TensorEncoding:
    """Calibrate a weight with each of ``methods``; return the best SQNR's encoding on it.

    Methods that gather the same statistics share them (one histogram per weight), channels
    are histogrammed in blocks (:func:`encodings_by_rows`); ties and NaN scores go to the
    earlier method. ``every``, a dict, receives each method's encoding. Raises the first
    method's error when no method gives encodings.
    """
    shape = layout_for(tuple(tensor.shape), axis).shape
    xp = namespace_of(tensor)
    p = plan(tuple(tensor.shape), tuple(shape), None)
    best = error = None
    found = encodings_by_rows(tensor, shape, None, methods, num_steps, symmetric)
    for method, got in found.items():
        if isinstance(got, Exception):
            error = error or got
            continue
        lo, hi = got
        scale, offset = to_scale_offset(lo, hi, num_steps, symmetric)
        sqnr = quantization_quality(xp, tensor, p, scale, offset, num_steps)[1]
        e = TensorEncoding(name, "param", lo, hi, scale, offset, axis, method, sqnr, symmetric)
        if every is not None:
            every[method] = e
        if best is None or sqnr_rank(e.sqnr_db) > sqnr_rank(best.sqnr_db):
            best = e
    if best is None:
        raise error
    return best


@dataclass
class CalibrationResult:
    """The encodings of a calibrated model, by tensor name.

    ``encodings`` maps each tensor's name to its :class:`TensorEncoding`; ``bits``, the
    activations' grid (``symmetric``), the number of calibration batches seen
    (``num_batches``) and the weights' grid (``weight_symmetric``; ``None``: as the
    activations') complete it.
    ``unquantized`` maps each tensor that was meant to be calibrated but has no encoding (an
    activation that never held a finite value, a weight of NaN only) to the reason: such a
    tensor stays in floating point (the QDQ model leaves it unquantized, and the exported
    files list it under ``"unquantized"``). ``branches`` names the ONNX ``If`` nodes (by
    their first output) that calibration inlined with the branch every batch took
    (``"then_branch"`` or ``"else_branch"``): the QDQ model serves that branch.
    ``candidates`` holds, where several methods were asked for, each activation's and each
    weight's encoding by every method (:func:`encanalyze.onnx.choose_encodings` picks among
    them by the model's output).
    """

    encodings: dict[str, TensorEncoding]
    bits: int
    symmetric: bool
    num_batches: int
    unquantized: dict[str, str] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    weight_symmetric: bool | None = None
    candidates: dict[str, dict[str, TensorEncoding]] = field(default_factory=dict)

    def with_activations(self, method: str) -> CalibrationResult:
        """Return this result with each activation's ``method`` candidate where it has one."""
        return self.with_method("activation", method)

    def with_weights(self, method: str) -> CalibrationResult:
        """Return this result with each weight's ``method`` candidate where it has one."""
        return self.with_method("param", method)

    def with_method(self, kind: str, method: str) -> CalibrationResult:
        """Return this result with each ``kind`` tensor's ``method`` candidate where it has one."""
        encodings = {
            name: self.candidates.get(name, {}).get(method, e) if e.kind == kind else e
            for name, e in self.encodings.items()
        }
        return dataclasses.replace(self, encodings=encodings)

    @property
    def weights_symmetric(self) -> bool:
        """Whether the weights' grid is symmetric."""
        return self.symmetric if self.weight_symmetric is None else self.weight_symmetric

    def grids(self) -> str:
        """Describe the two grids, e.g. ``activations uint8 asymmetric, weights int8 symmetric``."""

        def grid(symmetric: bool) -> str:
            kind = "symmetric" if symmetric else "asymmetric"
            return f"{'' if symmetric else 'u'}int{self.bits} {kind}"

        return f"activations {grid(self.symmetric)}, weights {grid(self.weights_symmetric)}"

    def quantizer_views(self) -> list[QuantizerView]:
        """Return each encoding as the report shows it: its range and SQNR by every candidate."""
        out = []
        for name, e in self.encodings.items():
            rows = {}
            for m, c in (self.candidates.get(name) or {e.method: e}).items():
                lo, hi = to_numpy(c.min).astype(np.float64), to_numpy(c.max).astype(np.float64)
                rows[m] = {"min": float(lo.min()), "max": float(hi.max()), "sqnr_db": c.sqnr_db}
            layout = per_axis(e.axis, int(np.prod(np.shape(e.scale))))
            out.append(QuantizerView(name, e.kind, layout, e.method, rows))
        return out

    def __getitem__(self, name: str) -> TensorEncoding:
        return self.encodings[name]

    def _entries(self) -> list[dict]:
        return [
            {
                "name": e.name,
                "scale": to_numpy(e.scale).reshape(-1).tolist(),
                "offset": to_numpy(e.offset).reshape(-1).tolist(),
                "layout": e.layout(),
                "kind": e.kind,
                "symmetric": e.symmetric,
            }
            for e in self.encodings.values()
        ]

    def aimet(self) -> dict:
        """Return the AIMET 1.0.0 encodings (activation and parameter encodings).

        Tensors left in floating point are listed with their reasons under ``"unquantized"``.
        """
        out = aimet_encodings(self._entries(), self.bits, self.symmetric)
        return {**out, "grids": self.grids(), "unquantized": dict(self.unquantized)}

    def onnx_qdq(self) -> dict:
        """Return ``scale`` / ``zero_point`` per tensor as ONNX ``QuantizeLinear`` takes them.

        Tensors left in floating point are listed with their reasons under ``"unquantized"``.
        """
        out = onnx_qdq_encodings(self._entries(), self.bits, self.symmetric)
        return {**out, "grids": self.grids(), "unquantized": dict(self.unquantized)}

    def report(
        self,
        path,
        model=None,
        batches=None,
        *,
        calibration=None,
        statistics: dict | None = None,
        title: str | None = None,
    ):
        """Write the analysis report (one self-contained HTML page) at ``path``; return it.

        Every quantizer with its methods' ranges and SQNR (the candidates where several methods
        were asked for); with ``model`` (a ``torch.nn.Module``, or an ONNX model: a path or
        ``ModelProto``) the weights' histograms, and with ``batches`` (held-out data) the layer
        sensitivity, each quantizer's output gain in floating point and the activations' own
        SQNR; for ONNX models with ``calibration`` (the calibration batches) also ONNX Runtime's
        MinMax, Entropy and Percentile calibrators on the same data. ``statistics`` is the dict
        that ``calibrate(..., statistics=...)`` filled: the activations' histograms and
        per-batch ranges. See ``docs/report.rst``.

        Examples
        --------
        >>> import torch
        >>> from encanalyze.torch import calibrate
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU()).eval()
        >>> data = [torch.randn(16, 4) for _ in range(4)]
        >>> stats = {}
        >>> result = calibrate(model, data[:3], statistics=stats)
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "report.html"
        >>> result.report(path, model, data[3:], statistics=stats).stat().st_size > 10_000
        True
        """
        summary = {"tensors": f"{len(self.encodings)} quantized, {len(self.unquantized)} not"}
        summary["grids"] = self.grids()
        if model is not None:
            measure = next((m for takes, m in _MEASURES if takes(model)), None)
            if measure is None:
                raise TypeError(
                    f"report: no frontend measures a {type(model).__name__} (a torch.nn.Module "
                    "with encanalyze.torch, an ONNX model or its path with encanalyze.onnx)"
                )
            data = measure(model, self, calibration, batches, statistics, summary)
        else:
            stats = statistics or {}
            quantizers = model_quantizers(
                self, {}, stats.get("histograms", {}), stats.get("ranges", {})
            )
            methods = list(dict.fromkeys(m for q in quantizers for m in q["methods"]))
            data = {"summary": summary, "methods": methods, "quantizers": quantizers}
        data["title"] = title or data.get("title", "encanalyze calibration report")
        return write_report(path, data, model_files(model))

    def table(self) -> str:
        """Return a table: tensor, kind, method, range, first scale, and SQNR (weights)."""
        width = max([len("tensor"), *(len(printable(n)) for n in self.encodings)]) + 2
        head = f"{'tensor':<{width}}{'kind':<12}{'method':<12}"
        lines = [f"{head}{'min':>11}{'max':>11}{'scale':>11}{'SQNR dB':>9}"]
        lines.append("-" * len(lines[0]))
        for e in self.encodings.values():
            lo, hi, scale = (to_numpy(a).reshape(-1) for a in (e.min, e.max, e.scale))
            sqnr = "" if e.sqnr_db is None else _db(e.sqnr_db)
            lines.append(
                f"{printable(e.name):<{width}}{e.kind:<12}{e.method:<12}{float(lo.min()):>11.4g}"
                f"{float(hi.max()):>11.4g}{float(scale[0]):>11.4g}{sqnr:>9}"
            )
        for name, reason in self.unquantized.items():
            lines.append(f"{printable(name):<{width}}left in float: {printable(reason)}")
        return "\n".join(lines)


_MEASURES: list[tuple[Callable[[object], bool], Callable]] = []


def measure_models(takes: Callable[[object], bool], measure: Callable) -> None:
    """Let a frontend measure its models for :meth:`CalibrationResult.report`.

    ``takes(model)`` says whether the frontend measures ``model``; ``measure(model, result,
    calibration, batches, statistics, summary)`` returns the report's data. The frontends
    (``encanalyze.onnx``, ``encanalyze.torch``) call this when they are imported.
    """
    _MEASURES.append((takes, measure))


def _db(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else ("inf" if value > 0 else "-inf")


class Progress:
    """One progress bar on stderr (tqdm) over a whole job.

    Drawn on a terminal (``enabled=None``), always (``True``) or never (``False``); without tqdm
    (``pip install tqdm``, part of the ``onnx`` extra) there is no bar. ``advance`` counts work
    done, ``stage`` names what runs now, ``phase`` names a phase of the job: beside the bar, or,
    with ``enabled=None`` and stderr not a terminal (a log, a pipe), as a plain line with the
    time since the start.
    """

    def __init__(
        self,
        total: int | None,
        enabled: bool | None = None,
        unit: str = "step",
        unit_scale: bool = False,
    ) -> None:
        self.bar = None
        self.started = time.perf_counter()
        self.plain = enabled is None and not sys.stderr.isatty()
        if enabled is False or self.plain:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(
            total=total,
            desc="calibrating",
            unit=unit,
            unit_scale=unit_scale,
            file=sys.stderr,
            leave=False,
            dynamic_ncols=True,
        )

    def stage(self, text: str) -> None:
        """Show ``text`` (what runs now) beside the bar."""
        if self.bar is not None:
            self.bar.set_postfix_str(printable(text)[:40], refresh=True)

    def phase(self, text: str) -> None:
        """Name a phase of the job: beside the bar, or as a plain line where there is none.

        The memory that the phase before freed goes back to the system first
        (:func:`~encanalyze._memory.release_freed_memory`), so that the next one starts low.
        """
        release_freed_memory(collect=False)
        if self.bar is not None:
            self.stage(text)
        elif self.plain:
            seconds = time.perf_counter() - self.started
            print(f"encanalyze: [{seconds:6.1f} s] {printable(text)}", file=sys.stderr, flush=True)

    def advance(self, amount: int = 1) -> None:
        """Count ``amount`` units of work done."""
        if self.bar is not None:
            self.bar.update(amount)

    def grow(self, amount: int) -> None:
        """Add ``amount`` units of work to the total."""
        if self.bar is not None and self.bar.total is not None:
            self.bar.total += amount
            self.bar.refresh()

    def close(self) -> None:
        """Remove the bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(batches: Iterable, progress: bool | None | Progress, label: str = "batch"):
    """Yield ``batches``, counting each on ``progress``.

    ``progress`` is a :class:`Progress`, or its ``enabled`` (then a bar of its own).
    """
    own = not isinstance(progress, Progress)
    total = len(batches) if hasattr(batches, "__len__") else None
    bar = Progress(total, progress, "batch") if own else progress
    try:
        for i, batch in enumerate(batches, 1):
            bar.stage(f"{label} {i}")
            yield batch
            bar.advance()
    finally:
        if own:
            bar.close()
