"""Quantization-aware training: quantize_aware, the QuantizeAware callback, int8 export parity."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import tflowrank  # noqa: E402
from tflowrank import qat, quantizers, zoo  # noqa: E402
from tflowrank.callbacks import QuantizeAware  # noqa: E402
from tflowrank.layers import CPConv2D, SVDConv2D, SVDDense  # noqa: E402
from tflowrank.tflite_model import inspect_tflite  # noqa: E402


def _flags(model):
    return {float(layer.quantize_enabled.numpy()) for layer in quantizers.quantizer_layers(model)}


def _set_flags(model, value):
    for layer in quantizers.quantizer_layers(model):
        layer.quantize_enabled.assign(value)


def _track_ranges(qat_model, x, labels, epochs):
    """Train a QAT model on ``(x, labels)`` (batches of 32) so that its ranges are tracked."""
    qat_model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat_model.fit(x, labels, batch_size=32, epochs=epochs, verbose=0)


def _output_steps(qat_model, path, x):
    """How far the int8 file's outputs are from the QAT model's, in steps of the int8 scale of
    its output (the quantizer ``head_quant``)."""
    low, high = (float(v) for v in qat_model.get_layer("head_quant").quantization_range())
    return np.abs(_tflite_logits(path, x) - qat_model.predict(x, verbose=0)) / ((high - low) / 255)


def _tflite_logits(path, x):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    rows = []
    for sample in x:
        interpreter.set_tensor(inp["index"], sample[None].astype(np.float32))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0])
    return np.stack(rows)


@pytest.fixture(scope="module")
def fashion():
    model = zoo.load_fashion_cnn()
    if model is None:
        pytest.skip("the shipped Fashion-MNIST CNN is not installed")
    (x_train, y_train), (x_test, y_test) = tflowrank.datasets.fashion_mnist(verbose=False)
    return (model, zoo.prepare_images(x_train[:3200]), y_train[:3200],
            zoo.prepare_images(x_test[:1000]), y_test[:1000])


def test_batch_norm_folding_matches_the_float_model(fashion):
    model, _, _, x_test, _ = fashion
    qat_model = tflowrank.quantize_aware(model)
    names = [layer.name for layer in qat_model.layers]
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in qat_model.layers)
    assert "conv1" in names and "bn1" not in names and "relu1_quant" in names
    assert "conv1_quant" not in names  # the ReLU is fused: one range, after it
    _set_flags(qat_model, 0.0)
    np.testing.assert_allclose(qat_model.predict(x_test[:64], verbose=0),
                               model.predict(x_test[:64], verbose=0), atol=2e-4, rtol=1e-4)


def test_fold_batch_norm_math():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(5, 3)).astype(np.float32)
    mean, var, gamma, beta, bias = (rng.normal(size=3) for _ in range(5))
    var = np.abs(var)
    scale, new_bias = qat.fold_batch_norm(mean, var, gamma, beta, 1e-3, bias)
    expected = gamma * ((y + bias) - mean) / np.sqrt(var + 1e-3) + beta
    np.testing.assert_allclose(y * scale + new_bias, expected, rtol=1e-5, atol=1e-5)


def test_qat_export_matches_the_qat_model(fashion, tmp_path):
    model, x_train, y_train, x_test, y_test = fashion
    before = [w.copy() for w in model.get_weights()]
    qat_model = tflowrank.quantize_aware(model)
    zoo.compile_classifier(qat_model, learning_rate=1e-4)
    qat_model.fit(x_train, y_train, batch_size=64, epochs=1, verbose=0,
                  callbacks=[QuantizeAware(start_epoch=0)])
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)  # the input model is untouched

    result = tflowrank.export_tflite(qat_model, tmp_path / "qat.tflite")  # no calibration data
    assert result.ops["CONV_2D"] == 4 and "MUL" not in result.ops  # BN folded, nothing in float
    tflite = _tflite_logits(result.path, x_test).argmax(1)
    keras_pred = qat_model.predict(x_test, batch_size=500, verbose=0).argmax(1)
    agreement = float(np.mean(tflite == keras_pred))
    gap = abs(float(np.mean(tflite == y_test)) - float(np.mean(keras_pred == y_test)))
    assert agreement >= 0.995, agreement
    assert gap <= 0.002 + 1e-9, gap


def _tiny_factorized(tmp_path=None):
    rng = np.random.default_rng(1)
    inputs = keras.Input((12, 12, 3), name="x")
    conv = keras.layers.Conv2D(8, 3, padding="same", name="conv")
    svd = keras.layers.Conv2D(12, 3, padding="same", name="svd")
    cp = keras.layers.Conv2D(12, 3, padding="same", name="cp")
    dense = keras.layers.Dense(6, name="dense")
    x = keras.layers.ReLU(name="r0")(conv(inputs))
    x = svd(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    y = keras.layers.ReLU(max_value=6.0, name="r1")(x)
    x = keras.layers.Add(name="add")([cp(y), y])
    x = keras.layers.ReLU(name="r2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = dense(x)
    model = keras.Model(inputs, outputs)
    bn = model.get_layer("bn")
    bn.set_weights([rng.uniform(0.5, 2, 12), rng.normal(size=12), rng.normal(size=12),
                    rng.uniform(0.5, 2, 12)])
    replacements = {id(svd): SVDConv2D.from_layer(svd, 6), id(cp): CPConv2D.from_layer(cp, 8),
                    id(dense): SVDDense.from_layer(dense, 4)}
    from tflowrank import graph

    return graph.rewrite(model, replacements), rng.uniform(0, 1, (64, 12, 12, 3)).astype("float32")


def test_factorized_chains_are_quantized_and_export_sliced(tmp_path):
    model, x = _tiny_factorized()
    model.get_layer("svd").set_active_rank(4)  # export slices it, ranges carried over
    qat_model = tflowrank.quantize_aware(model)
    cp = qat_model.get_layer("cp")
    assert isinstance(cp, quantizers.QuantizedLayer) and len(cp.between) == 3
    assert len(qat_model.get_layer("svd").between) == 1
    names = [layer.name for layer in qat_model.layers]
    assert "cp_quant" in names and "r2_quant" in names
    assert "add_quant" not in names and "svd_quant" not in names  # ReLU fused into Add / conv
    qat_model.compile(optimizer="adam", loss="mse")
    qat_model.fit(x, np.zeros((64, 6)), batch_size=16, epochs=2, verbose=0)
    for quantizer in cp.between:
        low, high = (float(v) for v in quantizer.quantization_range())
        assert float(quantizer.range_tracked.numpy()) == 1.0 and high > low

    result = tflowrank.export_tflite(qat_model, tmp_path / "f.tflite")
    assert result.ops["DEPTHWISE_CONV_2D"] == 2  # the CP chain, its depthwise steps int8
    # every chain within the steps of a plain convolution (the CP chain too: its ridged CP-ALS
    # factors do not cancel, so their int8 rounding is not amplified)
    low, high = (float(v) for v in qat_model.get_layer("dense_quant").quantization_range())
    steps = np.abs(_tflite_logits(result.path, x) - qat_model.predict(x, verbose=0)) / ((high - low) / 255)
    assert steps.max() <= 2.01, steps.max()
    # the QAT model itself kept its allocated rank
    assert qat_model.get_layer("svd").layer.rank == 6


def test_fake_quant_weight_is_per_channel_symmetric_narrow_range():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(3, 3, 4, 5)).astype("float32")
    w[..., 2] = 0.0  # a masked-off channel stays exactly zero
    q = np.asarray(quantizers.fake_quant_weight(keras.ops.convert_to_tensor(w)))
    bound = np.abs(w).max(axis=(0, 1, 2))
    for c in range(5):
        scale = max(bound[c], 1e-8) / 127
        np.testing.assert_allclose(q[..., c], np.clip(np.round(w[..., c] / scale), -127, 127)
                                   * scale, atol=1e-6)
    assert np.all(q[..., 2] == 0)
    dw = rng.normal(size=(3, 1, 6, 1)).astype("float32")  # depthwise: channel axis 2
    qd = np.asarray(quantizers.fake_quant_weight(keras.ops.convert_to_tensor(dw), depthwise=True))
    for c in range(6):
        scale = np.abs(dw[:, :, c]).max() / 127
        np.testing.assert_allclose(qd[:, :, c], np.round(dw[:, :, c] / scale) * scale, atol=1e-6)


def test_activation_quantizer_tracks_ema_and_freezes():
    layer = quantizers.ActivationQuantizer(ema_decay=0.5)
    layer.build()
    layer(np.array([[-1.0, 2.0]], "float32"), training=True)
    layer(np.array([[-3.0, 4.0]], "float32"), training=True)
    assert float(layer.range_min.numpy()) == pytest.approx(-2.0)
    assert float(layer.range_max.numpy()) == pytest.approx(3.0)
    out = np.asarray(layer(np.array([[-10.0, 0.0, 1.01]], "float32"), training=False))
    assert float(layer.range_max.numpy()) == pytest.approx(3.0)  # frozen at inference
    step = 5.0 / 255
    assert out[0, 0] == pytest.approx(-2.0, abs=step) and out[0, 1] == 0.0  # clipped, zero exact
    assert abs(out[0, 2] - 1.01) <= step / 2 + 1e-6
    with pytest.raises(ValueError, match=r"`ema_decay` must be a float in \[0, 1\). Received: ema_decay=1.5"):
        quantizers.ActivationQuantizer(ema_decay=1.5)


def test_unsupported_layer_error_and_float_fallback():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.LayerNormalization(name="norm")(x)
    x = keras.layers.Conv2D(4, 3, activation="elu", name="elu_conv")(x)
    model = keras.Model(inputs, x)
    with pytest.raises(ValueError, match=r"'norm' \(LayerNormalization: .*'elu_conv' \(Conv2D: "
                                         r"activation 'elu'"):
        tflowrank.quantize_aware(model)
    qat_model = tflowrank.quantize_aware(model, float_fallback=["norm", "elu_conv"])
    assert type(qat_model.get_layer("norm")) is keras.layers.LayerNormalization
    assert "norm_quant" in [layer.name for layer in qat_model.layers]
    assert isinstance(qat_model.get_layer("conv"), quantizers.QuantizedLayer)
    assert type(tflowrank.quantize_aware(model, float_fallback=True).get_layer("elu_conv")) \
        is keras.layers.Conv2D
    with pytest.raises(ValueError, match=r"`float_fallback` names layers the model does not have: "
                                         r"\['nope'\]"):
        tflowrank.quantize_aware(model, float_fallback=["nope"])
    pixels = keras.Input((8, 8, 3), dtype="uint8")
    raw = keras.Model(pixels, model(keras.layers.Rescaling(1 / 255)(pixels)), name="raw")
    for fallback in (False, True):
        with pytest.raises(ValueError, match=r"quantize_aware needs float inputs, and `model` "
                                             r"\('raw'\) takes uint8 input"):
            tflowrank.quantize_aware(raw, float_fallback=fallback)


def test_callback_switches_quantization_at_start_epoch():
    model, x = _tiny_factorized()
    qat_model = tflowrank.quantize_aware(model)
    qat_model.compile(optimizer="sgd", loss="mse")
    seen = []
    probe = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(_flags(qat_model)))
    qat_model.fit(x, np.zeros((64, 6)), batch_size=32, epochs=3, verbose=0,
                  callbacks=[QuantizeAware(start_epoch=2), probe])
    assert seen == [{0.0}, {0.0}, {1.0}]
    # before start_epoch the ranges are tracked already
    assert all(float(q.range_tracked.numpy()) == 1.0 for q in quantizers.quantizer_layers(qat_model)
               if isinstance(q, quantizers.ActivationQuantizer))
    with pytest.raises(ValueError, match="has no quantization layers"):
        model.compile(optimizer="sgd", loss="mse")
        model.fit(x, np.zeros((64, 6)), epochs=1, verbose=0, callbacks=[QuantizeAware()])
    with pytest.raises(ValueError, match=r"`start_epoch` must be an integer >= 0. Received: start_epoch=-1"):
        QuantizeAware(start_epoch=-1)


def test_export_needs_trained_ranges(tmp_path):
    model, _ = _tiny_factorized()
    with pytest.raises(ValueError, match="never tracked"):
        tflowrank.export_tflite(tflowrank.quantize_aware(model), tmp_path / "m.tflite")


def test_qat_model_round_trips_through_keras_file(tmp_path):
    model, x = _tiny_factorized()
    qat_model = tflowrank.quantize_aware(model)
    qat_model.compile(optimizer="adam", loss="mse")
    qat_model.fit(x, np.zeros((64, 6)), batch_size=32, epochs=1, verbose=0)
    path = tmp_path / "qat.keras"
    qat_model.save(path)
    expected = qat_model.predict(x, verbose=0)
    script = textwrap.dedent(f"""
        import numpy as np, keras
        import tflowrank.layers, tflowrank.quantizers
        model = keras.models.load_model({str(path)!r}, compile=False)
        x = np.load({str(tmp_path / 'x.npy')!r})
        np.save({str(tmp_path / 'y.npy')!r}, model.predict(x, verbose=0))
    """)
    np.save(tmp_path / "x.npy", x)
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ})
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, atol=1e-5)


@pytest.mark.slow
def test_mirrored_strategy_keeps_ranges_identical_across_replicas(tmp_path):
    script = textwrap.dedent("""
        import json, sys
        import numpy as np, tensorflow as tf
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras, tflowrank
        from tflowrank import quantizers
        from tflowrank.callbacks import QuantizeAware
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 1, (64, 8, 8, 3)).astype("float32")
        y = rng.integers(0, 4, 64)
        with strategy.scope():
            inputs = keras.Input((8, 8, 3))
            h = keras.layers.Conv2D(6, 3, use_bias=False)(inputs)
            h = keras.layers.BatchNormalization()(h)
            h = keras.layers.ReLU()(h)
            h = keras.layers.GlobalAveragePooling2D()(h)
            base = keras.Model(inputs, keras.layers.Dense(4)(h))
            model = tflowrank.quantize_aware(base)
            model.compile(optimizer="adam",
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[QuantizeAware(1)])
        out = []
        for layer in quantizers.quantizer_layers(model):
            if isinstance(layer, quantizers.ActivationQuantizer):
                for v in (layer.range_min, layer.range_max):
                    values = [float(t.numpy()) for t in v.value.values] \\
                        if hasattr(v.value, "values") else None
                    out.append(values)
        json.dump(out, sys.stdout)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranges = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ranges and all(r is not None and len(r) == 2 for r in ranges), ranges
    for per_replica in ranges:
        assert per_replica[0] == per_replica[1]
    assert any(r[0] != 0.0 for r in ranges)


