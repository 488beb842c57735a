"""Run a .tflite model with TensorFlow Lite Micro (TFLM) on the host and measure its arena.

TFLM's Python interpreter (PyPI ``tflite-micro``, the ``micro`` extra) runs the same C++ kernels
as a microcontroller build: the reference kernels, int8 first. It is a thin wrapper that does
not verify the flatbuffer: a damaged model can make it crash the whole process (a segmentation
fault, not an exception). So ``run_micro`` checks the model first (``check_micro``), then runs
TFLM in a child Python process; a crash there becomes a ``ToolError`` instead of killing the
caller.
"""

import collections
import contextlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._io import child_env, input_path
from .errors import TflowrankError, ToolError

__all__ = [
    "run_micro",
    "MicroRun",
    "check_micro",
    "micro_supported_ops",
    "parse_allocations",
    "max_lsb_difference",
]

_INSTALL = "TFLite Micro is not installed: pip install 'tflowrank[micro]' (package tflite-micro)"

# The ops registered by tflite::PythonOpsResolver, the resolver of TFLM's Python interpreter:
# python/tflite_micro/python_ops_resolver.cc of github.com/tensorflow/tflite-micro (unchanged since
# commit ef382bd, 2026-01-08; read at 90b983c, 2026-08-20), each Add*() mapped to its builtin
# code in tensorflow/lite/micro/micro_mutable_op_resolver.h. Checked against the Register_*
# symbols of _runtime.so in tflite-micro==0.dev20261023182759. AddEthosU() registers nothing on
# the host, so "ethos-u" is absent.
_BUILTIN_OPS = (
    "ABS ADD ADD_N ARG_MAX ARG_MIN ASSIGN_VARIABLE AVERAGE_POOL_2D BATCH_MATMUL BATCH_TO_SPACE_ND "
    "BROADCAST_ARGS BROADCAST_TO CALL_ONCE CAST CEIL CONCATENATION CONV_2D COS CUMSUM "
    "DEPTH_TO_SPACE DEPTHWISE_CONV_2D DEQUANTIZE DIV DYNAMIC_UPDATE_SLICE ELU EMBEDDING_LOOKUP "
    "EQUAL EXP EXPAND_DIMS FILL FLOOR FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER GATHER_ND "
    "GREATER GREATER_EQUAL HARD_SWISH IF L2_NORMALIZATION L2_POOL_2D LEAKY_RELU LESS LESS_EQUAL "
    "LOG LOG_SOFTMAX LOGICAL_AND LOGICAL_NOT LOGICAL_OR LOGISTIC MAX_POOL_2D MAXIMUM MEAN MINIMUM "
    "MIRROR_PAD MUL NEG NOT_EQUAL PACK PAD PADV2 PRELU QUANTIZE READ_VARIABLE REDUCE_ALL "
    "REDUCE_MAX REDUCE_MIN RELU RELU6 RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR REVERSE_V2 "
    "ROUND RSQRT SELECT_V2 SHAPE SIN SLICE SOFTMAX SPACE_TO_BATCH_ND SPACE_TO_DEPTH SPLIT SPLIT_V "
    "SQRT SQUARE SQUARED_DIFFERENCE SQUEEZE STRIDED_SLICE SUB SUM SVDF TANH TRANSPOSE "
    "TRANSPOSE_CONV UNIDIRECTIONAL_SEQUENCE_LSTM UNPACK VAR_HANDLE WHILE ZEROS_LIKE"
).split()
_CUSTOM_OPS = (
    "CIRCULAR_BUFFER TFLM_DECODE TFLite_Detection_PostProcess SignalDelay SignalEnergy "
    "SignalFftAutoScale SignalFilterBank SignalFilterBankLog SignalFilterBankSpectralSubtraction "
    "SignalFilterBankSquareRoot SignalFramer SignalIrfft SignalOverlapAdd SignalPCAN SignalRfft "
    "SignalStacker SignalWindow"
).split()

