"""compress: the one call from a trained Keras model to a profiled int8 TFLite file and a report.

search (per-layer sensitivity, a method and a rank per layer for the budget) -> factorize ->
last factors refitted to the model's responses -> batch-norm statistics re-estimated on training
inputs -> fine-tune, its last ``qat_epochs`` quantization-aware -> int8 export -> Keras and
TFLite accuracy on the validation data -> host profile -> a report folder. Each stage is a public
tflowrank call; this module only chains them and records what they measured. The report itself
(Markdown, JSON, PNG plots) is written by :mod:`tflowrank.compression_report` from plain data.
"""

import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .evaluate import one_logit, output_activation

__all__ = ["compress", "CompressionResult", "default_feature_distill", "default_learning_rate",
           "default_methods"]

_BN_BATCHES = 50  # batches of training inputs that re-estimate batch-norm statistics
_FRONTIER_TARGETS = (0.9, 0.7, 0.5, 0.4, 0.33, 0.25, 0.2, 0.15, 0.125, 0.1)
# compress's default, an order of preference (search(first_applicable=True)): spatial wherever it
# applies; svd, tucker2 and cp competing for the layers it cannot split. For 2-D models only svd
# is left there (tucker2 and cp skip 1 x 1 convolutions, and Dense layers); a Conv1D (k > 1)
# gets the three. Spatial alone for the k x k Conv2D: the sensitivity table is measured before
# fine-tuning, and what scores best there is not what fine-tunes best. On the Fashion CNN
# (bench/auto.py, docs/benchmarks.md), with the table scored as decomposed, letting spatial, svd,
# tucker2 and output compete ended 0.21 points below spatial alone after the same fine-tuning
# (CP alone is the lowest method); with the refitted table the mixed search picks spatial for
# most layers and ends level or below (-0.69 against -0.68 at 3x at cbb3e8e, -0.56 against -0.44
# at fb6c49b) after a search three to four times as long (plain CP-ALS then; with it ridged, CP
# plans at 5x ended 0.28 above spatial over four seeds: see DEEP_CUT_METHODS below). For
# Conv1D layers the three compete:
# on the 1-D CNN of bench/conv1d.py, with CP-ALS ridged, the plans with CP and Tucker-2 chains
# ended 0.19 points above svd alone at 3x and 1.07 above at 5x (means over three seeds; files
# 6-28% larger and 8-20% slower at the same MACs); output was never chosen there, and it
# needs the calibration inputs. methods= makes the named methods compete for every layer.
DEFAULT_METHODS = ("spatial", ("svd", "tucker2", "cp"))
# compress's default where the target keeps a quarter of the cost or less: spatial, svd, tucker2
# and cp all compete for every layer. Deep cuts leave spatial chains of very low rank, where a CP
# or Tucker-2 chain keeps more rank for the same MACs; with CP-ALS ridged, on the Fashion CNN
# (bench/seeds.py --methods spatial,svd,tucker2,cp, docs/benchmarks.md; AVX2 machine) those
# plans ended 0.28 points above spatial alone keeping a fifth of the MACs (four seeds) and 0.12
# above keeping an eighth (three seeds), ahead with every seed, with int8 files 11-27% larger and
# about as fast on that host at the same MACs (on the AVX-512 machine CP chains ran slower than
# spatial ones; cost="latency" times the chains themselves). Not above a quarter: keeping a
# third, CP's larger files break the 10x-smaller target of bench/auto.py's 3x row.
DEEP_CUT_METHODS = (("spatial", "svd", "tucker2", "cp"),)
# compress's default quantization-aware share of the fine-tuning, in epochs: the last tenth of
# the last epoch. On the Fashion CNN (docs/benchmarks.md) a whole quantization-aware epoch of two
# ended level with post-training int8 of two float epochs: fake quantization at a high learning
# rate cost the float model 0.25-0.37 points. A short quantization-aware tail, at the cosine
# decay's smallest learning rates, keeps the float epochs' accuracy and learns the ranges: +0.12
# points over the whole epoch and +0.05 over post-training int8 at 3x (same plan and batches,
# bench/auto.py at fb6c49b; +0.37 and -0.05 in the partial run at 77bf914).
QAT_EPOCHS = 0.1
# compress's learning rate when none is given (Adam, the peak of one cosine decay): the deeper the
# cut, the further the fine-tuning has to move the weights. On the Fashion CNN over 3 seeds
# (bench/seeds.py, docs/benchmarks.md) 2e-3 was best keeping a third of the MACs (4e-3 cost the
# search's plans 0.20 points there), 4e-3 was level at a fifth (+0.03) and 0.31 points better at
# an eighth (the 8x target met only there); 8e-3 was no better (two seeds, uniform plans). With
# the CP plans of DEEP_CUT_METHODS at a fifth, 4e-3 stayed ahead of 2e-3 (+0.07, four seeds).
_DEEP_CUT = 0.25  # a model keeping this share of its MACs or less fine-tunes at the higher rate


def default_methods(target):
    """The methods ``compress`` searches when given none, an order of preference for
    ``search(first_applicable=True)``: ``DEEP_CUT_METHODS`` (spatial, svd, tucker2 and cp all
    competing) when ``target`` keeps a quarter of the cost or less, ``DEFAULT_METHODS`` (spatial
    wherever it applies) above."""
    return DEEP_CUT_METHODS if target <= _DEEP_CUT else DEFAULT_METHODS


def _has_tiers(methods):
    """Whether checked ``methods`` (a name, or a list of names and tuples of names) is an order
    of preference, holding a tuple of names, rather than names."""
    return any(isinstance(entry, (list, tuple)) for entry in methods)


