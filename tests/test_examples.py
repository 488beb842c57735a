"""The end-to-end example scripts still run with tiny settings (their figures are not tested)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(script, *args):
    result = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_fashion_to_micro_runs(tmp_path):
    pytest.importorskip("tflite_micro")
    stdout = run("fashion_to_micro.py", "--epochs", "1", "--train-samples", "256",
                 "--test-samples", "200", "--micro-samples", "4", "--runs", "5",
                 "--output", tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    baseline, compressed = report["rows"]
    assert compressed["macs"] < baseline["macs"] and compressed["flash_bytes"] < baseline["flash_bytes"]
    for row in report["rows"]:
        assert row["arena_bytes"] > 0 and row["micro_vs_reference_max_lsb"] <= 1
    assert (tmp_path / "fashion_model_data.cc").is_file() and (tmp_path / "fashion_model_data.h").is_file()
    assert "g_fashion_model" in (tmp_path / "fashion_model_data.cc").read_text()
    assert "kTensorArenaSize" in stdout and "TFLM vs ref" in stdout


@pytest.mark.slow
def test_mobilenetv2_pointwise_svd_runs(tmp_path):
    stdout = run("mobilenetv2_pointwise_svd.py", "--size", "96", "--alpha", "0.35",
                 "--calibration", "2", "--runs", "3", "--output", tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    baseline, factorized = report["rows"]
    assert report["factorized_layers"] == 34  # the 1 x 1 Conv2D layers of MobileNetV2
    assert factorized["conv_2d_ops"] == baseline["conv_2d_ops"] + 34
    assert factorized["macs"] < baseline["macs"]
    assert "ratio" in stdout


@pytest.mark.slow
def test_micro_budget_runs(tmp_path):
    pytest.importorskip("tflite_micro")
    stdout = run("micro_budget.py", "--ranks", "1.0", "0.3", "--epochs", "0",
                 "--test-samples", "100", "--flash-kb", "100", "--ram-kb", "128",
                 "--output", tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    baseline, small = report["rows"]
    assert baseline["flash_bytes"] > 100 * 1024 and not baseline["fits"]  # 140 KB
    assert small["flash_bytes"] < 100 * 1024 and small["fits"]
    assert report["best"] == "spatial 0.3"
    assert "most accurate that fits: spatial 0.3" in stdout


@pytest.mark.slow
def test_tfmot_interop_runs(tmp_path):
    import importlib.util

    if importlib.util.find_spec("tf_keras") is None or importlib.util.find_spec(
            "tensorflow_model_optimization") is None:
        pytest.skip("needs the tfmot extra: pip install 'tflowrank[tfmot]'")
    stdout = run("tfmot_interop.py", "--train-samples", "256", "--test-samples", "200",
                 "--output", tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["macs"] < 0.5 * report["baseline_macs"]
    assert report["int8_accuracy"] > 0.3 and report["test_samples"] == 200  # 10 classes: chance 0.1
    assert (tmp_path / "qat_int8.tflite").stat().st_size == report["tflite_bytes"]
    assert "QAT int8 TFLite accuracy" in stdout