# A host arena costs nothing until touched (TFLM allocates it with new[] and never clears it),
# so start large and grow only if TFLM says it is short. (Weights stay in the model buffer: the
# arena holds activations and interpreter state, so the model size is no guide.)
_AUTO_ARENA_START = 16 * 1024 * 1024
_AUTO_ARENA_MAX = 1024 * 1024 * 1024
_ARENA_SHORT = re.compile(r"missing: \d+|bytes required")
_ARENA_LINES = {
    "arena_total_bytes": re.compile(r"Arena allocation total (\d+) bytes"),
    "arena_head_bytes": re.compile(r"Arena allocation head (\d+) bytes"),
    "arena_tail_bytes": re.compile(r"Arena allocation tail (\d+) bytes"),
}
_RECORD_LINE = re.compile(
    r"'(?P<name>[^']+)' used (?P<used>\d+) bytes with alignment overhead "
    r"\(requested (?P<requested>\d+) bytes for (?P<count>\d+) [^)]*\)"
)
# exit code and stderr marker of the child when TFLM itself raised (a refusal, not a crash)
_TFLM_REFUSED = 3
_ERROR_MARK = "tflowrank-micro-error: "


@dataclass(frozen=True)
class MicroRun:
    """Outputs of a TFLM run, ``(N, ...)`` in the model's output dtype, and its arena figures.

    ``arena_total_bytes`` is what the model really used (``head`` holds the planned activations,
    ``tail`` what lives as long as the interpreter); ``arena_size`` is what was allocated.
    """

    outputs: np.ndarray
    arena_total_bytes: int
    arena_head_bytes: int
    arena_tail_bytes: int
    arena_size: int
    ops: collections.Counter


def micro_supported_ops():
    """The op names TFLM's Python interpreter can run, spelled as ``inspect_tflite`` spells them.

    Builtin ops by their schema name (``"CONV_2D"``); custom ops as ``"CUSTOM:<name>"``. The
    interpreter exposes no list, so this one is copied from the TFLM source of the pinned version
    (``python/tflite_micro/python_ops_resolver.cc``; see the comment above ``_BUILTIN_OPS``).
    """
    return frozenset(_BUILTIN_OPS) | frozenset(f"CUSTOM:{name}" for name in _CUSTOM_OPS)


def check_micro(path):
    """Return the reasons TFLM cannot run the .tflite model at ``path``; ``[]`` if none is known.

    Two kinds are found without running TFLM: ops its resolver lacks, and hybrid ops (int8
    weights with float activations, what ``quantize="dynamic"`` makes), for which TFLM has no
    kernels. A float32 model is not a problem: TFLM has float reference kernels.
    """
    from .tflite_model import inspect_tflite

    return _problems(inspect_tflite(input_path(path, "path")))


def run_micro(path, inputs, arena_size=None):
    """Run the batch-1 .tflite model at ``path`` with TFLM on each sample of ``inputs``.

    Args:
        path: a single-input, single-output .tflite model.
        inputs: an array ``(N, *input_shape[1:])``. An array in the model's input dtype is passed
            as it is; any other array holds real values and is quantized with the input scale and
            zero point when the model input is int8 or uint8 (as ``evaluate_tflite`` does), or
            cast to the input dtype otherwise.
        arena_size: tensor arena in bytes. ``None`` allocates a generous arena (16 MiB, larger
            if TFLM reports it short); ``arena_total_bytes`` then tells the size a device needs.

    Returns:
        MicroRun.

    Raises:
        TflowrankError: TFLM is not installed, or ``check_micro`` finds the model unrunnable.
        ToolError: TFLM refused the model (its log is in the message), the arena is too small,
            or TFLM crashed; it runs in a child process, so a crash does not end the caller.
    """
    from .tflite_model import inspect_tflite

    path = input_path(path, "path")
    if arena_size is not None:
        is_int = isinstance(arena_size, (int, np.integer)) and not isinstance(arena_size, bool)
        if not is_int or arena_size < 1:
            raise ValueError(
                f"`arena_size` must be a positive integer (bytes) or None. Received: "
                f"arena_size={arena_size!r}"
            )
    info = inspect_tflite(path)
    problems = _problems(info)
    if problems:
        raise TflowrankError(f"TFLite Micro cannot run {str(path)!r}: " + "; ".join(problems) + ".")
    if len(info.input_details) != 1 or len(info.output_details) != 1:
        raise ValueError(
            "Only single-input, single-output models can be run with TFLite Micro yet. "
            f"Received: path={str(path)!r} with {len(info.input_details)} inputs and "
            f"{len(info.output_details)} outputs"
        )
    x = _prepare_inputs(inputs, info.input_details[0])
    if importlib.util.find_spec("tflite_micro") is None:
        raise TflowrankError(_INSTALL)

    size = int(arena_size) if arena_size is not None else _AUTO_ARENA_START
    with tempfile.TemporaryDirectory(prefix="tflowrank-micro-") as work:
        work = Path(work)
        np.save(work / "inputs.npy", x)
        while True:
            command = _worker_command(path, work / "inputs.npy", size, work)
            result = subprocess.run(
                command, capture_output=True, text=True, errors="replace", env=child_env()
            )
            if result.returncode == 0:
                break
            short = result.returncode == _TFLM_REFUSED and _ARENA_SHORT.search(result.stderr)
            if short and arena_size is None and size < _AUTO_ARENA_MAX:
                size = min(4 * size, _AUTO_ARENA_MAX)
                continue
            raise _run_error(path, arena_size, size, short, command, result)
        outputs = np.load(work / "outputs.npy")
        report = parse_allocations((work / "allocations.txt").read_text())
    return MicroRun(
        outputs=outputs,
        arena_total_bytes=report["arena_total_bytes"],
        arena_head_bytes=report["arena_head_bytes"],
        arena_tail_bytes=report["arena_tail_bytes"],
        arena_size=size,
        ops=info.ops,
    )


