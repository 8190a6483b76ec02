"""The library under hostile input: each defect found in issue 12, as a regression test."""

import io
import json
import os
import zipfile
from fractions import Fraction

import numpy as np
import pytest

import encanalyze as ea

X = np.random.default_rng(0).standard_normal(500).astype(np.float32)


# -- inputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ea.MinMaxEncodingAnalyzer, ea.PercentileEncodingAnalyzer])
def test_torch_inputs_that_require_grad_leave_no_graph(cls):
    torch = pytest.importorskip("torch")
    w = torch.randn(1000, requires_grad=True)
    analyzer = cls((1,))
    for _ in range(3):
        analyzer.update_stats(w * 2)  # each input carries an autograd graph
        analyzer.observe(w * 2)
    lo, hi = analyzer.compute_encodings(255, False)
    assert not lo.requires_grad and not hi.requires_grad
    stats = analyzer.get_stats()
    assert not any(getattr(v, "requires_grad", False) for v in vars(stats).values())


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "uint64"])
@pytest.mark.parametrize("cls", [ea.MinMaxEncodingAnalyzer, ea.SqnrEncodingAnalyzer])
def test_torch_unsigned_integers_are_calibrated(dtype, cls):
    torch = pytest.importorskip("torch")
    values = np.array([0, 3, 9, 200, 17], dtype=np.int64)
    t = torch.from_numpy(values).to(getattr(torch, dtype))
    got, want = cls((1,)), cls((1,))
    got.update_stats(t)
    want.update_stats(values.astype(np.float64))
    for g, w in zip(got.compute_encodings(255, False), want.compute_encodings(255, False)):
        np.testing.assert_allclose(g.double().numpy(), w, rtol=1e-6)


def test_masked_arrays_are_refused_and_change_nothing():
    analyzer = ea.PercentileEncodingAnalyzer((1,))
    analyzer.update_stats(X)
    before = analyzer.state_dict()["state"]
    with pytest.raises(TypeError, match="masked arrays are not supported"):
        analyzer.update_stats(np.ma.masked_array([1.0, 2.0], mask=[False, True]))
    after = analyzer.state_dict()["state"]
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("limit", [np.float32(2.0), np.int64(3), Fraction(5, 2)])
def test_growth_limit_takes_numpy_scalars_and_fractions(limit, tmp_path):
    analyzer = ea.SqnrEncodingAnalyzer((1,), histogram_growth_limit=limit)
    analyzer.update_stats(X)
    ea.save(analyzer, tmp_path / "s.npz")
    assert ea.load(tmp_path / "s.npz").growth_limit == float(limit)


# -- parameters that cannot be computed --------------------------------------------------------


@pytest.mark.parametrize("num_steps", [1e300, 2**1024, 2**33])
def test_num_steps_beyond_32_bits_is_refused(num_steps):
    analyzer = ea.MinMaxEncodingAnalyzer((1,))
    analyzer.update_stats(X)
    with pytest.raises(ValueError, match="num_steps"):
        analyzer.compute_encodings(num_steps, False)


def test_gamma_beyond_float64_noise_is_refused():
    with pytest.raises(ValueError, match="gamma must be a number in"):
        ea.SqnrEncodingAnalyzer((1,), gamma=1e308)


def test_num_bins_beyond_float32_positions_is_refused():
    with pytest.raises(ValueError, match="num_bins must be at most"):
        ea.PercentileEncodingAnalyzer((1,), num_bins=2**25)


def test_sqnr_of_huge_float64_data_is_the_scaled_result():
    x = np.random.default_rng(1).standard_normal(300) * 1e160
    huge = ea.SqnrEncodingAnalyzer((1,))
    huge.update_stats(x)
    small = ea.SqnrEncodingAnalyzer((1,))
    small.update_stats(x * 2.0**-540)  # exact: a power of two
    for h, s in zip(huge.compute_encodings(255, False), small.compute_encodings(255, False)):
        np.testing.assert_array_equal(h, s * 2.0**540)
    lo, hi = huge.compute_encodings(255, False)
    assert np.all(np.isfinite([lo, hi])) and lo < 0 < hi


