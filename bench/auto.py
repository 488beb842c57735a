"""Automatic compression (``tflowrank.compress``) against plain baselines on the Fashion-MNIST CNN.

    python bench/auto.py            # full data: budgets 3x, 5x, 8x fewer MACs
    python bench/auto.py --quick    # smoke test: 4,096 training / 1,000 test images, 3x, 1 epoch
    python bench/auto.py --latency 0.5    # also compress to half the host int8 latency
    python bench/auto.py --learning-rate 4e-3    # every compress row at another learning rate

The starting point is the trained CNN shipped with tflowrank (92.5% top-1, full data). Every row
runs in a fresh spawned process with the same seed and the same pipeline (``compress``:
batch-norm re-estimation, ``--epochs`` epochs of fine-tuning whose last tenth of an epoch is
quantization-aware (``qat_epochs=0.1``), int8 export, top-1 on the 10,000 test images, host
int8 latency), so rows differ only in what is factorized:

- ``tflowrank``: ``compress`` with its default search (at 3x spatial wherever it applies, svd
  for the layers it cannot split; at 5x and 8x, a quarter of the MACs or less, spatial, svd,
  tucker2 and cp competing for every layer: ``compression.default_methods``; each candidate
  scored with its last factor refitted; the sensitivity table is measured on 1,000 training
  images and kept, so later budgets measure only the curves it lacks: cache);
- ``tflowrank, table as decomposed`` (3x only): the same, its sensitivity table scoring the
  factors as decomposed (``search(refit=False)``), then the same pipeline (refit included);
- ``search: spatial, svd, tucker2, output`` (3x only, not with ``--quick``): every one of those
  methods competing for every layer (the default before spatial-first);
- ``uniform spatial``: spatial SVD with the same share of MACs kept in conv2-conv4 (the layers
  with >= 5% of the MACs), reaching the same budget: the plain baseline;
- ``tflowrank, post-training int8``, ``tflowrank, quantization-aware last epoch`` and ``uniform
  spatial, distilled`` (3x only): the same with ``qat=False``, with ``qat_epochs=1`` (the default
  before 0.1) and with ``distill=True``: what the defaults are chosen from;
- ``search: <method>`` (3x only): the search restricted to one method (data-free ``svd`` and
  data-driven ``output`` make the same op chain);
- ``PTQ only``: the baseline, post-training int8 (no factorization);
- ``uniform spatial, no refit`` (3x only): the plain baseline, its factors as decomposed
  (``refit=False``: no least-squares refit of the last factors to the model's responses);
- ``tfmot pruning`` (3x only, needs the ``tfmot`` extra): magnitude pruning to the parameter
  count of the ``tflowrank`` row, the same epochs, int8 (``bench/_pruning.py``);
- ``latency F tflowrank`` (with ``--latency F``): ``compress(cost="latency")`` to F of the
  baseline's host int8 latency (its latency table measured on this host).

The table has Keras and int8 top-1, the int8 gap to the float32 baseline, MACs, parameters,
the int8 file (and how many times smaller than the float32 baseline's), host int8 latency and
how many times faster than the baseline's int8 file, and the search time. Latency: each row
times its int8 file and the baseline's in ``REPEATS`` rounds alternating the two, each round in
a fresh process (``tflowrank.profile(repeats=...)``, ``compress``'s default), each file the
median of ``--runs`` runs (1 thread); the figure is the median over rounds, and "x faster" the
ratio of the two medians of the same row (one process can be 15% off on this host; the ratio
within a row is steadier than a figure from one row to the next).
"""

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    command_line,
    environment,
    fashion_mnist,
    finish,
    format_table,
    load_average,
    require_fashion_mnist,
    run_isolated,
    write_json,
)

