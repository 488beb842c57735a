"""tf_keras interop: the plain steps compute what each layer computes; tfmot quantizes the result.

The Keras 3 part runs in this process: the steps of every layer, rebuilt as plain Keras 3 layers
by the same builder that makes the tf_keras model, give the layer's outputs. The tf_keras + tfmot
part runs in a child process started with ``TF_USE_LEGACY_KERAS=1``, as a user of tfmot would.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tflowrank import interop
from tflowrank.layers import CPConv2D, SpatialConv2D, SVDConv2D, SVDDense, TuckerConv2D, TuckerSpatialConv2D

CONV_CLASSES = [SpatialConv2D, SVDConv2D, TuckerConv2D, TuckerSpatialConv2D, CPConv2D]
RANKS = {SpatialConv2D: 3, SVDConv2D: 3, TuckerConv2D: (3, 2), TuckerSpatialConv2D: (3, 4, 2),
         CPConv2D: 5}
# (kernel_size, strides, dilation_rate): stride 1, equal and unequal strides, each dilation axis
GEOMETRIES = [((3, 3), (1, 1), (1, 1)), ((3, 5), (2, 2), (1, 1)), ((5, 3), (2, 1), (1, 1)),
              ((3, 3), (1, 3), (1, 1)), ((3, 2), (1, 1), (2, 1)), ((2, 3), (1, 1), (1, 3))]


def _random_layer(cls, rank, seed=0, **config):
    layer = cls(rank=rank, activation="relu", **config)
    layer.build((None, None, None, 4) if cls is not SVDDense else (None, 6))
    rng = np.random.default_rng(seed)
    for weight in layer.trainable_weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32"))
    return layer


def _single_layer_model(layer, shape):
    inputs = keras.Input(shape)
    return keras.Model(inputs, layer(inputs))


def _plain_keras(model):
    """``model`` rebuilt from its portable description with plain Keras 3 layers."""
    architecture, arrays = interop._describe(model)
    return interop._build(json.loads(json.dumps(architecture)), arrays, keras)


def _close(actual, expected, tolerance=1e-5):
    scale = float(np.max(np.abs(expected))) or 1.0
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance * scale)


@pytest.mark.parametrize("cls", CONV_CLASSES)
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_steps_compute_what_the_layer_computes(cls, padding):
    for index, (kernel_size, strides, dilation) in enumerate(GEOMETRIES):
        layer = _random_layer(cls, RANKS[cls], seed=index, filters=5, kernel_size=kernel_size,
                              strides=strides, dilation_rate=dilation, padding=padding)
        for shape in ((11, 9, 4), (10, 12, 4)):  # odd and even sizes: "same" pads differ
            model = _single_layer_model(layer, shape)
            x = np.random.default_rng(index).normal(size=(2, *shape)).astype("float32")
            plain = _plain_keras(model)
            assert not any(type(lay).__module__.startswith("tflowrank") for lay in plain.layers)
            _close(np.asarray(plain(x)), np.asarray(model(x)))


def test_cp_steps_pad_and_slice_only_where_call_does():
    def kinds(strides, padding):
        layer = _random_layer(CPConv2D, 3, filters=5, kernel_size=3, strides=strides,
                              padding=padding)
        return [step.kind for step in layer.steps((None, 11, 9, 4))]

    assert kinds((1, 1), "same") == ["conv", "depthwise", "depthwise", "conv"]
    assert kinds((2, 2), "valid") == ["conv", "depthwise", "depthwise", "conv"]
    assert kinds((2, 2), "same") == ["conv", "pad", "depthwise", "depthwise", "conv"]
    assert kinds((2, 1), "same") == ["conv", "pad", "depthwise", "depthwise", "slice", "conv"]


def test_dense_steps_and_activation_on_the_last_step_only():
    layer = _random_layer(SVDDense, 3, units=7)
    steps = layer.steps()
    assert [(s.kind, s.kernel.shape) for s in steps] == [("dense", (6, 3)), ("dense", (3, 7))]
    assert steps[0].bias is None and steps[0].activation is None
    assert steps[1].activation == "relu" and steps[1].bias.shape == (7,)
    for shape in ((6,), (5, 6)):  # Dense acts on the last axis, like the layer
        model = _single_layer_model(layer, shape)
        x = np.random.default_rng(1).normal(size=(3, *shape)).astype("float32")
        _close(np.asarray(_plain_keras(model)(x)), np.asarray(model(x)))


@pytest.mark.parametrize("cls", CONV_CLASSES)
def test_steps_follow_the_active_rank(cls):
    layer = _random_layer(cls, RANKS[cls], filters=5, kernel_size=3, strides=(2, 1), padding="same")
    lower = tuple(max(1, r - 1) for r in np.atleast_1d(RANKS[cls]))
    layer.set_active_rank(lower if isinstance(RANKS[cls], tuple) else lower[0])
    model = _single_layer_model(layer, (9, 9, 4))
    steps = layer.steps((None, 9, 9, 4))
    first = next(s for s in steps if s.kernel is not None)
    assert first.kernel.shape[-1] == lower[0]  # the factors are cut to the active rank
    x = np.random.default_rng(0).normal(size=(2, 9, 9, 4)).astype("float32")
    _close(np.asarray(_plain_keras(model)(x)), np.asarray(model(x)))


def _inputs(count, seed=3):
    return np.random.default_rng(seed).normal(size=(count, 12, 12, 3)).astype("float32")


def _mixed_model(seed=0):
    """A small factorized model with every layer kind the test of tfmot needs (no Keras 3 only)."""
    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)  # the Keras initializers too: the same model every run
    inputs = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    block = keras.Sequential([keras.Input((12, 12, 8)),
                              keras.layers.Conv2D(8, 3, padding="same", name="inner")], name="block")
    x = keras.layers.Add(name="add")([x, block(x)])
    a = keras.layers.Conv2D(6, 3, strides=(2, 1), padding="same", name="cp_slice")(x)
    a = keras.layers.MaxPooling2D((1, 2), name="pool_a")(a)
    b = keras.layers.Conv2D(6, 3, strides=2, padding="same", name="cp_pad")(x)
    x = keras.layers.Concatenate(name="concat")([a, b])
    x = keras.layers.Conv2D(8, (3, 3), padding="valid", name="spatial")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="tucker")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    x = keras.layers.Dense(12, activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(4, name="logits")(x)
    model = keras.Model(inputs, outputs, name="mixed")
    for weight in model.trainable_weights:  # glorot kernels keep activations within tfmot's
        if len(weight.shape) == 1:           # initial ranges (-6, 6); random biases, gamma, beta
            weight.assign(rng.normal(scale=0.2, size=weight.shape).astype("float32")
                          + (1.0 if "gamma" in weight.path else 0.0))
    # moving statistics of the data, as training leaves them: QAT folds them into the stem
    stem = keras.Model(inputs, model.get_layer("stem").output)(_inputs(64)).numpy()
    bn = model.get_layer("bn")
    bn.moving_mean.assign(stem.mean(axis=(0, 1, 2)))
    bn.moving_variance.assign(stem.var(axis=(0, 1, 2)))
    replace = {"inner": (SVDConv2D, 4), "cp_slice": (CPConv2D, 6), "cp_pad": (CPConv2D, 6),
               "spatial": (SpatialConv2D, 5), "tucker": (TuckerSpatialConv2D, (4, 4, 4)),
               "hidden": (SVDDense, 3)}
    from tflowrank.graph import layer_calls, rewrite

    layers = {call.layer.name: call.layer for call in layer_calls(model)}
    return rewrite(model, {id(layers[name]): cls.from_layer(layers[name], rank)
                           for name, (cls, rank) in replace.items()})


def test_portable_file_round_trip_with_keras_3(tmp_path):
    model = _mixed_model()
    path = interop.save_portable(model, tmp_path / "mixed")
    assert path == tmp_path / "mixed.npz" and path.is_file()
    architecture, arrays = interop._read(path)
    classes = {spec["class"] for spec in architecture["layers"].values()}
    assert classes == {"Conv2D", "DepthwiseConv2D", "BatchNormalization", "ReLU", "Add",
                       "ZeroPadding2D", "MaxPooling2D", "Concatenate", "GlobalAveragePooling2D",
                       "Dropout", "Dense"}
    assert "block" not in architecture["layers"]  # the nested model is flattened
    plain = interop._build(architecture, arrays, keras)
    x = np.random.default_rng(2).normal(size=(4, 12, 12, 3)).astype("float32")
    _close(np.asarray(plain(x)), np.asarray(model(x)))


def test_unsupported_layers_and_bad_files_get_clear_errors(tmp_path):
    inputs = keras.Input((5, 3))
    model = keras.Model(inputs, keras.layers.LSTM(2, name="lstm")(inputs))
    with pytest.raises(ValueError, match="Layer 'lstm' of type LSTM has no tf_keras counterpart"):
        interop.save_portable(model, tmp_path / "lstm.npz")
    assert not (tmp_path / "lstm.npz").exists()
    with pytest.raises(ValueError, match="The folder of `path` does not exist"):
        interop.save_portable(_mixed_model(), tmp_path / "missing" / "m.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="not a tflowrank portable file"):
        interop._read(tmp_path / "other.npz")
    cp = _random_layer(CPConv2D, 3, filters=5, kernel_size=3, strides=2, padding="same")
    with pytest.raises(ValueError, match="`input_shape` must give them. Received: input_shape=None"):
        cp.steps()


_CHILD = textwrap.dedent("""
    import os, sys
    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"
    import numpy as np
    import tensorflow as tf
    import tf_keras
    from tflowrank.interop import load_tf_keras

    folder = sys.argv[1]
    x, expected = np.load(folder + "/x.npy"), np.load(folder + "/expected.npy")
    model = load_tf_keras(folder + "/model.npz")
    assert "tflowrank.layers" not in sys.modules  # the tf_keras side never loads Keras 3 layers
    assert isinstance(model, tf_keras.Model)
    np.testing.assert_allclose(model(x).numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())

    import tensorflow_model_optimization as tfmot
    tf_keras.utils.set_random_seed(0)  # a fixed run: tfmot's range warm-up depends on the order
    tf.config.experimental.enable_op_determinism()
    qat = tfmot.quantization.keras.quantize_model(model)
    qat.compile(optimizer=tf_keras.optimizers.Adam(1e-4),
                loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    labels = expected.argmax(axis=1)
    history = qat.fit(x, labels, batch_size=16, epochs=2, verbose=0, shuffle=False)
    assert np.all(np.isfinite(history.history["loss"]))

    converter = tf.lite.TFLiteConverter.from_keras_model(qat)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[i:i + 1]] for i in range(len(x)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    flatbuffer = converter.convert()

    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    dtypes = {d["dtype"] for d in interpreter.get_tensor_details()}
    assert dtypes <= {np.int8, np.int32}, dtypes  # nothing left in float
    ops = sorted({op["op_name"] for op in interpreter._get_ops_details()})
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    outputs = []
    for sample in x:
        scale, zero = inp["quantization"]
        interpreter.set_tensor(inp["index"], np.clip(np.round(sample[None] / scale + zero), -128, 127).astype(np.int8))
        interpreter.invoke()
        scale, zero = out["quantization"]
        outputs.append((interpreter.get_tensor(out["index"]).astype(np.float32) - zero) * scale)
    outputs = np.concatenate(outputs)
    simulated = qat.predict(x, verbose=0)
    print("OPS", ops)
    print("ERROR_VS_QAT", np.abs(outputs - simulated).max() / out["quantization"][0])  # in output steps
    print("ERROR_VS_FLOAT", np.sqrt(np.mean((outputs - expected) ** 2) / np.mean(expected ** 2)))
    print("AGREEMENT", float(np.mean(outputs.argmax(1) == expected.argmax(1))))
""")


def _tfmot_child(model, x, folder):
    """Run ``_CHILD`` on ``model`` (portable file, inputs and outputs written to ``folder``) in a
    ``TF_USE_LEGACY_KERAS=1`` process: the figures it prints, by name."""
    for module in ("tf_keras", "tensorflow_model_optimization"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install 'tflowrank[tfmot]')")
    interop.save_portable(model, folder / "model.npz")
    np.save(folder / "x.npy", x)
    np.save(folder / "expected.npy", np.asarray(model(x)))
    environment = dict(os.environ, TF_USE_LEGACY_KERAS="1")
    result = subprocess.run([sys.executable, "-c", _CHILD, str(folder)], capture_output=True,
                            text=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return dict(line.split(" ", 1) for line in result.stdout.splitlines()
                if line.split(" ", 1)[0] in ("OPS", "ERROR_VS_QAT", "ERROR_VS_FLOAT", "AGREEMENT"))


@pytest.mark.slow
def test_tfmot_quantizes_the_expanded_model_to_int8_tflite(tmp_path):
    report = _tfmot_child(_mixed_model(), _inputs(32), tmp_path)
    ops = report["OPS"]
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "PAD", "MAX_POOL_2D", "ADD",
               "CONCATENATION"):
        assert f"'{op}'" in ops, ops
    assert float(report["ERROR_VS_QAT"]) <= 2.01, report  # int8 TFLite against its fake-quant model
    # and against the float Keras 3 model (RMS, relative): a few QAT steps keep it close
    assert float(report["ERROR_VS_FLOAT"]) < 0.15, report
    # (top-1 agreement is reported but not asserted: the random test model's logits are near
    # ties, so it moves with tfmot's unseeded range warm-up; the RMS error above is the measure)


@pytest.mark.slow
def test_tfmot_quantizes_a_1d_model_of_factorized_chains(tmp_path):
    # every Conv1D factorized (tfmot 0.8 has no quantization config for a whole Conv1D): the
    # chains are Conv2D / DepthwiseConv2D steps over one row between two reshapes, which it takes
    import tflowrank

    keras.utils.set_random_seed(0)
    inputs = keras.Input((40, 3))
    h = keras.layers.Conv1D(16, 1, name="stem")(inputs)
    h = keras.layers.Conv1D(16, 5, padding="same", activation="relu", name="same")(h)
    h = keras.layers.Conv1D(16, 3, padding="causal", dilation_rate=2, activation="relu", name="causal")(h)
    h = keras.layers.Conv1D(16, 3, strides=2, activation="relu", name="strided")(h)
    h = keras.layers.Conv1D(16, 3, padding="same", activation="relu", name="last")(h)
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(keras.layers.GlobalAveragePooling1D()(h)))
    rng = np.random.default_rng(0)
    for weight in model.trainable_weights:  # random biases: outputs of a size int8 can resolve
        if len(weight.shape) == 1:
            weight.assign(rng.normal(scale=0.3, size=weight.shape).astype("float32"))
    low = tflowrank.factorize(model, "tucker2", {"same": (6, 6)})
    low = tflowrank.factorize(low, "cp", {"causal": 6, "last": 5})
    low = tflowrank.factorize(low, "svd", {"strided": 5, "stem": 2})
    assert [type(low.get_layer(n)).__name__ for n in ("stem", "same", "causal", "strided", "last")] \
        == ["SVDConv1D", "TuckerConv1D", "CPConv1D", "SVDConv1D", "CPConv1D"]
    report = _tfmot_child(low, rng.normal(size=(32, 40, 3)).astype("float32"), tmp_path)
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "RESHAPE", "PAD", "MEAN", "FULLY_CONNECTED"):
        assert f"'{op}'" in report["OPS"], report
    assert float(report["ERROR_VS_QAT"]) <= 2.01, report
    assert float(report["ERROR_VS_FLOAT"]) < 0.15, report
