"""Issue 35: a decoder past protobuf's 2 GB limit through the whole model job.

A Llama-style decoder (Hugging Face configuration, random weights; hidden 1536, 18 layers,
grouped-query attention, vocabulary 32000: 552M parameters, 2.2 GB in float32) exported with
``torch.onnx.export(dynamo=True)`` (external data, dynamic batch and sequence axes), calibrated
by the default model job on variable-length token data with ``--qdq-model`` (written with
external data) and ``--report``, in a child process whose time and peak resident memory are
recorded; then the written QDQ model is loaded again and run on held-out samples, in another
child, against the float model (its output SQNR, time and peak memory).

    python benchmarks/bench_large_model.py --no-report  # ~7 min on 2 cores, ~19 GB
    python benchmarks/bench_large_model.py              # with --report: over 25 min
    python benchmarks/bench_large_model.py --quick    # hidden 256, 2 layers
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_transformers import export, run_child, write_groups  # noqa: E402
from benchmarks.common import machine  # noqa: E402

LARGE = {"hidden": 1536, "layers": 18, "heads": 12, "kv_heads": 4, "vocab": 32000}
QUICK = {"hidden": 256, "layers": 2, "heads": 4, "kv_heads": 2, "vocab": 32000}


def child_rerun(model: str, qdq: str, held: str) -> None:
    """Load the written QDQ model again and score it on the held-out groups."""
    from benchmarks.bench_transformers import groups_of
    from encanalyze.onnx import compare_outputs

    score = compare_outputs(model, qdq, groups_of(Path(held))).score()
    print(f"held-out output SQNR {score:.2f} dB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--limit-gb", type=float, default=22.0)
    parser.add_argument("--no-report", action="store_true", help="the job without --report")
    parser.add_argument("--child-rerun", nargs=3, metavar=("MODEL", "QDQ", "HELD"))
    args = parser.parse_args()
    if args.child_rerun:
        child_rerun(*args.child_rerun)
        return
    model = export("decoder", QUICK if args.quick else LARGE)
    size = sum(f.stat().st_size for f in model.parent.glob(model.name + "*")) / 2**30
    print(f"# bench_large_model ({machine()})")
    print(f"{model.name}: {size:.2f} GB with its external data\n")
    with tempfile.TemporaryDirectory(prefix="bench-large-") as tmp:
        tmp = Path(tmp)
        data = write_groups(tmp / "data", args.samples, seed=1, vocab=32000, lengths=(16, 49))
        held = write_groups(tmp / "held", 8, seed=2, vocab=32000, lengths=(16, 49))
        qdq, report = tmp / "q.onnx", tmp / "r.html"
        argv = [sys.executable, "-m", "encanalyze", "calibrate", str(model), "--data", str(data),
                "--batch-size", "4", "--qdq-model", str(qdq)]  # fmt: skip
        if not args.no_report:
            argv += ["--report", str(report)]
        job = run_child(argv, args.limit_gb)
        written = sum(f.stat().st_size for f in tmp.glob("q.onnx*")) / 2**30
        print("| step | time | peak memory | ended |")
        print("| --- | --- | --- | --- |")
        what = "--qdq-model" + ("" if args.no_report else ", --report")
        print(f"| model job (default, {what}), {args.samples} samples | "
              f"{job['seconds']:.0f} s | {job['peak_gb']:.1f} GB | {job['ended']} |")  # fmt: skip
        if job["ended"] != "ok":
            return
        rerun = run_child(
            [sys.executable, __file__, "--child-rerun", str(model), str(qdq), str(held)],
            args.limit_gb,
        )
        print(f"| the written QDQ model ({written:.2f} GB) rerun on 8 held-out samples | "
              f"{rerun['seconds']:.0f} s | {rerun['peak_gb']:.1f} GB | {rerun['ended']}: "
              f"{rerun.get('stdout', '').strip()} |")  # fmt: skip
        if report.is_file():
            print(f"\nreport: {report.stat().st_size / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
