"""Shared machinery of tflowrank's factorized layers (private).

Every factorized layer records the rank it runs at and the relative reconstruction error of its
initialisation, computes its chain with plain convolution / matmul ops (so the TFLite graph shows
each step as its own CONV_2D / FULLY_CONNECTED op), and answers the questions `factorize` and `cost`
ask of it through classmethods that also accept the original Keras layer:

- ``supports(layer)``: why a layer cannot be factorized this way, or None;
- ``full_rank_of(layer, input_channels)``: the largest meaningful rank;
- ``rank_candidates(layer, input_channels)``: every rank worth trying, cheapest first;
- ``macs_for(layer, rank, input_shape)``: multiply-accumulates per sample of the chain at ``rank``;
- ``spectral_rank(layer, criterion)``: the rank an energy share or VBMF picks for ``layer``;
- ``from_layer(layer, rank)``: a built factorized layer initialised from the trained weights.

A rank is an int, or a tuple for layers with several ranks (Tucker-2: ``(r_in, r_out)``; Tucker-2
with a spatially separated core: ``(r_in, r_mid, r_out)``); ``rank_arity`` says which.
"""

import dataclasses

import keras
import numpy as np

from .. import _shapes
from ..decompositions import energy_rank, svd_factors
from ..ranks import matrix_rank

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


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_rank(rank, full_rank, layer_name):
    """Raise the ValueError for a rank outside ``1..full_rank`` (element-wise for tuples)."""
    if isinstance(full_rank, tuple):
        ok = (isinstance(rank, tuple) and len(rank) == len(full_rank)
              and all(_is_int(r) and 1 <= r <= f for r, f in zip(rank, full_rank)))
        if not ok:
            raise ValueError(
                f"`rank` for layer {layer_name!r} must be a tuple of {len(full_rank)} integers, each "
                f"between 1 and its full rank {full_rank}. Received: rank={rank!r}"
            )
        return tuple(int(r) for r in rank)
    if not _is_int(rank) or not 1 <= rank <= full_rank:
        raise ValueError(
            f"`rank` for layer {layer_name!r} must be an integer between 1 and its full rank "
            f"{full_rank}. Received: rank={rank!r}"
        )
    return int(rank)


def weights_reason(layer):
    """Why the weights of ``layer`` (of a supported class) cannot be factorized, or None."""
    if getattr(layer, "quantization_mode", None):
        return f"the layer is already quantized (quantization_mode={layer.quantization_mode!r})"
    if not layer.built:
        return "the layer is not built (it has no weights yet)"
    return None


def conv_reason(layer):
    """Why the convolution ``layer`` (1-D or 2-D) cannot be factorized, or None."""
    if layer.groups != 1:
        return f"groups={layer.groups} is not supported (only groups=1)"
    if layer.data_format != "channels_last":
        return f"data_format={layer.data_format!r} is not supported (only 'channels_last')"
    return weights_reason(layer)


