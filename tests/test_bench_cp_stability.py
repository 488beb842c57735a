"""bench/cp_stability.py still runs. Its own file so that ``--dist loadfile`` gives it a worker
apart from the other slow bench scripts of test_bench.py."""

import json
import subprocess
import sys

import pytest
from test_bench import BENCH, needs_fashion_mnist


@pytest.mark.slow
@needs_fashion_mnist
def test_cp_stability_quick_mode_writes_its_json(tmp_path):
    out = tmp_path / "cp.json"
    result = subprocess.run(
        [sys.executable, str(BENCH / "cp_stability.py"), "--quick", "--runs", "5", "--json", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    plain, ridged = report["models"]
    assert plain["ridge"] == 0 and ridged["ridge"] > 0 and plain["ranks"] == ridged["ranks"]
    assert len(report["kernels"]) == 6  # conv2-conv4 at half their channels, both settings
    for row in report["kernels"]:
        assert row["degeneracy"] <= 2 if row["ridge"] else row["degeneracy"] > 2
    # the plain factors cancel, and their int8 file strays from the float chain far more
    assert max(plain["degeneracy"].values()) > 3 * max(ridged["degeneracy"].values())
    assert plain["decomposed_int8_error"] > 3 * ridged["decomposed_int8_error"]
    assert ridged["macs"] <= 0.34 * ridged["baseline_macs"] and "decomposed int8" in result.stdout
