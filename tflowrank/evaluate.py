"""Top-1 accuracy of a .tflite classifier, run with the LiteRT interpreter."""

import functools

import numpy as np

from ._io import input_path
from .tflite_model import inspect_tflite

__all__ = ["evaluate_tflite", "predict_tflite"]


def class_labels(y):
    """Class indices of labels: integer labels ``(N,)`` or ``(N, 1)`` (0 / 1 for a one-output
    model) as they are, one-hot rows ``(N, C)`` by their argmax."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[-1] > 1:
        return y.argmax(-1)
    if y.ndim > 2:
        raise ValueError(f"`y` must be int labels (N,) or one-hot (N, C). Received: y.shape={y.shape}")
    return y.reshape(len(y))


def predicted_classes(outputs, logit=False):
    """Class indices of a classifier's outputs ``(N, C)``: the argmax. One output ``(N, 1)``:
    class 1 above 0.5, a sigmoid's probability, or above 0 with ``logit=True``."""
    outputs = np.asarray(outputs).reshape(len(outputs), -1)
    if outputs.shape[1] > 1:
        return outputs.argmax(-1)
    return (outputs[:, 0] > (0.0 if logit else 0.5)).astype(np.int64)


def output_activation(model):
    """The name of the activation the Keras ``model``'s (first) output ends in (``"softmax"``,
    ``"sigmoid"``, ``"linear"``, ...), looking into nested models; None if its last layer has
    none (a Lambda, a custom layer)."""
    layer = model
    while getattr(layer, "outputs", None):
        history = getattr(layer.outputs[0], "_keras_history", None)
        if history is None:
            break
        layer = history.operation
    if type(layer).__name__ in ("Softmax", "Sigmoid"):  # a layer, or keras.ops applied to the output
        return type(layer).__name__.lower()
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) if callable(activation) else None


def one_logit(model):
    """Whether a Keras classifier puts out one logit (class 1 above 0) rather than one
    probability (above 0.5) or class scores (False): by the activation it ends in (none: a
    logit, sigmoid: a probability), else by its compiled loss's ``from_logits``, else a
    probability."""
    if tuple(model.outputs[0].shape)[-1:] != (1,):
        return False
    activation = output_activation(model)
    if activation in ("linear", "sigmoid"):
        return activation == "linear"
    config = getattr(getattr(model, "loss", None), "get_config", dict)()  # a Keras Loss's
    return bool(config.get("from_logits"))


def _tflite_one_logit(info):
    """Whether the .tflite model (``TfliteInfo``) puts out a logit: its last computing op is not
    a LOGISTIC (the reshapes and (de)quantizations around an output do not count)."""
    passive = {"QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE"}
    computing = [op.name for op in info.op_list if op.name not in passive]
    return not computing or computing[-1] != "LOGISTIC"


def evaluate_tflite(path, x, y=None, batch_size=256):
    """Return the top-1 accuracy of the .tflite classifier at ``path`` on ``(x, y)``.

    ``x`` is passed as the model expects it (no rescaling); it is cast to float32 and quantized
    with the input scale / zero point when the model input is int8 or uint8. If ``x`` lacks the
    trailing channel axis of a one-channel input, it is added. ``y`` holds int labels ``(N,)`` or
    one-hot rows ``(N, C)``. A model with one output is scored against labels 0 / 1 of shape
    ``(N,)`` or ``(N, 1)``: class 1 above 0.5 if it ends in a sigmoid (a LOGISTIC op), else
    above 0 (a logit). Batches of ``batch_size`` are used when the model can be resized to
    them; otherwise samples run one by one.

    ``x`` may instead be a ``tf.data.Dataset`` of ``(x, y)`` pairs, batched or not (unbatched
    ones are batched by ``batch_size``), with ``y`` None: it is read once, batch by batch, with
    one interpreter, so a validation set larger than memory can be scored.
    """
    from ._backend import is_dataset

    if is_dataset(x):
        if y is not None:
            raise ValueError("`y` must be None when `x` is a tf.data.Dataset of (x, y) pairs. "
                             f"Received: y of type {type(y).__name__}")
        return _evaluate_dataset(path, x, batch_size)
    if y is None:
        raise ValueError("`y` is needed with `x` as an array: the labels (N,) or one-hot rows "
                         "(N, C). Received: y=None")
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(
            f"`x` and `y` must have the same length. Received: len(x)={len(x)}, len(y)={len(y)}"
        )
    labels = class_labels(y)
    predict = _Predictor(path, batch_size)
    if len(x) == 0:
        raise ValueError("`x` is empty. Received: len(x)=0")
    return float(np.mean(predicted_classes(predict(x), predict.logit) == labels))


def _evaluate_dataset(path, dataset, batch_size):
    spec = dataset.element_spec
    if not isinstance(spec, (tuple, list)) or len(spec) != 2:
        raise ValueError("`x` must be a tf.data.Dataset of (x, y) pairs. Received: a "
                         f"tf.data.Dataset with element_spec {spec}")
    predict = _Predictor(path, batch_size)
    if predict.is_sample(tuple(spec[0].shape)):
        dataset = dataset.batch(batch_size)
    correct = total = 0
    for bx, by in dataset:
        bx, by = bx.numpy(), by.numpy()
        if len(bx) != len(by):
            raise ValueError(f"A batch of `x` holds {len(bx)} inputs but {len(by)} labels. "
                             f"Received: x with shape {bx.shape}, y with shape {by.shape}")
        correct += int(np.sum(predicted_classes(predict(bx), predict.logit) == class_labels(by)))
        total += len(bx)
    if not total:
        raise ValueError("`x` is empty: the dataset yielded no element. Received: an empty tf.data.Dataset")
    return correct / total