def default_learning_rate(macs_kept):
    """The fine-tuning learning rate ``compress`` uses when given none: 2e-3 when the factorized
    model keeps more than a quarter of its MACs (``macs_kept``, a fraction), 4e-3 below."""
    return 2e-3 if macs_kept > _DEEP_CUT else 4e-3


# compress's feature-hint weight when none is given. On the Fashion CNN over 5 seeds
# (bench/seeds.py --feature-distill 0.3, docs/benchmarks.md) the hints lifted the uniform split
# by 0.08 points keeping a third of the MACs and by 0.14 keeping a fifth, and cost it 0.05
# keeping an eighth (the search's plans, 3 seeds: +0.07, +0.14, -0.02). The threshold sits
# between the fifth and the eighth measured. With the CP and Tucker-2 plans of DEEP_CUT_METHODS
# they gained 0.27 at a fifth (two seeds) and were level at an eighth (-0.02 over six seeds,
# +0.16 to -0.32).
_HINTED_CUT = 1 / 6  # a model keeping more than this share of its MACs fine-tunes with hints
_HINT_WEIGHT = 0.3


def default_feature_distill(macs_kept):
    """The feature-hint weight ``compress`` uses when given none: 0.3 when the factorized model
    keeps more than a sixth of its MACs (``macs_kept``, a fraction), 0 (no hints) otherwise."""
    return _HINT_WEIGHT if macs_kept > _HINTED_CUT else 0.0


@dataclass(frozen=True)
class CompressionResult:
    """What ``compress`` made and measured.

    ``model``: the compressed Keras model (the quantization-aware one when ``qat``);
    ``export``: the int8 ``ExportResult``; accuracies are top-1 on the validation data
    (``baseline_*`` for the input model, its int8 file post-training quantized);
    ``profile`` / ``baseline_profile``: host ``ProfileResult`` of the two int8 files;
    ``report``: the report folder; ``seconds``: wall time per stage.
    """

    plan: object
    model: object
    export: object
    baseline_accuracy: float
    keras_accuracy: float
    tflite_accuracy: float
    baseline_tflite_accuracy: float
    profile: object
    baseline_profile: object
    macs: int
    baseline_macs: int
    params: int
    baseline_params: int
    baseline_float32_bytes: int
    baseline_int8_bytes: int
    report: Path
    seconds: dict = field(default_factory=dict)

    @property
    def int8_bytes(self):
        return self.export.size_bytes

    @property
    def speedup(self):
        """Median host latency of the baseline's int8 file over the compressed one's."""
        return _median_us(self.baseline_profile) / _median_us(self.profile)

    def __str__(self):
        from .compression_report import summary_table

        return summary_table(self.to_dict())

    def to_dict(self):
        return {
            "plan": self.plan.to_dict(), "export": str(self.export.path),
            "baseline_accuracy": self.baseline_accuracy, "keras_accuracy": self.keras_accuracy,
            "tflite_accuracy": self.tflite_accuracy,
            "baseline_tflite_accuracy": self.baseline_tflite_accuracy,
            "macs": self.macs, "baseline_macs": self.baseline_macs, "params": self.params,
            "baseline_params": self.baseline_params, "int8_bytes": self.int8_bytes,
            "baseline_int8_bytes": self.baseline_int8_bytes,
            "baseline_float32_bytes": self.baseline_float32_bytes,
            "int8_median_us": _median_us(self.profile),
            "baseline_int8_median_us": _median_us(self.baseline_profile),
            "report": str(self.report), "seconds": dict(self.seconds),
        }


