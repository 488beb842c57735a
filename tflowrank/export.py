"""Export a Keras 3 model to a .tflite file: full int8, dynamic-range, float16 or float32."""

import collections
import functools
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._backend import require_tensorflow
from ._io import output_path, write_bytes_atomic
from .errors import ConversionError

__all__ = ["export_tflite", "ExportResult", "QUANTIZE_CHOICES"]

QUANTIZE_CHOICES = ("int8", "dynamic", "float16", None)
_MAX_CALIBRATION_SAMPLES = 500

# How the converter names ops it cannot convert (TF 2.21; the last two are older formats).
_FAILED_OP_PATTERNS = (
    re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op"),
    re.compile(r"TF Select ops: ([\w, ]+)"),
    re.compile(r"Custom ops: ([\w, ]+)"),
    re.compile(r"Quantization not yet supported for op: '?(?:tfl?\.)?([\w]+)"),
    re.compile(r"failed to legalize operation '(?:tfl?\.)?(\w+)'"),
)


@dataclass(frozen=True)
class ExportResult:
    """What ``export_tflite`` wrote: the file, its size, op counts and I/O tensor details."""

    path: Path
    size_bytes: int
    ops: collections.Counter
    quantize: str | None
    input_details: tuple
    output_details: tuple

    def __str__(self):
        ops = ", ".join(f"{name} x{count}" for name, count in sorted(self.ops.items()))
        lines = [
            f"{self.path} ({self.size_bytes / 1024:.1f} KB, quantize={self.quantize!r})",
            f"  ops: {ops}",
        ]
        for role, details in (("input", self.input_details), ("output", self.output_details)):
            for d in details:
                quant = f", scale={d.scale:.6g}, zero_point={d.zero_point}" if d.scale else ""
                lines.append(f"  {role}: {d.name} {d.shape} {d.dtype}{quant}")
        return "\n".join(lines)


def export_tflite(model, path, quantize="int8", representative_data=None, int8_io=False):
    """Convert a single-input Keras 3 model to TFLite with batch size 1 and write it to ``path``.

    Args:
        model: a built Keras model (Functional or Sequential). It is not modified.
        path: output file; its folder must exist. Written atomically.
        quantize: ``"int8"`` (full integer: int8 weights and activations, int32 biases,
            per-channel weights; needs ``representative_data``, except for a model made by
            ``tflowrank.quantize_aware``, whose trained ranges are used), ``"dynamic"`` (int8 weights,
            float activations), ``"float16"`` (float16 weights) or ``None`` (float32).
        representative_data: calibration inputs for ``"int8"``: a NumPy array
            ``(N, *input_shape[1:])``, a ``tf.data.Dataset`` (batched or not; ``(x, y)``
            elements use ``x``), or a generator / callable returning an iterator of arrays.
            At most 500 samples are used.
        int8_io: with ``"int8"``, make the model input and output int8 instead of float.

    Returns:
        ExportResult.

    Raises:
        ConversionError: the converter refused ops, or ``"int8"`` left ops in float.
    """
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(
            "`quantize` must be one of 'int8', 'dynamic', 'float16' or None. "
            f"Received: quantize={quantize!r}"
        )
    path = output_path(path, "path")
    if int8_io and quantize != "int8":
        raise ValueError(
            "`int8_io=True` needs quantize='int8'. "
            f"Received: int8_io={int8_io!r}, quantize={quantize!r}"
        )
    qat = _is_quantize_aware(model)
    if qat and representative_data is not None:
        warnings.warn(
            "`representative_data` is not used for a quantize_aware model: its activation ranges "
            "come from quantization-aware training.", UserWarning, stacklevel=2)
        representative_data = None
    if quantize == "int8" and representative_data is None and not qat:
        raise ValueError(
            "quantize='int8' needs calibration data to choose activation ranges. Pass "
            "representative_data= a few hundred training inputs (a NumPy array of shape "
            "(N, *input_shape[1:]), a tf.data.Dataset or a generator), or use quantize='dynamic'. "
            "Received: representative_data=None"
        )
    keras, tf = require_tensorflow()
    spec = _input_spec(model, keras, tf)
    if quantize == "int8":
        check_float_inputs(model, "quantize='int8'")
    model = _prepare(model)
    samples = None
    if quantize == "int8" and not qat:
        samples = _calibration_samples(
            representative_data, tuple(spec.shape[1:]), spec.dtype.as_numpy_dtype, tf
        )

    with tempfile.TemporaryDirectory(prefix="tflowrank-export-") as saved_model:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", functools.partial(model.__call__, training=False), [spec])
        archive.write_out(saved_model, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
        _configure(converter, tf, quantize, samples, int8_io)
        try:
            data = converter.convert()
        except Exception as err:  # the converter raises ConverterError and assorted others
            raise _conversion_error(err) from err

    from .tflite_model import inspect_tflite

    info = inspect_tflite(data)
    if quantize == "int8" and not info.is_fully_int8:
        raise _float_ops_error(info)
    write_bytes_atomic(path, data)
    return ExportResult(
        path=path,
        size_bytes=info.size_bytes,
        ops=info.ops,
        quantize=quantize,
        input_details=info.input_details,
        output_details=info.output_details,
    )


def _prepare(model):
    """Return the model to convert: factorized layers sliced to their active ranks; for a
    quantize_aware model, a copy that fake-quantizes with its frozen ranges."""
    from .finalization import finalize
    from .qat import prepare_export

    model = finalize(model)
    return prepare_export(model) or model


def _is_quantize_aware(model):
    """Whether ``model`` holds quantize_aware layers (only then is tflowrank.quantizers loaded)."""
    import sys

    quantizers = sys.modules.get("tflowrank.quantizers")
    return bool(quantizers and hasattr(model, "_flatten_layers")
                and quantizers.quantizer_layers(model))


def _input_spec(model, keras, tf):
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`model` must be a Keras model. Received: model of type {type(model).__name__}"
        )
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ValueError(
            "`model` has no defined inputs; build it with keras.Input (Functional or Sequential). "
            f"Received: model={model.name!r}"
        )
    if len(inputs) != 1:
        raise ValueError(
            "Only single-input models are supported yet. "
            f"Received: a model with {len(inputs)} inputs {[i.name for i in inputs]}"
        )
    (tensor,) = inputs
    return tf.TensorSpec([1, *tensor.shape[1:]], tensor.dtype, name=tensor.name)


