"""Layer sensitivity: the model's output SQNR with only some quantizers on, in one session.

The emulation of :mod:`._emulate` quantizes any subset of the QDQ model's tensors per run
(the others pass in floating point), so every layer's "only its weights" and "only its
activations" runs, and every quantizer's "all but this one" run, share one ONNX Runtime
session and the float model's outputs computed once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .._calibration import CalibrationResult
from .._io import own_model
from .._output_errors import OutputErrors
from .._report_data import LayerSensitivity, Sensitivity
from ._branches import inline_branches
from ._calibrate import QUANTIZABLE_OPS, is_bias
from ._emulate import Emulator
from ._qdq import constants_to_initializers, model_outputs

__all__ = ["LayerSensitivity", "Sensitivity", "sensitivity"]


def sensitivity(
    model,
    result: CalibrationResult,
    batches: Sequence,
    *,
    op_types=QUANTIZABLE_OPS,
    providers=None,
    gains: bool = True,
    progress=None,
    emulator=Emulator,
    proxy: Mapping[str, float] | None = None,
    top: int | None = None,
) -> Sensitivity:
    """Measure each layer's and each quantizer's effect on the model's output.

    ``batches`` (a list: held-out data) run through the emulation of ``result``'s QDQ model:
    once with every quantizer on, once per ``op_types`` node with only its weights and once with
    only its activations on, and (``gains``) once per quantizer with all but it on. The score is
    the output SQNR against the float model, the mean over its float outputs (a model with
    only integer or bool outputs: their agreement in %, :attr:`Sensitivity.unit`).
    ``emulator`` makes the session that quantizes a subset (:class:`~._emulate.Emulator` for
    integer encodings, :class:`~._float8.Float8Switches` for FP8 ones: their real QDQ model).
    ``top`` (with ``proxy``, each quantizer's own SQNR in dB, a cheap stand-in): only the
    ``top`` layers whose quantizers' lowest proxy is lowest are run, and only their quantizers'
    gains; the other layers are listed without scores. ``None``: every layer.
    """
    proto = inline_branches(own_model(model), result.branches)
    constants_to_initializers(proto)  # weights as initializers, as the emulation has them
    names = [o.name for o in proto.graph.output]
    reference = list(model_outputs(proto, batches, names, providers))
    initializers = {t.name for t in proto.graph.initializer}
    with emulator(model, result, op_types=op_types, providers=providers) as run:
        on = set(run.tensors)

        def errors(quantized: set[str]) -> OutputErrors:
            settings = run.feed(result.encodings, quantized)
            return OutputErrors.measure(names, reference, run.outputs(settings, batches))

        def score(quantized: set[str]) -> float:
            return errors(quantized).score()

        everything = errors(on)
        base = everything.score()
        found = []  # (label, op, weights, activations) of each quantized layer
        for node in proto.graph.node:
            if op_types is not None and node.op_type not in op_types:
                continue
            ins = [n for i, n in enumerate(node.input) if n and not is_bias(node, i)]
            weights = tuple(n for n in ins if n in on and n in initializers)
            acts = tuple(n for n in (*ins, *node.output) if n in on and n not in initializers)
            if weights or acts:
                found.append((node.name or node.output[0], node.op_type, weights, acts))
        measured = _worst_by_proxy(found, proxy, top)
        layers = []
        for label, op, weights, acts in found:
            w = a = None
            if label in measured:
                w = score(set(weights)) if weights else None
                a = score(set(acts)) if acts else None
                if progress is not None:
                    progress.advance()
            layers.append(LayerSensitivity(label, op, weights, acts, w, a))
        gain = {}
        if gains:
            chosen = {n for label, _, w, a in found if label in measured for n in (*w, *a)}
            for name in run.tensors:
                if name in chosen:
                    gain[name] = score(on - {name}) - base
                    if progress is not None:
                        progress.advance()

    return Sensitivity(base, sorted(layers, key=LayerSensitivity.worst), gain, everything.unit)


def _worst_by_proxy(found: list, proxy: Mapping[str, float] | None, top: int | None) -> set:
    """Return the labels of the ``top`` layers whose quantizers' lowest ``proxy`` is lowest."""
    if top is None or proxy is None or len(found) <= top:
        return {label for label, *_ in found}

    def lowest(item) -> float:
        _, _, weights, acts = item
        values = [proxy[n] for n in (*weights, *acts) if proxy.get(n) is not None]
        return min(values) if values else float("inf")

    return {label for label, *_ in sorted(found, key=lowest)[:top]}