def compress(model, train_data, val_data, target, cost="macs", finetune_epochs=2, qat=True,
             export="model_int8.tflite", *, qat_epochs=QAT_EPOCHS, qat_float_fallback=False,
             output_dir="tflowrank-compress",
             methods=None,
             candidates=10, multiple_of=1, cache=None, search_data=None, search_samples=1000,
             calibration_samples=500, refit=True, batch_size=128, learning_rate=None, loss=None,
             distill=False, feature_distill=None, profile_runs=50, profile_repeats=5,
             profile_options=None, plan=None, seed=0, log=print, progress=None):
    """Compress ``model`` to ``target`` of its cost, fine-tune it, export int8 TFLite, report.

    Args:
        model: a trained, built Keras classifier: one float input of a fixed size, one output
            (logits, softmax probabilities, one sigmoid probability or one logit: see
            ``evaluate.one_logit``). It is not modified.
        train_data: ``(x, y)`` NumPy arrays, or a ``tf.data.Dataset`` of ``(x, y)`` (batched or
            not; finite): fine-tuning, batch-norm re-estimation, int8 calibration and the
            ``"output"`` method's calibration inputs. A dataset is read in passes and never held
            whole: the search and calibration samples are the first of one pass, the fine-tuning
            reads one pass per epoch in the dataset's own order and batches, as ``model.fit``
            does (see ``tflowrank.compress_data``).
        val_data: ``(x, y)`` NumPy arrays or a ``tf.data.Dataset`` of ``(x, y)``: every accuracy
            in the result and the report.
        target: the fraction in (0, 1] of the original ``cost`` to keep.
        cost: ``"macs"``, ``"params"`` or ``"latency"`` (see ``tflowrank.search``).
        finetune_epochs: epochs of fine-tuning after factorization (0: none), the
            quantization-aware steps included.
        qat: train the last ``qat_epochs`` of the fine-tuning with int8 fake quantization
            (``tflowrank.quantize_aware``) and export with its ranges; False: post-training
            int8 calibrated on ``calibration_samples`` training inputs.
        qat_epochs: how much of the fine-tuning, at its end, is quantization-aware, in epochs
            (a number in ``(0, finetune_epochs]``; at least one step); the rest is float. See
            ``QAT_EPOCHS`` for the default.
        qat_float_fallback: layers ``quantize_aware`` does not cover (a ``Normalization``, a
            grouped convolution, a swish activation, ...; see docs/qat.md): False (the
            default) refuses the model before any work, naming them; True, or a list of layer
            names, keeps them in float during the quantization-aware steps
            (``quantize_aware(float_fallback=...)``; the int8 export then needs TFLite int8
            kernels for them).
        export: the int8 .tflite file; a relative path is inside ``output_dir``.
        output_dir: the report folder (created if missing): ``report.md``, ``report.json``,
            ``plan.json``, ``sensitivity.json``, ``compressed.keras``, the baseline's int8 and
            float32 files and the PNG plots (``sensitivity.png``, ``accuracy_vs_macs.png``,
            ``ranks.png``; skipped with a note when matplotlib is not installed).
        methods, candidates, multiple_of: as ``tflowrank.search``; methods None: by the depth
            of the cut (``default_methods(target)``, ``search(first_applicable=True)``): when
            ``target`` keeps more than a quarter of the cost, ``"spatial"`` wherever it applies,
            and ``"svd"``, ``"tucker2"`` and ``"cp"`` competing elsewhere (that is svd for 1 x 1
            convolutions and Dense layers, all three for a Conv1D; ``DEFAULT_METHODS``); a
            quarter or less, all four compete for every layer (``DEEP_CUT_METHODS``). methods
            given as names: every one of them competes for every layer; given with a tuple of
            names among them (``("spatial", ("svd", "cp"))``): an order of preference, as the
            default (``search(first_applicable=True)``).
        cache: the sensitivity table's JSON (default ``output_dir/sensitivity.json``): a second
            ``compress`` with another target reuses it.
        search_data, search_samples: the sensitivities are scored on the first
            ``search_samples`` samples of ``search_data`` (``(x, y)`` or a dataset); default:
            ``search_samples`` training samples drawn with ``seed`` (from a dataset: the first of
            one pass; the validation data stays unseen by every choice).
        refit: after factorizing, refit each factorized layer's last factor by least squares to
            the input model's responses on the ``calibration_samples`` inputs, layer by layer
            (``tflowrank.refit.refit_last_factors``: each layer corrects the errors of those
            before it); on the Fashion-MNIST CNN it was worth +0.23 points after fine-tuning
            (the uniform 3x split, docs/benchmarks.md).
        batch_size, learning_rate: fine-tuning (Adam; one cosine decay of ``learning_rate`` to 0
            over all the epochs, the quantization-aware one included); a dataset's own batches
            are used as they come, ``batch_size`` batches only unbatched elements.
            ``learning_rate`` None: by the depth of the cut (``default_learning_rate``): 2e-3 when
            the factorized model keeps more than a quarter of the input model's MACs, 4e-3 below.
        loss: the training loss, a callable ``loss(y_true, y_pred)`` or a name Keras knows;
            None: the model's compiled loss, else sparse categorical cross-entropy (from logits
            unless the last layer applies a softmax). Tried on two training samples before the
            search: labels that do not fit it are a ``ValueError``.
        distill: fine-tune on the input model's outputs too (knowledge distillation; off by
            default: on the Fashion-MNIST CNN it did not help at 2 epochs, see
            docs/benchmarks.md; the loss
            is ``0.1 x`` the label loss plus ``0.9 x T^2 x`` the KL divergence between the
            input model's and the compressed model's outputs softened by ``T = 4``); the input
            model's outputs are computed once, on ``train_data``. Needs integer labels or
            one-hot rows and class scores out (logits or probabilities); ``loss`` is then unused.
        feature_distill: a weight >= 0; above 0, the float fine-tuning's loss gets this weight
            times the mean, over the factorized layers, of the squared difference between each
            one's output and the input model's layer of the same name, divided by the mean
            square of the latter (``tflowrank.feature_distillation``; the input model runs beside
            the compressed one on every batch; the quantization-aware steps keep the plain loss).
            0: off. None (the default): by the depth of the cut (``default_feature_distill``):
            0.3 when the factorized model keeps more than a sixth of the input model's MACs, 0
            below. On the Fashion-MNIST CNN, 0.3 gained about 0.1 point at 3x and 5x fewer MACs
            and nothing at 8x (5 seeds, docs/benchmarks.md). The report records the weight used:
            0 without float fine-tuning steps or without a layer to match (nested models).
        profile_runs, profile_repeats, profile_options: timed runs, rounds (the baseline's and
            the compressed int8 files timed alternately, in process each round in a fresh child
            process; the latency is the median over rounds of each round's median: one process
            can be 15% off on a desktop CPU), and other ``tflowrank.profile`` arguments
            (``target``, ``threads``, ``benchmark_binary``, ...; default the host, 1 thread).
        plan: a ``CompressionPlan`` to apply instead of searching (an earlier search's, or one
            made by hand); ``target`` must then be the plan's and the sensitivity plots are
            drawn only if ``cache`` holds a table.
        seed: seeds the search subset and the fine-tuning.
        log: a callable taking one line per stage (None: silent).
        progress: the search's progress bar (None: when stderr is a terminal).

    Returns:
        CompressionResult.
    """
    from ._backend import is_dataset, require_tensorflow
    from .compress_data import as_data, keras_accuracy
    from .compress_data import tflite_accuracy as tflite_accuracy_on
    from .plan import COSTS, CompressionPlan
    from .rank_search import _check_methods, _check_target

    target = _check_target(target)
    if cost not in COSTS:
        raise ValueError(f"`cost` must be one of {', '.join(map(repr, COSTS))}. Received: cost={cost!r}")
    finetune_epochs = _check_int("finetune_epochs", finetune_epochs, 0)
    if not isinstance(qat, bool):
        raise TypeError(f"`qat` must be True or False. Received: qat={qat!r}")
    from .qat import check_float_fallback

    qat_float_fallback = check_float_fallback(qat_float_fallback, "qat_float_fallback")
    for name, value in (("distill", distill), ("refit", refit)):
        if not isinstance(value, bool):
            raise TypeError(f"`{name}` must be True or False. Received: {name}={value!r}")
    if feature_distill is not None and (isinstance(feature_distill, bool)
                                        or not isinstance(feature_distill, numbers.Real)
                                        or not feature_distill >= 0):
        raise ValueError("`feature_distill` must be a number >= 0 (0: off) or None. "
                         f"Received: feature_distill={feature_distill!r}")
    if qat and finetune_epochs < 1:
        raise ValueError("qat=True trains the end of the fine-tuning quantization-aware: it needs "
                         f"finetune_epochs >= 1 (or qat=False). Received: finetune_epochs={finetune_epochs}")
    if (isinstance(qat_epochs, bool) or not isinstance(qat_epochs, numbers.Real)
            or (qat and not 0 < qat_epochs <= finetune_epochs)):
        raise ValueError(f"`qat_epochs` must be a number in (0, finetune_epochs={finetune_epochs}]. "
                         f"Received: qat_epochs={qat_epochs!r}")
    for name, value in (("search_samples", search_samples), ("calibration_samples", calibration_samples),
                        ("batch_size", batch_size), ("profile_runs", profile_runs),
                        ("profile_repeats", profile_repeats)):
        _check_int(name, value, 1)
    if learning_rate is not None and (isinstance(learning_rate, bool)
                                      or not isinstance(learning_rate, numbers.Real)
                                      or not learning_rate > 0):
        raise ValueError("`learning_rate` must be a number > 0 or None. "
                         f"Received: learning_rate={learning_rate!r}")
    if profile_options is not None and not isinstance(profile_options, dict):
        raise TypeError("`profile_options` must be a dict of tflowrank.profile arguments. "
                        f"Received: profile_options={profile_options!r}")
    if plan is not None and not isinstance(plan, CompressionPlan):
        raise TypeError(f"`plan` must be a CompressionPlan or None. Received: plan={plan!r}")
    if methods is not None:
        _check_methods(methods)  # before any work: search would name a bad one minutes later
    log = log or (lambda line: None)
    first_applicable = methods is None or _has_tiers(methods)
    methods = default_methods(target) if methods is None else methods
    keras, _ = require_tensorflow()
    from . import graph

    graph.check_model(model)
    _check_classifier(model)
    if distill and model.outputs[0].shape[-1] == 1:
        raise ValueError(f"`distill=True` matches the input model's class scores, and `model` "
                         f"({model.name!r}) has one output: there is no distribution over classes "
                         "to match. Use feature_distill= (the layers' outputs) instead. "
                         f"Received: distill={distill!r}")
    if qat:
        _check_quantize_aware(model, qat_float_fallback)
    train = as_data("train_data", train_data, model, batch_size)
    val = as_data("val_data", val_data, model, batch_size)
    loss = _loss(model, loss, keras)
    fit_loss = _rank_matched(loss, keras)  # as model.compile wraps a loss function
    rng = np.random.default_rng(seed)
    if train.stream:  # one pass's first samples serve the label check, search and calibration
        train_head = train.head(max(2, calibration_samples,
                                    search_samples if search_data is None else 0))
        if finetune_epochs:
            log(f"train_data: {train.batches_per_pass()} batches per epoch")
        _warn_if_one_class(train_head[1])
    if finetune_epochs and not distill:  # before any work: the labels must fit the loss
        _check_labels(fit_loss, model, *(train_head if train.stream else train.head(2)))
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"`output_dir` is a file, not a folder. Received: output_dir={str(out)!r}")
    export_path = Path(export)
    if export_path.suffix != ".tflite":
        raise ValueError(f"`export` must be a .tflite file name. Received: export={str(export)!r}")
    if not export_path.is_absolute():
        export_path = out / export_path
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "sensitivity.json" if cache is None else Path(cache)

    from .costs import cost as model_cost
    from .export import export_tflite
    from .factorization import factorize
    from .profiling import profile
    from .rank_search import search

    seconds, started = {}, time.perf_counter()
    if search_data is None:
        search_data = (tuple(a[:search_samples] for a in train_head) if train.stream
                       else train.subset(search_samples, rng))
    elif is_dataset(search_data):  # the samples search would read, kept for the frontier
        search_data = as_data("search_data", search_data, model, batch_size).head(search_samples)
    calibration = (train_head[0][:calibration_samples] if train.stream
                   else train.subset(calibration_samples, rng)[0])
    stage = time.perf_counter()
    base_int8 = _baseline_int8(model, out, calibration)  # before any work: it must convert
    export_seconds = time.perf_counter() - stage
    baseline_cost = model_cost(model)
    logit = one_logit(model)  # how one output is read, the input model's way throughout
    baseline_accuracy = keras_accuracy(model, val, logit)
    log(f"baseline: {baseline_cost.macs:,} MACs, {baseline_cost.params:,} params, "
        f"top-1 {baseline_accuracy:.4f} on {val.samples} validation samples")

    stage = time.perf_counter()
    search_args = dict(cost=cost, methods=methods, candidates=candidates, cache=cache,
                       refit=refit, first_applicable=first_applicable, multiple_of=multiple_of,
                       max_samples=search_samples, progress=progress)
    if cost == "latency" and profile_options:
        search_args["profile_options"] = profile_options
    searched = plan is None
    if searched:
        plan = search(model, search_data, target, **search_args)
    elif plan.target != target:
        raise ValueError(f"`target`={target!r} differs from the target of the `plan` given "
                         f"({plan.target!r}).")
    seconds["search"] = time.perf_counter() - stage
    log(str(plan))
    # plans at other targets: read from the cached table; in latency each would measure chains
    frontier = (_frontier(model, search_data, search_args, target, plan)
                if searched and cost != "latency" else [])

    stage = time.perf_counter()
    keras.utils.set_random_seed(seed)
    needs_data = "output" in plan.methods
    compressed = factorize(model, plan, data=calibration if needs_data else None)
    refitted = ()
    if refit:
        from .refit import refit_last_factors

        compressed, refitted = refit_last_factors(model, compressed, calibration, seed=seed)
        for row in refitted:
            log(f"refit {row.name}: response error {row.error_before:.3f} -> {row.error_after:.3f}"
                + ("" if row.applied else f" (not applied: {row.reason})"))
    _reestimate_batch_norm(compressed, train.input_batches(_BN_BATCHES, batch_size, rng))
    seconds["factorize"] = time.perf_counter() - stage
    after_factorize = keras_accuracy(compressed, val, logit)
    compressed_cost = model_cost(compressed)
    log(f"factorized: {compressed_cost.macs:,} MACs ({compressed_cost.macs / baseline_cost.macs:.3f}), "
        f"{compressed_cost.params:,} params; top-1 before fine-tuning {after_factorize:.4f}")
    kept = compressed_cost.macs / baseline_cost.macs
    if learning_rate is None:
        learning_rate = default_learning_rate(kept)
    if feature_distill is None:
        feature_distill = default_feature_distill(kept)

    stage = time.perf_counter()
    fine, train_loss = train, fit_loss
    if distill and finetune_epochs:  # the input model's outputs packed with the labels
        from .distillation import distillation_loss, packed_targets

        probabilities = output_activation(model) == "softmax"
        fine = train.relabel(lambda x, y: packed_targets(
            y, np.asarray(model.predict(x, batch_size=512, verbose=0)), probabilities))
        train_loss = distillation_loss(probabilities)
    per_epoch, batch = fine.steps(batch_size, finetune_epochs, rng) if finetune_epochs else (1, None)
    total_steps = per_epoch * finetune_epochs
    qat_steps = min(total_steps, max(1, round(qat_epochs * per_epoch))) if qat else 0
    float_steps = total_steps - qat_steps
    schedule = (learning_rate, total_steps, per_epoch)
    history = {}
    hinted = ()  # the layers matched to the input model's in the float steps
    if float_steps and feature_distill:
        from .feature_distillation import matched_layers

        hinted = matched_layers(compressed, model)
        if not hinted:
            log("feature_distill: no factorized layer called once at the top level of both "
                "models; fine-tuning without it")
    if not hinted:  # the report records the weight used
        feature_distill = 0.0
    if float_steps:
        trained = compressed
        if hinted:
            from .feature_distillation import FeatureDistiller

            trained = FeatureDistiller(compressed, model, hinted, train_loss, feature_distill)
        log(f"fine-tune: {float_steps / per_epoch:.3g} epoch(s) of {per_epoch} batches, "
            f"peak learning rate {learning_rate:g}"
            + (" (distilled from the input model)" if distill else "")
            + (f" (matching the input model's {', '.join(hinted)} x {feature_distill:g})"
               if hinted else ""))
        history["float"] = _fit(trained, batch, 0, float_steps, schedule, train_loss, keras,
                                None if hinted else _accuracy_metric(keras, logit))
    final = compressed
    if qat:
        from .qat import quantize_aware

        log(f"quantization-aware training: {qat_steps / per_epoch:.3g} epoch(s)")
        if float_steps:  # quantize_aware folds the moving statistics: make them the weights' own
            _reestimate_batch_norm(compressed, train.input_batches(_BN_BATCHES, batch_size, rng))
        final = quantize_aware(compressed, float_fallback=qat_float_fallback)
        history["qat"] = _fit(final, batch, float_steps, qat_steps, schedule, train_loss, keras,
                              _accuracy_metric(keras, logit))
    if finetune_epochs:  # leave the model compiled with a plain loss (a serializable one)
        final.compile(optimizer="adam", loss=loss, metrics=[_accuracy_metric(keras, logit)])
    seconds["fine-tune"] = time.perf_counter() - stage
    final_accuracy = keras_accuracy(final, val, logit)

    stage = time.perf_counter()
    from ._io import atomic_path

    with atomic_path(out / "compressed.keras") as tmp:
        final.save(tmp)
    exported = export_tflite(final, export_path, quantize="int8",
                             representative_data=None if qat else calibration)
    base_float = export_tflite(model, out / "baseline_float32.tflite", quantize=None)
    seconds["export"] = time.perf_counter() - stage + export_seconds
    log(f"export: {exported}")

    stage = time.perf_counter()
    tflite_accuracy = tflite_accuracy_on(exported.path, val)
    baseline_tflite_accuracy = tflite_accuracy_on(base_int8.path, val)
    seconds["evaluate"] = time.perf_counter() - stage
    stage = time.perf_counter()
    options = {"threads": 1, "warmup_runs": 5, **(profile_options or {})}
    options["runs"] = profile_runs
    if options.get("target") != "micro":  # TFLite Micro measures no latency
        options["repeats"] = profile_repeats
    base_profile, new_profile = profile([base_int8.path, exported.path], **options)
    seconds["profile"] = time.perf_counter() - stage
    seconds["total"] = time.perf_counter() - started

    result = CompressionResult(
        plan=plan, model=final, export=exported, baseline_accuracy=baseline_accuracy,
        keras_accuracy=final_accuracy, tflite_accuracy=tflite_accuracy,
        baseline_tflite_accuracy=baseline_tflite_accuracy, profile=new_profile,
        baseline_profile=base_profile, macs=int(compressed_cost.macs),
        baseline_macs=int(baseline_cost.macs), params=int(compressed_cost.params),
        baseline_params=int(baseline_cost.params), baseline_float32_bytes=base_float.size_bytes,
        baseline_int8_bytes=base_int8.size_bytes, report=out, seconds=seconds)
    from .compression_report import write_report

    details = {
        "settings": {"target": target, "cost": cost, "finetune_epochs": finetune_epochs, "qat": qat,
                     "qat_float_fallback": qat_float_fallback if qat else None,
                     "qat_epochs": qat_epochs if qat else None,
                     "distill": distill, "feature_distill": feature_distill, "refit": refit,
                     "methods": [methods] if isinstance(methods, str) else list(methods),
                     "first_applicable": first_applicable,
                     "candidates": candidates,
                     "multiple_of": multiple_of, "search_samples": min(search_samples, len(search_data[0])),
                     "train_data": "tf.data.Dataset" if train.stream else "arrays",
                     "train_samples": train.samples, "val_samples": val.samples,
                     "calibration_samples": len(calibration), "batch_size": batch_size,
                     "learning_rate": learning_rate, "seed": seed,
                     "profile": {k: str(v) for k, v in options.items()}},
        "model": model.name,
        "after_factorize_accuracy": after_factorize,
        "refit": [{"layer": row.name, "error_before": _finite(row.error_before),
                   "error_after": _finite(row.error_after), "applied": row.applied,
                   "reason": row.reason} for row in refitted],
        "history": history,
        "sensitivity": (_sensitivity(model, cache, plan, methods, first_applicable)
                        if cache.is_file() else None),
        "frontier": frontier,
        "layers": [_layer_row(entry) for entry in plan.entries],
        "profiles": {"baseline": base_profile.to_dict(), "compressed": new_profile.to_dict()},
        "files": {"int8": str(exported.path), "keras": str(out / "compressed.keras"),
                  "baseline_int8": str(base_int8.path), "baseline_float32": str(base_float.path),
                  "plan": str(out / "plan.json"), "sensitivity": str(cache)},
        "ops": dict(exported.ops),
    }
    plan.save(out / "plan.json")
    notes = write_report(out, {**result.to_dict(), **details})
    for note in notes:
        log(note)
    log(f"report: {out / 'report.md'}")
    return result


