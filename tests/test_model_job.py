"""The model job on careless commands and awkward models: no data loss, one line per failure."""

import json
import os
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import encanalyze as ea  # noqa: E402
from encanalyze.onnx import calibrate, write_qdq_model  # noqa: E402
from tests import onnx_models as om  # noqa: E402

_mlp = om.matmul


def _save(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _data(tmp_path, name="d.npz", n=10, **arrays):
    arrays = arrays or {"x": np.random.default_rng(0).normal(size=(n, 4)).astype("f4")}
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name


# --- models the job used to break on ------------------------------------------------------------


def test_old_opset_per_channel_qdq_model_is_converted_to_opset_13_and_runs(command, tmp_path):
    import onnxruntime as ort

    path = _save(tmp_path, _mlp(opset=11))
    qdq = tmp_path / "q.onnx"
    status, out, err = command(
        path, "--data", _data(tmp_path), "--qdq-model", qdq, "--method", "minmax"
    )
    assert status == 0, err
    assert "opset 11 converted to 13" in out and "opset 11 converted to 13" in err
    written = onnx.load(str(qdq))
    assert [o.version for o in written.opset_import if o.domain in ("", "ai.onnx")] == [13]
    dq = [n for n in written.graph.node if n.op_type == "DequantizeLinear" and "w" in n.input[0]]
    assert any(a.name == "axis" for a in dq[0].attribute)  # per channel
    ort.InferenceSession(str(qdq)).run(None, {"x": np.ones((2, 4), "f4")})


def test_a_model_that_cannot_be_converted_gets_per_tensor_weights(tmp_path, monkeypatch):
    from onnx import version_converter

    def refuse(model, version):
        raise RuntimeError("no adapter")

    monkeypatch.setattr(version_converter, "convert_version", refuse)
    model = _mlp(opset=11)
    result = calibrate(model, [np.ones((2, 4), "f4")], activations="minmax")
    assert result["w"].axis == 1
    with pytest.warns(UserWarning, match="weights quantized per tensor"):
        path = write_qdq_model(model, result, tmp_path / "q.onnx")
    nodes = onnx.load(str(path)).graph.node
    dq = next(n for n in nodes if n.op_type == "DequantizeLinear" and n.input[0].startswith("w"))
    assert not any(a.name == "axis" for a in dq.attribute)
    scale = next(i for i in onnx.load(str(path)).graph.initializer if i.name == dq.input[1])
    assert numpy_helper.to_array(scale).size == 1


@pytest.mark.parametrize("batch", [-1, "n"])
def test_batch_dimension_minus_one_or_symbolic_is_any_size(command, tmp_path, batch):
    model = _mlp(batch=batch)
    if isinstance(batch, int):
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    path = _save(tmp_path, model)
    status, out, err = command(
        path,
        "--data",
        _data(tmp_path, n=10),
        "--format",
        "json",
        "--method",
        "minmax",
        "--batch-size",
        "4",
    )
    assert status == 0, err
    report = json.loads(out)
    assert {t["name"] for t in report["tensors"]} == {"w", "x", "y"}


def test_no_batches_give_weights_and_say_why_activations_have_none():
    result = calibrate(_mlp(), [])
    assert set(result.encodings) == {"w"} and result.num_batches == 0
    assert result.unquantized == dict.fromkeys(["x", "y"], "no calibration batch reached it")
    assert result.aimet()["unquantized"] == result.unquantized
    assert "left in float" in result.table()


@pytest.mark.parametrize(
    "cond, branch, weight", [(True, "then_branch", "then_w"), (False, "else_branch", "else_w")]
)
def test_an_if_fixed_by_the_data_is_inlined_and_its_activations_calibrated(
    command, tmp_path, cond, branch, weight
):
    import onnxruntime as ort

    from encanalyze.onnx import output_sqnr

    model, _, _ = om.with_subgraph()
    x = np.random.default_rng(0).normal(size=(1, 3, 4, 4)).astype("f4")
    batches = [{"cond": np.array(cond), "x": x}, {"cond": np.array(cond), "x": x * 2}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left unobserved
        result = calibrate(model, batches, activations="minmax")
    assert {"then_w", "else_w", "x", "z"} <= set(result.encodings)
    assert result.branches == {"z": branch}
    assert float(result["z"].max[0]) > 0
    qdq = write_qdq_model(model, result, tmp_path / "q.onnx")
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(qdq)).graph.node}
    ort.InferenceSession(str(qdq)).run(None, batches[0])
    assert output_sqnr(model, qdq, batches)["z"] > 20
    mixed = [batches[0], {"cond": np.array(not cond), "x": x}]
    with pytest.raises(ValueError, match="batch 2 takes another branch"):
        calibrate(model, mixed)
    path = _save(tmp_path, model)
    data = _data(tmp_path, cond=np.array(cond), x=x)
    status, out, err = command(path, "--data", data, "--method", "minmax")
    assert status == 0 and weight in out and "z " in out


