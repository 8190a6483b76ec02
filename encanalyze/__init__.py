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
from .errors import EncodingAnalyzerError
from .persistence import StatsFileError, load, save
from .stats import Histogram, MinMaxRange, StatisticsNotFoundError, merge_stats

__version__ = "0.1.0"

__all__ = [
    "EncodingAnalyzer",
    "EncodingAnalyzerError",
    "Histogram",
    "HistogramAnalyzer",
    "MinMaxEncodingAnalyzer",
    "MinMaxRange",
    "PercentileEncodingAnalyzer",
    "SqnrEncodingAnalyzer",
    "StatisticsNotFoundError",
    "StatsFileError",
    "TfEnhancedEncodingAnalyzer",
    "load",
    "merge_stats",
    "save",
    "to_scale_offset",
]
