"""factorize: model rewrite, rank vocabulary, selection, and each bad input's exact error."""

import re
import warnings

import keras
import numpy as np
import pytest

from tflowrank import cost, factorize, graph
from tflowrank.layers import SpatialConv2D, SVDConv2D, SVDDense


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if "moving_variance" in weight.path:
            weight.assign(rng.uniform(0.5, 1.5, size=weight.shape))
        else:
            weight.assign(rng.normal(scale=0.3, size=weight.shape))
    return model


def residual_model():
    """Residual Functional model with a nested Sequential, a Concatenate and a Dense head."""
    inner = keras.Sequential(
        [keras.Input((8, 8, 16)),
         keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="inner_conv"),
         keras.layers.DepthwiseConv2D(3, padding="same", name="inner_dw")],
        name="inner",
    )
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(16, 3, strides=(2, 1), padding="same", name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.MaxPooling2D((1, 2), name="pool")(x)
    y = inner(x)
    x = keras.layers.Add(name="add")([x, y])
    a = keras.layers.Conv2D(12, (3, 5), padding="valid", use_bias=False, name="branch_a")(x)
    b = keras.layers.Conv2D(12, (3, 5), dilation_rate=(1, 1), padding="valid", name="branch_b")(x)
    x = keras.layers.Concatenate(name="concat")([a, b])
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(10, name="head")(x)
    return _randomize(keras.Model(inputs, outputs, name="residual"))


@pytest.fixture(scope="module")
def model():
    return residual_model()


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(1).normal(size=(4, 16, 16, 3)).astype("float32")


def _full_ranks(model, cls_by_layer):
    calls = {c.layer.name: c for c in graph.layer_calls(model)}
    return {name: cls.full_rank_of(calls[name].layer, calls[name].input_shape[-1])
            for name, cls in cls_by_layer.items()}


def _snapshot(model):
    return [w.numpy().copy() for w in model.weights], [id(layer) for layer in model._flatten_layers()]


@pytest.mark.parametrize("method, classes", [
    ("spatial", {"stem": SpatialConv2D, "inner_conv": SpatialConv2D, "branch_a": SpatialConv2D,
                 "branch_b": SpatialConv2D}),
    ("svd", {"stem": SVDConv2D, "inner_conv": SVDConv2D, "branch_a": SVDConv2D,
             "branch_b": SVDConv2D, "head": SVDDense}),
])
def test_full_rank_reproduces_the_model_and_leaves_it_untouched(model, batch, method, classes):
    weights_before, layers_before = _snapshot(model)
    expected = np.asarray(model(batch))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # full rank costs more MACs: warned, done as asked
        new = factorize(model, method, rank=_full_ranks(model, classes))
    np.testing.assert_allclose(np.asarray(new(batch)), expected, rtol=1e-4, atol=1e-4)
    found = {c.layer.name: type(c.layer) for c in graph.layer_calls(new)}
    assert {name: found[name] for name in classes} == classes
    assert found["inner_dw"] is keras.layers.DepthwiseConv2D
    weights_after, layers_after = _snapshot(model)
    assert layers_after == layers_before
    for a, b in zip(weights_before, weights_after):
        np.testing.assert_array_equal(a, b)
    assert not {id(layer) for layer in new._flatten_layers()} & set(layers_before)
    assert isinstance(new.get_layer("inner"), keras.Sequential)  # nesting kept


def test_an_adapted_normalization_is_copied_with_its_statistics():
    x = np.random.default_rng(0).random((32, 8, 8, 3)).astype("float32") * [255, 30, 1]
    inputs = keras.Input((8, 8, 3))
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(x)  # its mean and variance live in weights that only finalize_state reads
    hidden = keras.layers.Conv2D(8, 3, name="conv")(norm(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(keras.layers.Flatten()(hidden)))
    new = factorize(model, "svd", rank=2, layers=["head"])
    normalized = keras.Model(new.inputs, new.get_layer("norm").output)(x)
    np.testing.assert_allclose(np.asarray(normalized), np.asarray(norm(x)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(new.get_layer("conv")(normalized)),
                               np.asarray(model.get_layer("conv")(norm(x))), atol=1e-4)


def test_training_the_factorized_copy_does_not_touch_the_original(model, batch):
    weights_before, _ = _snapshot(model)
    new = factorize(model, "svd", rank=0.5)
    new.compile(optimizer="sgd", loss="mse")
    new.fit(batch, np.zeros((4, 10)), epochs=1, verbose=0)
    for a, b in zip(weights_before, _snapshot(model)[0]):
        np.testing.assert_array_equal(a, b)


def test_stride_and_geometry_are_carried_over(model):
    new = factorize(model, "spatial", rank=2, layers=["stem", "branch_a"])
    stem = new.get_layer("stem")
    assert isinstance(stem, SpatialConv2D) and stem.strides == (2, 1) and stem.padding == "same"
    branch = new.get_layer("branch_a")
    assert branch.kernel_size == (3, 5) and not branch.use_bias and branch.padding == "valid"
    assert isinstance(new.get_layer("branch_b"), keras.layers.Conv2D)  # not selected


def test_fraction_of_macs_picks_the_largest_rank_within_budget(model):
    new = factorize(model, "svd", rank=0.3)
    for row in cost(new).layers:
        if row.rank is None:
            continue
        assert row.macs <= 0.3 * row.dense_macs
        layer = [c for c in graph.layer_calls(new) if c.path == row.name][0]
        bigger = type(layer.layer).macs_for(layer.layer, row.rank + 1, layer.input_shape)
        assert row.rank == row.full_rank or bigger > 0.3 * row.dense_macs


def test_implicit_selection_skips_what_saves_nothing_and_says_so_once(model):
    with pytest.warns(UserWarning) as record:
        new = factorize(model, "spatial", rank=0.5)
    messages = [str(w.message) for w in record if "tflowrank.factorize" in str(w.message)]
    assert len(messages) == 1
    assert "inner/inner_dw: depthwise convolutions are never factorized" in messages[0]
    kinds = {c.layer.name: type(c.layer).__name__ for c in graph.layer_calls(new)}
    assert kinds["head"] == "Dense"  # spatial has nothing for Dense, and does not warn about it
    assert kinds["stem"] == "SpatialConv2D"


def test_dict_and_callable_ranks(model):
    new = factorize(model, "svd", rank={"branch_a": 3, "head": 0.5})
    assert new.get_layer("branch_a").rank == 3
    assert isinstance(new.get_layer("head"), SVDDense)
    assert isinstance(new.get_layer("stem"), keras.layers.Conv2D)
    chosen = factorize(model, "svd", rank=lambda layer: 4 if layer.name == "branch_b" else None)
    assert chosen.get_layer("branch_b").rank == 4
    assert isinstance(chosen.get_layer("branch_a"), keras.layers.Conv2D)


def test_layers_by_name_and_predicate(model):
    new = factorize(model, "svd", rank=2, layers="head")
    assert isinstance(new.get_layer("head"), SVDDense)
    new = factorize(model, "svd", rank=2, layers=lambda layer: layer.name.startswith("branch"))
    assert {type(new.get_layer(n)) for n in ("branch_a", "branch_b")} == {SVDConv2D}


def test_sequential_model_factorizes():
    model = _randomize(keras.Sequential([
        keras.Input((12, 12, 4)),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(6),
    ]))
    x = np.random.default_rng(0).normal(size=(2, 12, 12, 4)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new = factorize(model, "svd", rank=lambda layer: SVDConv2D.full_rank_of(layer, 4)
                        if isinstance(layer, keras.layers.Conv2D) else 6)
    assert isinstance(new, keras.Sequential)
    np.testing.assert_allclose(np.asarray(new(x)), np.asarray(model(x)), rtol=1e-4, atol=1e-4)


def test_compiled_model_stays_compiled():
    model = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.Conv2D(16, 3),
                              keras.layers.Flatten(), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
    assert factorize(model, "svd", rank=0.5).compiled


# -- bad input: each gets its own exact error ---------------------------------------------------

def test_unknown_method(model):
    with pytest.raises(ValueError, match=re.escape(
            "Unknown factorization method. Expected one of 'spatial', 'svd', 'tucker2', 'cp', 'tucker2_spatial', 'output'. Received: method='tucker'")):
        factorize(model, "tucker", rank=2)


@pytest.mark.parametrize("rank, error, message", [
    (0, ValueError, "`rank` must be a positive rank. Received: rank=0"),
    (-3, ValueError, "`rank` must be a positive rank. Received: rank=-3"),
    (1.5, ValueError, "must be in (0, 1]. Received: rank=1.5"),
    (0.0, ValueError, "must be in (0, 1]. Received: rank=0.0"),
    ("big", ValueError, "Received: rank='big'"),
    (True, TypeError, "Received: rank=True"),
    ({}, ValueError, "`rank` is an empty dict"),
    ({"head": 0}, ValueError, "`rank['head']` must be a positive rank. Received: rank['head']=0"),
])
def test_bad_rank(model, rank, error, message):
    with pytest.raises(error, match=re.escape(message)):
        factorize(model, "svd", rank=rank)


def test_rank_above_full_rank_of_a_named_layer(model):
    with pytest.raises(ValueError, match=re.escape(
            "`rank` for layer 'branch_a' must be between 1 and its full rank 12 (SVDConv2D). "
            "Received: rank=13")):
        factorize(model, "svd", rank=13, layers=["branch_a"])


def test_callable_returning_a_bad_rank(model):
    with pytest.raises(ValueError, match=re.escape("Received: rank('stem')=-1")):
        factorize(model, "svd", rank=lambda layer: -1)


def test_layer_name_not_in_the_model_lists_the_eligible_names(model):
    with pytest.raises(ValueError, match=re.escape(
            "Layer name(s) 'nope' not found in the model. Eligible layers: 'stem', 'inner_conv', "
            "'branch_a', 'branch_b', 'head'. Received: layers=['nope']")):
        factorize(model, "svd", rank=2, layers=["nope"])


def test_dict_without_rank_for_a_selected_layer(model):
    with pytest.raises(ValueError, match=re.escape("no entry for selected layer(s) 'branch_b'")):
        factorize(model, "svd", rank={"branch_a": 2}, layers=["branch_a", "branch_b"])


def test_bad_layers_argument(model):
    with pytest.raises(TypeError, match=re.escape("Received: layers=3")):
        factorize(model, "svd", rank=2, layers=3)


def test_named_unsupported_layer_is_rejected(model):
    with pytest.raises(ValueError, match=re.escape(
            "Layer 'inner_dw' cannot be factorized with method='svd': depthwise convolutions are "
            "never factorized")):
        factorize(model, "svd", rank=2, layers=["inner_dw"])
    with pytest.raises(ValueError, match=re.escape(
            "Layer 'head' cannot be factorized with method='spatial': method 'spatial' has no "
            "factorization for Dense")):
        factorize(model, "spatial", rank=2, layers=["head"])


def test_groups_and_channels_first_are_skipped_implicitly_and_rejected_explicitly():
    inputs = keras.Input((8, 8, 8))
    x = keras.layers.Conv2D(8, 3, groups=2, name="grouped")(inputs)
    x = keras.layers.Conv2D(8, 3, name="plain")(x)
    y = keras.layers.Conv2D(4, 3, data_format="channels_first", name="cfirst")(x)
    model = keras.Model(inputs, [x, y])
    with pytest.warns(UserWarning, match=r"grouped: groups=2 is not supported.*cfirst: "
                                         r"data_format='channels_first' is not supported"):
        new = factorize(model, "svd", rank=2)
    assert isinstance(new.get_layer("plain"), SVDConv2D)
    with pytest.raises(ValueError, match="Layer 'grouped' cannot be factorized with method='svd': "
                                         "groups=2 is not supported"):
        factorize(model, "svd", rank=2, layers=["grouped"])
    with pytest.raises(ValueError, match="data_format='channels_first' is not supported"):
        factorize(model, "svd", rank=2, layers=["cfirst"])


def test_subclassed_model_is_rejected_with_what_to_do():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3)

        def call(self, x):
            return self.conv(x)

    net = Net()
    net(np.zeros((1, 8, 8, 3), "float32"))
    with pytest.raises(ValueError, match=r"`model` is a subclassed keras.Model \(Net\).*"
                                         r"Functional API.*from_layer\(layer, rank\)"):
        factorize(net, "svd", rank=2)


def test_shared_layer_is_rejected_with_what_to_do():
    inputs = keras.Input((8, 8, 4))
    shared = keras.layers.Conv2D(4, 3, padding="same", name="shared")
    x = shared(shared(inputs))
    model = keras.Model(inputs, keras.layers.Conv2D(8, 3, name="other")(x))
    with pytest.raises(ValueError, match=r"Layer 'shared' is called 2 times in model .*Leave it "
                                         r"out with layers=\[...\]"):
        factorize(model, "svd", rank=2)
    assert isinstance(factorize(model, "svd", rank=2, layers=["other"]).get_layer("other"),
                      SVDConv2D)


def test_not_a_model_and_unbuilt_model():
    with pytest.raises(TypeError, match="`model` must be a keras.Model .* Received: model of type str"):
        factorize("model.keras", "svd", rank=2)
    with pytest.raises(ValueError, match="is not built"):
        factorize(keras.Sequential([keras.layers.Dense(3)]), "svd", rank=1)


def test_nothing_to_factorize():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="No layer of model .* was factorized with method='spatial'"):
        factorize(model, "spatial", rank=1)
