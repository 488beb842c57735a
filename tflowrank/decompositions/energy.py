"""Rank by retained energy: the smallest truncation keeping a fraction of the squared singular values.

The cumulative-percentage-of-variation rule of PCA (Jolliffe 2002, "Principal Component Analysis",
section 6.1.1) applied to the singular values of a kernel unfolding. By Eckart-Young the relative
Frobenius error of the rank-r truncation is ``sqrt(1 - kept energy)``, so ``energy = 1 - e**2``
asks for the smallest rank whose truncation error is at most ``e``.
"""

import numbers

import numpy as np

__all__ = ["energy_rank"]


def energy_rank(singular_values, energy):
    """Smallest ``r >= 1`` with ``sum(s[:r] ** 2) / sum(s ** 2) >= energy``; 1 for a zero spectrum.

    ``singular_values`` is a non-empty 1-D array sorted in non-increasing order (as SVD returns them);
    ``energy`` is in (0, 1].
    """
    if isinstance(energy, bool) or not isinstance(energy, numbers.Real) or not 0.0 < energy <= 1.0:
        raise ValueError(f"`energy` must be a number in (0, 1]. Received: energy={energy!r}")
    s = np.asarray(singular_values)
    if s.ndim != 1 or s.size == 0 or not np.issubdtype(s.dtype, np.number) or np.iscomplexobj(s):
        raise ValueError(
            "`singular_values` must be a non-empty 1-D array of real numbers. "
            f"Received: singular_values.shape={s.shape}, dtype={s.dtype}"
        )
    s = s.astype(np.float64)
    if not np.all(np.isfinite(s)) or np.any(s < 0) or np.any(np.diff(s) > 0):
        raise ValueError(
            "`singular_values` must be finite, non-negative and sorted in non-increasing order. "
            f"Received: singular_values={s.tolist() if s.size <= 8 else s[:8].tolist() + ['...']}"
        )
    cumulative = np.cumsum(s**2)
    if cumulative[-1] == 0.0:
        return 1
    # cumulative[-1] is the total itself, so the last ratio is exactly 1.0 and energy=1.0 is reached.
    return int(np.searchsorted(cumulative / cumulative[-1], energy, side="left")) + 1
