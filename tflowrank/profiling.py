"""Latency and footprint of .tflite models on a target, one ``ProfileResult`` per model.

Targets, and the runner that produces the numbers (``ProfileResult.runner``):

- ``"host"``: the TFLite ``benchmark_model`` tool when one is found (``benchmark_binary=``, the
  ``TFLOWRANK_BENCHMARK_MODEL`` environment variable, or ``benchmark_model`` on ``PATH``):
  ``"benchmark_model"``; otherwise the LiteRT interpreter in this process: ``"litert-python"``.
- ``"android"``: ``benchmark_model`` on a device over adb (``tflowrank.android``):
  ``"benchmark_model-android"``.
- ``"micro"``: TFLite Micro's interpreter with the real TFLM kernels (``tflowrank.micro``):
  ``"tflite-micro"``; arena, flash, ops and parity in ``ProfileResult.micro``, no latency.

Each target maps (``_TARGETS``) to a context manager that prepares it once (finds the binary,
sets up the device) and yields ``run(path) -> ProfileResult``; ``profile`` loops over the models
and reports progress. With ``repeats``, it loops over rounds, and in process each round runs in a
fresh child (``python -m tflowrank.profiling SPEC``, LiteRT without TensorFlow); ``_combine``
merges a model's rounds into one result.
"""

import contextlib
import dataclasses
import functools
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._io import child_env, input_path
from .errors import TflowrankError, ToolError

__all__ = ["profile", "ProfileResult", "MicroDetails", "MicroOp", "format_profiles", "TARGETS"]

_MICRO_SAMPLES = 8  # seeded random inputs run through TFLM and the LiteRT reference kernels
_MICRO_INSTALL = "target='micro' needs TFLite Micro: pip install 'tflowrank[micro]' (package tflite-micro)"
_TOOL_ONLY = ("gpu", "peak_memory", "op_profiling")


@dataclass(frozen=True)
class MicroOp:
    """One op type of the model: how many nodes use it and whether TFLM has a kernel for it."""

    name: str
    count: int
    supported: bool


@dataclass(frozen=True)
class MicroDetails:
    """What a microcontroller needs for a model, measured with TFLite Micro on this host.

    ``flash_bytes`` is the .tflite file size: the flatbuffer a device keeps in flash as it is
    (TFLM's own code is not counted). ``arena_*_bytes`` come from TFLM's recording allocator:
    ``total`` is the tensor arena the model needs (``head``: planned activations; ``tail``:
    what lives as long as the interpreter). Parity compares TFLM's outputs with LiteRT's
    reference kernels (``OpResolverType.BUILTIN_REF``, which TFLM matches bit for bit) on
    ``samples`` seeded random inputs: ``max_lsb_difference`` for integer outputs,
    ``max_abs_difference`` for float ones. Budgets are in KiB (1024 bytes); a margin is budget
    minus need, negative when over; ``*_ok`` is ``None`` without a budget. When TFLM cannot run
    the model, ``problems`` says why and the run-time fields are ``None``.
    """

    flash_bytes: int
    ops: tuple
    fully_int8: bool
    problems: tuple = ()
    arena_total_bytes: int | None = None
    arena_head_bytes: int | None = None
    arena_tail_bytes: int | None = None
    samples: int = 0
    max_lsb_difference: int | None = None
    max_abs_difference: float | None = None
    flash_budget_kb: float | None = None
    flash_margin_kb: float | None = None
    flash_ok: bool | None = None
    ram_budget_kb: float | None = None
    ram_margin_kb: float | None = None
    ram_ok: bool | None = None

    @property
    def runnable(self):
        return not self.problems