# -- arguments -------------------------------------------------------------------------------------

def _baseline_int8(model, out, calibration):
    """The input model's post-training int8 file; a model that does not convert to a fully int8
    file is refused here, before the search (its compressed form would not convert either)."""
    from .errors import ConversionError
    from .export import export_tflite

    try:
        return export_tflite(model, out / "baseline_int8.tflite", quantize="int8",
                             representative_data=calibration)
    except ConversionError as error:
        raise ConversionError(
            f"The input model {model.name!r} does not convert to a fully int8 TFLite file, so its "
            "compressed form would not either (checked before the search): the converter left "
            f"{', '.join(error.ops) or 'some ops'} in float, without an int8 kernel. Replace the "
            "layers that make them (e.g. LayerNormalization makes NEG) with ones that have int8 "
            "kernels.", error.ops) from error


def _check_quantize_aware(model, float_fallback):
    """Refuse, before any work, a model whose layers the quantization-aware steps cannot cover
    (the factorized model has the same ones: factorizing keeps every other layer)."""
    from .qat import unsupported_layers

    unsupported = unsupported_layers(model, float_fallback=float_fallback)
    if unsupported:
        raise ValueError(
            "qat=True trains the end of the fine-tuning with int8 fake quantization, which does not "
            "cover these layers: " + "; ".join(unsupported.values()) + ". Pass "
            "qat_float_fallback=True (or a list of their names) to keep them in float there, or "
            "qat=False for post-training int8 calibration instead (docs/qat.md). "
            f"Received: model={model.name!r}")