def check_float_inputs(model, who):
    """Raise a clear error if an input of ``model`` is not float: a full-integer TFLite model
    quantizes its float input itself, and the cast an integer input needs has no int8 kernel."""
    for tensor in model.inputs:
        dtype = str(tensor.dtype)
        if not dtype.startswith(("float", "bfloat")):
            raise ValueError(
                f"{who} needs float inputs, and `model` ({model.name!r}) takes {dtype} input "
                f"{tensor.name!r}: the cast from {dtype} has no int8 kernel in TFLite. Build the "
                "model on keras.Input(shape, dtype='float32') (keep its Rescaling) and feed the "
                "data as float32; export_tflite(..., int8_io=True) then gives the file an int8 "
                "input.")


def _configure(converter, tf, quantize, samples, int8_io):
    if quantize in ("int8", "dynamic"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "int8":
        # a quantize_aware model (samples None) carries its ranges in its FakeQuant ops; the
        # converter refuses TFLITE_BUILTINS_INT8 without calibration data, so it is not set and
        # the fully-int8 check after conversion enforces the same thing
        if samples is not None:
            converter.representative_dataset = lambda: ([sample] for sample in samples)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    elif quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]


def _calibration_samples(data, sample_shape, dtype, tf):
    """Return up to 500 calibration inputs, each of shape ``(1, *sample_shape)``."""
    if isinstance(data, np.ndarray):
        if not _matches(data.shape[1:], sample_shape) or data.ndim != len(sample_shape) + 1:
            raise ValueError(
                "`representative_data` does not match the model input. "
                f"Received: representative_data with shape {data.shape}; "
                f"expected (N, {_dims(sample_shape)})"
            )
        batches = [data]
    elif isinstance(data, tf.data.Dataset):
        batches = data
    elif callable(data):
        batches = data()
    elif hasattr(data, "__iter__") and not isinstance(data, (str, bytes)):
        batches = data
    else:
        raise TypeError(
            "`representative_data` must be a NumPy array, a tf.data.Dataset or a generator. "
            f"Received: representative_data of type {type(data).__name__}"
        )

    samples = []
    for element in batches:
        while isinstance(element, (tuple, list)) and element and hasattr(element[0], "shape"):
            element = element[0]  # (x, y) pairs and the converter's [x] convention
        array = np.asarray(element)
        if _matches(array.shape, sample_shape):
            array = array[None]
        elif not _matches(array.shape[1:], sample_shape) or array.ndim != len(sample_shape) + 1:
            raise ValueError(
                "`representative_data` does not match the model input. "
                f"Received: representative_data with an element of shape {array.shape}; "
                f"expected samples of shape ({_dims(sample_shape)}) or batches of shape "
                f"(N, {_dims(sample_shape)})"
            )
        for row in array:
            samples.append(row[None].astype(dtype))
            if len(samples) == _MAX_CALIBRATION_SAMPLES:
                return samples
    if not samples:
        raise ValueError("`representative_data` yielded no samples. Received: an empty input")
    return samples


def _matches(shape, expected):
    if len(shape) != len(expected):
        return False
    return all(e is None or s == e for s, e in zip(shape, expected, strict=True))


def _dims(shape):
    return ", ".join(str(d) for d in shape)


def _failed_ops(err):
    """Names of the ops the converter refused, from its structured errors and its message."""
    names = []
    for data in getattr(err, "errors", ()) or ():
        name = getattr(getattr(data, "operator", None), "name", "")
        if name:
            names.append(name.split(".", 1)[-1])
    text = str(err)
    for pattern in _FAILED_OP_PATTERNS:
        for match in pattern.finditer(text):
            names.extend(n.strip() for n in match.group(1).split(",") if n.strip())
    return list(dict.fromkeys(names))


def _conversion_error(err):
    ops = _failed_ops(err)
    if ops:
        return ConversionError(
            f"The TFLite converter cannot convert these ops: {', '.join(ops)}. TFLite has no "
            "builtin kernel for them; replace them in the model with supported ops "
            "(for example another activation function).",
            ops,
        )
    head = str(err).strip()[:1000]
    return ConversionError(f"The TFLite converter failed ({type(err).__name__}): {head}")


def _float_ops_error(info):
    # the QUANTIZE / DEQUANTIZE pairs around a float op are symptoms: name the op itself
    names = list(dict.fromkeys(op.name for op in info.op_list if not op.is_int8))
    ops = [n for n in names if n not in ("QUANTIZE", "DEQUANTIZE")] or names
    return ConversionError(
        f"quantize='int8' left these ops in float (no int8 kernel): {', '.join(ops)}. "
        "Use quantize='dynamic' (int8 weights, float activations) or replace these ops with "
        "ones that have int8 kernels.",
        ops,
    )
