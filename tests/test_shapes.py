import numpy as np
import pytest

from encanalyze._shapes import normalize_block_size, normalize_shape, plan, to_rows
from tests import reference


def test_normalize_shape():
    assert normalize_shape(4) == (4,)
    assert normalize_shape([3, 1]) == (3, 1)
    assert normalize_shape(()) == ()
    with pytest.raises(ValueError, match="positive"):
        normalize_shape((0, 1))
    with pytest.raises(TypeError, match="integer"):
        normalize_shape((1.5,))


@pytest.mark.parametrize(
    "input_shape, shape, view, axes",
    [
        ((100,), (1,), (100,), (0,)),
        ((100,), (), (100,), (0,)),
        ((8, 3, 3, 3), (8, 1, 1, 1), (8, 27), (1,)),
        ((8, 3, 3, 3), (1,), (216,), (0,)),
        ((16, 5), (1, 5), (16, 5), (0,)),
        ((16, 5), (5,), (16, 5), (0,)),
        ((2, 5, 3), (5, 1), (2, 5, 3), (0, 2)),
        ((4, 6), (4, 6), (24, 1), (1,)),
        ((1, 6), (1, 6), (6, 1), (1,)),
    ],
)
def test_plan(input_shape, shape, view, axes):
    p = plan(input_shape, shape)
    assert p.view_shape == view
    assert p.reduce_axes == axes
    assert p.num_encodings == int(np.prod(shape))
    assert p.num_encodings * p.values_per_encoding == int(np.prod(input_shape))


@pytest.mark.parametrize(
    "input_shape, shape, block, view, axes",
    [
        ((8, 64), (8, 4), (1, 16), (32, 16), (1,)),
        ((8, 64), (8, 4), (16,), (32, 16), (1,)),
        ((8, 64), (8, 4), (-1, 16), (32, 16), (1,)),
        ((8, 64), (2, 4), (4, 16), (2, 4, 4, 16), (1, 3)),
        ((8, 64), (1, 4), (-1, -1), (8, 4, 16), (0, 2)),
        ((3, 8, 64), (8, 4), (1, 16), (3, 32, 16), (0, 2)),
    ],
)
def test_plan_blocks(input_shape, shape, block, view, axes):
    p = plan(input_shape, shape, normalize_block_size(block, shape))
    assert p.view_shape == view
    assert p.reduce_axes == axes


def test_normalize_block_size():
    assert normalize_block_size(None, (4,)) is None
    assert normalize_block_size(16, (8, 4)) == (1, 16)
    assert normalize_block_size(16, (1, 4)) == (-1, 16)
    with pytest.raises(ValueError, match="more dimensions"):
        normalize_block_size((1, 2, 3), (4, 4))
    with pytest.raises(ValueError, match="positive or -1"):
        normalize_block_size((0,), (4,))


@pytest.mark.parametrize(
    "input_shape, shape, block",
    [
        ((10,), (3,), None),
        ((10,), (1, 1), None),
        ((4, 6), (6, 1), None),
        ((8, 64), (8, 5), (1, -1)),
        ((8, 64), (8, 4), (1, 8)),
    ],
)
def test_plan_errors_name_both_shapes(input_shape, shape, block):
    with pytest.raises(ValueError) as info:
        plan(input_shape, shape, normalize_block_size(block, shape))
    assert str(input_shape) in str(info.value) and str(shape) in str(info.value)


@pytest.mark.parametrize(
    "input_shape, shape, block",
    [
        ((6, 4, 5), (4, 1), None),
        ((6, 4, 5), (1, 5), None),
        ((8, 12), (2, 3), (4, 4)),
        ((8, 12), (8, 3), (1, 4)),
        ((2, 8, 12), (4, 1), (2, -1)),
    ],
)
def test_rows_match_reference_reduction(rng, input_shape, shape, block):
    import array_api_compat.numpy as xp

    x = rng.standard_normal(input_shape)
    p = plan(input_shape, shape, normalize_block_size(block, shape))
    rows = to_rows(xp, x, p)
    assert rows.shape == (p.num_encodings, p.values_per_encoding)
    want = reference.reduce_to_shape(x, shape, block, np.max)
    np.testing.assert_array_equal(rows.max(axis=1).reshape(shape), want)
    want_sum = reference.reduce_to_shape(x, shape, block, np.sum)
    np.testing.assert_allclose(rows.sum(axis=1).reshape(shape), want_sum, rtol=1e-12)
