"""Reports of a list of ProfileResult: comparison table, JSON, CSV, Markdown, PNG plot."""

import csv
import io
import json
import sys

import pytest

from tflowrank.benchmark_tool import NodeTypeRow, OpRow
from tflowrank.errors import TflowrankError
from tflowrank.profiling import MicroDetails, MicroOp, ProfileResult, format_profiles
from tflowrank.reports import comparison_table, plot, to_csv, to_json, to_markdown


def result(model, avg_us, size_bytes, **extra):
    values = dict(
        model=model, target="android", runner="benchmark_model-android", threads=1, runs=50,
        init_us=1000.0, first_inference_us=3000.0, warmup_avg_us=2500.0, inference_avg_us=avg_us,
        inference_median_us=avg_us, inference_std_us=100.0, peak_memory_mb=None, size_bytes=size_bytes,
    )  # fmt: skip
    values.update(extra)
    return ProfileResult(**values)


def micro_result(model, size_bytes, arena, **details):
    return ProfileResult(
        model=model, target="micro", runner="tflite-micro", threads=1, runs=0, init_us=None,
        first_inference_us=None, warmup_avg_us=None, inference_avg_us=None, inference_median_us=None,
        inference_std_us=None, peak_memory_mb=None, size_bytes=size_bytes,
        micro=MicroDetails(flash_bytes=size_bytes, ops=(MicroOp("CONV_2D", 2, True),), fully_int8=True,
                           arena_total_bytes=arena, arena_head_bytes=arena, arena_tail_bytes=0, samples=8,
                           max_lsb_difference=0, **details),
    )  # fmt: skip


TYPES = (
    NodeTypeRow("CONV_2D", 3, 2.0, 80.0, 80.0, 0.0, 3),
    NodeTypeRow("FULLY_CONNECTED", 1, 0.5, 20.0, 100.0, 0.0, 1),
)


@pytest.fixture
def results():
    return [
        result("base.tflite", 4000.0, 4096, peak_memory_mb=20.0, node_types=TYPES, device="R58M (arm64-v8a)",
               command=("adb", "-s", "R58M", "shell", "benchmark_model --graph=x")),
        result("small.tflite", 1000.0, 1024, peak_memory_mb=10.0, node_types=TYPES[:1],
               repeats=2, repeat_medians_us=(1000.0, 1012.5),
               op_profile=(OpRow("CONV_2D", "[conv]:0", 0.5, 0.4, 80.0, 80.0, 0.0, 1),)),
    ]  # fmt: skip


def test_comparison_table_baseline_first_with_ratios(results):
    header, rule, base, small = comparison_table(results).splitlines()
    assert header.split("  ")[0].strip() == "model"
    columns = [c.strip() for c in header.split("  ") if c.strip()]
    assert columns == [
        "model", "runner", "size KB", "x base (size)", "avg ms", "x base (avg)", "median ms", "std ms",
        "init ms", "peak MB", "x base (peak)",
    ]  # fmt: skip
    assert set(rule) == {"-", " "}
    assert base.split() == ["base.tflite", "(baseline)", "benchmark_model-android", "4.0", "1.00x", "4.000", "1.00x",
                            "4.000", "0.100", "1.0", "20.0", "1.00x"]  # fmt: skip
    assert small.split() == ["small.tflite", "benchmark_model-android", "1.0", "0.25x", "1.000", "0.25x", "1.000",
                             "0.100", "1.0", "10.0", "0.50x"]  # fmt: skip


def test_comparison_table_of_micro_results():
    base = micro_result("base.tflite", 40960, 20480, ram_budget_kb=16.0, ram_margin_kb=-4.0, ram_ok=False)
    small = micro_result("small.tflite", 10240, 8192, ram_budget_kb=16.0, ram_margin_kb=8.0, ram_ok=True)
    broken = ProfileResult(**{**small.__dict__, "model": "hybrid.tflite",
                              "micro": MicroDetails(flash_bytes=5000, ops=(), fully_int8=False,
                                                    problems=("hybrid ops",))})  # fmt: skip
    lines = comparison_table([base, small, broken]).splitlines()
    columns = [c.strip() for c in lines[0].split("  ") if c.strip()]
    assert columns == ["model", "runner", "size KB", "x base (size)", "arena KB", "x base (arena)", "RAM", "int8",
                       "LSB diff", "TFLM"]  # fmt: skip
    assert "avg ms" not in columns  # no latency measured on micro
    assert "OVER (-4.0 KB)" in lines[2] and "ok (+8.0 KB)" in lines[3]
    assert lines[3].split()[4:6] == ["8.0", "0.40x"]
    assert lines[4].split()[-1] == "run" and "cannot" in lines[4]