REPEATS = 5  # rounds timing each row's int8 file and the baseline's: compress's profile_repeats

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "auto.json"
BUDGETS = {"3x": 1 / 3, "5x": 1 / 5, "8x": 1 / 8}
SINGLE_METHODS = ("spatial", "svd", "output", "tucker2", "cp")
UNIFORM_LAYERS = ("conv2", "conv3", "conv4")
TARGETS = {"3x": 0.3, "5x": 0.8, "8x": 2.0}  # points below the float32 baseline, at most


def uniform_plan(model, method, target, layers=UNIFORM_LAYERS):
    """A CompressionPlan giving ``layers`` one common share of their MACs so that the model
    keeps ``target`` of its MACs (predicted scores unknown: NaN)."""
    from tflowrank import cost, factorize

    before = cost(model)
    by_name = _by_name(before)
    chosen = sum(by_name[name].macs for name in layers)
    share = (target * before.macs - (before.macs - chosen)) / chosen
    if share <= 0:
        raise ValueError(f"target {target} is below the MACs outside {layers}")
    low, high = 0.0, min(1.0, 2 * share)
    for _ in range(30):  # the common share whose rounded ranks land on the budget
        middle = (low + high) / 2
        new = factorize(model, method, rank=middle, layers=list(layers))
        if cost(new).macs <= target * before.macs:
            low = middle
        else:
            high = middle
    return plan_of(model, factorize(model, method, rank=max(low, 1e-6), layers=list(layers)),
                   method, target, layers)


def plan_of(model, new, method, target, layers=UNIFORM_LAYERS):
    """The CompressionPlan of ``new``, ``model`` with ``layers`` factorized by ``method``
    (predicted scores unknown: NaN)."""
    from tflowrank import cost
    from tflowrank.plan import CompressionPlan, PlanEntry

    before, new_cost = cost(model), cost(new)
    by_name, after = _by_name(before), _by_name(new_cost)
    entries = []
    for name in by_name:
        if by_name[name].macs == 0 or by_name[name].class_name not in ("Conv2D", "Conv1D", "Dense"):
            continue
        layer = new.get_layer(name)
        if name in layers:
            entries.append(PlanEntry(name, method, layer.rank, by_name[name].macs, after[name].macs,
                                     math.nan))
        else:
            entries.append(PlanEntry(name, None, None, by_name[name].macs, by_name[name].macs, math.nan))
    return CompressionPlan(cost="macs", target=target, total_before=before.macs,
                           total_after=new_cost.macs, baseline_score=math.nan,
                           predicted_score=math.nan, entries=tuple(entries))


def _by_name(model_cost):
    """A ``tflowrank.cost`` report's layer rows by layer name."""
    return {row.name.split("/")[-1]: row for row in model_cost.layers}


def decomposed_plan(model, train, target, cache, samples=1000, seed=0):
    """The plan ``compress``'s default search makes when its sensitivity table scores the factors
    as decomposed (``refit=False``), on the search samples ``compress`` draws with ``seed``."""
    import numpy as np

    from tflowrank import search
    from tflowrank.compression import default_methods

    x, y = train
    pick = np.sort(np.random.default_rng(seed).choice(len(x), min(samples, len(x)), replace=False))
    return search(model, (x[pick], y[pick]), target, methods=default_methods(target), cache=cache,
                  refit=False, first_applicable=True, max_samples=samples, progress=False)


def run_settings(parser, args):
    """``(budgets, epochs, sizes)`` from the ``--budgets``, ``--epochs`` and ``--quick``
    arguments (shared with ``bench/seeds.py``); an unknown budget or a learning rate <= 0 is a
    parser error."""
    budgets = args.budgets.split(",") if args.budgets else (["3x"] if args.quick else list(BUDGETS))
    unknown = [b for b in budgets if b not in BUDGETS]
    if unknown:
        parser.error(f"--budgets takes 3x, 5x, 8x; got {', '.join(unknown)}")
    epochs = args.epochs if args.epochs is not None else (1 if args.quick else 2)
    if args.learning_rate is not None and not args.learning_rate > 0:
        parser.error(f"--learning-rate must be > 0; got {args.learning_rate!r}")
    sizes = (4096, 1000) if args.quick else (60000, 10000)
    return budgets, epochs, sizes


