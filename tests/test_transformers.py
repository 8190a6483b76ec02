"""Transformers with dynamic axes: variable-length ``--data``, the model job, the Python API."""

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from encanalyze.cli._data import DataError, batches_for  # noqa: E402
from tests import onnx_models as om  # noqa: E402
from tests import transformer_models as tm  # noqa: E402
from tests.test_report import _data as report_data  # noqa: E402


def _sequence_model():
    """x (n, s, 4) -> MatMul -> y (n, s, 3), with symbolic batch and sequence axes."""
    w = om.M2[:4]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "s", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "s", 3])
    return om.graph_model(nodes, [x], [y], [onnx.numpy_helper.from_array(w, "w")], name="seq")


def test_a_folder_of_npz_groups_gives_batches_that_keep_each_group_s_length(tmp_path):
    rng = np.random.default_rng(0)
    lengths = {"a.npz": (5, 7), "b.npz": (20, 3), "c.npz": (2, 11)}  # (samples, length)
    for name, (n, length) in lengths.items():
        np.savez(tmp_path / name, x=rng.normal(size=(n, length, 4)).astype("f4"))
    batches, random, notes = batches_for(_sequence_model(), str(tmp_path), 8)
    assert not random and notes == []
    shapes = [b["x"].shape for b in batches]
    # each file cut on its own, in name order: a batch never mixes two lengths
    assert shapes == [(5, 7, 4), (8, 3, 4), (8, 3, 4), (4, 3, 4), (2, 11, 4)]
    whole = np.concatenate([b["x"].reshape(-1) for b in batches])
    want = np.concatenate([np.load(tmp_path / n)["x"].reshape(-1) for n in sorted(lengths)])
    np.testing.assert_array_equal(whole, want)


def test_a_group_that_misfits_the_model_is_named_before_anything_runs(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((2, 5, 4), "f4"))
    np.savez(tmp_path / "b.npz", x=np.zeros((2, 5, 6), "f4"))  # the model takes 4 features
    with pytest.raises(DataError, match=r"b\.npz.*dimension 2 is 6"):
        batches_for(_sequence_model(), str(tmp_path), 8)
    (tmp_path / "b.npz").unlink()
    np.save(tmp_path / "x.npy", np.zeros((2, 5, 4), "f4"))
    with pytest.raises(DataError, match=r"both \.npz files .* and x\.npy"):
        batches_for(_sequence_model(), str(tmp_path), 8)


def _exported(tmp_path_factory, build, name: str):
    for module in ("torch", "transformers", "onnxscript"):
        pytest.importorskip(module)
    return build(tmp_path_factory.mktemp(name) / f"{name}.onnx")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return _exported(tmp_path_factory, tm.encoder, "bert")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return _exported(tmp_path_factory, tm.decoder, "llama")


def _output_sqnr(model, qdq, batch) -> float:
    want = ort.InferenceSession(str(model)).run(None, batch)[0]
    got = ort.InferenceSession(str(qdq)).run(None, batch)[0]
    return float(10 * np.log10(np.sum(want**2) / np.sum((want - got) ** 2)))


def test_an_encoder_with_dynamic_axes_through_the_model_job(bert, tmp_path, command):
    data = tm.groups(tmp_path / "data", [5, 9, 17, 12, 30, 7, 21, 40])
    qdq, report = tmp_path / "q.onnx", tmp_path / "r.html"
    status, out, err = command(
        bert, "--data", data, "--qdq-model", qdq, "--report", report, "--format", "json"
    )
    assert status == 0, err
    found = json.loads(out)
    kinds = {t["name"]: t["kind"] for t in found["tensors"]}
    model = onnx.load(str(bert))
    matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    weights = {i.name for i in model.graph.initializer}
    # every projection's weight (Q, K, V, output, the two FFN layers, the pooler) is encoded
    wanted = {i for n in matmuls for i in n.input if i in weights}
    assert len(wanted) == 2 * 6 + 1 and wanted <= {n for n, k in kinds.items() if k == "param"}
    assert sum(k == "activation" for k in kinds.values()) > 20
    # the QDQ model keeps both dynamic axes: it runs at lengths and batch sizes never seen
    rng = np.random.default_rng(9)
    for samples, length in ((1, 3), (5, 64)):
        assert _output_sqnr(bert, qdq, tm.token_batch(rng, samples, length)) > 25
    # ONNX Runtime's histogram calibrators fail on variable lengths: the report says why
    rows = report_data(report.read_text())["comparison"]
    peers = [r for r in rows if r["label"].startswith("ONNX Runtime")]
    assert len(peers) == 3
    for row in peers:
        assert row["output_sqnr_db"] is not None or row["note"].startswith("failed: ")


@pytest.mark.slow  # a second exported transformer: the full matrix (the encoder runs fast)
def test_a_decoder_through_the_python_api_per_channel_and_variable_length(llama):
    from encanalyze.onnx import calibrate, write_qdq_model

    rng = np.random.default_rng(1)
    batches = [tm.token_batch(rng, 3, length) for length in (4, 19, 33, 8)]
    result = calibrate(str(llama), batches, activations="minmax")
    assert result.num_batches == 4
    model = onnx.load(str(llama))
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    matmul_weights = [
        i for n in model.graph.node if n.op_type == "MatMul" for i in n.input if i in weights
    ]
    assert len(matmul_weights) == 2 * 7 + 1  # q k v o gate up down per layer, and lm_head
    for name in matmul_weights:  # per output channel: the MatMul's last axis
        e = result[name]
        assert e.axis == weights[name].ndim - 1
        assert np.asarray(e.scale).size == weights[name].shape[-1]
    # an activation's range is that of every length's values (the logits, by ONNX Runtime)
    run = ort.InferenceSession(str(llama)).run
    logits = [run(None, b)[0] for b in batches]
    lo, hi = min(x.min() for x in logits), max(x.max() for x in logits)
    e = result["logits"]
    step = float(e.scale.reshape(-1)[0])
    assert abs(float(e.min[0]) - lo) <= step and abs(float(e.max[0]) - hi) <= step
    qdq = llama.parent / "q.onnx"
    write_qdq_model(str(llama), result, str(qdq))
    assert _output_sqnr(llama, qdq, tm.token_batch(rng, 2, 27)) > 20


