"""Every factorization method at about 2x, 3x and 5x fewer MACs: error, top-1, host latency, time.

    python bench/methods.py --no-latency    # factorization time, error and top-1 only
    python bench/methods.py                 # ... and the float32 / int8 latency ratios (hours)
    python bench/methods.py --quick         # smoke test: the Fashion-MNIST CNN at one ratio
    python bench/methods.py --models vgg16 --methods spatial,svd --ratios 0.2 --json /tmp/v.json

Models: ``fashion``, the trained Fashion-MNIST CNN shipped with tflowrank, and the Keras
applications ``vgg16``, ``resnet50`` and ``mobilenetv2`` built with ``weights=None`` (random
weights from ``--seed``; 224x224x3 input, 1000 classes). Layers: every Conv2D (never a depthwise
one, never a Dense layer) except those reading the image (1 or 3 input channels: the demo leaves
the Fashion CNN's conv1 alone for the same reason), and only kernels larger than 1x1 except for
``svd``, which also takes the 1x1 convolutions. So on the Fashion CNN every method works on conv2,
conv3 and conv4; on MobileNetV2 only ``svd`` has layers (its 1x1 convolutions); the other rows
say "nothing to factorize". ``output`` (data-driven, 512 training images) runs on the trained CNN
only: on random weights fitting the responses means nothing.

Each ``--ratios`` value r is ``factorize(..., rank=r)``: every selected layer keeps at most the
fraction r of its MACs (0.5, 0.33, 0.2: about 2x, 3x, 5x on those layers). Every factorization
runs in a fresh spawned process; its time is ``time.perf_counter`` around ``factorize`` alone
(tflowrank's modules imported before). Reconstruction error: the relative Frobenius error each
factorized layer records (mean, MAC-weighted mean and max over the layers). Top-1: the Keras
model on the 10,000 Fashion-MNIST test images, before any fine-tuning (and the int8 .tflite).

Latency (not with ``--no-latency``): each model exported to float32 and to int8 (float I/O;
calibration on 500 training images for the CNN, on 8 inputs uniform in [-1, 1] for the
applications, the range the profiler feeds) in a spawned process, then timed with the LiteRT
interpreter and XNNPACK on ``--threads`` threads; baseline and factorized model back to back,
order alternating, ``--repeats`` times, each the median of ``--runs`` invocations. Latency ratio =
median baseline / median factorized. The .tflite files of a variant are deleted once timed
(``--keep DIR`` keeps them all). The JSON is rewritten after each row.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

from _common import (
    blas_threads,
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

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "methods.json"
MODELS = ("fashion", "vgg16", "resnet50", "mobilenetv2")
APPLICATIONS = {"vgg16": "VGG16", "resnet50": "ResNet50", "mobilenetv2": "MobileNetV2"}
METHODS = ("spatial", "svd", "tucker2", "tucker2_spatial", "cp", "output")
RATIOS = (0.5, 0.33, 0.2)
QUANTIZE = {"float32": None, "int8": "int8"}
# factorization-time targets of the issue, seconds on 2 cores
TARGETS = {("vgg16", "spatial"): 10, ("vgg16", "svd"): 10, ("vgg16", "tucker2"): 30,
           ("vgg16", "cp"): 60, ("fashion", "output"): 30}
# ops one factorized Conv2D adds to the graph (it replaces one CONV_2D)
EXTRA_OPS = {"spatial": {"CONV_2D": 1}, "svd": {"CONV_2D": 1}, "output": {"CONV_2D": 1},
             "tucker2": {"CONV_2D": 2}, "tucker2_spatial": {"CONV_2D": 3},
             "cp": {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 2}}
BUSY = 0.25  # cores other processes used while factorizing, above which a time is flagged
OUTPUT_CALIBRATION = 512  # training images the "output" method fits on
INT8_CALIBRATION = {"fashion": 500, "application": 8}


# -- in the spawned processes ------------------------------------------------------------------
def build_model(name, seed):
    """The model ``name``: the shipped trained CNN, or a Keras application with random weights."""
    import keras

    from tflowrank import zoo

    if name == "fashion":
        model = zoo.load_fashion_cnn()
        if model is None:
            raise tflowrank.TflowrankError("this tflowrank installation lacks the trained "
                                           "Fashion-MNIST CNN (tflowrank/data/fashion_cnn.keras)")
        return model
    keras.utils.set_random_seed(seed)
    return getattr(keras.applications, APPLICATIONS[name])(
        weights=None, input_shape=(224, 224, 3), classes=1000)


def selects(method):
    """The layer predicate: Conv2D not reading the image, kernel > 1x1 unless ``method`` is svd."""
    import keras

    def chosen(layer):
        return (isinstance(layer, keras.layers.Conv2D) and layer.kernel.shape[-2] > 3
                and (method == "svd" or tuple(layer.kernel_size) != (1, 1)))

    return chosen


def variant(model_name, method, ratio, seed, folder, export, test_images, cp_ridge=None):
    """Build the model, factorize it (method None: the baseline), measure, optionally export.

    Runs in a spawned process (``cp_ridge``: set as ``tflowrank.decompositions.cp.RIDGE`` in it).
    Returns a dict; ``status`` is "ok" or "nothing to factorize".
    """
    import numpy as np

    if cp_ridge is not None:
        import tflowrank.decompositions.cp as cp

        cp.RIDGE = cp_ridge

    import tflowrank.decompositions  # noqa: F401  (imported before the clock starts)
    import tflowrank.factorization  # noqa: F401
    import tflowrank.graph  # noqa: F401
    import tflowrank.layers  # noqa: F401
    import tflowrank.output_approximation  # noqa: F401

    model = build_model(model_name, seed)
    checksum = float(sum(np.abs(w).sum(dtype=np.float64) for w in model.get_weights()))
    fashion = model_name == "fashion"
    (train, _), test = fashion_mnist(max(OUTPUT_CALIBRATION, INT8_CALIBRATION["fashion"]),
                                     test_images) if fashion else ((None, None), None)
    record = {"model": model_name, "method": method, "ratio": ratio, "weights_checksum": checksum,
              "blas_threads": blas_threads()}
    if method is not None:
        data = train[:OUTPUT_CALIBRATION] if method == "output" else None
        busy, own = busy_cpu_seconds(), sum(os.times()[:2])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            try:
                new = tflowrank.factorize(model, method, rank=ratio, layers=selects(method),
                                          data=data)
            except ValueError as error:
                if not str(error).startswith("No layer"):
                    raise
                return {**record, "status": "nothing to factorize", "reason": str(error)}
            seconds = time.perf_counter() - start
        cpu = sum(os.times()[:2]) - own
        record.update(
            factorize_seconds=seconds, factorize_cpu_seconds=cpu,
            other_processes_cpu_cores=None if busy is None else
            round(max(0.0, (busy_cpu_seconds() - busy - cpu) / seconds), 3),
            warnings=[str(w.message) for w in caught if "tflowrank" in str(w.message)],
        )
        model = new
    record.update(_costs(model))
    record["status"] = "ok"
    if fashion:
        logits = model.predict(test[0], batch_size=500, verbose=0)
        record["top1"] = float(np.mean(np.argmax(logits, axis=1) == test[1]))
    if export:
        record["files"] = _export(model, model_name, method, ratio, folder, train, test, seed)
    return record


def _costs(model):
    """Whole-model MACs and parameters, and the factorized layers with their errors."""
    cost = tflowrank.cost(model)
    layers = [{"name": c.name, "class": c.class_name, "rank": c.rank, "macs": c.macs,
               "dense_macs": c.dense_macs, "error": c.reconstruction_error}
              for c in cost.layers if c.rank is not None]
    return {"macs": cost.macs, "params": cost.params, "layers": layers}


def _export(model, model_name, method, ratio, folder, train, test, seed):
    import numpy as np

    if model_name == "fashion":
        calibration = train[:INT8_CALIBRATION["fashion"]]
    else:
        rng = np.random.default_rng(seed)
        calibration = rng.uniform(-1.0, 1.0, (INT8_CALIBRATION["application"], 224, 224, 3))
    stem = f"{model_name}_baseline" if method is None else f"{model_name}_{method}_{ratio:g}"
    files = {}
    for dtype, quantize in QUANTIZE.items():
        result = tflowrank.export_tflite(
            model, Path(folder) / f"{stem}_{dtype}.tflite", quantize=quantize,
            representative_data=calibration.astype("float32") if quantize else None)
        files[dtype] = {"path": str(result.path), "ops": dict(result.ops),
                        "size_bytes": result.size_bytes}
        if test is not None and quantize:
            files[dtype]["top1"] = tflowrank.evaluate_tflite(result.path, *test)
    return files


# -- in this process: summaries, timing, tables --------------------------------------------------
def summarise(row, baseline):
    """Add the MAC ratios, the error statistics and the op check to a factorized row."""
    layers = row["layers"]
    errors = [layer["error"] for layer in layers]
    dense = [layer["dense_macs"] for layer in layers]
    row["n_layers"] = len(layers)
    row["layer_mac_ratio"] = sum(dense) / sum(layer["macs"] for layer in layers)
    row["model_mac_ratio"] = baseline["macs"] / row["macs"]
    row["error_mean"] = statistics.fmean(errors)
    row["error_max"] = max(errors)
    row["error_macs_weighted"] = sum(e * d for e, d in zip(errors, dense)) / sum(dense)
    row["same_weights_as_baseline"] = row["weights_checksum"] == baseline["weights_checksum"]
    target = TARGETS.get((row["model"], row["method"]))
    row["target_seconds"] = target
    row["target_met"] = None if target is None else row["factorize_seconds"] < target
    if "files" in row:
        for dtype, info in row["files"].items():
            expected = Counter(baseline["files"][dtype]["ops"])
            for op, count in EXTRA_OPS[row["method"]].items():
                expected[op] += count * len(layers)
            info["ops_expected"] = dict(expected)
            info["ops_ok"] = Counter(info["ops"]) == expected
    return row


def time_pair(base_path, path, threads, runs, warmup, repeats):
    """Per-repeat median latencies (us) of baseline and variant, timed back to back, alternating."""
    times = {"baseline": [], "factorized": []}
    paths = {"baseline": base_path, "factorized": path}
    for repeat in range(repeats):
        for role in (("baseline", "factorized") if repeat % 2 == 0 else ("factorized", "baseline")):
            (result,) = tflowrank.profile(paths[role], threads=threads, runs=runs,
                                          warmup_runs=warmup)
            times[role].append(result.inference_median_us)
    base, fact = times["baseline"], times["factorized"]
    paired = [b / f for b, f in zip(base, fact, strict=True)]
    return {"baseline_ms": statistics.median(base) / 1000,
            "factorized_ms": statistics.median(fact) / 1000,
            "baseline_repeat_ms": [round(t / 1000, 4) for t in base],
            "factorized_repeat_ms": [round(t / 1000, 4) for t in fact],
            "latency_ratio": statistics.median(base) / statistics.median(fact),
            "latency_ratio_min": min(paired), "latency_ratio_max": max(paired)}


def table(model_name, baseline, rows):
    fashion = model_name == "fashion"
    header = ["method", "rank", "layers", "layer MACs", "model MACs", "err mean", "err MAC-w",
              "err max"]
    header += ["top-1", "int8 top-1"] if fashion else []
    header += ["f32 lat", "int8 lat", "fact s", "target"]
    lines = []
    if fashion:
        lines.append(["baseline", "-", "-", "1.00x", "1.00x", "-", "-", "-",
                      f"{baseline['top1']:.4f}", _top1(baseline, "int8"),
                      *(["1.00x"] * 2 if "files" in baseline else ["-"] * 2), "-", ""])
    for row in rows:
        if row["status"] != "ok":
            lines.append([row["method"], f"{row['ratio']:g}", "0", *["-"] * (len(header) - 4),
                          row["status"]])
            continue
        star = "*" if row["method"] == "output" else ""  # an error of responses, not kernels
        cells = [row["method"], f"{row['ratio']:g}", str(row["n_layers"]),
                 f"{row['layer_mac_ratio']:.2f}x", f"{row['model_mac_ratio']:.2f}x",
                 *(f"{row[key]:.3f}{star}" for key in ("error_mean", "error_macs_weighted",
                                                      "error_max"))]
        if fashion:
            cells += [f"{row['top1']:.4f}", _top1(row, "int8")]
        for dtype in QUANTIZE:
            latency = row.get("latency", {}).get(dtype)
            cells.append(f"{latency['latency_ratio']:.2f}x" if latency else "-")
        target = row["target_seconds"]
        verdict = "" if target is None else f"<{target} " + ("ok" if row["target_met"] else "MISS")
        busy = (row.get("other_processes_cpu_cores") or 0) > BUSY
        cells += [f"{row['factorize_seconds']:.2f}{'!' if busy else ''}", verdict]
        lines.append(cells)
    text = format_table(header, lines, left=2)
    if any((row.get("other_processes_cpu_cores") or 0) > BUSY for row in rows):
        text += (f"\n! other processes kept more than {BUSY} of a core busy while it factorized: "
                 "the time is inflated")
    if any(row["method"] == "output" and row["status"] == "ok" for row in rows):
        text += ("\n* output: relative error of the layer responses on the calibration images; "
                 "the other methods: of the kernels")
    return text


def _top1(row, dtype):
    info = row.get("files", {}).get(dtype)
    return f"{info['top1']:.4f}" if info and "top1" in info else "-"


def run(args, folder, record):
    """Fill ``record["baselines"]`` and ``record["rows"]`` model by model, saving as it goes."""
    latency = not args.no_latency
    for model_name in args.models:
        methods = [m for m in args.methods if m != "output" or model_name == "fashion"]
        print(f"\n[{model_name}] baseline{' (build, export)' if latency else ''} ...", flush=True)
        baseline = run_isolated(variant, model_name, None, None, args.seed, str(folder), latency,
                                args.test_images)
        record["baselines"][model_name] = baseline
        for method in methods:
            for ratio in args.ratios:
                started = time.monotonic()
                print(f"[{model_name}] {method} rank={ratio:g}: factorize"
                      f"{', export' if latency else ''} ...", end="", flush=True)
                row = run_isolated(variant, model_name, method, ratio, args.seed, str(folder),
                                   latency, args.test_images, args.cp_ridge)
                if row["status"] == "ok":
                    summarise(row, baseline)
                    print(f" {row['factorize_seconds']:.2f} s, {row['n_layers']} layers, "
                          f"{row['model_mac_ratio']:.2f}x model MACs, error "
                          f"{row['error_macs_weighted']:.3f}", end="", flush=True)
                    if not row["same_weights_as_baseline"]:
                        print(" [warning: weights differ from the baseline's]", end="")
                    bad = [d for d, info in row.get("files", {}).items() if not info["ops_ok"]]
                    if bad:
                        print(f" [warning: unexpected ops in {', '.join(bad)}]", end="")
                    if latency:
                        print("; timing ...", end="", flush=True)
                        row["latency"] = {dtype: time_pair(
                            baseline["files"][dtype]["path"], row["files"][dtype]["path"],
                            args.threads, args.runs[model_name], args.warmup[model_name],
                            args.repeats) for dtype in QUANTIZE}
                        print(" float32 {:.2f}x, int8 {:.2f}x".format(
                            *(row["latency"][d]["latency_ratio"] for d in QUANTIZE)), end="")
                        if not args.keep:
                            for info in row["files"].values():
                                Path(info["path"]).unlink(missing_ok=True)
                else:
                    print(f" {row['status']}", end="")
                print(f" ({time.monotonic() - started:.0f} s)", flush=True)
                record["rows"].append(row)
                write_json(args.json, record)
        if latency and not args.keep:
            for info in baseline["files"].values():
                Path(info["path"]).unlink(missing_ok=True)
        rows = [r for r in record["rows"] if r["model"] == model_name]
        print(f"\n{model_name}:\n{table(model_name, baseline, rows)}", flush=True)
    record["complete"] = True
    record["environment"]["load_average_end"] = load_average()
    return record


def report(record):
    config, env = record["config"], record["environment"]
    print(f"\nAll models ({env['cpu_model']}, {env['usable_cpus']} CPUs, BLAS threads "
          f"{record['baselines'][config['models'][0]].get('blas_threads')}; latency: LiteRT + "
          f"XNNPACK, {config['threads']} thread(s))")
    for model_name, baseline in record["baselines"].items():
        rows = [r for r in record["rows"] if r["model"] == model_name]
        print(f"\n{model_name}: {baseline['macs']:,} MACs, {baseline['params']:,} parameters")
        print(table(model_name, baseline, rows))
    timed = [r for r in record["rows"] if r.get("target_met") is not None]
    if timed:
        print("\ntime targets (seconds on 2 cores):")
        for r in timed:
            print(f"  {r['model']} {r['method']} rank={r['ratio']:g}: {r['factorize_seconds']:.1f} s, "
                  f"target < {r['target_seconds']} s: {'met' if r['target_met'] else 'MISSED'}")
    print(f"\nload average {env['load_average_start']} at start, {env['load_average_end']} at end")


def _names(choices):
    def parse(text):
        names = [v.strip() for v in text.split(",") if v.strip()]
        unknown = [n for n in names if n not in choices]
        if not names or unknown:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {', '.join(choices)}; got {text!r}")
        return names
    return parse


def _ratios(text):
    try:
        ratios = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        ratios = []
    if not ratios or not all(0 < r <= 1 for r in ratios):
        raise argparse.ArgumentTypeError(f"expected fractions in (0, 1] like 0.5,0.33; got {text!r}")
    return ratios


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=_names(MODELS), help="comma-separated (default: all; "
                        "--quick: fashion)")
    parser.add_argument("--methods", type=_names(METHODS), default=list(METHODS),
                        help="comma-separated (default: all; output runs on fashion only)")
    parser.add_argument("--ratios", type=_ratios, help="fractions of each layer's MACs to keep "
                        "(default 0.5,0.33,0.2; --quick 0.33)")
    parser.add_argument("--no-latency", action="store_true",
                        help="no export and no timing: factorization time, error and top-1 only")
    parser.add_argument("--threads", type=int, default=1, help="LiteRT threads (default 1)")
    parser.add_argument("--runs", type=int, help="timed invocations per measurement "
                        "(default 100 for fashion, 5 for the applications; --quick 20 and 3)")
    parser.add_argument("--warmup", type=int, help="warm-up invocations (default 10 for fashion, "
                        "2 for the applications)")
    parser.add_argument("--repeats", type=int, help="back-to-back measurements per variant "
                        "(default 4; --quick 2)")
    parser.add_argument("--test-images", type=int, default=10000,
                        help="Fashion-MNIST test images for top-1 (default all 10000)")
    parser.add_argument("--seed", type=int, default=0, help="weights of the applications")
    parser.add_argument("--quick", action="store_true", help="fashion at one ratio: a smoke test")
    parser.add_argument("--keep", metavar="DIR", help="keep the .tflite files in DIR")
    parser.add_argument("--cp-ridge", type=float,
                        help="CP-ALS's ridge (tflowrank.decompositions.cp.RIDGE; 0: plain CP-ALS; "
                             "default: tflowrank's)")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="output (default: %(default)s)")
    args = parser.parse_args(argv)
    args.models = args.models or (["fashion"] if args.quick else list(MODELS))
    if "fashion" in args.models:
        require_fashion_mnist()
    args.ratios = args.ratios or ([0.33] if args.quick else list(RATIOS))
    if args.repeats is None:
        args.repeats = 2 if args.quick else 4
    runs, warmup = args.runs, args.warmup
    args.runs = {m: runs or ((20 if args.quick else 100) if m == "fashion" else
                             (3 if args.quick else 5)) for m in MODELS}
    args.warmup = {m: warmup if warmup is not None else (10 if m == "fashion" else 2)
                   for m in MODELS}
    for name in ("threads", "repeats", "test_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1; got {getattr(args, name)}")
    if args.cp_ridge is not None and not args.cp_ridge >= 0:
        parser.error(f"--cp-ridge must be >= 0; got {args.cp_ridge}")
    if (runs is not None and runs < 1) or (warmup is not None and warmup < 0):
        parser.error(f"--runs must be at least 1 and --warmup at least 0; got {runs}, {warmup}")

    record = {
        "command": command_line(),
        "config": {"models": args.models, "methods": args.methods, "ratios": args.ratios,
                   "latency": not args.no_latency, "threads": args.threads, "runs": args.runs,
                   "warmup_runs": args.warmup, "repeats": args.repeats,
                   "test_images": args.test_images, "seed": args.seed, "quick": args.quick,
                   "cp_ridge": args.cp_ridge,
                   "output_calibration_images": OUTPUT_CALIBRATION,
                   "int8_calibration": {"fashion": "500 training images",
                                        "applications": "8 inputs uniform in [-1, 1]"},
                   "layers": "Conv2D with more than 3 input channels; kernel > 1x1 except svd",
                   "targets_seconds": {f"{m} {k}": v for (m, k), v in TARGETS.items()}},
        "environment": {**environment(), "load_average_start": load_average(),
                        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")},
        "complete": False, "baselines": {}, "rows": [],
    }
    try:
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            run(args, Path(args.keep), record)
        else:
            with tempfile.TemporaryDirectory(prefix="bench-methods-") as folder:
                run(args, Path(folder), record)
    except tflowrank.TflowrankError as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return 1
    report(record)
    path = write_json(args.json, record)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
