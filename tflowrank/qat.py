"""``quantize_aware``: a copy of a Keras model that simulates int8 TFLite inference while training.

The copy is rebuilt node by node from the model's graph (nested models are inlined):

- a BatchNormalization right after a Conv2D, DepthwiseConv2D, Dense or factorized layer (with no
  activation, and no other consumer) is folded into it, ``W' = W * s``, ``b' = (b - mean) * s +
  beta`` with ``s = gamma / sqrt(var + eps)`` per output channel: the BN disappears, as it does in
  the TFLite graph, so the ranges learned are those of the exported convolution;
- weighted layers become ``QuantizedLayer`` (per-channel symmetric int8 weights; a factorized
  layer's intermediate tensors get their own activation ranges); a SeparableConv2D is split into
  its depthwise and pointwise convolutions with a range between them, as TFLite runs it;
- an ``ActivationQuantizer`` follows every model input and every tensor TFLite stores with its own
  scale: outputs of weighted layers, Add, Multiply, Concatenate, global average pooling, a
  Rescaling or Normalization (and, for one with an offset, between its scale and its offset:
  TFLite's MUL and ADD, whose per-channel constants are quantized as the converter does) and
  activations. An activation TFLite runs as op(s) of its own (sigmoid, tanh, softmax,
  hard_silu, gelu, leaky_relu, silu as LOGISTIC then MUL) follows its layer's own range.
  A weighted layer or Add whose only consumer is a ReLU / ReLU6 gets no range of its own (TFLite
  fuses the activation), and max pooling, average pooling, Flatten, Reshape, ZeroPadding2D and
  Dropout keep the scale of their input, as TFLite requires; augmentation layers (RandomFlip,
  RandomRotation, ...) and noise act while training and, identities at inference, vanish.

Reference for the scheme: Jacob et al., "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", CVPR 2018 (simulated quantization, EMA ranges,
batch-norm folding).
"""

import numpy as np

__all__ = ["quantize_aware"]

# what each supported Keras layer class becomes
_WEIGHTED = ("Conv2D", "Conv1D", "DepthwiseConv2D", "Dense", "SeparableConv2D")
_KEEP_SCALE = ("MaxPooling2D", "AveragePooling2D", "GlobalMaxPooling2D", "MaxPooling1D",
               "AveragePooling1D", "GlobalMaxPooling1D", "Flatten", "Reshape", "ZeroPadding2D",
               "ZeroPadding1D", "Dropout", "InputLayer")
# layers that are the identity at inference (augmentation, noise, dropout variants): they act
# while training, as in the float model, and vanish from the TFLite graph
_INFERENCE_IDENTITY = ("RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation",
                       "RandomContrast", "RandomBrightness", "GaussianNoise", "GaussianDropout",
                       "AlphaDropout", "SpatialDropout1D", "SpatialDropout2D",
                       "ActivityRegularization")
_RESCALE = ("Add", "Concatenate", "GlobalAveragePooling2D", "GlobalAveragePooling1D", "Rescaling",
            "Normalization", "Multiply")
_FUSABLE_INTO = ("weighted", "Add")
_FUSED_ACTIVATIONS = ("linear", "relu", "relu6")
# activations TFLite runs as their own int8 op with a fixed output scale (SOFTMAX and LOGISTIC:
# 1/256, zero point -128; TANH: 1/128, zero point 0), whether a layer (Softmax, Activation) or a
# weighted layer's activation
_FIXED_RANGE_ACTIVATIONS = {"softmax": (0.0, 255 / 256), "sigmoid": (0.0, 255 / 256),
                            "tanh": (-1.0, 127 / 128)}
# activations TFLite runs as their own int8 op with a range of its own: HARD_SWISH, GELU,
# LEAKY_RELU (Keras's default slope, 0.2)
_OWN_RANGE_ACTIVATIONS = ("hard_silu", "gelu", "leaky_relu")
# silu (swish) runs as x * sigmoid(x): an int8 LOGISTIC (fixed range), then an int8 MUL
_SPLIT_ACTIVATIONS = (*_FIXED_RANGE_ACTIVATIONS, *_OWN_RANGE_ACTIVATIONS, "silu")


