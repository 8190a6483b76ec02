"""``If`` nodes whose branch the calibration data fixes: inlined, so their tensors can be observed.

ONNX Runtime exposes only main-graph tensors as outputs, so the activations inside an ``If``
body cannot be calibrated where they are. A model whose quantizable operators sit in an ``If``
chosen by a setting (a voice-activity model's sample rate) takes the same branch on every
calibration batch: that branch is inlined into the main graph (its nodes and initializers, and
an ``Identity`` from each branch output to the ``If``'s output). The condition stays a graph
output of the calibration model and every batch is checked to take the same branch; the QDQ
model is built from the same inlined graph (it serves that branch).
"""

from __future__ import annotations

__all__ = ["BRANCHES", "branch_ifs", "conditions", "inline_branches"]

BRANCHES = {True: "then_branch", False: "else_branch"}


def branch_ifs(proto, op_types) -> list:
    """Return the main graph's ``If`` nodes whose branches hold ``op_types`` nodes."""
    out = []
    for node in proto.graph.node:
        if node.op_type != "If":
            continue
        bodies = [a.g for a in node.attribute if a.name in BRANCHES.values()]
        if any(op_types is None or n.op_type in op_types for g in bodies for n in g.node):
            out.append(node)
    return out


def conditions(nodes) -> dict[str, str]:
    """Return each ``If``'s condition tensor by its first output's name."""
    return {n.output[0]: n.input[0] for n in nodes}


def _names(graph) -> set[str]:
    names = {i.name for i in graph.initializer} | {i.name for i in graph.input}
    for node in graph.node:
        names.update(node.output)
    return names


def inline_branches(proto, choices: dict[str, str]) -> object:
    """Return a copy of ``proto`` with each ``If`` (by first output) replaced by its branch.

    ``choices`` maps an ``If``'s first output to ``"then_branch"`` or ``"else_branch"``. A
    branch whose tensor names collide with the main graph's is left as it is. Without
    ``choices``, ``proto`` itself (no copy of a large model for nothing).
    """
    from onnx import helper

    if not choices:
        return proto
    model = type(proto)()
    model.CopyFrom(proto)
    graph = model.graph
    taken = _names(graph)
    nodes = []
    for node in graph.node:
        branch = choices.get(node.output[0]) if node.op_type == "If" else None
        body = next((a.g for a in node.attribute if a.name == branch), None)
        if body is None or (_names(body) - {o.name for o in body.output}) & taken:
            nodes.append(node)
            continue
        taken |= _names(body)
        graph.initializer.extend(body.initializer)
        nodes.extend(body.node)
        for inner, outer in zip(body.output, node.output, strict=True):
            if inner.name != outer:  # a branch may name its output as the If's
                nodes.append(helper.make_node("Identity", [inner.name], [outer]))
    del graph.node[:]
    graph.node.extend(nodes)
    return model
