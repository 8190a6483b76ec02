"""One-shot weight encodings histogram their channels in blocks: same numbers, bounded memory."""

import numpy as np
import pytest

import encanalyze as ea
from encanalyze import _calibration
from encanalyze._calibration import encodings_by_rows

BINS = {"num_bins": 256}
METHODS = {"minmax": {}, "percentile": BINS, "sqnr": BINS, "mse": BINS, "entropy": BINS, "ema": {}}


@pytest.mark.parametrize(
    "shape, encoding, block",
    [((10, 40), (10, 1), None), ((6, 9, 20), (1, 9, 1), None), ((8, 64), (8, 4), (1, 16))],
    ids=["per-channel", "middle-axis", "block-wise"],
)
def test_blocks_of_rows_give_the_whole_analyzers_encodings(
    backend, monkeypatch, shape, encoding, block
):
    if backend.name == "jax":
        pytest.skip("JAX's eager dispatch makes MSE's walk take 30 s here; the code is generic")
    x = np.random.default_rng(1).standard_t(2.0, shape).astype(np.float32)
    x.reshape(-1)[::7] *= 20  # long tails
    xb = backend.asarray(x)
    monkeypatch.setattr(_calibration, "ROW_BLOCK", 3 * 256)  # 3 rows of 256 bins per block
    made = []
    real = {m: ea.METHODS[m].analyzer for m in METHODS}
    for m, spec in ea.METHODS.items():
        if m in METHODS:
            monkeypatch.setitem(
                ea.METHODS,
                m,
                type(spec)(
                    spec.name, _spy(real[m], made), spec.observer, spec.tuned, spec.in_command
                ),
            )
    got = encodings_by_rows(xb, encoding, block, METHODS, 255, False)
    assert made and max(made) == 3  # never more than three rows at once
    monkeypatch.undo()
    for method in METHODS:
        whole = ea.METHODS[method].analyzer(encoding, block_size=block, **METHODS[method])
        whole.update_stats(xb)
        for g, w in zip(got[method], whole.compute_encodings(255, False)):
            assert tuple(g.shape) == encoding
            np.testing.assert_array_equal(backend.to_numpy(g), backend.to_numpy(w))


def _spy(cls, made):
    def make(shape, **options):
        made.append(shape[0])
        return cls(shape, **options)

    return make


def test_a_failing_method_gives_its_error_and_the_others_their_encodings():
    x = np.full((4, 8), np.nan, np.float32)
    x[:2] = 1.0
    got = encodings_by_rows(x, (4, 1), None, {"minmax": {}, "percentile": {}}, 255, False)
    assert all(isinstance(v, ea.StatisticsNotFoundError) for v in got.values())
    got = encodings_by_rows(x[:2], (2, 1), None, {"minmax": {}}, 255, False)
    assert got["minmax"][1].shape == (2, 1)
