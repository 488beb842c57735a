"""The NumPy decompositions: Eckart-Young optimality, monotone error, exactness, bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tflowrank.decompositions import (
    spatial_factors,
    spatial_unfolding,
    svd_factors,
    truncation_error,
)

shapes = st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 6), st.integers(1, 6))


def _kernel(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _spatial_product(f):
    return np.einsum("icr,jro->ijco", f.vertical[:, 0], f.horizontal[0])


def _svd_product(f):
    if f.first.ndim == 2:
        return f.first @ f.second
    return np.einsum("ijcr,ro->ijco", f.first, f.second[0, 0])


@settings(max_examples=60, deadline=None)
@given(shape=shapes, data=st.data())
def test_spatial_error_is_the_discarded_singular_values(shape, data):
    kernel = _kernel(shape)
    s = np.linalg.svd(spatial_unfolding(kernel).astype(np.float64), compute_uv=False)
    full = len(s)
    rank = data.draw(st.integers(1, full))
    f = spatial_factors(kernel, rank)
    assert f.vertical.shape == (shape[0], 1, shape[2], rank)
    assert f.horizontal.shape == (1, shape[1], rank, shape[3])
    direct = np.linalg.norm(kernel - _spatial_product(f)) / np.linalg.norm(kernel)
    discarded = np.sqrt(np.sum(s[rank:] ** 2) / np.sum(s**2))
    np.testing.assert_allclose(f.relative_error, discarded, atol=1e-6)
    np.testing.assert_allclose(direct, discarded, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(shape=st.one_of(shapes, st.tuples(st.integers(1, 20), st.integers(1, 20))), data=st.data())
def test_svd_error_is_the_discarded_singular_values(shape, data):
    kernel = _kernel(shape)
    s = np.linalg.svd(kernel.reshape(-1, shape[-1]).astype(np.float64), compute_uv=False)
    rank = data.draw(st.integers(1, len(s)))
    f = svd_factors(kernel, rank)
    direct = np.linalg.norm(kernel - _svd_product(f)) / np.linalg.norm(kernel)
    discarded = np.sqrt(np.sum(s[rank:] ** 2) / np.sum(s**2))
    np.testing.assert_allclose(f.relative_error, discarded, atol=1e-6)
    np.testing.assert_allclose(direct, discarded, atol=1e-5)


@pytest.mark.parametrize("factorize", [spatial_factors, svd_factors])
def test_error_is_non_increasing_in_rank_and_zero_at_full_rank(factorize):
    kernel = _kernel((3, 3, 8, 12), seed=1)
    full = 24 if factorize is spatial_factors else 12
    errors = [factorize(kernel, r).relative_error for r in range(1, full + 1)]
    assert all(a >= b - 1e-12 for a, b in zip(errors, errors[1:]))
    assert errors[-1] == pytest.approx(0.0, abs=1e-6)
    product = _spatial_product if factorize is spatial_factors else _svd_product
    np.testing.assert_allclose(product(factorize(kernel, full)), kernel, atol=1e-5)


def test_exactly_low_rank_kernel_is_recovered_exactly():
    rng = np.random.default_rng(2)
    u, v = rng.normal(size=(3 * 4, 2)), rng.normal(size=(2, 3 * 5))
    kernel = (u @ v).reshape(3, 4, 3, 5).transpose(0, 2, 1, 3).astype(np.float32)
    f = spatial_factors(kernel, 2)
    assert f.relative_error < 1e-6
    np.testing.assert_allclose(_spatial_product(f), kernel, atol=1e-5)


def test_factors_are_deterministic_and_keep_dtype():
    kernel = _kernel((3, 3, 4, 4))
    a, b = spatial_factors(kernel, 3), spatial_factors(kernel, 3)
    np.testing.assert_array_equal(a.vertical, b.vertical)
    assert a.vertical.dtype == np.float32 and svd_factors(kernel, 2).first.dtype == np.float32


def test_truncation_error_of_zero_kernel_is_zero():
    assert truncation_error(np.zeros(3), 1) == 0.0


@pytest.mark.parametrize("rank", [0, -1, 13, 2.5, True, "3"])
def test_bad_rank_is_rejected_with_the_value(rank):
    with pytest.raises(ValueError, match=r"`rank` must be an integer between 1 and the full rank 12 .*Received: rank="):
        spatial_factors(_kernel((3, 3, 4, 4)), rank)


def test_bad_kernels_are_rejected():
    with pytest.raises(ValueError, match=r"kernel.shape=\(3, 3, 4\)"):
        spatial_factors(_kernel((3, 3, 4)), 1)
    with pytest.raises(ValueError, match=r"kernel.shape=\(3,\)"):
        svd_factors(_kernel((3,)), 1)
    with pytest.raises(TypeError, match="kernel.dtype=int64"):
        svd_factors(np.ones((3, 3), dtype=np.int64), 1)
    bad = _kernel((2, 2))
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        svd_factors(bad, 1)


@pytest.mark.parametrize("rows, cols", [(600, 520), (520, 700)])
def test_large_unfoldings_from_the_gram_matrix_match_the_svd(rows, cols):
    """Both sides >= 512: the factors come from the Gram matrix's eigenvectors, still Eckart-Young."""
    rng = np.random.default_rng(3)
    # a decaying spectrum with an exact zero tail: rank 400 of min(rows, cols) = 520
    matrix = (rng.normal(size=(rows, 400)) * np.geomspace(1, 1e-3, 400)) @ rng.normal(size=(400, cols))
    singular = np.linalg.svd(matrix, compute_uv=False)
    for rank in (1, 57, 400, 520):
        f = svd_factors(matrix, rank)
        product = f.first.astype(np.float64) @ f.second
        direct = np.linalg.norm(matrix - product) / np.linalg.norm(matrix)
        discarded = np.sqrt(np.sum(singular[rank:] ** 2) / np.sum(singular**2))
        np.testing.assert_allclose(f.singular_values[:400], singular[:400], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose([direct, f.relative_error], discarded, atol=1e-6)
        # balanced: row r of second and column r of first have the same norm, sqrt(s_r)
        kept = min(rank, 400)
        np.testing.assert_allclose(np.linalg.norm(f.first[:, :kept], axis=0),
                                   np.sqrt(singular[:kept]), rtol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(f.second[:kept], axis=1),
                                   np.sqrt(singular[:kept]), rtol=1e-4)
        assert np.all(np.isfinite(f.first)) and np.all(np.isfinite(f.second))
