"""The factorization family: Tucker-2, CP, Tucker-2 with a separable core, output approximation."""

import re
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tf_conv import tensorflow_conv_is_right

from tflowrank import _shapes, cost, factorize
from tflowrank.layers import CPConv2D, SVDConv2D, TuckerConv2D, TuckerSpatialConv2D


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
def geometry(draw):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    strides = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (1, 1) if strides != (1, 1) else (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.sampled_from(["valid", "same"]))
    reach = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    size = (draw(st.integers(reach[0], reach[0] + 6)), draw(st.integers(reach[1], reach[1] + 6)))
    return dict(kernel_size=(kh, kw), strides=strides, dilation_rate=dilation, padding=padding,
                filters=draw(st.integers(1, 5)), use_bias=draw(st.booleans()),
                activation=draw(st.sampled_from([None, "relu"]))), size


@pytest.mark.parametrize("cls", [TuckerConv2D, TuckerSpatialConv2D])
@settings(max_examples=25, deadline=None)
@given(geometry=geometry(), cin=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_full_rank_reproduces_the_convolution(cls, geometry, cin, seed):
    config, (h, w) = geometry
    rng = np.random.default_rng(seed)
    conv = _conv(rng, cin, **config)
    layer = cls.from_layer(conv, cls.full_rank_of(conv, cin))
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.strides, conv.dilation_rate
    assume(tensorflow_conv_is_right((2, h, w, cin), (kh, kw, cin, 1), (sh, sw), conv.padding,
                                     (dh, dw)))
    if cls is TuckerSpatialConv2D:  # the 1 x kw step, on the kh x 1 step's output
        rows = _shapes.conv_output_size(h, kh, sh, dh, conv.padding)
        r_mid = layer.kernel_horizontal.shape[2]
        assume(tensorflow_conv_is_right((2, rows, w, r_mid), (1, kw, r_mid, 1), (1, sw),
                                         conv.padding, (1, dw)))
    x = rng.normal(size=(2, h, w, cin)).astype("float32")
    _close(np.asarray(layer(x)), np.asarray(conv(x)))
    assert layer.reconstruction_error < 1e-5


@pytest.mark.parametrize("shape, rank", [((3, 3, 8, 8), 4), ((5, 3, 6, 10), 3), ((3, 3, 16, 16), 8)])
def test_cp_reproduces_an_exactly_rank_r_kernel(shape, rank):
    rng = np.random.default_rng(1)
    kh, kw, cin, cout = shape
    parts = [rng.normal(size=(n, rank)) for n in shape]
    kernel = np.einsum("ir,jr,cr,or->ijco", *parts).astype("float32")
    conv = _conv(rng, cin, filters=cout, kernel_size=(kh, kw), padding="same")
    conv.kernel.assign(kernel)
    layer = CPConv2D.from_layer(conv, rank)
    assert layer.reconstruction_error < 1e-4
    x = rng.normal(size=(2, 9, 9, cin)).astype("float32")
    _close(np.asarray(layer(x)), np.asarray(conv(x)), rtol=1e-3)


def test_cp_chain_geometry_with_strides_and_dilation():
    rng = np.random.default_rng(2)
    for config in (dict(strides=(2, 1), padding="same"), dict(dilation_rate=(1, 2), padding="valid")):
        conv = _conv(rng, 4, filters=6, kernel_size=(3, 5), **config)
        layer = CPConv2D.from_layer(conv, 5)
        reference = _conv(rng, 4, filters=6, kernel_size=(3, 5), **config)
        reference.kernel.assign(layer.dense_kernel())
        reference.bias.assign(conv.bias.numpy())
        x = rng.normal(size=(2, 12, 13, 4)).astype("float32")
        _close(np.asarray(layer(x)), np.asarray(reference(x)))


@pytest.mark.parametrize("cls, ranks", [
    (TuckerConv2D, [(2, 2), (4, 4), (6, 6), (8, 8), (8, 12)]),
    (TuckerSpatialConv2D, [(2, 2, 2), (4, 4, 4), (6, 6, 6), (8, 8, 8), (8, 24, 12)]),
    (CPConv2D, [2, 4, 8, 16, 32]),
])
def test_error_non_increasing_and_matches_a_direct_computation(cls, ranks):
    rng = np.random.default_rng(3)
    conv = _conv(rng, 8, filters=12, kernel_size=3)
    kernel = conv.kernel.numpy()
    errors = []
    for rank in ranks:
        layer = cls.from_layer(conv, rank)
        direct = np.linalg.norm(layer.dense_kernel() - kernel) / np.linalg.norm(kernel)
        assert layer.reconstruction_error == pytest.approx(direct, rel=1e-3, abs=1e-6)
        errors.append(layer.reconstruction_error)
    assert all(a >= b - 1e-6 for a, b in zip(errors, errors[1:])), errors


def test_macs_and_params_of_the_chains():
    conv = _conv(np.random.default_rng(0), 16, filters=32, kernel_size=3, padding="same")
    shape = (None, 20, 20, 16)
    assert TuckerConv2D.macs_for(conv, (8, 12), shape) == 400 * (16 * 8 + 9 * 8 * 12 + 12 * 32)
    assert CPConv2D.macs_for(conv, 10, shape) == 400 * 10 * (16 + 3 + 3 + 32)
    assert TuckerSpatialConv2D.macs_for(conv, (8, 6, 12), shape) == 400 * (
        16 * 8 + 3 * 8 * 6 + 3 * 6 * 12 + 12 * 32)
    for cls, rank in ((TuckerConv2D, (8, 12)), (CPConv2D, 10), (TuckerSpatialConv2D, (8, 6, 12))):
        assert cls.from_layer(conv, rank).count_params() == cls.params_for(conv, rank, 16)


def test_tuple_rank_forms():
    assert TuckerConv2D.normalize_rank(8) == (8, 8)
    assert TuckerSpatialConv2D.normalize_rank((8, 12)) == (8, 8, 12)
    with pytest.raises(ValueError, match=re.escape(
            "`rank` of a TuckerConv2D must be a positive int or a tuple of 2 positive ints. "
            "Received: rank=(1, 2, 3)")):
        TuckerConv2D.normalize_rank((1, 2, 3))
    conv = _conv(np.random.default_rng(0), 4, filters=6, kernel_size=3)
    with pytest.raises(ValueError, match=re.escape("must be a tuple of 2 integers, each between 1 and "
                                                   "its full rank (4, 6). Received: rank=(5, 2)")):
        TuckerConv2D.from_layer(conv, (5, 2))
    with pytest.raises(ValueError, match=re.escape("r_mid <= min(kh * r_in, kw * r_out) = 3")):
        TuckerSpatialConv2D.from_layer(conv, (1, 4, 2))


@pytest.mark.slow
def test_new_layers_round_trip_through_a_keras_file(tmp_path):
    rng = np.random.default_rng(4)
    inputs = keras.Input((10, 10, 3))
    x = TuckerConv2D.from_layer(_conv(rng, 3, filters=6, kernel_size=3, padding="same"), (2, 3))(inputs)
    x = CPConv2D.from_layer(_conv(rng, 6, filters=6, kernel_size=3, strides=(2, 1)), 4)(x)
    x = TuckerSpatialConv2D.from_layer(_conv(rng, 6, filters=4, kernel_size=3), (3, 2, 3))(x)
    model = keras.Model(inputs, x)
    path = tmp_path / "m.keras"
    model.save(path)
    data = rng.normal(size=(2, 10, 10, 3)).astype("float32")
    np.save(tmp_path / "x.npy", data)
    np.save(tmp_path / "y.npy", np.asarray(model(data)))
    script = (
        "import numpy as np, keras, tflowrank.layers\n"
        f"m = keras.models.load_model({str(path)!r})\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r}); y = np.load({str(tmp_path / 'y.npy')!r})\n"
        "assert [type(l).__name__ for l in m.layers][1:] == ['TuckerConv2D', 'CPConv2D', "
        "'TuckerSpatialConv2D']\n"
        "assert m.layers[1].rank == (2, 3) and m.layers[3].rank == (3, 2, 3)\n"
        "np.testing.assert_allclose(np.asarray(m(x)), y, rtol=1e-5, atol=1e-5)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# -- rank vocabulary through factorize ----------------------------------------------------------

def _small_model(seed=0):
    rng = np.random.default_rng(seed)
    inputs = keras.Input((16, 16, 8))
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="a")(inputs)
    x = keras.layers.Conv2D(32, 3, padding="same", name="b")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, name="head")(x)
    model = keras.Model(inputs, outputs, name="small")
    for w in model.weights:
        w.assign(rng.normal(scale=0.2, size=w.shape))
    return model


