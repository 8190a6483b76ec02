"""``update_stats`` never syncs the device with the host.

torch: CUDA's sync-debug mode turns each synchronizing call into an error (it catches device to
host copies, ``.item()``, ``nonzero`` and blocking host-to-device copies). CuPy: the
``cupyx.allow_synchronize(False)`` guard where this CuPy still has it. Skipped without a GPU.
"""

import contextlib

import numpy as np
import pytest

import encanalyze as ea


def _torch_guard():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")

    @contextlib.contextmanager
    def guard():
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")

    return lambda a: torch.from_numpy(a).cuda(), guard


def _cupy_guard():
    cupy = pytest.importorskip("cupy")
    cupyx = pytest.importorskip("cupyx")
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            pytest.skip("needs a CUDA GPU")
    except cupy.cuda.runtime.CUDARuntimeError:
        pytest.skip("needs a CUDA GPU")
    if not hasattr(cupyx, "allow_synchronize"):
        pytest.skip("this CuPy has no cupyx.allow_synchronize")
    return cupy.asarray, lambda: cupyx.allow_synchronize(False)


@pytest.mark.filterwarnings("ignore::UserWarning")  # both guards warn that they are prototypes
@pytest.mark.parametrize("gpu", ["torch-cuda", "cupy"])
@pytest.mark.parametrize("shape", [(1,), (1, 64)], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize("method", sorted(ea.METHODS))
def test_update_stats_never_syncs(gpu, method, shape):
    to_gpu, guard = _torch_guard() if gpu == "torch-cuda" else _cupy_guard()
    x = np.random.default_rng(0).standard_normal((256, 64)).astype(np.float32)
    odd = x.copy()
    odd[0, 0], odd[1, 1], odd[2, 2] = np.nan, np.inf, -np.inf
    batches = [to_gpu(b) for b in (x, x * 3, x * 0.5, odd)]  # first, growing, inside, non-finite
    analyzer = ea.METHODS[method].analyzer(
        shape, **({"num_bins": 256} if method == "entropy" else {})
    )
    with guard():
        for batch in batches:
            analyzer.update_stats(batch)
    lo, hi = (np.asarray(a.tolist()) for a in analyzer.compute_encodings(255, False))
    assert np.isfinite(lo).all() and np.isfinite(hi).all()
    assert (lo <= 0).all() and (hi >= 0).all() and (hi > lo).all()
