"""The latency table (keys, cache on disk, corrupt files) and search(cost="latency")."""

import json
import re
import warnings

import keras
import numpy as np
import pytest

from tflowrank import cost, factorize, latency_table, search
from tflowrank.graph import layer_calls
from tflowrank.latency_table import Chain, LatencyTable, LayerLatencies, latency_ranks, neighbours
from tflowrank.layers import SpatialConv2D, SVDConv2D


def _calls(model):
    return {call.path: call for call in layer_calls(model)}


@pytest.fixture(scope="module")
def small():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 4))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="head")(x))


# -- the table, with a stand-in converter and timer ----------------------------------------------

@pytest.fixture
def fake(monkeypatch):
    """Conversions counted (no TensorFlow converter): each 'model' file holds the latency the
    stand-in timer reads back, 10 us plus the rank (0 for the layer itself)."""
    batches = []

    def run_worker(jobs, folder, on_done=None):
        batches.append(len(jobs))
        for job, _ in jobs:
            rank = job["layer"]["config"].get("rank", 0)
            us = 10.0 + (sum(rank) if isinstance(rank, list) else rank)
            (folder / job["file"]).write_text(str(us))

    def time(paths, options, report):
        return [[float(open(p).read())] * latency_table._ROUNDS for p in paths]

    monkeypatch.setattr(latency_table, "_run_worker", run_worker)
    monkeypatch.setattr(latency_table, "_time", time)
    return batches


def test_second_lookup_converts_nothing_and_the_file_round_trips(small, fake, tmp_path):
    call = _calls(small)["conv"]
    path = tmp_path / "latency.json"
    table = LatencyTable(path)
    chains = [Chain(call.layer, call.input_shape), Chain(call.layer, call.input_shape, SpatialConv2D, 3),
              Chain(call.layer, call.input_shape, SpatialConv2D, 3)]  # asked twice, measured once
    assert table.lookup(chains) == [10.0, 13.0, 13.0]
    assert fake == [2]
    assert table.lookup(chains[1:]) == [13.0, 13.0] and fake == [2]
    again = LatencyTable(path)  # from the file
    assert again.lookup(chains) == [10.0, 13.0, 13.0] and fake == [2]
    data = json.loads(path.read_text())
    assert data["format"] == 1 and len(data["entries"]) == 2
    entry = next(e for e in data["entries"].values() if "SpatialConv2D" in e["what"])
    assert entry["us"] == 13.0 and entry["dtype"] == "int8" and len(entry["rounds_us"]) == latency_table._ROUNDS
    # a third chain is added to the file, the others kept
    LatencyTable(path).lookup([Chain(call.layer, call.input_shape, SVDConv2D, 2)])
    assert fake == [2, 1] and len(json.loads(path.read_text())["entries"]) == 3


def test_key_follows_what_changes_latency(small):
    conv = _calls(small)["conv"]
    table = LatencyTable()
    key = table._key
    base = key(Chain(conv.layer, conv.input_shape, SpatialConv2D, 3))
    assert key(Chain(conv.layer, conv.input_shape, SpatialConv2D, 3)) == base
    assert key(Chain(conv.layer, conv.input_shape, SpatialConv2D, 4)) != base
    assert key(Chain(conv.layer, conv.input_shape, SVDConv2D, 3)) != base
    assert key(Chain(conv.layer, conv.input_shape)) != base
    assert key(Chain(conv.layer, (None, 16, 12, 4), SpatialConv2D, 3)) != base
    assert LatencyTable(dtype="float32")._key(Chain(conv.layer, conv.input_shape, SpatialConv2D, 3)) != base
    assert LatencyTable(profile_options={"threads": 2})._key(
        Chain(conv.layer, conv.input_shape, SpatialConv2D, 3)) != base
    # how long it is measured is not what is measured; neither is the layer's name
    assert LatencyTable(profile_options={"runs": 7})._key(
        Chain(conv.layer, conv.input_shape, SpatialConv2D, 3)) == base
    renamed = keras.layers.Conv2D.from_config({**conv.layer.get_config(), "name": "other"})
    assert key(Chain(renamed, conv.input_shape, SpatialConv2D, 3)) == base
    assert table.settings()["machine"]["node"]


