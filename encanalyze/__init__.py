"""encanalyze: quantization encoding analyzers written once against the Python array API."""

from .analyzers import EncodingAnalyzer, MinMaxEncodingAnalyzer
from .encoding import to_scale_offset
from .stats import MinMaxRange, StatisticsNotFoundError

__version__ = "0.1.0"

__all__ = [
    "EncodingAnalyzer",
    "MinMaxEncodingAnalyzer",
    "MinMaxRange",
    "StatisticsNotFoundError",
    "to_scale_offset",
]
