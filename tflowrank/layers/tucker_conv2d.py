"""TuckerConv2D: 1 x 1 (cin -> r_in), kh x kw core (r_in -> r_out), 1 x 1 (r_out -> filters)."""

import keras
import numpy as np
from keras import ops

from .. import _shapes
from ..decompositions import tucker2_factors, vbmf_ranks_tucker2
from ..interop import Step
from ._base import FactorizedConv2D

__all__ = ["TuckerConv2D", "channel_spectra"]


def channel_spectra(kernel):
    """Singular values of the mode-3 (cin) and mode-4 (cout) unfoldings of a conv kernel."""
    w = np.asarray(kernel, dtype=np.float64)
    return tuple(np.linalg.svd(np.moveaxis(w, mode, 0).reshape(w.shape[mode], -1), compute_uv=False)
                 for mode in (2, 3))


@keras.saving.register_keras_serializable(package="tflowrank")
class TuckerConv2D(FactorizedConv2D):
    """Tucker-2 factorized 2-D convolution (Kim et al. 2016).

    Computes ``conv1x1(conv_kxk(conv1x1(x, U_in), core), U_out) + bias``: the core carries the
    strides, padding and dilation; the 1 x 1 steps have no bias, so zero padding of the core's input
    is exactly zero padding of ``x``.

    Args: as ``SpatialConv2D``; ``rank`` is an int (both modes) or a pair ``(r_in, r_out)``.
    Weights: ``kernel_first`` ``(1, 1, cin, r_in)``, ``kernel_core`` ``(kh, kw, r_in, r_out)``,
    ``kernel_last`` ``(1, 1, r_out, filters)``, ``bias`` ``(filters,)``.
    """

    method = "tucker2"
    rank_arity = 2
    factors = (("kernel_first", 3), ("kernel_core", 2), ("kernel_last", 2))
    rank_axes = (("kernel_first", 3), ("kernel_last", 2))
    rank_groups = ((("kernel_first", 3), ("kernel_core", 2)), (("kernel_core", 3), ("kernel_last", 2)))

    @classmethod
    def factor_shapes(cls, layer, rank, input_channels):
        (kh, kw), (r_in, r_out) = layer.kernel_size, rank
        return ((1, 1, input_channels, r_in), (kh, kw, r_in, r_out), (1, 1, r_out, layer.filters))

    def call(self, inputs):
        x = ops.conv(inputs, self._factor("kernel_first"), strides=1, padding="valid")
        x = ops.conv(self._between(x, 0), self._factor("kernel_core"), strides=self.strides,
                     padding=self.padding, dilation_rate=self.dilation_rate)
        x = ops.conv(self._between(x, 1), self._factor("kernel_last"), strides=1, padding="valid")
        return self._finish(x)

    def _steps(self, input_shape):
        return [Step("conv", "first", self._numpy(self.kernel_first)),
                Step("conv", "core", self._numpy(self.kernel_core), strides=self.strides,
                     padding=self.padding, dilation=self.dilation_rate),
                Step("conv", "last", self._numpy(self.kernel_last))]

    def dense_kernel(self):
        return np.einsum("ca,ijab,bo->ijco", self._active_numpy("kernel_first")[0, 0],
                         self._active_numpy("kernel_core"), self._active_numpy("kernel_last")[0, 0])

    @classmethod
    def full_rank_of(cls, layer, input_channels):
        return (int(input_channels), int(layer.filters))

    @classmethod
    def macs_for(cls, layer, rank, input_shape):
        r_in, r_out = cls.normalize_rank(rank)
        _, h, w, cin = input_shape
        core = _shapes.conv_macs((None, h, w, r_in), layer.kernel_size, layer.strides,
                                 layer.dilation_rate, layer.padding, r_out)
        if core is None or cin is None:
            return None
        ho, wo = _shapes.conv_output_hw((h, w), layer.kernel_size, layer.strides,
                                        layer.dilation_rate, layer.padding)
        return h * w * cin * r_in + core + ho * wo * r_out * layer.filters

    @classmethod
    def energy_spectra(cls, layer):
        return channel_spectra(cls.source_kernel(layer))

    @classmethod
    def vbmf_rank(cls, layer):
        return vbmf_ranks_tucker2(cls.source_kernel(layer))

    @classmethod
    def _decompose(cls, kernel, rank):
        result = tucker2_factors(kernel, rank)
        return (result.first, result.core, result.last), result.relative_error
