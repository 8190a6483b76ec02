"""The command as a careful user and an attacker meet it: each defect found, as a regression test
through the real command in a subprocess (issue 12)."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_cli import ACT, WEIGHT, run


def _tensor_file(tmp_path, name="t.npy", array=ACT):
    path = tmp_path / name
    np.save(path, array)
    return path


# -- outputs: written last, never onto inputs, devices, FIFOs; symlinks and modes respected ---


def test_output_is_written_after_everything_else_succeeded(tmp_path):
    src = _tensor_file(tmp_path)
    (tmp_path / "plots").write_text("a file, not a folder")
    out = run("calibrate", src, "--output", tmp_path / "enc.json", "--plot", tmp_path / "plots")
    assert out.returncode == 2 and "not a folder" in out.stderr
    assert not (tmp_path / "enc.json").exists()


def test_output_naming_an_input_is_refused(tmp_path):
    src = tmp_path / "model.npz"
    np.savez(src, w=WEIGHT)
    before = src.read_bytes()
    out = run("calibrate", src, "--output", src)
    assert out.returncode == 2 and "is the input file" in out.stderr
    assert src.read_bytes() == before


def test_output_keeps_an_existing_files_mode_and_a_new_file_gets_the_umask(tmp_path):
    src = _tensor_file(tmp_path)
    existing = tmp_path / "existing.json"
    existing.write_text("{}")
    existing.chmod(0o640)
    assert run("calibrate", src, "--output", existing).returncode == 0
    assert stat.S_IMODE(existing.stat().st_mode) == 0o640
    fresh = tmp_path / "fresh.json"
    assert run("calibrate", src, "--output", fresh).returncode == 0
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~mask


def test_output_through_a_symlink_writes_its_target(tmp_path):
    src = _tensor_file(tmp_path)
    target = tmp_path / "real.json"
    target.write_text("stale")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    assert run("calibrate", src, "--output", link).returncode == 0
    assert link.is_symlink() and "param_encodings" in json.loads(target.read_text())


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_output_onto_a_non_regular_file_is_refused(tmp_path, kind):
    src = _tensor_file(tmp_path)
    if kind == "fifo":
        target = tmp_path / "pipe"
        os.mkfifo(target)
    elif kind == "device":
        target = "/dev/null"
    else:
        target = tmp_path
    out = run("calibrate", src, "--output", target)
    assert out.returncode == 2 and "encanalyze: error:" in out.stderr
    if kind == "device":
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_save_refuses_a_fifo_and_writes_through_symlinks(tmp_path):
    import encanalyze as ea

    analyzer = ea.MinMaxEncodingAnalyzer((1,))
    analyzer.update_stats(ACT)
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ValueError, match="not a regular file"):
        ea.save(analyzer, tmp_path / "pipe")
    (tmp_path / "real.npz").write_bytes(b"")
    (tmp_path / "link.npz").symlink_to(tmp_path / "real.npz")
    ea.save(analyzer, tmp_path / "link.npz")
    assert (tmp_path / "link.npz").is_symlink()
    assert ea.load(tmp_path / "real.npz").get_stats().max == analyzer.get_stats().max


# -- what reaches the terminal ----------------------------------------------------------------


def _safetensors(path, tensors):
    """Write a .safetensors file by hand (names may hold anything JSON escapes)."""
    header, body = {}, b""
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a, "<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [len(body), len(body) + len(raw)]}  # fmt: skip
        body += raw
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + body)
    return path


def test_control_characters_in_names_are_escaped(tmp_path):
    names = {"evil\x1b[31m\nforged line": ACT, "\udc80bad": ACT + 1}
    src = _safetensors(tmp_path / "t.safetensors", names)
    out = run("calibrate", src, "--method", "minmax")
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "evil\\x1b[31m\\nforged line" in out.stdout
    assert not any(line.startswith("forged line") for line in out.stdout.splitlines())
    assert "\\udc80bad" in out.stdout


def test_long_names_are_shown_whole_or_elided_in_the_middle(tmp_path):
    src = tmp_path / "t.npz"
    long_a = "encoder.layers.11.attention.self.query.weight"
    long_b = "encoder.layers.11.attention.self.query.bias_correction.running_statistic.extra"
    np.savez(src, **{long_a: ACT, long_b: ACT + 1})
    out = run("calibrate", src, "--method", "minmax").stdout
    assert long_a in out
    assert long_b[:30] + "\u2026" + long_b[-29:] in out and long_b not in out


def test_json_report_and_output_are_strict_json(tmp_path):
    exact = np.tile(np.array([0.0, 1.0, 2.0, 255.0], np.float32), 8)  # SQNR inf on min-max
    src = _tensor_file(tmp_path, array=exact)
    out = run("calibrate", src, "--format", "json", "--output", tmp_path / "e.json")
    assert out.returncode == 0, out.stderr
    strict = {"parse_constant": lambda c: pytest.fail(f"non-JSON constant {c}")}
    report = json.loads(out.stdout, **strict)
    assert "inf" in {m["sqnr_db"] for m in report["tensors"][0]["methods"].values()}
    json.loads((tmp_path / "e.json").read_text(), **strict)


def test_plus_and_minus_infinity_never_export_an_infinite_scale(tmp_path):
    x = np.concatenate([ACT.ravel(), [np.inf, -np.inf]]).astype(np.float32)
    src = _tensor_file(tmp_path, array=x)
    out = run("calibrate", src, "--format", "json", "--output", tmp_path / "e.json")
    assert out.returncode == 0, out.stderr
    enc = json.loads((tmp_path / "e.json").read_text())["param_encodings"][0]
    assert all(np.isfinite(enc["scale"]))
    report = json.loads(out.stdout)["tensors"][0]
    assert np.isfinite(report["methods"][report["best"]]["sqnr_db"])


# -- one tensor's failure is one note; option problems exit 2 ---------------------------------


def test_dead_channel_is_reported_and_the_rest_calibrated(tmp_path):
    w = WEIGHT.copy()
    w[3] = np.nan
    w[5] = np.inf
    src = _tensor_file(tmp_path, array=w)
    out = run("calibrate", src, "--per-channel", "0", "--output", tmp_path / "e.json")
    assert out.returncode == 0, out.stderr
    assert "2 of 8 encodings (#3, 5) have no finite value" in out.stderr
    assert "Traceback" not in out.stderr
    enc = json.loads((tmp_path / "e.json").read_text())["param_encodings"][0]
    assert len(enc["scale"]) == 8 and all(np.isfinite(enc["scale"]))
    assert enc["scale"][3] == enc["scale"][5] < 1e-6  # the all-zero channel's tiny grid


def test_a_tensor_that_fails_is_a_note_and_the_others_go_on(tmp_path):
    src = tmp_path / "t.npz"
    np.savez(src, good=ACT, huge=np.array([-1.8e38, 0, 1.8e38], np.float32))
    out = run("calibrate", src, "--format", "json")
    assert out.returncode == 0, out.stderr
    assert [t["name"] for t in json.loads(out.stdout)["tensors"]][0] == "good"
    assert "Traceback" not in out.stderr


def test_a_per_channel_axis_that_fits_no_tensor_is_an_option_error(tmp_path):
    out = run("calibrate", _tensor_file(tmp_path), "--per-channel", "5")
    assert out.returncode == 2 and "fit no tensor" in out.stderr


def test_onnx_qdq_output_needs_an_onnx_bit_width(tmp_path):
    out = run("calibrate", _tensor_file(tmp_path), "--output-format", "onnx-qdq", "--bits", "12")
    assert out.returncode == 2 and "no 12-bit integer type" in out.stderr


@pytest.mark.parametrize("bins", ["1", "2"])
def test_absurd_bin_counts_are_rejected(tmp_path, bins):
    out = run("calibrate", _tensor_file(tmp_path), "--num-bins", bins)
    assert out.returncode == 2 and "--num-bins must be at least" in out.stderr


def test_help_has_no_markup_and_documents_method_format_and_files():
    out = run("calibrate", "--help").stdout
    assert "``" not in run("--help").stdout and "``" not in out
    assert "default" in out.split("\n  --method")[1].split("\n  --bits")[0]
    assert "FILES" in out and ".safetensors" in out


# -- names: every tensor and plot kept ---------------------------------------------------------


def test_same_named_tensors_from_several_files_are_all_kept(tmp_path):
    files = []
    for d in ("x", "y", "z"):
        (tmp_path / d).mkdir()
        files.append(_tensor_file(tmp_path / d, "w.npy", ACT * (1 + len(files))))
    out = run("calibrate", *files, "--method", "minmax", "--format", "json")
    names = [t["name"] for t in json.loads(out.stdout)["tensors"]]
    assert len(names) == 3 and len(set(names)) == 3


def test_plot_names_are_unique(tmp_path):
    pytest.importorskip("matplotlib")
    src = tmp_path / "t.npz"
    np.savez(src, **{"a/b": ACT, "a_b": ACT + 1})
    out = run("calibrate", src, "--method", "minmax", "--plot", tmp_path / "plots")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["a_b-2.png", "a_b.png"]


# -- Ctrl-C ------------------------------------------------------------------------------------


@pytest.mark.slow  # the full matrix (the model job's Ctrl-C at every phase runs fast)
def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    big = np.random.default_rng(0).standard_normal(30_000_000).astype(np.float32)
    src = _tensor_file(tmp_path, array=big)
    proc = subprocess.Popen(
        [sys.executable, "-m", "encanalyze", "calibrate", str(src), "--output",
         str(tmp_path / "e.json")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:  # interrupt once the tensor is in
        status = Path(f"/proc/{proc.pid}/status")
        rss = [line for line in status.read_text().splitlines() if line.startswith("VmRSS")]
        if rss and int(rss[0].split()[1]) > 150_000:  # kB: the 120 MB tensor is loaded
            break
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt")
    # 130, or death by SIGINT (which a shell also reports as 130): CPython re-raises an
    # interrupt that numpy's own handler delivered twice while the exit unwinds
    assert proc.returncode in (130, -signal.SIGINT), proc.returncode
    assert err.strip().splitlines() == ["encanalyze: interrupted"], err
    assert not (tmp_path / "e.json").exists()


# -- hostile tensor files ----------------------------------------------------------------------


@pytest.mark.slow  # 2**26 paths: the full matrix
def test_pt_of_shared_references_is_read_once(tmp_path):
    torch = pytest.importorskip("torch")
    t = torch.arange(10.0)
    o = [t, t]
    for _ in range(25):  # 2**26 paths to the same tensor
        o = [o, o]
    torch.save(o, tmp_path / "shared.pt")
    loop = [torch.ones(4)]
    loop.append(loop)
    torch.save({"a": loop}, tmp_path / "loop.pt")
    for name, want in (("shared.pt", ["0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0"]),
                       ("loop.pt", ["a.0"])):  # fmt: skip
        out = run("calibrate", tmp_path / name, "--method", "minmax", "--format", "json")
        assert out.returncode == 0, out.stderr
        assert [t["name"] for t in json.loads(out.stdout)["tensors"]] == want


def test_npz_with_a_member_that_is_not_npy_is_one_error_line(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "odd.npz", "w") as z:
        z.writestr("notes.txt", "hello")
    out = run("calibrate", tmp_path / "odd.npz")
    assert out.returncode == 1 and "'notes.txt' is not a .npy array" in out.stderr
    assert "Traceback" not in out.stderr


def test_npz_members_are_size_checked_before_inflating(tmp_path):
    import io
    import zipfile

    from encanalyze._io import NpzError, read_member

    buf = io.BytesIO()
    np.save(buf, np.zeros(2_000_000, np.float32))
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("x.npy", buf.getvalue())
    assert (tmp_path / "bomb.npz").stat().st_size < 50_000
    with zipfile.ZipFile(tmp_path / "bomb.npz") as z:
        with pytest.raises(NpzError, match="over the limit"):
            read_member(z, "x.npy", max_bytes=1 << 20)
        assert read_member(z, "x.npy", max_bytes=1 << 24).shape == (2_000_000,)


def _raw_safetensors(path, header, body):
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + body)
    return path


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, "invalid data_offsets"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, "invalid shape"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, "spans 8 bytes"),
        (
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            "overlaps",
        ),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, "leaves a gap"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, "cover 4 of 16"),
    ],
)
def test_safetensors_are_validated_as_strictly_as_the_library(tmp_path, entries, message):
    path = _raw_safetensors(tmp_path / "bad.safetensors", entries, b"\0" * 16)
    out = run("calibrate", path)
    assert out.returncode == 1 and message in out.stderr, out.stderr


# -- torch backend options and dtypes ----------------------------------------------------------


@pytest.mark.parametrize("device", ["bogus", "meta"])
def test_bad_torch_devices_are_option_errors(tmp_path, device):
    pytest.importorskip("torch")
    out = run("calibrate", _tensor_file(tmp_path), "--backend", "torch", "--device", device)
    assert out.returncode == 2 and f"--device {device}" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_dtype_torch_lacks_is_a_note_under_the_torch_backend(tmp_path):
    pytest.importorskip("torch")
    if not hasattr(np, "float128"):
        pytest.skip("no float128 on this platform")
    src = tmp_path / "t.npz"
    np.savez(src, wide=ACT.astype(np.float128), good=ACT)
    out = run("calibrate", src, "--backend", "torch", "--method", "minmax", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert [t["name"] for t in json.loads(out.stdout)["tensors"]] == ["good"]
    assert "skipped wide" in out.stderr and "Traceback" not in out.stderr