def test_to_json_round_trip_and_file(results, tmp_path):
    text = to_json(results, tmp_path / "out.json")
    assert (tmp_path / "out.json").read_text() == text
    data = json.loads(text)
    assert data == json.loads(json.dumps([r.to_dict() for r in results]))
    assert data[0]["node_types"][0] == {"node_type": "CONV_2D", "count": 3, "avg_ms": 2.0, "percent": 80.0,
                                        "cdf_percent": 80.0, "mem_kb": 0.0, "times_called": 3}  # fmt: skip
    assert list(tmp_path.iterdir()) == [tmp_path / "out.json"]  # no temporary file left


def test_to_csv(results, tmp_path):
    micro = micro_result("m.tflite", 2048, 1024, flash_budget_kb=4.0, flash_margin_kb=2.0, flash_ok=True)
    text = to_csv([*results, micro], tmp_path / "out.csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["model"] for r in rows] == ["base.tflite", "small.tflite", "m.tflite"]
    assert (
        rows[0]["inference_avg_us"] == "4000.0"
        and rows[0]["command"] == "adb -s R58M shell 'benchmark_model --graph=x'"
    )
    assert "op_profile" not in rows[0] and "node_types" not in rows[0]
    assert rows[2]["micro_arena_total_bytes"] == "1024" and rows[2]["micro_flash_ok"] == "True"
    assert rows[2]["micro_ops"] == "CONV_2D x2" and rows[0]["micro_ops"] == ""
    assert (rows[1]["repeats"], rows[1]["repeat_medians_us"], rows[0]["repeat_medians_us"]) == (
        "2", "1000; 1012.5", "")
    assert (tmp_path / "out.csv").read_text() == text


def test_to_markdown(results):
    text = to_markdown(results)
    assert text.startswith("## Comparison\n\nBaseline: `base.tflite`")
    assert "| model | runner | size KB | x base (size) | avg ms |" in text
    assert "| small.tflite | benchmark_model-android | 1.0 | 0.25x | 1.000 | 0.25x |" in text
    assert (
        "- `base.tflite`: benchmark_model-android on R58M (arm64-v8a): `adb -s R58M shell 'benchmark_model --graph=x'`"
        in text
    )
    assert "## Time by node type" in text and "| FULLY_CONNECTED | 1 | 0.500 | 20.0 | 1 |" in text
    micro = micro_result("m.tflite", 2048, 1024)
    broken = ProfileResult(
        **{
            **micro.__dict__,
            "micro": MicroDetails(
                flash_bytes=10,
                ops=(MicroOp("GELU", 1, False),),
                fully_int8=False,
                problems=("no kernel for GELU",),
            ),
        }
    )
    text = to_markdown([micro, broken])
    assert "## TFLite Micro" in text and "Flash is the .tflite file size" in text
    assert "- TFLite Micro cannot run it: no kernel for GELU" in text and "| GELU | 1 | **no** |" in text


def test_plot_writes_a_png(results, tmp_path):
    pytest.importorskip("matplotlib")
    micro = micro_result("m.tflite", 2048, 1024)
    for name, items in (("latency.png", results), ("micro.png", [micro])):
        path = plot(items, tmp_path / name)
        assert path == tmp_path / name and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latency.png", "micro.png"]


def test_plot_without_matplotlib(results, tmp_path, monkeypatch):
    for name in [n for n in sys.modules if n.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    with pytest.raises(TflowrankError, match=r"plot\(\) needs matplotlib: pip install 'tflowrank\[plot\]'"):
        plot(results, tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs(results, tmp_path):
    for writer in (comparison_table, to_json, to_csv, to_markdown):
        with pytest.raises(
            ValueError, match=r"`results` must hold at least one ProfileResult. Received: results=\[\]"
        ):
            writer([])
    with pytest.raises(ValueError, match="The folder of `path` does not exist"):
        to_json(results, tmp_path / "no" / "out.json")


def test_format_profiles_unchanged_for_full_results(results):
    header, _, base, small = format_profiles(results).splitlines()
    assert base.split() == ["base.tflite", "4.0", "4.000", "4.000", "0.100", "1.00x"]
    assert small.split() == ["small.tflite", "1.0", "1.000", "1.000", "0.100", "0.25x"]