def test_loop_bodies_stay_unobserved_with_a_note(tmp_path):
    body_w = numpy_helper.from_array(om.M2[:4].copy(), "bw")
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["c_in"], ["c_out"]),
            helper.make_node("MatMul", ["x", "bw"], ["y_scan"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
        ],
        [
            helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("y_scan", TensorProto.FLOAT, ["n", 3]),
        ],
        [body_w],
    )
    trip = numpy_helper.from_array(np.array(2, "i8"), "trip")
    cond = numpy_helper.from_array(np.array(True), "c0")
    loop = helper.make_node("Loop", ["trip", "c0"], ["ys"], body=body)
    model = om.graph_model([loop], [_vi("x")], [_vi("ys", shape=(2, "n", 3))], [trip, cond])
    with pytest.warns(UserWarning, match="1 quantizable nodes lie inside If/Loop/Scan"):
        result = calibrate(model, [np.ones((2, 4), "f4")])
    assert "bw" in result.encodings


def test_fixed_batch_size_leaves_the_remainder_out_with_a_note(command, tmp_path):
    path = _save(tmp_path, _mlp(batch=4))
    status, out, err = command(
        path, "--data", _data(tmp_path, n=10), "--method", "minmax", "--format", "json"
    )
    assert status == 0, err
    assert "2 of 10 samples left out: the model takes batches of exactly 4" in err
    status, _, err = command(path, "--data", _data(tmp_path, n=3))
    assert status == 1 and "fewer than the model's fixed batch size 4" in err
    status, _, err = command(path, "--data", _data(tmp_path, n=8), "--batch-size", "2")
    assert status == 1 and "batches of exactly 4" in err


def test_sample_axis_and_constant_inputs(command, tmp_path):
    """A state input with its samples on axis 1 and a scalar input fed whole (a VAD's sr)."""
    state = helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "n", 4])
    sr = helper.make_tensor_value_info("sr", TensorProto.INT64, [])
    nodes = [
        helper.make_node("ReduceSum", ["state"], ["s"], axes=[0], keepdims=0),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["s", "srf"], ["s2"]),
        helper.make_node("Add", ["x0", "s2"], ["x"]),
    ]
    model = _mlp(extra_inputs=(state, sr), nodes_before=nodes, opset=11)
    model.graph.input[0].name = "x0"
    for n in model.graph.node:
        if n.op_type == "MatMul":
            n.input[0] = "x"
    path = _save(tmp_path, model)
    rng = np.random.default_rng(1)
    data = _data(
        tmp_path,
        x0=rng.normal(size=(6, 4)).astype("f4"),
        state=rng.normal(size=(2, 6, 4)).astype("f4"),
        sr=np.array(2),
    )
    status, _, err = command(path, "--data", data, "--method", "minmax")
    assert status == 1 and "different numbers of samples" in err and "--sample-axis" in err
    status, out, err = command(
        path,
        "--data",
        data,
        "--method",
        "minmax",
        "--sample-axis",
        "state=1",
        "--batch-size",
        "4",
        "--format",
        "json",
    )
    assert status == 0, err
    names = {t["name"] for t in json.loads(out)["tensors"]}
    assert {"w", "x", "y"} <= names
    status, _, err = command(path, "--data", data, "--sample-axis", "nope=1")
    assert status == 1 and "names no input" in err


# --- one line, exit 1, for every failure of the run ---------------------------------------------


def _vi(name, kind=TensorProto.FLOAT, shape=("n", 4)):
    return helper.make_tensor_value_info(name, kind, list(shape))


