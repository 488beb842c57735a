"""compress: the one-call pipeline, its report folder, its CLI and its argument errors."""

import importlib.util
import inspect
import json
import statistics

import keras
import numpy as np
import pytest

import tflowrank
from tflowrank import CompressionPlan, compress
from tflowrank.cli import main
from tflowrank.compression import default_feature_distill, default_learning_rate
from tflowrank.tflite_model import inspect_tflite

METHODS = ("spatial", "svd", "output")


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(24, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(4, name="head")(x)
    return keras.Model(inputs, outputs, name="small")


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def data(model):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(640, 12, 12, 3)).astype("float32")
    y = model.predict(x, verbose=0).argmax(-1)  # the model's own labels
    return (x[:512], y[:512]), (x[512:], y[512:])


def _weights(model):
    return [w.copy() for w in model.get_weights()]


@pytest.fixture(scope="module")
def compressed(model, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("compress") / "report"
    before = _weights(model)
    lines = []
    result = compress(model, data[0], data[1], 0.5, finetune_epochs=1, qat=True, output_dir=out,
                      methods=METHODS, candidates=4, search_samples=128, calibration_samples=64,
                      batch_size=64, profile_runs=3, log=lines.append, progress=False)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)  # the user's model is untouched
    return result, out, lines


@pytest.mark.slow
def test_compress_meets_the_target_and_writes_a_complete_report(compressed, model):
    result, out, lines = compressed
    assert result.plan.cost == "macs" and result.plan.factorized
    assert result.macs <= 0.5 * result.baseline_macs * 1.001
    assert result.macs == tflowrank.cost(result.model).macs
    assert result.model is not model
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "report.json", "plan.json", "sensitivity.json", "compressed.keras",
            "model_int8.tflite", "baseline_int8.tflite", "baseline_float32.tflite"} <= names
    if importlib.util.find_spec("matplotlib") is None:  # the plot extra: `make` installs it
        assert any("plots skipped: matplotlib is not installed" in line for line in lines)
    else:
        for png in ("sensitivity.png", "accuracy_vs_macs.png", "ranks.png"):
            assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    for key in ("plan", "baseline_accuracy", "keras_accuracy", "tflite_accuracy", "int8_bytes",
                "int8_median_us", "sensitivity", "frontier", "layers", "seconds", "settings"):
        assert key in report, key
    assert report["settings"]["qat"] is True and report["settings"]["val_samples"] == 128
    # 1 epoch of 8 steps, the last round(0.1 x 8) = 1 of them quantization-aware
    assert report["settings"]["qat_epochs"] == 0.1
    kept = result.macs / result.baseline_macs
    assert report["settings"]["learning_rate"] == default_learning_rate(kept)
    assert kept > 1 / 6 and report["settings"]["feature_distill"] == default_feature_distill(kept) == 0.3
    assert len(report["history"]["float"]["loss"]) == 1 and len(report["history"]["qat"]["loss"]) == 1
    assert any(line == "quantization-aware training: 0.125 epoch(s)" for line in lines)
    rate = f"{default_learning_rate(kept):g}"
    names = ", ".join(entry.layer for entry in result.plan.factorized)
    assert any(line.startswith("fine-tune: ") and line.endswith(
        f"peak learning rate {rate} (matching the input model's {names} x 0.3)") for line in lines)
    assert f"(Adam, peak learning rate {rate})" in (out / "report.md").read_text()
    assert "the last 0.1 epoch(s) of it quantization-aware" in (out / "report.md").read_text()
    assert report["settings"]["refit"] is True and report["settings"]["first_applicable"] is False
    refitted = {row["layer"]: row for row in report["refit"]}
    assert set(refitted) == {entry.layer for entry in result.plan.factorized}
    for row in refitted.values():
        if row["applied"]:
            assert row["error_after"] < row["error_before"]
            assert any(line.startswith(f"refit {row['layer']}: response error") for line in lines)
    if any(row["applied"] for row in refitted.values()):
        assert "Last factors refitted to the input model's responses" in (out / "report.md").read_text()
    assert CompressionPlan.load(out / "plan.json") == result.plan
    assert {c["layer"] for c in report["sensitivity"]["curves"]} == {"conv1", "conv2", "conv3", "head"} & {
        e.layer for e in result.plan.entries}
    assert any(p["target"] == 0.5 for p in report["frontier"])
    text = (out / "report.md").read_text()
    for part in ("## Result", "## Plan", "top-1 int8 TFLite"):
        assert part in text
    for entry in result.plan.factorized:
        assert f"| {entry.layer} | {entry.method} |" in text
    info = inspect_tflite((out / "model_int8.tflite").read_bytes())
    assert info.is_fully_int8
    assert result.export.size_bytes < result.baseline_float32_bytes
    assert abs(result.tflite_accuracy - result.keras_accuracy) <= 0.05
    assert result.profile.inference_median_us > 0 and result.speedup > 0
    for timed in (result.profile, result.baseline_profile):  # 5 rounds of 3 runs, in fresh processes
        assert (timed.repeats, timed.runs, len(timed.repeat_medians_us)) == (5, 15, 5)
        assert timed.inference_median_us == statistics.median(timed.repeat_medians_us)
    assert report["profiles"]["compressed"]["repeats"] == 5
    assert ("Host latency: the median of 3 runs, over 5 rounds alternating the two files, each in a "
            "fresh process for the in-process runner (median of the rounds) (litert-python, 1 thread(s))."
            in text) and "of the budget" not in text
    spread = (f"The rounds ranged {min(result.baseline_profile.repeat_medians_us):.1f}-"
              f"{max(result.baseline_profile.repeat_medians_us):.1f} us (baseline), "
              f"{min(result.profile.repeat_medians_us):.1f}-{max(result.profile.repeat_medians_us):.1f} us "
              "(compressed).")
    assert spread in text
    assert any(line.startswith("Compression plan") for line in lines)
    assert "top-1 int8 TFLite" in str(result)


