"""Decompositions of convolution and dense kernels: plain NumPy in, named NumPy results out.

Nothing here imports Keras or TensorFlow. Kernels use the Keras layout: ``(kh, kw, cin, cout)`` for
convolutions and ``(in, out)`` for dense layers.
"""

from .svd import (
    SpatialFactors,
    SVDFactors,
    spatial_factors,
    spatial_unfolding,
    svd_factors,
    truncation_error,
)

__all__ = [
    "SVDFactors",
    "SpatialFactors",
    "spatial_factors",
    "spatial_unfolding",
    "svd_factors",
    "truncation_error",
]
