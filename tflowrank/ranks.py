"""One rank vocabulary for every method, resolved by one function.

A rank specification is:

- an ``int``: that rank (for layers with several ranks, the same in each position);
- a ``tuple`` of ints: the ranks of a layer with several (Tucker-2: ``(r_in, r_out)``);
- a ``float`` in (0, 1]: the fraction of the layer's MACs to keep; the largest rank whose chain
  costs at most that fraction of the original layer;
- ``"energy:0.95"``: the smallest rank keeping that share of the squared singular values of the
  unfolding(s) the method truncates;
- ``"vbmf"``: the rank analytic empirical variational Bayesian matrix factorization keeps
  (Nakajima et al. 2013) on the same unfolding(s), as Kim et al. 2016 chose Tucker ranks;
- a ``dict`` ``{layer_name: spec}``: per layer (it also selects the layers);
- a callable ``layer -> spec | None``: per layer, None leaves the layer as it is.

``multiple_of`` rounds every resolved rank up to a multiple (never above the full rank).
``ranks_for_target`` finds one common energy share for all layers so that the model lands on a
MAC or parameter budget.
"""

import numbers
from dataclasses import dataclass

__all__ = ["RankOutOfRange", "check_rank_spec", "matrix_rank", "parse_criterion", "resolve_rank",
           "round_rank", "ranks_for_target", "TargetItem"]


class RankOutOfRange(ValueError):
    """A valid rank specification that this particular layer cannot take."""


_FORMS = ("an int rank, a tuple of int ranks, a float fraction of MACs in (0, 1], "
          "'energy:<share>' or 'vbmf'")


def parse_criterion(text, argument="rank"):
    """``"energy:0.9"`` -> ``("energy", 0.9)``; ``"vbmf"`` -> ``("vbmf",)``."""
    if text == "vbmf":
        return ("vbmf",)
    kind, _, value = text.partition(":")
    if kind == "energy":
        try:
            share = float(value)
        except ValueError:
            share = None
        if share is not None and 0.0 < share <= 1.0:
            return ("energy", share)
        raise ValueError(f"`{argument}` 'energy:<share>' needs a share in (0, 1]. "
                         f"Received: {argument}={text!r}")
    raise ValueError(f"`{argument}` must be {_FORMS}. Received: {argument}={text!r}")


def _check_value(value, argument):
    if isinstance(value, str):
        parse_criterion(value, argument)
        return
    if isinstance(value, (tuple, list)):
        if not value or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                and v > 0 for v in value):
            raise ValueError(f"A tuple `{argument}` must hold positive int ranks. "
                             f"Received: {argument}={value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{argument}` must be {_FORMS}. Received: {argument}={value!r}")
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


def check_multiple_of(multiple_of):
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, numbers.Integral) or multiple_of < 1:
        raise ValueError(f"`multiple_of` must be a positive integer. Received: multiple_of={multiple_of!r}")
    return int(multiple_of)


