"""``python -m encanalyze``: calibrate the built-in sample tensors on every installed backend."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np

from .analyzers import MinMaxEncodingAnalyzer
from .encoding import to_scale_offset
from .samples import sample_tensors


def _backends() -> dict[str, tuple]:
    """Return ``name -> (to_backend, to_numpy)`` for each installed backend."""
    out = {"numpy": (np.asarray, np.asarray)}
    if importlib.util.find_spec("torch"):
        import torch

        out["torch"] = (torch.from_numpy, lambda t: t.cpu().numpy())
        if torch.cuda.is_available():
            out["torch-cuda"] = (lambda a: torch.from_numpy(a).cuda(), lambda t: t.cpu().numpy())
    if importlib.util.find_spec("cupy"):
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                out["cupy"] = (cupy.asarray, cupy.asnumpy)
        except Exception:  # noqa: BLE001 - CuPy without a usable GPU
            pass
    if importlib.util.find_spec("array_api_strict"):
        import array_api_strict

        out["array_api_strict"] = (array_api_strict.asarray, np.from_dlpack)
    return out


def main() -> int:
    """Print 8-bit min-max encodings of the sample tensors, per backend, per tensor and channel."""
    num_steps = 255
    tensors = sample_tensors()
    print(
        f"{'backend':<17}{'tensor':<13}{'shape':<17}{'min':>10}{'max':>10}{'scale':>11}"
        f"{'offset':>7}  per-channel max range"
    )
    for name, (to_backend, to_numpy) in _backends().items():
        for tname, t in tensors.items():
            x = to_backend(t)
            per_tensor = MinMaxEncodingAnalyzer((1,))
            per_tensor.update_stats(x)
            lo, hi = per_tensor.compute_encodings(num_steps, False)
            scale, offset = to_scale_offset(lo, hi, num_steps)
            per_channel = MinMaxEncodingAnalyzer((t.shape[0],) + (1,) * (t.ndim - 1))
            per_channel.update_stats(x)
            clo, chi = (to_numpy(a) for a in per_channel.compute_encodings(num_steps, False))
            print(
                f"{name:<17}{tname:<13}{str(t.shape):<17}{float(to_numpy(lo)[0]):>10.4f}"
                f"{float(to_numpy(hi)[0]):>10.4f}{float(to_numpy(scale)[0]):>11.3e}"
                f"{int(to_numpy(offset)[0]):>7}  "
                f"[{float((chi - clo).min()):.4f}, {float((chi - clo).max()):.4f}]"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
