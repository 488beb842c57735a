"""search: measure each layer's sensitivity, then choose per-layer methods and ranks for a target.

The sensitivity table holds, for every eligible layer alone, every method and a few ranks, the
model's score with that layer compressed (the rest untouched). It is measured with one copy of the
model per (layer, method): the factorized layer is allocated at the largest rank measured and each
smaller rank's optimal factors are written into its leading slices, with the active-rank mask
(``FactorizedLayer.set_active_rank``) cutting the rest, so nothing is rebuilt or re-traced between
ranks. The choice itself is :mod:`tflowrank.selection` (pure NumPy).
"""

import hashlib
import json
import math
import numbers
import sys
import time
import warnings

import numpy as np

from . import ranks

__all__ = ["search"]

DEFAULT_METHODS = ("spatial", "svd", "tucker2", "cp", "output")
_CACHE_FORMAT = 2  # 2: one table of (layer, method) curves for any methods (1: keyed by methods)
_TOLERANCE = 0.03  # a plan lands in [target * (1 - 3%), target]
_CALIBRATION_SAMPLES = 256  # inputs used to fit the "output" method
_LOWEST_FRACTION, _HIGHEST_FRACTION = 0.04, 0.8  # measured share of a layer's MACs
# CP-ALS sweeps per measured rank: far fewer than factorize allows (up to 500), as CP at high
# ranks dominates the search time otherwise; the measured score is then a lower bound of what the
# fully converged factors give.
_CP_SWEEPS = 50
# cost="latency": rounds of measuring the ranks around those a plan chose and choosing again
# among measured ranks only
_LATENCY_REFINEMENTS = 3


