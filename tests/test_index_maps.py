import numpy as np
import pytest

from keras_lemon.index_maps import PATTERNS
from keras_lemon.index_maps import DimExpansion
from keras_lemon.index_maps import cancel
from keras_lemon.index_maps import fan_in_split
from keras_lemon.index_maps import fan_out

SIZES = [(3, 3), (3, 6), (3, 7), (4, 11), (5, 6)]


def test_circular_map_and_counts():
    dim = DimExpansion(3, 8, "circular")
    np.testing.assert_array_equal(dim.index_map(), [0, 1, 2, 0, 1, 2, 0, 1])
    np.testing.assert_array_equal(dim.copy_counts(), [3, 3, 2])
    assert (dim.copies, dim.extras) == (2, 2)


@pytest.mark.parametrize("pattern,extras", [("circular", [1.0, 2.0]), ("average", [2.0, 2.0]), ("zero", [0.0, 0.0])])
def test_vector_expansions(pattern, extras):
    x = np.array([1.0, 2.0, 3.0])
    out = DimExpansion(3, 8, pattern).expand(x)
    np.testing.assert_array_equal(out[:6], np.tile(x, 2))
    np.testing.assert_allclose(out[6:], extras)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("d,D", SIZES)
def test_sum_over_copies_is_the_transpose(pattern, d, D):
    rng = np.random.default_rng(0)
    dim = DimExpansion(d, D, pattern)
    x, y = rng.normal(size=(d, 4)), rng.normal(size=(D, 4))
    assert np.isclose((dim.expand(x, 0) * y).sum(), (x * dim.sum_over_copies(y, 0)).sum())
    w = rng.normal(size=(d, 2))
    np.testing.assert_allclose(dim.sum_over_copies(dim.distribute_to_copies(w, 0), 0), w, rtol=1e-6)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("d,D", SIZES)
def test_fan_in_split_is_lossless_and_breaks_symmetry(pattern, d, D):
    rng = np.random.default_rng(1)
    dim = DimExpansion(d, D, pattern)
    w, x = rng.normal(size=(d, 2)), rng.normal(size=(d, 5))
    noise = rng.normal(size=(D, 2))
    split = fan_in_split(w, noise, {0: dim})
    np.testing.assert_allclose(split.T @ dim.expand(x, 0), w.T @ x, atol=1e-10)
    if D >= 2 * d:  # unit 0 has two copies: their weights differ
        assert not np.allclose(split[0], split[d])
    equal = fan_in_split(w, np.zeros((D, 2)), {0: dim})  # Net2Net
    copies = dim.copy_counts()[dim.index_map()][:, None]
    mask = dim.copy_mask()
    np.testing.assert_allclose(equal[mask], (w[dim.index_map()] / copies)[mask])
    np.testing.assert_array_equal(equal[~mask], 0)


def test_fan_in_over_two_axes_with_fan_out():
    rng = np.random.default_rng(2)
    heads, head = DimExpansion(2, 3, "circular"), DimExpansion(4, 6, "circular")
    out = DimExpansion(5, 7, "average")
    w = rng.normal(size=(2, 4, 5))
    target = fan_in_split(fan_out(w, {2: out}), rng.normal(size=(3, 6, 7)), {0: heads, 1: head})
    x = rng.normal(size=(2, 4))
    x_big = head.expand(heads.expand(x, 0), 1)
    np.testing.assert_allclose(
        np.einsum("ab,abo->o", x_big, target), out.expand(np.einsum("ab,abo->o", x, w)), atol=1e-10
    )


@pytest.mark.parametrize("d,D", [(3, 6), (3, 7), (4, 4)])
def test_cancel_outputs_zero(d, D):
    rng = np.random.default_rng(3)
    dim = DimExpansion(d, D, "circular")
    weights = cancel(rng.normal(size=(D, 3)), {0: dim})
    np.testing.assert_allclose(weights.T @ dim.expand(rng.normal(size=(d, 4)), 0), 0, atol=1e-12)
    if D == d:
        np.testing.assert_array_equal(weights, 0)
    else:
        assert np.abs(weights).max() > 0.1


def test_bad_dimensions():
    with pytest.raises(ValueError, match="only grow"):
        DimExpansion(4, 3)
    with pytest.raises(ValueError, match="pattern"):
        DimExpansion(2, 4, "mirror")
    with pytest.raises(ValueError, match="expected 3"):
        DimExpansion(3, 6).expand(np.ones(4))


def _gather_reference(dim, x, axis):
    """`M` and `P` by the index map (the definitions the block copies must equal)."""
    x = np.moveaxis(np.asarray(x), axis, 0)
    expanded = np.take(x, dim.index_map(), axis=0)
    shares = np.take(x / dim.copy_counts().reshape((-1,) + (1,) * (x.ndim - 1)).astype(
        np.float32), dim.index_map(), axis=0)
    if dim.pattern != "circular" and dim.extras:
        extra = slice(dim.copies * dim.source, None)
        expanded[extra] = x.mean(axis=0) if dim.pattern == "average" else 0
        shares[extra] = 0
    return np.moveaxis(expanded, 0, axis), np.moveaxis(shares, 0, axis)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("d,D", [(3, 3), (3, 6), (3, 8), (4, 13)])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_block_copies_equal_the_index_map_gather(pattern, d, D, axis):
    dim = DimExpansion(d, D, pattern)
    shape = [2, 5, 4]
    shape[axis] = d
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    expanded, shares = _gather_reference(dim, x, axis)
    np.testing.assert_array_equal(dim.expand(x, axis), expanded)
    np.testing.assert_array_equal(dim.distribute_to_copies(x, axis), shares)
    target_shape = list(shape)
    target_shape[axis] = D
    out = np.random.default_rng(1).normal(size=target_shape).astype(np.float32)
    # In place and bit for bit what out + P x gives.
    np.testing.assert_array_equal(dim.add_distributed(out.copy(), x, axis),
                                  out + dim.distribute_to_copies(x, axis))


def test_fan_in_split_may_write_into_its_noise():
    dim = DimExpansion(3, 8)
    w = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    noise = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    kept = noise.copy()
    result = fan_in_split(w, noise, {0: dim})
    np.testing.assert_array_equal(noise, kept)  # untouched by default
    overwritten = fan_in_split(w, noise, {0: dim}, overwrite_noise=True)
    assert overwritten is noise
    np.testing.assert_array_equal(overwritten, result)
    np.testing.assert_allclose(dim.sum_over_copies(result, 0), w, atol=1e-6)
