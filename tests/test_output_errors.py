"""Scores mean something: integer and bool outputs are compared exactly, not by SQNR (issue 32)."""

import numpy as np
import pytest

from encanalyze._output_errors import OutputErrors

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from encanalyze._html_report import write_report  # noqa: E402
from encanalyze.onnx import calibrate, choose_encodings, compare_outputs  # noqa: E402
from encanalyze.onnx._report import model_report  # noqa: E402
from tests import onnx_models as om  # noqa: E402
from tests.test_report import _errors, _open  # noqa: E402


def test_float_outputs_by_sqnr_ids_by_agreement_and_ids_judge_only_without_floats():
    y = np.array([[1.0, 2.0], [3.0, 4.0]])
    ids = np.array([1, 0])
    errors = OutputErrors.measure(
        ["y", "ids"], [[y, ids]], [[y + [[0.1, 0.0], [0.0, 0.0]], np.array([1, 1])]]
    )
    assert errors.exact.tolist() == [False, True] and errors.unit == "dB"
    want = 10 * np.log10(30 / 0.01)
    assert errors.sqnr_db() == {"y": pytest.approx(want)}
    assert errors.agreement_percent() == {"ids": 50.0}
    assert errors.score() == pytest.approx(want)  # the ids stay out of the score
    assert errors.signal.shape == (2, 2)  # per sample: the rows of the first axis
    only_ids = OutputErrors.measure(["ids"], [[ids], [ids]], [[ids], [np.array([0, 0])]])
    assert only_ids.unit == "%" and only_ids.score() == pytest.approx(75.0)
    mask = OutputErrors.measure(["m"], [[np.array([True, False])]], [[np.array([True, True])]])
    assert mask.agreement_percent() == {"m": 50.0}
    assert errors.as_json("calibration_") == {
        "calibration_output_sqnr_db": {"y": pytest.approx(want)},
        "calibration_output_agreement_percent": {"ids": 50.0},
    }


def _classifier(tmp_path, logits):
    path = tmp_path / "m.onnx"
    onnx.save(om.classifier(logits), str(path))
    rng = np.random.default_rng(0)
    data = tmp_path / "x.npz"
    np.savez(data, x=rng.normal(size=(64, 3, 8, 8)).astype("f4"))
    return path, data


def test_the_choice_is_judged_by_the_logits_not_by_the_class_ids(command, tmp_path):
    path, data = _classifier(tmp_path, logits=True)
    out = command(
        path, "--data", data, "--qdq-model", tmp_path / "q.onnx", "--format", "json"
    ).json()
    emulated = out["choice"]["emulated_output_sqnr_db"]
    assert all(np.isfinite(v) and 15 < v < 60 for v in emulated.values())  # y's, not inf
    gains = out["choice"]["gain_db"].values()
    assert all(np.isfinite(g["standard_error"]) for g in gains)  # no "+nan +- inf dB"
    qdq = out["qdq_model"]
    assert set(qdq["output_sqnr_db"]) == {"y"} and np.isfinite(qdq["output_sqnr_db"]["y"])
    assert set(qdq["output_agreement_percent"]) == {"ids"}
    assert 50 <= qdq["output_agreement_percent"]["ids"] <= 100


def test_a_model_of_class_ids_only_is_chosen_by_agreement_and_says_so(command, tmp_path):
    path, data = _classifier(tmp_path, logits=False)
    out = command(
        path, "--data", data, "--qdq-model", tmp_path / "q.onnx", "--format", "json"
    ).json()
    choice = out["choice"]
    assert "no float output" in choice["note"]
    assert "emulated_output_sqnr_db" not in choice
    assert all(0 <= v <= 100 for v in choice["emulated_output_agreement_percent"].values())
    assert out["qdq_model"]["output_sqnr_db"] == {}
    for fmt, key in (("float8_e4m3fn", "activations"), ("mxfp4", "weights")):
        out = command(
            path, "--data", data, "--number-format", fmt, "--method", "all", "--format", "json"
        ).json()
        scored = out[key]
        assert scored["output_sqnr_db"] == {m: {} for m in scored["output_sqnr_db"]}
        agree = [v["ids"] for v in scored["output_agreement_percent"].values()]
        assert len(agree) >= 2 and all(0 <= a <= 100 for a in agree)


def test_the_report_of_a_model_of_class_ids_is_in_agreement(tmp_path):
    path, _ = _classifier(tmp_path, logits=False)
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(8, 3, 8, 8)).astype("f4") for _ in range(3)]
    result = calibrate(str(path), batches, activations=["minmax", "percentile"])
    page = model_report(str(path), result, batches, batches, peers=False)
    assert page["output_unit"] == "%"
    assert page["comparison"] and all(0 <= r["output_sqnr_db"] <= 100 for r in page["comparison"])
    errors = compare_outputs(str(path), str(path), batches)
    assert errors.agreement_percent() == {"ids": 100.0} and errors.unit == "%"
    _, choice = choose_encodings(str(path), result, batches)
    assert choice.unit == "%" and choice.measure == "output_agreement_percent"


def test_the_agreement_page_in_a_browser_says_percent_not_db(browser, tmp_path):
    from selenium.webdriver.common.by import By

    path, _ = _classifier(tmp_path, logits=False)
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(8, 3, 8, 8)).astype("f4") for _ in range(3)]
    result = calibrate(str(path), batches, activations=["minmax", "percentile"])
    page = model_report(str(path), result, batches, batches, peers=False)
    _open(browser, write_report(tmp_path / "r.html", page))
    title = browser.find_element(By.ID, "comparison-title").text
    assert title == "The model's output agreement by method"
    heads = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#comparison th")]
    assert heads[1] == "output agreement %"
    sens = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#sensitivity th")]
    assert "weights only %" in sens and not any("dB" in h for h in sens)
    assert (
        "percentage of the model's outputs" in browser.find_element(By.ID, "sensitivity-text").text
    )
    assert _errors(browser) == []


def test_float_errors_are_summed_in_blocks_without_whole_float64_copies(monkeypatch):
    """A batch's outputs are converted to float64 a block at a time (BLOCK elements): the
    per-sample sums are those of the whole arrays, whatever the block."""
    from encanalyze import _output_errors

    rng = np.random.default_rng(0)
    y = rng.normal(size=(3, 5, 7)).astype("f4")
    q = (y + rng.normal(scale=0.01, size=y.shape)).astype("f4")
    whole = OutputErrors.measure(["y"], [[y]], [[q]])
    y64, q64 = y.astype(np.float64).reshape(3, -1), q.astype(np.float64).reshape(3, -1)
    np.testing.assert_allclose(whole.signal[0], (y64**2).sum(axis=1), rtol=1e-13)
    np.testing.assert_allclose(whole.noise[0], ((y64 - q64) ** 2).sum(axis=1), rtol=1e-13)
    for block in (1, 4, 35, 36):
        monkeypatch.setattr(_output_errors, "BLOCK", block)
        got = OutputErrors.measure(["y"], [[y]], [[q]])
        np.testing.assert_allclose(got.signal, whole.signal, rtol=1e-13)
        np.testing.assert_allclose(got.noise, whole.noise, rtol=1e-13)
