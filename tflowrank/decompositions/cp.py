"""CP (CANDECOMP/PARAFAC) factorization of convolution kernels.

Lebedev, Ganin, Rakhuba, Oseledets and Lempitsky 2015, "Speeding-up Convolutional Neural Networks
Using Fine-tuned CP-Decomposition": the rank-R CP decomposition

    W[i, j, c, o] ~ sum_r A[i, r] B[j, r] C[c, r] D[o, r]

of a ``(kh, kw, cin, cout)`` kernel is the chain 1x1 (cin -> R, C), depthwise kh x 1 (A), depthwise
1 x kw (B), 1x1 (R -> cout, D).

There is no closed form: the factors come from alternating least squares (CP-ALS; Carroll and Chang
1970, Harshman 1970; Kolda and Bader 2009, "Tensor Decompositions and Applications", section 3.4),
made deterministic and stable by

- an SVD initialisation: the leading left singular vectors of each unfolding, padded with random
  unit columns from ``seed`` where ``rank`` exceeds the mode size (Kolda and Bader 2009);
- unit-norm columns, the magnitudes kept apart in weights ``lambda`` between updates;
- a small proximal ridge ``eps * ||X - X_previous||^2`` on each least-squares update (Navasca,
  De Lathauwer and Kindermann 2008, "Swamp reducing technique for tensor decomposition"): it keeps
  the normal equations solvable when ``rank`` exceeds what the other modes can span, and unlike a
  plain ridge it does not move the fixed points, so an exactly rank-R kernel is still reproduced;
- a line search by extrapolation along the last sweep's step (Bro 1998, "Multi-way Analysis in the
  Food Industry", PhD thesis), kept only when it lowers the error: it shortens swamps;
- a stop when the relative error ``e`` changes by less than ``tol * e`` between sweeps (a relative
  change), or falls below 1e-7. An absolute threshold stops inside swamps, long runs of sweeps
  that each gain little before the error drops again; a relative one runs on through them until the
  error has really levelled off.

Each sweep does not increase the error (each update minimises the error plus a proximal term that
is zero at the previous iterate, and an extrapolation is kept only if it lowers the error). No
warm start across ranks is needed for the error to fall with the rank in practice: the
initialisation at rank R is nested in the one at rank R + 1.

A plain CP-ALS fit of a trained kernel is degenerate: its components grow large and cancel each
other (Phan et al. 2020, "Stable Low-rank Tensor Decomposition for Compression of Convolutional
Neural Network"). On the Fashion-MNIST CNN's 3 x 3 kernels ``sqrt(sum_r ||term_r||^2) / ||W||``
reached 4-17 (1 for orthogonal components). The chain then holds large intermediate values that
cancel in its last step, so their int8 rounding, on a per-tensor scale set by the largest, is
amplified: with those kernels CP-factorized to 3x fewer MACs, the post-training int8 file's logits
were 78% off the float chain's (5% with the ridge) and its top-1 halved. Each update therefore also
carries a ridge ``rho ||X||^2``, where ``X`` is the updated factor holding the weights: it penalises
``rho sum_r lambda_r^2``, the components' squared norms. ``rho = ridge * e^2`` follows the current
relative error ``e``, so it fades as the fit closes in on an exactly rank-R kernel, which is still
reproduced (with ``ridge * e`` it held some such fits at ``e`` ~ 0.06); the extrapolation is kept
only if it lowers the penalised objective ``e^2 + rho sum_r lambda_r^2 / ||W||^2``; at the end one
least-squares scale of all the weights undoes the ridge's uniform shrinkage. ``ridge=0`` is plain
CP-ALS.

At the end the components are sorted by weight and each weight is split evenly, ``lambda ** (1/4)``
on each of the four factors, so that no layer of the chain carries the whole dynamic range before
per-channel int8 quantization.
"""

from dataclasses import dataclass

import numpy as np

from .svd import _check_kernel
from .tucker import _check_iterations, _fix_signs, _is_int, _leading_vectors, _unfold

__all__ = ["CPFactors", "cp_factors"]

