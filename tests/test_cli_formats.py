"""The command's float and block number formats: every method's scales and SQNR on the real
grid, the encodings files read back, and the options that do not fit refused."""

import json

import numpy as np
import pytest

from encanalyze import formats
from encanalyze.cli import main


def sqnr(w, q) -> float:
    w, q = w.astype(np.float64), np.asarray(q, dtype=np.float64)
    return float(10 * np.log10(np.sum(w * w) / np.sum((w - q) ** 2)))


@pytest.fixture
def weights(tmp_path, rng):
    w = (rng.standard_t(4, (48, 256)) * 0.05).astype(np.float32)
    a = np.maximum(rng.normal(0, 1, (16, 64)), 0).astype(np.float32)
    np.savez(tmp_path / "t.npz", w=w, a=a)
    return tmp_path / "t.npz", {"w": w, "a": a}


def test_fp8_every_method_per_channel(command, weights, tmp_path):
    path, tensors = weights
    out = command(
        path, "--number-format", "float8_e4m3fn", "--per-channel", "0", "--format", "json"
    ).json()
    for entry in out["tensors"]:
        x = tensors[entry["name"]]
        assert entry["number_format"] == "float8_e4m3fn"
        assert set(entry["methods"]) == set(formats.FLOAT_METHODS)
        for method, r in entry["methods"].items():
            scale = np.asarray(r["scale"], dtype=np.float32).reshape(-1, 1)
            q = formats.quantize_scaled(x, formats.E4M3FN, scale=scale)
            assert r["sqnr_db"] == pytest.approx(sqnr(x, q), abs=1e-9), method
            np.testing.assert_allclose(r["max"], scale[:, 0] * 448, rtol=1e-7)
        amax = formats.amax_scale(x, formats.E4M3FN, axis=1)[:, 0]
        np.testing.assert_array_equal(np.float32(entry["methods"]["minmax"]["scale"]), amax)
        assert entry["methods"]["minmax"]["clipped_fraction"] == 0
        for method in formats.SEARCH_METHODS:  # the searches lose to amax on no row
            scale = np.asarray(entry["methods"][method]["scale"], dtype=np.float32)[:, None]
            error = [
                np.sum((x.astype(np.float64) - formats.quantize_scaled(x, formats.E4M3FN, scale=s))
                       ** 2, axis=1)
                for s in (scale, amax[:, None])
            ]  # fmt: skip
            assert np.all(error[0] <= error[1])
        best = max(entry["methods"], key=lambda m: entry["methods"][m]["sqnr_db"])
        assert entry["best"] == best
    # heavy-tailed weights: the searched scales beat amax scaling on the tensor itself
    w = next(e for e in out["tensors"] if e["name"] == "w")["methods"]
    assert w["mse"]["sqnr_db"] > w["minmax"]["sqnr_db"]


def test_mx_and_nvfp4_files_read_back(command, weights, tmp_path):
    path, tensors = weights
    for name, scheme, fmt in (("mxfp4", "mx", formats.E2M1), ("mxint8", "mx", formats.INT8)):
        target = tmp_path / f"{name}.json"
        out = command(path, "--number-format", name, "--output", target, "--format", "json").json()
        saved = json.loads(target.read_text())
        assert saved["number_format"] == name
        for entry in out["tensors"]:
            x = tensors[entry["name"]]
            r = entry["methods"]
            assert r["mse"]["sqnr_db"] >= r["minmax"]["sqnr_db"]  # never worse than floor
            enc = formats.from_json(saved["tensors"][entry["name"]])
            assert enc["scheme"] == scheme and enc["format"] == fmt and enc["block_axis"] == 1
            q = formats.mx_dequantize(*formats.mx_quantize(x, fmt, exponents=enc["scales"]))
            assert sqnr(x, q) == pytest.approx(r[entry["best"]]["sqnr_db"], abs=1e-9)
            floor = formats.mx_dequantize(*formats.mx_quantize(x, fmt))
            assert sqnr(x, floor) == pytest.approx(r["minmax"]["sqnr_db"], abs=1e-9)
    target = tmp_path / "nvfp4.json"
    out = command(path, "--number-format", "nvfp4", "--output", target, "--format", "json").json()
    saved = json.loads(target.read_text())["tensors"]
    for entry in out["tensors"]:
        x = tensors[entry["name"]]
        enc = formats.from_json(saved[entry["name"]])
        ts = enc["tensor_scale"]
        np.testing.assert_array_equal(ts, formats.nvfp4_tensor_scale(x))
        q = formats.nvfp4_dequantize(*formats.nvfp4_quantize(x, ts, enc["scales"]), ts)
        r = entry["methods"]
        assert sqnr(x, q) == pytest.approx(r[entry["best"]]["sqnr_db"], abs=1e-9)
        assert r["mse"]["sqnr_db"] >= r["minmax"]["sqnr_db"]
        amax = formats.nvfp4_dequantize(*formats.nvfp4_quantize(x, ts), ts)
        assert sqnr(x, amax) == pytest.approx(r["minmax"]["sqnr_db"], abs=1e-9)