def _head_model(head):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, activation="tanh" if head == "conv tanh" else "relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    if head == "conv tanh":
        outputs = keras.layers.Dense(4, name="head")(x)
    elif head == "dense softmax":
        outputs = keras.layers.Dense(4, activation="softmax", name="head")(x)
    elif head == "Softmax layer":
        outputs = keras.layers.Softmax(name="probs")(keras.layers.Dense(4, name="head")(x))
    elif head == "dense sigmoid":
        outputs = keras.layers.Dense(1, activation="sigmoid", name="head")(x)
    else:
        outputs = keras.layers.Activation("sigmoid", name="probs")(keras.layers.Dense(1, name="head")(x))
    return keras.Model(inputs, outputs)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["dense softmax", "Softmax layer", "dense sigmoid", "Activation sigmoid",
                                  "conv tanh"])
def test_softmax_sigmoid_and_tanh_train_and_export_at_the_fixed_tflite_scale(head, tmp_path):
    model = _head_model(head)
    qat_model = tflowrank.quantize_aware(model)
    classes = model.output_shape[-1]
    x = np.random.default_rng(0).random((128, 8, 8, 3), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, max(classes, 2), 128)
    qat_model.compile(optimizer="adam", loss="sparse_categorical_crossentropy" if classes > 1
                      else "binary_crossentropy")
    qat_model.fit(x, y, batch_size=32, epochs=1, verbose=0)

    result = tflowrank.export_tflite(qat_model, tmp_path / "head.tflite")
    op = "SOFTMAX" if "softmax" in head.lower() else "TANH" if "tanh" in head else "LOGISTIC"
    assert result.ops[op] == 1 and inspect_tflite(result.path).is_fully_int8
    tflite = _tflite_logits(result.path, x[:16])
    if op != "TANH":  # TFLite's int8 SOFTMAX / LOGISTIC output: scale 1/256, zero point -128
        np.testing.assert_allclose(tflite * 256, np.round(tflite * 256), atol=1e-4)
    np.testing.assert_allclose(tflite, qat_model.predict(x[:16], verbose=0), atol=1e-5)


