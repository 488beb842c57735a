import re

import keras  # noqa: E402
import numpy as np
import pytest

from tflowrank.evaluate import evaluate_tflite  # noqa: E402
from tflowrank.export import export_tflite  # noqa: E402


def quadrant_images(n, seed):
    """uint8 (n, 8, 8) images; the label is the quadrant holding a bright 4x4 patch."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    images = rng.integers(0, 90, (n, 8, 8))
    for image, label in zip(images, labels, strict=True):
        r, c = divmod(int(label), 2)
        image[4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += rng.integers(60, 166)
    return images.astype(np.uint8), labels


def build(head):
    """Rescaling (the model takes 0..255 pixels), one conv, then a Flatten or a pooled head."""
    layers = keras.layers
    inputs = keras.Input((8, 8, 1))
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    if head == "flatten":  # exports a Reshape to (1, 512): the batch cannot be resized
        x = layers.Dense(4)(layers.Flatten()(x))
    else:  # (1, 1, 4) then a mean: the batch can be resized
        x = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 8, padding="valid")(x))
    return keras.Model(inputs, x)


@pytest.fixture(scope="module")
def data():
    keras.utils.set_random_seed(0)
    x_train, y_train = quadrant_images(512, seed=1)
    x_test, y_test = quadrant_images(300, seed=2)
    return x_train[..., None].astype("float32"), y_train, x_test, y_test


@pytest.fixture(scope="module", params=["flatten", "pooled"])
def trained(request, data):
    x_train, y_train, x_test, y_test = data
    model = build(request.param)
    model.compile(
        keras.optimizers.Adam(0.01),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_train, y_train, epochs=2, batch_size=32, verbose=0)
    predicted = model.predict(x_test[..., None].astype("float32"), verbose=0).argmax(1)
    return model, float(np.mean(predicted == y_test)), request.param


@pytest.fixture(scope="module")
def float_model(trained, tmp_path_factory):
    model, _, head = trained
    return export_tflite(
        model, tmp_path_factory.mktemp(f"float-{head}") / "m.tflite", quantize=None
    ).path


@pytest.fixture(scope="module")
def int8_model(trained, data, tmp_path_factory):
    model, _, head = trained
    path = tmp_path_factory.mktemp(f"int8-{head}") / "m.tflite"
    return export_tflite(model, path, representative_data=data[0][:200]).path


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [256, 64, 7, 1])
def test_float_accuracy_matches_keras(trained, data, float_model, batch_size):
    _, keras_accuracy, _ = trained
    _, _, x_test, y_test = data
    assert keras_accuracy > 0.8  # the model learned something, so agreement means something
    accuracy = evaluate_tflite(float_model, x_test, y_test, batch_size=batch_size)
    assert accuracy == pytest.approx(keras_accuracy, abs=1 / len(y_test))


@pytest.mark.slow
def test_int8_accuracy_close_to_keras(trained, data, int8_model):
    _, keras_accuracy, _ = trained
    _, _, x_test, y_test = data
    assert abs(evaluate_tflite(int8_model, x_test, y_test) - keras_accuracy) <= 0.03


@pytest.mark.slow
def test_int8_io_model_with_uint8_pixels_and_one_hot_labels(trained, data, tmp_path):
    model, keras_accuracy, _ = trained
    x_train, _, x_test, y_test = data
    path = export_tflite(
        model, tmp_path / "io.tflite", representative_data=x_train[:200], int8_io=True
    ).path
    one_hot = np.eye(4)[y_test]
    accuracy = evaluate_tflite(path, x_test, one_hot)
    assert abs(accuracy - keras_accuracy) <= 0.03
    # the same images as float with the channel axis: same answer
    assert evaluate_tflite(path, x_test[..., None].astype("float32"), y_test) == accuracy


@pytest.fixture(scope="module")
def any_model(tmp_path_factory):
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(inputs)))
    return export_tflite(model, tmp_path_factory.mktemp("any") / "m.tflite", quantize=None).path


@pytest.mark.slow
def test_lengths_differ(any_model):
    message = "`x` and `y` must have the same length. Received: len(x)=3, len(y)=2"
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate_tflite(any_model, np.zeros((3, 8, 8, 1)), np.zeros(2))


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_bad_batch_size(any_model, batch_size):
    message = f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}"
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate_tflite(any_model, np.zeros((3, 8, 8, 1)), np.zeros(3), batch_size=batch_size)


@pytest.mark.slow
def test_wrong_x_shape(any_model):
    message = (
        "`x` does not match the model input. Received: x.shape=(3, 8, 7); expected (N, 8, 8, 1)"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate_tflite(any_model, np.zeros((3, 8, 7)), np.zeros(3))


def test_missing_file(tmp_path):
    path = tmp_path / "none.tflite"
    with pytest.raises(
        ValueError, match=re.escape(f"File of `path` does not exist: {str(path)!r}")
    ):
        evaluate_tflite(path, np.zeros((3, 8, 8, 1)), np.zeros(3))


@pytest.mark.slow
def test_batches_when_the_model_can_be_resized(trained, data, float_model, monkeypatch):
    import ai_edge_litert.interpreter as litert

    calls = []

    class CountingInterpreter(litert.Interpreter):
        def invoke(self):
            calls.append(self.get_input_details()[0]["shape"][0])
            return super().invoke()

    monkeypatch.setattr(litert, "Interpreter", CountingInterpreter)
    _, _, x_test, y_test = data
    evaluate_tflite(float_model, x_test, y_test, batch_size=64)
    if trained[2] == "pooled":
        assert calls.count(64) == 6  # the check batch, then 300 samples in 5 padded batches
    else:
        assert set(calls) == {1} and len(calls) == len(x_test)


@pytest.mark.slow
def test_a_dataset_is_scored_batch_by_batch_with_one_interpreter(trained, data, int8_model, monkeypatch):
    import ai_edge_litert.interpreter as litert
    import tensorflow as tf

    _, _, x_test, y_test = data
    expected = evaluate_tflite(int8_model, x_test, y_test)
    made = []

    class CountingInterpreter(litert.Interpreter):
        def __init__(self, *args, **kwargs):
            made.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(litert, "Interpreter", CountingInterpreter)
    batched = tf.data.Dataset.from_tensor_slices((x_test, y_test)).batch(50)  # uint8, no channel
    assert evaluate_tflite(int8_model, batched, batch_size=64) == expected
    assert len(made) <= 3  # one, then the resized one and its check: not one per batch
    samples = tf.data.Dataset.from_tensor_slices((x_test[..., None].astype("float32"), np.eye(4)[y_test]))
    assert evaluate_tflite(int8_model, samples) == expected  # single samples, one-hot labels
    assert evaluate_tflite(int8_model, tf.data.Dataset.from_tensor_slices((x_test, y_test))) == expected


@pytest.mark.slow
def test_bad_datasets_are_named(any_model):
    import tensorflow as tf

    x, y = np.zeros((4, 8, 8, 1), "float32"), np.zeros(4)
    pairs = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
    with pytest.raises(ValueError, match=r"`y` must be None when `x` is a tf.data.Dataset of \(x, y\) "
                                         r"pairs\. Received: y of type ndarray"):
        evaluate_tflite(any_model, pairs, y)
    with pytest.raises(ValueError, match=r"`x` must be a tf.data.Dataset of \(x, y\) pairs\. Received: "
                                         r"a tf.data.Dataset with element_spec"):
        evaluate_tflite(any_model, tf.data.Dataset.from_tensor_slices(x))
    with pytest.raises(ValueError, match=r"`x` is empty: the dataset yielded no element"):
        evaluate_tflite(any_model, pairs.take(0))
    with pytest.raises(ValueError, match=r"`y` is needed with `x` as an array.* Received: y=None"):
        evaluate_tflite(any_model, x)


def test_one_output_is_read_as_a_logit_or_a_probability(tmp_path):
    from tflowrank.evaluate import one_logit, output_activation, predicted_classes

    assert list(predicted_classes(np.array([[0.3], [0.7], [-0.2]]))) == [0, 1, 0]
    assert list(predicted_classes(np.array([[0.3], [0.7], [-0.2]]), logit=True)) == [1, 1, 0]
    assert list(predicted_classes(np.array([[0.3, 0.1], [0.2, 0.7]]), logit=True)) == [0, 1]
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    logits = keras.Model(inputs, keras.layers.Dense(1)(inputs), name="logits")
    sigmoid = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1, activation="sigmoid")])
    nested = keras.Model(inputs, sigmoid(keras.layers.Dense(6)(inputs)))
    lambda_sigmoid = keras.Model(inputs, keras.layers.Lambda(keras.ops.sigmoid)(logits(inputs)))
    assert (output_activation(logits), output_activation(nested), output_activation(lambda_sigmoid)) \
        == ("linear", "sigmoid", None)
    assert one_logit(logits) and not one_logit(sigmoid) and not one_logit(nested)
    assert not one_logit(keras.Model(inputs, keras.layers.Dense(3)(inputs)))  # class scores
    assert not one_logit(lambda_sigmoid)  # unknown: a probability, unless the loss says logits
    lambda_sigmoid.compile(loss=keras.losses.BinaryCrossentropy(from_logits=True))
    assert one_logit(lambda_sigmoid)
    assert output_activation(keras.Model(inputs, keras.ops.sigmoid(logits(inputs)))) == "sigmoid"
    # a .tflite file: a logit unless it ends in a LOGISTIC, whatever the Keras layer that made it
    x = np.random.default_rng(0).normal(size=(400, 6)).astype("float32")
    out = logits.predict(x, verbose=0)[:, 0]
    y = (out > 0).astype(int)
    assert np.mean((out > 0.5) == y) < 0.9  # a logit read as a probability would score this
    probability = keras.Model(inputs, keras.ops.sigmoid(logits(inputs)), name="probability")
    for model in (logits, probability):
        path = export_tflite(model, tmp_path / f"{model.name}.tflite", quantize=None).path
        assert evaluate_tflite(path, x, y) == 1.0
