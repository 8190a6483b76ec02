"""FP8 calibration of ONNX models and their FP8 QDQ models, run by ONNX Runtime."""

import json

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import encanalyze as ea  # noqa: E402
from encanalyze import formats  # noqa: E402
from encanalyze.cli import main  # noqa: E402
from encanalyze.onnx._calibrate import session  # noqa: E402
from encanalyze.onnx._float8 import (  # noqa: E402
    FLOAT8_SESSION,
    calibrate_float8,
    choose_float8_activations,
    float8_qdq_model,
)
from tests import onnx_models as om  # noqa: E402


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    return [rng.normal(size=(8, 3, 8, 8)).astype("f4") for _ in range(6)]


def _same_as_the_reference(qdq, feed):
    from onnx.reference import ReferenceEvaluator

    want = ReferenceEvaluator(qdq).run(None, feed)
    got = session(qdq, ["CPUExecutionProvider"], config=FLOAT8_SESSION).run(None, feed)
    for y, w in zip(got, want, strict=True):
        np.testing.assert_allclose(y, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", [formats.E4M3FN, formats.E5M2], ids=lambda f: f.name)
def test_scales_are_the_formats_methods_on_the_tensors(data, fmt):
    result = calibrate_float8(om.cnn(), data[:4], fmt)
    w1 = result.encodings["w1"]
    assert w1.kind == "param" and w1.axis == 0
    np.testing.assert_array_equal(
        w1.scales["minmax"], formats.amax_scale(om.W1.reshape(6, -1), fmt, axis=1)[:, 0]
    )
    stats = ea.PercentileEncodingAnalyzer((6, 1, 1, 1)).update_stats(om.W1)
    for method in formats.FLOAT_METHODS:
        want = formats.compute_scale(stats, fmt, method).reshape(-1)
        np.testing.assert_array_equal(w1.scales[method], want)
        q = formats.quantize_scaled(om.W1, fmt, scale=w1.scales[method].reshape(6, 1, 1, 1))
        err = np.sum((om.W1.astype(np.float64) - q) ** 2)
        assert w1.sqnr_db[method] == pytest.approx(10 * np.log10(np.sum(om.W1**2.0) / err))
    assert w1.method == max(w1.sqnr_db, key=w1.sqnr_db.get)
    # activations: one histogram per tensor over the calibration batches
    acts = [om.cnn_forward(x) for x in data[:4]]
    for name in ("x", "c1", "f", "y"):
        e = result.encodings[name]
        assert e.kind == "activation" and e.axis is None
        amax = max(float(np.max(np.abs(a[name]))) for a in acts)
        assert e.scales["minmax"][0] == pytest.approx(amax / fmt.max, rel=1e-6)
        assert e.scales["percentile"][0] <= e.scales["minmax"][0]


def test_qdq_model_holds_the_encodings_and_runs(data):
    model = om.cnn()  # opset 17: converted to 19
    result = calibrate_float8(model, data[:4])
    qdq = float8_qdq_model(model, result.with_activations("sqnr"))
    onnx.checker.check_model(qdq)
    assert next(o.version for o in qdq.opset_import if o.domain in ("", "ai.onnx")) >= 19
    inits = {t.name: t for t in qdq.graph.initializer}
    assert "w1" not in inits and "w2" not in inits  # stored as FLOAT8 only
    for name, shape in (("w1", (6, 1, 1, 1)), ("w2", (1, 5))):
        stored = inits[f"{name}_fp8"]
        assert stored.data_type == onnx.TensorProto.FLOAT8E4M3FN
        e = result.encodings[name]
        back = numpy_helper.to_array(stored).astype(np.float32) * e.scale.reshape(shape)
        w = om.W1 if name == "w1" else om.W2
        np.testing.assert_array_equal(
            back, formats.quantize_scaled(w, formats.E4M3FN, scale=e.scale.reshape(shape))
        )
    ops = [n.op_type for n in qdq.graph.node]
    assert ops.count("QuantizeLinear") == 4 and ops.count("DequantizeLinear") == 6
    # ONNX Runtime with FLOAT8_SESSION computes what the model says (no QDQ fusion; other
    # fusions reorder float sums), and
    # the model's input quantization is formats.quantize_scaled's
    import onnxruntime as ort

    x = data[4]
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    exact = ort.InferenceSession(qdq.SerializeToString(), plain, providers=["CPUExecutionProvider"])
    ours = session(qdq, ["CPUExecutionProvider"], config=FLOAT8_SESSION)
    y_ours, y_exact = ours.run(None, {"x": x})[0], exact.run(None, {"x": x})[0]
    np.testing.assert_allclose(y_ours, y_exact, rtol=1e-4, atol=1e-5)
    probe = onnx.helper.make_tensor_value_info("x_fp8_dq", onnx.TensorProto.FLOAT, None)
    qdq.graph.output.append(probe)
    got = session(qdq, ["CPUExecutionProvider"], config=FLOAT8_SESSION).run(["x_fp8_dq"], {"x": x})
    scale = result.encodings["x"].scales["sqnr"]
    np.testing.assert_array_equal(got[0], formats.quantize_scaled(x, formats.E4M3FN, scale=scale))


def test_activations_chosen_by_the_output(data):
    model = om.cnn()
    result = calibrate_float8(model, data[:4])
    method, scores, qdq = choose_float8_activations(model, result, data[4:])
    means = {m: np.mean(list(v.sqnr_db().values())) for m, v in scores.items()}
    assert set(scores) == set(formats.FLOAT_METHODS)
    assert method == max(means, key=means.get)
    assert means[method] > 20  # FP8 weights and activations: about 28 dB here


def test_model_job_in_fp8(tmp_path, data, capsys):
    path = tmp_path / "cnn.onnx"
    onnx.save(om.cnn(), path)
    np.savez(tmp_path / "data.npz", x=np.concatenate(data))
    args = [
        "calibrate",
        path,
        "--data",
        tmp_path / "data.npz",
        "--number-format",
        "float8_e5m2",
        "--qdq-model",
        tmp_path / "q.onnx",
        "--output",
        tmp_path / "e.json",
        "--output-format",
        "onnx-qdq",
        "--format",
        "json",
    ]
    assert main(list(map(str, args))) == 0
    report = json.loads(capsys.readouterr().out)
    acts = report["activations"]
    assert acts["measured_on"] == "held-out" and acts["method"] in formats.FLOAT_METHODS
    names = {r["name"]: r for r in report["tensors"]}
    assert set(names) == {"w1", "w2", "x", "c1", "f", "y"}
    assert names["w1"]["sqnr_db"] > 20 and names["x"]["sqnr_db"] is None
    saved = json.loads((tmp_path / "e.json").read_text())["tensors"]
    assert saved["w2"]["zero_point_dtype"] == "FLOAT8E5M2" and saved["w2"]["axis"] == 1
    assert saved["w2"]["scale"] == names["w2"]["scale"]
    qdq = onnx.load(tmp_path / "q.onnx")
    types = {t.name: t.data_type for t in qdq.graph.initializer}
    assert types["w1_fp8"] == onnx.TensorProto.FLOAT8E5M2
    _same_as_the_reference(qdq, {"x": data[4]})
    y = session(qdq, ["CPUExecutionProvider"], config=FLOAT8_SESSION).run(None, {"x": data[4]})[0]
    ref = om.cnn_forward(data[4])["y"]
    assert 10 * np.log10(np.sum(ref**2) / np.sum((ref - y) ** 2)) > 15


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--number-format", "float4_e2m1"], "ONNX QDQ models take"),
        (["--number-format", "mxfp4", "--activation-method", "mse"], "stay in floating point"),
        (["--number-format", "nvfp4", "--per-tensor-weights"], "in blocks"),
        (["--number-format", "mxfp4", "--block-axis", "0"], "its reduction axis"),
        (["--number-format", "float8_e4m3fn", "--activation-method", "entropy"], "no float8"),
        (["--number-format", "float8_e4m3fn", "--weight-grid", "asymmetric"], "symmetric"),
    ],
)
def test_model_job_refuses_what_fp8_cannot_hold(tmp_path, capsys, extra, message):
    path = tmp_path / "cnn.onnx"
    onnx.save(om.cnn(), path)
    assert main(["calibrate", str(path), "--data", "random", *extra]) == 2
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def fp8_report(tmp_path_factory, data):
    """The FP8 model job's report of the CNN, and what the job printed."""
    import contextlib
    import io

    folder = tmp_path_factory.mktemp("fp8_report")
    path = folder / "cnn.onnx"
    onnx.save(om.cnn(), path)
    np.savez(folder / "data.npz", x=np.concatenate(data))
    report = folder / "r.html"
    args = ["calibrate", path, "--data", folder / "data.npz", "--number-format",
            "float8_e4m3fn", "--report", report, "--plot", folder / "plots"]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(list(map(str, args))) == 0
    return report, printed.getvalue()