@pytest.mark.parametrize(
    "cls", [ea.PercentileEncodingAnalyzer, ea.SqnrEncodingAnalyzer, ea.MseEncodingAnalyzer]
)
def test_a_range_that_overflows_float32_is_a_clear_error(backend, cls):
    x = backend.asarray(np.array([-1.8e38, 0.0, 1.8e38], np.float32))
    analyzer = cls((1,))
    analyzer.update_stats(backend.asarray(np.array([1.0, 2.0], np.float32)))
    with pytest.raises(ValueError, match="wider than .*float32 can hold"):  # noqa: PT012
        with np.errstate(over="ignore", invalid="ignore"):
            analyzer.update_stats(x)
            analyzer.compute_encodings(255, False)  # devices: found when encodings are computed


# -- statistics files --------------------------------------------------------------------------


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _saved(tmp_path):
    analyzer = ea.PercentileEncodingAnalyzer((2, 1), num_bins=16)
    analyzer.update_stats(np.stack([X, X * 2]).reshape(2, -1))
    path = tmp_path / "ok.npz"
    ea.save(analyzer, path)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    header = json.loads(str(np.load(io.BytesIO(members["header.npy"]))[()]))
    return header, members


def _write(path, header, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("header.npy", _npy(np.asarray(json.dumps(header))))
        for name, data in members.items():
            if name != "header.npy":
                z.writestr(name, data)
    return path


def test_load_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ea.StatsFileError, match="not a regular file"):
        ea.load(tmp_path / "pipe")


def test_load_refuses_a_plain_npy(tmp_path):
    np.save(tmp_path / "a.npy", X)
    with pytest.raises(ea.StatsFileError):
        ea.load(tmp_path / "a.npy")


@pytest.mark.parametrize("field, value", [("class", ["Percentile"]), ("params", [1, 2])])
def test_load_refuses_wrongly_typed_header_fields(tmp_path, field, value):
    header, members = _saved(tmp_path)
    header[field] = value
    with pytest.raises(ea.StatsFileError):
        ea.load(_write(tmp_path / "bad.npz", header, members))


def test_load_refuses_a_deeply_nested_header(tmp_path):
    _, members = _saved(tmp_path)
    with zipfile.ZipFile(tmp_path / "deep.npz", "w") as z:
        z.writestr("header.npy", _npy(np.asarray("[" * 100_000 + "]" * 100_000)))
        for name, data in members.items():
            if name != "header.npy":
                z.writestr(name, data)
    with pytest.raises(ea.StatsFileError, match="corrupt header"):
        ea.load(tmp_path / "deep.npz")


def test_load_refuses_a_member_declaring_more_than_it_holds(tmp_path):
    header, members = _saved(tmp_path)
    raw = members["state.counts.npy"]
    members["state.counts.npy"] = raw.replace(b"(2, 16)", b"(1000000000000,)".ljust(7))
    with pytest.raises(ea.StatsFileError, match="declares shape"):
        ea.load(_write(tmp_path / "bad.npz", header, members))


def test_load_checks_sizes_before_inflating_and_reads_only_named_members(tmp_path):
    header, members = _saved(tmp_path)
    bomb = _npy(np.zeros(4_000_000, np.float32))  # 16 MB of zeros: a few KB compressed
    path = _write(tmp_path / "extra.npz", header, {**members, "state.extra.npy": bomb})
    assert path.stat().st_size < 100_000
    loaded = ea.load(path, max_bytes=1 << 20)  # the undeclared member is never read
    assert loaded.get_stats().histogram.sum() == 2 * X.size
    members["state.counts.npy"] = _npy(np.zeros((2, 16), np.float32)) + b"\0" * 2_000_000
    with pytest.raises(ea.StatsFileError, match="over the limit"):
        ea.load(_write(tmp_path / "bomb.npz", header, members), max_bytes=1 << 20)


@pytest.mark.parametrize(
    "key, change",
    [
        ("counts", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3, np.nan, a)),
        ("counts", lambda a: a - 1000),
        ("lo", lambda a: a + 1e6),
    ],
)
def test_load_validates_values(tmp_path, key, change):
    header, members = _saved(tmp_path)
    a = np.load(io.BytesIO(members[f"state.{key}.npy"]))
    members[f"state.{key}.npy"] = _npy(change(a).astype(a.dtype))
    with pytest.raises(ea.StatsFileError):
        ea.load(_write(tmp_path / "bad.npz", header, members))