@pytest.mark.slow
def test_a_second_target_reuses_the_sensitivity_table(compressed, model, data, tmp_path):
    result, out, _ = compressed
    table = (out / "sensitivity.json").read_text()
    other = compress(model, data[0], data[1], 0.7, finetune_epochs=0, qat=False,
                     output_dir=tmp_path / "again", cache=out / "sensitivity.json", methods=METHODS,
                     candidates=4, search_samples=128, calibration_samples=64, profile_runs=3,
                     log=None, progress=False)
    assert (out / "sensitivity.json").read_text() == table  # not measured again
    assert other.plan.baseline_score == result.plan.baseline_score
    assert other.macs <= 0.7 * other.baseline_macs * 1.001 and other.macs > result.macs
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["settings"]["qat"] is False and again["settings"]["refit"] is True
    assert again["settings"]["feature_distill"] == 0.0  # no fine-tuning: no hints, whatever the depth
    assert {row["layer"] for row in again["refit"]} == {e.layer for e in other.plan.factorized}


def test_the_report_draws_the_curves_of_its_own_search_only(compressed, model):
    """A shared table may hold other searches' curves; the report shows what this search chose from."""
    from tflowrank.compression import _sensitivity

    result, out, _ = compressed
    table = out / "sensitivity.json"
    assert {c["method"] for c in _sensitivity(model, table, result.plan, METHODS, False)["curves"]} == set(
        METHODS)
    spatial = _sensitivity(model, table, result.plan, ("spatial",), False)["curves"]
    assert {(c["layer"], c["method"]) for c in spatial} == {(n, "spatial") for n in ("conv1", "conv2", "conv3")}
    tiers = _sensitivity(model, table, result.plan, ("spatial", ("svd", "output")), True)["curves"]
    assert {(c["layer"], c["method"]) for c in tiers} == {
        *((n, "spatial") for n in ("conv1", "conv2", "conv3")), ("head", "svd")}  # output: Conv2D only


