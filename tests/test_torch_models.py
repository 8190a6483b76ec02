"""Calibrating torch models (``encanalyze.torch``): small real models built here."""

import importlib.util

import pytest

torch = pytest.importorskip("torch")

import encanalyze as ea  # noqa: E402
from encanalyze.torch import calibrate, quantize  # noqa: E402


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.up = torch.nn.ConvTranspose2d(6, 4, 2, stride=2)
        self.head = torch.nn.Linear(4 * 16 * 16, 5)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = self.up(x)
        return self.head(x.flatten(1))


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 8)
        self.b = torch.nn.Linear(8, 3)

    def forward(self, x, scale=1.0):
        return self.b(torch.relu(self.a(x)) * scale)


def _batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 8, 8, generator=g) for _ in range(n)]


def test_every_quantizable_tensor_has_an_encoding_and_hooks_are_gone():
    model = CNN().eval()
    result = calibrate(model, _batches(), activations="sqnr", bits=8)
    want = {f"{m}{s}" for m in ("conv", "up", "head") for s in (".weight", ":input", ":output")}
    assert set(result.encodings) == want and result.num_batches == 3
    assert all(not m._forward_hooks for m in model.modules())
    aimet = result.aimet()
    assert {e["name"] for e in aimet["param_encodings"]} == {
        "conv.weight",
        "up.weight",
        "head.weight",
    }
    assert len(aimet["activation_encodings"]) == 6


@pytest.mark.parametrize("weights", ["minmax", "sqnr", "mse"])
def test_weight_encodings_equal_the_library_per_channel(weights):
    model = CNN().eval()
    result = calibrate(model, _batches(1), weights=weights, symmetric=True)
    for name, axis in (("conv", 0), ("up", 1), ("head", 0)):
        w = getattr(model, name).weight.detach()
        shape = [1] * w.ndim
        shape[axis] = w.shape[axis]
        analyzer = ea.METHODS[weights].analyzer(tuple(shape))
        analyzer.update_stats(w)
        lo, hi = analyzer.compute_encodings(255, True)
        got = result[f"{name}.weight"]
        assert got.axis == axis and tuple(got.min.shape) == tuple(shape)
        torch.testing.assert_close(got.min, lo, rtol=0, atol=0)
        torch.testing.assert_close(got.max, hi, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["percentile", "entropy", "ema"])
def test_activation_encodings_equal_the_library_on_captured_activations(method):
    model = CNN().eval()
    captured = {}

    def keep(name):
        def hook(module, inputs, output):
            captured.setdefault(f"{name}:input", []).append(inputs[0].detach().clone())
            captured.setdefault(f"{name}:output", []).append(output.detach().clone())

        return hook

    handles = [getattr(model, n).register_forward_hook(keep(n)) for n in ("conv", "up", "head")]
    with torch.no_grad():
        for b in _batches():
            model(b)
    for h in handles:
        h.remove()
    result = calibrate(model, _batches(), activations=method)
    options = {"percentile": 99.99} if method == "percentile" else {}  # the calibrators' default
    for key, tensors in captured.items():
        analyzer = ea.METHODS[method].analyzer((1,), **options)
        for t in tensors:
            analyzer.update_stats(t)
        lo, hi = analyzer.compute_encodings(255, False)
        torch.testing.assert_close(result[key].min, lo, rtol=0, atol=0)
        torch.testing.assert_close(result[key].max, hi, rtol=0, atol=0)


def test_hooks_are_removed_when_the_forward_raises():
    model = CNN().eval()
    with pytest.raises(RuntimeError):
        calibrate(model, [torch.randn(2, 5, 8, 8)])  # wrong channel count
    assert all(not m._forward_hooks for m in model.modules())


def test_several_inputs_dicts_selection_and_per_channel_activations():
    model = TwoInputs().eval()
    g = torch.Generator().manual_seed(1)
    tuples = [(torch.randn(5, 4, generator=g), 2.0) for _ in range(2)]
    dicts = [{"x": torch.randn(5, 4, generator=g), "scale": 0.5}]
    result = calibrate(model, tuples + dicts, modules=["b"], per_channel_activations=True)
    assert set(result.encodings) == {"b.weight", "b:input", "b:output"}
    assert tuple(result["b:input"].min.shape) == (1, 8) and result["b:input"].axis == 1
    assert tuple(result["b.weight"].min.shape) == (3, 1)
    by_type = calibrate(model, tuples, modules=[torch.nn.Linear], per_channel_weights=False)
    assert tuple(by_type["a.weight"].min.shape) == (1,) and by_type["a.weight"].axis is None
    qdq = by_type.onnx_qdq()["tensors"]
    assert qdq["a.weight"]["axis"] is None and qdq["b:output"]["zero_point_dtype"] == "uint8"


