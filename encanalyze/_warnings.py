"""Warnings attributed to the user's line, not to encanalyze's internals."""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str, category: type[Warning] = RuntimeWarning) -> None:
    """Issue ``message``, pointing at the first caller outside the encanalyze package."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


class labelled:
    """Re-issue the warnings raised inside with ``label: `` before their message.

    A model's calibration names the tensor a warning is about (``conv1:input: 3 NaN values
    were ignored ...``); ``None`` leaves them as they are. They point at the caller's line
    outside encanalyze, as :func:`warn`'s do.
    """

    def __init__(self, label: str | None) -> None:
        self.label = label
        self._catch = None if label is None else warnings.catch_warnings(record=True)

    def __enter__(self) -> None:
        if self._catch is not None:
            self._caught = self._catch.__enter__()
            warnings.simplefilter("always")

    def __exit__(self, *exc) -> None:
        if self._catch is None:
            return
        self._catch.__exit__(*exc)
        for w in self._caught:
            warn(f"{self.label}: {w.message}", w.category)
