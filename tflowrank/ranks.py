"""One rank vocabulary for every method, resolved by one function.

A rank specification is:

- an ``int``: that rank;
- a ``float`` in (0, 1]: the fraction of the layer's MACs to keep; the largest rank whose chain
  costs at most that fraction of the original layer;
- a ``dict`` ``{layer_name: int | float}``: per layer (it also selects the layers);
- a callable ``layer -> int | float | None``: per layer, None leaves the layer as it is.
"""

import numbers

__all__ = ["RankOutOfRange", "check_rank_spec", "resolve_rank"]


class RankOutOfRange(ValueError):
    """A valid rank specification that this particular layer cannot take."""


def _check_value(value, argument):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{argument}` must be an int rank or a float fraction of MACs in (0, 1]. "
            f"Received: {argument}={value!r}"
        )
    if isinstance(value, numbers.Integral):
        if value <= 0:
            raise ValueError(f"`{argument}` must be a positive rank. Received: {argument}={value!r}")
    elif not 0.0 < value <= 1.0:
        raise ValueError(
            f"A float `{argument}` is the fraction of each layer's MACs to keep and must be in (0, 1]. "
            f"Received: {argument}={value!r}"
        )


def check_rank_spec(rank):
    """Validate the form of a rank specification, before any layer is looked at."""
    if isinstance(rank, dict):
        if not rank:
            raise ValueError("`rank` is an empty dict: name at least one layer. Received: rank={}")
        for name, value in rank.items():
            if not isinstance(name, str):
                raise TypeError(f"The keys of a `rank` dict must be layer names. Received key: {name!r}")
            _check_value(value, f"rank[{name!r}]")
    elif not callable(rank):
        _check_value(rank, "rank")


def resolve_rank(rank, layer, factor_class, input_shape):
    """The integer rank ``rank`` asks of ``layer`` when ``factor_class`` replaces it, or None.

    Raises ``RankOutOfRange`` when the specification is valid but this layer cannot take it (an int
    above its full rank, a fraction smaller than rank 1 costs) and ``ValueError`` / ``TypeError``
    when the specification itself is wrong.
    """
    argument = "rank"
    if isinstance(rank, dict):
        argument = f"rank[{layer.name!r}]"
        rank = rank[layer.name]
    elif callable(rank):
        argument = f"rank({layer.name!r})"
        rank = rank(layer)
        if rank is None:
            return None
    _check_value(rank, argument)
    full = factor_class.full_rank_of(layer, input_shape[-1])
    if isinstance(rank, numbers.Integral):
        if rank > full:
            raise RankOutOfRange(
                f"`{argument}` for layer {layer.name!r} must be between 1 and its full rank {full} "
                f"({factor_class.__name__}). Received: {argument}={rank!r}"
            )
        return int(rank)
    dense = _dense_macs(layer, input_shape)
    if dense is None or factor_class.macs_for(layer, 1, input_shape) is None:
        raise RankOutOfRange(
            f"A fraction `{argument}` needs the MACs of layer {layer.name!r}, but its input shape "
            f"{tuple(input_shape)} is not fully known. Give an int rank instead."
        )
    budget = rank * dense
    best = None
    for candidate in range(1, full + 1):  # MACs grow linearly with rank
        if factor_class.macs_for(layer, candidate, input_shape) <= budget:
            best = candidate
        else:
            break
    if best is None:
        one = factor_class.macs_for(layer, 1, input_shape) / dense
        raise RankOutOfRange(
            f"`{argument}`={rank!r} keeps less of layer {layer.name!r} than rank 1 does "
            f"({one:.3f} of its MACs with {factor_class.__name__})."
        )
    return best


def _dense_macs(layer, input_shape):
    from .costs import layer_macs

    return layer_macs(layer, (input_shape,), None)
