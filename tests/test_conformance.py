"""The conformance suite: every registered method, on every backend.

A new method is tested by registering it: update, compute, merge, persistence, bad input and
the NaN rule run here for each entry of ``encanalyze.METHODS`` (the all-reduce runs for each in
``test_distributed.py``).
"""

import warnings

import numpy as np
import pytest

import encanalyze as ea
from tests.conftest import assert_xp_close

METHODS = sorted(ea.METHODS)
SHAPES = [((1,), None), ((4, 1), None), ((1, 6), None), ((4, 2), (1, 3))]


def _make(name, shape=(4, 1), block_size=None):
    return ea.METHODS[name].analyzer(shape, block_size=block_size)


def _data(rng, n=64):
    x = rng.standard_normal((n, 4, 6)).astype(np.float32)
    return x * np.float32([0.5, 1.0, 2.0, 4.0])[None, :, None]


def _state(backend, analyzer):
    state = analyzer.state_dict()["state"]
    return None if state is None else {k: backend.to_numpy(v) for k, v in state.items()}


def _assert_same_state(a, b):
    assert (a is None) == (b is None)
    if a is not None:
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_every_method_is_exported_and_persistable():
    for name, m in ea.METHODS.items():
        assert getattr(ea, m.analyzer.__name__) is m.analyzer, name
        assert m.analyzer.__name__ in ea.__all__
        assert m.observer in ("minmax", "histogram", "ema")
        assert m.rule is m.analyzer.rule


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("shape, block", SHAPES)
def test_update_and_compute(backend, rng, name, shape, block):
    x = _data(rng)
    analyzer = _make(name, shape, block)
    batch = analyzer.update_stats(backend.asarray(x))
    assert isinstance(batch, analyzer.stats_type) and batch.shape == shape
    for n, sym in ((255, False), (254, True), (15, True), (3, True)):
        lo, hi = analyzer.compute_encodings(n, sym)
        backend.check(lo, shape, "float32")
        backend.check(hi, shape, "float32")
        lo, hi = backend.to_numpy(lo), backend.to_numpy(hi)
        assert np.isfinite(lo).all() and np.isfinite(hi).all()
        assert (lo <= 0).all() and (hi >= 0).all() and (hi > lo).all()
    # from the statistics it returns, the same encodings (any stats of its type)
    stats = analyzer.get_stats()
    got = analyzer.compute_encodings_from_stats(stats, 255, False)
    want = analyzer.compute_encodings(255, False)
    if name != "entropy":  # public histograms do not carry the sign (documented)
        for g, w in zip(got, want):
            assert_xp_close(backend, g, backend.to_numpy(w))


@pytest.mark.parametrize("name", METHODS)
def test_merge_persist_and_identity(backend, rng, name, tmp_path):
    x = _data(rng)
    a, b = _make(name), _make(name)
    a.update_stats(backend.asarray(x[:32]))
    b.update_stats(backend.asarray(x[32:] * 1.5))
    before = _state(backend, a)
    a.merge(_make(name))  # a never-updated analyzer is the identity
    _assert_same_state(_state(backend, a), before)
    merged = _make(name).merge(a, b)
    lo, hi = (backend.to_numpy(v) for v in merged.compute_encodings(255, False))
    assert (lo <= 0).all() and (hi > 0).all()
    ea.save(merged, tmp_path / "m.npz")
    loaded = ea.load(tmp_path / "m.npz", namespace=backend.xp, device=backend.device)
    assert type(loaded) is type(merged) and loaded.params() == merged.params()
    _assert_same_state(_state(backend, loaded), _state(backend, merged))
    for g, w in zip(loaded.compute_encodings(255, False), (lo, hi)):
        assert_xp_close(backend, g, w)


@pytest.mark.parametrize("name", METHODS)
def test_bad_input_loses_nothing(backend, rng, name):
    analyzer = _make(name)
    with pytest.raises(ea.StatisticsNotFoundError):
        analyzer.compute_encodings(255, False)
    analyzer.update_stats(backend.asarray(_data(rng)))
    before = _state(backend, analyzer)
    with pytest.raises(RuntimeError, match="does not match input shape"):
        analyzer.update_stats(backend.asarray(rng.standard_normal((5, 3)), "float32"))
    with pytest.raises(ValueError, match="num_steps"):
        analyzer.compute_encodings(0, False)
    with pytest.raises(TypeError):
        analyzer.update_stats([1.0, 2.0])
    _assert_same_state(_state(backend, analyzer), before)


@pytest.mark.parametrize("name", METHODS)
def test_nan_is_ignored_and_counted(backend, rng, name):
    x = _data(rng)
    with_nan = x.copy()
    with_nan[5] = np.nan
    clean, dirty = _make(name), _make(name)
    clean.update_stats(backend.asarray(np.delete(x, 5, axis=0)))
    dirty.update_stats(backend.asarray(with_nan))
    with pytest.warns(RuntimeWarning, match="24 NaN values were ignored"):
        got = dirty.compute_encodings(255, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        want = clean.compute_encodings(255, False)
    for g, w in zip(got, want):
        assert_xp_close(backend, g, backend.to_numpy(w))


def test_share_stats_gathers_once(backend, rng):
    x = backend.asarray(_data(rng))
    percentile = ea.PercentileEncodingAnalyzer((4, 1), percentile=99)
    percentile.update_stats(x)
    for name in ("sqnr", "mse"):
        shared = _make(name).share_stats(percentile)
        own = _make(name)
        own.update_stats(x)
        for g, w in zip(shared.compute_encodings(255, False), own.compute_encodings(255, False)):
            assert_xp_close(backend, g, backend.to_numpy(w))
    with pytest.raises(TypeError, match="other statistics"):
        _make("minmax").share_stats(percentile)
    with pytest.raises(ValueError, match="different parameters"):
        ea.PercentileEncodingAnalyzer((4, 1), num_bins=64).share_stats(percentile)
