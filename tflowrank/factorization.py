"""factorize: a new model in which chosen layers are replaced by low-rank chains."""

import math
import warnings
from dataclasses import dataclass

from . import ranks

__all__ = ["factorize"]

_DEPTHWISE = "depthwise convolutions are never factorized: they are already cheap"
_TOLERANCE = 0.02  # a global target is met within 2%


@dataclass(frozen=True)
class _Entry:
    """A layer that will be factorized: its first call, replacing class, and whether it was named."""

    call: object
    target: type
    asked: bool


def factorize(model, method, rank=None, layers=None, *, data=None, target_macs=None,
              target_params=None, multiple_of=1):
    """Return a NEW model whose selected layers are factorized, initialised from the trained weights.

    Args:
        model: a built Sequential or Functional Keras model (nested models are looked into). It is
            never modified, and the new model shares no layer or weight with it.
        method: ``"spatial"`` (k x k conv -> k x 1, 1 x k), ``"svd"`` (k x k conv -> k x k to r
            channels, 1 x 1; Dense -> two Dense), ``"tucker2"`` (1 x 1, k x k core, 1 x 1),
            ``"cp"`` (1 x 1, depthwise k x 1, depthwise 1 x k, 1 x 1), ``"tucker2_spatial"``
            (1 x 1, k x 1, 1 x k, 1 x 1) or ``"output"`` (data-driven: a narrow k x k conv and a
            1 x 1 fitted to the layer's responses on ``data``; needs ``data``). A Conv1D takes
            ``"svd"``, ``"tucker2"``, ``"cp"`` and ``"output"`` (chains with kernels of one row,
            ``SVDConv1D`` / ``TuckerConv1D`` / ``CPConv1D``); the others skip it. Or a
            ``CompressionPlan`` (from ``tflowrank.search``): each of its layers gets its own
            method and rank (then give no ``rank``, ``layers`` or target; ``data`` iff the plan
            has ``"output"`` entries, which are fitted first, in execution order).
        rank: the rank vocabulary of :mod:`tflowrank.ranks`: an int, a tuple (Tucker ranks), a
            float in (0, 1] (the fraction of each layer's MACs to keep), ``"energy:0.95"``,
            ``"vbmf"``, a dict ``{layer_name: spec}`` or a callable ``layer -> spec | None``.
        layers: layer names, a predicate ``layer -> bool``, or None: every layer the method can
            factorize and whose factorization saves MACs (or the names of a ``rank`` dict).
        data: calibration inputs for ``method="output"``, an array ``(N, *input_shape[1:])``
            (a few hundred samples are enough).
        target_macs, target_params: instead of ``rank``, a fraction in (0, 1] of the whole model's
            MACs or parameters to land on (within 2%): one common energy share for all selected
            layers, found by bisection, then topped up greedily.
        multiple_of: round every rank up to a multiple of this (never above the full rank).

    Layers the method cannot handle are skipped with one warning when selected implicitly (None
    or a predicate) and rejected with a ValueError when named. Every factorized layer records its
    rank and reconstruction error; ``tflowrank.cost(new_model)`` shows them.
    """
    from ._backend import require_tensorflow

    require_tensorflow()
    from . import graph
    from .methods import method_table

    graph.check_model(model)
    from .plan import CompressionPlan

    if isinstance(method, CompressionPlan):
        return _apply_plan(model, method, data, rank=rank, layers=layers, target_macs=target_macs,
                           target_params=target_params, multiple_of=multiple_of)
    table = method_table(method)
    target = _check_target(rank, target_macs, target_params)
    if rank is not None:
        ranks.check_rank_spec(rank)
    multiple_of = ranks.check_multiple_of(multiple_of)
    data = _check_data(method, data, model)

    times_called, first_calls = {}, {}
    for call in graph.layer_calls(model):
        times_called[id(call.layer)] = times_called.get(id(call.layer), 0) + 1
        first_calls.setdefault(id(call.layer), call)
    first_calls = list(first_calls.values())
    candidates, explicit = _select(first_calls, layers, rank, table)
    entries, skipped = _eligible(candidates, explicit, rank, table, method, model, times_called)

    if target is not None:
        chosen = _target_ranks(model, entries, target, multiple_of, skipped)
    else:
        chosen = {}
        for entry in entries:
            spec = rank.get(entry.call.layer.name) if isinstance(rank, dict) else rank
            if method == "output" and (isinstance(spec, str) or callable(spec)):
                chosen[entry.call.layer.name] = None  # resolved once its responses are known
                continue
            picked = _resolve(entry, rank, multiple_of, skipped)
            if picked is not None:
                chosen[entry.call.layer.name] = picked
    entries = [e for e in entries if e.call.layer.name in chosen]
    if not entries:
        detail = "; ".join(f"{path}: {why}" for path, why in skipped) or "no layer was selected"
        raise ValueError(
            f"No layer of model {model.name!r} was factorized with method={method!r}, "
            f"rank={rank!r}: {detail}."
        )

    if method == "output":
        new = _output(model, entries, chosen, rank, multiple_of, data, skipped)
    else:
        replacements = {id(e.call.layer): e.target.from_layer(e.call.layer, chosen[e.call.layer.name])
                        for e in entries}
        new = graph.rewrite(model, replacements)
    _warn(skipped)
    _warn_dropped_constraints(e.call.layer for e in entries)
    return new


