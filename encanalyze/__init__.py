"""encanalyze: quantization encoding analyzers written once against the Python array API."""

from .analyzers import (
    EncodingAnalyzer,
    HistogramAnalyzer,
    MinMaxEncodingAnalyzer,
    PercentileEncodingAnalyzer,
    SqnrEncodingAnalyzer,
    TfEnhancedEncodingAnalyzer,
)
from .encoding import to_scale_offset
from .stats import Histogram, MinMaxRange, StatisticsNotFoundError

__version__ = "0.1.0"

__all__ = [
    "EncodingAnalyzer",
    "Histogram",
    "HistogramAnalyzer",
    "MinMaxEncodingAnalyzer",
    "MinMaxRange",
    "PercentileEncodingAnalyzer",
    "SqnrEncodingAnalyzer",
    "StatisticsNotFoundError",
    "TfEnhancedEncodingAnalyzer",
    "to_scale_offset",
]
