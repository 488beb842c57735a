"""compress on models unlike the Fashion CNN: refused before any work when it cannot finish, or
compressed right (a sigmoid head, layers quantization-aware training does not cover)."""

import json

import keras
import numpy as np
import pytest

from tflowrank import compress, predict_tflite, search
from tflowrank.errors import ConversionError
from tflowrank.tflite_model import inspect_tflite

CHEAP = dict(finetune_epochs=1, candidates=3, search_samples=64, calibration_samples=32, batch_size=32,
             profile_runs=2, profile_repeats=1, log=None, progress=False)


def _data(model, n=192, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, *model.inputs[0].shape[1:])).astype("float32")
    outputs = model.predict(x, verbose=0)
    y = (outputs[:, 0] > np.median(outputs[:, 0])).astype("float32") if outputs.shape[-1] == 1 \
        else outputs.argmax(-1)
    return (x[:128], y[:128]), (x[128:], y[128:])


def _convs(inputs, *head):
    x = inputs
    for layer in head:
        x = layer(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_a")(x)
    x = keras.layers.Conv2D(24, 3, padding="same", activation="relu", name="conv_b")(x)
    return keras.layers.GlobalAveragePooling2D(name="gap")(x)


def _grouped():
    """A model with a grouped convolution (one no factorization method takes)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="first")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", groups=2, activation="relu", name="grouped")(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(_convs(x)))


def _upsampling():
    """A model with a transposed convolution (one quantization-aware training does not cover,
    which TFLite runs in int8)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="first")(inputs)
    x = keras.layers.Conv2DTranspose(8, 3, strides=2, padding="same", activation="relu", name="upsample")(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(_convs(x)))


def test_a_layer_qat_does_not_cover_is_refused_before_any_work(tmp_path):
    model = _upsampling()
    train, val = _data(model)
    with pytest.raises(ValueError, match=r"qat=True trains .* does not cover these layers: 'upsample' "
                                         r"\(Conv2DTranspose: .*\)\. Pass qat_float_fallback=True .* or qat=False"):
        compress(model, train, val, 0.5, output_dir=tmp_path / "out", **CHEAP)
    assert not (tmp_path / "out").exists()
    with pytest.raises(TypeError, match=r"`qat_float_fallback` must be True, False or a list of layer "
                                        r"names\. Received: qat_float_fallback='upsample'"):
        compress(model, train, val, 0.5, qat_float_fallback="upsample", output_dir=tmp_path / "out", **CHEAP)


@pytest.mark.slow
def test_qat_float_fallback_keeps_such_a_layer_in_float_and_exports_int8(tmp_path):
    model = _upsampling()
    train, val = _data(model)
    result = compress(model, train, val, 0.5, qat_float_fallback=["upsample"], output_dir=tmp_path / "out",
                      **CHEAP)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["settings"]["qat_float_fallback"] == ["upsample"] and "qat" in report["history"]
    assert "upsample" not in {entry["layer"] for entry in report["layers"]}  # not factorized either
    assert result.export.ops["TRANSPOSE_CONV"] == 1 and inspect_tflite(result.export.path).is_fully_int8
    assert abs(result.tflite_accuracy - result.keras_accuracy) <= 2 / len(val[0])


@pytest.mark.slow
def test_a_sigmoid_head_compiled_by_name_compresses_with_flat_labels(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="head")(_convs(inputs)))
    model.compile(loss="binary_crossentropy")  # labels (N,) against outputs (N, 1), as fit takes them
    train, val = _data(model)
    assert train[1].shape == (128,) and 0.3 < train[1].mean() < 0.7
    result = compress(model, train, val, 0.5, feature_distill=0.3, output_dir=tmp_path / "out", **CHEAP)
    probabilities = result.model.predict(val[0], verbose=0)[:, 0]
    assert result.keras_accuracy == pytest.approx(np.mean((probabilities > 0.5) == val[1]))
    # the int8 file read the same way: a probability, class 1 above 0.5 (not an argmax of one column)
    int8 = predict_tflite(result.export.path, val[0])[:, 0]
    assert result.tflite_accuracy == pytest.approx(np.mean((int8 > 0.5) == val[1]))
    assert result.export.ops["LOGISTIC"] == 1 and inspect_tflite(result.export.path).is_fully_int8


