"""encanalyze.torch.quantize: a runnable quantized model, BatchNorm folded, exported to ONNX QDQ."""

import inspect
import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from encanalyze._registry import AUTO_ACTIVATIONS  # noqa: E402
from encanalyze.torch import (  # noqa: E402
    QuantizedModel,
    TokenQuantizer,
    calibrate,
    fold_batchnorm,
    quantize,
)
from encanalyze.torch._fake_quant import fake_quant  # noqa: E402
from encanalyze.torch._quantize import CONFIG_KEYS  # noqa: E402


def _model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8 * 4 * 4, 10),
    )
    with torch.no_grad():  # statistics as training leaves them
        model[1].running_mean.normal_(0, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(0.5, 1.5)
    return model.eval()


def _batches(n=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 3, 8, 8, generator=g) for _ in range(n)]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


def test_quantize_runs_the_encodings_and_leaves_the_model_as_it_was():
    model = _model()
    model.train()  # restored after
    before, hooks = _state(model), len(model[0]._forward_hooks)
    quantized = quantize(model, _batches())
    assert isinstance(quantized, QuantizedModel)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert len(model[0]._forward_hooks) == hooks
    # inputs and weights of each layer, the BatchNorm folded into the first convolution
    assert sorted(quantized.encodings) == ["0.weight", "0:input", "3.weight", "3:input",
                                           "6.weight", "6:input"]  # fmt: skip
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in quantized.float_model.modules())
    # the quantized model is the float model with its encodings' quantize-dequantize
    x = _batches(1, 8, seed=5)[0]
    float_model, e = quantized.float_model, quantized.encodings
    n = 255

    def qdq(t, enc):
        shape = [1] * t.ndim
        if enc.axis is not None:
            shape[enc.axis] = -1
        s = torch.as_tensor(enc.scale, dtype=torch.float32).reshape(shape)
        o = torch.as_tensor(enc.offset, dtype=torch.float32).reshape(shape)
        return fake_quant(t, s, o, n)

    layer = dict(float_model.named_modules())
    conv, linear = torch.nn.functional.conv2d, torch.nn.functional.linear
    with torch.no_grad():
        h = conv(qdq(x, e["0:input"]), qdq(layer["0"].weight, e["0.weight"]), layer["0"].bias)
        h = h.relu()
        h = conv(qdq(h, e["3:input"]), qdq(layer["3"].weight, e["3.weight"]), layer["3"].bias)
        h = qdq(h.relu().flatten(1), e["6:input"])
        want = linear(h, qdq(layer["6"].weight, e["6.weight"]), layer["6"].bias)
        got = quantized(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert not torch.equal(got, model.eval()(x))  # it does quantize


def test_batchnorm_folds_by_default_and_unfolded_is_warned_of():
    model, batches = _model(), _batches()
    folded = quantize(model, batches)
    with pytest.warns(UserWarning, match="BatchNorm '1' follows '0'"):
        unfolded = quantize(model, batches, fold_batchnorm=False)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in unfolded.float_model.modules())
    w = folded.float_model.get_submodule("0").weight.detach()
    assert not torch.equal(w, model[0].weight)  # the folded weight is what was calibrated
    method = folded.encodings["0:input"].method  # the one auto chose
    alone = calibrate(fold_batchnorm(model), batches, activations=method, outputs=False)
    for name, e in alone.encodings.items():
        np.testing.assert_array_equal(np.asarray(folded.encodings[name].scale), e.scale)
    x = _batches(1, 64, seed=9)[0]
    with torch.no_grad():
        y = model(x)
        errors = [float(((y - q(x)) ** 2).sum()) for q in (folded, unfolded)]
    assert errors[0] < errors[1]


