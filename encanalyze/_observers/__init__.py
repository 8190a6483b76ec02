"""Observers: the running statistics of the analyzers, one module per kind.

An observer owns a kind of statistics for one encoding shape: it updates them from a batch,
merges several, shows them as the public statistics type and turns them into arrays for
persistence. It holds no statistics itself: the state is a value the analyzer keeps, and every
observer method is pure.
"""

from .base import Observer
from .ema import EmaObserver, EmaState
from .histogram import HistogramObserver
from .minmax import MinMaxObserver

__all__ = ["EmaObserver", "EmaState", "HistogramObserver", "MinMaxObserver", "Observer"]
