"""The model job's data: ``encanalyze calibrate model.onnx --data SOURCE``.

Calibration data comes from a ``.npz`` file or a folder of ``.npy`` files (one array per model
input, by input name), a folder of ``.npz`` files (one group of samples per file: groups may
differ in shape, such as a transformer's sequence length), or ``random`` (normal values of
each input's shape, with a note). Each input is per sample, with its samples along axis 0
(``--sample-axis NAME=AXIS`` for another axis), or a constant fed whole with every batch
(``--sample-axis NAME=none``; inputs the model declares as scalars are constants by default).
Every array is checked against the model's declaration (element type, rank, fixed dimensions)
before anything runs. Weights are calibrated per output channel on each operator's axis with
``--method`` (``all``: the method with the best SQNR on each weight), activations with
``--activation-method`` through ONNX Runtime.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._calibration import CalibrationResult
from .._io import load_model, read_tensors
from .._registry import METHODS as REGISTRY
from .._report import encoding_lists
from ..onnx._calibrate import model_inputs
from ..onnx._ptq import equalize_layers, fold_batchnorm
from ._parser import method_options

__all__ = [
    "DataError",
    "InputSpec",
    "JobData",
    "AUTO_WEIGHTS",
    "RANDOM_BATCH_BYTES",
    "SampleBatches",
    "batches_for",
    "data_files",
    "input_specs",
    "iter_rows",
    "job_data",
    "parse_sample_axes",
    "split",
    "weight_methods",
]

DEFAULT_BATCH_SIZE = 16
RANDOM_BATCHES = 8
RANDOM_BATCH_BYTES = 256 << 20
"""The most bytes one batch of ``--data random`` may take (all inputs together)."""

_SAFE_NAME = re.compile(r"[^/\\\x00]+")


class DataError(ValueError):
    """Calibration data that does not fit the model."""


@dataclass(frozen=True)
class InputSpec:
    """One model input: declared dims, element type and sample axis.

    A dimension is ``None`` where symbolic or unknown (``dims`` is ``None`` without a declared
    shape); ``axis`` is ``None`` for a constant fed whole with every batch.
    """

    name: str
    dims: tuple | None
    dtype: np.dtype
    axis: int | None

    @property
    def batch_dim(self) -> int | None:
        """The fixed number of samples per batch the model declares, if any."""
        if self.axis is None or self.dims is None or self.axis >= len(self.dims):
            return None
        return self.dims[self.axis]


def parse_sample_axes(items: list[str]) -> dict[str, int | None]:
    """Parse ``--sample-axis NAME=AXIS`` items (``AXIS``: an integer or ``none``)."""
    out: dict[str, int | None] = {}
    for item in items:
        name, sep, axis = item.rpartition("=")
        if not sep or not name:
            raise DataError(f"--sample-axis {item!r}: expected NAME=AXIS or NAME=none")
        if axis.strip().lower() == "none":
            out[name] = None
            continue
        try:
            out[name] = int(axis)
        except ValueError:
            raise DataError(f"--sample-axis {item!r}: AXIS must be an integer or none") from None
    return out


def input_specs(model, sample_axes: dict[str, int | None] | None = None) -> list[InputSpec]:
    """Return the model's inputs as :class:`InputSpec`, checking that they can be fed."""
    import onnx  # optional: the options check asks for it before any work

    sample_axes = dict(sample_axes or {})
    inputs = model_inputs(model)
    if not inputs:
        raise DataError("the model has no inputs to feed calibration data to")
    specs = []
    for info in inputs:
        if info.type.WhichOneof("value") != "tensor_type":
            kind = info.type.WhichOneof("value") or "no type"
            raise DataError(f"input {info.name!r} is not a tensor ({kind}): it cannot be fed")
        t = info.type.tensor_type
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"input {info.name!r} has no usable element type") from None
        if dtype.kind not in "fiub":
            raise DataError(f"input {info.name!r} takes {dtype} values, which --data cannot feed")
        dims = None
        if t.HasField("shape"):  # -1 and symbolic dimensions: any size
            dims = tuple(_dim(info.name, d) for d in t.shape.dim)
        axis = sample_axes.pop(info.name, None if dims == () else 0)
        if axis is not None and dims is not None:
            if not -len(dims) <= axis < len(dims):
                raise DataError(
                    f"--sample-axis {info.name}={axis}: the input has {len(dims)} dimensions"
                )
            axis %= len(dims)
        specs.append(InputSpec(info.name, dims, dtype, axis))
    if sample_axes:
        names = [s.name for s in specs]
        raise DataError(
            f"--sample-axis names no input of the model: {sorted(sample_axes)} "
            f"(its inputs: {names})"
        )
    return specs


