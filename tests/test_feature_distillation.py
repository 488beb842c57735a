"""Feature distillation: the loss it adds, what it trains, and compress(feature_distill=...)."""

import json

import keras
import numpy as np
import pytest

from tflowrank import compress, factorize
from tflowrank.feature_distillation import FeatureDistiller, matched_layers


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inputs, outputs, name="small")


@pytest.fixture(scope="module")
def teacher():
    return _model()


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 10, 10, 3)).astype("float32"), rng.integers(0, 3, 32)


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _hint(student, teacher, name, x):
    s = keras.Model(student.inputs, student.get_layer(name).output).predict(x, verbose=0)
    t = keras.Model(teacher.inputs, teacher.get_layer(name).output).predict(x, verbose=0)
    return float(np.mean((s - t) ** 2) / np.mean(t ** 2))


def test_matched_layers_are_the_factorized_ones(teacher):
    student = factorize(teacher, "spatial", 2, layers=["conv2"])
    assert matched_layers(student, teacher) == ("conv2",)
    assert matched_layers(teacher, teacher) == ()  # nothing factorized


def test_the_loss_adds_the_weighted_mean_normalised_error(teacher, batch):
    x, y = batch
    student = factorize(teacher, "spatial", 1, layers=["conv1", "conv2"])
    names = matched_layers(student, teacher)
    assert names == ("conv1", "conv2")
    distiller = FeatureDistiller(student, teacher, names, _loss(), 0.7)
    outputs = distiller(x)
    loss = float(distiller.compute_loss(x, y, outputs))
    task = float(_loss()(y, student(x)))
    hints = [_hint(student, teacher, name, x) for name in names]
    assert min(hints) > 1e-3
    assert loss == pytest.approx(task + 0.7 * np.mean(hints), rel=1e-4)
    same = FeatureDistiller(teacher, teacher, ("conv2",), _loss(), 0.7)
    assert float(same.compute_loss(x, y, same(x))) == pytest.approx(float(_loss()(y, teacher(x))), rel=1e-5)


def test_training_moves_the_student_toward_the_teacher_and_leaves_the_teacher(teacher, batch):
    x, y = batch
    weights = [w.copy() for w in teacher.get_weights()]
    student = factorize(teacher, "spatial", 1, layers=["conv2"])
    before = _hint(student, teacher, "conv2", x)
    # the task loss contributes nothing: only the hint trains
    distiller = FeatureDistiller(student, teacher, ("conv2",), lambda t, p: 0.0 * keras.ops.mean(p), 1.0)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2))
    distiller.fit(x, y, epochs=30, batch_size=32, verbose=0)
    assert _hint(student, teacher, "conv2", x) < 0.85 * before  # without the hint: unchanged
    for old, new in zip(weights, teacher.get_weights()):
        np.testing.assert_array_equal(old, new)
    assert all(layer.trainable for layer in teacher.layers)


@pytest.mark.parametrize("names, weight, message", [
    ((), 1.0, r"`layer_names` must name at least one layer to match\. Received: \(\)"),
    (("conv2",), 0, r"`weight` must be a number > 0\. Received: weight=0"),
    (("conv2",), True, r"`weight` must be a number > 0\. Received: weight=True"),
])
def test_bad_arguments(teacher, names, weight, message):
    with pytest.raises(ValueError, match=message):
        FeatureDistiller(teacher, teacher, names, _loss(), weight)


@pytest.mark.parametrize("value", [-0.1, "0.5", True, float("nan")])
def test_compress_rejects_a_bad_feature_distill(teacher, batch, tmp_path, value):
    with pytest.raises(ValueError, match=r"`feature_distill` must be a number >= 0 \(0: off\) or None\. "
                                         r"Received: feature_distill="):
        compress(teacher, batch, batch, 0.5, feature_distill=value, output_dir=tmp_path / "out",
                 log=None)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_compress_fine_tunes_with_the_hints(teacher, batch, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(256, 10, 10, 3)).astype("float32")
    y = teacher.predict(x, verbose=0).argmax(-1)
    weights = [w.copy() for w in teacher.get_weights()]
    lines = []
    result = compress(teacher, (x[:192], y[:192]), (x[192:], y[192:]), 0.6, finetune_epochs=1,
                      qat=True, feature_distill=0.5, output_dir=tmp_path, methods=("spatial",),
                      candidates=3, search_samples=64, calibration_samples=32, batch_size=32,
                      profile_runs=3, log=lines.append, progress=False)
    for old, new in zip(weights, teacher.get_weights()):
        np.testing.assert_array_equal(old, new)
    names = ", ".join(e.layer for e in result.plan.factorized)
    assert any(line.startswith("fine-tune: ") and f"(matching the input model's {names} x 0.5)" in line
               for line in lines)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["feature_distill"] == 0.5
    assert len(report["history"]["float"]["loss"]) == 1 and "accuracy" not in report["history"]["float"]
    assert "the factorized layers matched to the input model's (weight 0.5)" in (
        tmp_path / "report.md").read_text()
    assert 0.0 <= result.tflite_accuracy <= 1.0


def test_layers_inside_a_nested_model_are_not_matched():
    keras.utils.set_random_seed(0)
    block = keras.Sequential([keras.Input((10, 10, 3)),
                              keras.layers.Conv2D(8, 3, padding="same", name="inner")], name="block")
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.GlobalAveragePooling2D()(block(inputs))
    teacher = keras.Model(inputs, keras.layers.Dense(3, name="head")(x))
    student = factorize(teacher, "spatial", 2, layers=["inner"])
    assert any(type(layer).__name__ == "SpatialConv2D" for layer in student.get_layer("block").layers)
    assert matched_layers(student, teacher) == ()  # its output is not a top-level tensor


@pytest.mark.slow
def test_compress_without_a_layer_to_match_fine_tunes_on_its_loss_and_says_so(tmp_path):
    keras.utils.set_random_seed(0)
    block = keras.Sequential([keras.Input((10, 10, 3)),
                              keras.layers.Conv2D(8, 3, padding="same", name="inner")], name="block")
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(block(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(x))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(160, 10, 10, 3)).astype("float32")
    y = model.predict(x, verbose=0).argmax(-1)
    lines = []
    compress(model, (x[:128], y[:128]), (x[128:], y[128:]), 0.6, finetune_epochs=1, qat=False,
             feature_distill=0.5, output_dir=tmp_path, methods=("spatial",), candidates=3,
             search_samples=64, calibration_samples=32, batch_size=32, profile_runs=3,
             log=lines.append, progress=False)
    assert ("feature_distill: no factorized layer called once at the top level of both models; "
            "fine-tuning without it") in lines
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["feature_distill"] == 0.0  # the weight used, not the one asked
    assert "accuracy" in report["history"]["float"]  # the model's own loss and metrics
    assert "matched to the input model's" not in (tmp_path / "report.md").read_text()
