"""Files in and out: tensor files, ONNX model files, statistics archives, the output transaction.

Everything a job writes goes through :class:`Outputs` (or :func:`write_atomic` for one file).
"""

from ._npz import NpzError, read_member
from ._onnx_files import (
    FLOAT_TYPES,
    IN_MEMORY,
    ModelFileError,
    all_graphs,
    external_locations,
    float_weights,
    in_memory,
    load_model,
    model_bytes,
    model_files,
    own_model,
    save_with_stub_data,
    tensor_bytes,
    without_large_initializers,
)
from ._outputs import (
    SIDECAR,
    OutputPathError,
    Outputs,
    Terminated,
    file_mode,
    stopping_signals,
    write_atomic,
)
from ._samples import sample_tensors
from ._tensors import TensorFileError, read_tensors
from ._text import printable, strict_json

__all__ = [
    "SIDECAR",
    "FLOAT_TYPES",
    "IN_MEMORY",
    "ModelFileError",
    "NpzError",
    "OutputPathError",
    "Outputs",
    "TensorFileError",
    "Terminated",
    "all_graphs",
    "external_locations",
    "file_mode",
    "float_weights",
    "in_memory",
    "load_model",
    "model_files",
    "model_bytes",
    "own_model",
    "printable",
    "strict_json",
    "tensor_bytes",
    "read_member",
    "read_tensors",
    "sample_tensors",
    "save_with_stub_data",
    "stopping_signals",
    "without_large_initializers",
    "write_atomic",
]