def test_auto_keeps_the_method_whose_outputs_are_nearest_the_float_models():
    model, batches = _model(), _batches()
    quantized = quantize(model, batches)
    assert list(quantized.scores) == list(AUTO_ACTIVATIONS)
    best = max(quantized.scores, key=quantized.scores.get)
    assert {e.method for e in quantized.encodings.values() if e.kind == "activation"} == {best}
    with torch.no_grad():  # the score: the output SQNR on the calibration batches
        y = torch.cat([model(b) for b in batches]).double()
        q = torch.cat([quantized(b) for b in batches]).double()
    sqnr = 10 * torch.log10((y**2).sum() / ((y - q) ** 2).sum())
    assert float(sqnr) == pytest.approx(quantized.scores[best], abs=1e-3)
    one = quantize(model, batches, {"activations": best})
    assert one.scores == {}
    for name, e in one.encodings.items():
        np.testing.assert_array_equal(np.asarray(quantized.encodings[name].scale), e.scale)
    generator = quantize(model, iter(batches))  # one pass only: kept to judge
    assert generator.scores == quantized.scores


def test_outputs_are_quantized_on_request_and_every_quantizer_once():
    quantized = quantize(_model(), _batches(), {"outputs": True})
    assert {"0:output", "3:output", "6:output"} <= set(quantized.encodings)
    calls = []
    model = quantized.model
    for m in (model.get_submodule(k) for k in "036"):
        m.output_quantizer.register_forward_hook(lambda *a: calls.append("out"))
        m.input_quantizer.register_forward_hook(lambda *a: calls.append("in"))
    quantized(_batches(1)[0])
    assert calls == ["in", "out", "in", "out", "in", "out"]


def test_forward_loops_batch_to_inputs_and_bad_configs():
    model, batches = _model(), _batches()
    pairs = [(x, torch.zeros(len(x))) for x in batches]
    by_pairs = quantize(model, pairs, batch_to_inputs=lambda b: b[0])

    def forward_loop(m):
        for x in batches:
            m(x)

    by_loop = quantize(model, forward_loop)
    for name, e in quantize(model, batches).encodings.items():
        for other in (by_pairs, by_loop):
            np.testing.assert_array_equal(np.asarray(other.encodings[name].scale), e.scale)
    with pytest.raises(ValueError, match="config has no option 'percentile'"):
        quantize(model, batches, {"percentile": 99.9})
    with pytest.raises(ValueError, match="percentile"):
        quantize(model, batches, {"weights": "percentile", "weight_options": {"percentile": 101}})
    own = {"number_format", "per_token_activations"}  # quantize's, not calibrate's
    assert set(CONFIG_KEYS) - own < set(inspect.signature(calibrate).parameters)


def test_export_onnx_runs_as_the_torch_model_does(tmp_path):
    model, batches = _model(), _batches()
    quantized = quantize(model, batches)
    path, names = tmp_path / "q.onnx", tmp_path / "q.json"
    assert quantized.export_onnx(path, batches[0], encodings=names) == path
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == 3 and ops.count("DequantizeLinear") == 6
    x = _batches(1, 32, seed=3)[0]  # another batch size: the batch axis is dynamic
    (got,) = _run_onnx(path, x)
    with torch.no_grad():
        want = quantized(x).numpy()
    # within one step of the last quantizer's grid, carried through the last layer
    step = float(np.asarray(quantized.encodings["6:input"].scale).max())
    bound = step * float(quantized.float_model.get_submodule("6").weight.abs().sum(1).max())
    assert np.abs(got - want).max() <= bound
    # the encodings, keyed by the tensors of the float export that goes with them
    plain = tmp_path / "float.onnx"
    quantized.export_onnx(plain, batches[0], qdq=False, encodings=tmp_path / "f.json")
    assert (tmp_path / "f.json").read_text() == names.read_text()
    float_proto = onnx.load(str(plain))
    assert not any(n.op_type == "QuantizeLinear" for n in float_proto.graph.node)
    tensors = {t.name for t in float_proto.graph.initializer}
    tensors |= {i.name for i in float_proto.graph.input}
    tensors |= {o for n in float_proto.graph.node for o in n.output}
    exported = json.loads(names.read_text())
    keys = [e["name"] for kind in ("activation_encodings", "param_encodings")
            for e in exported[kind]]  # fmt: skip
    assert len(keys) == 6 and all(k in tensors for k in keys)
    assert set(quantized.onnx_names) == set(quantized.encodings)
    assert quantized.export_encodings(tmp_path / "q.qdq.json", format="onnx_qdq").is_file()
    assert sorted(json.loads((tmp_path / "q.qdq.json").read_text())["tensors"]) == sorted(keys)