@dataclass(frozen=True)
class ProfileResult:
    """One model on one target. Times in microseconds; ``None`` means not measured.

    Fields are named like the TFLite benchmark tool's. ``warmup_avg_us`` averages the warm-up
    invocations, the first inference included. ``inference_median_us`` is ``None`` from
    ``benchmark_model`` versions that print no percentiles; ``peak_memory_mb`` needs
    ``peak_memory=True`` and the tool; ``memory_footprint_mb`` / ``memory_footprint_init_mb`` are
    the tool's "memory footprint delta" (overall / after init, MB). ``runs`` is the number of
    timed invocations that ran (``0`` on ``"micro"``, which measures no latency). ``command`` is
    what ran (empty in process); ``op_profile`` (``OpRow``) and ``node_types`` (``NodeTypeRow``)
    hold the tool's op-profiling tables; ``micro`` holds the TFLM details.

    ``repeats`` is how many rounds timed the model (``profile(repeats=...)``) and
    ``repeat_medians_us`` each round's median (its average where the tool prints no median;
    empty on ``"micro"``). Over several rounds: ``inference_median_us``, ``init_us``,
    ``first_inference_us``, ``warmup_avg_us``, ``inference_p95_us`` and the memory footprints are
    the median over rounds of each round's figure; ``inference_avg_us`` and ``inference_std_us``
    are those of all timed invocations together; min and max over all; ``peak_memory_mb`` the
    largest; ``runs`` the invocations of all rounds; ``command`` and the op tables the first
    round's.
    """

    model: str
    target: str
    runner: str
    threads: int
    runs: int
    init_us: float | None
    first_inference_us: float | None
    warmup_avg_us: float | None
    inference_avg_us: float | None
    inference_median_us: float | None
    inference_std_us: float | None
    peak_memory_mb: float | None
    size_bytes: int
    inference_min_us: float | None = None
    inference_max_us: float | None = None
    inference_p95_us: float | None = None
    memory_footprint_mb: float | None = None
    memory_footprint_init_mb: float | None = None
    device: str | None = None
    command: tuple = ()
    op_profile: tuple = ()
    node_types: tuple = ()
    micro: MicroDetails | None = None
    repeats: int = 1
    repeat_medians_us: tuple = ()

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class _Options:
    threads: int
    runs: int
    warmup_runs: int
    benchmark_binary: object
    serial: str | None
    xnnpack: bool | None
    gpu: bool
    nnapi: bool
    cpu_mask: str | None
    peak_memory: bool
    op_profiling: bool
    timeout: float
    flash_budget_kb: float | None
    ram_budget_kb: float | None


