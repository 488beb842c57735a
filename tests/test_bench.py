"""Benchmark and example scripts still run (their figures are not tested)."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tflowrank.datasets import fashion_mnist_source

BENCH = Path(__file__).resolve().parents[1] / "bench"
needs_fashion_mnist = pytest.mark.skipif(
    fashion_mnist_source() == "subset shipped with tflowrank",
    reason="the benchmarks refuse to run without the full Fashion-MNIST")


@pytest.mark.slow
def test_chain_speedup_quick_mode_writes_its_json(tmp_path):
    out = tmp_path / "chain.json"
    result = subprocess.run(
        [sys.executable, str(BENCH / "chain_speedup.py"), "--quick", "--channels", "32",
         "--size", "14", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["rows"], report
    for row in report["rows"]:
        assert row["mac_ratio"] > 1
        for dtype in ("float32", "int8"):
            assert row[dtype]["ops_baseline"] == {"CONV_2D": 4}
            assert row[dtype]["ops_factorized"] == {"CONV_2D": 8}
            assert row[dtype]["baseline_ms"] > 0 and row[dtype]["factorized_ms"] > 0
    assert "realised" in result.stdout or "share" in result.stdout


@pytest.mark.slow
def test_compress_example_runs(tmp_path):
    example = BENCH.parent / "examples" / "compress_fashion_cnn.py"
    result = subprocess.run(
        [sys.executable, str(example), "--epochs", "1", "--train-samples", "1024",
         "--output", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "small_int8.tflite").is_file()
    assert "top-1: Keras" in result.stdout and "CONV_2D x7" in result.stdout


@pytest.mark.slow
@needs_fashion_mnist
def test_methods_quick_mode_writes_its_json(tmp_path):
    out = tmp_path / "methods.json"
    result = subprocess.run(
        [sys.executable, str(BENCH / "methods.py"), "--quick", "--no-latency", "--methods",
         "spatial,cp", "--test-images", "500", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["complete"] and [r["method"] for r in report["rows"]] == ["spatial", "cp"]
    for row in report["rows"]:
        assert row["status"] == "ok" and row["n_layers"] == 3
        assert 2.5 < row["layer_mac_ratio"] < 3.5 and 0 < row["error_mean"] < 1
        assert 0.1 < row["top1"] <= 1 and row["factorize_seconds"] > 0


@pytest.mark.slow
@needs_fashion_mnist
def test_training_quick_mode_writes_its_json(tmp_path):
    out = tmp_path / "training.json"
    result = subprocess.run(
        [sys.executable, str(BENCH / "training.py"), "--quick", "--rows", "scheduled", "--json",
         str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    rows = {row["row"]: row for row in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["baseline", "scheduled + QAT"]  # two of the four rows: suite time
    assert 2.9 < rows["baseline"]["macs"] / rows["scheduled + QAT"]["macs"] < 3.1  # 1/3, within 2%
    for row in rows.values():
        assert row["int8_top1"] > 0.7 and row["agreement"] > 0.9
        assert set(row["int8_ops"]) >= {"CONV_2D", "FULLY_CONNECTED"}
    assert "scheduled + QAT" in result.stdout and "QAT epoch / plain epoch" not in result.stdout


@pytest.mark.slow
@needs_fashion_mnist
def test_profile_overhead_quick_mode_writes_its_json(tmp_path):
    pytest.importorskip("tflite_micro")
    out = tmp_path / "profile.json"
    result = subprocess.run(
        [sys.executable, str(BENCH / "profile_overhead.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {(r["model"], r["dtype"]): r for r in report["rows"]}
    assert len(rows) == 6
    for (model, _), row in rows.items():
        assert len(row["repeats_us"]) == 3 and row["median_us"] > 0
        if model != "floor":
            assert row["chains_us"] > 0 and len(row["layers_us"]) >= 4
    for info in report["micro"].values():
        assert info["fully_int8"] and info["arena_total_bytes"] > 0 and info["flash_ok"]


@pytest.mark.slow
@needs_fashion_mnist
def test_conv1d_quick_mode_writes_its_json(tmp_path):
    out = tmp_path / "conv1d.json"
    result = subprocess.run(
        [sys.executable, str(BENCH / "conv1d.py"), "--quick", "--budgets", "5x", "--runs", "10",
         "--rows", "tflowrank,uniform svd", "--json", str(out)],  # "svd alone": tflowrank's code, methods=("svd",)
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {row["row"]: row for row in report["rows"]}
    assert list(rows) == ["5x tflowrank", "5x uniform svd"]  # one budget, the rows asked for
    for row in rows.values():
        assert row["fully_int8"] and row["ops"]["RESHAPE"] == 2  # in and out of the one-row chains
        chains = [e for e in row["plan"]["entries"] if e["method"]]
        assert row["ops"]["CONV_2D"] + row["ops"].get("DEPTHWISE_CONV_2D", 0) >= 4 + len(chains)
        assert "EXPAND_DIMS" not in row["ops"]
        assert row["baseline_macs"] / row["macs"] >= 0.98 / row["budget"]
    assert {e["layer"] for e in rows["5x uniform svd"]["plan"]["entries"] if e["method"]} == {
        "conv1", "conv2", "conv3", "conv4"}
    assert report["baseline"]["float32_top1"] > 0.3 and "5x uniform svd: fully int8" in result.stdout


@pytest.mark.slow
def test_auto_uniform_plan_shares_the_budget_evenly(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import auto

    from tflowrank import cost, factorize, zoo

    model = zoo.load_fashion_cnn()
    plan = auto.uniform_plan(model, "spatial", 1 / 3)
    assert 0.3 <= plan.fraction <= 1 / 3
    assert {e.layer for e in plan.factorized} == set(auto.UNIFORM_LAYERS)
    shares = [e.cost_after / e.cost_before for e in plan.factorized]
    assert max(shares) - min(shares) < 0.05  # one common share, up to rank rounding
    assert cost(factorize(model, plan)).macs == plan.total_after
    row = {"row": "3x tflowrank", "keras_top1": 0.9, "int8_top1": 0.91, "baseline_top1": 0.92,
           "baseline_int8_top1": 0.92, "macs": 10, "baseline_macs": 30, "params": 5,
           "baseline_params": 20, "int8_bytes": 1024, "baseline_float32_bytes": 20480,
           "baseline_int8_bytes": 5120, "int8_median_us": 100.0, "baseline_int8_median_us": 300.0,
           "search_seconds": 12.0}
    text = auto.table({"rows": [row], "cached_search_seconds": 0.2})
    assert "3x tflowrank" in text and "-1.00" in text and "20.00" in text and "0.2 s" in text
    assert "x faster" in text.splitlines()[0]
    (line,) = [line for line in text.splitlines() if line.startswith("3x tflowrank")]
    assert line.split()[-3:] == ["0.100", "3.00", "12"]  # 300 / 100 us: three times faster


def test_seeds_summary_pairs_the_rows_by_seed(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import seeds

    def row(kind, seed, top1):
        return {"budget_name": "3x", "kind": kind, "seed": seed, "int8_top1": top1, "baseline_top1": 0.925}

    rows = [row("tflowrank", 0, 0.920), row("uniform spatial", 0, 0.918),
            row("tflowrank", 1, 0.917), row("uniform spatial", 1, 0.919),
            row("tflowrank", 2, 0.921), row("uniform spatial", 2, 0.920)]
    (entry,) = seeds.summary(rows)
    ours = entry["rows"]["tflowrank"]
    assert ours["points"] == pytest.approx({0: -0.5, 1: -0.8, 2: -0.4})
    assert ours["mean"] == pytest.approx(-17 / 30) and ours["min"] == pytest.approx(-0.8)
    assert ours["stdev"] == pytest.approx(0.2081666, abs=1e-6)
    paired = entry["tflowrank_minus_uniform"]
    assert paired["points"] == pytest.approx([0.2, -0.2, 0.1])
    assert paired["tflowrank_ahead"] == 2 and paired["seeds"] == 3
    text = seeds.table([entry])
    assert "tflowrank - uniform (paired)" in text and "+0.03" in text
    assert "tflowrank ahead in 2 of 3 seeds" in text


def test_seeds_summary_of_one_row_kind_has_no_pairs(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import seeds

    rows = [{"budget_name": "8x", "kind": "tflowrank", "seed": s, "int8_top1": t, "baseline_top1": 0.925}
            for s, t in ((0, 0.905), (1, 0.907))]
    (entry,) = seeds.summary(rows)
    assert list(entry["rows"]) == ["tflowrank"]
    assert entry["rows"]["tflowrank"]["mean"] == pytest.approx(-1.9)
    assert entry["tflowrank_minus_uniform"]["seeds"] == 0
    text = seeds.table([entry])
    assert "-1.90" in text and "paired" not in text


def test_seeds_refuses_an_unknown_row(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    import seeds

    with pytest.raises(SystemExit):
        seeds.main(["--rows", "tflowrank,pruning"])
    assert "--rows takes comma-separated names of tflowrank, uniform spatial; got 'tflowrank,pruning'" in (
        capsys.readouterr().err)


def test_seeds_refuses_a_single_seed(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    import seeds

    with pytest.raises(SystemExit):
        seeds.main(["--seeds", "1,1"])
    assert "--seeds needs at least two different seeds; got '1,1'" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["auto", "seeds"])
def test_a_learning_rate_at_or_below_zero_is_a_usage_error(monkeypatch, capsys, script):
    monkeypatch.syspath_prepend(str(BENCH))
    module = importlib.import_module(script)

    with pytest.raises(SystemExit):
        module.main(["--learning-rate", "0"])
    assert "--learning-rate must be > 0; got 0.0" in capsys.readouterr().err


@pytest.mark.parametrize("script, argv, message", [
    ("conv1d", ["--rows", "tflowrank,svd"],
     "--rows takes tflowrank, svd alone, all 1-D methods, uniform svd; got 'tflowrank,svd'"),
    ("conv1d", ["--seeds", "1,x"], "--seeds takes comma-separated integers; got '1,x'"),
    ("seeds", ["--methods", "cp,svdd"], "--methods takes comma-separated names of spatial, svd"),
    ("cp_stability", ["--ridges", "0,-1"], "--ridges must be >= 0; got '0,-1'"),
    ("cp_stability", ["--ridges", "x"],
     "--ridges takes numbers or 'default', --seeds integers; got 'x' and '0'"),
    ("cp_stability", ["--epochs", "0"], "--epochs must be at least 1; got 0"),
])
def test_bench_scripts_refuse_bad_arguments(monkeypatch, capsys, script, argv, message):
    monkeypatch.syspath_prepend(str(BENCH))
    module = importlib.import_module(script)

    with pytest.raises(SystemExit):
        module.main(argv)
    assert message in capsys.readouterr().err


def test_cp_stability_degeneracy_is_one_for_orthogonal_components_and_grows_with_cancelling(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import cp_stability

    eye = np.eye(4)
    assert cp_stability.degeneracy([eye[:, :2], eye[:, :2], eye[:, 2:]]) == pytest.approx(1.0)
    big = np.ones((3, 2)) * 10.0
    cancelling = [big, big, np.array([[1.0, -1.0 + 1e-3], [0.5, -0.5]])]  # two terms nearly cancel
    assert cp_stability.degeneracy(cancelling) > 100


def test_seeds_refuses_a_search_subset_below_one(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    import seeds

    with pytest.raises(SystemExit):
        seeds.main(["--search-samples", "0"])
    assert "--search-samples must be >= 1; got 0" in capsys.readouterr().err


def test_seeds_refuses_a_negative_feature_weight(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    import seeds

    with pytest.raises(SystemExit):
        seeds.main(["--feature-distill", "-0.5"])
    assert "--feature-distill must be >= 0; got -0.5" in capsys.readouterr().err


def test_benchmarks_refuse_the_shipped_subset(monkeypatch, capsys):
    """No figure is measured on the subset that stands in for missing data."""
    monkeypatch.syspath_prepend(str(BENCH))
    import _common
    import seeds

    from tflowrank import datasets

    monkeypatch.setattr(datasets, "fashion_mnist_source", lambda: "subset shipped with tflowrank")
    for call in (lambda: _common.fashion_mnist(4096, 1000), lambda: seeds.main(["--quick"])):
        with pytest.raises(SystemExit, match="the full Fashion-MNIST is not on this machine"):
            call()


def test_stream_pipelines_read_every_sample_once_per_pass_from_disk(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    import numpy as np
    import stream

    images = np.zeros((300, 4, 4), np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(300) % 256, np.arange(300) // 256  # its index
    for name, count in (("train", 300), ("test", 200)):
        np.save(tmp_path / f"x_{name}.npy", images[:count])
        np.save(tmp_path / f"y_{name}.npy", np.arange(count) % 7)
    train, test = stream._pipelines(tmp_path, seed=0)
    assert int(train.cardinality()) == 3 and int(test.cardinality()) == 2  # batches of 128

    def one_pass(dataset):
        xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in dataset))
        return np.concatenate(xs), np.concatenate(ys)

    first, second = one_pass(train), one_pass(train)
    for x, y in (first, second):  # every sample once, scaled, its label beside it
        assert x.shape == (300, 4, 4, 1) and x.dtype == np.float32
        order = np.round(x[:, 0, 0, 0] * 255).astype(int) + 256 * np.round(x[:, 0, 1, 0] * 255).astype(int)
        assert sorted(order.tolist()) == list(range(300)) and np.array_equal(y, order % 7)
    assert not np.array_equal(first[1], second[1])  # a new order every pass
    x, y = one_pass(test)
    np.testing.assert_array_equal(x[..., 0], images[:200] / np.float32(255))
    np.testing.assert_array_equal(y, np.arange(200) % 7)
