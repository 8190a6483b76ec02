"""Fidelity against the cases computed by the reference implementation (tests/data).

72 ordinary cases and 16 edge cases (constant and all-zero data, 2-bit percentile, exact
percentile thresholds, SQNR ties, later batches inside the range), copied with their README from
the project's shared reference vectors so that a fresh clone runs them.
"""

import json
from pathlib import Path

import numpy as np
import pytest

import encanalyze
from encanalyze._xp import wide_dtype
from tests import reference

VECTORS = Path(__file__).resolve().parent / "data" / "reference-vectors"
SETS = (VECTORS, VECTORS / "edge")

ANALYZERS = {
    "minmax": encanalyze.MinMaxEncodingAnalyzer,
    "percentile": encanalyze.PercentileEncodingAnalyzer,
    "sqnr": encanalyze.SqnrEncodingAnalyzer,
    "tf_enhanced": encanalyze.TfEnhancedEncodingAnalyzer,
}

CASES = [c for d in SETS for c in json.loads((d / "cases.json").read_text())]


@pytest.fixture(scope="module")
def arrays():
    out = {}
    for d in SETS:
        with np.load(d / "vectors.npz") as npz:
            out.update({k: npz[k] for k in npz.files})
    return out


def test_every_case_is_here():
    # 72 ordinary + 16 edge cases, ids 0..87, none missing: a fresh clone runs them all
    assert sorted(c["id"] for c in CASES) == list(range(88))
    assert {c["method"] for c in CASES} <= set(ANALYZERS)


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c["method"] in ANALYZERS],
    ids=lambda c: f"{c['id']}-{c['method']}-{c['shape']}",
)
def test_reference_case(backend, arrays, case):
    analyzer = ANALYZERS[case["method"]](tuple(case["shape"]), **case["params"])
    for name in case["inputs"]:
        analyzer.update_stats(backend.asarray(arrays[name]))
    if "expected_histogram" in case:
        stats = analyzer.get_stats()
        want_counts = arrays[case["expected_histogram"]]
        want_edges = arrays[case["expected_bin_edges"]]
        backend.check(stats.histogram, want_counts.shape, wide_dtype(backend.xp, backend.device))
        np.testing.assert_allclose(backend.to_numpy(stats.bin_edges), want_edges, rtol=1e-6)
        counts = backend.to_numpy(stats.histogram)
        # exact, except a few counts between neighbouring bins where a value sits within
        # float32 rounding of an edge (the reference bins with torch.histc)
        np.testing.assert_array_equal(counts.sum(axis=-1), want_counts.sum(axis=-1))
        assert np.abs(counts - want_counts).max() <= 2, np.abs(counts - want_counts).max()
    lo, hi = analyzer.compute_encodings(case["num_steps"], case["is_symmetric"])
    want_lo, want_hi = arrays[case["expected_min"]], arrays[case["expected_max"]]
    backend.check(lo, want_lo.shape, str(want_lo.dtype))
    lo, hi = backend.to_numpy(lo), backend.to_numpy(hi)
    off = ~(np.isclose(lo, want_lo, rtol=1e-5, atol=0) & np.isclose(hi, want_hi, rtol=1e-5, atol=0))
    if case["id"] in REFERENCE_NOT_LEAST_NOISE and off.any():
        _assert_less_noise(backend, analyzer, case, lo, hi, want_lo, want_hi, off)
        off[:] = False
    assert not off.any(), (lo[off], want_lo[off], hi[off], want_hi[off])


# Case 65 (TfEnhanced, 4 bit, asymmetric), element 2: the reference picks (-8.146343, 12.219517),
# whose expected noise under SPEC's model is 42.92787, over (-8.182712, ...) at 42.92705 (the
# histograms are identical). encanalyze picks the least-noise candidate, as SPEC says.
REFERENCE_NOT_LEAST_NOISE = {65}


def _assert_less_noise(backend, analyzer, case, lo, hi, want_lo, want_hi, off):
    stats = analyzer.get_stats()
    num_bins = stats.num_bins
    counts = backend.to_numpy(stats.histogram).reshape(-1, num_bins)
    edges = backend.to_numpy(stats.bin_edges).reshape(-1, num_bins + 1)
    n, gamma = case["num_steps"], analyzer.gamma
    for r in np.nonzero(off.reshape(-1))[0]:
        noise = []
        for a, b in ((lo, hi), (want_lo, want_hi)):
            d = (float(b.reshape(-1)[r]) - float(a.reshape(-1)[r])) / n
            o = round(float(a.reshape(-1)[r]) / d)
            noise.append(reference.sqnr_noise(counts[r], edges[r], d, o, n, gamma))
        assert noise[0] < noise[1], noise
