"""tf_keras interop: a factorized Keras 3 model as plain layers, for tfmot and other Keras 2 tools.

tensorflow-model-optimization (tfmot) 0.8 quantizes tf_keras (Keras 2) models only. Every
tflowrank layer is a chain of plain steps (``FactorizedLayer.steps()``: convolutions, depthwise
convolutions, matmuls, a zero padding, a strided slice), so a factorized model can be rebuilt from
ordinary layers that tfmot knows: ``Conv2D``, ``DepthwiseConv2D``, ``Dense``, ``ZeroPadding2D``
and, for a slice, ``MaxPooling2D`` with a 1 x 1 window (which is exactly ``x[:, ::sh, ::sw]``).

The recommended workflow uses two processes, since tfmot wants ``TF_USE_LEGACY_KERAS=1`` set
before TensorFlow is imported:

1. Keras 3 side: ``save_portable(model, "model.npz")`` writes the architecture (JSON) and the
   weights (arrays) of the expanded model to one ``.npz`` file.
2. tf_keras side (``TF_USE_LEGACY_KERAS=1``): ``load_tf_keras("model.npz")`` rebuilds it with
   ``tf_keras`` layers; this side imports ``tf_keras`` and never Keras 3.

``to_tf_keras(model)`` does both in one process, where Keras 3 and tf_keras can both be imported.

The portable file is a plain description of layers, so the same builder also makes a Keras 3
model of plain layers (the tests use it to check that the steps compute what the layers do).
"""

import io
import itertools
import json
from dataclasses import dataclass

import numpy as np

__all__ = ["Step", "save_portable", "load_tf_keras", "to_tf_keras", "PORTABLE_FORMAT"]

PORTABLE_FORMAT = "tflowrank-portable/1"
_ARCHITECTURE_KEY = "__architecture__"


@dataclass(frozen=True, eq=False)
class Step:
    """One plain step of a factorized layer's chain (see ``FactorizedLayer.steps``).

    ``kind`` is ``"conv"`` (``kernel`` ``(kh, kw, cin, cout)``), ``"depthwise"`` (``kernel``
    ``(kh, kw, channels, 1)``), ``"dense"`` (``kernel`` ``(in, out)``), ``"pad"`` (zero padding
    ``pads = ((top, bottom), (left, right))``), ``"slice"`` (``x[:, ::strides[0], ::strides[1]]``)
    or ``"reshape"`` (to ``shape``, batch left out: a 1-D chain's sequence seen as one image row
    and back).
    ``name`` tells the steps of one layer apart. ``bias`` and ``activation`` (a Keras activation
    name) are set on the last step only.
    """

    kind: str
    name: str
    kernel: np.ndarray | None = None
    strides: tuple = (1, 1)
    padding: str = "valid"
    dilation: tuple = (1, 1)
    pads: tuple = ((0, 0), (0, 0))
    shape: tuple = ()
    bias: np.ndarray | None = None
    activation: str | None = None

    def layer_spec(self):
        """``(class name, config, weights)`` of the plain Keras layer computing this step."""
        use_bias = self.bias is not None
        weights = [self.kernel] + ([self.bias] if use_bias else [])
        common = {"use_bias": use_bias, "activation": self.activation or "linear"}
        if self.kind == "conv":
            return "Conv2D", {"filters": int(self.kernel.shape[-1]), **self._conv_config(),
                              **common}, weights
        if self.kind == "depthwise":
            return "DepthwiseConv2D", {"depth_multiplier": int(self.kernel.shape[-1]),
                                       **self._conv_config(), **common}, weights
        if self.kind == "dense":
            return "Dense", {"units": int(self.kernel.shape[-1]), **common}, weights
        if self.bias is not None or self.activation not in (None, "linear"):
            raise ValueError(f"A {self.kind!r} step cannot carry a bias or an activation.")
        if self.kind == "pad":
            return "ZeroPadding2D", {"padding": [list(map(int, p)) for p in self.pads]}, []
        if self.kind == "slice":
            return "MaxPooling2D", {"pool_size": [1, 1], "strides": list(map(int, self.strides)),
                                    "padding": "valid"}, []
        if self.kind == "reshape":
            return "Reshape", {"target_shape": list(map(int, self.shape))}, []
        raise ValueError(f"`kind` must be one of 'conv', 'depthwise', 'dense', 'pad', 'slice', 'reshape'. "
                         f"Received: kind={self.kind!r}")

    def _conv_config(self):
        return {"kernel_size": list(self.kernel.shape[:2]), "strides": list(map(int, self.strides)),
                "padding": self.padding, "dilation_rate": list(map(int, self.dilation))}


