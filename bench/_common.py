"""Helpers shared by the bench scripts: environment capture, isolated calls, tables, JSON output."""

import json
import multiprocessing
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from importlib import metadata
from pathlib import Path

from tflowrank._io import atomic_path
from tflowrank.errors import ToolError

PACKAGES = ("tensorflow", "keras", "ai-edge-litert", "numpy", "tflowrank")


def command_line():
    """The command that is running, as one shell-quoted line."""
    return shlex.join([Path(sys.executable).name, *sys.argv])


def require_fashion_mnist():
    """Exit with a message unless the full Fashion-MNIST is on this machine: without it
    ``tflowrank.datasets.fashion_mnist`` falls back to the subset shipped with tflowrank, and a
    figure measured on that is not the figure a script names. Call it before any work."""
    from tflowrank.datasets import fashion_mnist_source

    if fashion_mnist_source() == "subset shipped with tflowrank":
        sys.exit("bench: the full Fashion-MNIST is not on this machine (only the subset shipped "
                 "with tflowrank, on which no figure here is comparable): `apt install "
                 "dataset-fashion-mnist`, or set TFLOWRANK_DATA to a folder holding the four IDX "
                 "files")


def fashion_mnist(train, test):
    """``((x_train, y_train), (x_test, y_test))``: the first ``train`` and ``test`` images of
    the full Fashion-MNIST, scaled to [0, 1] (see ``require_fashion_mnist``)."""
    from tflowrank import zoo
    from tflowrank.datasets import fashion_mnist as load

    require_fashion_mnist()
    (x_train, y_train), (x_test, y_test) = load(verbose=False)
    return ((zoo.prepare_images(x_train[:train]), y_train[:train]),
            (zoo.prepare_images(x_test[:test]), y_test[:test]))


def environment():
    """Versions and CPU of this machine and the data source, for the record of a benchmark run."""
    from tflowrank.datasets import fashion_mnist_source

    return {
        "fashion_mnist": fashion_mnist_source(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def load_average():
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def busy_cpu_seconds():
    """CPU seconds the whole machine has spent busy since boot (Linux /proc/stat), or None.

    With ``os.times()`` of this process it tells how much CPU other processes took meanwhile.
    """
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_isolated(function, *args, **kwargs):
    """Return ``function(*args, **kwargs)`` computed in a fresh spawned process.

    For calls that leak (the TFLite converter keeps ~20 MB per ``convert()`` in TF 2.21) or that
    would load TensorFlow's thread pools into a process that times things. ``function`` must be
    defined at module level. The child's stdout and stderr go to a log file; if the call fails,
    ``ToolError`` carries the tail of that log.
    """
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="bench-") as folder:
        log_path = Path(folder) / "subprocess.log"
        try:
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                result, error = pool.submit(_call_logged, log_path, function, args, kwargs).result()
        except BrokenProcessPool:
            result, error = None, "the subprocess died"
        if error is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-30:] if log_path.exists() else []
            raise ToolError(f"{function.__name__} failed in a subprocess: {error}",
                            output_tail="\n".join(tail))
    return result


def _call_logged(log_path, function, args, kwargs):
    with open(log_path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        return function(*args, **kwargs), None
    except Exception as err:  # reported to the parent with the log, whatever it is
        traceback.print_exc()
        sys.stderr.flush()
        return None, f"{type(err).__name__}: {err}"


def format_table(header, rows, left=1):
    """A text table; the first ``left`` columns are left-aligned, the others right-aligned."""
    rows = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in [list(header), *rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.ljust(w) if i < left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def finish(record, started, path, text):
    """End a bench run: its seconds since ``started`` and the load average into ``record``,
    written to ``path``; print ``text(record)`` (its table) and where the JSON went."""
    record["seconds"] = time.perf_counter() - started
    record["load_average_end"] = load_average()
    write_json(path, record)
    print(text(record))
    print(f"\nwrote {path}")
    return 0


def write_json(path, data):
    """Write ``data`` as indented JSON to ``path`` atomically; create its folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return path


def _version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def blas_threads():
    """Threads NumPy's BLAS runs on (the OpenBLAS of the NumPy wheels), or None if it cannot say."""
    import ctypes

    import numpy

    folder = Path(numpy.__file__).resolve().parent.parent / "numpy.libs"
    for library in sorted(folder.glob("libscipy_openblas*.so*")):
        handle = ctypes.CDLL(str(library))  # already loaded by NumPy: the same handle
        for symbol in ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads"):
            function = getattr(handle, symbol, None)
            if function is not None:
                return int(function())
    return None


def interleaved_medians(paths, repeats, runs):
    """``{key: [median of each repeat]}`` of ``{key: .tflite path}``, every path once per round
    (so a disturbance spreads over all of them), host LiteRT, 1 thread."""
    import tflowrank

    medians = {key: [] for key in paths}
    for _ in range(repeats):
        for key, path in paths.items():
            (result,) = tflowrank.profile(path, threads=1, runs=runs, warmup_runs=20)
            medians[key].append(result.inference_median_us)
    return medians