def test_fp8_model_job_report(fp8_report):
    from tests.test_report import _data

    report, printed = fp8_report
    plots = report.parent / "plots"
    assert sorted(p.name for p in plots.iterdir()) == ["w1.png", "w2.png"]  # every weight
    page = _data(report.read_text())
    by = {q["name"]: q for q in page["quantizers"]}
    assert set(by["w1"]["methods"]) == set(formats.FLOAT_METHODS)
    assert by["w1"]["methods"]["minmax"]["max"] == pytest.approx(
        float(np.abs(om.W1).max()), rel=1e-6
    )
    rows = {r["label"]: r["output_sqnr_db"] for r in page["comparison"]}
    assert len(rows) == len(formats.FLOAT_METHODS) + 2  # each method, as chosen, ONNX Runtime's
    method = by["x"]["best"]
    by_method = {m: rows[f"encanalyze float8_e4m3fn, activations {m} (QDQ model)"] for m in
                 formats.FLOAT_METHODS}  # fmt: skip
    assert by_method[method] == max(by_method.values())
    assert rows["encanalyze, as chosen (QDQ model)"] == pytest.approx(by_method[method])
    assert np.isfinite(rows["ONNX Runtime FP8 E4M3FN, Distribution (quantize_static)"])
    layers = {layer["layer"]: layer for layer in page["sensitivity"]}
    assert set(layers) == {"c1", "y"}
    for layer in layers.values():  # one layer quantized loses less than the whole model
        assert min(layer["weights_sqnr_db"], layer["activations_sqnr_db"]) > by_method[method]
    assert all(by[n]["gain_db"] is not None for n in ("w1", "w2", "x", "c1", "f", "y"))
    assert "Collecting tensor data" not in printed  # ONNX Runtime's prints