def _check_classifier(model):
    """Raise a clear error unless ``model`` has one float input of a fixed size and one output:
    what the search scores, the fine-tuning trains and the int8 file runs."""
    from .export import check_float_inputs
    from .rank_search import check_static_inputs

    for what, tensors in (("inputs", model.inputs), ("outputs", model.outputs)):
        if len(tensors) != 1:
            raise ValueError(
                f"`model` ({model.name!r}) has {len(tensors)} {what} "
                f"({', '.join(getattr(t, 'name', '?') for t in tensors)}): compress takes a classifier "
                f"with one input and one output. For one head of several: keras.Model(model.inputs, "
                "model.outputs[i]).")
    check_float_inputs(model, "compress")
    check_static_inputs(model)


def _finite(value):
    return None if value is None or math.isnan(value) else float(value)


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


# -- stages ----------------------------------------------------------------------------------------

def _loss(model, loss, keras):
    """The fine-tuning loss as a callable ``loss(y_true, y_pred)``: ``loss``, else the model's
    compiled loss, else sparse categorical cross-entropy on its outputs. A name
    (``"categorical_crossentropy"``, as ``model.compile`` takes it) is resolved, since the
    feature hints call the loss themselves."""
    if loss is not None:
        return _callable_loss("loss", loss, keras)
    compiled = getattr(model, "loss", None)
    if compiled is not None:
        return _callable_loss("model.loss", compiled, keras)
    if model.outputs[0].shape[-1] == 1:  # one output: 0 / 1 labels
        return keras.losses.BinaryCrossentropy(from_logits=one_logit(model))
    return keras.losses.SparseCategoricalCrossentropy(from_logits=output_activation(model) != "softmax")


