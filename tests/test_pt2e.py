"""encanalyze's observers in PyTorch's PT2E flow (torchao prepare_pt2e / convert_pt2e)."""

import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchao")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import X86InductorQuantizer

import encanalyze as ea  # noqa: E402
from encanalyze.pt2e import EncodingObserver, quantization_config  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 8 * 8, 6)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _batches(n=4):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 8, 8, generator=g) for _ in range(n)]


def _library(method, x, shape=(1,), num_steps=255, symmetric=False, **options):
    analyzer = ea.METHODS[method].analyzer(shape, **options)
    for t in x:
        analyzer.update_stats(t)
    lo, hi = analyzer.compute_encodings(num_steps, symmetric)
    return ea.to_scale_offset(lo, hi, num_steps, symmetric)


def _flow(activations, weights="minmax", **kwargs):
    model = Net().eval()
    batches = _batches()
    exported = torch.export.export(model, (batches[0],)).module()
    quantizer = X86InductorQuantizer().set_global(
        quantization_config(activations, weights, **kwargs)
    )
    prepared = prepare_pt2e(exported, quantizer)
    observers = [m for m in prepared.modules() if isinstance(m, EncodingObserver)]
    for b in batches:
        prepared(b)
    return model, batches, observers, convert_pt2e(prepared)


def _sqnr(y, q):
    return float(10 * torch.log10((y**2).sum() / ((y - q) ** 2).sum()))


@pytest.mark.parametrize("activations", ["sqnr", "percentile", "minmax"])
def test_prepare_calibrate_convert_run(activations):
    model, batches, observers, converted = _flow(activations)
    assert {o.method for o in observers} == {activations, "minmax"} and len(observers) >= 4
    with torch.no_grad():
        for b in batches:
            assert _sqnr(model(b), converted(b)) > 25


def test_input_scale_and_weight_scales_are_the_librarys():
    model, batches, _, converted = _flow("percentile")
    quantize = torch.ops.quantized_decomposed.quantize_per_tensor.default
    first = next(
        n for n in converted.graph.nodes if n.target == quantize and n.args[0].op == "placeholder"
    )
    scale, offset = _library("percentile", batches, percentile=99.99)  # every entry's default
    assert first.args[1] == pytest.approx(float(scale[0]), rel=1e-6)
    assert first.args[2] == -int(offset[0])  # uint8: zero point = 0 - offset
    w = model.conv.weight.detach()
    scale, offset = _library("minmax", [w], (8, 1, 1, 1), symmetric=True)
    dequant = torch.ops.quantized_decomposed.dequantize_per_channel.default
    node = next(n for n in converted.graph.nodes if n.target == dequant)
    got = getattr(converted, node.args[1].target)
    torch.testing.assert_close(got, scale.reshape(-1).float())


def test_observer_qparams_follow_the_grid():
    x = torch.tensor([-3.0, 0.5, 1.0, 2.0])
    sym = EncodingObserver("minmax", torch.int8, torch.per_tensor_symmetric, False, -128, 127)
    sym(x)
    scale, zero = sym.calculate_qparams()
    assert zero.tolist() == [0] and scale.item() == pytest.approx(3.0 / 128)
    asym = EncodingObserver("minmax", torch.uint8, torch.per_tensor_affine, False, 0, 255)
    asym(x)
    scale, zero = asym.calculate_qparams()
    assert scale.item() == pytest.approx(5.0 / 255) and zero.item() == round(3.0 / (5.0 / 255))
    channels = EncodingObserver("minmax", torch.int8, torch.per_channel_symmetric, ch_axis=1)
    channels(torch.tensor([[1.0, -2.0, 4.0], [-1.0, 2.0, 0.5]]))
    scale, zero = channels.calculate_qparams()
    assert scale.shape == (3,) and zero.tolist() == [0, 0, 0]


