"""Read a .tflite flatbuffer without running it: ops, dtypes, quantization, I/O details.

Parsing uses the flatbuffer schema that ships with ``ai-edge-litert``
(``ai_edge_litert.schema_py_generated``); neither TensorFlow nor an interpreter is needed.
"""

import collections
import os
from dataclasses import dataclass

from ._io import input_path

__all__ = ["inspect_tflite", "TfliteInfo", "OpInfo", "TensorDetail"]

# op name -> (weight input index, bias input index)
_WEIGHTED_OPS = {
    "CONV_2D": (1, 2),
    "DEPTHWISE_CONV_2D": (1, 2),
    "FULLY_CONNECTED": (1, 2),
    "CONV_3D": (1, 2),
    "TRANSPOSE_CONV": (1, 3),
    "CONV_3D_TRANSPOSE": (1, 3),
}
# Activations of these dtypes are not quantized numerics (indices, shapes, masks): they do not
# make a model "not int8".
_NEUTRAL_DTYPES = {"int8", "int32", "int64", "bool"}


@dataclass(frozen=True)
class TensorDetail:
    """One input or output tensor of the main subgraph; ``scale == 0.0`` means not quantized."""

    name: str
    index: int
    shape: tuple
    dtype: str
    scale: float
    zero_point: int


@dataclass(frozen=True)
class OpInfo:
    """One operator; weight and bias fields are ``None`` for ops without a constant kernel."""

    name: str
    input_dtypes: tuple
    output_dtypes: tuple
    weight_dtype: str | None
    bias_dtype: str | None
    weight_shape: tuple | None
    per_channel: bool
    is_int8: bool


@dataclass(frozen=True)
class TfliteInfo:
    """What a .tflite file holds. ``op_list`` is in execution order (subgraph by subgraph)."""

    ops: collections.Counter
    op_list: tuple
    input_details: tuple
    output_details: tuple
    size_bytes: int

    @property
    def is_fully_int8(self):
        """True if every op computes in int8 (int8 weights, int32 biases).

        QUANTIZE at a float model input and DEQUANTIZE at a float model output are allowed.
        """
        return bool(self.op_list) and all(op.is_int8 for op in self.op_list)


def inspect_tflite(path_or_bytes):
    """Parse a .tflite model (a path or its bytes) and return a ``TfliteInfo``."""
    from ai_edge_litert import schema_py_generated as schema

    data = _read(path_or_bytes)
    if len(data) < 8 or not schema.Model.ModelBufferHasIdentifier(data, 0):
        raise ValueError(
            "`path_or_bytes` is not a TFLite flatbuffer (no 'TFL3' identifier). "
            f"Received: {_describe(path_or_bytes)}"
        )
    model = schema.Model.GetRootAs(data, 0)
    op_names = _enum_names(schema.BuiltinOperator)
    dtype_names = {code: name.lower() for code, name in _enum_names(schema.TensorType).items()}
    opcodes = [
        _opcode_name(model.OperatorCodes(i), op_names) for i in range(model.OperatorCodesLength())
    ]

    op_list = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        op_list.extend(
            _read_op(model, graph, graph.Operators(i), opcodes, dtype_names)
            for i in range(graph.OperatorsLength())
        )
    main = model.Subgraphs(0) if model.SubgraphsLength() else None
    inputs = _details(main, main.InputsAsNumpy(), dtype_names) if main else ()
    outputs = _details(main, main.OutputsAsNumpy(), dtype_names) if main else ()
    return TfliteInfo(
        ops=collections.Counter(op.name for op in op_list),
        op_list=tuple(op_list),
        input_details=inputs,
        output_details=outputs,
        size_bytes=len(data),
    )


def _read(path_or_bytes):
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        return bytes(path_or_bytes)
    if isinstance(path_or_bytes, (str, os.PathLike)):
        return input_path(path_or_bytes, "path_or_bytes").read_bytes()
    raise TypeError(
        "`path_or_bytes` must be a path or the bytes of a .tflite model. "
        f"Received: path_or_bytes of type {type(path_or_bytes).__name__}"
    )


