"""The analysis report: its data (sensitivity against a hand computation, ONNX Runtime's
calibrators, every method per quantizer) and the page itself, opened in headless Chromium."""

import json
import re

import numpy as np
import pytest

from encanalyze._html_report import render, write_report
from encanalyze.cli import main


def _data(page: str) -> dict:
    raw = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    return json.loads(raw.group(1).replace("<\\/", "</"))


def test_page_holds_its_data_safely(tmp_path):
    data = {
        "title": "</script><b>x",
        "methods": ["minmax"],
        "quantizers": [
            {
                "name": "a</script>",
                "kind": "tensor",
                "methods": {"minmax": {"sqnr_db": float("inf")}},
            }
        ],
    }
    page = render(data)
    assert page.count("</script>") == 2  # the data's own never closes its script
    assert "&lt;/script&gt;&lt;b&gt;x" in page  # the title is escaped
    back = _data(page)
    assert back["quantizers"][0]["name"] == "a</script>"
    assert back["quantizers"][0]["methods"]["minmax"]["sqnr_db"] is None  # strict JSON
    assert "http" not in page.replace("http://www.w3.org/2000/svg", "")  # nothing to fetch
    write_report(tmp_path / "r.html", data)
    assert (tmp_path / "r.html").read_text() == page


def test_tensor_job_report(tmp_path, capsys, rng):
    w = (rng.standard_t(4, (32, 64)) * 0.1).astype(np.float32)
    w[3] = np.nan
    np.savez(tmp_path / "t.npz", w=w, dead=np.zeros((4, 4), np.float32))
    target = tmp_path / "r.html"
    assert main(["calibrate", str(tmp_path / "t.npz"), "--report", str(target), "--format",
                 "json"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    data = _data(target.read_text())
    by = {q["name"]: q for q in data["quantizers"]}
    entry = next(t for t in report["tensors"] if t["name"] == "w")
    for method, r in entry["methods"].items():
        assert by["w"]["methods"][method]["sqnr_db"] == pytest.approx(r["sqnr_db"])
        assert by["w"]["methods"][method]["max"] == max(r["max"])
    assert by["w"]["best"] == entry["best"] and "NaN" in by["w"]["flags"]
    assert sum(by["w"]["hist"]["counts"]) == np.isfinite(w).sum()
    assert "dead" in by["dead"]["flags"]
    assert data["summary"]["tensors"] == "2 calibrated, 0 skipped"


def test_report_path_is_checked_first(tmp_path, capsys):
    np.save(tmp_path / "t.npy", np.ones((4, 4), np.float32))
    same = tmp_path / "x.json"
    status = main(["calibrate", str(tmp_path / "t.npy"), "--output", str(same),
                   "--report", str(same)])  # fmt: skip
    assert status == 2 and "--output and --report name the same file" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path / "t.npy"), "--report", str(tmp_path / "t.npy")]) == 2
    assert not same.exists()


@pytest.fixture(scope="module")
def cnn_job(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    import onnx

    from tests import onnx_models as om

    folder = tmp_path_factory.mktemp("cnn")
    onnx.save(om.cnn(), folder / "cnn.onnx")
    x = np.random.default_rng(3).normal(size=(64, 3, 8, 8)).astype("f4")
    np.savez(folder / "data.npz", x=x)
    target = folder / "report.html"
    args = ["calibrate", folder / "cnn.onnx", "--data", folder / "data.npz", "--method", "all",
            "--bits", "4", "--report", target, "--qdq-model", folder / "q.onnx"]  # fmt: skip
    assert main(list(map(str, args))) == 0
    return folder, x, _data(target.read_text())


def test_model_report_sensitivity_is_the_emulation(cnn_job):
    """'Only w1 quantized' is the float model with w1 quantize-dequantized, computed by hand;
    every layer and quantizer has its row; ONNX Runtime's three calibrators are compared."""
    from tests import onnx_models as om

    folder, x, data = cnn_job
    layers = {r["layer"]: r for r in data["sensitivity"]}
    assert set(layers) == {"c1", "y"}
    by = {q["name"]: q for q in data["quantizers"]}
    assert {q["kind"] for q in by.values()} == {"weight", "activation"}
    assert set(by["w1"]["methods"]) >= {"minmax", "sqnr", "mse"}  # --method all
    assert all(by[n]["gain_db"] is not None for n in ("x", "c1", "f", "y", "w1", "w2"))
    assert len(by["c1"]["batches"]) == 3  # 48 calibration samples in batches of 16
    assert by["x"]["own_sqnr_db"] is not None and by["x"]["hist"] is not None
    # by hand: w1 alone on its 4-bit symmetric per-channel grid (the scales the QDQ model
    # holds, zero point 0), the held-out batch
    import onnx
    from onnx import numpy_helper

    held = x[48:]
    qdq = onnx.load(folder / "q.onnx")
    scales = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    s = next(v for k, v in scales.items() if k.startswith("w1") and "scale" in k)
    s = s[:, None, None, None]
    q = np.clip(np.round(om.W1 / s), -8, 7) * s
    pad = np.pad(held, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(pad, (3, 3), axis=(2, 3))
    c1 = np.einsum("ncijkl,ockl->noij", windows, q) + om.B1[None, :, None, None]
    y = np.maximum(c1, 0).reshape(len(held), -1) @ om.W2
    ref = om.cnn_forward(held)["y"]
    want = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - y) ** 2.0))
    assert layers["c1"]["weights_sqnr_db"] == pytest.approx(want, abs=0.05)
    rows = {r["label"]: r["output_sqnr_db"] for r in data["comparison"]}
    for method in ("MinMax", "Entropy", "Percentile"):
        assert np.isfinite(rows[f"ONNX Runtime {method} (quantize_static)"])
    assert any(label.startswith("encanalyze, the written QDQ model") for label in rows)