def _dim(name: str, d) -> int | None:
    if not d.HasField("dim_value") or d.dim_value < 0:
        return None
    if d.dim_value == 0:
        raise DataError(
            f"input {name!r} declares a dimension of size 0: it can take no data "
            "(a symbolic or -1 dimension takes any size)"
        )
    return d.dim_value


def _read_data(source: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Return the inputs' arrays by name, read by the size-checked tensor readers."""
    if source.is_dir():
        for n in names:
            if not _SAFE_NAME.fullmatch(n) or n in (".", ".."):
                raise DataError(
                    f"input {n!r} cannot name a file in a folder: give the data as a .npz file"
                )
        missing = [n for n in names if not (source / f"{n}.npy").is_file()]
        if missing:
            raise DataError(f"{source}: no {missing[0]}.npy for the model's input {missing[0]!r}")
        return {n: read_tensors(source / f"{n}.npy")[n] for n in names}
    if not source.is_file():
        raise DataError(f"{source}: no such file or folder")
    if source.suffix.lower() != ".npz":
        raise DataError(f"{source}: calibration data is a .npz file, a folder of .npy or random")
    arrays = read_tensors(source)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(
            f"{source}: no array named {missing[0]!r} (the model's inputs: {names}; the file "
            f"holds {sorted(arrays)})"
        )
    return {n: arrays[n] for n in names}


def data_files(source: str) -> list[Path]:
    """Return the files (and folder) that ``--data`` reads: outputs must name none of them."""
    if source == "random":
        return []
    path = Path(source)
    if not path.is_dir():
        return [path]
    return [path, *sorted(path.glob("*.npy")), *sorted(path.glob("*.npz"))]


def _check_array(spec: InputSpec, array: np.ndarray) -> np.ndarray:
    """Return ``array`` cast to the input's type, or raise :class:`DataError` naming the misfit."""
    name, want = spec.name, spec.dtype
    if array.dtype.kind not in "fiub":
        raise DataError(
            f"input {name!r}: the data holds {array.dtype} values; the model takes {want}"
        )
    if want.kind == "f" and array.dtype != want:  # floats, integers and bools become floats
        array = array.astype(want)
    elif want.kind in "iu":
        if array.dtype.kind not in "iub":
            raise DataError(
                f"input {name!r}: the data holds {array.dtype} values; the model "
                f"takes {want} (integers)"
            )
        if array.size and array.dtype != want:
            info = np.iinfo(want)
            if array.min() < info.min or array.max() > info.max:
                raise DataError(f"input {name!r}: values beyond {want}'s range")
            array = array.astype(want)
    elif want.kind == "b" and array.dtype.kind != "b":
        raise DataError(
            f"input {name!r}: the data holds {array.dtype} values; the model takes bool"
        )
    if spec.axis is not None and array.ndim == 0:
        raise DataError(
            f"input {name!r}: a 0-d array holds no samples (a constant input: "
            f"--sample-axis {name}=none)"
        )
    if spec.dims is not None:
        if array.ndim != len(spec.dims):
            raise DataError(
                f"input {name!r}: the data has {array.ndim} dimensions "
                f"{array.shape}; the model takes {len(spec.dims)} "
                f"{_shape(spec.dims)}"
            )
        for i, (have, need) in enumerate(zip(array.shape, spec.dims, strict=True)):
            if need is not None and have != need and i != spec.axis:
                raise DataError(
                    f"input {name!r}: dimension {i} is {have} in the data; the "
                    f"model takes {_shape(spec.dims)}"
                )
    return array


def _shape(dims) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


class Batches(Sequence):
    """Calibration batches, made one at a time when asked for (memory: one batch).

    ``axes``: each input's sample axis (``None``: a constant), where a batch may hold any
    number of samples (the calibrators may then run a large batch in pieces); else ``None``.
    """

    def __init__(self, count: int, make, axes: dict[str, int | None] | None = None) -> None:
        self._count, self._make, self.axes = count, make, axes

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        if isinstance(index, slice):  # a view: its batches are still made when asked for
            start, stop, step = index.indices(self._count)
            picked = range(start, stop, step)
            return Batches(len(picked), lambda i: self._make(picked[i]), self.axes)
        if not -self._count <= index < self._count:
            raise IndexError(index)
        return self._make(index % self._count)


class SampleBatches(Batches):
    """Batches of ``size`` samples cut from spans of groups of samples.

    ``spans``: ``(group, first sample, end)`` of each group's samples in use, in order; a batch
    never mixes groups. ``cut(group, start, stop)`` returns the batch of those samples.
    ``fixed``: the model takes batches of exactly ``size`` samples (spans hold whole batches).
    """

    def __init__(self, spans: list, size: int, cut, axes, fixed: bool) -> None:
        index = [
            (group, i, min(i + size, stop))
            for group, start, stop in spans
            for i in range(start, stop, size)
        ]
        self.spans, self.size, self.fixed, self._cut = spans, size, fixed, cut
        super().__init__(len(index), lambda i: cut(*index[i]), axes)

    @property
    def num_samples(self) -> int:
        """The samples of every batch."""
        return sum(stop - start for _, start, stop in self.spans)

    def split(self, held: int) -> tuple[SampleBatches, SampleBatches]:
        """Return the batches of all but the last ``held`` samples, and of those ``held``."""
        first, last = [], []
        for group, start, stop in reversed(self.spans):
            take = min(held, stop - start)
            held -= take
            if stop - take > start:
                first.append((group, start, stop - take))
            if take:
                last.append((group, stop - take, stop))
        return tuple(
            SampleBatches(spans[::-1], self.size, self._cut, self.axes, self.fixed)
            for spans in (first, last)
        )


def _random(specs: list[InputSpec], batch_size: int | None, seed: int) -> Batches:
    shapes = {}
    for s in specs:
        if s.dims is None or any(d is None for i, d in enumerate(s.dims) if i != s.axis):
            raise DataError(
                f"input {s.name!r} has unknown dimensions {_shape(s.dims or ())}: give --data"
            )
        if s.dtype.kind != "f":
            raise DataError(f"input {s.name!r} takes {s.dtype}, not floating point: give --data")
        shape = list(s.dims)
        if s.axis is not None:
            shape[s.axis] = s.batch_dim or batch_size or 1
        shapes[s.name] = (shape, s.dtype)
    size = sum(int(np.prod(sh, dtype=np.float64)) * dt.itemsize for sh, dt in shapes.values())
    if size > RANDOM_BATCH_BYTES:
        raise DataError(
            f"random data for the model's declared input shapes takes {size / 2**30:.3g} GiB a "
            f"batch (limit {RANDOM_BATCH_BYTES >> 20} MiB): give --data or a smaller --batch-size"
        )

    def make(i: int) -> dict:
        rng = np.random.default_rng([seed, i])
        return {n: rng.standard_normal(sh).astype(dt) for n, (sh, dt) in shapes.items()}

    return Batches(RANDOM_BATCHES, make)


def _sources(data: Path, names: list[str]) -> list[Path]:
    """Return the files (or ``.npy`` folder) that hold ``--data``'s groups of samples.

    A ``.npz`` file or a folder of ``.npy`` files (one per input) is one group; a folder of
    ``.npz`` files is one group per file, in name order, so that groups may differ in shape
    (sequence length) from file to file.
    """
    if not data.is_dir():
        return [data]
    groups = sorted(f for f in data.glob("*.npz") if f.is_file())
    if not groups:
        return [data]
    npy = [n for n in names if (data / f"{n}.npy").is_file()]
    if npy:
        raise DataError(
            f"{data}: the folder holds both .npz files (groups of samples) and {npy[0]}.npy "
            "(one array per input): keep one kind"
        )
    return groups


def batches_for(
    model,
    data: str,
    batch_size: int | None,
    sample_axes: dict[str, int | None] | None = None,
    seed: int = 0,
) -> tuple[Batches, bool, list[str]]:
    """Return ``(batches, random, notes)`` for the model: each batch a dict by input name.

    Per-sample inputs are cut into batches of ``batch_size`` samples along their sample axis
    (default: the model's fixed batch size, else 16); constants go whole into every batch. A
    model with a fixed batch size gets only full batches: the samples left over are left out
    (a note says how many). A folder of ``.npz`` files is one group of samples per file: each
    file is cut into batches on its own (a batch never mixes files), so files may hold
    different sequence lengths; every file is checked before anything runs, and one file is
    held in memory at a time.
    """
    specs = input_specs(model, sample_axes)
    fixed = {s.batch_dim for s in specs if s.batch_dim is not None}
    if len(fixed) > 1:
        raise DataError(f"the model's inputs declare different batch sizes {sorted(fixed)}")
    (fixed,) = fixed or {None}
    if fixed is not None and batch_size not in (None, fixed):
        raise DataError(
            f"the model takes batches of exactly {fixed} samples, not --batch-size {batch_size}"
        )
    size = fixed or batch_size or DEFAULT_BATCH_SIZE
    if data == "random":
        return _random(specs, size, seed), True, []
    names = [s.name for s in specs]
    sources = _sources(Path(data), names)
    cache: dict[Path, dict] = {}
    converted: dict[str, str] = {}  # float inputs fed integers or bools: said once each

    def arrays_of(source: Path) -> dict[str, np.ndarray]:
        if source not in cache:  # one group in memory at a time
            cache.clear()
            raw = _read_data(source, names)
            for spec in specs:
                kind = raw[spec.name].dtype
                if spec.dtype.kind == "f" and kind.kind in "iub":
                    converted.setdefault(spec.name, f"{kind} -> {spec.dtype}")
            try:
                cache[source] = {s.name: _check_array(s, raw[s.name]) for s in specs}
            except DataError as err:
                if len(sources) == 1:
                    raise
                raise DataError(f"{source}: {err}") from None
        return cache[source]

    spans: list[tuple[Path, int, int]] = []  # (group, first sample, end) of each group
    notes = []
    for source in sources:
        where = source if len(sources) > 1 else data
        total, left = _samples(specs, arrays_of(source), where, fixed)
        if left:
            of = f" of {where}" if len(sources) > 1 else ""
            notes.append(
                f"{left} of {total + left} samples{of} left out: the model takes batches "
                f"of exactly {fixed}"
            )
        spans.append((source, 0, total))
    notes += [
        f"input {name!r}: the data's values converted as they are ({how}), not rescaled "
        "(integer image data: scale it as the model expects, e.g. to [0, 1])"
        for name, how in converted.items()
    ]

    def cut(source: Path, start: int, stop: int) -> dict:
        batch = {}
        for s, a in zip(specs, arrays_of(source).values(), strict=True):
            if s.axis is not None:
                cut = [slice(None)] * a.ndim
                cut[s.axis] = slice(start, stop)
                a = a[tuple(cut)]
            batch[s.name] = a
        return batch

    axes = None if fixed is not None else {s.name: s.axis for s in specs}
    return SampleBatches(spans, size, cut, axes, fixed is not None), False, notes


def _samples(specs, arrays: dict, where, fixed: int | None) -> tuple[int, int]:
    """Return ``(samples used, samples left out)`` of one group (:class:`DataError` if none)."""
    counts = {s.name: arrays[s.name].shape[s.axis] for s in specs if s.axis is not None}
    if len(set(counts.values())) > 1:
        raise DataError(
            f"{where}: the inputs hold different numbers of samples {counts} (an "
            "input whose samples are not on axis 0: --sample-axis NAME=AXIS)"
        )
    total = next(iter(counts.values()), 1)
    if total == 0:
        raise DataError(f"{where}: the data holds 0 samples")
    if fixed is None:
        return total, 0
    if total < fixed:
        raise DataError(
            f"{where}: {total} samples, fewer than the model's fixed batch size {fixed}"
        )
    return total - total % fixed, total % fixed


def split(batches: Batches, holdout: float) -> tuple[Batches, Batches, list[str]]:
    """Return ``(calibration, held_out, notes)``: the last ``holdout`` of the data held out.

    Data read from files is split by samples: the last ``ceil(holdout x samples)`` samples are
    held out, each part cut into batches of its own (whole batches for a model with a fixed
    batch size); random data by batches. At least one sample (batch) stays for calibration;
    with a single one nothing is held out (a note says that the quality is then measured on the
    calibration data).
    """
    by_samples = isinstance(batches, SampleBatches)
    unit = batches.size if by_samples and batches.fixed else 1
    n = batches.num_samples // unit if by_samples else len(batches)
    k = min(n - 1, math.ceil(holdout * n)) if holdout > 0 else 0
    notes = []
    if holdout > 0 and k == 0:
        what = "sample" if unit == 1 and by_samples else "batch"
        notes.append(
            f"one {what} of data: nothing held out, quality measured on the calibration data "
            f"(give more samples{' or a smaller --batch-size' if what == 'batch' else ''})"
        )
    if by_samples:
        return (*batches.split(k * unit), notes)
    return batches[: n - k], batches[n - k :], notes


def _count(batches: Batches) -> str:
    """``24 samples (2 batches)``, or ``2 batches`` where the samples are not counted."""
    plural = "" if len(batches) == 1 else "es"
    if isinstance(batches, SampleBatches):
        n = batches.num_samples
        return f"{n} sample{'' if n == 1 else 's'} ({len(batches)} batch{plural})"
    return f"{len(batches)} batch{plural}"


@dataclass(frozen=True)
class JobData:
    """The model job's model and batches.

    ``judged``: what the output SQNR is measured on (the held-out batches, or the calibration
    ones where none is held out); ``notes``: what the data's reading and split had to say.
    """

    model: object
    calib: Batches
    held: Batches
    judged: Batches
    notes: list[str]
    holdout: float = 0.0

    @property
    def measured_on(self) -> str:
        """``held-out`` or ``calibration``: the batches the output is judged on."""
        return "held-out" if len(self.held) else "calibration"

    def split_line(self) -> str:
        """Say how the data was split: ``data: 24 samples (2 batches) calibrate, ...``."""
        held = (
            f"{_count(self.held)} held out to judge the output"
            if len(self.held)
            else "none held out"
        )
        return f"data: {_count(self.calib)} calibrate, {held} (--holdout {self.holdout:g})"

    def split_json(self) -> dict:
        """Return the split as ``--format json`` gives it: samples (where counted), batches."""

        def part(batches: Batches) -> dict:
            out = {"batches": len(batches)}
            if isinstance(batches, SampleBatches):
                out = {"samples": batches.num_samples, **out}
            return out

        return {"calibration": part(self.calib), "held_out": part(self.held),
                "holdout": self.holdout}  # fmt: skip


def job_data(args) -> JobData:
    """Return the model job's data: the one ``.onnx`` file of ``args`` and its ``--data``.

    The batches are split by ``--holdout``.
    """
    model = load(Path(args.files[0]))
    notes = []
    if args.fold_batchnorm:
        model, folded = fold_batchnorm(model)
        notes.append(
            f"--fold-batchnorm: {len(folded)} BatchNormalization node(s) folded into the Conv "
            "before them (the QDQ model carries the folded weights)"
            if folded
            else "--fold-batchnorm: no BatchNormalization follows a Conv alone: nothing folded"
        )
    if args.cross_layer_equalization:
        model, pairs = equalize_layers(model)
        notes.append(
            f"--cross-layer-equalization: {len(pairs)} Conv pair(s) equalized (the QDQ model "
            "carries the scaled weights)"
            if pairs
            else "--cross-layer-equalization: no Conv feeds another alone (through a Relu or "
            "not): nothing equalized"
        )
    axes = parse_sample_axes(args.sample_axis)
    batches, random, more = batches_for(model, args.data, args.batch_size, axes)
    notes += more
    if random:
        notes.append(
            "calibrating on random data: the activation ranges say nothing about real inputs"
        )
    calib, held, more = split(batches, args.holdout)
    return JobData(model, calib, held, held if len(held) else calib, notes + more, args.holdout)


AUTO_WEIGHTS = ("minmax",)
"""``--method auto``'s weights in the model job: min-max, what ONNX Runtime, TensorRT and Model
Optimizer use for weights. Choosing the weights by the output as well (``--method all``: each
weight's best SQNR on itself, or one method for all, with the gate that the activations have)
did worse on held-out data in ``benchmarks/bench_quality.py``: of nine model x sample-set runs
it left min-max weights twice, and lost 1.2 and 4.7 dB of held-out output SQNR both times, at
the cost of the costliest searches (a text detector's 64 weights: entropy 6.2 s, MSE 2.1 s,
SQNR 2.0 s; min-max 0.03 s)."""


def weight_methods(args) -> dict[str, dict]:
    """Return ``--method`` as the calibrator's weights (``all``: every method of the command).

    ``auto`` is :data:`AUTO_WEIGHTS` whatever ``--activation-method`` is: one meaning, and
    never every weight method's search by default (a BERT-sized encoder took 300 s with them).
    """
    names = [m for m, spec in REGISTRY.items() if spec.in_command]
    if args.method == "auto":
        names = list(AUTO_WEIGHTS)
    elif args.method != "all":
        names = [args.method]
    return {m: method_options(args, m) for m in names}


def load(path: Path):
    """Return the loaded ``ModelProto`` of ``path`` (external data read in)."""
    return load_model(path)[0]


def iter_rows(result: CalibrationResult) -> Iterator[dict]:
    """Yield one JSON-ready row per encoding."""
    for e in result.encodings.values():
        yield {
            "name": e.name,
            "kind": e.kind,
            "method": e.method,
            "axis": e.axis,
            **encoding_lists(e.min, e.max, e.scale, e.offset),
            "sqnr_db": e.sqnr_db,
        }