def profile(
    paths,
    target="host",
    threads=1,
    runs=50,
    warmup_runs=5,
    *,
    repeats=1,
    benchmark_binary=None,
    serial=None,
    xnnpack=None,
    gpu=False,
    nnapi=False,
    cpu_mask=None,
    peak_memory=False,
    op_profiling=False,
    timeout=600.0,
    flash_budget_kb=None,
    ram_budget_kb=None,
    progress=False,
):
    """Profile each .tflite model in ``paths`` (one path or a list) on ``target``; keep the order.

    Per model (``"host"``, ``"android"``): init (``init_us``), ``max(warmup_runs, 1)`` warm-up
    invocations whose first one is ``first_inference_us``, then ``runs`` timed invocations on
    seeded random inputs (in process) or the tool's random inputs.

    Args:
        paths: a .tflite path or a list of them; the first is the baseline of reports.
        target: ``"host"``, ``"android"`` or ``"micro"`` (see the module docstring).
        threads, runs, warmup_runs: as the tool's ``--num_threads``, ``--num_runs`` and
            ``--warmup_runs``; unused on ``"micro"``.
        repeats: ``"host"`` and ``"android"``: time every model this many times, in rounds
            that run each model once, the order reversed every other round, so that a
            disturbance spreads over all of them. In process, each round runs in a fresh child
            process: on a desktop CPU the same file times up to 15% apart from one process to
            another (memory placement, presumably), which one process cannot show and a median
            over processes evens out; a tool run is a fresh process anyway. Each result merges
            its rounds (see ``ProfileResult``). 1 (the default) times once, in this process.
        benchmark_binary: the ``benchmark_model`` executable. ``"host"``: optional (else
            ``TFLOWRANK_BENCHMARK_MODEL``, then ``PATH``, then the in-process fallback;
            ``False`` skips the look-up and always runs in process); ``"android"``: required,
            the Android build, pushed to the device.
        serial: ``"android"``: the device (``adb devices``); ``None`` takes the one ready device.
        xnnpack: ``None`` keeps the runtime's default (XNNPACK on); ``True`` / ``False`` force it
            (``--use_xnnpack``; in process, ``False`` runs without default delegates).
        gpu, nnapi: the GPU / NNAPI delegates (``--use_gpu``, ``--use_nnapi``; NNAPI on Android).
        cpu_mask: ``"android"``: a hex CPU affinity mask for ``taskset`` (``"f0"``: CPUs 4-7).
        peak_memory: ``--report_peak_memory_footprint`` (fills ``peak_memory_mb``).
        op_profiling: ``--enable_op_profiling`` with CSV output, read back into ``op_profile``
            and ``node_types``.
        timeout: seconds one tool run may take before it is stopped (``ToolError``).
        flash_budget_kb, ram_budget_kb: ``"micro"``: budgets in KiB for a pass/fail and margin.
        progress: ``True`` prints a line per model to stderr; a callable is called as
            ``progress(index, total, path, result)`` before (``result=None``) and after each model
            (with ``repeats``: each model of each round, ``total`` counting them all; for a
            round in a child process, both calls come when the round ends).

    Raises:
        ValueError / TypeError: a bad argument (named, with the value received).
        ToolError: the tool, adb or TFLM failed; carries the command and its output tail.
        TflowrankError: TFLM is not installed (``"micro"``).
    """
    if target not in _TARGETS:
        raise ValueError(
            f"`target` must be one of {', '.join(map(repr, _TARGETS))}. Received: target={target!r}"
        )
    _check_count("threads", threads, minimum=1)
    _check_count("runs", runs, minimum=1)
    _check_count("warmup_runs", warmup_runs, minimum=0)
    _check_count("repeats", repeats, minimum=1)
    if target == "micro" and repeats != 1:
        raise ValueError(f"`repeats` applies to target='host' and 'android' only (TFLite Micro "
                         f"measures no latency). Received: repeats={repeats!r} with target='micro'")
    options = _Options(
        threads=int(threads),
        runs=int(runs),
        warmup_runs=int(warmup_runs),
        benchmark_binary=benchmark_binary,
        serial=_check_serial(serial),
        xnnpack=_check_flag("xnnpack", xnnpack, allow_none=True),
        gpu=_check_flag("gpu", gpu),
        nnapi=_check_flag("nnapi", nnapi),
        cpu_mask=_check_cpu_mask(cpu_mask),
        peak_memory=_check_flag("peak_memory", peak_memory),
        op_profiling=_check_flag("op_profiling", op_profiling),
        timeout=_check_positive("timeout", timeout, "a number of seconds"),
        flash_budget_kb=_check_positive("flash_budget_kb", flash_budget_kb, "KiB", allow_none=True),
        ram_budget_kb=_check_positive("ram_budget_kb", ram_budget_kb, "KiB", allow_none=True),
    )
    _check_target_options(target, options)
    report = _progress_reporter(progress, target)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [input_path(p, "paths") for p in paths]
    if not paths:
        raise ValueError("`paths` must name at least one .tflite file. Received: paths=[]")

    rounds = [[] for _ in paths]
    total = len(paths) * repeats
    with _TARGETS[target](options) as run:
        # the in-process runner times each round in a fresh child; a tool run is a fresh process
        isolated = repeats > 1 and getattr(run, "func", None) is _run_in_process
        for round_ in range(repeats):
            order = list(range(len(paths)))[:: -1 if round_ % 2 else 1]
            done = round_ * len(paths)
            timed = iter(_round_in_child([paths[i] for i in order], options)) if isolated else None
            for position, i in enumerate(order):
                report(done + position + 1, total, paths[i], None)
                rounds[i].append(next(timed) if isolated else run(paths[i]))
                report(done + position + 1, total, paths[i], rounds[i][-1])
    return [_combine(r) for r in rounds]


