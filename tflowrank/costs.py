"""Multiply-accumulates and parameters of a Keras model, per layer and in total.

MACs are counted per single input sample for the layers that do the arithmetic of a CNN:
convolutions (Conv1D/2D/3D, transposed, depthwise, separable), Dense and every tflowrank layer.
Element-wise layers, normalisation and pooling are not counted (they are folded into the
convolutions or cost little next to them on device); their parameters are.
"""

import math
from dataclasses import asdict, dataclass

from . import _shapes

__all__ = ["LayerCost", "ModelCost", "cost"]


@dataclass(frozen=True)
class LayerCost:
    """Cost of one layer call. ``macs`` is None when a shape is not statically known.

    For tflowrank layers ``rank``, ``full_rank``, ``dense_macs`` (MACs of the layer it replaced)
    and ``reconstruction_error`` (relative Frobenius error of its initialisation) are filled in.
    """

    name: str
    class_name: str
    output_shape: tuple
    macs: int | None
    params: int
    rank: int | None = None
    full_rank: int | None = None
    dense_macs: int | None = None
    reconstruction_error: float | None = None
    counted: bool = True


@dataclass(frozen=True)
class ModelCost:
    """Per-layer and total cost of a model; ``str()`` gives a table."""

    name: str
    layers: tuple
    macs: int
    params: int

    def macs_of(self, *class_names):
        """Total MACs of the layers of the given classes (e.g. ``"Conv2D", "SpatialConv2D"``)."""
        return sum(c.macs or 0 for c in self.layers if c.class_name in class_names)

    def to_dict(self):
        return {"name": self.name, "macs": self.macs, "params": self.params,
                "layers": [asdict(c) for c in self.layers]}

    def __str__(self):
        return _table(self)


def cost(model):
    """Return the ``ModelCost`` of a built Sequential or Functional Keras model."""
    from ._backend import require_tensorflow

    require_tensorflow()
    from . import graph

    graph.check_model(model)
    from .layers import FactorizedLayer

    rows, adjust, seen = [], 0, set()
    for call in graph.layer_calls(model):
        layer = graph.unwrapped(call.layer)
        macs = layer_macs(layer, call.input_shapes, call.output_shapes)
        params = layer.count_params() if layer.built else 0
        if isinstance(layer, FactorizedLayer) and layer.built:
            # the parameters of the chain at its active rank (what `finalize` keeps): not the
            # rank bookkeeping, nor factor slices masked off by a RankScheduler
            counted = layer.params_for(layer, layer.active_rank, call.input_shape[-1])
            if id(layer) not in seen:  # model.count_params() counts every weight of the layer
                adjust += counted - sum(math.prod(w.shape) for w in layer.weights)
                seen.add(id(layer))
            params = counted
        if macs is None and params == 0 and not _counted(layer):
            continue
        rows.append(_row(call, layer, macs, params))
    total = sum(r.macs for r in rows if r.macs is not None)
    return ModelCost(name=model.name, layers=tuple(rows), macs=total,
                     params=model.count_params() + adjust)


def _conv_bases():
    from keras.src.layers.convolutional import (
        base_conv,
        base_conv_transpose,
        base_depthwise_conv,
        base_separable_conv,
    )

    return (base_conv.BaseConv, base_conv_transpose.BaseConvTranspose,
            base_depthwise_conv.BaseDepthwiseConv, base_separable_conv.BaseSeparableConv)


def _counted(layer):
    import keras

    from .layers import FactorizedLayer

    return isinstance(layer, (*_conv_bases(), keras.layers.Dense, FactorizedLayer))


def _row(call, layer, macs, params):
    from .layers import FactorizedLayer

    out = call.output_shape if len(call.output_shapes) == 1 else call.output_shapes[0]
    extra = {}
    if isinstance(layer, FactorizedLayer):
        extra = {
            "rank": layer.active_rank,
            "full_rank": layer.full_rank,
            "dense_macs": layer.dense_macs(call.input_shape),
            "reconstruction_error": layer.reconstruction_error,
        }
    return LayerCost(name=call.path, class_name=type(layer).__name__, output_shape=tuple(out[1:]),
                     macs=macs, params=params, counted=_counted(layer), **extra)


def layer_macs(layer, input_shapes, output_shapes):
    """MACs per sample of one call of ``layer``; None when not counted or not statically known.

    ``output_shapes`` may be None: the output shape is then computed from the layer.
    """
    import keras

    from .layers import FactorizedLayer

    conv, transpose, depthwise, separable = _conv_bases()
    shape = input_shapes[0]
    if isinstance(layer, FactorizedLayer):
        return layer.macs(shape)
    if isinstance(layer, keras.layers.Dense):
        return _shapes.dense_macs(shape, layer.units)
    if not isinstance(layer, (conv, transpose, depthwise, separable)):
        return None
    out = output_shapes[0] if output_shapes else tuple(layer.compute_output_shape(shape))
    first = layer.data_format == "channels_first"
    cin = shape[1] if first else shape[-1]
    in_positions = shape[2:] if first else shape[1:-1]
    out_positions = out[2:] if first else out[1:-1]
    if cin is None or None in out_positions or None in in_positions:
        return None
    kernel = math.prod(layer.kernel_size)
    positions = math.prod(out_positions)
    if isinstance(layer, depthwise):
        return positions * kernel * cin * layer.depth_multiplier
    if isinstance(layer, separable):
        channels = cin * layer.depth_multiplier
        return positions * (kernel * channels + channels * layer.filters)
    if isinstance(layer, transpose):  # every input position scatters a full kernel
        return math.prod(in_positions) * kernel * cin * layer.filters
    return positions * kernel * (cin // layer.groups) * layer.filters


def _fmt_int(value, counted=True):
    if not counted:
        return "-"
    return "?" if value is None else f"{value:,}"


def _rank_text(rank):
    return "x".join(map(str, rank)) if isinstance(rank, tuple) else str(rank)


def _table(model_cost):
    header = ("layer", "type", "output", "MACs", "share", "params", "rank", "MACs kept", "error")
    rows = []
    for c in model_cost.layers:
        share = f"{100 * c.macs / model_cost.macs:.1f}%" if c.macs and model_cost.macs else "-"
        rank = f"{_rank_text(c.rank)}/{_rank_text(c.full_rank)}" if c.rank is not None else "-"
        kept = f"{100 * c.macs / c.dense_macs:.1f}%" if c.rank is not None and c.dense_macs else "-"
        error = f"{c.reconstruction_error:.4f}" if c.reconstruction_error is not None else "-"
        output = "x".join("?" if d is None else str(d) for d in c.output_shape)
        rows.append((c.name, c.class_name, output, _fmt_int(c.macs, c.counted), share, _fmt_int(c.params),
                     rank, kept, error))
    rows.append(("total", "", "", _fmt_int(model_cost.macs), "100.0%" if model_cost.macs else "-",
                 _fmt_int(model_cost.params), "", "", ""))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    left = {0, 1}

    def line(cells):
        return "  ".join(str(v).ljust(w) if i in left else str(v).rjust(w)
                         for i, (v, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "-" * len(line(header))
    title = (f"Model {model_cost.name!r}: {model_cost.macs:,} MACs per sample, "
             f"{model_cost.params:,} parameters")
    if any(c.counted and c.macs is None for c in model_cost.layers):
        title += " (? = shape not statically known, not in the total)"
    return "\n".join([title, line(header), rule, *map(line, rows[:-1]), rule, line(rows[-1])])
