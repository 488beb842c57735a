"""Tucker-2 and Tucker-2 + spatial: exactness, the chain layout, monotone error, bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from tflowrank.decompositions.tucker import tucker2_factors, tucker2_rank, tucker2_spatial_factors

shapes = st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 6), st.integers(1, 6))


def _kernel(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _conv(x, kernel):
    """Valid, stride-1 convolution of an (H, W, C) image with a (kh, kw, C, O) kernel."""
    patches = sliding_window_view(x, kernel.shape[:2], axis=(0, 1))  # (H', W', C, kh, kw)
    return np.einsum("yxcij,ijco->yxo", patches, kernel)


def _tucker_product(f):
    return np.einsum("ca,ijab,bo->ijco", f.first[0, 0], f.core, f.last[0, 0])


def _spatial_product(f):
    return np.einsum("ca,iat,jtb,bo->ijco", f.first[0, 0], f.vertical[:, 0], f.horizontal[0], f.last[0, 0])


def _relative(a, b):
    return np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64))


@settings(max_examples=25, deadline=None)
@given(shape=shapes)
def test_full_rank_is_exact(shape):
    kernel = _kernel(shape)
    kh, kw, cin, cout = shape
    f = tucker2_factors(kernel, (cin, cout))
    assert (f.first.shape, f.core.shape, f.last.shape) == (
        (1, 1, cin, cin),
        (kh, kw, cin, cout),
        (1, 1, cout, cout),
    )
    assert f.rank == (cin, cout) and f.relative_error < 1e-6
    np.testing.assert_allclose(_tucker_product(f), kernel, rtol=1e-4, atol=1e-5)
    s = tucker2_spatial_factors(kernel, (cin, cout))
    assert s.spatial_rank == min(kh * cin, kw * cout) and s.relative_error < 1e-6
    assert s.vertical.shape == (kh, 1, cin, s.spatial_rank) and s.horizontal.shape == (
        1,
        kw,
        s.spatial_rank,
        cout,
    )
    np.testing.assert_allclose(_spatial_product(s), kernel, rtol=1e-4, atol=1e-5)


@settings(max_examples=20, deadline=None)
@given(shape=shapes, data=st.data())
def test_relative_error_is_that_of_the_product(shape, data):
    kernel = _kernel(shape, seed=1)
    rank = (data.draw(st.integers(1, shape[2])), data.draw(st.integers(1, shape[3])))
    f = tucker2_factors(kernel, rank)
    np.testing.assert_allclose(_relative(_tucker_product(f), kernel), f.relative_error, atol=1e-5)
    s = tucker2_spatial_factors(kernel, rank, spatial_rank=1)
    np.testing.assert_allclose(_relative(_spatial_product(s), kernel), s.relative_error, atol=1e-5)
    assert s.relative_error >= f.relative_error - 1e-6


def test_the_chain_of_convolutions_is_the_convolution_with_the_product():
    kernel = _kernel((3, 3, 5, 7))
    x = np.random.default_rng(3).normal(size=(9, 8, 5))
    f = tucker2_factors(kernel, (3, 4))
    chain = _conv(_conv(_conv(x, f.first), f.core), f.last)
    np.testing.assert_allclose(chain, _conv(x, _tucker_product(f)), rtol=1e-4, atol=1e-4)
    s = tucker2_spatial_factors(kernel, (3, 4), spatial_rank=5)
    chain = _conv(_conv(_conv(_conv(x, s.first), s.vertical), s.horizontal), s.last)
    np.testing.assert_allclose(chain, _conv(x, _spatial_product(s)), rtol=1e-4, atol=1e-4)


def test_error_is_non_increasing_in_each_mode_and_hooi_improves_on_hosvd():
    kernel = _kernel((3, 3, 6, 8), seed=2)
    errors = np.array(
        [[tucker2_factors(kernel, (a, b)).relative_error for b in range(1, 9)] for a in range(1, 7)]
    )
    # HOOI finds local optima to within its tolerance, so allow a hair above exact monotonicity.
    assert np.all(np.diff(errors, axis=0) <= 1e-6)
    assert np.all(np.diff(errors, axis=1) <= 1e-6)
    assert errors[-1, -1] < 1e-6
    hosvd = tucker2_factors(kernel, (3, 4), n_iter_max=0)
    hooi = tucker2_factors(kernel, (3, 4))
    assert hosvd.n_iter == 0 and not hosvd.converged and hooi.converged and hooi.n_iter >= 1
    assert hooi.relative_error <= hosvd.relative_error + 1e-9


def test_spatial_error_is_non_increasing_in_spatial_rank():
    kernel = _kernel((3, 3, 4, 5), seed=4)
    errors = [tucker2_spatial_factors(kernel, (3, 4), spatial_rank=s).relative_error for s in range(1, 10)]
    assert all(a >= b - 1e-9 for a, b in zip(errors, errors[1:]))
    assert errors[-1] == pytest.approx(tucker2_factors(kernel, (3, 4)).relative_error, abs=1e-6)


def test_exactly_tucker_rank_kernel_is_recovered():
    rng = np.random.default_rng(5)
    core = rng.normal(size=(3, 3, 2, 3))
    u_in, u_out = rng.normal(size=(6, 2)), rng.normal(size=(7, 3))
    kernel = np.einsum("ca,ijab,ob->ijco", u_in, core, u_out).astype(np.float32)
    f = tucker2_factors(kernel, (2, 3))
    assert f.relative_error < 1e-6
    np.testing.assert_allclose(_tucker_product(f), kernel, atol=1e-5)


def test_factors_are_deterministic_orthonormal_and_keep_dtype():
    kernel = _kernel((3, 3, 8, 8))
    a, b = tucker2_factors(kernel, 3), tucker2_factors(kernel, 3)
    np.testing.assert_array_equal(a.core, b.core)
    np.testing.assert_array_equal(a.first, b.first)
    assert a.first.dtype == np.float32 and a.rank == (3, 3)
    np.testing.assert_allclose(a.first[0, 0].T @ a.first[0, 0], np.eye(3), atol=1e-6)
    np.testing.assert_allclose(a.last[0, 0] @ a.last[0, 0].T, np.eye(3), atol=1e-6)
    assert tucker2_factors(kernel.astype(np.float64), 3).core.dtype == np.float64


def test_zero_kernel_has_zero_error():
    f = tucker2_factors(np.zeros((3, 3, 4, 4), np.float32), 2)
    assert f.relative_error == 0.0 and np.all(f.core == 0)


@pytest.mark.parametrize("rank", [0, -1, 5, 2.5, True, "3", (2,), (2, 7), (0, 2), (2, 2.0), None])
def test_bad_rank_is_rejected_with_the_value(rank):
    expected = (
        "`rank` must be an integer or a pair (r_in, r_out) of integers with 1 <= r_in <= cin=4 and "
        f"1 <= r_out <= cout=6. Received: rank={rank!r}"
    )
    with pytest.raises(ValueError) as info:
        tucker2_factors(_kernel((3, 3, 4, 6)), rank)
    assert str(info.value) == expected


def test_rank_pair_is_resolved_by_one_function():
    assert tucker2_rank(3, 4, 6) == (3, 3)
    assert tucker2_rank([4, np.int64(6)], 4, 6) == (4, 6)


@pytest.mark.parametrize("spatial_rank", [0, 13, 1.5, True])
def test_bad_spatial_rank_is_rejected_with_the_value(spatial_rank):
    expected = (
        "`spatial_rank` must be None or an integer between 1 and the full rank 6 of the 6 x 9 core "
        f"unfolding. Received: spatial_rank={spatial_rank!r}"
    )
    with pytest.raises(ValueError) as info:
        tucker2_spatial_factors(_kernel((3, 3, 4, 6)), (2, 3), spatial_rank=spatial_rank)
    assert str(info.value) == expected


def test_bad_iteration_arguments_are_rejected():
    kernel = _kernel((3, 3, 4, 4))
    with pytest.raises(
        ValueError, match=r"^`n_iter_max` must be a non-negative integer. Received: n_iter_max=-1$"
    ):
        tucker2_factors(kernel, 2, n_iter_max=-1)
    with pytest.raises(ValueError, match=r"^`tol` must be a finite non-negative number. Received: tol=nan$"):
        tucker2_factors(kernel, 2, tol=float("nan"))


def test_bad_kernels_are_rejected():
    with pytest.raises(ValueError, match=r"kernel.shape=\(3, 3, 4\)"):
        tucker2_factors(_kernel((3, 3, 4)), 1)
    with pytest.raises(TypeError, match="kernel.dtype=int64"):
        tucker2_spatial_factors(np.ones((3, 3, 2, 2), dtype=np.int64), 1)
    bad = _kernel((3, 3, 2, 2))
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        tucker2_factors(bad, 1)


def test_hooi_stops_on_a_relative_gain_close_to_its_limit():
    kernel = np.random.default_rng(4).normal(size=(3, 3, 48, 40))
    stopped = tucker2_factors(kernel, (12, 10))
    limit = tucker2_factors(kernel, (12, 10), n_iter_max=300, tol=0.0)
    assert stopped.converged and 1 <= stopped.n_iter < limit.n_iter
    assert limit.relative_error <= stopped.relative_error < limit.relative_error * (1 + 2e-3)
