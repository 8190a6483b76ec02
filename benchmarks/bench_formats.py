"""MX and NVFP4 quantize-dequantize of a 4096 x 4096 weight against torchao's, same run.

Each row: encanalyze's ``mx_quantize`` + ``mx_dequantize`` (NumPy input, and torch input;
with ``--device cuda``: CuPy input, and torch CUDA input) against torchao's ``to_mx`` +
``to_dtype`` on the same device; NVFP4 the same with two-level scaling. Goals (issue 22):
within 2x of torchao; the least-error MX exponents (``mode="mse"``) in under 1 s.

    python benchmarks/bench_formats.py [--size 4096] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compare, machine  # noqa: E402

from encanalyze import formats  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    import torch
    from torchao.prototype.mx_formats import mx_tensor, nvfp4_tensor
    from torchao.prototype.mx_formats.kernels import f4_unpacked_to_f32, unpack_uint4

    n = args.size
    w = (np.random.default_rng(0).standard_t(5, (n, n)) * 0.02).astype(np.float32)
    t = torch.from_numpy(w).to(args.device)
    sync = None
    if args.device == "cuda":
        import cupy

        w = cupy.asarray(w)  # the first column: CuPy on the device

        def sync():
            torch.cuda.synchronize()
            cupy.cuda.runtime.deviceSynchronize()

    e2m1 = torch.float4_e2m1fn_x2

    def host(a):
        return a.cpu().numpy() if hasattr(a, "cpu") else (a.get() if hasattr(a, "get") else a)

    def ours_mx(x=w):
        return formats.mx_dequantize(*formats.mx_quantize(x, formats.E2M1))

    def torchao_mx():
        scale, data = mx_tensor.to_mx(t, e2m1, 32)
        return mx_tensor.to_dtype(data, scale, e2m1, 32, torch.float32)

    def ours_nv(x=w):
        ts = formats.nvfp4_tensor_scale(x)
        return formats.nvfp4_dequantize(*formats.nvfp4_quantize(x, ts), ts)

    def torchao_nv():
        ts = nvfp4_tensor.per_tensor_amax_to_scale(t.abs().max())
        scales, packed = nvfp4_tensor.nvfp4_quantize(t, 16, ts)
        q = f4_unpacked_to_f32(unpack_uint4(packed)).reshape(t.shape)
        return q * (ts * scales.float()).repeat_interleave(16, dim=1)

    for mine, theirs in ((ours_mx, torchao_mx), (ours_nv, torchao_nv)):
        assert np.array_equal(host(mine()), host(theirs()))
        assert np.array_equal(host(mine(t)), host(theirs()))
    where = torch.cuda.get_device_name() if args.device == "cuda" else machine()
    print(f"# {n} x {n} float32 weight; {where}, torch {torch.__version__}")
    print(f"{'row':<22}{'ours':>10}{'torch in':>10}{'torchao':>10}{'ratio':>8}  goal")

    searched = compare([lambda: formats.mx_exponents(w, formats.E2M1, mode="mse")], 1, 1, sync)[0]
    flag = "met" if searched < 1 else "NOT met"
    print(f"{'MXFP4 mse exponents':<22}{searched:>9.2f}s{'':>20}{'':>8}  < 1 s {flag}")
    for name, mine, theirs in (
        ("MXFP4 qdq", ours_mx, torchao_mx),
        ("NVFP4 qdq", ours_nv, torchao_nv),
    ):
        t_np, t_t, t_ao = compare([mine, lambda m=mine: m(t), theirs], 3, 1, sync)
        best = min(t_np, t_t)
        flag = "met" if best <= 2 * t_ao else "NOT met"
        print(f"{name:<22}{t_np:>9.2f}s{t_t:>9.2f}s{t_ao:>9.2f}s{best / t_ao:>7.2f}x  <= 2x {flag}")


if __name__ == "__main__":
    main()