def search(model, data, target, cost="macs", methods=DEFAULT_METHODS, candidates=10, eval_fn=None,
           cache=None, *, refit=None, first_applicable=False, multiple_of=1, max_samples=1000,
           batch_size=250, progress=None, latency_cache=None, latency_dtype=None,
           profile_options=None):
    """Choose a method and a rank per layer so that ``model`` keeps ``target`` of its cost.

    Args:
        model: a built Sequential or Functional Keras model; it is not modified.
        data: ``(x, y)`` arrays or a ``tf.data.Dataset`` of ``(x, y)`` (batched or not); at most
            ``max_samples`` samples are used. Scores are top-1 accuracies unless ``eval_fn`` is
            given (then ``data`` may be None, or inputs alone, unless ``"output"`` is in
            ``methods``, which fits on the first 256 inputs).
        target: the fraction in (0, 1] of the original cost the compressed model may keep.
        cost: ``"macs"`` (per sample), ``"params"`` or ``"latency"`` (microseconds per inference
            at batch size 1 on the profiling target; see below).
        methods: the factorization methods to choose from (see ``tflowrank.factorize``).
        candidates: ranks measured per layer and method (from 4% to 80% of the layer's MACs,
            geometrically spaced); the curve is interpolated between them.
        eval_fn: ``eval_fn(model) -> float``, higher is better, instead of accuracy on ``data``.
        cache: a JSON file for the sensitivity table: reused when it was made for the same model
            weights, data and settings (``candidates``, ``max_samples``, the name of ``eval_fn``,
            ``refit``), else measured again and overwritten. It holds one curve per (layer,
            method): a search with other ``methods`` (or ``first_applicable``) measures only the
            curves the table lacks and adds them. Targets, ``cost`` and ``multiple_of`` are not
            part of the key: another target reuses the table.
        refit: score each candidate with its last factor and bias refitted by least squares to
            the layer's responses on the first 256 inputs of ``data`` (what
            ``tflowrank.refit.refit_last_factors`` does after ``factorize``, and ``compress`` by
            default): the table then ranks the chains as they will be used, not as decomposed.
            None: when ``data`` has inputs. True needs them; False scores the factors as
            decomposed (for a plan applied with ``factorize`` alone).
        first_applicable: ``methods`` is an order of preference: each layer is measured with
            the first entry that can factorize it only, instead of every method that can. An
            entry is a name or a tuple of names that compete: ``("spatial", "svd")`` is spatial
            wherever it applies and svd for the 1 x 1 convolutions and Dense layers it cannot
            split; ``("spatial", ("svd", "tucker2", "cp"))`` (``compress``'s default) also lets
            svd, Tucker-2 and CP compete for a Conv1D. Without it, the tuples' names all compete
            with the others.
        multiple_of: every rank in the plan is a multiple of it (or the full rank).
        max_samples, batch_size: the bounded evaluation set, and its batch size.
        progress: a progress line on stderr; None shows it when stderr is a terminal.
        latency_cache: ``cost="latency"``: the JSON file of the latency table (a table of this
            machine and target, reused across models and searches); None: beside ``cache``
            (``<cache stem>.latency.json``) when ``cache`` is given, else kept in memory for the
            life of the process.
        latency_dtype: ``cost="latency"``: how the timed models are exported, ``"int8"`` (the
            default: full integer, as ``export_tflite(quantize="int8")``) or ``"float32"``.
        profile_options: ``cost="latency"``: ``tflowrank.profile`` arguments for the timing
            (``target`` ``"host"`` or ``"android"``, ``threads`` (1), ``runs`` (100),
            ``warmup_runs`` (10), ``benchmark_binary``, ``serial``, ``xnnpack``, ``gpu``,
            ``nnapi``, ``cpu_mask``, ``timeout``).

    With ``cost="latency"`` the whole model is exported and timed once, and so is each candidate
    layer alone (a one-layer model of its input shape) and each replacing chain alone at a few
    ranks: for each method, at most 4 of the ranks whose sensitivity is measured and the largest
    rank that saves MACs (``tflowrank.latency_table``). A first plan, with the latency of the
    other ranks interpolated linearly in MACs between those, only says where to look (runtimes
    step with channel counts, so the interpolation is rough): the ranks around each rank it
    chose (from 0.8 to 1.25 times its MACs) are measured and the plan is chosen again among
    measured ranks only, up to 3 rounds, so every cost in the plan is a measured one. The plan's
    total is the whole model's latency, minus the candidate layers' own, plus their chosen
    chains': it assumes the chains add up as they run alone. Rank steps are coarser in latency
    than in MACs: a small model may land a few percent under the target (with a warning).
    Conversions run in a child process; every measurement is kept in the latency table, so a
    second search of the same layers converts nothing.

    Returns:
        CompressionPlan: ``tflowrank.factorize(model, plan, data=...)`` applies it.
    """
    from ._backend import require_tensorflow
    from .plan import COSTS

    target = _check_target(target)
    if cost not in COSTS:
        raise ValueError(f"`cost` must be one of {', '.join(map(repr, COSTS))}. Received: cost={cost!r}")
    methods = _check_methods(methods)
    candidates = _check_count("candidates", candidates, 2)
    multiple_of = ranks.check_multiple_of(multiple_of)
    max_samples = _check_count("max_samples", max_samples, 1)
    batch_size = _check_count("batch_size", batch_size, 1)
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"`eval_fn` must be a callable model -> float. Received: eval_fn={eval_fn!r}")
    if refit is not None and not isinstance(refit, bool):
        raise TypeError(f"`refit` must be True, False or None. Received: refit={refit!r}")
    if not isinstance(first_applicable, bool):
        raise TypeError("`first_applicable` must be True or False. "
                        f"Received: first_applicable={first_applicable!r}")
    latency_table = _latency_table(cost, cache, latency_cache, latency_dtype, profile_options)
    require_tensorflow()
    from . import graph

    graph.check_model(model)
    check_static_inputs(model)
    x, y = _load_data(data, eval_fn, methods, max_samples, model)
    if refit and x is None:
        raise ValueError("`refit=True` needs inputs in `data` to refit on. Received: data=None")
    refit = x is not None if refit is None else refit
    sites = _sites(model, methods, candidates, first_applicable)
    if not sites:
        raise ValueError(f"Model {model.name!r} has no layer that methods={methods!r} can factorize "
                         "so that it costs less (Conv2D / Conv1D / Dense layers, called once).")
    key = _fingerprint(model, x, y, candidates, max_samples, eval_fn, refit)
    table = _read_cache(cache, key)
    missing = _missing(sites, table)
    if table is None or missing:
        table = _measure(model, missing, x, y, eval_fn, batch_size, progress, refit, table)
        table["fingerprint"] = key
        if cache is not None:
            _write_cache(cache, table)
    latency = None
    if latency_table is not None:
        from .latency_table import layer_latencies

        chains = []
        for site in sites:
            by_class = {}
            for cls, measured in site.methods.values():
                by_class.setdefault(cls, []).extend(measured)  # "svd" and "output": one chain
            chains.append((site.call, by_class))
        show = sys.stderr.isatty() if progress is None else bool(progress)
        latency = layer_latencies(latency_table, model, chains, x, show)
        with warnings.catch_warnings():  # where to look: chains interpolated between a few ranks
            warnings.simplefilter("ignore")
            plan = _plan(model, sites, table, target, cost, multiple_of, latency)
        by_path = {site.path: site for site in sites}
        for round_ in range(_LATENCY_REFINEMENTS):  # measure around the chosen ranks, choose again
            chosen = [(by_path[e.layer].call, by_path[e.layer].methods[e.method][0], e.rank)
                      for e in plan.factorized]
            if not latency.refine(latency_table, chosen, multiple_of, show) and round_:
                break
            plan = _plan(model, sites, table, target, cost, multiple_of, latency.measured())
        return plan
    return _plan(model, sites, table, target, cost, multiple_of)


