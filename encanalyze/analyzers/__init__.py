"""Calibration methods, one module each."""

from .base import EncodingAnalyzer
from .histogram import HistogramAnalyzer
from .minmax import MinMaxEncodingAnalyzer
from .percentile import PercentileEncodingAnalyzer
from .sqnr import SqnrEncodingAnalyzer, TfEnhancedEncodingAnalyzer

__all__ = [
    "EncodingAnalyzer",
    "HistogramAnalyzer",
    "MinMaxEncodingAnalyzer",
    "PercentileEncodingAnalyzer",
    "SqnrEncodingAnalyzer",
    "TfEnhancedEncodingAnalyzer",
]
