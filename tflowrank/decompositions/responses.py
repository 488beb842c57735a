"""Output (response) approximation of a linear layer from data, with asymmetric reconstruction.

Zhang, Zou, He and Sun 2016, "Accelerating Very Deep Convolutional Networks for Classification and
Detection" (and Zhang et al. 2015, CVPR): the responses ``y`` (cout values per output position) of
a convolution lie near a low-dimensional subspace, so the layer can compute ``r`` responses and a
1 x 1 convolution can restore ``cout``. With the layers before it already approximated, the layer
sees inputs ``x_hat`` instead of ``x``; the asymmetric reconstruction fits the responses of the
ORIGINAL network ``y = W x + b`` from the responses ``y_hat = W x_hat + b`` the approximated network
can compute, so the errors of earlier layers are corrected rather than accumulated:

    minimise  sum || (y - y_bar) - M (y_hat - y_hat_bar) ||^2   over rank(M) <= r.

This is reduced-rank regression (Izenman 1975): ``B`` the least-squares map from centered
``y_hat`` to centered ``y`` (a small ridge keeps it defined), ``P`` the leading ``r`` eigenvectors
of the covariance of the fitted values ``B y_hat``, and ``M = P P^T B``. The layer becomes

    first  = W @ B^T @ P          (kh, kw, cin, r): the narrow layer, no bias
    second = P^T                   (1, 1, r, cout)
    bias   = y_bar - M (y_hat_bar - b)     the mean restored

Everything is computed from second moments accumulated batch by batch (``ResponseMoments``), so
the number of calibration positions is not limited by memory. Without earlier approximations
(``y_hat = y``) ``B = I`` and ``P`` spans the principal subspace of the responses (the symmetric
case of Zhang et al. 2015).
"""

from dataclasses import dataclass, field

import numpy as np

from .svd import _check_kernel

__all__ = ["ResponseMoments", "OutputFactors", "output_factors"]


@dataclass
class ResponseMoments:
    """Running sums of the target responses ``y`` and the approximated responses ``y_hat``.

    ``add(y, y_hat)`` takes two ``(n, cout)`` arrays of matching rows (the same output positions).
    """

    channels: int
    count: int = 0
    sum_y: np.ndarray = field(default=None)
    sum_y_hat: np.ndarray = field(default=None)
    yy: np.ndarray = field(default=None)
    y_hat_y_hat: np.ndarray = field(default=None)
    y_y_hat: np.ndarray = field(default=None)

    def __post_init__(self):
        c = self.channels
        self.sum_y, self.sum_y_hat = np.zeros(c), np.zeros(c)
        self.yy, self.y_hat_y_hat, self.y_y_hat = np.zeros((c, c)), np.zeros((c, c)), np.zeros((c, c))

    def add(self, y, y_hat):
        y = np.asarray(y, dtype=np.float64).reshape(-1, self.channels)
        y_hat = np.asarray(y_hat, dtype=np.float64).reshape(-1, self.channels)
        if y.shape != y_hat.shape:
            raise ValueError(f"`y` and `y_hat` must have the same shape. Received: y.shape={y.shape}, "
                             f"y_hat.shape={y_hat.shape}")
        self.count += len(y)
        self.sum_y += y.sum(axis=0)
        self.sum_y_hat += y_hat.sum(axis=0)
        self.yy += y.T @ y
        self.y_hat_y_hat += y_hat.T @ y_hat
        self.y_y_hat += y.T @ y_hat
        return self

    def centered(self):
        """Means and centered covariances (sums, not divided by the count)."""
        n = self.count
        mean_y, mean_y_hat = self.sum_y / n, self.sum_y_hat / n
        return (mean_y, mean_y_hat, self.yy - n * np.outer(mean_y, mean_y),
                self.y_hat_y_hat - n * np.outer(mean_y_hat, mean_y_hat),
                self.y_y_hat - n * np.outer(mean_y, mean_y_hat))


