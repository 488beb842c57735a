"""Factorized 1-D convolutions: the 2-D chains run on the sequence seen as one image row.

TFLite runs a ``keras.layers.Conv1D`` as a CONV_2D over ``(batch, 1, steps, channels)`` with the
``(1, k, cin, cout)`` kernel. A factorized Conv1D is the same: the input gets a row axis, a 2-D
chain whose kernels have one row runs (``SVDConv2D``'s ``1 x k`` then ``1 x 1``, or
``TuckerConv2D``'s ``1 x 1``, ``1 x k`` core, ``1 x 1``), and the row axis is dropped. The
decompositions are those of the one-row kernel, so everything the 2-D classes compute (ranks,
MACs, spectra, factors, steps, quantization) carries over unchanged.

``CPConv1D`` is CP's 1-D chain, pointwise (cin -> R), depthwise k-tap, pointwise (R -> filters),
from the CP decomposition of the one-row kernel with its one-row mode folded into the k-tap
factor (``CPConv2D``'s chain would keep a 1 x 1 depthwise step for it). ``SpatialConv2D`` and
``TuckerSpatialConv2D`` have no 1-D form: they separate the two spatial axes of a kernel, and a
1-D kernel has one.

The geometry is stored as the one-row 2-D convolution's: ``kernel_size`` ``(1, k)``, ``strides``
``(1, s)``, ``dilation_rate`` ``(1, d)``; the constructors also take the Conv1D forms (``k``,
``(k,)``). ``padding="causal"`` (each output sees only the present and the past, as in streaming
audio models) pads the sequence on the left with ``(k - 1) * d`` zeros and runs the chain with
``"valid"`` padding, as TFLite runs a causal Conv1D (a PAD, then the convolution); the 1 x 1 steps
before the k-tap one have no bias, so zeros stay zeros through them.
"""

import keras
import numpy as np
from keras import ops

from .. import _shapes
from ..decompositions import cp_factors
from ..interop import Step
from ._base import FactorizedConv2D, FactorizedLayer, conv_reason
from .cp_conv2d import CPConv2D, CPRank
from .svd_conv2d import SVDConv2D
from .tucker_conv2d import TuckerConv2D

__all__ = ["CPConv1D", "SVDConv1D", "TuckerConv1D"]


def _row(value, name):
    """A Conv1D size (``k``, ``(k,)``) or a one-row 2-D one (``(1, k)``) as ``(1, k)``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value),)
    try:
        value = tuple(value)
    except TypeError:
        value = None
    if value is not None and len(value) == 2 and value[0] == 1:
        value = value[1:]
    if (value is None or len(value) != 1 or isinstance(value[0], bool)
            or not isinstance(value[0], (int, np.integer)) or value[0] < 1):
        raise ValueError(f"`{name}` of a 1-D convolution must be a positive int (or a tuple of one). "
                         f"Received: {name}={value!r}")
    return (1, int(value[0]))


def _row_shape(shape):
    """``(batch, steps, channels)`` as the one-row image ``(batch, 1, steps, channels)``; a
    4-D shape is returned as it is."""
    shape = tuple(shape)
    return shape if len(shape) == 4 else (shape[0], 1, *shape[1:])


class _RowView:
    """A ``keras.layers.Conv1D`` seen as the one-row Conv2D TFLite runs it as: the geometry and
    filters the 2-D classmethods read for ranks, factor shapes and MACs."""

    def __init__(self, layer):
        self.filters = layer.filters
        self.kernel_size = _row(layer.kernel_size, "kernel_size")
        self.strides = _row(layer.strides, "strides")
        self.dilation_rate = _row(layer.dilation_rate, "dilation_rate")
        self.padding = "valid" if layer.padding == "causal" else layer.padding


def _view(layer):
    return layer if isinstance(layer, FactorizedLayer) else _RowView(layer)


def _causal(layer):
    """Whether ``layer`` (a Conv1D or a 1-D chain) pads on the left only."""
    return bool(getattr(layer, "causal", False)) or getattr(layer, "padding", None) == "causal"


def _left(layer):
    """The zeros a causal ``layer`` puts before the sequence (0 when not causal)."""
    kernel_size = _row(layer.kernel_size, "kernel_size")
    dilation = _row(layer.dilation_rate, "dilation_rate")
    return _shapes.causal_left(kernel_size[1], dilation[1]) if _causal(layer) else 0


def _widened(layer, input_shape):
    """``input_shape`` as the one row the chain convolves: with a causal layer's left zeros."""
    shape = _row_shape(input_shape)
    left = _left(layer)
    return shape if not left or shape[2] is None else (*shape[:2], shape[2] + left, shape[3])


