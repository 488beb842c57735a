"""The data-driven ``"output"`` method: approximate layer responses, layer by layer (private glue).

The math is :mod:`tflowrank.decompositions.responses`; here the responses are collected. Layers
are processed in execution order; for each, the inputs it sees in the ORIGINAL model give the
target responses and the inputs it sees in the model as approximated so far give the responses to
fit from, so each layer corrects the errors of those before it. Responses are taken before the
activation (the convolution plus its bias) and accumulated as second moments, batch by batch.
"""

import numpy as np

__all__ = ["approximate_outputs"]

# response rows used per layer: enough for the cout x cout moments, bounded in time
_MAX_ROWS_PER_BATCH = 4096


def approximate_outputs(model, plan, data, batch_size=64, seed=0):
    """Return a copy of ``model`` with each layer of ``plan`` replaced by its output approximation.

    ``plan``: a list of ``(layer_name, choose_rank)`` in execution order, where
    ``choose_rank(moments)`` returns the rank to use given the layer's ``ResponseMoments`` (None
    leaves the layer as it is).
    ``data``: calibration inputs, an array ``(N, *input_shape[1:])``.
    """
    from . import graph
    from .decompositions import ResponseMoments, output_factors
    from .methods import factor_class, method_table

    rng = np.random.default_rng(seed)
    current = graph.rewrite(model, {})
    for name, choose_rank in plan:
        source = model.get_layer(name)
        cls = factor_class(method_table("output"), source)  # SVDConv2D or SVDConv1D
        kernel = cls.source_kernel(source)
        bias = cls._numpy(source.bias) if source.use_bias else None
        moments = ResponseMoments(kernel.shape[-1])
        original_inputs = graph.input_probe(model, name)
        approximated_inputs = graph.input_probe(current, name)
        for start in range(0, len(data), batch_size):
            batch = data[start : start + batch_size]
            y = graph.linear_responses(source, original_inputs(batch))
            y_hat = graph.linear_responses(source, approximated_inputs(batch))
            rows = y.reshape(-1, y.shape[-1])
            keep = slice(None)
            if len(rows) > _MAX_ROWS_PER_BATCH:
                keep = np.sort(rng.choice(len(rows), _MAX_ROWS_PER_BATCH, replace=False))
            moments.add(rows[keep], y_hat.reshape(-1, y.shape[-1])[keep])
        rank = choose_rank(moments)
        if rank is None:  # the rank asked for saves nothing: leave the layer
            continue
        factors = output_factors(kernel, bias, moments, rank)
        new = cls.from_factors(source, rank, (factors.first, factors.second), factors.bias,
                                     factors.relative_error)
        current = graph.rewrite(current, {id(current.get_layer(name)): new})
    return current