def quantize_aware(model, float_fallback=False, ema_decay=0.99):
    """Return a new model that trains with int8 fake quantization (quantization-aware training).

    Weights are fake-quantized to int8 per output channel (symmetric, ``[-127, 127]``),
    activations per tensor (asymmetric int8) with ranges tracked by an exponential moving
    average while training and frozen at inference. Batch normalization is folded into the
    layer before it. Fake quantization is on from the start; ``tflowrank.callbacks.QuantizeAware``
    switches it on at a later epoch. ``export_tflite(qat_model, path)`` then writes a fully int8
    model with the trained ranges (no calibration data needed). The model is not compiled.

    Args:
        model: a built Sequential or Functional Keras model. It and its weights are not modified.
        float_fallback: what to do with layers quantization does not cover (see
            ``docs/qat.md``). ``False``: raise ``ValueError`` naming them. ``True``, or a list
            of layer names: keep those layers as float copies (no weight quantization; their
            output range is still tracked, so an int8 export works where TFLite has an int8
            kernel for them).
        ema_decay: weight of the old range in each moving-average update, in ``[0, 1)``.

    Returns:
        A new ``keras.Model`` with the input model's name and inputs.

    Raises:
        ValueError: a layer is not covered and not in ``float_fallback``.
    """
    from ._backend import require_tensorflow

    keras, _ = require_tensorflow()
    from . import graph, quantizers
    from .export import check_float_inputs

    graph.check_model(model)
    check_float_inputs(model, "quantize_aware")
    quantizers.ActivationQuantizer(ema_decay)  # validates ema_decay
    builder = _Builder(keras, quantizers, float(ema_decay))
    unsupported = _unsupported(builder, model, float_fallback)
    if unsupported:
        raise ValueError(
            "quantize_aware cannot quantize these layers: " + "; ".join(unsupported.values())
            + ". Pass float_fallback=True (or a list of their names) to keep them in float, or "
            f"replace them. Received: model={model.name!r}")
    inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name) for t in model.inputs]
    quantized_inputs = [builder.quantizer(f"{t.name}_quant")(t) for t in inputs]
    outputs = builder.run(model, quantized_inputs)
    return keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs, name=model.name)


def unsupported_layers(model, float_fallback=False):
    """``{layer name: reason}`` of the layers ``quantize_aware(model, float_fallback)`` would
    refuse (empty: it would not raise), without building anything."""
    from ._backend import require_tensorflow

    keras, _ = require_tensorflow()
    from . import graph, quantizers

    graph.check_model(model)
    return _unsupported(_Builder(keras, quantizers, 0.99), model, float_fallback)


def _unsupported(builder, model, float_fallback):
    builder.fallback = _fallback_names(model, float_fallback)
    unsupported = builder.check(model)
    if unsupported and float_fallback is True:
        builder.fallback = set(unsupported)
        unsupported = builder.check(model)
    return unsupported


def _affine(layer, epsilon):
    """``(scale, offset)`` of a Rescaling or Normalization layer as TFLite's constants hold them
    (``_as_int8_constant``): a float or a per-channel list each; offset None if it is zero.
    ``epsilon``: Keras's, the floor of a Normalization's standard deviation."""
    if type(layer).__name__ == "Normalization":
        mean, variance = (np.asarray(v, np.float64) for v in (layer.mean, layer.variance))
        std = np.maximum(np.sqrt(variance), epsilon)
        scale, offset = 1.0 / std, -mean / std  # Keras: (x - mean) / max(sqrt(var), epsilon)
    else:
        scale, offset = (np.asarray(v, np.float64) for v in (layer.scale, layer.offset))
    scale, offset = _as_int8_constant(scale), _as_int8_constant(offset)
    return scale, (offset if np.any(np.asarray(offset) != 0) else None)


def _as_int8_constant(values):
    """``values`` (one per channel, or one) as the TFLite converter stores a MUL's or an ADD's
    constant: one value exactly (the end of its own range); several quantized to int8 per tensor
    over ``[min(values, 0), max(values, 0)]`` (256 levels, zero exact), then back to floats."""
    values = np.asarray(values, np.float64).reshape(-1)
    if values.size == 1:
        return float(values[0])
    low, high = min(values.min(), 0.0), max(values.max(), 0.0)
    if high == low:
        return [0.0] * values.size
    step = (high - low) / 255
    zero = np.round(-low / step)
    levels = np.clip(np.round(values / step) + zero, 0, 255)
    return [float(v) for v in (levels - zero) * step]


