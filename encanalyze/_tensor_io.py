"""Reading named tensors from files: .npy, .npz, .safetensors, .pt/.pth and .onnx.

Every reader returns host NumPy arrays by name; bfloat16 tensors become float32 (NumPy has no
bfloat16). Problems raise :class:`TensorFileError` with a one-line message naming the file.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import numpy as np

from ._onnx_graph import ModelFileError, float_weights, load_model

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


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {name: f[name] for name in f.files}


_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Parse the safetensors layout: u64 header size, JSON header, then the raw bytes."""
    data = path.read_bytes()
    if len(data) < 8:
        raise TensorFileError(f"{path}: truncated safetensors file")
    (size,) = struct.unpack("<Q", data[:8])
    if 8 + size > len(data):
        raise TensorFileError(f"{path}: truncated safetensors header")
    header = json.loads(data[8 : 8 + size])
    body = memoryview(data)[8 + size :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if end > len(body) or begin > end:
            raise TensorFileError(f"{path}: tensor {name!r} runs past the end of the file")
        raw = body[begin:end]
        dtype = info["dtype"]
        if dtype == "BF16":  # the upper half of a float32
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            array = bits.view(np.float32)
        elif dtype in _SAFETENSORS_DTYPES:
            array = np.frombuffer(raw, dtype=np.dtype(_SAFETENSORS_DTYPES[dtype]).newbyteorder("<"))
        else:
            raise TensorFileError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        out[name] = array.reshape(info["shape"]).copy()
    return out


def _read_torch(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise ImportError("reading .pt/.pth files needs torch (pip install torch)") from None
    if not zipfile.is_zipfile(path) and path.stat().st_size < 8:
        raise TensorFileError(f"{path}: truncated torch file")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    out: dict[str, np.ndarray] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach()
            out[prefix or path.stem] = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}" if prefix else str(i), v)

    walk("", obj)
    if not out:
        raise TensorFileError(f"{path}: holds no tensors (a {type(obj).__name__})")
    return out


def _read_onnx(path: Path) -> dict[str, np.ndarray]:
    model, _ = load_model(path)
    return float_weights(model)
