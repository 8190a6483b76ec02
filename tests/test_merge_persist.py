import json
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import encanalyze as ea
from encanalyze import (
    MinMaxEncodingAnalyzer,
    PercentileEncodingAnalyzer,
    SqnrEncodingAnalyzer,
    StatsFileError,
    TfEnhancedEncodingAnalyzer,
    merge_stats,
)

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
finite = st.floats(-1e3, 1e3, width=32)
batch = hnp.arrays(np.float32, st.tuples(st.integers(0, 12), st.just(3)), elements=finite)


def numpy_state(backend, analyzer):
    """The analyzer's state as NumPy arrays (missing NaN counts as zeros)."""
    arrays = analyzer.state_dict()["state"]
    out = {k: backend.to_numpy(v).copy() for k, v in arrays.items()}
    if "num_nan" not in out:
        out["num_nan"] = np.zeros(out["lo" if "lo" in out else "min"].shape, np.int64)
    return out


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def fed(backend, cls, batches, **kw):
    analyzer = cls((1, 3), **kw)
    for b in batches:
        analyzer.update_stats(backend.asarray(b))
    return analyzer


# -- merge --------------------------------------------------------------------------------------
@SETTINGS
@given(a=st.lists(batch, min_size=0, max_size=3), b=st.lists(batch, min_size=0, max_size=3))
def test_minmax_merge_is_exact_and_order_free(backend, a, b):
    whole = fed(backend, MinMaxEncodingAnalyzer, a + b)
    ab = fed(backend, MinMaxEncodingAnalyzer, a).merge(fed(backend, MinMaxEncodingAnalyzer, b))
    ba = fed(backend, MinMaxEncodingAnalyzer, b).merge(fed(backend, MinMaxEncodingAnalyzer, a))
    if whole.get_stats() is None:
        assert ab.get_stats() is None and ba.get_stats() is None
        return
    assert_same_state(numpy_state(backend, ab), numpy_state(backend, whole))
    assert_same_state(numpy_state(backend, ba), numpy_state(backend, whole))


@SETTINGS
@given(parts=st.lists(st.lists(batch, min_size=1, max_size=2), min_size=2, max_size=4))
def test_histogram_merge_conserves_counts_and_commutes(backend, parts):
    analyzers = [fed(backend, PercentileEncodingAnalyzer, p, num_bins=16) for p in parts]
    total = sum(b.shape[0] for p in parts for b in p)
    merged = merge_stats(*(a.get_stats() for a in analyzers))
    reverse = merge_stats(*(a.get_stats() for a in reversed(analyzers)))
    counts = backend.to_numpy(merged.histogram)
    np.testing.assert_array_equal(counts.sum(axis=-1), total)
    np.testing.assert_array_equal(backend.to_numpy(reverse.histogram), counts)
    # min: the union of the edge ranges where several parts hold data, else the one's own min
    mins = np.stack([backend.to_numpy(a.get_stats().min) for a in analyzers])
    firsts = np.stack([backend.to_numpy(a.get_stats().bin_edges)[..., 0] for a in analyzers])
    held = mins <= np.stack([backend.to_numpy(a.get_stats().max) for a in analyzers])
    want = np.where(held.sum(axis=0) > 1, np.where(held, firsts, np.inf).min(axis=0), mins.min(0))
    np.testing.assert_array_equal(backend.to_numpy(merged.min), want)
    np.testing.assert_array_equal(backend.to_numpy(reverse.min), want)
    # grouping is what may change: merging pairwise re-bins the first part twice
    pairwise = analyzers[0].get_stats()
    for a in analyzers[1:]:
        pairwise = merge_stats(pairwise, a.get_stats())
    np.testing.assert_array_equal(backend.to_numpy(pairwise.histogram).sum(axis=-1), total)
    np.testing.assert_array_equal(backend.to_numpy(pairwise.min), backend.to_numpy(merged.min))


def test_histogram_grouping_changes_counts_not_totals(backend, rng):
    parts = [[rng.standard_normal((50, 3)).astype(np.float32) * s] for s in (1.0, 2.0, 4.0)]
    a, b, c = (fed(backend, PercentileEncodingAnalyzer, p, num_bins=8).get_stats() for p in parts)
    once = backend.to_numpy(merge_stats(a, b, c).histogram)
    twice = backend.to_numpy(merge_stats(merge_stats(a, b), c).histogram)
    np.testing.assert_array_equal(once.sum(axis=-1), twice.sum(axis=-1))
    assert not np.array_equal(once, twice)  # a re-binned twice lands differently


def test_merge_with_never_updated_changes_nothing(backend, rng):
    data = [rng.standard_normal((20, 3)).astype(np.float32)]
    for cls in (MinMaxEncodingAnalyzer, PercentileEncodingAnalyzer, SqnrEncodingAnalyzer):
        kw = {} if cls is MinMaxEncodingAnalyzer else {"num_bins": 16}
        analyzer = fed(backend, cls, data, **kw)
        before = numpy_state(backend, analyzer)
        analyzer.merge(cls((1, 3), **kw))
        assert_same_state(numpy_state(backend, analyzer), before)
        empty = cls((1, 3), **kw).merge(analyzer)
        assert_same_state(numpy_state(backend, empty), before)
        blank = fed(backend, cls, [np.zeros((0, 3), np.float32)], **kw)  # identity stats
        assert_same_state(numpy_state(backend, analyzer.merge(blank)), before)


