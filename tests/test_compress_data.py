"""compress's data: arrays drawn by index, tf.data datasets read in passes and never held whole."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tflowrank import compress, evaluate_tflite
from tflowrank.compress_data import Arrays, Stream, as_data, keras_accuracy, tflite_accuracy


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(12, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inputs, outputs, name="streamed")


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def arrays(model):
    x = np.random.default_rng(0).normal(size=(200, 8, 8, 3)).astype("float32")
    return x, model.predict(x, verbose=0).argmax(-1)


class Counted:
    """A generator-backed dataset (unknown cardinality) that counts the passes started and the
    batches read (tf.data reads ahead of a pass stopped early: up to the whole pass)."""

    def __init__(self, x, y, batch):
        self.x, self.y, self.batch, self.passes, self.read = x, y, batch, 0, 0
        spec = (tf.TensorSpec((None, *x.shape[1:]), tf.float32), tf.TensorSpec((None,), tf.int64))
        self.dataset = tf.data.Dataset.from_generator(self._generate, output_signature=spec)

    def _generate(self):
        self.passes += 1
        for i in range(0, len(self.x), self.batch):
            self.read += 1
            yield self.x[i:i + self.batch], self.y[i:i + self.batch].astype("int64")


def test_a_stream_reads_the_first_samples_of_one_pass(model, arrays):
    x, y = arrays
    counted = Counted(x, y, 32)
    stream = as_data("train_data", counted.dataset, model, 64)
    assert isinstance(stream, Stream) and stream.samples is None
    head_x, head_y = stream.head(70)
    np.testing.assert_array_equal(head_x, x[:70])
    np.testing.assert_array_equal(head_y, y[:70])
    assert counted.passes == 1  # stopped at the 3rd batch (tf.data may have read ahead)
    assert stream.batches_per_pass() == 7 and counted.passes == 2  # unknown cardinality: counted
    assert stream.samples == 200  # the counting pass ended
    inputs = list(stream.input_batches(2, 64, None))
    assert [len(b) for b in inputs] == [32, 32] and counted.passes == 3


def test_fine_tuning_steps_read_consecutive_passes_in_order(model, arrays):
    x, y = arrays
    counted = Counted(x, y, 64)  # 4 batches per pass, the last of 8
    stream = as_data("train_data", counted.dataset, model, 64)
    per_pass, batch = stream.steps(64, 2, None)
    assert per_pass == 4 and counted.passes == 1  # the counting pass
    first, second = batch(0), batch(1)
    assert batch(0) is first and batch(1) is second  # Keras peeks at the first batches again
    np.testing.assert_array_equal(first[0], x[:64])
    for i in range(2, 8):
        got_x, got_y = batch(i)
        np.testing.assert_array_equal(got_x, x[i % 4 * 64:(i % 4 + 1) * 64])
        np.testing.assert_array_equal(got_y, y[i % 4 * 64:(i % 4 + 1) * 64])
    assert counted.passes == 3 and counted.read == 4 + 8  # no read beyond the last step
    with pytest.raises(IndexError, match="step 0 of the stream was read and dropped"):
        batch(0)


def test_relabelled_streams_compute_targets_batch_by_batch(model, arrays):
    x, y = arrays
    stream = as_data("train_data", tf.data.Dataset.from_tensor_slices((x, y)), model, 50)
    assert stream.batches_per_pass() == 4  # unbatched samples batched by batch_size; cardinality known
    sizes = []
    relabelled = stream.relabel(lambda bx, by: sizes.append(len(bx)) or by * 10)
    _, batch = relabelled.steps(50, 1, None)
    np.testing.assert_array_equal(batch(1)[1], y[50:100] * 10)
    assert sizes == [50, 50] and stream.targets is None  # the original stream is unchanged
    arrays_relabelled = Arrays("train_data", x, y).relabel(lambda bx, by: by + 1)
    np.testing.assert_array_equal(arrays_relabelled.y, y + 1)


def test_accuracies_on_a_stream_equal_those_on_arrays(model, arrays, tmp_path):
    from tflowrank import export_tflite

    x, y = arrays
    y = y.copy()
    y[::3] = (y[::3] + 1) % 3  # not all right
    stream = as_data("val_data", tf.data.Dataset.from_tensor_slices((x, y)).batch(48), model, 64)
    whole = as_data("val_data", (x, y), model, 64)
    assert keras_accuracy(model, stream) == keras_accuracy(model, whole) == pytest.approx(2 / 3, abs=0.01)
    path = export_tflite(model, tmp_path / "m.tflite", quantize="int8", representative_data=x).path
    assert tflite_accuracy(path, stream) == tflite_accuracy(path, whole) == evaluate_tflite(path, x, y)
    assert stream.samples == 200


@pytest.mark.parametrize("make, message", [
    (lambda x, y: tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat(),
     r"`train_data` repeats forever \(tf.data cardinality INFINITE\)"),
    (lambda x, y: tf.data.Dataset.from_tensor_slices((x, y)).take(0),
     r"`train_data` is empty: the dataset yielded no element"),
    (lambda x, y: tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: b > 9),
     r"`train_data` is empty: the dataset yielded no element"),
    (lambda x, y: tf.data.Dataset.from_tensor_slices(x),
     r"`train_data` must yield \(x, y\) pairs of tensors\. Received: a tf.data.Dataset with element_spec"),
    (lambda x, y: tf.data.Dataset.from_tensor_slices((x[:, :4], y)),
     r"The inputs of `train_data` do not match the model input \(None, 8, 8, 3\)\. Received: a "
     r"tf.data.Dataset of x with shape \(None, 4, 8, 3\)"),
])
def test_bad_datasets_are_named(model, arrays, make, message):
    with pytest.raises(ValueError, match=message):
        as_data("train_data", make(*arrays), model, 32).batches_per_pass()


def test_arrays_keep_their_errors(model):
    with pytest.raises(ValueError, match=r"`val_data` must be a pair \(x, y\) of NumPy arrays or a "
                                         r"tf.data.Dataset of \(x, y\)\. Received: val_data of type dict"):
        as_data("val_data", {"x": 1}, model, 32)
    with pytest.raises(ValueError, match=r"`val_data` holds 3 inputs but 2 labels"):
        as_data("val_data", (np.zeros((3, 8, 8, 3)), np.zeros(2)), model, 32)


def test_compress_refuses_a_bad_dataset_before_writing(model, arrays, tmp_path):
    x, y = arrays
    endless = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat()
    with pytest.raises(ValueError, match="`train_data` repeats forever"):
        compress(model, endless, (x, y), 0.5, output_dir=tmp_path / "out", log=None)
    with pytest.raises(ValueError, match="`val_data` repeats forever"):
        compress(model, (x, y), endless, 0.5, finetune_epochs=0, qat=False,
                 output_dir=tmp_path / "out", log=None)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_compress_streams_its_training_and_validation_data(model, arrays, tmp_path):
    x, y = arrays
    x_val = np.random.default_rng(1).normal(size=(96, 8, 8, 3)).astype("float32")
    y_val = model.predict(x_val, verbose=0).argmax(-1)
    train = Counted(x, y, 40)  # 5 batches per pass, cardinality unknown: counted once
    val = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(32)
    search = tf.data.Dataset.from_tensor_slices((x[:64], y[:64]))  # unbatched samples
    lines = []
    result = compress(model, train.dataset, val, 0.5, finetune_epochs=2, qat=True, qat_epochs=0.4,
                      output_dir=tmp_path / "out", candidates=3, search_data=search, search_samples=48,
                      calibration_samples=30, profile_runs=3, profile_repeats=1, log=lines.append,
                      progress=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    settings = report["settings"]
    assert settings["train_data"] == "tf.data.Dataset" and settings["train_samples"] == 200
    assert settings["val_samples"] == 96 and settings["search_samples"] == 48
    assert settings["calibration_samples"] == 30
    assert "train_data: 5 batches per epoch" in lines
    # float steps then 2 quantization-aware ones (0.4 of 5), each step read once, one value per epoch
    history = report["history"]
    assert len(history["float"]["loss"]) == 2 and len(history["qat"]["loss"]) == 1
    # counting, 2 batch-norm passes (50 batches or fewer), 2 epochs, and the head's first batch
    # (tf.data may read ahead of it)
    assert 5 + 5 + 10 + 5 + 1 <= train.read <= 5 + 5 + 10 + 5 + 5
    assert train.passes == 1 + 1 + 2 + 2
    assert result.tflite_accuracy == evaluate_tflite(result.export.path, x_val, y_val)
    assert result.keras_accuracy == keras_accuracy(result.model, Arrays("val_data", x_val, y_val))
    assert 0 < result.macs <= 0.5 * result.baseline_macs * 1.05


def test_a_dataset_sorted_by_class_is_warned_about(model, arrays, tmp_path):
    x, y = arrays
    order = np.argsort(y, kind="stable")
    ordered = tf.data.Dataset.from_tensor_slices((x[order], y[order])).batch(32)
    with pytest.warns(UserWarning, match=r"The first 48 samples of `train_data` all have the label 0: "
                                         r"the search and the int8 calibration use them\. Shuffle"):
        compress(model, ordered, (x, y), 0.5, finetune_epochs=0, qat=False, candidates=2,
                 search_samples=48, calibration_samples=16, profile_runs=2, profile_repeats=1,
                 output_dir=tmp_path / "out", log=None, progress=False)
