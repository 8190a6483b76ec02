"""Model-level calibration of ONNX graphs: weights from the graph, activations via ONNX Runtime."""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .._calibration import (
    CalibrationResult,
    Progress,
    activation_methods,
    encode_activations,
    file_under,
    first_of_each,
    progress_bar,
    share_within,
    weight_methods,
    weight_or_reason,
)
from .._encoding import validate_num_steps
from .._io import (
    FLOAT_TYPES,
    IN_MEMORY,
    all_graphs,
    float_weights,
    in_memory,
    load_model,
    model_bytes,
    tensor_bytes,
    without_large_initializers,
)
from .._memory import release_freed_memory
from .._registry import DEFAULTS, METHODS
from .._report import layout_for
from .._report_data import activation_histogram
from .._stats import Histogram
from .._warnings import warn
from ..distributed import Lockstep, all_reduce_analyzers
from ._branches import BRANCHES, branch_ifs, conditions, inline_branches
from ._pieces import Pieces, nbytes

__all__ = [
    "QUANTIZABLE_OPS",
    "ModelRunError",
    "calibrate",
    "chosen_weights",
    "default_providers",
    "feeds",
    "histograms",
    "is_bias",
    "model_inputs",
    "observe_activations",
    "quantizable_weights",
    "run_batch",
    "session",
    "value_infos",
    "weights_of",
]

QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
"""Operator types calibrated by default: their activations and weights."""

INLINE_LIMIT = 1 << 30
"""Models whose tensors hold more bytes than this reach ONNX Runtime through a temporary file
with external data instead of one serialized message (protobuf's limit is 2 GiB)."""


class ModelRunError(ValueError):
    """ONNX Runtime could not load or run the model on the data (one line, its own words)."""