# -- arguments -------------------------------------------------------------------------------------

def _check_target(target):
    if isinstance(target, bool) or not isinstance(target, numbers.Real) or not 0 < target <= 1:
        raise ValueError("`target` is the fraction of the original cost to keep and must be in "
                         f"(0, 1]. Received: target={target!r}")
    return float(target)


def _check_methods(methods):
    """``methods`` as a tuple of tiers: a name, or a tuple of names that compete (one level)."""
    from .methods import METHOD_NAMES

    expected = (f"`methods` must be a non-empty list of method names from "
                f"{', '.join(map(repr, METHOD_NAMES))} (or of tuples of them). Received: methods={methods!r}")
    if isinstance(methods, str):
        methods = (methods,)
    if (not isinstance(methods, (list, tuple)) or not methods
            or any(not isinstance(entry, (str, list, tuple)) for entry in methods)):
        raise ValueError(expected)
    tiers = _tiers(methods)
    if any(not tier or not all(isinstance(m, str) for m in tier) for tier in tiers):
        raise ValueError(expected)
    unknown = [m for t in tiers for m in t if m not in METHOD_NAMES]
    if unknown:
        raise ValueError(f"Unknown factorization method(s) {', '.join(map(repr, unknown))}: expected "
                         f"names from {', '.join(map(repr, METHOD_NAMES))}. Received: methods={methods!r}")
    checked, seen = [], set()
    for tier in tiers:
        tier = tuple(m for m in dict.fromkeys(tier) if m not in seen)
        seen.update(tier)
        if tier:
            checked.append(tier[0] if len(tier) == 1 else tier)
    return tuple(checked)


def _tiers(methods):
    """``methods`` as a list of tuples of names (a name alone is a tier of one)."""
    return [(entry,) if isinstance(entry, str) else tuple(entry) for entry in methods]


def _names(methods):
    """Every method name in ``methods``, in order."""
    return tuple(m for tier in _tiers(methods) for m in tier)


def _search_tiers(methods, first_applicable):
    """The tiers a layer's methods are taken from, in order: ``methods``' own with
    ``first_applicable``, else one tier of every name (they all compete)."""
    return _tiers(methods) if first_applicable else [_names(methods)]


