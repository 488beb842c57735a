"""The adb orchestration of target='android', against a stand-in `adb` (no device is needed).

The stand-in is a small Python script placed first on PATH: it appends its arguments to a
record file and answers from a scenario (the `adb devices` listing, the ABIs, a recorded
benchmark_model log to replay, an exit status, a CSV to hand back on pull). These tests check
the orchestration (the adb command sequence, the errors, the clean-up), not a real device.
"""

import json
import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from tflowrank.android import android_session, parse_adb_devices, select_device
from tflowrank.benchmark_tool import EM_AARCH64, EM_ARM, EM_X86_64
from tflowrank.errors import ToolError
from tflowrank.profiling import profile

FIXTURES = Path(__file__).parent / "fixtures" / "benchmark_model"
SERIAL = "R58M41ABCDE"
ONE_DEVICE = f"List of devices attached\n{SERIAL}\tdevice\n\n"

FAKE_ADB = """\
import json, os, shutil, sys, time
scenario = json.load(open(os.environ["TFLOWRANK_FAKE_ADB"]))
args = sys.argv[1:]
with open(scenario["record"], "a") as record:
    record.write(json.dumps(args) + "\\n")
if args[:1] == ["-s"]:
    args = args[2:]

def done(text="", status=0):
    sys.stdout.write(text)
    sys.stdout.flush()
    sys.exit(status)

command = args[0] if args else ""
if command == "devices":
    done(scenario["devices"])
if command == "push":
    if scenario.get("push_fails"):
        done("adb: error: failed to copy: No space left on device\\n", 1)
    done(args[1] + ": 1 file pushed, 0 skipped.\\n")
if command == "pull":
    if scenario.get("pull_csv"):
        shutil.copy(scenario["pull_csv"], args[2])
        done(args[1] + ": 1 file pulled, 0 skipped.\\n")
    done("adb: error: failed to stat remote object '" + args[1] + "': No such file or directory\\n", 1)
if command == "shell":
    script = " ".join(args[1:])
    if script == "getprop ro.product.cpu.abilist":
        done(scenario.get("abilist", "") + "\\n")
    if script == "getprop ro.product.cpu.abi":
        done(scenario.get("abi", "") + "\\n")
    if "--graph=" in script:
        time.sleep(scenario.get("run_sleep", 0))
        sys.stdout.write(open(scenario["run_log"]).read())
        done("tflowrank-exit-status=%d\\n" % scenario.get("run_status", 0))
    done("")  # mkdir, chmod, rm, pkill
done("unknown command\\n", 1)
"""


def elf(path, machine):
    header = (
        b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + (2).to_bytes(2, "little") + machine.to_bytes(2, "little")
    )
    path.write_bytes(header + bytes(200))
    return path


