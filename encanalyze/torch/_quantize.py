"""One call from a torch model to a quantized one: :func:`quantize` and :class:`QuantizedModel`."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch

from .._backends import to_numpy
from .._calibration import CalibrationResult, TensorEncoding, warn_clipping
from .._html_report import write_report
from .._io import Outputs, strict_json
from .._output_errors import OutputErrors
from .._registry import AUTO_ACTIVATIONS
from ..onnx._blocks import BlockCalibration, block_qdq_model
from ..onnx._float8 import FLOAT8_FORMATS, Float8Calibration, float8_qdq_model
from ..onnx._qdq import own_qdq_model
from ..onnx._qdq_graph import save_model
from ._batchnorm import batchnorms
from ._batchnorm import fold_batchnorm as folded_copy
from ._calibrate import (
    Untouched,
    as_numpy,
    calibratable,
    calibrate,
    numpy_outputs,
    run_batches,
)
from ._export import export_float, onnx_result
from ._fake_quant import TokenQuantizer, attach, attach_tokens, kind_of, reencode
from ._formats import calibrate_format, number_format
from ._report import torch_report

__all__ = ["CONFIG_KEYS", "QuantizedModel", "quantize"]

CONFIG_KEYS = (
    "activations",
    "weights",
    "bits",
    "symmetric",
    "weight_symmetric",
    "per_channel_weights",
    "per_channel_activations",
    "modules",
    "activation_options",
    "weight_options",
    "outputs",
    "number_format",
    "per_token_activations",
)
"""What ``quantize``'s ``config`` may set: :func:`~encanalyze.torch.calibrate`'s options (the
defaults are :data:`encanalyze._registry.DEFAULTS`, shared by every entry point) and
``number_format`` (a name of :data:`encanalyze.formats.NUMBER_FORMATS`; default ``"int"``) and
``per_token_activations`` (default False: every linear layer's input quantized per token at run
time, :class:`~encanalyze.torch.TokenQuantizer`)."""

ENCODING_FORMATS = ("aimet", "onnx_qdq")

AUTO = "auto"
"""``quantize``'s default activation method: each of :data:`~encanalyze._registry.AUTO_ACTIVATIONS`
is calibrated (one histogram per tensor) and the one whose quantized model's outputs are
nearest the float model's on the calibration data is kept, as the command's model job does."""


class QuantizedModel(torch.nn.Module):
    """A calibrated copy of a torch model that runs quantize-dequantize on every encoded tensor.

    Calling it runs the copy: weights hold their quantize-dequantized values, and each
    calibrated layer input and output passes its :class:`~encanalyze.torch.Quantizer`
    (the grids of ONNX Runtime's ``QuantizeLinear`` / ``DequantizeLinear``). ``result`` is the
    calibration (:class:`~encanalyze.torch.CalibrationResult`), ``encodings`` its encodings by
    tensor name, ``scores`` each activation method's output score where :func:`quantize` chose
    among them (``auto``), ``float_model`` the float model they were calibrated on (BatchNorm
    folded where :func:`quantize` folded it), ``per_token`` the tensors quantized per token at
    run time (``per_token_activations``; they have no encoding). The model given to
    :func:`quantize` is never changed.
    """

    def __init__(
        self,
        quantized: torch.nn.Module,
        float_model: torch.nn.Module,
        result: CalibrationResult,
        statistics: dict,
        scores: dict | None = None,
        per_token: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.model = quantized
        self.__dict__["float_model"] = float_model  # not a submodule: not in the state dict
        self.__dict__["result"] = result
        self.__dict__["_statistics"] = statistics
        self.__dict__["onnx_names"] = {}
        self.__dict__["scores"] = dict(scores or {})
        self.__dict__["per_token"] = tuple(per_token)

    @property
    def encodings(self) -> dict[str, TensorEncoding]:
        """The encodings by tensor name (``conv1.weight``, ``conv1:input``, ...)."""
        return self.result.encodings

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def report(self, path, batches=None, *, title: str | None = None) -> Path:
        """Write the analysis report of the float model's calibration (``batches``: held out).

        Integer grids: :meth:`encanalyze.torch.CalibrationResult.report` with the float model
        and the statistics of the calibration. Float and block formats: every quantizer with
        its methods' ranges and SQNR, and with ``batches`` this model's output SQNR on them.
        """
        if isinstance(self.result, CalibrationResult):
            return self.result.report(
                path, self.float_model, batches, statistics=self._statistics, title=title
            )
        summary = {"job": "torch model", "number format": _format_name(self.result)}
        data = torch_report(
            self.float_model, self.result, statistics=self._statistics, summary=summary
        )
        if batches:
            with Untouched(self.float_model, True), torch.no_grad():
                want = [numpy_outputs(self.float_model, b) for b in batches]
                got = [numpy_outputs(self, b) for b in batches]
            errors = OutputErrors.measure([str(k) for k in range(len(want[0]))], want, got)
            measure = "output SQNR" if errors.unit == "dB" else "output agreement"
            summary[f"{measure}, everything quantized"] = f"{errors.score():.2f} {errors.unit}"
            data["comparison"] = [
                {"label": "encanalyze, as quantized", "output_sqnr_db": errors.score(),
                 "measured_on": "given"}
            ]  # fmt: skip
        data["title"] = title or data["title"]
        return write_report(path, data)

    def export_onnx(
        self,
        path,
        example_inputs,
        *,
        qdq: bool = True,
        encodings=None,
        format: str = "aimet",
        **export_options,
    ) -> Path:
        """Write the QDQ model: the float model's ONNX export with these encodings; return it.

        ``torch.onnx.export`` exports the float model on ``example_inputs`` (one tensor, a
        tuple of inputs, or a dict of keyword inputs; ``export_options`` go to the exporter,
        ``dynamo`` False by default); each encoding is placed on the exported tensor that
        holds its values (:mod:`encanalyze.torch._export`), and gets a ``QuantizeLinear`` /
        ``DequantizeLinear`` pair there (weights: their integer values behind
        ``DequantizeLinear``; biases stay in float, as here). Its outputs are this model's,
        but where a value within rounding of a grid's midpoint rounds to the next step in
        ONNX Runtime's kernels (they add in another order) and that step carries on. ``qdq``
        False writes the float export itself, as AIMET's ``export`` does, for tools that take
        a float model and its encodings (QNN's converters). ``encodings``: also write the
        encodings keyed by the exported float model's names (``format``: ``"aimet"`` or
        ``"onnx_qdq"``). The files are staged and published together; a failure leaves the old
        ones. :attr:`onnx_names` then maps each encoding to its exported tensor.
        """
        _check_format(format)
        _check_exportable(self.result, qdq, encodings)
        if qdq and self.per_token:
            raise ValueError(
                f"{len(self.per_token)} tensor(s) are quantized per token at run time "
                f"({self.per_token[0]!r}, ...): ONNX's QuantizeLinear takes fixed scales, so a "
                "QDQ model cannot hold them; export_onnx(..., qdq=False, encodings=...) writes "
                "the float model and the calibrated encodings (weights, static activations)"
            )
        with Outputs() as out, tempfile.TemporaryDirectory(prefix="encanalyze-") as work:
            staged = out.file(path, "QDQ model" if qdq else "ONNX model", sidecar=True)
            staged_json = None if encodings is None else out.file(encodings, "encodings")
            source = Path(work) / "float.onnx"
            export_float(self.float_model, example_inputs, source, export_options)
            import onnx

            proto = onnx.load(str(source))
            result, names = onnx_result(self.float_model, proto, example_inputs, self.result)
            if qdq:
                proto = _qdq_model(proto, result)
            save_model(proto, staged)
            if staged_json is not None:
                staged_json.write_text(strict_json(_encodings_file(result, format)))
            out.commit()
        self.__dict__["onnx_names"] = names
        self.__dict__["_onnx_result"] = result
        return Path(path)

    def export_encodings(self, path, format: str = "aimet") -> Path:
        """Write the encodings keyed by the exported ONNX model's tensor names; return the path.

        ``format``: ``"aimet"`` (AIMET 1.0.0, what QNN and AIMET's ONNX flow read) or
        ``"onnx_qdq"`` (``QuantizeLinear``'s scale and zero point). Needs :meth:`export_onnx`
        first (the names are the exported model's).
        """
        _check_format(format)
        _check_exportable(self.result, False, path)
        result = self.__dict__.get("_onnx_result")
        if result is None:
            raise ValueError(
                "export_encodings writes the exported ONNX model's tensor names: call "
                "export_onnx(path, example_inputs) first"
            )
        with Outputs() as out:
            staged = out.file(path, "encodings")
            staged.write_text(strict_json(_encodings_file(result, format)))
            out.commit()
        return Path(path)


def _qdq_model(proto, result):
    """Return the QDQ model of ``proto`` with ``result`` (keyed by its tensor names)."""
    if isinstance(result, Float8Calibration):
        return float8_qdq_model(proto, result)
    if isinstance(result, BlockCalibration):
        return block_qdq_model(proto, result)
    return own_qdq_model(proto, result, list(result.encodings))[0]


def _check_exportable(result, qdq: bool, encodings) -> None:
    """Raise ``ValueError`` before any work where ``result`` has no such export."""
    if encodings is not None and not isinstance(result, CalibrationResult):
        raise ValueError(
            "encodings files hold integer grids: a float or block format's encodings are "
            "in its QDQ model (export_onnx without encodings)"
        )
    if qdq and isinstance(result, Float8Calibration) and result.fmt.name not in FLOAT8_FORMATS:
        raise ValueError(
            f"ONNX has no QuantizeLinear to {result.fmt.name}: its QDQ models take "
            f"{list(FLOAT8_FORMATS)}"
        )


def _format_name(result) -> str:
    if isinstance(result, BlockCalibration):
        return f"{result.scheme} blocks of {result.block_size}, {result.fmt.name} elements"
    return f"{result.fmt.name}, FP32 scales"


def _bytes(values) -> bytes:
    return b"" if values is None else to_numpy(values).tobytes()


def _check_format(format: str) -> None:
    if format not in ENCODING_FORMATS:
        raise ValueError(f"format must be one of {ENCODING_FORMATS}, got {format!r}")


def _encodings_file(result: CalibrationResult, format: str) -> dict:
    return result.aimet() if format == "aimet" else result.onnx_qdq()


def quantize(
    model: torch.nn.Module,
    batches: Iterable | Callable[[torch.nn.Module], object],
    config: Mapping | None = None,
    *,
    fold_batchnorm: bool = True,
    batch_to_inputs: Callable | None = None,
    progress: bool | None = None,
) -> QuantizedModel:
    """Calibrate ``model`` on ``batches`` and return it quantized (:class:`QuantizedModel`).

    ``batches``: model inputs, or a ``forward_loop(model)``, as :func:`calibrate` takes them
    (``batch_to_inputs`` turns a DataLoader's ``(inputs, target)`` into inputs). ``config``:
    :func:`calibrate`'s options by name (:data:`CONFIG_KEYS`; the deployment default:
    asymmetric uint8 activations, symmetric int8 weights per channel by min-max), with
    ``activations`` ``"auto"`` (:data:`AUTO`: the method whose quantized model's outputs are
    nearest the float model's on the calibration batches; a one-pass iterator of batches is
    kept in memory to run them again) and ``outputs`` False: the layers' inputs and weights
    are quantized, not their outputs, as PT2E's ``X86InductorQuantizer`` and TensorRT place
    them (True: outputs too, as ONNX Runtime's QDQ models do).
    ``fold_batchnorm``: each eval-mode BatchNorm after a convolution or linear layer is
    folded into it first (:func:`~encanalyze.torch.fold_batchnorm`, on a copy), as deployments
    run it; with False the model is calibrated as it is (and a ``UserWarning`` names a
    BatchNorm that follows a calibrated layer). ``model`` itself is left exactly as it was.
    ``per_token_activations`` True quantizes every calibrated linear layer's input per token at
    run time (:class:`~encanalyze.torch.TokenQuantizer`: each row of its last axis on its own
    min-max grid, or amax scale for a float ``number_format``), as torchao's
    ``Int8DynamicActivationInt8WeightConfig`` and LLM runtimes do; those inputs then have no
    calibrated encoding (the other layers' activations keep theirs), and the model has no QDQ
    export (:attr:`QuantizedModel.per_token` names them). The activations' grid is the
    config's ``bits`` / ``symmetric`` (the deployments' per-token grid is symmetric int8:
    ``{"symmetric": True}``). MX and NVFP4 scale their activations per block and take no
    per-token option.

    Examples
    --------
    >>> import torch
    >>> from encanalyze.torch import quantize
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
    ...                             torch.nn.ReLU(), torch.nn.Flatten(),
    ...                             torch.nn.Linear(8 * 6 * 6, 10)).eval()
    >>> batches = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    >>> quantized = quantize(model, batches)
    >>> sorted(quantized.encodings)
    ['0.weight', '0:input', '4.weight', '4:input']
    >>> quantized(batches[0]).shape
    torch.Size([4, 10])
    """
    config = {"outputs": False, "activations": AUTO, **(config or {})}
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"config has no option {unknown[0]!r}; it takes {list(CONFIG_KEYS)}")
    fmt = number_format(config.pop("number_format", "int"))
    per_token = config.pop("per_token_activations", False)
    if not isinstance(per_token, bool):
        raise TypeError(f"per_token_activations must be True or False, got {per_token!r}")
    if per_token and fmt.scheme not in ("int", "scaled"):
        raise ValueError(
            f"per_token_activations applies to integer grids and float element formats; "
            f"{fmt.name!r} scales its values per block"
        )
    auto = config["activations"] == AUTO
    if fmt.scheme == "int" and auto:
        config["activations"] = list(AUTO_ACTIVATIONS)
    elif fmt.scheme != "int" and not auto and config["activations"] not in fmt.methods:
        raise ValueError(
            f"number_format {fmt.name!r} takes the activation methods {list(fmt.methods)} "
            f"or {AUTO!r}, got {config['activations']!r}"
        )
    source = calibratable(model)
    float_model = source
    if fold_batchnorm and batchnorms(source):
        try:
            float_model = folded_copy(source)
        except TypeError:  # not traceable: calibrate warns of a BatchNorm after a layer
            pass
    if auto and not callable(batches) and iter(batches) is batches:  # one pass: kept to judge
        batches = list(batches)
    statistics: dict = {"ranges": None}  # the report's histograms; no per-batch ranges (syncs)
    reference: list = []  # the float model's outputs, to judge the methods by
    judged = auto and fmt.scheme in ("int", "scaled")  # (blocks have no activation to choose)
    options = {"progress": progress, "batch_to_inputs": batch_to_inputs, "statistics": statistics}
    with _outputs_into(float_model, reference if judged else None):
        if fmt.scheme == "int":
            result = calibrate(float_model, batches, **options, **config)
        else:
            result = calibrate_format(float_model, batches, fmt, config, **options)
    tokens: tuple[str, ...] = ()
    if per_token:  # the linear layers' inputs: per token at run time, not calibrated
        linear = {n for n, m in float_model.named_modules() if isinstance(m, torch.nn.Linear)}
        tokens = tuple(
            n for n in result.encodings if n.endswith(":input") and n[: -len(":input")] in linear
        )
        kept = {n: e for n, e in result.encodings.items() if n not in tokens}
        result = dataclasses.replace(result, encodings=kept)
    variants = {}
    if fmt.scheme == "int":
        methods = dict.fromkeys(m for c in result.candidates.values() for m in c)
        variants = {m: result.with_activations(m) for m in methods}
    elif fmt.scheme == "scaled":
        named = fmt.methods if auto else (config["activations"],)
        variants = {m: result.with_activations(m) for m in named}
        result = variants[named[0]]
    quantized = attach(copy.deepcopy(float_model).eval(), result)
    if tokens:

        def make() -> TokenQuantizer:
            if fmt.scheme == "int":
                return TokenQuantizer(2**result.bits - 1, result.symmetric)
            return TokenQuantizer(fmt=fmt.element)

        attach_tokens(quantized, [n[: -len(":input")] for n in tokens], make)
    scores = {}
    if auto and len(variants) > 1:
        scores = _scores(quantized, variants, reference, batches, batch_to_inputs)
        result = variants[max(scores, key=scores.get)]  # ties: the first
        reencode(quantized, result)
        if fmt.scheme == "int":  # (one method named: calibrate warned already)
            warn_clipping(result.encodings, statistics["stats"])
    return QuantizedModel(quantized, float_model, result, statistics, scores, tokens)


def _scores(quantized, variants: dict, reference: list, batches, batch_to_inputs) -> dict:
    """Each variant's output score (:class:`~encanalyze.OutputErrors`) on ``batches``.

    ``variants``: the calibration with each activation method in use; ``reference``: the float
    model's outputs on each batch (or forward call), captured while it calibrated.
    ``quantized`` runs the batches once per variant, its activation quantizers re-encoded in
    place; variants whose activation encodings are all another's share its score.
    """
    first: dict[str, str] = {}  # method -> the first method with the same activation encodings
    seen: dict[tuple, str] = {}
    for method, variant in variants.items():
        first[method] = seen.setdefault(_activations_of(variant), method)
    names = [str(k) for k in range(len(reference[0]) if reference else 0)]
    scores: dict[str, float] = {}
    for method in dict.fromkeys(first.values()):
        reencode(quantized, variants[method])
        got = _outputs_of(quantized, batches, batch_to_inputs)
        scores[method] = OutputErrors.measure(names, reference, got).score()
    return {m: scores[f] for m, f in first.items()}


def _activations_of(result) -> tuple:
    """Return the activation encodings' scales and offsets (bytes): equal where they are."""
    return tuple(
        (name, to_numpy(e.scale).tobytes(), _bytes(getattr(e, "offset", None)))
        for name, e in result.encodings.items()
        if kind_of(e) == "activation"
    )


def _outputs_of(model, batches, batch_to_inputs) -> list[list]:
    """Return the model's outputs (NumPy) on each batch, or each forward call of a loop."""
    got: list = []
    with Untouched(model, True), torch.no_grad(), _outputs_into(model, got):
        run_batches(model, batches, batch_to_inputs, False)
    return got


@contextlib.contextmanager
def _outputs_into(model: torch.nn.Module, outputs: list | None):
    """Append the model's outputs (NumPy) of each of its forward calls to ``outputs`` inside."""
    if outputs is None:
        yield
        return
    handle = model.register_forward_hook(lambda m, a, out: outputs.append(as_numpy(out)))
    try:
        yield
    finally:
        handle.remove()
