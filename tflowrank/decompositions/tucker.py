"""Tucker-2 factorizations of convolution kernels, on the two channel modes.

Kim et al. 2016, "Compression of Deep Convolutional Neural Networks for Fast and Low Power Mobile
Applications": a ``kh x kw`` convolution (cin -> cout) becomes a ``1 x 1`` convolution (cin -> r_in),
a ``kh x kw`` core convolution (r_in -> r_out) and a ``1 x 1`` convolution (r_out -> cout), from the
Tucker-2 decomposition ``W ~ core x_3 U_in x_4 U_out`` of the ``(kh, kw, cin, cout)`` kernel.

The factors are computed by HOSVD (leading left singular vectors of the mode-3 and mode-4
unfoldings) refined by HOOI, alternating least squares on orthonormal factors (de Lathauwer, De Moor
and Vandewalle 2000, "A Multilinear Singular Value Decomposition" and "On the Best Rank-(R1, ..., RN)
Approximation of Higher-Order Tensors"). ``U_in`` and ``U_out`` stay orthonormal, so the core carries
all the magnitude and each 1 x 1 output channel has unit norm before per-channel int8 quantization.

``tucker2_spatial_factors`` further splits the core spatially with the closed-form truncated SVD of
:func:`tflowrank.decompositions.spatial_factors`, giving a four-layer chain 1x1, kh x 1, 1 x kw, 1x1.
"""

import numbers
from dataclasses import dataclass

import numpy as np

from .svd import _check_kernel, spatial_factors

__all__ = [
    "TuckerFactors",
    "TuckerSpatialFactors",
    "tucker2_factors",
    "tucker2_rank",
    "tucker2_spatial_factors",
]


@dataclass(frozen=True)
class TuckerFactors:
    """Tucker-2 chain: 1x1 ``first``, kh x kw ``core``, 1x1 ``last``.

    Shapes: ``first`` (1, 1, cin, r_in), ``core`` (kh, kw, r_in, r_out), ``last`` (1, 1, r_out, cout).

    ``first`` and ``last`` have orthonormal columns and rows (the core carries the magnitude). The chain
    computes the convolution with kernel
    ``W_hat[i, j, c, o] = sum_{a, b} first[0, 0, c, a] * core[i, j, a, b] * last[0, 0, b, o]``.
    ``relative_error`` is ``||W - W_hat||_F / ||W||_F`` of the float64 factors; ``n_iter`` counts
    the HOOI sweeps after the HOSVD initialisation.
    """

    first: np.ndarray
    core: np.ndarray
    last: np.ndarray
    rank: tuple
    relative_error: float
    n_iter: int
    converged: bool


@dataclass(frozen=True)
class TuckerSpatialFactors:
    """Tucker-2 chain with a spatially separated core.

    ``first`` (1, 1, cin, r_in), ``vertical`` (kh, 1, r_in, s), ``horizontal`` (1, kw, s, r_out),
    ``last`` (1, 1, r_out, cout): the kernel ``W_hat[i, j, c, o] = sum_{a, t, b} first[0, 0, c, a]
    * vertical[i, 0, a, t] * horizontal[0, j, t, b] * last[0, 0, b, o]``.
    """

    first: np.ndarray
    vertical: np.ndarray
    horizontal: np.ndarray
    last: np.ndarray
    rank: tuple
    spatial_rank: int
    relative_error: float


def tucker2_rank(rank, cin, cout):
    """Resolve a Tucker-2 ``rank`` (an int for both channel modes, or a pair) to ``(r_in, r_out)``."""
    pair = tuple(rank) if isinstance(rank, (tuple, list)) else (rank, rank)
    ok = len(pair) == 2 and all(_is_int(r) for r in pair)
    if not (ok and 1 <= pair[0] <= cin and 1 <= pair[1] <= cout):
        raise ValueError(
            "`rank` must be an integer or a pair (r_in, r_out) of integers with 1 <= r_in <= "
            f"cin={cin} and 1 <= r_out <= cout={cout}. Received: rank={rank!r}"
        )
    return int(pair[0]), int(pair[1])


def tucker2_factors(kernel, rank, n_iter_max=100, tol=1e-4):
    """Tucker-2 factorization of a ``(kh, kw, cin, cout)`` kernel on its channel modes (Kim et al. 2016).

    HOSVD initialisation, then at most ``n_iter_max`` HOOI sweeps (de Lathauwer et al. 2000), stopped
    when a sweep lowers the relative error ``e`` by less than ``tol * e`` (or ``e`` is below 1e-7);
    ``n_iter_max=0`` gives the truncated HOSVD. HOOI gains most in its first sweeps (on trained
    kernels the error is within 1e-4 of its limit after 5 to 10); on kernels with a flat spectrum,
    random ones for instance, it creeps on for hundreds of sweeps, each as costly as the HOSVD, for
    gains of 1e-5: the relative stop is what keeps a VGG16 within seconds.
    ``rank`` is an int (both modes) or a pair ``(r_in, r_out)``. At ``rank=(cin, cout)`` the
    factorization is exact.
    """
    kernel = _check_kernel(kernel, ndim=4)
    kh, kw, cin, cout = kernel.shape
    r_in, r_out = tucker2_rank(rank, cin, cout)
    _check_iterations(n_iter_max, tol)
    w = kernel.astype(np.float64)
    norm = np.linalg.norm(w)
    # HOSVD: the leading left singular vectors of the mode-3 and mode-4 unfoldings.
    u_in = _leading_vectors(_unfold(w, 2), r_in)
    u_out = _leading_vectors(_unfold(w, 3), r_out)
    error, n_iter, converged = _pythagoras_error(_project(w, u_in, u_out), norm), 0, False
    while n_iter < n_iter_max and not converged:
        # HOOI: each factor is the best one for the other fixed, the leading subspace of the
        # kernel projected on the other factor; the error follows from the core by Pythagoras.
        u_in = _leading_vectors(_unfold(w @ u_out, 2), r_in)
        projected = np.swapaxes(w, 2, 3) @ u_in  # (kh, kw, cout, r_in)
        u_out = _leading_vectors(_unfold(projected, 2), r_out)
        previous, error = error, _pythagoras_error(u_out.T @ projected, norm)
        n_iter += 1
        converged = error < _RESOLUTION or previous - error < tol * previous
    u_in, u_out = _fix_signs(u_in), _fix_signs(u_out)
    core = _project(w, u_in, u_out)
    product = u_in @ core @ u_out.T
    return TuckerFactors(
        first=u_in[None, None].astype(kernel.dtype),
        core=core.astype(kernel.dtype),
        last=u_out.T[None, None].astype(kernel.dtype),
        rank=(r_in, r_out),
        relative_error=_relative_error(w, product, norm),
        n_iter=n_iter,
        converged=converged,
    )


