"""Exceptions shared across the library."""

from __future__ import annotations

__all__ = ["EncodingAnalyzerError", "StatisticsNotFoundError"]


class StatisticsNotFoundError(RuntimeError):
    """Encodings were requested for elements that have not seen any value."""


class EncodingAnalyzerError(ValueError, RuntimeError):
    """A bad input or parameter that the reference reports as a ``RuntimeError``.

    Raised for an input whose shape does not fit the encoding shape (or block size) and for a
    histogram growth limit below 1. It is a ``ValueError`` like every other bad-input error of
    encanalyze, and also a ``RuntimeError``, so that code written against the reference
    (``except RuntimeError``) keeps catching it.
    """