def _latency_table(cost, cache, latency_cache, latency_dtype, profile_options):
    """The ``LatencyTable`` for ``cost="latency"`` (None otherwise, where its arguments are refused)."""
    from pathlib import Path

    given = {"latency_cache": latency_cache, "latency_dtype": latency_dtype,
             "profile_options": profile_options}
    if cost != "latency":
        for name, value in given.items():
            if value is not None:
                raise ValueError(f"`{name}` applies to cost='latency' only. Received: {name}={value!r} "
                                 f"with cost={cost!r}")
        return None
    from .latency_table import LatencyTable

    if latency_cache is None and cache is not None:
        from ._io import output_path

        latency_cache = Path(output_path(cache, "cache")).with_suffix(".latency.json")
    return LatencyTable(latency_cache, "int8" if latency_dtype is None else latency_dtype,
                        profile_options)


def check_static_inputs(model):
    """Raise a clear error if an input of ``model`` has an unknown dimension besides the batch:
    a layer's MACs and latency depend on the size of its input, so a plan needs them fixed."""
    for tensor in model.inputs:
        shape = tuple(tensor.shape)
        if any(d is None for d in shape[1:]):
            raise ValueError(
                f"`model` ({model.name!r}) takes inputs of unknown size {shape}: the cost of its "
                "layers depends on it, so a plan needs it fixed. Give the model the input size it "
                "will run at on the device: inputs = keras.Input((height, width, channels)); "
                "keras.Model(inputs, model(inputs)).")


def _check_count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def _load_data(data, eval_fn, methods, max_samples, model):
    """``(x, y)`` as NumPy arrays of at most ``max_samples`` samples (``y`` None with eval_fn)."""
    import tensorflow as tf

    if data is None:
        if eval_fn is None:
            raise ValueError("`data` is needed to score the model (or pass eval_fn=). Received: data=None")
        if "output" in _names(methods):
            raise ValueError("method 'output' fits layers to their responses on inputs: pass data=. "
                             "Received: data=None")
        return None, None
    expected = tuple(model.inputs[0].shape[1:])
    if isinstance(data, tf.data.Dataset):
        xs, ys, count = [], [], 0
        for element in data:
            parts = tuple(element) if isinstance(element, (tuple, list)) else (element,)
            bx = np.asarray(parts[0])
            by = np.asarray(parts[1]) if len(parts) > 1 else None
            if bx.ndim == len(expected):  # unbatched elements
                bx, by = bx[None], None if by is None else by[None]
            xs.append(bx)
            ys.append(by)
            count += len(bx)
            if count >= max_samples:
                break
        if not xs:
            raise ValueError("`data` is empty: the dataset yielded no element. "
                             "Received: an empty tf.data.Dataset")
        x = np.concatenate(xs)
        y = None if any(b is None for b in ys) else np.concatenate(ys)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = np.asarray(data[0]), np.asarray(data[1])
    else:
        x, y = np.asarray(data), None
    if len(x) == 0:
        raise ValueError(f"`data` is empty: it holds no sample. Received: x with shape {x.shape}")
    if x.ndim != len(expected) + 1 or any(e is not None and e != a for e, a in zip(expected, x.shape[1:])):
        raise ValueError(f"The inputs of `data` do not match the model input {(None, *expected)}. "
                         f"Received: x with shape {x.shape}")
    if y is None and eval_fn is None:
        raise ValueError("`data` must be (x, y) to measure accuracy (or pass eval_fn=). "
                         "Received: inputs without labels")
    if y is not None and len(y) != len(x):
        raise ValueError(f"`data` holds {len(x)} inputs but {len(y)} labels. Received: x with shape "
                         f"{x.shape}, y with shape {y.shape}")
    x = x[:max_samples].astype(np.float32)
    return x, None if y is None else y[:max_samples]


# -- what can be compressed, and at which ranks it is measured --------------------------------------

class _Site:
    """One eligible layer call: per method, the replacing class and the ranks measured."""

    def __init__(self, call):
        self.call = call
        self.methods = {}

    @property
    def path(self):
        return self.call.path


