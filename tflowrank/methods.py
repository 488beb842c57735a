"""The factorization methods: which tflowrank layer replaces which Keras layer (private)."""

import keras

__all__ = ["METHOD_NAMES", "factor_class", "method_table"]

METHOD_NAMES = ("spatial", "svd")


def method_table(method):
    """``[(keras layer class, tflowrank layer class), ...]`` for ``method``."""
    from .layers import SpatialConv2D, SVDConv2D, SVDDense

    tables = {
        "spatial": [(keras.layers.Conv2D, SpatialConv2D)],
        "svd": [(keras.layers.Conv2D, SVDConv2D), (keras.layers.Dense, SVDDense)],
    }
    if method not in tables:
        raise ValueError(
            f"Unknown factorization method. Expected one of {', '.join(map(repr, METHOD_NAMES))}. "
            f"Received: method={method!r}"
        )
    return tables[method]


def factor_class(table, layer):
    """The tflowrank layer class that replaces ``layer`` under ``table``, or None."""
    for source, target in table:
        if isinstance(layer, source):
            return target
    return None
