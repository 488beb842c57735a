"""Write a .tflite model as a C++ array, the form TensorFlow Lite Micro projects embed in firmware.

A microcontroller has no file system: the model is compiled into flash as a byte array, aligned
to 16 bytes because TFLM reads the flatbuffer in place (``tflite::GetModel(g_model)``) and some
kernels need aligned weights. ``write_c_array`` writes two files, as TFLM's own generator does
(``tensorflow/lite/micro/tools/generate_cc_arrays.py``: a ``.cc`` that includes its ``.h``, an
``alignas(16)`` array): ``model.cc`` with the bytes and ``model.h`` declaring them, plus, when
asked, a suggested ``kTensorArenaSize``. The length is named ``<variable>_len``, as ``xxd -i``
names it (TFLM's generator says ``_size``).
"""

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._io import atomic_path, input_path, output_path

__all__ = ["write_c_array", "CArrayResult", "ARENA_MARGIN"]

# The arena TFLM's Python interpreter measures on this host can differ from a device build's: the
# persistent part (the "tail") holds structs whose size depends on the pointer width (64-bit here,
# 32-bit on a Cortex-M), and optimized kernels (CMSIS-NN, ...) ask for scratch buffers of other
# sizes than the reference kernels measured here. So the suggestion adds a margin.
ARENA_MARGIN = 0.10
_ALIGNMENT = 16
_BYTES_PER_LINE = 12
_MEASURE_SAMPLES = 3
_SOURCE_SUFFIXES = (".cc", ".cpp", ".cxx")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# C and C++ keywords and alternative tokens: valid identifiers by the regex, not as names.
_RESERVED = frozenset(
    "alignas alignof and and_eq asm auto bitand bitor bool break case catch char char8_t char16_t "
    "char32_t class compl concept const consteval constexpr constinit const_cast continue "
    "co_await co_return co_yield decltype default delete do double dynamic_cast else enum "
    "explicit export extern false float for friend goto if inline int long mutable namespace new "
    "noexcept not not_eq nullptr operator or or_eq private protected public register "
    "reinterpret_cast requires restrict return short signed sizeof static static_assert "
    "static_cast struct switch template this thread_local throw true try typedef typeid typename "
    "union unsigned using virtual void volatile wchar_t while xor xor_eq _Alignas _Alignof "
    "_Atomic _Bool _Complex _Generic _Imaginary _Noreturn _Static_assert _Thread_local".split()
)


@dataclass(frozen=True)
class CArrayResult:
    """What ``write_c_array`` wrote.

    ``arena_bytes`` is the arena figure the suggestion starts from (given, or measured by TFLM);
    ``tensor_arena_size`` is the ``kTensorArenaSize`` written to the header. Both are ``None``
    when no arena was asked for.
    """

    path: Path
    header_path: Path
    variable: str
    size_bytes: int
    sha256: str
    arena_bytes: int | None
    tensor_arena_size: int | None


def write_c_array(tflite_path, path, variable="g_model", arena_bytes=None):
    """Write the .tflite model at ``tflite_path`` as a C++ source file and its header.

    ``path`` (``.cc``, ``.cpp`` or ``.cxx``) receives a comment naming the model (file, size,
    sha256, tflowrank version) and::

        #include "model.h"
        alignas(16) const unsigned char g_model[] = { 0x1c, 0x00, ... };   // 12 bytes a line
        const unsigned int g_model_len = 21480;

    and ``path.with_suffix(".h")`` declares both (``extern``, the array with its size, so
    ``sizeof(g_model)`` works wherever the header is included). The source includes the header:
    in C++ a ``const`` at namespace scope is only visible to other files (external linkage) when
    an ``extern`` declaration precedes it. ``kTensorArenaSize`` goes in the header too, as a
    ``constexpr`` the application's ``uint8_t tensor_arena[kTensorArenaSize]`` can use.

    Args:
        tflite_path: a .tflite file.
        path: the C++ source file to write; its folder must exist. Both files are written
            atomically.
        variable: the array's name, a C identifier; the length is ``<variable>_len``.
        arena_bytes: ``None`` (no arena suggestion), a positive int (a measured arena total in
            bytes, e.g. ``MicroRun.arena_total_bytes``), or ``"measure"`` to run the model with
            TFLite Micro (:func:`tflowrank.micro.run_micro`, three seeded random inputs) and use
            the ``arena_total_bytes`` it reports. The header then holds
            ``constexpr int kTensorArenaSize``: that figure plus ``ARENA_MARGIN`` (10%), rounded
            up to a multiple of 16.

    Returns:
        CArrayResult.

    Raises:
        TflowrankError: ``"measure"`` and TFLite Micro is missing or cannot run the model.
        ToolError: ``"measure"`` and TFLite Micro failed on the model.
    """
    tflite_path = input_path(tflite_path, "tflite_path")
    path = output_path(path, "path")
    if path.suffix not in _SOURCE_SUFFIXES:
        raise ValueError(
            f"`path` must be a C++ source file ending in {', '.join(_SOURCE_SUFFIXES)} (the header "
            f"is written beside it with .h). Received: path={str(path)!r}"
        )
    header_path = path.with_suffix(".h")
    if tflite_path.resolve() in (path.resolve(), header_path.resolve()):
        raise ValueError(
            f"`path` would overwrite the model itself. Received: tflite_path={str(tflite_path)!r}, "
            f"path={str(path)!r}"
        )
    _check_variable(variable)
    _check_arena(arena_bytes)

    data = tflite_path.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError(
            "`tflite_path` is not a TFLite flatbuffer (its bytes 4-8 are not the identifier "
            f"'TFL3'). Received: tflite_path={str(tflite_path)!r} ({len(data)} bytes)"
        )
    if arena_bytes == "measure":
        arena_bytes = _measure_arena(tflite_path)
    arena_size = _suggested_arena_size(arena_bytes) if arena_bytes is not None else None

    from . import __version__

    sha256 = hashlib.sha256(data).hexdigest()
    about = (
        f"// Generated by tflowrank {__version__} from {tflite_path.name}\n"
        f"// ({len(data)} bytes, sha256 {sha256}).\n"
        "// Regenerate it from the .tflite file rather than editing it.\n"
    )
    header = _header(header_path.name, variable, len(data), arena_bytes, arena_size)
    source = _source(header_path.name, variable, data, arena_size)
    with atomic_path(header_path) as tmp_header, atomic_path(path) as tmp_source:
        tmp_header.write_text(about + header)
        tmp_source.write_text(about + source)
    return CArrayResult(
        path=path,
        header_path=header_path,
        variable=variable,
        size_bytes=len(data),
        sha256=sha256,
        arena_bytes=arena_bytes,
        tensor_arena_size=arena_size,
    )


