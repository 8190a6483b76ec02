"""BatchNormalization folded into the convolution before it, as deployments run it.

A ``Conv`` whose output feeds only an inference ``BatchNormalization`` (weights, statistics
and parameters constant) computes, after folding, ``W' = W * s`` per output channel and
``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + epsilon)``: one node, the same
function up to float rounding. Integer runtimes (TensorRT, QNN, ONNX Runtime's own
pre-processing for ``quantize_static``) fold it before they quantize: the weight quantized is
``W'`` and the activation quantized is the normalized output, which is what the encodings
must be calibrated on.
"""

from __future__ import annotations

import numpy as np

from .._io import all_graphs, float_weights, own_model

__all__ = ["fold_batchnorm"]


def fold_batchnorm(model):
    """Return a copy of ``model`` with each foldable ``Conv`` + ``BatchNormalization`` folded.

    ``model`` is a path or a ``ModelProto`` (never changed). A pair folds where the
    convolution's output goes to the normalization alone (not a graph output), the
    normalization has one output (inference) and every weight, bias and statistic is an
    initializer or a ``Constant`` of the main graph. The folded weight and bias are new
    initializers (a weight shared with another node stays as it was for that node); the
    normalization's output name is kept, so the model's outputs and every later node are
    unchanged. Returns ``(folded model, names of the folded BatchNormalization outputs)``.

    Examples
    --------
    >>> import numpy as np
    >>> from onnx import TensorProto, helper, numpy_helper
    >>> from encanalyze.onnx import fold_batchnorm
    >>> f = lambda a, n: numpy_helper.from_array(np.asarray(a, "f4"), n)
    >>> graph = helper.make_graph(
    ...     [helper.make_node("Conv", ["x", "w"], ["c"]),
    ...      helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"])],
    ...     "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3, 3])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    ...     [f(np.ones((2, 1, 1, 1)), "w"), f([2, 1], "g"), f([0, 1], "b"), f([1, 0], "m"),
    ...      f([3, 0], "v")])
    >>> folded, names = fold_batchnorm(helper.make_model(graph))
    >>> names, [n.op_type for n in folded.graph.node]
    (['y'], ['Conv'])
    """
    from onnx import numpy_helper  # (onnx: needed by the models this takes)

    proto = own_model(model)
    graph = proto.graph
    constants = {n.output[0] for n in graph.node if n.op_type == "Constant" and n.output}
    main = {i.name for i in graph.initializer} | constants
    values = {name: a for name, a in float_weights(proto).items() if name in main}
    consumers: dict[str, int] = {}  # readers in every graph (a subgraph may read an outer name)
    for g in all_graphs(graph):
        for node in g.node:
            for name in node.input:
                consumers[name] = consumers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    producer = {o: node for node in graph.node for o in node.output}
    taken = {i.name for i in graph.initializer} | set(producer)
    folded, dropped = [], []
    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = producer.get(bn.input[0])
        params = bn.input[1:5]
        if (
            conv is None
            or conv.op_type != "Conv"
            or consumers.get(bn.input[0]) != 1
            or bn.input[0] in outputs
            or len(params) != 4
            or any(p not in values for p in params)
            or conv.input[1] not in values
            or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in values)
        ):
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (values[p].astype(np.float64) for p in params)
        w = values[conv.input[1]]
        s = gamma / np.sqrt(var + np.float64(eps))
        if w.ndim < 1 or w.shape[0] != s.shape[0]:
            continue
        bias = values[conv.input[2]] if len(conv.input) > 2 and conv.input[2] else 0.0
        new_w = w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))
        new_w = np.ascontiguousarray(new_w.astype(w.dtype))
        new_b = ((np.asarray(bias, np.float64) - mean) * s + beta).astype(w.dtype)
        names = [_fresh(f"{conv.input[1]}_bn_folded", taken), _fresh(f"{bn.output[0]}_b", taken)]
        graph.initializer.extend(
            [numpy_helper.from_array(a, n) for a, n in zip((new_w, new_b), names, strict=True)]
        )
        dropped += [conv.input[1], *params] + ([conv.input[2]] if len(conv.input) > 2 else [])
        del conv.input[1:]
        conv.input.extend(names)
        gone = conv.output[0]
        conv.output[0] = bn.output[0]
        graph.node.remove(bn)
        kept_infos = [v for v in graph.value_info if v.name != gone]
        del graph.value_info[:]
        graph.value_info.extend(kept_infos)
        folded.append(bn.output[0])
    _remove_unused(graph, {d for d in dropped if d})
    return proto, folded


def _fresh(base: str, taken: set) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _remove_unused(graph, names: set) -> None:
    """Remove the initializers and ``Constant`` nodes of ``names`` that no node reads now."""
    read = {i for node in graph.node for i in node.input} | {o.name for o in graph.output}
    gone = names - read
    keep = [i for i in graph.initializer if i.name not in gone]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] in gone]:
        graph.node.remove(node)
    keep_inputs = [i for i in graph.input if i.name not in gone]
    del graph.input[:]
    graph.input.extend(keep_inputs)