@pytest.mark.parametrize(
    "case, message",
    [
        ("wrong_dim", "dimension 1 is 5 in the data"),
        ("wrong_rank", "the data has 3 dimensions"),
        ("strings", "holds <U"),
        ("complex", "holds complex64"),
        ("float_for_int", "takes int64 (integers)"),
        ("out_of_range_ids", "ONNX Runtime could not run the model on a batch"),
        ("opset_99", "ONNX Runtime could not load the model"),
        ("unknown_domain", "ONNX Runtime could not load the model"),
        ("cyclic", "ONNX Runtime could not load the model"),
        ("zero_samples", "holds 0 samples"),
        ("zero_batch_dim", "declares a dimension of size 0"),
        ("zero_d", "a 0-d array holds no samples"),
        ("no_inputs", "the model has no inputs"),
        ("sequence_input", "is not a tensor (sequence_type)"),
        ("random_huge", "GiB a batch (limit 256 MiB)"),
    ],
)
def test_run_failures_are_one_line_and_write_nothing(command, tmp_path, case, message):
    x = np.random.default_rng(0).normal(size=(4, 4)).astype("f4")
    model, data = _mlp(), {"x": x}
    if case == "wrong_dim":
        data = {"x": np.zeros((4, 5), "f4")}
    elif case == "wrong_rank":
        data = {"x": np.zeros((4, 4, 1), "f4")}
    elif case == "strings":
        data = {"x": np.array([["a"] * 4] * 4)}
    elif case == "complex":
        data = {"x": x.astype("c8")}
    elif case == "zero_samples":
        data = {"x": np.zeros((0, 4), "f4")}
    elif case == "zero_d":
        data = {"x": np.float32(1)}
    elif case in ("float_for_int", "out_of_range_ids"):
        table = numpy_helper.from_array(np.ones((5, 4), "f4"), "table")
        nodes = [
            helper.make_node("Gather", ["table", "ids"], ["x"]),
            helper.make_node("MatMul", ["x", "w"], ["y"]),
        ]
        w = numpy_helper.from_array(om.M2[:4].copy(), "w")
        model = om.graph_model(
            nodes, [_vi("ids", TensorProto.INT64, ("n",))], [_vi("y", shape=("n", 3))], [table, w]
        )
        ids = np.array([0, 1, 2, 99]) if case == "out_of_range_ids" else np.zeros(4, "f4")
        data = {"ids": ids}
    elif case == "zero_batch_dim":
        model = _mlp()
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 0
    elif case == "opset_99":
        model = _mlp(opset=99)
    elif case == "unknown_domain":
        model = _mlp()
        model.graph.node.insert(0, helper.make_node("Foo", ["x"], ["x2"], domain="my.ops"))
        model.opset_import.append(helper.make_opsetid("my.ops", 1))
    elif case == "cyclic":
        nodes = [
            helper.make_node("Add", ["x", "b"], ["a"]),
            helper.make_node("Relu", ["a"], ["b"]),
            helper.make_node("MatMul", ["a", "w"], ["y"]),
        ]
        w = numpy_helper.from_array(om.M2[:4].copy(), "w")
        model = om.graph_model(nodes, [_vi("x")], [_vi("y", shape=("n", 3))], [w])
    elif case == "no_inputs":
        w = numpy_helper.from_array(om.M2[:4].copy(), "w")
        c = helper.make_node("Constant", [], ["x"], value=numpy_helper.from_array(x, "c"))
        model = om.graph_model(
            [c, helper.make_node("MatMul", ["x", "w"], ["y"])], [], [_vi("y", shape=(4, 3))], [w]
        )
    elif case == "sequence_input":
        model = _mlp()
        seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None)
        model.graph.input.append(seq)
    elif case == "random_huge":
        model = _mlp()
        dims = model.graph.input[0].type.tensor_type.shape.dim
        dims[0].dim_value, dims[1].dim_value = 100000, 100000
    path = _save(tmp_path, model)
    source = "random" if case == "random_huge" else str(_data(tmp_path, **data))
    out_file = tmp_path / "out.json"
    status, out, err = command(
        path,
        "--data",
        source,
        "--method",
        "minmax",
        "--output",
        out_file,
        "--qdq-model",
        tmp_path / "q.onnx",
    )
    assert status == 1, err
    said = [line for line in err.splitlines() if not line.startswith("encanalyze: [")]  # phases
    assert message in err and "Traceback" not in err and len(said) == 1
    assert not out_file.exists() and not (tmp_path / "q.onnx").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_input_names_never_leave_the_data_folder(command, tmp_path):
    model = _mlp()
    model.graph.input[0].name = "../x"
    model.graph.node[0].input[0] = "../x"
    path = _save(tmp_path, model)
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "x.npy", np.ones((2, 4), "f4"))  # what ../x.npy would open
    status, _, err = command(path, "--data", tmp_path / "data")
    assert status == 1 and "cannot name a file in a folder" in err


