"""tflowrank against the uniform spatial split over several seeds: is the difference real?

    python bench/seeds.py                   # seeds 0, 1, 2 at 3x, 5x, 8x: 30-80 minutes on 2 cores
    python bench/seeds.py --budgets 3x --seeds 0,1,2,3,4
    python bench/seeds.py --budgets 3x --seeds 0,1 --epochs 6    # a longer fine-tuning
    python bench/seeds.py --learning-rate 4e-3                   # another fine-tuning learning rate
    python bench/seeds.py --budgets 3x --search-samples 5000     # a larger search subset
    python bench/seeds.py --budgets 3x --feature-distill 0       # fine-tuning without feature hints
    python bench/seeds.py --budgets 3x --no-qat                  # post-training int8, no QAT tail
    python bench/seeds.py --budgets 3x --methods cp              # the tflowrank row's search: CP only
    python bench/seeds.py --budgets 8x --rows tflowrank          # one row (uniform's is seed-paired)
    python bench/seeds.py --quick           # smoke test: 4,096 training / 1,000 test images, 3x, 1 epoch

``bench/auto.py`` runs each row once, with seed 0. On the Fashion-MNIST CNN the same plan through
the same ``compress`` ends up to a few tenths of a point apart from one seed (fine-tuning order,
the search and calibration subsets, batch-norm batches) to another, which is as large as the
differences that table compares. Here the two rows the issue's "strictly better than uniform"
target is about run with every seed: ``tflowrank`` (``compress`` with its default search; each
seed draws its own search subset, so each seed measures its own sensitivity table, shared by its
budgets) and ``uniform spatial`` (the plan of ``bench/auto.py``, the same for every seed), each
row a fresh spawned process (``auto._compress_row``) with the seed given to
``keras.utils.set_random_seed`` and to ``compress``.

The table: per budget and row, the int8 top-1 against the float32 baseline in points, as the
mean, the sample standard deviation, the lowest and the highest over the seeds; and the paired
difference tflowrank - uniform (same seed): its mean, its standard deviation and how many seeds
had tflowrank ahead.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    command_line,
    environment,
    finish,
    format_table,
    load_average,
    require_fashion_mnist,
    run_isolated,
    write_json,
)
from auto import BUDGETS, _compress_row, run_settings

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "seeds.json"
ROWS = ("tflowrank", "uniform spatial")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test on a data slice")
    parser.add_argument("--budgets", help="comma-separated of 3x,5x,8x (default all; --quick 3x)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated integers (default 0,1,2)")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs (default 2; --quick 1)")
    parser.add_argument("--learning-rate", type=float,
                        help="the fine-tuning's learning rate (default: compress's)")
    parser.add_argument("--search-samples", type=int,
                        help="training images the tflowrank rows' search scores on "
                             "(default: compress's, 1000)")
    parser.add_argument("--feature-distill", type=float,
                        help="both rows' fine-tuning matches the input model's factorized layers "
                             "with this weight (compress's feature_distill; 0: off; default: "
                             "compress's, 0.3 above a sixth of the MACs)")
    parser.add_argument("--no-qat", action="store_true",
                        help="post-training int8 instead of the quantization-aware end of the "
                             "fine-tuning (compress's qat=False)")
    parser.add_argument("--methods",
                        help="comma-separated methods competing in the tflowrank rows' search "
                             "(compress's methods=; default: compress's, by the target: "
                             "compression.default_methods)")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help="comma-separated rows among %(default)s (default: both)")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="output (default: %(default)s)")
    args = parser.parse_args(argv)
    budgets, epochs, sizes = run_settings(parser, args)
    methods = None
    if args.methods is not None:
        from tflowrank.methods import METHOD_NAMES

        methods = tuple(args.methods.split(","))
        unknown = [m for m in methods if m not in METHOD_NAMES]
        if unknown or not methods:
            parser.error(f"--methods takes comma-separated names of {', '.join(METHOD_NAMES)}; "
                         f"got {args.methods!r}")
    if args.search_samples is not None and args.search_samples < 1:
        parser.error(f"--search-samples must be >= 1; got {args.search_samples}")
    if args.feature_distill is not None and not args.feature_distill >= 0:
        parser.error(f"--feature-distill must be >= 0; got {args.feature_distill}")
    kinds = args.rows.split(",")
    if not kinds or any(k not in ROWS for k in kinds) or len(set(kinds)) != len(kinds):
        parser.error(f"--rows takes comma-separated names of {', '.join(ROWS)}; got {args.rows!r}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers; got {args.seeds!r}")
    if len(set(seeds)) < 2:
        parser.error(f"--seeds needs at least two different seeds; got {args.seeds!r}")
    require_fashion_mnist()
    record = {"command": command_line(), "environment": environment(),
              "config": {"budgets": budgets, "seeds": seeds, "epochs": epochs, "train": sizes[0],
                         "test": sizes[1], "quick": args.quick,
                         "learning_rate": args.learning_rate,
                         "search_samples": args.search_samples,
                         "feature_distill": args.feature_distill, "qat": not args.no_qat,
                         "methods": methods, "rows": kinds},
              "load_average_start": load_average(), "rows": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-seeds-") as folder:
        for name in budgets:
            for seed in seeds:
                cache = str(Path(folder) / f"sensitivity_seed{seed}.json")
                for kind in kinds:
                    label = f"{name} {kind} seed {seed}"
                    print(f"[seeds] {label} ...", flush=True)
                    row = run_isolated(_compress_row, folder, sizes, label, BUDGETS[name],
                                       None if kind == "uniform spatial" else methods,
                                       "spatial" if kind == "uniform spatial" else None,
                                       None if kind == "uniform spatial" else cache, epochs,
                                       not args.no_qat,
                                       5, seed=seed, learning_rate=args.learning_rate,
                                       search_samples=(None if kind == "uniform spatial"
                                                       else args.search_samples),
                                       feature_distill=args.feature_distill)
                    row.update(budget_name=name, kind=kind)
                    record["rows"].append(row)
                    write_json(args.json, record)
    record["summary"] = summary(record["rows"])
    return finish(record, started, args.json, lambda done: table(done["summary"]))


def summary(rows):
    """Per budget: each row kind's points against the float32 baseline over the seeds, and the
    paired difference tflowrank - uniform."""
    out = []
    for name in dict.fromkeys(r["budget_name"] for r in rows):
        points = {kind: {r["seed"]: 100 * (r["int8_top1"] - r["baseline_top1"])
                         for r in rows if r["budget_name"] == name and r["kind"] == kind}
                  for kind in ROWS}
        points = {kind: by_seed for kind, by_seed in points.items() if by_seed}
        entry = {"budget": name, "rows": {}}
        for kind, by_seed in points.items():
            values = list(by_seed.values())
            entry["rows"][kind] = {"points": by_seed, "mean": statistics.fmean(values),
                                   "stdev": statistics.stdev(values) if len(values) > 1 else None,
                                   "min": min(values), "max": max(values)}
        paired = [points["tflowrank"][s] - points["uniform spatial"][s]
                  for s in points.get("tflowrank", {}) if s in points.get("uniform spatial", {})]
        entry["tflowrank_minus_uniform"] = {
            "points": paired, "mean": statistics.fmean(paired) if paired else None,
            "stdev": statistics.stdev(paired) if len(paired) > 1 else None,
            "tflowrank_ahead": sum(d > 0 for d in paired), "seeds": len(paired)}
        out.append(entry)
    return out


def table(entries):
    def fmt(value):
        return "" if value is None else f"{value:+.2f}"

    header = ("budget", "row", "seeds", "mean vs float", "stdev", "lowest", "highest")
    lines = []
    for entry in entries:
        for kind, stats in entry["rows"].items():
            lines.append((entry["budget"], kind, str(len(stats["points"])), fmt(stats["mean"]),
                          "" if stats["stdev"] is None else f"{stats['stdev']:.2f}", fmt(stats["min"]),
                          fmt(stats["max"])))
        diff = entry["tflowrank_minus_uniform"]
        if not diff["seeds"]:
            continue
        lines.append((entry["budget"], "tflowrank - uniform (paired)", str(diff["seeds"]),
                      fmt(diff["mean"]), "" if diff["stdev"] is None else f"{diff['stdev']:.2f}",
                      fmt(min(diff["points"], default=None)), fmt(max(diff["points"], default=None))))
        lines.append((entry["budget"], f"  tflowrank ahead in {diff['tflowrank_ahead']} of "
                      f"{diff['seeds']} seeds", "", "", "", "", ""))
    return format_table(header, lines)


if __name__ == "__main__":
    sys.exit(main())