def check_float_fallback(value, name="float_fallback"):
    """``value`` as ``quantize_aware`` takes it: True, False, or a list of layer names; a
    ``TypeError`` naming the argument ``name`` otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)) \
            or not all(isinstance(n, str) for n in value):
        raise TypeError(f"`{name}` must be True, False or a list of layer names. "
                        f"Received: {name}={value!r}")
    return list(value)


def _fallback_names(model, float_fallback):
    from . import graph

    names = {call.layer.name for call in graph.layer_calls(model)}
    if float_fallback is None or isinstance(check_float_fallback(float_fallback), bool):
        return set()
    missing = sorted(set(float_fallback) - names)
    if missing:
        raise ValueError(f"`float_fallback` names layers the model does not have: {missing}. "
                         f"Received: float_fallback={list(float_fallback)!r}")
    return set(float_fallback)


class _Folds:
    """The plan of one graph: BN layers folded, and into which layer; BNs that cannot be."""

    def __init__(self):
        self.bn_of = {}  # id(weighted layer) -> the BN folded into it
        self.folded = set()  # id(BN layer)
        self.errors = []  # (path, reason)


class _Builder:
    def __init__(self, keras, quantizers, ema_decay):
        self.keras, self.q, self.ema_decay = keras, quantizers, ema_decay
        self.fallback = set()
        self.folds = {}  # id(graph model) -> _Folds
        self.converted = {}  # id(layer) -> new layer (shared layers stay shared)
        self.names = set()

    # -- what is covered ---------------------------------------------------------------------------
    def kind(self, layer):
        name = type(layer).__name__
        if isinstance(layer, self.keras.layers.InputLayer):
            return "keep"
        if self.q._is_factorized(layer) or name in _WEIGHTED:
            return "weighted"
        if name in _KEEP_SCALE or name in _INFERENCE_IDENTITY:
            return "keep"
        if name in _RESCALE:
            return name
        if name in ("ReLU", "Activation") and self._activation_name(layer) is not None:
            return "linear" if self._activation_name(layer) == "linear" else "activation"
        if self._fixed_activation(layer) is not None:
            return "fixed"
        if name == "LeakyReLU":
            return "own"
        if name == "Activation" and self._fn_name(layer.activation, (*_OWN_RANGE_ACTIVATIONS, "silu")):
            return "silu" if self._fn_name(layer.activation, ("silu",)) else "own"
        if name == "BatchNormalization":
            return "bn"
        return None

    def _activation_name(self, layer):
        """relu / relu6 / linear for a ReLU or Activation layer TFLite runs in int8, else None."""
        if type(layer).__name__ == "ReLU":
            if layer.negative_slope or layer.threshold:
                return None
            return {None: "relu", 6.0: "relu6"}.get(
                None if layer.max_value is None else float(layer.max_value))
        return self._fn_name(layer.activation)

    @staticmethod
    def _fn_name(fn, names=_FUSED_ACTIVATIONS):
        """The name of the activation ``fn`` if it is one of ``names``, else None."""
        name = getattr(fn, "__name__", None) if fn is not None else "linear"
        return name if name in names else None

    def _split_activation(self, layer):
        """The activation a weighted ``layer`` applies that TFLite runs as op(s) of its own after
        the layer's int8 output (sigmoid, tanh, softmax, hard_silu, gelu, leaky_relu, silu), else
        None."""
        if self.kind(layer) != "weighted" or type(layer).__name__ == "SeparableConv2D":
            return None
        return self._fn_name(getattr(layer, "activation", None), _SPLIT_ACTIVATIONS)

    def _fixed_activation(self, layer):
        """softmax / sigmoid / tanh for a layer applying one that TFLite runs as its own
        int8 op with a fixed output range (an Activation or Softmax layer, or a weighted layer's
        activation), else None."""
        name = type(layer).__name__
        if name == "Softmax":
            axis = layer.axis if isinstance(layer.axis, int) else tuple(layer.axis)
            return "softmax" if axis in (-1, (-1,)) else None
        if name == "Activation" or (name in _WEIGHTED and name != "SeparableConv2D") \
                or self.q._is_factorized(layer):
            fn = getattr(layer, "activation", None)
            fn_name = getattr(fn, "__name__", None)
            return fn_name if fn_name in _FIXED_RANGE_ACTIVATIONS else None
        return None

    def unsupported(self, layer):
        """Why ``layer`` cannot be quantized, or None."""
        kind = self.kind(layer)
        if kind is None:
            return "no int8 simulation for this layer type"
        if kind == "Normalization":
            if layer.invert:
                return "invert=True (only the forward normalization)"
            if any(d != 1 for d in np.shape(layer.mean)[:-1]):
                return f"axis={layer.axis} (only the last axis, or none)"
            return None
        if kind != "weighted":
            return None
        name = type(layer).__name__
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            return f"data_format={layer.data_format!r} (only 'channels_last')"
        if getattr(layer, "quantization_mode", None):
            return f"already quantized by Keras (quantization_mode={layer.quantization_mode!r})"
        if self._fn_name(layer.activation) is None and self._split_activation(layer) is None:
            return (f"activation {getattr(layer.activation, '__name__', layer.activation)!r} "
                    f"(only {', '.join(_FUSED_ACTIVATIONS)} fuse into an int8 {name}, and "
                    f"{', '.join(_SPLIT_ACTIVATIONS)} run as their own ops after it)")
        return None

    def check(self, model):
        """{name: description} of every layer that cannot be quantized and is not a fallback."""
        from . import graph

        problems = {call.layer.name: f"{call.path!r} ({type(call.layer).__name__}: {reason})"
                    for call in graph.layer_calls(model)
                    if (reason := self.unsupported(call.layer)) and call.layer.name not in self.fallback}
        for path, reason in self.plan(model).errors:
            problems[path.rsplit("/", 1)[-1]] = f"{path!r} (BatchNormalization: {reason})"
        return problems

    # -- the plan: consumers and BN folds ----------------------------------------------------------
    def plan(self, model, prefix=""):
        """Plan every graph of ``model`` (nested ones too); return the merged fold errors."""
        from . import graph

        function = graph._functional(model)
        folds = self.folds[id(model)] = _Folds()
        consumers = self._consumers(function)
        for node in self._nodes(function):
            op = node.operation
            if graph._is_graph_model(op):
                folds.errors += self.plan(op, prefix=f"{prefix}{op.name}/").errors
                continue
            if self.kind(op) != "bn" or op.name in self.fallback:
                continue
            reason = self._fold_problem(op, node, consumers)
            if reason:
                folds.errors.append((f"{prefix}{op.name}", reason))
            else:
                producer = node.input_tensors[0]._keras_history.operation
                folds.bn_of[id(producer)] = op
                folds.folded.add(id(op))
        return folds

    def _fold_problem(self, bn, node, consumers):
        if len(node.input_tensors) != 1 or bn.axis not in (-1, len(node.input_tensors[0].shape) - 1):
            return f"axis={bn.axis} is not the channel (last) axis"
        tensor = node.input_tensors[0]
        producer = tensor._keras_history.operation
        if self.kind(producer) != "weighted" or type(producer).__name__ == "SeparableConv2D" \
                or producer.name in self.fallback:
            return ("it does not follow a Conv2D, DepthwiseConv2D, Dense or factorized layer, so "
                    "it cannot be folded")
        if self._fn_name(producer.activation) != "linear":
            return f"the layer before it, {producer.name!r}, has an activation"
        if len(consumers.get(id(tensor), ())) != 1 or len(producer._inbound_nodes) != 1:
            return f"the output of {producer.name!r} is also used elsewhere"
        return None

    @staticmethod
    def _nodes(function):
        for depth in sorted(function._nodes_by_depth, reverse=True):
            yield from function._nodes_by_depth[depth]

    def _consumers(self, function):
        consumers = {}
        for node in self._nodes(function):
            for tensor in node.input_tensors:
                consumers.setdefault(id(tensor), []).append(node.operation)
        for tensor in function.outputs:
            consumers.setdefault(id(tensor), []).append(None)  # the model output
        return consumers

    # -- building ----------------------------------------------------------------------------------
    def unique(self, name):
        base, index = name, 1
        while name in self.names:
            index += 1
            name = f"{base}_{index}"
        self.names.add(name)
        return name

    def quantizer(self, name, fixed_range=None):
        return self.q.ActivationQuantizer(self.ema_decay, fixed_range=fixed_range, name=self.unique(name))

    def run(self, model, inputs):
        from . import graph

        function = graph._functional(model)
        folds = self.folds[id(model)]
        consumers = self._consumers(function)
        bn_output = {}  # id(weighted layer) -> the folded BN's output tensor

        for node in self._nodes(function):
            if self.kind(node.operation) == "bn" and id(node.operation) in folds.folded:
                bn_output[id(node.input_tensors[0]._keras_history.operation)] = node.output_tensors[0]

        def call(op, *args, **kwargs):
            if graph._is_graph_model(op):
                return self.run(op, list(self.keras.tree.flatten((args, kwargs))))
            if id(op) in folds.folded:
                return args[0]  # the layer before already applies it
            if self.kind(op) in ("Rescaling", "Normalization") and op.name not in self.fallback:
                # x * scale + offset as TFLite runs it: a MUL, then (with an offset) an ADD, each
                # int8 with its own output range, by constants quantized as the converter does
                scale, offset = _affine(op, self.keras.backend.epsilon())
                if scale == 1.0 and offset is None:
                    return args[0]  # the identity: TFLite drops it
                if offset is not None:
                    multiply = self.keras.layers.Rescaling(scale, name=self.unique(f"{op.name}_scale"))
                    args = (self.quantizer(f"{op.name}_scale_quant")(multiply(*args, **kwargs)),)
                    kwargs, scale = {}, 1.0
                op = self.keras.layers.Rescaling(scale, offset or 0.0, name=self.unique(op.name))
            native = op.name not in self.fallback
            if native and self.kind(op) == "silu":
                outputs = self._silu(op.name, args[0])
            else:
                outputs = self.convert(op, folds.bn_of.get(id(op)))(*args, **kwargs)
            split = self._split_activation(op) if native else None
            if split:  # TFLite splits it: the layer's int8 output, then the activation's op(s)
                outputs = self.quantizer(f"{op.name}_linear_quant")(outputs)
                outputs = self._silu(op.name, outputs) if split == "silu" else self.keras.layers.Activation(
                    op.activation, name=self.unique(f"{op.name}_{split}"))(outputs)
            if not self._needs_range(op, outputs, consumers, bn_output):
                return outputs
            fixed = self._fixed_activation(op)
            if fixed and native:
                return self.quantizer(f"{op.name}_quant", _FIXED_RANGE_ACTIVATIONS[fixed])(outputs)
            return self.quantizer(f"{op.name}_quant")(outputs)

        return function._run_through_graph(inputs, call_fn=call)

    def _silu(self, name, x):
        """``x * sigmoid(x)`` as TFLite runs it: an int8 LOGISTIC with its fixed output range,
        then a MUL (whose output range the caller adds)."""
        sigmoid = self.keras.layers.Activation("sigmoid", name=self.unique(f"{name}_sigmoid"))(x)
        sigmoid = self.quantizer(f"{name}_sigmoid_quant", _FIXED_RANGE_ACTIVATIONS["sigmoid"])(sigmoid)
        return self.keras.layers.Multiply(name=self.unique(f"{name}_mul"))([x, sigmoid])

    def _needs_range(self, op, outputs, consumers, bn_output):
        kind = "fallback" if op.name in self.fallback else self.kind(op)
        if kind in ("keep", "linear"):
            return False
        if kind in _FUSABLE_INTO and self._fn_name(op.activation if kind == "weighted" else None) \
                == "linear":
            (tensor,) = op._inbound_nodes[0].output_tensors if len(op._inbound_nodes) == 1 \
                else (None,)
            tensor = bn_output.get(id(op), tensor)
            users = consumers.get(id(tensor), ()) if tensor is not None else ()
            if len(users) == 1 and users[0] is not None and self.kind(users[0]) == "activation" \
                    and users[0].name not in self.fallback:
                return False  # TFLite fuses the ReLU / ReLU6 into this op
        return True

    def convert(self, layer, bn=None):
        if id(layer) in self.converted:
            return self.converted[id(layer)]
        if layer.name in self.fallback or self.kind(layer) != "weighted":
            new = _copy(layer)
        elif type(layer).__name__ == "SeparableConv2D":
            new = self._separable(layer)
        else:
            copy = _fold(self.keras, layer, bn) if bn else _copy(layer)
            if self._split_activation(layer):  # applied after the layer's own range (run)
                copy.activation = self.keras.activations.get("linear")
            new = self.q.QuantizedLayer(copy, self.ema_decay)
        self.converted[id(layer)] = new
        return new

    def _separable(self, layer):
        """The depthwise and the pointwise steps as two quantized layers, a range between."""
        keras = self.keras
        depthwise_kernel, pointwise_kernel, *bias = layer.get_weights()
        depthwise = keras.layers.DepthwiseConv2D(
            layer.kernel_size, strides=layer.strides, padding=layer.padding,
            depth_multiplier=layer.depth_multiplier, dilation_rate=layer.dilation_rate,
            use_bias=False, name=f"{layer.name}_depthwise")
        pointwise = keras.layers.Conv2D(layer.filters, 1, activation=layer.activation,
                                        use_bias=layer.use_bias, name=f"{layer.name}_pointwise")
        depthwise.build((None, None, None, depthwise_kernel.shape[2]))
        depthwise.set_weights([depthwise_kernel])
        pointwise.build((None, None, None, pointwise_kernel.shape[2]))
        pointwise.set_weights([pointwise_kernel, *bias])
        steps = (self.q.QuantizedLayer(depthwise, self.ema_decay),
                 self.quantizer(f"{layer.name}_depthwise_quant"),
                 self.q.QuantizedLayer(pointwise, self.ema_decay))

        def chain(x):
            for step in steps:
                x = step(x)
            return x

        return chain


def _copy(layer):
    """A fresh layer with ``layer``'s config and a copy of its weights."""
    from .graph import copy_weights

    new = layer.__class__.from_config(layer.get_config())
    if layer.built and layer.weights:
        new.build(_built_shape(layer))
        copy_weights(layer, new)
    return new


