"""Factorized Conv1D layers (``SVDConv1D``, ``TuckerConv1D``, ``CPConv1D``): chains on one row,
from the layer itself through factorize, refit, search, quantization-aware training and export."""

import json
import warnings

import keras
import numpy as np
import pytest

import tflowrank
from tflowrank import interop
from tflowrank.layers import CPConv1D, SVDConv1D, TuckerConv1D
from tflowrank.refit import refit_last_factors
from tflowrank.tflite_model import inspect_tflite

CLASSES = [SVDConv1D, TuckerConv1D, CPConv1D]
# (kernel_size, strides, dilation_rate); at least 2 input channels and several output steps, away
# from TensorFlow's one-channel, one-column strided Conv2D bug (README, Known problems)
GEOMETRIES = [(5, 1, 1), (3, 2, 1), (3, 1, 2), (4, 3, 1), (1, 1, 1)]


def _conv1d(geometry, padding, cin=4, filters=6, seed=0, **config):
    kernel_size, strides, dilation = geometry
    layer = keras.layers.Conv1D(filters, kernel_size, strides=strides, dilation_rate=dilation,
                                padding=padding, activation="relu", **config)
    layer.build((None, None, cin))
    rng = np.random.default_rng(seed)
    for weight in layer.weights:
        weight.assign(rng.normal(size=weight.shape).astype("float32"))
    return layer


def _close(actual, expected, tolerance=1e-4):
    expected = np.asarray(expected)
    scale = float(np.max(np.abs(expected))) or 1.0
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=tolerance, atol=tolerance * scale)


def _plain_keras(model):
    """``model`` rebuilt from its portable (tf_keras interop) description with plain layers."""
    architecture, arrays = interop._describe(model)
    return interop._build(json.loads(json.dumps(architecture)), arrays, keras)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("padding", ["valid", "same", "causal"])