class _OneRow:
    """What turns a factorized 2-D convolution class into its 1-D form (a mixin placed first)."""

    source_types = ("Conv1D",)
    input_ndim = 3

    def __init__(self, filters, kernel_size, rank, strides=1, padding="valid", dilation_rate=1,
                 **kwargs):
        causal = isinstance(padding, str) and padding.lower() == "causal"
        super().__init__(filters, _row(kernel_size, "kernel_size"), rank,
                         strides=_row(strides, "strides"), padding="valid" if causal else padding,
                         dilation_rate=_row(dilation_rate, "dilation_rate"), **kwargs)
        #: the chain runs with ``padding="valid"`` after ``(k - 1) * d`` zeros on the left
        self.causal = causal
        self.input_spec = keras.layers.InputSpec(ndim=3)

    def get_config(self):
        config = super().get_config()
        if self.causal:
            config["padding"] = "causal"
        return config

    def build(self, input_shape):
        super().build(input_shape)
        self.input_spec = keras.layers.InputSpec(ndim=3, axes={-1: self._input_channels})

    def call(self, inputs):
        x = ops.expand_dims(inputs, 1)
        if self.causal:
            x = ops.pad(x, ((0, 0), (0, 0), (_left(self), 0), (0, 0)))
        return ops.squeeze(super().call(x), 1)

    def compute_output_shape(self, input_shape):
        _, steps = _shapes.conv_output_hw(_widened(self, input_shape)[1:3], self.kernel_size,
                                          self.strides, self.dilation_rate, self.padding)
        return (input_shape[0], steps, self.filters)

    def steps(self, input_shape=None):
        """The 2-D chain's steps between a reshape to one row and a reshape back (and, causal,
        the left zeros after the first reshape)."""
        inner = super().steps(None if input_shape is None else _widened(self, input_shape))
        pad = [Step("pad", "causal", pads=((0, 0), (_left(self), 0)))] if self.causal else []
        return [Step("reshape", "row", shape=(1, -1, self._input_channels)), *pad, *inner,
                Step("reshape", "unrow", shape=(-1, self.filters))]

    def dense_macs(self, input_shape):
        return super().dense_macs(_widened(self, input_shape))

    def dense_kernel(self):
        return super().dense_kernel()[0]

    def to_dense(self):
        dense = keras.layers.Conv1D(
            self.filters, self.kernel_size[1], strides=self.strides[1],
            padding="causal" if self.causal else self.padding,
            dilation_rate=self.dilation_rate[1], activation=keras.activations.serialize(self.activation),
            use_bias=self.use_bias, name=self.name, dtype=self.dtype_policy)
        dense.build((None, None, self._input_channels))
        dense.kernel.assign(self.dense_kernel())
        if self.use_bias:
            dense.bias.assign(self._numpy(self.bias))
        return dense

    # -- what factorize and cost ask (the source layer seen as one row) -------------------------
    @classmethod
    def supports(cls, layer):
        if not isinstance(layer, keras.layers.Conv1D):
            return f"{type(layer).__name__} is not a Conv1D"
        return conv_reason(layer)

    @classmethod
    def source_kernel(cls, layer):
        kernel = cls._numpy(layer.kernel)
        return kernel if kernel.ndim == 4 else kernel[None]

    @classmethod
    def _decompose(cls, kernel, rank, **options):
        # a Conv1D layout kernel too: RankScheduler re-projects dense_kernel(), which is one
        return super()._decompose(kernel if kernel.ndim == 4 else kernel[None], rank, **options)

    @classmethod
    def _config_from(cls, layer):
        config = super()._config_from(layer)
        if _causal(layer):  # a causal chain's own padding attribute is "valid"
            config["padding"] = "causal"
        return config

    @classmethod
    def full_rank_of(cls, layer, input_channels):
        return super().full_rank_of(_view(layer), input_channels)

    @classmethod
    def factor_shapes(cls, layer, rank, input_channels):
        return super().factor_shapes(_view(layer), rank, input_channels)

    @classmethod
    def macs_for(cls, layer, rank, input_shape):
        return super().macs_for(_view(layer), rank, _widened(layer, input_shape))