def _check_labels(loss, model, x, y):
    """Raise a clear error if ``loss`` cannot compare labels ``y`` with ``model``'s outputs (two
    samples tried), instead of failing at the first fine-tuning step after the search."""
    outputs = model(x[:2], training=False)
    try:
        reason = None if np.all(np.isfinite(np.asarray(loss(y[:2], outputs)))) else "it is not finite"
    except Exception as error:  # noqa: BLE001 - Keras and TensorFlow raise several types here
        reason = f"{type(error).__name__}: {str(error).splitlines()[0]}"
    if reason:
        name = getattr(loss, "name", None) or getattr(loss, "__name__", type(loss).__name__)
        raise ValueError(
            f"The fine-tuning loss {name!r} does not fit the labels of `train_data` (shape "
            f"{_batch_shape(np.shape(y))}, dtype {np.asarray(y).dtype}) and the model's outputs "
            f"(shape {_batch_shape(outputs.shape)}): {reason}. Pass `loss=` "
            "for these labels ('sparse_categorical_crossentropy' for class indices, "
            "'categorical_crossentropy' for one-hot rows, 'binary_crossentropy' for 0 / 1 labels of "
            "one sigmoid output; the model's compiled loss is the default).")


def _warn_if_one_class(labels):
    """Warn when the first samples of a dataset all have one label: the search and calibration
    samples are those, and a dataset sorted by class makes them all of one class."""
    import warnings

    from .evaluate import class_labels

    classes = class_labels(labels)
    if len(classes) > 1 and len(np.unique(classes)) == 1:
        warnings.warn(f"The first {len(classes)} samples of `train_data` all have the label "
                      f"{classes[0].item()!r}: the search and the int8 calibration use them. Shuffle "
                      "the dataset (e.g. `.shuffle(10_000)` before `.batch()`) so that they "
                      "represent every class.",
                      stacklevel=3)


