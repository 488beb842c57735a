"""SVDConv2D: a kh x kw convolution (cin -> rank) followed by a 1 x 1 convolution (rank -> filters)."""

import keras
import numpy as np
from keras import ops

from .. import _shapes
from ..interop import Step
from ._base import FactorizedConv2D, KernelSVD

__all__ = ["SVDConv2D"]


@keras.saving.register_keras_serializable(package="tflowrank")
class SVDConv2D(KernelSVD, FactorizedConv2D):
    """Channel-factorized 2-D convolution from the truncated SVD of the ``(kh*kw*cin, cout)`` kernel.

    Computes ``conv(conv(x, K, kh x kw, cin -> rank), P, 1 x 1, rank -> filters) + bias``; the first
    step carries the strides, padding and dilation of the convolution it replaces.

    Args: as ``SpatialConv2D``. Weights: ``kernel_spatial`` ``(kh, kw, cin, rank)``,
    ``kernel_pointwise`` ``(1, 1, rank, filters)``, ``bias`` ``(filters,)``.

    ``SVDConv2D.from_layer(conv, rank)`` builds one from a trained ``keras.layers.Conv2D``.
    """

    method = "svd"
    factors = (("kernel_spatial", 3), ("kernel_pointwise", 2))
    rank_axes = (("kernel_spatial", 3),)
    rank_groups = ((("kernel_spatial", 3), ("kernel_pointwise", 2)),)
    needs_spatial_extent = False

    @classmethod
    def factor_shapes(cls, layer, rank, input_channels):
        kh, kw = layer.kernel_size
        return ((kh, kw, input_channels, rank), (1, 1, rank, layer.filters))

    def call(self, inputs):
        x = ops.conv(inputs, self._factor("kernel_spatial"), strides=self.strides, padding=self.padding,
                     dilation_rate=self.dilation_rate)
        x = ops.conv(self._between(x, 0), self._factor("kernel_pointwise"), strides=1, padding="valid")
        return self._finish(x)

    def _steps(self, input_shape):
        return [Step("conv", "spatial", self._numpy(self.kernel_spatial), strides=self.strides,
                     padding=self.padding, dilation=self.dilation_rate),
                Step("conv", "pointwise", self._numpy(self.kernel_pointwise))]

    def dense_kernel(self):
        return np.einsum("ijcr,ro->ijco", self._active_numpy("kernel_spatial"),
                         self._active_numpy("kernel_pointwise")[0, 0])

    @classmethod
    def full_rank_of(cls, layer, input_channels):
        kh, kw = layer.kernel_size
        return min(kh * kw * input_channels, layer.filters)

    @classmethod
    def macs_for(cls, layer, rank, input_shape):
        first = _shapes.conv_macs(input_shape, layer.kernel_size, layer.strides,
                                  layer.dilation_rate, layer.padding, rank)
        if first is None:
            return None
        ho, wo = _shapes.conv_output_hw(input_shape[1:3], layer.kernel_size, layer.strides,
                                        layer.dilation_rate, layer.padding)
        return first + ho * wo * rank * layer.filters