@keras.saving.register_keras_serializable(package="tflowrank")
class SVDConv1D(_OneRow, SVDConv2D):
    """Channel-factorized 1-D convolution: a ``k``-tap convolution (cin -> rank), then a
    pointwise one (rank -> filters), from the truncated SVD of the ``(k*cin, cout)`` kernel.

    Args: as ``keras.layers.Conv1D`` (``padding`` ``"valid"`` or ``"same"``) with ``rank``.
    Weights (one-row 2-D layout): ``kernel_spatial`` ``(1, k, cin, rank)``, ``kernel_pointwise``
    ``(1, 1, rank, filters)``, ``bias`` ``(filters,)``.

    ``SVDConv1D.from_layer(conv1d, rank)`` builds one from a trained ``keras.layers.Conv1D``; the
    ``"svd"`` and ``"output"`` methods of ``tflowrank.factorize`` use it.
    """


@keras.saving.register_keras_serializable(package="tflowrank")
class TuckerConv1D(_OneRow, TuckerConv2D):
    """Tucker-2 factorized 1-D convolution: pointwise (cin -> r_in), ``k``-tap core
    (r_in -> r_out), pointwise (r_out -> filters).

    Args: as ``keras.layers.Conv1D`` (``padding`` ``"valid"`` or ``"same"``) with ``rank`` an int
    or ``(r_in, r_out)``. Weights (one-row 2-D layout): ``kernel_first`` ``(1, 1, cin, r_in)``,
    ``kernel_core`` ``(1, k, r_in, r_out)``, ``kernel_last`` ``(1, 1, r_out, filters)``.

    ``TuckerConv1D.from_layer(conv1d, rank)`` builds one from a trained ``keras.layers.Conv1D``;
    the ``"tucker2"`` method of ``tflowrank.factorize`` uses it.
    """