def test_a_fixed_range_quantizer_never_tracks_and_round_trips():
    layer = quantizers.ActivationQuantizer(fixed_range=(0.0, 255 / 256))
    layer.build()
    out = np.asarray(layer(np.array([[0.3, 2.0, -1.0]], "float32"), training=True))
    assert float(layer.range_max.numpy()) == pytest.approx(255 / 256)  # no tracking
    np.testing.assert_allclose(out, [[round(0.3 * 256) / 256, 255 / 256, 0.0]], atol=1e-6)
    config = layer.get_config()
    assert quantizers.ActivationQuantizer.from_config(config).fixed_range == (0.0, 255 / 256)
    for bad in ((0.5, 1.0), (0.0, 0.0), (0.0, float("inf")), "wide"):
        with pytest.raises(ValueError, match=r"`fixed_range` must be None or \(low, high\) with "
                                             r"low <= 0 < high\. Received: fixed_range="):
            quantizers.ActivationQuantizer(fixed_range=bad)


@pytest.mark.slow
@pytest.mark.parametrize("rescaling, ranges, ops", [
    # pixels 0..255 in, as tutorials do: its own range, one int8 MUL
    (dict(scale=1 / 255, name="scale"), ("scale_quant",), {"MUL": 1}),
    # pixels to [-1, 1]: a range after each step, an int8 MUL then an int8 ADD
    (dict(scale=1 / 127.5, offset=-1, name="centre"), ("centre_scale_quant", "centre_quant"),
     {"MUL": 1, "ADD": 1}),
])
def test_a_rescaling_layer_trains_and_exports_as_int8_mul_then_add(tmp_path, rescaling, ranges, ops):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(**rescaling)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(x)
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x)))
    qat_model = tflowrank.quantize_aware(model)
    names = [layer.name for layer in qat_model.layers]
    assert all(name in names for name in ranges)
    x = np.random.default_rng(0).random((128, 8, 8, 3), dtype=np.float32) * 255
    _track_ranges(qat_model, x, np.random.default_rng(1).integers(0, 4, 128), epochs=1)
    result = tflowrank.export_tflite(qat_model, tmp_path / f"{rescaling['name']}.tflite")
    assert inspect_tflite(result.path).is_fully_int8 and all(result.ops[op] == n for op, n in ops.items())
    np.testing.assert_allclose(_tflite_logits(result.path, x[:16]), qat_model.predict(x[:16], verbose=0),
                               atol=1e-5)