def test_export_failures_leave_the_old_files_and_no_leftovers(tmp_path):
    quantized = quantize(_model(), _batches())
    with pytest.raises(ValueError, match="export_onnx"):
        quantized.export_encodings(tmp_path / "e.json")
    with pytest.raises(ValueError, match="format must be one of"):
        quantized.export_onnx(tmp_path / "q.onnx", _batches(1)[0], format="qnn")
    path = tmp_path / "q.onnx"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):  # the exporter cannot run the model on these inputs
        quantized.export_onnx(path, torch.randn(2, 5, 8, 8), encodings=tmp_path / "e.json")
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx"]


def test_an_encoding_the_export_lost_is_named(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unfolded = quantize(_model(), _batches(), {"outputs": True}, fold_batchnorm=False)
    with pytest.warns(UserWarning, match="no tensor of the exported ONNX model holds it"):
        unfolded.export_onnx(tmp_path / "q.onnx", _batches(1)[0])  # the exporter folds it
    assert "0.weight" not in unfolded.onnx_names


def test_report_and_compiled_models(tmp_path):
    model, batches = _model(), _batches()
    quantized = quantize(torch.compile(model), batches)
    assert "0.weight" in quantized.encodings  # the compiled model's own names
    page = quantized.report(tmp_path / "r.html", _batches(1, seed=7))
    assert "0:input" in page.read_text()


def test_a_calibration_that_clips_most_of_a_tensor_warns_with_its_method():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8)).eval()
    batches = [torch.randn(256, 4) for _ in range(3)]
    with pytest.warns(UserWarning, match=r"0:input \(percentile: [78]\d\.\d%\)"):
        calibrate(model, batches, activation_options={"percentile": 60})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibrate(model, batches)  # 99.99 clips 0.01%
        zeros = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(4, 2)).eval()
        calibrate(zeros, [-b.abs() for b in batches])  # a constant tensor: nothing clipped


FORMATS = ["float8_e4m3fn", "float8_e5m2", "mxfp4", "mxfp8_e4m3", "mxint8", "nvfp4"]


def _wide_model():
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 40, 3), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(40 * 4 * 4, 10),
    ).eval()  # fmt: skip


@pytest.mark.parametrize("name", FORMATS)
def test_float_and_block_formats_run_and_export_as_the_onnx_job_computes(name, tmp_path):
    from encanalyze import formats
    from encanalyze.onnx import FLOAT8_SESSION, calibrate_blocks, calibrate_float8

    model, batches = _wide_model(), _batches()
    quantized = quantize(model, batches, {"number_format": name})
    fmt = formats.NUMBER_FORMATS[name]
    blocks = fmt.scheme != "scaled"
    assert sorted(quantized.encodings) == (
        ["0.weight", "3.weight", "6.weight"] if blocks
        else ["0.weight", "0:input", "3.weight", "3:input", "6.weight", "6:input"]
    )  # fmt: skip
    x = _batches(1, 32, seed=4)[0]
    with torch.no_grad():
        y, q = model(x), quantized(x)
    assert 10 * torch.log10((y**2).sum() / ((y - q) ** 2).sum()) > 10
    # the ONNX job's numbers on the float export, tensor by tensor
    plain = tmp_path / "float.onnx"
    quantized.export_onnx(plain, batches[0], qdq=False)
    names = quantized.onnx_names
    if blocks:
        job = calibrate_blocks(str(plain), fmt.scheme, fmt.element)
        for key, w in quantized.encodings.items():
            np.testing.assert_array_equal(job.weights[names[key]].scales["mse"], w.scales["mse"])
    else:
        numpy_batches = [b.numpy() for b in batches]
        job = calibrate_float8(str(plain), numpy_batches, fmt.element)
        for key, e in quantized.encodings.items():  # (activations: ONNX Runtime's kernels
            want = job.encodings[names[key]].scales[e.method]  # round a last bit apart)
            np.testing.assert_allclose(e.scale, want, rtol=0 if e.kind == "param" else 1e-6)
    # the QDQ model computes what the quantized model does
    path = tmp_path / "q.onnx"
    quantized.export_onnx(path, batches[0])
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, FLOAT8_SESSION["graph_optimization_level"]
    )
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    got = torch.from_numpy(got)  # the same model, up to a rounding tie's step here and there
    noise, error = ((got - q) ** 2).sum(), ((y - q) ** 2).sum()
    assert noise == 0 or 10 * torch.log10(error / noise) > 20
    assert (quantized.report(tmp_path / "r.html", [x])).is_file()
    with pytest.raises(ValueError, match="encodings files hold integer grids"):
        quantized.export_encodings(tmp_path / "e.json")


