"""tflowrank's factorized Keras layers. Importing this module registers them for ``.keras`` loading."""

from ._base import FactorizedLayer
from .spatial_conv2d import SpatialConv2D
from .svd_conv2d import SVDConv2D
from .svd_dense import SVDDense

__all__ = ["FactorizedLayer", "SpatialConv2D", "SVDConv2D", "SVDDense"]