def test_fp8_onnx_qdq_and_block_layouts(command, weights, tmp_path):
    path, tensors = weights
    target = tmp_path / "qdq.json"
    command(
        path,
        "--number-format",
        "float8_e5m2",
        "--method",
        "sqnr",
        "--per-channel",
        "0",
        "--output-format",
        "onnx-qdq",
        "--output",
        target,
        "--format",
        "json",
    ).json()
    saved = json.loads(target.read_text())["tensors"]["w"]
    assert saved["zero_point_dtype"] == "FLOAT8E5M2" and saved["axis"] == 0
    assert len(saved["scale"]) == 48 and saved["zero_point"] == [0.0] * 48
    target = tmp_path / "blocks.json"
    out = command(
        path,
        "--number-format",
        "float4_e2m1",
        "--per-channel",
        "0",
        "--block-size",
        "32",
        "--output",
        target,
        "--include",
        "w",
        "--format",
        "json",
    ).json()
    entry = out["tensors"][0]
    assert entry["encoding_shape"] == [48, 8] and entry["enc_type"] == "PER_BLOCK"
    saved = json.loads(target.read_text())["tensors"]["w"]
    scales = np.asarray(saved["scales"], dtype=np.float32)
    assert scales.shape == (48, 8) and saved["block_size"] == 32 and saved["block_axis"] == 1
    q = formats.quantize_scaled(tensors["w"], formats.E2M1, scale=np.repeat(scales, 32, axis=1))
    assert sqnr(tensors["w"], q) == pytest.approx(
        entry["methods"][entry["best"]]["sqnr_db"], abs=1e-9
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--number-format", "float8_e4m3fn", "--method", "entropy"], "has no float8_e4m3fn"),
        (["--number-format", "mxfp4", "--method", "percentile"], "has no mxfp4 version"),
        (["--number-format", "mxfp4", "--per-channel", "0"], "its own layout"),
        (["--number-format", "float8_e4m3fn", "--output-format", "aimet"], "AIMET"),
        (["--number-format", "mxfp4", "--output-format", "onnx-qdq"], "no mxfp4 QuantizeLinear"),
        (["--output-format", "encanalyze"], "for float and block number formats"),
        (["--number-format", "fp9"], "invalid choice"),
        (["--number-format", "float8_e4m3fn", "--bits", "4"], "--bits sets the integer grids"),
        (["--number-format", "nvfp4", "--num-bins", "512"], "no histogram"),
        (["--number-format", "mxfp4", "--gamma", "2"], "no histogram"),
    ],
)
def test_options_that_do_not_fit(capsys, args, message):
    assert main(["calibrate", *args]) == 2
    assert message in capsys.readouterr().err


def test_tensors_the_blocks_do_not_fit_are_skipped(command, tmp_path, rng):
    np.savez(
        tmp_path / "t.npz",
        odd=rng.normal(size=(4, 40)).astype(np.float32),
        fine=rng.normal(size=(4, 64)).astype(np.float32),
    )
    out = command(tmp_path / "t.npz", "--number-format", "mxfp8_e4m3", "--format", "json").json()
    assert [e["name"] for e in out["tensors"]] == ["fine"]
    assert out["skipped"][0]["name"] == "odd"
    assert "does not split into blocks of 32" in out["skipped"][0]["reason"]


@pytest.mark.parametrize("number_format", ["float8_e4m3fn", "mxfp4", "nvfp4"])
def test_torch_backend_gives_the_same_encodings(command, weights, number_format):
    pytest.importorskip("torch")
    path, _ = weights
    args = [path, "--number-format", number_format]
    if number_format.startswith("float8"):
        args += ["--per-channel", "0"]
    ours = command(*args, "--format", "json").json()["tensors"]
    theirs = command(*args, "--backend", "torch", "--format", "json").json()["tensors"]
    for a, b in zip(ours, theirs, strict=True):
        for method, r in a["methods"].items():
            assert r["scale"] == b["methods"][method]["scale"], (a["name"], method)
            assert r["sqnr_db"] == pytest.approx(b["methods"][method]["sqnr_db"], abs=1e-9)


def test_float_tensor_report(command, weights, tmp_path):
    from tests.test_report import _data

    path, _ = weights
    report = tmp_path / "r.html"
    out = command(path, "--number-format", "mxfp4", "--report", report, "--format", "json").json()
    page = _data(report.read_text())
    assert page["summary"]["grid"] == "mxfp4"
    for entry, q in zip(out["tensors"], page["quantizers"], strict=True):
        assert q["best"] == entry["best"]
        assert set(q["methods"]) == {"minmax", "mse"}