@pytest.mark.slow
def test_swish_gelu_leaky_relu_and_multiply_export_as_their_int8_ops(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="hard_swish", name="hard_swish")(inputs)
    x = keras.layers.Activation("gelu", name="gelu")(keras.layers.Conv2D(8, 3, padding="same")(x))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="silu", name="swish_conv")(x)
    x = keras.layers.Activation("swish", name="swish")(keras.layers.Conv2D(8, 1)(x))
    excite = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)  # a squeeze-and-excite gate
    excite = keras.layers.Conv2D(8, 1, activation="sigmoid", name="gate")(excite)
    x = keras.layers.Multiply(name="excite")([x, excite])
    x = keras.layers.LeakyReLU(0.1, name="leaky")(keras.layers.Conv2D(8, 1)(x))
    x = keras.layers.Dense(8, activation="leaky_relu", name="leaky_dense")(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(keras.layers.GlobalAveragePooling2D()(x)))
    qat_model = tflowrank.quantize_aware(model)
    names = [layer.name for layer in qat_model.layers]
    # silu as TFLite runs it: the conv's own range, a LOGISTIC of fixed range, a MUL with its own
    for name in ("swish_conv_linear_quant", "swish_conv_sigmoid_quant", "swish_conv_mul", "swish_conv_quant",
                 "swish_sigmoid_quant", "swish_mul", "swish_quant", "hard_swish_linear_quant",
                 "hard_swish_quant", "gelu_quant", "excite_quant", "leaky_quant", "leaky_dense_quant"):
        assert name in names
    assert qat_model.get_layer("swish_conv_sigmoid_quant").fixed_range == (0.0, 255 / 256)
    x = np.random.default_rng(0).normal(size=(128, 8, 8, 3)).astype("float32")
    _track_ranges(qat_model, x, np.random.default_rng(1).integers(0, 4, 128), epochs=2)
    result = tflowrank.export_tflite(qat_model, tmp_path / "activations.tflite")
    assert inspect_tflite(result.path).is_fully_int8
    assert (result.ops["HARD_SWISH"], result.ops["GELU"], result.ops["LEAKY_RELU"]) == (1, 1, 2)
    assert result.ops["LOGISTIC"] == 3 and result.ops["MUL"] == 3  # two silu and the gate
    # TFLite's int8 kernels round as the fake quantization does: the outputs, after eight int8
    # ops of their own, are within two steps of the output's int8 scale (one here), most equal
    steps = _output_steps(qat_model, result.path, x[:32])
    assert steps.max() <= 2.01 and steps.mean() < 0.5