def test_bad_options_are_refused_before_any_work(command, tmp_path):
    path = _save(tmp_path, _mlp())
    data = _data(tmp_path)
    status, _, err = command(
        path, "--data", data, "--bits", "6", "--qdq-model", tmp_path / "q.onnx"
    )
    assert status == 2 and "QDQ models take 4, 8, 16 bits" in err
    status, _, err = command(path, "--data", data, "--sample-axis", "x")
    assert status == 2 and "NAME=AXIS" in err


# --- data loss ----------------------------------------------------------------------------------


def test_outputs_never_overwrite_data_model_or_each_other(command, tmp_path):
    model = _mlp()
    path = om.save_external(model, tmp_path, location="weights.bin")
    data = _data(tmp_path)
    folder = tmp_path / "folder"
    folder.mkdir()
    np.save(folder / "x.npy", np.ones((3, 4), "f4"))
    before = {p: p.read_bytes() for p in (data, tmp_path / "weights.bin", folder / "x.npy")}
    cases = [
        (["--data", data, "--output", data], "is the input file"),
        (["--data", data, "--qdq-model", data], "is the input file"),
        (["--data", folder, "--output", folder / "x.npy"], "is the input file"),
        (["--data", folder, "--output", folder / "new.json"], "inside the --data folder"),
        (["--data", data, "--output", tmp_path / "weights.bin"], "is the input file"),
        (
            ["--data", data, "--qdq-model", tmp_path / "q.onnx", "--output", tmp_path / "q.onnx"],
            "name the same file",
        ),
        (
            [
                "--data",
                data,
                "--qdq-model",
                tmp_path / "q.onnx",
                "--output",
                tmp_path / "q.onnx.data",
            ],
            "external data goes",
        ),
    ]
    for extra, message in cases:
        status, _, err = command(path, *extra)
        assert status == 2 and message in err, (extra, err)
    assert {p: p.read_bytes() for p in before} == before


def test_qdq_model_is_moved_into_place_only_after_everything_succeeded(
    command, tmp_path, monkeypatch
):
    from encanalyze.onnx import _qdq

    path, data = _save(tmp_path, _mlp()), _data(tmp_path)
    qdq, out = tmp_path / "q.onnx", tmp_path / "e.json"
    qdq.write_bytes(b"previous model")
    os.chmod(qdq, 0o640)

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    from encanalyze.cli import _model_job

    monkeypatch.setattr(_model_job, "write_json", fail)
    status, _, err = command(path, "--data", data, "--qdq-model", qdq, "--output", out)
    assert status == 1 and "disk full" in err
    assert qdq.read_bytes() == b"previous model" and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "m.onnx", "q.onnx"]
    monkeypatch.undo()
    status, _, err = command(path, "--data", data, "--qdq-model", qdq, "--output", out)
    assert status == 0, err
    onnx.checker.check_model(str(qdq))
    assert os.stat(qdq).st_mode & 0o777 == 0o640  # the replaced file's mode
    # the library writes through the same transaction: a failure leaves the old file

    def half_written(model, result, path, **kwargs):
        path.write_bytes(b"half a model")
        raise RuntimeError("disk full")

    monkeypatch.setattr(_qdq, "stage_qdq_model", half_written)
    result = calibrate(str(path), [np.ones((2, 4), "f4")])
    before = qdq.read_bytes()
    with pytest.raises(RuntimeError):
        write_qdq_model(str(path), result, qdq)
    assert qdq.read_bytes() == before