# Plain layers the portable format carries, with the configuration keys kept. Keras 3 and tf_keras
# give these keys the same meaning; anything else in a config (regularizers, constraints, dtype
# policies, quantization state) does not change what the layer computes at inference.
_CONFIG_KEYS = {
    "Conv2D": ("filters", "kernel_size", "strides", "padding", "dilation_rate", "activation",
               "use_bias", "data_format"),
    "DepthwiseConv2D": ("kernel_size", "strides", "padding", "depth_multiplier", "dilation_rate",
                        "activation", "use_bias", "data_format"),
    "Conv1D": ("filters", "kernel_size", "strides", "padding", "dilation_rate", "activation",
               "use_bias", "data_format"),
    "Dense": ("units", "activation", "use_bias"),
    "BatchNormalization": ("axis", "momentum", "epsilon", "center", "scale"),
    "ReLU": ("max_value", "negative_slope", "threshold"),
    "Activation": ("activation",),
    "Softmax": ("axis",),
    "MaxPooling2D": ("pool_size", "strides", "padding", "data_format"),
    "AveragePooling2D": ("pool_size", "strides", "padding", "data_format"),
    "MaxPooling1D": ("pool_size", "strides", "padding", "data_format"),
    "AveragePooling1D": ("pool_size", "strides", "padding", "data_format"),
    "GlobalAveragePooling1D": ("data_format", "keepdims"),
    "GlobalMaxPooling1D": ("data_format", "keepdims"),
    "GlobalAveragePooling2D": ("data_format", "keepdims"),
    "GlobalMaxPooling2D": ("data_format", "keepdims"),
    "ZeroPadding2D": ("padding", "data_format"),
    "Add": (),
    "Multiply": (),
    "Concatenate": ("axis",),
    "Flatten": (),
    "Reshape": ("target_shape",),
    "Dropout": ("rate",),
    "SpatialDropout1D": ("rate",),
    "SpatialDropout2D": ("rate",),
}
_MERGE = {"Add", "Multiply", "Concatenate"}
_NO_TRAINABLE_ARGUMENT = {"SpatialDropout1D", "SpatialDropout2D"}  # Keras 3 refuses the keyword


def _plain_spec(layer):
    """``(class name, config)`` of a plain Keras 3 layer in the portable vocabulary."""
    cls = type(layer).__name__
    if cls not in _CONFIG_KEYS:
        raise ValueError(
            f"Layer {layer.name!r} of type {cls} has no tf_keras counterpart in tflowrank.interop. "
            f"Supported: the tflowrank layers and {', '.join(sorted(_CONFIG_KEYS))}."
        )
    config = layer.get_config()
    if config.get("groups", 1) != 1:
        raise ValueError(f"Layer {layer.name!r}: grouped convolutions are not supported. "
                         f"Received: groups={config['groups']}")
    kept = {key: config[key] for key in _CONFIG_KEYS[cls] if key in config}
    if not isinstance(kept.get("activation", ""), str):
        raise ValueError(f"Layer {layer.name!r}: only built-in activations named by a string can be "
                         f"carried over. Received: activation={kept['activation']!r}")
    if cls not in _NO_TRAINABLE_ARGUMENT:
        kept["trainable"] = bool(layer.trainable)
    return cls, json.loads(json.dumps(kept))  # tuples become lists; fails early if not JSON


def _describe(model):
    """The architecture (a JSON-able dict) and the weight arrays of ``model`` as plain layers."""
    import keras

    from .graph import _functional, _is_graph_model, check_model
    from .layers import FactorizedLayer

    check_model(model)
    architecture = {"format": PORTABLE_FORMAT, "name": model.name, "inputs": [], "layers": {},
                    "calls": [], "outputs": []}
    arrays = {}
    counter = itertools.count()

    def new_tensor():
        return f"t{next(counter)}"

    owners = {}  # layer name -> id of the Keras 3 layer it comes from

    def add_layer(name, cls, config, weights, owner):
        if owners.setdefault(name, id(owner)) != id(owner):
            raise ValueError(f"`model` holds two different layers named {name!r} (in nested models): "
                             "rename one, the tf_keras model needs unique layer names.")
        if name in architecture["layers"]:
            return  # a layer called again shares its weights
        keys = []
        for index, value in enumerate(weights):
            keys.append(f"{name}/{index}")
            arrays[keys[-1]] = np.asarray(value, dtype=np.float32)
        architecture["layers"][name] = {"class": cls, "config": config, "weights": keys}

    def add_call(name, inputs):
        outputs = [new_tensor()]
        architecture["calls"].append({"layer": name, "inputs": list(inputs), "outputs": outputs})
        return outputs

    def emit(layer, inputs, node):
        if isinstance(layer, FactorizedLayer):
            steps = layer.steps(tuple(node.input_tensors[0].shape))
            tensors = inputs
            for step in steps:
                cls, config, weights = step.layer_spec()
                name = f"{layer.name}_{step.name}"
                add_layer(name, cls, {**config, "trainable": bool(layer.trainable)}, weights, layer)
                tensors = add_call(name, tensors)
            return tensors
        cls, config = _plain_spec(layer)
        add_layer(layer.name, cls, config, layer.get_weights(), layer)
        return add_call(layer.name, inputs)

    def walk(graph_model, outer_inputs):
        graph = _functional(graph_model)
        names = {id(t): outer for t, outer in zip(keras.tree.flatten(graph.inputs), outer_inputs)}
        for depth in sorted(graph._nodes_by_depth, reverse=True):
            for node in graph._nodes_by_depth[depth]:
                op = node.operation
                if isinstance(op, keras.layers.InputLayer):
                    continue
                inputs = [names[id(t)] for t in node.input_tensors]
                outputs = walk(op, inputs) if _is_graph_model(op) else emit(op, inputs, node)
                if len(outputs) != len(node.output_tensors):
                    raise ValueError(f"Layer {op.name!r} has several outputs: not supported.")
                names.update({id(t): o for t, o in zip(node.output_tensors, outputs)})
        return [names[id(t)] for t in keras.tree.flatten(graph.outputs)]

    graph = _functional(model)
    input_ids = []
    for tensor in keras.tree.flatten(graph.inputs):
        input_ids.append(new_tensor())
        architecture["inputs"].append({"id": input_ids[-1], "name": tensor.name,
                                       "shape": [d for d in tensor.shape[1:]],
                                       "dtype": str(tensor.dtype)})
    architecture["outputs"] = walk(model, input_ids)
    return architecture, arrays


