"""encanalyze's analyzers as observers in PyTorch's export-based quantization flow (PT2E).

Needs torch and torchao (``prepare_pt2e`` / ``convert_pt2e``). :class:`EncodingObserver` is an
observer that a quantizer's ``QuantizationSpec`` names, like torch's own ``MinMaxObserver`` or
``HistogramObserver``; :func:`quantization_config` builds a complete config (activations per
tensor, weights per output channel) for torchao's ``X86InductorQuantizer`` or any quantizer
that takes a ``QuantizationConfig``.
"""

from __future__ import annotations

import warnings

import torch
from torchao.quantization.pt2e.observer import UniformQuantizationObserverBase
from torchao.quantization.pt2e.quantizer import QuantizationSpec
from torchao.quantization.pt2e.quantizer.utils import QuantizationConfig

from ._analyzer import STATE_FORMAT_VERSION
from ._encoding import to_scale_offset
from ._registry import DEFAULTS, METHODS, activation_defaults

__all__ = ["EncodingObserver", "quantization_config"]

_SYMMETRIC = (torch.per_tensor_symmetric, torch.per_channel_symmetric)
_SHAPE = "encanalyze_shape"
_STATS = "encanalyze_stats."
_PER_CHANNEL = (torch.per_channel_affine, torch.per_channel_symmetric)


