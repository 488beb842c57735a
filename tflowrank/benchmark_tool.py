"""The TFLite ``benchmark_model`` tool: read its output (every version since 2019), run it here.

One parser reads what the tool prints, whatever its version or the way the text reached us:

- the timing line in its three forms, newest first:
  ``Inference timings in us: Init: I, First inference: F, Warmup (avg): W, Inference (avg): A``
  (2020 to today), ``Average inference timings in us: Warmup: W, Init: I, Inference: A`` (the
  form of 2019-2020, still printed by the Android benchmark APK) and
  ``Average inference timings in us: Warmup: W, Init: I, no stats: A`` (2018-2019);
- the run statistics ``count=N first= curr= min= max= avg= std=`` with or without the
  ``p5= median= p95=`` tail, and their short forms ``count=N curr=X`` and ``count=0``;
- the memory lines: ``Memory footprint delta from the start of the tool (MB): init= overall=``
  (earlier spelled ``Peak memory footprint (MB): init= overall=``, and ``[Init Phase] / [Overall] -
  Memory usage: max resident set size = X MB`` before that), and
  ``Overall peak memory footprint (MB) via periodic monitoring: P``;
- the op-profiling tables (``--enable_op_profiling``), tab-aligned or as CSV, with or without the
  ``[start]`` column of older versions: the per-op Run Order rows and the Summary by node type.

Each line may carry a prefix (``INFO: ``, a logcat header, an absl/glog header); unknown lines
are ignored. The numbers come from the tool's source: ``benchmark_model.cc`` (timings and memory
lines), ``xla/tsl/util/stats_calculator.{h,cc}`` (the ``count=`` lines and the tables) and
``profiling_listener.cc`` (the section headers); see ``tests/fixtures/benchmark_model/README.md``
for the sample of each format.
"""

import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ToolError

__all__ = [
    "BenchmarkOutput",
    "RunStats",
    "OpRow",
    "NodeTypeRow",
    "parse_benchmark_output",
    "parse_op_profile",
    "benchmark_flags",
    "find_benchmark_binary",
    "run_benchmark_binary",
    "elf_machine",
    "check_output",
]

ENV_BINARY = "TFLOWRANK_BENCHMARK_MODEL"

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf"
_PREFIXES = [
    # logcat -v threadtime: "06-01 12:00:00.123  1234  1250 I tflite  : "
    re.compile(r"^\d\d-\d\d\s+\d\d:\d\d:\d\d\.\d+\s+\d+\s+\d+\s+[VDIWEFS]\s+[^:]*?\s*:\s?"),
    # logcat -v brief: "I/tflite  ( 1234): "
    re.compile(r"^[VDIWEFS]/[^(:]*\(\s*\d+\):\s?"),
    # absl / TensorFlow C++ logging: "2018-09-10 12:36:37.571102: I tensorflow/...cc:361] "
    re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] \S+\] "),
    # glog: "I0910 12:36:37.571102  1234 benchmark_model.cc:361] "
    re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ \S+\] "),
    # TFLite's minimal logger
    re.compile(r"^(?:INFO|WARN|WARNING|ERROR|VERBOSE|DEBUG): "),
]
_TIMING = re.compile(r"(?:Average )?[Ii]nference timings in us:(?P<rest>.*)")
_TIMING_PAIR = re.compile(rf"(?P<key>[A-Za-z][A-Za-z ()]*?)\s*:\s*(?P<value>{_NUM})")
_TIMING_BARE = re.compile(rf"^\s*(?P<value>{_NUM})\s*,")  # the 2018 form: "in us: A , Warmup: W"
_TIMING_KEYS = {
    "init": "init_us",
    "first inference": "first_inference_us",
    "warmup (avg)": "warmup_avg_us",
    "warmup": "warmup_avg_us",
    "inference (avg)": "inference_avg_us",
    "inference": "inference_avg_us",
    "no stats": "inference_avg_us",
}
_STAT_PAIR = re.compile(rf"(?P<key>[a-z0-9]+)=(?P<value>{_NUM})")
_FOOTPRINT = re.compile(
    rf"(?:Memory footprint delta from the start of the tool|Peak memory footprint) \(MB\): "
    rf"init=(?P<init>{_NUM}) overall=(?P<overall>{_NUM})"
)
_RSS_PHASE = re.compile(
    rf"\[(?P<phase>Init Phase|Overall)\] - Memory usage: max resident set size"
    rf"(?:/physical footprint)? = (?P<mb>{_NUM}) MB"
)
_RSS_APK = re.compile(rf"Overall max resident set size(?:/physical footprint)? = (?P<mb>{_NUM}) MB")
_PEAK = re.compile(rf"Overall peak memory footprint \(MB\) via periodic monitoring: (?P<mb>{_NUM})")
_MODEL_SIZE = re.compile(rf"The input model file size \(MB\): (?P<mb>{_NUM})")