def test_switched_model_quantizes_what_is_switched_on(data):
    from encanalyze.onnx._float8 import Float8Switches

    model = om.cnn()
    result = calibrate_float8(model, data[:4]).with_activations("mse")
    qdq = session(float8_qdq_model(model, result), ["CPUExecutionProvider"], config=FLOAT8_SESSION)
    x = data[4]
    with Float8Switches(model, result) as run:
        assert set(run.tensors) == {"w1", "w2", "x", "c1", "f", "y"}
        (every,) = run.outputs(run.feed(), [x])
        np.testing.assert_array_equal(every[0], qdq.run(None, {"x": x})[0])
        (none,) = run.outputs(run.feed(None, set()), [x])
        np.testing.assert_allclose(none[0], om.cnn_forward(x)["y"], rtol=1e-5, atol=1e-6)
        # only the input quantized: the float model of the quantized input
        (only_x,) = run.outputs(run.feed(None, {"x"}), [x])
        xq = formats.quantize_scaled(x, formats.E4M3FN, scale=result.encodings["x"].scale)
        np.testing.assert_allclose(only_x[0], om.cnn_forward(xq)["y"], rtol=1e-5, atol=1e-6)


def test_fp8_sensitivity_runs_the_qdq_model(data):
    from encanalyze.onnx._float8 import Float8Switches
    from encanalyze.onnx._report import float8_activation_sqnr
    from encanalyze.onnx._sensitivity import sensitivity

    model = om.cnn()
    result = calibrate_float8(model, data[:4])
    method, scores, _ = choose_float8_activations(model, result, data[4:])
    result = result.with_activations(method)
    sens = sensitivity(model, result, data[4:], emulator=Float8Switches)
    # the same model but for the switches: ONNX Runtime prepacks constant weights only, so a
    # convolution may sum in another order and an activation on a rounding tie flip one step
    assert sens.output_sqnr_db == pytest.approx(scores[method].score(), abs=0.05)
    layers = {layer.layer or layer.op: layer for layer in sens.layers}
    assert {layer.op for layer in sens.layers} == {"Conv", "MatMul"}
    for layer in layers.values():  # one layer quantized loses less than all of them
        assert layer.worst() > sens.output_sqnr_db
    assert set(sens.gain_db) == {"w1", "w2", "x", "c1", "f", "y"}
    own = float8_activation_sqnr(model, result, data[4:])
    x = np.concatenate(data[4:]).astype(np.float64)
    for m, s in result.encodings["x"].scales.items():
        q = formats.quantize_scaled(x.astype(np.float32), formats.E4M3FN, scale=s)
        want = 10 * np.log10(np.sum(x**2) / np.sum((x - q) ** 2))
        assert own["x"][m] == pytest.approx(want, rel=1e-9)


def test_fp8_report_in_the_browser(fp8_report, browser):
    """The FP8 job's page shows its sensitivity ranking, with no console error."""
    from selenium.webdriver.common.by import By

    from tests.test_report import _errors, _open

    _open(browser, fp8_report[0])
    assert browser.find_element(By.ID, "sensitivity-section").is_displayed()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#sensitivity tr.sens")) == 2
    assert _errors(browser) == []