# The error from ||W||^2 - 2 <W, W_hat> + ||W_hat||^2 resolves relative errors down to about
# sqrt(float64 eps): below this, changes between sweeps are rounding noise.
_RESOLUTION = 1e-7
# Proximal ridge, relative to the unit diagonal of the normal equations (the columns are unit-norm).
_PROXIMAL = 1e-8
# Ridge on the components' norms, times the squared current relative error (module docstring):
# on the Fashion-MNIST CNN's kernels it bounds the degeneracy to 1.5 and raises the relative
# error by at most 0.004 (bench/cp_stability.py).
RIDGE = 3e-2


@dataclass(frozen=True)
class CPFactors:
    """CP chain: 1x1 ``pointwise_in``, depthwise ``vertical`` and ``horizontal``, 1x1 ``pointwise_out``.

    Shapes: ``pointwise_in`` (1, 1, cin, R), ``vertical`` (kh, 1, R, 1), ``horizontal`` (1, kw, R, 1),
    ``pointwise_out`` (1, 1, R, cout). Component r has the same norm ``lambda_r ** (1/4)`` in all four
    factors, and the components are sorted by ``lambda_r``, largest first.

    The depthwise kernels use the Keras ``DepthwiseConv2D`` layout (kh, kw, channels, depth_multiplier=1).
    The chain computes the convolution with kernel ``W_hat[i, j, c, o] = sum_r pointwise_in[0, 0, c, r]
    * vertical[i, 0, r, 0] * horizontal[0, j, r, 0] * pointwise_out[0, 0, r, o]``. ``relative_error``
    is ``||W - W_hat||_F / ||W||_F`` of the float64 factors; ``n_iter`` counts the ALS sweeps.
    """

    pointwise_in: np.ndarray
    vertical: np.ndarray
    horizontal: np.ndarray
    pointwise_out: np.ndarray
    rank: int
    relative_error: float
    n_iter: int
    converged: bool


def cp_factors(kernel, rank, n_iter_max=500, tol=1e-6, seed=0, ridge=None):
    """Rank-``rank`` CP factorization of a ``(kh, kw, cin, cout)`` kernel by CP-ALS (Lebedev et al. 2015).

    ``rank`` may be any positive integer, also above the mode sizes. At most ``n_iter_max`` ALS sweeps,
    stopped when the relative error ``e`` changes by less than ``tol * e`` (or falls below 1e-7);
    ``converged`` says whether that happened. ``seed`` fixes the random padding of the SVD
    initialisation, so equal arguments give equal factors. ``ridge`` (>= 0) weighs the penalty on
    the components' norms that keeps them from growing and cancelling (module docstring); 0: plain
    CP-ALS; None: the module's ``RIDGE``, read at the call.
    """
    kernel = _check_kernel(kernel, ndim=4)
    if not (_is_int(rank) and rank >= 1):
        raise ValueError(f"`rank` must be a positive integer. Received: rank={rank!r}")
    rank = int(rank)
    _check_iterations(n_iter_max, tol, least=1)
    if not (_is_int(seed) and seed >= 0):
        raise ValueError(f"`seed` must be a non-negative integer. Received: seed={seed!r}")
    ridge = RIDGE if ridge is None else ridge
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float, np.integer, np.floating)) \
            or not (np.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"`ridge` must be a finite number >= 0. Received: ridge={ridge!r}")
    kh, kw, cin, cout = kernel.shape
    w = kernel.astype(np.float64)
    norm = float(np.linalg.norm(w))
    w9 = w.reshape(kh * kw, cin, cout)
    w9t = np.ascontiguousarray(w9.transpose(0, 2, 1))
    factors = [_initial_factor(w, mode, rank, int(seed)) for mode in range(4)]
    weights = np.zeros(rank)
    error, n_iter, converged = 1.0, 0, False
    power, failures = 2.0, 0
    while n_iter < n_iter_max and not converged:
        last = factors, weights
        rho = float(ridge) * error**2
        factors, weights, new_error = _sweep(w9, w9t, norm, factors, weights, rho)
        n_iter += 1
        if n_iter > 2:
            # Line search by extrapolation (Bro 1998), kept only where it lowers the objective.
            trial = _extrapolated(last, (factors, weights), n_iter ** (1.0 / power))
            trial_error = _error(w9t, norm, *trial)
            if _objective(trial_error, trial[1], rho, norm) < _objective(new_error, weights, rho, norm):
                (factors, weights), new_error, failures = trial, trial_error, 0
            else:
                failures += 1
                if failures == 4:
                    power, failures = power + 1.0, 0
        converged = new_error < _RESOLUTION or abs(error - new_error) < tol * error
        error = new_error
    if ridge and norm > 0.0:
        weights = weights * _least_squares_scale(w9t, factors, weights)
    a, b, c, d = factors
    pointwise_in, vertical, horizontal, pointwise_out = _balanced(weights, (c, a, b, d))
    spatial = (vertical[:, None, :] * horizontal[None, :, :]).reshape(kh * kw, 1, rank)
    product = ((pointwise_in * spatial) @ pointwise_out.T).reshape(kh, kw, cin, cout)
    dtype = kernel.dtype
    return CPFactors(
        pointwise_in=pointwise_in[None, None].astype(dtype),
        vertical=vertical[:, None, :, None].astype(dtype),
        horizontal=horizontal[None, :, :, None].astype(dtype),
        pointwise_out=pointwise_out.T[None, None].astype(dtype),
        rank=rank,
        relative_error=0.0 if norm == 0.0 else float(np.linalg.norm(w - product) / norm),
        n_iter=n_iter,
        converged=converged,
    )