_REGULAR_SECTION = "Operator-wise Profiling Info for Regular Benchmark Runs"
_INIT_SECTION = "Profiling Info for Benchmark Initialization"
_OP_ROW = (
    rf"(?P<type>.+?)\s+{{start}}(?P<first>{_NUM})\s+(?P<avg>{_NUM})\s+(?P<percent>{_NUM})%\s+"
    rf"(?P<cdf>{_NUM})%\s+(?P<mem>{_NUM})\s+(?P<times>\d+)(?:\s+(?P<name>.*))?"
)
_OP_ROW_TEXT = re.compile(_OP_ROW.format(start=""))
_OP_ROW_TEXT_START = re.compile(_OP_ROW.format(start=rf"(?P<start>{_NUM})\s+"))
_OP_ROW_CSV = re.compile(
    rf"(?P<type>.+?),\s*(?P<first>{_NUM}),\s*(?P<avg>{_NUM}),\s*(?P<percent>{_NUM})%,\s*"
    rf"(?P<cdf>{_NUM})%,\s*(?P<mem>{_NUM}),\s*(?P<times>\d+),\s*(?P<name>.*)"
)
_TYPE_ROW_TEXT = re.compile(
    rf"(?P<type>.+?)\s+(?P<count>\d+)\s+(?P<avg>{_NUM})\s+(?P<percent>{_NUM})%\s+"
    rf"(?P<cdf>{_NUM})%\s+(?P<mem>{_NUM})\s+(?P<times>\d+)"
)
_TYPE_ROW_CSV = re.compile(
    rf"(?P<type>.+?),\s*(?P<count>\d+),\s*(?P<avg>{_NUM}),\s*(?P<percent>{_NUM})%,\s*"
    rf"(?P<cdf>{_NUM})%,\s*(?P<mem>{_NUM}),\s*(?P<times>\d+)"
)

# Printed when the tool or the platform gives up; a non-zero exit status says the same.
_FAILURE_MARKERS = (
    "Segmentation fault",
    "Aborted",
    "Fatal signal",
    "Bus error",
    "Illegal instruction",
    "CANNOT LINK EXECUTABLE",
    "Exec format error",
    "Benchmarking failed",
)
_TAIL_CHARS = 4000

# ELF e_machine values (System V ABI)
EM_386, EM_ARM, EM_X86_64, EM_AARCH64, EM_RISCV = 3, 40, 62, 183, 243
MACHINE_NAMES = {
    EM_386: "x86 (32-bit)",
    EM_ARM: "32-bit ARM",
    EM_X86_64: "x86-64",
    EM_AARCH64: "AArch64 (64-bit ARM)",
    EM_RISCV: "RISC-V",
}
_HOST_MACHINES = {
    "x86_64": EM_X86_64,
    "amd64": EM_X86_64,
    "i386": EM_386,
    "i686": EM_386,
    "aarch64": EM_AARCH64,
    "arm64": EM_AARCH64,
    "armv7l": EM_ARM,
    "armv8l": EM_ARM,
    "riscv64": EM_RISCV,
}


@dataclass(frozen=True)
class RunStats:
    """One ``count=...`` line: microseconds; percentiles are ``None`` before the tool printed them."""

    count: int
    first_us: float | None
    curr_us: float | None
    min_us: float | None
    max_us: float | None
    avg_us: float | None
    std_us: float | None
    p5_us: float | None = None
    median_us: float | None = None
    p95_us: float | None = None


@dataclass(frozen=True)
class OpRow:
    """One row of the Run Order table: one node of the graph (times in ms per run)."""

    node_type: str
    name: str
    first_ms: float
    avg_ms: float
    percent: float
    cdf_percent: float
    mem_kb: float
    times_called: int


@dataclass(frozen=True)
class NodeTypeRow:
    """One row of the Summary by node type: all nodes of one type (avg ms per run)."""

    node_type: str
    count: int
    avg_ms: float
    percent: float
    cdf_percent: float
    mem_kb: float
    times_called: int