def parse_allocations(text):
    """Parse the report of TFLM's ``print_allocations()`` (its RecordingMicroAllocator).

    Returns a dict with ``arena_total_bytes``, ``arena_head_bytes`` and ``arena_tail_bytes``
    (ints), and ``allocations``: for each recorded kind (``"Persistent buffer data"``, ...) a dict
    ``{"used_bytes", "requested_bytes", "count"}``. Other lines are ignored.
    """
    if not isinstance(text, str):
        raise TypeError(f"`text` must be a str. Received: text of type {type(text).__name__}")
    report = {}
    for key, pattern in _ARENA_LINES.items():
        match = pattern.search(text)
        if match is None:
            raise ValueError(
                f"`text` is not a TFLM allocation report: no line matches {pattern.pattern!r}. "
                f"Received: text={text[:200]!r}"
            )
        report[key] = int(match.group(1))
    report["allocations"] = {
        m["name"]: {
            "used_bytes": int(m["used"]),
            "requested_bytes": int(m["requested"]),
            "count": int(m["count"]),
        }
        for m in _RECORD_LINE.finditer(text)
    }
    return report


def max_lsb_difference(a, b):
    """The largest absolute difference between two integer (quantized) arrays, in LSB, as an int."""
    a, b = np.asarray(a), np.asarray(b)
    for name, array in (("a", a), ("b", b)):
        if not np.issubdtype(array.dtype, np.integer):
            raise TypeError(
                f"`{name}` must hold quantized integers (e.g. int8). Received: {name} of dtype {array.dtype}"
            )
    if a.shape != b.shape:
        raise ValueError(
            f"`a` and `b` must have the same shape. Received: a.shape={a.shape}, b.shape={b.shape}"
        )
    if a.size == 0:
        return 0
    return int(np.max(np.abs(a.astype(np.int64) - b.astype(np.int64))))


def _problems(info):
    supported = micro_supported_ops()
    problems = []
    missing = collections.Counter(op.name for op in info.op_list if op.name not in supported)
    if missing:
        names = ", ".join(f"{name} x{n}" for name, n in sorted(missing.items()))
        problems.append(f"TFLite Micro has no kernel for these ops: {names}")
    hybrid = collections.Counter(
        op.name
        for op in info.op_list
        if op.weight_dtype in ("int8", "int4", "uint8")
        and any(dtype.startswith("float") for dtype in op.input_dtypes)
    )
    if hybrid:
        names = ", ".join(f"{name} x{n}" for name, n in sorted(hybrid.items()))
        problems.append(
            f"these ops are hybrid (int8 weights, float activations: dynamic-range quantization), "
            f"which TFLite Micro does not support: {names}; export with quantize='int8' "
            "(full integer) or None (float32) instead"
        )
    return problems