def test_large_qdq_models_rerun_and_keep_the_umask_on_the_sidecar(command, tmp_path, monkeypatch):
    from encanalyze.onnx import _calibrate, _qdq

    monkeypatch.setattr(_calibrate, "INLINE_LIMIT", 0)
    monkeypatch.setattr(_qdq, "INLINE_LIMIT", 0)
    weight = np.random.default_rng(0).normal(size=(64, 32)).astype("f4")  # past ORT's 1 KiB
    path, qdq = _save(tmp_path, _mlp(weight=weight)), tmp_path / "q.onnx"
    data = _data(tmp_path, x=np.ones((4, 64), "f4"))
    old = os.umask(0o022)
    try:
        for _ in range(2):  # the same command twice: the sidecar exists the second time
            status, _, err = command(path, "--data", data, "--qdq-model", qdq)
            assert status == 0, err
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "q.onnx.data").st_mode & 0o777 == 0o644
    onnx.checker.check_model(str(qdq))


# --- dead activations, selection, plots ----------------------------------------------------------


def test_an_activation_without_finite_values_is_left_in_float_and_said(command, tmp_path):
    """Log of zeros is -inf everywhere: that tensor stays float, the rest is calibrated."""
    w = numpy_helper.from_array(om.M2[:4].copy(), "w")
    nodes = [
        helper.make_node("Log", ["x"], ["l"]),
        helper.make_node("MatMul", ["l", "w"], ["y"]),
        helper.make_node("MatMul", ["x", "w"], ["y2"]),
    ]
    model = om.graph_model(
        nodes, [_vi("x")], [_vi("y", shape=("n", 3)), _vi("y2", shape=("n", 3))], [w]
    )
    path = _save(tmp_path, model)
    data = _data(tmp_path, x=np.zeros((4, 4), "f4"))
    out, qdq = tmp_path / "e.json", tmp_path / "q.onnx"
    status, stdout, err = command(
        path,
        "--data",
        data,
        "--method",
        "minmax",
        "--activation-method",
        "percentile",
        "--output",
        out,
        "--qdq-model",
        qdq,
        "--format",
        "json",
    )
    assert status == 0, err
    assert "l left in floating point: it never held a finite value" in err
    report = json.loads(stdout)
    assert "l" in {u["name"] for u in report["unquantized"]}
    assert "l" not in {t["name"] for t in report["tensors"]} and "x" in {
        t["name"] for t in report["tensors"]
    }
    written = json.loads(out.read_text())
    assert "l" in written["unquantized"]
    assert "l" not in {e["name"] for e in written["activation_encodings"]}
    # choosing among methods: no method encodes it, the others are chosen as usual
    status, stdout, err = command(
        path,
        "--data",
        data,
        "--format",
        "json",
        "--qdq-model",
        qdq,
        "--holdout",
        "0",
        "--batch-size",
        "2",
    )
    assert status == 0, err
    report = json.loads(stdout)
    assert "l" in {u["name"] for u in report["unquantized"]}
    assert report["choice"]["measured_on"] == "calibration"


def test_include_exclude_and_plot_work_for_the_model_job(command, tmp_path):
    pytest.importorskip("matplotlib")
    path, data = _save(tmp_path, _mlp()), _data(tmp_path)
    status, out, err = command(
        path,
        "--data",
        data,
        "--exclude",
        "y",
        "--format",
        "json",
        "--plot",
        tmp_path / "plots",
        "--method",
        "minmax",
    )
    assert status == 0, err
    assert {t["name"] for t in json.loads(out)["tensors"]} == {"w", "x"}
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["w.png"]
    status, out, _ = command(path, "--data", data, "--include", "w", "--format", "json")
    assert {t["name"] for t in json.loads(out)["tensors"]} == {"w"}