def _batch_shape(shape):
    """``(None, ...)``: a shape with its batch dimension left open."""
    return "(" + ", ".join(["None", *(str(d) for d in tuple(shape)[1:])]) + (",)" if len(shape) == 1 else ")")


def _rank_matched(loss, keras):
    """``loss`` as a ``keras.losses.Loss``: a plain function ``f(y_true, y_pred)`` is wrapped so
    that labels one axis short of one-column outputs (``(N,)`` against ``(N, 1)``, a sigmoid
    head's) or one axis longer get that axis, as ``model.compile`` does for a loss function
    (the feature hints and the label check call the loss themselves)."""
    if isinstance(loss, keras.losses.Loss):
        return loss
    ops = keras.ops

    class RankMatched(keras.losses.Loss):
        def call(self, y_true, y_pred):
            if len(y_true.shape) == len(y_pred.shape) - 1 and y_pred.shape[-1] == 1:
                y_true = ops.expand_dims(y_true, -1)
            elif len(y_true.shape) == len(y_pred.shape) + 1 and y_true.shape[-1] == 1:
                y_true = ops.squeeze(y_true, -1)
            return loss(y_true, y_pred)

    return RankMatched(name=getattr(loss, "__name__", type(loss).__name__))


def _callable_loss(name, loss, keras):
    if isinstance(loss, (list, tuple)) and len(loss) == 1:  # compile(loss=[...]) for one output
        loss = loss[0]
    resolved = loss
    if isinstance(loss, (str, dict)):
        try:
            resolved = keras.losses.get(loss)
        except ValueError:
            resolved = None
    if not callable(resolved):
        raise ValueError(f"`{name}` must be a Keras loss for the model's one output: a callable "
                         "loss(y_true, y_pred) or a name keras.losses.get knows. "
                         f"Received: {name}={loss!r}")
    return resolved


def _accuracy_metric(keras, logit):
    """Keras's "accuracy", except for one logit out: class 1 above 0, not above 0.5."""
    return keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0) if logit else "accuracy"