def _prepare_inputs(inputs, detail):
    sample_shape = tuple(detail.shape[1:])
    x = np.asarray(inputs)
    if x.ndim != len(sample_shape) + 1 or x.shape[1:] != sample_shape:
        raise ValueError(
            f"`inputs` must have shape (N, {', '.join(map(str, sample_shape))}) for this model. "
            f"Received: inputs.shape={x.shape}"
        )
    if len(x) == 0:
        raise ValueError("`inputs` is empty. Received: len(inputs)=0")
    dtype = np.dtype(detail.dtype)
    if x.dtype == dtype:
        return np.ascontiguousarray(x)
    if dtype in (np.int8, np.uint8):
        if detail.scale == 0:
            raise ValueError(
                f"Input tensor {detail.name!r} is {dtype.name} without a scale: pass `inputs` "
                f"already in {dtype.name}. Received: inputs of dtype {x.dtype}"
            )
        limits = np.iinfo(dtype)
        x = np.round(x.astype(np.float32) / detail.scale + detail.zero_point)
        return np.clip(x, limits.min, limits.max).astype(dtype)
    return x.astype(dtype)


def _worker_command(model, inputs_file, arena_size, out_dir):
    return [
        sys.executable, "-m", "tflowrank.micro",
        str(model), str(inputs_file), str(arena_size), str(out_dir),
    ]  # fmt: skip


def _run_error(path, arena_size, size, short, command, result):
    tail = result.stderr[-4000:]
    if result.returncode == _TFLM_REFUSED:
        log = [line for line in result.stderr.splitlines() if line.strip()]
        said = "; ".join(line.replace(_ERROR_MARK, "") for line in log[-8:])
        if short and arena_size is not None:
            message = (
                f"The tensor arena is too small for {str(path)!r}: TFLite Micro says: {said}. "
                f"Pass a larger arena_size, or None to size it automatically. "
                f"Received: arena_size={arena_size}"
            )
        elif short:
            message = f"TFLite Micro needs more than {size} bytes of arena for {str(path)!r}: {said}"
        else:
            message = f"TFLite Micro refused {str(path)!r}: {said}"
        return ToolError(message, command, tail)
    if result.returncode < 0:
        try:
            signame = signal.Signals(-result.returncode).name
        except ValueError:
            signame = f"signal {-result.returncode}"
        message = (
            f"TFLite Micro crashed running {str(path)!r}: its process was killed by {signame}. "
            "A damaged model file is the usual cause (TFLM does not verify flatbuffers)."
        )
    else:  # the child failed in Python outside TFLM (e.g. tflite_micro does not import)
        message = f"Running {str(path)!r} with TFLite Micro failed: exit code {result.returncode}."
    return ToolError(message, command, tail)


@contextlib.contextmanager
def _captured_fds(sink, fds=(1, 2)):
    """Send the file descriptors ``fds`` to the open file ``sink`` for the block.

    C code writes to the descriptors directly, so ``sys.stdout`` redirection would miss it.
    TFLM's MicroPrintf writes to stderr (``tensorflow/lite/micro/debug_log.cc``); stdout is
    captured too in case a build logs there.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    try:
        for fd in fds:
            os.dup2(sink.fileno(), fd)
        yield
    finally:
        _flush_c_stdio()
        for fd, copy in zip(fds, saved):
            os.dup2(copy, fd)
            os.close(copy)


def _flush_c_stdio():
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library handle on this platform
        pass


def _worker_main(argv):
    """The child process: run TFLM on every input, save outputs and the allocation report."""
    model, inputs_file, arena_size, out_dir = argv
    from tflite_micro import runtime

    x = np.load(inputs_file)
    try:
        interpreter = runtime.Interpreter.from_file(model, arena_size=int(arena_size))
        outputs = []
        for sample in x:
            interpreter.set_input(sample[None], 0)
            interpreter.invoke()
            outputs.append(interpreter.get_output(0))
        with tempfile.TemporaryFile() as sink:
            with _captured_fds(sink):
                interpreter.print_allocations()
            sink.seek(0)
            report = sink.read().decode("utf-8", "replace")
    except (RuntimeError, ValueError) as err:  # TFLM refuses with these; its log is on stderr
        sys.stderr.write(f"{_ERROR_MARK}{type(err).__name__}: {err}\n")
        return _TFLM_REFUSED
    np.save(Path(out_dir) / "outputs.npy", np.concatenate(outputs))
    (Path(out_dir) / "allocations.txt").write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
