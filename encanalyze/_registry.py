"""The registry of calibration methods: name -> analyzer class, observer kind, rule, options.

Everything that lists methods reads it: the package's exports, persistence (which classes a file
may hold), the command (``--method``), the distributed all-reduce (by observer kind) and the
tests (the conformance suite runs every entry). A new method is one rule module (its rule and
its analyzer class) plus one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ._analyzer import EncodingAnalyzer
from ._rules.ema import EmaMinMaxEncodingAnalyzer
from ._rules.entropy import EntropyEncodingAnalyzer
from ._rules.minmax import MinMaxEncodingAnalyzer
from ._rules.mse import MseEncodingAnalyzer
from ._rules.percentile import PercentileEncodingAnalyzer
from ._rules.sqnr import SqnrEncodingAnalyzer, TfEnhancedEncodingAnalyzer

__all__ = [
    "AUTO_ACTIVATIONS",
    "ACTIVATION_PERCENTILE",
    "ANALYZERS",
    "DEFAULTS",
    "METHODS",
    "Method",
    "activation_defaults",
]

ACTIVATION_PERCENTILE = 99.99
"""The percentile that the command (``--percentile``) and the model calibrators use by default
(the :class:`PercentileEncodingAnalyzer` class keeps the reference's 100)."""

AUTO_ACTIVATIONS = ("minmax", "percentile", "sqnr", "mse", "entropy")
"""The activation methods that ``auto`` chooses among by the model's output (the command's
``--activation-method auto``, :func:`encanalyze.torch.quantize`'s default), min-max first (ties
go to it)."""

DEFAULTS = {
    "activations": "percentile",
    "weights": "minmax",
    "bits": 8,
    "symmetric": False,
    "weight_symmetric": True,
    "per_channel_weights": True,
    "percentile": ACTIVATION_PERCENTILE,
}
"""The deployment default every entry point shares (the model calibrators of ONNX and torch
models, :func:`encanalyze.pt2e.quantization_config` and its observer, the command): uint8
asymmetric activations with the percentile method at 99.99, int8 symmetric weights per output
channel with min-max (ONNX Runtime's, TensorRT's and QNN's layout). The command's model job
chooses its methods by the model's output (``auto``) on these grids."""


@dataclass(frozen=True)
class Method:
    """One calibration method.

    Attributes
    ----------
    name
        The method's name (``--method NAME`` in the command).
    analyzer
        The public analyzer class (its ``rule`` and ``rule_params`` are the rule).
    observer
        The kind of statistics it gathers (``minmax``, ``histogram``, ``ema``).
    tuned
        The analyzer keywords a caller's common settings (``num_bins``, ``percentile``,
        ``gamma``) pass to it; the others keep their defaults.
    in_command
        Whether the command's ``--method all`` runs it (every method can be named:
        ``tf_enhanced``, the reference's legacy SQNR variant, is left out of ``all`` only).
    """

    name: str
    analyzer: type[EncodingAnalyzer]
    observer: str
    tuned: tuple[str, ...] = ()
    in_command: bool = True

    def options(self, settings: Mapping[str, object]) -> dict:
        """Return the analyzer keyword arguments of ``settings`` that this method takes."""
        return {k: settings[k] for k in self.tuned}

    @property
    def rule(self) -> Callable:
        """The pure rule ``rule(xp, state, num_steps, is_symmetric, **params)``."""
        return self.analyzer.rule


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("minmax", MinMaxEncodingAnalyzer, "minmax"),
        Method(
            "percentile",
            PercentileEncodingAnalyzer,
            "histogram",
            ("num_bins", "percentile"),
        ),
        Method("sqnr", SqnrEncodingAnalyzer, "histogram", ("num_bins", "gamma")),
        Method("tf_enhanced", TfEnhancedEncodingAnalyzer, "histogram", in_command=False),
        Method("mse", MseEncodingAnalyzer, "histogram", ("num_bins",)),
        Method("entropy", EntropyEncodingAnalyzer, "histogram"),
        Method("ema", EmaMinMaxEncodingAnalyzer, "ema"),
    )
}
"""Every method, by name, in the order the command reports them."""

ANALYZERS: dict[str, type[EncodingAnalyzer]] = {
    m.analyzer.__name__: m.analyzer for m in METHODS.values()
}
"""Every public analyzer class, by class name (what a statistics file names)."""


def activation_defaults(method: str, options: dict | None) -> dict:
    """Return the analyzer options of a model calibrator's ``activations`` method.

    ``percentile`` gets :data:`ACTIVATION_PERCENTILE` unless ``options`` sets it, as in the
    command: one default for both.
    """
    out = dict(options or {})
    if method == "percentile":
        out.setdefault("percentile", ACTIVATION_PERCENTILE)
    return out
