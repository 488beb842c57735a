"""The demo end to end, on a slice of the data (the full run is `make demo`)."""

import json

import pytest

from tflowrank import zoo
from tflowrank.demo import run_demo


@pytest.mark.slow
def test_demo_runs_end_to_end_on_a_slice(tmp_path):
    assert zoo.load_fashion_cnn() is not None, "the trained baseline must ship with the package"
    lines = []
    result = run_demo(output_dir=tmp_path / "out", finetune_samples=2048, test_samples=1000,
                      runs=5, log=lines.append)
    base, small = result.rows
    assert small.conv_macs <= 0.4 * base.conv_macs
    assert small.params < base.params and small.int8_bytes < base.int8_bytes
    assert base.keras_accuracy > 0.88  # the shipped baseline is trained
    assert small.keras_accuracy > 0.80  # after a short fine-tune on 2048 images
    for row in result.rows:
        assert abs(row.int8_accuracy - row.keras_accuracy) < 0.02
        assert row.float32_latency_ms > 0 and row.int8_latency_ms > 0
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"baseline_float32.tflite", "baseline_int8.tflite", "compressed_float32.tflite",
            "compressed_int8.tflite", "compressed.keras", "report.json", "report.md"} <= names
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["conv_macs_reached"] <= 0.4 and report["test_images"] == 1000
    assert "ratio" in result.table and "top-1 int8" in result.table
    assert any("conv MACs" in line for line in lines)
