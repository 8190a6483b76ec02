"""The real ``encanalyze`` command, run in a subprocess on files the tests write."""

import json
import subprocess
import sys

import numpy as np
import pytest

import encanalyze as ea
import encanalyze.cli

RNG = np.random.default_rng(3)
WEIGHT = (RNG.standard_normal((8, 4, 3, 3)) * 0.1).astype(np.float32)
ACT = np.abs(RNG.standard_normal((32, 16))).astype(np.float32)


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "encanalyze", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def ok_json(*args):
    out = run(*args, "--format", "json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def library_encodings(x, method, shape=(1,), bits=8, symmetric=False, block_size=None):
    cls = ea.METHODS[method].analyzer
    kwargs = {"percentile": 99.99} if method == "percentile" else {}
    analyzer = cls(shape, block_size=block_size, **kwargs)
    analyzer.update_stats(x)
    lo, hi = analyzer.compute_encodings(2**bits - 1, symmetric)
    scale, offset = ea.to_scale_offset(lo, hi, 2**bits - 1, symmetric)
    return [np.asarray(a).reshape(-1) for a in (lo, hi, scale, offset)]


def _write_onnx(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(WEIGHT, "conv"), numpy_helper.from_array(ACT, "act")]
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=inits,
    )
    onnx.save(helper.make_model(graph), str(path))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    d = tmp_path_factory.mktemp("tensors")
    np.save(d / "weight.npy", WEIGHT)
    np.savez(d / "model.npz", conv=WEIGHT, act=ACT)
    safetensors_numpy.save_file({"conv": WEIGHT, "act": ACT}, str(d / "model.safetensors"))
    torch.save(
        {"layer": {"conv": torch.from_numpy(WEIGHT)}, "act": torch.from_numpy(ACT)},
        d / "model.pt",
    )
    _write_onnx(d / "model.onnx")
    return d, ["weight.npy", "model.npz", "model.safetensors", "model.pt", "model.onnx"]


def test_builtin_samples_by_default():
    out = run()
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["tensor", "shape", "method"]
    rows = lines[2:-1]
    assert {line.split()[0] for line in rows} == {
        "conv.weight", "fc.weight", "relu.out", "attn.logits", "ffn.out", "const"
    }  # fmt: skip
    num_methods = len(ea.cli.METHODS)
    assert len(rows) == 6 * num_methods and sum(line.endswith("*") for line in rows) == 6
    assert run("calibrate").stdout == out.stdout  # deterministic; the explicit command


@pytest.mark.parametrize("index", range(5))
def test_every_format_matches_the_library(files, index):
    d, names = files
    report = ok_json("calibrate", d / names[index])
    by_name = {t["name"].split(".")[-1]: t for t in report["tensors"]}
    conv = by_name.get("conv", by_name.get("weight"))
    assert conv["shape"] == [8, 4, 3, 3] and conv["enc_type"] == "PER_TENSOR"
    if names[index] != "weight.npy":
        assert by_name["act"]["shape"] == [32, 16]
    assert set(conv["methods"]) == set(ea.cli.METHODS)  # every registered method, by default
    for method in ea.cli.METHODS:
        lo, hi, scale, offset = library_encodings(WEIGHT, method)
        got = conv["methods"][method]
        np.testing.assert_array_equal(got["min"], lo)
        np.testing.assert_array_equal(got["max"], hi)
        np.testing.assert_allclose(got["scale"], scale, rtol=1e-6)
        assert got["offset"] == offset.tolist()
        assert 0 <= got["clipped_fraction"] <= 1 and got["sqnr_db"] > 20
    best = max(conv["methods"], key=lambda m: conv["methods"][m]["sqnr_db"])
    assert conv["best"] == best


def test_sqnr_in_the_report_is_measured_on_the_tensor(tmp_path):
    np.save(tmp_path / "weight.npy", WEIGHT)
    report = ok_json("calibrate", tmp_path / "weight.npy", "--method", "minmax", "--bits", "4")
    r = report["tensors"][0]["methods"]["minmax"]
    s, o = r["scale"][0], r["offset"][0]
    x = WEIGHT.astype(np.float64)
    x_hat = (np.clip(np.round(x / s) - o, 0, 15) + o) * s
    want = 10 * np.log10(np.sum(x**2) / np.sum((x - x_hat) ** 2))
    assert abs(r["sqnr_db"] - want) < 1e-9 and r["clipped_fraction"] == 0


