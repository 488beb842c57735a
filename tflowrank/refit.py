"""Data-driven refit of factorized layers' last factors, layer by layer (``refit_last_factors``).

The math is :class:`tflowrank.decompositions.NormalEquations`; here the data is collected. Layers
are processed in execution order; for each factorized layer, the inputs it sees in the ORIGINAL
model give the target responses (the original layer, before its activation) and the inputs it sees
in the compressed model, as refitted so far, go through the chain's earlier factors; the last
factor is then the least-squares map from those to the targets. So each layer corrects the errors
of the layers before it, as the data-driven ``"output"`` method does, but keeps the method and
rank it was factorized with. A layer whose refit would not lower its error is left as it was.

``tflowrank.search`` scores its candidates the same way, one layer at a time:
``layer_targets`` collects a layer's inputs and responses once, ``fit_last_factor`` refits the
chain at each measured rank in place.
"""

from collections import Counter
from dataclasses import dataclass

import numpy as np

from .output_approximation import _MAX_ROWS_PER_BATCH  # rows per batch and layer, as there

__all__ = ["refit_last_factors", "LayerRefit"]


@dataclass(frozen=True)
class LayerRefit:
    """One layer's refit: relative response errors before and after, and whether it was applied
    (``reason`` says why not)."""

    name: str
    error_before: float
    error_after: float
    applied: bool
    reason: str = ""


def refit_last_factors(original, compressed, data, batch_size=64, ridge=1e-3, seed=0):
    """Return ``(model, rows)``: a copy of ``compressed`` whose factorized layers' last factors
    (and biases) are refitted to the responses of ``original``'s layers of the same names.

    Args:
        original: the Keras model before factorization.
        compressed: ``factorize(original, ...)``'s result (layer names kept); not modified.
        data: calibration inputs, an array ``(N, *input_shape[1:])``, N >= 1.
        batch_size: calibration images per forward pass.
        ridge: relative ridge of the solve (``NormalEquations.solve``).
        seed: which rows are used when a batch has more than a few thousand positions.

    ``rows``: one ``LayerRefit`` per factorized layer found in ``compressed``, in execution order.
    """
    from . import graph
    from .layers import FactorizedLayer

    graph.check_model(original, "original")
    graph.check_model(compressed, "compressed")
    data = np.asarray(data)
    if data.ndim < 2 or len(data) == 0:
        raise ValueError(f"`data` must be a non-empty batch of inputs. Received: shape {data.shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` must be an integer >= 1. Received: batch_size={batch_size!r}")
    rng = np.random.default_rng(seed)
    current = graph.rewrite(compressed, {})
    calls = [call for call in graph.layer_calls(current) if isinstance(call.layer, FactorizedLayer)]
    times_called = Counter(id(call.layer) for call in calls)
    rows = []
    for call in calls:
        layer = call.layer
        if call.path != layer.name or times_called[id(layer)] > 1:
            rows.append(LayerRefit(call.path, np.nan, np.nan, False,
                                   "inside a nested model or called more than once"))
            continue
        rows.append(_refit_layer(original, current, call, data, batch_size, ridge, rng))
    return current, tuple(rows)


def _refit_layer(original, current, call, data, batch_size, ridge, rng):
    from . import graph

    layer, name = call.layer, call.layer.name
    try:
        source = original.get_layer(name)
    except ValueError:
        return LayerRefit(name, np.nan, np.nan, False, "no layer of this name in the original model")
    if not hasattr(source, "kernel") or layer.active_rank != layer.rank:
        return LayerRefit(name, np.nan, np.nan, False, "not a plain layer at its allocated rank")
    original_inputs = graph.input_probe(original, name)
    compressed_inputs = graph.input_probe(current, name)

    def batches():
        for start in range(0, len(data), batch_size):
            batch = data[start : start + batch_size]
            rows, keep = _kept_rows(graph.linear_responses(source, original_inputs(batch)), rng)
            yield compressed_inputs(batch), rows, keep

    before, after, applied = fit_last_factor(layer, call.input_shape, batches(), ridge)
    if np.isnan(before):
        return LayerRefit(name, before, after, False, "its last step is not its last factor")
    if not applied:
        return LayerRefit(name, before, after, False, "the refit does not lower the error")
    return LayerRefit(name, before, after, True)