def _runs(monkeypatch) -> list[int]:
    """Spy on the calibration's runs: the samples of each (a batch's token ids' first axis)."""
    from encanalyze.onnx import _calibrate

    sizes, run_batch = [], _calibrate.run_batch

    def spy(run, names, feed):
        sizes.append(len(feed["input_ids"]))
        return run_batch(run, names, feed)

    monkeypatch.setattr(_calibrate, "run_batch", spy)
    return sizes


def test_a_batch_past_the_run_budget_is_observed_in_pieces_of_samples(bert, monkeypatch):
    """A batch whose activations would pass RUN_BYTES runs in pieces of samples (memory: one
    piece's activations); min-max encodings and the per-batch ranges are the whole batches'."""
    from encanalyze.onnx import _pieces, calibrate

    rng = np.random.default_rng(3)
    batches = [tm.token_batch(rng, 6, length) for length in (9, 30, 17)]
    axes = {"input_ids": 0, "attention_mask": 0}
    runs = _runs(monkeypatch)
    whole_stats, cut_stats = {}, {}
    whole = calibrate(str(bert), batches, activations=["minmax", "percentile"],
                      sample_axes=axes, statistics=whole_stats)  # fmt: skip
    assert runs == [1, 6, 6, 6]  # a one-sample probe, then every batch whole: they fit
    runs.clear()
    per_sample = 2 * 30 * 8 * 1024  # far less than one sample of 30 tokens exposes
    monkeypatch.setattr(_pieces, "RUN_BYTES", per_sample)
    cut = calibrate(str(bert), batches, activations=["minmax", "percentile"],
                    sample_axes=axes, statistics=cut_stats)  # fmt: skip
    assert runs[0] == 1 and max(runs[1:]) < 6 and sum(runs[1:]) == 18, runs
    assert cut.num_batches == whole.num_batches == 3
    assert cut_stats["ranges"] == whole_stats["ranges"]
    acts = [n for n, e in whole.encodings.items() if e.kind == "activation"]
    assert len(acts) > 20
    for name in acts:
        a, b = whole.candidates[name]["minmax"], cut.candidates[name]["minmax"]
        np.testing.assert_array_equal(a.min, b.min)
        np.testing.assert_array_equal(a.max, b.max)
        # the histograms saw smaller batches: their re-binning differs by about a bin
        p, q = whole.candidates[name]["percentile"], cut.candidates[name]["percentile"]
        assert abs(float(p.scale[0]) - float(q.scale[0])) <= 0.02 * float(p.scale[0]), name
    # without sample axes (a caller's batches of unknown layout) nothing is cut
    runs.clear()
    calibrate(str(bert), batches, activations="minmax")
    assert runs == [6, 6, 6]


@pytest.mark.slow  # (the fast run's pieces: the calibration's, in the test above)
def test_comparisons_and_the_choice_run_in_pieces_with_the_whole_batches_scores(
    bert, monkeypatch, tmp_path
):
    """The output comparison and the choice cut batches into pieces of samples (32 MiB of
    outputs each) and keep the float outputs past KEPT_BYTES in files: the same per-sample
    errors and the same choice as whole batches kept in memory, and no file left behind."""
    from encanalyze.onnx import _choose, _qdq, calibrate, choose_encodings, write_qdq_model

    rng = np.random.default_rng(4)
    calib = [tm.token_batch(rng, 4, length) for length in (12, 25)]
    held = [tm.token_batch(rng, 5, length) for length in (8, 20, 14)]
    axes = {"input_ids": 0, "attention_mask": 0}
    result = calibrate(str(bert), calib, activations=["minmax", "percentile", "mse"])
    qdq = write_qdq_model(str(bert), result, tmp_path / "q.onnx")
    whole = _qdq.compare_outputs(str(bert), str(qdq), held)
    monkeypatch.setattr(_qdq, "OUTPUT_BYTES", 1)  # one sample a piece
    monkeypatch.setattr(_choose, "KEPT_BYTES", 0)  # every piece's float outputs in a file
    cut = _qdq.compare_outputs(str(bert), str(qdq), held, sample_axes=axes)
    assert cut.signal.shape == whole.signal.shape == (2, 15)  # two outputs, 15 samples
    np.testing.assert_allclose(cut.signal, whole.signal, rtol=1e-5)
    np.testing.assert_allclose(cut.noise, whole.noise, rtol=1e-3)
    stage = tmp_path / "stage" / "chosen.onnx"
    stage.parent.mkdir()
    _, in_memory = choose_encodings(str(bert), result, held)
    _, pieces = choose_encodings(str(bert), result, held, stage=stage, sample_axes=axes)
    assert pieces.chosen == in_memory.chosen
    for label, db in in_memory.emulated.items():
        assert pieces.emulated[label] == pytest.approx(db, abs=0.05), label
    assert [p.name for p in stage.parent.iterdir()] == ["chosen.onnx"]