@dataclass(frozen=True)
class BenchmarkOutput:
    """What one ``benchmark_model`` run reported; ``None`` where its version does not print it.

    ``first_inference_us`` falls back to the warm-up ``first=`` (the same number) for versions
    whose timing line lacks it. Memory figures are in MB as the tool prints them (MiB: its
    ``ru_maxrss`` kB / 1024).
    """

    init_us: float | None
    first_inference_us: float | None
    warmup_avg_us: float | None
    inference_avg_us: float | None
    warmup: RunStats | None
    inference: RunStats | None
    model_size_mb: float | None
    memory_footprint_init_mb: float | None
    memory_footprint_mb: float | None
    peak_memory_mb: float | None
    op_profile: tuple = ()
    node_types: tuple = ()


def parse_benchmark_output(text):
    """Parse the console output (stdout + stderr) of one ``benchmark_model`` run.

    Raises:
        TypeError: ``text`` is not a str.
        ValueError: no timing line (``Inference timings in us: ...``) is in ``text``.
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a str. Received: text of type {type(text).__name__}")
    lines = [strip_prefix(line.strip()).strip() for line in text.splitlines()]
    timing_at = None
    for i, line in enumerate(lines):
        if _TIMING.search(line):
            timing_at = i  # the last one wins
    if timing_at is None:
        raise ValueError(
            "`text` holds no benchmark_model timing line ('Inference timings in us: ...'); "
            f"the tool did not finish a benchmark. Received: text ending {text[-300:]!r}"
        )
    timings = _parse_timing(_TIMING.search(lines[timing_at])["rest"])
    stats = [_parse_stats(line) for line in lines[:timing_at] if line.startswith("count=")]
    warmup, inference = _split_stats(stats, timings.get("inference_avg_us"))

    found = {"model_size_mb": None, "init": None, "overall": None, "peak": None}
    for line in lines:
        if m := _FOOTPRINT.search(line):
            found["init"], found["overall"] = _number(m["init"]), _number(m["overall"])
        elif m := _RSS_PHASE.search(line):
            found["init" if m["phase"] == "Init Phase" else "overall"] = _number(m["mb"])
        elif m := _PEAK.search(line):
            found["peak"] = _number(m["mb"])
        elif m := _MODEL_SIZE.search(line):
            found["model_size_mb"] = _number(m["mb"])
        if m := _RSS_APK.search(line):  # glued to the timing line by the Android APK
            found["overall"] = _number(m["mb"])

    first = timings.get("first_inference_us")
    if first is None and warmup is not None:
        first = warmup.first_us
    op_profile, node_types = parse_op_profile(text)
    return BenchmarkOutput(
        init_us=timings.get("init_us"),
        first_inference_us=first,
        warmup_avg_us=timings.get("warmup_avg_us"),
        inference_avg_us=timings.get("inference_avg_us"),
        warmup=warmup,
        inference=inference,
        model_size_mb=found["model_size_mb"],
        memory_footprint_init_mb=found["init"],
        memory_footprint_mb=found["overall"],
        peak_memory_mb=found["peak"],
        op_profile=op_profile,
        node_types=node_types,
    )


def parse_op_profile(text):
    """The op-profiling tables of the regular runs in ``text``: ``(op_rows, node_type_rows)``.

    ``text`` is the tool's console output or the file ``--op_profiling_output_file`` wrote (the
    same tables, tab-aligned or CSV). Only the first Run Order table and the first Summary by
    node type of the regular runs are read (with several subgraphs: the primary graph's); the
    initialization profile and the "Top by ..." tables are skipped. Both are empty when op
    profiling did not run.
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a str. Received: text of type {type(text).__name__}")
    lines = [strip_prefix(line.strip()) for line in text.splitlines()]
    start = 0
    regular = [i for i, line in enumerate(lines) if _REGULAR_SECTION in line]
    if regular:
        start = regular[-1] + 1
    elif any(_INIT_SECTION in line for line in lines):
        return (), ()  # only the initialization was profiled
    ops, types = [], []
    table, pattern = None, None
    for line in lines[start:]:
        stripped = line.strip()
        header = _table_header(stripped)
        if header is not None:
            kind, pattern = header
            table = None
            if kind == "op" and not ops:
                table = ops
            elif kind == "type" and not types:
                table = types
            continue
        if table is None:
            continue
        m = pattern.fullmatch(stripped)
        if m is None:
            table = None  # a blank line or the next section ends a table
            continue
        table.append(_op_row(m) if table is ops else _type_row(m))
    return tuple(ops), tuple(types)


def strip_prefix(line):
    """``line`` without the logging prefixes the tool's lines may carry (repeatedly)."""
    line = line.rstrip("\r\n")
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            new = prefix.sub("", line, count=1)
            if new != line:
                line, changed = new, True
    return line


def benchmark_flags(
    graph,
    *,
    threads,
    runs,
    warmup_runs,
    xnnpack=None,
    gpu=False,
    nnapi=False,
    peak_memory=False,
    op_profile_file=None,
):
    """The ``benchmark_model`` command-line flags for one model, in a fixed order.

    ``--min_secs=0`` and ``--warmup_min_secs=0`` make the tool run exactly ``runs`` timed and
    ``warmup_runs`` warm-up invocations (by default it repeats until a second has passed).
    ``xnnpack=None`` leaves the tool's default (XNNPACK applied by default in builds since
    2020); ``False`` passes ``--use_xnnpack=false``, which recent builds honour by running the
    original TFLite CPU kernels. ``op_profile_file`` turns op profiling on and asks for CSV
    there; tools older than the ``--op_profiling_output_*`` flags ignore them with a warning
    and print the tables on stdout, which ``parse_benchmark_output`` reads instead.
    """
    flags = [
        f"--graph={graph}",
        f"--num_threads={threads}",
        f"--num_runs={runs}",
        "--min_secs=0",
        f"--warmup_runs={warmup_runs}",
        "--warmup_min_secs=0",
    ]
    if xnnpack is not None:
        flags.append(f"--use_xnnpack={'true' if xnnpack else 'false'}")
    if gpu:
        flags.append("--use_gpu=true")
    if nnapi:
        flags.append("--use_nnapi=true")
    if peak_memory:
        flags.append("--report_peak_memory_footprint=true")
    if op_profile_file is not None:
        flags += [
            "--enable_op_profiling=true",
            "--op_profiling_output_mode=csv",
            f"--op_profiling_output_file={op_profile_file}",
        ]
    return flags


def find_benchmark_binary(benchmark_binary=None):
    """The host ``benchmark_model`` to run, or ``None`` if there is none.

    In order: ``benchmark_binary`` (must exist), the ``TFLOWRANK_BENCHMARK_MODEL`` environment
    variable (must exist when set), ``benchmark_model`` on ``PATH``.
    """
    if benchmark_binary is not None:
        return _existing_binary(benchmark_binary, "benchmark_binary")
    if os.environ.get(ENV_BINARY):
        return _existing_binary(os.environ[ENV_BINARY], ENV_BINARY)
    found = shutil.which("benchmark_model")
    return Path(found) if found else None


def run_benchmark_binary(binary, model, *, timeout, op_profiling=False, **flags):
    """Run the host ``benchmark_model`` on ``model``; return ``(command, output, op_csv_text)``.

    ``flags`` are those of ``benchmark_flags``; ``op_csv_text`` is the op-profiling CSV the tool
    wrote, or ``None`` (no op profiling, or a tool too old to write it).

    Raises:
        ToolError: the binary is built for another machine, cannot start, times out, crashes or
            exits with an error; it carries the command and the tail of its output.
    """
    binary = Path(binary)
    machine = elf_machine(binary)
    host = _HOST_MACHINES.get(platform.machine().lower())
    if machine is not None and host is not None and machine != host:
        raise ToolError(
            f"benchmark_model at {str(binary)!r} is built for {_machine_name(machine)}, but this "
            f"host is {_machine_name(host)}: use the build for this machine "
            "(e.g. linux_x86-64 on a PC)."
        )
    with tempfile.TemporaryDirectory(prefix="tflowrank-bench-") as work:
        csv_path = Path(work) / "op_profile.csv" if op_profiling else None
        command = [str(binary), *benchmark_flags(model, op_profile_file=csv_path, **flags)]
        try:
            result = subprocess.run(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as error:
            raise ToolError(
                f"benchmark_model did not finish within {timeout:g} s on {str(model)!r}; it was "
                "stopped. Pass a larger timeout, or fewer runs.",
                command,
                _tail(error.output),
            ) from None
        except OSError as error:  # not executable, wrong format, vanished
            raise ToolError(f"benchmark_model could not start: {error}", command) from None
        output = result.stdout
        check_output(output, result.returncode, command, what=f"on {str(model)!r}")
        csv_text = None
        if csv_path is not None and csv_path.is_file():
            csv_text = csv_path.read_text(errors="replace")
    return command, output, csv_text


def check_output(output, returncode, command, what=""):
    """Raise ``ToolError`` if a ``benchmark_model`` run crashed or failed, else return ``None``."""
    marker = next((m for m in _FAILURE_MARKERS if m in output), None)
    if returncode == 0 and marker is None:
        return
    where = f" {what}" if what else ""
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        message = f"benchmark_model crashed{where}: it was killed by {name}."
    elif marker == "CANNOT LINK EXECUTABLE":
        message = f"benchmark_model cannot start{where}: a shared library it needs is missing."
    elif marker == "Exec format error":
        message = f"benchmark_model cannot start{where}: it is built for another architecture."
    elif marker is not None and marker != "Benchmarking failed":
        message = f"benchmark_model crashed{where} ({marker})."
    else:
        status = f"exit status {returncode}" if returncode else "'Benchmarking failed'"
        message = f"benchmark_model failed{where} ({status}); its log says why."
    raise ToolError(message, command, _tail(output))


def elf_machine(path):
    """The ELF ``e_machine`` of the file at ``path`` (e.g. 183 for AArch64); ``None`` if not ELF."""
    with open(path, "rb") as file:
        header = file.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    byteorder = "big" if header[5] == 2 else "little"
    return int.from_bytes(header[18:20], byteorder)


def _machine_name(machine):
    return MACHINE_NAMES.get(machine, f"ELF machine {machine}")


def _existing_binary(path, argument):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{argument}` must be a path (str or os.PathLike). Received: {argument}={path!r}")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"The benchmark_model binary of `{argument}` does not exist: {str(path)!r}")
    return path


def _tail(output):
    if output is None:
        return ""
    if isinstance(output, bytes):
        output = output.decode("utf-8", "replace")
    return output[-_TAIL_CHARS:]


def _number(text):
    value = float(text)
    return None if value != value or value in (float("inf"), float("-inf")) else value


def _parse_timing(rest):
    values = {}
    bare = _TIMING_BARE.match(rest)
    if bare:
        values["inference_avg_us"] = _number(bare["value"])
    for m in _TIMING_PAIR.finditer(rest):
        field = _TIMING_KEYS.get(m["key"].strip().lower())
        if field is not None and field not in values:
            values[field] = _number(m["value"])
    return values


def _parse_stats(line):
    pairs = {m["key"]: m["value"] for m in _STAT_PAIR.finditer(line)}
    count = int(float(pairs.get("count", 0)))
    if count == 0:
        return RunStats(0, None, None, None, None, None, None)
    curr = _number(pairs["curr"]) if "curr" in pairs else None
    if "avg" not in pairs:  # "count=N curr=X": every run took the same time
        same = dict(first_us=curr, curr_us=curr, min_us=curr, max_us=curr, avg_us=curr, std_us=0.0)
        return RunStats(count, **same, **_percentiles(pairs))
    return RunStats(
        count=count,
        first_us=_number(pairs["first"]) if "first" in pairs else None,
        curr_us=curr,
        min_us=_number(pairs["min"]) if "min" in pairs else None,
        max_us=_number(pairs["max"]) if "max" in pairs else None,
        avg_us=_number(pairs["avg"]),
        std_us=_number(pairs["std"]) if "std" in pairs else None,
        **_percentiles(pairs),
    )


def _percentiles(pairs):
    return {f"{key}_us": _number(pairs[key]) if key in pairs else None for key in ("p5", "median", "p95")}


def _split_stats(stats, inference_avg):
    """The warm-up and the regular ``count=`` lines (the last two before the timing line)."""
    if not stats:
        return None, None
    if len(stats) >= 2:
        return stats[-2], stats[-1]
    (only,) = stats
    if inference_avg is not None and only.avg_us is not None:
        if abs(only.avg_us - inference_avg) <= 1e-3 * max(abs(inference_avg), 1.0):
            return None, only
        return only, None
    return None, only


def _table_header(line):
    if "[node type]" in line:
        return "op", _OP_ROW_TEXT_START if "[start]" in line else _OP_ROW_TEXT
    if "[Node type]" in line:
        return "type", _TYPE_ROW_TEXT
    if line.startswith("node type, first,"):
        return "op", _OP_ROW_CSV
    if line.startswith("node type, count,"):
        return "type", _TYPE_ROW_CSV
    return None


def _op_row(m):
    name = (m["name"] or "").strip()
    if m.re is _OP_ROW_CSV:
        name = name.replace("\t", ",")  # the CSV formatter writes the name's commas as tabs
    return OpRow(
        node_type=m["type"].strip(),
        name=name,
        first_ms=float(m["first"]),
        avg_ms=float(m["avg"]),
        percent=float(m["percent"]),
        cdf_percent=float(m["cdf"]),
        mem_kb=float(m["mem"]),
        times_called=int(m["times"]),
    )


def _type_row(m):
    return NodeTypeRow(
        node_type=m["type"].strip(),
        count=int(m["count"]),
        avg_ms=float(m["avg"]),
        percent=float(m["percent"]),
        cdf_percent=float(m["cdf"]),
        mem_kb=float(m["mem"]),
        times_called=int(m["times"]),
    )
