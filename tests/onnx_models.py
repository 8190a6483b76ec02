"""Small real ONNX models built with onnx.helper: a CNN and an MLP, weights kept in several ways."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(7)
W1 = (RNG.normal(size=(6, 3, 3, 3)) * 0.3).astype("f4")
B1 = (RNG.normal(size=(6,)) * 0.1).astype("f4")
W2 = (RNG.normal(size=(6 * 8 * 8, 5)) * 0.05).astype("f4")
M1 = (RNG.normal(size=(10, 4)) * 0.4).astype("f4")  # Gemm transB=1: (out, in)
C1 = (RNG.normal(size=(10,)) * 0.1).astype("f4")
M2 = (RNG.normal(size=(10, 3)) * 0.3).astype("f4")  # MatMul: (in, out)


def graph_model(
    nodes, inputs, outputs, initializers=(), *, name="g", opset=17, domains=(), ir_version=8
):
    """The one ONNX model factory of the tests: a graph of ``nodes`` at ``opset`` (``domains``
    at version 1 too), unchecked (the tests build broken models on purpose)."""
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers))
    ops = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, 1) for d in domains)]
    model = helper.make_model(graph, opset_imports=ops)
    model.ir_version = ir_version
    return model


def _model(nodes, inputs, outputs, initializers, name):
    model = graph_model(nodes, inputs, outputs, initializers, name=name)
    onnx.checker.check_model(model)
    return model


def matmul(
    name="w",
    weight=None,
    *,
    opset=17,
    batch="n",
    extra_inputs=(),
    nodes_before=(),
    x_type=TensorProto.FLOAT,
):
    """x (batch, K) -> MatMul(``name``) -> y (batch, N); ``weight`` (K, N): ``M2[:4]``."""
    weight = M2[:4] if weight is None else weight
    w = numpy_helper.from_array(weight.copy(), name)
    nodes = [*nodes_before, helper.make_node("MatMul", ["x", name], ["y"])]
    x = helper.make_tensor_value_info("x", x_type, [batch, weight.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, weight.shape[1]])
    return graph_model(nodes, [x, *extra_inputs], [y], [w], name="mlp", opset=opset, ir_version=7)


def _constant(name, array):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))


def cnn(weights_as="initializers"):
    """Conv(+bias) -> Relu -> Reshape -> MatMul; weights as initializers or Constant nodes."""
    shape = numpy_helper.from_array(np.array([0, -1], "i8"), "shape")
    inits, nodes = [numpy_helper.from_array(B1, "b1"), shape], []
    if weights_as == "constants":
        nodes += [_constant("w1", W1), _constant("w2", W2)]
    else:
        inits += [numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(W2, "w2")]
    nodes += [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Reshape", ["r1", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "w2"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])
    return _model(nodes, [x], [y], inits, "cnn")


def cnn_forward(x):
    """The CNN's activations computed by hand: {name: array}."""
    pad = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(pad, (3, 3), axis=(2, 3))
    c1 = np.einsum("ncijkl,ockl->noij", windows, W1) + B1[None, :, None, None]
    f = np.maximum(c1, 0).reshape(len(x), -1)
    return {"x": x, "c1": c1, "f": f, "y": f @ W2}


def mlp():
    """Gemm(transB) -> Relu -> MatMul whose weight is a Constant's ``value_floats``, reshaped."""
    m2 = helper.make_node("Constant", [], ["m2_flat"], value_floats=M2.ravel().tolist())
    nodes = [
        helper.make_node("Gemm", ["x", "m1", "c1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        m2,
        helper.make_node("Reshape", ["m2_flat", "m2_shape"], ["m2"]),
        helper.make_node("MatMul", ["r", "m2"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(M1, "m1"),
        numpy_helper.from_array(C1, "c1"),
        numpy_helper.from_array(np.array([10, 3], "i8"), "m2_shape"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    return _model(nodes, [x], [y], inits, "mlp")


def with_subgraph():
    """An If whose branches hold a Conv weight as an initializer and a Constant node."""
    then_w = (RNG.normal(size=(2, 3, 1, 1))).astype("f4")
    else_w = (RNG.normal(size=(2, 3, 1, 1))).astype("f4")
    out = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 4, 4])
    then_g = helper.make_graph(
        [helper.make_node("Conv", ["x", "then_w"], ["z"])],
        "then",
        [],
        [out],
        [numpy_helper.from_array(then_w, "then_w")],
    )
    else_g = helper.make_graph(
        [_constant("else_w", else_w), helper.make_node("Conv", ["x", "else_w"], ["z"])],
        "else",
        [],
        [out],
    )
    nodes = [helper.make_node("If", ["cond"], ["z"], then_branch=then_g, else_branch=else_g)]
    inputs = [
        helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]),
    ]
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 4, 4])
    return _model(nodes, inputs, [z], [], "branches"), then_w, else_w


def low_precision():
    """A bfloat16 and a float16 weight, each Cast to float and added to the input."""
    bf = np.array([[1.5, -2.25], [0.125, 3.0]], "f4")
    half = np.array([[0.5, -1.0], [2.0, 4.0]], "f2")
    bf_tensor = helper.make_tensor(
        "bf",
        TensorProto.BFLOAT16,
        [2, 2],
        (bf.view(np.uint32) >> 16).astype(np.uint16).tobytes(),
        raw=True,
    )
    nodes = [
        helper.make_node("Cast", ["bf"], ["bf32"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["half"], ["half32"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "bf32"], ["s"]),
        helper.make_node("Add", ["s", "half32"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    inits = [bf_tensor, numpy_helper.from_array(half, "half")]
    return _model(nodes, [x], [y], inits, "low"), bf, half.astype("f4")


def save_external(model, folder, name="model.onnx", location="weights.bin"):
    """Save ``model`` into ``folder`` with every tensor's data in ``location``."""
    path = folder / name
    onnx.save_model(
        model, str(path), save_as_external_data=True, location=location, size_threshold=0
    )
    return path


def classifier(logits=True):
    """The CNN with the class id (``ArgMax``, int64) as an output; ``logits``: the float one too."""
    model = cnn()
    graph = model.graph
    graph.node.append(helper.make_node("ArgMax", ["y"], ["ids"], axis=1, keepdims=0))
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])
    if not logits:
        graph.output.pop()
    graph.output.append(ids)
    onnx.checker.check_model(model)
    return model
