"""CPConv2D: 1 x 1 (cin -> R), depthwise kh x 1, depthwise 1 x kw, 1 x 1 (R -> filters)."""

import keras
import numpy as np
from keras import ops

from .. import _shapes
from ..decompositions import cp_factors, energy_rank, vbmf_ranks_tucker2
from ..interop import Step
from ._base import FactorizedConv2D
from .tucker_conv2d import channel_spectra

__all__ = ["CPConv2D", "CPRank"]


def _same_pads(size, kernel_size, strides):
    """(before, after) padding of TensorFlow's "same" for each of the two spatial dimensions."""
    pads = []
    for n, k, s in zip(size, kernel_size, strides):
        total = ops.maximum((-(-n // s) - 1) * s + k - n, 0) if not isinstance(n, int) \
            else max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


class CPRank:
    """Spectral classmethods of the CP chains (``CPConv2D``, ``CPConv1D``): CP has no spectrum of
    its own, so its rank is the larger of the Tucker-2 channel-mode ranks."""

    @classmethod
    def energy_spectra(cls, layer):
        return channel_spectra(cls.source_kernel(layer))

    @classmethod
    def rank_from_energy(cls, spectra, share):
        return max(energy_rank(s, share) for s in spectra)

    @classmethod
    def vbmf_rank(cls, layer):
        return max(vbmf_ranks_tucker2(cls.source_kernel(layer)))


@keras.saving.register_keras_serializable(package="tflowrank")
class CPConv2D(CPRank, FactorizedConv2D):
    """CP-factorized 2-D convolution (Lebedev et al. 2015).

    Computes ``conv1x1(dw_1xkw(dw_khx1(conv1x1(x, A), V), H), B) + bias`` where the middle steps are
    depthwise convolutions over the R components, with the geometry of the kh x kw convolution:
    at stride 1 each step pads and dilates its own dimension; with a stride (TensorFlow's depthwise
    kernels take equal row and column strides only) the input is padded explicitly, the vertical
    step runs densely and the horizontal step carries the stride.

    Args: as ``SpatialConv2D``; ``rank`` is the CP rank R (any positive int up to the generic bound
    of a 4-way tensor). ``from_layer`` runs CP-ALS from an SVD-based start with a fixed seed; the
    relative reconstruction error it reaches is recorded in ``reconstruction_error``.
    Weights: ``kernel_pointwise_in`` ``(1, 1, cin, R)``, ``kernel_vertical`` ``(kh, 1, R, 1)``,
    ``kernel_horizontal`` ``(1, kw, R, 1)`` (depthwise layout), ``kernel_pointwise_out``
    ``(1, 1, R, filters)``, ``bias`` ``(filters,)``.
    """

    method = "cp"
    factors = (("kernel_pointwise_in", 3), ("kernel_vertical", 2), ("kernel_horizontal", 2),
               ("kernel_pointwise_out", 2))
    rank_axes = (("kernel_pointwise_in", 3),)
    rank_groups = ((("kernel_pointwise_in", 3), ("kernel_vertical", 2), ("kernel_horizontal", 2),
                    ("kernel_pointwise_out", 2)),)

    @classmethod
    def factor_shapes(cls, layer, rank, input_channels):
        kh, kw = layer.kernel_size
        return ((1, 1, input_channels, rank), (kh, 1, rank, 1), (1, kw, rank, 1),
                (1, 1, rank, layer.filters))

    def call(self, inputs):
        (sh, sw), (dh, dw) = self.strides, self.dilation_rate
        x = ops.conv(inputs, self._factor("kernel_pointwise_in"), strides=1, padding="valid")
        x = self._between(x, 0)
        vertical, horizontal = self._factor("kernel_vertical"), self._factor("kernel_horizontal")
        if (sh, sw) == (1, 1):  # each step pads its own dimension: the k x k geometry exactly
            x = ops.depthwise_conv(x, vertical, strides=1, padding=self.padding,
                                   dilation_rate=(dh, 1))
            x = ops.depthwise_conv(self._between(x, 1), horizontal, strides=1,
                                   padding=self.padding, dilation_rate=(1, dw))
        else:
            # TensorFlow's depthwise kernels take equal row and column strides only: pad as the
            # k x k convolution would (the 1 x 1 before has no bias, so zeros stay zeros), run the
            # vertical step densely and put the whole stride on the horizontal step.
            if self.padding == "same":
                (top, bottom), (left, right) = _same_pads(ops.shape(x)[1:3], self.kernel_size,
                                                          self.strides)
                x = ops.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
            x = self._between(ops.depthwise_conv(x, vertical, strides=1, padding="valid"), 1)
            if sh == sw:
                x = ops.depthwise_conv(x, horizontal, strides=sh, padding="valid")
            else:
                x = ops.depthwise_conv(x, horizontal, strides=1, padding="valid")
                x = x[:, ::sh, ::sw, :]
        x = ops.conv(self._between(x, 2), self._factor("kernel_pointwise_out"), strides=1,
                     padding="valid")
        return self._finish(x)

    def _steps(self, input_shape):
        (sh, sw), (dh, dw) = self.strides, self.dilation_rate
        vertical, horizontal = self._numpy(self.kernel_vertical), self._numpy(self.kernel_horizontal)
        if (sh, sw) == (1, 1):
            middle = [Step("depthwise", "vertical", vertical, padding=self.padding, dilation=(dh, 1)),
                      Step("depthwise", "horizontal", horizontal, padding=self.padding,
                           dilation=(1, dw))]
        else:  # as in call: explicit padding, dense vertical step, the stride on the horizontal one
            middle = []
            if self.padding == "same":
                size = tuple(input_shape[1:3]) if input_shape is not None else (None, None)
                if not all(isinstance(n, int) for n in size):
                    raise ValueError(
                        f"Layer {self.name!r} (strided, 'same' padding) pads by an amount that "
                        "depends on the input height and width: `input_shape` must give them. "
                        f"Received: input_shape={input_shape!r}")
                middle.append(Step("pad", "pad", pads=tuple(_same_pads(size, self.kernel_size,
                                                                       self.strides))))
            middle.append(Step("depthwise", "vertical", vertical))
            if sh == sw:
                middle.append(Step("depthwise", "horizontal", horizontal, strides=(sh, sw)))
            else:
                middle += [Step("depthwise", "horizontal", horizontal),
                           Step("slice", "slice", strides=(sh, sw))]
        return [Step("conv", "pointwise_in", self._numpy(self.kernel_pointwise_in)), *middle,
                Step("conv", "pointwise_out", self._numpy(self.kernel_pointwise_out))]

    def dense_kernel(self):
        return np.einsum("cr,ir,jr,ro->ijco", self._active_numpy("kernel_pointwise_in")[0, 0],
                         self._active_numpy("kernel_vertical")[:, 0, :, 0],
                         self._active_numpy("kernel_horizontal")[0, :, :, 0],
                         self._active_numpy("kernel_pointwise_out")[0, 0])

    @classmethod
    def full_rank_of(cls, layer, input_channels):
        # generic upper bound of the CP rank of a (kh, kw, cin, cout) tensor: the product of any
        # three of its sizes
        sizes = (*layer.kernel_size, int(input_channels), int(layer.filters))
        total = int(np.prod(sizes))
        return min(total // s for s in sizes)

    @classmethod
    def rank_candidates(cls, layer, input_channels):
        # beyond what the two channel modes span, a CP rank only adds cost
        top = min(cls.full_rank_of(layer, input_channels), int(input_channels) * layer.filters)
        return list(range(1, top + 1))

    @classmethod
    def macs_for(cls, layer, rank, input_shape):
        _, h, w, cin = input_shape
        (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.strides, layer.dilation_rate
        ho = _shapes.conv_output_size(h, kh, sh, dh, layer.padding)
        wo = _shapes.conv_output_size(w, kw, sw, dw, layer.padding)
        if None in (h, w, ho, wo, cin):
            return None
        if (sh, sw) == (1, 1):
            vertical, horizontal = ho * w * kh, ho * wo * kw
        else:  # the vertical step runs densely on the padded input (see call)
            (top, bottom), (left, right) = _same_pads((h, w), layer.kernel_size, layer.strides) \
                if layer.padding == "same" else ((0, 0), (0, 0))
            rows, cols = h + top + bottom - kh + 1, w + left + right
            vertical = rows * cols * kh
            horizontal = ho * wo * kw if sh == sw else rows * (cols - kw + 1) * kw
        return rank * (h * w * cin + vertical + horizontal + ho * wo * layer.filters)

    @staticmethod
    def sweeps(kernel_shape, rank):
        """The CP-ALS sweeps ``from_layer`` allows a ``kernel_shape`` kernel at ``rank``.

        A sweep costs about three contractions of the kernel with a factor
        (``3 * kh * kw * cin * cout * R`` multiply-adds), four R x R solves (``R ** 3``) and a
        fixed overhead. Each layer gets ``SWEEP_BUDGET`` of that work (one to two seconds on one
        core), and between ``MIN_SWEEPS`` and ``MAX_SWEEPS`` sweeps: CP-ALS runs to its 500 sweeps
        on small layers (the Fashion-MNIST CNN's) while a VGG16 (512 channels, R near 1100 at half
        the MACs: 8 sweeps) is factorized in under a minute. The error each layer reached is in
        ``reconstruction_error``; to run longer, call :func:`tflowrank.decompositions.cp_factors`
        and build the layer with ``from_factors``.
        """
        kh, kw, cin, cout = kernel_shape
        per_sweep = 3 * kh * kw * cin * cout * rank + rank**3 + 5_000_000
        return int(min(CPConv2D.MAX_SWEEPS, max(CPConv2D.MIN_SWEEPS, CPConv2D.SWEEP_BUDGET // per_sweep)))

    SWEEP_BUDGET = 15_000_000_000
    MIN_SWEEPS = 8
    MAX_SWEEPS = 500

    @classmethod
    def _decompose(cls, kernel, rank, n_iter_max=None):
        """CP-ALS with ``sweeps`` sweeps, or ``n_iter_max`` (the search bounds its own)."""
        sweeps = cls.sweeps(kernel.shape, rank) if n_iter_max is None else n_iter_max
        result = cp_factors(kernel, rank, n_iter_max=sweeps)
        return ((result.pointwise_in, result.vertical, result.horizontal, result.pointwise_out),
                result.relative_error)
