"""The benchmark_model output parser on real samples of each version, and its helpers."""

import re
import signal
import sys
from pathlib import Path

import pytest

from tflowrank.benchmark_tool import (
    EM_AARCH64,
    EM_ARM,
    EM_X86_64,
    NodeTypeRow,
    OpRow,
    RunStats,
    benchmark_flags,
    check_output,
    elf_machine,
    parse_benchmark_output,
    parse_op_profile,
    strip_prefix,
)
from tflowrank.errors import ToolError

FIXTURES = Path(__file__).parent / "fixtures" / "benchmark_model"


def parse(name):
    return parse_benchmark_output((FIXTURES / name).read_text())


def timings(output):
    return (output.init_us, output.first_inference_us, output.warmup_avg_us, output.inference_avg_us)


# (fixture, (init, first inference, warm-up avg, inference avg)) of every sample with a timing line
TIMING_LINES = [
    ("linux_x86_64_float_default.log", (52687, 19105, 14452.5, 14290.9)),
    ("android_aarch64_tail.log", (119515, 87112, 58147.4, 63743.2)),
    ("peak_memory_excerpt.log", (3337, 81913, 58984.7, 56265.8)),
    ("linux_x86_64_int8_op_profiling_trimmed.log", (32163, 19834, 15997.4, 15517.6)),
    ("tf_readme_op_profiling_start_column.log", (38467, None, 83235, 79760.9)),
    ("tflite_1_12_no_stats.log", (4452, 146161, 146161, 137722)),  # first: from the warm-up count=1
    ("tflite_2_1_imxrt_op_profiling.log", (2491, 352, 352, 178)),
    ("imx8_nnapi_peak_footprint_exponent.log", (13386, 11403859, 1.14039e07, 3756.87)),
    ("android_apk_logcat.log", (1007529, 4098, 1686.59, 1687.92)),
    ("android_apk_logcat_2019.log", (4108, None, 91471, 80660.1)),
    ("raspberry_pi_xnnpack_no_prefix.log", (49438, 65683, 54366.2, 55744.2)),
    ("logcat_threadtime_constructed.log", (119515, 87112, 58147.4, 63743.2)),
]


@pytest.mark.parametrize(("name", "expected"), TIMING_LINES, ids=[n for n, _ in TIMING_LINES])
def test_timing_line_of_every_version(name, expected):
    assert timings(parse(name)) == pytest.approx(expected)


def test_new_format_with_info_prefix_stats_and_footprint():
    out = parse("linux_x86_64_float_default.log")
    assert out.warmup == RunStats(35, 19105, 13909, 13585, 19105, 14452.5, 1240)
    assert out.inference == RunStats(70, 14941, 14066, 13728, 16145, 14290.9, 452)
    assert out.inference.median_us is None  # this build prints no percentiles
    assert (out.memory_footprint_init_mb, out.memory_footprint_mb) == (21.9492, 34.5234)
    assert out.peak_memory_mb is None and out.model_size_mb == 4.56118
    assert out.op_profile == () and out.node_types == ()


def test_percentile_tail_and_logcat_prefix_give_the_same_result():
    plain, logcat = parse("android_aarch64_tail.log"), parse("logcat_threadtime_constructed.log")
    assert plain == logcat
    assert plain.inference == RunStats(1000, 52162, 49785, 49088, 686105, 63743.2, 60716, 49620, 51891, 68628)
    assert plain.warmup.count == 9 and plain.warmup.p95_us == 87112
    assert plain.memory_footprint_mb == 55.4961


def test_peak_memory_line():
    out = parse("peak_memory_excerpt.log")
    assert out.peak_memory_mb == 93.2383
    assert out.warmup is None and out.inference is None  # the excerpt holds no count= lines


def test_oldest_form_no_stats_and_single_run_stats():
    out = parse("tflite_1_12_no_stats.log")
    assert out.warmup == RunStats(1, 146161, 146161, 146161, 146161, 146161, 0.0)
    assert out.inference == RunStats(50, 137789, 137254, 137079, 143416, 137722, 896)


def test_rss_memory_lines_and_untitled_op_tables_of_r2_1():
    out = parse("tflite_2_1_imxrt_op_profiling.log")
    assert (out.memory_footprint_init_mb, out.memory_footprint_mb) == (0.0, 0.0)
    assert [r.count for r in (out.warmup, out.inference)] == [1, 1]
    assert [(r.node_type, r.name) for r in out.op_profile] == [
        ("Misc Runtime Ops", "AllocateTensors/0"),
        ("FULLY_CONNECTED", "[dense_3/BiasAdd]:0"),
        ("LOGISTIC", "[dense_3/Sigmoid]:1"),
        ("FULLY_CONNECTED", "[dense_4/BiasAdd]:2"),
        ("TANH", "[dense_4/Tanh]:3"),
    ]  # the second table (sorted by time) is not read
    assert out.node_types[1] == NodeTypeRow("FULLY_CONNECTED", 2, 0.045, 36.290, 91.935, 0.0, 0)
    assert len(out.node_types) == 4