def _fit(model, batch, start, count, schedule, loss, keras, metric="accuracy"):
    """Train ``model`` on the fine-tuning's steps ``start`` to ``start + count`` (``batch(i)``:
    step ``i``'s ``(x, y)``), the same steps of one cosine decay of the learning rate over the
    whole fine-tuning (``schedule``: learning rate, total steps, steps per epoch), so the
    quantization-aware steps (a new model and optimizer) continue the float steps' schedule
    instead of restarting it. The history has one value per stretch of the steps within one
    epoch."""
    learning_rate, total, per_epoch = schedule
    distilled = getattr(loss, "__name__", "") == "distillation"  # packed targets: no accuracy
    model.compile(optimizer=keras.optimizers.Adam(_shifted_cosine(keras, learning_rate, total, start)),
                  loss=loss, metrics=[metric] if metric is not None and not distilled else [])

    class Steps(keras.utils.PyDataset):
        def __init__(self, first, length):
            super().__init__()
            self.first, self.length = first, length

        def __len__(self):
            return self.length

        def __getitem__(self, i):
            return batch(self.first + i)

    history = {}
    step, end = start, start + count
    while step < end:  # cut at the epochs' ends
        stop = min(end, step // per_epoch * per_epoch + per_epoch)
        run = model.fit(Steps(step, stop - step), epochs=1, verbose=0, shuffle=False)
        for key, values in run.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        step = stop
    return history


def _shifted_cosine(keras, learning_rate, total_steps, offset):
    """``learning_rate x (1 + cos(pi x (offset + step) / total_steps)) / 2``: a cosine decay to 0
    entered ``offset`` steps in."""

    class ShiftedCosine(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            ops = keras.ops
            progress = ops.minimum((ops.cast(step, "float32") + offset) / total_steps, 1.0)
            return learning_rate * 0.5 * (1.0 + ops.cos(math.pi * progress))

        def get_config(self):
            return {"learning_rate": learning_rate, "total_steps": total_steps, "offset": offset}

    return ShiftedCosine()


def _reestimate_batch_norm(model, batches):
    """Replace every BatchNormalization's moving statistics by their average over ``batches``
    (an iterable of training inputs, read only if the model has one) seen through the factorized
    model (a factorized layer's outputs differ from the original's, and the statistics after it
    were the original's). The forward passes run in training mode, as a fine-tuning step would,
    without any gradient step."""
    import keras

    from .graph import layer_calls

    norms = list({id(call.layer): call.layer for call in layer_calls(model)
                  if isinstance(call.layer, keras.layers.BatchNormalization)}.values())
    if not norms:
        return
    saved = [layer.momentum for layer in norms]
    try:
        for step, x in enumerate(batches):
            for layer in norms:  # a running average: batch i weighs 1/(i+1)
                layer.momentum = step / (step + 1)
            model(x, training=True)
    finally:
        for layer, momentum in zip(norms, saved):
            layer.momentum = momentum


# -- report data -----------------------------------------------------------------------------------

def _frontier(model, data, search_args, target, plan):
    """Plans at a sweep of targets from the cached table: predicted score against cost."""
    import warnings

    from .rank_search import search

    points = []
    for fraction in sorted(set(_FRONTIER_TARGETS) | {target}, reverse=True):
        if fraction == target:
            other = plan
        else:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    other = search(model, data, fraction, **{**search_args, "progress": False})
            except ValueError:
                continue  # below what the measured ranks reach
        points.append({"target": fraction, "fraction": other.fraction,
                       "predicted_score": other.predicted_score,
                       "macs_fraction": _plan_macs_fraction(model, other)})
    return points


def _plan_macs_fraction(model, plan):
    """The share of the model's MACs a plan keeps (whatever the plan's own cost unit)."""
    from . import graph
    from .costs import cost, layer_macs
    from .methods import factor_class, method_table

    if plan.cost == "macs":
        return plan.fraction
    total = cost(model).macs
    calls = {call.path: call for call in graph.layer_calls(model)}
    saved = 0
    for entry in plan.factorized:
        call = calls[entry.layer]
        cls = factor_class(method_table(entry.method), call.layer)
        before = layer_macs(call.layer, call.input_shapes, call.output_shapes)
        saved += before - cls.macs_for(call.layer, entry.rank, call.input_shape)
    return (total - saved) / total if total else 1.0


def _sensitivity(model, cache, plan, methods, first_applicable):
    """Per layer and method: the measured scores against the share of the layer's MACs kept, for
    the methods this search chose from (the table may hold other searches' curves too)."""
    import json

    from . import graph
    from .costs import layer_macs
    from .methods import factor_class, method_table
    from .rank_search import _search_tiers

    table = json.loads(Path(cache).read_text())
    calls = {call.path: call for call in graph.layer_calls(model)}
    if not isinstance(table, dict) or not set(table.get("scores", {})) <= set(calls):
        return None  # a table made for another model
    chosen = {e.layer: e for e in plan.factorized}
    tiers = _search_tiers(methods, first_applicable)
    curves = []
    for path, by_method in table["scores"].items():
        # this search's methods for the layer: the first tier the table has curves of (search
        # has just measured them), or every name when they all compete
        tier = next((t for t in tiers if any(m in by_method for m in t)), ())
        by_method = {m: points for m, points in by_method.items() if m in tier}
        call = calls[path]
        original = layer_macs(call.layer, call.input_shapes, call.output_shapes)
        for method, points in by_method.items():
            cls = factor_class(method_table(method), call.layer)
            rows = []
            for rank, score in points:
                rank = cls.normalize_rank(tuple(rank) if isinstance(rank, list) else rank)
                rows.append([cls.macs_for(call.layer, rank, call.input_shape) / original, score,
                             list(rank) if isinstance(rank, tuple) else rank])
            pick = chosen.get(path)
            curves.append({"layer": path, "method": method, "points": sorted(rows),
                           "chosen": pick is not None and pick.method == method})
    return {"baseline": table["baseline"], "curves": curves}


def _layer_row(entry):
    rank = list(entry.rank) if isinstance(entry.rank, tuple) else entry.rank
    return {"layer": entry.layer, "method": entry.method, "rank": rank,
            "cost_before": entry.cost_before, "cost_after": entry.cost_after,
            "predicted_score": entry.predicted_score}


def _median_us(result):
    value = result.inference_median_us
    return value if value is not None else result.inference_avg_us
