"""Independent NumPy float64 re-implementations of SPEC.md's rules, for tests."""

from __future__ import annotations

import math

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def minmax_encoding(lo, hi, n: int, symmetric: bool):
    """SPEC.md "Min-max" encoding rules, elementwise, in float64."""
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    s = min(EPS32, 0.01 / n)
    narrow = (hi - lo) / n < s
    if symmetric:
        pos, neg = math.floor(n / 2), math.ceil(n / 2)
        hi = np.where(narrow, hi + pos * s, hi)
        lo = np.where(narrow, lo - neg * s, lo)
        delta = np.maximum(hi / (pos + 1 if n == 3 else pos), -lo / neg)
        return -neg * delta, pos * delta
    return lo, np.where(narrow, hi + n * s, hi)


def reduce_to_shape(x: np.ndarray, shape: tuple[int, ...], block_size=None, fn=np.nanmin):
    """Reduce x to `shape` the slow, obvious way (loop over encoding elements)."""
    n = x.ndim
    enc = (1,) * (n - len(shape)) + tuple(shape)
    if block_size is None:
        blocks = tuple(d if e == 1 else 1 for d, e in zip(x.shape, enc))
    else:
        bs = (block_size,) if isinstance(block_size, int) else tuple(block_size)
        bs = tuple(1 if e > 1 else -1 for e in shape[: len(shape) - len(bs)]) + bs
        bs = (-1,) * (n - len(bs)) + bs
        blocks = tuple(d // e if b == -1 else b for d, e, b in zip(x.shape, enc, bs))
    out = np.empty(enc)
    for idx in np.ndindex(*enc):
        sl = tuple(slice(i * b, (i + 1) * b) for i, b in zip(idx, blocks))
        out[idx] = fn(x[sl])
    return out.reshape(shape)


def histogram_rows(batches, num_bins: int, growth_limit: float = math.inf):
    """SPEC.md "Histogram stats", one row at a time, in the batches' float dtype.

    `batches` is a list of 1-D arrays (one row's values per update). Returns
    (counts float64, lo, hi) of the running histogram, or None if no finite value was seen.
    """
    dt = batches[0].dtype.type
    nb = dt(num_bins)
    state = None
    limits = None

    def index(v, lo, hi):
        t = np.floor((v - lo) / (hi - lo) * nb)
        return np.clip(t, 0, num_bins - 1).astype(int)

    def last_edge(lo, hi):
        return dt(lo + nb * ((hi - lo) / nb))

    for values in batches:
        values = values[~np.isnan(values)]
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            continue
        blo, bhi = finite.min(), finite.max()
        if blo == bhi:
            blo, bhi = dt(blo - dt(0.5)), dt(bhi + dt(0.5))
        if state is None:
            counts = np.bincount(index(values, blo, bhi), minlength=num_bins).astype(float)
            state = (counts, blo, last_edge(blo, bhi))
            if math.isfinite(growth_limit):
                half = (state[2] - blo) * dt(growth_limit / 2)
                limits = (blo - half, state[2] + half)
            continue
        counts, lo, hi = state
        new_lo, new_hi = min(lo, blo), max(hi, last_edge(blo, bhi))
        if limits is not None:
            new_lo, new_hi = max(new_lo, limits[0]), min(new_hi, limits[1])
        if (new_lo, new_hi) != (lo, hi):
            moved = np.zeros(num_bins)
            w_old, w_new = (hi - lo) / nb, (new_hi - new_lo) / nb
            for i, c in enumerate(counts):
                if c == 0:
                    continue
                a = lo + w_old * dt(i)
                j = min(max(int(np.floor((a - new_lo) / w_new)), 0), num_bins - 1)
                part = min(np.round((new_lo + dt(j + 1) * w_new - a) / w_old * dt(c)), c)
                moved[j] += part
                j2 = min(max(int(np.floor((a + w_new - new_lo) / w_new)), 0), num_bins - 1)
                moved[j2] += c - part
            counts = moved
        counts = counts + np.bincount(index(values, new_lo, new_hi), minlength=num_bins)
        state = (counts, new_lo, last_edge(new_lo, new_hi))
    return state


def percentile_range(counts, edges, p: float):
    """SPEC.md "Percentile" rule for one histogram."""
    if p == 100:
        return edges[0], edges[-1]
    cs = np.cumsum(np.asarray(counts, np.float64))
    total = cs[-1]
    i_hi = int(np.argmax(cs >= total * (p / 100)))
    i_lo = int(np.argmax(cs >= total * (1 - p / 100)))
    return edges[i_lo], edges[i_hi]
