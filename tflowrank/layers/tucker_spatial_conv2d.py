"""TuckerSpatialConv2D: 1 x 1, kh x 1, 1 x kw, 1 x 1: Tucker-2 with a spatially separated core."""

import keras
import numpy as np
from keras import ops

from .. import _shapes
from ..decompositions import energy_rank, tucker2_spatial_factors, vbmf_ranks_tucker2
from ..interop import Step
from ._base import FactorizedConv2D
from .tucker_conv2d import channel_spectra

__all__ = ["TuckerSpatialConv2D"]


@keras.saving.register_keras_serializable(package="tflowrank")
class TuckerSpatialConv2D(FactorizedConv2D):
    """Spatial and filter low-rank combined: Tucker-2 whose core is split into kh x 1 and 1 x kw.

    Computes ``conv1x1(conv_1xkw(conv_khx1(conv1x1(x, U_in), V), H), U_out) + bias`` with the row
    stride and dilation on the kh x 1 step and the column ones on the 1 x kw step.

    ``rank`` is ``(r_in, r_mid, r_out)``: the Tucker ranks of the two channel modes and the rank
    between the two spatial steps; an int stands for all three, a pair ``(r_in, r_out)`` takes
    ``r_mid = min(r_in, r_out)``. Full rank, where the chain is exact, is
    ``(cin, min(kh * cin, kw * filters), filters)``.
    Weights: ``kernel_first`` ``(1, 1, cin, r_in)``, ``kernel_vertical`` ``(kh, 1, r_in, r_mid)``,
    ``kernel_horizontal`` ``(1, kw, r_mid, r_out)``, ``kernel_last`` ``(1, 1, r_out, filters)``.
    """

    method = "tucker2_spatial"
    rank_arity = 3
    factors = (("kernel_first", 3), ("kernel_vertical", 3), ("kernel_horizontal", 2),
               ("kernel_last", 2))
    rank_axes = (("kernel_first", 3), ("kernel_vertical", 3), ("kernel_last", 2))
    rank_groups = ((("kernel_first", 3), ("kernel_vertical", 2)),
                   (("kernel_vertical", 3), ("kernel_horizontal", 2)),
                   (("kernel_horizontal", 3), ("kernel_last", 2)))

    @classmethod
    def normalize_rank(cls, rank):
        if isinstance(rank, (tuple, list)) and len(rank) == 2:
            rank = (rank[0], min(rank), rank[1])
        return super().normalize_rank(rank)

    @classmethod
    def factor_shapes(cls, layer, rank, input_channels):
        (kh, kw), (r_in, r_mid, r_out) = layer.kernel_size, rank
        return ((1, 1, input_channels, r_in), (kh, 1, r_in, r_mid), (1, kw, r_mid, r_out),
                (1, 1, r_out, layer.filters))

    def call(self, inputs):
        (sh, sw), (dh, dw) = self.strides, self.dilation_rate
        x = ops.conv(inputs, self._factor("kernel_first"), strides=1, padding="valid")
        x = ops.conv(self._between(x, 0), self._factor("kernel_vertical"), strides=(sh, 1),
                     padding=self.padding, dilation_rate=(dh, 1))
        x = ops.conv(self._between(x, 1), self._factor("kernel_horizontal"), strides=(1, sw),
                     padding=self.padding, dilation_rate=(1, dw))
        x = ops.conv(self._between(x, 2), self._factor("kernel_last"), strides=1, padding="valid")
        return self._finish(x)

    def feasible_rank(self, rank):
        r_in, r_mid, r_out = rank
        kh, kw = self.kernel_size
        return (r_in, min(r_mid, kh * r_in, kw * r_out), r_out)

    def _steps(self, input_shape):
        (sh, sw), (dh, dw) = self.strides, self.dilation_rate
        return [Step("conv", "first", self._numpy(self.kernel_first)),
                Step("conv", "vertical", self._numpy(self.kernel_vertical), strides=(sh, 1),
                     padding=self.padding, dilation=(dh, 1)),
                Step("conv", "horizontal", self._numpy(self.kernel_horizontal), strides=(1, sw),
                     padding=self.padding, dilation=(1, dw)),
                Step("conv", "last", self._numpy(self.kernel_last))]

    def dense_kernel(self):
        return np.einsum("ca,iam,jmb,bo->ijco", self._active_numpy("kernel_first")[0, 0],
                         self._active_numpy("kernel_vertical")[:, 0],
                         self._active_numpy("kernel_horizontal")[0],
                         self._active_numpy("kernel_last")[0, 0])

    @classmethod
    def full_rank_of(cls, layer, input_channels):
        kh, kw = layer.kernel_size
        cin, cout = int(input_channels), int(layer.filters)
        return (cin, min(kh * cin, kw * cout), cout)

    @classmethod
    def rank_candidates(cls, layer, input_channels):
        # grow the Tucker ranks in proportion, with r_mid = min(r_in, r_out)
        cin, cout = int(input_channels), int(layer.filters)
        steps = max(cin, cout)
        pairs = ((max(1, round(cin * k / steps)), max(1, round(cout * k / steps)))
                 for k in range(1, steps + 1))
        return list(dict.fromkeys(cls.normalize_rank(pair) for pair in pairs))

    @classmethod
    def macs_for(cls, layer, rank, input_shape):
        r_in, r_mid, r_out = cls.normalize_rank(rank)
        _, h, w, cin = input_shape
        (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
        ho = _shapes.conv_output_size(h, kh, sh, dh, layer.padding)
        wo = _shapes.conv_output_size(w, kw, sw, dw, layer.padding)
        if None in (h, w, ho, wo, cin):
            return None
        return (h * w * cin * r_in + ho * w * kh * r_in * r_mid + ho * wo * kw * r_mid * r_out
                + ho * wo * r_out * layer.filters)

    # the channel ranks come from the criterion, the middle rank is min(r_in, r_out) (documented)
    @classmethod
    def energy_spectra(cls, layer):
        return channel_spectra(cls._numpy(layer.kernel))

    @classmethod
    def rank_from_energy(cls, spectra, share):
        return cls.normalize_rank(tuple(energy_rank(s, share) for s in spectra))

    @classmethod
    def vbmf_rank(cls, layer):
        return cls.normalize_rank(vbmf_ranks_tucker2(cls._numpy(layer.kernel)))

    @classmethod
    def _decompose(cls, kernel, rank):
        r_in, r_mid, r_out = rank
        kh, kw = kernel.shape[:2]
        if r_mid > min(kh * r_in, kw * r_out):
            raise ValueError(
                f"`rank` (r_in, r_mid, r_out) must have r_mid <= min(kh * r_in, kw * r_out) = "
                f"{min(kh * r_in, kw * r_out)}, the full rank of the core. Received: rank={rank!r}"
            )
        result = tucker2_spatial_factors(kernel, (r_in, r_out), spatial_rank=r_mid)
        return ((result.first, result.vertical, result.horizontal, result.last),
                result.relative_error)
