"""search and CompressionPlan: selection math, target landing, cache, JSON, applying a plan, errors."""

import dataclasses
import re
import time
import warnings

import keras
import numpy as np
import pytest

import tflowrank
from tflowrank import CompressionPlan, cost, factorize, search
from tflowrank.layers import FactorizedLayer, SpatialConv2D, SVDConv2D
from tflowrank.selection import Option, interpolate, monotone_fit, select

METHODS = ("spatial", "svd", "output")


# -- the math, without Keras ------------------------------------------------------------------------

def test_monotone_fit_is_the_isotonic_regression():
    costs, fitted = monotone_fit([3, 1, 2, 4], [0.5, 0.2, 0.6, 0.9])
    np.testing.assert_allclose(costs, [1, 2, 3, 4])
    np.testing.assert_allclose(fitted, [0.2, 0.55, 0.55, 0.9])  # 0.6 > 0.5 pooled
    _, fitted = monotone_fit([1, 1, 2], [0.4, 0.2, 0.1])  # equal costs pooled, then violators
    np.testing.assert_allclose(fitted, [0.7 / 3, 0.7 / 3])  # weighted by points
    rng = np.random.default_rng(0)
    _, fitted = monotone_fit(rng.uniform(size=50), rng.uniform(size=50))
    assert np.all(np.diff(fitted) >= -1e-12)


def test_interpolate_reaches_the_full_score_and_refuses_below_the_measured_range():
    values = interpolate([10, 20], [0.5, 0.7], [5, 10, 15, 20, 60, 100], 100, 0.9)
    assert np.isnan(values[0])
    np.testing.assert_allclose(values[1:], [0.5, 0.6, 0.7, 0.8, 0.9])


def _curve(method, scale, original=100.0):
    return original, [Option(method, r, float(r * 10), scale * (1 - r / 10)) for r in range(1, 10)]


def test_select_spares_the_sensitive_layer_and_lands_on_the_budget():
    layers = [_curve("a", 1.0), _curve("b", 0.01), _curve("c", 0.01)]
    picks, total = select(layers, budget=170.0, fixed=10.0)
    assert total <= 170.0 and total >= 160.0
    assert picks[0] is None or picks[0].rank >= 9  # the sensitive layer keeps (nearly) all
    assert sum(p.cost if p else o for p, (o, _) in zip(picks, layers)) + 10 == pytest.approx(total)
    with pytest.raises(ValueError, match="below the cheapest reachable total"):
        select(layers, budget=30.0, fixed=10.0)


# -- a small CNN ------------------------------------------------------------------------------------

def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.Conv2D(24, 3, padding="same", activation="relu", name="conv3")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(10, name="head")(x)
    return keras.Model(inputs, outputs, name="small")


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def data(model):
    x = np.random.default_rng(0).normal(size=(160, 16, 16, 3)).astype("float32")
    return x, model.predict(x, verbose=0).argmax(-1)  # the model's own labels: baseline 1.0


@pytest.fixture(scope="module")
def searched(model, data, tmp_path_factory):
    path = tmp_path_factory.mktemp("search") / "sensitivity.json"
    started = time.perf_counter()
    plan = search(model, data, 0.4, methods=METHODS, candidates=4, cache=path, progress=False)
    return plan, path, time.perf_counter() - started


def test_plan_meets_the_target_within_tolerance(searched):
    plan, _, _ = searched
    assert plan.cost == "macs" and plan.target == 0.4
    assert 0.4 * 0.97 <= plan.fraction <= 0.4
    assert plan.baseline_score == 1.0
    assert plan.factorized and all(e.method in METHODS for e in plan.factorized)
    assert plan.total_after == sum(e.cost_after for e in plan.entries) + (
        plan.total_before - sum(e.cost_before for e in plan.entries))
    assert plan.predicted_score <= min(e.predicted_score for e in plan.entries)


def test_factorize_applies_the_plan(model, data, searched):
    plan, _, _ = searched
    kwargs = {"data": data[0][:64]} if "output" in plan.methods else {}
    new = factorize(model, plan, **kwargs)
    assert cost(new).macs == plan.total_after
    for entry in plan.entries:
        layer = new.get_layer(entry.layer)
        if entry.method is None:
            assert type(layer) is type(model.get_layer(entry.layer))
        else:
            expected = {"spatial": SpatialConv2D, "output": SVDConv2D}.get(entry.method)
            assert isinstance(layer, FactorizedLayer) and layer.rank == entry.rank
            if expected is not None:
                assert isinstance(layer, expected)