def _initial_factor(w, mode, rank, seed):
    """Leading left singular vectors of the mode unfolding, padded with seeded random unit columns.

    The padding of each mode has its own generator and is drawn row by row, so the initialisation at
    rank R is the first R columns of the one at any larger rank.
    """
    size = w.shape[mode]
    leading = _leading_vectors(_unfold(w, mode), min(rank, size))
    if rank <= size:
        return leading
    padding = np.random.default_rng([seed, mode]).standard_normal((rank - size, size)).T
    return np.concatenate([leading, padding / np.linalg.norm(padding, axis=0)], axis=1)


def _objective(error, weights, rho, norm):
    """The penalised objective ``e^2 + rho sum_r lambda_r^2 / ||W||^2`` (relative to ``||W||^2``)."""
    return error**2 + (rho * float(weights @ weights) / norm**2 if norm > 0.0 else 0.0)


def _least_squares_scale(w9t, factors, weights):
    """The scale ``s`` minimising ``||W - s W_hat||``: ``<W, W_hat> / ||W_hat||^2`` (1 if ``W_hat`` is 0)."""
    inner, squared = _inner_and_square(w9t, factors, weights)
    return float(inner / squared) if squared > 0.0 else 1.0


def _sweep(w9, w9t, norm, factors, weights, rho=0.0):
    """One ALS sweep over the modes cin, cout, kh, kw; returns the factors, weights and relative error.

    The two large contractions with W are shared: ``W @ D`` for the cin update, ``W^T @ C`` for the
    cout update and again, contracted with the new D, for both spatial updates.
    """
    a, b, c, d = factors
    kh, kw, rank = len(a), len(b), len(weights)
    kr_ab = (a[:, None, :] * b[None, :, :]).reshape(kh * kw, rank)
    gram_ab = (a.T @ a) * (b.T @ b)
    mttkrp = np.einsum("kcr,kr->cr", w9 @ d, kr_ab)
    c, weights = _update(mttkrp, gram_ab * (d.T @ d), c, weights, rho)
    contracted = w9t @ c  # (kh * kw, cout, R)
    d, weights = _update(np.einsum("kor,kr->or", contracted, kr_ab), gram_ab * (c.T @ c), d, weights, rho)
    z = np.einsum("kor,or->kr", contracted, d).reshape(kh, kw, rank)  # W contracted with C and D
    gram_cd = (c.T @ c) * (d.T @ d)
    a, weights = _update(np.einsum("ijr,jr->ir", z, b), gram_cd * (b.T @ b), a, weights, rho)
    mttkrp, gram = np.einsum("ijr,ir->jr", z, a), gram_cd * (a.T @ a)
    b, weights = _update(mttkrp, gram, b, weights, rho)
    return [a, b, c, d], weights, _fit_error(norm, mttkrp, gram, b * weights)