class _RowCP(CPRank, FactorizedConv2D):
    """CP's chain on one row (kernels ``(1, k)``): pointwise, depthwise ``1 x k``, pointwise.

    The depthwise step takes equal row and column strides (TensorFlow's depthwise kernels take
    no others); on one row with a one-row kernel a row stride changes nothing, so ``(s, s)`` is
    the ``(1, s)`` of the Conv1D, with either padding.
    """

    method = "cp"
    factors = (("kernel_pointwise_in", 3), ("kernel_depthwise", 2), ("kernel_pointwise_out", 2))
    rank_axes = (("kernel_pointwise_in", 3),)
    rank_groups = ((("kernel_pointwise_in", 3), ("kernel_depthwise", 2),
                    ("kernel_pointwise_out", 2)),)
    sweeps = staticmethod(CPConv2D.sweeps)  # CP-ALS as long as the 2-D chain's

    @classmethod
    def factor_shapes(cls, layer, rank, input_channels):
        return ((1, 1, input_channels, rank), (1, layer.kernel_size[1], rank, 1),
                (1, 1, rank, layer.filters))

    def call(self, inputs):
        stride = self.strides[1]
        x = ops.conv(inputs, self._factor("kernel_pointwise_in"), strides=1, padding="valid")
        x = ops.depthwise_conv(self._between(x, 0), self._factor("kernel_depthwise"),
                               strides=(stride, stride), padding=self.padding,
                               dilation_rate=self.dilation_rate)
        x = ops.conv(self._between(x, 1), self._factor("kernel_pointwise_out"), strides=1,
                     padding="valid")
        return self._finish(x)

    def _steps(self, input_shape):
        stride = self.strides[1]
        return [Step("conv", "pointwise_in", self._numpy(self.kernel_pointwise_in)),
                Step("depthwise", "depthwise", self._numpy(self.kernel_depthwise),
                     strides=(stride, stride), padding=self.padding, dilation=self.dilation_rate),
                Step("conv", "pointwise_out", self._numpy(self.kernel_pointwise_out))]

    def dense_kernel(self):
        return np.einsum("cr,jr,ro->jco", self._active_numpy("kernel_pointwise_in")[0, 0],
                         self._active_numpy("kernel_depthwise")[0, :, :, 0],
                         self._active_numpy("kernel_pointwise_out")[0, 0])[None]

    @classmethod
    def full_rank_of(cls, layer, input_channels):
        # generic upper bound of the CP rank of a (k, cin, cout) tensor: the product of two sizes
        sizes = (layer.kernel_size[1], int(input_channels), int(layer.filters))
        return min(sizes[0] * sizes[1], sizes[0] * sizes[2], sizes[1] * sizes[2])

    @classmethod
    def macs_for(cls, layer, rank, input_shape):
        _, _, width, cin = input_shape
        steps = _shapes.conv_output_size(width, layer.kernel_size[1], layer.strides[1],
                                         layer.dilation_rate[1], layer.padding)
        if None in (width, steps, cin):
            return None
        return rank * (width * cin + steps * layer.kernel_size[1] + steps * layer.filters)

    @classmethod
    def _decompose(cls, kernel, rank, n_iter_max=None):
        """CP-ALS of the ``(1, k, cin, cout)`` kernel (as ``CPConv2D``), its one-row mode folded
        into the k-tap factor and the three factors balanced again (equal norms per component,
        for per-channel int8)."""
        sweeps = cls.sweeps(kernel.shape, rank) if n_iter_max is None else n_iter_max
        found = cp_factors(kernel, rank, n_iter_max=sweeps)
        first = found.pointwise_in[0, 0].astype(np.float64)  # (cin, R)
        taps = (found.horizontal[0, :, :, 0] * found.vertical[0, 0, :, 0]).astype(np.float64)
        last = found.pointwise_out[0, 0].astype(np.float64)  # (R, cout)
        norms = [np.linalg.norm(first, axis=0), np.linalg.norm(taps, axis=0),
                 np.linalg.norm(last, axis=1)]
        scale = np.cbrt(norms[0] * norms[1] * norms[2])
        safe = [np.where(n > 0, n, 1.0) for n in norms]
        first, taps = first * (scale / safe[0]), taps * (scale / safe[1])
        last = last * (scale / safe[2])[:, None]
        dtype = kernel.dtype
        return ((first[None, None].astype(dtype), taps[None, :, :, None].astype(dtype),
                 last[None, None].astype(dtype)), found.relative_error)


@keras.saving.register_keras_serializable(package="tflowrank")
class CPConv1D(_OneRow, _RowCP):
    """CP-factorized 1-D convolution: pointwise (cin -> R), depthwise ``k``-tap over the R
    components, pointwise (R -> filters) (Lebedev et al. 2015, on the three modes of a 1-D kernel).

    Args: as ``keras.layers.Conv1D`` with ``rank`` the CP rank R. ``from_layer`` runs CP-ALS as
    ``CPConv2D`` does and records the relative error it reaches in ``reconstruction_error``.
    Weights (one-row 2-D layout): ``kernel_pointwise_in`` ``(1, 1, cin, R)``, ``kernel_depthwise``
    ``(1, k, R, 1)`` (depthwise layout), ``kernel_pointwise_out`` ``(1, 1, R, filters)``.

    ``CPConv1D.from_layer(conv1d, rank)`` builds one from a trained ``keras.layers.Conv1D``; the
    ``"cp"`` method of ``tflowrank.factorize`` uses it.
    """