@pytest.fixture(scope="module")
def small():
    return _small_model()


def test_energy_rank_is_the_smallest_rank_keeping_that_share(small):
    new = factorize(small, "svd", rank="energy:0.8", layers=["b"])
    kernel = small.get_layer("b").kernel.numpy().reshape(-1, 32)
    s = np.linalg.svd(kernel, compute_uv=False)
    share = np.cumsum(s**2) / np.sum(s**2)
    assert new.get_layer("b").rank == int(np.argmax(share >= 0.8)) + 1
    tucker = factorize(small, "tucker2", rank="energy:0.8", layers=["b"]).get_layer("b")
    assert isinstance(tucker.rank, tuple) and len(tucker.rank) == 2


def test_vbmf_ranks_are_used(small):
    from tflowrank.decompositions import vbmf_ranks_tucker2

    new = factorize(small, "tucker2", rank="vbmf", layers=["b"])
    expected = vbmf_ranks_tucker2(small.get_layer("b").kernel.numpy())
    assert new.get_layer("b").rank == expected


def test_multiple_of_rounds_up_never_above_full_rank(small):
    new = factorize(small, "svd", rank={"a": 5, "b": 30}, multiple_of=8)
    assert new.get_layer("a").rank == 8
    assert new.get_layer("b").rank == 32  # 30 -> 32, the full rank
    tucker = factorize(small, "tucker2", rank={"b": (5, 9)}, multiple_of=4).get_layer("b")
    assert tucker.rank == (8, 12)