def _build(architecture, arrays, keras_module):
    """Build ``architecture`` with ``keras_module`` (``tf_keras`` or Keras 3) and set the weights."""
    if architecture.get("format") != PORTABLE_FORMAT:
        raise ValueError(f"Not a {PORTABLE_FORMAT} description. "
                         f"Received: format={architecture.get('format')!r}")
    tensors, layers, inputs = {}, {}, []
    for spec in architecture["inputs"]:
        tensors[spec["id"]] = keras_module.Input(shape=tuple(spec["shape"]), dtype=spec["dtype"],
                                                 name=spec["name"])
        inputs.append(tensors[spec["id"]])
    for call in architecture["calls"]:
        name = call["layer"]
        if name not in layers:
            spec = architecture["layers"][name]
            if spec["class"] not in _CONFIG_KEYS:
                raise ValueError(f"Layer {name!r} has class {spec['class']!r}, which the portable "
                                 "format does not carry.")
            layers[name] = getattr(keras_module.layers, spec["class"])(name=name, **spec["config"])
        args = [tensors[t] for t in call["inputs"]]
        output = layers[name](args if architecture["layers"][name]["class"] in _MERGE else args[0])
        tensors[call["outputs"][0]] = output
    outputs = [tensors[t] for t in architecture["outputs"]]
    model = keras_module.Model(inputs if len(inputs) > 1 else inputs[0],
                               outputs if len(outputs) > 1 else outputs[0], name=architecture["name"])
    for name, layer in layers.items():
        layer.set_weights([arrays[key] for key in architecture["layers"][name]["weights"]])
    return model


def save_portable(model, path):
    """Write ``model`` (Keras 3, tflowrank layers expanded into plain ones) to a portable file.

    Args:
        model: a built Sequential or Functional Keras 3 model; nested models are flattened. Its
            layers must be tflowrank layers (written at their active rank) or plain layers with a
            tf_keras counterpart (``Conv2D``, ``DepthwiseConv2D``, ``Dense``,
            ``BatchNormalization``, ``ReLU``, ``Activation``, pooling, ``Add``, ``Concatenate``,
            ``Flatten``, ``Reshape``, ``Dropout``, ...). It is not modified.
        path: the ``.npz`` file to write (the suffix is added if missing); its folder must exist.

    Returns:
        The path written, as a ``pathlib.Path``.
    """
    from ._io import output_path, write_bytes_atomic

    path = output_path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    architecture, arrays = _describe(model)
    buffer = io.BytesIO()
    np.savez(buffer, **{_ARCHITECTURE_KEY: np.array(json.dumps(architecture))}, **arrays)
    write_bytes_atomic(path, buffer.getvalue())
    return path


def load_tf_keras(path):
    """Build the tf_keras model a ``save_portable`` file describes, holding its weights.

    Imports ``tf_keras`` only (never Keras 3 or tflowrank's layers). For tfmot, run this in a
    process started with ``TF_USE_LEGACY_KERAS=1``; the result is a plain Functional tf_keras
    model that ``tfmot.quantization.keras.quantize_model`` accepts.
    """
    import importlib

    return _build(*_read(path), importlib.import_module("tf_keras"))


def _read(path):
    """The architecture and the weight arrays of a ``save_portable`` file."""
    from ._io import input_path

    path = input_path(path)
    with np.load(path, allow_pickle=False) as data:
        if _ARCHITECTURE_KEY not in data:
            raise ValueError(f"`path` is not a tflowrank portable file (it has no architecture). "
                             f"Received: path={str(path)!r}")
        architecture = json.loads(str(data[_ARCHITECTURE_KEY]))
        arrays = {key: data[key] for key in data.files if key != _ARCHITECTURE_KEY}
    return architecture, arrays


def to_tf_keras(model):
    """The tf_keras model computing what the Keras 3 ``model`` does, in this process.

    Needs ``tf_keras`` importable next to Keras 3. To use tfmot in the same process, start it with
    ``TF_USE_LEGACY_KERAS=1``; the two-process route (``save_portable`` / ``load_tf_keras``) is
    the one that works whatever imported TensorFlow first.
    """
    import importlib

    architecture, arrays = _describe(model)
    return _build(json.loads(json.dumps(architecture)), arrays, importlib.import_module("tf_keras"))
