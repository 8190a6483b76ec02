"""The command's model job: ``encanalyze calibrate model.onnx --data ...``.

Calibration data comes from a ``.npz`` file or a folder of ``.npy`` files (one array per model
input, by input name, samples along axis 0, cut into batches of ``--batch-size``), or
``random`` (normal values of each input's shape, with a warning). Weights are calibrated per
output channel on each operator's axis, with ``--method`` (``all``: the method with the best
SQNR on each weight); activations with ``--activation-method`` through ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ._calibration import CalibrationResult
from ._onnx_graph import load_model
from ._registry import METHODS as REGISTRY
from ._report import encoding_lists
from ._tensor_io import read_tensors
from .onnx import calibrate, output_sqnr, write_qdq_model
from .onnx._calibrate import model_inputs

__all__ = ["DataError", "batches_for", "calibrate_model", "iter_rows"]

DEFAULT_BATCH_SIZE = 16
RANDOM_BATCHES = 8


class DataError(ValueError):
    """Calibration data that does not fit the model."""


def _inputs(model) -> list[tuple[str, list, np.dtype]]:
    """``(name, dims, dtype)`` of each input; symbolic dimensions are ``None``."""
    import onnx

    out = []
    for info in model_inputs(model):
        t = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        out.append((info.name, dims, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)))
    return out


def _read_data(source: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Return the inputs' arrays by name, read by the size-checked tensor readers."""
    if source.is_dir():
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


def batches_for(model, data: str, batch_size: int | None, seed: int = 0) -> tuple[list, bool]:
    """Return ``(batches, random)`` for the model: dicts by input name."""
    inputs = _inputs(model)
    if data == "random":
        rng = np.random.default_rng(seed)
        batches = []
        for _ in range(RANDOM_BATCHES):
            batch = {}
            for name, dims, dtype in inputs:
                if any(d is None for d in dims[1:]):
                    raise DataError(f"input {name!r} has symbolic dimensions {dims}: give --data")
                shape = [batch_size or dims[0] or 1, *dims[1:]] if dims else []
                if not np.issubdtype(dtype, np.floating):
                    raise DataError(f"input {name!r} is {dtype}, not floating point: give --data")
                batch[name] = rng.standard_normal(shape).astype(dtype)
            batches.append(batch)
        return batches, True
    arrays = _read_data(Path(data), [n for n, _, _ in inputs])
    lengths = {a.shape[0] if a.ndim else 1 for a in arrays.values()}
    if len(lengths) != 1:
        raise DataError(f"{data}: the inputs' arrays hold different numbers of samples {lengths}")
    (total,) = lengths
    first = inputs[0][1][0] if inputs and inputs[0][1] else None
    size = batch_size or first or DEFAULT_BATCH_SIZE
    starts = range(0, total, size)
    return [{n: a[i : i + size] for n, a in arrays.items()} for i in starts], False


def _weight_methods(args) -> dict[str, dict]:
    """Return ``--method`` as the calibrator's weights (``all``: every method of the command)."""
    names = [m for m, spec in REGISTRY.items() if spec.in_command]
    return {m: REGISTRY[m].command_options(args) for m in names if args.method in ("all", m)}


def calibrate_model(path: Path, args) -> tuple[CalibrationResult, dict | None, bool]:
    """Calibrate an ONNX model's weights and activations; write ``--qdq-model`` if asked.

    Returns the result, with ``--qdq-model`` ``{"path": ..., "output_sqnr_db": {...}}`` (else
    ``None``), and whether the data was random.
    """
    model, _ = load_model(path)
    batches, random = batches_for(model, args.data, args.batch_size)
    result = calibrate(
        model,
        batches,
        activations=args.activation_method,
        weights=_weight_methods(args),  # --method all: each weight keeps the best SQNR's
        activation_options=REGISTRY[args.activation_method].command_options(args),
        bits=args.bits,
        symmetric=args.symmetric,
        per_channel_weights=not args.per_tensor_weights,
    )
    qdq = None
    if args.qdq_model is not None:
        written = write_qdq_model(model, result, args.qdq_model)
        qdq = {"path": str(written), "output_sqnr_db": output_sqnr(model, written, batches)}
    return result, qdq, random


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
