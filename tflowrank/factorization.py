"""factorize: a new model in which chosen layers are replaced by low-rank chains."""

import warnings

from . import ranks

__all__ = ["factorize"]



def factorize(model, method, rank, layers=None):
    """Return a NEW model whose selected layers are factorized, initialised from the trained weights.

    Args:
        model: a built Sequential or Functional Keras model (nested models are looked into). It is
            never modified, and the new model shares no layer or weight with it.
        method: ``"spatial"`` (k x k conv -> k x 1 then 1 x k) or ``"svd"`` (k x k conv -> k x k to
            ``rank`` channels then 1 x 1; Dense -> two Dense).
        rank: an int; a float in (0, 1], the fraction of each layer's MACs to keep (the largest
            rank that keeps at most that fraction); a dict ``{layer_name: int | float}``; or a
            callable ``layer -> int | float | None`` (None leaves the layer as it is).
        layers: layer names, a predicate ``layer -> bool``, or None: every layer the method can
            factorize and whose factorization saves MACs (or the names of a ``rank`` dict).

    Layers the method cannot handle are skipped with one warning when selected implicitly (None
    or a predicate) and rejected with a ValueError when named. Every factorized layer records its
    rank and reconstruction error; ``tflowrank.cost(new_model)`` shows them.
    """
    from ._backend import require_tensorflow

    require_tensorflow()
    from . import graph
    from .costs import layer_macs
    from .methods import factor_class, method_table

    graph.check_model(model)
    table = method_table(method)
    ranks.check_rank_spec(rank)

    calls = graph.layer_calls(model)
    times_called = {}
    for call in calls:
        times_called[id(call.layer)] = times_called.get(id(call.layer), 0) + 1
    first_calls = {}
    for call in calls:
        first_calls.setdefault(id(call.layer), call)
    candidates, explicit = _select(list(first_calls.values()), layers, rank, table, factor_class)

    replacements, skipped = {}, []
    for call in candidates:
        layer = call.layer
        target = factor_class(table, layer)
        if _is_depthwise(layer):
            reason = _DEPTHWISE
        elif target is None:
            reason = f"method {method!r} has no factorization for {type(layer).__name__}"
        else:
            reason = target.supports(layer)
        if reason:
            if explicit:
                raise ValueError(f"Layer {layer.name!r} cannot be factorized with method={method!r}: "
                                 f"{reason}.")
            if target is not None or _is_depthwise(layer):
                skipped.append((call.path, reason))
            continue
        if times_called[id(layer)] > 1:
            raise ValueError(
                f"Layer {layer.name!r} is called {times_called[id(layer)]} times in model "
                f"{model.name!r} (its weights are shared between the calls), so it cannot be "
                "replaced by one factorized layer. Leave it out with layers=[...] or a predicate, "
                "or build the model with a separate layer for each call."
            )
        # a rank a callable gave for this very layer is as explicit as a name
        asked = explicit or callable(rank)
        try:
            chosen = ranks.resolve_rank(rank, layer, target, call.input_shape)
        except ranks.RankOutOfRange as error:
            if asked:
                raise
            skipped.append((call.path, str(error)))
            continue
        if chosen is None:
            continue
        before = layer_macs(layer, call.input_shapes, call.output_shapes)
        after = target.macs_for(layer, chosen, call.input_shape)
        if before is not None and after is not None and after >= before:
            note = (f"rank {chosen} costs {after:,} MACs, not fewer than the original "
                    f"{before:,}")
            if not asked:
                skipped.append((call.path, note))
                continue
            warnings.warn(f"tflowrank.factorize: layer {layer.name!r}: {note}.", stacklevel=2)
        replacements[id(layer)] = target.from_layer(layer, chosen)

    if not replacements:
        detail = "; ".join(f"{path}: {why}" for path, why in skipped) or "no layer was selected"
        raise ValueError(
            f"No layer of model {model.name!r} was factorized with method={method!r}, "
            f"rank={rank!r}: {detail}."
        )
    if skipped:
        by_reason = {}
        for path, why in skipped:
            by_reason.setdefault(why, []).append(path)
        warnings.warn(
            f"tflowrank.factorize left {len(skipped)} layer(s) as they are: "
            + "; ".join(f"{', '.join(paths)}: {why}" for why, paths in by_reason.items()),
            stacklevel=2,
        )
    _warn_dropped_constraints(call.layer for call in candidates if id(call.layer) in replacements)
    return graph.rewrite(model, replacements)


_DEPTHWISE = "depthwise convolutions are never factorized: they are already cheap"


def _is_depthwise(layer):
    import keras

    return isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D))


def _select(calls, layers, rank, table, factor_class):
    """The calls to consider, and whether they were named explicitly."""
    by_name = {call.layer.name: call for call in calls}
    if layers is None and isinstance(rank, dict):
        layers = list(rank)
    if layers is None:
        return calls, False
    if callable(layers):
        return [call for call in calls if layers(call.layer)], False
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, (list, tuple, set, frozenset)) or not all(
        isinstance(n, str) for n in layers
    ):
        raise TypeError(
            "`layers` must be a list of layer names, a predicate layer -> bool, or None. "
            f"Received: layers={layers!r}"
        )
    eligible = [c.layer.name for c in calls
                if (t := factor_class(table, c.layer)) is not None and t.supports(c.layer) is None]
    missing = [n for n in layers if n not in by_name]
    if missing:
        raise ValueError(
            f"Layer name(s) {', '.join(map(repr, missing))} not found in the model. "
            f"Eligible layers: {', '.join(map(repr, eligible)) or 'none'}. Received: layers={layers!r}"
        )
    if isinstance(rank, dict):
        unranked = [n for n in layers if n not in rank]
        if unranked:
            raise ValueError(
                f"`rank` is a dict but has no entry for selected layer(s) "
                f"{', '.join(map(repr, unranked))}. Received: rank={rank!r}"
            )
    return [by_name[n] for n in layers], True


def _warn_dropped_constraints(layers):
    names = [layer.name for layer in layers
             if getattr(layer, "kernel_regularizer", None) is not None
             or getattr(layer, "kernel_constraint", None) is not None]
    if names:
        warnings.warn(
            "tflowrank.factorize: the kernel regularizers / constraints of "
            f"{', '.join(map(repr, names))} apply to a full kernel and are not carried over to "
            "the factors.",
            stacklevel=3,
        )
