"""``LowRankRegularizer``: a penalty that pushes factorized layers toward low rank during ``fit``.

A factorized chain is a sum of rank components: component ``r`` of a spatial or SVD layer is the
outer product of column ``r`` of its first factor and row ``r`` of its second. The penalty is the
sum of the sizes of the components,

    strength * sum_layers sum_groups sum_r  prod_{(factor, axis) in group} ||factor[..., r, ...]||_F

For two factors ``U V^T`` this is ``sum_r ||u_r|| ||v_r||``, the variational form of the nuclear
norm: it is at least ``||U V^T||_*`` and equal to it when the factors are SVD-balanced (as
``factorize`` and ``RankScheduler`` leave them), so minimising it is minimising the nuclear norm
(Srebro, Rennie and Jaakkola 2005, "Maximum-Margin Matrix Factorization"). Unlike a plain weight
decay it is a group penalty: it drives whole components to zero, which is what lets an energy
criterion (``RankScheduler("energy:0.95")``, ``factorize(rank="energy:...")``) then cut the rank
with little loss. Tucker-2 has one group per channel mode (the 1x1 factor's columns with the core's
slices), CP one group of four factors, the Tucker-2 chain with a separated core three groups.

It is a callback so that it can be switched on for one fit and off again: at the start of ``fit``
it attaches the penalty to the factor variables (Keras adds variable regularizers to the loss) and
re-traces the train and test functions once; at the end it detaches them and leaves the model as
it found it. The value of the penalty goes into ``logs["low_rank_penalty"]`` each epoch.
"""

import numbers

import keras
import numpy as np

from ._selection import factorized_calls

__all__ = ["LowRankRegularizer"]

_EPS = 1e-12  # inside the square root: the norm has no gradient at exactly zero


class LowRankRegularizer(keras.callbacks.Callback):
    """Add a nuclear-norm style group penalty on the rank components of factorized layers.

    Args:
        strength: the weight of the penalty in the loss (typical: 1e-4 to 1e-3 of a cross-entropy
            loss; larger drives ranks down faster at more accuracy cost).
        layers: names of the factorized layers to penalise, or None for all of them.
    """

    def __init__(self, strength, layers=None):
        super().__init__()
        if (isinstance(strength, bool) or not isinstance(strength, numbers.Real)
                or not 0.0 < strength < float("inf")):
            raise ValueError(f"`strength` must be a positive number. Received: strength={strength!r}")
        self.strength = float(strength)
        self.layers = None if layers is None else list(layers)
        self._attached = []

    def on_train_begin(self, logs=None):
        self._layers = self._penalised_layers()
        for layer in self._layers:
            variable = getattr(layer, layer.rank_groups[0][0][0])
            self._attached.append((variable, variable.regularizer))
            variable.regularizer = _ComponentPenalty(layer, self.strength, variable.regularizer)
        # the train and test functions are traced with the losses of that moment: trace again
        self.model.make_train_function(force=True)
        self.model.make_test_function(force=True)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["low_rank_penalty"] = self.strength * sum(penalty_value(layer)
                                                           for layer in self._layers)

    def on_train_end(self, logs=None):
        for variable, previous in self._attached:
            variable.regularizer = previous
        self._attached = []
        self.model.train_function = None
        self.model.test_function = None

    def _penalised_layers(self):
        calls = factorized_calls(self.model, self.layers, "LowRankRegularizer", "penalise")
        return [call.layer for call in calls]


class _ComponentPenalty:
    """The penalty of one layer, as the regularizer of its first factor variable."""

    def __init__(self, layer, strength, previous=None):
        self.layer, self.strength, self.previous = layer, strength, previous

    def __call__(self, _):
        ops = keras.ops
        total = 0.0
        for group in self.layer.rank_groups:
            sizes = None
            for name, axis in group:
                weight = self.layer._masked(name)
                others = tuple(a for a in range(len(weight.shape)) if a != axis % len(weight.shape))
                norm = ops.sqrt(ops.sum(ops.square(weight), axis=others) + _EPS)
                sizes = norm if sizes is None else sizes * norm
            total = total + ops.sum(sizes)
        penalty = self.strength * total
        if self.previous is not None:
            penalty = penalty + self.previous(getattr(self.layer, self.layer.rank_groups[0][0][0]))
        return penalty

    def get_config(self):  # Keras asks regularizers for a config when saving
        return {"strength": self.strength}


def penalty_value(layer):
    """The (unweighted) component penalty of ``layer`` as a float, computed in NumPy."""
    total = 0.0
    for group in layer.rank_groups:
        sizes = None
        for name, axis in group:
            weight = layer._active_numpy(name)
            others = tuple(a for a in range(weight.ndim) if a != axis % weight.ndim)
            norm = np.sqrt(np.sum(np.square(weight, dtype=np.float64), axis=others))
            sizes = norm if sizes is None else sizes * norm
        total += float(np.sum(sizes))
    return total
