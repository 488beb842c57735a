"""``RankScheduler``: anneal the active rank of factorized layers during ``fit``.

From the rank each layer runs at when the schedule starts down to a target (the rank vocabulary of
``factorize``, or a whole-model ``target_macs`` / ``target_params``), along a linear or cosine
schedule, once per epoch or every N steps. At each step the layer's current chain is re-projected
onto its best factorization at the new rank (the closed-form SVD for spatial and svd layers, HOOI
for Tucker-2, CP-ALS for CP), as trained-rank pruning does (Xu et al. 2019, "Trained Rank Pruning
for Efficient Deep Neural Networks"), instead of cutting the trailing components off: the training
so far keeps counting. The new factors are written into the leading slices of the allocated
weights and the rest is masked (``FactorizedLayer.set_active_rank``): no graph is rebuilt, so the
traced train function, the optimizer and ``tf.distribute`` replicas all carry on.
``tflowrank.finalize`` (and ``export_tflite``, on its own) slices the factors to the final ranks.

Each epoch, ``logs["macs"]`` (MACs per sample at the active ranks) and ``logs["mean_rank"]`` (the
mean active rank over the scheduled layers; tuple ranks count their mean) are added, so they reach
History, CSVLogger and TensorBoard placed after this callback in the list.
"""

import math
import numbers

import keras
import numpy as np

from .. import ranks
from ..costs import cost
from ._selection import factorized_calls

__all__ = ["RankScheduler"]

_SCHEDULES = ("linear", "cosine")


