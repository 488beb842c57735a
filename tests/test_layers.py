"""The factorized layers: exact at full rank, the chain they compute, the Keras layer contract."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tf_conv import tensorflow_conv_is_right

from tflowrank import _shapes
from tflowrank.layers import SpatialConv2D, SVDConv2D, SVDDense

CONV_CLASSES = [SpatialConv2D, SVDConv2D]


def _conv(rng, cin, **config):
    layer = keras.layers.Conv2D(**config)
    layer.build((None, None, None, cin))
    for weight in layer.weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32"))
    return layer


def _close(actual, expected, rtol=1e-4):
    scale = float(np.max(np.abs(expected))) or 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


@st.composite
def conv_geometry(draw):
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (1, 1)
    if strides == (1, 1):
        dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = draw(st.sampled_from(["valid", "same"]))
    reach = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    size = (draw(st.integers(reach[0], reach[0] + 8)), draw(st.integers(reach[1], reach[1] + 8)))
    return dict(kernel_size=(kh, kw), strides=strides, dilation_rate=dilation, padding=padding,
                filters=draw(st.integers(1, 6)), use_bias=draw(st.booleans()),
                activation=draw(st.sampled_from([None, "relu", "tanh"]))), size


@pytest.mark.parametrize("cls", CONV_CLASSES)
@settings(max_examples=40, deadline=None)
@given(geometry=conv_geometry(), cin=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_full_rank_reproduces_the_convolution(cls, geometry, cin, seed):
    config, (h, w) = geometry
    (kh, kw), (sh, sw), (dh, dw) = config["kernel_size"], config["strides"], config["dilation_rate"]
    # TensorFlow's own Conv2D is wrong on some one-channel geometries (README, "Known problems"):
    # where it is, for the layer or a step of its chain, the example says nothing of the chain
    assume(tensorflow_conv_is_right((2, h, w, cin), (kh, kw, cin, 1), (sh, sw), config["padding"], (dh, dw)))
    rng = np.random.default_rng(seed)
    conv = _conv(rng, cin, **config)
    factorized = cls.from_layer(conv, cls.full_rank_of(conv, cin))
    if cls is SpatialConv2D:  # the 1 x kw step, on the kh x 1 step's output
        rows = _shapes.conv_output_size(h, kh, sh, dh, config["padding"])
        assume(tensorflow_conv_is_right((2, rows, w, factorized.rank), (1, kw, factorized.rank, 1), (1, sw),
                                        config["padding"], (1, dw)))
    x = rng.normal(size=(2, h, w, cin)).astype("float32")
    expected = np.asarray(conv(x))
    actual = np.asarray(factorized(x))
    assert actual.shape == expected.shape
    _close(actual, expected)
    assert factorized.reconstruction_error == pytest.approx(0.0, abs=1e-5)
    assert factorized.strides == tuple(conv.strides)
    assert factorized.dilation_rate == tuple(conv.dilation_rate)
    assert factorized.padding == conv.padding


@pytest.mark.parametrize("cls", CONV_CLASSES)
def test_low_rank_chain_equals_the_dense_convolution_of_its_kernel(cls):
    rng = np.random.default_rng(3)
    conv = _conv(rng, 6, filters=8, kernel_size=(3, 5), strides=(2, 1), padding="same")
    factorized = cls.from_layer(conv, 3)
    reference = _conv(rng, 6, filters=8, kernel_size=(3, 5), strides=(2, 1), padding="same")
    reference.kernel.assign(factorized.dense_kernel())
    reference.bias.assign(conv.bias.numpy())
    x = rng.normal(size=(2, 11, 9, 6)).astype("float32")
    _close(np.asarray(factorized(x)), np.asarray(reference(x)))
    error = np.linalg.norm(factorized.dense_kernel() - conv.kernel.numpy()) / np.linalg.norm(
        conv.kernel.numpy())
    assert factorized.reconstruction_error == pytest.approx(error, rel=1e-4)
    assert 0 < factorized.reconstruction_error < 1


def test_dense_full_rank_and_low_rank():
    rng = np.random.default_rng(4)
    dense = keras.layers.Dense(7, activation="relu")
    dense.build((None, 12))
    x = rng.normal(size=(3, 5, 12)).astype("float32")  # Dense acts on the last axis
    _close(np.asarray(SVDDense.from_layer(dense, 7)(x)), np.asarray(dense(x)))
    low = SVDDense.from_layer(dense, 2)
    assert low.kernel_in.shape == (12, 2) and low.kernel_out.shape == (2, 7)
    expected = np.maximum(x @ low.dense_kernel() + dense.bias.numpy(), 0)
    _close(np.asarray(low(x)), expected)


def test_error_is_non_increasing_in_rank():
    rng = np.random.default_rng(5)
    conv = _conv(rng, 8, filters=16, kernel_size=3)
    for cls in CONV_CLASSES:
        errors = [cls.from_layer(conv, r).reconstruction_error
                  for r in range(1, cls.full_rank_of(conv, 8) + 1)]
        assert all(a >= b - 1e-9 for a, b in zip(errors, errors[1:]))


def test_from_layer_leaves_the_source_untouched_and_shares_nothing():
    rng = np.random.default_rng(6)
    conv = _conv(rng, 4, filters=4, kernel_size=3)
    before = [w.numpy().copy() for w in conv.weights]
    new = SpatialConv2D.from_layer(conv, 2)
    new.kernel_vertical.assign(np.zeros(new.kernel_vertical.shape))
    new.bias.assign(np.ones(4))
    for old, now in zip(before, conv.weights):
        np.testing.assert_array_equal(old, now.numpy())
    assert new.name == conv.name and new.built


@pytest.mark.parametrize("cls, source", [
    (SpatialConv2D, dict(filters=5, kernel_size=(3, 2), strides=(2, 1), padding="same",
                         activation="relu", use_bias=False)),
    (SVDConv2D, dict(filters=5, kernel_size=3, dilation_rate=(2, 1), activation="tanh")),
])
def test_config_round_trip(cls, source):
    layer = cls.from_layer(_conv(np.random.default_rng(0), 3, **source), 2)
    config = layer.get_config()
    json.dumps(config)  # serialisable
    clone = cls.from_config(config)
    assert clone.get_config() == config
    assert config["rank"] == 2 and config["reconstruction_error"] == layer.reconstruction_error


def test_dense_config_round_trip():
    dense = keras.layers.Dense(4)
    dense.build((None, 6))
    layer = SVDDense.from_layer(dense, 3)
    assert SVDDense.from_config(layer.get_config()).get_config() == layer.get_config()


@pytest.mark.slow
def test_keras_file_round_trip_in_a_fresh_process(tmp_path):
    rng = np.random.default_rng(7)
    inputs = keras.Input((10, 10, 3))
    x = SpatialConv2D.from_layer(_conv(rng, 3, filters=6, kernel_size=3, padding="same"), 2)(inputs)
    x = SVDConv2D.from_layer(_conv(rng, 6, filters=4, kernel_size=3, strides=2), 3)(x)
    x = keras.layers.Flatten()(x)
    dense = keras.layers.Dense(5)
    dense.build((None, 64))
    outputs = SVDDense.from_layer(dense, 2)(x)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "model.keras"
    model.save(path)
    data = rng.normal(size=(2, 10, 10, 3)).astype("float32")
    np.save(tmp_path / "x.npy", data)
    np.save(tmp_path / "y.npy", np.asarray(model(data)))
    script = (
        "import numpy as np, keras, tflowrank.layers, sys\n"
        f"m = keras.models.load_model({str(path)!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r}); y = np.load({str(tmp_path / 'y.npy')!r})\n"
        "assert [type(l).__name__ for l in m.layers][1:3] == ['SpatialConv2D', 'SVDConv2D']\n"
        "np.testing.assert_allclose(np.asarray(m(x)), y, rtol=1e-5, atol=1e-5)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.parametrize("kwargs, message", [
    (dict(filters=0), r"`filters` must be a positive integer. Received: filters=0"),
    (dict(rank=0), r"`rank` must be a positive integer. Received: rank=0"),
    (dict(kernel_size=(3, 0)), r"`kernel_size` must be a positive int or a tuple of 2 positive ints. Received: kernel_size=\(3, 0\)"),
    (dict(padding="causal"), r"`padding` must be 'valid' or 'same'. Received: padding='causal'"),
    (dict(strides=2, dilation_rate=2), r"strides=\(2, 2\), dilation_rate=\(2, 2\)"),
])
def test_bad_constructor_arguments(kwargs, message):
    config = dict(filters=4, kernel_size=3, rank=2) | kwargs
    with pytest.raises(ValueError, match=message):
        SpatialConv2D(**config)


def test_rank_above_full_rank_fails_at_build():
    layer = SpatialConv2D(filters=4, kernel_size=3, rank=10)  # full rank min(3*2, 3*4) = 6
    with pytest.raises(ValueError, match=r"full rank 6. Received: rank=10"):
        layer.build((None, 8, 8, 2))


@pytest.mark.parametrize("rank", [0, -2, 7])
def test_from_layer_rejects_bad_ranks(rank):
    conv = _conv(np.random.default_rng(0), 2, filters=4, kernel_size=3)
    with pytest.raises(ValueError, match=rf"full rank 6. Received: rank={rank}"):
        SpatialConv2D.from_layer(conv, rank)


def test_from_layer_rejects_unsupported_layers():
    grouped = keras.layers.Conv2D(4, 3, groups=2)
    grouped.build((None, 8, 8, 4))
    with pytest.raises(ValueError, match="groups=2 is not supported"):
        SVDConv2D.from_layer(grouped, 2)
    depthwise = keras.layers.DepthwiseConv2D(3)
    depthwise.build((None, 8, 8, 4))
    with pytest.raises(ValueError, match="depthwise convolutions are never factorized"):
        SpatialConv2D.from_layer(depthwise, 2)
    with pytest.raises(ValueError, match="not built"):
        SpatialConv2D.from_layer(keras.layers.Conv2D(4, 3), 2)
    with pytest.raises(ValueError, match="Conv2D is not a Dense layer"):
        SVDDense.from_layer(_conv(np.random.default_rng(0), 2, filters=4, kernel_size=3), 2)


def test_macs_of_the_chain():
    conv = _conv(np.random.default_rng(0), 16, filters=32, kernel_size=3, padding="same")
    shape = (None, 28, 28, 16)
    spatial = SpatialConv2D.from_layer(conv, 8)
    assert spatial.macs(shape) == 28 * 28 * (3 * 16 * 8 + 3 * 8 * 32)
    assert spatial.dense_macs(shape) == 28 * 28 * 9 * 16 * 32
    svd = SVDConv2D.from_layer(conv, 8)
    assert svd.macs(shape) == 28 * 28 * (9 * 16 * 8 + 8 * 32)
    strided = _conv(np.random.default_rng(0), 16, filters=32, kernel_size=3, strides=(2, 2),
                    padding="valid")
    # the vertical step runs over the full input width (27), the horizontal one on the output
    assert SpatialConv2D.from_layer(strided, 4).macs((None, 27, 27, 16)) == (
        13 * 27 * 3 * 16 * 4 + 13 * 13 * 3 * 4 * 32)
