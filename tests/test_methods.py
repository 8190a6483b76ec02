"""The peers' methods: MSE (PyTorch's HistogramObserver), entropy (TensorRT / Model Optimizer's KL
search) and moving-average min-max (PyTorch's moving-average observers), against the peers."""

import numpy as np
import pytest

import encanalyze as ea
from encanalyze import (
    EmaMinMaxEncodingAnalyzer,
    EntropyEncodingAnalyzer,
    MseEncodingAnalyzer,
)
from encanalyze._rules import mse
from encanalyze._rules.entropy import kl_amax
from encanalyze._rules.mse import l2_search
from tests import peers
from tests.conftest import assert_xp_close


def _samples(rng, kind, n):
    if kind == "normal":
        return rng.standard_normal(n)
    if kind == "heavy":
        return rng.standard_t(1.5, n)
    if kind == "positive":
        return rng.exponential(1.0, n)
    return np.concatenate([rng.standard_normal(n // 2), rng.standard_normal(n - n // 2) * 0.1 + 6])


# -- MSE -------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 4, 2])
def test_mse_search_equals_torch_histogram_observer(bits):
    torch = pytest.importorskip("torch")
    from torch.ao.quantization.observer import HistogramObserver

    rng = np.random.default_rng(bits)
    counts, lo, hi, want = [], [], [], []
    for kind in ("normal", "heavy", "positive", "bimodal"):
        x = (_samples(rng, kind, 4000) * rng.uniform(0.01, 10)).astype(np.float32)
        obs = HistogramObserver(bins=2048)
        obs.dst_nbins = 2**bits
        obs(torch.from_numpy(x))
        counts.append(obs.histogram.numpy().copy())
        lo.append(float(obs.min_val))
        hi.append(float(obs.max_val))
        want.append([float(v) for v in obs._non_linear_param_search()])
    import array_api_compat.numpy as xp

    got = l2_search(xp, np.stack(counts), np.float32(lo), np.float32(hi), 2**bits)
    np.testing.assert_array_equal(np.stack(got, axis=1), np.float32(want))


def test_mse_per_channel_equals_rows_on_every_backend(backend, rng):
    x = np.stack([_samples(rng, k, 3000) for k in ("normal", "heavy", "positive", "bimodal")])
    x = (x * rng.uniform(0.1, 5, (4, 1))).astype(np.float32)
    analyzer = MseEncodingAnalyzer((1, 4), num_bins=512)  # channels on the last axis
    for part in np.split(x.T, 3):
        analyzer.update_stats(backend.asarray(part))
    stats = analyzer.get_stats()
    import array_api_compat.numpy as xp

    counts = backend.to_numpy(stats.histogram)[0]
    edges = backend.to_numpy(stats.bin_edges)[0]
    lo, hi = l2_search(xp, counts, edges[:, 0], edges[:, -1], 256)
    enc = analyzer.compute_encodings(255, False)
    want_lo, want_hi = np.minimum(lo, 0), np.maximum(hi, 0)
    assert_xp_close(backend, enc[0], want_lo[None], rtol=1e-6)
    assert_xp_close(backend, enc[1], want_hi[None], rtol=1e-6)
    # clipping: the heavy-tailed channel loses its extremes, never gains range
    assert backend.to_numpy(enc[1])[0, 1] < x[1].max()
    assert (backend.to_numpy(enc[1])[0] <= x.max(axis=1) + 1e-6).all()


# -- entropy ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bits, unsigned, bins", [(4, False, 512), (8, False, 384), (4, True, 640)])
def test_entropy_amax_equals_model_optimizer(rng, bits, unsigned, bins):
    import array_api_compat.numpy as xp

    hists, edges = [], []
    for kind in ("normal", "heavy", "positive"):
        a = np.abs(_samples(rng, kind, 20000)).astype(np.float32)
        hists.append(np.histogram(a, bins=bins, range=(0, a.max()))[0].astype(np.float32))
        edges.append(np.linspace(0, a.max(), bins + 1).astype(np.float32))
    levels = 1 << (bits - 1 + int(unsigned))
    got = kl_amax(xp, np.stack(hists), np.stack(edges), levels)
    want = [peers.entropy_amax(h, e, bits, unsigned) for h, e in zip(hists, edges)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_entropy_signed_and_unsigned_channels(backend, rng):
    x = np.abs(rng.standard_normal((3, 8000))).astype(np.float32)
    x[1] *= -1  # all negative
    x[2, ::2] *= -1  # both signs
    analyzer = EntropyEncodingAnalyzer((3, 1))
    analyzer.update_stats(backend.asarray(x[:, :4000]))
    analyzer.update_stats(backend.asarray(x[:, 4000:] * 1.2))  # grows the |x| range
    lo, hi = (backend.to_numpy(a)[:, 0] for a in analyzer.compute_encodings(255, False))
    assert lo[0] == 0.0 and lo[1] == -hi[1] and lo[2] == -hi[2]
    amax = np.abs(x * 1.2).max(axis=1)
    assert (hi > 2.0).all() and (hi <= amax).all()
    # the rule on the histogram: the same amax as the transcription of the peer (signed: 128)
    stats = analyzer.get_stats()
    counts = backend.to_numpy(stats.histogram)[:, 0]
    edges = backend.to_numpy(stats.bin_edges)[:, 0]
    want = peers.entropy_amax(counts[2], edges[2], 8, False)
    np.testing.assert_allclose(hi[2], want, rtol=1e-6)


def test_entropy_bad_parameters():
    with pytest.raises(ValueError, match="must exceed start_bin"):
        EntropyEncodingAnalyzer((1,), num_bins=100)
    with pytest.raises(ValueError, match="start_bin"):
        EntropyEncodingAnalyzer((1,), start_bin=0)


# -- moving-average min-max --------------------------------------------------------------------
@pytest.mark.parametrize("per_channel", [False, True])
def test_ema_equals_torch_moving_average_observers(rng, per_channel):
    torch = pytest.importorskip("torch")
    from torch.ao.quantization.observer import (
        MovingAverageMinMaxObserver,
        MovingAveragePerChannelMinMaxObserver,
    )

    batches = [(rng.standard_normal((6, 20)) * (1 + i)).astype(np.float32) for i in range(5)]
    if per_channel:
        peer = MovingAveragePerChannelMinMaxObserver(averaging_constant=0.01, ch_axis=1)
        ours = EmaMinMaxEncodingAnalyzer((1, 20))
    else:
        peer = MovingAverageMinMaxObserver(averaging_constant=0.01)
        ours = EmaMinMaxEncodingAnalyzer((1,))
    for b in batches:
        peer(torch.from_numpy(b))
        ours.update_stats(torch.from_numpy(b))
    stats = ours.get_stats()
    np.testing.assert_array_equal(stats.min.reshape(-1).numpy(), peer.min_val.reshape(-1).numpy())
    np.testing.assert_array_equal(stats.max.reshape(-1).numpy(), peer.max_val.reshape(-1).numpy())


def test_ema_any_backend_block_wise(backend, rng):
    c = 0.25
    batches = [rng.standard_normal((4, 8)).astype(np.float32) * (i + 1) for i in range(3)]
    analyzer = EmaMinMaxEncodingAnalyzer((4, 2), averaging_constant=c, block_size=(1, 4))
    for b in batches:
        analyzer.update_stats(backend.asarray(b))
    blocks = [b.reshape(4, 2, 4) for b in batches]
    lo, hi = blocks[0].min(-1), blocks[0].max(-1)
    for b in blocks[1:]:
        lo = lo + np.float32(c) * (b.min(-1) - lo)
        hi = hi + np.float32(c) * (b.max(-1) - hi)
    stats = analyzer.get_stats()
    assert_xp_close(backend, stats.min, lo, rtol=1e-6)
    assert_xp_close(backend, stats.max, hi, rtol=1e-6)


def test_ema_merge_is_a_count_weighted_average(backend, rng):
    a, b = (EmaMinMaxEncodingAnalyzer((2, 1), averaging_constant=0.5) for _ in range(2))
    for v in ([[1.0, -1.0], [2.0, 3.0]], [[3.0, -3.0], [2.0, 3.0]]):
        a.update_stats(backend.asarray(v, "float32"))
    b.update_stats(backend.asarray([[10.0, 0.0], [np.nan, np.nan]], "float32"))
    # a: row 0 (-2, 2) after two batches; b: row 0 (0, 10) after one; row 1 only in a
    merged = a.merge(b).get_stats()
    assert_xp_close(backend, merged.min, np.float32([[(-2 * 2 + 0) / 3], [2.0]]), rtol=1e-6)
    assert_xp_close(backend, merged.max, np.float32([[(2 * 2 + 10) / 3], [3.0]]), rtol=1e-6)


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, float("nan")])
def test_ema_bad_averaging_constant(bad):
    with pytest.raises(ValueError, match="averaging_constant"):
        EmaMinMaxEncodingAnalyzer((1,), averaging_constant=bad)


def test_ema_keeps_an_infinity_seen_twice(backend):
    analyzer = EmaMinMaxEncodingAnalyzer((1, 2), averaging_constant=0.5)
    x = np.array([[1.0, -1.0], [np.inf, 2.0]], np.float32)
    analyzer.update_stats(backend.asarray(x))
    analyzer.update_stats(backend.asarray(x * 2))  # inf - inf would be NaN
    stats = analyzer.get_stats()
    assert_xp_close(backend, stats.max, np.float32([[np.inf, 3.0]]))
    assert_xp_close(backend, stats.min, np.float32([[1.5, -1.5]]))


@pytest.mark.parametrize(
    "values",
    [
        [0, 5.6e-45],
        [-3e-44, 5.6e-45],
        [5.0] * 10,
        [1.0, 1.0000001],
        (np.random.default_rng(0).random(100) * 1e-20).tolist(),
        (np.random.default_rng(0).random(100) * 1e19).tolist(),
    ],
    ids=[
        "subnormal",
        "negative-subnormal",
        "constant",
        "one-ulp",
        "1e-20",
        "1e19",
    ],
)
def test_mse_on_data_below_float_resolution_matches_pytorch(values):
    torch = pytest.importorskip("torch")
    from torch.ao.quantization.observer import HistogramObserver

    from encanalyze._encoding import minmax_encoding

    x = np.asarray(values, np.float32)
    peer = HistogramObserver(bins=2048, quant_min=0, quant_max=255, dtype=torch.quint8)
    peer(torch.from_numpy(x))
    lo, hi = (np.asarray([float(t)], np.float32) for t in peer._non_linear_param_search())
    want = minmax_encoding(np, lo, hi, 255, False, two_bit_step=False)
    analyzer = ea.MseEncodingAnalyzer((1,))
    analyzer.update_stats(x)
    got = analyzer.compute_encodings(255, False)
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(want), rtol=1e-6, atol=1e-43)
    assert got[0][0] <= 0 <= got[1][0] and got[1][0] > 0


def test_entropy_at_16_bits_and_beyond_uses_tables_no_wider_than_the_bins(monkeypatch):
    """Past one level per bin every bin is its own group: the same amax, (T, B) tables."""
    from encanalyze._rules import entropy

    x = np.random.default_rng(3).standard_normal((4, 3000)).astype(np.float32)
    widths = []
    groups = entropy._groups.__wrapped__

    def spy(num_bins, levels, start_bin):
        widths.append(levels)
        return groups(num_bins, levels, start_bin)

    monkeypatch.setattr(entropy, "_groups", spy)
    results = []
    for num_steps in (2**12 - 1, 2**16 - 1, 2**32 - 1):
        analyzer = ea.EntropyEncodingAnalyzer((4, 1), num_bins=512)
        analyzer.update_stats(x)
        results.append(analyzer.compute_encodings(num_steps, True)[1])
    assert max(widths) == 512
    np.testing.assert_array_equal(results[1], results[0])
    np.testing.assert_array_equal(results[2], results[0])


def test_entropy_divergences_do_not_change_past_one_level_per_bin():
    from encanalyze._rules.entropy import _divergences

    rng = np.random.default_rng(4)
    bins = rng.integers(0, 50, (3, 256)).astype(np.float64)
    bins[:, rng.integers(0, 256, 60)] = 0
    at_bins = _divergences(np, bins, 256, 128)
    for levels in (300, 1024):
        wider = _divergences(np, bins, levels, 128)
        np.testing.assert_allclose(wider, at_bins, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("levels, bins", [(128, 2048), (256, 2048), (8, 512), (128, 256)])
def test_entropy_on_candidate_thresholds_equals_every_threshold(
    backend, rng, monkeypatch, levels, bins
):
    """Rows of few values are scored on the thresholds that can win: the same amax, exactly."""
    from encanalyze._rules import entropy

    rows = []
    for k in sorted({1, 2, 9, 25, 60, 150, min(400, bins), bins}):  # up to a dense row
        c = np.zeros(bins)
        c[rng.choice(bins, size=k, replace=False)] = rng.integers(1, 40, size=k)
        rows.append(c)
    tie = np.zeros(bins)
    tie[[200, 201, bins - 1]] = 5  # equal counts: tied divergences
    rows += [tie, np.r_[np.ones(bins - 1), 0.0]]  # the last bin empty: a tail past it
    counts = backend.asarray(np.stack(rows), "float32")
    edges = backend.asarray(np.tile(np.linspace(0, 2.5, bins + 1), (len(rows), 1)), "float32")
    xp = backend.xp
    got = backend.to_numpy(entropy.kl_amax(xp, counts, edges, levels))
    monkeypatch.setattr(entropy, "SPARSE_FACTOR", 10**9)  # every row on every threshold
    want = backend.to_numpy(entropy.kl_amax(xp, counts, edges, levels))
    np.testing.assert_array_equal(got, want)


def test_mse_rows_that_stop_early_leave_the_walk_and_keep_their_result(rng):
    """Rows whose walk ends at different steps: each row's range is the one it gets alone."""
    import array_api_compat.numpy as xp

    rows = [rng.standard_normal(n) for n in (9, 25, 400, 5000)]
    rows += [np.r_[np.zeros(24), -3.4e-15], rng.standard_t(1.5, 3000), np.full(50, 2.0)]
    hists, los, his = [], [], []
    for r in rows:
        lo, hi = float(r.min()), float(r.max()) if r.max() > r.min() else float(r.min()) + 1
        hists.append(np.histogram(r, bins=256, range=(lo, hi))[0])
        los.append(lo)
        his.append(hi)
    counts = np.stack(hists).astype(np.float32)
    lo, hi = np.array(los, np.float32), np.array(his, np.float32)
    together = l2_search(xp, counts, lo, hi, 256)
    for k in range(len(rows)):
        alone = l2_search(xp, counts[k : k + 1], lo[k : k + 1], hi[k : k + 1], 256)
        assert together[0][k] == alone[0][0] and together[1][k] == alone[1][0], k


def test_mse_walk_over_occupied_bins_equals_the_walk_over_every_bin(backend, rng, monkeypatch):
    """Sparse rows (weights: a few values in many bins) walk over their occupied bins only:
    the same ranges, bit for bit, as the walk over every bin; dead and single-value rows too."""
    rows = [rng.standard_t(3, n) * rng.uniform(0.01, 10) for n in (1, 3, 9, 25, 120, 120, 400)]
    rows += [np.r_[np.zeros(24), -3.4e-15], np.zeros(7), np.r_[np.full(30, 2.0), 2.5]]
    ranges = [(r.min(), max(r.max(), r.min() + 1)) for r in rows]
    hists = [np.histogram(r, bins=2048, range=span)[0] for r, span in zip(rows, ranges)]
    counts = backend.asarray(np.stack(hists), "float32")
    lo = backend.asarray(np.linspace(-3, -0.5, len(hists)), "float32")
    hi = backend.asarray(np.linspace(0.5, 9, len(hists)), "float32")
    xp = backend.xp
    for levels in (16, 256):
        got = l2_search(xp, counts, lo, hi, levels)
        monkeypatch.setattr(mse, "SPARSE_FACTOR", 10**9)  # every bin
        want = l2_search(xp, counts, lo, hi, levels)
        monkeypatch.undo()
        for g, w in zip(got, want):
            np.testing.assert_array_equal(backend.to_numpy(g), backend.to_numpy(w))


# -- encodings of many analyzers at once ----------------------------------------------------
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.filterwarnings("ignore:.*NaN values were ignored")
def test_encodings_together_equal_each_alone(backend, rng, symmetric):
    """Host histogram analyzers of one method and parameters are encoded by one call of their
    rule over all their histograms: each gets the encodings it computes alone, bit for bit, in
    its own namespace; empty ones get their error; other methods and devices go one by one."""
    from encanalyze._analyzer import compute_encodings_together
    from encanalyze._errors import StatisticsNotFoundError

    made = []
    for method, options in (
        ("percentile", {"percentile": 99.9}),
        ("percentile", {"percentile": 99.99}),
        ("sqnr", {}),
        ("mse", {}),
        ("entropy", {}),
        ("tf_enhanced", {}),
        ("minmax", {}),
    ):
        for k, shape in enumerate([(1,), (1,), (3, 1), (1,), (2, 1)]):
            kind = ("normal", "heavy", "positive", "bimodal")[k % 4]
            a = ea.METHODS[method].analyzer(shape, **options)
            if k == 3 and method != "minmax":  # one never updated: its error, in its place
                made.append(a)
                continue
            rows = shape[0]
            for scale in (1.0, rng.uniform(0.5, 3)):
                x = (_samples(rng, kind, rows * 600).reshape(rows, 600) * scale).astype("f4")
                x[0, ::97] = np.nan if k == 1 else x[0, ::97]
                a.update_stats(backend.asarray(x if rows > 1 else x.reshape(-1)))
            made.append(a)
    got = compute_encodings_together(made, 255, symmetric)
    assert len(got) == len(made)
    for a, found in zip(made, got):
        try:
            want = a.compute_encodings(255, symmetric)
        except StatisticsNotFoundError as err:
            assert isinstance(found, StatisticsNotFoundError) and str(found) == str(err)
            continue
        for g, w in zip(found, want):
            backend.check(g, tuple(a.shape), w.dtype)
            np.testing.assert_array_equal(backend.to_numpy(g), backend.to_numpy(w))
