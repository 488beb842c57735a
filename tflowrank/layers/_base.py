"""Shared machinery of tflowrank's factorized layers (private).

Every factorized layer records the rank it runs at and the relative reconstruction error of its
initialisation, computes its chain with plain convolution / matmul ops (so the TFLite graph shows
each step as its own CONV_2D / FULLY_CONNECTED op), and answers the questions `factorize` and `cost`
ask of it through classmethods that also accept the original Keras layer:

- ``supports(layer)``: why a layer cannot be factorized this way, or None;
- ``full_rank_of(layer, input_channels)``: the largest meaningful rank;
- ``macs_for(layer, rank, input_shape)``: multiply-accumulates per sample of the chain at ``rank``;
- ``from_layer(layer, rank)``: a built factorized layer initialised from the trained weights.
"""

import keras
import numpy as np

from .. import _shapes

__all__ = []


def _int_tuple(value, name):
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be an int or a tuple of 2 ints. Received: {name}={value!r}")
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    try:
        value = tuple(int(v) for v in value)
        ok = len(value) == 2 and all(v >= 1 for v in value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"`{name}` must be a positive int or a tuple of 2 positive ints. Received: {name}={value!r}"
        )
    return value


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def check_rank(rank, full_rank, layer_name):
    """Raise the ValueError for a rank outside ``1..full_rank``."""
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= full_rank:
        raise ValueError(
            f"`rank` for layer {layer_name!r} must be an integer between 1 and its full rank "
            f"{full_rank}. Received: rank={rank!r}"
        )
    return int(rank)


class FactorizedLayer(keras.layers.Layer):
    """Base of every tflowrank factorized layer."""

    #: factorize method name, and the Keras layer classes this layer replaces
    method = None
    source_types = ()
    #: (weight name, axis of the rank) of each factor, in chain order
    factors = ()
    #: rank of the input tensor the layer is built for (4 for images, 2 for vectors)
    input_ndim = 4

    def __init__(
        self,
        rank,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        reconstruction_error=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.rank = _positive_int(rank, "rank")
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        if reconstruction_error is not None:
            reconstruction_error = float(reconstruction_error)
        self.reconstruction_error = reconstruction_error

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "rank": self.rank,
                "activation": keras.activations.serialize(self.activation),
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "reconstruction_error": self.reconstruction_error,
            }
        )
        return config

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(
                f"Layer {self.name!r} needs a known last (channel) dimension. "
                f"Received: input_shape={tuple(input_shape)}"
            )
        self._input_channels = int(channels)
        check_rank(self.rank, self.full_rank_of(self, self._input_channels), self.name)
        self._build_factors(self._input_channels)
        self._add_bias(self._units)
        self.input_spec = keras.layers.InputSpec(
            min_ndim=self.input_ndim, max_ndim=4 if self.input_ndim == 4 else None,
            axes={-1: self._input_channels},
        )

    def _build_factors(self, input_channels):
        """Create the factor weights (``_add_factor``) for ``input_channels`` inputs."""
        raise NotImplementedError

    # -- what factorize and cost ask -------------------------------------------------------------
    @classmethod
    def supports(cls, layer):
        """Return why ``layer`` cannot be factorized by this class, or None if it can."""
        raise NotImplementedError

    @classmethod
    def full_rank_of(cls, layer, input_channels):
        raise NotImplementedError

    @classmethod
    def macs_for(cls, layer, rank, input_shape):
        raise NotImplementedError

    @property
    def full_rank(self):
        if not self.built:
            raise ValueError(f"Layer {self.name!r} is not built yet: its full rank is not known.")
        return self.full_rank_of(self, self._input_channels)

    def macs(self, input_shape):
        """Multiply-accumulates per sample of this layer's chain for ``input_shape`` (batch first)."""
        return self.macs_for(self, self.rank, input_shape)

    def dense_macs(self, input_shape):
        """Multiply-accumulates per sample of the unfactorized layer this one approximates."""
        raise NotImplementedError

    def dense_kernel(self):
        """The kernel this chain computes, as a NumPy array in the source layer's layout."""
        raise NotImplementedError

    @classmethod
    def from_layer(cls, layer, rank):
        """Build a factorized layer from a trained source layer, initialised at the optimal factors.

        ``layer`` is left untouched; the result is built and holds its own weights.
        """
        reason = cls.supports(layer)
        if reason:
            raise ValueError(f"Layer {layer.name!r} cannot be factorized by {cls.__name__}: {reason}.")
        kernel = cls._numpy(layer.kernel)
        cin = kernel.shape[-2]
        rank = check_rank(rank, cls.full_rank_of(layer, cin), layer.name)
        values, error = cls._decompose(kernel, rank)
        new = cls(rank=rank, reconstruction_error=error, **cls._config_from(layer))
        new.build((None,) * (cls.input_ndim - 1) + (cin,))
        for (name, _), value in zip(cls.factors, values):
            getattr(new, name).assign(value)
        if layer.use_bias:
            new.bias.assign(cls._numpy(layer.bias))
        return new

    @classmethod
    def _decompose(cls, kernel, rank):
        """Return (factor arrays in ``factors`` order, relative reconstruction error)."""
        raise NotImplementedError

    @classmethod
    def _config_from(cls, layer):
        """Constructor arguments (other than rank) that reproduce ``layer``'s configuration."""
        raise NotImplementedError

    # -- helpers for subclasses ------------------------------------------------------------------
    def _add_factor(self, index, shape):
        name = self.factors[index][0]
        setattr(self, name, self.add_weight(name=name, shape=shape, initializer=self.kernel_initializer))
    def _add_bias(self, units):
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(units,), initializer=self.bias_initializer, trainable=True
            )
        else:
            self.bias = None

    def _finish(self, outputs):
        if self.bias is not None:
            outputs = keras.ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    @classmethod
    def _source_common(cls, layer):
        """Constructor arguments carried over from any source layer."""
        return {
            "activation": keras.activations.serialize(layer.activation),
            "use_bias": layer.use_bias,
            "name": layer.name,
            "dtype": layer.dtype_policy,
            "trainable": layer.trainable,
        }

    @staticmethod
    def _numpy(variable):
        # Variable.numpy(): np.asarray(variable) warns under NumPy 2 with TF 2.21
        return np.asarray(variable.numpy())