def _combine(rounds):
    """One model's ``ProfileResult`` of each round, merged into one (see ``ProfileResult``)."""
    first = rounds[0]
    medians = tuple(r.inference_median_us if r.inference_median_us is not None else r.inference_avg_us
                    for r in rounds)
    medians = () if None in medians else medians
    if len(rounds) == 1:
        return dataclasses.replace(first, repeats=1, repeat_medians_us=medians)

    def over(name, how=statistics.median):  # None unless every round measured it
        values = [getattr(r, name) for r in rounds]
        return None if None in values else how(values)

    runs = sum(r.runs for r in rounds)
    avg = std = None
    if over("inference_avg_us", list) is not None and runs:
        avg = sum(r.runs * r.inference_avg_us for r in rounds) / runs
        if over("inference_std_us", list) is not None:  # all invocations pooled
            std = math.sqrt(sum(r.runs * (r.inference_std_us ** 2 + (r.inference_avg_us - avg) ** 2)
                                for r in rounds) / runs)
    return dataclasses.replace(
        first,
        runs=runs,
        init_us=over("init_us"),
        first_inference_us=over("first_inference_us"),
        warmup_avg_us=over("warmup_avg_us"),
        inference_avg_us=avg,
        inference_median_us=over("inference_median_us"),
        inference_std_us=std,
        peak_memory_mb=over("peak_memory_mb", max),
        inference_min_us=over("inference_min_us", min),
        inference_max_us=over("inference_max_us", max),
        inference_p95_us=over("inference_p95_us"),
        memory_footprint_mb=over("memory_footprint_mb"),
        memory_footprint_init_mb=over("memory_footprint_init_mb"),
        repeats=len(rounds),
        repeat_medians_us=medians,
    )


def _round_in_child(paths, options):
    """``_run_in_process`` on each of ``paths`` in a fresh child process (this module's
    ``__main__``): ``ProfileResult`` list; ``ToolError`` with the child's output if it fails."""
    with tempfile.TemporaryDirectory(prefix="tflowrank-profile-") as folder:
        spec = Path(folder) / "round.json"
        task = {"paths": [str(p) for p in paths], "options": dataclasses.asdict(options)}
        spec.write_text(json.dumps(task, default=str))
        command = [sys.executable, "-m", "tflowrank.profiling", str(spec)]
        try:
            child = subprocess.run(command, capture_output=True, text=True, errors="replace",
                                   env=child_env(TF_CPP_MIN_LOG_LEVEL="2"),
                                   timeout=options.timeout * len(paths))
        except subprocess.TimeoutExpired as error:
            raise ToolError(f"Timing {len(paths)} model(s) in a child process took more than "
                            f"{error.timeout:.0f} s (`timeout` per model).", command, "") from None
        if child.returncode != 0:
            raise ToolError(f"Timing {len(paths)} model(s) in a child process failed (exit code "
                            f"{child.returncode}).", command, (child.stdout + child.stderr)[-4000:])
        answers = json.loads(spec.with_suffix(".out.json").read_text())
    return [ProfileResult(**{**a, "command": (), "op_profile": (), "node_types": (), "micro": None,
                             "repeat_medians_us": tuple(a["repeat_medians_us"])}) for a in answers]


def _child_main(spec):
    """The child of ``_round_in_child``: time each model of ``spec`` once, in this process."""
    spec = Path(spec)
    task = json.loads(spec.read_text())
    options = _Options(**task["options"])
    results = [_run_in_process(path, options).to_dict() for path in task["paths"]]
    spec.with_suffix(".out.json").write_text(json.dumps(results))


def format_profiles(results):
    """A text table of ``results``; the ratio is each model's average time over the first's.

    ``tflowrank.reports.comparison_table`` gives the full comparison (sizes, memory, TFLM).
    """
    from .reports import render_table

    header = ("model", "size KB", "avg ms", "median ms", "std ms", "ratio vs first")
    baseline = results[0].inference_avg_us if results else None
    rows = []
    for r in results:
        ratio = r.inference_avg_us / baseline if baseline and r.inference_avg_us is not None else None
        rows.append(
            (
                r.model,
                f"{r.size_bytes / 1024:.1f}",
                _ms(r.inference_avg_us),
                _ms(r.inference_median_us),
                _ms(r.inference_std_us),
                f"{ratio:.2f}x" if ratio is not None else "-",
            )
        )
    return render_table(header, rows)


# --- validation ---------------------------------------------------------------------------------


def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")