def test_histogram_merge_equals_reference(backend, rng):
    from tests import reference

    parts = [rng.standard_normal((40, 3)).astype(np.float32) * s for s in (1.0, 3.0)]
    a, b = (fed(backend, PercentileEncodingAnalyzer, [p], num_bins=16) for p in parts)
    merged = a.merge(b).get_stats()
    for col in range(3):
        (ca, *_), (cb, *_) = (reference.histogram_rows([p[:, col]], 16) for p in parts)
        (lo_a, hi_a), (lo_b, hi_b) = (reference.histogram_edges([p[:, col]], 16) for p in parts)
        lo, hi = min(lo_a, lo_b), max(hi_a, hi_b)
        want = reference.rebin(ca, lo_a, hi_a, lo, hi) + reference.rebin(cb, lo_b, hi_b, lo, hi)
        np.testing.assert_array_equal(backend.to_numpy(merged.histogram)[0, col], want)


def test_merge_errors(backend, rng):
    x = backend.asarray(rng.standard_normal((5, 3)), "float32")
    a = MinMaxEncodingAnalyzer((1, 3))
    a.update_stats(x)
    with pytest.raises(TypeError, match="PercentileEncodingAnalyzer into a MinMax"):
        a.merge(PercentileEncodingAnalyzer((1, 3)))
    with pytest.raises(ValueError, match="different parameters"):
        a.merge(MinMaxEncodingAnalyzer((5, 1)))
    with pytest.raises(ValueError, match="different parameters"):
        PercentileEncodingAnalyzer((1, 3), num_bins=8).merge(
            PercentileEncodingAnalyzer((1, 3), num_bins=16)
        )
    other = MinMaxEncodingAnalyzer((1, 3))
    other.update_stats(np.ones((2, 3)) if backend.name != "numpy" else _strict_ones())
    before = numpy_state(backend, a)
    with pytest.raises(TypeError, match="arrays but the input is"):
        a.merge(other)
    assert_same_state(numpy_state(backend, a), before)
    with pytest.raises(TypeError, match="different types"):
        merge_stats(
            a.get_stats(),
            fed(backend, PercentileEncodingAnalyzer, [rng.standard_normal((4, 3))]).get_stats(),
        )


def _strict_ones():
    import array_api_strict

    return array_api_strict.ones((2, 3))


# -- state dicts and files ----------------------------------------------------------------------
ALL = [
    (MinMaxEncodingAnalyzer, {}),
    (PercentileEncodingAnalyzer, {"num_bins": 32, "percentile": 99.0}),
    (SqnrEncodingAnalyzer, {"num_bins": 32, "gamma": 1.0, "histogram_growth_limit": 2.0}),
    (TfEnhancedEncodingAnalyzer, {}),
]


def _trained(backend, rng, cls, kw, dtype="float32"):
    analyzer = cls((4, 1), **kw)
    x = rng.standard_normal((4, 64))
    x[1, 3] = np.nan
    analyzer.update_stats(backend.asarray(x, dtype))
    analyzer.update_stats(backend.asarray(x * 3, dtype))
    return analyzer


def _encodings(backend, analyzer):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        encodings = analyzer.compute_encodings(255, False)
    to_numpy = np.asarray if isinstance(encodings[0], np.ndarray) else backend.to_numpy
    return [to_numpy(a) for a in encodings]


@pytest.mark.parametrize("cls, kw", ALL, ids=lambda v: getattr(v, "__name__", ""))
def test_state_dict_round_trip(backend, rng, cls, kw):
    a = _trained(backend, rng, cls, kw)
    sd = a.state_dict()
    assert json.loads(json.dumps(sd["params"])) == sd["params"]
    b = cls((4, 1), **kw)
    b.load_state_dict(sd)
    assert_same_state(numpy_state(backend, b), numpy_state(backend, a))
    for x, y in zip(_encodings(backend, a), _encodings(backend, b)):
        np.testing.assert_array_equal(x, y)
    # a bad state dict changes nothing
    broken = dict(sd, state={k: v[:1, ...] for k, v in sd["state"].items()})
    before = numpy_state(backend, b)
    with pytest.raises(ValueError, match="shape"):
        b.load_state_dict(broken)
    with pytest.raises(ValueError, match="cannot be loaded"):
        b.load_state_dict(dict(sd, **{"class": "Other"}))
    with pytest.raises(ValueError, match="version"):
        b.load_state_dict(dict(sd, format_version=99))
    assert_same_state(numpy_state(backend, b), before)


