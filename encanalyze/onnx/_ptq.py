"""Model-level post-training steps on ONNX graphs, as AIMET and integer runtimes apply them.

:func:`fold_batchnorm`: a ``Conv`` whose output feeds only an inference ``BatchNormalization``
(weights, statistics and parameters constant) becomes one ``Conv`` with ``W' = W * s`` per
output channel and ``b' = (b - mean) * s + beta``, ``s = gamma / sqrt(var + epsilon)``: the same
function up to float rounding. Integer runtimes (TensorRT, QNN, ONNX Runtime's pre-processing for
``quantize_static``) fold it before they quantize: the weight quantized is ``W'`` and the
activation quantized is the normalized output, which is what the encodings must be calibrated on.

:func:`equalize_layers`: cross-layer equalization (Nagel et al. 2019; AIMET's CLE). Two
convolutions with only a ReLU (or nothing) between them compute the same function when output
channel ``i`` of the first is divided by ``s_i > 0`` (weight and bias) and input channel ``i`` of
the second multiplied by it (``relu(x / s) = relu(x) / s``). With ``r1_i`` the first's largest
weight magnitude in output channel ``i`` and ``r2_i`` the second's in input channel ``i``,
``s_i = sqrt(r1_i / r2_i)`` gives both the range ``sqrt(r1_i r2_i)``: channels of very different
ranges (depthwise-separable networks) no longer share one weight grid badly, which is where
per-tensor int8 weights break.
"""

from __future__ import annotations

import numpy as np

from .._io import all_graphs, float_weights, own_model
from ._calibrate import feeds, model_inputs, run_batch, session
from ._emulate import fake_quant

__all__ = ["correct_biases", "equalize_layers", "fold_batchnorm"]

_BETWEEN = ("Relu",)
"""What may stand between two equalized convolutions: ``f(x / s) = f(x) / s`` for ``s > 0``."""


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
    values = _main_weights(proto)
    consumers = _readers(graph)
    outputs = {o.name for o in graph.output}
    producer = {o: node for node in graph.node for o in node.output}
    taken = _names_in_use(graph)
    folded, dropped, gone = [], [], set()
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
        gone.add(conv.output[0])
        conv.output[0] = bn.output[0]
        graph.node.remove(bn)
        folded.append(bn.output[0])
    kept_infos = [v for v in graph.value_info if v.name not in gone]  # no node makes them now
    del graph.value_info[:]
    graph.value_info.extend(kept_infos)
    _remove_unused(graph, {d for d in dropped if d})
    return proto, folded


def equalize_layers(model, *, iterations: int = 4):
    """Return a copy of ``model`` with its convolution pairs equalized, and the pairs.

    ``model`` is a path or a ``ModelProto`` (never changed). A pair is a ``Conv`` whose output
    goes alone to a second ``Conv`` (or to a ``Relu`` that goes alone to it), both weights (and
    the first's bias) initializers or ``Constant`` nodes read by that node only; a chain of
    pairs is equalized ``iterations`` times over (each pass moves the ranges towards their
    balance). Fold ``BatchNormalization`` first (:func:`fold_batchnorm`): one between the
    convolutions ends a pair. The scaled weights are new initializers; the model's outputs are
    the same up to float rounding. Returns ``(model, [(first, second) output names])``.

    Examples
    --------
    >>> import numpy as np
    >>> from onnx import TensorProto, helper, numpy_helper
    >>> from encanalyze.onnx import equalize_layers
    >>> w1 = np.array([[[[10.0]]], [[[0.1]]]], "f4")  # two channels, ranges 10 and 0.1
    >>> w2 = np.ones((1, 2, 1, 1), "f4")
    >>> graph = helper.make_graph(
    ...     [helper.make_node("Conv", ["x", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
    ...      helper.make_node("Conv", ["r", "w2"], ["y"])], "pair",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    ...     [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    >>> equalized, pairs = equalize_layers(helper.make_model(graph))
    >>> pairs
    [('a', 'y')]
    >>> weights = {t.name: numpy_helper.to_array(t) for t in equalized.graph.initializer}
    >>> [round(float(v), 3) for v in weights[equalized.graph.node[0].input[1]].ravel()]
    [3.162, 0.316]
    """
    from onnx import numpy_helper  # (onnx: needed by the models this takes)

    proto = own_model(model)
    graph = proto.graph
    stored = _main_weights(proto)
    values = {n: a.astype(np.float64) for n, a in stored.items()}
    readers = _readers(graph)
    outputs = {o.name for o in graph.output}
    producer = {o: node for node in graph.node for o in node.output}
    pairs = []
    for second in graph.node:
        first = _first_of(second, producer, readers, outputs)
        if first is None or not _owns_weights(first, second, values, readers):
            continue
        w1, w2 = values[first.input[1]], values[second.input[1]]
        groups = next((a.i for a in second.attribute if a.name == "group"), 1)
        if w1.ndim < 2 or w2.ndim < 2 or w2.shape[0] % groups or w2.shape[1] * groups != len(w1):
            continue
        pairs.append((first, second, groups))
    for _ in range(iterations):
        for first, second, groups in pairs:
            _equalize(values, first, second, groups)
    taken = _names_in_use(graph)
    renamed: dict[str, str] = {}  # a Conv of two pairs has its weight scaled by both
    for first, second, _ in pairs:
        for node, index in ((first, 1), (first, 2), (second, 1)):
            old = node.input[index] if len(node.input) > index else ""
            if not old or old in renamed.values():
                continue
            renamed[old] = _fresh(f"{old}_equalized", taken)
            array = values[old].astype(stored[old].dtype)
            graph.initializer.append(numpy_helper.from_array(array, renamed[old]))
            node.input[index] = renamed[old]
    _remove_unused(graph, set(renamed))
    return proto, [(first.output[0], second.output[0]) for first, second, _ in pairs]