@pytest.mark.slow
def test_a_normalization_exports_as_int8_mul_then_add_with_the_converters_constants(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = (rng.random((256, 8, 8, 3)) * [255, 128, 30] + [0, 50, 100]).astype("float32")  # unlike scales
    inputs = keras.Input((8, 8, 3))
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(x)
    hidden = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(norm(inputs))
    hidden = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(keras.layers.GlobalAveragePooling2D()(hidden)))
    qat_model = tflowrank.quantize_aware(model)
    names = [layer.name for layer in qat_model.layers]
    assert "norm_scale_quant" in names and "norm_quant" in names
    # the per-channel constants as TFLite stores them: int8 over [0, max] and [min, 0]
    scale = np.asarray(qat_model.get_layer("norm_scale").scale)
    step = scale.max() / 255
    np.testing.assert_allclose(scale / step, np.round(scale / step), atol=1e-6)
    np.testing.assert_allclose(scale, 1 / np.sqrt(np.asarray(norm.variance).reshape(-1)), atol=step / 2)
    _track_ranges(qat_model, x, rng.integers(0, 4, 256), epochs=2)
    result = tflowrank.export_tflite(qat_model, tmp_path / "normalized.tflite")
    assert inspect_tflite(result.path).is_fully_int8 and result.ops["MUL"] == result.ops["ADD"] == 1
    steps = _output_steps(qat_model, result.path, x[:64])
    assert steps.max() <= 1.01 and steps.mean() < 0.1  # float constants instead: 5 steps, mean 1.4
    inverted = keras.Model(inputs, keras.layers.Normalization(mean=1.0, variance=4.0, invert=True,
                                                              name="denorm")(inputs))
    with pytest.raises(ValueError, match=r"'denorm' \(Normalization: invert=True"):
        tflowrank.quantize_aware(inverted)