def layer_targets(model, name, data, batch_size=64, seed=0):
    """The batches ``fit_last_factor`` takes for ``model``'s layer ``name`` (a top-level Conv2D,
    Conv1D or Dense) alone: its inputs in ``model`` and its responses before the activation, at most
    ``_MAX_ROWS_PER_BATCH`` rows (output positions) per batch, the same rows every time they are
    used. A list: one computation serves every rank and method the search measures."""
    from . import graph

    rng = np.random.default_rng(seed)
    layer = model.get_layer(name)
    probe = graph.input_probe(model, name)
    targets = []
    for start in range(0, len(data), batch_size):
        inputs = probe(data[start : start + batch_size])
        targets.append((inputs, *_kept_rows(graph.linear_responses(layer, inputs), rng)))
    return targets


def _kept_rows(responses, rng):
    """``(rows, keep)``: the responses as rows (one per output position), at most
    ``_MAX_ROWS_PER_BATCH`` of them drawn with ``rng``, and which positions those are."""
    rows = responses.reshape(-1, responses.shape[-1])
    keep = (np.sort(rng.choice(len(rows), _MAX_ROWS_PER_BATCH, replace=False))
            if len(rows) > _MAX_ROWS_PER_BATCH else slice(None))
    return rows[keep], keep


def fit_last_factor(layer, input_shape, batches, ridge=1e-3):
    """Refit a factorized layer's last factor and bias, at its active rank, in place.

    ``batches`` yields ``(chain inputs, target rows, kept rows)``: the inputs the chain sees, the
    responses it should give (one row per kept output position) and which output positions
    (flattened over the batch) those rows are. The least-squares solution is written into the
    leading slices of the last factor (the slices beyond the active rank are left as they are)
    when it lowers the relative error on those rows. Returns ``(error before, error after,
    applied)``; NaN errors when the chain's last step is not its last factor as stored.
    """
    import keras

    from .decompositions import NormalEquations

    sliced = layer if layer.active_rank == layer.rank else layer.sliced()
    steps = sliced.steps(input_shape)
    if steps[-1].kind == "reshape":  # a 1-D chain's row dropped: the same positions either side
        steps = steps[:-1]
    *body, last = steps
    factor_name = layer.factors[-1][0]
    factor = layer._numpy(getattr(sliced, factor_name))
    if last.kind not in ("conv", "dense") or not np.array_equal(last.kernel.ravel(), factor.ravel()):
        return np.nan, np.nan, False
    body_layers = [_plain(step) for step in body]
    patches = _patches(last)
    kernel = last.kernel.reshape(-1, last.kernel.shape[-1])
    equations = NormalEquations(kernel.shape[0], kernel.shape[1], bias=layer.bias is not None)
    for z, y, keep in batches:
        for plain in body_layers:
            z = plain(z)
        p = np.asarray(keras.ops.convert_to_numpy(patches(z))).reshape(-1, kernel.shape[0])
        equations.add(p[keep], y)
    bias = layer._numpy(layer.bias) if layer.bias is not None else None
    before = equations.error(kernel, bias)
    weights, new_bias = equations.solve(ridge)
    after = equations.error(weights, new_bias)
    if not after < before:
        return before, after, False
    variable = getattr(layer, factor_name)
    value = layer._numpy(variable).copy()
    value[tuple(slice(0, n) for n in factor.shape)] = weights.reshape(factor.shape)
    variable.assign(value.astype(factor.dtype))
    if new_bias is not None:
        layer.bias.assign(new_bias.astype(bias.dtype))
    return before, after, True


def _plain(step):
    """A function computing one ``interop.Step`` with a plain Keras layer."""
    import keras

    class_name, config, weights = step.layer_spec()
    plain = getattr(keras.layers, class_name)(**config)

    def apply(x):
        if not plain.built:  # the input shape is known at the first call
            plain.build(tuple(x.shape))
            plain.set_weights(weights)
        return plain(x)

    return apply


def _patches(step):
    """A function ``z -> rows`` for the last step: the inputs its kernel multiplies, one row per
    output position, in the kernel's ``(kh, kw, cin)`` order (for a convolution, a convolution with
    an identity kernel of the step's geometry; for a matmul, ``z`` itself)."""
    from keras import ops

    if step.kind == "dense":
        return lambda z: z
    kh, kw, cin, _ = step.kernel.shape
    if (kh, kw) == (1, 1) and tuple(step.strides) == (1, 1):
        return lambda z: z
    identity = np.eye(kh * kw * cin, dtype=np.float32).reshape(kh, kw, cin, kh * kw * cin)
    return lambda z: ops.conv(z, identity, strides=step.strides, padding=step.padding,
                              dilation_rate=step.dilation)

