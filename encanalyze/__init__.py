"""encanalyze: quantization encoding analyzers written once against the Python array API."""

from ._analyzer import EncodingAnalyzer, HistogramAnalyzer
from ._encoding import to_scale_offset
from ._errors import EncodingAnalyzerError, StatisticsNotFoundError
from ._persistence import StatsFileError, load, save
from ._registry import ANALYZERS as _ANALYZERS
from ._registry import METHODS
from ._stats import Histogram, MinMaxRange, merge_stats
from ._version import __version__ as __version__

# every registered analyzer class (MinMaxEncodingAnalyzer, SqnrEncodingAnalyzer, ...): a new
# method is exported by its registry entry (see _registry.py)
globals().update(_ANALYZERS)

__all__ = [
    "METHODS",
    "EncodingAnalyzer",
    "EncodingAnalyzerError",
    "Histogram",
    "HistogramAnalyzer",
    "MinMaxRange",
    "StatisticsNotFoundError",
    "StatsFileError",
    "load",
    "merge_stats",
    "save",
    "to_scale_offset",
    *_ANALYZERS,
]