@pytest.mark.parametrize("method", ["spatial", "svd", "tucker2", "cp", "tucker2_spatial"])
@pytest.mark.parametrize("kind, fraction", [("macs", 0.4), ("params", 0.5)])
def test_global_target_lands_within_two_percent(small, method, kind, fraction):
    before = cost(small).macs if kind == "macs" else small.count_params()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new = factorize(small, method, **{f"target_{kind}": fraction})
    after = cost(new).macs if kind == "macs" else new.count_params()
    assert after / before == pytest.approx(fraction, rel=0.02)


def test_unreachable_target_says_what_is_reachable(small):
    with pytest.raises(ValueError, match=r"`target_macs`=0.001 cannot be reached: with the selected "
                                         r"layers at their smallest ranks the model keeps 0\.\d+"):
        factorize(small, "svd", target_macs=0.001)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(rank="energy:1.5"), ValueError, "'energy:<share>' needs a share in (0, 1]. Received: rank='energy:1.5'"),
    (dict(rank="foo"), ValueError, "Received: rank='foo'"),
    (dict(rank=(0, 3)), ValueError, "A tuple `rank` must hold positive int ranks. Received: rank=(0, 3)"),
    (dict(), ValueError, "Give exactly one of `rank`, `target_macs` or `target_params`. Received: none of them"),
    (dict(rank=4, target_macs=0.5), ValueError, "Received: rank=4, target_macs=0.5"),
    (dict(target_macs=1.5), ValueError, "`target_macs` is a fraction of the model's MACs and must be in (0, 1]. Received: target_macs=1.5"),
    (dict(target_params=0), ValueError, "Received: target_params=0"),
    (dict(rank=4, multiple_of=0), ValueError, "`multiple_of` must be a positive integer. Received: multiple_of=0"),
    (dict(rank=4, data=np.zeros((4, 16, 16, 8))), ValueError, "`data` is only used by method='output'"),
])
def test_bad_rank_selection_arguments(small, kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        factorize(small, "tucker2", **kwargs)


def test_output_needs_matching_data(small):
    with pytest.raises(ValueError, match=re.escape("method='output' approximates each layer's responses")):
        factorize(small, "output", rank=4)
    with pytest.raises(ValueError, match=re.escape("Received: data with shape (4, 16, 16, 3)")):
        factorize(small, "output", rank=4, data=np.zeros((4, 16, 16, 3)))


def test_output_at_full_rank_reproduces_the_model(small):
    data = np.random.default_rng(5).normal(size=(64, 16, 16, 8)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new = factorize(small, "output", rank={"a": 32, "b": 32}, data=data)
    assert isinstance(new.get_layer("a"), SVDConv2D)
    x = data[:8]
    _close(np.asarray(new(x)), np.asarray(small(x)), rtol=1e-3)


def test_output_error_is_non_increasing_and_reported(small):
    # 12 images x 256 positions: every response row is used (no sampling)
    data = np.random.default_rng(6).normal(size=(12, 16, 16, 8)).astype("float32")
    errors = [factorize(small, "output", rank={"b": r}, data=data).get_layer("b").reconstruction_error
              for r in (2, 4, 8, 16, 24)]
    assert all(a >= b - 1e-9 for a, b in zip(errors, errors[1:])), errors
    probe = keras.Model(small.inputs[0], small.get_layer("b").output)
    new = factorize(small, "output", rank={"b": 8}, data=data)
    y = np.asarray(probe(data))
    y_new = np.asarray(keras.Model(new.inputs[0], new.get_layer("b").output)(data))
    direct = np.linalg.norm(y - y_new) / np.linalg.norm(y)
    assert new.get_layer("b").reconstruction_error == pytest.approx(direct, rel=1e-3)


def test_output_energy_rank_reads_the_response_spectrum(small):
    data = np.random.default_rng(7).normal(size=(32, 16, 16, 8)).astype("float32")
    new = factorize(small, "output", rank="energy:0.9", layers=["b"], data=data)
    assert 1 <= new.get_layer("b").rank < 32


def test_depthwise_is_never_factorized_and_said_once():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.DepthwiseConv2D(3, name="dw1")(inputs)
    x = keras.layers.DepthwiseConv2D(3, name="dw2")(x)
    x = keras.layers.Conv2D(16, 3, name="c")(x)
    model = keras.Model(inputs, x)
    with pytest.warns(UserWarning) as record:
        factorize(model, "tucker2", rank=2)
    messages = [str(w.message) for w in record if "left" in str(w.message)]
    assert len(messages) == 1 and messages[0].count("depthwise convolutions are never factorized") == 1
    assert "dw1, dw2" in messages[0]


def test_pointwise_convs_are_left_to_svd_unless_named():
    inputs = keras.Input((8, 8, 16))
    x = keras.layers.Conv2D(32, 1, name="pw")(inputs)
    x = keras.layers.Conv2D(32, 3, name="k3")(x)
    model = keras.Model(inputs, x)
    with pytest.warns(UserWarning, match=r"pw: a 1 x 1 convolution has no spatial extent for "
                                         r"method 'tucker2': use method='svd' for it"):
        new = factorize(model, "tucker2", rank=0.3)
    assert type(new.get_layer("pw")) is keras.layers.Conv2D
    assert isinstance(new.get_layer("k3"), TuckerConv2D)
    assert isinstance(factorize(model, "svd", rank=0.3).get_layer("pw"), SVDConv2D)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        named = factorize(model, "tucker2", rank=4, layers=["pw"])
    assert isinstance(named.get_layer("pw"), TuckerConv2D)
