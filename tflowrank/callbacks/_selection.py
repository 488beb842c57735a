"""The factorized layers a callback works on (private)."""

import dataclasses

from .. import graph
from ..layers import FactorizedLayer


def factorized_calls(model, names, who, purpose):
    """One ``LayerCall`` per factorized layer of ``model`` (QAT wrappers unwrapped), first call each.

    ``names`` (layer names or paths) restricts them, None keeps all; a name that matches nothing,
    or a model without any, is a ValueError naming ``who`` and what it would ``purpose``.
    """
    graph.check_model(model)
    calls, seen = [], set()
    for call in graph.layer_calls(model):
        layer = graph.unwrapped(call.layer)
        if not isinstance(layer, FactorizedLayer) or id(layer) in seen:
            continue
        seen.add(id(layer))
        if names is None or layer.name in names or call.path in names:
            calls.append(dataclasses.replace(call, layer=layer))  # the layer, not its QAT wrapper
    if names is not None:
        found = {c.layer.name for c in calls} | {c.path for c in calls}
        missing = [name for name in names if name not in found]
        if missing:
            raise ValueError(f"`layers` names no factorized layer of the model: {missing}. "
                             f"Factorized layers: {sorted(c.path for c in calls) or 'none'}")
    if not calls:
        raise ValueError(f"{who}: the model has no factorized layer to {purpose} "
                         "(factorize it first with tflowrank.factorize).")
    return calls
