"""Least-squares refit of factorized layers' last factors (``tflowrank.refit``)."""

import keras
import numpy as np
import pytest

from tflowrank import factorize
from tflowrank.decompositions import NormalEquations
from tflowrank.refit import refit_last_factors


def test_normal_equations_solve_recovers_a_linear_map_with_bias():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(6, 3)), rng.normal(size=3)
    equations = NormalEquations(6, 3, bias=True)
    for _ in range(3):  # accumulated in batches
        p = rng.normal(size=(50, 6))
        equations.add(p, p @ w + b)
    found, found_bias = equations.solve(ridge=0.0)
    np.testing.assert_allclose(found, w, atol=1e-8)
    np.testing.assert_allclose(found_bias, b, atol=1e-8)
    assert equations.error(w, b) < 1e-8
    assert equations.error(np.zeros_like(w), np.zeros(3)) == pytest.approx(1.0)


def test_normal_equations_least_squares_error_is_the_residual():
    rng = np.random.default_rng(1)
    p, y = rng.normal(size=(40, 4)), rng.normal(size=(40, 2))
    equations = NormalEquations(4, 2).add(p, y)
    w, bias = equations.solve(ridge=0.0)
    assert bias is None
    np.testing.assert_allclose(w, np.linalg.lstsq(p, y, rcond=None)[0], atol=1e-10)
    expected = np.linalg.norm(y - p @ w) / np.linalg.norm(y)
    assert equations.error(w) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("kwargs, message", [
    ({"inputs": 0, "outputs": 2}, "`inputs` must be an integer >= 1. Received: inputs=0"),
    ({"inputs": 2, "outputs": True}, "`outputs` must be an integer >= 1. Received: outputs=True"),
])
def test_normal_equations_reject_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NormalEquations(**kwargs)


def test_normal_equations_reject_bad_ridge_and_empty_and_mismatched_rows():
    equations = NormalEquations(2, 1)
    with pytest.raises(ValueError, match="No rows were added"):
        equations.solve()
    with pytest.raises(ValueError, match="as many rows. Received: 3 and 2 rows"):
        equations.add(np.zeros((3, 2)), np.zeros((2, 1)))
    equations.add(np.ones((3, 2)), np.ones((3, 1)))
    with pytest.raises(ValueError, match="`ridge` must be a number >= 0. Received: ridge=-1"):
        equations.solve(ridge=-1)


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="a")(inputs)
    x = keras.layers.Conv2D(12, 3, strides=2, padding="same", name="b")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(10, (3, 2), padding="valid", use_bias=False, name="c")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4, name="d")(x)
    return keras.Model(inputs, outputs)


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


@pytest.mark.parametrize("method, rank", [("spatial", 2), ("svd", 2), ("tucker2", 2), ("cp", 3)])
def test_refit_lowers_every_layers_error_and_leaves_its_inputs_alone(method, rank):
    model = _model()
    compressed = factorize(model, method, rank=rank, layers=["a", "b", "c"] if method != "cp" else
                           ["b", "c"])
    data = np.random.default_rng(0).normal(size=(20, 12, 12, 3)).astype("float32")
    before_model, before_compressed = _weights(model), _weights(compressed)
    refitted, rows = refit_last_factors(model, compressed, data, batch_size=8)
    assert [row.name for row in rows] == (["a", "b", "c"] if method != "cp" else ["b", "c"])
    for row in rows:
        assert row.applied, row
        assert row.error_after < row.error_before
    for old, new in zip(before_model, _weights(model)):
        np.testing.assert_array_equal(old, new)
    for old, new in zip(before_compressed, _weights(compressed)):
        np.testing.assert_array_equal(old, new)
    # the refitted model matches the original's outputs better than the factorized one
    target = np.asarray(model(data))
    error = [np.linalg.norm(np.asarray(m(data)) - target) for m in (compressed, refitted)]
    assert error[1] < error[0]


def test_refit_error_is_the_layers_own_response_error():
    """The patches feed the last factor exactly as the chain does: on the first factorized layer
    (same inputs in both models) the error before the refit is the layer's response error."""
    model = _model()
    compressed = factorize(model, "spatial", rank=2, layers=["a"])
    data = np.random.default_rng(1).normal(size=(6, 12, 12, 3)).astype("float32")
    (row,) = refit_last_factors(model, compressed, data)[1]
    conv, chain = model.get_layer("a"), compressed.get_layer("a")
    y = np.asarray(keras.ops.conv(data, conv.kernel, padding="same")) + np.asarray(conv.bias)
    y_hat = np.asarray(keras.ops.conv(data, chain.dense_kernel(), padding="same")) + np.asarray(chain.bias)
    assert row.error_before == pytest.approx(np.linalg.norm(y - y_hat) / np.linalg.norm(y), rel=1e-4)


def test_refit_of_a_full_rank_chain_changes_nothing_it_cannot_improve():
    model = _model()
    with pytest.warns(UserWarning, match="not fewer than the original"):
        compressed = factorize(model, "svd", rank=4, layers=["d"])  # 12 x 4: full rank
    data = np.random.default_rng(2).normal(size=(8, 12, 12, 3)).astype("float32")
    refitted, (row,) = refit_last_factors(model, compressed, data)
    assert row.name == "d" and row.error_before < 1e-5
    np.testing.assert_allclose(np.asarray(refitted(data)), np.asarray(model(data)), atol=1e-4)


def test_refit_rejects_empty_data_and_bad_batch_size():
    model = _model()
    compressed = factorize(model, "spatial", rank=2, layers=["a"])
    with pytest.raises(ValueError, match=r"`data` must be a non-empty batch of inputs. Received: shape \(0,"):
        refit_last_factors(model, compressed, np.zeros((0, 12, 12, 3), "float32"))
    with pytest.raises(ValueError, match="`batch_size` must be an integer >= 1. Received: batch_size=0"):
        refit_last_factors(model, compressed, np.zeros((2, 12, 12, 3), "float32"), batch_size=0)


def test_refit_rejects_what_is_not_a_model():
    model = _model()
    with pytest.raises(TypeError, match="`original` must be a keras.Model .* Received: original of type str"):
        refit_last_factors("model.keras", model, np.zeros((2, 12, 12, 3), "float32"))