def _built_shape(layer):
    config = layer.get_build_config() or {}
    return config.get("input_shape")


def _fold(keras, layer, bn):
    """A copy of ``layer`` with the inference-mode ``bn`` after it folded into its weights."""
    numpy = layer._numpy if hasattr(layer, "_numpy") else (lambda v: np.asarray(v.numpy()))
    mean, variance = numpy(bn.moving_mean), numpy(bn.moving_variance)
    gamma = numpy(bn.gamma) if bn.scale else np.ones_like(mean)
    beta = numpy(bn.beta) if bn.center else np.zeros_like(mean)
    scale, bias = fold_batch_norm(mean, variance, gamma, beta, bn.epsilon,
                                  numpy(layer.bias) if layer.use_bias else None)
    if hasattr(layer, "factors"):  # factorized: the last factor's last axis is the output channel
        values = [numpy(getattr(layer, name)) for name, _ in layer.factors]
        values[-1] = values[-1] * scale
        new = type(layer).from_factors(layer, layer.rank, values, bias, layer.reconstruction_error)
        new.set_active_rank(layer.active_rank)
        return new
    kernel = numpy(layer.kernel)
    if type(layer).__name__ == "DepthwiseConv2D":
        kernel = kernel * scale.reshape(kernel.shape[-2:])
    else:
        kernel = kernel * scale
    config = layer.get_config()
    config["use_bias"] = True
    new = layer.__class__.from_config(config)
    new.build(_built_shape(layer))
    new.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return new


