"""tflowrank: low-rank factorization of Keras CNNs, int8 TFLite export and profiling.

Importing tflowrank imports neither Keras nor TensorFlow and changes nothing global; each public
name below is loaded on first use. To load a ``.keras`` file that holds tflowrank layers in a new
process, ``import tflowrank.layers`` first (it registers the layers with Keras).
"""

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "cost": "costs",
    "ModelCost": "costs",
    "LayerCost": "costs",
    "factorize": "factorization",
    "search": "rank_search",
    "compress": "compression",
    "CompressionResult": "compression",
    "CompressionPlan": "plan",
    "PlanEntry": "plan",
    "finalize": "finalization",
    "quantize_aware": "qat",
    "export_tflite": "export",
    "ExportResult": "export",
    "evaluate_tflite": "evaluate",
    "predict_tflite": "evaluate",
    "profile": "profiling",
    "ProfileResult": "profiling",
    "MicroDetails": "profiling",
    "write_c_array": "c_array",
    "CArrayResult": "c_array",
    "to_tf_keras": "interop",
    "save_portable": "interop",
    "load_tf_keras": "interop",
    "TflowrankError": "errors",
    "ConversionError": "errors",
    "BackendError": "errors",
    "ToolError": "errors",
}

_SUBMODULES = ("datasets", "layers", "decompositions", "reports", "micro", "callbacks")

__all__ = sorted(_PUBLIC) + ["callbacks", "datasets", "layers", "reports"]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _PUBLIC:
        module = importlib.import_module(f"{__name__}.{_PUBLIC[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'tflowrank' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
