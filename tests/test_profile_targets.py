"""profile() on each target: the host tool (a stand-in benchmark_model), the in-process fallback,
TFLite Micro, argument checks and progress. No TensorFlow: the models are built with the
flatbuffer schema of ai-edge-litert, so these tests stay fast."""

import json
import os
import re
import shutil
import statistics
import sys
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from tflowrank import profiling
from tflowrank.benchmark_tool import EM_AARCH64, EM_X86_64
from tflowrank.errors import ToolError
from tflowrank.profiling import MicroOp, ProfileResult, format_profiles, profile

FIXTURES = Path(__file__).parent / "fixtures" / "benchmark_model"

FAKE_BENCHMARK_MODEL = """\
import json, os, shutil, signal, sys, time
scenario = json.load(open(os.environ["TFLOWRANK_FAKE_BENCHMARK"]))
with open(scenario["record"], "w") as record:
    json.dump(sys.argv[1:], record)
time.sleep(scenario.get("sleep", 0))
sys.stdout.write(open(scenario["log"]).read())
sys.stdout.flush()
for arg in sys.argv[1:]:
    if arg.startswith("--op_profiling_output_file=") and scenario.get("csv"):
        shutil.copy(scenario["csv"], arg.split("=", 1)[1])
if scenario.get("signal"):
    os.kill(os.getpid(), getattr(signal, scenario["signal"]))
sys.exit(scenario.get("status", 0))
"""


# --- tiny .tflite models, built without TensorFlow ---------------------------------------------


def _tensor(shape, dtype, buffer, name, scale=None, zero_point=None):
    tensor = schema.TensorT()
    tensor.shape, tensor.type, tensor.buffer, tensor.name = list(shape), dtype, buffer, name
    if scale is not None:
        tensor.quantization = schema.QuantizationParametersT()
        tensor.quantization.scale, tensor.quantization.zeroPoint = [scale], [zero_point]
    return tensor


def build_model(kind):
    """One op: FULLY_CONNECTED in full int8 ("int8") or hybrid ("hybrid"), or GELU in float32."""
    int8, int32, float32 = schema.TensorType.INT8, schema.TensorType.INT32, schema.TensorType.FLOAT32
    buffers = [schema.BufferT()]

    def buffer(array):
        buffers.append(schema.BufferT())
        buffers[-1].data = list(np.ascontiguousarray(array).tobytes())
        return len(buffers) - 1

    weights = (np.arange(12).reshape(3, 4) - 6).astype(np.int8)
    bias = np.array([10, -20, 30], np.int32)
    op = schema.OperatorT()
    code = schema.OperatorCodeT()
    if kind == "gelu":
        code.builtinCode = schema.BuiltinOperator.GELU
        code.deprecatedBuiltinCode = 127  # the int8 field's placeholder for codes above 127
        tensors = [_tensor([1, 4], float32, 0, "in"), _tensor([1, 4], float32, 0, "out")]
        op.inputs, op.outputs = [0], [1]
    else:
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.FULLY_CONNECTED
        op.builtinOptionsType = schema.BuiltinOptions.FullyConnectedOptions
        op.builtinOptions = schema.FullyConnectedOptionsT()
        if kind == "int8":
            tensors = [
                _tensor([1, 4], int8, 0, "in", 0.05, 0),
                _tensor([3, 4], int8, buffer(weights), "w", 0.02, 0),
                _tensor([3], int32, buffer(bias), "b", 0.001, 0),
                _tensor([1, 3], int8, 0, "out", 0.1, -3),
            ]
        else:
            tensors = [
                _tensor([1, 4], float32, 0, "in"),
                _tensor([3, 4], int8, buffer(weights), "w", 0.02, 0),
                _tensor([3], float32, buffer(bias.astype(np.float32)), "b"),
                _tensor([1, 3], float32, 0, "out"),
            ]
        op.inputs, op.outputs = [0, 1, 2], [3]
    code.version = 1
    graph = schema.SubGraphT()
    graph.tensors, graph.operators = tensors, [op]
    graph.inputs, graph.outputs = [0], [len(tensors) - 1]
    model = schema.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [graph], buffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for kind in ("int8", "hybrid", "gelu"):
        paths[kind] = folder / f"{kind}.tflite"
        paths[kind].write_bytes(build_model(kind))
    return paths