def _ort_call(what: str, call, *args, **kwargs):
    """Return ``call(*args, **kwargs)``; ONNX Runtime's errors become :class:`ModelRunError`."""
    try:
        return call(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - ORT raises its own exception classes
        text = " ".join(str(err).split())  # one line
        text = text.replace("[ONNXRuntimeError] : ", "")
        raise ModelRunError(f"ONNX Runtime could not {what}: {text[:400]}") from err


def _weight_axis(node, index: int, ndim: int) -> int | None:
    """Output-channel axis of a node's weight input, ``None`` for per tensor."""
    if index != 1 or ndim < 2:
        return None
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return ndim - 1
    return None


def is_bias(node, index: int) -> bool:
    """Whether input ``index`` of ``node`` is a Conv, ConvTranspose or Gemm bias."""
    return node.op_type in ("Conv", "ConvTranspose", "Gemm") and index == 2


def quantizable_weights(model, op_types=QUANTIZABLE_OPS) -> dict[str, int | None]:
    """Return the float weights that ``op_types`` nodes consume, with their channel axis.

    ``model`` is a loaded ``ModelProto``; ``op_types=None`` takes every operator. Conv weights
    are per output channel on axis 0, ConvTranspose on axis 1, Gemm on axis 0 with ``transB``
    (else 1), MatMul on the last axis; other weights per tensor (``None``). Biases of Conv,
    ConvTranspose and Gemm are left out (ONNX Runtime quantizes them from the input and weight
    scales). Subgraph nodes count.
    """
    return weights_of(model, op_types, float_weights(model))


def weights_of(model, op_types, weights: dict) -> dict[str, int | None]:
    """:func:`quantizable_weights` over the model's already-read ``weights``."""
    out: dict[str, int | None] = {}
    for graph in all_graphs(model.graph):
        for node in graph.node:
            if op_types is not None and node.op_type not in op_types:
                continue
            for i, name in enumerate(node.input):
                if name in weights and name not in out and not is_bias(node, i):
                    if weights[name].size >= 2:
                        out[name] = _weight_axis(node, i, weights[name].ndim)
    return out


def chosen_weights(model, op_types, tensors=None) -> tuple[dict, dict[str, int | None]]:
    """Return the model's float weights and those of ``op_types`` nodes ``tensors`` selects.

    ``(weights, {name: channel axis})`` (:func:`weights_of`); ``tensors``: a predicate on
    names (``None``: every one).
    """
    values = float_weights(model)
    found = weights_of(model, op_types, values)
    return values, {n: a for n, a in found.items() if tensors is None or tensors(n)}


def _activations(model, op_types, typed: dict, weights: dict) -> list[str]:
    """Float tensors into and out of the main graph's ``op_types`` nodes that are not weights.

    ``typed``: the value infos by name (:func:`value_infos`); ``weights``: the float weights.
    """
    import onnx

    types = {getattr(onnx.TensorProto, t) for t in FLOAT_TYPES}
    elem = {name: vi.type.tensor_type.elem_type for name, vi in typed.items()}
    constants = set(weights) | {i.name for i in model.graph.initializer}
    out: list[str] = []
    for node in model.graph.node:
        if op_types is not None and node.op_type not in op_types:
            continue
        for name in (*node.input, *node.output):
            if name and name not in constants and elem.get(name) in types and name not in out:
                out.append(name)
    return out


def value_infos(model) -> list:
    """Return the main graph's value infos after type inference (big tensor data left out)."""
    import onnx

    skeleton, _ = without_large_initializers(model, 4096, for_session=False)  # types and dims
    g = onnx.shape_inference.infer_shapes(skeleton).graph
    return [*g.input, *g.value_info, *g.output]


def default_providers() -> list[str]:
    """ONNX Runtime's CUDA provider where it is available, then the CPU provider."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def session(
    model,
    providers=None,
    config: dict | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
    outputs: Sequence = (),
):
    """Return an ONNX Runtime session for a loaded ``ModelProto`` (which it does not change).

    The main graph's initializers of :data:`SHARED_BYTES` or more reach ONNX Runtime as NumPy
    arrays that the session shares (``SessionOptions.add_initializer``), not as a serialized
    copy that it would copy again: ``arrays`` by name where one has the initializer's dtype and
    shape (e.g. :func:`~encanalyze._io.float_weights`' values of a float32 model), else an array
    read from the model; they live as long as the session. The rest of the model is saved in a
    temporary folder, also kept with the session (with external data past
    :data:`INLINE_LIMIT`: protobuf's 2 GiB limit). ``config``: session options
    (``{"graph_optimization_level": "ORT_ENABLE_BASIC"}``, a level by name) and config entries
    (``{"session.disable_quant_qdq": "1"}``). ``outputs``: more graph outputs
    (``ValueInfoProto``) for the session to compute.
    Only weights that the graph reads at run time are shared
    (:func:`~encanalyze._io.without_large_initializers`); where ONNX Runtime still refuses (a
    graph optimizer that reads one's data), the session holds copies instead.
    """
    providers = providers or default_providers()
    try:
        return _session(model, providers, config, arrays, outputs, SHARED_BYTES)
    except ModelRunError:  # a graph optimizer that reads a shared weight's data: copies
        return _session(model, providers, config, arrays, outputs, math.inf)


SHARED_BYTES = 1024
"""Initializers of at least this many bytes are shared with sessions (ONNX Runtime takes
user buffers of 128 bytes and more)."""


LEAN_BYTES = 1 << 28
"""Sessions that share this many bytes of weights or more (256 MiB) run lean: without ONNX
Runtime's CPU memory arena, which keeps the largest run's buffers for the session's life, and
without pre-packed weights, a second copy of every MatMul and Conv weight (a 0.6 GB decoder's
calibration: 2.03 -> 1.67 GB peak). Their outputs may then differ from a plain session's in
the last bit (other kernels); smaller models keep ONNX Runtime's defaults."""


def _session(model, providers, config, arrays, outputs, min_bytes: float):
    """:func:`session`, sharing the initializers of ``min_bytes`` or more."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    skeleton, taken = without_large_initializers(model, min_bytes)
    skeleton.graph.output.extend(outputs)
    kept = {init.name for init in taken}
    for init in skeleton.graph.initializer:  # stubs of the caller's that this graph reads
        if in_memory(init) and init.name not in kept:  # otherwise: their data in the file
            init.CopyFrom(numpy_helper.from_array(_array_of(init, arrays), init.name))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its graph-cleaning warnings are not the user's
    if sum(tensor_bytes(init) for init in taken) >= LEAN_BYTES:  # a large model: memory first
        options.enable_cpu_mem_arena = False
        options.add_session_config_entry("session.disable_prepacking", "1")
    for key, value in (config or {}).items():
        if key == "graph_optimization_level":
            options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, value)
        else:
            options.add_session_config_entry(key, value)
    shared = []
    for init in taken:
        value = np.ascontiguousarray(_array_of(init, arrays))
        shared.append(ort.OrtValue.ortvalue_from_numpy(value))
        options.add_initializer(init.name, shared[-1])
    folder = tempfile.TemporaryDirectory(prefix="encanalyze-")
    path = Path(folder.name) / "model.onnx"
    (path.parent / IN_MEMORY).touch()  # the location the shared initializers name
    large = model_bytes(skeleton) > INLINE_LIMIT
    onnx.save_model(
        skeleton, str(path), save_as_external_data=large, location="model.data",
        convert_attribute=True,
    )  # fmt: skip
    del skeleton
    run = _ort_call(
        "load the model", ort.InferenceSession, str(path), sess_options=options,
        providers=providers,
    )  # fmt: skip
    run.encanalyze_keep = (shared, folder)  # the arrays it reads, its folder: as long as it
    return run


def _array_of(init, arrays: Mapping[str, np.ndarray] | None) -> np.ndarray:
    """Return the array of ``arrays`` that holds initializer ``init``, else its own data.

    A stub (:func:`~encanalyze._io.in_memory`) must have its array in ``arrays``.
    """
    import onnx
    from onnx import numpy_helper

    given = (arrays or {}).get(init.name)
    want = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
    if given is not None and given.dtype == want and given.shape == tuple(init.dims):
        return given
    if in_memory(init):
        raise ValueError(f"initializer {init.name!r}: its data is in no array of the session")
    return numpy_helper.to_array(init)


def run_batch(run, names: list[str], feed: dict) -> list:
    """Return ``names`` computed by session ``run`` on ``feed`` (errors: :class:`ModelRunError`)."""
    return _ort_call("run the model on a batch", run.run, names, feed)


def model_inputs(model) -> list:
    """Return the graph inputs a caller feeds (old models list initializers as inputs too).

    Copies: a message read out of a model keeps the whole model (its weights) alive.
    """
    initializers = {i.name for i in model.graph.initializer}
    out = []
    for given in model.graph.input:
        if given.name not in initializers:
            out.append(type(given)())
            out[-1].CopyFrom(given)
    return out


def feeds(batch, inputs) -> dict[str, np.ndarray]:
    """Return one batch as ONNX Runtime's feed dict.

    A batch is a dict by input name, a tuple or list in input order, or one array for a
    single-input model; floating-point values are cast to each input's type.
    """
    import onnx

    names = [i.name for i in inputs]
    if isinstance(batch, Mapping):
        unknown = set(batch) - set(names)
        if unknown:
            raise ValueError(
                f"the model has no input named {sorted(unknown)[0]!r}; its inputs are {names}"
            )
        values = dict(batch)
    elif isinstance(batch, (tuple, list)):
        if len(batch) != len(names):
            raise ValueError(f"a batch of {len(batch)} arrays for the model's {len(names)} inputs")
        values = dict(zip(names, batch, strict=True))
    else:
        if len(names) != 1:
            raise ValueError(f"the model has {len(names)} inputs {names}: pass a dict by name")
        values = {names[0]: batch}
    out = {}
    for info in inputs:
        if info.name not in values:
            raise ValueError(f"the batch has no value for the model's input {info.name!r}")
        array = np.asarray(values[info.name])
        want = onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        if array.dtype != want and np.issubdtype(want, np.floating):
            array = array.astype(want)
        out[info.name] = array
    return out


def calibrate(
    model,
    batches: Iterable | None = None,
    *,
    activations: str | Sequence[str] = DEFAULTS["activations"],
    weights: str | Mapping[str, dict | None] = DEFAULTS["weights"],
    bits: int = DEFAULTS["bits"],
    symmetric: bool = DEFAULTS["symmetric"],
    weight_symmetric: bool | None = DEFAULTS["weight_symmetric"],
    per_channel_weights: bool = DEFAULTS["per_channel_weights"],
    op_types=QUANTIZABLE_OPS,
    providers=None,
    activation_options: dict | None = None,
    weight_options: dict | None = None,
    progress: bool | None | Progress = None,
    tensors: Callable[[str], bool] | None = None,
    activation_axis: int | None = None,
    statistics: dict | None = None,
    group=None,
    sample_axes: Mapping[str, int | None] | None = None,
) -> CalibrationResult:
    """Calibrate an ONNX model's weights and, with ``batches``, its activations.

    ``group``: a ``torch.distributed`` process group (needs torch): each rank calibrates its
    own shard of the batches (rank ``r`` of ``W``: batches ``r``, ``r + W``, ...), the
    histograms in lockstep with the other ranks (:class:`encanalyze.distributed.Lockstep`)
    and the other statistics all-reduced at the end
    (:func:`encanalyze.distributed.all_reduce_analyzers`), so every rank returns one process's
    encodings of all the ranks' data in that order, bit for bit (``num_batches``: their sum);
    every rank of the group must call it with the same model and options.

    ``model`` is a path (external data is read from the model's folder) or a ``ModelProto``.
    Weights (:func:`quantizable_weights`: initializers, ``Constant`` nodes and subgraph
    weights of the ``op_types`` nodes) are calibrated with ``weights``, per output channel
    unless ``per_channel_weights`` is False; ``weights`` may also be a dict of several methods
    with their options (``{"minmax": None, "sqnr": {"num_bins": 512}}``, ``weight_options``
    then unset): each weight keeps the method with the best SQNR on it. Activations (the
    float inputs and outputs of the main graph's ``op_types`` nodes; ``op_types=None``: of
    every node) are exposed as extra graph outputs, and each batch is run with ONNX Runtime
    (``providers``, default CUDA where present, then CPU) and streamed into one
    ``activations`` analyzer per tensor, so memory does not grow with the number of batches.
    A batch is a dict by input name, a tuple or list in input order, or one array for a
    single-input model. ``activation_axis``: one activation encoding per index of that axis
    (tensors with fewer dimensions stay per tensor; such encodings export to the encodings
    files, not to a QDQ model, whose activations ONNX Runtime quantizes per tensor). Names are
    ONNX tensor names; ``tensors``, a predicate on them, keeps
    only the tensors it accepts. ``activations="percentile"`` takes the 99.99th percentile
    unless ``activation_options`` says otherwise (as the command does). A tensor without an
    encoding (an activation that never held a finite value, or no batch reached) stays in
    floating point and is listed with the reason in the result's ``unquantized``. An ``If``
    of the main graph whose branch every batch takes (a setting such as a sample rate) is
    inlined so that its activations are observed (``result.branches``); other ``If``/``Loop``/
    ``Scan`` bodies cannot be observed through ONNX Runtime: their weights are calibrated, their
    activations are not (a warning says how many nodes). ``activations`` may name several
    methods: every activation is then encoded by each (the histogram methods share one
    histogram) and the first is kept until :func:`encanalyze.onnx.choose_encodings` picks by
    the model's output (``activation_options`` then maps each method to its options); with
    several weight methods, each weight's encodings by all of them are kept likewise. ONNX
    Runtime's errors (a model it cannot load, a batch it cannot run) raise
    :class:`ModelRunError`. ``statistics``, a dict, receives what the analysis report shows:
    ``"histograms"`` (each activation's histogram, where a histogram method observed it) and
    ``"ranges"`` (each activation's finite ``[min, max]`` per batch). ``sample_axes``: each
    input's sample axis (``None``: a constant fed whole), e.g. ``{"input_ids": 0,
    "attention_mask": 0}``; given, a batch whose activations would take more than 128 MiB
    (:data:`~encanalyze.onnx._pieces.RUN_BYTES`) runs in pieces of samples, each observed as a
    batch of its own, so that memory does not grow with the batch either (the command gives
    its ``--sample-axis`` layout).

    ``symmetric`` is the activations' grid and ``weight_symmetric`` the weights' (``None``:
    the same); the default is the deployment default of ONNX Runtime, TensorRT and QNN,
    asymmetric activations with symmetric weights, which every entry point shares
    (:data:`encanalyze._registry.DEFAULTS`).

    Examples
    --------
    >>> import numpy as np
    >>> from onnx import TensorProto, helper, numpy_helper
    >>> from encanalyze.onnx import calibrate
    >>> w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3)).astype("f4"), "w")
    >>> graph = helper.make_graph(
    ...     [helper.make_node("MatMul", ["x", "w"], ["y"])], "mlp",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [w])
    >>> model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    >>> batches = [np.ones((2, 4), "f4"), np.full((2, 4), -1, "f4")]
    >>> result = calibrate(model, batches, activations="minmax")
    >>> sorted(result.encodings), result["w"].axis
    (['w', 'x', 'y'], 1)
    >>> float(result["x"].min[0]), float(result["x"].max[0])
    (-1.0, 1.0)
    """
    act_options = activation_methods(activations, activation_options)
    act_methods = list(act_options)
    methods = weight_methods(weights, weight_options)
    num_steps = validate_num_steps(2**bits - 1, symmetric)
    wsym = symmetric if weight_symmetric is None else bool(weight_symmetric)
    validate_num_steps(num_steps, wsym)
    proto, _ = load_model(model)
    values = float_weights(proto)
    encodings, unquantized, candidates = {}, {}, {}
    chosen = {
        n: a
        for n, a in weights_of(proto, op_types, values).items()
        if tensors is None or tensors(n)
    }
    bar = progress if isinstance(progress, Progress) else Progress(len(chosen), progress)
    if bar is not progress and batches is not None and hasattr(batches, "__len__"):
        bar.grow(len(batches))
    try:
        for name, axis in chosen.items():
            bar.stage(f"weight {name}")
            axis = axis if per_channel_weights else None
            every: dict = {}
            found = weight_or_reason(name, values[name], axis, methods, num_steps, wsym, every)
            file_under(name, found, encodings, unquantized)
            if len(methods) > 1 and every:
                candidates[name] = every
            bar.advance()
        count, branches = 0, {}
        if batches is not None:
            ranges = None if statistics is None else statistics.setdefault("ranges", {})
            analyzers, count, branches = observe_activations(
                proto,
                values,
                batches,
                act_options,
                op_types,
                providers,
                bar,
                tensors,
                activation_axis,
                ranges,
                sample_axes,
                group,
            )
            if statistics is not None:
                statistics["histograms"] = histograms(analyzers)
            items = [
                (name, a, axis, m)
                for name, (made, axis) in analyzers.items()
                for m, a in made.items()
            ]
            found: dict = {}
            for (name, _, _, m), e in zip(
                items, encode_activations(items, num_steps, symmetric), strict=True
            ):
                found.setdefault(name, {})[m] = e
            for name, by_method in found.items():
                file_under(name, by_method[act_methods[0]], encodings, unquantized)
                if len(act_methods) > 1:
                    candidates[name] = {
                        m: e for m, e in by_method.items() if not isinstance(e, str)
                    }
    finally:
        if bar is not progress:
            bar.close()
    return CalibrationResult(
        encodings, bits, symmetric, count, unquantized, branches, weight_symmetric, candidates
    )


def _all_reduce_observed(analyzers: dict, methods: dict, group, count: int) -> int:
    """All-reduce :func:`observe_activations`' analyzers over ``group``; return the batches.

    The histograms, updated in lockstep, are every rank's already.
    """
    made = {name: m for name, (m, _) in analyzers.items()}
    axes = {name: axis for name, (_, axis) in analyzers.items()}
    seen = [n for n, m in made.items() if any(a.get_stats() is not None for a in m.values())]
    count, _ = all_reduce_analyzers(made, axes, methods, seen, group, count, replayed=True)
    analyzers.update({name: (made[name], axes[name]) for name in made})
    return count


def _first_branches(proto, ifs, batch, inputs, providers) -> dict[str, str]:
    """Return the branch each ``If`` of ``ifs`` takes on ``batch`` (one run of the model)."""
    from onnx import TensorProto, helper

    conds = conditions(ifs)
    names = list(dict.fromkeys(conds.values()))
    outputs = {o.name for o in proto.graph.output}
    extra = [  # more outputs: no copy of the model
        helper.make_tensor_value_info(c, TensorProto.BOOL, None) for c in names if c not in outputs
    ]
    run = session(proto, providers, outputs=extra)
    values = dict(zip(names, run_batch(run, names, feeds(batch, inputs)), strict=True))
    return {out: BRANCHES[bool(np.asarray(values[c]).reshape(-1)[0])] for out, c in conds.items()}


AHEAD_BYTES = 1 << 28
"""The model runs the next batch while this one's activations are observed where one batch's
activations take at most this many bytes (two batches' are then held at once)."""


def _run_ahead(
    run, wanted: list[str], fed: Iterator[tuple[dict, bool]], learn=None
) -> Iterator[tuple[dict, bool, dict]]:
    """Yield each ``(feed, last)`` of ``fed`` with the ``wanted`` outputs ``run`` computes.

    After a first feed whose outputs are small enough (:data:`AHEAD_BYTES`), each feed is
    run on a worker thread while the caller observes the one before (ONNX Runtime releases the
    GIL; so do the compiled counts): the model's time and the statistics' overlap. ``learn(feed,
    nbytes)`` hears each run's bytes of outputs.
    """
    if run is None:  # run([]) would compute every output
        for feed, last in fed:
            yield feed, last, {}
        return

    def outputs(feed: dict) -> dict:
        produced = dict(zip(wanted, run_batch(run, wanted, feed), strict=True))
        if learn is not None:
            learn(feed, nbytes(produced.values()))
        return produced

    first = next(fed, None)
    if first is None:
        return
    produced = outputs(first[0])
    if nbytes(produced.values()) > AHEAD_BYTES:
        yield *first, produced
        for feed, last in fed:
            yield feed, last, outputs(feed)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="encanalyze-run") as pool:
        following = next(fed, None)
        pending = None if following is None else (following, pool.submit(outputs, following[0]))
        yield *first, produced
        while pending is not None:
            item, future = pending
            produced = future.result()
            following = next(fed, None)
            pending = None if following is None else (following, pool.submit(outputs, following[0]))
            yield *item, produced


def histograms(analyzers: dict) -> dict:
    """Each activation's report histogram from the first of its analyzers that has one."""
    out = {}
    for name, (made, _) in analyzers.items():
        for a in made.values():
            stats = a.get_stats()
            if isinstance(stats, Histogram) and math.prod(stats.shape) == 1:
                out[name] = activation_histogram(stats)
                break
    return out


def _finite_range(value) -> list[float] | None:
    """Return ``[min, max]`` of ``value``'s finite values (``None``: none, or not float)."""
    v = np.asarray(value)
    if v.dtype.kind != "f" or v.size == 0:
        return None
    finite = v[np.isfinite(v)]
    return [float(finite.min()), float(finite.max())] if finite.size else None


def observe_activations(
    proto,
    weights,
    batches,
    methods,
    op_types,
    providers,
    progress,
    tensors,
    axis=None,
    ranges: dict | None = None,
    sample_axes: Mapping[str, int | None] | None = None,
    group=None,
):
    """Run the batches with the activations as extra outputs; one analyzer per tensor.

    Tensors inside ``If``/``Loop``/``Scan`` bodies cannot be graph outputs: an ``If`` of the
    main graph whose branches hold ``op_types`` nodes is inlined with the branch the first
    batch takes (every later batch must take it too), other bodies are not observed. A model
    without any activation of ``op_types`` in its main graph is not run. Returns the
    analyzers, the number of batches and the inlined branches. ``ranges``, a dict, gets each
    tensor's finite ``[min, max]`` per batch. ``sample_axes``: each input's sample axis
    (``None``: a constant); given, a batch whose activations would take more than
    :data:`~encanalyze.onnx._pieces.RUN_BYTES` runs in pieces of samples, each observed as a
    batch of its own (:class:`~encanalyze.onnx._pieces.Pieces`). ``group``: a
    ``torch.distributed`` process group whose ranks each run their shard of the batches: the
    histograms are updated in lockstep (:class:`~encanalyze.distributed.Lockstep`: batch
    ``t * W + r`` on rank ``r``, bit-identical to one process on the batches in that order),
    the other statistics all-reduced at the end; the count is then every rank's.
    """
    from onnx import TensorProto, helper

    inputs = model_inputs(proto)
    batches = iter(batches) if not hasattr(batches, "__len__") else batches
    ifs = branch_ifs(proto, op_types)
    branches = {}
    if ifs:
        first = next(iter(batches), None) if hasattr(batches, "__len__") else next(batches, None)
        if first is not None:
            branches = _first_branches(proto, ifs, first, inputs, providers)
            proto = inline_branches(proto, branches)
            if not hasattr(batches, "__len__"):
                batches = itertools.chain([first], batches)
    conds = {c: b for out, b in branches.items() for c in [conditions(ifs)[out]]}
    typed = {vi.name: vi for vi in value_infos(proto)}
    names = [
        n for n in _activations(proto, op_types, typed, weights) if tensors is None or tensors(n)
    ]
    nested = sum(
        1
        for g in all_graphs(proto.graph)
        if g is not proto.graph
        for n in g.node
        if op_types is None or n.op_type in op_types
    )
    if nested:
        warn(
            f"{nested} quantizable nodes lie inside If/Loop/Scan bodies: their weights are "
            "calibrated, their activations are not (ONNX Runtime cannot expose them)",
            UserWarning,
        )
    fed = {i.name for i in inputs}
    wanted = [n for n in names if n not in fed]  # graph inputs come from the feed itself
    outputs = {o.name for o in proto.graph.output}
    checks = [c for c in conds if c not in wanted and c not in fed]
    extra = [typed[n] for n in wanted if n not in outputs]
    extra += [
        helper.make_tensor_value_info(c, TensorProto.BOOL, None) for c in checks if c not in outputs
    ]
    wanted = wanted + checks
    # name -> ({method: analyzer}, channel axis, the analyzers that observe), made at the
    # tensor's first batch: methods that gather the same statistics share one analyzer's
    analyzers: dict = {}

    def make(name: str, shape: tuple, on: int | None) -> list:
        made = {m: METHODS[m].analyzer(shape, **o) for m, o in methods.items()}
        analyzers[name] = (made, on, first_of_each(made))
        return analyzers[name][2]

    def observers_of(name: str, value) -> list:
        if name not in analyzers:
            ndim = np.ndim(value)
            on = axis % ndim if axis is not None and -ndim <= axis < ndim else None
            shape = layout_for(tuple(np.shape(value)), on).shape if on is not None else (1,)
            return make(name, shape, on)
        return analyzers[name][2]

    count, seen = 0, {}  # seen: each tensor's finite range over this batch's pieces
    lockstep = None if group is None else Lockstep.over(group, make)
    run = session(proto, providers, arrays=weights, outputs=extra) if wanted else None
    fed = (feeds(batch, inputs) for batch in progress_bar(batches, progress))
    pieces = None
    if sample_axes is not None and run is not None:
        pieces = Pieces(sample_axes, lambda feed, run=run: nbytes(run_batch(run, wanted, feed)))
    cut = pieces.cut(fed) if pieces is not None else ((feed, True) for feed in fed)
    for feed, last, produced in _run_ahead(run, wanted, cut, pieces.learn if pieces else None):
        for cond, branch in conds.items():
            value = produced[cond] if cond in produced else feed[cond]
            if BRANCHES[bool(np.asarray(value).reshape(-1)[0])] != branch:
                raise ModelRunError(
                    f"batch {count + 1} takes another branch of the If on {cond!r} than the "
                    f"first batch ({branch}): calibrate each branch's data separately"
                )
        for name in names:
            value = produced[name] if name in produced else feed[name]
            for analyzer in observers_of(name, value):
                if lockstep is not None and lockstep.takes(analyzer):
                    lockstep.add(name, analyzers[name][1], analyzer, value)
                else:
                    analyzer.observe(value)
            if ranges is not None and (r := _finite_range(value)) is not None:
                old = seen.get(name)
                seen[name] = r if old is None else [min(old[0], r[0]), max(old[1], r[1])]
        if lockstep is not None:
            lockstep.step()
        if last:
            for name, r in seen.items():
                ranges.setdefault(name, []).append(r)
            seen = {}
            count += 1
    if lockstep is not None:
        lockstep.finish()
    del run, pieces, cut  # the pieces hold the session too
    feed = produced = value = None  # the last batch's
    release_freed_memory()  # the session's copies and the batches' activations
    out = {}
    for name in names:
        if name not in analyzers:  # no batch reached it: analyzers without statistics
            out[name] = ({m: METHODS[m].analyzer((1,), **o) for m, o in methods.items()}, None)
            continue
        made, on, _ = analyzers[name]
        out[name] = (share_within(made), on)
    if group is not None:
        count = _all_reduce_observed(out, methods, group, count)
    return out, count, branches