def test_earlier_footprint_name_and_exponent_notation():
    out = parse("imx8_nnapi_peak_footprint_exponent.log")
    assert (out.memory_footprint_init_mb, out.memory_footprint_mb) == (0.0, 15.3438)
    assert out.peak_memory_mb is None
    assert out.warmup_avg_us == 11403900.0 and out.warmup.count == 1


def test_op_profiling_sections_regular_runs_only():
    out = parse("linux_x86_64_int8_op_profiling_trimmed.log")
    assert len(out.op_profile) == 12 and len(out.node_types) == 11
    assert "ModifyGraphWithDelegate" not in {r.node_type for r in out.op_profile}  # init section
    assert out.op_profile[1] == OpRow(
        "Convolution (NHWC, QC8) IGEMM", "Delegate/Convolution (NHWC, QC8) IGEMM:0",
        0.398, 0.407, 2.658, 3.986, 0.0, 1,
    )  # fmt: skip
    post = out.op_profile[9]
    assert post.node_type == "TFLite_Detection_PostProcess" and post.name.startswith(
        "[StatefulPartitionedCall:3, "
    )
    assert out.node_types[0] == NodeTypeRow(
        "Convolution (NHWC, QC8) GEMM", 62, 5.236, 34.361, 34.361, 0.0, 101
    )
    assert out.node_types[-1].node_type == "Max Pooling (NHWC, S8)"
    assert sum(t.percent for t in out.node_types) == pytest.approx(100, abs=0.01)


def test_tab_separated_tables_with_start_column():
    out = parse("tf_readme_op_profiling_start_column.log")
    assert [r.node_type for r in out.op_profile] == [
        "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "AVERAGE_POOL_2D", "CONV_2D", "RESHAPE", "SOFTMAX",
    ]  # fmt: skip
    assert out.op_profile[1] == OpRow(
        "DEPTHWISE_CONV_2D",
        "[MobilenetV1/MobilenetV1/Conv2d_1_depthwise/Relu6]",
        2.150,
        2.150,
        0.054,
        0.161,
        0.0,
        0,
    )
    assert [(t.node_type, t.count, t.avg_ms) for t in out.node_types[:2]] == [
        ("CONV_2D", 15, 1.406),
        ("DEPTHWISE_CONV_2D", 13, 0.169),
    ]
    # op tables before the timing line; their "Timings (microseconds): count=" line is not a run
    assert out.warmup is None and out.inference is None


def test_op_profile_csv_file():
    ops, types = parse_op_profile((FIXTURES / "op_profile_csv_constructed.csv").read_text())
    assert [r.node_type for r in ops] == [
        "QUANTIZE", "Convolution (NHWC, QC8) IGEMM", "Convolution (NHWC, QC8) DWConv", "TFLite_Detection_PostProcess",
    ]  # fmt: skip
    assert ops[1].name == "Delegate/Convolution (NHWC, QC8) IGEMM:0"  # the tabs are commas again
    assert ops[3].name == (
        "[StatefulPartitionedCall:3, StatefulPartitionedCall:2, StatefulPartitionedCall:1, "
        "StatefulPartitionedCall:0]:266"
    )
    assert ops[2].times_called == 13 and ops[2].avg_ms == 0.051
    assert types[1] == NodeTypeRow("Convolution (NHWC, QC8) DWConv", 51, 4.46, 29.269, 63.63, 0.0, 80)


def test_only_initialization_profiled_gives_no_rows():
    text = (FIXTURES / "op_profile_csv_constructed.csv").read_text()
    init_only = text.split("Operator-wise")[0]
    assert parse_op_profile(init_only) == ((), ())


def test_no_timing_line_is_an_error():
    with pytest.raises(
        ValueError, match=r"`text` holds no benchmark_model timing line .*Benchmarking failed"
    ):
        parse("failed_xnnpack_delegate.log")
    with pytest.raises(ValueError, match="no benchmark_model timing line"):
        parse_benchmark_output("")
    with pytest.raises(TypeError, match="`text` must be a str. Received: text of type bytes"):
        parse_benchmark_output(b"Inference timings in us: Init: 1")


def test_stat_line_short_forms_and_nan():
    text = (
        "INFO: count=0\n"
        "INFO: count=5 curr=120(all same) p5=120 median=120 p95=120\n"
        "INFO: Inference timings in us: Init: 10, First inference: 0, Warmup (avg): nan, Inference (avg): 120\n"
    )
    out = parse_benchmark_output(text)
    assert out.warmup == RunStats(0, None, None, None, None, None, None)
    assert out.inference == RunStats(5, 120, 120, 120, 120, 120, 0.0, 120, 120, 120)
    assert out.warmup_avg_us is None  # nan: not measured