def test_per_channel_and_block_wise(tmp_path):
    np.savez(tmp_path / "model.npz", conv=WEIGHT, act=ACT)
    report = ok_json(
        "calibrate", tmp_path / "model.npz", "--per-channel", "0", "--symmetric",
        "--method", "minmax", "--include", "conv",
    )  # fmt: skip
    (conv,) = report["tensors"]
    assert conv["encoding_shape"] == [8, 1, 1, 1] and conv["enc_type"] == "PER_CHANNEL"
    _, hi, _, _ = library_encodings(WEIGHT, "minmax", (8, 1, 1, 1), symmetric=True)
    np.testing.assert_array_equal(conv["methods"]["minmax"]["max"], hi)
    assert conv["methods"]["minmax"]["offset"] == [-128] * 8
    report = ok_json(
        "calibrate", tmp_path / "model.npz", "--per-channel", "1", "--block-size", "8",
        "--block-axis", "0", "--include", "act", "--method", "percentile",
    )  # fmt: skip
    (act,) = report["tensors"]
    assert act["encoding_shape"] == [4, 16] and act["enc_type"] == "PER_BLOCK"
    lo, *_ = library_encodings(ACT, "percentile", (4, 16), block_size=(8, 1))
    np.testing.assert_array_equal(act["methods"]["percentile"]["min"], lo)