def _apply_plan(model, plan, data, **others):
    """Apply a ``CompressionPlan``: the "output" entries first (fitted to the original model's
    responses, in execution order), then every kernel-based entry in one rewrite."""
    from . import graph
    from .methods import factor_class, method_table
    from .output_approximation import approximate_outputs

    given = [f"{name}={value!r}" for name, value in others.items()
             if value is not None and not (name == "multiple_of" and value == 1)]
    if given:
        raise ValueError("A CompressionPlan already holds each layer's method and rank: pass no "
                         "rank, layers, target or multiple_of with it. Received: " + ", ".join(given))
    entries = plan.factorized
    if not entries:
        raise ValueError(f"The plan factorizes no layer of model {model.name!r}: every entry is "
                         "left as it is. Received: a plan with no factorized entry")
    calls = graph.layer_calls(model)
    order = {call.path: index for index, call in enumerate(calls)}
    times = {}
    for call in calls:
        times[id(call.layer)] = times.get(id(call.layer), 0) + 1
    for entry in entries:
        if entry.layer not in order:
            raise ValueError(f"The plan names layer {entry.layer!r}, which model {model.name!r} does "
                             "not have: was the plan made for another model?")
        call = calls[order[entry.layer]]
        target = factor_class(method_table(entry.method), call.layer)
        reason = (f"method {entry.method!r} has no factorization for {type(call.layer).__name__}"
                  if target is None else target.supports(call.layer))
        if not reason and entry.method == "output" and call.path != call.layer.name:
            reason = "method 'output' works on layers at the top level of the model"
        if not reason and times[id(call.layer)] > 1:
            reason = f"it is called {times[id(call.layer)]} times (shared weights)"
        if reason:
            raise ValueError(f"Layer {entry.layer!r} cannot be factorized with "
                             f"method={entry.method!r} as the plan asks: {reason}.")
    outputs = sorted((e for e in entries if e.method == "output"), key=lambda e: order[e.layer])
    if outputs:
        data = _check_data("output", data, model)
        current = approximate_outputs(model, [(e.layer, lambda moments, r=e.rank: r) for e in outputs],
                                      data)
    else:
        if data is not None:
            raise ValueError("`data` is only used by the 'output' entries of a plan, and this plan has "
                             f"none (its methods: {', '.join(plan.methods)}). Received: "
                             f"data={_describe_data(data)}")
        current = model
    by_path = {call.path: call for call in graph.layer_calls(current)}
    replacements = {}
    for entry in entries:
        if entry.method != "output":
            layer = by_path[entry.layer].layer
            target = factor_class(method_table(entry.method), layer)
            replacements[id(layer)] = target.from_layer(layer, entry.rank)
    new = graph.rewrite(current, replacements) if replacements else current
    _warn_dropped_constraints(calls[order[e.layer]].layer for e in entries)
    return new