def test_api_and_command_share_the_percentile_default(command, tmp_path):
    path, data = _save(tmp_path, _mlp()), _data(tmp_path, n=64)
    status, out, _ = command(
        path,
        "--data",
        data,
        "--format",
        "json",
        "--batch-size",
        "64",
        "--activation-method",
        "percentile",
        "--holdout",
        "0",
    )
    command = {t["name"]: t for t in json.loads(out)["tensors"]}
    x = np.load(data)["x"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        api = calibrate(str(path), [x])
    assert command["x"]["max"][0] == pytest.approx(float(api["x"].max[0]), rel=1e-6)
    plain = calibrate(str(path), [x], activation_options={"percentile": 100})
    assert float(plain["x"].max[0]) == pytest.approx(float(x.max()), rel=1e-6)
    assert float(api["x"].max[0]) < float(x.max())


def test_one_progress_bar_covers_the_whole_model_job(tmp_path):
    import sys

    from tests.terminal import on_terminal

    path, data = _save(tmp_path, _mlp()), _data(tmp_path)
    cmd = [
        sys.executable,
        "-m",
        "encanalyze",
        "calibrate",
        str(path),
        "--data",
        str(data),
        "--batch-size",
        "4",
        "--qdq-model",
        str(tmp_path / "q.onnx"),
    ]
    status, _, terminal = on_terminal(cmd, columns=160)
    assert status == 0
    # the weight, 2 calibration batches (the third held out), the choice among 5 activation
    # methods, the QDQ model, its SQNR on 1 held-out and 2 calibration batches: 1 + 2 + 1 + 1 + 3
    stages = (
        b"weight w",
        b"batch 2",
        b"choosing the encodings (5 options)",
        b"writing the QDQ model",
        b"SQNR batch 2",
        b"/8 ",  # the total (tqdm may skip drawing the last step before it closes)
    )
    for stage in stages:
        assert stage in terminal, stage


def test_tensor_job_on_an_onnx_model_takes_operator_weights_and_says_so(command, tmp_path):
    bn = [numpy_helper.from_array(np.ones(3, "f4") * v, n) for v, n in ((1, "s"), (0, "b"))]
    model = _mlp()
    model.graph.initializer.extend(bn)
    model.graph.initializer.append(numpy_helper.from_array(np.array([2.0], "f4"), "k"))
    path = _save(tmp_path, model)
    status, out, err = command(path, "--method", "minmax", "--format", "json")
    assert status == 0, err
    assert [t["name"] for t in json.loads(out)["tensors"]] == ["w"]
    assert "3 other float initializers" in err and err.count("note") == 1  # no "too small" notes
    status, out, err = command(path, "--method", "minmax", "--format", "json", "--include", "s")
    assert [t["name"] for t in json.loads(out)["tensors"]] == ["s"]


def test_the_first_command_says_it_used_the_built_in_samples(command):
    status, out, err = command("--method", "minmax")
    assert status == 0 and "built-in sample tensors" in err


def test_per_channel_activations_with_data(command, tmp_path):
    path, data = _save(tmp_path, _mlp()), _data(tmp_path)
    out = tmp_path / "e.json"
    status, stdout, err = command(
        path,
        "--data",
        data,
        "--per-channel",
        "1",
        "--format",
        "json",
        "--output",
        out,
        "--activation-method",
        "minmax",
        "--holdout",
        "0",
    )
    assert status == 0, err
    rows = {t["name"]: t for t in json.loads(stdout)["tensors"]}
    assert rows["x"]["axis"] == 1 and len(rows["x"]["scale"]) == 4
    assert rows["y"]["axis"] == 1 and len(rows["y"]["scale"]) == 3
    x = np.load(data)["x"]
    library = ea.MinMaxEncodingAnalyzer((1, 4))
    library.update_stats(x)
    scale, _ = ea.to_scale_offset(*library.compute_encodings(255, False), 255, False)
    np.testing.assert_allclose(rows["x"]["scale"], scale.reshape(-1), rtol=1e-6)
    written = {e["name"]: e for e in json.loads(out.read_text())["activation_encodings"]}
    assert written["x"]["enc_type"] == "PER_CHANNEL"
    status, _, err = command(
        path, "--data", data, "--per-channel", "1", "--qdq-model", tmp_path / "q.onnx"
    )
    assert status == 2 and "per channel" in err
    result = calibrate(str(path), [x], activations="minmax", activation_axis=1)
    with pytest.raises(ValueError, match="per tensor"):
        write_qdq_model(str(path), result, tmp_path / "q.onnx")


def test_the_model_job_defaults_to_asymmetric_activations_and_symmetric_weights(command, tmp_path):
    path, data = _save(tmp_path, _mlp()), _data(tmp_path)
    out, qdq = tmp_path / "e.json", tmp_path / "q.onnx"
    status, stdout, err = command(
        path, "--data", data, "--output", out, "--qdq-model", qdq, "--method", "minmax"
    )
    assert status == 0, err
    assert "grids: activations uint8 asymmetric, weights int8 symmetric" in stdout
    written = json.loads(out.read_text())
    assert written["grids"] == "activations uint8 asymmetric, weights int8 symmetric"
    assert {e["is_sym"] for e in written["param_encodings"]} == {True}
    assert {e["is_sym"] for e in written["activation_encodings"]} == {False}
    model = onnx.load(str(qdq))
    zero_points = {
        i.name: numpy_helper.to_array(i) for i in model.graph.initializer if "zero_point" in i.name
    }
    w_zp = [v for k, v in zero_points.items() if k.startswith("w")]
    x_zp = [v for k, v in zero_points.items() if k.startswith("x")]
    assert w_zp and all(v.dtype == np.int8 and not v.any() for v in w_zp)
    assert x_zp and all(v.dtype == np.uint8 for v in x_zp)
    status, stdout, _ = command(
        path,
        "--data",
        data,
        "--weight-grid",
        "asymmetric",
        "--format",
        "json",
        "--method",
        "minmax",
    )
    assert json.loads(stdout)["grids"] == "activations uint8 asymmetric, weights uint8 asymmetric"
    status, _, err = command(path, "--weight-grid", "asymmetric")
    assert status == 2 and "--weight-grid needs --data" in err


def test_weight_grid_of_the_python_calibrators():
    torch = pytest.importorskip("torch")
    from encanalyze.torch import calibrate as calibrate_torch

    result = calibrate(_mlp(), [np.ones((2, 4), "f4")], weight_symmetric=True)
    assert result["w"].symmetric and not result["x"].symmetric
    lo, hi = (np.asarray(a) for a in (result["w"].min, result["w"].max))
    assert np.all(-lo >= hi)  # a symmetric grid: ceil(n / 2) steps below zero
    assert result.onnx_qdq()["tensors"]["w"]["zero_point_dtype"] == "int8"
    assert result.onnx_qdq()["tensors"]["x"]["zero_point_dtype"] == "uint8"
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    result = calibrate_torch(model, [torch.randn(2, 4)], weight_symmetric=True)
    assert result["0.weight"].symmetric and not result["0:input"].symmetric


def test_holdout_is_checked_and_split(command, tmp_path):
    path, data = _save(tmp_path, _mlp()), _data(tmp_path, n=16)
    status, _, err = command(path, "--data", data, "--holdout", "1")
    assert status == 2 and "--holdout must be in [0, 1)" in err
    status, out, err = command(
        path,
        "--data",
        data,
        "--batch-size",
        "4",
        "--format",
        "json",
        "--qdq-model",
        tmp_path / "q.onnx",
    )
    assert status == 0, err
    report = json.loads(out)
    choice = report["choice"]
    assert choice["measured_on"] == "held-out"
    assert report["qdq_model"]["measured_on"] == "held-out"
    acts = ("minmax", "percentile", "sqnr", "mse", "entropy")
    assert set(choice["emulated_output_sqnr_db"]) == set(acts)  # min-max weights (--method auto)
    assert choice["default"] == "percentile" and choice["simple"] == "minmax"
    assert choice["weights"] is None and set(choice["gain_db"]) == set(acts) - {"percentile"}
    checked = choice["qdq_output_sqnr_db"]
    below = checked[choice["activations"]] < checked["minmax"]
    assert not below or "within their noise" in choice["note"]
    assert report["qdq_model"]["output_sqnr_db"]["y"] == pytest.approx(
        checked[choice["activations"]]
    )
    assert {t["method"] for t in report["tensors"] if t["kind"] == "activation"} == {
        choice["activations"]
    }
    assert {t["method"] for t in report["tensors"] if t["kind"] == "param"} == {"minmax"}
    # split by samples: 16 samples in one batch give 12 to calibrate and 4 held out, said on
    # stdout; one sample is not split
    status, out, err = command(path, "--data", data, "--batch-size", "16", "--format", "json")
    assert status == 0, err
    split = json.loads(out)["data"]
    assert split["calibration"] == {"samples": 12, "batches": 1}
    assert split["held_out"] == {"samples": 4, "batches": 1} and split["holdout"] == 0.25
    status, out, err = command(path, "--data", data, "--batch-size", "16")
    assert status == 0, err
    assert out.splitlines()[-1] == (
        "data: 12 samples (1 batch) calibrate, 4 samples (1 batch) held out to judge the "
        "output (--holdout 0.25)"
    )
    status, out, err = command(path, "--data", _data(tmp_path, n=1), "--format", "json")
    assert status == 0 and "one sample of data: nothing held out" in err
    assert json.loads(out)["choice"]["measured_on"] == "calibration"


@pytest.mark.slow  # (every weight option: the full matrix)
def test_method_all_chooses_the_weights_too(command, tmp_path):
    path, data = _save(tmp_path, _mlp()), _data(tmp_path, n=16)
    acts = ("minmax", "percentile", "sqnr", "mse", "entropy")
    # --method all: every weight option too, with the activations kept
    status, out, err = command(
        path, "--data", data, "--batch-size", "4", "--format", "json", "--method", "all"
    )
    assert status == 0, err
    choice = json.loads(out)["choice"]
    emulated = choice["emulated_output_sqnr_db"]
    assert {f"{m}+minmax" for m in acts} <= set(emulated)
    weights = {"best-tensor-sqnr", "minmax", "percentile", "sqnr", "mse", "entropy", "ema"}
    assert any({f"{a}+{w}" for w in weights} <= set(emulated) for a in acts)
    assert choice["default"] == "percentile+minmax" and choice["simple"] == "minmax+minmax"
    label = f"{choice['activations']}+{choice['weights']}"
    checked = choice["qdq_output_sqnr_db"]
    below = checked[label] < checked["minmax+minmax"]
    assert not below or "within their noise" in choice["note"]


def test_auto_without_a_qdq_grid_says_it_used_percentile(command, tmp_path):
    path, data = _save(tmp_path, _mlp()), _data(tmp_path)
    status, out, err = command(path, "--data", data, "--bits", "6", "--format", "json")
    assert status == 0, err
    assert "auto needs a QDQ model" in err
    assert {t["method"] for t in json.loads(out)["tensors"] if t["kind"] == "activation"} == {
        "percentile"
    }


def test_method_auto_means_min_max_weights_whatever_the_activation_method():
    """Issue 35: ``--method auto`` gave every weight method's search (300 s on a BERT-sized
    encoder) once ``--activation-method`` named a method; auto means min-max weights."""
    from encanalyze import cli
    from encanalyze.cli._data import AUTO_WEIGHTS, weight_methods

    parser = cli.build_parser()
    for extra in ([], ["--activation-method", "percentile"], ["--activation-method", "sqnr"]):
        args = parser.parse_args(["calibrate", "m.onnx", "--data", "random", *extra])
        assert list(weight_methods(args)) == list(AUTO_WEIGHTS) == ["minmax"]
    args = parser.parse_args(["calibrate", "m.onnx", "--data", "random", "--method", "all"])
    assert len(weight_methods(args)) > 1


def test_the_reports_summary_names_the_weights_method_it_did_not_choose(command, tmp_path):
    """With one weight method (the default's min-max) the choice is the activations' only: the
    summary names the weights' method instead of 'None'."""
    path = _save(tmp_path, _mlp())
    report = tmp_path / "r.html"
    status, out, err = command(path, "--data", _data(tmp_path, n=64), "--report", report)
    assert status == 0, err
    page = report.read_text()
    assert "weights None" not in page and "weights minmax (the only method)" in page


def test_integer_data_for_a_float_input_is_converted_and_said(command, tmp_path):
    """uint8 image-like data for a float input runs (values as they are) with one note."""
    path = _save(tmp_path, _mlp())
    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 4)).astype("u1")
    minmax = ("--method", "minmax", "--activation-method", "minmax")
    status, out, err = command(path, "--data", _data(tmp_path, x=pixels), *minmax)
    assert status == 0, err
    said = [line for line in err.splitlines() if "converted as they are" in line]
    assert len(said) == 1 and "uint8 -> float32" in said[0] and "'x'" in said[0]
