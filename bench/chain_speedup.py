"""How much of the MAC saving of a spatial factorization LiteRT (XNNPACK) turns into speed.

    python bench/chain_speedup.py             # 4 x Conv2D(128, 3) on 28x28x128, ranks 96..16
    python bench/chain_speedup.py --quick     # smoke test, about a minute
    python bench/chain_speedup.py --size 56 --channels 64 --json /tmp/chain_56x64.json

A stack of ``--layers`` 3x3 convolutions (He-normal random weights, ReLU, "same" padding) is
factorized with ``tflowrank.factorize(model, "spatial", rank)`` at each rank: every 3x3 conv
becomes a 3x1 conv (cin -> rank) then a 1x3 conv (rank -> cout). Each model is exported to
float32 and to full int8 (int8 input and output, so the graph is only the CONV_2D chain;
calibrated on 100 inputs uniform in [-1, 1], what the profiler feeds a float model). Conversions
run in spawned subprocesses: the TF 2.21 converter leaks about 20 MB per call, and TensorFlow stays
out of the process that times.

Each .tflite runs in the LiteRT interpreter with XNNPACK on ``--threads`` threads. Baseline and
factorized model are timed back to back (order alternating) for every rank, ``--repeats`` times;
each time gives the median of ``--runs`` invocations. Latency = median of those medians; latency
ratio = baseline / factorized; "ratio range" = lowest and highest ratio of a back-to-back pair;
realised share = latency ratio / MAC ratio, compared with the targets 0.9 (float32) and 0.75
(int8). Results go to ``bench/results/chain_speedup.json``.
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
    format_table,
    load_average,
    run_isolated,
    write_json,
)

import tflowrank

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "chain_speedup.json"
# dtype -> export_tflite quantize; realised-share targets from the issue
QUANTIZE = {"float32": None, "int8": "int8"}
TARGETS = {"float32": 0.9, "int8": 0.75}
# default ranks as fractions of the channel count: MAC ratios 2, 3, 4, 6 and 12
RANK_FRACTIONS = (3 / 4, 1 / 2, 3 / 8, 1 / 4, 1 / 8)
QUICK_RANK_FRACTIONS = (1 / 2, 1 / 8)
CALIBRATION_SAMPLES = 100


def build_stack(layers, channels, size, seed):
    """``layers`` x Conv2D(channels, 3, "same", ReLU) on a (size, size, channels) input."""
    import keras

    inputs = keras.Input((size, size, channels))
    x = inputs
    for i in range(layers):
        x = keras.layers.Conv2D(
            channels, 3, padding="same", activation="relu", name=f"conv{i}",
            kernel_initializer=keras.initializers.HeNormal(seed=seed + i),
            bias_initializer=keras.initializers.RandomNormal(stddev=0.05, seed=seed + 1000 + i),
        )(x)
    return keras.Model(inputs, x, name=f"stack_{layers}x{channels}_{size}")


def convert(layers, channels, size, seed, rank, folder):
    """Build (and factorize at ``rank``; None = baseline) the stack, export float32 and int8.

    Runs in a subprocess. Returns the model's MACs and, per dtype, the file, its size and ops.
    """
    import numpy as np

    model = build_stack(layers, channels, size, seed)
    name = "baseline"
    if rank is not None:
        model = tflowrank.factorize(model, "spatial", rank=rank)
        name = f"spatial_r{rank}"
    rng = np.random.default_rng(seed)
    calibration = rng.uniform(-1.0, 1.0, (CALIBRATION_SAMPLES, size, size, channels))
    files = {}
    for dtype, quantize in QUANTIZE.items():
        result = tflowrank.export_tflite(
            model, Path(folder) / f"{name}_{dtype}.tflite", quantize=quantize,
            representative_data=calibration.astype("float32") if quantize else None,
            int8_io=quantize == "int8",
        )
        files[dtype] = {"path": str(result.path), "ops": dict(result.ops),
                        "size_bytes": result.size_bytes}
    return {"rank": rank, "macs": tflowrank.cost(model).macs, "files": files}


def measure(pairs, threads, runs, warmup_runs, repeats):
    """Time each (baseline, factorized) pair of paths back to back, ``repeats`` times.

    Returns one ``{"baseline": [...], "factorized": [...]}`` of per-repeat median latencies in
    microseconds per pair, in the order of ``pairs``.
    """
    times = [{"baseline": [], "factorized": []} for _ in pairs]
    for repeat in range(repeats):
        for i, paths in enumerate(pairs):
            order = ("baseline", "factorized") if (repeat + i) % 2 == 0 else ("factorized", "baseline")
            for role in order:
                (result,) = tflowrank.profile(paths[role], threads=threads, runs=runs,
                                              warmup_runs=warmup_runs, benchmark_binary=False)
                times[i][role].append(result.inference_median_us)
    return times


def summarise(dtype, mac_ratio, times):
    """One dtype of one row: latencies, ratio, its spread over repeats, realised share."""
    base, fact = times["baseline"], times["factorized"]
    latency_ratio = statistics.median(base) / statistics.median(fact)
    paired = [b / f for b, f in zip(base, fact, strict=True)]
    share = latency_ratio / mac_ratio
    return {
        "baseline_ms": statistics.median(base) / 1000,
        "factorized_ms": statistics.median(fact) / 1000,
        "baseline_repeat_ms": [round(t / 1000, 4) for t in base],
        "factorized_repeat_ms": [round(t / 1000, 4) for t in fact],
        "latency_ratio": latency_ratio,
        "latency_ratio_min": min(paired),
        "latency_ratio_max": max(paired),
        "realised_share": share,
        "target": TARGETS[dtype],
        "passed": share >= TARGETS[dtype],
    }


def check_ops(models, layers):
    """Sentences for every exported graph that is not exactly the expected CONV_2D chain."""
    problems = []
    for model in models:
        expected = {"CONV_2D": layers if model["rank"] is None else 2 * layers}
        for info in model["files"].values():
            if info["ops"] != expected:
                problems.append(f"{Path(info['path']).name} has ops {info['ops']}, "
                                f"expected {expected}")
    return problems


def table(dtype, rows):
    header = ("rank", "MAC ratio", "base ms", "fact ms", "lat ratio", "ratio range",
              "share", "target", "")
    lines = []
    for row in rows:
        m = row[dtype]
        lines.append((
            row["rank"], f"{row['mac_ratio']:.2f}x", f"{m['baseline_ms']:.3f}",
            f"{m['factorized_ms']:.3f}", f"{m['latency_ratio']:.2f}x",
            f"{m['latency_ratio_min']:.2f}-{m['latency_ratio_max']:.2f}",
            f"{m['realised_share']:.2f}", f"{m['target']:.2f}", "pass" if m["passed"] else "FAIL",
        ))
    return format_table(header, lines)


def run(args, folder):
    """Convert, check, time and summarise; return the JSON record (None if a graph is wrong)."""
    ranks = args.ranks or [max(1, round(args.channels * f)) for f in
                           (QUICK_RANK_FRACTIONS if args.quick else RANK_FRACTIONS)]
    shape = (args.layers, args.channels, args.size, args.seed)
    record = {
        "command": command_line(),
        "config": {"layers": args.layers, "channels": args.channels, "size": args.size,
                   "kernel": 3, "method": "spatial", "ranks": ranks, "threads": args.threads,
                   "runs": args.runs, "warmup_runs": args.warmup, "repeats": args.repeats,
                   "seed": args.seed, "quick": args.quick, "targets": TARGETS,
                   "calibration_samples": CALIBRATION_SAMPLES, "int8_io": True},
        "environment": {**environment(), "load_average_start": load_average()},
    }
    print(f"converting {len(ranks) + 1} models in subprocesses ...", flush=True)
    models = [run_isolated(convert, *shape, rank, str(folder)) for rank in [None, *ranks]]
    baseline, factorized = models[0], models[1:]
    problems = check_ops(models, args.layers)
    if problems:
        print("error: the exported graphs are not the expected conv chains:\n  "
              + "\n  ".join(problems), file=sys.stderr)
        return None

    print(f"timing on {args.threads} thread(s): {args.repeats} repeats x {args.runs} runs ...",
          flush=True)
    busy, own, wall = busy_cpu_seconds(), sum(os.times()[:2]), time.monotonic()
    times = {
        dtype: measure([{"baseline": baseline["files"][dtype]["path"],
                         "factorized": model["files"][dtype]["path"]} for model in factorized],
                       args.threads, args.runs, args.warmup, args.repeats)
        for dtype in QUANTIZE
    }
    wall = time.monotonic() - wall
    others = None
    if busy is not None:  # CPU the rest of the machine used while we timed, in cores
        others = (busy_cpu_seconds() - busy - (sum(os.times()[:2]) - own)) / wall
    record["environment"]["load_average_end"] = load_average()
    record["environment"]["timing_seconds"] = round(wall, 1)
    record["environment"]["other_processes_cpu_cores"] = None if others is None else round(others, 2)

    rows = []
    for i, model in enumerate(factorized):
        mac_ratio = baseline["macs"] / model["macs"]
        row = {"rank": model["rank"], "baseline_macs": baseline["macs"], "macs": model["macs"],
               "mac_ratio": mac_ratio}
        for dtype in QUANTIZE:
            row[dtype] = summarise(dtype, mac_ratio, times[dtype][i])
            row[dtype]["ops_baseline"] = baseline["files"][dtype]["ops"]
            row[dtype]["ops_factorized"] = model["files"][dtype]["ops"]
            row[dtype]["size_bytes_baseline"] = baseline["files"][dtype]["size_bytes"]
            row[dtype]["size_bytes_factorized"] = model["files"][dtype]["size_bytes"]
        rows.append(row)
    record["rows"] = rows
    record["passed"] = all(row[dtype]["passed"] for row in rows for dtype in QUANTIZE)
    return record


def report(record):
    config, env = record["config"], record["environment"]
    print(f"\n{config['layers']} x Conv2D({config['channels']}, 3) on "
          f"{config['size']}x{config['size']}x{config['channels']}, spatial factorization, "
          f"LiteRT + XNNPACK, {config['threads']} thread(s), {env['cpu_model']}")
    for dtype in QUANTIZE:
        print(f"\n{dtype} (median of {config['repeats']} x median of {config['runs']} runs; "
              f"share = latency ratio / MAC ratio)")
        print(table(dtype, record["rows"]))
    others = env["other_processes_cpu_cores"]
    print(f"\nload average {env['load_average_start']} at start, {env['load_average_end']} at end; "
          f"other processes used {others} cores while timing")
    if others is not None and others > 0.25:
        print("warning: other processes were busy while timing; the latencies may be disturbed")
    print("all targets met" if record["passed"] else "some targets missed")


def _ranks(text):
    try:
        ranks = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        ranks = []
    if not ranks or min(ranks) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 96,64,32; got {text!r}")
    return ranks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--size", type=int, default=28, help="input height and width")
    parser.add_argument("--ranks", type=_ranks, help="comma-separated (default: channels x "
                        "3/4, 1/2, 3/8, 1/4, 1/8; --quick: 1/2, 1/8)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, help="timed invocations per measurement "
                        "(default 100; --quick 20)")
    parser.add_argument("--warmup", type=int, help="warm-up invocations (default 10; --quick 3)")
    parser.add_argument("--repeats", type=int, help="measurements per model and rank "
                        "(default 10; --quick 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="fewer ranks and runs: a smoke test")
    parser.add_argument("--keep", metavar="DIR", help="keep the .tflite files in DIR")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="output (default: %(default)s)")
    args = parser.parse_args(argv)
    for name, fallback in (("runs", (20, 100)), ("warmup", (3, 10)), ("repeats", (2, 10))):
        if getattr(args, name) is None:
            setattr(args, name, fallback[0] if args.quick else fallback[1])
    for name in ("layers", "channels", "size", "threads", "runs", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1; got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be at least 0; got {args.warmup}")

    try:
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            record = run(args, Path(args.keep))
        else:
            with tempfile.TemporaryDirectory(prefix="chain-speedup-") as folder:
                record = run(args, Path(folder))
    except tflowrank.TflowrankError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if record is None:
        return 1
    report(record)
    path = write_json(args.json, record)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
