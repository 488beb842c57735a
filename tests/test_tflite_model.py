import re

import numpy as np
import pytest

from tflowrank.tflite_model import inspect_tflite


@pytest.fixture(scope="module")
def dynamic_model(tmp_path_factory):
    """A two-Dense MLP with dynamic-range weights: int8 kernels, float activations."""
    import keras

    from tflowrank.export import export_tflite

    inputs = keras.Input((64,), name="features")
    x = keras.layers.Dense(32, activation="relu")(inputs)  # 2048 weights: quantized
    model = keras.Model(inputs, keras.layers.Dense(3)(x))  # 96 weights: too few, stays float
    for w in model.weights:  # the converter drops all-zero biases
        w.assign(np.random.default_rng(0).normal(0.0, 0.1, w.shape).astype("float32"))
    return export_tflite(model, tmp_path_factory.mktemp("m") / "m.tflite", quantize="dynamic").path


@pytest.mark.slow
def test_dynamic_range_model(dynamic_model):
    info = inspect_tflite(dynamic_model)
    assert info.ops == {"FULLY_CONNECTED": 2}
    first, second = info.op_list
    assert (first.weight_dtype, first.weight_shape, first.bias_dtype) == (
        "int8",
        (32, 64),
        "float32",
    )
    assert (second.weight_dtype, second.weight_shape) == ("float32", (3, 32))
    assert first.input_dtypes == first.output_dtypes == ("float32",)
    assert not first.is_int8 and not info.is_fully_int8
    (inp,), (out,) = info.input_details, info.output_details
    assert (inp.name, inp.shape, inp.dtype, inp.scale, inp.zero_point) == (
        "serving_default_features:0",
        (1, 64),
        "float32",
        0.0,
        0,
    )
    assert (out.shape, out.dtype) == ((1, 3), "float32")
    assert info.size_bytes == dynamic_model.stat().st_size


@pytest.mark.slow
def test_path_and_bytes_give_the_same_info(dynamic_model):
    assert inspect_tflite(dynamic_model.read_bytes()) == inspect_tflite(str(dynamic_model))


def test_not_a_flatbuffer():
    message = (
        "`path_or_bytes` is not a TFLite flatbuffer (no 'TFL3' identifier). "
        "Received: 10 bytes starting with b'not tfli'"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        inspect_tflite(b"not tflite")


def test_missing_file(tmp_path):
    path = tmp_path / "none.tflite"
    with pytest.raises(
        ValueError, match=re.escape(f"File of `path_or_bytes` does not exist: {str(path)!r}")
    ):
        inspect_tflite(path)


def test_wrong_type():
    with pytest.raises(TypeError, match=re.escape("Received: path_or_bytes of type ndarray")):
        inspect_tflite(np.zeros(8, np.uint8))