@pytest.mark.slow
def test_grouped_convolutions_quantize_per_output_channel_like_the_converter(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", groups=2, use_bias=False, name="grouped")(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="grouped_bn")(x))
    x = keras.layers.Conv2D(16, 1, groups=4, name="grouped_pointwise")(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(keras.layers.GlobalAveragePooling2D()(x)))
    qat_model = tflowrank.quantize_aware(model)
    assert isinstance(qat_model.get_layer("grouped"), quantizers.QuantizedLayer)
    assert "grouped_bn" not in [layer.name for layer in qat_model.layers]  # folded, per output channel
    x = np.random.default_rng(0).normal(size=(128, 8, 8, 4)).astype("float32")
    _track_ranges(qat_model, x, np.random.default_rng(1).integers(0, 4, 128), epochs=2)
    result = tflowrank.export_tflite(qat_model, tmp_path / "grouped.tflite")
    assert inspect_tflite(result.path).is_fully_int8 and result.ops["CONV_2D"] == 3
    steps = _output_steps(qat_model, result.path, x[:64])
    assert steps.max() <= 1.01 and steps.mean() < 0.1


@pytest.mark.slow
def test_conv1d_runs_as_tflite_runs_it_a_conv2d_on_one_row(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64, 3))  # 64 time steps of a 3-axis accelerometer
    x = keras.layers.Conv1D(16, 5, padding="same", use_bias=False, name="first")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="first_bn")(x))
    x = keras.layers.MaxPooling1D(2)(x)
    x = keras.layers.Conv1D(32, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv1D(32, 3, padding="same", groups=2, dilation_rate=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Conv1D(32, 3, padding="same")(x))
    model = keras.Model(inputs, keras.layers.Dense(6, name="head")(x))
    qat_model = tflowrank.quantize_aware(model)
    assert "first_bn" not in [layer.name for layer in qat_model.layers]  # folded
    x = np.random.default_rng(0).normal(size=(128, 64, 3)).astype("float32")
    # no range tracked yet: the float model's outputs, but for the int8 weights
    np.testing.assert_allclose(qat_model.predict(x[:8], verbose=0), model.predict(x[:8], verbose=0),
                               atol=0.01)
    _track_ranges(qat_model, x, np.random.default_rng(1).integers(0, 6, 128), epochs=2)
    result = tflowrank.export_tflite(qat_model, tmp_path / "conv1d.tflite")
    assert inspect_tflite(result.path).is_fully_int8 and result.ops["CONV_2D"] == 4
    steps = _output_steps(qat_model, result.path, x[:64])
    assert steps.max() <= 2.01 and steps.mean() < 0.5  # as for the same model in 2-D (one row)


@pytest.mark.slow
def test_causal_conv1d_pads_on_the_left_as_tflite_does(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((48, 4))  # a streaming model: each output sees the present and the past
    x = keras.layers.Conv1D(16, 3, padding="causal", use_bias=False, name="first")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="first_bn")(x))
    x = keras.layers.Conv1D(16, 3, padding="causal", dilation_rate=2, activation="relu")(x)
    x = keras.layers.Conv1D(16, 3, padding="causal", dilation_rate=4, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, keras.layers.Dense(5, name="head")(x))
    qat_model = tflowrank.quantize_aware(model)
    x = np.random.default_rng(0).normal(size=(128, 48, 4)).astype("float32")
    np.testing.assert_allclose(qat_model.predict(x[:8], verbose=0), model.predict(x[:8], verbose=0),
                               atol=0.01)
    _track_ranges(qat_model, x, np.random.default_rng(1).integers(0, 5, 128), epochs=2)
    result = tflowrank.export_tflite(qat_model, tmp_path / "causal.tflite")
    assert inspect_tflite(result.path).is_fully_int8
    assert result.ops["CONV_2D"] == 3 and result.ops["PAD"] == 3
    steps = _output_steps(qat_model, result.path, x[:64])
    assert steps.max() <= 1.01 and steps.mean() < 0.1  # no strided conv: as the 2-D convs


