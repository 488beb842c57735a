"""Top-1 accuracy of a .tflite classifier, run with the LiteRT interpreter."""

import numpy as np

from ._io import input_path

__all__ = ["evaluate_tflite", "predict_tflite"]


def evaluate_tflite(path, x, y, batch_size=256):
    """Return the top-1 accuracy of the .tflite classifier at ``path`` on ``(x, y)``.

    ``x`` is passed as the model expects it (no rescaling); it is cast to float32 and quantized
    with the input scale / zero point when the model input is int8 or uint8. If ``x`` lacks the
    trailing channel axis of a one-channel input, it is added. ``y`` holds int labels ``(N,)`` or
    one-hot rows ``(N, C)``. Batches of ``batch_size`` are used when the model can be resized to
    them; otherwise samples run one by one.
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(
            f"`x` and `y` must have the same length. Received: len(x)={len(x)}, len(y)={len(y)}"
        )
    if y.ndim == 1:
        labels = y.astype(np.int64)
    elif y.ndim == 2:
        labels = y.argmax(axis=1)
    else:
        raise ValueError(
            f"`y` must be int labels (N,) or one-hot (N, C). Received: y.shape={y.shape}"
        )
    scores = predict_tflite(path, x, batch_size=batch_size)
    return float(np.mean(scores.reshape(len(x), -1).argmax(axis=1) == labels))


def predict_tflite(path, x, batch_size=256):
    """Return the outputs of the single-input .tflite model at ``path`` on ``x``, as float32.

    Inputs are quantized and outputs dequantized with the model's scales when they are integer;
    ``x`` is handled as in ``evaluate_tflite``.
    """
    from ai_edge_litert.interpreter import Interpreter

    path = input_path(path, "path")
    is_int = isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool)
    if not is_int or batch_size < 1:
        raise ValueError(
            f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}"
        )
    x = np.asarray(x)
    if len(x) == 0:
        raise ValueError("`x` is empty. Received: len(x)=0")

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()
    if len(details) != 1:
        raise ValueError(
            f"Only single-input models can be evaluated yet. Received: path={str(path)!r} "
            f"with {len(details)} inputs"
        )
    sample_shape = tuple(int(d) for d in details[0]["shape"][1:])
    if x.shape[1:] == sample_shape[:-1] and sample_shape[-1:] == (1,):
        x = x[..., None]  # (N, H, W) for a (1, H, W, 1) input
    if x.shape[1:] != sample_shape:
        raise ValueError(
            f"`x` does not match the model input. Received: x.shape={x.shape}; "
            f"expected (N, {', '.join(map(str, sample_shape))})"
        )

    batch = min(int(batch_size), len(x))
    predict = _batched(path, Interpreter, x, batch) if batch > 1 else None
    predict = predict or _Runner(interpreter, 1)
    step = predict.batch
    return np.concatenate([predict(x[i : i + step]) for i in range(0, len(x), step)])


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