def tucker2_spatial_factors(kernel, rank, spatial_rank=None, n_iter_max=100, tol=1e-4):
    """Tucker-2 (Kim et al. 2016) whose core is then split spatially (Jaderberg et al. 2014, scheme 2).

    The chain is 1x1 (cin -> r_in), kh x 1 (r_in -> s), 1 x kw (s -> r_out), 1x1 (r_out -> cout),
    where ``s = spatial_rank`` is the rank of the truncated SVD of the core unfolded to
    ``(kh * r_in, kw * r_out)``; by default its full rank ``min(kh * r_in, kw * r_out)``, which keeps
    the Tucker-2 error. ``relative_error`` is that of the whole chain against ``kernel``.
    """
    kernel = _check_kernel(kernel, ndim=4)
    kh, kw, cin, cout = kernel.shape
    r_in, r_out = tucker2_rank(rank, cin, cout)
    full = min(kh * r_in, kw * r_out)
    if spatial_rank is None:
        spatial_rank = full
    elif not (_is_int(spatial_rank) and 1 <= spatial_rank <= full):
        raise ValueError(
            f"`spatial_rank` must be None or an integer between 1 and the full rank {full} of the "
            f"{kh * r_in} x {kw * r_out} core unfolding. Received: spatial_rank={spatial_rank!r}"
        )
    tucker = tucker2_factors(kernel.astype(np.float64), (r_in, r_out), n_iter_max=n_iter_max, tol=tol)
    split = spatial_factors(tucker.core, int(spatial_rank))
    first, last = tucker.first[0, 0], tucker.last[0, 0]
    core = np.einsum("iat,jtb->ijab", split.vertical[:, 0], split.horizontal[0])
    product = first @ core @ last
    w = kernel.astype(np.float64)
    return TuckerSpatialFactors(
        first=tucker.first.astype(kernel.dtype),
        vertical=split.vertical.astype(kernel.dtype),
        horizontal=split.horizontal.astype(kernel.dtype),
        last=tucker.last.astype(kernel.dtype),
        rank=(r_in, r_out),
        spatial_rank=int(spatial_rank),
        relative_error=_relative_error(w, product, np.linalg.norm(w)),
    )


_RESOLUTION = 1e-7  # a relative error below this is exact in float32: nothing left to improve


def _unfold(w, mode):
    """Mode-``mode`` unfolding of a 4-way array: ``(w.shape[mode], product of the other sizes)``."""
    return np.moveaxis(w, mode, 0).reshape(w.shape[mode], -1)


def _project(w, u_in, u_out):
    """The Tucker-2 core ``W x_3 U_in^T x_4 U_out^T``, shape ``(kh, kw, r_in, r_out)``."""
    return u_in.T @ (w @ u_out)


def _leading_vectors(matrix, rank):
    """The ``rank`` leading left singular vectors of ``matrix``, from the eigenvectors of its Gram matrix.

    The Gram matrix is rows x rows, so this costs one matrix product whatever the unfolding's width;
    at full rank any orthonormal basis is exact, so the squared condition number does not matter.
    """
    _, vectors = np.linalg.eigh(matrix @ matrix.T)
    return vectors[:, ::-1][:, :rank].copy()


def _pythagoras_error(core, norm):
    """Relative error of an orthogonal projection from its core: ``||W||^2 - ||core||^2``."""
    if norm == 0.0:
        return 0.0
    return float(np.sqrt(max(norm**2 - np.sum(core**2), 0.0)) / norm)


def _relative_error(w, product, norm):
    if norm == 0.0:
        return 0.0
    return float(np.linalg.norm(w - product) / norm)


def _fix_signs(factor):
    """Flip columns so that each one's largest-magnitude entry is positive (a canonical, stable sign)."""
    rows = np.argmax(np.abs(factor), axis=0)
    signs = np.sign(factor[rows, np.arange(factor.shape[1])])
    signs[signs == 0] = 1.0
    return factor * signs


def _is_int(value):
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_iterations(n_iter_max, tol, least=0):
    if not (_is_int(n_iter_max) and n_iter_max >= least):
        kind = "non-negative" if least == 0 else "positive"
        raise ValueError(f"`n_iter_max` must be a {kind} integer. Received: n_iter_max={n_iter_max!r}")
    if not (isinstance(tol, numbers.Real) and not isinstance(tol, bool) and 0.0 <= tol < np.inf):
        raise ValueError(f"`tol` must be a finite non-negative number. Received: tol={tol!r}")