def _first_of(second, producer: dict, readers: dict, outputs: set):
    """Return the ``Conv`` that feeds ``second`` (a ``Conv``) alone, through a ReLU or not."""
    if second.op_type != "Conv":
        return None
    name = second.input[0]
    node = producer.get(name)
    if node is not None and node.op_type in _BETWEEN:
        if readers.get(name) != 1 or name in outputs:
            return None
        name = node.input[0]
        node = producer.get(name)
    if node is None or node.op_type != "Conv" or readers.get(name) != 1 or name in outputs:
        return None
    return node


def _owns_weights(first, second, values: dict, readers: dict) -> bool:
    """Whether the pair's weights (and the first's bias) are constants only it reads."""
    names = [first.input[1], second.input[1]]
    if len(first.input) > 2 and first.input[2]:
        names.append(first.input[2])
    return all(n in values and readers.get(n) == 1 for n in names) and len(set(names)) == len(names)


def _equalize(values: dict, first, second, groups: int) -> None:
    """Scale the first's output channels down and the second's input channels up, in place."""
    w1, w2 = values[first.input[1]], values[second.input[1]]
    r1 = np.abs(w1).reshape(len(w1), -1).max(axis=1)
    per_group = w2.reshape(groups, w2.shape[0] // groups, w2.shape[1], -1)  # (g, out, in, k)
    r2 = np.abs(per_group).max(axis=(1, 3)).reshape(-1)  # each input channel's range
    ok = (r1 > 0) & (r2 > 0)
    s = np.where(ok, np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0)), 1.0)
    values[first.input[1]] = w1 / s.reshape((-1,) + (1,) * (w1.ndim - 1))
    if len(first.input) > 2 and first.input[2]:
        values[first.input[2]] = values[first.input[2]] / s
    scaled = per_group * s.reshape(groups, 1, w2.shape[1], 1)
    values[second.input[1]] = scaled.reshape(w2.shape)


def _main_weights(proto) -> dict:
    """Return the float initializers and ``Constant`` outputs of the main graph by name."""
    graph = proto.graph
    constants = {n.output[0] for n in graph.node if n.op_type == "Constant" and n.output}
    main = {i.name for i in graph.initializer} | constants
    return {name: a for name, a in float_weights(proto).items() if name in main}


def _readers(graph) -> dict[str, int]:
    """Return how many nodes read each name, in every graph (a subgraph may read an outer one)."""
    readers: dict[str, int] = {}
    for g in all_graphs(graph):
        for node in g.node:
            for name in node.input:
                readers[name] = readers.get(name, 0) + 1
    return readers


def _names_in_use(graph) -> set:
    """Return the main graph's initializer, input and node output names (for :func:`_fresh`)."""
    made = {o for node in graph.node for o in node.output}
    return {i.name for i in graph.initializer} | {i.name for i in graph.input} | made


def _fresh(base: str, taken: set) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _remove_unused(graph, names: set) -> None:
    """Remove the initializers and ``Constant`` nodes of ``names`` that no node reads now."""
    read = set(_readers(graph)) | {o.name for o in graph.output}
    gone = names - read
    keep = [i for i in graph.initializer if i.name not in gone]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] in gone]:
        graph.node.remove(node)
    keep_inputs = [i for i in graph.input if i.name not in gone]
    del graph.input[:]
    graph.input.extend(keep_inputs)