def test_corrupt_file_warns_and_measures_again(small, fake, tmp_path):
    call = _calls(small)["conv"]
    path = tmp_path / "latency.json"
    path.write_text("{not json")
    with pytest.warns(UserWarning, match="latency cache .* is unreadable"):
        table = LatencyTable(path)
    assert table.lookup([Chain(call.layer, call.input_shape)]) == [10.0] and fake == [1]
    assert len(json.loads(path.read_text())["entries"]) == 1
    path.write_text(json.dumps({"format": 99, "entries": {}}))
    with pytest.warns(UserWarning, match="not a tflowrank latency table"):
        LatencyTable(path)


def test_ranks_measured_and_interpolation(small):
    call = _calls(small)["conv"]
    ranks = latency_ranks(call, SpatialConv2D, [1, 2, 3, 4, 5, 6, 7])
    assert ranks[:4] == [1, 3, 5, 7]  # 4 spread over those given
    top = ranks[-1]  # and the largest that costs fewer MACs than the layer
    macs = SpatialConv2D.macs_for(call.layer, top, call.input_shape)
    original = cost(small).layers[0].macs
    assert macs < original <= SpatialConv2D.macs_for(call.layer, top + 1, call.input_shape)
    table = LayerLatencies(100.0, {"conv": 50.0}, {("conv", SpatialConv2D): {2: 20.0, 6: 40.0}})
    assert table.fixed == 50.0
    assert table.chain(call, SpatialConv2D, 4) == pytest.approx(30.0)  # linear in MACs
    assert table.chain(call, SpatialConv2D, 1) == 20.0 and table.chain(call, SpatialConv2D, 7) == np.inf


def test_neighbours_are_ranks_a_plan_can_take(small):
    call = _calls(small)["conv"]
    original = cost(small).layers[0].macs
    near = neighbours(call, SpatialConv2D, 4)
    assert near[0] == 4 and len(near) >= 3 and len(set(near)) == len(near)
    assert all(SpatialConv2D.macs_for(call.layer, r, call.input_shape) < original for r in near)
    assert all(r % 2 == 0 for r in neighbours(call, SpatialConv2D, 4, multiple_of=2))


def test_refine_measures_around_the_chosen_ranks_once(small, fake, tmp_path):
    call = _calls(small)["conv"]
    latencies = LayerLatencies(100.0, {"conv": 50.0}, {("conv", SpatialConv2D): {2: 12.0, 6: 40.0}})
    assert latencies.chain(call, SpatialConv2D, 4) == pytest.approx(26.0)
    assert latencies.measured().chain(call, SpatialConv2D, 4) == np.inf
    table = LatencyTable(tmp_path / "latency.json")
    near = [r for r in neighbours(call, SpatialConv2D, 4) if r not in (2, 6)]
    assert latencies.refine(table, [(call, SpatialConv2D, 4)]) == len(near) and fake == [len(near)]
    assert latencies.chain(call, SpatialConv2D, 4) == 14.0  # measured: the stand-in's 10 + rank
    assert latencies.measured().chain(call, SpatialConv2D, 4) == 14.0
    assert latencies.refine(table, [(call, SpatialConv2D, 4)]) == 0 and fake == [len(near)]


