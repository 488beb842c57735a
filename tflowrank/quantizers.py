"""The layers of a quantization-aware model (``tflowrank.quantize_aware``).

- ``fake_quant_weight``: int8 per-channel symmetric fake quantization of a weight, narrow range
  ``[-127, 127]``, scale ``max|w| / 127`` per output channel (what the TFLite converter uses).
- ``ActivationQuantizer``: per-tensor asymmetric int8 fake quantization of a tensor, its range an
  exponential moving average of the batch minimum and maximum while training, frozen otherwise.
- ``QuantizedLayer``: a Conv2D, DepthwiseConv2D, Dense or tflowrank factorized layer computing
  with fake-quantized weights (and, for a factorized layer, fake-quantized intermediate tensors).

Fake quantization goes through ``tf.quantization.fake_quant_with_min_max_vars`` and its
per-channel variant: the TFLite converter reads their ranges, so a QAT model needs no calibration
data to become a fully int8 model. Each layer holds a non-trainable flag ``quantize_enabled``
(1: fake-quantize, 0: compute in float) that ``tflowrank.callbacks.QuantizeAware`` switches during
``fit`` without rebuilding the graph. Every variable here is mirrored with ``aggregation="mean"``,
so under ``tf.distribute.MirroredStrategy`` an update made by the replicas is averaged and written
to all of them: the ranges stay identical across replicas.

Importing this module imports Keras and TensorFlow and registers the layers for ``.keras`` loading.
"""

import functools
import math

import keras
import tensorflow as tf
from keras import ops

from . import _shapes

__all__ = ["ActivationQuantizer", "QuantizedLayer", "fake_quant_weight", "quantizer_layers"]

NUM_BITS = 8
# the smallest range a quantizer uses: an all-zero weight channel keeps zero exactly
_MIN_SPAN = 1e-8


def fake_quant_weight(weight, depthwise=False):
    """``weight`` fake-quantized to int8 per output channel, symmetric, narrow range.

    The channel axis is the last one; with ``depthwise=True`` the weight has the depthwise layout
    ``(kh, kw, channels, multiplier)`` and its channels are ``channels * multiplier``, as in
    TFLite's DEPTHWISE_CONV_2D. The range is taken from the weight itself (no gradient flows
    through it); zero is always exactly representable.
    """
    shape = tuple(weight.shape)
    flat = ops.reshape(weight, shape[:-2] + (shape[-2] * shape[-1],)) if depthwise else weight
    bound = ops.max(ops.abs(flat), axis=tuple(range(len(flat.shape) - 1)))
    bound = tf.stop_gradient(ops.maximum(bound, _MIN_SPAN))
    quantized = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        flat, -bound, bound, num_bits=NUM_BITS, narrow_range=True)
    return ops.reshape(quantized, shape) if depthwise else quantized


def _flag(layer):
    return layer.add_weight(name="quantize_enabled", shape=(), initializer="ones",
                            trainable=False, aggregation="mean")


