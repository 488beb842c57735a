"""Choosing one compression option per layer under a whole-model budget (pure NumPy, private).

The sensitivity of a layer is the model's score measured with that layer alone compressed, at a
few ranks per method. ``monotone_fit`` makes each measured curve non-decreasing in cost (pool
adjacent violators: a cheaper chain never scores better than a dearer one of the same method);
``interpolate`` reads it at the cost of every rank; ``select`` then picks per layer the option
(or leaving the layer as it is) that minimises the sum of predicted score drops subject to the
total cost budget, by a Lagrangian relaxation (bisection on the price of cost, which is the same
as a common threshold on the marginal score drop per unit of cost saved) followed by a greedy
top-up of the budget left over (the multiple-choice knapsack heuristic).
"""

from dataclasses import dataclass

import numpy as np

__all__ = ["Option", "interpolate", "monotone_fit", "select"]


@dataclass(frozen=True)
class Option:
    """One way to compress one layer: its method, rank, cost and predicted score drop (>= 0)."""

    method: str
    rank: object
    cost: float
    drop: float


def monotone_fit(costs, scores):
    """The least-squares non-decreasing fit of ``scores`` against ``costs`` (sorted by cost).

    Returns ``(costs, fitted)`` sorted by cost; equal costs are pooled.
    """
    costs = np.asarray(costs, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if costs.shape != scores.shape or costs.ndim != 1 or costs.size == 0:
        raise ValueError(f"`costs` and `scores` must be 1-D arrays of one non-zero length. "
                         f"Received: shapes {costs.shape} and {scores.shape}")
    order = np.argsort(costs, kind="stable")
    costs, scores = costs[order], scores[order]
    # pool adjacent violators over blocks (value, weight, count)
    values, weights, counts = [], [], []
    for index, score in enumerate(scores):
        value, weight, count = float(score), 1.0, 1
        if values and index > 0 and costs[index] == costs[index - 1]:
            # equal cost: same point, pooled whatever the order
            value = (values[-1] * weights[-1] + value) / (weights[-1] + 1.0)
            weight, count = weights[-1] + 1.0, counts[-1] + 1
            values.pop(), weights.pop(), counts.pop()
        values.append(value), weights.append(weight), counts.append(count)
        while len(values) > 1 and values[-2] > values[-1]:
            value = (values[-2] * weights[-2] + values[-1] * weights[-1]) / (weights[-2] + weights[-1])
            weight, count = weights[-2] + weights[-1], counts[-2] + counts[-1]
            del values[-2:], weights[-2:], counts[-2:]
            values.append(value), weights.append(weight), counts.append(count)
    fitted = np.repeat(values, counts)
    unique, first = np.unique(costs, return_index=True)
    return unique, fitted[first]


def interpolate(costs, fitted, at, full_cost, full_score):
    """Read a fitted curve at the costs ``at``: linear between measured points and up to
    ``(full_cost, full_score)`` (the layer left as it is); NaN below the cheapest measured point."""
    xs = np.append(np.asarray(costs, dtype=np.float64), float(full_cost))
    ys = np.append(np.asarray(fitted, dtype=np.float64), float(full_score))
    keep = xs <= full_cost
    xs, ys = xs[keep], np.maximum.accumulate(ys[keep])
    at = np.asarray(at, dtype=np.float64)
    values = np.interp(at, xs, ys)
    return np.where(at < xs[0] - 1e-9 * max(abs(xs[0]), 1.0), np.nan, values)


def select(layers, budget, fixed=0.0):
    """Pick at most one option per layer so that the total cost fits ``budget``.

    Args:
        layers: per layer, ``(original_cost, [Option, ...])``; leaving a layer as it is costs its
            original cost and drops nothing.
        budget: the largest allowed total (``fixed`` plus each layer's chosen cost).
        fixed: the cost of everything that is not a candidate layer.

    Returns:
        ``(choices, total)``: per layer the chosen ``Option`` or None (left as it is), and the
        total cost. Raises ``ValueError`` when even the cheapest options exceed the budget.
    """
    originals = np.array([float(original) for original, _ in layers])
    options = [[o for o in opts if o.cost < original] for original, opts in layers]
    cheapest = fixed + sum(min([o.cost for o in opts], default=orig)
                           for orig, opts in zip(originals, options))
    if cheapest > budget:
        raise ValueError(f"budget {budget:.6g} is below the cheapest reachable total {cheapest:.6g}")

    def at(price):
        picks = []
        for original, opts in zip(originals, options):
            best, best_value = None, price * original
            for option in opts:
                value = option.drop + price * option.cost
                if value < best_value - 1e-15 or (
                        abs(value - best_value) <= 1e-15 and best is not None and option.cost < best.cost):
                    best, best_value = option, value
            picks.append(best)
        return picks

    def total(picks):
        return fixed + sum(o.cost if o is not None else orig for o, orig in zip(picks, originals))

    picks = at(0.0)
    if total(picks) > budget:
        drops = [o.drop for opts in options for o in opts] or [1.0]
        scale = max(max(drops), 1e-12) / max(float(originals.min(initial=1.0)), 1e-12)
        low, high = 0.0, scale
        while total(at(high)) > budget:
            high *= 4.0
        for _ in range(60):
            middle = (low + high) / 2
            if total(at(middle)) <= budget:
                high = middle
            else:
                low = middle
        picks = at(high)
    return _top_up(picks, options, originals, budget, fixed, total)


def _top_up(picks, options, originals, budget, fixed, total):
    """Spend what is left of the budget: first the moves with the best drop saved per unit of
    cost, then (to land near the budget) the largest moves that lose nothing."""
    spent = total(picks)
    for filling in (False, True):
        while True:
            best = None
            for i, (pick, opts) in enumerate(zip(picks, options)):
                current_cost = pick.cost if pick is not None else originals[i]
                current_drop = pick.drop if pick is not None else 0.0
                moves = [(o, o.cost, o.drop) for o in opts] + [(None, originals[i], 0.0)]
                for option, cost, drop in moves:
                    extra, saved = cost - current_cost, current_drop - drop
                    if spent + extra > budget or (saved <= 0 if not filling else saved < 0 or extra <= 0):
                        continue
                    key = extra if filling else (saved / extra if extra > 0 else np.inf)
                    if best is None or key > best[0]:
                        best = (key, i, option, extra)
            if best is None:
                break
            _, i, picks[i], extra = best
            spent += extra
    return picks, spent
