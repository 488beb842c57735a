"""Keras callbacks that compress during ``fit``.

- ``RankScheduler``: anneals the active rank of factorized layers to a target, re-projecting the
  factors onto their best low-rank subspace at each step (masks: the graph is not rebuilt).
- ``LowRankRegularizer``: a penalty on the size of each rank component that pushes factorized
  layers toward low rank while training.
- ``QuantizeAware``: switches the fake quantization of a ``tflowrank.quantize_aware`` model on at
  an epoch.

Importing this package imports Keras (the callbacks subclass ``keras.callbacks.Callback``).
"""

import importlib

_PUBLIC = {
    "RankScheduler": "rank_scheduler",
    "LowRankRegularizer": "low_rank_regularizer",
    "QuantizeAware": "quantize_aware",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module 'tflowrank.callbacks' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