def test_format_options_are_checked_at_the_call(tmp_path):
    model, batches = _wide_model(), _batches()
    with pytest.raises(ValueError, match="unknown number_format 'fp8'"):
        quantize(model, batches, {"number_format": "fp8"})
    with pytest.raises(ValueError, match="'bits' sets an integer grid"):
        quantize(model, batches, {"number_format": "float8_e4m3fn", "bits": 8})
    with pytest.raises(ValueError, match="takes the activation methods"):
        quantize(model, batches, {"number_format": "float8_e4m3fn", "activations": "entropy"})
    with pytest.raises(ValueError, match="takes the methods"):
        quantize(model, batches, {"number_format": "mxfp4", "weights": "sqnr"})
    fp4 = quantize(model, batches, {"number_format": "float4_e2m1", "activations": "mse"})
    assert {e.method for e in fp4.encodings.values() if e.kind == "activation"} == {"mse"}
    with pytest.raises(ValueError, match="no QuantizeLinear to float4_e2m1"):
        fp4.export_onnx(tmp_path / "q.onnx", batches[0])
    assert not list(tmp_path.iterdir())


def test_large_host_batches_take_the_numpy_views_with_the_same_encodings(monkeypatch):
    """The issue's speed row: host batches past 2**16 values left the NumPy views (10-20x
    slower on torch's kernels); with the compiled kernels every batch takes them, and the
    encodings are torch's own either way."""
    from encanalyze import _backends

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU()).eval()
    batches = [torch.randn(16, 3, 32, 32) for _ in range(2)]  # 49,152 and 262,144 values
    if _backends._compiled.LIBRARY is not None:
        assert _backends.HOST_TWIN_UPDATE == float("inf")
    assert batches[0].numel() * 16 / 3 > 2**16
    found = {}
    for limit in (_backends.HOST_TWIN_UPDATE, 0):  # 0: every batch on torch's kernels
        monkeypatch.setattr(_backends, "HOST_TWIN_UPDATE", limit)
        found[limit] = calibrate(model, batches, activations="percentile")
    a, b = found.values()
    for name, e in a.encodings.items():
        np.testing.assert_array_equal(np.asarray(e.scale), np.asarray(b.encodings[name].scale))


class _Mlp(torch.nn.Module):
    """A transformer block's MLP: tokens (batch, sequence, hidden) through two linear layers."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.up, self.down = torch.nn.Linear(64, 256), torch.nn.Linear(256, 64)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)))


def _tokens(seed: int) -> torch.Tensor:
    """Tokens whose magnitudes differ from token to token (a static range fits none)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 32, 64, generator=g) * torch.rand(1, 32, 1, generator=g) * 4


