"""SpatialConv2D: a kh x kw convolution as a kh x 1 convolution followed by a 1 x kw one."""

import keras
import numpy as np
from keras import ops

from .. import _shapes
from ..decompositions import spatial_factors, spatial_unfolding
from ..interop import Step
from ..ranks import matrix_rank
from ._base import FactorizedConv2D

__all__ = ["SpatialConv2D"]


@keras.saving.register_keras_serializable(package="tflowrank")
class SpatialConv2D(FactorizedConv2D):
    """Spatially separated 2-D convolution (Jaderberg et al. 2014, scheme 2).

    Computes ``conv(conv(x, V, kh x 1, cin -> rank), H, 1 x kw, rank -> filters) + bias``. The
    vertical step carries the row stride and row dilation, the horizontal step the column ones, so
    the chain has exactly the geometry of the ``kh x kw`` convolution it replaces with either padding.

    Args:
        filters: output channels.
        kernel_size: ``(kh, kw)`` of the convolution being approximated.
        rank: channels between the two steps.
        strides, padding, dilation_rate, activation, use_bias: as in ``keras.layers.Conv2D``.
        reconstruction_error: relative Frobenius error of the initialisation, recorded by
            ``from_layer`` (None when the layer was not built from a trained one).

    Weights: ``kernel_vertical`` ``(kh, 1, cin, rank)``, ``kernel_horizontal``
    ``(1, kw, rank, filters)``, ``bias`` ``(filters,)``.

    ``SpatialConv2D.from_layer(conv, rank)`` builds one from a trained ``keras.layers.Conv2D``.
    """

    method = "spatial"
    factors = (("kernel_vertical", 3), ("kernel_horizontal", 2))
    rank_axes = (("kernel_vertical", 3),)
    rank_groups = ((("kernel_vertical", 3), ("kernel_horizontal", 2)),)

    @classmethod
    def factor_shapes(cls, layer, rank, input_channels):
        kh, kw = layer.kernel_size
        return ((kh, 1, input_channels, rank), (1, kw, rank, layer.filters))

    def call(self, inputs):
        (sh, sw), (dh, dw) = self.strides, self.dilation_rate
        x = ops.conv(inputs, self._factor("kernel_vertical"), strides=(sh, 1), padding=self.padding,
                     dilation_rate=(dh, 1))
        x = ops.conv(self._between(x, 0), self._factor("kernel_horizontal"), strides=(1, sw),
                     padding=self.padding, dilation_rate=(1, dw))
        return self._finish(x)

    def _steps(self, input_shape):
        (sh, sw), (dh, dw) = self.strides, self.dilation_rate
        return [Step("conv", "vertical", self._numpy(self.kernel_vertical), strides=(sh, 1),
                     padding=self.padding, dilation=(dh, 1)),
                Step("conv", "horizontal", self._numpy(self.kernel_horizontal), strides=(1, sw),
                     padding=self.padding, dilation=(1, dw))]

    def dense_kernel(self):
        vertical = self._active_numpy("kernel_vertical")[:, 0]  # (kh, cin, r)
        horizontal = self._active_numpy("kernel_horizontal")[0]  # (kw, r, cout)
        return np.einsum("icr,jro->ijco", vertical, horizontal)

    @classmethod
    def full_rank_of(cls, layer, input_channels):
        kh, kw = layer.kernel_size
        return min(kh * input_channels, kw * layer.filters)

    @classmethod
    def macs_for(cls, layer, rank, input_shape):
        _, h, w, cin = input_shape
        (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
        ho = _shapes.conv_output_size(h, kh, sh, dh, layer.padding)
        wo = _shapes.conv_output_size(w, kw, sw, dw, layer.padding)
        if None in (ho, wo, w, cin):
            return None
        # the vertical step keeps the full input width; the horizontal one produces the output
        return ho * w * kh * cin * rank + ho * wo * kw * rank * layer.filters

    @classmethod
    def energy_spectra(cls, layer):
        return (np.linalg.svd(spatial_unfolding(cls._numpy(layer.kernel)).astype(np.float64),
                              compute_uv=False),)

    @classmethod
    def vbmf_rank(cls, layer):
        return matrix_rank(spatial_unfolding(cls._numpy(layer.kernel)), ("vbmf",))

    @classmethod
    def _decompose(cls, kernel, rank):
        result = spatial_factors(kernel, rank)
        return (result.vertical, result.horizontal), result.relative_error
