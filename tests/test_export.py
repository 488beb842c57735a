import re

import keras  # noqa: E402
import numpy as np
import pytest
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from tflowrank.errors import ConversionError  # noqa: E402
from tflowrank.export import export_tflite  # noqa: E402
from tflowrank.tflite_model import inspect_tflite  # noqa: E402

INPUT_SHAPE = (8, 8, 1)


def tiny_cnn(head=None):
    """Conv+BN+ReLU, a (3,1) and a (1,3) conv, Flatten, Dense; nonzero weights and biases."""
    layers = keras.layers
    inputs = keras.Input(INPUT_SHAPE, name="image")
    x = layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(4, (3, 1), padding="same")(x)
    x = layers.Conv2D(4, (1, 3), padding="same")(x)
    if head is not None:
        x = layers.Lambda(head)(x)
    x = layers.Flatten()(x)
    outputs = layers.Dense(4)(x)  # 256 x 4 = 1024 weights: big enough for dynamic range
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(1)
    for w in model.weights:
        value = rng.normal(0.0, 0.3, w.shape)
        if "variance" in w.path:
            value = np.abs(value) + 0.5
        w.assign(value.astype("float32"))
    return model


def run_tflite(path, x):
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    results = []
    for sample in x:
        sample = sample[None]
        if inp["dtype"] == np.int8:
            scale, zero_point = inp["quantization"]
            sample = np.clip(np.round(sample / scale + zero_point), -128, 127)
        interpreter.set_tensor(inp["index"], sample.astype(inp["dtype"]))
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"]).astype(np.float32)
        if out["dtype"] == np.int8:
            scale, zero_point = out["quantization"]
            y = (y - zero_point) * scale
        results.append(y[0])
    return np.stack(results)


@pytest.fixture(scope="module")
def model():
    return tiny_cnn()


@pytest.fixture(scope="module")
def weights_before(model):
    return [w.copy() for w in model.get_weights()]


@pytest.fixture(scope="module")
def calibration():
    return np.random.default_rng(0).random((24, *INPUT_SHAPE), dtype=np.float32)


@pytest.fixture(scope="module")
def int8_export(model, weights_before, calibration, tmp_path_factory):
    path = tmp_path_factory.mktemp("int8") / "model.tflite"
    return export_tflite(model, path, representative_data=calibration)


@pytest.mark.slow
def test_int8_export_is_fully_int8_per_channel_batch_1(int8_export):
    info = inspect_tflite(int8_export.path)
    assert info.ops["CONV_2D"] == 3
    assert info.ops["FULLY_CONNECTED"] == 1
    weighted = [op for op in info.op_list if op.name in ("CONV_2D", "FULLY_CONNECTED")]
    assert [op.weight_shape for op in weighted] == [
        (4, 3, 3, 1),
        (4, 3, 1, 4),
        (4, 1, 3, 4),
        (4, 256),
    ]
    for op in weighted:
        assert (op.weight_dtype, op.bias_dtype, op.per_channel) == ("int8", "int32", True)
        assert op.input_dtypes[0] == op.output_dtypes[0] == "int8"
    assert info.is_fully_int8
    assert int8_export.input_details[0].shape == (1, *INPUT_SHAPE)
    assert int8_export.input_details[0].dtype == "float32"  # float I/O by default
    assert int8_export.ops == info.ops
    assert int8_export.size_bytes == int8_export.path.stat().st_size == info.size_bytes
    assert int8_export.quantize == "int8"
    assert "CONV_2D x3" in str(int8_export) and "quantize='int8'" in str(int8_export)


@pytest.mark.slow
def test_int8_export_runs_close_to_keras(int8_export, model, calibration):
    expected = model.predict(calibration, verbose=0)
    got = run_tflite(int8_export.path, calibration)
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()


@pytest.mark.slow
def test_export_writes_only_the_file_and_leaves_the_model_unchanged(
    int8_export, model, weights_before
):
    assert [p.name for p in int8_export.path.parent.iterdir()] == ["model.tflite"]
    for before, after in zip(weights_before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)


@pytest.mark.slow
def test_int8_io_gives_int8_input_and_output(model, calibration, tmp_path):
    result = export_tflite(
        model, tmp_path / "io.tflite", representative_data=calibration, int8_io=True
    )
    (inp,), (out,) = result.input_details, result.output_details
    assert (inp.dtype, out.dtype) == ("int8", "int8")
    assert inp.shape == (1, *INPUT_SHAPE) and inp.scale > 0 and out.scale > 0
    assert "QUANTIZE" not in result.ops and "DEQUANTIZE" not in result.ops
    assert inspect_tflite(result.path).is_fully_int8
    expected = model.predict(calibration, verbose=0)
    got = run_tflite(result.path, calibration)
    assert np.abs(got - expected).max() < 0.05 * np.abs(expected).max()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("quantize", "fc_weight", "tolerance"),
    [("dynamic", "int8", 0.05), ("float16", "float16", 0.01), (None, "float32", 1e-4)],
)
def test_float_exports_run(model, calibration, tmp_path, quantize, fc_weight, tolerance):
    result = export_tflite(model, tmp_path / "m.tflite", quantize=quantize)
    info = inspect_tflite(result.path)
    assert result.quantize == quantize
    assert result.ops["CONV_2D"] == 3 and result.ops["FULLY_CONNECTED"] == 1
    assert not info.is_fully_int8
    assert result.input_details[0].dtype == "float32"
    assert result.input_details[0].shape == (1, *INPUT_SHAPE)
    if quantize == "float16":  # float16 weights are dequantized to float32 at load
        assert result.ops["DEQUANTIZE"] >= 1
    else:
        (fc,) = [op for op in info.op_list if op.name == "FULLY_CONNECTED"]
        assert fc.weight_dtype == fc_weight
    expected = model.predict(calibration, verbose=0)
    got = run_tflite(result.path, calibration)
    assert np.abs(got - expected).max() < tolerance * np.abs(expected).max()