def _sqnr(want, got) -> float:
    want, got = want.detach().double(), got.detach().double()
    return float(10 * torch.log10((want**2).sum() / ((want - got) ** 2).sum()))


def test_token_quantizer_puts_each_token_on_its_own_grid():
    """Issue 35: each row of the last axis gets its own min-max encoding (the analyzer's, one
    row at a time), or its own FP8 amax scale; NaN stays NaN, infinities saturate, an empty
    tensor passes."""
    import encanalyze as ea
    from encanalyze import formats

    x = _tokens(1)
    x[0, 3] = 0.0  # a token of zeros
    x[1, 4, :5] = float("nan")
    x[1, 5, 0] = float("inf")
    for symmetric in (True, False):
        got = TokenQuantizer(255, symmetric)(x).reshape(-1, 64).numpy()
        for row, out in zip(x.reshape(-1, 64).numpy(), got):
            finite = np.where(np.isfinite(row), row, 0.0).astype(np.float32)
            a = ea.MinMaxEncodingAnalyzer((1,))
            a.update_stats(finite)
            scale, offset = ea.to_scale_offset(*a.compute_encodings(255, symmetric), 255, symmetric)
            want = (np.clip(np.round(row / scale) - offset, 0, 255) + offset) * scale
            np.testing.assert_array_equal(out, want.astype(np.float32))
    fp8 = TokenQuantizer(fmt=formats.E4M3FN)(x).reshape(-1, 64)
    want = formats.quantize_scaled(x.reshape(-1, 64), formats.E4M3FN, axis=1)
    np.testing.assert_array_equal(fp8.numpy(), want.numpy())
    assert TokenQuantizer()(torch.zeros(0, 64)).shape == (0, 64)
    half = TokenQuantizer()(x.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16


def test_per_token_activations_quantize_linear_inputs_at_run_time(tmp_path):
    """Issue 35: ``per_token_activations`` gives every linear layer's input a per-token
    quantizer (no calibrated encoding): on tokens of different magnitudes the output is far
    nearer the float model's than with static per-tensor encodings, and as near as torchao's
    dynamic int8 (same scheme but its grid: ``amax / 127.5``); it has no QDQ export."""
    model, batches, held = _Mlp().eval(), [_tokens(s) for s in range(4)], _tokens(9)
    config = {"symmetric": True, "activations": "minmax"}
    tokens = quantize(model, batches, {**config, "per_token_activations": True})
    static = quantize(model, batches, config)
    assert tokens.per_token == ("up:input", "down:input")
    assert sorted(tokens.encodings) == ["down.weight", "up.weight"]
    assert isinstance(tokens.model.up.input_quantizer, TokenQuantizer)
    want = model(held)
    ours, theirs = _sqnr(want, tokens(held)), _sqnr(want, static(held))
    assert ours > theirs + 3, (ours, theirs)
    torchao = pytest.importorskip("torchao.quantization")
    import copy

    peer = copy.deepcopy(model)
    torchao.quantize_(peer, torchao.Int8DynamicActivationInt8WeightConfig())
    assert ours > _sqnr(want, peer(held)) - 0.5
    fp8 = quantize(
        model, batches, {"per_token_activations": True, "number_format": "float8_e4m3fn"}
    )
    assert fp8.per_token == ("up:input", "down:input") and _sqnr(want, fp8(held)) > 20
    with pytest.raises(ValueError, match="quantized per token at run time"):
        tokens.export_onnx(tmp_path / "q.onnx", held)
    assert not (tmp_path / "q.onnx").exists()
    tokens.export_onnx(tmp_path / "f.onnx", held, qdq=False, encodings=tmp_path / "e.json")
    names = {e["name"] for e in json.loads((tmp_path / "e.json").read_text())["param_encodings"]}
    assert len(names) == 2
    with pytest.raises(ValueError, match="per block"):
        quantize(model, batches, {"per_token_activations": True, "number_format": "mxfp4"})
    with pytest.raises(TypeError, match="True or False"):
        quantize(model, batches, {"per_token_activations": "yes"})
