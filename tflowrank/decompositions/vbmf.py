"""Rank selection by empirical variational Bayesian matrix factorization (EVBMF).

Nakajima, Sugiyama, Babacan and Tomioka 2013, "Global analytic solution of fully-observed
variational Bayesian matrix factorization", JMLR 14: for ``Y = U V^T + noise`` with Gaussian priors
whose variances are themselves estimated (empirical Bayes), the VB posterior mean is a shrunken
truncated SVD of ``Y``, in closed form. With ``L <= M`` the sides of ``Y``, ``alpha = L / M`` and
noise variance ``sigma2``, a singular value ``gamma`` is kept iff

    gamma > sqrt(M * sigma2 * x_), x_ = (1 + tau_) * (1 + alpha / tau_),

where ``tau_`` is the zero of ``psi1(tau) = log(tau + 1) + alpha * log(tau / alpha + 1) - tau`` above
``sqrt(alpha)`` (the paper's ``2.5129 * sqrt(alpha)`` is this root at ``alpha = 1``; here it is solved
for), and a kept one is estimated as

    gamma_hat = gamma / 2 * (1 - (L + M) sigma2 / gamma^2
                             + sqrt((1 - (L + M) sigma2 / gamma^2)^2 - 4 L M sigma2^2 / gamma^4)).

When ``sigma2`` is not given it minimises the free energy (the paper's noise-variance objective),
a 1-D problem on the interval the paper bounds it to, solved on ``log(sigma2)``.

Kim et al. 2016 ("Compression of Deep Convolutional Neural Networks for Fast and Low Power Mobile
Applications") choose the Tucker-2 ranks of a convolution kernel this way, from its mode-3 (cin) and
mode-4 (cout) unfoldings: :func:`vbmf_ranks_tucker2`.
"""

import numbers
from dataclasses import dataclass

import numpy as np

from .svd import _check_kernel
from .tucker import _unfold

__all__ = ["VBMFResult", "evbmf", "vbmf_rank", "vbmf_ranks_tucker2"]


@dataclass(frozen=True)
class VBMFResult:
    """EVBMF estimate: the ``rank`` kept, their shrunken ``singular_values`` (descending) and ``sigma2``.

    ``sigma2`` is the noise variance used, estimated or given; 0.0 for the zero matrix.
    """

    rank: int
    singular_values: np.ndarray
    sigma2: float


def evbmf(matrix, sigma2=None):
    """Analytic empirical VBMF of a 2-D ``matrix`` (Nakajima et al. 2013).

    ``sigma2`` is the noise variance per entry; None estimates it by minimising the free energy.
    The result does not depend on the orientation: ``evbmf(matrix.T)`` gives the same rank.
    """
    matrix = _check_kernel(matrix, ndim=2, name="matrix")
    if sigma2 is not None and not (
        isinstance(sigma2, numbers.Real) and not isinstance(sigma2, bool) and 0.0 < sigma2 < np.inf
    ):
        raise ValueError(f"`sigma2` must be None or a positive finite number. Received: sigma2={sigma2!r}")
    y = matrix.astype(np.float64)
    if y.shape[0] > y.shape[1]:
        y = y.T
    rows, cols = y.shape
    alpha = rows / cols
    # Singular values from the L x L Gram matrix: several times faster than an SVD of a wide
    # unfolding, and accurate to eps * gamma_1 absolutely, which is all the free energy needs.
    gamma = np.sqrt(np.maximum(np.linalg.eigvalsh(y @ y.T)[::-1], 0.0))
    x_ = _x_threshold(alpha)
    if sigma2 is None:
        sigma2 = _estimate_sigma2(gamma, rows, cols, x_)
    sigma2 = float(sigma2)
    if sigma2 == 0.0:  # the zero matrix
        return VBMFResult(rank=0, singular_values=np.zeros(0), sigma2=0.0)
    kept = gamma[gamma > np.sqrt(cols * sigma2 * x_)]
    ratio = 1.0 - (rows + cols) * sigma2 / kept**2
    discriminant = np.maximum(ratio**2 - 4.0 * rows * cols * sigma2**2 / kept**4, 0.0)
    shrunk = kept / 2.0 * (ratio + np.sqrt(discriminant))
    return VBMFResult(rank=len(kept), singular_values=shrunk, sigma2=sigma2)