def _check_target(rank, target_macs, target_params):
    given = [(name, value) for name, value in (("rank", rank), ("target_macs", target_macs),
                                               ("target_params", target_params)) if value is not None]
    if len(given) != 1:
        raise ValueError(
            "Give exactly one of `rank`, `target_macs` or `target_params`. Received: "
            + (", ".join(f"{n}={v!r}" for n, v in given) or "none of them")
        )
    name, value = given[0]
    if name == "rank":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        what = "MACs" if name == "target_macs" else "parameters"
        raise ValueError(f"`{name}` is a fraction of the model's {what} and must be in (0, 1]. "
                         f"Received: {name}={value!r}")
    return name[7:], float(value)


def _check_data(method, data, model):
    import numpy as np

    if method != "output":
        if data is not None:
            raise ValueError(f"`data` is only used by method='output'. Received: method={method!r} "
                             f"with data={_describe_data(data)}")
        return None
    if data is None:
        raise ValueError("method='output' approximates each layer's responses on calibration "
                         "inputs: pass data= a few hundred inputs of the model "
                         "(an array (N, *input_shape[1:])). Received: data=None")
    array = np.asarray(data, dtype=np.float32)
    expected = tuple(model.inputs[0].shape[1:])
    if array.ndim != len(expected) + 1 or any(e is not None and e != a for e, a in
                                              zip(expected, array.shape[1:])) or len(array) < 2:
        raise ValueError(
            f"`data` does not match the model input: expected (N >= 2, {', '.join(map(str, expected))}). "
            f"Received: data with shape {array.shape}"
        )
    return array


def _select(calls, layers, rank, table):
    """The calls to consider, and whether they were named explicitly."""
    from .methods import factor_class

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


def _eligible(candidates, explicit, rank, table, method, model, times_called):
    """The candidates the method can factorize; the others are skipped (implicit) or rejected."""
    import keras

    from .methods import factor_class

    entries, skipped = [], []
    for call in candidates:
        layer = call.layer
        target = factor_class(table, layer)
        depthwise = isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D))
        if depthwise:
            reason = _DEPTHWISE
        elif target is None:
            reason = f"method {method!r} has no factorization for {type(layer).__name__}"
        elif method == "output" and call.path != layer.name:
            reason = ("method 'output' works on layers at the top level of the model, not inside "
                      "a nested model")
        else:
            reason = target.supports(layer)
        if (not reason and not explicit and getattr(target, "needs_spatial_extent", False)
                and math.prod(layer.kernel_size) == 1):
            skipped.append((call.path, f"a 1 x 1 convolution has no spatial extent for method "
                                       f"{method!r}: use method='svd' for it"))
            continue
        if reason:
            if explicit:
                raise ValueError(f"Layer {layer.name!r} cannot be factorized with method={method!r}: "
                                 f"{reason}.")
            if target is not None or depthwise:
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
        entries.append(_Entry(call, target, explicit or callable(rank)))
    return entries, skipped


def _resolve(entry, rank, multiple_of, skipped, spectral=None):
    """The rank for one entry, or None (skipped, with the reason noted) when it saves nothing."""
    from .costs import layer_macs

    call, target = entry.call, entry.target
    try:
        chosen = ranks.resolve_rank(rank, call.layer, target, call.input_shape, multiple_of, spectral)
    except ranks.RankOutOfRange as error:
        if entry.asked:
            raise
        skipped.append((call.path, str(error)))
        return None
    if chosen is None:
        return None
    before = layer_macs(call.layer, call.input_shapes, call.output_shapes)
    after = target.macs_for(call.layer, chosen, call.input_shape)
    if before is not None and after is not None and after >= before:
        note = f"rank {chosen} costs {after:,} MACs, not fewer than the original {before:,}"
        if not entry.asked:
            skipped.append((call.path, note))
            return None
        warnings.warn(f"tflowrank.factorize: layer {call.layer.name!r}: {note}.", stacklevel=3)
    return chosen