def _describe(path_or_bytes):
    if isinstance(path_or_bytes, (str, os.PathLike)):
        return f"path_or_bytes={str(path_or_bytes)!r}"
    return f"{len(path_or_bytes)} bytes starting with {bytes(path_or_bytes[:8])!r}"


def _enum_names(enum_class):
    members = vars(enum_class).items()
    return {v: k for k, v in members if not k.startswith("_") and isinstance(v, int)}


def _opcode_name(opcode, op_names):
    # builtin_code replaced the int8 deprecated_builtin_code; old files only fill the latter.
    code = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
    name = op_names.get(code, f"BUILTIN_{code}")
    if name == "CUSTOM":
        custom = opcode.CustomCode()
        return "CUSTOM:" + (custom.decode("utf-8", "replace") if custom else "?")
    return name


def _is_constant(model, tensor):
    index = tensor.Buffer()
    if index <= 0 or index >= model.BuffersLength():
        return False
    buffer = model.Buffers(index)
    return buffer.DataLength() > 0 or buffer.Offset() > 1


def _read_op(model, graph, op, opcodes, dtype_names):
    name = opcodes[op.OpcodeIndex()]
    inputs = [int(i) for i in _as_list(op.InputsAsNumpy())]
    outputs = [int(i) for i in _as_list(op.OutputsAsNumpy())]

    def dtype(i):
        return dtype_names.get(graph.Tensors(i).Type(), "unknown")

    constants = {i for i in inputs if i >= 0 and _is_constant(model, graph.Tensors(i))}
    activations_in = tuple(dtype(i) for i in inputs if i >= 0 and i not in constants)
    activations_out = tuple(dtype(i) for i in outputs)

    weight_dtype = bias_dtype = weight_shape = None
    per_channel = False
    kernel = set()
    if name in _WEIGHTED_OPS:
        w, b = (inputs[i] if i < len(inputs) else -1 for i in _WEIGHTED_OPS[name])
        if w in constants:
            weight = graph.Tensors(w)
            weight_dtype = dtype(w)
            weight_shape = tuple(int(d) for d in _as_list(weight.ShapeAsNumpy()))
            quant = weight.Quantization()
            per_channel = quant is not None and quant.ScaleLength() > 1
        if b in constants:
            bias_dtype = dtype(b)
        kernel = {w, b}

    graph_inputs = set(_as_list(graph.InputsAsNumpy()))
    graph_outputs = set(_as_list(graph.OutputsAsNumpy()))
    if name == "QUANTIZE" and inputs and inputs[0] in graph_inputs:
        is_int8 = set(activations_out) <= {"int8"}  # float model input -> int8
    elif name == "DEQUANTIZE" and outputs and set(outputs) <= graph_outputs:
        is_int8 = set(activations_in) <= {"int8"}  # int8 -> float model output
    else:
        other_constants = {dtype(i) for i in constants - kernel}
        is_int8 = (
            (set(activations_in + activations_out) | other_constants) <= _NEUTRAL_DTYPES
            and weight_dtype in (None, "int8")
            and bias_dtype in (None, "int32")
        )
    return OpInfo(
        name,
        activations_in,
        activations_out,
        weight_dtype,
        bias_dtype,
        weight_shape,
        per_channel,
        is_int8,
    )


def _details(graph, indices, dtype_names):
    details = []
    for i in _as_list(indices):
        tensor = graph.Tensors(int(i))
        quant = tensor.Quantization()
        has_quant = quant is not None and quant.ScaleLength() > 0
        details.append(
            TensorDetail(
                name=(tensor.Name() or b"").decode("utf-8", "replace"),
                index=int(i),
                shape=tuple(int(d) for d in _as_list(tensor.ShapeAsNumpy())),
                dtype=dtype_names.get(tensor.Type(), "unknown"),
                scale=float(quant.Scale(0)) if has_quant else 0.0,
                zero_point=int(quant.ZeroPoint(0)) if has_quant and quant.ZeroPointLength() else 0,
            )
        )
    return tuple(details)


def _as_list(vector):
    # flatbuffers returns 0 instead of an empty array for absent vectors
    return [] if isinstance(vector, int) else vector.tolist()
