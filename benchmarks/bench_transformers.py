"""Issue 35: transformers with dynamic axes against ONNX Runtime's ``quantize_static``.

A BERT-base-sized encoder (12 layers, hidden 768, 110M parameters) and a Llama-style decoder
(Hugging Face configurations, random weights), exported with ``torch.onnx.export(dynamo=True)``
and dynamic batch and sequence axes, calibrated on variable-length token data (groups of 8
samples, lengths 16-128, one padded sample per group): encanalyze's default model job and
``--activation-method percentile`` against ONNX Runtime's Percentile, Entropy and MinMax
calibrators (per-channel int8 weights, uint8 activations, MatMul / Gemm, the same batches),
each in a child process whose peak resident memory is read from ``wait4`` (and which is
stopped when it passes ``--limit-gb``). Every QDQ model is then scored on held-out groups
(output SQNR, mean over outputs). ONNX Runtime's histogram calibrators stack every batch's
outputs into one array, so variable lengths fail there ("inhomogeneous shape"); they are then
run again on the same samples padded to 128 tokens (``padded``), a fair chance to finish.

    python benchmarks/bench_transformers.py                  # the issue's sizes (~1 h)
    python benchmarks/bench_transformers.py --quick          # small models, 16 and 32 samples
    python benchmarks/bench_transformers.py --ours-only      # encanalyze's default job alone
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, machine  # noqa: E402

CACHE = ROOT / ".model-cache" / "transformers"
GROUP = 8
SIZES = {
    "encoder": {"hidden": 768, "layers": 12, "heads": 12, "vocab": 30522},
    "decoder": {"hidden": 1024, "layers": 8, "heads": 16, "kv_heads": 4, "vocab": 32000},
}
QUICK = {
    "encoder": {"hidden": 128, "layers": 2, "heads": 4},
    "decoder": {"hidden": 128, "layers": 2, "heads": 4, "kv_heads": 2, "vocab": 1000},
}


def export(kind: str, config: dict) -> Path:
    """Return the exported model (cached by configuration)."""
    from tests import transformer_models as tm

    name = f"{kind}-" + "-".join(f"{k}{v}" for k, v in sorted(config.items())) + ".onnx"
    path = CACHE / name
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        (tm.encoder if kind == "encoder" else tm.decoder)(path, **config)
    return path


def vocab_of(config: dict) -> int:
    from tests.transformer_models import VOCAB

    return config.get("vocab", VOCAB)


def write_groups(
    folder: Path,
    samples: int,
    seed: int,
    vocab: int,
    pad_to: int | None = None,
    lengths: tuple[int, int] = (16, 129),
):
    """``samples`` token sequences in groups of :data:`GROUP`, one random length per group."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(-(-samples // GROUP)):
        length = int(rng.integers(*lengths))
        n = min(GROUP, samples - k * GROUP)
        ids = rng.integers(0, vocab, (n, length))
        mask = np.ones((n, length), np.int64)
        mask[0, length // 2 :] = 0
        if pad_to is not None:  # the same samples, padded (masked) to one length
            ids = np.pad(ids, ((0, 0), (0, pad_to - length)))
            mask = np.pad(mask, ((0, 0), (0, pad_to - length)))
        np.savez(folder / f"group{k:04d}.npz", input_ids=ids, attention_mask=mask)
    return folder


def groups_of(folder: Path) -> list[dict]:
    return [dict(np.load(f)) for f in sorted(folder.glob("*.npz"))]


# -- children --------------------------------------------------------------------------------
def child_ort(model: str, data: str, method: str, out: str) -> None:
    """ONNX Runtime's quantize_static on the groups of ``data`` (one batch per group)."""
    import logging

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    logging.disable(logging.WARNING)
    files = sorted(Path(data).glob("*.npz"))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = (dict(np.load(f)) for f in files)

        def get_next(self):
            return next(self.items, None)

    quantize_static(
        model,
        out,
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, method),
        use_external_data_format=True,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )


def run_child(argv: list[str], limit_gb: float) -> dict:
    """Run ``argv``; return its time, peak resident memory (GB) and how it ended.

    The peak is the child's own high-water mark (``VmHWM``, polled every 50 ms): ``ru_maxrss``
    of a child starts at its parent's resident size at the fork.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, killed = [0], []

    def watch():  # the high-water mark; stop it before it takes the machine down
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                fields = dict(
                    line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
                )
                hwm, rss = (int(fields[k].split()[0]) for k in ("VmHWM", "VmRSS"))
            except (OSError, KeyError, ValueError):
                time.sleep(0.05)
                continue
            peak[0] = max(peak[0], hwm)
            if rss > limit_gb * 2**20:
                killed.append(rss)
                proc.send_signal(signal.SIGKILL)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    watcher.join()
    ended = "ok"
    if killed:
        ended = f"stopped past {limit_gb:g} GB"
    elif proc.returncode != 0:
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        ended = "failed: " + (lines[-1][:160] if lines else f"exit {proc.returncode}")
    return {"seconds": seconds, "peak_gb": peak[0] / 2**20, "ended": ended, "stdout": out}


def held_out_sqnr(model: Path, qdq: Path, held: list[dict]) -> float:
    from encanalyze.onnx import compare_outputs

    return compare_outputs(str(model), str(qdq), held).score()


def bench(
    kind: str, config: dict, counts: list[int], limit_gb: float, tmp: Path, ours_only: bool = False
) -> list[dict]:
    model = export(kind, config)
    vocab = vocab_of(config)
    held = groups_of(write_groups(tmp / f"{kind}-held", 16, seed=99, vocab=vocab))
    size_gb = sum(f.stat().st_size for f in model.parent.glob(model.stem + "*")) / 2**30
    print(f"\n## {kind}: {model.name} ({size_gb:.2f} GB)", flush=True)
    rows = []
    main_count = counts[len(counts) // 2] if len(counts) > 1 else counts[0]
    for samples in counts:
        data = write_groups(tmp / f"{kind}-{samples}", samples, seed=samples, vocab=vocab)
        padded = write_groups(
            tmp / f"{kind}-{samples}-padded", samples, seed=samples, vocab=vocab, pad_to=128
        )
        runs = {
            "encanalyze default": ["--data", str(data)],
            "encanalyze percentile": ["--data", str(data), "--activation-method", "percentile"],
        }
        ort = ["Percentile", "Entropy", "MinMax"] if samples == main_count else ["Percentile"]
        if samples != main_count or ours_only:
            runs.pop("encanalyze percentile")
        if ours_only:  # the default job alone: its memory and time over the sample counts
            ort = []
        jobs = []
        for label, extra in runs.items():
            out = tmp / f"{kind}-{samples}-{label.split()[1]}.onnx"
            argv = [sys.executable, "-m", "encanalyze", "calibrate", str(model), *extra,
                    "--qdq-model", str(out)]  # fmt: skip
            jobs.append((label, argv, out))
        for method in ort:
            for where, folder in (("", data), (" padded", padded)):
                out = tmp / f"{kind}-{samples}-ort-{method}{where.strip()}.onnx"
                argv = [sys.executable, __file__, "--child-ort", str(model), str(folder), method,
                        str(out)]  # fmt: skip
                jobs.append((f"ONNX Runtime {method}{where}", argv, out))
        for label, argv, out in jobs:
            row = {"model": kind, "samples": samples, "label": label}
            row.update(run_child(argv, limit_gb))
            row["sqnr_db"] = held_out_sqnr(model, out, held) if row["ended"] == "ok" else None
            rows.append(row)
            sqnr = "n/a" if row["sqnr_db"] is None else f"{row['sqnr_db']:.2f} dB"
            print(
                f"| {kind} | {samples} | {label} | {row['seconds']:.1f} s | "
                f"{row['peak_gb']:.2f} GB | {sqnr} | {row['ended']} |",
                flush=True,
            )
            for f in out.parent.glob(out.name + "*"):
                f.unlink()
            out.with_suffix(".data").unlink(missing_ok=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", nargs="+", default=["encoder", "decoder"])
    parser.add_argument("--samples", nargs="+", type=int, default=None)
    parser.add_argument("--limit-gb", type=float, default=18.0)
    parser.add_argument("--child-ort", nargs=4, metavar=("MODEL", "DATA", "METHOD", "OUT"))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--ours-only", action="store_true", help="encanalyze's default job only")
    args = parser.parse_args()
    if args.child_ort:
        child_ort(*args.child_ort)
        return
    sizes = QUICK if args.quick else SIZES
    counts = args.samples or ([16, 32] if args.quick else [16, 64, 256])
    print(f"# bench_transformers ({machine()})")
    print("| model | samples | calibration | time | peak memory | held-out SQNR | ended |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-transformers-") as tmp:
        for kind in args.models:
            rows += bench(kind, sizes[kind], counts, args.limit_gb, Path(tmp), args.ours_only)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