def test_several_weight_methods_keep_each_weights_best_sqnr():
    model = CNN().eval()
    several = {"minmax": None, "percentile": {"percentile": 99.9}, "sqnr": None, "mse": None}
    result = calibrate(model, _batches(1), weights=several)
    for name in ("conv.weight", "up.weight", "head.weight"):
        alone = {
            m: calibrate(model, [], weights=m, weight_options=o)[name] for m, o in several.items()
        }
        best = max(alone, key=lambda m: alone[m].sqnr_db)  # the first of equals
        got = result[name]
        assert got.method == best and got.sqnr_db == alone[best].sqnr_db
        torch.testing.assert_close(got.min, alone[best].min, rtol=0, atol=0)
        torch.testing.assert_close(got.max, alone[best].max, rtol=0, atol=0)


@pytest.mark.parametrize(
    "weights, options, error, match",
    [
        ({}, None, ValueError, "names no method"),
        ({"minmax": None, "l2": None}, None, ValueError, "unknown method 'l2'"),
        ({"sqnr": None}, {"num_bins": 64}, ValueError, "weight_options goes with one method"),
        (["minmax"], None, TypeError, "a method name or a dict"),
        # options the weights' method refuses raise at the call, as the activations' do
        ("percentile", {"percentile": 101}, ValueError, "percentile must be in"),
        ("percentile", {"num_bins": 0}, ValueError, "num_bins must be"),
        ("sqnr", {"gamma": -1}, ValueError, "gamma must be"),
        ({"minmax": None, "sqnr": {"num_bins": 0}}, None, ValueError, "num_bins must be"),
        ("mse", {"percentile": 99}, TypeError, "percentile"),
    ],
)
def test_bad_weight_methods(weights, options, error, match):
    with pytest.raises(error, match=match):
        calibrate(TwoInputs(), [torch.randn(2, 4)], weights=weights, weight_options=options)


