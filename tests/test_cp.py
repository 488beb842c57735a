"""CP by ALS: exact-rank recovery, the chain layout, monotone error, balance, bounded components,
determinism, bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from tflowrank.decompositions.cp import cp_factors


def _kernel(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _rank_r_kernel(shape, rank, seed=0):
    factors = [np.random.default_rng(seed + mode).normal(size=(n, rank)) for mode, n in enumerate(shape)]
    return np.einsum("ir,jr,cr,or->ijco", *factors).astype(np.float32)


def _patches(x, size):
    return sliding_window_view(x, size, axis=(0, 1))  # (H', W', C, kh, kw)


def _conv(x, kernel):
    """Valid, stride-1 convolution of an (H, W, C) image with a (kh, kw, C, O) kernel."""
    return np.einsum("yxcij,ijco->yxo", _patches(x, kernel.shape[:2]), kernel)


def _depthwise(x, kernel):
    """Valid depthwise convolution with a Keras DepthwiseConv2D kernel (kh, kw, C, 1)."""
    return np.einsum("yxcij,ijc->yxc", _patches(x, kernel.shape[:2]), kernel[..., 0])


def _product(f):
    return np.einsum(
        "cr,ir,jr,ro->ijco",
        f.pointwise_in[0, 0],
        f.vertical[:, 0, :, 0],
        f.horizontal[0, :, :, 0],
        f.pointwise_out[0, 0],
    )


@pytest.mark.parametrize(
    "shape, rank", [((3, 3, 8, 8), 4), ((5, 3, 6, 10), 3), ((3, 3, 4, 6), 2), ((1, 1, 6, 7), 3)]
)
def test_exactly_rank_r_kernel_is_reproduced(shape, rank):
    kernel = _rank_r_kernel(shape, rank)
    f = cp_factors(kernel, rank)
    assert f.relative_error < 1e-4 and f.converged
    np.testing.assert_allclose(_product(f), kernel, atol=1e-3 * np.abs(kernel).max())


@settings(max_examples=15, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 6), st.integers(1, 6)),
    rank=st.integers(1, 8),
)
def test_shapes_and_relative_error_of_the_product(shape, rank):
    kernel = _kernel(shape, seed=1)
    kh, kw, cin, cout = shape
    f = cp_factors(kernel, rank, n_iter_max=50)
    assert f.pointwise_in.shape == (1, 1, cin, rank) and f.pointwise_out.shape == (1, 1, rank, cout)
    assert f.vertical.shape == (kh, 1, rank, 1) and f.horizontal.shape == (1, kw, rank, 1)
    assert f.rank == rank and 1 <= f.n_iter <= 50 and 0.0 <= f.relative_error <= 1.0 + 1e-6
    direct = np.linalg.norm(kernel - _product(f).astype(np.float64)) / np.linalg.norm(kernel)
    np.testing.assert_allclose(direct, f.relative_error, atol=1e-5)


def test_the_chain_of_convolutions_is_the_convolution_with_the_product():
    f = cp_factors(_kernel((3, 3, 5, 7)), 6)
    x = np.random.default_rng(3).normal(size=(9, 8, 5))
    hidden = _depthwise(_depthwise(_conv(x, f.pointwise_in), f.vertical), f.horizontal)
    np.testing.assert_allclose(_conv(hidden, f.pointwise_out), _conv(x, _product(f)), rtol=1e-4, atol=1e-4)


def test_error_is_non_increasing_in_rank():
    # Checked directly, without warm starts: from the nested SVD initialisation CP-ALS gives strictly
    # decreasing errors here (by about 1e-2 per rank); 1e-6 only absorbs the stopping tolerance.
    kernel = _kernel((3, 3, 6, 8), seed=2)
    errors = [cp_factors(kernel, r).relative_error for r in range(1, 11)]
    assert all(a >= b - 1e-6 for a, b in zip(errors, errors[1:]))


def test_ranks_above_the_mode_sizes_are_allowed_and_stable():
    kernel = _kernel((1, 1, 4, 4))
    f = cp_factors(kernel, 9)
    assert f.relative_error < 1e-5
    assert all(np.all(np.isfinite(x)) for x in (f.pointwise_in, f.vertical, f.horizontal, f.pointwise_out))
    assert cp_factors(_kernel((3, 3, 2, 2)), 20).relative_error < 1e-3


def test_weights_are_balanced_across_the_four_factors_and_sorted():
    f = cp_factors(_kernel((3, 3, 6, 8), seed=4), 5)
    norms = np.stack(
        [
            np.linalg.norm(f.pointwise_in[0, 0], axis=0),
            np.linalg.norm(f.vertical[:, 0, :, 0], axis=0),
            np.linalg.norm(f.horizontal[0, :, :, 0], axis=0),
            np.linalg.norm(f.pointwise_out[0, 0], axis=1),
        ]
    )
    np.testing.assert_allclose(norms, np.broadcast_to(norms[0], norms.shape), rtol=1e-5)
    assert np.all(np.diff(norms[0]) <= 1e-6)


def _degeneracy(f):
    """``sqrt(sum_r ||term_r||^2) / ||W_hat||``: 1 for orthogonal components, large when they cancel."""
    factors = [f.pointwise_in[0, 0], f.vertical[:, 0, :, 0], f.horizontal[0, :, :, 0], f.pointwise_out[0, 0].T]
    terms = np.prod([np.linalg.norm(x, axis=0) for x in factors], axis=0)
    return float(np.sqrt(np.sum(terms**2)) / np.linalg.norm(_product(f)))


def test_the_ridge_keeps_components_from_growing_and_cancelling():
    plain_worst = 0.0
    for shape, rank in [((3, 3, 8, 8), 8), ((3, 3, 8, 16), 12), ((3, 3, 6, 8), 10), ((3, 3, 4, 6), 6)]:
        for seed in range(3):
            kernel = _kernel(shape, seed)
            plain, ridged = cp_factors(kernel, rank, ridge=0), cp_factors(kernel, rank)
            plain_worst = max(plain_worst, _degeneracy(plain))
            assert _degeneracy(ridged) <= 2.0, (shape, seed)
            # at almost the same error (the least-squares scale undoes the uniform shrinkage)
            assert ridged.relative_error <= plain.relative_error + 0.02, (shape, seed)
    assert plain_worst > 10  # plain CP-ALS does cancel here: the bound above is not vacuous


def test_the_ridge_is_read_at_the_call_and_zero_is_plain_als(monkeypatch):
    import tflowrank.decompositions.cp as cp

    kernel = _kernel((3, 3, 6, 8))
    default, default_ridge = cp_factors(kernel, 10), cp.RIDGE
    assert default_ridge > 0
    monkeypatch.setattr(cp, "RIDGE", 0.0)
    plain = cp_factors(kernel, 10)
    np.testing.assert_array_equal(plain.pointwise_in, cp_factors(kernel, 10, ridge=0).pointwise_in)
    assert not np.array_equal(plain.pointwise_in, default.pointwise_in)
    np.testing.assert_array_equal(default.pointwise_in, cp_factors(kernel, 10, ridge=default_ridge).pointwise_in)


def test_factors_are_deterministic_under_the_seed_and_keep_dtype():
    kernel = _kernel((3, 3, 4, 4))
    a, b = cp_factors(kernel, 5, seed=7), cp_factors(kernel, 5, seed=7)
    for name in ("pointwise_in", "vertical", "horizontal", "pointwise_out"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.relative_error == b.relative_error and a.n_iter == b.n_iter
    assert a.pointwise_in.dtype == np.float32
    assert cp_factors(kernel.astype(np.float64), 2).vertical.dtype == np.float64


def test_zero_kernel_has_zero_error():
    f = cp_factors(np.zeros((3, 3, 2, 2), np.float32), 2)
    assert f.relative_error == 0.0 and np.all(_product(f) == 0)


@pytest.mark.parametrize("rank", [0, -1, 2.5, True, "3", None, (2, 2)])
def test_bad_rank_is_rejected_with_the_value(rank):
    with pytest.raises(ValueError) as info:
        cp_factors(_kernel((3, 3, 4, 4)), rank)
    assert str(info.value) == f"`rank` must be a positive integer. Received: rank={rank!r}"


def test_bad_arguments_are_rejected():
    kernel = _kernel((3, 3, 4, 4))
    with pytest.raises(ValueError, match=r"^`seed` must be a non-negative integer. Received: seed=None$"):
        cp_factors(kernel, 2, seed=None)
    for n_iter_max in (0, 1.5):
        with pytest.raises(
            ValueError, match=rf"^`n_iter_max` must be a positive integer. Received: n_iter_max={n_iter_max}$"
        ):
            cp_factors(kernel, 2, n_iter_max=n_iter_max)
    with pytest.raises(ValueError, match=r"^`tol` must be a finite non-negative number. Received: tol=-1$"):
        cp_factors(kernel, 2, tol=-1)
    for ridge in (-1e-3, float("nan"), "0.01", True):
        with pytest.raises(ValueError, match=rf"^`ridge` must be a finite number >= 0. Received: ridge={ridge!r}$"):
            cp_factors(kernel, 2, ridge=ridge)
    with pytest.raises(
        ValueError, match=r"^`kernel` must be a non-empty array of 4 dimensions. Received: kernel.shape=\(4, 4\)$"
    ):
        cp_factors(kernel[0, 0], 2)
    with pytest.raises(TypeError, match="kernel.dtype=int64"):
        cp_factors(np.ones((1, 1, 2, 2), dtype=np.int64), 1)


def test_the_layer_spends_a_bounded_number_of_sweeps_per_layer():
    from tflowrank.layers import CPConv2D

    small, large = CPConv2D.sweeps((3, 3, 32, 64), 59), CPConv2D.sweeps((3, 3, 512, 512), 1145)
    assert small == CPConv2D.MAX_SWEEPS == 500 and large == CPConv2D.MIN_SWEEPS
    sizes = [CPConv2D.sweeps((3, 3, c, c), c) for c in (32, 64, 128, 256, 512)]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) > 2