def test_cache_gives_the_same_plan_fast_and_serves_other_targets(model, data, searched):
    plan, path, first = searched
    started = time.perf_counter()
    again = search(model, data, 0.4, methods=METHODS, candidates=4, cache=path)
    assert again == plan
    other = search(model, data, 0.6, methods=METHODS, candidates=4, cache=path, multiple_of=2)
    elapsed = time.perf_counter() - started
    assert elapsed < max(first / 3, 0.5) and elapsed < 10, (elapsed, first)
    assert 0.6 * 0.97 <= other.fraction <= 0.6
    assert all(e.rank % 2 == 0 for e in other.factorized if isinstance(e.rank, int)
               and e.rank < 24)
    with warnings.catch_warnings():  # 8,722 parameters: one rank step is ~2% of the model
        warnings.simplefilter("ignore")
        params = search(model, data, 0.5, cost="params", methods=METHODS, candidates=4, cache=path)
    assert params.cost == "params" and 0.5 * 0.95 <= params.fraction <= 0.5
    applied = factorize(model, params, **({"data": data[0][:64]} if "output" in params.methods else {}))
    assert cost(applied).params == params.total_after


def test_a_dataset_gives_the_same_table(model, data, searched):
    import tensorflow as tf

    plan, path, _ = searched
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fingerprint mismatch would warn
        assert search(model, dataset, 0.4, methods=METHODS, candidates=4, cache=path) == plan


def test_plan_json_round_trip_and_text(searched, tmp_path):
    plan, _, _ = searched
    assert CompressionPlan.from_json(plan.to_json()) == plan
    assert CompressionPlan.load(plan.save(tmp_path / "plan.json")) == plan
    text = str(plan)
    for name in ("conv1", "conv2", "conv3", "head", "total"):
        assert name in text
    with pytest.raises(ValueError, match="Not a tflowrank compression plan"):
        CompressionPlan.from_json('{"cost": "macs"}')


# -- selection driven by sensitivity ----------------------------------------------------------------

def _penalty_eval(sensitive):
    """A score that drops 100x faster when ``sensitive`` is compressed than any other layer."""
    def eval_fn(candidate):
        score = 1.0
        for row in cost(candidate).layers:
            if row.rank is not None:
                weight = 1.0 if row.name == sensitive else 0.01
                score -= weight * (1 - row.macs / row.dense_macs)
        return score
    return eval_fn


@pytest.mark.parametrize("sensitive", ["conv2", "conv3"])
def test_the_sensitive_layer_is_spared(model, sensitive):
    plan = search(model, None, 0.75, methods=("svd",), candidates=5, eval_fn=_penalty_eval(sensitive))
    entries = {e.layer: e for e in plan.entries}
    assert entries[sensitive].method is None
    assert any(e.method == "svd" for name, e in entries.items() if name != sensitive)
    assert 0.75 * 0.97 <= plan.fraction <= 0.75


def test_cache_made_for_other_settings_is_not_reused(model, tmp_path, capsys):
    path = tmp_path / "table.json"
    with warnings.catch_warnings():  # svd alone in 3 steps lands 4% under the target here
        warnings.simplefilter("ignore")
        search(model, None, 0.8, methods=("svd",), candidates=3, eval_fn=_penalty_eval("conv2"),
               cache=path, progress=True)
    assert "search [" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="another model, data or settings"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*too coarse")
        search(model, None, 0.8, methods=("svd",), candidates=4, eval_fn=_penalty_eval("conv2"),
               cache=path)