def _sites(model, methods, candidates, first_applicable=False):
    import keras

    from . import graph
    from .costs import layer_macs
    from .methods import factor_class, method_table

    calls = graph.layer_calls(model)
    times = {}
    for call in calls:
        times[id(call.layer)] = times.get(id(call.layer), 0) + 1
    sites, seen, left = [], set(), {}
    for call in calls:
        layer = call.layer
        if id(layer) in seen or times[id(layer)] > 1:
            if times[id(layer)] > 1 and isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D,
                                                           keras.layers.Dense)):
                left[layer.name] = f"called {times[id(layer)]} times (shared weights)"
            continue
        seen.add(id(layer))
        if isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)):
            continue
        original = layer_macs(layer, call.input_shapes, call.output_shapes)
        if not original:
            continue
        site = _Site(call)
        # first_applicable: the first tier with a method for the layer; else all compete
        for tier in _search_tiers(methods, first_applicable):
            for method in tier:
                cls = factor_class(method_table(method), layer)
                if cls is None:
                    continue
                reason = cls.supports(layer)
                if reason is not None:
                    left.setdefault(call.path, reason)
                    continue
                if method == "output" and call.path != layer.name:
                    continue  # the output method works on top-level layers only
                if getattr(cls, "needs_spatial_extent", False) and math.prod(layer.kernel_size) == 1:
                    continue
                measured = _measured_ranks(call, cls, original, candidates)
                if measured:
                    site.methods[method] = (cls, measured)
            if site.methods:
                break
        if site.methods:
            sites.append(site)
            left.pop(call.path, None)  # another method takes it
    if left:
        warnings.warn("tflowrank.search: left whole, as no method can factorize them: "
                      + "; ".join(f"{path} ({reason})" for path, reason in left.items()), stacklevel=3)
    return sites


def _measured_ranks(call, cls, original, candidates):
    """The ranks measured: the largest costing at most each of ``candidates`` MAC fractions."""
    import bisect

    options = cls.rank_candidates(call.layer, call.input_shape[-1])
    macs = [cls.macs_for(call.layer, r, call.input_shape) for r in options]
    picked = []
    for fraction in np.geomspace(_LOWEST_FRACTION, _HIGHEST_FRACTION, candidates):
        index = max(bisect.bisect_right(macs, fraction * original) - 1, 0)
        if macs[index] < original and options[index] not in picked:
            picked.append(options[index])
    return picked


# -- measuring --------------------------------------------------------------------------------------

def _missing(sites, table):
    """``[(site, [method, ...])]``: the curves of ``sites`` that ``table`` (None: none) lacks, or
    holds at other ranks."""
    stored = {} if table is None else table["scores"]
    missing = []
    for site in sites:
        methods = [method for method, (_, measured) in site.methods.items()
                   if [r for r, _ in stored.get(site.path, {}).get(method, [])] != _stored_ranks(measured)]
        if methods:
            missing.append((site, methods))
    return missing


def _stored_ranks(measured):
    return [list(r) if isinstance(r, tuple) else r for r in measured]


def _measure(model, missing, x, y, eval_fn, batch_size, progress, refit, table=None):
    """``table`` (None: a new one) with the curves of ``missing`` (``_missing``) measured and added."""
    from .evaluate import one_logit

    scorer = eval_fn if eval_fn is not None else _accuracy_scorer(x, y, batch_size, one_logit(model))
    total = sum(len(site.methods[m][1]) for site, methods in missing for m in methods)
    bar = _Progress(total, progress)
    if table is None:
        table = {"format": _CACHE_FORMAT, "baseline": float(scorer(model)), "scores": {}}
    scores = table["scores"]
    try:
        for site, methods in missing:
            targets = _refit_targets(model, site.call, x) if refit else None  # every method's
            for method in methods:
                cls, measured = site.methods[method]
                bar.label = f"{site.path} {method}"
                curve = _layer_curve(model, site.call, method, cls, measured, scorer, x, bar,
                                     targets)
                scores.setdefault(site.path, {})[method] = [
                    [r, s] for r, s in zip(_stored_ranks(measured), curve)]
    finally:
        bar.close()
    return table