@dataclass(frozen=True)
class OutputFactors:
    """``first`` (.., cin, r), ``second`` (1, 1, r, cout) or (r, cout), ``bias`` (cout,).

    ``singular_values``: of the fitted (centered) responses, all ``cout`` of them, the spectrum an
    energy or VBMF rank rule reads. ``relative_error``: ``||y - y_approx|| / ||y||`` over the
    calibration responses.
    """

    first: np.ndarray
    second: np.ndarray
    bias: np.ndarray
    singular_values: np.ndarray
    rank: int
    relative_error: float


def fitted_spectrum(moments, ridge=1e-6):
    """Singular values of the fitted centered responses ``B y_hat``: what a rank rule reads."""
    _, _, _, cov_hat, cross = moments.centered()
    b = _regression(cov_hat, cross, ridge)
    eigenvalues = np.linalg.eigvalsh(b @ cov_hat @ b.T)[::-1]
    return np.sqrt(np.clip(eigenvalues, 0.0, None))


def output_factors(kernel, bias, moments, rank, ridge=1e-6):
    """Rank-``rank`` asymmetric output approximation of a layer with ``kernel`` and ``bias``.

    ``kernel`` is ``(kh, kw, cin, cout)`` or ``(in, cout)``; ``bias`` is ``(cout,)`` or None (zero).
    ``moments`` holds the layer's original-network responses ``y`` and approximated-network
    responses ``y_hat`` (both including the bias). ``ridge`` is relative to the mean variance of
    ``y_hat``.
    """
    kernel = np.asarray(kernel)
    kernel = _check_kernel(kernel, ndim=kernel.ndim)
    cout = kernel.shape[-1]
    if moments.channels != cout or moments.count < 2:
        raise ValueError(f"`moments` must hold at least 2 responses of {cout} channels. Received: "
                         f"channels={moments.channels}, count={moments.count}")
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= cout:
        raise ValueError(f"`rank` must be an integer between 1 and {cout}. Received: rank={rank!r}")
    b_vec = np.zeros(cout) if bias is None else np.asarray(bias, dtype=np.float64)
    mean_y, mean_y_hat, cov_y, cov_hat, cross = moments.centered()
    b = _regression(cov_hat, cross, ridge)
    fitted = b @ cov_hat @ b.T
    eigenvalues, vectors = np.linalg.eigh(fitted)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, vectors = eigenvalues[order], vectors[:, order]
    p = vectors[:, :rank]
    # deterministic signs: largest component of each vector positive
    p = p * np.where(p[np.abs(p).argmax(axis=0), range(rank)] < 0, -1.0, 1.0)
    m = p @ p.T @ b
    w = kernel.astype(np.float64).reshape(-1, cout)
    first = (w @ b.T @ p).reshape(*kernel.shape[:-1], rank)
    second = p.T.reshape((1, 1, rank, cout) if kernel.ndim == 4 else (rank, cout))
    new_bias = mean_y - m @ (mean_y_hat - b_vec)
    # ||y - (m y_hat + c)||^2 with c centering: centered residual, plus nothing from the means
    residual = np.trace(cov_y) - 2 * np.trace(m @ cross.T) + np.trace(m @ cov_hat @ m.T)
    total = float(moments.yy.trace())
    error = float(np.sqrt(max(residual, 0.0) / total)) if total > 0 else 0.0
    return OutputFactors(
        first=first.astype(kernel.dtype),
        second=second.astype(kernel.dtype),
        bias=new_bias.astype(kernel.dtype),
        singular_values=np.sqrt(np.clip(eigenvalues, 0.0, None)),
        rank=int(rank),
        relative_error=error,
    )


def _regression(cov_hat, cross, ridge):
    """``B`` minimising ``||y_c - B y_hat_c||^2``: ``cross @ inv(cov_hat + ridge I)``."""
    c = cov_hat.shape[0]
    scale = max(float(np.trace(cov_hat)) / c, 1e-12)
    return np.linalg.solve(cov_hat + ridge * scale * np.eye(c), cross.T).T