def _compress_row(folder, sizes, label, target, methods, plan_kind, cache, epochs, qat, runs,
                  distill=False, refit=True, cost="macs", qat_epochs=None, seed=0,
                  learning_rate=None, search_samples=None, feature_distill=None):
    """One ``compress`` run in this (spawned) process, with ``seed`` (and ``learning_rate``,
    ``search_samples`` and ``feature_distill``, None: ``compress``'s defaults); returns its
    figures."""
    import keras
    from _pruning import gzip_size

    from tflowrank import compress, zoo
    from tflowrank.compression import QAT_EPOCHS

    keras.utils.set_random_seed(seed)
    train, test = fashion_mnist(*sizes)
    model = zoo.load_fashion_cnn()
    if plan_kind == "as decomposed":
        plan = decomposed_plan(model, train, target, cache)
        cache = None
    else:
        plan = uniform_plan(model, plan_kind, target) if plan_kind else None
    out = Path(folder) / label.replace(" ", "_").replace(":", "")
    started = time.perf_counter()
    result = compress(model, train, test, target, cost=cost, finetune_epochs=epochs, qat=qat,
                      output_dir=out, methods=methods, cache=cache, plan=plan, profile_runs=runs,
                      profile_repeats=REPEATS,
                      distill=distill, refit=refit, log=None, progress=False, seed=seed,
                      learning_rate=learning_rate, feature_distill=feature_distill,
                      **({} if qat_epochs is None else {"qat_epochs": qat_epochs}),
                      **({} if search_samples is None else {"search_samples": search_samples}))
    settings = json.loads((out / "report.json").read_text())["settings"]
    return {
        "row": label, "budget": target, "cost": cost, "methods": list(methods) if methods else None,
        "qat": qat, "qat_epochs": (QAT_EPOCHS if qat_epochs is None else qat_epochs) if qat else None,
        "distill": distill, "feature_distill": settings["feature_distill"], "refit": refit,
        "seed": seed,
        "learning_rate": settings["learning_rate"],
        "search_samples": settings["search_samples"] if plan is None else None,
        "plan": result.plan.to_dict(), "keras_top1": result.keras_accuracy,
        "int8_top1": result.tflite_accuracy, "baseline_top1": result.baseline_accuracy,
        "baseline_int8_top1": result.baseline_tflite_accuracy, "macs": result.macs,
        "baseline_macs": result.baseline_macs, "params": result.params,
        "baseline_params": result.baseline_params, "int8_bytes": result.int8_bytes,
        "baseline_float32_bytes": result.baseline_float32_bytes,
        "baseline_int8_bytes": result.baseline_int8_bytes,
        "int8_gzip_bytes": gzip_size(result.export.path),
        "int8_median_us": result.to_dict()["int8_median_us"],
        "baseline_int8_median_us": result.to_dict()["baseline_int8_median_us"],
        "search_seconds": result.seconds.get("search") if plan is None else None,
        "seconds": result.seconds, "wall_seconds": time.perf_counter() - started,
        "methods_used": list(result.plan.methods),
    }


