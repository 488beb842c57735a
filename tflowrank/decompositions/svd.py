"""Truncated-SVD factorizations of convolution and dense kernels.

Both are closed-form optima in the Frobenius norm (Eckart-Young): the rank-r truncation of a
matrix unfolding of the kernel, so the squared approximation error is exactly the sum of the
discarded squared singular values.

- Spatial (Jaderberg, Vedaldi and Zisserman 2014, "Speeding up Convolutional Neural Networks with
  Low Rank Expansions", scheme 2; closed form as in Tai et al. 2016, "Convolutional neural networks
  with low-rank regularization"): a ``kh x kw`` convolution becomes a ``kh x 1`` convolution
  (cin -> r) followed by a ``1 x kw`` one (r -> cout), from the SVD of the kernel unfolded to
  ``(kh * cin, kw * cout)``.
- Channel SVD (Denton et al. 2014; Zhang et al. 2016 without data): a ``kh x kw`` convolution
  (cin -> r) followed by a ``1 x 1`` one (r -> cout), from the SVD of the kernel unfolded to
  ``(kh * kw * cin, cout)``; for a dense kernel ``(in, out)``, two dense layers in -> r -> out.

The singular values are split evenly (``sqrt(s)`` on each side) so both factors have comparable
dynamic range, which matters once they are quantized to int8 per channel.
"""

from dataclasses import dataclass

import numpy as np

__all__ = [
    "SVDFactors",
    "SpatialFactors",
    "spatial_factors",
    "spatial_unfolding",
    "svd_factors",
    "truncation_error",
]


@dataclass(frozen=True)
class SpatialFactors:
    """``vertical`` (kh, 1, cin, r) and ``horizontal`` (1, kw, r, cout) of a spatial factorization."""

    vertical: np.ndarray
    horizontal: np.ndarray
    singular_values: np.ndarray
    rank: int
    relative_error: float


@dataclass(frozen=True)
class SVDFactors:
    """``first`` (.., cin, r) and ``second`` (.., r, cout) of a channel SVD factorization.

    For a convolution kernel ``first`` is ``(kh, kw, cin, r)`` and ``second`` is ``(1, 1, r, cout)``;
    for a dense kernel they are ``(in, r)`` and ``(r, out)``.
    """

    first: np.ndarray
    second: np.ndarray
    singular_values: np.ndarray
    rank: int
    relative_error: float


def spatial_unfolding(kernel):
    """Unfold a ``(kh, kw, cin, cout)`` kernel to the ``(kh * cin, kw * cout)`` matrix M.

    ``M[(i, c), (j, o)] = kernel[i, j, c, o]``: a rank-r factorization of M is exactly a ``kh x 1``
    convolution with r outputs followed by a ``1 x kw`` convolution.
    """
    kernel = _check_kernel(kernel, ndim=4)
    kh, kw, cin, cout = kernel.shape
    return kernel.transpose(0, 2, 1, 3).reshape(kh * cin, kw * cout)


def truncation_error(singular_values, rank):
    """Relative Frobenius error of the best rank-``rank`` approximation, from the singular values."""
    s = np.asarray(singular_values, dtype=np.float64)
    total = float(np.sum(s**2))
    if total == 0.0:
        return 0.0
    return float(np.sqrt(np.sum(s[rank:] ** 2) / total))


def spatial_factors(kernel, rank):
    """Best rank-``rank`` spatial factorization of a ``(kh, kw, cin, cout)`` kernel."""
    kernel = _check_kernel(kernel, ndim=4)
    kh, kw, cin, cout = kernel.shape
    u, s, vt = _truncated(spatial_unfolding(kernel), rank)
    vertical = u.reshape(kh, cin, rank)[:, None, :, :]
    horizontal = vt.reshape(rank, kw, cout).transpose(1, 0, 2)[None, :, :, :]
    return SpatialFactors(
        vertical=vertical.astype(kernel.dtype),
        horizontal=horizontal.astype(kernel.dtype),
        singular_values=s,
        rank=rank,
        relative_error=truncation_error(s, rank),
    )


def svd_factors(kernel, rank):
    """Best rank-``rank`` channel factorization of a conv (kh, kw, cin, cout) or dense (in, out) kernel."""
    kernel = np.asarray(kernel)
    if kernel.ndim not in (2, 4):
        raise ValueError(
            "`kernel` must be a dense kernel (in, out) or a convolution kernel (kh, kw, cin, cout). "
            f"Received: kernel.shape={kernel.shape}"
        )
    kernel = _check_kernel(kernel, ndim=kernel.ndim)
    cout = kernel.shape[-1]
    u, s, vt = _truncated(kernel.reshape(-1, cout), rank)
    if kernel.ndim == 4:
        first = u.reshape(*kernel.shape[:3], rank)
        second = vt.reshape(1, 1, rank, cout)
    else:
        first, second = u, vt
    return SVDFactors(
        first=first.astype(kernel.dtype),
        second=second.astype(kernel.dtype),
        singular_values=s,
        rank=rank,
        relative_error=truncation_error(s, rank),
    )


def _truncated(matrix, rank):
    """Return ``(u * sqrt(s), s_all, sqrt(s) * vt)`` truncated to ``rank``, computed in float64."""
    full = min(matrix.shape)
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= full:
        raise ValueError(
            f"`rank` must be an integer between 1 and the full rank {full} of the "
            f"{matrix.shape[0]} x {matrix.shape[1]} unfolding. Received: rank={rank!r}"
        )
    rank = int(rank)
    matrix = matrix.astype(np.float64)
    if full < _GRAM_FROM:
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        root = np.sqrt(s[:rank])
        return u[:, :rank] * root, s, root[:, None] * vt[:rank]
    # Large unfoldings (VGG's 1536 x 1536): the eigenvectors of the smaller Gram matrix, about twice
    # as fast as the SVD. The squared condition number only blurs singular values below
    # sqrt(eps) * s_max, which carry no energy; the kept factor is the exact projection of the
    # matrix on the leading subspace, so the product is as accurate as the SVD's.
    tall = matrix.shape[0] >= matrix.shape[1]
    gram = matrix.T @ matrix if tall else matrix @ matrix.T
    values, vectors = np.linalg.eigh(gram)
    values, vectors = np.maximum(values[::-1], 0.0), vectors[:, ::-1][:, :rank]
    s = np.sqrt(values)
    root = np.sqrt(s[:rank])
    projected = matrix @ vectors if tall else vectors.T @ matrix  # the other side, times s
    scale = np.divide(1.0, root, out=np.zeros_like(root), where=s[:rank] > s[0] * _TINY)
    if tall:
        return projected * scale, s, root[:, None] * vectors.T
    return vectors * root, s, scale[:, None] * projected


# Unfoldings with both sides at least this long are truncated from a Gram matrix, not an SVD.
_GRAM_FROM = 512
# Singular values below this fraction of the largest count as zero when the factors are balanced.
_TINY = 1e-12


def _check_kernel(kernel, ndim, name="kernel"):
    """Validate a finite floating-point array of ``ndim`` dimensions named ``name`` in errors."""
    kernel = np.asarray(kernel)
    if kernel.ndim != ndim or kernel.size == 0:
        raise ValueError(f"`{name}` must be a non-empty array of {ndim} dimensions. "
                         f"Received: {name}.shape={kernel.shape}")
    if not np.issubdtype(kernel.dtype, np.floating):
        raise TypeError(f"`{name}` must be a floating-point array. Received: {name}.dtype={kernel.dtype}")
    if not np.all(np.isfinite(kernel)):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return kernel
