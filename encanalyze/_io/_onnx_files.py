"""Reading ONNX graphs: every float weight, wherever the model keeps it (needs onnx).

Weights live in initializers, in ``Constant`` nodes (``value``, ``value_float``,
``value_floats``), in the bodies of ``If``/``Loop``/``Scan`` nodes, and in external data files
next to the model. :func:`load_model` reads the external data into the model, resolving each
location against the model's own folder and refusing one that leads outside it;
:func:`float_weights` returns the float tensors by ONNX name, float16 and bfloat16 as float32.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = [
    "FLOAT_TYPES",
    "IN_MEMORY",
    "in_memory",
    "save_with_stub_data",
    "tensor_bytes",
    "ModelFileError",
    "all_graphs",
    "external_locations",
    "float_weights",
    "load_model",
    "model_files",
    "model_bytes",
    "own_model",
    "without_large_initializers",
]


class ModelFileError(ValueError):
    """An ONNX model file is missing, unreadable, or refers to data it may not read."""


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("reading .onnx models needs onnx (pip install onnx)") from None
    return onnx


def _float_types() -> dict[int, np.dtype]:
    tp = _onnx().TensorProto
    return {
        tp.FLOAT: np.dtype("<f4"),
        tp.DOUBLE: np.dtype("<f8"),
        tp.FLOAT16: np.dtype("<f2"),
        tp.BFLOAT16: np.dtype("<u2"),  # the upper half of a float32
    }


FLOAT_TYPES = ("FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16")
"""ONNX element types read as weights and calibrated as activations."""


def load_model(model) -> tuple[object, Path | None]:
    """Return ``(ModelProto, folder)`` for a path or a ``ModelProto``, external data read in.

    External data locations are resolved against the model's folder (``folder`` is ``None``
    for a ``ModelProto``, which must then hold its data); a location that is absolute, names
    no file, or leads outside the folder raises :class:`ModelFileError`.
    """
    onnx = _onnx()
    if isinstance(model, onnx.ModelProto):
        folder = None
    else:
        path = Path(model)
        if not path.is_file():
            raise ModelFileError(f"{path}: no such file")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as err:  # noqa: BLE001 - any parse failure becomes one named error
            raise ModelFileError(f"{path}: unreadable .onnx file ({_first_line(err)})") from err
        folder = path.resolve().parent
    for graph in all_graphs(model.graph):
        for tensor in _tensors(graph):
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                _read_external(tensor, folder)
    return model, folder


def own_model(model):
    """Return :func:`load_model`'s ``ModelProto``, copied when the caller passed one.

    For the steps that change the model they work on (turning ``Constant`` nodes into
    initializers, writing external data): a caller's ``ModelProto`` stays as it was.
    """
    proto, _ = load_model(model)
    if proto is model:
        proto = type(model)()
        proto.CopyFrom(model)
    return proto


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def all_graphs(graph) -> Iterator:
    """Yield ``graph`` and every subgraph (``If``/``Loop``/``Scan`` bodies), depth first."""
    onnx = _onnx()
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from all_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from all_graphs(g)


def model_bytes(model) -> int:
    """Return an estimate of ``model``'s serialized size: protobuf's 2 GiB limit applies to it.

    Every tensor counts by its element count and type, as its ``raw_data`` holds it, plus its
    name and dims (initializers, ``Constant`` values and subgraphs' alike; string tensors and
    tensors kept in external data by their own serialized size), and every node by 1 KiB
    (within 0.2% of a BERT-base's real size): the whole model's ``ByteSize`` serializes it,
    0.6 s for a BERT-base, on every session.
    """
    onnx = _onnx()
    total = 0
    for graph in all_graphs(model.graph):
        total += 1024 * len(graph.node)
        for tensor in _tensors(graph):
            if tensor.data_type == onnx.TensorProto.STRING or tensor.external_data:
                total += tensor.ByteSize()
                continue
            total += tensor_bytes(tensor) + 16 + len(tensor.name) + 10 * len(tensor.dims)
    return total


IN_MEMORY = "encanalyze-in-memory"
"""The external data location :func:`without_large_initializers` gives the tensors it takes."""

_SHAREABLE = ("FLOAT", "DOUBLE", "INT8", "UINT8", "INT16", "UINT16", "INT32", "UINT32", "INT64",
              "UINT64", "BOOL")  # fmt: skip
"""Types shared (float16 is not: a CPU session casts it to float32 by a node it folds)."""


def without_large_initializers(
    model, min_bytes: float = 1024, *, for_session: bool = True
) -> tuple[object, list]:
    """Return ``model`` less its main graph's large initializers' data, and those initializers.

    A new ``ModelProto``: every field of ``model`` but the main graph's initializers of at least
    ``min_bytes`` bytes (:data:`_SHAREABLE`: integers, bool, float32, float64) that only
    :data:`_RUN_TIME_READERS` read, which it declares as external data at :data:`IN_MEMORY`
    (their name, type and dims only); the second value
    lists those initializers of ``model`` (not copied). Stubs already in ``model``
    (:func:`in_memory`) are taken like data where they qualify, and stay stubs otherwise. For
    ONNX Runtime sessions that take the data from arrays (``SessionOptions.add_initializer``)
    instead of a serialized copy; ``for_session=False`` takes every initializer of
    ``min_bytes`` or more (for shape inference, which reads types and dims only). ``model``
    itself is not changed (setting a tensor's bytes and back would leave a copy of them in its
    arena for as long as it lives).
    """
    onnx = _onnx()
    kinds = {getattr(onnx.TensorProto, name) for name in _SHAREABLE}
    shareable = _read_at_run_time(model.graph) if for_session else None
    out = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name != "graph":
            _copy_field(out, field, value)
    taken = []
    for field, value in model.graph.ListFields():
        if field.name != "initializer":
            _copy_field(out.graph, field, value)
    for init in model.graph.initializer:
        if (
            tensor_bytes(init) < min_bytes
            or (init.external_data and not in_memory(init))
            or (for_session and (init.data_type not in kinds or init.name not in shareable))
        ):
            out.graph.initializer.add().CopyFrom(init)
            continue
        taken.append(init)
        stub = out.graph.initializer.add(name=init.name, data_type=init.data_type)
        stub.dims.extend(init.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        stub.external_data.add(key="location", value=IN_MEMORY)
    return out, taken


def in_memory(tensor) -> bool:
    """Whether ``tensor`` is a stub of :func:`without_large_initializers` (data elsewhere)."""
    return any(e.key == "location" and e.value == IN_MEMORY for e in tensor.external_data)


def save_with_stub_data(model, data: dict, path: Path) -> None:
    """Save ``model``, whose stubs' (:func:`in_memory`) data ``data`` holds, at ``path``.

    ``data``: the initializers (``TensorProto``) by stub name, e.g. the second value of
    :func:`without_large_initializers`. Their bytes go one tensor at a time to
    ``path.name + ".data"`` beside it, as external data: the model is never held whole.
    """
    onnx = _onnx()
    location = f"{path.name}.data"
    with open(path.with_name(location), "wb") as out:
        for stub in model.graph.initializer:
            if not in_memory(stub):
                continue
            source = data[stub.name]
            raw = source.raw_data or onnx.numpy_helper.to_array(source).tobytes()
            offset = out.tell()
            out.write(raw)
            del stub.external_data[:]
            for key, value in (("location", location), ("offset", offset), ("length", len(raw))):
                stub.external_data.add(key=key, value=str(value))
            del raw
    onnx.save_model(model, str(path))


_RUN_TIME_READERS = ("MatMul", "Gemm", "Gather", "Mul", "Div", "Add", "Sub", "Where")
"""Operators that read a weight only when they run (beside an operand computed at run time):
ONNX Runtime's graph optimizers read the data of other weights from the graph (constant
folding, Conv and Cast fusions, QDQ rewrites) before a session's shared arrays take their place
(the arithmetic ones are here for the weights that the emulation quantizes by scales it is fed;
a fusion that reads one anyway makes the session fall back to a copy)."""


def _read_at_run_time(graph) -> set[str]:
    """Return the initializers of ``graph`` that only :data:`_RUN_TIME_READERS` read.

    Each of those nodes has an operand that no initializer holds; no subgraph reads them and
    they are no input or output of the graph.
    """
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    ok = set(constants) - {o.name for o in graph.output} - {i.name for i in graph.input}
    for node in graph.node:
        nested = any(a.g.node or a.graphs for a in node.attribute)
        runtime = any(i and i not in constants for i in node.input)
        if node.op_type not in _RUN_TIME_READERS or not runtime or nested:
            ok -= set(node.input)
    for sub in list(all_graphs(graph))[1:]:  # what a body reads from outside
        for node in sub.node:
            ok -= set(node.input)
    return ok


def _copy_field(target, field, value) -> None:
    """Copy one set field of a message into ``target`` (repeated, message or scalar)."""
    current = getattr(target, field.name)
    if hasattr(current, "extend"):
        current.extend(value)
    elif hasattr(current, "CopyFrom"):
        current.CopyFrom(value)
    else:
        setattr(target, field.name, value)


def tensor_bytes(tensor) -> int:
    """Return the bytes a tensor's ``raw_data`` holds: its element count times its type's."""
    itemsize = _onnx().helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return math.prod(tensor.dims) * itemsize


def external_locations(model) -> list[str]:
    """Return the external data locations that a model (loaded without its data) names."""
    out = []
    for graph in all_graphs(model.graph):
        for tensor in _tensors(graph):
            if tensor.data_location == _onnx().TensorProto.EXTERNAL:
                location = {e.key: e.value for e in tensor.external_data}.get("location", "")
                if location and location not in out:
                    out.append(location)
    return out


def model_files(model) -> list[Path]:
    """Return the files an ONNX model is read from: its path and its external data files.

    A ``ModelProto`` reads none. Read before any output is declared, so that no output
    overwrites them; a file that is not a readable model names no external data (it is
    reported when it is loaded).
    """
    if not isinstance(model, (str, os.PathLike)):
        return []
    try:
        proto = _onnx().load(str(model), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable model is reported when it is loaded
        return [Path(model)]
    folder = Path(model).parent
    return [Path(model), *(folder / loc for loc in external_locations(proto) if "\x00" not in loc)]


def _tensors(graph) -> Iterator:
    """Yield the graph's own tensors: initializers and ``Constant`` values (not subgraphs')."""
    yield from graph.initializer
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    yield attr.t


def _read_external(tensor, folder: Path | None) -> None:
    """Move a tensor's external data into ``raw_data`` after checking where it points."""
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    if folder is None:
        raise ModelFileError(
            f"tensor {tensor.name!r} keeps its data in {location!r}: pass the model's path, "
            "not a ModelProto, so that its folder is known"
        )
    if not location or os.path.isabs(location) or "\x00" in location:
        raise ModelFileError(f"tensor {tensor.name!r}: external data location {location!r} "
                             "must be a path relative to the model's folder")  # fmt: skip
    path = (folder / location).resolve()
    if not path.is_relative_to(folder):
        raise ModelFileError(
            f"tensor {tensor.name!r}: external data {location!r} lies outside the model's "
            f"folder {folder}"
        )
    if not path.is_file():
        raise ModelFileError(f"tensor {tensor.name!r}: external data file {path} is missing")
    size = path.stat().st_size
    offset = _whole(tensor, "offset", info.get("offset") or "0")
    length = _whole(tensor, "length", info["length"]) if info.get("length") else size - offset
    if offset < 0 or length < 0 or offset + length > size:
        raise ModelFileError(
            f"tensor {tensor.name!r}: bytes {offset}..{offset + length} lie outside {path} "
            f"({size} bytes)"
        )
    with open(path, "rb") as f:
        f.seek(offset)
        tensor.raw_data = f.read(length)
    del tensor.external_data[:]
    tensor.data_location = _onnx().TensorProto.DEFAULT


