"""Reading named tensors from files: .npy, .npz, .safetensors, .pt/.pth and .onnx.

Every reader returns host NumPy arrays by name; bfloat16 tensors become float32 (NumPy has no
bfloat16). Problems raise :class:`TensorFileError` with a one-line message naming the file.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
import zipfile
from pathlib import Path

import numpy as np

from ._npz import NpzError, read_member
from ._onnx_files import ModelFileError, float_weights, load_model

__all__ = ["FORMATS", "TensorFileError", "read_tensors"]

FORMATS = (".npy", ".npz", ".safetensors", ".pt", ".pth", ".onnx")


class TensorFileError(ValueError):
    """A tensor file is missing, of an unknown format, unreadable, or holds no tensors."""


def read_tensors(path: str | Path) -> dict[str, np.ndarray]:
    """Return the tensors stored in ``path`` by name (a ``.npy`` file's tensor: its stem)."""
    path = Path(path)
    if not path.is_file():
        raise TensorFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    readers = {
        ".npy": _read_npy,
        ".npz": _read_npz,
        ".safetensors": _read_safetensors,
        ".pt": _read_torch,
        ".pth": _read_torch,
        ".onnx": _read_onnx,
    }
    if suffix not in readers:
        raise TensorFileError(
            f"{path}: unknown format {suffix or '(no suffix)'!r}; expected one of "
            f"{', '.join(FORMATS)}"
        )
    try:
        tensors = readers[suffix](path)
    except TensorFileError:
        raise
    except ModelFileError as err:
        raise TensorFileError(f"{path}: {err}" if str(path) not in str(err) else str(err)) from err
    except ImportError as err:
        raise TensorFileError(f"{path}: {err}") from err
    except Exception as err:  # noqa: BLE001 - any parse failure becomes one named error
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TensorFileError(f"{path}: unreadable {suffix} file ({reason})") from err
    if not tensors:
        raise TensorFileError(f"{path}: holds no tensors")
    return tensors


def _read_npy(path: Path) -> dict[str, np.ndarray]:
    return {path.stem: np.load(path, allow_pickle=False)}


MAX_TENSOR_BYTES = 1 << 36
"""The most bytes one tensor in a file may declare (64 GiB), checked before reading it."""


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if not info.filename.endswith(".npy"):
                raise TensorFileError(f"{path}: member {info.filename!r} is not a .npy array")
            try:
                out[info.filename[:-4]] = read_member(z, info.filename, MAX_TENSOR_BYTES)
            except NpzError as err:
                raise TensorFileError(f"{path}: {err}") from None
    return out


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip


MAX_SAFETENSORS_HEADER = 100_000_000
"""The largest safetensors header (the safetensors library's own limit)."""

MAX_TENSORS = 1_000_000
"""The most tensors one file may hold."""

MAX_DEPTH = 64
"""The deepest nesting of containers a ``.pt`` file may have."""


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Parse the safetensors layout as strictly as the safetensors library does.

    u64 header size, a JSON object, then the tensors' bytes: each entry's ``dtype`` known, its
    ``shape`` non-negative integers, its ``data_offsets`` the exact size of the shape, and the
    entries, sorted by offset, covering the data without a gap or an overlap. The file is
    memory-mapped: each tensor is copied out once.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise TensorFileError(f"{path}: truncated safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_SAFETENSORS_HEADER or 8 + n > size:
            raise TensorFileError(f"{path}: safetensors header of {n} bytes does not fit")
        header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise TensorFileError(f"{path}: safetensors header is not a JSON object")
        entries = _safetensors_entries(path, header, size - 8 - n)
        if not entries:
            return {}
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return {
                name: _safetensors_array(mm, 8 + n + begin, dtype, shape)
                for name, dtype, shape, begin in entries
            }


def _safetensors_entries(path: Path, header: dict, body: int) -> list[tuple]:
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise TensorFileError(f"{path}: tensor {name!r} has no dtype, shape or data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype != "BF16" and dtype not in _SAFETENSORS_DTYPES:
            raise TensorFileError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        if not (isinstance(shape, list) and all(_count(d) for d in shape)):
            raise TensorFileError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_count, offsets))):
            raise TensorFileError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
        itemsize = 2 if dtype == "BF16" else np.dtype(_SAFETENSORS_DTYPES[dtype]).itemsize
        begin, end = offsets
        if end - begin != math.prod(shape) * itemsize:
            raise TensorFileError(
                f"{path}: tensor {name!r} spans {end - begin} bytes for shape {shape} of {dtype}"
            )
        entries.append((name, dtype, tuple(shape), begin, end))
    if len(entries) > MAX_TENSORS:
        raise TensorFileError(f"{path}: more than {MAX_TENSORS} tensors")
    entries.sort(key=lambda e: (e[3], e[4]))
    position = 0
    for name, _, _, begin, end in entries:
        if begin != position:
            kind = "overlaps the previous tensor" if begin < position else "leaves a gap"
            raise TensorFileError(f"{path}: tensor {name!r} {kind} (offset {begin})")
        position = end
    if position != body:
        raise TensorFileError(f"{path}: the tensors cover {position} of {body} data bytes")
    return [e[:4] for e in entries]


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _safetensors_array(mm, offset: int, dtype: str, shape: tuple) -> np.ndarray:
    count = math.prod(shape)
    if dtype == "BF16":  # the upper half of a float32
        bits = np.frombuffer(mm, dtype="<u2", count=count, offset=offset).astype(np.uint32)
        return (bits << 16).view(np.float32).reshape(shape)
    want = np.dtype(_SAFETENSORS_DTYPES[dtype]).newbyteorder("<")
    return np.frombuffer(mm, dtype=want, count=count, offset=offset).reshape(shape).copy()


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    """Read a ``.pt``/``.pth`` file (``weights_only=True``): every tensor by its first path.

    Shared references are walked once (a tensor reached again is not named again, a container
    reached again not re-entered), nesting deeper than :data:`MAX_DEPTH` or more than
    :data:`MAX_TENSORS` tensors raise :class:`TensorFileError`.
    """
    try:
        import torch
    except ImportError:
        raise ImportError("reading .pt/.pth files needs torch (pip install torch)") from None
    if not zipfile.is_zipfile(path) and path.stat().st_size < 8:
        raise TensorFileError(f"{path}: truncated torch file")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    out: dict[str, np.ndarray] = {}
    seen: set[int] = set()
    stack = [("", obj, 0)]
    while stack:
        prefix, value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise TensorFileError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        if id(value) in seen:
            continue
        if isinstance(value, torch.Tensor):
            seen.add(id(value))
            if len(out) >= MAX_TENSORS:
                raise TensorFileError(f"{path}: more than {MAX_TENSORS} tensors")
            t = value.detach()
            out[prefix or path.stem] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
        elif isinstance(value, (dict, list, tuple)):
            seen.add(id(value))
            items = value.items() if isinstance(value, dict) else enumerate(value)
            children = [(f"{prefix}.{k}" if prefix else str(k), v, depth + 1) for k, v in items]
            stack.extend(reversed(children))  # depth first, in order
    if not out:
        raise TensorFileError(f"{path}: holds no tensors (a {type(obj).__name__})")
    return out


def _read_onnx(path: Path) -> dict[str, np.ndarray]:
    model, _ = load_model(path)
    return float_weights(model)
