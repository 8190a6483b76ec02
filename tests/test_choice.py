"""Choosing encodings by the model's output: the emulated model and the choice it drives."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from encanalyze._output_errors import OutputErrors  # noqa: E402
from encanalyze.onnx import calibrate, choose_encodings, output_sqnr, write_qdq_model  # noqa: E402
from encanalyze.onnx._choose import _gain  # noqa: E402
from encanalyze.onnx._emulate import Emulator  # noqa: E402
from tests import onnx_models as om  # noqa: E402

METHODS = ("minmax", "percentile", "sqnr", "mse")


def _data(seed, n):
    rng = np.random.default_rng(seed)
    return [rng.standard_t(3, (4, 3, 8, 8)).astype("f4") for _ in range(n)]


def _fake_quant(x, e):
    """``(clip(round(x / s) - o, 0, 255) + o) * s`` in float64, per channel on ``e.axis``."""
    shape = [1] * x.ndim
    scale = np.asarray(e.scale, np.float64).reshape(-1)
    offset = np.asarray(e.offset, np.float64).reshape(-1)
    if e.axis is not None:
        shape[e.axis] = scale.size
    s, o = scale.reshape(shape), offset.reshape(shape)
    return (np.clip(np.rint(x / s) - o, 0, 255) + o) * s


def test_the_emulation_is_fake_quantization_of_every_encoded_tensor(tmp_path):
    w = np.random.default_rng(0).normal(size=(6, 4)).astype("f4")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(5, 6)).astype("f4") for _ in range(2)]
    result = calibrate(model, batches, activations="minmax", weight_symmetric=True)
    with Emulator(model, result) as emulator:
        assert set(emulator.tensors) == {"x", "w", "y"}
        feed = emulator.feed(result.encodings)
        assert feed["w::scale"].shape == (1, 4)  # per output channel, on the MatMul's axis 1
        (got,) = next(emulator.outputs(feed, batches[:1]))
    x = batches[0].astype(np.float64)
    want = _fake_quant(_fake_quant(x, result["x"]) @ _fake_quant(w, result["w"]), result["y"])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    # and the emulation is ONNX Runtime's QDQ model up to its integer arithmetic
    import onnxruntime as ort

    path = write_qdq_model(model, result, tmp_path / "q.onnx")
    (qdq,) = ort.InferenceSession(str(path)).run(None, {"x": batches[0]})
    step = float(np.asarray(result["y"].scale).reshape(-1)[0])
    assert np.abs(qdq - got).max() <= 1.0001 * step  # at most one step of y's grid apart


@pytest.mark.slow  # (the fast run's gate: the model job's choice tests)
def test_choose_encodings_keeps_the_default_unless_significantly_beaten(tmp_path):
    model = om.cnn()
    calib, held = _data(3, 3), _data(4, 2)
    weights = dict.fromkeys(("minmax", "sqnr", "mse"))
    result = calibrate(model, calib, activations=METHODS, weights=weights, weight_symmetric=True)
    assert result["c1"] is result.candidates["c1"]["minmax"]  # the first method until chosen
    chosen, choice = choose_encodings(model, result, held)
    assert choice.simple.label == "minmax+minmax"
    assert choice.default.label == "percentile+minmax"
    assert {f"{m}+minmax" for m in METHODS} <= set(choice.emulated)
    base = choice.chosen.activations
    assert {f"{base}+{w}" for w in ("best-tensor-sqnr", *weights)} <= set(choice.emulated)
    for label, (gain, se) in choice.gains.items():  # each against the option it challenged
        assert np.isfinite(gain) and se >= 0, label
    checked = choice.checked
    assert set(checked) == {"minmax+minmax", choice.chosen.label} or len(checked) == 2
    # never below min-max everywhere, but by less than the gate (and then it says so)
    below = checked[choice.chosen.label] < checked["minmax+minmax"]
    assert not below or "within their noise" in choice.note
    for name, c in chosen.candidates.items():
        method = base if chosen[name].kind == "activation" else choice.chosen.weights
        if method != "best-tensor-sqnr":
            assert chosen[name] is c[method]
    path = write_qdq_model(model, chosen, tmp_path / "q.onnx")
    (measured,) = output_sqnr(model, path, held).values()
    assert measured == pytest.approx(checked[choice.chosen.label], abs=1e-9)
    # with a staged name, the chosen QDQ model is left there, and nothing else
    staged = tmp_path / "stage" / "chosen.onnx"
    staged.parent.mkdir()
    _, kept = choose_encodings(model, result, held, stage=staged)
    assert kept.chosen == choice.chosen and kept.qdq_model == staged
    assert [p.name for p in staged.parent.iterdir()] == ["chosen.onnx"]
    assert output_sqnr(model, staged, held) == output_sqnr(model, path, held)
    # the emulation scores as the QDQ models do, up to their integer arithmetic
    for label, db in checked.items():
        assert abs(choice.emulated[label] - db) < 1.0, (label, choice.emulated[label], db)
    # no gain is significant at z = inf: the default, whatever min-max everywhere scores
    _, stay = choose_encodings(model, result, held, z=np.inf)
    assert stay.chosen == stay.default
    # at z = 0 the result is never below min-max everywhere on these batches
    _, plain = choose_encodings(model, result, held, z=0)
    assert plain.checked[plain.chosen.label] >= plain.checked["minmax+minmax"]
    # every gain is at z = -inf: the best emulated activations, then the best weights
    _, best = choose_encodings(model, result, held, z=-np.inf)
    acts = {m: best.emulated[f"{m}+minmax"] for m in METHODS}
    decided = max(acts, key=acts.get)
    assert best.chosen.activations in (decided, "minmax")


def _errors(signal, noise, exact=False):
    return OutputErrors(("y",), signal, noise, np.array([exact]))


def test_the_gain_and_its_standard_error():
    rng = np.random.default_rng(0)
    signal = rng.uniform(1, 2, (1, 16))
    noise = rng.uniform(0.01, 0.02, (1, 16))
    assert _gain(_errors(signal, noise), _errors(signal, noise)) == (0.0, 0.0)
    gain, se = _gain(_errors(signal, noise / 2), _errors(signal, noise))  # half the noise
    assert gain == pytest.approx(10 * np.log10(2)) and se < 1e-9
    spike = noise.copy()
    spike[0, 3] = 50.0  # one sample far off: the gain is large and so is its error
    gain, se = _gain(_errors(signal, noise), _errors(signal, spike))
    assert gain > 10 and se > gain / 2
    two = _errors(signal[:, :2], noise[:, :2]), _errors(signal[:, :2], spike[:, :2])
    assert _gain(*two)[1] == np.inf
    # class ids: elements and mismatches per sample, the gain in percentage points
    elements = np.full((1, 4), 10.0)
    gain, se = _gain(
        _errors(elements, np.zeros((1, 4)), True), _errors(elements, elements / 10, True)
    )
    assert gain == pytest.approx(10.0) and se == pytest.approx(0.0)


def test_choose_encodings_of_one_kind_and_without_candidates():
    model = om.cnn()
    calib, held = _data(5, 2), _data(6, 2)
    result = calibrate(model, calib, weights=dict.fromkeys(METHODS), weight_symmetric=True)
    chosen, choice = choose_encodings(model, result, held, activations=False)
    assert choice.chosen.activations is None and choice.simple.label == "minmax"
    assert choice.default.label == "minmax"
    assert set(choice.emulated) == {"best-tensor-sqnr", *METHODS}
    assert {chosen[n].method for n in ("c1", "f", "y")} == {"percentile"}  # as calibrated
    with pytest.raises(ValueError, match="calibrate with several"):
        choose_encodings(model, calibrate(model, calib), held)
    with pytest.raises(ValueError, match="calibrate with several"):
        choose_encodings(model, result, held, weights=False)


def test_the_gate():
    from encanalyze.onnx._choose import _beats

    assert _beats(2.0, 1.0, 1.645) and not _beats(1.5, 1.0, 1.645)
    assert _beats(0.1, 1.0, 0) and not _beats(0.0, 1.0, 0)  # z = 0: any gain
    assert not _beats(5.0, np.inf, 1.645) and _beats(0.1, np.inf, 0)  # too few samples
    assert not _beats(9.0, 0.0, np.inf) and _beats(-1.0, 0.0, -np.inf)


def test_fixed_weights_are_quantized_once_and_emulate_bit_for_bit(tmp_path):
    """With one weight option the emulator quantizes the weights once, into its initializers
    (no chain per run, one copy): its outputs equal the chained emulation's bit for bit."""
    model = om.cnn()
    calib, held = _data(5, 2), _data(6, 2)
    result = calibrate(model, calib, activations=["minmax", "percentile"], weight_symmetric=True)
    weights = {n: e for n, e in result.encodings.items() if e.kind == "param"}
    assert len(weights) >= 2
    with Emulator(model, result) as chained, Emulator(model, result, fixed=weights) as baked:
        assert set(weights) <= set(chained.tensors)
        assert not set(weights) & set(baked.tensors)  # not fed: always quantized
        for method in ("minmax", "percentile"):
            encodings = result.with_method("activation", method).encodings
            want = list(chained.outputs(chained.feed(encodings), held))
            got = list(baked.outputs(baked.feed(encodings), held))
            for w, g in zip(want, got, strict=True):
                np.testing.assert_array_equal(w[0], g[0])


def test_the_qdq_model_is_written_from_the_weights_in_place_as_from_a_copy(tmp_path, monkeypatch):
    """The QDQ model's float source is written one weight at a time from the caller's model
    (stubs and their data): ONNX Runtime builds the same QDQ model as from a whole copy."""
    import onnx

    from encanalyze.onnx import _qdq

    model = om.cnn()
    result = calibrate(model, _data(7, 2), activations="minmax", weight_symmetric=True)
    before = model.SerializeToString()
    stubbed = write_qdq_model(model, result, tmp_path / "a.onnx")
    monkeypatch.setattr(_qdq, "SHARED_BYTES", float("inf"))  # nothing stubbed: a whole copy
    copied = write_qdq_model(model, result, tmp_path / "b.onnx")
    a, b = onnx.load(str(stubbed)), onnx.load(str(copied))
    assert a.graph.SerializeToString() == b.graph.SerializeToString()
    assert model.SerializeToString() == before
