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