def _target_ranks(model, entries, target, multiple_of, skipped):
    """Ranks for a global MAC or parameter target (see ``ranks.ranks_for_target``)."""
    from .costs import cost, layer_macs

    kind, fraction = target
    total = cost(model).macs if kind == "macs" else model.count_params()
    items, originals = [], []
    for entry in entries:
        call, target_class = entry.call, entry.target
        cin = call.input_shape[-1]
        if kind == "macs":
            original = layer_macs(call.layer, call.input_shapes, call.output_shapes)

            def cost_of(rank, call=call, target_class=target_class, original=original):
                return original if rank is None else target_class.macs_for(call.layer, rank,
                                                                            call.input_shape)
        else:
            original = call.layer.count_params()

            def cost_of(rank, call=call, target_class=target_class, original=original, cin=cin):
                return original if rank is None else target_class.params_for(call.layer, rank, cin)
        originals.append(original)
        items.append(ranks.TargetItem(target_class, target_class.full_rank_of(call.layer, cin),
                                      target_class.energy_spectra(call.layer), cost_of))
    budget = fraction * total - (total - sum(originals))
    chosen, spent = ranks.ranks_for_target(items, budget, multiple_of)
    reached = (total - sum(originals) + spent) / total
    name = f"target_{kind}"
    if reached > fraction * (1 + _TOLERANCE):
        raise ValueError(
            f"`{name}`={fraction!r} cannot be reached: with the selected layers at their smallest "
            f"ranks the model keeps {reached:.3f} of its {kind}. Select more layers or ask for less."
        )
    if reached < fraction * (1 - _TOLERANCE):
        warnings.warn(f"tflowrank.factorize: {name}={fraction!r} reached {reached:.3f} (rank steps "
                      f"of multiple_of={multiple_of} are too coarse to land within 2%).", stacklevel=3)
    result = {}
    for entry, rank in zip(entries, chosen):
        if rank is None:
            skipped.append((entry.call.path, "factorizing it would not lower the cost"))
        else:
            result[entry.call.layer.name] = rank
    return result


def _output(model, entries, chosen, rank, multiple_of, data, skipped):
    """Apply the data-driven method to ``entries`` in execution order."""
    from .decompositions import energy_rank, fitted_spectrum
    from .output_approximation import approximate_outputs

    plan = []
    for entry in entries:
        name = entry.call.layer.name
        if chosen[name] is not None:
            plan.append((name, lambda moments, r=chosen[name]: r))
            continue

        def choose(moments, entry=entry):
            def spectral(criterion):
                if criterion[0] == "energy":
                    return energy_rank(fitted_spectrum(moments), criterion[1])
                return entry.target.vbmf_rank(entry.call.layer)  # from the kernel (documented)
            return _resolve(entry, rank, multiple_of, skipped, spectral)

        plan.append((name, choose))
    return approximate_outputs(model, plan, data)


def _warn(skipped):
    if not skipped:
        return
    by_reason = {}
    for path, why in skipped:
        by_reason.setdefault(why, []).append(path)
    def names(paths):
        return ", ".join(paths[:6]) + (f" (+{len(paths) - 6} more)" if len(paths) > 6 else "")

    warnings.warn(
        f"tflowrank.factorize left {len(skipped)} layer(s) as they are: "
        + "; ".join(f"{names(paths)}: {why}" for why, paths in by_reason.items()),
        stacklevel=3,
    )


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


def _describe_data(data):
    """``data`` in an error message: its type and shape, not its values."""
    shape = getattr(data, "shape", None)
    return f"{type(data).__name__} of shape {tuple(shape)}" if shape is not None else type(data).__name__