def _suggested_arena_size(arena_bytes):
    """``arena_bytes`` plus ``ARENA_MARGIN``, rounded up to a multiple of 16."""
    with_margin = math.ceil(arena_bytes * (1 + ARENA_MARGIN))
    return -(-with_margin // _ALIGNMENT) * _ALIGNMENT


def _check_variable(variable):
    if not isinstance(variable, str):
        raise TypeError(
            f"`variable` must be a str (a C identifier). Received: variable of type "
            f"{type(variable).__name__}"
        )
    if not _IDENTIFIER.match(variable) or variable in _RESERVED:
        raise ValueError(
            "`variable` must be a C identifier (letters, digits and underscores, not starting "
            f"with a digit, not a C or C++ keyword). Received: variable={variable!r}"
        )


def _check_arena(arena_bytes):
    if arena_bytes is None or arena_bytes == "measure":
        return
    is_int = isinstance(arena_bytes, (int, np.integer)) and not isinstance(arena_bytes, bool)
    if not is_int or arena_bytes < 1:
        raise ValueError(
            "`arena_bytes` must be None, a positive integer (bytes) or 'measure'. "
            f"Received: arena_bytes={arena_bytes!r}"
        )


def _measure_arena(tflite_path):
    from .micro import run_micro
    from .tflite_model import inspect_tflite

    details = inspect_tflite(tflite_path).input_details
    if len(details) != 1:
        raise ValueError(
            "arena_bytes='measure' runs single-input models only; pass the arena in bytes instead. "
            f"Received: tflite_path={str(tflite_path)!r} with {len(details)} inputs"
        )
    (detail,) = details
    shape = (_MEASURE_SAMPLES, *detail.shape[1:])
    rng = np.random.default_rng(0)
    dtype = np.dtype(detail.dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = rng.integers(max(info.min, -128), min(info.max, 127), size=shape, endpoint=True)
    else:
        x = rng.uniform(0.0, 1.0, size=shape)
    # an array in the model's input dtype is passed to TFLM as it is
    return int(run_micro(tflite_path, x.astype(dtype)).arena_total_bytes)


def _guard(header_name):
    guard = re.sub(r"[^A-Za-z0-9]", "_", header_name).upper()
    return f"TFLOWRANK_{guard}_"


def _header(header_name, variable, size, arena_bytes, arena_size):
    guard = _guard(header_name)
    lines = [
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        f"// The model flatbuffer, for tflite::GetModel({variable}).",
        f"extern const unsigned char {variable}[{size}];",
        f"extern const unsigned int {variable}_len;",
    ]
    if arena_size is not None:
        lines += [
            "",
            f"// Suggested tensor arena: {arena_bytes} bytes used (TFLite Micro's arena_total_bytes,",
            f"// reference kernels, on the host) + {ARENA_MARGIN:.0%} margin, rounded up to a multiple of "
            f"{_ALIGNMENT}.",
            "// The margin covers persistent structs of another pointer width (the host is 64-bit) and",
            "// optimized kernels (e.g. CMSIS-NN) asking for other scratch buffer sizes. Check it on the",
            "// device: tflite::RecordingMicroInterpreter reports the arena it really used.",
            f"constexpr int kTensorArenaSize = {arena_size};",
        ]
    lines += ["", f"#endif  // {guard}", ""]
    return "\n".join(lines)


def _source(header_name, variable, data, arena_size):
    rows = []
    for start in range(0, len(data), _BYTES_PER_LINE):
        chunk = data[start : start + _BYTES_PER_LINE]
        rows.append("    " + ", ".join(f"0x{b:02x}" for b in chunk) + ",")
    arena = [] if arena_size is None else [
        f"// The suggested tensor arena, kTensorArenaSize = {arena_size}, is in {header_name}.", ""
    ]
    return "\n".join([
        f'#include "{header_name}"',
        "",
        *arena,
        f"alignas({_ALIGNMENT}) const unsigned char {variable}[] = {{",
        *rows,
        "};",
        f"const unsigned int {variable}_len = {len(data)};",
        "",
    ])
