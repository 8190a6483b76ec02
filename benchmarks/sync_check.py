"""Find every device-to-host sync in ``update_stats`` on the GPU, for every registered method.

torch: ``torch.cuda.set_sync_debug_mode("warn")`` reports each synchronizing CUDA call (a
device-to-host copy, ``.item()``, ``nonzero``, a blocking host-to-device copy); each report is
traced back to the encanalyze line that caused it. CuPy: ``cupyx.allow_synchronize(False)``
where this CuPy still has it (it raises at the first sync). Each method runs per tensor and per
channel, over batches that grow the range, stay inside it, and hold NaN and +-inf values.
``compute_encodings`` may sync (it returns results); it is not checked. Exit status 1 when any
update syncs.

    python benchmarks/sync_check.py
"""

from __future__ import annotations

import sys
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

import encanalyze as ea

ROOT = str(Path(ea.__file__).resolve().parent)
OPTIONS = {"entropy": {"num_bins": 256}}


def batches() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 64)).astype(np.float32)
    y = x * 3  # grows the range
    z = x * 0.5  # inside the range
    w = x.copy()
    w[0, 0], w[1, 1], w[2, 2] = np.nan, np.inf, -np.inf
    return [x, y, z, w]


def our_frame(stack) -> str:
    """The innermost encanalyze frame of ``stack``, as ``file:line function``."""
    for frame in reversed(stack):
        if frame.filename.startswith(ROOT):
            return f"{Path(frame.filename).relative_to(ROOT)}:{frame.lineno} {frame.name}"
    return "outside encanalyze: " + " <- ".join(f"{f.name}" for f in stack[-4:])


def check_torch() -> Counter:
    import torch

    sites: Counter = Counter()
    data = [torch.from_numpy(b).cuda() for b in batches()]
    for method in sorted(ea.METHODS):
        for shape in ((1,), (1, 64)):
            analyzer = ea.METHODS[method].analyzer(shape, **OPTIONS.get(method, {}))
            torch.cuda.synchronize()
            seen: list = []

            def show(message, category, filename, lineno, file=None, line=None, seen=seen):
                seen.append((str(message), traceback.extract_stack()[:-1]))

            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.showwarning = show
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    for x in data:
                        analyzer.update_stats(x)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            for message, stack in seen:
                if "called a synchronizing" in message:
                    sites[f"torch {method} {shape}: {our_frame(stack)}"] += 1
            analyzer.compute_encodings(255, False)  # must still work after the checked updates
    return sites


def check_cupy() -> Counter | None:
    try:
        import cupy
        import cupyx
    except ImportError:
        return None
    allow = getattr(cupyx, "allow_synchronize", None)
    if allow is None:
        print("cupy: this CuPy has no cupyx.allow_synchronize; not checked")
        return None
    sites: Counter = Counter()
    data = [cupy.asarray(b) for b in batches()]
    for method in sorted(ea.METHODS):
        for shape in ((1,), (1, 64)):
            analyzer = ea.METHODS[method].analyzer(shape, **OPTIONS.get(method, {}))
            cupy.cuda.runtime.deviceSynchronize()
            try:
                with allow(False):
                    for x in data:
                        analyzer.update_stats(x)
            except Exception as e:  # noqa: BLE001 - report whatever the sync raised
                tb = traceback.extract_tb(e.__traceback__)
                sites[f"cupy {method} {shape}: {our_frame(tb)} ({type(e).__name__})"] += 1
    return sites


def main() -> int:
    found = Counter()
    found.update(check_torch())
    cupy_sites = check_cupy()
    if cupy_sites is not None:
        found.update(cupy_sites)
    for site, n in sorted(found.items()):
        print(f"SYNC {site} (x{n})")
    print(f"{len(found)} sync sites in update_stats" if found else "no sync in update_stats")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