class FactorizedConv2D(FactorizedLayer):
    """Base of the factorized 2-D convolutions: the convolution configuration and its checks."""

    source_types = ("Conv2D",)

    def __init__(
        self,
        filters,
        kernel_size,
        rank,
        strides=(1, 1),
        padding="valid",
        dilation_rate=(1, 1),
        activation=None,
        use_bias=True,
        **kwargs,
    ):
        super().__init__(rank=rank, activation=activation, use_bias=use_bias, **kwargs)
        self.filters = _positive_int(filters, "filters")
        self.kernel_size = _int_tuple(kernel_size, "kernel_size")
        self.strides = _int_tuple(strides, "strides")
        self.dilation_rate = _int_tuple(dilation_rate, "dilation_rate")
        padding = padding.lower() if isinstance(padding, str) else padding
        if padding not in ("valid", "same"):
            raise ValueError(
                f"`padding` must be 'valid' or 'same'. Received: padding={padding!r}"
            )
        self.padding = padding
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(
                "`strides > 1` is not compatible with `dilation_rate > 1`. "
                f"Received: strides={self.strides}, dilation_rate={self.dilation_rate}"
            )
        self.input_spec = keras.layers.InputSpec(min_ndim=4, max_ndim=4)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "strides": self.strides,
                "padding": self.padding,
                "dilation_rate": self.dilation_rate,
            }
        )
        return config

    @property
    def _units(self):
        return self.filters

    def compute_output_shape(self, input_shape):
        h, w = _shapes.conv_output_hw(input_shape[1:3], self.kernel_size, self.strides,
                                      self.dilation_rate, self.padding)
        return (input_shape[0], h, w, self.filters)

    def dense_macs(self, input_shape):
        return _shapes.conv_macs(input_shape, self.kernel_size, self.strides, self.dilation_rate,
                                 self.padding, self.filters)

    @classmethod
    def supports(cls, layer):
        if not isinstance(layer, keras.layers.Conv2D):
            if isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)):
                return "depthwise convolutions are never factorized (they are already cheap)"
            return f"{type(layer).__name__} is not a Conv2D"
        if layer.groups != 1:
            return f"groups={layer.groups} is not supported (only groups=1)"
        if layer.data_format != "channels_last":
            return f"data_format={layer.data_format!r} is not supported (only 'channels_last')"
        if getattr(layer, "quantization_mode", None):
            return f"the layer is already quantized (quantization_mode={layer.quantization_mode!r})"
        if not layer.built:
            return "the layer is not built (it has no weights yet)"
        return None

    @classmethod
    def _config_from(cls, layer):
        return {
            "filters": layer.filters,
            "kernel_size": tuple(layer.kernel_size),
            "strides": tuple(layer.strides),
            "padding": layer.padding,
            "dilation_rate": tuple(layer.dilation_rate),
            **cls._source_common(layer),
        }
