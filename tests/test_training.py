"""Training-time compression: rank masks, finalize, RankScheduler, LowRankRegularizer, tf.distribute."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import tflowrank
from tflowrank.callbacks import LowRankRegularizer, RankScheduler
from tflowrank.decompositions import spatial_unfolding
from tflowrank.layers import FactorizedLayer

METHODS = ("spatial", "svd", "tucker2", "tucker2_spatial", "cp")


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 12, 6))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(12, 3, strides=2, name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4, name="d")(x)
    return keras.Model(inputs, outputs)


def _data(n=64, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12, 12, 6)).astype("float32")
    return x, rng.integers(0, 4, size=n)


def _factorized(method, rank=0.9):
    return tflowrank.factorize(_model(), method, rank=rank, layers=["c1", "c2"])


def _compiled(model, lr=1e-3):
    model.compile(optimizer=keras.optimizers.SGD(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _halve(rank):
    return tuple(max(1, r // 2) for r in rank) if isinstance(rank, tuple) else max(1, rank // 2)


def _factorized_layers(model):
    return [layer for layer in model.layers if isinstance(layer, FactorizedLayer)]


# -- masks and finalize ------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_a_masked_chain_computes_what_the_finalized_chain_computes(method):
    model = _factorized(method)
    x, _ = _data(8)
    before = [w.copy() for w in model.get_weights()]
    for layer in _factorized_layers(model):
        layer.set_active_rank(layer.feasible_rank(_halve(layer.rank)))
    final = tflowrank.finalize(model)
    assert final is not model
    for old, new in zip(_factorized_layers(model), _factorized_layers(final)):
        assert new.rank == new.active_rank == old.active_rank != old.rank
        np.testing.assert_allclose(new.dense_kernel(), old.dense_kernel(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(final(x)), np.asarray(model(x)), rtol=1e-4, atol=1e-5)
    masked, sliced = tflowrank.cost(model), tflowrank.cost(final)
    bookkeeping = sum(len(np.atleast_1d(layer.active_rank)) for layer in _factorized_layers(final))
    assert masked.macs == sliced.macs
    assert masked.params == sliced.params == final.count_params() - bookkeeping
    assert [r.rank for r in masked.layers] == [r.rank for r in sliced.layers]
    # the model handed to finalize keeps its allocated factors and weights
    assert all(np.array_equal(a, b) for a, b in zip(before[:1], model.get_weights()[:1]))
    assert [layer.rank for layer in _factorized_layers(model)] != [
        layer.rank for layer in _factorized_layers(final)]


def test_finalize_of_a_model_at_full_active_rank_is_the_model_itself():
    model = _factorized("spatial")
    assert tflowrank.finalize(model) is model


def test_export_finalizes_on_its_own(tmp_path):
    model = _factorized("spatial", rank=1.0)
    full = tflowrank.export_tflite(model, tmp_path / "full.tflite", quantize=None)
    for layer in _factorized_layers(model):
        layer.set_active_rank(2)
    small = tflowrank.export_tflite(model, tmp_path / "small.tflite", quantize=None)
    assert small.size_bytes < full.size_bytes * 0.6
    assert small.ops == full.ops  # the same chain of ops, with smaller factors
    x, _ = _data(4)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(small.path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    for sample in x:
        interpreter.set_tensor(inp["index"], sample[None])
        interpreter.invoke()
        np.testing.assert_allclose(interpreter.get_tensor(out["index"])[0],
                                   np.asarray(model(sample[None]))[0], rtol=1e-4, atol=1e-4)


def test_bad_active_ranks_are_rejected_with_the_value():
    layer = _factorized_layers(_factorized("tucker2"))[0]
    for bad in (0, (1, layer.rank[1] + 1), (1, 2, 3)):
        with pytest.raises(ValueError, match=r"rank"):
            layer.set_active_rank(bad)
    spatial = _factorized_layers(_factorized("spatial"))[0]
    with pytest.raises(ValueError, match=rf"allocated rank {spatial.rank}.*Received: rank={spatial.rank + 1}"):
        spatial.set_active_rank(spatial.rank + 1)


# -- RankScheduler ----------------------------------------------------------------------------
class _Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.ranks, self.functions = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.ranks.append([layer.active_rank for layer in _factorized_layers(self.model)])
        self.functions.append(id(self.model.train_function))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ranks_fall_along_the_schedule_to_the_target_without_retracing(schedule):
    model = _compiled(_factorized("spatial", rank=1.0))
    start = [layer.active_rank for layer in _factorized_layers(model)]
    recorder = _Recorder()
    x, y = _data()
    history = model.fit(x, y, epochs=5, batch_size=32, verbose=0,
                        callbacks=[RankScheduler(3, start_epoch=1, end_epoch=3, schedule=schedule),
                                   recorder])
    per_layer = list(zip(*recorder.ranks))
    for first, ranks in zip(start, per_layer):
        assert ranks[0] == first and ranks[3] == ranks[4] == 3
        assert list(ranks) == sorted(ranks, reverse=True)
    middle = per_layer[0][2]
    expected = start[0] - (start[0] - 3) * (0.5 if schedule == "linear" else 0.5)
    assert abs(middle - expected) <= 1
    assert len(set(recorder.functions)) == 1  # the train function was traced once
    assert history.history["mean_rank"][-1] == 3.0
    macs = history.history["macs"]
    assert macs == sorted(macs, reverse=True) and macs[-1] == tflowrank.cost(model).macs


def test_each_step_reprojects_onto_the_best_factors_of_the_current_chain():
    model = _compiled(_factorized("spatial", rank=1.0))
    layer = _factorized_layers(model)[0]
    x, y = _data()
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)  # factors no longer the initial SVD
    kernel = layer.dense_kernel()
    singular = np.linalg.svd(spatial_unfolding(kernel), compute_uv=False)
    scheduler = RankScheduler({"c1": 5})
    scheduler.set_model(model)
    scheduler.params = {"epochs": 1, "steps": 2}
    scheduler.on_train_begin()
    scheduler.on_epoch_begin(0)
    assert layer.active_rank == 5
    error = np.linalg.norm(layer.dense_kernel() - kernel) / np.linalg.norm(kernel)
    best = np.sqrt(np.sum(singular[5:] ** 2) / np.sum(singular**2))
    np.testing.assert_allclose(error, best, rtol=1e-4)  # Eckart-Young: not a plain truncation


@pytest.mark.parametrize("target", [0.3, "energy:0.8", 4])
def test_rank_targets_use_the_factorize_vocabulary(target):
    model = _compiled(_factorized("tucker2", rank=1.0))
    x, y = _data()
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[RankScheduler(target)])
    original = _model()
    for layer in _factorized_layers(model):
        dense = original.get_layer(layer.name)
        if target == 4:
            assert layer.active_rank == (4, 4)
        elif isinstance(target, float):
            shape = (None, 12, 12, 6) if layer.name == "c1" else (None, 12, 12, 16)
            assert layer.macs(shape) <= 0.3 * dense_macs(dense, shape)
        else:
            assert all(r < f for r, f in zip(layer.active_rank, layer.rank))


def dense_macs(layer, shape):
    from tflowrank.costs import layer_macs

    return layer_macs(layer, [shape], None)


def test_a_global_mac_target_lands_within_two_percent():
    model = _compiled(_factorized("spatial", rank=1.0))
    original = tflowrank.cost(_model()).macs
    x, y = _data()
    history = model.fit(x, y, epochs=3, batch_size=32, verbose=0,
                        callbacks=[RankScheduler(target_macs=0.5, every=1)])
    reached = history.history["macs"][-1] / original
    assert 0.49 <= reached <= 0.5 * 1.02


def test_a_step_schedule_moves_within_epochs():
    model = _compiled(_factorized("svd", rank=1.0))
    x, y = _data(64)
    seen = []

    class Each(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(_factorized_layers(self.model)[0].active_rank)

    model.fit(x, y, epochs=2, batch_size=16, verbose=0,
              callbacks=[RankScheduler(2, every=2, end_epoch=1), Each()])
    assert seen == sorted(seen, reverse=True) and seen[-1] == 2 and len(set(seen)) > 2


def test_a_step_schedule_reaches_its_target_even_when_steps_are_longer_than_the_window():
    model = _compiled(_factorized("spatial", rank=1.0))
    x, y = _data(64)
    model.fit(x, y, epochs=3, batch_size=16, verbose=0,
              callbacks=[RankScheduler(3, every=1000, end_epoch=1)])
    assert [layer.active_rank for layer in _factorized_layers(model)] == [3, 3]


def test_the_scheduler_is_reusable_across_fits_and_never_raises_a_rank():
    model = _compiled(_factorized("spatial", rank=1.0))
    scheduler = RankScheduler(4)
    x, y = _data()
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[scheduler])
    assert [layer.active_rank for layer in _factorized_layers(model)] == [4, 4]
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[RankScheduler(10)])
    assert [layer.active_rank for layer in _factorized_layers(model)] == [4, 4]
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[scheduler])


def test_bad_scheduler_arguments_are_rejected_with_the_value():
    with pytest.raises(ValueError, match="exactly one of `target`, `target_macs`"):
        RankScheduler()
    with pytest.raises(ValueError, match="exactly one of"):
        RankScheduler(4, target_macs=0.3)
    with pytest.raises(ValueError, match=r"`schedule` must be 'linear' or 'cosine'. Received: schedule='exp'"):
        RankScheduler(4, schedule="exp")
    with pytest.raises(ValueError, match=r"`every` must be 'epoch' or a positive number of steps. Received: every=0"):
        RankScheduler(4, every=0)
    with pytest.raises(ValueError, match=r"`end_epoch` must be None or an integer >= start_epoch=2. Received: end_epoch=1"):
        RankScheduler(4, start_epoch=2, end_epoch=1)
    with pytest.raises(ValueError, match=r"`target_macs` must be a fraction in \(0, 1\]. Received: target_macs=1.5"):
        RankScheduler(target_macs=1.5)
    model = _compiled(_model())
    x, y = _data(8)
    with pytest.raises(ValueError, match="no factorized layer"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[RankScheduler(4)])


# -- LowRankRegularizer -----------------------------------------------------------------------
def test_the_penalty_of_fresh_factors_is_the_nuclear_norm_of_the_truncation():
    from tflowrank.callbacks.low_rank_regularizer import penalty_value

    model = _factorized("spatial", rank=5)
    layer = _factorized_layers(model)[0]
    singular = np.linalg.svd(spatial_unfolding(_model().get_layer("c1").kernel.numpy()),
                             compute_uv=False)
    np.testing.assert_allclose(penalty_value(layer), np.sum(singular[:5]), rtol=1e-4)


def test_the_regularizer_shrinks_components_and_leaves_the_model_as_it_was():
    from tflowrank.callbacks.low_rank_regularizer import penalty_value

    model = _compiled(_factorized("svd", rank=1.0), lr=0.05)
    layers = _factorized_layers(model)
    before = [penalty_value(layer) for layer in layers]
    x, y = _data()
    history = model.fit(x, y, epochs=3, batch_size=32, verbose=0,
                        callbacks=[LowRankRegularizer(0.5)])
    after = [penalty_value(layer) for layer in layers]
    assert all(a < 0.85 * b for a, b in zip(after, before))
    assert "low_rank_penalty" in history.history
    assert model.losses == [] and all(v.regularizer is None for v in model.trainable_variables)
    # the energy concentrates in fewer components: a spectral target then cuts more
    plain = _compiled(_factorized("svd", rank=1.0), lr=0.05)
    plain.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert sum(after) < sum(penalty_value(layer) for layer in _factorized_layers(plain))


def test_bad_regularizer_arguments_are_rejected_with_the_value():
    for bad in (0, -1.0, True, "0.1"):
        with pytest.raises(ValueError, match=rf"`strength` must be a positive number. Received: strength={bad!r}"):
            LowRankRegularizer(bad)


# -- tf.distribute ----------------------------------------------------------------------------
@pytest.mark.slow
def test_masks_and_factors_stay_identical_across_replicas(tmp_path):
    script = textwrap.dedent("""
        import numpy as np, tensorflow as tf
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
        import keras, tflowrank
        from tflowrank.callbacks import LowRankRegularizer, RankScheduler
        from tflowrank.layers import FactorizedLayer
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        assert strategy.num_replicas_in_sync == 2
        with strategy.scope():
            keras.utils.set_random_seed(0)
            inputs = keras.Input((12, 12, 6))
            x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inputs)
            x = keras.layers.Conv2D(12, 3, name="c2")(x)
            outputs = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x))
            model = tflowrank.factorize(keras.Model(inputs, outputs), "tucker2", rank=1.0,
                                        layers=["c1", "c2"])
            model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(
                from_logits=True))
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(64, 12, 12, 6)).astype("float32"), rng.integers(0, 4, 64)
        model.fit(x, y, epochs=3, batch_size=16, verbose=0,
                  callbacks=[RankScheduler((3, 4)), LowRankRegularizer(1e-3)])
        checked = 0
        for layer in model.layers:
            if isinstance(layer, FactorizedLayer):
                assert layer.active_rank == (3, 4), layer.active_rank
                for variable in layer.weights:
                    values = [np.asarray(v) for v in variable.value.values]
                    assert len(values) == 2 and np.array_equal(values[0], values[1]), variable.name
                    checked += 1
        print("checked", checked)
    """)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "checked 10" in done.stdout