@pytest.mark.slow
def test_the_search_scores_on_every_search_sample(model, data, tmp_path):
    """More than search's own default bound of 1,000: the first 1,000 samples carry the model's
    own labels and the last 200 wrong ones, so the baseline score tells how many were used."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1200, 12, 12, 3)).astype("float32")
    y = model.predict(x, verbose=0).argmax(-1)
    y[1000:] = (y[1000:] + 1) % 4
    result = compress(model, data[0], data[1], 0.5, finetune_epochs=0, qat=False,
                      output_dir=tmp_path, methods=("spatial",), candidates=2,
                      search_data=(x, y), search_samples=1200, calibration_samples=64,
                      profile_runs=3, log=None, progress=False)
    assert result.plan.baseline_score == pytest.approx(1000 / 1200)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["settings"]["search_samples"] == 1200


@pytest.mark.slow
def test_cli_compress_writes_the_report(model, data, tmp_path, capsys):
    path = tmp_path / "small.keras"
    model.save(path)
    (xt, yt), (xv, yv) = data
    np.savez(tmp_path / "data.npz", x_train=xt, y_train=yt, x_test=xv, y_test=yv)
    status = main(["compress", str(path), "--data", str(tmp_path / "data.npz"), "--target", "0.6",
                   "-o", str(tmp_path / "out"), "--epochs", "1", "--no-qat", "--no-refit",
                   "--methods", "spatial,svd", "--learning-rate", "1e-3", "--seed", "3",
                   "--candidates", "3", "--search-samples", "200", "--feature-distill", "0.5",
                   "--runs", "3"])
    assert status == 0
    printed = capsys.readouterr()
    assert "top-1 int8 TFLite" in printed.out and "report:" in printed.out
    assert (tmp_path / "out" / "report.md").is_file() and (tmp_path / "out" / "model_int8.tflite").is_file()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["settings"]["refit"] is False and report["settings"]["qat"] is False
    assert report["settings"]["learning_rate"] == 1e-3 and report["settings"]["seed"] == 3
    assert report["settings"]["search_samples"] == 200 and report["settings"]["feature_distill"] == 0.5
    assert report["refit"] == []


@pytest.mark.parametrize("flag", ["--search-samples", "--train-samples", "--val-samples"])
def test_cli_compress_rejects_a_sample_count_below_one(flag, tmp_path, capsys):
    status = main(["compress", str(tmp_path / "absent.keras"), "--data", str(tmp_path / "absent.npz"),
                   "--target", "0.5", "-o", str(tmp_path / "out"), flag, "0"])
    assert status != 0
    assert f"{flag} must be at least 1; received 0." in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_compress_in_latency_plans_on_measured_latencies(model, data, tmp_path, monkeypatch):
    """cost="latency" end to end, with a stand-in converter and timer for the latency table: the
    whole model 'takes' 1000 us, each candidate layer 100 us, a chain 20 us + its rank."""
    from tflowrank import latency_table

    def run_worker(jobs, folder, on_done=None):  # chains: a text file holding their latency
        for job, _ in jobs:
            rank = job["layer"]["config"].get("rank")
            us = 100.0 if rank is None else 20.0 + (sum(rank) if isinstance(rank, list) else rank)
            (folder / job["file"]).write_text(str(us))

    def time(paths, options, report):  # the whole model is a real .tflite, exported here
        return [[1000.0 if open(p, "rb").read(8)[4:] == b"TFL3" else float(open(p).read())] * 5
                for p in paths]

    monkeypatch.setattr(latency_table, "_run_worker", run_worker)
    monkeypatch.setattr(latency_table, "_time", time)
    out = tmp_path / "latency"
    result = compress(model, data[0], data[1], 0.8, cost="latency", finetune_epochs=1, qat=False,
                      output_dir=out, methods=("spatial", "svd"), candidates=3, search_samples=128,
                      calibration_samples=64, batch_size=64, profile_runs=3, log=None, progress=False)
    plan = result.plan
    assert plan.cost == "latency" and plan.total_before == 1000.0 and plan.factorized
    assert plan.total_after <= 800.0
    for entry in plan.factorized:  # the stand-in's figures, not MACs
        rank = sum(entry.rank) if isinstance(entry.rank, tuple) else entry.rank
        assert entry.cost_before == 100.0 and entry.cost_after == 20.0 + rank
    assert (out / "sensitivity.latency.json").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["frontier"] == []  # other targets would time new chains: not in the report
    assert CompressionPlan.load(out / "plan.json") == plan
    assert result.macs < result.baseline_macs and result.profile.inference_median_us > 0
    measured = result.profile.inference_median_us / result.baseline_profile.inference_median_us
    assert (f"Measured: {measured:.3f} of the baseline's latency, {measured / 0.8:.2f} of the budget "
            "(0.8 of the baseline).") in (out / "report.md").read_text()


def test_cli_compress_names_missing_arrays(model, tmp_path, capsys):
    path = tmp_path / "small.keras"
    model.save(path)
    np.savez(tmp_path / "data.npz", x=np.zeros((2, 12, 12, 3)))
    assert main(["compress", str(path), "--data", str(tmp_path / "data.npz"), "--target", "0.5",
                 "-o", str(tmp_path / "out")]) == 2
    assert "lacks the arrays x_test, x_train, y_test, y_train" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, message", [
    ({"target": 0}, r"`target` .* \(0, 1\]\. Received: target=0"),
    ({"target": 1.5}, r"Received: target=1\.5"),
    ({"cost": "joules"}, r"`cost` must be one of .* Received: cost='joules'"),
    ({"finetune_epochs": -1}, r"`finetune_epochs` must be an integer >= 0\. Received: finetune_epochs=-1"),
    ({"finetune_epochs": 0}, r"qat=True .* needs finetune_epochs >= 1"),
    ({"qat": "yes"}, r"`qat` must be True or False\. Received: qat='yes'"),
    ({"qat_epochs": 0}, r"`qat_epochs` must be a number in \(0, finetune_epochs=2\]\. Received: qat_epochs=0"),
    ({"qat_epochs": 2.5}, r"`qat_epochs` must be .* Received: qat_epochs=2\.5"),
    ({"qat_epochs": True}, r"`qat_epochs` must be .* Received: qat_epochs=True"),
    ({"val_data": (np.zeros((0, 12, 12, 3)), np.zeros(0))}, r"`val_data` is empty"),
    ({"train_data": np.zeros((4, 12, 12, 3))}, r"`train_data` must be a pair \(x, y\)"),
    ({"export": "model.bin"}, r"`export` must be a \.tflite file name\. Received: export='model.bin'"),
    ({"learning_rate": 0}, r"`learning_rate` must be a number > 0 or None\. Received: learning_rate=0"),
    ({"learning_rate": "fast"}, r"`learning_rate` must be .* Received: learning_rate='fast'"),
    ({"distill": 1}, r"`distill` must be True or False\. Received: distill=1"),
    ({"refit": "yes"}, r"`refit` must be True or False\. Received: refit='yes'"),
    ({"profile_repeats": 0}, r"`profile_repeats` must be an integer >= 1\. Received: profile_repeats=0"),
    ({"methods": 5}, r"`methods` must be a non-empty list .* Received: methods=5"),
    ({"methods": ("svd", ())}, r"Received: methods=\('svd', \(\)\)"),
    ({"methods": ("svd", "foo")}, r"Unknown factorization method\(s\) 'foo'.* Received: methods=\('svd', 'foo'\)"),
])
def test_bad_arguments_are_named(model, data, tmp_path, kwargs, message):
    args = {"train_data": data[0], "val_data": data[1], "target": 0.5, **kwargs}
    with pytest.raises((ValueError, TypeError), match=message):
        compress(model, output_dir=tmp_path / "out", log=None, **args)
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_model_with_nothing_to_factorize_is_refused(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.DepthwiseConv2D(3, name="dw")(inputs)
    outputs = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, outputs)
    x = np.zeros((8, 8, 8, 3), "float32")
    y = np.zeros(8, "int64")
    with pytest.raises(ValueError, match="has no layer that methods=.* can factorize"):
        compress(model, (x, y), (x, y), 0.5, output_dir=tmp_path / "out", log=None, progress=False)


def test_the_default_methods_follow_the_depth_of_the_cut():
    from tflowrank.compression import DEEP_CUT_METHODS, DEFAULT_METHODS, default_methods

    assert DEFAULT_METHODS == ("spatial", ("svd", "tucker2", "cp"))
    assert DEEP_CUT_METHODS == (("spatial", "svd", "tucker2", "cp"),)
    assert default_methods(1.0) == default_methods(1 / 3) == default_methods(0.26) == DEFAULT_METHODS
    assert default_methods(0.25) == default_methods(0.2) == default_methods(0.125) == DEEP_CUT_METHODS


@pytest.mark.parametrize("target, expected", [(0.5, "DEFAULT_METHODS"), (0.2, "DEEP_CUT_METHODS")])
def test_compress_searches_the_default_methods_of_its_target(model, data, tmp_path, monkeypatch, target,
                                                              expected):
    from tflowrank import compression

    searched = _searched_with(monkeypatch)
    with pytest.raises(searched) as caught:
        compress(model, data[0], data[1], target, output_dir=tmp_path / "out", log=None, progress=False)
    assert caught.value.args == (getattr(compression, expected), True)


def _searched_with(monkeypatch):
    """Replace ``search`` by one that raises with the methods and tiers ``compress`` handed it."""
    from tflowrank import rank_search

    class Searched(Exception):
        pass

    def search(model, data, target, **kwargs):
        raise Searched(kwargs["methods"], kwargs["first_applicable"])

    monkeypatch.setattr(rank_search, "search", search)
    return Searched


@pytest.mark.parametrize("methods, first_applicable", [
    (("spatial", "svd"), False), (("spatial", ("svd", "tucker2", "cp")), True),
    ([["spatial"], ["svd"]], True)])
def test_methods_with_a_tuple_of_names_are_an_order_of_preference(model, data, tmp_path, monkeypatch,
                                                                  methods, first_applicable):
    searched = _searched_with(monkeypatch)
    with pytest.raises(searched) as caught:
        compress(model, data[0], data[1], 0.5, methods=methods, output_dir=tmp_path / "out", log=None,
                 progress=False)
    assert caught.value.args == (methods, first_applicable)


@pytest.mark.parametrize("flags, methods, first_applicable", [
    (["--methods", "spatial, svd"], ["spatial", "svd"], False),
    (["--methods", "spatial", "--methods", "svd,tucker2,cp"], [("spatial",), ("svd", "tucker2", "cp")], True),
    (["--methods", "spatial", "--methods", "svd"], [("spatial",), ("svd",)], True)])
def test_cli_methods_given_again_are_an_order_of_preference(model, tmp_path, monkeypatch, capsys, flags,
                                                            methods, first_applicable):
    searched = _searched_with(monkeypatch)
    path, data = _cli_files(model, tmp_path)
    with pytest.raises(searched) as caught:
        main(["compress", path, "--data", data, "--target", "0.5", "-o", str(tmp_path / "out")] + flags)
    assert caught.value.args == (methods, first_applicable)


def test_cli_help_states_the_default_methods(capsys):
    with pytest.raises(SystemExit):
        main(["compress", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("given again, an order of preference: each layer takes the first --methods that can "
            "factorize it (--methods spatial --methods svd,tucker2,cp)") in text
    assert ("default: spatial where it applies, svd elsewhere; svd, tucker2 and cp competing for a "
            "Conv1D; when --target is 0.25 or less, spatial, svd, tucker2 and cp all competing") in text
    assert "--qat-epochs" in text and "(default 0.1)" in text
    assert ("--learning-rate LEARNING_RATE the fine-tuning's peak learning rate (Adam, one cosine "
            "decay; default: 2e-3 when the model keeps more than a quarter of its MACs, 4e-3 below)") in text


def _cli_files(model, tmp_path):
    """``model`` saved and four blank images as a .npz, for ``tflowrank compress``: their paths."""
    model.save(tmp_path / "small.keras")
    x = np.zeros((4, 12, 12, 3), "float32")
    np.savez(tmp_path / "data.npz", x_train=x, y_train=np.zeros(4), x_val=x, y_val=np.zeros(4))
    return str(tmp_path / "small.keras"), str(tmp_path / "data.npz")


def test_cli_compress_names_a_bad_learning_rate(model, tmp_path, capsys):
    path, data = _cli_files(model, tmp_path)
    assert main(["compress", path, "--data", data, "--target", "0.5",
                 "-o", str(tmp_path / "out"), "--learning-rate", "-0.1"]) == 2
    assert "Received: learning_rate=-0.1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_quantization_aware_epoch_continues_the_cosine_schedule():
    from tflowrank.compression import _shifted_cosine

    first = _shifted_cosine(keras, 2e-3, 100, 0)
    second = _shifted_cosine(keras, 2e-3, 100, 50)  # entered half-way: the second of two epochs
    assert float(first(0)) == pytest.approx(2e-3)
    assert float(first(50)) == pytest.approx(1e-3) == pytest.approx(float(second(0)))
    assert float(second(50)) == pytest.approx(0.0, abs=1e-12)
    assert float(second(80)) == pytest.approx(0.0, abs=1e-12)  # held at 0 beyond the end


def test_fine_tuning_steps_cover_each_epoch_once_and_the_quantization_aware_tail_continues():
    from tflowrank.compress_data import permuted_batches
    from tflowrank.compression import _fit

    batches = permuted_batches(10, 4, 2, np.random.default_rng(0))
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    for epoch in (batches[:3], batches[3:]):  # each epoch: every sample exactly once
        assert sorted(np.concatenate(epoch).tolist()) == list(range(10))
    assert not np.array_equal(np.concatenate(batches[:3]), np.concatenate(batches[3:]))

    x = np.random.default_rng(1).normal(size=(10, 3)).astype("float32")
    y = np.arange(10) % 2
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    schedule = (1e-2, len(batches), 3)
    # 5 float steps: one value for epoch 1 (3 steps), one for the 2 steps of epoch 2
    read = []

    def batch(i):
        read.append(i)
        return x[batches[i]], y[batches[i]]

    history = _fit(model, batch, 0, 5, schedule, loss, keras)
    assert len(history["loss"]) == 2 and int(model.optimizer.iterations) == 5
    tail = _fit(model, batch, 5, 1, schedule, loss, keras)
    assert sorted(set(read)) == list(range(6))  # every step read, none beyond the last
    assert len(tail["loss"]) == 1 and int(model.optimizer.iterations) == 1
    # after its one step the tail is at step 6 of 6, the decay's end (a restart: 0.0093)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)


def test_the_default_learning_rate_follows_the_depth_of_the_cut():
    assert default_learning_rate(1.0) == default_learning_rate(1 / 3) == 2e-3
    assert default_learning_rate(0.2501) == 2e-3
    assert default_learning_rate(0.25) == default_learning_rate(1 / 8) == 4e-3
    assert default_learning_rate(0.0) == 4e-3


def test_the_default_feature_hints_follow_the_depth_of_the_cut():
    assert default_feature_distill(1.0) == default_feature_distill(1 / 3) == 0.3
    assert default_feature_distill(1 / 5) == default_feature_distill(0.1667) == 0.3
    assert default_feature_distill(1 / 6) == default_feature_distill(1 / 8) == 0.0
    assert default_feature_distill(0.0) == 0.0


def test_the_positional_parameters_are_the_issue_contract():
    parameters = inspect.signature(compress).parameters
    assert list(parameters)[:8] == ["model", "train_data", "val_data", "target", "cost",
                                    "finetune_epochs", "qat", "export"]
    assert parameters["qat_epochs"].kind is inspect.Parameter.KEYWORD_ONLY


def _softmax_model(loss):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(24, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(4, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs, name="softmax_head")
    model.compile(optimizer="adam", loss=loss)  # a loss name, as most Keras code compiles
    return model


@pytest.mark.slow
def test_a_softmax_model_compiled_with_a_loss_name_compresses_with_hints_and_qat(data, tmp_path):
    (x, _), (x_val, _) = data
    model = _softmax_model("sparse_categorical_crossentropy")
    y, y_val = (model.predict(v, verbose=0).argmax(-1) for v in (x, x_val))
    result = compress(model, (x, y), (x_val, y_val), 0.5, finetune_epochs=1, feature_distill=0.3,
                      output_dir=tmp_path / "out", candidates=3, search_samples=128,
                      calibration_samples=64, batch_size=64, profile_runs=3, profile_repeats=1,
                      log=None, progress=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["settings"]["feature_distill"] == 0.3 and "qat" in report["history"]
    assert result.export.ops["SOFTMAX"] == 1 and inspect_tflite(result.export.path).is_fully_int8
    assert result.tflite_accuracy > 0.5  # its own labels, 4 classes


def test_labels_that_do_not_fit_the_loss_are_refused_before_any_work(data, tmp_path):
    (x, y), (x_val, y_val) = data
    model = _softmax_model("categorical_crossentropy")  # one-hot rows expected, indices given
    with pytest.raises(ValueError, match=r"The fine-tuning loss 'categorical_crossentropy' does not "
                                         r"fit the labels of `train_data` \(shape \(None,\), dtype "
                                         r"int64\) and the model's outputs \(shape \(None, 4\)\)"):
        compress(model, (x, y), (x_val, y_val), 0.5, output_dir=tmp_path / "out", log=None)
    with pytest.raises(ValueError, match=r"`loss` must be a Keras loss .* Received: loss='nonsense'"):
        compress(model, (x, y), (x_val, y_val), 0.5, loss="nonsense", output_dir=tmp_path / "out",
                 log=None)
    assert not (tmp_path / "out").exists()  # refused before the search wrote anything
    one_hot = np.eye(4, dtype="float32")
    compress(model, (x[:64], one_hot[y[:64]]), (x_val[:32], one_hot[y_val[:32]]), 0.5,
             finetune_epochs=1, qat=False, candidates=2, search_samples=32, calibration_samples=16,
             profile_runs=2, profile_repeats=1, output_dir=tmp_path / "one_hot", log=None,
             progress=False)  # the compiled loss with the labels it expects passes the check