class EncodingObserver(UniformQuantizationObserverBase):
    """An observer that gathers statistics with any method of :data:`encanalyze.METHODS`.

    ``method`` names the method (``"sqnr"``, ``"percentile"``, ``"mse"``, ...); further
    keyword arguments that the method's analyzer takes (``percentile=99.9``, ``num_bins=512``)
    go to it. ``dtype``, ``qscheme``, ``quant_min``/``quant_max`` and ``ch_axis`` are torch's:
    the grid has ``quant_max - quant_min`` steps, symmetric for the ``*_symmetric`` schemes,
    one encoding per index of ``ch_axis`` for the ``per_channel_*`` ones; scales below ``eps``
    become ``eps`` (the zero point then that scale's), as torch's observers do. The percentile
    method keeps ``99.99`` unless ``percentile`` is given, as every entry point does.
    Statistics stay on the observed tensors' device and travel in the module's ``state_dict`` (a
    prepared model saved and loaded converts to the same model), and the observer can be
    deep-copied and pickled; ``calculate_qparams`` returns torch's ``(scale, zero_point)``
    with ``zero_point = quant_min - offset``.
    """

    def __init__(
        self,
        method: str = DEFAULTS["activations"],
        dtype=torch.quint8,
        qscheme=torch.per_tensor_affine,
        reduce_range: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        ch_axis: int = 0,
        factory_kwargs=None,
        eps: float = torch.finfo(torch.float32).eps,
        is_dynamic: bool = False,
        **options,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
        if is_dynamic:
            raise ValueError("EncodingObserver gathers static statistics (is_dynamic=False)")
        if qscheme not in (*_SYMMETRIC, torch.per_tensor_affine, torch.per_channel_affine):
            raise ValueError(f"EncodingObserver does not support {qscheme}")
        super().__init__(
            dtype=dtype,
            qscheme=qscheme,
            reduce_range=reduce_range,
            quant_min=quant_min,
            quant_max=quant_max,
            factory_kwargs=factory_kwargs,
            eps=eps,
            is_dynamic=is_dynamic,
        )
        options = activation_defaults(method, options)  # percentile: 99.99, as everywhere
        METHODS[method].analyzer((1,), **options)  # bad options fail here, not mid-calibration
        self.method, self.ch_axis, self.options = method, ch_axis, options
        self.analyzer = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Feed ``x`` (detached) into the analyzer and return it unchanged."""
        if x.numel() == 0:
            return x
        if self.analyzer is None:
            shape = [1]
            if self.qscheme in _PER_CHANNEL:
                shape = [1] * x.ndim
                shape[self.ch_axis] = x.shape[self.ch_axis]
            self.analyzer = METHODS[self.method].analyzer(tuple(shape), **self.options)
        self.analyzer.observe(x.detach())
        return x

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(scale, zero_point)``: float32 and int32, one per encoding."""
        if self.analyzer is None:  # torch's observers do the same for a tensor never seen
            warnings.warn(
                "EncodingObserver saw no data; returning scale 1 and zero point 0", stacklevel=2
            )
            return torch.tensor([1.0]), torch.tensor([0], dtype=torch.int32)
        num_steps = self.quant_max - self.quant_min
        symmetric = self.qscheme in _SYMMETRIC
        lo, hi = self.analyzer.compute_encodings(num_steps, symmetric)
        scale, offset = to_scale_offset(lo, hi, num_steps, symmetric)
        scale, lo = scale.reshape(-1).to(torch.float32), lo.reshape(-1)
        zero_point = (self.quant_min - offset).reshape(-1)
        small = scale < self.eps  # torch's observers: scale at least eps, and the zero point
        if bool(torch.any(small)):  # of that scale (a symmetric grid keeps its midpoint)
            eps = self.eps.to(device=scale.device, dtype=scale.dtype)
            scale = torch.where(small, eps, scale)
            if not symmetric:
                moved = self.quant_min - torch.round(lo.to(scale.dtype) / scale)
                moved = torch.clamp(moved, self.quant_min, self.quant_max).to(zero_point.dtype)
                zero_point = torch.where(small, moved, zero_point)
        return scale, zero_point.to(torch.int32)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        """Save the statistics too: a saved and reloaded prepared model converts the same."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.analyzer is not None and self.analyzer.get_stats() is not None:
            destination[prefix + _SHAPE] = torch.tensor(self.analyzer.shape, dtype=torch.int64)
            for name, array in self.analyzer.state_dict()["state"].items():
                destination[prefix + _STATS + name] = array if keep_vars else array.detach()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ) -> None:
        ours = {k for k in state_dict if k == prefix + _SHAPE or k.startswith(prefix + _STATS)}
        if prefix + _SHAPE in state_dict:
            shape = tuple(int(v) for v in state_dict[prefix + _SHAPE].reshape(-1).tolist())
            stats = {k[len(prefix + _STATS) :]: state_dict[k] for k in ours if k != prefix + _SHAPE}
            try:
                analyzer = METHODS[self.method].analyzer(shape, **self.options)
                analyzer.load_state_dict(
                    {
                        "format_version": STATE_FORMAT_VERSION,
                        "class": type(analyzer).__name__,
                        "stats_params": analyzer.observer.params(),
                        "state": stats,
                    }
                )
            except (ValueError, TypeError) as err:
                errors.append(f"{prefix}: encanalyze statistics do not load: {err}")
            else:
                self.analyzer = analyzer
        rest = {k: v for k, v in state_dict.items() if k not in ours}
        super()._load_from_state_dict(
            rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )

    def extra_repr(self) -> str:
        """Name the method, scheme and channel axis in the module's repr."""
        return f"method={self.method}, qscheme={self.qscheme}, ch_axis={self.ch_axis}"


def quantization_config(
    activations: str = DEFAULTS["activations"],
    weights: str = DEFAULTS["weights"],
    *,
    per_channel_weights: bool = DEFAULTS["per_channel_weights"],
    activation_options: dict | None = None,
    weight_options: dict | None = None,
) -> QuantizationConfig:
    """Return a torchao ``QuantizationConfig`` whose observers are :class:`EncodingObserver`.

    Activations: uint8, per tensor, asymmetric, with the ``activations`` method; weights: int8
    symmetric with the ``weights`` method, per output channel (axis 0) unless
    ``per_channel_weights`` is False; biases are left to the quantizer. The same layout as
    torchao's default x86 config, so ``X86InductorQuantizer().set_global(config)`` takes it.

    Examples
    --------
    >>> import torch
    >>> from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    >>> from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    ...     X86InductorQuantizer)
    >>> from encanalyze.pt2e import quantization_config
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    >>> x = torch.randn(2, 3, 8, 8)
    >>> exported = torch.export.export(model, (x,)).module()
    >>> quantizer = X86InductorQuantizer().set_global(quantization_config("percentile"))
    >>> prepared = prepare_pt2e(exported, quantizer)
    >>> _ = prepared(x)
    >>> converted = convert_pt2e(prepared)
    >>> tuple(converted(x).shape)
    (2, 4, 6, 6)
    """
    act = QuantizationSpec(
        dtype=torch.uint8,
        quant_min=0,
        quant_max=255,
        qscheme=torch.per_tensor_affine,
        is_dynamic=False,
        observer_or_fake_quant_ctr=EncodingObserver.with_args(
            method=activations, **(activation_options or {})
        ),
    )
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-128,
        quant_max=127,
        qscheme=torch.per_channel_symmetric if per_channel_weights else torch.per_tensor_symmetric,
        ch_axis=0,
        is_dynamic=False,
        observer_or_fake_quant_ctr=EncodingObserver.with_args(
            method=weights, **(weight_options or {})
        ),
    )
    return QuantizationConfig(act, act, weight, None, False)
