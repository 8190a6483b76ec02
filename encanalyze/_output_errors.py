"""How far a quantized model's outputs are from the float model's, sample by sample.

A float output is judged by its SQNR, ``10 log10(sum(y**2) / sum((y - q)**2))``. An integer or
bool output (class ids of an ``ArgMax``, masks) has no noise to speak of: one id off is a
wrong answer however near, so it is compared exactly, by the percentage of its elements equal
to the float model's (its agreement). A model's score is the mean SQNR over its float outputs;
a model with no float output is scored by the mean agreement of its outputs instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ._report import sqnr_db

__all__ = ["EXACT_KINDS", "OutputErrors"]

EXACT_KINDS = frozenset("iub")
"""NumPy dtype kinds of the outputs compared exactly: signed and unsigned integers, bool."""


BLOCK = 1 << 20
"""Elements of an output converted to float64 at a time (8 MiB): a model's logits (8 x 128
tokens x 32000) are then measured without float64 copies of the whole batch."""


def _add_float_errors(y: np.ndarray, q: np.ndarray, signal: np.ndarray, noise: np.ndarray):
    """Add each row's ``sum(y**2)`` to ``signal`` and ``sum((y - q)**2)`` to ``noise``.

    In float64, :data:`BLOCK` elements at a time.
    """
    step = max(1, BLOCK // max(1, y.shape[0]))
    for start in range(0, y.shape[1], step):
        a = y[:, start : start + step].astype(np.float64)
        b = q[:, start : start + step].astype(np.float64)
        b -= a
        signal += np.einsum("ij,ij->i", a, a)
        noise += np.einsum("ij,ij->i", b, b)


@dataclass(frozen=True)
class OutputErrors:
    """Each output's error on each sample.

    ``signal`` and ``noise`` are ``(outputs, samples)``: for a float output ``sum(y**2)`` and
    ``sum((y - q)**2)`` over the sample's values, for an ``exact`` one (integer or bool) the
    sample's element count and the count of elements that differ.
    """

    names: tuple[str, ...]
    signal: np.ndarray
    noise: np.ndarray
    exact: np.ndarray

    @classmethod
    def measure(cls, names: Iterable[str], want: Iterable, got: Iterable) -> OutputErrors:
        """Compare the reference outputs ``want`` with ``got``, batch by batch.

        Each is an iterable of batches, a batch a list of the outputs ``names`` (one batch in
        memory at a time). A sample is a row of the outputs' first axis where every output of
        a batch has the same non-zero first dimension, else the whole batch. Raises
        ``ValueError`` without a batch: an empty list would score a perfect match.
        """
        names = tuple(names)
        signal, noise, exact = [], [], None
        for ys, qs in zip(want, got, strict=True):
            ys, qs = [np.asarray(y) for y in ys], [np.asarray(q) for q in qs]
            kinds = np.array([y.dtype.kind in EXACT_KINDS for y in ys], bool)
            exact = kinds if exact is None else exact | kinds
            rows = {y.shape[0] if y.ndim else 1 for y in ys}
            n = rows.pop() if len(rows) == 1 else 1
            n = n or 1  # an empty first axis: one (empty) sample
            s, d = [], []
            for y, q, whole in zip(ys, qs, kinds, strict=True):
                if whole:
                    s.append(np.full(n, y.size // n, np.float64))
                    d.append(np.sum(np.reshape(y != q, (n, -1)), axis=1, dtype=np.float64))
                else:
                    s.append(np.zeros(n))
                    d.append(np.zeros(n))
                    _add_float_errors(np.reshape(y, (n, -1)), np.reshape(q, (n, -1)), s[-1], d[-1])
            signal.append(s)
            noise.append(d)
        if not signal:
            raise ValueError("no batch to judge the model's output on: give at least one batch")
        return cls(names, np.concatenate(signal, axis=1), np.concatenate(noise, axis=1), exact)

    @property
    def by_agreement(self) -> bool:
        """Whether the model has no float output, so its score is the mean agreement."""
        return bool(self.exact.size) and bool(self.exact.all())

    @property
    def unit(self) -> str:
        """The score's unit: ``"dB"`` (output SQNR) or ``"%"`` (agreement)."""
        return "%" if self.by_agreement else "dB"

    def statistic(self, signal: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """Return the score of sums ``(outputs, k)`` of this model's errors: ``(k,)``.

        The mean over the float outputs of their SQNR in dB (``inf`` without noise, ``-inf``
        without signal), or over every output of its agreement in % without a float output.
        """
        judged = self.exact if self.by_agreement else ~self.exact
        s, n = signal[judged], noise[judged]
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.by_agreement:
                value = np.where(s > 0, 100 * (1 - n / s), 100.0)
            else:
                value = np.where(n == 0, np.inf, np.where(s == 0, -np.inf, 10 * np.log10(s / n)))
        if not value.shape[0]:
            return np.full(signal.shape[1:], np.nan)
        return np.mean(value, axis=0)

    def score(self) -> float:
        """Return the model's score over every sample.

        The mean of its float outputs' SQNR in dB; without a float output, the mean of its
        outputs' agreement in %. Each output's value comes from :meth:`sqnr_db` /
        :meth:`agreement_percent` (the reported figures, to the last bit); :meth:`statistic`
        is the same score vectorised over many sums, for the choice's jackknife.
        """
        by_output = self.agreement_percent() if self.by_agreement else self.sqnr_db()
        return float(np.mean(list(by_output.values()))) if by_output else float("nan")

    def sqnr_db(self) -> dict[str, float]:
        """Return each float output's SQNR in dB over every sample."""
        return {n: sqnr_db(s, d) for n, s, d, e in self._totals() if not e}

    def agreement_percent(self) -> dict[str, float]:
        """Return each integer or bool output's agreement in % over every sample."""
        return {n: 100 * (1 - d / s) if s else 100.0 for n, s, d, e in self._totals() if e}

    def as_json(self, prefix: str = "") -> dict:
        """Return the JSON of each output's score.

        ``{prefix}output_sqnr_db`` (float outputs), and ``{prefix}output_agreement_percent``
        where integer or bool outputs exist.
        """
        out = {f"{prefix}output_sqnr_db": self.sqnr_db()}
        if self.exact.any():
            out[f"{prefix}output_agreement_percent"] = self.agreement_percent()
        return out

    def _totals(self):
        signal, noise = self.signal.sum(axis=1), self.noise.sum(axis=1)
        return zip(self.names, signal.tolist(), noise.tolist(), self.exact.tolist(), strict=True)