@pytest.mark.parametrize("cls, kw", ALL, ids=lambda v: getattr(v, "__name__", ""))
def test_save_load_round_trip_any_backend(backend, rng, tmp_path, cls, kw):
    a = _trained(backend, rng, cls, kw)
    path = tmp_path / "stats.npz"
    ea.save(a, path)
    into_numpy = ea.load(path)
    assert type(into_numpy) is cls and into_numpy.params() == a.params()
    want = _encodings(backend, a)
    for x, y in zip(want, _encodings(backend, into_numpy)):
        np.testing.assert_array_equal(x, y)
    same = ea.load(path, namespace=backend.xp, device=backend.device)
    backend.check(
        same.get_stats().min if cls is MinMaxEncodingAnalyzer else same.get_stats().histogram
    )
    for x, y in zip(want, _encodings(backend, same)):
        np.testing.assert_array_equal(x, y)


def test_bfloat16_and_float64_survive_files(tmp_path, rng):
    torch = pytest.importorskip("torch")
    a = MinMaxEncodingAnalyzer((4, 1))
    a.update_stats(torch.from_numpy(rng.standard_normal((4, 9)).astype(np.float32)).bfloat16())
    ea.save(a, tmp_path / "bf16.npz")
    b = ea.load(tmp_path / "bf16.npz", namespace=torch)
    assert b.get_stats().min.dtype == torch.bfloat16
    assert torch.equal(b.compute_encodings(255, False)[0], a.compute_encodings(255, False)[0])
    c = PercentileEncodingAnalyzer((2,), num_bins=8)
    c.update_stats(rng.standard_normal((5, 2)))
    ea.save(c, tmp_path / "f64.npz")
    assert ea.load(tmp_path / "f64.npz").get_stats().min.dtype == np.float64


def test_never_updated_analyzer_round_trips(tmp_path):
    ea.save(SqnrEncodingAnalyzer((3,), num_bins=8, gamma=2.0), tmp_path / "empty.npz")
    loaded = ea.load(tmp_path / "empty.npz")
    assert loaded.get_stats() is None and loaded.gamma == 2.0 and loaded.num_bins == 8


def test_bad_files_raise_and_leave_the_target(tmp_path, rng):
    good = _trained_numpy(rng)
    path = tmp_path / "good.npz"
    ea.save(good, path)
    data = path.read_bytes()
    target = PercentileEncodingAnalyzer((4, 1), num_bins=32, percentile=99.0)
    target.update_stats(np.ones((4, 3), np.float32))
    before = target.state_dict()["state"]["counts"].copy()

    def check(p, pattern):
        with pytest.raises(StatsFileError, match=pattern):
            ea.load(p, into=target)
        np.testing.assert_array_equal(target.state_dict()["state"]["counts"], before)

    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])
    check(tmp_path / "truncated.npz", "not a readable")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
    check(tmp_path / "garbage.npz", "not a readable")
    for name, change, pattern in [
        ("version", {"format_version": 2}, "version 2 is not supported"),
        ("class", {"class": "Nope"}, "unknown analyzer class"),
        ("format", {"format": "other"}, "not an encanalyze"),
    ]:
        check(_rewrite_header(path, tmp_path / f"{name}.npz", change), pattern)
    ea.save(MinMaxEncodingAnalyzer((4, 1)), tmp_path / "minmax.npz")
    check(tmp_path / "minmax.npz", "holds a MinMaxEncodingAnalyzer")
    ea.save(PercentileEncodingAnalyzer((2, 1), num_bins=32), tmp_path / "shape.npz")
    check(tmp_path / "shape.npz", "do not match")
    with pytest.raises(FileNotFoundError):
        ea.load(tmp_path / "missing.npz")
    # nothing half-written is left behind by save
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def _trained_numpy(rng):
    a = PercentileEncodingAnalyzer((4, 1), num_bins=32, percentile=99.0)
    a.update_stats(rng.standard_normal((4, 50)).astype(np.float32))
    return a


def _rewrite_header(src, dst, change):
    with np.load(src) as f:
        arrays = {k: f[k] for k in f.files}
    header = json.loads(str(arrays["header"][()]))
    header.update(change)
    arrays["header"] = np.asarray(json.dumps(header))
    np.savez(dst, **arrays)
    assert zipfile.is_zipfile(dst)
    return dst


@pytest.mark.parametrize("method", sorted(ea.METHODS))
def test_analyzers_that_saw_data_deepcopy_and_pickle(backend, rng, method):
    import copy
    import pickle

    analyzer = ea.METHODS[method].analyzer((3, 1))
    analyzer.update_stats(backend.asarray(rng.standard_normal((3, 40)), "float32"))
    more = backend.asarray(rng.standard_normal((3, 8)), "float32")
    want = ea.METHODS[method].analyzer((3, 1)).merge(analyzer)
    want.update_stats(more)
    for clone in (copy.deepcopy(analyzer), pickle.loads(pickle.dumps(analyzer))):
        clone.update_stats(more)  # keeps working in the same namespace and device
        for g, w in zip(clone.compute_encodings(255, False), want.compute_encodings(255, False)):
            np.testing.assert_array_equal(backend.to_numpy(g), backend.to_numpy(w))
    assert analyzer.get_stats() is not None