@keras.saving.register_keras_serializable(package="tflowrank")
class ActivationQuantizer(keras.layers.Layer):
    """Per-tensor asymmetric int8 fake quantization with a moving-average range.

    While training, the range ``[range_min, range_max]`` follows the batch minimum and maximum
    by an exponential moving average (``ema_decay``; the first batch sets it) whether or not
    quantization is enabled; otherwise it is frozen. The range used always contains 0, so zero is
    exact. Until a first training batch has set the range, the layer passes its input through.

    Args:
        ema_decay: weight of the old range in each update, in ``[0, 1)``.
        fixed_range: ``(low, high)`` with ``low <= 0 < high``: quantize with this range from
            the start and never track one, for tensors whose int8 scale TFLite fixes (the
            output of SOFTMAX and LOGISTIC: ``(0, 255 / 256)``, scale 1/256, zero point -128;
            of TANH: ``(-1, 127 / 128)``, scale 1/128, zero point 0).
    """

    def __init__(self, ema_decay=0.99, fixed_range=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) \
                or not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be a float in [0, 1). Received: ema_decay={ema_decay!r}")
        if fixed_range is not None:
            try:
                low, high = (float(v) for v in fixed_range)
            except (TypeError, ValueError):
                low = high = math.nan
            if not (math.isfinite(low) and math.isfinite(high) and low <= 0.0 < high):
                raise ValueError("`fixed_range` must be None or (low, high) with low <= 0 < high. "
                                 f"Received: fixed_range={fixed_range!r}")
            fixed_range = (low, high)
        self.ema_decay = float(ema_decay)
        self.fixed_range = fixed_range
        self.supports_masking = True
        self._export_range = None  # (low, high) floats: set on export copies only

    def build(self, input_shape=None):
        low, high, tracked = (*self.fixed_range, 1.0) if self.fixed_range else (0.0, 0.0, 0.0)

        def state(name, value):
            return self.add_weight(name=name, shape=(), initializer=keras.initializers.Constant(value),
                                   trainable=False, aggregation="mean")

        self.range_min = state("range_min", low)
        self.range_max = state("range_max", high)
        self.range_tracked = state("range_tracked", tracked)  # 0 until the first training batch
        self.quantize_enabled = _flag(self)

    def call(self, inputs, training=None):
        if self._export_range is not None:
            low, high = self._export_range
            return tf.quantization.fake_quant_with_min_max_vars(inputs, low, high, num_bits=NUM_BITS)
        if training and self.fixed_range is None:
            batch_min = ops.cast(ops.min(inputs), "float32")
            batch_max = ops.cast(ops.max(inputs), "float32")
            decay = self.ema_decay * self.range_tracked  # the first batch sets the range
            self.range_min.assign(decay * self.range_min + (1.0 - decay) * batch_min)
            self.range_max.assign(decay * self.range_max + (1.0 - decay) * batch_max)
            self.range_tracked.assign(1.0)
        low, high = self.quantization_range()
        quantized = tf.quantization.fake_quant_with_min_max_vars(inputs, low, high, num_bits=NUM_BITS)
        gate = self.quantize_enabled * self.range_tracked
        return inputs + ops.cast(gate, inputs.dtype) * (quantized - inputs)

    def quantization_range(self):
        """The range the fake quantization uses: the tracked one, widened to contain 0."""
        low = ops.minimum(self.range_min, 0.0)
        high = ops.maximum(ops.maximum(self.range_max, 0.0), low + _MIN_SPAN)
        return low, high

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["ema_decay"] = self.ema_decay
        if self.fixed_range is not None:
            config["fixed_range"] = list(self.fixed_range)
        return config


def _compute_conv(layer, x, kernel):
    return ops.conv(x, kernel, strides=layer.strides, padding=layer.padding,
                    dilation_rate=layer.dilation_rate)


def _compute_conv1d(layer, x, kernel):
    """A Conv1D as TFLite runs it: a CONV_2D over ``(batch, 1, steps, channels)`` with the
    ``(1, k, cin, cout)`` kernel (``kernel`` is that, so its FakeQuant keeps the channel axis
    last: the converter cannot carry a per-channel FakeQuant through the kernel's reshape). A
    causal one pads the sequence on the left first, as TFLite does (an int8 PAD keeps its
    input's scale)."""
    (stride,), (dilation,) = layer.strides, layer.dilation_rate
    padding = layer.padding
    if padding == "causal":
        left = _shapes.causal_left(kernel.shape[1], dilation)
        x, padding = ops.pad(x, ((0, 0), (left, 0), (0, 0))), "valid"
    outputs = ops.conv(ops.expand_dims(x, 1), kernel, strides=(1, stride), padding=padding,
                       dilation_rate=(1, dilation))
    return ops.squeeze(outputs, 1)


def _compute_depthwise(layer, x, kernel):
    return ops.depthwise_conv(x, kernel, strides=layer.strides, padding=layer.padding,
                              dilation_rate=layer.dilation_rate)


def _compute_dense(layer, x, kernel):
    return ops.matmul(x, kernel)


# Keras layer class name -> (compute from input and quantized kernel, depthwise kernel layout)
_KERAS_KINDS = {
    "Conv2D": (_compute_conv, False),
    "Conv1D": (_compute_conv1d, False),
    "DepthwiseConv2D": (_compute_depthwise, True),
    "Dense": (_compute_dense, False),
}
# factors of tflowrank layers applied as depthwise convolutions
_DEPTHWISE_FACTORS = {"CPConv2D": ("kernel_vertical", "kernel_horizontal"),
                      "CPConv1D": ("kernel_depthwise",)}


