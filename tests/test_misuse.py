"""Misuse gets a ValueError or TypeError naming the problem (issue 32's message rows)."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from encanalyze import cli, formats  # noqa: E402
from encanalyze.onnx import (  # noqa: E402
    block_qdq_model,
    calibrate,
    calibrate_blocks,
    calibrate_float8,
    float8_qdq_model,
    write_qdq_model,
)
from tests.onnx_models import graph_model, matmul  # noqa: E402
from tests.test_outputs import _files  # noqa: E402


def test_an_unknown_block_method_is_named(tmp_path):
    path, _ = _files(tmp_path, weight=np.ones((32, 4), np.float32))
    result = calibrate_blocks(str(path), "mx", formats.E2M1)
    with pytest.raises(ValueError, match="unknown block method 'bogus'"):
        block_qdq_model(str(path), result, "bogus")


def test_a_result_of_another_model_quantizes_nothing_and_says_so(tmp_path):
    path, _ = _files(tmp_path, weight=np.ones((32, 4), np.float32))
    other = tmp_path / "other.onnx"
    model = matmul(name="v", weight=np.ones((32, 4), np.float32))
    for value in (*model.graph.input, *model.graph.output):
        value.name = value.name.upper()  # X, Y: no tensor of the calibrated model
    model.graph.node[0].input[0], model.graph.node[0].output[0] = "X", "Y"
    onnx.save(model, str(other))
    batches = [{"x": np.ones((2, 32), np.float32)}]
    with pytest.raises(ValueError, match="calibrated on another model"):
        write_qdq_model(str(other), calibrate(str(path), batches), tmp_path / "q.onnx")
    result = calibrate_float8(str(path), batches, formats.E4M3FN)
    with pytest.raises(ValueError, match="calibrated on another model"):
        float8_qdq_model(str(other), result)
    with pytest.raises(ValueError, match="calibrated on another model"):
        block_qdq_model(str(other), calibrate_blocks(str(path), "mx", formats.E2M1))
    assert not (tmp_path / "q.onnx").exists()


def test_to_mx_tensor_refuses_mxint8_and_wrapping_exponents():
    pytest.importorskip("torchao")
    from encanalyze.torch import to_mx_tensor

    x = np.ones((1, 32), np.float32)
    elements, exps = formats.mx_quantize(x, formats.INT8)
    with pytest.raises(ValueError, match="MXTensor holds"):
        to_mx_tensor(elements, exps, formats.INT8)
    elements, exps = formats.mx_quantize(x, formats.E2M1)
    with pytest.raises(ValueError, match="exponents must be integers"):
        to_mx_tensor(elements, np.full_like(exps, 300), formats.E2M1)


def test_block_axis_with_data_is_refused_in_every_model_job(tmp_path, capsys):
    path, data = _files(tmp_path)
    for number_format in ("int", "float8_e4m3fn", "mxfp4"):
        status = cli.main(
            ["calibrate", str(path), "--data", str(data), "--block-axis", "0",
             "--number-format", number_format]
        )  # fmt: skip
        err = capsys.readouterr().err
        assert status == 2 and "--block-axis" in err, err


def test_a_failed_model_job_is_one_line_without_a_type_prefix(command, tmp_path):
    path, data = _files(tmp_path)
    status, _, err = command(path, "--data", data, "--include", "nothing*")
    assert status == 1 and err.strip().splitlines()[-1] == (
        "encanalyze: error: no tensor of the model could be calibrated"
    ), err


def test_an_empty_batch_list_is_an_error_not_a_perfect_score(tmp_path):
    from encanalyze.onnx import choose_encodings, output_sqnr

    path, _ = _files(tmp_path)
    result = calibrate(
        str(path), [{"x": np.ones((2, 4), np.float32)}], activations=["minmax", "percentile"]
    )
    with pytest.raises(ValueError, match="no batch"):
        output_sqnr(str(path), str(path), [])
    with pytest.raises(ValueError, match="no batch"):
        choose_encodings(str(path), result, [])


def test_an_activation_never_finite_stays_in_float_in_the_fp8_job_as_in_the_integer_job():
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Mul", ["x", "zero"], ["z"]),
        helper.make_node("Sub", ["z", "one"], ["neg"]),
        helper.make_node("Log", ["neg"], ["nan"]),  # log(-1): NaN on every batch
        helper.make_node("MatMul", ["nan", "w"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(np.ones((4, 3), "f4"), "w"),
        numpy_helper.from_array(np.float32(0), "zero"),
        numpy_helper.from_array(np.float32(1), "one"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    model = graph_model(nodes, [x], [y], inits)
    batches = [np.ones((2, 4), "f4")]
    want = calibrate(model, batches).unquantized
    assert set(want) == {"nan", "y"}
    result = calibrate_float8(model, batches, formats.E4M3FN)
    assert result.unquantized == want and set(result.encodings) == {"w"}
    qdq = float8_qdq_model(model, result)
    assert [n.op_type for n in qdq.graph.node].count("QuantizeLinear") == 0