def _check_flag(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if not isinstance(value, (bool, np.bool_)):
        allowed = "True, False or None" if allow_none else "True or False"
        raise ValueError(f"`{name}` must be {allowed}. Received: {name}={value!r}")
    return bool(value)


def _check_positive(name, value, unit, allow_none=False):
    if value is None and allow_none:
        return None
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not number or not value > 0 or value == float("inf"):
        raise ValueError(f"`{name}` must be a positive number ({unit}). Received: {name}={value!r}")
    return float(value)


def _check_serial(serial):
    if serial is None or (isinstance(serial, str) and serial.strip()):
        return serial
    raise ValueError(
        "`serial` must be a device serial as `adb devices` lists it (a non-empty str). "
        f"Received: serial={serial!r}"
    )


def _check_cpu_mask(cpu_mask):
    if cpu_mask is None:
        return None
    text = cpu_mask if isinstance(cpu_mask, str) else None
    if text is not None and re.fullmatch(r"(0[xX])?[0-9a-fA-F]+", text) and int(text, 16) > 0:
        return text[2:].lower() if text[:2] in ("0x", "0X") else text.lower()
    raise ValueError(
        "`cpu_mask` must be a non-zero hexadecimal CPU affinity mask for taskset, such as 'f0' "
        f"(CPUs 4-7). Received: cpu_mask={cpu_mask!r}"
    )


def _check_target_options(target, options):
    def reject(name, value, wanted):
        raise ValueError(
            f"`{name}` applies to {wanted} only. Received: {name}={value!r} with target={target!r}"
        )

    if target != "android":
        for name in ("serial", "cpu_mask"):
            if getattr(options, name) is not None:
                reject(name, getattr(options, name), "target='android'")
        if options.nnapi:
            reject("nnapi", True, "target='android' (NNAPI is Android's)")
    if target != "micro":
        for name in ("flash_budget_kb", "ram_budget_kb"):
            if getattr(options, name) is not None:
                reject(name, getattr(options, name), "target='micro'")
    else:
        if options.benchmark_binary not in (None, False):
            reject("benchmark_binary", options.benchmark_binary, "target='host' and 'android'")
        if options.xnnpack is not None:
            reject("xnnpack", options.xnnpack, "target='host' and 'android'")
        for name in _TOOL_ONLY:
            if getattr(options, name):
                reject(name, True, "target='host' and 'android'")
    if target == "android":
        if options.benchmark_binary in (None, False):
            raise ValueError(
                "target='android' needs `benchmark_binary`: the Android build of benchmark_model "
                "(e.g. android_aarch64), which tflowrank pushes to the device. Received: "
                f"benchmark_binary={options.benchmark_binary!r}"
            )
        input_path(options.benchmark_binary, "benchmark_binary")


def _progress_reporter(progress, target):
    if progress is None or progress is False:
        return lambda *args: None
    if progress is True:
        return functools.partial(_print_progress, target=target, started={})
    if callable(progress):
        return progress
    raise TypeError(
        f"`progress` must be True, False or a callable. Received: progress of type {type(progress).__name__}"
    )


def _print_progress(index, total, path, result, target, started):
    if result is None:
        started[index] = time.monotonic()
        print(f"tflowrank profile: [{index}/{total}] {path} on {target} ...", file=sys.stderr, flush=True)
        return
    seconds = time.monotonic() - started.pop(index, time.monotonic())
    if result.inference_avg_us is not None:
        what = f"{result.inference_avg_us / 1000:.3f} ms avg ({result.runner})"
    elif result.micro is not None and result.micro.runnable:
        what = f"arena {result.micro.arena_total_bytes} bytes ({result.runner})"
    else:
        what = f"not runnable ({result.runner})"
    print(
        f"tflowrank profile: [{index}/{total}] {path}: {what}, {seconds:.1f} s", file=sys.stderr, flush=True
    )


# --- host ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _host(options):
    from .benchmark_tool import find_benchmark_binary

    binary = None if options.benchmark_binary is False else find_benchmark_binary(options.benchmark_binary)
    if binary is not None:
        yield functools.partial(_run_host_tool, binary=binary, options=options)
        return
    for name in _TOOL_ONLY:
        if getattr(options, name):
            raise ValueError(
                f"`{name}=True` needs the benchmark_model tool, and none was found: pass "
                "benchmark_binary=PATH, set TFLOWRANK_BENCHMARK_MODEL or put benchmark_model on "
                f"PATH (the in-process LiteRT runner cannot do it). Received: {name}=True"
            )
    yield functools.partial(_run_in_process, options=options)


def _run_host_tool(path, binary, options):
    from .benchmark_tool import run_benchmark_binary

    command, output, csv_text = run_benchmark_binary(
        binary, path, timeout=options.timeout, op_profiling=options.op_profiling, **_tool_flags(options)
    )
    return _tool_result(path, "host", "benchmark_model", options, command, output, csv_text, None)


def _run_in_process(path, options):
    """In-process LiteRT interpreter (XNNPACK applies by default)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.AUTO
    if options.xnnpack is False:
        resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    start = time.perf_counter_ns()
    interpreter = Interpreter(
        model_path=str(path), num_threads=options.threads, experimental_op_resolver_type=resolver
    )
    interpreter.allocate_tensors()
    init_us = (time.perf_counter_ns() - start) / 1000

    rng = np.random.default_rng(0)
    for d in interpreter.get_input_details():
        interpreter.set_tensor(d["index"], _random_input(rng, d["shape"], d["dtype"]))

    warmup = [_time_invoke(interpreter) for _ in range(max(options.warmup_runs, 1))]
    timed = [_time_invoke(interpreter) for _ in range(options.runs)]
    ordered = sorted(timed)
    return ProfileResult(
        model=str(path),
        target="host",
        runner="litert-python",
        threads=options.threads,
        runs=options.runs,
        init_us=init_us,
        first_inference_us=warmup[0],
        warmup_avg_us=statistics.fmean(warmup),
        inference_avg_us=statistics.fmean(timed),
        inference_median_us=statistics.median(timed),
        inference_std_us=statistics.pstdev(timed),
        peak_memory_mb=None,
        size_bytes=Path(path).stat().st_size,
        inference_min_us=ordered[0],
        inference_max_us=ordered[-1],
        inference_p95_us=ordered[len(ordered) * 95 // 100],  # the tool's definition
    )


def _time_invoke(interpreter):
    start = time.perf_counter_ns()
    interpreter.invoke()
    return (time.perf_counter_ns() - start) / 1000


def _random_input(rng, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        low, high = max(info.min, -128), min(info.max, 127)
        return rng.integers(low, high, size=shape, endpoint=True).astype(dtype)
    return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)


# --- android ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _android(options):
    from .android import android_session

    with android_session(options.benchmark_binary, options.serial, options.timeout) as session:
        yield functools.partial(_run_android, session=session, options=options)


def _run_android(path, session, options):
    run = session.run(
        path, cpu_mask=options.cpu_mask, op_profiling=options.op_profiling, **_tool_flags(options)
    )
    return _tool_result(
        path, "android", "benchmark_model-android", options, run.command, run.output,
        run.op_profile_csv, str(session.device),
    )  # fmt: skip


def _tool_flags(options):
    return dict(
        threads=options.threads,
        runs=options.runs,
        warmup_runs=max(options.warmup_runs, 1),
        xnnpack=options.xnnpack,
        gpu=options.gpu,
        nnapi=options.nnapi,
        peak_memory=options.peak_memory,
    )


def _tool_result(path, target, runner, options, command, output, csv_text, device):
    from .benchmark_tool import parse_benchmark_output, parse_op_profile

    try:
        parsed = parse_benchmark_output(output)
    except ValueError:
        raise ToolError(
            f"benchmark_model printed no timing line for {str(path)!r}: it did not finish a benchmark.",
            command,
            output[-4000:],
        ) from None
    ops, types = parsed.op_profile, parsed.node_types
    if csv_text:
        csv_ops, csv_types = parse_op_profile(csv_text)
        if csv_ops or csv_types:
            ops, types = csv_ops, csv_types
    if options.op_profiling and not (ops or types):
        warnings.warn(
            f"op profiling was asked for, but benchmark_model reported no op table for {str(path)!r}",
            RuntimeWarning,
            stacklevel=4,
        )
    inference = parsed.inference
    return ProfileResult(
        model=str(path),
        target=target,
        runner=runner,
        threads=options.threads,
        runs=inference.count if inference is not None else options.runs,
        init_us=parsed.init_us,
        first_inference_us=parsed.first_inference_us,
        warmup_avg_us=parsed.warmup_avg_us,
        inference_avg_us=parsed.inference_avg_us,
        inference_median_us=inference.median_us if inference else None,
        inference_std_us=inference.std_us if inference else None,
        peak_memory_mb=parsed.peak_memory_mb,
        size_bytes=Path(path).stat().st_size,
        inference_min_us=inference.min_us if inference else None,
        inference_max_us=inference.max_us if inference else None,
        inference_p95_us=inference.p95_us if inference else None,
        memory_footprint_mb=parsed.memory_footprint_mb,
        memory_footprint_init_mb=parsed.memory_footprint_init_mb,
        device=device,
        command=tuple(command),
        op_profile=ops,
        node_types=types,
    )


# --- micro --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _micro(options):
    if importlib.util.find_spec("tflite_micro") is None:
        raise TflowrankError(_MICRO_INSTALL)
    yield functools.partial(_run_micro, options=options)


def _run_micro(path, options):
    """TFLM's arena, flash and op support for ``path``, and its parity with LiteRT's reference."""
    from .micro import check_micro, max_lsb_difference, micro_supported_ops, run_micro
    from .tflite_model import inspect_tflite

    info = inspect_tflite(path)
    supported = micro_supported_ops()
    ops = tuple(MicroOp(name, count, name in supported) for name, count in sorted(info.ops.items()))
    problems = list(check_micro(path))
    if not problems and (len(info.input_details) != 1 or len(info.output_details) != 1):
        problems.append(
            f"tflowrank runs single-input, single-output models with TFLite Micro; this one has "
            f"{len(info.input_details)} inputs and {len(info.output_details)} outputs"
        )
    details = dict(flash_bytes=info.size_bytes, ops=ops, fully_int8=info.is_fully_int8)
    if not problems:
        detail = info.input_details[0]
        rng = np.random.default_rng(0)
        x = _random_input(rng, (_MICRO_SAMPLES, *detail.shape[1:]), detail.dtype)
        try:
            run = run_micro(path, x)
        except ToolError as error:  # TFLM refused the model or crashed in its child process
            problems.append(str(error).splitlines()[0])
        else:
            reference = _litert_reference(path, x)
            details.update(
                arena_total_bytes=run.arena_total_bytes,
                arena_head_bytes=run.arena_head_bytes,
                arena_tail_bytes=run.arena_tail_bytes,
                samples=len(x),
            )
            if np.issubdtype(run.outputs.dtype, np.integer):
                details["max_lsb_difference"] = max_lsb_difference(run.outputs, reference)
            else:
                difference = np.abs(run.outputs.astype(np.float64) - reference.astype(np.float64))
                details["max_abs_difference"] = float(difference.max()) if difference.size else 0.0
    details.update(_budget("flash", options.flash_budget_kb, info.size_bytes))
    details.update(_budget("ram", options.ram_budget_kb, details.get("arena_total_bytes")))
    return ProfileResult(
        model=str(path),
        target="micro",
        runner="tflite-micro",
        threads=1,
        runs=0,
        init_us=None,
        first_inference_us=None,
        warmup_avg_us=None,
        inference_avg_us=None,
        inference_median_us=None,
        inference_std_us=None,
        peak_memory_mb=None,
        size_bytes=info.size_bytes,
        micro=MicroDetails(problems=tuple(problems), **details),
    )


def _litert_reference(path, x):
    """LiteRT's reference kernels on each sample of ``x`` (TFLM's kernels are the same code)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    outputs = []
    for sample in x:
        interpreter.set_tensor(inp["index"], sample[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(out["index"]))
    return np.concatenate(outputs)


def _budget(kind, budget_kb, used_bytes):
    if budget_kb is None:
        return {}
    if used_bytes is None:
        return {f"{kind}_budget_kb": budget_kb}
    margin = budget_kb - used_bytes / 1024
    return {f"{kind}_budget_kb": budget_kb, f"{kind}_margin_kb": margin, f"{kind}_ok": margin >= 0}


def _ms(us):
    return f"{us / 1000:.3f}" if us is not None else "-"


# target -> context manager(options) yielding run(path) -> ProfileResult
_TARGETS = {"host": _host, "android": _android, "micro": _micro}
TARGETS = tuple(_TARGETS)

if __name__ == "__main__":
    _child_main(sys.argv[1])
