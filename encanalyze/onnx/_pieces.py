"""Pieces of batches: runs of a model whose exposed activations stay within a byte budget."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping

import numpy as np

__all__ = ["OUTPUT_BYTES", "RUN_BYTES", "Pieces", "nbytes"]

RUN_BYTES = 1 << 27
"""The most bytes of activations one run of the model should expose (128 MiB): a batch whose
activations would take more is run in pieces of samples (a transformer's batch of 8 x 128
tokens exposes every MatMul's inputs and outputs at once: 0.84 GB on a BERT-base, ~2.4 GB
with ONNX Runtime's own buffers)."""


def nbytes(values: Iterable) -> int:
    """Return the bytes that a run's outputs ``values`` take."""
    return sum(np.asarray(v).nbytes for v in values)


class Pieces:
    """Cut feeds into pieces of samples whose activations take about :data:`RUN_BYTES`.

    ``axes``: each input's sample axis (``None``: a constant fed whole with every piece);
    ``budget``: the bytes a run should expose (default :data:`RUN_BYTES`); ``probe(feed)``:
    the bytes of activations one run of ``feed`` exposes, asked once, on the first sample of
    the first batch of two or more samples. What each run exposes is then learnt as bytes per
    element of the per-sample inputs (:meth:`learn`, the largest ratio seen), so that longer
    sequences get fewer samples. A batch that fits is never cut: its statistics are exactly
    those of the whole batch.
    """

    def __init__(
        self,
        axes: Mapping[str, int | None],
        probe: Callable[[dict], int],
        budget: int | None = None,
    ) -> None:
        self.axes = {n: a for n, a in axes.items() if a is not None}
        self.probe = probe
        self.budget = RUN_BYTES if budget is None else budget
        self.per_element = 0.0

    def _samples(self, feed: dict) -> int | None:
        """Return the samples of ``feed`` (``None``: no per-sample input, or they disagree)."""
        counts = {np.shape(feed[n])[a] for n, a in self.axes.items() if n in feed}
        return counts.pop() if len(counts) == 1 else None

    def _elements(self, feed: dict) -> int:
        return sum(int(np.size(feed[n])) for n in self.axes if n in feed)

    def learn(self, feed: dict, nbytes: int) -> None:
        """Note that a run of ``feed`` exposed ``nbytes`` of activations."""
        elements = self._elements(feed)
        if elements:
            self.per_element = max(self.per_element, nbytes / elements)

    def _cut(self, feed: dict, start: int, stop: int) -> dict:
        out = dict(feed)
        for name, axis in self.axes.items():
            if name in out:
                index = [slice(None)] * np.ndim(out[name])
                index[axis] = slice(start, stop)
                out[name] = out[name][tuple(index)]
        return out

    def cut(self, feeds: Iterable[dict]) -> Iterator[tuple[dict, bool]]:
        """Yield ``(piece, last)`` for each piece of each feed; ``last``: its batch's last."""
        for feed in feeds:
            n = self._samples(feed)
            if n is None or n < 2:
                yield feed, True
                continue
            if not self.per_element:
                self.learn(self._cut(feed, 0, 1), self.probe(self._cut(feed, 0, 1)))
            start = 0
            while start < n:  # the estimate may grow as pieces run (longer sequences)
                per_sample = self.per_element * self._elements(feed) / n
                size = max(1, math.floor(self.budget / per_sample)) if per_sample else n
                stop = min(n, start + size)
                yield (feed if (start, stop) == (0, n) else self._cut(feed, start, stop)), stop == n
                start = stop


OUTPUT_BYTES = 1 << 25
"""The most bytes of model outputs one run of a comparison should produce (32 MiB): a
decoder's logits (8 x 128 tokens x 32000) are 131 MB a batch, and the emulated model holds
several tensors of that size along each quantizer's chain."""