def vbmf_rank(matrix):
    """The number of components EVBMF keeps in ``matrix`` (Nakajima et al. 2013), possibly 0."""
    return evbmf(matrix).rank


def vbmf_ranks_tucker2(kernel):
    """Tucker-2 ranks ``(r_in, r_out)`` of a ``(kh, kw, cin, cout)`` kernel by EVBMF (Kim et al. 2016).

    EVBMF of the mode-3 unfolding ``(cin, kh * kw * cout)`` and the mode-4 unfolding
    ``(cout, kh * kw * cin)``, each rank raised to at least 1.
    """
    kernel = _check_kernel(kernel, ndim=4)
    w = kernel.astype(np.float64)
    return max(1, vbmf_rank(_unfold(w, 2))), max(1, vbmf_rank(_unfold(w, 3)))


def _x_threshold(alpha):
    """``x_ = (1 + tau_) (1 + alpha / tau_)`` with ``tau_`` the zero of ``psi1`` above ``sqrt(alpha)``."""
    from scipy.optimize import brentq

    low = np.sqrt(alpha)  # psi1 > 0 there and decreases to -inf beyond
    high = 2.0 * low + 2.0
    while _psi1_tau(high, alpha) > 0.0:
        high *= 2.0
    tau = brentq(_psi1_tau, low, high, args=(alpha,), xtol=1e-14, rtol=1e-14)
    return (1.0 + tau) * (1.0 + alpha / tau)


def _psi1_tau(tau, alpha):
    return np.log(tau + 1.0) + alpha * np.log(tau / alpha + 1.0) - tau


def _estimate_sigma2(gamma, rows, cols, x_):
    """Noise variance minimising the EVB free energy, on the paper's interval for it.

    The free energy, up to terms free of ``sigma2``, is
    ``L log(sigma2) + sum_h x_h + sum_{h: x_h > x_} psi1(tau(x_h))`` with ``x_h = gamma_h^2 / (M sigma2)``.
    It is minimised over ``log(sigma2)``: a grid, then a bounded Brent search around the best point
    (sigma2 spans many orders of magnitude across kernels, so an absolute tolerance on sigma2 itself
    would be meaningless).
    """
    from scipy.optimize import minimize_scalar

    alpha = rows / cols
    squares = gamma**2
    upper = float(np.sum(squares)) / (rows * cols)
    if upper == 0.0:
        return 0.0
    # At most this many components can be kept (the paper's bound), which bounds sigma2 from below.
    most = min(int(np.ceil(rows / (1.0 + alpha))) - 1, rows - 1)
    lower = max(squares[most] / (cols * x_), float(np.mean(squares[most:])) / cols, upper * 1e-12)
    if lower >= upper:
        return upper

    def free_energy(log_sigma2):
        sigma2 = np.exp(log_sigma2)
        x = squares / (cols * sigma2)
        big = x[x > x_]
        tau = 0.5 * (big - (1.0 + alpha) + np.sqrt(np.maximum((big - (1.0 + alpha)) ** 2 - 4.0 * alpha, 0.0)))
        return rows * log_sigma2 + np.sum(x) + np.sum(_psi1_tau(tau, alpha))

    grid = np.linspace(np.log(lower), np.log(upper), 65)
    values = [free_energy(t) for t in grid]
    best = int(np.argmin(values))
    bracket = (grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)])
    refined = minimize_scalar(free_energy, bounds=bracket, method="bounded", options={"xatol": 1e-10})
    log_sigma2 = refined.x if refined.fun < values[best] else grid[best]
    return float(np.exp(log_sigma2))