def test_bad_arguments(small, tmp_path):
    data = (np.zeros((4, 12, 12, 4), "float32"), np.zeros(4, int))
    cases = [
        (dict(latency_dtype="int4"), ValueError, "Received: latency_dtype='int4'"),
        (dict(profile_options={"target": "micro"}), ValueError, "Received: target='micro'"),
        (dict(profile_options={"threads": 0}), ValueError, "Received: threads=0"),
        (dict(profile_options={"peak_memory": True}), ValueError, "unknown or unsupported keys ['peak_memory']"),
        (dict(profile_options=["host"]), TypeError, "Received: profile_options=['host']"),
        (dict(profile_options={"target": "android"}), ValueError, "Received: benchmark_binary=None"),
        (dict(latency_cache=3), TypeError, "Received: latency_cache=3"),
        (dict(latency_cache=tmp_path / "missing" / "t.json"), ValueError, "folder of `latency_cache`"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=re.escape(message)):
            search(small, data, 0.5, cost="latency", **kwargs)
    with pytest.raises(ValueError, match=re.escape("`latency_cache` applies to cost='latency' only")):
        search(small, data, 0.5, latency_cache=tmp_path / "t.json")


# -- search(cost="latency") for real --------------------------------------------------------------

def _wide():
    """Two convolutions wide enough that a factorized chain runs faster, also on a host whose
    int8 kernels are fast enough for fixed costs to weigh (AVX-512 VNNI: at 12 x 12 x 16 -> 48 the
    cheapest chains kept 0.79 of the latency); the output is a GAP."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 32))
    x = keras.layers.Conv2D(96, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(10, 3, padding="same", name="conv2")(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="gap")(x), name="wide")


@pytest.fixture(scope="module")
def latency_search(tmp_path_factory):
    model = _wide()
    x = np.random.default_rng(0).normal(size=(64, 16, 16, 32)).astype("float32")
    data = (x, model.predict(x, verbose=0).argmax(-1))
    folder = tmp_path_factory.mktemp("latency")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = search(model, data, 0.6, cost="latency", methods=("svd",), candidates=3,
                      cache=folder / "sensitivity.json", progress=False)
    return model, data, folder, plan, [str(w.message) for w in caught]


@pytest.mark.slow
@pytest.mark.timing
def test_latency_plan_meets_the_budget(latency_search):
    model, data, folder, plan, caught = latency_search
    assert plan.cost == "latency" and plan.target == 0.6
    # the plan never exceeds the budget of its own measured figures; how far below it lands
    # depends on the timings (int8 chains run in steps of 8 channels here, a busy machine), so
    # no lower bound: within the 3% tolerance, or search says it could not land there (the
    # landing on a real model is measured by bench/latency_budget.py, not tested)
    assert 0 < plan.total_after <= 0.6 * plan.total_before
    landed = plan.total_after >= 0.6 * 0.97 * plan.total_before
    assert landed or any("too coarse to land within 3%" in m for m in caught), (plan, caught)
    assert plan.factorized and all(e.method == "svd" for e in plan.factorized)
    assert all(e.cost_after < e.cost_before for e in plan.factorized)
    # the plan's costs are measured ones, not interpolated
    table = json.loads((folder / "sensitivity.latency.json").read_text())["entries"]
    measured = {entry["us"] for entry in table.values()}
    assert plan.total_before in measured
    assert all(e.cost_after in measured and e.cost_before in measured for e in plan.entries)
    assert plan.total_after == pytest.approx(plan.total_before + sum(
        e.cost_after - e.cost_before for e in plan.entries))
    new = factorize(model, plan)
    assert cost(new).macs < cost(model).macs
    assert "us before" in str(plan)


@pytest.mark.slow
@pytest.mark.timing
def test_latency_cache_gives_the_same_plan_without_converting(latency_search, monkeypatch):
    model, data, folder, plan, _ = latency_search

    def no_conversion(*args, **kwargs):
        raise AssertionError("the latency table was not reused")

    monkeypatch.setattr(latency_table, "_run_worker", no_conversion)
    monkeypatch.setattr(latency_table, "_time", no_conversion)
    monkeypatch.setattr("tflowrank.export.export_tflite", no_conversion)
    again = search(model, data, 0.6, cost="latency", methods=("svd",), candidates=3,
                   cache=folder / "sensitivity.json")
    assert again == plan  # every figure read back from the two tables: nothing converted or timed