# -- in a real browser ------------------------------------------------------------------------
def _open(browser, path):
    browser.get(path.resolve().as_uri())
    browser.get_log("browser")  # what an earlier page left


def _errors(browser) -> list:
    return [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def _names(browser) -> list[str]:
    from selenium.webdriver.common.by import By

    rows = browser.find_elements(By.CSS_SELECTOR, "#quantizers tbody tr")
    return [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows]


@pytest.mark.slow  # (the fast run's browser test: test_browser_model_report)
def test_browser_table_sorts_filters_and_pages(browser, tmp_path):
    from selenium.webdriver.common.by import By

    rng = np.random.default_rng(0)
    quantizers = [
        {"name": f"layer{i:03d}.weight", "kind": "weight" if i % 2 else "activation",
         "shape": [4, 4], "layout": "per tensor", "best": "minmax",
         "flags": ["clipped"] * (i % 7 == 0),
         "methods": {"minmax": {"min": -1.0, "max": 1.0, "sqnr_db": float(rng.uniform(10, 40))}},
         "hist": {"lo": -1, "hi": 1, "counts": [1, 5, 9, 5, 1]}}
        for i in range(120)
    ]  # fmt: skip
    path = write_report(tmp_path / "r.html", {"methods": ["minmax"], "quantizers": quantizers})
    _open(browser, path)
    count = browser.find_element(By.ID, "count")
    assert count.text == "120 of 120 quantizers"
    assert browser.find_element(By.ID, "page").text == "page 1 of 3"
    assert len(_names(browser)) == 50
    browser.find_element(By.ID, "next").click()
    assert _names(browser)[0] == "layer050.weight"
    header = browser.find_element(By.CSS_SELECTOR, "#quantizers th[data-key='minmax']")
    header.click()  # ascending SQNR
    want = sorted(quantizers, key=lambda q: q["methods"]["minmax"]["sqnr_db"])
    assert _names(browser) == [q["name"] for q in want[:50]]
    header.click()  # descending
    assert _names(browser)[0] == want[-1]["name"]
    browser.find_element(By.ID, "filter").send_keys("layer00")
    assert count.text == "10 of 120 quantizers"
    browser.find_element(By.ID, "filter").clear()
    browser.find_element(By.ID, "flagged").click()
    assert count.text == f"{sum(1 for i in range(120) if i % 7 == 0)} of 120 quantizers"
    assert _errors(browser) == []


def test_browser_model_report(browser, cnn_job, tmp_path):
    from selenium.webdriver.common.by import By

    folder, _, data = cnn_job
    _open(browser, folder / "report.html")
    assert browser.find_element(By.ID, "sensitivity-section").is_displayed()
    ranked = browser.find_elements(By.CSS_SELECTOR, "#sensitivity tr.sens")
    assert len(ranked) == len(data["sensitivity"]) == 2

    def worst(r):
        return min(v for v in (r["weights_sqnr_db"], r["activations_sqnr_db"]) if v is not None)

    first = min(data["sensitivity"], key=worst)
    assert ranked[0].find_elements(By.TAG_NAME, "td")[1].text == first["layer"]
    hint = browser.find_elements(By.CSS_SELECTOR, "#hint-list li")
    assert hint and hint[0].text.startswith(first["layer"])
    comparison = browser.find_elements(By.CSS_SELECTOR, "#comparison tr")
    assert len(comparison) == 1 + len(data["comparison"])  # the header, then each row
    row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#quantizers tbody tr")
               if r.find_elements(By.TAG_NAME, "td")[0].text == "w1")  # fmt: skip
    row.click()
    bars = browser.find_elements(By.CSS_SELECTOR, "#histogram rect.bar")
    assert len(bars) > 10
    methods = data["quantizers"][0]["methods"]
    lines = browser.find_elements(By.CSS_SELECTOR, "#histogram line.range")
    assert len(lines) == 2 * len(methods)
    browser.find_element(By.ID, "log").click()  # linear counts: redrawn
    assert len(browser.find_elements(By.CSS_SELECTOR, "#histogram rect.bar")) == len(bars)
    act = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#quantizers tbody tr")
               if r.find_elements(By.TAG_NAME, "td")[0].text == "c1")  # fmt: skip
    act.click()
    assert browser.find_elements(By.CSS_SELECTOR, "#batch-ranges polyline")
    assert _errors(browser) == []


