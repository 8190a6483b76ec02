"""MX and NVFP4 weights of ONNX models: blocks along the reduction axis, weight-only block QDQ
models that ONNX Runtime runs, and the command's model job in the block formats."""

import json

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from encanalyze import formats  # noqa: E402
from encanalyze.cli import main  # noqa: E402
from encanalyze.onnx._blocks import (  # noqa: E402
    block_qdq_model,
    calibrate_blocks,
    reduction_axis,
)
from encanalyze.onnx._calibrate import session  # noqa: E402

RNG = np.random.default_rng(11)
W0 = (RNG.normal(size=(32, 3, 3, 3)) * 0.3).astype("f4")  # Conv, 27 inputs: a partial block
W1 = (RNG.standard_t(4, (64, 32, 3, 3)) * 0.05).astype("f4")  # Conv (O, I, kh, kw)
W2 = (RNG.standard_t(4, (64, 64 * 4 * 4)) * 0.02).astype("f4")  # Gemm transB: (N, K)
W3 = (RNG.standard_t(4, (64, 32)) * 0.1).astype("f4")  # MatMul (K, N)
SCHEMES = [
    ("mx", formats.E2M1),
    ("mx", formats.E4M3FN),
    ("mx", formats.E5M2),
    ("mx", formats.E3M2),
    ("mx", formats.E2M3),
    ("mx", formats.INT8),
    ("nvfp4", formats.E2M1),
    ("int_groups", formats.INT4),
]


def _model(opset=13):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 32])
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Flatten", ["r1"], ["f"]),
        helper.make_node("Gemm", ["f", "w2"], ["g"], transB=1),
        helper.make_node("MatMul", ["g", "w3"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(w, n) for n, w in zip(("w0", "w1", "w2", "w3"), (W0, W1, W2, W3))
    ]
    graph = helper.make_graph(nodes, "blocks", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _batches(n, seed=5):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(8, 3, 8, 8)).astype("f4") for _ in range(n)]


def test_reduction_axis_of_each_operator():
    assert reduction_axis(0, 4) == 1  # Conv (O, I, kh, kw)
    assert reduction_axis(1, 4) == 0  # ConvTranspose (I, O, kh, kw)
    assert reduction_axis(0, 2) == 1  # Gemm transB (N, K)
    assert reduction_axis(1, 2) == 0  # Gemm / MatMul (K, N)
    assert reduction_axis(2, 3) == 1  # batched MatMul (b, K, N)