@pytest.fixture
def no_tool(monkeypatch, tmp_path):
    """No benchmark_model anywhere: the in-process fallback must be chosen."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("TFLOWRANK_BENCHMARK_MODEL", raising=False)


@pytest.fixture
def tool(tmp_path, monkeypatch):
    """A stand-in benchmark_model; ``tool.set(log=..., ...)`` picks what it replays."""
    script = tmp_path / "bin" / "benchmark_model"
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable} -S\n" + FAKE_BENCHMARK_MODEL)
    script.chmod(0o755)
    record = tmp_path / "argv.json"
    scenario = tmp_path / "scenario.json"
    monkeypatch.setenv("TFLOWRANK_FAKE_BENCHMARK", str(scenario))
    monkeypatch.delenv("TFLOWRANK_BENCHMARK_MODEL", raising=False)

    class Tool:
        path = script

        def set(self, log="linux_x86_64_float_default.log", **options):
            scenario.write_text(json.dumps({"record": str(record), "log": str(FIXTURES / log), **options}))

        @property
        def argv(self):
            return json.loads(record.read_text())

    return Tool()


# --- host ---------------------------------------------------------------------------------------


def test_host_without_tool_falls_back_to_litert_in_process(models, no_tool):
    (result,) = profile(models["int8"], runs=5, warmup_runs=0)
    assert (result.target, result.runner, result.command, result.device) == (
        "host",
        "litert-python",
        (),
        None,
    )
    assert result.runs == 5 and result.first_inference_us == result.warmup_avg_us  # one warm-up
    assert result.inference_min_us <= result.inference_median_us <= result.inference_max_us
    assert result.inference_p95_us <= result.inference_max_us
    (plain,) = profile(models["int8"], runs=2, xnnpack=False)  # without default delegates
    assert plain.runner == "litert-python"


def test_repeats_in_process_time_each_round_in_a_fresh_process(models, no_tool, monkeypatch, tmp_path):
    second = tmp_path / "copy.tflite"
    shutil.copy(models["int8"], second)

    def not_here(*args, **kwargs):
        raise AssertionError("timed in the calling process")

    monkeypatch.setattr(profiling, "_run_in_process", not_here)  # the children import their own
    calls = []
    results = profile([models["int8"], second], runs=4, warmup_runs=1, repeats=3,
                      progress=lambda *args: calls.append(args))
    order = [(index, total, str(path)) for index, total, path, result in calls if result is not None]
    first, other = str(models["int8"]), str(second)
    assert order == [(1, 6, first), (2, 6, other), (3, 6, other), (4, 6, first), (5, 6, first), (6, 6, other)]
    for result, path in zip(results, (first, other), strict=True):
        assert (result.model, result.runner, result.repeats, result.runs) == (path, "litert-python", 3, 12)
        assert len(result.repeat_medians_us) == 3
        assert result.inference_median_us == statistics.median(result.repeat_medians_us)
        assert result.inference_min_us <= min(result.repeat_medians_us)
        assert max(result.repeat_medians_us) <= result.inference_max_us
        assert result.inference_min_us <= result.inference_avg_us <= result.inference_max_us


def test_one_round_is_timed_here_and_lists_its_median(models, no_tool):
    (result,) = profile(models["int8"], runs=3)
    assert result.repeats == 1 and result.repeat_medians_us == (result.inference_median_us,)


def test_repeats_with_the_tool_run_it_once_per_round(models, tool):
    tool.set()
    (result,) = profile(models["int8"], benchmark_binary=tool.path, runs=30, repeats=2)
    assert result.runner == "benchmark_model" and result.repeats == 2 and result.runs == 140
    assert result.inference_median_us is None  # this tool version prints no percentiles: averages
    assert result.repeat_medians_us == (14290.9, 14290.9)
    assert (result.inference_avg_us, result.init_us) == (pytest.approx(14290.9), 52687)
    assert result.inference_std_us == pytest.approx(452)
    assert result.command == (str(tool.path), *tool.argv)


def test_rounds_merge_as_all_their_invocations_together():
    rng = np.random.default_rng(0)
    samples = [rng.uniform(10, 20, n) for n in (5, 7, 9)]
    rounds = [ProfileResult(model="m", target="host", runner="litert-python", threads=1, runs=len(x),
                            init_us=float(i), first_inference_us=30.0 + i, warmup_avg_us=25.0 + i,
                            inference_avg_us=float(x.mean()), inference_median_us=float(np.median(x)),
                            inference_std_us=float(x.std()), peak_memory_mb=[3.0, None, 1.0][i],
                            size_bytes=100, inference_min_us=float(x.min()), inference_max_us=float(x.max()),
                            inference_p95_us=float(i))
              for i, x in enumerate(samples)]
    merged = profiling._combine(rounds)
    every = np.concatenate(samples)
    assert merged.runs == 21 and merged.repeats == 3
    assert merged.inference_avg_us == pytest.approx(every.mean())
    assert merged.inference_std_us == pytest.approx(every.std())
    assert (merged.inference_min_us, merged.inference_max_us) == (every.min(), every.max())
    assert merged.repeat_medians_us == tuple(float(np.median(x)) for x in samples)
    assert merged.inference_median_us == statistics.median(merged.repeat_medians_us)
    assert (merged.init_us, merged.first_inference_us, merged.inference_p95_us) == (1.0, 31.0, 1.0)
    assert merged.peak_memory_mb is None  # not measured in every round
    assert profiling._combine(rounds[:1]) == ProfileResult(**{**rounds[0].__dict__, "repeat_medians_us":
                                                              (rounds[0].inference_median_us,)})


def test_a_failing_round_in_a_child_is_a_tool_error(no_tool, tmp_path):
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a flatbuffer")
    with pytest.raises(ToolError, match=r"Timing 1 model\(s\) in a child process failed") as caught:
        profile(broken, repeats=2)
    assert "tflowrank.profiling" in " ".join(caught.value.command) and caught.value.output_tail


@pytest.mark.parametrize("option", ["gpu", "peak_memory", "op_profiling"])
def test_tool_only_options_need_the_tool(models, no_tool, option):
    with pytest.raises(
        ValueError, match=rf"`{option}=True` needs the benchmark_model tool, and none was found"
    ):
        profile(models["int8"], **{option: True})


def test_host_tool_by_argument(models, tool):
    tool.set()
    (result,) = profile(models["int8"], benchmark_binary=tool.path, threads=4, runs=30, warmup_runs=2)
    assert tool.argv == [
        f"--graph={models['int8']}", "--num_threads=4", "--num_runs=30", "--min_secs=0", "--warmup_runs=2",
        "--warmup_min_secs=0",
    ]  # fmt: skip
    assert (result.runner, result.target, result.threads) == ("benchmark_model", "host", 4)
    assert result.command == (str(tool.path), *tool.argv)
    assert (result.init_us, result.first_inference_us, result.warmup_avg_us) == (52687, 19105, 14452.5)
    assert (result.inference_avg_us, result.inference_std_us, result.runs) == (14290.9, 452, 70)
    assert result.inference_median_us is None  # this tool version prints no percentiles
    assert (result.memory_footprint_init_mb, result.memory_footprint_mb) == (21.9492, 34.5234)
    assert result.size_bytes == models["int8"].stat().st_size


def test_host_tool_from_environment_and_from_path(models, tool, monkeypatch, tmp_path):
    tool.set(log="peak_memory_excerpt.log")
    monkeypatch.setenv("TFLOWRANK_BENCHMARK_MODEL", str(tool.path))
    (result,) = profile(models["int8"], peak_memory=True, xnnpack=True, gpu=True)
    assert result.peak_memory_mb == 93.2383 and result.runner == "benchmark_model"
    assert tool.argv[-3:] == ["--use_xnnpack=true", "--use_gpu=true", "--report_peak_memory_footprint=true"]
    monkeypatch.delenv("TFLOWRANK_BENCHMARK_MODEL")
    monkeypatch.setenv("PATH", str(tool.path.parent))
    assert profile(models["int8"])[0].runner == "benchmark_model"
    assert profile(models["int8"], benchmark_binary=False)[0].runner == "litert-python"  # no look-up
    monkeypatch.setenv("TFLOWRANK_BENCHMARK_MODEL", str(tmp_path / "missing"))
    with pytest.raises(
        ValueError, match="The benchmark_model binary of `TFLOWRANK_BENCHMARK_MODEL` does not exist"
    ):
        profile(models["int8"])


def test_host_tool_op_profiling_reads_the_csv(models, tool):
    tool.set(
        log="linux_x86_64_int8_op_profiling_trimmed.log", csv=str(FIXTURES / "op_profile_csv_constructed.csv")
    )
    (result,) = profile(models["int8"], benchmark_binary=tool.path, op_profiling=True)
    assert tool.argv[-3:-1] == ["--enable_op_profiling=true", "--op_profiling_output_mode=csv"]
    assert tool.argv[-1].startswith("--op_profiling_output_file=") and tool.argv[-1].endswith(".csv")
    assert len(result.op_profile) == 4 and len(result.node_types) == 4  # from the CSV, not the log's 12/11


def test_host_tool_crash_timeout_and_failure(models, tool):
    tool.set(signal="SIGSEGV")
    with pytest.raises(ToolError, match="benchmark_model crashed on .*: it was killed by SIGSEGV") as caught:
        profile(models["int8"], benchmark_binary=tool.path)
    assert caught.value.command[0] == str(tool.path) and "Inference timings" in caught.value.output_tail

    tool.set(sleep=30)
    with pytest.raises(ToolError, match="did not finish within 1 s on .*; it was stopped") as caught:
        profile(models["int8"], benchmark_binary=tool.path, timeout=1)
    assert caught.value.command[1] == f"--graph={models['int8']}"

    tool.set(log="failed_xnnpack_delegate.log", status=1)
    with pytest.raises(ToolError, match=r"benchmark_model failed on .* \(exit status 1\)") as caught:
        profile(models["int8"], benchmark_binary=tool.path)
    assert caught.value.output_tail.endswith("Benchmarking failed.\n")


def test_host_tool_built_for_another_machine(models, tmp_path):
    binary = tmp_path / "benchmark_model"
    other = EM_AARCH64 if os.uname().machine == "x86_64" else EM_X86_64
    binary.write_bytes(
        b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + bytes(2) + other.to_bytes(2, "little") + bytes(64)
    )
    binary.chmod(0o755)
    with pytest.raises(ToolError, match="is built for .*, but this host is"):
        profile(models["int8"], benchmark_binary=binary)


# --- micro --------------------------------------------------------------------------------------


def test_micro_int8_model(models):
    pytest.importorskip("tflite_micro")
    path = models["int8"]
    (result,) = profile(path, target="micro", flash_budget_kb=1, ram_budget_kb=0.5)
    m = result.micro
    assert (result.runner, result.target, result.runs) == ("tflite-micro", "micro", 0)
    assert result.inference_avg_us is None and result.init_us is None  # latency is not measured
    assert m.runnable and m.problems == () and m.fully_int8
    assert m.flash_bytes == result.size_bytes == path.stat().st_size
    assert m.ops == (MicroOp("FULLY_CONNECTED", 1, True),)
    assert m.arena_total_bytes > 0 and m.arena_head_bytes + m.arena_tail_bytes <= m.arena_total_bytes
    assert m.samples == 8 and m.max_lsb_difference == 0 and m.max_abs_difference is None
    assert m.flash_ok is True and m.flash_margin_kb == pytest.approx(1 - path.stat().st_size / 1024)
    assert m.ram_ok is False and m.ram_margin_kb == pytest.approx(0.5 - m.arena_total_bytes / 1024)
    assert json.loads(json.dumps(result.to_dict()))["micro"]["ops"] == [
        {"name": "FULLY_CONNECTED", "count": 1, "supported": True}
    ]


def test_micro_explains_models_it_cannot_run(models):
    pytest.importorskip("tflite_micro")
    hybrid, gelu = profile([models["hybrid"], models["gelu"]], target="micro", ram_budget_kb=64)
    assert not hybrid.micro.runnable and not hybrid.micro.fully_int8
    assert "hybrid (int8 weights, float activations" in hybrid.micro.problems[0]
    assert hybrid.micro.arena_total_bytes is None and hybrid.micro.ram_ok is None
    assert hybrid.micro.ram_budget_kb == 64
    assert gelu.micro.ops == (MicroOp("GELU", 1, False),)
    assert "TFLite Micro has no kernel for these ops: GELU x1" in gelu.micro.problems[0]


def test_micro_float_model_parity_in_float(models, tmp_path):
    pytest.importorskip("tflite_micro")
    relu = tmp_path / "relu.tflite"
    data = bytearray(build_model("gelu"))
    model = schema.ModelT.InitFromPackedBuf(bytes(data), 0)
    model.operatorCodes[0].builtinCode = model.operatorCodes[0].deprecatedBuiltinCode = (
        schema.BuiltinOperator.RELU
    )
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    relu.write_bytes(bytes(builder.Output()))
    (result,) = profile(relu, target="micro")
    assert result.micro.runnable and not result.micro.fully_int8
    assert result.micro.max_abs_difference == 0.0 and result.micro.max_lsb_difference is None


# --- arguments and progress ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": "ios"}, "`target` must be one of 'host', 'android', 'micro'. Received: target='ios'"),
        (
            {"serial": "X"},
            "`serial` applies to target='android' only. Received: serial='X' with target='host'",
        ),
        (
            {"target": "android", "serial": ""},
            "`serial` must be a device serial as `adb devices` lists it (a non-empty str). Received: serial=''",
        ),
        ({"cpu_mask": "f0"}, "`cpu_mask` applies to target='android' only"),
        ({"nnapi": True}, "`nnapi` applies to target='android' (NNAPI is Android's) only"),
        ({"ram_budget_kb": 64}, "`ram_budget_kb` applies to target='micro' only"),
        ({"target": "micro", "gpu": True}, "`gpu` applies to target='host' and 'android' only"),
        ({"target": "micro", "xnnpack": False}, "`xnnpack` applies to target='host' and 'android' only"),
        ({"target": "android"}, "target='android' needs `benchmark_binary`"),
        ({"target": "android", "benchmark_binary": False}, "Received: benchmark_binary=False"),
        (
            {"target": "micro", "benchmark_binary": "bm"},
            "`benchmark_binary` applies to target='host' and 'android' only",
        ),
        (
            {"target": "android", "benchmark_binary": "none/bm"},
            "File of `benchmark_binary` does not exist: 'none/bm'",
        ),
        (
            {"target": "android", "benchmark_binary": "x", "cpu_mask": "zz"},
            "`cpu_mask` must be a non-zero hexadecimal CPU affinity mask for taskset, such as 'f0' (CPUs 4-7). Received: cpu_mask='zz'",
        ),
        ({"cpu_mask": "0"}, "Received: cpu_mask='0'"),
        ({"cpu_mask": 240}, "Received: cpu_mask=240"),
        ({"timeout": 0}, "`timeout` must be a positive number (a number of seconds). Received: timeout=0"),
        (
            {"target": "micro", "flash_budget_kb": -1},
            "`flash_budget_kb` must be a positive number (KiB). Received: flash_budget_kb=-1",
        ),
        ({"gpu": "yes"}, "`gpu` must be True or False. Received: gpu='yes'"),
        ({"xnnpack": 1}, "`xnnpack` must be True, False or None. Received: xnnpack=1"),
        ({"threads": 0}, "`threads` must be an integer >= 1. Received: threads=0"),
        ({"repeats": 0}, "`repeats` must be an integer >= 1. Received: repeats=0"),
        ({"repeats": 2.0}, "`repeats` must be an integer >= 1. Received: repeats=2.0"),
        (
            {"target": "micro", "repeats": 3},
            "`repeats` applies to target='host' and 'android' only (TFLite Micro measures no latency). "
            "Received: repeats=3 with target='micro'",
        ),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        profile("missing.tflite", **kwargs)


def test_progress_line_per_model_and_callback(models, no_tool, capsys):
    profile([models["int8"], models["int8"]], runs=1, progress=True)
    err = capsys.readouterr().err.splitlines()
    assert (
        len(err) == 4 and err[0].startswith("tflowrank profile: [1/2] ") and err[0].endswith(" on host ...")
    )
    assert re.fullmatch(r"tflowrank profile: \[2/2\] .*: [\d.]+ ms avg \(litert-python\), [\d.]+ s", err[3])
    calls = []
    profile(models["int8"], runs=1, progress=lambda *args: calls.append(args))
    assert [(i, n, result is None) for i, n, _, result in calls] == [(1, 1, True), (1, 1, False)]
    assert isinstance(calls[1][3], ProfileResult)
    with pytest.raises(
        TypeError, match="`progress` must be True, False or a callable. Received: progress of type str"
    ):
        profile(models["int8"], progress="yes")


def test_format_profiles_shows_unmeasured_values(models):
    pytest.importorskip("tflite_micro")
    (result,) = profile(models["int8"], target="micro")
    line = format_profiles([result]).splitlines()[2]
    assert line.split()[2:] == ["-", "-", "-", "-"]
