"""The analysis report of a torch model: quantizers, layer sensitivity, gains in float.

Quantize-dequantize is emulated in the model itself: a weight is swapped for its
quantize-dequantized copy, an activation passes a forward (pre-)hook that quantizes it, each
only for the run that asks for it; the model is left as it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from .._calibration import CalibrationResult, measure_models
from .._output_errors import OutputErrors
from .._report import sqnr_db
from .._report_data import LayerSensitivity, Sensitivity, model_quantizers
from ._calibrate import Untouched, forward_batch, numpy_outputs
from ._fake_quant import fake_quant

__all__ = ["sensitivity", "torch_report"]


def _fake_quant(x: torch.Tensor, e, num_steps: int) -> torch.Tensor:
    """``(clip(round(x / s) - o, 0, n) + o) * s`` with ``e``'s scale and offset (its axis)."""
    scale = torch.as_tensor(e.scale, device=x.device).to(x.dtype)
    offset = torch.as_tensor(e.offset, device=x.device).to(x.dtype)
    shape = [1] * x.ndim
    if e.axis is not None and scale.numel() > 1:
        shape[e.axis] = scale.numel()
    else:
        scale, offset = scale.reshape(-1)[:1], offset.reshape(-1)[:1]
    return fake_quant(x, scale.reshape(shape), offset.reshape(shape), num_steps)


@contextlib.contextmanager
def _quantized(model, result: CalibrationResult, names: set[str]):
    """Run ``model`` with the quantizers ``names`` on (weights swapped, activations hooked)."""
    n = 2**result.bits - 1
    modules = dict(model.named_modules())
    saved, handles = [], []
    try:
        with torch.no_grad():
            for name in names:
                e = result.encodings[name]
                if e.kind == "param":
                    module = modules[name.rsplit(".", 1)[0] if "." in name else ""]
                    saved.append((module, module.weight.detach().clone()))
                    module.weight.copy_(_fake_quant(module.weight, e, n))
        for name in names:
            e = result.encodings[name]
            if e.kind != "activation":
                continue
            module_name, _, where = name.rpartition(":")
            module = modules[module_name]
            if where == "input":

                def pre(mod, args, e=e):
                    i = next((k for k, a in enumerate(args) if isinstance(a, torch.Tensor)), None)
                    if i is None:
                        return None
                    return (*args[:i], _fake_quant(args[i], e, n), *args[i + 1 :])

                handles.append(module.register_forward_pre_hook(pre))
            else:
                handles.append(
                    module.register_forward_hook(lambda mod, a, out, e=e: _fake_quant(out, e, n))
                )
        yield
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for module, weight in saved:
                module.weight.copy_(weight)


def sensitivity(
    model: torch.nn.Module, result: CalibrationResult, batches: Sequence, gains: bool = True
) -> Sensitivity:
    """Measure each layer's and each quantizer's effect on ``model``'s output on ``batches``.

    As :func:`encanalyze.onnx._sensitivity.sensitivity`: everything quantized, each module with
    only its weight and with only its activations quantized, and (``gains``) every quantizer
    left in floating point alone; the score is the mean over float outputs of the output SQNR
    against the float model (:class:`~encanalyze._output_errors.OutputErrors`).
    """
    with Untouched(model, True), torch.no_grad():
        reference = [numpy_outputs(model, b) for b in batches]
        names = [str(k) for k in range(len(reference[0]) if reference else 0)]

        def errors(quantized: set[str]) -> OutputErrors:
            with _quantized(model, result, quantized):
                got = (numpy_outputs(model, b) for b in batches)  # one batch at a time
                return OutputErrors.measure(names, reference, got)

        def score(quantized: set[str]) -> float:
            return errors(quantized).score()

        every = set(result.encodings)
        everything = errors(every)
        base = everything.score()
        by_module: dict[str, dict[str, list[str]]] = {}
        for name, e in result.encodings.items():
            module = name.rpartition(":")[0] if e.kind == "activation" else name[: -len(".weight")]
            kind = "weights" if e.kind == "param" else "activations"
            by_module.setdefault(module, {"weights": [], "activations": []})[kind].append(name)
        modules = dict(model.named_modules())
        layers = []
        for module, parts in by_module.items():
            w = score(set(parts["weights"])) if parts["weights"] else None
            a = score(set(parts["activations"])) if parts["activations"] else None
            op = type(modules[module]).__name__ if module in modules else ""
            layers.append(
                LayerSensitivity(
                    module, op, tuple(parts["weights"]), tuple(parts["activations"]), w, a
                )
            )
        gain = {name: score(every - {name}) - base for name in every} if gains else {}
    return Sensitivity(base, sorted(layers, key=LayerSensitivity.worst), gain, everything.unit)