@pytest.mark.slow
def test_augmentation_layers_act_while_training_and_vanish_from_the_int8_file(tmp_path):
    keras.utils.set_random_seed(0)
    augment = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1),
                                keras.layers.RandomZoom(0.1), keras.layers.GaussianNoise(0.5)], name="augment")
    inputs = keras.Input((8, 8, 3))  # as Keras's image classification guide builds it
    x = keras.layers.Rescaling(1 / 255, name="scale")(augment(inputs))
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.Dropout(0.2)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(x))
    qat_model = tflowrank.quantize_aware(model)
    x = np.random.default_rng(0).random((128, 8, 8, 3), dtype=np.float32) * 255
    assert not np.allclose(qat_model(x[:4], training=True), qat_model(x[:4], training=False))
    _track_ranges(qat_model, x, np.random.default_rng(1).integers(0, 4, 128), epochs=1)
    result = tflowrank.export_tflite(qat_model, tmp_path / "augmented.tflite")
    assert inspect_tflite(result.path).is_fully_int8
    assert set(result.ops) == {"QUANTIZE", "MUL", "CONV_2D", "MEAN", "FULLY_CONNECTED", "DEQUANTIZE"}
    np.testing.assert_allclose(_tflite_logits(result.path, x[:16]), qat_model.predict(x[:16], verbose=0),
                               atol=1e-5)