def test_bad_observer_arguments_fail_at_construction():
    with pytest.raises(ValueError, match="unknown method"):
        EncodingObserver("nope")
    with pytest.raises(TypeError):
        EncodingObserver("percentile", percentil=99.0)
    with pytest.raises(ValueError, match="static"):
        EncodingObserver("minmax", is_dynamic=True)
    with pytest.warns(UserWarning, match="saw no data"):
        assert EncodingObserver("minmax").calculate_qparams()[0].tolist() == [1.0]


def _prepared(activations="sqnr"):
    batches = _batches()
    exported = torch.export.export(Net().eval(), (batches[0],)).module()
    quantizer = X86InductorQuantizer().set_global(quantization_config(activations, "minmax"))
    return prepare_pt2e(exported, quantizer), batches


def _qparams(converted):
    return [
        t
        for name, t in sorted(converted.state_dict().items())
        if "scale" in name or "zero_point" in name
    ]


@pytest.mark.parametrize("activations", ["sqnr", "ema"])
def test_statistics_travel_in_state_dict_deepcopy_and_pickle(activations, tmp_path):
    import copy
    import io
    import pickle

    prepared, batches = _prepared(activations)
    for b in batches:
        prepared(b)
    state = prepared.state_dict()
    assert any(k.endswith("encanalyze_shape") for k in state)
    fresh, _ = _prepared(activations)
    fresh.load_state_dict(state)  # strict: no unexpected or missing keys
    buffer = io.BytesIO()
    torch.save(state, buffer)  # the state dict on disk and back
    buffer.seek(0)
    pickled, _ = _prepared(activations)
    pickled.load_state_dict(torch.load(buffer))
    copied = copy.deepcopy(prepared)
    for observer in (m for m in prepared.modules() if isinstance(m, EncodingObserver)):
        again = pickle.loads(pickle.dumps(observer))  # torch.save of a module pickles it
        torch.testing.assert_close(again.calculate_qparams(), observer.calculate_qparams())
    want = _qparams(convert_pt2e(prepared))
    assert want and all(float(t.float().abs().sum()) > 0 for t in want[:1])
    for other in (fresh, pickled, copied):
        got = _qparams(convert_pt2e(other))
        assert len(got) == len(want)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_scales_below_eps_are_eps_as_torchs_observers_make_them():
    """Scales below ``eps`` become ``eps``, the zero point that scale's (a symmetric grid keeps
    its midpoint): torch's own min-max observers' qparams, per channel and per tensor; the
    percentile method keeps 99.99 unless told otherwise."""
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    x = torch.randn(4, 8) * torch.tensor([1.0, 3.0, 1e-6, 0.0])[:, None]
    ours = EncodingObserver("minmax", qscheme=torch.per_channel_symmetric, dtype=torch.qint8,
                            eps=2**-12)  # fmt: skip
    theirs = PerChannelMinMaxObserver(qscheme=torch.per_channel_symmetric, dtype=torch.qint8,
                                      eps=2**-12)  # fmt: skip
    ours(x), theirs(x)
    (s, z), (ts, tz) = ours.calculate_qparams(), theirs.calculate_qparams()
    assert float(s[2]) == float(s[3]) == 2**-12 and float(s[0]) > 2**-12
    torch.testing.assert_close(s, ts, rtol=1e-2, atol=0)  # the unclamped rows: the methods'
    assert s[2:].tolist() == ts[2:].tolist() and z.tolist() == tz.tolist()
    y = torch.rand(16) * 1e-6 + 5e-4  # a range far narrower than eps, away from zero
    ours = EncodingObserver("minmax", eps=2**-12)
    theirs = MinMaxObserver(eps=2**-12)
    ours(y), theirs(y)
    (s, z), (ts, tz) = ours.calculate_qparams(), theirs.calculate_qparams()
    assert s.tolist() == ts.tolist() == [2**-12] and z.tolist() == tz.tolist()
    assert EncodingObserver("percentile").options == {"percentile": 99.99}
    assert EncodingObserver("percentile", percentile=99.0).options == {"percentile": 99.0}
