"""QDQ models whose quantizers switch on and off per run: layer sensitivity on the real model.

A quantized tensor ``NAME`` gets a boolean graph input ``NAME::on`` and a ``Where`` that passes
its dequantized value or the float one (the float weights kept beside the quantized ones), so
that one ONNX Runtime session runs the model with any subset of its quantizers on. The
interface is :class:`encanalyze.onnx._emulate.Emulator`'s, which
:func:`encanalyze.onnx._sensitivity.sensitivity` drives.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from ._calibrate import feeds, model_inputs, run_batch, session

__all__ = ["SUFFIX", "QuantizerSession", "SwitchedModel", "switch"]

SUFFIX = "::on"
"""The suffix of a quantizer's switch input."""


def switch(graph, name: str, dq: str) -> tuple[object, str]:
    """Add ``name``'s switch input to ``graph``; return its ``Where`` node and output name."""
    from onnx import TensorProto, helper

    on, chosen = f"{name}{SUFFIX}", f"{name}_switched"
    graph.input.append(helper.make_tensor_value_info(on, TensorProto.BOOL, []))
    return helper.make_node("Where", [on, dq, name], [chosen]), chosen


class QuantizerSession:
    """An ONNX Runtime session whose quantizers each run's inputs set (what sensitivity drives).

    Subclasses set ``inputs`` (the model's own inputs), ``names`` (the outputs to return) and
    ``tensors``, open the session with :meth:`_open` and give :meth:`feed`.
    """

    inputs: list
    names: list

    def _open(self, proto, providers=None, config: dict | None = None, arrays=None) -> None:
        """Start the session of ``proto`` (``arrays``: initializers' data by name)."""
        self._run = session(proto, providers, config, arrays)

    def close(self) -> None:
        """Drop the session."""
        self._run = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def outputs(self, settings: dict, batches: Iterable) -> Iterator[list]:
        """Yield the outputs on each batch with the quantizer inputs ``settings`` set."""
        for batch in batches:
            yield run_batch(self._run, self.names, {**feeds(batch, self.inputs), **settings})


class SwitchedModel(QuantizerSession):
    """One ONNX Runtime session of ``proto`` (a QDQ model built with switches).

    ``tensors`` are the quantized tensors of ``names`` that have a switch; :meth:`feed` gives
    the inputs that quantize some of them, :meth:`outputs` runs batches with them.
    """

    def __init__(self, proto, names: Iterable[str], providers=None, config: dict | None = None):

        switched = {i.name for i in proto.graph.input if i.name.endswith(SUFFIX)}
        self.tensors = [n for n in names if f"{n}{SUFFIX}" in switched]
        self.inputs = [i for i in model_inputs(proto) if i.name not in switched]
        self.names = [o.name for o in proto.graph.output]
        self._open(proto, providers, config)

    def feed(self, encodings=None, quantized: set[str] | None = None) -> dict:
        """Return the inputs that quantize ``quantized`` only (``None``: every tensor).

        ``encodings`` is not read: the model holds its scales.
        """
        on = {n: quantized is None or n in quantized for n in self.tensors}
        return {f"{n}{SUFFIX}": np.asarray(v) for n, v in on.items()}