def test_apk_memory_glued_to_the_timing_line_and_2018_form():
    apk = "E/tflite  ( 4242): Average inference timings in us: Warmup: 91471, Init: 4108, Inference: 80660.1Overall max resident set size = 60.5 MB, total malloc-ed size = 0 MB"
    out = parse_benchmark_output(apk)
    assert timings(out) == (4108, None, 91471, 80660.1) and out.memory_footprint_mb == 60.5
    old = "Average inference timings in us: 137722 , Warmup: 146161, "
    assert timings(parse_benchmark_output(old)) == (None, None, 146161, 137722)


def test_unknown_lines_are_ignored():
    text = (FIXTURES / "linux_x86_64_float_default.log").read_text()
    noisy = (
        "WARNING: Unconsumed cmdline flags: --op_profiling_output_mode=csv\n"
        "random line: count of things = 3, avg=4\n"
        + text
        + "INFO: Memory status at the end of exeution:\nINFO: - VmRSS              : 13 MB\n"
    )
    assert parse_benchmark_output(noisy) == parse_benchmark_output(text)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("INFO: count=3", "count=3"),
        ("06-01 12:00:00.123  1234  1250 I tflite  : count=3", "count=3"),
        ("I/tflite  ( 1234): count=3", "count=3"),
        (
            "2018-09-10 12:36:37.571102: I tensorflow/tools/benchmark/benchmark_model.cc:361] count=3",
            "count=3",
        ),
        ("06-01 12:00:00.123  1234  1250 I tflite  : INFO: count=3", "count=3"),
        ("\t      CONV_2D\t 0.1", "\t      CONV_2D\t 0.1"),
    ],
)
def test_strip_prefix(line, expected):
    assert strip_prefix(line) == expected


def test_benchmark_flags():
    assert benchmark_flags("m.tflite", threads=4, runs=10, warmup_runs=2) == [
        "--graph=m.tflite", "--num_threads=4", "--num_runs=10", "--min_secs=0", "--warmup_runs=2",
        "--warmup_min_secs=0",
    ]  # fmt: skip
    flags = benchmark_flags(
        "m.tflite", threads=1, runs=1, warmup_runs=1, xnnpack=False, gpu=True, nnapi=True,
        peak_memory=True, op_profile_file="/tmp/x.csv",
    )  # fmt: skip
    assert flags[6:] == [
        "--use_xnnpack=false", "--use_gpu=true", "--use_nnapi=true", "--report_peak_memory_footprint=true",
        "--enable_op_profiling=true", "--op_profiling_output_mode=csv", "--op_profiling_output_file=/tmp/x.csv",
    ]  # fmt: skip
    assert "--use_xnnpack=true" in benchmark_flags("m", threads=1, runs=1, warmup_runs=1, xnnpack=True)


def elf_header(machine, little=True):
    order = "little" if little else "big"
    return b"\x7fELF" + bytes([2, 1 if little else 2, 1]) + bytes(9) + bytes(2) + machine.to_bytes(2, order)


@pytest.mark.parametrize("machine", [EM_AARCH64, EM_ARM, EM_X86_64])
def test_elf_machine(tmp_path, machine):
    path = tmp_path / "bin"
    path.write_bytes(elf_header(machine) + bytes(100))
    assert elf_machine(path) == machine
    path.write_bytes(elf_header(machine, little=False) + bytes(100))
    assert elf_machine(path) == machine
    path.write_text("#!/bin/sh\necho hi\n")
    assert elf_machine(path) is None
    assert elf_machine(Path(sys.executable).resolve()) is not None  # a real ELF on Linux


@pytest.mark.parametrize(
    ("output", "status", "message"),
    [
        ("INFO: Loaded model\n", -signal.SIGSEGV, "crashed: it was killed by SIGSEGV"),
        ("Segmentation fault\n", 139, "crashed (Segmentation fault)"),
        (
            'CANNOT LINK EXECUTABLE "./benchmark_model": library "libc++_shared.so" not found\n',
            1,
            "a shared library",
        ),
        ("Failed to apply XNNPACK delegate.\nBenchmarking failed.\n", 0, "failed ('Benchmarking failed')"),
        (
            "ERROR: Please specify the name of your TF Lite input file with --graph\n",
            1,
            "failed (exit status 1)",
        ),
    ],
)
def test_check_output_failures(output, status, message):
    with pytest.raises(ToolError, match=re.escape(message)) as caught:
        check_output(output, status, ["benchmark_model", "--graph=m.tflite"])
    assert caught.value.command == ("benchmark_model", "--graph=m.tflite")
    assert caught.value.output_tail == output
    check_output("INFO: Inference timings in us: Init: 1\n", 0, ["benchmark_model"])  # no error
