"""Calibration methods, one module each."""

from .base import EncodingAnalyzer
from .minmax import MinMaxEncodingAnalyzer

__all__ = ["EncodingAnalyzer", "MinMaxEncodingAnalyzer"]