def test_torch_report_sensitivity_by_hand(tmp_path):
    """A torch model's report: 'only the Linear's weight quantized' equals the model run with
    that weight quantize-dequantized by hand; the model comes back untouched."""
    torch = pytest.importorskip("torch")
    from encanalyze.torch import calibrate

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(288, 10)
    ).eval()
    data = [torch.randn(8, 3, 8, 8) for _ in range(6)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = {}
    result = calibrate(model, data[:4], bits=4, weight_symmetric=True, statistics=stats)
    path = result.report(tmp_path / "t.html", model, data[4:], statistics=stats)
    data_ = _data(path.read_text())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    layers = {r["layer"]: r for r in data_["sensitivity"]}
    e = result.encodings["3.weight"]
    s = torch.as_tensor(e.scale).reshape(-1, 1)
    o = torch.as_tensor(e.offset).reshape(-1, 1)
    w = model[3].weight.detach()
    q = (torch.clamp(torch.round(w / s) - o, 0, 15) + o) * s
    with torch.no_grad():
        ref = torch.cat([model(x) for x in data[4:]]).double()
        got = torch.cat([torch.nn.functional.linear(model[:3](x), q, model[3].bias)
                         for x in data[4:]]).double()  # fmt: skip
    want = 10 * np.log10(float((ref**2).sum() / ((ref - got) ** 2).sum()))
    assert layers["3"]["weights_sqnr_db"] == pytest.approx(want, abs=1e-3)
    by = {q["name"]: q for q in data_["quantizers"]}
    assert len(by["0:output"]["batches"]) == 4 and by["0:output"]["hist"] is not None
    assert by["3.weight"]["own_sqnr_db"] == pytest.approx(e.sqnr_db)
    assert all(by[n]["gain_db"] is not None for n in by)


def test_peers_get_batches_of_one_size_with_the_same_samples():
    """Issue 36: a split by samples leaves a smaller last batch, on which ONNX Runtime's
    histogram calibrators fail ("inhomogeneous shape"): they get the same samples, in order,
    in batches of the sizes' greatest common divisor; constants stay whole; batches of one
    size, or without known sample axes, go as they are."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from encanalyze.onnx._report import even_feeds

    x = np.arange(36 * 2, dtype=np.float32).reshape(36, 2)
    batches = [{"x": x[:16], "k": np.ones(3, np.float32)}, {"x": x[16:32], "k": np.ones(3)},
               {"x": x[32:], "k": np.ones(3)}]  # fmt: skip
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "k")]
    fed = list(even_feeds(batches, inputs, {"x": 0, "k": None}))
    assert [f["x"].shape for f in fed] == [(4, 2)] * 9
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in fed]), x)
    assert all(f["k"].shape == (3,) for f in fed)
    assert len(list(even_feeds(batches, inputs, None))) == 3
    assert len(list(even_feeds(batches[:2], inputs, {"x": 0, "k": None}))) == 2


def test_report_layers_runs_the_layers_of_lowest_own_sqnr_only(cnn_job, capsys):
    """Issue 36: ``--report-layers 1`` runs the sensitivity of the one layer whose quantizers'
    own SQNR is lowest (the same scores as with every layer), gives gains to its quantizers
    only, lists the other layers unscored, says so in the summary and prints the report's
    share of the time."""
    folder, _, every = cnn_job
    target = folder / "one.html"
    args = ["calibrate", folder / "cnn.onnx", "--data", folder / "data.npz", "--method", "all",
            "--bits", "4", "--report", target, "--report-layers", "1"]  # fmt: skip
    assert main(list(map(str, args))) == 0
    assert "encanalyze: note: report:" in capsys.readouterr().err
    one = _data(target.read_text())
    assert one["summary"]["layers measured"].startswith("1 of 2")
    assert every["summary"]["layers measured"] == "2 of 2"
    scored = [r for r in one["sensitivity"] if r["weights_sqnr_db"] is not None]
    assert len(scored) == 1
    proxy = {q["name"]: q["methods"][q["best"]]["sqnr_db"] for q in one["quantizers"]}
    lowest = {r["layer"]: min(proxy[n] for n in (*r["weights"], *r["activations"]))
              for r in one["sensitivity"]}  # fmt: skip
    assert scored[0]["layer"] == min(lowest, key=lowest.get)
    want = next(r for r in every["sensitivity"] if r["layer"] == scored[0]["layer"])
    assert scored[0]["weights_sqnr_db"] == pytest.approx(want["weights_sqnr_db"])
    gained = {q["name"] for q in one["quantizers"] if q["gain_db"] is not None}
    assert gained == set(scored[0]["weights"]) | set(scored[0]["activations"])
    assert main(["calibrate", "x.onnx", "--report-layers", "0"]) == 2