def correct_biases(model, result, batches, *, providers=None):
    """Return a copy of ``model`` whose biases absorb the mean error of the quantized weights.

    Empirical bias correction (AIMET's, Nagel et al. 2019): a layer whose weight ``W`` is
    quantized to ``Q`` (``result``'s encoding) computes ``f(x, W) + f(x, Q - W)``; the second
    term's mean over the calibration ``batches``, per output channel, is subtracted from the
    layer's bias, so that the quantized layer's outputs keep the float layer's mean. The mean is
    measured exactly: each layer is copied with ``Q - W`` as its weight (no bias; ``Q`` as the
    QDQ graph computes it, :func:`~._emulate.fake_quant`) beside the original and run on the
    float model's own inputs. Conv (bias added where it has none),
    Gemm (``alpha = beta = 1``, ``C`` added where it has none) and MatMul followed by an Add of
    a constant bias; weights read by one node only. The corrected model quantized with the same
    ``result`` is the QDQ model to deploy; ``model`` is not changed. Returns ``(model, {layer
    output: largest correction magnitude})``.
    """
    from onnx import TensorProto, helper, numpy_helper

    proto = own_model(model)
    graph = proto.graph
    values, readers = _main_weights(proto), _readers(graph)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    layers = []  # (node, channel axis of its output, where its bias goes)
    for node in graph.node:
        w = node.input[1] if node.op_type in ("Conv", "Gemm", "MatMul") else None
        e = result.encodings.get(w) if w else None
        if e is None or e.kind != "param" or w not in values or readers.get(w) != 1:
            continue
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Gemm" and (
            attrs.get("alpha", helper.make_attribute("alpha", 1.0)).f != 1
            or attrs.get("beta", helper.make_attribute("beta", 1.0)).f != 1
            or attrs.get("transA", helper.make_attribute("transA", 0)).i
        ):
            continue
        bias = _bias_of(node, consumers, values, readers)
        if bias is not False:
            layers.append((node, 1 if node.op_type == "Conv" else -1, bias))
    if not layers or not batches:
        return proto, {}
    num_steps = 2**result.bits - 1
    # the layers' copies run in the model itself (no second copy of it), then go again
    sizes = (len(graph.node), len(graph.initializer), len(graph.output))
    errors = []
    for k, (node, _, _) in enumerate(layers):
        w = values[node.input[1]]
        q = fake_quant(w.astype(np.float32), result.encodings[node.input[1]], num_steps)
        name = f"encanalyze_bias_error_{k}"
        error = (q.astype(np.float64) - w.astype(np.float64)).astype(w.dtype)
        graph.initializer.append(numpy_helper.from_array(error, name + "_w"))
        copy = helper.make_node(node.op_type, [node.input[0], name + "_w"], [name])
        copy.attribute.extend(node.attribute)
        graph.node.append(copy)
        errors.append(name)
    graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in errors])
    run = session(proto, providers)
    inputs = model_inputs(proto)
    sums: list = [0.0] * len(layers)
    counts = [0] * len(layers)
    for batch in batches:
        for k, out in enumerate(run_batch(run, errors, feeds(batch, inputs))):
            axis = layers[k][1] % np.ndim(out)
            moved = np.moveaxis(np.asarray(out, np.float64), axis, 0).reshape(out.shape[axis], -1)
            sums[k] = sums[k] + moved.sum(axis=1)
            counts[k] += moved.shape[1]
    del run
    del graph.node[sizes[0] :], graph.initializer[sizes[1] :], graph.output[sizes[2] :]
    taken = _names_in_use(graph)
    corrected, replaced = {}, set()
    for k, (node, _, bias) in enumerate(layers):
        if counts[k] == 0:
            continue
        shift = sums[k] / counts[k]
        dtype = values[node.input[1]].dtype
        holder, index = bias if bias is not None else (node, 2)
        old = holder.input[index] if len(holder.input) > index else ""
        base = values[old].astype(np.float64) if old else np.zeros(len(shift))
        new = (base.reshape(-1) - shift).reshape(base.shape if old else (len(shift),))
        name = _fresh(f"{old or node.output[0]}_bias_corrected", taken)
        graph.initializer.append(numpy_helper.from_array(new.astype(dtype), name))
        if old:
            holder.input[index] = name
            replaced.add(old)
        else:
            holder.input.append(name)
        corrected[node.output[0]] = float(np.abs(shift).max())
    _remove_unused(graph, replaced)
    return proto, corrected


def _bias_of(node, consumers: dict, values: dict, readers: dict):
    """Return where ``node``'s bias is: ``(node, input index)``.

    ``None``: it has none of its own yet (one is added); ``False``: none to correct (a MatMul
    without an Add of a constant after it, a bias another node reads).
    """
    if node.op_type in ("Conv", "Gemm"):
        index = 2
        if len(node.input) > index and node.input[index]:
            b = node.input[index]
            if b not in values or readers.get(b) != 1:
                return False
            return node, index
        return None
    after = consumers.get(node.output[0], [])
    if len(after) != 1 or after[0].op_type != "Add":
        return False
    add = after[0]
    index = 1 if add.input[0] == node.output[0] else 0
    b = add.input[index]
    if b not in values or readers.get(b) != 1 or values[b].ndim != 1:
        return False
    return add, index