def _refit_targets(model, call, x):
    """The layer's inputs and responses for the refit of its candidates (None for a layer inside a
    nested model: ``refit_last_factors`` leaves those as decomposed, so the search does too)."""
    from .refit import layer_targets

    if call.path != call.layer.name:
        return None
    return layer_targets(model, call.layer.name, x[:_CALIBRATION_SAMPLES])


def _layer_curve(model, call, method, cls, measured, scorer, x, bar, targets=None):
    """Scores of ``model`` with ``call``'s layer alone factorized at each rank of ``measured``
    (each rank's last factor refitted to ``targets``, ``refit.layer_targets``, when given)."""
    from . import graph
    from .refit import fit_last_factor

    layer = call.layer
    kernel = cls.source_kernel(layer)
    bias = cls._numpy(layer.bias) if layer.use_bias else None
    allocated = (tuple(max(r[i] for r in measured) for i in range(len(measured[0])))
                 if isinstance(measured[0], tuple) else max(measured))
    if method == "output":
        from .decompositions import output_factors

        moments = _moments(model, layer, x[:_CALIBRATION_SAMPLES])

        def factors(rank):
            fitted = output_factors(kernel, bias, moments, rank)
            return (fitted.first, fitted.second), fitted.bias

        values, new_bias = factors(allocated)
        new = cls.from_factors(layer, allocated, values, new_bias, None)
    else:
        def factors(rank):
            if method == "cp":  # a bounded CP-ALS: see _CP_SWEEPS
                sweeps = min(cls.sweeps(kernel.shape, rank), _CP_SWEEPS)
                return cls._decompose(kernel, rank, n_iter_max=sweeps)[0], bias
            return cls._decompose(kernel, rank)[0], bias

        values, _ = factors(allocated)
        new = cls.from_factors(layer, allocated, values, bias, None)
    copy = graph.rewrite(model, {id(layer): new})
    scores = []
    for rank in measured:
        values, new_bias = factors(rank)
        for (name, _), value in zip(new.factors, values):
            variable = getattr(new, name)
            padded = np.zeros(variable.shape, dtype=variable.dtype)
            padded[tuple(slice(0, n) for n in value.shape)] = value
            variable.assign(padded)
        if new_bias is not None:
            new.bias.assign(new_bias)
        new.set_active_rank(rank)
        if targets is not None:
            fit_last_factor(new, call.input_shape, targets)
        scores.append(float(scorer(copy)))
        bar.step()
    return scores


def _moments(model, layer, x):
    """Second moments of ``layer``'s responses (its own inputs: the layer alone is approximated)."""
    from . import graph
    from .decompositions import ResponseMoments
    from .output_approximation import _MAX_ROWS_PER_BATCH

    rng = np.random.default_rng(0)
    moments = ResponseMoments(int(layer.kernel.shape[-1]))
    probe = graph.input_probe(model, layer.name)
    for start in range(0, len(x), 64):
        rows = graph.linear_responses(layer, probe(x[start:start + 64]))
        rows = rows.reshape(-1, rows.shape[-1])
        if len(rows) > _MAX_ROWS_PER_BATCH:
            rows = rows[np.sort(rng.choice(len(rows), _MAX_ROWS_PER_BATCH, replace=False))]
        moments.add(rows, rows)
    return moments


def _accuracy_scorer(x, y, batch_size, logit=False):
    """``model -> top-1 accuracy on (x, y)``; one traced forward pass per model. ``logit``: how
    one output is read (``evaluate.predicted_classes``), the input model's way."""
    import tensorflow as tf

    from .evaluate import class_labels, predicted_classes

    labels = class_labels(y)
    batches = [x[i:i + batch_size] for i in range(0, len(x), batch_size)]
    state = {}

    def score(model):
        if state.get("model") is not model:
            spec = tf.TensorSpec((None, *x.shape[1:]), tf.float32)
            state["model"] = model
            state["forward"] = tf.function(lambda b: model(b, training=False), input_signature=[spec])
        outputs = np.concatenate([np.asarray(state["forward"](b)) for b in batches])
        if outputs.ndim != 2:
            raise ValueError("Accuracy needs a model output of shape (N, classes); pass eval_fn= for "
                             f"other models. Received: an output of shape {outputs.shape}")
        return float(np.mean(predicted_classes(outputs, logit) == labels))

    return score


