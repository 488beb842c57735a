"""Latency of .tflite models on a target, one ``ProfileResult`` per model.

Each target maps to a runner function ``runner(path, threads, runs, warmup_runs)`` that returns a
``ProfileResult``; today only ``"host"`` exists (the in-process LiteRT interpreter).
"""

import dataclasses
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._io import input_path

__all__ = ["profile", "ProfileResult", "format_profiles"]


@dataclass(frozen=True)
class ProfileResult:
    """Timings of one model in microseconds; ``peak_memory_mb`` is ``None`` when not measured.

    ``warmup_avg_us`` averages the warm-up invocations, the first inference included.
    """

    model: str
    target: str
    runner: str
    threads: int
    runs: int
    init_us: float
    first_inference_us: float
    warmup_avg_us: float
    inference_avg_us: float
    inference_median_us: float
    inference_std_us: float
    peak_memory_mb: float | None
    size_bytes: int

    def to_dict(self):
        return dataclasses.asdict(self)


def profile(paths, target="host", threads=1, runs=50, warmup_runs=5):
    """Time each .tflite model in ``paths`` (one path or a list) on ``target``; keep the order.

    Per model: construct + allocate (``init_us``), ``max(warmup_runs, 1)`` warm-up invocations
    whose first one is ``first_inference_us``, then ``runs`` timed invocations on seeded random
    inputs of the right shape and dtype.
    """
    if target not in _RUNNERS:
        raise ValueError(
            f"`target` must be one of {', '.join(map(repr, _RUNNERS))}. Received: target={target!r}"
        )
    _check_count("threads", threads, minimum=1)
    _check_count("runs", runs, minimum=1)
    _check_count("warmup_runs", warmup_runs, minimum=0)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [input_path(p, "paths") for p in paths]
    if not paths:
        raise ValueError("`paths` must name at least one .tflite file. Received: paths=[]")
    runner = _RUNNERS[target]
    return [runner(p, threads=threads, runs=runs, warmup_runs=warmup_runs) for p in paths]


def format_profiles(results):
    """A text table of ``results``; the ratio is each model's average time over the first's."""
    header = ("model", "size KB", "avg ms", "median ms", "std ms", "ratio vs first")
    rows = []
    for r in results:
        baseline = results[0].inference_avg_us
        ratio = r.inference_avg_us / baseline if baseline else float("nan")
        rows.append(
            (
                r.model,
                f"{r.size_bytes / 1024:.1f}",
                f"{r.inference_avg_us / 1000:.3f}",
                f"{r.inference_median_us / 1000:.3f}",
                f"{r.inference_std_us / 1000:.3f}",
                f"{ratio:.2f}x",
            )
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [c.rjust(w) for c, w in zip(row, widths, strict=True)]
        cells[0] = row[0].ljust(widths[0])
        lines.append("  ".join(cells))
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")


def _run_host(path, threads, runs, warmup_runs):
    """In-process LiteRT interpreter (XNNPACK applies by default)."""
    from ai_edge_litert.interpreter import Interpreter

    start = time.perf_counter_ns()
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    init_us = (time.perf_counter_ns() - start) / 1000

    rng = np.random.default_rng(0)
    for d in interpreter.get_input_details():
        interpreter.set_tensor(d["index"], _random_input(rng, d["shape"], d["dtype"]))

    warmup = [_time_invoke(interpreter) for _ in range(max(warmup_runs, 1))]
    timed = [_time_invoke(interpreter) for _ in range(runs)]
    return ProfileResult(
        model=str(path),
        target="host",
        runner="litert-python",
        threads=threads,
        runs=runs,
        init_us=init_us,
        first_inference_us=warmup[0],
        warmup_avg_us=statistics.fmean(warmup),
        inference_avg_us=statistics.fmean(timed),
        inference_median_us=statistics.median(timed),
        inference_std_us=statistics.pstdev(timed),
        peak_memory_mb=None,
        size_bytes=Path(path).stat().st_size,
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


# target -> runner(path, threads, runs, warmup_runs) -> ProfileResult
_RUNNERS = {"host": _run_host}
