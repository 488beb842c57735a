"""The factorization methods: which tflowrank layer replaces which Keras layer (private)."""

import keras

__all__ = ["METHOD_NAMES", "factor_class", "method_table"]

METHOD_NAMES = ("spatial", "svd", "tucker2", "cp", "tucker2_spatial", "output")


def method_table(method):
    """``[(keras layer class, tflowrank layer class), ...]`` for ``method``.

    ``"output"`` builds ``SVDConv2D`` / ``SVDConv1D`` layers, but from data rather than from the
    kernel alone. A Conv1D takes ``"svd"``, ``"tucker2"``, ``"cp"`` and ``"output"``: the others
    separate two spatial axes.
    """
    from .layers import (
        CPConv1D,
        CPConv2D,
        SpatialConv2D,
        SVDConv1D,
        SVDConv2D,
        SVDDense,
        TuckerConv1D,
        TuckerConv2D,
        TuckerSpatialConv2D,
    )

    conv, conv1d = keras.layers.Conv2D, keras.layers.Conv1D
    tables = {
        "spatial": [(conv, SpatialConv2D)],
        "svd": [(conv, SVDConv2D), (conv1d, SVDConv1D), (keras.layers.Dense, SVDDense)],
        "tucker2": [(conv, TuckerConv2D), (conv1d, TuckerConv1D)],
        "cp": [(conv, CPConv2D), (conv1d, CPConv1D)],
        "tucker2_spatial": [(conv, TuckerSpatialConv2D)],
        "output": [(conv, SVDConv2D), (conv1d, SVDConv1D)],
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
