"""Latency budget mode: does search(cost="latency") land the measured host latency on the budget?

    python bench/latency_budget.py              # 4-10 minutes on 2 cores
    python bench/latency_budget.py --quick      # targets 0.5 only, fewer repeats

Model: the trained Fashion-MNIST CNN shipped with tflowrank. ``tflowrank.search(model, data,
target, cost="latency")`` with its default methods and candidates, scored on the first
``--test-images`` Fashion-MNIST test images, int8 latency tables timed on this host (LiteRT with
XNNPACK, 1 thread, the search's defaults); each plan is applied with ``tflowrank.factorize(model,
plan, data=x_calibration)`` (500 training images, also the int8 calibration of the export;
``data=`` only when the plan uses ``"output"``, as ``factorize`` refuses it otherwise), with no
fine-tuning, and exported to full int8 (float I/O, as ``export_tflite`` does by default).

Searches, in one spawned process with empty caches at first: every target in order (the first one
measures the sensitivity table and the latency table; later ones reuse both, measuring only the
ranks around their choices), then the first
target again (everything cached: the plan must be identical). The time of each is reported.

Then the baseline and each compressed int8 model are timed ``--repeats`` times
(``tflowrank.profile(repeats=...)``), each repeat in a fresh process timing every model once
(order reversed every other repeat), each the median of ``--runs`` invocations after 20 warm-up
runs (1 thread); reported: the median over repeats (``measured/budget``: the two medians'
ratio over the target; ``paired/budget``: the median over repeats of the model's time over the
baseline's in the same repeat, over the target). One process is not enough: on this host the
same .tflite files time up to 15% apart from one process to another, and their ratios up to 10%
(memory placement, presumably). Budget =
target x measured baseline; the plan's prediction is its ``total_after`` (the search's own
measurement of the whole model, minus the candidate layers alone, plus their chosen chains alone).
Top-1: the Keras and the int8 models on the 10,000 test images (the predicted score is the
search's, on the first ``--test-images``: the baseline's score minus the sum of the per-layer drops).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    busy_cpu_seconds,
    command_line,
    environment,
    fashion_mnist,
    format_table,
    load_average,
    require_fashion_mnist,
    run_isolated,
    write_json,
)

import tflowrank

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latency_budget.json"


def plan_and_export(folder, targets, test_images):
    """Search every target (timed), apply and export each plan; return what the parent needs."""
    import json

    import numpy as np

    from tflowrank import zoo

    (calibration, _), data = fashion_mnist(500, test_images)
    model = zoo.load_fashion_cnn()
    folder = Path(folder)
    cache = folder / "sensitivity.json"
    out = {"searches": [], "plans": {}, "files": {}}
    for target in [*targets, targets[0]]:
        started = time.perf_counter()
        plan = tflowrank.search(model, data, target, cost="latency", cache=cache, progress=False)
        seconds = time.perf_counter() - started
        cached = str(target) in out["plans"]
        out["searches"].append({"target": target, "seconds": seconds,
                                "caches": "all" if cached else ("none" if not out["plans"] else "warm")})
        if cached:
            out["same_plan_from_cache"] = plan.to_dict() == out["plans"][str(target)]
            continue
        out["plans"][str(target)] = plan.to_dict()
    out["latency_entries"] = len(json.loads((folder / "sensitivity.latency.json").read_text())["entries"])
    x_eval, y_eval = data

    def top1(keras_model):
        return float(np.mean(keras_model.predict(x_eval, batch_size=500, verbose=0).argmax(-1) == y_eval))

    out["files"]["baseline"] = str(tflowrank.export_tflite(
        model, folder / "baseline_int8.tflite", representative_data=calibration).path)
    out["top1_keras"] = {"baseline": top1(model)}
    for key, plan in out["plans"].items():
        plan = tflowrank.CompressionPlan.from_dict(plan)
        kwargs = {"data": calibration} if "output" in plan.methods else {}  # refused otherwise
        small = tflowrank.factorize(model, plan, **kwargs)
        out["top1_keras"][key] = top1(small)
        out["files"][key] = str(tflowrank.export_tflite(
            small, folder / f"plan_{key}_int8.tflite", representative_data=calibration).path)
    out["top1_int8"] = {key: tflowrank.evaluate_tflite(path, x_eval, y_eval)
                        for key, path in out["files"].items()}
    return out


class _others:
    """Cores other processes kept busy during the block (``/proc/stat`` minus this process and
    its children), as ``[value]`` once the block ends; ``[None]`` where it cannot be told."""

    def __enter__(self):
        self.value = [None]
        self.busy, self.own, self.start = busy_cpu_seconds(), sum(os.times()[:4]), time.perf_counter()
        return self.value

    def __exit__(self, *exc):
        seconds = time.perf_counter() - self.start
        if self.busy is not None and seconds > 0:
            others = busy_cpu_seconds() - self.busy - (sum(os.times()[:4]) - self.own)
            self.value[0] = round(max(0.0, others / seconds), 3)


def measure(paths, repeats, runs):
    """``{key: [median of each repeat]}``: ``tflowrank.profile(repeats=...)``, each repeat in a
    fresh process timing every path once, the order reversed every other repeat."""
    results = tflowrank.profile(list(paths.values()), threads=1, runs=runs, warmup_runs=20,
                                repeats=repeats)
    return {key: list(r.repeat_medians_us) for key, r in zip(paths, results)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="0.5,0.33",
                        help="comma-separated latency fractions (default: %(default)s)")
    parser.add_argument("--test-images", type=int, default=1000,
                        help="test images scoring the search (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="--targets 0.5 --repeats 3 --runs 50")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="output (default: %(default)s)")
    args = parser.parse_args(argv)
    require_fashion_mnist()
    if args.quick:
        args.targets, args.repeats, args.runs = "0.5", 3, 50
    try:
        targets = [float(t) for t in args.targets.split(",")]
    except ValueError:
        parser.error(f"--targets must be fractions like 0.5,0.33; got {args.targets!r}")
    if not all(0 < t <= 1 for t in targets) or args.repeats < 1 or args.runs < 1:
        parser.error(f"targets must be in (0, 1], --repeats and --runs >= 1; got {args.targets}, "
                     f"{args.repeats}, {args.runs}")
    record = {"command": command_line(),
              "config": {"targets": targets, "test_images": args.test_images,
                         "repeats": args.repeats, "runs": args.runs, "warmup_runs": 20, "threads": 1},
              "environment": {**environment(), "load_average_start": load_average()}}
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as folder:
        print("searching, factorizing and exporting (spawned process) ...", flush=True)
        with _others() as search_others:
            built = run_isolated(plan_and_export, folder, targets, args.test_images)
        print("timing ...", flush=True)
        with _others() as timing_others:
            timed = measure(built["files"], args.repeats, args.runs)
    record["environment"]["other_processes_cpu_cores"] = {"search": search_others[0],
                                                          "timing": timing_others[0]}
    baseline = statistics.median(timed["baseline"])
    for plan in built["plans"].values():
        print(tflowrank.CompressionPlan.from_dict(plan), end="\n\n")
    rows = []
    for key, plan in built["plans"].items():
        measured = statistics.median(timed[key])
        budget = plan["target"] * baseline
        paired = statistics.median(a / b for a, b in zip(timed[key], timed["baseline"]))
        rows.append({"target": plan["target"], "predicted_us": plan["total_after"],
                     "predicted_baseline_us": plan["total_before"],
                     "measured_us": measured, "measured_min_us": min(timed[key]),
                     "measured_max_us": max(timed[key]), "budget_us": budget,
                     "measured_over_budget": measured / budget,
                     "paired_fraction": paired, "paired_over_budget": paired / plan["target"],
                     "measured_over_predicted": measured / plan["total_after"],
                     "measured_fraction": measured / baseline,
                     "predicted_score": plan["predicted_score"], "top1_keras": built["top1_keras"][key],
                     "top1_int8": built["top1_int8"][key],
                     "layers": [{k: e[k] for k in ("layer", "method", "rank", "cost_before", "cost_after")}
                                for e in plan["entries"]],
                     "repeats_us": timed[key]})
    record.update(baseline={"measured_us": baseline, "repeats_us": timed["baseline"],
                            "top1_keras": built["top1_keras"]["baseline"],
                            "top1_int8": built["top1_int8"]["baseline"]},
                  rows=rows, searches=built["searches"], plans=built["plans"],
                  same_plan_from_cache=built.get("same_plan_from_cache"),
                  latency_entries=built["latency_entries"])
    record["environment"]["load_average_end"] = load_average()
    print(report(record))
    print(f"wrote {write_json(args.json, record)}")
    return 0


def report(record):
    base = record["baseline"]
    rows, plans = record["rows"], list(record["plans"].values())
    lines = [["baseline", "-", f"{rows[0]['predicted_baseline_us']:.1f}" if rows else "-",
              f"{base['measured_us']:.1f}", "-", "-", "-", "-",
              f"{plans[0]['baseline_score']:.4f}" if plans else "-",
              f"{base['top1_keras']:.4f}", f"{base['top1_int8']:.4f}", "-"]]
    for row in rows:
        plan = ", ".join(f"{e['layer']} {e['method']} {e['rank']}" for e in row["layers"] if e["method"])
        lines.append([f"target {row['target']:g}", f"{row['budget_us']:.1f}", f"{row['predicted_us']:.1f}",
                      f"{row['measured_us']:.1f}", f"{row['measured_over_budget']:.3f}",
                      f"{row['paired_over_budget']:.3f}",
                      f"{row['measured_over_predicted']:.3f}", f"{row['measured_fraction']:.3f}",
                      f"{row['predicted_score']:.4f}", f"{row['top1_keras']:.4f}",
                      f"{row['top1_int8']:.4f}", plan])
    text = format_table(["int8 model", "budget us", "predicted us", "measured us", "measured/budget",
                         "paired/budget",
                         "measured/predicted", "kept", "predicted score", "top-1 Keras", "top-1 int8",
                         "plan"], lines)
    searches = [[f"{s['target']:g}", s["caches"], f"{s['seconds']:.1f}"] for s in record["searches"]]
    text += "\n\nsearch time:\n" + format_table(["target", "caches", "seconds"], searches)
    text += (f"\nsame plan from the caches: {record['same_plan_from_cache']}; "
             f"latency table entries: {record['latency_entries']}; other processes' cores while "
             f"searching / timing: {record['environment']['other_processes_cpu_cores']}")
    return text


if __name__ == "__main__":
    sys.exit(main())