def test_cache_keeps_every_method_measured_and_measures_only_what_it_lacks(model, tmp_path, monkeypatch):
    import json

    from tflowrank import rank_search

    measured = []
    real = rank_search._layer_curve

    def counting(model, call, method, *args, **kwargs):
        measured.append((call.path, method))
        return real(model, call, method, *args, **kwargs)

    monkeypatch.setattr(rank_search, "_layer_curve", counting)
    path, score = tmp_path / "table.json", _penalty_eval("conv2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "another model, data or settings" between the calls
        warnings.filterwarnings("ignore", message=".*too coarse")
        search(model, None, 0.8, methods=("svd",), candidates=3, eval_fn=score, cache=path)
        first = json.loads(path.read_text())["scores"]
        assert sorted(measured) == [(n, "svd") for n in ("conv1", "conv2", "conv3", "head")]
        measured.clear()
        both = search(model, None, 0.8, methods=("spatial", "svd"), candidates=3, eval_fn=score,
                      cache=path)
        assert sorted(measured) == [(n, "spatial") for n in ("conv1", "conv2", "conv3")]  # svd read
        table = json.loads(path.read_text())["scores"]
        assert all(table[n]["svd"] == first[n]["svd"] for n in first)
        assert sorted(table["conv2"]) == ["spatial", "svd"]
        measured.clear()
        assert search(model, None, 0.8, methods=("spatial", "svd"), candidates=3, eval_fn=score,
                      cache=path) == both
        search(model, None, 0.7, methods=("spatial",), candidates=3, eval_fn=score, cache=path)
        assert measured == []  # every curve asked for is in the table


def test_refit_scores_each_candidate_as_refit_last_factors_builds_it(model, data, tmp_path):
    """With refit, a table score is the score of factorize + refit_last_factors at that rank."""
    import json

    from tflowrank.refit import refit_last_factors

    x = data[0]
    reference = model.predict(x, verbose=0)

    def closeness(candidate):  # minus the mean squared deviation from the original outputs
        return -float(np.mean((candidate.predict(x, verbose=0) - reference) ** 2))

    tables = {}
    for refit in (True, False):
        path = tmp_path / f"table_{refit}.json"
        with warnings.catch_warnings():  # 3 ranks per method: the plan lands 3.2% under
            warnings.simplefilter("ignore")
            search(model, x, 0.5, methods=("spatial", "svd"), candidates=3, eval_fn=closeness,
                   cache=path, refit=refit)
        tables[refit] = json.loads(path.read_text())["scores"]
    checked = better = 0
    for layer, by_method in tables[True].items():
        for method, points in by_method.items():
            for (rank, score), (_, plain) in zip(points[:2], tables[False][layer][method][:2]):
                single = factorize(model, method, rank=rank, layers=[layer])
                assert closeness(single) == pytest.approx(plain, rel=1e-4)
                refitted, rows = refit_last_factors(model, single, x[:256])
                assert closeness(refitted) == pytest.approx(score, rel=1e-4), (layer, method, rank)
                checked += 1
                better += score > plain  # the layer's error falls; the model's usually does too
    assert checked >= 8 and better >= checked / 2, (checked, better)


def test_first_applicable_measures_one_method_per_layer_in_order_of_preference(model, data, tmp_path):
    import json

    path = tmp_path / "table.json"
    with warnings.catch_warnings():  # 3 ranks per layer: the plan may land a few % under
        warnings.simplefilter("ignore")
        plan = search(model, data, 0.5, methods=("spatial", "svd"), candidates=3, cache=path,
                      first_applicable=True)
    measured = {layer: sorted(by_method) for layer, by_method in
                json.loads(path.read_text())["scores"].items()}
    assert measured == {"conv1": ["spatial"], "conv2": ["spatial"], "conv3": ["spatial"],
                        "head": ["svd"]}  # spatial cannot split the Dense head
    assert {e.method for e in plan.factorized} <= {"spatial", "svd"}
    assert all(e.method == "spatial" for e in plan.factorized if e.layer != "head")
    spatial = json.loads(path.read_text())["scores"]["conv2"]["spatial"]
    with warnings.catch_warnings():  # the same table: the svd curves of conv1-conv3 added
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*too coarse")
        search(model, data, 0.5, methods=("spatial", "svd"), candidates=3, cache=path)
    table = json.loads(path.read_text())["scores"]
    assert sorted(table["conv2"]) == ["spatial", "svd"] and table["conv2"]["spatial"] == spatial


def test_a_tuple_of_methods_is_one_tier_of_the_order_of_preference(model, data, tmp_path):
    import json

    from tflowrank.rank_search import _check_methods

    assert _check_methods(("spatial", ("svd", "tucker2", "cp"))) == ("spatial", ("svd", "tucker2", "cp"))
    assert _check_methods(["svd", ["svd", "cp"], ("cp",)]) == ("svd", "cp")  # each name once
    path = tmp_path / "table.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search(model, data, 0.5, methods=("spatial", ("svd", "tucker2", "cp")), candidates=3,
               cache=path, first_applicable=True)
    measured = {layer: sorted(by_method) for layer, by_method in
                json.loads(path.read_text())["scores"].items()}
    assert measured == {"conv1": ["spatial"], "conv2": ["spatial"], "conv3": ["spatial"],
                        "head": ["svd"]}  # tucker2 and cp cannot take the Dense head either
    with warnings.catch_warnings():  # without first_applicable every name competes
        warnings.simplefilter("ignore")
        search(model, data, 0.5, methods=("spatial", ("svd", "cp")), candidates=3, cache=path)
    measured = {layer: sorted(by_method) for layer, by_method in
                json.loads(path.read_text())["scores"].items()}
    assert measured["conv2"] == ["cp", "spatial", "svd"] and measured["head"] == ["svd"]
    for bad in [("svd", ()), ("svd", ("cp", 3)), (("svd", "foo"),), [None]]:
        with pytest.raises(ValueError, match=re.escape(f"Received: methods={bad!r}")):
            search(model, data, 0.5, methods=bad)


