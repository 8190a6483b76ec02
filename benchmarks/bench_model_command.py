"""The command's model job with ``--method all`` on an ONNX MLP of four 1024 x 1024 weights.

Builds the model and 64 samples of calibration data in a temporary folder, runs
``encanalyze calibrate model.onnx --data data.npz --method all`` in a child process and reports
its wall time, peak resident set and the method each weight kept. ``--pythonpath DIR`` runs
another checkout of encanalyze (e.g. ``git worktree add /tmp/old <commit>``) for a before/after
comparison on the same machine.

    python benchmarks/bench_model_command.py [--pythonpath DIR] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE, LAYERS = 1024, 4


def write_model(folder: Path) -> tuple[Path, Path]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes, prev = [], [], "x"
    for i in range(LAYERS):
        w = (rng.standard_normal((SIZE, SIZE)) * 0.05).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", SIZE])],
        [helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["n", SIZE])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    np.savez(folder / "data.npz", x=rng.standard_normal((64, SIZE)).astype(np.float32))
    return folder / "model.onnx", folder / "data.npz"


def run_once(model: Path, data: Path, pythonpath: str | None) -> tuple[float, dict]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, "-m", "encanalyze", "calibrate", str(model), "--data", str(data),
           "--method", "all", "--format", "json"]  # fmt: skip
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, cwd=model.parent)
    return time.perf_counter() - start, json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pythonpath", help="run the encanalyze found on this path")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model, data = write_model(Path(tmp))
        times, report = [], None
        for _ in range(args.repeat):
            t, report = run_once(model, data, args.pythonpath)
            times.append(t)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    kept = {t["name"]: t["method"] for t in report["tensors"] if t["name"].startswith("w")}
    print(f"# {LAYERS} weights of {SIZE} x {SIZE}, --method all, 64 samples; {sys.platform}")
    print(f"wall time (best of {args.repeat}): {min(times):.1f} s; peak RSS {peak:.0f} MiB")
    print(f"methods kept: {kept}")


if __name__ == "__main__":
    main()
