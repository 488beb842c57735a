"""SVDDense: a dense layer as two dense layers in -> rank -> units."""

import keras
from keras import ops

from .. import _shapes
from ..interop import Step
from ._base import FactorizedLayer, KernelSVD, _positive_int, weights_reason

__all__ = ["SVDDense"]


@keras.saving.register_keras_serializable(package="tflowrank")
class SVDDense(KernelSVD, FactorizedLayer):
    """Dense layer from the truncated SVD of its ``(in, units)`` kernel.

    Computes ``(x @ A) @ B + bias`` on the last axis, like ``keras.layers.Dense``. Weights:
    ``kernel_in`` ``(in, rank)``, ``kernel_out`` ``(rank, units)``, ``bias`` ``(units,)``.

    ``SVDDense.from_layer(dense, rank)`` builds one from a trained ``keras.layers.Dense``.
    """

    method = "svd"
    source_types = ("Dense",)
    factors = (("kernel_in", 1), ("kernel_out", 0))
    rank_axes = (("kernel_in", 1),)
    rank_groups = ((("kernel_in", 1), ("kernel_out", 0)),)
    input_ndim = 2

    def __init__(self, units, rank, activation=None, use_bias=True, **kwargs):
        super().__init__(rank=rank, activation=activation, use_bias=use_bias, **kwargs)
        self.units = _positive_int(units, "units")
        self.input_spec = keras.layers.InputSpec(min_ndim=2)

    def get_config(self):
        config = super().get_config()
        config["units"] = self.units
        return config

    @classmethod
    def _units_of(cls, layer):
        return layer.units

    @classmethod
    def factor_shapes(cls, layer, rank, input_channels):
        return ((input_channels, rank), (rank, layer.units))

    def call(self, inputs):
        hidden = self._between(ops.matmul(inputs, self._factor("kernel_in")), 0)
        return self._finish(ops.matmul(hidden, self._factor("kernel_out")))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def _steps(self, input_shape):
        return [Step("dense", "in", self._numpy(self.kernel_in)),
                Step("dense", "out", self._numpy(self.kernel_out))]

    def dense_kernel(self):
        return self._active_numpy("kernel_in") @ self._active_numpy("kernel_out")

    def dense_macs(self, input_shape):
        return _shapes.dense_macs(input_shape, self.units)

    @classmethod
    def supports(cls, layer):
        if not isinstance(layer, keras.layers.Dense):
            return f"{type(layer).__name__} is not a Dense layer"
        return weights_reason(layer)

    @classmethod
    def full_rank_of(cls, layer, input_channels):
        return min(input_channels, layer.units)

    @classmethod
    def macs_for(cls, layer, rank, input_shape):
        return _shapes.dense_macs(input_shape, layer.units, rank=rank)


    @classmethod
    def _config_from(cls, layer):
        return {"units": layer.units, **cls._source_common(layer)}