# -- errors -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", [0, -0.5, 1.5, True, "half"])
def test_bad_target(model, data, target):
    with pytest.raises(ValueError, match=re.escape(f"Received: target={target!r}")):
        search(model, data, target)


def test_bad_arguments(model, data):
    with pytest.raises(ValueError, match="Received: cost='flops'"):
        search(model, data, 0.5, cost="flops")
    with pytest.raises(ValueError, match="Unknown factorization method.*'foo'"):
        search(model, data, 0.5, methods=("svd", "foo"))
    with pytest.raises(ValueError, match=r"`data` is empty.*\(0, 16, 16, 3\)"):
        search(model, (np.zeros((0, 16, 16, 3), "float32"), np.zeros(0)), 0.5)
    with pytest.raises(ValueError, match="Received: data=None"):
        search(model, None, 0.5)
    with pytest.raises(ValueError, match="Received: candidates=1"):
        search(model, data, 0.5, candidates=1)
    with pytest.raises(TypeError, match="Received: refit='yes'"):
        search(model, data, 0.5, refit="yes")
    with pytest.raises(TypeError, match="Received: first_applicable=1"):
        search(model, data, 0.5, first_applicable=1)
    with pytest.raises(ValueError, match="`refit=True` needs inputs.*data=None"):
        search(model, None, 0.5, methods=("svd",), eval_fn=lambda m: 1.0, refit=True)
    with pytest.raises(ValueError, match="`profile_options` applies to cost='latency' only"):
        search(model, data, 0.5, profile_options={"threads": 2})  # cost='latency': test_latency_table


def test_unreachable_target(model):
    with pytest.raises(ValueError, match="`target`=0.01 cannot be reached"):
        search(model, None, 0.01, methods=("svd",), candidates=2, eval_fn=_penalty_eval("conv2"))


def test_nothing_to_factorize(data):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.DepthwiseConv2D(3, name="dw")(inputs)
    outputs = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, outputs, name="depthwise_only")
    with pytest.raises(ValueError, match="'depthwise_only' has no layer that methods="):
        search(model, data, 0.5)


def test_factorize_with_a_plan_rejects_extra_arguments_and_foreign_plans(model, searched):
    plan, _, _ = searched
    with pytest.raises(ValueError, match="pass no rank, layers, target or multiple_of.*rank=2"):
        factorize(model, plan, rank=2)
    other = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, name="other")])
    with pytest.raises(ValueError, match="was the plan made for another model"):
        factorize(other, plan, data=np.zeros((4, 16, 16, 3), "float32"))
    data_free = dataclasses.replace(plan, entries=[e for e in plan.entries if e.method != "output"])
    assert data_free.factorized
    with pytest.raises(ValueError, match=r"this plan has none \(its methods: .*\)\. Received: "
                                         r"data=ndarray of shape \(4, 16, 16, 3\)"):
        factorize(model, data_free, data=np.zeros((4, 16, 16, 3), "float32"))


def test_public_names():
    assert tflowrank.search is search and tflowrank.CompressionPlan is CompressionPlan
