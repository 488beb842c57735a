"""Benchmark and example scripts still run (their figures are not tested)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


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