@pytest.fixture
def adb(tmp_path, monkeypatch):
    """Install the stand-in adb; return a function that sets its scenario and reads its record."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "adb"
    script.write_text(f"#!{sys.executable} -S\n" + FAKE_ADB)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    record = tmp_path / "adb_calls.jsonl"
    scenario_file = tmp_path / "scenario.json"
    monkeypatch.setenv("TFLOWRANK_FAKE_ADB", str(scenario_file))

    class Adb:
        def set(self, **scenario):
            scenario.setdefault("devices", ONE_DEVICE)
            scenario.setdefault("abilist", "arm64-v8a,armeabi-v7a,armeabi")
            scenario.setdefault("run_log", str(FIXTURES / "android_aarch64_tail.log"))
            scenario_file.write_text(json.dumps({"record": str(record), **scenario}))
            record.write_text("")

        @property
        def calls(self):
            return [json.loads(line) for line in record.read_text().splitlines()]

    return Adb()


@pytest.fixture
def binary(tmp_path):
    return elf(tmp_path / "benchmark_model", EM_AARCH64)


@pytest.fixture
def models(tmp_path):
    paths = [tmp_path / "base line.tflite", tmp_path / "small.tflite"]
    for i, path in enumerate(paths):
        path.write_bytes(b"TFL3" * (100 * (2 - i)))
    return paths


def test_two_models_full_command_sequence(adb, binary, models):
    adb.set(pull_csv=str(FIXTURES / "op_profile_csv_constructed.csv"))
    results = profile(
        models, target="android", benchmark_binary=binary, threads=2, runs=20, warmup_runs=3,
        xnnpack=False, cpu_mask="0xF0", peak_memory=True, op_profiling=True,
    )  # fmt: skip
    calls = adb.calls
    remote = calls[2][-1].removeprefix("mkdir -p ")
    assert re.fullmatch(r"/data/local/tmp/tflowrank/[0-9a-f]{12}", remote)
    tool = f"{remote}/benchmark_model"

    def run(i, name):
        flags = (
            f"--graph={remote}/{i}_{name}.tflite --num_threads=2 --num_runs=20 --min_secs=0 "
            "--warmup_runs=3 --warmup_min_secs=0 --use_xnnpack=false --report_peak_memory_footprint=true "
            "--enable_op_profiling=true --op_profiling_output_mode=csv "
            f"--op_profiling_output_file={remote}/{i}_{name}.csv"
        )
        return ["-s", SERIAL, "shell", f"taskset f0 {tool} {flags}; echo tflowrank-exit-status=$?"]

    s = ["-s", SERIAL]
    expected = [
        ["devices"],
        [*s, "shell", "getprop ro.product.cpu.abilist"],
        [*s, "shell", f"mkdir -p {remote}"],
        [*s, "push", str(binary), tool],
        [*s, "shell", f"chmod 755 {tool}"],
        [*s, "push", str(models[0]), f"{remote}/1_base_line.tflite"],
        run(1, "base_line"),
        [*s, "pull", f"{remote}/1_base_line.csv", "LOCAL"],
        [*s, "push", str(models[1]), f"{remote}/2_small.tflite"],
        run(2, "small"),
        [*s, "pull", f"{remote}/2_small.csv", "LOCAL"],
        [*s, "shell", f"rm -r {remote} && {{ rmdir /data/local/tmp/tflowrank 2>/dev/null; true; }}"],
    ]
    for call in calls:
        if call[2:3] == ["pull"]:
            assert Path(call[4]).name == Path(call[3]).name and not Path(call[4]).exists()
            call[4] = "LOCAL"
    assert calls == expected

    first = results[0]
    assert (first.target, first.runner, first.device) == (
        "android",
        "benchmark_model-android",
        f"{SERIAL} (arm64-v8a)",
    )
    assert (first.init_us, first.first_inference_us, first.inference_avg_us) == (119515, 87112, 63743.2)
    assert (first.inference_median_us, first.inference_std_us, first.inference_p95_us) == (
        51891,
        60716,
        68628,
    )
    assert first.runs == 1000  # what ran, from the tool's count= line
    assert first.memory_footprint_mb == 55.4961 and first.threads == 2
    assert first.size_bytes == models[0].stat().st_size
    assert Path(first.command[0]).name == "adb" and first.command[1:] == tuple(run(1, "base_line"))
    assert [r.node_type for r in first.node_types][:2] == [
        "Convolution (NHWC, QC8) GEMM",
        "Convolution (NHWC, QC8) DWConv",
    ]
    assert len(first.op_profile) == 4


def test_single_device_with_serial_and_no_optional_flags(adb, binary, models):
    adb.set(devices=f"List of devices attached\nemulator-5554\tdevice\n{SERIAL}\tdevice\n")
    (result,) = profile(models[1], target="android", benchmark_binary=binary, serial=SERIAL, runs=5)
    run = adb.calls[6]
    assert run[:3] == ["-s", SERIAL, "shell"]
    assert shlex.split(run[3])[0].endswith("/benchmark_model")  # no taskset
    assert "--use_xnnpack" not in run[3] and "--enable_op_profiling" not in run[3]
    assert not any(call[2:3] == ["pull"] for call in adb.calls)
    assert result.op_profile == ()


def test_old_tool_without_csv_output_falls_back_to_the_log(adb, binary, models):
    adb.set(run_log=str(FIXTURES / "linux_x86_64_int8_op_profiling_trimmed.log"))  # pull fails
    (result,) = profile(models[0], target="android", benchmark_binary=binary, op_profiling=True)
    assert len(result.op_profile) == 12 and len(result.node_types) == 11
    assert adb.calls[-1][3].startswith("rm -r ")


def test_32_bit_arm_binary_on_arm64_device_and_abi_fallback(adb, tmp_path, models):
    adb.set(abilist="", abi="armeabi-v7a")
    binary = elf(tmp_path / "arm32", EM_ARM)
    (result,) = profile(models[0], target="android", benchmark_binary=binary)
    assert adb.calls[1][3] == "getprop ro.product.cpu.abilist"
    assert adb.calls[2][3] == "getprop ro.product.cpu.abi"
    assert result.device == f"{SERIAL} (armeabi-v7a)"


def test_wrong_architecture_pushes_nothing(adb, tmp_path, models):
    adb.set()
    binary = elf(tmp_path / "x86", EM_X86_64)
    with pytest.raises(
        ToolError, match=rf"built for x86-64, but device {SERIAL} runs arm64-v8a, armeabi-v7a, armeabi"
    ) as caught:
        profile(models, target="android", benchmark_binary=binary)
    assert caught.value.command[1:] == ("-s", SERIAL, "shell", "getprop ro.product.cpu.abilist")
    assert [call[-1] for call in adb.calls] == ["devices", "getprop ro.product.cpu.abilist"]


def test_not_an_elf_binary(adb, tmp_path, models):
    adb.set()
    script = tmp_path / "benchmark_model.sh"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(ValueError, match="`benchmark_binary` is not an ELF executable.*android_aarch64"):
        profile(models, target="android", benchmark_binary=script)
    assert adb.calls == []


@pytest.mark.parametrize(
    ("devices", "serial", "message"),
    [
        ("List of devices attached\n\n", None, "No Android device is connected"),
        (
            "* daemon not running; starting now at tcp:5037\n* daemon started successfully\nList of devices attached\n\n",
            None,
            "No Android device is connected",
        ),
        (
            f"List of devices attached\nemulator-5554\tdevice\n{SERIAL}\tdevice\n",
            None,
            f"Several Android devices are ready (emulator-5554, {SERIAL}): choose one with serial=",
        ),
        (
            f"List of devices attached\n{SERIAL}\tunauthorized\n",
            None,
            f"Android device {SERIAL} is unauthorized: unlock it and accept",
        ),
        (f"List of devices attached\n{SERIAL}\toffline\n", None, f"Android device {SERIAL} is offline"),
        (
            f"List of devices attached\nemulator-5554\tdevice\n{SERIAL}\tunauthorized\n",
            SERIAL,
            f"Android device {SERIAL} is unauthorized",
        ),
        (
            ONE_DEVICE,
            "0123456789",
            f"Android device '0123456789' is not connected; adb lists: {SERIAL} (device)",
        ),
        (
            f"List of devices attached\n{SERIAL}\tno permissions (user in plugdev group; are your udev rules wrong?); see [http://developer.android.com/tools/device.html]\n",
            None,
            "is not ready (state: no permissions",
        ),
    ],
)
def test_device_selection_errors(adb, binary, models, devices, serial, message):
    adb.set(devices=devices)
    with pytest.raises(ToolError, match=re.escape(message)) as caught:
        profile(models, target="android", benchmark_binary=binary, serial=serial)
    assert caught.value.command[-1] == "devices"
    assert caught.value.output_tail == devices
    assert adb.calls == [["devices"]]  # nothing was pushed


def test_no_adb_on_path(binary, models, monkeypatch, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ToolError, match="adb was not found on PATH: install the Android SDK platform-tools"):
        profile(models, target="android", benchmark_binary=binary)


def test_crash_carries_command_and_tail_and_cleans_up(adb, binary, tmp_path, models):
    log = tmp_path / "crash.log"
    log.write_text("INFO: STARTING!\nINFO: Loaded model /data/local/tmp/x.tflite\nSegmentation fault \n")
    adb.set(run_log=str(log), run_status=139)
    with pytest.raises(
        ToolError,
        match=rf"benchmark_model crashed on device {SERIAL} \(arm64-v8a\) running .*\(Segmentation fault\)",
    ) as caught:
        profile(models, target="android", benchmark_binary=binary)
    error = caught.value
    assert error.command[1:4] == ("-s", SERIAL, "shell") and "--graph=" in error.command[4]
    assert (
        error.output_tail.endswith("Segmentation fault \n")
        and "tflowrank-exit-status" not in error.output_tail
    )
    assert "command: " in str(error) and "output (tail):" in str(error)
    assert adb.calls[-1][3].startswith("rm -r /data/local/tmp/tflowrank/")


def test_failed_run_without_timing_line(adb, binary, models):
    adb.set(run_log=str(FIXTURES / "failed_xnnpack_delegate.log"), run_status=1)
    with pytest.raises(ToolError, match=r"benchmark_model failed on device .* \(exit status 1\)") as caught:
        profile(models, target="android", benchmark_binary=binary, xnnpack=True)
    assert "Failed to apply XNNPACK delegate." in caught.value.output_tail


def test_output_without_timing_line_even_with_status_zero(adb, binary, tmp_path, models):
    log = tmp_path / "short.log"
    log.write_text("INFO: STARTING!\nINFO: Loaded model\n")
    adb.set(run_log=str(log), run_status=0)
    with pytest.raises(ToolError, match="benchmark_model printed no timing line"):
        profile(models, target="android", benchmark_binary=binary)
    assert adb.calls[-1][3].startswith("rm -r ")


def test_timeout_stops_the_tool_and_cleans_up(adb, binary, models):
    adb.set(run_sleep=30)
    with pytest.raises(ToolError, match=r"did not finish within 1 s on device .*; it was stopped") as caught:
        profile(models, target="android", benchmark_binary=binary, timeout=1)
    assert "--graph=" in caught.value.command[-1]
    scripts = [call[3] for call in adb.calls if call[2:3] == ["shell"]]
    assert scripts[-2].startswith("pkill -f /data/local/tmp/tflowrank/") and scripts[-1].startswith("rm -r ")


def test_push_failure_is_reported_and_cleaned_up(adb, binary, models):
    adb.set(push_fails=True)
    with pytest.raises(ToolError, match=r"adb push failed \(exit status 1\)") as caught:
        profile(models, target="android", benchmark_binary=binary)
    assert "No space left on device" in caught.value.output_tail
    assert adb.calls[-1][3].startswith("rm -r ")


def test_session_can_be_used_directly(adb, binary, models):
    adb.set()
    with android_session(binary) as session:
        run = session.run(models[0], threads=1, runs=3, warmup_runs=1)
        assert session.device.abis == ("arm64-v8a", "armeabi-v7a", "armeabi")
    assert "Inference timings in us" in run.output and run.op_profile_csv is None
    assert adb.calls[-1][3].startswith("rm -r ")


def test_parse_adb_devices():
    text = (
        "* daemon not running; starting now at tcp:5037\n"
        "* daemon started successfully\n"
        "List of devices attached\n"
        "emulator-5554\tdevice\n"
        "192.168.1.20:5555\toffline\n"
        "R58M41ABCDE\tunauthorized\n"
        "0123\tno permissions (missing udev rules? user is in the plugdev group); see [http://developer.android.com/tools/device.html]\n"
        "\n"
    )
    devices = parse_adb_devices(text)
    assert devices[:3] == [
        ("emulator-5554", "device"),
        ("192.168.1.20:5555", "offline"),
        ("R58M41ABCDE", "unauthorized"),
    ]
    assert devices[3][1].startswith("no permissions")
    assert select_device(devices) == "emulator-5554"
    assert parse_adb_devices("List of devices attached\n\n") == []