@pytest.mark.slow
def test_a_logit_head_is_read_at_zero_throughout(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    head = keras.layers.Dense(1, name="head")  # a logit out, as in Keras's transfer-learning guide
    model = keras.Model(inputs, head(_convs(inputs)))
    model.compile(loss=keras.losses.BinaryCrossentropy(from_logits=True))
    x = np.random.default_rng(0).normal(size=(192, 12, 12, 3)).astype("float32")
    logits = model.predict(x, verbose=0)[:, 0]
    kernel, bias = head.get_weights()  # logits spread about 0 by 0.5: many within (0, 0.5]
    head.set_weights([kernel * 0.5 / logits.std(), bias + (0 - np.median(logits)) * 0.5 / logits.std()])
    logits = model.predict(x, verbose=0)[:, 0]
    y = (logits > 0).astype("float32")
    assert np.mean((logits > 0.5) == y) < 0.8  # what the 0.5 rule would score the input model
    train, val = (x[:128], y[:128]), (x[128:], y[128:])
    result = compress(model, train, val, 0.5, output_dir=tmp_path / "out", **CHEAP)
    assert result.baseline_accuracy == 1.0 and result.plan.baseline_score == 1.0
    out = result.model.predict(val[0], verbose=0)[:, 0]
    assert result.keras_accuracy == pytest.approx(np.mean((out > 0) == val[1]))
    int8 = predict_tflite(result.export.path, val[0])[:, 0]
    assert result.tflite_accuracy == pytest.approx(np.mean((int8 > 0) == val[1]))
    assert "LOGISTIC" not in result.export.ops
    # the model comes back compiled with an accuracy that reads the logit the same way
    metrics = result.model.evaluate(val[0], val[1], batch_size=64, verbose=0, return_dict=True)
    assert metrics["accuracy"] == pytest.approx(result.keras_accuracy)


def test_one_output_gets_a_binary_default_loss_and_no_class_distillation(tmp_path):
    from tflowrank.compression import _loss

    inputs = keras.Input((12, 12, 3))
    features = _convs(inputs)
    for head, kind, from_logits in ((keras.layers.Dense(1), "BinaryCrossentropy", True),
                                    (keras.layers.Dense(1, activation="sigmoid"), "BinaryCrossentropy", False),
                                    (keras.layers.Dense(4), "SparseCategoricalCrossentropy", True),
                                    (keras.layers.Dense(4, activation="softmax"),
                                     "SparseCategoricalCrossentropy", False)):
        loss = _loss(keras.Model(inputs, head(features)), None, keras)
        assert (type(loss).__name__, loss.get_config()["from_logits"]) == (kind, from_logits)
    one = keras.Model(inputs, keras.layers.Dense(1)(features), name="one")
    x = np.zeros((8, 12, 12, 3), "float32")
    with pytest.raises(ValueError, match=r"`distill=True` matches the input model's class scores, and "
                                         r"`model` \('one'\) has one output"):
        compress(one, (x, np.zeros(8)), (x, np.zeros(8)), 0.5, distill=True,
                 output_dir=tmp_path / "out", **CHEAP)
    assert not (tmp_path / "out").exists()


def test_a_model_with_two_outputs_is_refused(tmp_path):
    inputs = keras.Input((12, 12, 3))
    features = _convs(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(4, name="a")(features),
                                 keras.layers.Dense(2, name="b")(features)], name="two")
    x = np.zeros((8, 12, 12, 3), "float32")
    message = r"`model` \('two'\) has 2 outputs .*: compress takes a classifier with one input and one output"
    with pytest.raises(ValueError, match=message):
        compress(model, (x, np.zeros(8)), (x, np.zeros(8)), 0.5, output_dir=tmp_path / "out", **CHEAP)
    assert not (tmp_path / "out").exists()