def _pruning_row(folder, sizes, keep_params, epochs, runs):
    import keras
    from _pruning import magnitude_pruning

    from tflowrank import evaluate_tflite, export_tflite, profile, zoo

    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = fashion_mnist(*sizes)
    model = zoo.load_fashion_cnn()
    out = Path(folder) / "pruning"
    out.mkdir(parents=True, exist_ok=True)
    found = magnitude_pruning(model, keep_params, x_train, y_train, epochs, out)
    accuracy = evaluate_tflite(found["int8_path"], x_test, y_test)
    baseline = export_tflite(model, out / "baseline_int8.tflite", representative_data=x_train[:500]).path
    base, timing = profile([baseline, found["int8_path"]], threads=1, runs=runs, warmup_runs=5,
                           repeats=REPEATS)
    return {**{k: (str(v) if isinstance(v, Path) else v) for k, v in found.items()},
            "int8_top1": accuracy, "int8_median_us": timing.inference_median_us,
            "baseline_int8_median_us": base.inference_median_us}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test on a data slice")
    parser.add_argument("--budgets", help="comma-separated of 3x,5x,8x (default all; --quick 3x)")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs (default 2; --quick 1)")
    parser.add_argument("--no-comparisons", action="store_true",
                        help="only tflowrank and uniform spatial at each budget")
    parser.add_argument("--no-pruning", action="store_true", help="skip the tfmot pruning row")
    parser.add_argument("--learning-rate", type=float,
                        help="the fine-tuning's learning rate (default: compress's)")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per int8 model")
    parser.add_argument("--latency", type=float, action="append", default=[],
                        help="also compress to this fraction of the host int8 latency "
                             "(cost='latency'; repeatable)")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="output (default: %(default)s)")
    args = parser.parse_args(argv)
    budgets, epochs, sizes = run_settings(parser, args)
    methods = None  # compress's default: compression.default_methods(target)
    every = ("spatial", "svd", "tucker2", "output")  # the default before: every method competing
    singles = ("spatial", "svd") if args.quick else SINGLE_METHODS
    require_fashion_mnist()
    record = {"command": command_line(), "environment": environment(),
              "config": {"budgets": budgets, "epochs": epochs, "train": sizes[0], "test": sizes[1],
                         "runs": args.runs, "repeats": REPEATS, "quick": args.quick, "qat": True,
                         "learning_rate": args.learning_rate,
                         "targets_points_below": TARGETS},
              "load_average_start": load_average(), "rows": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-auto-") as folder:
        cache = str(Path(folder) / "sensitivity.json")

        def run(function, *extra):
            print(f"[auto] {extra[0] if function is _compress_row else 'tfmot pruning'} ...",
                  flush=True)
            options = {"learning_rate": args.learning_rate} if function is _compress_row else {}
            row = run_isolated(function, folder, sizes, *extra, **options)
            record["rows"].append(row)
            write_json(args.json, record)
            return row

        for name in budgets:
            target = BUDGETS[name]
            main_row = run(_compress_row, f"{name} tflowrank", target, methods, None, cache, epochs,
                           True, args.runs)
            main_row["budget_name"] = name
            run(_compress_row, f"{name} uniform spatial", target, None, "spatial", None, epochs, True,
                args.runs)["budget_name"] = name
            if name == budgets[0] and not args.no_comparisons:
                run(_compress_row, f"{name} tflowrank, post-training int8", target, methods, None,
                    cache, epochs, False, args.runs)["budget_name"] = name
                run(_compress_row, f"{name} tflowrank, quantization-aware last epoch", target,
                    methods, None, cache, epochs, True, args.runs, False, True, "macs",
                    1)["budget_name"] = name
                run(_compress_row, f"{name} uniform spatial, distilled", target, None, "spatial", None,
                    epochs, True, args.runs, True)["budget_name"] = name
                run(_compress_row, f"{name} uniform spatial, no refit", target, None, "spatial", None,
                    epochs, True, args.runs, False, False)["budget_name"] = name
                run(_compress_row, f"{name} tflowrank, table as decomposed", target, None,
                    "as decomposed", str(Path(folder) / "sensitivity_decomposed.json"), epochs,
                    True, args.runs)["budget_name"] = name
                if not args.quick:
                    run(_compress_row, f"{name} search: {', '.join(every)}", target, every, None,
                        str(Path(folder) / "sensitivity_every.json"), epochs, True,
                        args.runs)["budget_name"] = name
                for method in singles:
                    try:
                        run(_compress_row, f"{name} search: {method}", target, (method,), None,
                            str(Path(folder) / f"sensitivity_{method}.json"), epochs, True,
                            args.runs)["budget_name"] = name
                    except Exception as error:  # a method that cannot reach the budget
                        print(f"[auto] {name} search: {method}: {error}", flush=True)
                        record["rows"].append({"row": f"{name} search: {method}", "error": str(error)})
                if not args.no_pruning:
                    try:
                        row = run(_pruning_row, main_row["params"], epochs, args.runs)
                        row.update(row=f"{name} tfmot pruning", budget_name=name)
                    except Exception as error:
                        print(f"[auto] tfmot pruning: {error}", flush=True)
                        record["rows"].append({"row": f"{name} tfmot pruning", "error": str(error)})
        if budgets and not args.no_comparisons:  # the search again, cached: its time
            row = run(_compress_row, "cached search", BUDGETS[budgets[0]], methods, None, cache, 0,
                      False, 5)
            record["cached_search_seconds"] = row["search_seconds"]
        for fraction in args.latency:  # compress to a host latency budget
            run(_compress_row, f"latency {fraction:g} tflowrank", fraction, methods, None,
                str(Path(folder) / "sensitivity_latency.json"), epochs, True, args.runs, False, True,
                "latency")["budget_name"] = f"latency {fraction:g}"
    return finish(record, started, args.json, table)


def table(record):
    rows = [r for r in record["rows"] if "error" not in r and r.get("row") != "cached search"]
    if not rows:
        return "(no row)"
    base = next(r for r in rows if "baseline_top1" in r)
    header = ("row", "top-1 Keras", "top-1 int8", "vs float", "MACs", "params", "int8 KB",
              "x smaller", "gzip KB", "int8 ms", "x faster", "search s")
    lines = [("float32 baseline", f"{base['baseline_top1']:.4f}", "", "", f"{base['baseline_macs']:,}",
              f"{base['baseline_params']:,}", f"{base['baseline_float32_bytes'] / 1024:.1f} (f32)", "1.00",
              "", "", "", ""),
             ("PTQ only (int8)", "", f"{base['baseline_int8_top1']:.4f}",
              f"{100 * (base['baseline_int8_top1'] - base['baseline_top1']):+.2f}",
              f"{base['baseline_macs']:,}", f"{base['baseline_params']:,}",
              f"{base['baseline_int8_bytes'] / 1024:.1f}",
              f"{base['baseline_float32_bytes'] / base['baseline_int8_bytes']:.2f}", "",
              f"{base['baseline_int8_median_us'] / 1000:.3f}", "1.00", "")]
    for r in rows:
        keras_top1 = f"{r['keras_top1']:.4f}" if r.get("keras_top1") is not None else ""
        macs = f"{r['macs']:,}" if "macs" in r else f"{base['baseline_macs']:,}"
        params = f"{r['nonzero_params']:,} nz" if "nonzero_params" in r else f"{r['params']:,}"
        search = f"{r['search_seconds']:.0f}" if r.get("search_seconds") is not None else ""
        lines.append((r["row"], keras_top1, f"{r['int8_top1']:.4f}",
                      f"{100 * (r['int8_top1'] - base['baseline_top1']):+.2f}", macs, params,
                      f"{r['int8_bytes'] / 1024:.1f}",
                      f"{base['baseline_float32_bytes'] / r['int8_bytes']:.2f}",
                      f"{r['int8_gzip_bytes'] / 1024:.1f}" if r.get("int8_gzip_bytes") else "",
                      f"{r['int8_median_us'] / 1000:.3f}",
                      f"{r['baseline_int8_median_us'] / r['int8_median_us']:.2f}"
                      if r.get("baseline_int8_median_us") else "", search))
    text = format_table(header, lines)
    if record.get("cached_search_seconds") is not None:
        text += f"\nsearch with the cached sensitivity table: {record['cached_search_seconds']:.1f} s"
    return text


if __name__ == "__main__":
    sys.exit(main())
