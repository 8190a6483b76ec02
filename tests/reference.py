"""Independent NumPy float64 re-implementations of SPEC.md's rules, for tests."""

from __future__ import annotations

import math

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)


def minmax_encoding(lo, hi, n: int, symmetric: bool, two_bit_step: bool = True):
    """SPEC.md "Min-max" encoding rules, elementwise, in float64.

    ``two_bit_step=False`` is the percentile variant (no extra positive step for n == 3).
    """
    lo = np.minimum(np.asarray(lo, np.float64), 0.0)
    hi = np.maximum(np.asarray(hi, np.float64), 0.0)
    s = min(EPS32, 0.01 / n)
    narrow = (hi - lo) / n < s
    if symmetric:
        pos, neg = math.floor(n / 2), math.ceil(n / 2)
        hi = np.where(narrow, hi + pos * s, hi)
        lo = np.where(narrow, lo - neg * s, lo)
        delta = np.maximum(hi / (pos + 1 if n == 3 and two_bit_step else pos), -lo / neg)
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
    (counts float64, min, max) of the running histogram, min and max being the observed range
    (the first batch's finite range, then each later batch's new range), or None if no finite
    value was seen. `histogram_edges` gives the edge range of the same histogram.
    """
    state = _histogram_state(batches, num_bins, growth_limit)
    return None if state is None else state[:3]


def histogram_edges(batches, num_bins: int, growth_limit: float = math.inf):
    """The (first, last) edge of `histogram_rows`' histogram."""
    return _histogram_state(batches, num_bins, growth_limit)[3:]


def _histogram_state(batches, num_bins, growth_limit):
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
        if state is None:
            elo, ehi = blo, bhi
            if (np.float32(bhi) - np.float32(blo)) / np.float32(num_bins) == 0:
                elo, ehi = dt(blo - dt(0.5)), dt(bhi + dt(0.5))  # the first batch only
            counts = np.bincount(index(values, elo, ehi), minlength=num_bins).astype(float)
            state = (counts, blo, bhi, elo, last_edge(elo, ehi))
            if math.isfinite(growth_limit):
                half = (state[4] - elo) * dt(growth_limit / 2)
                limits = (elo - half, state[4] + half)
            continue
        counts, _, _, lo, hi = state
        new_lo, new_hi = min(lo, blo), max(hi, bhi)
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
                fraction = min(max((new_lo + dt(j + 1) * w_new - a) / w_old, 0), 1)
                part = min(np.round(dt(fraction) * dt(c)), c)
                moved[j] += part
                moved[min(j + 1, num_bins - 1)] += c - part  # the bin holding a + w_new
            counts = moved
        counts = counts + np.bincount(index(values, new_lo, new_hi), minlength=num_bins)
        state = (counts, new_lo, new_hi, new_lo, last_edge(new_lo, new_hi))
    return state


def percentile_range(counts, edges, p: float):
    """SPEC.md "Percentile" rule for one histogram."""
    if p == 100:
        return edges[0], edges[-1]
    cs = np.cumsum(np.asarray(counts, np.float64))
    total = np.float32(cs[-1])  # thresholds in float32, as the reference evaluates them
    i_hi = int(np.argmax(cs >= (total * np.float32(p)) / np.float32(100)))
    i_lo = int(np.argmax(cs >= total * np.float32(1 - p / 100)))
    return edges[i_lo], edges[i_hi]


def sqnr_candidates(lo, hi, n, symmetric, num_deltas, num_offsets=21):
    """SPEC.md "SQNR" candidates for one histogram, in float32, as a list of (delta, offset)."""
    f = np.float32
    lo, hi = f(min(lo, 0)), f(max(hi, 0))
    s = f(min(EPS32, 0.01 / n))
    hi = max(hi, f(lo + s * f(n)))
    out = []
    if symmetric:
        dmax = f(f(2) * max(hi, -lo) / f(n))
        for k in range(1, num_deltas + 1):
            out.append((max(f(dmax * f(k) / f(num_deltas - 1)), s), f(math.floor(-n / 2))))
        return out
    dmax = f((hi - lo) / f(n))
    o_obs = f(np.round(lo / dmax))
    count = min(n + 2, num_offsets)
    offsets = [f(round(-n + t * n / (count - 2))) for t in range(count - 1)] + [o_obs]
    obs_min = f(dmax * o_obs)
    obs_max = f(obs_min + f(dmax * f(n)))
    for k in range(1, num_deltas + 1):
        d = f(dmax * f(k) / f(num_deltas - 1))
        for o in offsets:
            bottom = max(obs_min, f(d * o))
            top = min(obs_max, f(f(d * o) + f(d * f(n))))
            d2 = max(f((top - bottom) / f(n)), s)
            out.append((d2, f(np.round(bottom / d2))))
    return out


def sqnr_noise(counts, edges, delta, offset, n, gamma):
    """SPEC.md expected noise of one candidate on one histogram, bin by bin, in float64."""
    edges = np.asarray(edges, np.float64)
    m = (edges[:-1] + edges[1:]) / 2
    d, o = float(delta), float(offset)
    q = np.round(m / d - o)
    clipped = (q < 0) | (q > n)
    err = ((np.clip(q, 0, n) + o) * d - m) ** 2
    return float(np.sum(np.asarray(counts, np.float64) * np.where(clipped, gamma * err, err)))


def sqnr_encoding(counts, edges, lo, hi, n, symmetric, gamma, num_deltas=None):
    """SPEC.md SQNR search for one histogram: (min, max, noise of the winner, all noises)."""
    num_deltas = num_deltas or (101 if symmetric else 17)
    cands = sqnr_candidates(lo, hi, n, symmetric, num_deltas)
    noises = [sqnr_noise(counts, edges, d, o, n, gamma) for d, o in cands]
    best = int(np.argmin(noises))
    d, o = cands[best]
    enc_min = np.float32(o * d)
    return enc_min, np.float32(enc_min + np.float32(n) * d), noises[best], noises


def rebin(counts, lo, hi, new_lo, new_hi):
    """SPEC.md re-binning of one histogram's counts onto [new_lo, new_hi], a bin at a time."""
    counts = np.asarray(counts, np.float64)
    num_bins = len(counts)
    if (new_lo, new_hi) == (lo, hi):
        return counts
    dt = np.float32
    nb = dt(num_bins)
    moved = np.zeros(num_bins)
    w_old, w_new = (dt(hi) - dt(lo)) / nb, (dt(new_hi) - dt(new_lo)) / nb
    for i, c in enumerate(counts):
        if c == 0:
            continue
        a = dt(lo) + w_old * dt(i)
        j = min(max(int(np.floor((a - dt(new_lo)) / w_new)), 0), num_bins - 1)
        fraction = min(max((dt(new_lo) + dt(j + 1) * w_new - a) / w_old, 0), 1)
        part = min(np.round(dt(fraction) * dt(c)), c)
        moved[j] += part
        moved[min(j + 1, num_bins - 1)] += c - part  # the bin holding a + w_new
    return moved
