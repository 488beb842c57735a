"""Walk and rewrite Sequential and Functional Keras models (private).

``layer_calls`` lists every call of a leaf layer in execution order, looking inside nested
Sequential / Functional models, with the shapes it sees. ``rewrite`` returns a new model in which
chosen layers are replaced and every other layer is a fresh copy holding a copy of its weights,
so the input model and its layers are never touched or shared.
"""

import sys
from dataclasses import dataclass

import keras
import numpy as np

from ._shapes import causal_left

__all__ = ["LayerCall", "check_model", "copy_weights", "input_probe", "layer_calls", "linear_responses",
           "rewrite"]


@dataclass(frozen=True)
class LayerCall:
    """One call of a leaf layer: where it sits and the shapes it sees (batch dimension first)."""

    layer: object
    path: str
    input_shapes: tuple
    output_shapes: tuple

    @property
    def input_shape(self):
        return self.input_shapes[0] if len(self.input_shapes) == 1 else self.input_shapes

    @property
    def output_shape(self):
        return self.output_shapes[0] if len(self.output_shapes) == 1 else self.output_shapes


def _is_graph_model(obj):
    return isinstance(obj, (keras.Sequential, keras.src.models.Functional))


def check_model(model, argument="model"):
    """Raise a clear error unless ``model`` is a built Sequential or Functional Keras model."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`{argument}` must be a keras.Model (Sequential or Functional). "
            f"Received: {argument} of type {type(model).__name__}"
        )
    if not _is_graph_model(model):
        raise ValueError(
            f"`{argument}` is a subclassed keras.Model ({type(model).__name__}): its layer graph is "
            "hidden in Python code, so tflowrank cannot rewrite it. Build it with the Functional API "
            "(keras.Model(inputs, outputs)) or as a keras.Sequential, or replace its layers yourself "
            "with tflowrank.layers.<Layer>.from_layer(layer, rank)."
        )
    if not model.built or _functional(model) is None:
        raise ValueError(
            f"`{argument}` ({model.name!r}) is not built: give it a keras.Input or call it once on "
            "data before factorizing or costing it."
        )


def _functional(model):
    """The Functional graph behind a model (a Sequential keeps one once built)."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    return model


def _shapes(tensors):
    return tuple(tuple(t.shape) for t in tensors)


def layer_calls(model, _prefix=""):
    """Every call of a leaf layer of ``model`` in execution order, nested models expanded.

    A nested model called twice contributes its layers twice, as it costs twice.
    """
    graph = _functional(model)
    calls = []
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            op = node.operation
            if isinstance(op, keras.layers.InputLayer):
                continue
            if _is_graph_model(op):
                calls.extend(layer_calls(op, _prefix=f"{_prefix}{op.name}/"))
                continue
            calls.append(
                LayerCall(
                    layer=op,
                    path=f"{_prefix}{op.name}",
                    input_shapes=_shapes(node.input_tensors),
                    output_shapes=_shapes(node.output_tensors),
                )
            )
    return calls


def unwrapped(layer):
    """The layer a ``tflowrank.quantize_aware`` wrapper computes with, or ``layer`` itself."""
    quantizers = sys.modules.get("tflowrank.quantizers")  # loaded iff a QAT model exists
    if quantizers is not None and isinstance(layer, quantizers.QuantizedLayer):
        return layer.layer
    return layer


def rewrite(model, replacements):
    """Return a copy of ``model`` with ``replacements[id(layer)]`` in place of those layers.

    Replacement layers must be built and hold their weights already; every other layer is
    re-created from its config and given a copy of the original's weights.
    """
    copies = []

    def clone(layer):
        if id(layer) in replacements:
            return replacements[id(layer)]
        new = layer.__class__.from_config(layer.get_config())
        copies.append((layer, new))
        return new

    new_model = keras.models.clone_model(model, clone_function=clone, recursive=True)
    if not new_model.built:
        new_model.build(model.input_shape)
    for old, new in copies:
        copy_weights(old, new)
    return new_model


def copy_weights(old, new):
    """Give ``new`` (built, of ``old``'s config) a copy of ``old``'s weights. A preprocessing
    layer's adapted state (a Normalization's mean and variance) is read from its weights only
    by ``finalize_state``, as Keras does when it loads a model: without it the copy would
    normalize with its initial values."""
    new.set_weights(old.get_weights())
    if hasattr(new, "finalize_state"):
        new.finalize_state()


def input_probe(model, name):
    """A function batch -> the input tensor of layer ``name`` (a top-level layer) in ``model``."""
    probe = keras.Model(model.inputs[0], model.get_layer(name).input)
    return lambda batch: probe(batch, training=False)


def linear_responses(layer, inputs):
    """A Conv1D's, Conv2D's or Dense's output before its activation (kernel and bias), as a NumPy
    array."""
    ops = keras.ops
    if len(layer.kernel.shape) >= 3:
        padding = layer.padding
        if padding == "causal":  # a Conv1D: zeros on the left, then "valid"
            left = causal_left(layer.kernel_size[0], layer.dilation_rate[0])
            inputs, padding = ops.pad(inputs, ((0, 0), (left, 0), (0, 0))), "valid"
        y = ops.conv(inputs, layer.kernel, strides=layer.strides, padding=padding,
                     dilation_rate=layer.dilation_rate)
    else:
        y = ops.matmul(inputs, layer.kernel)
    if layer.use_bias:
        y = ops.add(y, layer.bias)
    return np.asarray(ops.convert_to_numpy(y))
