"""The demo end to end, on a slice of the data (the full run is `make demo`)."""

import json

import pytest

from tflowrank import zoo
from tflowrank.demo import run_demo


@pytest.mark.slow
def test_demo_runs_compress_end_to_end_on_a_slice(tmp_path):
    assert zoo.load_fashion_cnn() is not None, "the trained baseline must ship with the package"
    lines = []
    result = run_demo(output_dir=tmp_path / "out", finetune_samples=2048, test_samples=1000,
                      runs=5, methods=("spatial", "svd"), candidates=3, log=lines.append)
    done = result.compression
    assert done.macs <= done.baseline_macs / 3 * 1.001
    assert done.params < done.baseline_params and done.int8_bytes < done.baseline_int8_bytes
    assert done.baseline_accuracy > 0.88  # the shipped baseline is trained
    # after 1.9 float epochs and a 0.1-epoch (2-step) quantization-aware tail on 2048 images;
    # without re-estimating the batch-norm statistics before they are folded: 0.69
    assert done.keras_accuracy > 0.75
    assert abs(done.tflite_accuracy - done.keras_accuracy) < 0.02  # QAT: int8 agrees
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"model_int8.tflite", "baseline_int8.tflite", "baseline_float32.tflite",
            "compressed.keras", "report.json", "report.md", "plan.json"} <= names
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["settings"]["val_samples"] == 1000 and report["settings"]["train_samples"] == 2048
    assert "top-1 int8 TFLite" in result.table and "ratio" in result.table
    assert any(line.startswith("data: Fashion-MNIST") for line in lines)
    assert any(line.startswith("Compression plan") for line in lines)
