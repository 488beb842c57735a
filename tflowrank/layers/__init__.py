"""tflowrank's factorized Keras layers. Importing this module registers them for ``.keras`` loading."""

from .. import quantizers as _quantizers  # noqa: F401  registers the QAT layers for loading
from ._base import FactorizedLayer
from .conv1d import CPConv1D, SVDConv1D, TuckerConv1D
from .cp_conv2d import CPConv2D
from .spatial_conv2d import SpatialConv2D
from .svd_conv2d import SVDConv2D
from .svd_dense import SVDDense
from .tucker_conv2d import TuckerConv2D
from .tucker_spatial_conv2d import TuckerSpatialConv2D

__all__ = ["CPConv1D", "CPConv2D", "FactorizedLayer", "SVDConv1D", "SVDConv2D", "SVDDense", "SpatialConv2D",
           "TuckerConv1D", "TuckerConv2D", "TuckerSpatialConv2D"]