def torch_report(
    model: torch.nn.Module,
    result: CalibrationResult,
    batches: Sequence | None = None,
    *,
    statistics: dict | None = None,
    summary: dict | None = None,
) -> dict:
    """Return the report data of a torch model calibrated by :func:`encanalyze.torch.calibrate`.

    Quantizers (weights' histograms from the model, activations' from ``statistics``), and with
    ``batches`` (held-out data) the layer sensitivity, each quantizer's gain in floating point
    and each activation's own SQNR on them.
    """
    statistics = statistics or {}
    weights = {
        n: p.detach().float().cpu().numpy()
        for n, p in model.named_parameters()
        if n in result.encodings
    }
    quantizers = model_quantizers(
        result, weights, statistics.get("histograms") or {}, statistics.get("ranges") or {}
    )
    sens = None
    if batches:
        sens = sensitivity(model, result, batches)
        own = _activation_sqnr(model, result, batches)
        for q in quantizers:
            q["gain_db"] = sens.gain_db.get(q["name"])
            if q["name"] in own:
                q["own_sqnr_db"] = own[q["name"]]
                q["methods"][q["best"]]["sqnr_db"] = own[q["name"]]
    summary = dict(summary or {"job": "torch model"})
    rows = []
    if sens is not None:
        measure = "output SQNR" if sens.unit == "dB" else "output agreement"
        value = f"{sens.output_sqnr_db:.2f} {sens.unit}"
        summary[f"{measure}, everything quantized (emulated)"] = value
        label = "encanalyze, as calibrated (emulated in the model)"
        rows.append({"label": label, "output_sqnr_db": sens.output_sqnr_db, "measured_on": "given"})
    page = {
        "title": "encanalyze calibration report",
        "summary": summary,
        "methods": list(dict.fromkeys(m for q in quantizers for m in q["methods"])),
        "quantizers": quantizers,
        "sensitivity": [] if sens is None else [layer.as_dict() for layer in sens.layers],
        "comparison": rows,
    }
    if sens is not None and sens.unit != "dB":  # no float output: scored by agreement
        page["output_unit"] = sens.unit
    return page


def _activation_sqnr(model, result: CalibrationResult, batches) -> dict[str, float]:
    """Each activation encoding's own SQNR on ``batches`` (the float model's activations)."""
    n = 2**result.bits - 1
    energy: dict[str, list[float]] = {}
    modules = dict(model.named_modules())
    handles = []

    def watch(key, e):
        def hook(module, args, out):
            t = (
                out
                if key.endswith(":output")
                else next((a for a in args if isinstance(a, torch.Tensor)), None)
            )
            if isinstance(t, torch.Tensor):
                x = t.detach().double()
                x = x[torch.isfinite(x)] if e.axis is None else x
                q = _fake_quant(x, e, n)
                acc = energy.setdefault(key, [0.0, 0.0])
                acc[0] += float((x * x).sum())
                acc[1] += float(((x - q) ** 2).sum())

        return hook

    for name, e in result.encodings.items():
        if e.kind == "activation":
            module = modules[name.rpartition(":")[0]]
            handles.append(module.register_forward_hook(watch(name, e)))
    try:
        with Untouched(model, True), torch.no_grad():
            for batch in batches:
                forward_batch(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return {k: sqnr_db(*v) for k, v in energy.items()}


def _measure(model, result, calibration, batches, statistics, summary) -> dict:
    """:meth:`CalibrationResult.report`'s measurements of a torch module."""
    return torch_report(model, result, list(batches or []), statistics=statistics, summary=summary)


measure_models(lambda model: isinstance(model, torch.nn.Module), _measure)