def test_inputs_of_unknown_size_or_integer_type_are_refused(tmp_path):
    inputs = keras.Input((None, None, 3))
    dynamic = keras.Model(inputs, keras.layers.Dense(4)(_convs(inputs)), name="dynamic")
    x = np.zeros((8, 12, 12, 3), "float32")
    y = np.zeros(8)
    message = r"`model` \('dynamic'\) takes inputs of unknown size \(None, None, None, 3\): the cost"
    with pytest.raises(ValueError, match=message):
        compress(dynamic, (x, y), (x, y), 0.5, output_dir=tmp_path / "out", **CHEAP)
    with pytest.raises(ValueError, match=message):
        search(dynamic, (x, y), 0.5)
    inputs = keras.Input((12, 12, 3), dtype="uint8")
    pixels = keras.Model(inputs, keras.layers.Dense(4)(
        _convs(inputs, keras.layers.Rescaling(1 / 255))), name="pixels")
    with pytest.raises(ValueError, match=r"compress needs float inputs, and `model` \('pixels'\) takes uint8"):
        compress(pixels, (x, y), (x, y), 0.5, qat=False, output_dir=tmp_path / "out", **CHEAP)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_model_without_an_int8_kernel_is_refused_before_the_search(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = _convs(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.LayerNormalization(name="norm")(x)))
    train, val = _data(model)
    with pytest.raises(ConversionError, match=r"The input model .* does not convert to a fully int8 "
                                              r"TFLite file.* \(checked before the search\): the "
                                              r"converter left NEG"):
        compress(model, train, val, 0.5, qat=False, output_dir=tmp_path / "out", **CHEAP)
    assert not (tmp_path / "out" / "sensitivity.json").exists()  # no search ran


def test_a_model_whose_cost_is_in_layers_no_method_factorizes_is_told_which():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64, 8))  # grouped 1-D convolutions: no method factorizes them
    x = keras.layers.Conv1D(32, 5, padding="same", groups=2, activation="relu", name="conv1d_a")(inputs)
    x = keras.layers.Conv1D(32, 5, padding="same", groups=4, activation="relu", name="conv1d_b")(x)
    outputs = keras.layers.Dense(4, name="head")(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(32, 64, 8)).astype("float32")
    with pytest.raises(ValueError, match=r"cannot be reached .*; 1\.00 of it is in layers no method "
                                         r"factorizes: conv1d_b \(Conv1D, 0\.\d\d\), conv1d_a \(Conv1D"):
        search(model, (x, np.zeros(32)), 0.5, candidates=2)


@pytest.mark.slow
def test_cli_compress_takes_the_float_fallback(tmp_path, capsys):
    from tflowrank.cli import main

    model = _upsampling()
    (x, y), (x_val, y_val) = _data(model)
    model.save(tmp_path / "upsampling.keras")
    np.savez(tmp_path / "data.npz", x_train=x, y_train=y, x_val=x_val, y_val=y_val)
    args = ["compress", str(tmp_path / "upsampling.keras"), "--data", str(tmp_path / "data.npz"),
            "--target", "0.5", "--epochs", "1", "--candidates", "3", "--search-samples", "64",
            "--runs", "2", "--repeats", "1"]
    assert main([*args, "-o", str(tmp_path / "refused")]) == 2
    assert "'upsample' (Conv2DTranspose: no int8 simulation" in capsys.readouterr().err
    assert main([*args, "-o", str(tmp_path / "out"), "--qat-float-fallback", "upsample"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["settings"]["qat_float_fallback"] == ["upsample"]
    assert inspect_tflite(tmp_path / "out" / "model_int8.tflite").is_fully_int8


def test_search_names_the_layers_it_leaves_whole():
    model = _grouped()
    x = np.random.default_rng(0).normal(size=(32, 12, 12, 3)).astype("float32")
    with pytest.warns(UserWarning, match=r"tflowrank.search: left whole, as no method can factorize "
                                         r"them: grouped \(groups=2 is not supported \(only groups=1\)\)$"):
        plan = search(model, (x, np.zeros(32)), 0.7, candidates=2)
    assert "grouped" not in {entry.layer for entry in plan.factorized}
