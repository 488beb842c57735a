"""``finalize``: slice the factors of every factorized layer to its active rank.

A ``RankScheduler`` lowers ranks during ``fit`` by masking factor slices (the graph is not rebuilt
while training). ``finalize`` returns the model the masks describe: each factorized layer whose
active rank is below its allocated rank is replaced by a layer holding only the active slices, so
the saved ``.keras`` file and the exported TFLite graph carry the small factors. ``export_tflite``
calls it on its own.
"""

__all__ = ["finalize"]


def finalize(model):
    """Return ``model`` with every factorized layer sliced to its active rank.

    The input model is not modified. When no layer runs below its allocated rank, ``model``
    itself is returned (there is nothing to slice); otherwise a new model that computes the same
    outputs with smaller factors.
    """
    from ._backend import require_tensorflow

    require_tensorflow()
    from . import graph
    from .layers import FactorizedLayer

    graph.check_model(model)
    replacements = {}
    for call in graph.layer_calls(model):
        layer = call.layer
        if (isinstance(layer, FactorizedLayer) and layer.built and id(layer) not in replacements
                and layer.active_rank != layer.rank):
            replacements[id(layer)] = layer.sliced()
    if not replacements:
        return model
    return graph.rewrite(model, replacements)