def _batched_dataset(x):
    return tf.data.Dataset.from_tensor_slices(x).batch(5)


def _pairs_dataset(x):
    return tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x), "int64")))


def _generator_function(x):
    def samples():
        yield from x

    return samples


def _generator_object(x):
    return (x[i : i + 3] for i in range(0, len(x), 3))


@pytest.mark.slow
@pytest.mark.parametrize(
    "make", [_batched_dataset, _pairs_dataset, _generator_function, _generator_object]
)
def test_representative_data_forms_calibrate_like_the_array(
    int8_export, model, calibration, tmp_path, make
):
    result = export_tflite(model, tmp_path / "m.tflite", representative_data=make(calibration))
    # same samples, same order: the converter gives the same bytes
    assert result.path.read_bytes() == int8_export.path.read_bytes()


@pytest.mark.slow
def test_ops_left_in_float_raise_conversion_error_and_write_nothing(calibration, tmp_path):
    path = tmp_path / "m.tflite"
    with pytest.raises(ConversionError) as info:
        export_tflite(tiny_cnn(head=keras.ops.sin), path, representative_data=calibration)
    assert info.value.ops == ("SIN",)
    assert "left these ops in float (no int8 kernel): SIN" in str(info.value)
    assert "quantize='dynamic'" in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_unsupported_op_raises_conversion_error_and_keeps_existing_file(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(b"old")
    with pytest.raises(ConversionError) as info:
        export_tflite(tiny_cnn(head=keras.ops.erf), path, quantize=None)
    assert info.value.ops == ("Erf",)
    assert "cannot convert these ops: Erf" in str(info.value)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.tflite"]


def test_integer_input_refused_for_int8_only(tmp_path):
    inputs = keras.Input((8, 8, 1), dtype="uint8", name="pixels")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(x))
    model = keras.Model(inputs, keras.layers.Dense(3)(x), name="raw")
    path = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match=r"quantize='int8' needs float inputs, and `model` \('raw'\) "
                                         r"takes uint8 input 'pixels': the cast from uint8"):
        export_tflite(model, path, representative_data=np.zeros((4, 8, 8, 1), "uint8"))
    assert list(tmp_path.iterdir()) == []
    result = export_tflite(model, path, quantize=None)
    assert result.input_details[0].dtype == "uint8"


def test_unknown_quantize(model, tmp_path):
    message = (
        "`quantize` must be one of 'int8', 'dynamic', 'float16' or None. Received: quantize='int4'"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        export_tflite(model, tmp_path / "m.tflite", quantize="int4")


def test_int8_without_representative_data(model, tmp_path):
    with pytest.raises(
        ValueError, match=r"quantize='int8' needs calibration data .* representative_data="
    ):
        export_tflite(model, tmp_path / "m.tflite")
    assert list(tmp_path.iterdir()) == []


def test_int8_io_without_int8(model, tmp_path):
    message = "`int8_io=True` needs quantize='int8'. Received: int8_io=True, quantize='dynamic'"
    with pytest.raises(ValueError, match=re.escape(message)):
        export_tflite(model, tmp_path / "m.tflite", quantize="dynamic", int8_io=True)


@pytest.mark.parametrize("shape", [(10, 8, 8), (10, 8, 8, 3), (8, 8, 1)])
def test_representative_array_of_wrong_shape(model, tmp_path, shape):
    message = (
        "`representative_data` does not match the model input. "
        f"Received: representative_data with shape {shape}; expected (N, 8, 8, 1)"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        export_tflite(model, tmp_path / "m.tflite", representative_data=np.zeros(shape, "float32"))


def test_representative_generator_of_wrong_shape(model, tmp_path):
    message = (
        "Received: representative_data with an element of shape (4, 4, 1); "
        "expected samples of shape (8, 8, 1) or batches of shape (N, 8, 8, 1)"
    )
    samples = (np.zeros((4, 4, 1), "float32") for _ in range(3))
    with pytest.raises(ValueError, match=re.escape(message)):
        export_tflite(model, tmp_path / "m.tflite", representative_data=samples)


def test_empty_representative_data(model, tmp_path):
    with pytest.raises(ValueError, match="`representative_data` yielded no samples"):
        export_tflite(model, tmp_path / "m.tflite", representative_data=iter([]))


def test_output_folder_missing(model, tmp_path):
    path = tmp_path / "missing" / "m.tflite"
    message = (
        f"The folder of `path` does not exist: {str(path.parent)!r}. Received: path={str(path)!r}"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        export_tflite(model, path, quantize=None)


def test_multi_input_model(tmp_path):
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    two = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])))
    message = (
        "Only single-input models are supported yet. Received: a model with 2 inputs ['a', 'b']"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        export_tflite(two, tmp_path / "m.tflite", quantize=None)


def test_not_a_model(tmp_path):
    with pytest.raises(TypeError, match=re.escape("Received: model of type str")):
        export_tflite("model.keras", tmp_path / "m.tflite", quantize=None)