def test_the_chain_is_the_conv1d_at_full_rank_and_its_own_kernel_below(cls, padding):
    x = np.random.default_rng(9).normal(size=(3, 17, 4)).astype("float32")
    for index, geometry in enumerate(GEOMETRIES):
        source = _conv1d(geometry, padding, seed=index)
        expected = source(x)
        full = cls.from_layer(source, cls.full_rank_of(source, 4))
        _close(full(x), expected)
        assert full.reconstruction_error < 1e-5
        assert tuple(full.compute_output_shape(x.shape)) == tuple(expected.shape)
        low = cls.from_layer(source, 2)
        assert low.reconstruction_error > 0.05
        dense = low.to_dense()  # the Conv1D this chain computes
        assert isinstance(dense, keras.layers.Conv1D)
        assert dense.kernel_size == (geometry[0],) and dense.strides == (geometry[1],)
        assert dense.padding == padding and low.get_config()["padding"] == padding
        _close(low(x), dense(x))
        # the plain steps (reshape to one row, [left zeros,] 2-D convolutions, reshape back)
        inputs = keras.Input((17, 4))
        model = keras.Model(inputs, low(inputs))
        kinds = [s.kind for s in low.steps(x.shape)]
        assert kinds[0] == kinds[-1] == "reshape" and (kinds[1] == "pad") == (padding == "causal")
        _close(_plain_keras(model)(x), low(x))
        if padding == "causal":  # each output sees the present and the past only
            later = x.copy()
            later[:, 9:] += 1.0
            _close(low(later)[:, :9 // geometry[1] + (9 % geometry[1] > 0)],
                   low(x)[:, :9 // geometry[1] + (9 % geometry[1] > 0)])


def test_macs_and_parameters_of_the_chains():
    source = _conv1d((5, 1, 1), "same", cin=4, filters=6)
    shape = (None, 17, 4)
    assert SVDConv1D.macs_for(source, 3, shape) == 17 * 5 * 4 * 3 + 17 * 3 * 6
    assert TuckerConv1D.macs_for(source, (2, 3), shape) == 17 * 4 * 2 + 17 * 5 * 2 * 3 + 17 * 3 * 6
    assert SVDConv1D.params_for(source, 3, 4) == 5 * 4 * 3 + 3 * 6 + 6
    assert SVDConv1D.full_rank_of(source, 4) == 6 and TuckerConv1D.full_rank_of(source, 4) == (4, 6)
    strided = _conv1d((3, 2, 1), "valid", cin=4, filters=6)  # 17 steps -> 8
    assert SVDConv1D.macs_for(strided, 2, shape) == 8 * 3 * 4 * 2 + 8 * 2 * 6
    layer = SVDConv1D.from_layer(source, 3)
    assert layer.macs(shape) == SVDConv1D.macs_for(source, 3, shape)
    assert layer.dense_macs(shape) == 17 * 5 * 4 * 6
    causal = _conv1d((5, 1, 2), "causal", cin=4, filters=6)  # 8 zeros on the left, 17 outputs
    assert SVDConv1D.macs_for(causal, 3, shape) == 17 * 5 * 4 * 3 + 17 * 3 * 6
    # Tucker's first pointwise step runs over the zeros too (it comes before the k-tap core)
    assert TuckerConv1D.macs_for(causal, (2, 3), shape) == 25 * 4 * 2 + 17 * 5 * 2 * 3 + 17 * 3 * 6
    assert TuckerConv1D.from_layer(causal, (2, 3)).dense_macs(shape) == 17 * 5 * 4 * 6
    # CP: pointwise over the input, depthwise k taps per component, pointwise out
    assert CPConv1D.macs_for(source, 7, shape) == 7 * (17 * 4 + 17 * 5 + 17 * 6)
    assert CPConv1D.macs_for(strided, 7, shape) == 7 * (17 * 4 + 8 * 3 + 8 * 6)
    assert CPConv1D.params_for(source, 7, 4) == 7 * (4 + 5 + 6) + 6
    assert CPConv1D.full_rank_of(source, 4) == min(5 * 4, 5 * 6, 4 * 6)


def test_constructor_takes_conv1d_sizes_and_names_bad_ones():
    layer = SVDConv1D(filters=6, kernel_size=5, rank=2, strides=(2,), dilation_rate=1)
    assert layer.kernel_size == (1, 5) and layer.strides == (1, 2) and layer.dilation_rate == (1, 1)
    again = SVDConv1D.from_config(layer.get_config())
    assert again.kernel_size == (1, 5) and again.strides == (1, 2)
    with pytest.raises(ValueError, match=r"`kernel_size` of a 1-D convolution .* Received: "
                                         r"kernel_size=\(3, 3\)"):
        SVDConv1D(filters=6, kernel_size=(3, 3), rank=2)
    with pytest.raises(ValueError, match=r"`strides` of a 1-D convolution .* Received: strides=\(0,\)"):
        TuckerConv1D(filters=6, kernel_size=3, rank=2, strides=0)
    causal = SVDConv1D(filters=6, kernel_size=3, rank=2, padding="causal", dilation_rate=2)
    assert causal.causal and causal.padding == "valid"  # the chain's own convolutions
    assert SVDConv1D.from_config(causal.get_config()).causal
    with pytest.raises(ValueError, match=r"`padding` must be 'valid' or 'same'. Received: padding='full'"):
        SVDConv1D(filters=6, kernel_size=3, rank=2, padding="full")


def test_what_the_methods_refuse():
    grouped = _conv1d((3, 1, 1), "same", groups=2)
    assert "groups=2" in TuckerConv1D.supports(grouped)
    assert "is not a Conv1D" in SVDConv1D.supports(keras.layers.Dense(3))
    assert SVDConv1D.supports(_conv1d((3, 1, 1), "causal")) is None
    inputs = keras.Input((32, 4))
    x = keras.layers.Conv1D(8, 3, padding="same", groups=2, name="grouped")(inputs)
    x = keras.layers.Conv1D(8, 3, padding="causal", name="plain")(x)
    model = keras.Model(inputs, x)
    with pytest.raises(ValueError, match=r"'grouped' cannot be factorized with method='svd': "
                                         r"groups=2 is not supported"):
        tflowrank.factorize(model, "svd", 2, layers=["grouped"])
    with pytest.raises(ValueError, match=r"'plain' cannot be factorized with method='spatial': "
                                         r"method 'spatial' has no factorization for Conv1D"):
        tflowrank.factorize(model, "spatial", 2, layers=["plain"])
    with pytest.warns(UserWarning, match=r"grouped: groups=2 is not supported"):
        factorized = tflowrank.factorize(model, "svd", 2)
    assert [type(layer).__name__ for layer in factorized.layers[1:]] == ["Conv1D", "SVDConv1D"]


def test_a_residual_causal_network_factorizes_and_rebuilds_as_plain_layers():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((40, 3))  # a temporal convolutional network: dilated causal residual blocks
    h = keras.layers.Conv1D(16, 1, name="stem")(inputs)
    for index, dilation in enumerate((1, 2, 4)):
        r = keras.layers.Conv1D(16, 3, padding="causal", dilation_rate=dilation, activation="relu",
                                name=f"block{index}_a")(h)
        r = keras.layers.SpatialDropout1D(0.1)(r)
        r = keras.layers.Conv1D(16, 3, padding="causal", dilation_rate=dilation, name=f"block{index}_b")(r)
        h = keras.layers.ReLU()(keras.layers.Add()([h, r]))
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(keras.layers.GlobalAveragePooling1D()(h)))
    x = np.random.default_rng(0).normal(size=(8, 40, 3)).astype("float32")
    blocks = [f"block{i}_{part}" for i in range(3) for part in "ab"]
    with pytest.warns(UserWarning, match="not fewer than the original"):  # at full rank: exact
        full = tflowrank.factorize(model, "tucker2", {name: (16, 16) for name in blocks})
    _close(full(x), model(x), 1e-4)
    low = tflowrank.factorize(model, "svd", 0.4)
    assert [type(low.get_layer(f"block{i}_b")).__name__ for i in range(3)] == ["SVDConv1D"] * 3
    _close(_plain_keras(low)(x), low(x))
    later = x.copy()
    later[:, 30:] = 0.0  # the future does not reach the past through the residual stack
    probe = keras.Model(low.inputs[0], low.get_layer("block2_b").output)
    _close(probe(later)[:, :30], probe(x)[:, :30], 1e-5)


def _sensor_model(seed=0):
    """A small 1-D CNN of the kind that runs on microcontrollers (accelerometer windows)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64, 3))
    x = keras.layers.Conv1D(24, 5, padding="same", use_bias=False, name="a")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="a_bn")(x))
    x = keras.layers.Conv1D(32, 5, strides=2, padding="same", activation="relu", name="b")(x)
    x = keras.layers.MaxPooling1D(2)(x)
    x = keras.layers.Conv1D(32, 3, padding="causal", dilation_rate=2, activation="relu", name="c")(x)
    x = keras.layers.Conv1D(32, 1, activation="relu", name="pointwise")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(x))


def _sensor_data(count, seed=0):
    """Noisy sine windows; the class is the frequency."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, count)
    t = np.arange(64)
    phase = rng.uniform(0, 2 * np.pi, (count, 1))
    wave = np.sin(2 * np.pi * (labels[:, None] + 1) * t / 32 + phase)
    x = wave[:, :, None] * np.array([1.0, 0.5, -0.7]) + rng.normal(0, 1.5, (count, 64, 3))
    return x.astype("float32"), labels


@pytest.fixture(scope="module")
def trained():
    model = _sensor_model()
    x, y = _sensor_data(1200)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x[:1000], y[:1000], epochs=6, batch_size=32, verbose=0)
    return model, (x[:1000], y[:1000]), (x[1000:], y[1000:])


def test_factorize_save_load_and_cost(trained, tmp_path):
    model, (x, _), _ = trained
    before = [w.copy() for w in model.get_weights()]
    with pytest.warns(UserWarning, match=r"pointwise: a 1 x 1 convolution has no spatial extent"):
        tucker = tflowrank.factorize(model, "tucker2", 0.5)
    assert {type(layer).__name__ for layer in tucker.layers} >= {"TuckerConv1D", "Conv1D"}
    assert type(tucker.get_layer("pointwise")).__name__ == "Conv1D"
    svd = tflowrank.factorize(model, "svd", 0.5)
    assert [type(svd.get_layer(n)).__name__ for n in ("a", "b", "c", "pointwise")] == ["SVDConv1D"] * 4
    for factorized in (tucker, svd):
        rows = {row.name: row for row in tflowrank.cost(factorized).layers}
        for name in ("a", "b", "c"):
            assert 0 < rows[name].macs <= 0.55 * rows[name].dense_macs
        path = tmp_path / "factorized.keras"
        factorized.save(path)
        _close(keras.models.load_model(path)(x[:16]), factorized(x[:16]), 1e-5)
        _close(_plain_keras(factorized)(x[:16]), factorized(x[:16]))
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_a_lowered_rank_finalizes_to_the_smaller_chain(trained):
    model, (x, _), _ = trained
    factorized = tflowrank.factorize(model, "tucker2", {"b": (8, 8)})
    factorized.get_layer("b").set_active_rank((4, 6))  # as RankScheduler does during fit
    expected = factorized(x[:8])
    final = tflowrank.finalize(factorized)
    layer = final.get_layer("b")
    assert isinstance(layer, TuckerConv1D) and layer.rank == (4, 6)
    assert layer.kernel_core.shape == (1, 5, 4, 6)
    _close(final(x[:8]), expected, 1e-5)


@pytest.mark.parametrize("method, target", [("svd", 3), ("tucker2", (3, 4)), ("cp", 5)])
def test_rank_scheduler_lowers_the_ranks_during_fit(trained, method, target):
    from tflowrank.callbacks import RankScheduler

    model, (x, y), _ = trained
    full = {"svd": 1.0, "tucker2": 1.0, "cp": 24}[method]  # CP: a rank above the target
    factorized = tflowrank.factorize(model, method, {"b": full, "c": full})
    factorized.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    factorized.fit(x[:256], y[:256], epochs=2, batch_size=64, verbose=0,
                   callbacks=[RankScheduler(target, layers=["b", "c"])])
    for name in ("b", "c"):
        layer = factorized.get_layer(name)
        assert layer.active_rank == target and layer.rank != target
    final = tflowrank.finalize(factorized)
    assert final.get_layer("b").rank == target
    _close(final(x[:8]), factorized(x[:8]), 1e-5)


def test_refit_and_the_output_method_fit_the_responses(trained):
    model, (x, _), _ = trained
    rank = {"b": 4, "c": 4}
    svd = tflowrank.factorize(model, "svd", rank)
    refitted, rows = refit_last_factors(model, svd, x[:300])
    assert {r.name for r in rows} == {"b", "c"}
    assert all(r.applied and r.error_after < r.error_before for r in rows)
    assert not np.allclose(refitted.get_layer("b").get_weights()[1], svd.get_layer("b").get_weights()[1])
    output = tflowrank.factorize(model, "output", rank, data=x[:300])
    assert type(output.get_layer("b")).__name__ == "SVDConv1D"

    def response_error(factorized, name):  # of the layer's pre-activation responses
        probe = keras.Model(model.inputs[0], model.get_layer(name).output)
        target = np.asarray(probe(x[300:500]))
        mine = keras.Model(factorized.inputs[0], factorized.get_layer(name).output)
        return np.linalg.norm(np.asarray(mine(x[300:500])) - target) / np.linalg.norm(target)

    plain = tflowrank.factorize(model, "svd", rank)
    # fitted to data, the chain follows the layer's outputs better than the kernel's truncation
    assert response_error(output, "b") < response_error(plain, "b")


def test_search_plans_the_conv1d_layers(trained):
    model, _, (x_val, y_val) = trained
    plan = tflowrank.search(model, (x_val, y_val), 0.4, candidates=4, progress=False)
    assert abs(plan.fraction - 0.4) <= 0.02
    methods = {e.layer: e.method for e in plan.factorized}
    assert {"b", "c"} <= set(methods) and set(methods.values()) <= {"svd", "tucker2", "cp", "output"}
    factorized = tflowrank.factorize(model, plan, data=x_val if "output" in plan.methods else None)
    assert tflowrank.cost(factorized).macs == plan.total_after


def test_compress_default_lets_svd_tucker2_and_cp_compete_for_a_conv1d(trained, tmp_path):
    from tflowrank.compression import DEFAULT_METHODS

    model, _, (x_val, y_val) = trained
    path = tmp_path / "table.json"
    with warnings.catch_warnings():  # 3 ranks per layer: the plan may land a few % under
        warnings.simplefilter("ignore")
        plan = tflowrank.search(model, (x_val, y_val), 0.5, methods=DEFAULT_METHODS, candidates=3,
                                cache=path, first_applicable=True, progress=False)
    measured = {layer: sorted(by_method) for layer, by_method in
                json.loads(path.read_text())["scores"].items()}
    # spatial splits no Conv1D; tucker2 and cp skip the 1 x 1 kernel and the Dense head
    assert measured == {"a": ["cp", "svd", "tucker2"], "b": ["cp", "svd", "tucker2"],
                        "c": ["cp", "svd", "tucker2"], "pointwise": ["svd"], "head": ["svd"]}
    assert plan.methods and set(plan.methods) <= {"svd", "tucker2", "cp"}


@pytest.mark.slow
def test_quantization_aware_chains_export_fully_int8_and_compress_end_to_end(trained, tmp_path):
    from test_qat import _output_steps, _track_ranges

    model, (x, y), (x_val, y_val) = trained
    factorized = tflowrank.factorize(model, "tucker2", {"a": (3, 8), "b": (8, 8), "c": (8, 8)})
    qat_model = tflowrank.quantize_aware(factorized)
    assert "a_bn" not in [layer.name for layer in qat_model.layers]  # folded into the conv
    _track_ranges(qat_model, x[:256], y[:256], epochs=2)
    result = tflowrank.export_tflite(qat_model, tmp_path / "chains.tflite")
    assert inspect_tflite(result.path).is_fully_int8
    assert result.ops["CONV_2D"] == 3 * 3 + 1  # a, b and c as Tucker chains, and the pointwise
    assert result.ops["PAD"] == 1  # c's left zeros
    steps = _output_steps(qat_model, result.path, x_val[:64])
    assert steps.max() <= 2.01 and steps.mean() < 0.5  # a strided conv, as in test_qat's Conv1D
    # CP chains: per-channel int8 depthwise k-tap steps between pointwise ones. Plain CP-ALS
    # factors of these trained kernels cancel (degeneracy 14-20) and drifted up to 6 steps, mean
    # 1.2; the ridged ones hold the Tucker chains' bound
    cp = tflowrank.quantize_aware(tflowrank.factorize(model, "cp", {"b": 24, "c": 24}))
    _track_ranges(cp, x[:256], y[:256], epochs=2)
    result = tflowrank.export_tflite(cp, tmp_path / "cp.tflite")
    assert inspect_tflite(result.path).is_fully_int8 and result.ops["DEPTHWISE_CONV_2D"] == 2
    assert result.ops["CONV_2D"] == 1 + 2 * 2 + 1
    steps = _output_steps(cp, result.path, x_val[:64])
    assert steps.max() <= 2.01 and steps.mean() < 0.5, (steps.max(), steps.mean())

    compressed = tflowrank.compress(model, (x, y), (x_val, y_val), 0.5, finetune_epochs=1,
                                    candidates=4, output_dir=tmp_path / "out", profile_runs=5,
                                    profile_repeats=1)
    assert {e.layer for e in compressed.plan.factorized} & {"a", "b", "c"}
    assert compressed.macs <= 0.51 * compressed.baseline_macs
    assert inspect_tflite(compressed.export.path).is_fully_int8
    assert compressed.tflite_accuracy == pytest.approx(
        tflowrank.evaluate_tflite(compressed.export.path, x_val, y_val), abs=1e-9)
    assert compressed.tflite_accuracy >= compressed.baseline_accuracy - 0.05
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {e["layer"] for e in report["plan"]["entries"] if e["method"]} & {"a", "b", "c"}


@pytest.mark.slow
def test_latency_table_converts_the_chains(tmp_path):
    from tflowrank import latency_table

    source = _conv1d((5, 1, 1), "same", cin=8, filters=16)
    chains = [latency_table.Chain(source, (None, 64, 8)),
              latency_table.Chain(source, (None, 64, 8), SVDConv1D, 4),
              latency_table.Chain(source, (None, 64, 8), TuckerConv1D, (4, 4)),
              latency_table.Chain(source, (None, 64, 8), CPConv1D, 6)]
    latency_table._run_worker([c.job(f"{i}.tflite", "int8") for i, c in enumerate(chains)], tmp_path)
    files = [inspect_tflite(tmp_path / f"{i}.tflite") for i in range(len(chains))]
    assert [f.ops.get("CONV_2D") for f in files] == [1, 2, 3, 2]
    assert files[3].ops["DEPTHWISE_CONV_2D"] == 1 and all(f.is_fully_int8 for f in files)
