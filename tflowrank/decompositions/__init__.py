"""Decompositions of convolution and dense kernels: plain NumPy in, named NumPy results out.

Nothing here imports Keras or TensorFlow. Kernels use the Keras layout: ``(kh, kw, cin, cout)`` for
convolutions and ``(in, out)`` for dense layers.
"""

from .cp import CPFactors, cp_factors
from .energy import energy_rank
from .least_squares import NormalEquations
from .responses import OutputFactors, ResponseMoments, fitted_spectrum, output_factors
from .svd import (
    SpatialFactors,
    SVDFactors,
    spatial_factors,
    spatial_unfolding,
    svd_factors,
    truncation_error,
)
from .tucker import (
    TuckerFactors,
    TuckerSpatialFactors,
    tucker2_factors,
    tucker2_rank,
    tucker2_spatial_factors,
)
from .vbmf import VBMFResult, evbmf, vbmf_rank, vbmf_ranks_tucker2

__all__ = [
    "CPFactors",
    "NormalEquations",
    "OutputFactors",
    "ResponseMoments",
    "SVDFactors",
    "SpatialFactors",
    "TuckerFactors",
    "TuckerSpatialFactors",
    "VBMFResult",
    "cp_factors",
    "energy_rank",
    "evbmf",
    "fitted_spectrum",
    "output_factors",
    "spatial_factors",
    "spatial_unfolding",
    "svd_factors",
    "truncation_error",
    "tucker2_factors",
    "tucker2_rank",
    "tucker2_spatial_factors",
    "vbmf_rank",
    "vbmf_ranks_tucker2",
]
