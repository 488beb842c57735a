"""Least-squares refit of a chain's last linear factor from data (layer-wise reconstruction).

A factorized layer computes ``y_hat = F(z)``, where ``z`` is what the chain's earlier factors make of
the layer's input and ``F`` its last factor, linear in its weights: a convolution or a matmul whose
input rows (``z``'s patches) are ``p``. Given the responses ``y`` of the ORIGINAL layer to the
ORIGINAL network's input, and the patches ``p`` the compressed network computes at the same
positions, the weights minimising

    sum || y - (p @ W + b) ||^2  +  ridge x mean(diag(p^T p)) x ||W||^2

are a linear solve on second moments (Zhang et al. 2016 fit whole responses the same way; here
only the last factor is refitted, so the chain's structure and rank stay as factorized). Errors of
the layers before, already compressed, are corrected instead of carried on. ``NormalEquations``
accumulates the moments batch by batch, so the number of calibration positions is not limited by
memory.
"""

from dataclasses import dataclass, field

import numpy as np

__all__ = ["NormalEquations"]


@dataclass
class NormalEquations:
    """Running sums of a least-squares problem ``y ~ p @ W (+ b)``.

    ``inputs`` is the number of columns of ``p``, ``outputs`` that of ``y``; ``bias`` adds an
    intercept. ``add(p, y)`` takes ``(n, inputs)`` and ``(n, outputs)`` rows.
    """

    inputs: int
    outputs: int
    bias: bool = False
    count: int = 0
    pp: np.ndarray = field(default=None, repr=False)
    py: np.ndarray = field(default=None, repr=False)
    yy: float = 0.0

    def __post_init__(self):
        for name in ("inputs", "outputs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1. Received: {name}={value!r}")
        size = self.inputs + (1 if self.bias else 0)
        self.pp, self.py = np.zeros((size, size)), np.zeros((size, self.outputs))

    def add(self, p, y):
        p = np.asarray(p, dtype=np.float64).reshape(-1, self.inputs)
        y = np.asarray(y, dtype=np.float64).reshape(-1, self.outputs)
        if len(p) != len(y):
            raise ValueError(f"`p` and `y` must have as many rows. Received: {len(p)} and {len(y)} rows")
        if self.bias:
            p = np.concatenate([p, np.ones((len(p), 1))], axis=1)
        self.count += len(p)
        self.pp += p.T @ p
        self.py += p.T @ y
        self.yy += float(np.sum(y * y))
        return self

    def error(self, weights, bias=None):
        """Relative error ``||y - (p W + b)|| / ||y||`` of the given weights on the rows added."""
        w = self._stacked(weights, bias)
        squared = self.yy - 2 * np.sum(w * self.py) + np.sum(w * (self.pp @ w))
        return float(np.sqrt(max(squared, 0.0) / self.yy)) if self.yy > 0 else 0.0

    def solve(self, ridge=1e-3):
        """The least-squares ``(weights (inputs, outputs), bias (outputs,) or None)``.

        ``ridge`` is relative to the mean diagonal of ``p^T p`` (the intercept is not shrunk).
        """
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or ridge < 0:
            raise ValueError(f"`ridge` must be a number >= 0. Received: ridge={ridge!r}")
        if self.count < 1:
            raise ValueError("No rows were added: nothing to solve.")
        scale = np.trace(self.pp[: self.inputs, : self.inputs]) / self.inputs
        penalty = np.zeros(len(self.pp))
        penalty[: self.inputs] = ridge * scale if scale > 0 else ridge
        solution = np.linalg.lstsq(self.pp + np.diag(penalty), self.py, rcond=None)[0]
        if self.bias:
            return solution[: self.inputs], solution[self.inputs]
        return solution, None

    def _stacked(self, weights, bias):
        w = np.asarray(weights, dtype=np.float64).reshape(self.inputs, self.outputs)
        if self.bias:
            b = np.zeros(self.outputs) if bias is None else np.asarray(bias, dtype=np.float64)
            w = np.concatenate([w, b.reshape(1, self.outputs)], axis=0)
        return w