class RankScheduler(keras.callbacks.Callback):
    """Lower the active rank of the model's factorized layers to ``target`` during ``fit``.

    Args:
        target: the final rank, as ``factorize`` takes it: an int, a tuple, a float fraction of
            each layer's original MACs, ``"energy:<share>"``, ``"vbmf"``, a dict
            ``{layer_name: spec}`` or a callable ``layer -> spec | None`` (None: leave the layer).
            Spectral criteria are measured on each layer's chain when the schedule starts. A
            layer's target is never above the rank it runs at then. None with ``target_macs`` or
            ``target_params``.
        start_epoch: the epoch (0-based) at whose start the first step is taken.
        end_epoch: the epoch at whose start the target is reached; default the last epoch of
            the fit, which then trains at the target rank.
        schedule: ``"linear"`` or ``"cosine"`` (slow at first, fast in the middle, slow at the end).
        every: ``"epoch"`` (a step at the start of each epoch) or a positive int N (a step every
            N training batches).
        target_macs / target_params: a fraction in (0, 1] of the model's MACs or parameters with
            every factorized layer counted at its original (unfactorized) cost: the whole model
            lands where ``factorize(original, method, target_macs=...)`` would, one common energy
            share across layers.
        multiple_of: round every scheduled rank up to a multiple (never above the allocated rank).
        layers: names of the factorized layers to schedule, or None for all of them.
    """

    def __init__(self, target=None, start_epoch=0, end_epoch=None, schedule="linear",
                 every="epoch", *, target_macs=None, target_params=None, multiple_of=1,
                 layers=None):
        super().__init__()
        given = [name for name, value in (("target", target), ("target_macs", target_macs),
                                          ("target_params", target_params)) if value is not None]
        if len(given) != 1:
            raise ValueError("Give exactly one of `target`, `target_macs` and `target_params`. "
                             f"Received: {', '.join(given) or 'none of them'}")
        if target is not None:
            ranks.check_rank_spec(target)
        for name, value in (("target_macs", target_macs), ("target_params", target_params)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                                      or not 0.0 < value <= 1.0):
                raise ValueError(f"`{name}` must be a fraction in (0, 1]. Received: {name}={value!r}")
        if not _natural(start_epoch):
            raise ValueError(f"`start_epoch` must be a non-negative integer. "
                             f"Received: start_epoch={start_epoch!r}")
        if end_epoch is not None and not (_natural(end_epoch) and end_epoch >= start_epoch):
            raise ValueError(f"`end_epoch` must be None or an integer >= start_epoch={start_epoch}. "
                             f"Received: end_epoch={end_epoch!r}")
        if schedule not in _SCHEDULES:
            raise ValueError(f"`schedule` must be 'linear' or 'cosine'. Received: schedule={schedule!r}")
        if every != "epoch" and not (_natural(every) and every > 0):
            raise ValueError(f"`every` must be 'epoch' or a positive number of steps. "
                             f"Received: every={every!r}")
        self.target = target
        self.target_macs, self.target_params = target_macs, target_params
        self.start_epoch, self.end_epoch = int(start_epoch), end_epoch
        self.schedule, self.every = schedule, every
        self.multiple_of = ranks.check_multiple_of(multiple_of)
        self.layers = None if layers is None else list(layers)
        self._plan = None

    # -- Keras hooks -----------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._plan = None
        self._epoch = 0
        self._finished = False
        self._steps = self.params.get("steps") if self.params else None
        epochs = (self.params or {}).get("epochs") or 1
        self._end = self.end_epoch if self.end_epoch is not None else max(epochs - 1, self.start_epoch)
        if self.every != "epoch" and not self._steps:
            raise ValueError(f"`every`={self.every} steps needs the number of steps per epoch, which "
                             "this fit does not know: pass `steps_per_epoch` or use every='epoch'.")
        self._calls = self._scheduled_calls()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self.every == "epoch" and epoch >= self.start_epoch:
            span = self._end - self.start_epoch
            self._step(1.0 if span == 0 else min(1.0, (epoch - self.start_epoch) / span))

    def on_train_batch_begin(self, batch, logs=None):
        if self.every == "epoch":
            return
        step = self._epoch * self._steps + batch
        first = self.start_epoch * self._steps
        if step < first or self._finished:
            return
        span = (self._end - self.start_epoch) * self._steps
        t = 1.0 if span == 0 else min(1.0, (step - first) / span)
        if (step - first) % self.every == 0 or t == 1.0:  # the target is reached whatever N is
            self._step(t)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs["macs"] = float(cost(self.model).macs)
        actives = [np.mean(np.atleast_1d(call.layer.active_rank)) for call in self._calls]
        logs["mean_rank"] = float(np.mean(actives)) if actives else 0.0

    # -- the schedule ----------------------------------------------------------------------------
    def _scheduled_calls(self):
        return factorized_calls(self.model, self.layers, "RankScheduler", "schedule")

    def _step(self, t):
        self._finished = t >= 1.0
        if self._plan is None:
            self._plan = self._make_plan()
        fraction = t if self.schedule == "linear" else (1.0 - math.cos(math.pi * t)) / 2.0
        for call, (start, final) in zip(self._calls, self._plan):
            if start is None:
                continue
            rank = tuple(
                max(f, min(s, int(round(s - (s - f) * fraction)))) for s, f in zip(start, final))
            allocated = _as_tuple(call.layer.rank)
            rank = _as_tuple(ranks.round_rank(_from_tuple(rank, call.layer), self.multiple_of,
                                              _from_tuple(allocated, call.layer)))
            rank = tuple(min(r, s) for r, s in zip(rank, start))
            rank = _as_tuple(call.layer.feasible_rank(_from_tuple(rank, call.layer)))
            if rank != _as_tuple(call.layer.active_rank):
                _reproject(call.layer, _from_tuple(rank, call.layer))

    def _make_plan(self):
        """Per scheduled layer: (rank at the start, target rank), as tuples; (None, None) to skip."""
        starts = [_as_tuple(call.layer.active_rank) for call in self._calls]
        if self.target is not None:
            targets = [self._resolve(call) for call in self._calls]
        else:
            targets = self._global_targets()
        plan = []
        for start, target in zip(starts, targets):
            if target is None:
                plan.append((None, None))
            else:
                plan.append((start, tuple(min(t, s) for t, s in zip(_as_tuple(target), start))))
        return plan

    def _resolve(self, call):
        layer = call.layer
        if isinstance(self.target, dict) and layer.name not in self.target:
            return None
        dense = layer.to_dense()
        try:
            rank = ranks.resolve_rank(self.target, dense, type(layer), call.input_shape,
                                      self.multiple_of)
        except ranks.RankOutOfRange:
            rank = layer.rank  # above what the layer can take: no lower than where it is
        if rank is None:
            return None
        return _clamp(rank, layer.rank)

    def _global_targets(self):
        kind = "macs" if self.target_macs is not None else "params"
        fraction = self.target_macs if kind == "macs" else self.target_params
        model_cost = cost(self.model)
        items, originals, currents = [], [], []
        for call in self._calls:
            layer, cin = call.layer, call.input_shape[-1]
            dense = layer.to_dense()
            if kind == "macs":
                original = layer.dense_macs(call.input_shape)
                current = layer.macs(call.input_shape)

                def cost_of(rank, layer=layer, call=call, original=original):
                    return original if rank is None else layer.macs_for(layer, rank, call.input_shape)
            else:
                original = int(np.prod(dense.kernel.shape)) + (layer._units if layer.use_bias else 0)
                current = layer.params_for(layer, layer.active_rank, cin)

                def cost_of(rank, layer=layer, cin=cin, original=original):
                    return original if rank is None else layer.params_for(layer, rank, cin)
            originals.append(original)
            currents.append(current)
            items.append(ranks.TargetItem(type(layer), layer.active_rank,
                                          type(layer).energy_spectra(dense), cost_of))
        now = model_cost.macs if kind == "macs" else model_cost.params
        dense_total = now - sum(currents) + sum(originals)
        budget = fraction * dense_total - (dense_total - sum(originals))
        chosen, _ = ranks.ranks_for_target(items, budget, self.multiple_of)
        return chosen


def _reproject(layer, rank):
    """Write the best rank-``rank`` factors of ``layer``'s current chain into its leading slices."""
    kernel = layer.dense_kernel()  # the chain at its active rank
    values, _ = type(layer)._decompose(kernel.astype(np.float64), rank)
    for (name, _), value in zip(layer.factors, values):
        variable = getattr(layer, name)
        padded = np.zeros(variable.shape, dtype=variable.dtype)
        padded[tuple(slice(0, n) for n in value.shape)] = value
        variable.assign(padded)
    layer.set_active_rank(rank)


def _as_tuple(rank):
    return tuple(rank) if isinstance(rank, tuple) else (int(rank),)


def _from_tuple(rank, layer):
    return tuple(rank) if isinstance(layer.rank, tuple) else rank[0]


def _clamp(rank, allocated):
    if isinstance(allocated, tuple):
        rank = rank if isinstance(rank, tuple) else (rank,) * len(allocated)
        return tuple(min(r, a) for r, a in zip(rank, allocated))
    return min(int(rank), allocated)


def _natural(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0