class _Progress:
    """``search: 12/180 conv2 tucker2 00:14`` on stderr, rewritten in place."""

    def __init__(self, total, enabled):
        self.total, self.done, self.label = total, 0, ""
        self.enabled = sys.stderr.isatty() if enabled is None else bool(enabled)
        self.started = time.monotonic()

    def step(self):
        self.done += 1
        if self.enabled:
            seconds = int(time.monotonic() - self.started)
            width = 24
            filled = width * self.done // max(self.total, 1)
            sys.stderr.write(f"\rsearch [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                             f"{seconds // 60:02d}:{seconds % 60:02d} {self.label[:40]:<40}")
            sys.stderr.flush()

    def close(self):
        if self.enabled and self.done:
            sys.stderr.write("\n")
            sys.stderr.flush()


# -- the cache --------------------------------------------------------------------------------------

def _fingerprint(model, x, y, candidates, max_samples, eval_fn, refit=False):
    digest = hashlib.sha256()
    digest.update(model.to_json().encode())
    for weight in model.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    for array in (x, y):
        if array is not None:
            digest.update(str(array.shape).encode() + str(array.dtype).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    name = None if eval_fn is None else f"{getattr(eval_fn, '__module__', '')}." \
                                        f"{getattr(eval_fn, '__qualname__', type(eval_fn).__name__)}"
    settings = {"format": _CACHE_FORMAT, "candidates": candidates,
                "max_samples": max_samples, "eval_fn": name, "refit": refit,
                "fractions": [_LOWEST_FRACTION, _HIGHEST_FRACTION], "cp_sweeps": _CP_SWEEPS}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()


def _read_cache(cache, key):
    from pathlib import Path

    if cache is None or not Path(cache).is_file():
        return None
    try:
        table = json.loads(Path(cache).read_text())
    except (OSError, ValueError) as error:
        warnings.warn(f"tflowrank.search: cache {str(cache)!r} is unreadable ({error}); measuring "
                      "again and overwriting it.", stacklevel=3)
        return None
    if not isinstance(table, dict) or table.get("fingerprint") != key:
        warnings.warn(f"tflowrank.search: cache {str(cache)!r} was made for another model, data or "
                      "settings; measuring again and overwriting it.", stacklevel=3)
        return None
    return table


def _write_cache(cache, table):
    from ._io import output_path, write_bytes_atomic

    write_bytes_atomic(output_path(cache, "cache"), json.dumps(table).encode())


# -- choosing ---------------------------------------------------------------------------------------

def _layer_cost(kind, call, cls=None, rank=None, latency=None):
    from .costs import layer_macs

    layer = call.layer
    if kind == "latency":
        return latency.original(call.path) if cls is None else latency.chain(call, cls, rank)
    if kind == "macs":
        if cls is None:
            return layer_macs(layer, call.input_shapes, call.output_shapes)
        return cls.macs_for(layer, rank, call.input_shape)
    if cls is None:
        return layer.count_params()
    return cls.params_for(layer, rank, call.input_shape[-1])


def _left_whole(model, sites, kind, share):
    """Words naming the costliest layers no method factorizes, when they hold most of the cost
    (a model of depthwise-separable blocks, say, where only the pointwise layers can be)."""
    from .costs import cost

    if kind == "latency" or share < 0.5:
        return ""

    def amount(row):
        return (row.macs or 0) if kind == "macs" else row.params

    candidates = {site.path for site in sites}
    rows = cost(model).layers
    total = sum(amount(r) for r in rows) or 1
    whole = sorted((r for r in rows if r.name not in candidates and amount(r)), key=amount, reverse=True)
    named = ", ".join(f"{r.name} ({r.class_name}, {amount(r) / total:.2f})" for r in whole[:4])
    return (f"; {share:.2f} of it is in layers no method factorizes: {named}"
            f"{', ...' if len(whole) > 4 else ''} (the methods factorize Conv2D, Conv1D and Dense "
            "layers, each called once; depthwise, separable and grouped convolutions stay "
            "whole)")


def _plan(model, sites, table, target, kind, multiple_of, latency=None):
    """The plan for ``target``; with ``kind="latency"`` the scores are read against MACs and the
    costs come from ``latency`` (``LayerLatencies``)."""
    from .costs import cost
    from .plan import CompressionPlan, PlanEntry
    from .selection import Option, interpolate, monotone_fit, select

    if kind == "latency":
        total = latency.total
    else:
        total = cost(model).macs if kind == "macs" else model.count_params()
    axis = "macs" if kind == "latency" else kind  # what a score curve is read against
    baseline = float(table["baseline"])
    layers = []
    for site in sites:
        call = site.call
        original = _layer_cost(kind, call, latency=latency)
        options = []
        for method, (cls, _) in site.methods.items():
            points = table["scores"].get(site.path, {}).get(method)
            if not points:
                continue
            measured = [(cls.normalize_rank(tuple(r) if isinstance(r, list) else r), s) for r, s in points]
            fit_costs, fitted = monotone_fit([_layer_cost(axis, call, cls, r) for r, _ in measured],
                                             [s for _, s in measured])
            full = cls.full_rank_of(call.layer, call.input_shape[-1])
            ranks_ = list(dict.fromkeys(ranks.round_rank(r, multiple_of, full)
                                        for r in cls.rank_candidates(call.layer, call.input_shape[-1])))
            axis_costs = [_layer_cost(axis, call, cls, r) for r in ranks_]
            predicted = interpolate(fit_costs, fitted, axis_costs, _layer_cost(axis, call), baseline)
            costs_ = axis_costs if axis == kind else [
                _layer_cost(kind, call, cls, r, latency) for r in ranks_]
            for rank, cost_, score in zip(ranks_, costs_, predicted):
                if not math.isnan(score) and cost_ < original:
                    options.append(Option(method, rank, float(cost_), max(baseline - float(score), 0.0)))
        layers.append((original, options))
    fixed = total - sum(original for original, _ in layers)
    try:
        picks, reached = select(layers, target * total, fixed)
    except ValueError:
        lowest = fixed + sum(min([o.cost for o in opts], default=orig) for orig, opts in layers)
        raise ValueError(
            f"`target`={target!r} cannot be reached with cost={kind!r}: with every candidate layer "
            f"at its smallest measured rank the model keeps {lowest / total:.3f} of its {kind}"
            f"{_left_whole(model, sites, kind, fixed / total)}. Ask for more, or allow more "
            "methods.") from None
    if reached < target * total * (1 - _TOLERANCE):
        warnings.warn(f"tflowrank.search: target={target!r} reached {reached / total:.3f} "
                      f"(rank steps of multiple_of={multiple_of} are too coarse to land within "
                      f"{_TOLERANCE:.0%}).", stacklevel=3)
    entries, drop = [], 0.0
    for site, (original, _), pick in zip(sites, layers, picks):
        if pick is None:
            entries.append(PlanEntry(site.path, None, None, original, original, baseline))
        else:
            drop += pick.drop
            cost_after = int(pick.cost) if kind != "latency" else pick.cost
            entries.append(PlanEntry(site.path, pick.method, pick.rank, original, cost_after,
                                     baseline - pick.drop))
    return CompressionPlan(cost=kind, target=target, total_before=total,
                           total_after=int(reached) if kind != "latency" else reached,
                           baseline_score=baseline, predicted_score=baseline - drop,
                           entries=tuple(entries), multiple_of=multiple_of)