def test_aimet_and_onnx_exports(tmp_path):
    np.savez(tmp_path / "model.npz", conv=WEIGHT, act=ACT)
    out = tmp_path / "enc.json"
    report = ok_json("calibrate", tmp_path / "model.npz", "--output", out, "--symmetric")
    enc = json.loads(out.read_text())
    assert enc["version"] == "1.0.0" and enc["activation_encodings"] == []
    by_name = {p["name"]: p for p in enc["param_encodings"]}
    for t in report["tensors"]:
        p = by_name[t["name"]]
        best = t["methods"][t["best"]]
        assert (p["dtype"], p["bw"], p["is_sym"], p["enc_type"]) == ("INT", 8, True, "PER_TENSOR")
        assert p["offset"] == [-128]
        np.testing.assert_allclose(p["scale"], [(best["max"][0] - best["min"][0]) / 255], 1e-6)
    out_q = tmp_path / "qdq.json"
    report = ok_json(
        "calibrate", tmp_path / "model.npz", "--output", out_q, "--output-format", "onnx-qdq",
        "--per-channel", "0", "--method", "minmax",
    )  # fmt: skip
    conv = json.loads(out_q.read_text())["tensors"]["conv"]
    assert conv["axis"] == 0 and conv["zero_point_dtype"] == "uint8" and len(conv["scale"]) == 8
    offsets = {t["name"]: t["methods"]["minmax"]["offset"] for t in report["tensors"]}
    assert conv["zero_point"] == [-o for o in offsets["conv"]]
    assert all(0 <= z <= 255 for z in conv["zero_point"])
    out_b = tmp_path / "block.json"
    result = run(
        "calibrate", tmp_path / "model.npz", "--include", "conv", "--per-channel", "0",
        "--block-size", "2", "--output", out_b,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (p,) = json.loads(out_b.read_text())["param_encodings"]
    assert p["enc_type"] == "PER_BLOCK" and p["block_size"] == 2 and len(p["scale"]) == 16


def test_plots_are_valid_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    np.savez(tmp_path / "model.npz", conv=WEIGHT, act=ACT)
    out = run("calibrate", tmp_path / "model.npz", "--plot", tmp_path / "plots")
    assert out.returncode == 0, out.stderr
    pngs = sorted((tmp_path / "plots").iterdir())
    assert [p.name for p in pngs] == ["act.png", "conv.png"]
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(p)
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0


def test_include_exclude_and_skips(tmp_path):
    np.savez(
        tmp_path / "mixed.npz", good=ACT, ints=np.arange(10), one=np.ones(1, np.float32),
        other=ACT * 2,
    )  # fmt: skip
    out = run("calibrate", tmp_path / "mixed.npz", "--exclude", "other", "--format", "json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [t["name"] for t in report["tensors"]] == ["good"]
    reasons = {s["name"]: s["reason"] for s in report["skipped"]}
    assert "not floating point" in reasons["ints"] and "too small" in reasons["one"]
    assert "skipped ints: not floating point (int64)" in out.stderr
    out = run("calibrate", tmp_path / "mixed.npz", "--include", "o*", "--format", "json")
    assert [t["name"] for t in json.loads(out.stdout)["tensors"]] == ["other"]


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["missing.npy"], 1, "missing.npy: no such file"),
        (["bad.txt"], 1, "unknown format '.txt'"),
        (["corrupt.npy"], 1, "corrupt.npy: unreadable .npy file"),
        (["corrupt.safetensors"], 1, "truncated safetensors"),
        (["notensors.pt"], 1, "holds no tensors"),
        (["ints.npy"], 1, "no tensor could be calibrated"),
        (["good.npy", "--bits", "1"], 2, "--bits must be in 2..16"),
        (["good.npy", "--percentile", "30"], 2, "--percentile: percentile must be in [50, 100]"),
        (["good.npy", "--num-bins", "0"], 2, "--num-bins must be at least 8"),
        (["good.npy", "--gamma", "-1"], 2, "--gamma must be a finite number >= 0"),
        (["good.npy", "--block-size", "4"], 2, "--block-size needs --per-channel"),
        (["good.npy", "--method", "magic"], 2, "invalid choice: 'magic'"),
        (["good.npy", "--bits", "eight"], 2, "invalid int value: 'eight'"),
        (["good.npy", "--include", "nothing*"], 2, "no tensor matches"),
        (["good.npy", "--device", "cuda"], 2, "--device needs --backend torch or cupy"),
    ],
)
def test_errors(tmp_path, args, code, message):
    torch = pytest.importorskip("torch")
    np.save(tmp_path / "good.npy", ACT)
    np.save(tmp_path / "ints.npy", np.arange(12))
    (tmp_path / "bad.txt").write_text("1 2 3")
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x05\x00")
    torch.save({"step": 3, "name": "x"}, tmp_path / "notensors.pt")
    out_file = tmp_path / "out.json"
    out = run("calibrate", *args, "--output", out_file, cwd=tmp_path)
    assert out.returncode == code, out.stderr
    errors = [line for line in out.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and message in errors[0], out.stderr
    assert not out_file.exists()  # nothing (partially) written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.json")]


def test_unwritable_output_is_refused_before_any_work(tmp_path):
    np.save(tmp_path / "good.npy", ACT)
    out = run("calibrate", tmp_path / "good.npy", "--output", tmp_path / "no" / "dir" / "e.json")
    assert out.returncode == 2 and "no/dir does not exist" in out.stderr
    assert ".tmp" not in out.stderr and not out.stdout
    assert not (tmp_path / "no").exists()


def test_progress_bar_only_on_a_terminal(tmp_path):
    from tests.terminal import on_terminal

    np.savez(tmp_path / "two.npz", a=ACT, b=ACT * 3)
    cmd = [sys.executable, "-m", "encanalyze", "calibrate", str(tmp_path / "two.npz")]
    status, stdout, terminal = on_terminal(cmd)
    assert status == 0
    assert b"calibrating" in terminal and b"100%|" in terminal  # tqdm: values done, time left
    assert terminal.count(b"%|") >= 2 * 6  # moves within each tensor: once per method
    assert b"2/2" not in stdout
    assert "2/2" not in run("calibrate", tmp_path / "two.npz").stderr  # not when piped


def test_torch_backend_and_bfloat16_safetensors(tmp_path):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    weights = {"w": torch.from_numpy(ACT).bfloat16()}
    safetensors_torch.save_file(weights, str(tmp_path / "bf16.safetensors"))
    a = ok_json("calibrate", tmp_path / "bf16.safetensors", "--method", "minmax")
    b = ok_json(
        "calibrate", tmp_path / "bf16.safetensors", "--method", "minmax", "--backend", "torch",
        "--device", "cpu",
    )  # fmt: skip
    want = torch.from_numpy(ACT).bfloat16().float().numpy()
    assert a["tensors"][0]["methods"]["minmax"]["max"] == [float(want.max())]
    assert a["tensors"][0]["methods"] == b["tensors"][0]["methods"]


def test_tf_enhanced_can_be_named_but_all_leaves_it_out(tmp_path, capsys):
    """The reference's TF-Enhanced method runs when named; ``--method all`` keeps to the
    command's usual set."""
    from encanalyze.cli import main

    path = tmp_path / "t.npy"
    np.save(path, np.random.default_rng(0).normal(size=(64, 16)).astype("f4"))
    runs = {}
    for method in ("tf_enhanced", "all"):
        assert main(["calibrate", str(path), "--method", method, "--format", "json"]) == 0
        runs[method] = json.loads(capsys.readouterr().out)
    named, every = (json.dumps(runs[m]) for m in ("tf_enhanced", "all"))
    assert '"tf_enhanced"' in named and '"tf_enhanced"' not in every and '"entropy"' in every