class WithHead(torch.nn.Module):
    """A model whose second head no batch reaches."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Linear(4, 8)
        self.head = torch.nn.Linear(8, 3)
        self.unused = torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def test_activations_no_batch_reached_are_reported():
    """Activations of modules no batch ran through are listed in ``unquantized`` with the
    reason; their weights are calibrated all the same."""
    model = WithHead().eval()
    result = calibrate(model, [torch.randn(5, 4) for _ in range(2)])
    reason = "no calibration batch reached it"
    assert result.unquantized == {"unused:input": reason, "unused:output": reason}
    assert {"unused.weight", "head:input", "head:output", "body:output"} <= set(result.encodings)
    nothing = calibrate(model, [])
    assert set(nothing.unquantized) == {f"{m}:{t}" for m in ("body", "head", "unused")
                                        for t in ("input", "output")}  # fmt: skip
    assert set(nothing.unquantized.values()) == {reason}
    assert set(nothing.encodings) == {"body.weight", "head.weight", "unused.weight"}


def test_bad_options():
    model = TwoInputs()
    with pytest.raises(ValueError, match="unknown method 'l1'"):
        calibrate(model, [], activations="l1")
    with pytest.raises(ValueError, match="no module named 'c'"):
        calibrate(model, [], modules=["c"])
    with pytest.raises(ValueError, match="num_steps"):
        calibrate(model, [], bits=1, symmetric=True)


def test_statistics_stay_on_the_model_dtype():
    model = TwoInputs().double().eval()
    result = calibrate(model, [torch.randn(3, 4, dtype=torch.float64)])
    assert result["a:output"].min.dtype == torch.float64
    assert result["a.weight"].min.dtype == torch.float64
    table = result.table()
    assert (
        "a.weight" in table
        and "b:output" in table
        and bool(torch.isfinite(result["b.weight"].scale).all())
    )


def _bn_dropout_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Dropout(0.5),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 3),
    )


def test_calibration_observes_eval_mode_and_leaves_the_model_as_it_was():
    import copy

    model = _bn_dropout_model().train()
    model[4].register_forward_hook(lambda *a: None)
    before = copy.deepcopy(model.state_dict())
    hooks = {n: dict(m._forward_hooks) for n, m in model.named_modules()}
    batches = [torch.randn(2, 3, 8, 8) * 5 + 3 for _ in range(3)]
    result = calibrate(model, batches, activations="minmax")
    assert model.training and all(m.training for m in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # running stats and counters untouched
    assert {n: dict(m._forward_hooks) for n, m in model.named_modules()} == hooks
    # the activations are those of the deployed (eval) model: no dropout, running BN stats
    evaluated = copy.deepcopy(model).eval()
    with torch.no_grad():
        outputs = torch.cat([evaluated(b) for b in batches])
    assert float(result["4:output"].max[0]) == pytest.approx(float(outputs.max()), rel=1e-6)
    # eval_mode=False observes training mode, and still restores the buffers
    calibrate(model, batches, activations="minmax", eval_mode=False)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_type_selection_includes_the_root_module():
    result = calibrate(torch.nn.Linear(4, 3), [torch.randn(2, 4)], modules=[torch.nn.Linear])
    assert set(result.encodings) == {"weight", ":input", ":output"}


def test_a_dead_channel_leaves_that_tensor_in_float_and_keeps_the_others():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    x = torch.randn(5, 4)
    x[:, 1] = -float("inf")
    result = calibrate(model, [x], per_channel_activations=True)
    assert "0.weight" in result.encodings
    assert result.unquantized["0:input"] == "1 of its 4 channels never held a finite value"
    assert "0:input" in result.onnx_qdq()["unquantized"]


def test_exported_compiled_and_meta_models():
    """An exported program's module points to encanalyze.pt2e in one line (eval mode or not); a
    torch.compile'd model is calibrated through its original module, with its names and the
    same encodings; a model on the meta device says so."""
    import numpy as np

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(72, 4)
    ).eval()
    batches = [torch.randn(4, 3, 5, 5) for _ in range(2)]
    exported = torch.export.export(model, (batches[0],)).module()
    for eval_mode in (True, False):
        with pytest.raises(TypeError, match="exported graph.*encanalyze.pt2e"):
            calibrate(exported, batches, eval_mode=eval_mode)
    want = calibrate(model, batches)
    got = calibrate(torch.compile(model), batches)
    assert got.encodings.keys() == want.encodings.keys() and "0:input" in got.encodings
    for name, e in want.encodings.items():
        np.testing.assert_array_equal(np.asarray(got[name].scale), np.asarray(e.scale))
    traced = calibrate(torch.fx.symbolic_trace(model), batches)  # modules kept: hooks work
    assert traced.encodings.keys() == want.encodings.keys()
    with torch.device("meta"):
        empty = torch.nn.Linear(3, 4)
    with pytest.raises(ValueError, match="meta device.*'weight' and 1 more"):
        calibrate(empty, [torch.randn(2, 3)])


def test_warnings_name_their_tensor():
    """A model's NaN warnings name the tensor (activations and weights) and point at the
    caller's line."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    x = torch.randn(6, 4)
    x[0, 0] = float("nan")
    with pytest.warns(RuntimeWarning) as caught:
        calibrate(model, [x, torch.randn(6, 4)])
    messages = sorted(str(w.message) for w in caught)
    assert messages[0] == "0:input: 1 NaN values were ignored while gathering statistics"
    assert {m.split(":")[0] + ":" + m.split(":")[1] for m in messages} == {
        "0:input", "0:output", "2:input", "2:output"}  # fmt: skip
    assert {w.filename for w in caught} == {__file__}
    model[0].weight.data[1, 2] = float("nan")
    with pytest.warns(RuntimeWarning, match=r"^0\.weight: .*NaN") as caught:
        calibrate(model, [torch.randn(6, 4)])


def test_a_torch_result_does_not_write_a_silent_float_qdq_model(tmp_path):
    """A torch result's activations are keyed by module (``0:input``): written onto the
    exported ONNX model they would quantize no activation, and the call says so and how."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from encanalyze.onnx import calibrate as calibrate_onnx
    from encanalyze.onnx import write_qdq_model

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    batches = [torch.randn(6, 4) for _ in range(2)]
    path = tmp_path / "m.onnx"
    torch.onnx.export(model.eval(), (batches[0],), str(path), dynamo=False)
    with pytest.raises(ValueError, match="'0:input' names a torch module's input.*onnx.calibrate"):
        write_qdq_model(path, calibrate(model, batches), tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()
    result = calibrate_onnx(path, [b.numpy() for b in batches])  # the route it names
    assert write_qdq_model(path, result, tmp_path / "q.onnx").exists()


def test_forward_loops_and_batches_of_inputs_and_targets():
    """A forward_loop(model) (Model Optimizer's and AIMET's shape) and a DataLoader's
    ``(inputs, target)`` batches with ``batch_to_inputs`` give the encodings of the plain
    batches; the batches counted are the model's forward calls."""
    import numpy as np

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    xs = [torch.randn(6, 4) for _ in range(3)]
    want = calibrate(model, xs)

    def forward_loop(m):
        for x in xs:
            m(x)

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.cat(xs), torch.zeros(18)), batch_size=6
    )
    looped = calibrate(model, forward_loop)
    loaded = calibrate(model, loader, batch_to_inputs=lambda b: b[0])
    for got in (looped, loaded):
        assert got.num_batches == 3 and got.encodings.keys() == want.encodings.keys()
        for name, e in want.encodings.items():
            np.testing.assert_array_equal(np.asarray(got[name].scale), np.asarray(e.scale))
    with pytest.raises(TypeError):  # (inputs, target) as two arguments: the model's own error
        calibrate(model, loader)
    with pytest.raises(ValueError, match="batch_to_inputs goes with batches"):
        calibrate(model, forward_loop, batch_to_inputs=lambda b: b[0])
    with pytest.raises(TypeError, match="got one dict"):
        calibrate(model, {"x": xs[0]})


