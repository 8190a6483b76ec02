"""float16 models in the integer job: QDQ in float32 between Casts, as the FP8 and block jobs."""

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, numpy_helper  # noqa: E402

from encanalyze import cli  # noqa: E402
from encanalyze._output_errors import OutputErrors  # noqa: E402
from encanalyze.onnx import calibrate, compare_outputs, write_qdq_model  # noqa: E402
from encanalyze.onnx._emulate import Emulator  # noqa: E402
from encanalyze.onnx._qdq import model_outputs  # noqa: E402
from tests import onnx_models as om  # noqa: E402


def half(model):
    """``model`` in float16: its float initializers, inputs and outputs."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype("f2"), t.name))
    for v in (*out.graph.input, *out.graph.output):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = TensorProto.FLOAT16
    onnx.checker.check_model(out)
    return out


def _batches(seed, n=3):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(8, 3, 8, 8)).astype("f2") for _ in range(n)]


def test_the_command_quantizes_a_float16_model_with_its_defaults(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save(half(om.classifier(True)), str(path))
    np.savez(tmp_path / "x.npz", x=np.concatenate(_batches(0, 8)))
    args = ["calibrate", str(path), "--data", str(tmp_path / "x.npz"), "--format", "json"]
    assert cli.main([*args, "--qdq-model", str(tmp_path / "q.onnx")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["qdq_model"]["output_sqnr_db"]["y"] > 25  # about 31 dB here
    emulated = out["choice"]["emulated_output_sqnr_db"]
    chosen = "+".join(m for m in (out["choice"]["activations"], out["choice"]["weights"]) if m)
    # the emulation quantizes in float32 between Casts as the QDQ model does: the same score
    assert emulated[chosen] == pytest.approx(out["qdq_model"]["output_sqnr_db"]["y"], abs=0.3)
    run = ort.InferenceSession(str(tmp_path / "q.onnx"))
    assert run.get_outputs()[0].type == "tensor(float16)"  # the model's own interface


@pytest.mark.parametrize("bits", [8, 16, 4])
def test_a_float16_qdq_model_holds_the_exact_fp32_scales(tmp_path, bits):
    model = half(om.cnn())
    calib = _batches(1)
    result = calibrate(model, calib, activations="minmax", bits=bits, weight_symmetric=True)
    path = write_qdq_model(model, result, tmp_path / "q.onnx")
    qdq = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    want = result.onnx_qdq()["tensors"]
    for name in ("x", "c1", "f", "y", "w1", "w2"):
        scale = inits[f"{name}_int_scale"]
        assert scale.dtype == np.float32
        np.testing.assert_array_equal(scale.reshape(-1), np.float32(want[name]["scale"]))
        zero = inits[f"{name}_int_zero_point"].astype(np.int64).reshape(-1)
        np.testing.assert_array_equal(zero, want[name]["zero_point"])
    ops = [n.op_type for n in qdq.graph.node]
    assert ops.count("QuantizeLinear") == 4 and ops.count("DequantizeLinear") == 6
    assert ops.count("Cast") == 4 * 2 + 2  # around each activation's pair, after each weight's
    assert qdq.graph.output[0].name == "y"  # the output is the dequantized value
    errors = compare_outputs(model, str(path), calib)  # in range: no clipping
    assert errors.score() > {4: 10, 8: 25, 16: 50}[bits]
    with Emulator(model, result) as emulator:
        feed = emulator.feed(result.encodings)
        assert feed["x::scale"].dtype == np.float32  # fake-quantized in float32 too
        emulated = OutputErrors.measure(
            ["y"], model_outputs(model, calib, ["y"], None), emulator.outputs(feed, calib)
        )
    assert emulated.score() == pytest.approx(errors.score(), abs=0.3)