def _extrapolated(last, current, step):
    """``current + step * (current - last)`` on the balanced factors, returned as unit factors and weights."""
    (old, old_weights), (new, new_weights) = last, current
    moved = [
        f * new_weights**0.25 + step * (f * new_weights**0.25 - g * old_weights**0.25)
        for f, g in zip(new, old)
    ]
    norms = [np.linalg.norm(m, axis=0) for m in moved]
    weights = np.prod(norms, axis=0)
    factors = [np.where(n > 0, m / np.where(n > 0, n, 1.0), f) for m, n, f in zip(moved, norms, new)]
    return factors, weights


def _error(w9t, norm, factors, weights):
    """Relative error of a CP model, with one contraction of W: ``||W||^2 - 2 <W, W_hat> + ||W_hat||^2``."""
    if norm == 0.0:
        return 0.0
    inner, squared = _inner_and_square(w9t, factors, weights)
    return float(np.sqrt(max(norm**2 - 2.0 * inner + squared, 0.0)) / norm)


def _inner_and_square(w9t, factors, weights):
    """``<W, W_hat>`` (one contraction of W) and ``||W_hat||^2`` of a CP model."""
    a, b, c, d = factors
    kr_ab = (a[:, None, :] * b[None, :, :]).reshape(len(a) * len(b), len(weights))
    inner = np.einsum("kor,or,kr,r->", w9t @ c, d, kr_ab, weights, optimize=True)
    gram = (a.T @ a) * (b.T @ b) * (c.T @ c) * (d.T @ d)
    return inner, weights @ gram @ weights


def _update(mttkrp, gram, factor, weights, rho=0.0):
    """One proximal least-squares update of a factor; returns it with unit columns, and the new weights.

    Minimises ``||W_(n) - X K^T||^2 + eps ||X - factor * weights||^2 + rho ||X||^2`` where
    ``gram = K^T K`` (whose diagonal is 1: the other factors' columns are unit-norm).
    """
    scale = max(float(np.mean(np.diag(gram))), np.finfo(np.float64).tiny)
    eps = _PROXIMAL * scale
    system = gram + (eps + rho * scale) * np.eye(len(gram))
    solution = np.linalg.solve(system, (mttkrp + eps * factor * weights).T).T
    norms = np.linalg.norm(solution, axis=0)
    live = norms > 0
    factor = factor.copy()
    factor[:, live] = solution[:, live] / norms[live]
    return factor, norms


def _fit_error(norm, mttkrp, gram, scaled):
    """Relative error ``||W - W_hat|| / ||W||`` from the last update's MTTKRP and normal equations.

    ``||W||^2 - 2 <W, W_hat> + ||W_hat||^2`` with ``<W, W_hat> = sum(mttkrp * scaled)`` and
    ``||W_hat||^2 = sum(gram * scaled^T scaled)``, where ``scaled`` is the last factor times the weights.
    """
    if norm == 0.0:
        return 0.0
    squared = norm**2 - 2.0 * np.sum(mttkrp * scaled) + np.sum(gram * (scaled.T @ scaled))
    return float(np.sqrt(max(squared, 0.0)) / norm)


def _balanced(weights, factors):
    """Sort the components by weight and put ``weight ** (1/4)`` on each factor, with canonical signs."""
    order = np.argsort(-weights, kind="stable")
    root = weights[order] ** 0.25
    first, *rest = (factor[:, order] for factor in factors)
    signed = [_fix_signs(factor) for factor in rest]
    # Fold every sign flip into the first factor so that the product is unchanged.
    flips = np.prod([np.sign(np.sum(s * f, axis=0)) for s, f in zip(signed, rest)], axis=0)
    return [first * flips * root] + [factor * root for factor in signed]