def round_rank(rank, multiple_of, full_rank):
    """Round ``rank`` up to a multiple of ``multiple_of``, element-wise, never above ``full_rank``."""
    if isinstance(rank, tuple):
        return tuple(round_rank(r, multiple_of, f) for r, f in zip(rank, full_rank))
    return min(-(-rank // multiple_of) * multiple_of, full_rank)


def resolve_rank(rank, layer, factor_class, input_shape, multiple_of=1, spectral=None):
    """The rank ``rank`` asks of ``layer`` when ``factor_class`` replaces it, or None to skip it.

    ``spectral(criterion)``, if given, replaces ``factor_class.spectral_rank(layer, criterion)``
    (data-driven methods take the spectrum of the layer's responses, not of its kernel).

    Raises ``RankOutOfRange`` when the specification is valid but this layer cannot take it (a rank
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
    if isinstance(rank, str):
        criterion = parse_criterion(rank, argument)
        chosen = (spectral or (lambda c: factor_class.spectral_rank(layer, c)))(criterion)
        chosen = _clamp(factor_class.normalize_rank(chosen), full)
    elif isinstance(rank, numbers.Integral) or isinstance(rank, (tuple, list)):
        try:
            chosen = factor_class.normalize_rank(tuple(rank) if isinstance(rank, list) else rank)
        except ValueError as error:
            raise ValueError(f"{error} (for layer {layer.name!r}, {argument})") from None
        if not _within(chosen, full):
            raise RankOutOfRange(
                f"`{argument}` for layer {layer.name!r} must be between 1 and its full rank {full} "
                f"({factor_class.__name__}). Received: {argument}={rank!r}"
            )
    else:
        chosen = _fraction_rank(rank, argument, layer, factor_class, input_shape)
    return round_rank(chosen, multiple_of, full)


def _within(rank, full):
    if isinstance(rank, tuple):
        return all(1 <= r <= f for r, f in zip(rank, full))
    return 1 <= rank <= full


def _clamp(rank, full):
    if isinstance(rank, tuple):
        return tuple(max(1, min(r, f)) for r, f in zip(rank, full))
    return max(1, min(rank, full))


def _fraction_rank(fraction, argument, layer, factor_class, input_shape):
    dense = _dense_macs(layer, input_shape)
    candidates = factor_class.rank_candidates(layer, input_shape[-1])
    if dense is None or factor_class.macs_for(layer, candidates[0], input_shape) is None:
        raise RankOutOfRange(
            f"A fraction `{argument}` needs the MACs of layer {layer.name!r}, but its input shape "
            f"{tuple(input_shape)} is not fully known. Give an int rank instead."
        )
    budget = fraction * dense
    best = None
    for candidate in candidates:  # cheapest first; MACs grow with rank
        if factor_class.macs_for(layer, candidate, input_shape) <= budget:
            best = candidate
        else:
            break
    if best is None:
        one = factor_class.macs_for(layer, candidates[0], input_shape) / dense
        raise RankOutOfRange(
            f"`{argument}`={fraction!r} keeps less of layer {layer.name!r} than its smallest rank "
            f"does ({one:.3f} of its MACs with {factor_class.__name__})."
        )
    return best


def _dense_macs(layer, input_shape):
    from .costs import layer_macs

    return layer_macs(layer, (input_shape,), None)


def matrix_rank(matrix, criterion):
    """The rank ``criterion`` keeps of ``matrix``: ``("energy", share)`` or ``("vbmf",)``, at least 1."""
    import numpy as np

    from .decompositions import energy_rank, vbmf_rank

    matrix = np.asarray(matrix, dtype=np.float64)
    if criterion[0] == "energy":
        rank = energy_rank(np.linalg.svd(matrix, compute_uv=False), criterion[1])
    else:
        rank = vbmf_rank(matrix)
    return max(1, min(int(rank), min(matrix.shape)))


@dataclass(frozen=True)
class TargetItem:
    """A layer taking part in a global target: its class, full rank, spectra and cost function.

    ``cost_of(rank)`` is the layer's cost at ``rank``; ``cost_of(None)`` its cost left as it is.
    """

    factor_class: object
    full_rank: object
    spectra: tuple
    cost_of: object


def ranks_for_target(items, budget, multiple_of=1):
    """Ranks for ``items`` (``TargetItem``) so that their total cost lands on ``budget``.

    One common energy share for every layer, found by bisection (a layer whose factorization would
    not cost less than the original stays as it is); then the ranks are topped up greedily, most
    kept energy per unit of cost first, while the budget allows.

    Returns ``(ranks, total)``: a list of ranks (None: left as it is) and their total cost.
    """

    def at(share):
        ranks = []
        for item in items:
            rank = item.factor_class.normalize_rank(item.factor_class.rank_from_energy(item.spectra, share))
            rank = round_rank(_clamp(rank, item.full_rank), multiple_of, item.full_rank)
            ranks.append(rank if item.cost_of(rank) < item.cost_of(None) else None)
        return ranks

    def total(ranks):
        return sum(item.cost_of(rank) for item, rank in zip(items, ranks))

    low, high = 0.0, 1.0
    if total(at(1e-9)) > budget:
        ranks = at(1e-9)
        return ranks, total(ranks)
    for _ in range(40):
        middle = (low + high) / 2
        if total(at(middle)) <= budget:
            low = middle
        else:
            high = middle
    ranks = at(low)
    spent = total(ranks)
    while True:
        best = None
        for i, item in enumerate(items):
            step = None if ranks[i] is None else _next_rank(ranks[i], item.full_rank, multiple_of)
            if step is None:
                continue
            extra = item.cost_of(step) - item.cost_of(ranks[i])
            if extra <= 0 or spent + extra > budget or item.cost_of(step) >= item.cost_of(None):
                continue
            gain = (_kept_energy(item.spectra, step) - _kept_energy(item.spectra, ranks[i])) / extra
            if best is None or gain > best[0]:
                best = (gain, i, step, extra)
        if best is None:
            return ranks, spent
        _, i, ranks[i], extra = best
        spent += extra


def _kept_energy(spectra, rank):
    """Mean share of energy a rank keeps over the spectra (middle Tucker-spatial rank ignored)."""
    parts = rank if isinstance(rank, tuple) else (rank,)
    if len(parts) == len(spectra) + 1:
        parts = (parts[0], parts[-1])
    if len(spectra) > len(parts):  # one rank for several spectra (CP)
        parts = parts * len(spectra)
    shares = [float((s[:r] ** 2).sum() / max(float((s**2).sum()), 1e-300)) for s, r in zip(spectra, parts)]
    return sum(shares) / len(shares)


def _next_rank(rank, full, multiple_of):
    if isinstance(rank, tuple):
        bigger = tuple(min(r + multiple_of, f) for r, f in zip(rank, full))
    else:
        bigger = min(rank + multiple_of, full)
    return None if bigger == rank else bigger