def test_load_refuses_finite_counts_in_a_histogram_without_range(tmp_path):
    analyzer = ea.PercentileEncodingAnalyzer((2, 1), num_bins=16)
    analyzer.update_stats(np.array([[np.inf, -np.inf], [1.0, 2.0]], np.float32))
    ea.save(analyzer, tmp_path / "ok.npz")  # row 0 holds its infinities in its end bins
    loaded = ea.load(tmp_path / "ok.npz").get_stats().histogram
    np.testing.assert_array_equal(loaded, analyzer.get_stats().histogram)
    with zipfile.ZipFile(tmp_path / "ok.npz") as z:
        members = {n: z.read(n) for n in z.namelist()}
    header = json.loads(str(np.load(io.BytesIO(members["header.npy"]))[()]))
    counts = np.load(io.BytesIO(members["state.counts.npy"]))
    counts[0, 5] = 1  # a finite count where no range holds one
    members["state.counts.npy"] = _npy(counts)
    with pytest.raises(ea.StatsFileError, match="without a range holds finite counts"):
        ea.load(_write(tmp_path / "bad.npz", header, members))
    members["state.counts.npy"] = _npy(counts[:, 0])  # one count per row: a shape error
    with pytest.raises(ea.StatsFileError):
        ea.load(_write(tmp_path / "flat.npz", header, members))


# -- infinities: counted in the end bins whatever the batching ---------------------------------

INFINITE_SPLITS = [
    # (whole, split): infinities before, with and after a row's first finite value
    ([np.inf, 1.0, -np.inf, 2.0], [[np.inf], [1.0, -np.inf, 2.0]]),
    ([np.inf, -np.inf, np.nan, np.inf, 1.0, 2.0], [[np.inf], [-np.inf, np.nan], [np.inf, 1, 2]]),
    ([1.0, 2.0, np.inf, -np.inf], [[1.0, 2.0], [np.inf], [-np.inf]]),
]


@pytest.mark.parametrize("whole, parts", INFINITE_SPLITS)
@pytest.mark.parametrize(
    "cls", [ea.PercentileEncodingAnalyzer, ea.SqnrEncodingAnalyzer, ea.MseEncodingAnalyzer]
)
def test_infinities_count_the_same_whatever_the_batching(backend, cls, whole, parts):
    one, many = cls((1,), num_bins=8), cls((1,), num_bins=8)
    one.update_stats(backend.asarray(np.array(whole, np.float32)))
    for part in parts:
        many.update_stats(backend.asarray(np.array(part, np.float32)))
    a, b = one.get_stats(), many.get_stats()
    want = backend.to_numpy(a.histogram)
    np.testing.assert_array_equal(backend.to_numpy(b.histogram), want)
    np.testing.assert_array_equal(backend.to_numpy(b.bin_edges), backend.to_numpy(a.bin_edges))
    assert want.sum() == np.count_nonzero(~np.isnan(whole))
    assert want[0, 0] >= np.count_nonzero(np.isneginf(whole)) + 1  # with the min 1.0
    assert want[0, -1] >= np.count_nonzero(np.isposinf(whole)) + 1  # with the max 2.0


def test_infinities_alone_give_no_range_but_survive_merge_and_persistence(tmp_path):
    only_inf = ea.PercentileEncodingAnalyzer((2, 1), num_bins=4)
    only_inf.update_stats(np.array([[np.inf, -np.inf], [np.inf, np.inf]], np.float32))
    stats = only_inf.get_stats()
    np.testing.assert_array_equal(stats.histogram[:, 0], [[1, 0, 0, 1], [0, 0, 0, 2]])
    assert stats.min.ravel().tolist() == [np.inf] * 2
    assert stats.max.ravel().tolist() == [-np.inf] * 2
    with pytest.raises(ea.StatisticsNotFoundError, match="2 of 2 .* never seen a finite value"):
        only_inf.compute_encodings(255, False)
    ea.save(only_inf, tmp_path / "inf.npz")
    loaded = ea.load(tmp_path / "inf.npz")
    finite = ea.PercentileEncodingAnalyzer((2, 1), num_bins=4)
    finite.update_stats(np.array([[0.0, 4.0], [-2.0, 2.0]], np.float32))
    a, b = finite.get_stats(), loaded.get_stats()
    for got in (ea.merge_stats(a, b), ea.merge_stats(b, a)):
        np.testing.assert_array_equal(got.histogram[:, 0], [[2, 0, 0, 2], [1, 0, 0, 3]])
        np.testing.assert_array_equal(got.bin_edges, finite.get_stats().bin_edges)
    loaded.update_stats(np.array([[0.0, 4.0], [-2.0, 2.0]], np.float32))  # continues the same
    np.testing.assert_array_equal(loaded.get_stats().histogram[:, 0], [[2, 0, 0, 2], [1, 0, 0, 3]])
    lo, hi = loaded.compute_encodings(255, False)
    assert lo.ravel().tolist() == [0.0, -2.0] and hi.ravel().tolist() == [4.0, 2.0]