@pytest.mark.parametrize(("scheme", "fmt"), SCHEMES, ids=lambda v: getattr(v, "name", v))
def test_blocks_are_the_formats_blocks_along_the_reduction_axis(scheme, fmt):
    """Conv weights as (O, I * kh * kw) matrices, the others on their own shape; an axis that
    does not split into whole blocks ends with a shorter one (the block zero-padded)."""
    result = calibrate_blocks(_model(), scheme, fmt)
    assert set(result.weights) == {"w0", "w1", "w2", "w3"} and not result.unquantized
    cases = (("w0", W0.reshape(32, 27), 1), ("w1", W1.reshape(64, 288), 1), ("w2", W2, 1),
             ("w3", W3, 0))  # fmt: skip
    for name, w, axis in cases:
        got = result.weights[name]
        assert got.axis == axis and got.view == w.shape
        k = w.shape[axis]
        moved = np.moveaxis(w, axis, -1)
        pad = -k % result.block_size
        padded = np.concatenate([moved, np.zeros((*moved.shape[:-1], pad), "f4")], axis=-1)
        for method, mode in (("minmax", "floor"), ("mse", "mse")):
            if scheme == "mx":
                q, e = formats.mx_quantize(padded, fmt, mode=mode)
                d = formats.mx_dequantize(q, e)
            elif scheme == "int_groups":
                q, s = formats.int_block_quantize(padded, mode="amax" if mode == "floor" else mode)
                d = formats.int_block_dequantize(q, s)
            else:
                ts = formats.nvfp4_tensor_scale(padded)
                q, b = formats.nvfp4_quantize(padded, ts, mode="amax" if mode == "floor" else mode)
                d = formats.nvfp4_dequantize(q, b, ts)
            q, d = q[..., :k], d[..., :k]
            np.testing.assert_array_equal(got.elements[method], np.moveaxis(q, -1, axis))
            assert got.scales[method].shape[axis] == -(-k // result.block_size)
            scale = np.repeat(got.scales[method], result.block_size, axis=axis)
            scale = np.take(scale, np.arange(k), axis=axis)  # each value's block scale
            np.testing.assert_array_equal(got.elements[method] * scale, np.moveaxis(d, -1, axis))
            r, dq = moved.astype(np.float64), d.astype(np.float64)
            want = 10 * np.log10(np.sum(r * r) / np.sum((r - dq) ** 2))
            assert got.sqnr_db[method] == pytest.approx(want, abs=1e-9)
        assert got.sqnr_db["mse"] >= got.sqnr_db["minmax"]  # least error per block


@pytest.mark.parametrize(("scheme", "fmt"), SCHEMES, ids=lambda v: getattr(v, "name", v))
def test_onnx_runtime_dequantizes_the_same_weights(scheme, fmt):
    """The block QDQ model (converted from opset 13 to 21) holds every weight exactly: ONNX
    Runtime's and ONNX's reference evaluator's dequantized weights equal ours bit for bit, and
    the model runs close to the float one."""
    from onnx.reference import ReferenceEvaluator

    model = _model()
    result = calibrate_blocks(model, scheme, fmt)
    proto = block_qdq_model(model, result, "mse")
    assert proto.opset_import[0].version >= 21
    names = [f"{n}_block_dq" for n in result.weights]
    proto.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    x = _batches(1)[0]
    run = session(proto, ["CPUExecutionProvider"])
    got = dict(zip(["y", *names], run.run(["y", *names], {"x": x})))
    ref = dict(zip(["y", *names], ReferenceEvaluator(proto).run(["y", *names], {"x": x})))
    originals = {"w0": W0, "w1": W1, "w2": W2, "w3": W3}
    for name, w in result.weights.items():
        k = w.view[w.axis]
        scale = np.repeat(w.scales["mse"], result.block_size, axis=w.axis)
        want = w.elements["mse"] * np.take(scale, np.arange(k), axis=w.axis)
        want = want.reshape(originals[name].shape)
        np.testing.assert_array_equal(got[f"{name}_block_dq"], want)
        np.testing.assert_array_equal(ref[f"{name}_block_dq"], want)
    init = {t.name: t for t in proto.graph.initializer}
    storage = {
        "float8_e5m2": TensorProto.FLOAT8E5M2,
        "int8": TensorProto.INT8,
        "int4": TensorProto.INT4,
    }
    assert init["w1_blocks"].data_type == storage.get(fmt.name, TensorProto.FLOAT8E4M3FN)
    assert list(init["w1_blocks"].dims) == [64, 288]
    assert not {"w0", "w1", "w2", "w3"} & set(init)  # the float weights replaced
    float_y = session(model, ["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sqnr = 10 * np.log10(np.sum(float_y**2) / np.sum((float_y - got["y"]) ** 2))
    assert sqnr > (10 if fmt in (formats.E2M1, formats.E2M3, formats.INT4) else 15)


def test_nan_weights_stay_in_float():
    model = _model()
    bad = W3.copy()
    bad[2, 5] = np.nan
    model.graph.initializer[3].CopyFrom(numpy_helper.from_array(bad, "w3"))
    result = calibrate_blocks(model, "mx", formats.E2M1)
    assert "not finite" in result.unquantized["w3"] and "w3" not in result.weights


def test_bad_arguments():
    with pytest.raises(ValueError, match="scheme"):
        calibrate_blocks(_model(), "blocks", formats.E2M1)
    with pytest.raises(ValueError, match="NVFP4 elements"):
        calibrate_blocks(_model(), "nvfp4", formats.E4M3FN)
    with pytest.raises(ValueError, match="methods"):
        calibrate_blocks(_model(), "mx", formats.E2M1, methods=("sqnr",))


def _job(tmp_path, capsys, number_format, *extra):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    np.savez(tmp_path / "d.npz", x=np.concatenate(_batches(4)))
    args = ["calibrate", path, "--data", tmp_path / "d.npz", "--number-format", number_format,
            "--format", "json", "--batch-size", "8", *extra]  # fmt: skip
    assert main(list(map(str, args))) == 0
    return path, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("number_format", ["mxfp4", "nvfp4", "mxfp8_e4m3", "int4_g128"])
def test_model_job_in_blocks(tmp_path, capsys, number_format):
    """The weights' method is the one whose block QDQ model's output is closest to the float
    model's on the held-out batches; the encodings file and the QDQ model hold its blocks."""
    from encanalyze.onnx._qdq import output_sqnr

    out_file, qdq = tmp_path / "enc.json", tmp_path / "q.onnx"
    path, out = _job(tmp_path, capsys, number_format, "--output", out_file, "--qdq-model", qdq)
    scheme, fmt = {"mxfp4": ("mx", formats.E2M1), "nvfp4": ("nvfp4", formats.E2M1),
                   "mxfp8_e4m3": ("mx", formats.E4M3FN),
                   "int4_g128": ("int_groups", formats.INT4)}[number_format]  # fmt: skip
    scores = out["weights"]["output_sqnr_db"]
    mean = {m: np.mean(list(v.values())) for m, v in scores.items()}
    method = out["weights"]["method"]
    assert set(mean) == {"minmax", "mse"} and mean[method] == max(mean.values())
    assert {t["name"] for t in out["tensors"]} == {"w0", "w1", "w2", "w3"}
    assert out["unquantized"] == []
    # the held-out batches are the last one of four (--holdout 0.25): the score is re-measured
    model = onnx.load(str(path))
    held = np.concatenate(_batches(4))[24:]
    assert np.mean(list(output_sqnr(model, onnx.load(str(qdq)), [held]).values())) == (
        pytest.approx(mean[method], abs=1e-9)
    )
    saved = json.loads(out_file.read_text())
    assert saved["number_format"] == number_format
    result = calibrate_blocks(model, scheme, fmt)
    init = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(qdq)).graph.initializer}
    for name, w in result.weights.items():
        assert saved["tensors"][name]["view"] == list(w.view)
        enc = formats.from_json(saved["tensors"][name])
        weight = numpy_helper.to_array(model.graph.initializer[int(name[1])]).reshape(w.view)
        moved = np.moveaxis(weight, w.axis, -1)
        pad = -moved.shape[-1] % result.block_size  # w0: one partial block, zero-padded
        moved = np.concatenate([moved, np.zeros((*moved.shape[:-1], pad), "f4")], axis=-1)
        if scheme == "mx":
            q, _ = formats.mx_quantize(moved, enc["format"], exponents=enc["scales"])
        elif scheme == "int_groups":
            q, _ = formats.int_block_quantize(moved, enc["format"], scales=enc["scales"])
        else:
            q, _ = formats.nvfp4_quantize(moved, enc["tensor_scale"], enc["scales"])
        q = q[..., : w.view[w.axis]]
        np.testing.assert_array_equal(np.moveaxis(q, -1, w.axis), w.elements[method])
        np.testing.assert_array_equal(init[f"{name}_blocks"].astype(np.float32), w.elements[method])


def test_model_job_in_blocks_one_method_and_report(tmp_path, capsys):
    from tests.test_report import _data

    report = tmp_path / "r.html"
    plots = tmp_path / "plots"
    _, out = _job(tmp_path, capsys, "mxfp4", "--method", "minmax", "--report", report,
                  "--plot", plots)  # fmt: skip
    assert sorted(p.name for p in plots.iterdir()) == ["w0.png", "w1.png", "w2.png", "w3.png"]
    assert out["weights"]["method"] == "minmax" and set(out["weights"]["output_sqnr_db"]) == {
        "minmax"
    }
    page = _data(report.read_text())
    by = {q["name"]: q for q in page["quantizers"]}
    assert set(by) == {"w0", "w1", "w2", "w3"}
    assert by["w3"]["layout"] == "blocks of 32 (axis 0)"
    assert by["w3"]["methods"]["minmax"]["sqnr_db"] == pytest.approx(
        next(t for t in out["tensors"] if t["name"] == "w3")["sqnr_db"]["minmax"]
    )
    score = np.mean(list(out["weights"]["output_sqnr_db"]["minmax"].values()))
    rows = {r["label"]: r["output_sqnr_db"] for r in page["comparison"]}
    assert rows["encanalyze mxfp4, weights minmax (QDQ model)"] == pytest.approx(score)
    # the switched model, all on (see test_switched_block_model)
    assert rows["encanalyze, as chosen (QDQ model)"] == pytest.approx(score, abs=0.05)
    assert by["w0"]["layout"] == "blocks of 32 (axis 1 of 32x27)"
    layers = {layer["layer"]: layer for layer in page["sensitivity"]}
    assert set(layers) == {"c0", "c1", "g", "y"}  # each quantized node, by its output
    for layer in layers.values():  # one layer's weights in blocks lose less than all of them
        assert layer["activations_sqnr_db"] is None and layer["weights_sqnr_db"] > score - 0.05
    assert all(isinstance(by[n]["gain_db"], float) for n in by)


def test_switched_block_model():
    """Every switch on: the block QDQ model; none: the float model; one: that weight alone."""
    import dataclasses

    from encanalyze.onnx._blocks import BlockSwitches

    model = _model()
    result = calibrate_blocks(model, "nvfp4", formats.E2M1).with_method("minmax")
    x = _batches(1)[0]
    run = {"CPUExecutionProvider"}

    def plain(proto):
        return session(proto, list(run)).run(None, {"x": x})[0]

    only_w3 = dataclasses.replace(result, weights={"w3": result.weights["w3"]})
    with BlockSwitches(model, result) as switched:
        assert switched.tensors == ["w0", "w1", "w2", "w3"]
        (every,) = switched.outputs(switched.feed(), [x])
        np.testing.assert_allclose(every[0], plain(block_qdq_model(model, result)), atol=1e-5)
        (none,) = switched.outputs(switched.feed(None, set()), [x])
        np.testing.assert_allclose(none[0], plain(model), rtol=1e-5, atol=1e-6)
        (one,) = switched.outputs(switched.feed(None, {"w3"}), [x])
        np.testing.assert_allclose(one[0], plain(block_qdq_model(model, only_w3)), atol=1e-5)
    with pytest.raises(ValueError, match="method"):
        result.with_method("sqnr")


def test_block_report_in_the_browser(tmp_path, capsys, browser):
    """The block job's page opens with no console error; a weight's chart shows its range."""
    from selenium.webdriver.common.by import By

    from tests.test_report import _errors, _names, _open

    report = tmp_path / "r.html"
    _job(tmp_path, capsys, "nvfp4", "--report", report)
    _open(browser, report)
    assert sorted(_names(browser)) == ["w0", "w1", "w2", "w3"]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#comparison tr")) == 1 + 3
    assert browser.find_element(By.ID, "sensitivity-section").is_displayed()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#sensitivity tr.sens")) == 4
    row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#quantizers tbody tr")
               if r.find_elements(By.TAG_NAME, "td")[0].text == "w2")  # fmt: skip
    row.click()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#histogram rect.bar")) > 10
    assert len(browser.find_elements(By.CSS_SELECTOR, "#histogram line.range")) == 2 * 2
    assert _errors(browser) == []