def predict_tflite(path, x, batch_size=256):
    """Return the outputs of the single-input .tflite model at ``path`` on ``x``, as float32.

    Inputs are quantized and outputs dequantized with the model's scales when they are integer;
    ``x`` is handled as in ``evaluate_tflite``.
    """
    predict = _Predictor(path, batch_size)
    x = np.asarray(x)
    if len(x) == 0:
        raise ValueError("`x` is empty. Received: len(x)=0")
    return predict(x)


class _Predictor:
    """The outputs of the single-input model at ``path`` for any number of inputs, with one
    interpreter, resized at the first call to ``batch_size`` samples (or fewer, as many as that
    call has) when the model allows."""

    def __init__(self, path, batch_size):
        from ai_edge_litert.interpreter import Interpreter

        self.path = input_path(path, "path")
        is_int = isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool)
        if not is_int or batch_size < 1:
            raise ValueError(
                f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}"
            )
        self.batch_size, self.interpreter_class = int(batch_size), Interpreter
        self.interpreter = Interpreter(model_path=str(self.path))
        self.interpreter.allocate_tensors()
        details = self.interpreter.get_input_details()
        if len(details) != 1:
            raise ValueError(
                f"Only single-input models can be evaluated yet. Received: path={str(self.path)!r} "
                f"with {len(details)} inputs"
            )
        self.sample_shape = tuple(int(d) for d in details[0]["shape"][1:])
        self.runner = None

    @functools.cached_property
    def logit(self):
        """How one output is read (``_tflite_one_logit``); only scoring asks."""
        return _tflite_one_logit(inspect_tflite(self.path))

    def is_sample(self, shape):
        """Whether ``shape`` is one input's (with or without the channel axis of a one-channel
        input) rather than a batch's."""
        shapes = [self.sample_shape] + ([self.sample_shape[:-1]] if self.sample_shape[-1:] == (1,) else [])
        return any(len(shape) == len(s) and all(a in (None, b) for a, b in zip(shape, s)) for s in shapes)

    def _shaped(self, x):
        sample_shape = self.sample_shape
        if x.shape[1:] == sample_shape[:-1] and sample_shape[-1:] == (1,):
            x = x[..., None]  # (N, H, W) for a (1, H, W, 1) input
        if x.shape[1:] != sample_shape:
            raise ValueError(
                f"`x` does not match the model input. Received: x.shape={x.shape}; "
                f"expected (N, {', '.join(map(str, sample_shape))})"
            )
        return x

    def __call__(self, x):
        x = self._shaped(x)
        if self.runner is None:
            batch = min(self.batch_size, len(x))
            runner = _batched(self.path, self.interpreter_class, x, batch) if batch > 1 else None
            self.runner = runner or _Runner(self.interpreter, 1)
        step = self.runner.batch
        return np.concatenate([self.runner(x[i : i + step]) for i in range(0, len(x), step)])


class _Runner:
    """Run one input batch of a fixed size: quantize, invoke, dequantize; pad the last batch."""

    def __init__(self, interpreter, batch):
        self.interpreter = interpreter
        self.batch = batch
        self.input = interpreter.get_input_details()[0]
        self.output = interpreter.get_output_details()[0]

    def __call__(self, x):
        n = len(x)
        if n < self.batch:
            x = np.concatenate([x, np.zeros((self.batch - n, *x.shape[1:]), x.dtype)])
        self.interpreter.set_tensor(self.input["index"], _quantize(x, self.input))
        self.interpreter.invoke()
        return _dequantize(self.interpreter.get_tensor(self.output["index"]), self.output)[:n]


def _batched(path, interpreter_class, x, batch):
    """A runner for ``batch`` samples at once, or ``None`` if the model cannot be resized."""
    try:
        interpreter = interpreter_class(model_path=str(path))
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, [batch, *x.shape[1:]], strict=False)
        interpreter.allocate_tensors()
        runner = _Runner(interpreter, batch)
        if runner.output["shape"][0] != batch:
            return None
        # a batch-1 graph can resize to the right output shape yet mix samples (e.g. a Reshape
        # to a constant shape): check one batch against sample-by-sample results
        single = interpreter_class(model_path=str(path))
        single.allocate_tensors()
        probe = x[:batch]
        one = _Runner(single, 1)
        expected = np.concatenate([one(probe[i : i + 1]) for i in range(min(len(probe), 4))])
        got = runner(probe)[: len(expected)]
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
            return None
        return runner
    except (RuntimeError, ValueError):
        return None


def _quantize(x, detail):
    dtype = detail["dtype"]
    x = x.astype(np.float32)
    if dtype in (np.int8, np.uint8):
        scale, zero_point = detail["quantization"]
        if scale == 0:
            raise ValueError(
                f"Input tensor {detail['name']!r} is {np.dtype(dtype).name} without a scale"
            )
        info = np.iinfo(dtype)
        x = np.clip(np.round(x / scale + zero_point), info.min, info.max)
    return x.astype(dtype)


def _dequantize(out, detail):
    scale, zero_point = detail["quantization"]
    if np.issubdtype(out.dtype, np.integer) and scale:
        return (out.astype(np.float32) - zero_point) * scale
    return out.astype(np.float32)