class FactorizedLayer(keras.layers.Layer):
    """Base of every tflowrank factorized layer."""

    #: factorize method name, and the Keras layer classes this layer replaces
    method = None
    source_types = ()
    #: (weight name, axis of the rank) of each factor, in chain order
    factors = ()
    #: per rank component (one for an int rank), the (factor, axis) whose slices beyond the active
    #: rank are masked: zeroing them zeroes the whole component, so the masked chain computes
    #: exactly what the chain sliced to the active rank would
    rank_axes = ()
    #: per rank component, every (factor, axis) indexed by it: what slicing to a rank cuts, and
    #: the slices whose norms make a component's size for LowRankRegularizer
    rank_groups = ()
    #: rank of the input tensor the layer is built for (4 for images, 2 for vectors)
    input_ndim = 4
    #: how many numbers make a rank (1: an int)
    rank_arity = 1

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
        self.rank = self.normalize_rank(rank)
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
        # The rank the chain runs at, at most ``rank`` (the allocated one): RankScheduler lowers it
        # during fit without rebuilding the graph; ``tflowrank.finalize`` slices the factors to it.
        ranks = self.rank if isinstance(self.rank, tuple) else (self.rank,)
        self._active = self.add_weight(
            name="active_rank", shape=(len(ranks),), dtype="int32", trainable=False,
            initializer=keras.initializers.Constant(list(ranks)),
        )
        self.input_spec = keras.layers.InputSpec(
            min_ndim=self.input_ndim, max_ndim=4 if self.input_ndim == 4 else None,
            axes={-1: self._input_channels},
        )

    def _build_factors(self, input_channels):
        for index, shape in enumerate(self.factor_shapes(self, self.rank, input_channels)):
            name = self.factors[index][0]
            setattr(self, name, self.add_weight(name=name, shape=shape,
                                                initializer=self.kernel_initializer))

    def count_params(self):
        """Factor and bias parameters, without the active-rank bookkeeping (a few int32 counters)."""
        total = super().count_params()
        return total - int(np.prod(self._active.shape)) if self.built else total

    # -- the active rank ---------------------------------------------------------------------------
    @property
    def active_rank(self):
        """The rank the chain computes at (an int or a tuple like ``rank``), at most ``rank``."""
        if not self.built:
            return self.rank
        values = tuple(int(v) for v in np.asarray(self._active.numpy()))
        return values if isinstance(self.rank, tuple) else values[0]

    def set_active_rank(self, rank):
        """Run the chain at ``rank`` (between 1 and the allocated ``rank``, element-wise).

        Only the mask changes: no graph is rebuilt, so this works during ``fit``.
        """
        allocated = self.rank if isinstance(self.rank, tuple) else (self.rank,)
        rank = self.normalize_rank(rank) if not _is_int(rank) or len(allocated) > 1 else int(rank)
        values = rank if isinstance(rank, tuple) else (rank,)
        if len(values) != len(allocated) or not all(1 <= v <= a for v, a in zip(values, allocated)):
            raise ValueError(f"`rank` for layer {self.name!r} must be between 1 and the allocated rank "
                             f"{self.rank} in each position. Received: rank={rank!r}")
        self._active.assign(np.asarray(values, dtype="int32"))

    def sliced(self):
        """A new built layer computing this chain at its active rank with factors of that size.

        The factor slices beyond the active rank are dropped (they are masked off, so the output
        is the same); the configuration, the bias and ``_carry_state`` (quantization ranges) are
        carried over. This layer is not modified.
        """
        active, allocated = self.active_rank, self.rank
        actives = active if isinstance(active, tuple) else (active,)
        allocs = allocated if isinstance(allocated, tuple) else (allocated,)
        values = []
        for name, _ in self.factors:
            value = self._numpy(getattr(self, name))
            index = [slice(None)] * value.ndim
            for component, groups in enumerate(self.rank_groups):
                for factor, axis in groups:
                    if factor == name and actives[component] < allocs[component]:
                        index[axis] = slice(0, actives[component])
            values.append(value[tuple(index)])
        bias = self._numpy(self.bias) if self.bias is not None else None
        new = self.from_factors(self, active, values, bias, self.reconstruction_error)
        new._carry_state(self)
        return new

    def to_dense(self):
        """A built plain Keras layer (``Conv2D`` or ``Dense``) computing what this chain computes
        at its active rank: the layer the chain approximates, as far as its weights say."""
        common = {"activation": keras.activations.serialize(self.activation),
                  "use_bias": self.use_bias, "name": self.name, "dtype": self.dtype_policy}
        if self.input_ndim == 2:
            dense = keras.layers.Dense(self._units, **common)
        else:
            dense = keras.layers.Conv2D(self.filters, self.kernel_size, strides=self.strides,
                                        padding=self.padding, dilation_rate=self.dilation_rate,
                                        **common)
        dense.build((None,) * (self.input_ndim - 1) + (self._input_channels,))
        dense.kernel.assign(self.dense_kernel())
        if self.use_bias:
            dense.bias.assign(self._numpy(self.bias))
        return dense

    def steps(self, input_shape=None):
        """The chain at its active rank as plain steps (``tflowrank.interop.Step``), in order.

        Each step is one plain convolution, depthwise convolution, matmul, zero padding or strided
        slice holding NumPy weights; the last carries the bias and the activation. The steps
        compute exactly what ``call`` does (tested); ``tflowrank.interop`` rebuilds them as plain
        (tf_keras) layers. ``input_shape`` (batch first) is needed only where the geometry depends
        on the input size (a strided ``CPConv2D`` with "same" padding).
        """
        if not self.built:
            raise ValueError(f"Layer {self.name!r} is not built yet: it has no steps.")
        layer = self if self.active_rank == self.rank else self.sliced()
        *body, last = layer._steps(input_shape)
        bias = self._numpy(layer.bias) if layer.bias is not None else None
        activation = keras.activations.serialize(self.activation)
        return [*body, dataclasses.replace(last, bias=bias, activation=activation)]

    def _steps(self, input_shape):
        """The chain's steps without bias and activation (see ``steps``), at the allocated rank."""
        raise NotImplementedError

    def feasible_rank(self, rank):
        """``rank`` made consistent for this layer (some positions bound others); by default as is."""
        return rank

    def _carry_state(self, source):
        """Copy training state other than weights from ``source`` (a layer of the same chain).

        The quantization hooks set by ``tflowrank.quantize_aware`` are carried over: they hold no
        per-rank state (weight ranges are per output channel of each factor, read from the weight
        itself; intermediate ranges are per tensor), so the sliced chain is quantized alike.
        """
        for hook in ("_weight_quantizers", "_between_quantizers"):
            value = getattr(source, hook, None)
            if value:
                setattr(self, hook, dict(value) if isinstance(value, dict) else list(value))

    def _factor(self, name):
        """The factor weight ``name`` as the chain uses it: masked to the active rank, and passed
        through the weight quantizer when quantization-aware training set one."""
        weight = self._masked(name)
        quantizers = getattr(self, "_weight_quantizers", None)
        if quantizers:
            weight = quantizers[name](weight)
        return weight

    def _masked(self, name):
        """The factor weight ``name`` with the slices beyond the active rank zeroed."""
        weight = getattr(self, name)
        for index, (factor, axis) in enumerate(self.rank_axes):
            if factor == name:
                size = weight.shape[axis]
                keep = keras.ops.cast(keras.ops.arange(size) < self._active[index], weight.dtype)
                shape = [1] * len(weight.shape)
                shape[axis] = size
                weight = weight * keras.ops.reshape(keep, shape)
        return weight

    def _active_numpy(self, name):
        """The factor ``name`` as a NumPy array, zero beyond the active rank (as the chain uses it)."""
        value = self._numpy(getattr(self, name))
        if not self.built:
            return value
        active = self.active_rank if isinstance(self.rank, tuple) else (self.active_rank,)
        for index, (factor, axis) in enumerate(self.rank_axes):
            if factor == name and active[index] < value.shape[axis]:
                value = value.copy()
                index_ = [slice(None)] * value.ndim
                index_[axis] = slice(active[index], None)
                value[tuple(index_)] = 0
        return value

    def _between(self, x, step):
        """An intermediate tensor of the chain after ``step`` (0 for the first factor's output):
        passed through the activation quantizer when quantization-aware training set one."""
        quantizers = getattr(self, "_between_quantizers", None)
        return quantizers[step](x) if quantizers else x

    # -- what factorize and cost ask -------------------------------------------------------------
    @classmethod
    def normalize_rank(cls, rank):
        """The rank in canonical form: an int, or a tuple of ``rank_arity`` ints.

        An int stands for the same rank in every position of a tuple rank.
        """
        if cls.rank_arity == 1:
            return _positive_int(rank, "rank")
        if _is_int(rank):
            rank = (rank,) * cls.rank_arity
        if (not isinstance(rank, (tuple, list)) or len(rank) != cls.rank_arity
                or not all(_is_int(r) and r >= 1 for r in rank)):
            raise ValueError(
                f"`rank` of a {cls.__name__} must be a positive int or a tuple of {cls.rank_arity} "
                f"positive ints. Received: rank={rank!r}"
            )
        return tuple(int(r) for r in rank)

    @classmethod
    def rank_candidates(cls, layer, input_channels):
        """Every rank worth trying, from cheapest to full; tuple ranks grow in proportion."""
        full = cls.full_rank_of(layer, input_channels)
        if not isinstance(full, tuple):
            return list(range(1, full + 1))
        steps = max(full)
        ranks = (tuple(max(1, round(f * k / steps)) for f in full) for k in range(1, steps + 1))
        return list(dict.fromkeys(ranks))

    @classmethod
    def factor_shapes(cls, layer, rank, input_channels):
        """Shapes of the factor weights, in ``factors`` order, for ``layer``'s geometry at ``rank``."""
        raise NotImplementedError

    @classmethod
    def params_for(cls, layer, rank, input_channels):
        """Parameters of the chain at ``rank`` (factors and bias)."""
        shapes = cls.factor_shapes(layer, cls.normalize_rank(rank), input_channels)
        return sum(int(np.prod(shape)) for shape in shapes) + (
            cls._units_of(layer) if layer.use_bias else 0)

    @classmethod
    def spectral_rank(cls, layer, criterion):
        """The rank ``criterion`` picks for ``layer``: ``("energy", share)`` or ``("vbmf",)``."""
        if criterion[0] == "energy":
            return cls.rank_from_energy(cls.energy_spectra(layer), criterion[1])
        return cls.vbmf_rank(layer)

    @classmethod
    def energy_spectra(cls, layer):
        """The singular values of each unfolding of ``layer``'s kernel this method truncates."""
        raise NotImplementedError

    @classmethod
    def rank_from_energy(cls, spectra, share):
        """The rank keeping ``share`` of the energy of each spectrum of ``energy_spectra``."""
        ranks = tuple(energy_rank(s, share) for s in spectra)
        return ranks[0] if len(ranks) == 1 else ranks

    @classmethod
    def vbmf_rank(cls, layer):
        """The rank EVBMF keeps on the unfolding(s) this method truncates."""
        raise NotImplementedError

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
        """Multiply-accumulates per sample of this layer's chain at its active rank for
        ``input_shape`` (batch first): what the finalized layer costs."""
        return self.macs_for(self, self.active_rank, input_shape)

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
        kernel = cls.source_kernel(layer)
        cin = kernel.shape[-2]
        try:
            rank = cls.normalize_rank(rank)
        except ValueError:
            pass  # check_rank says what is wrong, with the full rank
        rank = check_rank(rank, cls.full_rank_of(layer, cin), layer.name)
        values, error = cls._decompose(kernel, rank)
        bias = cls._numpy(layer.bias) if layer.use_bias else None
        return cls.from_factors(layer, rank, values, bias, error)

    @classmethod
    def source_kernel(cls, layer):
        """``layer``'s kernel as a NumPy array in the layout the factors decompose (a Conv1D's
        ``(k, cin, cout)`` becomes the one-row ``(1, k, cin, cout)`` for the 1-D chains)."""
        return cls._numpy(layer.kernel)

    @classmethod
    def from_factors(cls, layer, rank, values, bias, reconstruction_error):
        """A built layer with ``layer``'s configuration holding the given factor arrays and bias.

        ``values`` are in ``factors`` order; ``bias`` is None when the source has none.
        """
        cin = values[0].shape[-2]  # (.., cin, r) for convolutions, (in, r) for dense layers
        config = cls._config_from(layer)
        config["use_bias"] = bias is not None
        new = cls(rank=rank, reconstruction_error=reconstruction_error, **config)
        new.build((None,) * (cls.input_ndim - 1) + (cin,))
        for (name, _), value in zip(cls.factors, values):
            getattr(new, name).assign(value)
        if bias is not None:
            new.bias.assign(bias)
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
    @property
    def _units(self):
        return self._units_of(self)

    @classmethod
    def _units_of(cls, layer):
        return layer.filters
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
    #: whether the method is meant for kernels larger than 1 x 1 (it reproduces a 1 x 1 too, but
    #: only with more ops than ``SVDConv2D``): ``factorize`` skips 1 x 1 kernels it was not named
    needs_spatial_extent = True

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
        return conv_reason(layer)

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


class KernelSVD:
    """Spectral classmethods of the chains that are a truncated SVD of the kernel unfolded to
    ``(everything but the last axis) x out``: ``SVDConv2D`` and ``SVDDense``."""

    @classmethod
    def energy_spectra(cls, layer):
        kernel = cls.source_kernel(layer).astype(np.float64)
        return (np.linalg.svd(kernel.reshape(-1, kernel.shape[-1]), compute_uv=False),)

    @classmethod
    def vbmf_rank(cls, layer):
        kernel = cls.source_kernel(layer)
        return matrix_rank(kernel.reshape(-1, kernel.shape[-1]), ("vbmf",))

    @classmethod
    def _decompose(cls, kernel, rank):
        result = svd_factors(kernel, rank)
        return (result.first, result.second), result.relative_error

