"""The model job on real public ONNX models that ship inside packages (fetched with pip).

OCR models of PaddleOCR (opsets 11 and 12; a CNN classifier with batch dimension -1, a
detector, and a recognizer with attention blocks) and a voice-activity model whose network lies
in ``If`` subgraphs chosen by a scalar sample-rate input (the branch is inlined), with a state
input batched on axis 1.
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


@pytest.mark.parametrize("case", sorted(CASES))
def test_real_ocr_models(case, tmp_path, capsys):
    requirement, member, shape, opset = CASES[case]
    model = fetch(requirement, member)
    before = digest(model)
    np.savez(tmp_path / "calib.npz", x=text_images(6, *shape[1:]))
    qdq, out = tmp_path / "q.onnx", tmp_path / "e.json"
    status, stdout, err, seconds = _job(
        capsys, model, "--data", tmp_path / "calib.npz", "--batch-size", "2", "--method",
        "minmax", "--qdq-model", qdq, "--output", out, "--format", "json",
    )  # fmt: skip
    assert status == 0, err
    report = json.loads(stdout)
    kinds = [t["kind"] for t in report["tensors"]]
    assert kinds.count("param") > 10 and kinds.count("activation") > 10
    assert report["unquantized"] == []
    assert report["qdq_model"]["opset"] == f"opset {opset} converted to 13 for per-channel weights"
    (sqnr,) = report["qdq_model"]["output_sqnr_db"].values()
    assert np.isfinite(sqnr) and sqnr > 0
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
    np.savez(tmp_path / "vad.npz", input=(rng.standard_normal((8, 512)) * 0.1).astype("f4"),
             state=np.zeros((2, 8, 128), "f4"), sr=np.array(16000))  # fmt: skip
    qdq = tmp_path / "q.onnx"
    status, stdout, err, seconds = _job(
        capsys, model, "--data", tmp_path / "vad.npz", "--sample-axis", "state=1", "--method",
        "minmax", "--format", "json", "--qdq-model", qdq,
    )  # fmt: skip
    assert status == 0, err
    report = json.loads(stdout)
    kinds = [t["kind"] for t in report["tensors"]]
    assert kinds.count("param") >= 10  # the Conv and LSTM weights of both branches
    assert kinds.count("activation") >= 5  # the 16 kHz branch's, inlined
    assert report["branches"] == {"If_0_outputs_0": "then_branch"}  # sr == 16000
    sqnr = report["qdq_model"]["output_sqnr_db"]
    assert set(sqnr) == {"output", "stateN"} and all(np.isfinite(v) for v in sqnr.values())
    feed = {"input": np.zeros((1, 512), "f4"), "state": np.zeros((2, 1, 128), "f4"),
            "sr": np.array(16000)}  # fmt: skip
    assert np.isfinite(ort.InferenceSession(str(qdq)).run(None, feed)[0]).all()
    assert digest(model) == before
    print(f"vad: {len(kinds)} tensors, output SQNR {sqnr}, {seconds:.1f} s")