def test_model_job_with_no_weight_in_blocks_fails_cleanly(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), path)
    out = tmp_path / "enc.json"
    args = ["calibrate", path, "--data", "random", "--number-format", "mxfp4", "--exclude", "w*",
            "--output", out]  # fmt: skip
    assert main(list(map(str, args))) == 1
    assert "no weight of the model could be put in blocks" in capsys.readouterr().err
    assert not out.exists()


def test_initializers_listed_as_inputs_are_not_left_to_feed():
    """Older models list their initializers among the graph inputs too: a weight that the QDQ
    model replaces leaves the inputs with it (FP8 and block models)."""
    from encanalyze.onnx import calibrate_float8, float8_qdq_model

    model = _model()
    model.graph.input.extend(
        helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims))
        for t in model.graph.initializer
    )
    x = _batches(1)[0]
    for proto in (
        block_qdq_model(model, calibrate_blocks(model, "mx", formats.E2M1)),
        float8_qdq_model(model, calibrate_float8(model, [x])),
    ):
        assert [i.name for i in proto.graph.input] == ["x"]
        (y,) = session(proto, ["CPUExecutionProvider"]).run(None, {"x": x})
        assert y.shape == (8, 32)


def test_float16_models_quantize_in_float32_and_keep_their_type():
    """A float16 model's weights are dequantized in float32 and cast to float16, its
    activations cast to float32 around their FLOAT8 Q/DQ pair: the FP32 scales stay exact."""
    from encanalyze.onnx import calibrate_float8, float8_qdq_model

    w = (RNG.standard_normal((64, 32)) * 0.1).astype(np.float16)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [None, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [None, 32])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "half", [x], [y],
                              [numpy_helper.from_array(w, "w")])  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    feed = RNG.standard_normal((4, 64)).astype(np.float16)
    blocks = calibrate_blocks(model, "mx", formats.E2M1)
    fp8 = calibrate_float8(model, [feed])
    cases = (
        (block_qdq_model(model, blocks), {"w_block_dq_cast": blocks.weights["w"]}),
        (float8_qdq_model(model, fp8), {"w_fp8_dq_cast": None, "x_fp8_dq_cast": None}),
    )
    for proto, wanted in cases:
        proto.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in wanted)
        got = session(proto, ["CPUExecutionProvider"]).run(["y", *wanted], {"x": feed})
        assert all(a.dtype == np.float16 for a in got)
        named = dict(zip(wanted, got[1:]))
        if "w_block_dq_cast" in named:
            bw = blocks.weights["w"]
            want = bw.elements["mse"] * np.repeat(bw.scales["mse"], 32, axis=0)
            np.testing.assert_array_equal(named["w_block_dq_cast"], want.astype(np.float16))
        else:
            for name in ("w", "x"):
                e = fp8.encodings[name]
                source = w if name == "w" else feed
                scale = e.scale if e.axis is None else e.scale.reshape(1, -1)
                q = formats.quantize_scaled(source.astype(np.float32), formats.E4M3FN, scale=scale)
                np.testing.assert_array_equal(named[f"{name}_fp8_dq_cast"], q.astype(np.float16))