def fold_batch_norm(mean, variance, gamma, beta, epsilon, bias=None):
    """Per-channel ``(scale, bias)`` of a layer followed by inference-mode batch normalization:
    ``bn(y + b) = scale * y + new_bias``, with ``scale = gamma / sqrt(variance + epsilon)`` and
    ``new_bias = (b - mean) * scale + beta`` (``b = 0`` when ``bias`` is None)."""
    scale = gamma / np.sqrt(variance + epsilon)
    bias = np.zeros_like(mean) if bias is None else bias
    return scale.astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)


def prepare_export(model):
    """For ``export_tflite``: a copy of a QAT model that always fake-quantizes with its frozen
    ranges (no float blend), factorized layers sliced to their active ranks; None if ``model``
    has no quantization layers."""
    from ._backend import require_tensorflow

    keras, _ = require_tensorflow()
    from . import quantizers

    layers = quantizers.quantizer_layers(model)
    if not layers:
        return None
    untracked = [layer.name for layer in layers if isinstance(layer, quantizers.ActivationQuantizer)
                 and float(layer.range_tracked.numpy()) < 0.5]
    if untracked:
        raise ValueError(
            "The quantization-aware model has activation ranges that were never tracked (train it "
            f"with fit for at least one step before exporting): {', '.join(untracked)}. "
            f"Received: model={model.name!r}")

    def clone(layer):
        if isinstance(layer, quantizers.QuantizedLayer) and layer.factorized \
                and layer.layer.active_rank != layer.layer.rank:
            new = layer.sliced()
        else:
            new = _copy(layer)
        for sub in [new, *new._flatten_layers(include_self=False)]:
            if isinstance(sub, quantizers.QuantizedLayer):
                sub._export = True
            elif isinstance(sub, quantizers.ActivationQuantizer):
                low, high = (float(v.numpy()) for v in sub.quantization_range())
                sub._export_range = (low, high)
        return new

    return keras.models.clone_model(model, clone_function=clone, recursive=True)
