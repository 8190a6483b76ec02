"""Analyzers under threads: torch's DataParallel calls forward hooks from several threads."""

import copy
import pickle
import threading

import numpy as np
import pytest

import encanalyze as ea


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_update_stats_from_many_threads_loses_nothing(method):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    batches = [torch.from_numpy(rng.normal(size=(64, 4096)).astype("f4")) for _ in range(32)]
    batches[7][3, 5] = 1e6  # the extremes arrive in one thread
    batches[21][0, 0] = -1e6
    shared = ea.METHODS[method].analyzer((64, 1))
    start = threading.Barrier(8)

    def work(part):
        start.wait()
        for b in part:
            shared.update_stats(b)

    threads = [threading.Thread(target=work, args=(batches[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alone = ea.METHODS[method].analyzer((64, 1))
    for b in batches:
        alone.update_stats(b)
    got, want = shared.get_stats(), alone.get_stats()
    assert float(got.min.min()) == -1e6 and float(got.max.max()) == 1e6
    if method == "percentile":  # every value counted (the order of batches moves the edges)
        assert int(got.histogram.sum()) == int(want.histogram.sum()) == 32 * 64 * 4096
    else:
        assert bool((got.min == want.min).all()) and bool((got.max == want.max).all())


def test_an_analyzer_with_a_lock_still_copies_and_pickles():
    a = ea.MinMaxEncodingAnalyzer((1,))
    a.update_stats(np.arange(4.0, dtype=np.float32))
    for b in (copy.deepcopy(a), pickle.loads(pickle.dumps(a))):
        b.update_stats(np.full(2, 9.0, np.float32))
        assert float(b.get_stats().max[0]) == 9.0
    assert float(a.get_stats().max[0]) == 3.0