# -- memory: large inputs are worked through in chunks, with the same results -----------------


def test_chunked_binning_and_quality_equal_the_whole(monkeypatch, backend):
    from encanalyze import _report
    from encanalyze._backends import _numpy_like

    x = np.random.default_rng(3).standard_normal((3, 5000)).astype(np.float32)
    x[1, 7] = np.nan
    x[2, 9] = np.inf

    def run():
        a = ea.SqnrEncodingAnalyzer((3, 1), num_bins=64)
        a.update_stats(backend.asarray(x))
        a.update_stats(backend.asarray(x * 1.5))
        counts = backend.to_numpy(a.get_stats().histogram)
        lo, hi = a.compute_encodings(255, False)
        scale, offset = ea.to_scale_offset(lo, hi, 255, False)
        xp = backend.xp
        from encanalyze._shapes import plan

        quality = _report.quantization_quality(
            xp, backend.asarray(x), plan((3, 5000), (3, 1), None), scale, offset, 255
        )
        return counts, quality

    with pytest.warns(RuntimeWarning):
        whole = run()
    monkeypatch.setattr(_numpy_like, "VALUE_CHUNK", 1000)
    monkeypatch.setattr(_report, "QUALITY_CHUNK", 1000)
    try:
        from encanalyze._backends import _torch

        monkeypatch.setattr(_torch, "SCRATCH_LIMIT", 1000)
    except ImportError:
        pass
    with pytest.warns(RuntimeWarning):
        chunked = run()
    np.testing.assert_array_equal(chunked[0], whole[0])
    assert chunked[1][0] == whole[1][0]
    assert chunked[1][1] == pytest.approx(whole[1][1], rel=1e-12)


def _saved_members(tmp_path):
    analyzer = ea.MinMaxEncodingAnalyzer((1,))
    analyzer.update_stats(np.ones(3, np.float32))
    path = tmp_path / "s.npz"
    ea.save(analyzer, path)
    with zipfile.ZipFile(path) as z:
        return path, {n: z.read(n) for n in z.namelist()}


def test_load_names_an_unknown_zip_compression(tmp_path):
    path, _ = _saved_members(tmp_path)
    raw = bytearray(path.read_bytes())
    for magic, at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # local and central headers
        i = raw.find(magic)
        while i >= 0:
            raw[i + at : i + at + 2] = (99).to_bytes(2, "little")
            i = raw.find(magic, i + 4)
    path.write_bytes(bytes(raw))
    with pytest.raises(ea.StatsFileError, match="unreadable .NotImplementedError"):
        ea.load(path)


def test_load_names_an_unbalanced_bracket_in_a_npy_header(tmp_path):
    path, members = _saved_members(tmp_path)
    members["header.npy"] = members["header.npy"].replace(b"'descr':", b"'descr':(((", 1)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(ea.StatsFileError, match="unreadable"):
        ea.load(path)


_HOLES = """
import sys
import numpy as np
from encanalyze._memory import map_large_blocks

def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

raised = np.ones(2 << 20)  # 16 MiB mapped, then freed: glibc raises its threshold
del raised
fixed = sys.argv[1] == "fixed" and map_large_blocks()
blocks = [np.ones(1 << 20) for _ in range(8)]  # 8 MiB each, every page touched
before = resident()
del blocks[::2]  # four holes between live blocks
print(int(fixed), (before - resident()) >> 20)
"""


def test_large_blocks_freed_between_live_ones_go_back_to_the_system():
    """With the mmap threshold fixed (the model job's setting), a freed 8 MiB block leaves the
    process at once, even between live blocks, where glibc's raised threshold keeps the hole
    in its heap (each case in a fresh process: the setting is the process's)."""
    import subprocess
    import sys

    def returned(mode: str) -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", _HOLES, mode], capture_output=True,
                             text=True, check=True)  # fmt: skip
        fixed, mib = out.stdout.split()
        return int(fixed), int(mib)

    fixed, with_threshold = returned("fixed")
    if not sys.platform.startswith("linux") or not fixed:
        pytest.skip("glibc only")
    _, without = returned("dynamic")
    assert with_threshold >= 24 and without < 8, (with_threshold, without)
