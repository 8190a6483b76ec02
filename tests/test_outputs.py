"""The output transaction, tried as a careless or hostile user would (issue 32's table).

Outputs over inputs, interrupts at every phase (Ctrl-C, SIGTERM), reruns over a job's own
outputs, the report page's names and sizes: nothing lost, nothing left behind, no traceback.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


import encanalyze as ea  # noqa: E402
from encanalyze._io import OutputPathError, Outputs, Terminated  # noqa: E402
from encanalyze.cli import _model_job, _tensor_job  # noqa: E402
from tests import onnx_models as om  # noqa: E402


def _files(tmp_path, **extra):
    path = tmp_path / "m.onnx"
    onnx.save(om.matmul(**extra), str(path))
    x = np.random.default_rng(0).normal(size=(12, 4)).astype("f4")
    np.savez(tmp_path / "d.npz", x=x)
    return path, tmp_path / "d.npz"


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _no_leftovers(folder):
    hidden = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert not hidden, hidden


# -- outputs over inputs ---------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--output", "--report"])
def test_tensor_job_never_writes_over_the_models_external_data(command, tmp_path, option):
    path = om.save_external(om.matmul(), tmp_path, name="m.onnx", location="weights.bin")
    before = _snapshot(tmp_path)
    status, _, err = command(path, option, tmp_path / "weights.bin")
    assert status == 2 and "is the input file" in err and "weights.bin" in err
    assert _snapshot(tmp_path) == before
    _no_leftovers(tmp_path)


def test_report_in_python_never_writes_over_the_model(tmp_path):
    path, _ = _files(tmp_path)
    result = ea.onnx.calibrate(str(path), [{"x": np.ones((2, 4), "f4")}])
    before = path.read_bytes()
    with pytest.raises(OutputPathError, match="is the input file"):
        result.report(path, path, [{"x": np.ones((2, 4), "f4")}])
    assert path.read_bytes() == before
    _no_leftovers(tmp_path)


def test_outputs_refuse_inputs_folders_and_each_other(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.npy").write_bytes(b"x")
    with Outputs([tmp_path / "in", tmp_path / "in" / "a.npy"]) as out:
        with pytest.raises(OutputPathError, match="is the input file"):
            out.file(tmp_path / "in" / "a.npy")
        with pytest.raises(OutputPathError, match="inside the input folder"):
            out.file(tmp_path / "in" / "b.json")
        out.file(tmp_path / "q.onnx", "--qdq-model", sidecar=True)
        with pytest.raises(OutputPathError, match="name the same file"):
            out.file(tmp_path / "q.onnx", "--output")
        with pytest.raises(OutputPathError, match="external data goes"):
            out.file(tmp_path / "q.onnx.data", "--output")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_outputs_publish_together_or_not_at_all(tmp_path):
    (tmp_path / "a").write_text("old a")
    with pytest.raises(RuntimeError):
        with Outputs() as out:
            out.file(tmp_path / "a").write_text("new a")
            out.file(tmp_path / "b").write_text("new b")
            raise RuntimeError("the last output failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    assert (tmp_path / "a").read_text() == "old a"
    with Outputs() as out:
        out.file(tmp_path / "a").write_text("new a")
        out.file(tmp_path / "b").write_text("new b")
        plots = out.folder(tmp_path / "plots" / "deep")
        (plots / "p.png").write_bytes(b"png")
        out.commit()
    assert (tmp_path / "a").read_text() == "new a" and (tmp_path / "b").read_text() == "new b"
    assert (tmp_path / "plots" / "deep" / "p.png").read_bytes() == b"png"
    _no_leftovers(tmp_path)


# -- interrupts at every phase -----------------------------------------------------------------


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    "number_format, phase",
    [
        ("int", "model_report"),
        pytest.param("int", "write_json", marks=pytest.mark.slow),  # (the full matrix's)
        ("float8_e4m3fn", "model_report"),
        ("float8_e4m3fn", "plot"),
        ("mxfp4", "model_report"),
        ("mxfp4", "save_model"),
    ],
)
def test_ctrl_c_at_any_phase_of_the_model_job_keeps_every_old_output(
    command, tmp_path, monkeypatch, number_format, phase
):
    path, data = _files(tmp_path)
    outputs = ["--output", "e.json", "--qdq-model", "q.onnx", "--report", "r.html"]
    outputs = [tmp_path / o if not o.startswith("--") else o for o in outputs]
    common = [path, "--data", data, "--number-format", number_format, *outputs]
    status, _, err = command(*common, "--plot", tmp_path / "plots")
    assert status == 0, err
    before = _snapshot(tmp_path)
    plots = _snapshot(tmp_path / "plots")
    monkeypatch.setattr(_model_job, phase, _interrupt)
    status, _, err = command(*common, "--plot", tmp_path / "plots")
    assert status == 130 and "interrupted" in err
    assert _snapshot(tmp_path) == before and _snapshot(tmp_path / "plots") == plots
    _no_leftovers(tmp_path)


def test_ctrl_c_in_the_tensor_job_keeps_every_old_output(command, tmp_path, monkeypatch):
    np.save(tmp_path / "w.npy", np.random.default_rng(0).normal(size=(8, 16)).astype("f4"))
    args = [tmp_path / "w.npy", "--output", tmp_path / "e.json", "--report", tmp_path / "r.html"]
    assert command(*args).status == 0
    before = _snapshot(tmp_path)
    monkeypatch.setattr(_tensor_job, "tensor_report", _interrupt)
    assert command(*args).status == 130
    assert _snapshot(tmp_path) == before
    _no_leftovers(tmp_path)


SLOW_REPORT = textwrap.dedent(
    """
    import signal, sys, time
    from encanalyze import cli
    from encanalyze.cli import _model_job

    def slow(*args, **kwargs):
        print("READY", flush=True)
        time.sleep(60)

    _model_job.model_report = slow
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as on a terminal
    sys.exit(cli.main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize(
    "signum",
    [
        signal.SIGTERM,
        pytest.param(signal.SIGHUP, marks=pytest.mark.slow),  # the same handler: full matrix
        pytest.param(signal.SIGINT, marks=pytest.mark.slow),
    ],
)
def test_a_signal_while_the_report_is_built_leaves_the_old_outputs_and_nothing_else(
    command, tmp_path, signum
):
    path, data = _files(tmp_path)
    args = [path, "--data", data, "--qdq-model", tmp_path / "q.onnx", "--output"]
    args += [tmp_path / "e.json", "--report", tmp_path / "r.html"]
    assert command(*args).status == 0
    before = _snapshot(tmp_path)
    script = tmp_path.parent / f"slow_{signum}.py"
    script.write_text(SLOW_REPORT)
    proc = subprocess.Popen(
        [sys.executable, str(script), "calibrate", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    for line in proc.stdout:
        if line.strip() == "READY":
            break
    staged = [p.name for p in tmp_path.iterdir() if p.name.startswith(".encanalyze.")]
    assert staged  # the outputs are staged beside their targets ...
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    assert _snapshot(tmp_path) == before  # ... and gone with the signal, the old outputs kept
    _no_leftovers(tmp_path)


def test_sigterm_in_a_library_write_cleans_up_and_ends_the_process(tmp_path):
    script = tmp_path.parent / "lib_sigterm.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, signal
            from encanalyze._io import write_atomic

            def write(f):
                f.write(b"half")
                os.kill(os.getpid(), signal.SIGTERM)
                f.write(b"never")

            write_atomic({str(tmp_path / "out.bin")!r}, write)
            """
        )
    )
    (tmp_path / "out.bin").write_bytes(b"old")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGTERM  # ended by the signal, as without encanalyze
    assert (tmp_path / "out.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_terminated_is_no_exception_that_code_swallows():
    assert not issubclass(Terminated, Exception)


# -- reruns over the job's own outputs ---------------------------------------------------------


@pytest.mark.parametrize("number_format", ["int", "float8_e4m3fn", "mxfp4"])
def test_a_qdq_model_with_external_data_reruns_over_itself(
    command, tmp_path, monkeypatch, number_format
):
    from encanalyze.onnx import _calibrate, _qdq, _qdq_graph

    for module in (_calibrate, _qdq, _qdq_graph):
        if hasattr(module, "INLINE_LIMIT"):
            monkeypatch.setattr(module, "INLINE_LIMIT", 0)
    weight = np.random.default_rng(0).normal(size=(64, 32)).astype("f4")
    path, data = _files(tmp_path, weight=weight)
    np.savez(data, x=np.ones((6, 64), "f4"))
    qdq = tmp_path / "q.onnx"
    args = [path, "--data", data, "--number-format", number_format, "--qdq-model", qdq]
    for _ in range(2):
        status, _, err = command(*args)
        assert status == 0, err
        assert (tmp_path / "q.onnx.data").is_file()
        onnx.checker.check_model(str(qdq))
    _no_leftovers(tmp_path)


# -- the report page ---------------------------------------------------------------------------


def test_report_page_survives_hostile_names_titles_and_sizes(tmp_path):
    from encanalyze._html_report import render

    counts = list(range(300_000))
    data = {
        "title": "a @DATA@ title <!-- </script>",
        "summary": {"model": "<!-- x -->"},
        "methods": ["minmax"],
        "quantizers": [
            {
                "name": "conv<!--a</script>",
                "kind": "weight",
                "shape": [2],
                "layout": "per tensor",
                "best": "minmax",
                "methods": {"minmax": {"min": 0.0, "max": 1.0, "sqnr_db": 1.0, "clipped": 0}},
                "hist": {"lo": 0.0, "hi": 1.0, "counts": counts},
                "batches": [[0.0, 1.0]] * 200_000,
                "flags": [],
            }
        ],
    }
    page = render(data)
    assert page.count("</script>") == 2  # the data's and the code's
    payload = page.split('id="report-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in payload  # no "<!--", no "</script>": escaped as \u003c
    assert "a @DATA@ title &lt;!-- &lt;/script&gt;" in page.split("</title>")[0]
    got = json.loads(payload)
    assert got["title"] == data["title"] and got["quantizers"][0]["name"] == "conv<!--a</script>"
    q = got["quantizers"][0]
    assert len(q["hist"]["counts"]) <= 128 and sum(q["hist"]["counts"]) == sum(counts)
    assert len(q["batches"]) <= 1024
    assert "...counts" not in page and "Math.max(..." not in page


@pytest.mark.parametrize(
    "values",
    [
        np.array([1.0, np.nextafter(1.0, 2.0)] * 8),
        np.array([-1e308, 1e308, 0.5, -0.5] * 4),
        np.array([5e-324, 1e-323, 0.0] * 4),
    ],
)
def test_report_of_extreme_float64_tensors(command, tmp_path, values):
    np.save(tmp_path / "t.npy", values.reshape(4, -1))
    status, _, err = command(
        tmp_path / "t.npy", "--report", tmp_path / "r.html", "--output", tmp_path / "e.json"
    )
    assert "Traceback" not in err and status in (0, 1), err
    if status == 0:
        assert (tmp_path / "r.html").stat().st_size > 10_000
    _no_leftovers(tmp_path)