def _whole(tensor, key: str, text: str) -> int:
    """Return an external-data ``offset``/``length`` field: a whole number of bytes."""
    if not text.strip().isdigit():
        raise ModelFileError(
            f"tensor {tensor.name!r}: external data {key} {text!r} is not a whole number of bytes"
        )
    return int(text)


def _to_float32(tensor) -> np.ndarray | None:
    """Return a float tensor as an array (float64 kept, others float32); else ``None``."""
    from onnx import numpy_helper

    dtype = _float_types().get(tensor.data_type)
    if dtype is None:
        return None
    shape = tuple(tensor.dims)
    if tensor.raw_data:
        array = np.frombuffer(tensor.raw_data, dtype=dtype)
    elif dtype.kind == "u":  # bfloat16 bits in int32_data
        array = np.asarray(tensor.int32_data, dtype=np.uint16)
    else:
        return _widen(np.asarray(numpy_helper.to_array(tensor)))
    if array.size != int(np.prod(shape, dtype=np.int64)):
        raise ModelFileError(f"tensor {tensor.name!r} holds {array.size} values for shape {shape}")
    if dtype.kind == "u":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return _widen(array.reshape(shape))


def _widen(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float64 if array.dtype == np.float64 else np.float32)


def float_weights(model) -> dict[str, np.ndarray]:
    """Return every float weight of a (loaded) ``ModelProto`` by its ONNX tensor name.

    Initializers and ``Constant`` node outputs (``value``, ``value_float``, ``value_floats``)
    of the main graph and of every subgraph; float16 and bfloat16 as float32, float64 kept.
    A name seen twice (a subgraph shadowing an outer name) keeps its first tensor.
    """
    out: dict[str, np.ndarray] = {}
    for graph in all_graphs(model.graph):
        for init in graph.initializer:
            _add(out, init.name, _to_float32(init))
        for node in graph.node:
            if node.op_type != "Constant" or not node.output:
                continue
            for attr in node.attribute:
                if attr.name == "value":
                    array = _to_float32(attr.t)
                elif attr.name == "value_float":
                    array = np.asarray(attr.f, dtype=np.float32)
                elif attr.name == "value_floats":
                    array = np.asarray(attr.floats, dtype=np.float32)
                else:
                    continue
                _add(out, node.output[0], array)
    return out


def _add(out: dict, name: str, array: np.ndarray | None) -> None:
    if array is not None and name not in out:
        out[name] = array