class ConvBN(torch.nn.Module):
    """Conv + BatchNorm pairs (one of them in a residual the BatchNorm does not end), a
    Linear + BatchNorm1d pair, and a BatchNorm after a ReLU (not foldable)."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(8)
        self.bn3 = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 4)
        self.bn4 = torch.nn.BatchNorm1d(4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        y = self.conv2(x)
        x = self.bn3(torch.relu(self.bn2(y) + y))  # conv2's output is used twice: not folded
        return self.bn4(self.fc(x.mean((2, 3))))


def _trained_statistics(model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


def test_batchnorm_folds_and_an_unfolded_pair_is_warned_of():
    """fold_batchnorm folds each BatchNorm that directly and alone follows a conv or linear
    layer into it (a copy: the model is untouched; the same outputs up to float rounding); the
    calibration of an unfolded model says which BatchNorm follows which layer."""
    from encanalyze.torch import fold_batchnorm

    model = _trained_statistics(ConvBN())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    names = {n for n, _ in folded.named_modules()}
    assert {"conv1", "conv2", "fc", "bn2", "bn3"} <= names and not {"bn1", "bn4"} & names
    x = torch.randn(5, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    batches = [torch.randn(5, 3, 6, 6) for _ in range(2)]
    with pytest.warns(UserWarning, match=r"BatchNorm 'bn1' follows 'conv1' \(and 1 more pairs\)"):
        calibrate(model, batches)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = calibrate(folded, batches)  # folded: nothing to warn of
    assert {"conv1.weight", "conv1:output", "fc:output"} <= set(result.encodings)
    with pytest.raises(TypeError, match="torch.fx can trace"):
        fold_batchnorm(Branchy())


class Branchy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else x


def test_one_defaults_table_for_every_entry_point():
    """The model calibrators of torch and ONNX models, PT2E's config and observer and the
    command share one default: uint8 asymmetric percentile (99.99) activations, int8 symmetric
    min-max weights per output channel."""
    import inspect

    from encanalyze import cli
    from encanalyze._registry import DEFAULTS

    calibrators = [calibrate]
    if importlib.util.find_spec("onnx") is not None:
        from encanalyze.onnx import calibrate as calibrate_onnx

        calibrators.append(calibrate_onnx)
    for fn in calibrators:
        params = inspect.signature(fn).parameters
        for key, value in DEFAULTS.items():
            if key in params:
                assert params[key].default == value, (fn.__module__, key)
        assert {"activations", "weights", "weight_symmetric", "symmetric"} <= set(params)
    assert DEFAULTS["weight_symmetric"] and not DEFAULTS["symmetric"]
    args = cli.build_parser().parse_args(["calibrate", "model.onnx", "--data", "random"])
    assert args.percentile == DEFAULTS["percentile"] and args.weight_grid == "symmetric"
    # quantize: the command's methods (activations chosen by the output) on the same grids
    from encanalyze.torch._quantize import AUTO

    assert args.activation_method == AUTO and args.method == AUTO
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    quantized = quantize(model, [torch.randn(8, 4) for _ in range(2)])
    assert not quantized.result.symmetric and quantized.result.weights_symmetric
    assert quantized.result["0.weight"].method == DEFAULTS["weights"]
    assert quantized.result["0.weight"].axis == 0  # per output channel
    if importlib.util.find_spec("torchao") is not None:
        from encanalyze.pt2e import EncodingObserver, quantization_config

        params = inspect.signature(quantization_config).parameters
        assert params["activations"].default == DEFAULTS["activations"]
        assert params["weights"].default == DEFAULTS["weights"]
        observer = EncodingObserver()
        assert observer.method == "percentile" and observer.options == {"percentile": 99.99}
        config = quantization_config()
        assert config.input_activation.qscheme == torch.per_tensor_affine
        assert config.weight.qscheme == torch.per_channel_symmetric