@keras.saving.register_keras_serializable(package="tflowrank")
class QuantizedLayer(keras.layers.Layer):
    """A weighted layer computing with int8 fake-quantized weights.

    ``layer`` is a ``keras.layers.Conv2D`` (grouped too), ``DepthwiseConv2D``, ``Dense`` or a
    tflowrank factorized layer; it holds the weights, this wrapper the quantization state. A
    factorized layer gets one ``ActivationQuantizer`` per intermediate tensor of its chain
    (``between``), through its ``_weight_quantizers`` / ``_between_quantizers`` hooks. The output
    is not quantized here: ``quantize_aware`` puts an ``ActivationQuantizer`` after the layer, or
    after the activation that follows it.

    Args:
        layer: the layer to wrap (it becomes a sublayer; ``quantize_aware`` passes a copy).
        ema_decay: of the intermediate-tensor quantizers of a factorized layer.
    """

    def __init__(self, layer, ema_decay=0.99, **kwargs):
        kwargs.setdefault("name", getattr(layer, "name", None))
        super().__init__(**kwargs)
        if not isinstance(layer, keras.layers.Layer) or not (
                type(layer).__name__ in _KERAS_KINDS or _is_factorized(layer)):
            raise ValueError(
                "`layer` must be a Keras Conv2D, DepthwiseConv2D or Dense layer or a tflowrank "
                f"factorized layer. Received: layer={layer!r} of type {type(layer).__name__}")
        self.layer = layer
        self.ema_decay = float(ema_decay)
        self._export = False  # set on export copies only: always fake-quantize, no blend

    @property
    def factorized(self):
        return _is_factorized(self.layer)

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        self.quantize_enabled = _flag(self)
        self.between = []
        if self.factorized:
            self.between = [ActivationQuantizer(self.ema_decay, name=f"between_{step}")
                            for step in range(len(self.layer.factors) - 1)]
            for quantizer in self.between:
                quantizer.build()
            depthwise = _DEPTHWISE_FACTORS.get(type(self.layer).__name__, ())
            # bound methods and partials: the wrapper, not the factorized layer, tracks the state
            self.layer._weight_quantizers = {
                name: functools.partial(self._quantize_weight, depthwise=name in depthwise,
                                        matmul=self.layer.input_ndim == 2)
                for name, _ in self.layer.factors}
            self.layer._between_quantizers = [quantizer.__call__ for quantizer in self.between]

    def _quantize_weight(self, weight, depthwise=False, matmul=False):
        quantized = fake_quant_weight(weight, depthwise)
        if self._export:
            # TFLite stores a FULLY_CONNECTED kernel transposed and cannot carry a per-channel
            # FakeQuant through the transpose: the converter quantizes matmul kernels itself,
            # with the same per-channel symmetric scales
            return weight if matmul else quantized
        return weight + ops.cast(self.quantize_enabled, weight.dtype) * (quantized - weight)

    def call(self, inputs):
        if self.factorized:
            return self.layer(inputs)
        layer = self.layer
        compute, depthwise = _KERAS_KINDS[type(layer).__name__]
        weight = ops.expand_dims(layer.kernel, 0) if compute is _compute_conv1d else layer.kernel
        kernel = self._quantize_weight(weight, depthwise, matmul=compute is _compute_dense)
        outputs = compute(layer, inputs, kernel)
        if layer.use_bias:
            outputs = ops.add(outputs, layer.bias)
        return layer.activation(outputs) if layer.activation is not None else outputs

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def sliced(self):
        """A new built wrapper around ``layer.sliced()`` (a factorized layer at its active rank)
        carrying this wrapper's quantization state."""
        new = QuantizedLayer(self.layer.sliced(), self.ema_decay, name=self.name)
        new.build((None,) * (self.layer.input_ndim - 1) + (self.layer._input_channels,))
        for mine, theirs in zip(_state_variables(self), _state_variables(new), strict=True):
            theirs.assign(mine)
        return new

    def get_config(self):
        config = super().get_config()
        config.update({"layer": keras.saving.serialize_keras_object(self.layer),
                       "ema_decay": self.ema_decay})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        layer = keras.saving.deserialize_keras_object(config.pop("layer"))
        return cls(layer, **config)


def _state_variables(wrapper):
    variables = [wrapper.quantize_enabled]
    for quantizer in wrapper.between:
        variables += [quantizer.range_min, quantizer.range_max, quantizer.range_tracked,
                      quantizer.quantize_enabled]
    return variables


def _is_factorized(layer):
    from .layers import FactorizedLayer

    return isinstance(layer, FactorizedLayer)


def quantizer_layers(model):
    """Every ``ActivationQuantizer`` and ``QuantizedLayer`` of ``model``, nested ones included."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, (ActivationQuantizer, QuantizedLayer))]
