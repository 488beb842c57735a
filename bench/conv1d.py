"""Conv1D factorization: a 1-D CNN on Fashion-MNIST read as sequences, compressed by ``compress``.

    python bench/conv1d.py            # full data: about 13 minutes
    python bench/conv1d.py --quick    # smoke test: 4,096 training / 1,000 test images, 1 epoch
    python bench/conv1d.py --budgets 3x   # one budget only
    python bench/conv1d.py --rows "tflowrank,all 1-D methods" --seeds 1,2   # other seeds

Each image is read as a sequence of 28 time steps (its rows) of 28 features (the pixels of the
row), the sequential Fashion-MNIST task, so a real dataset exercises the 1-D path. The model,
defined here and trained first (seed 0, Adam 1e-3 with one cosine decay, ``--train-epochs``
epochs, batches of 128, in its own process):

    Conv1D(64, 5, same, no bias) -> BN -> ReLU -> Conv1D(64, 5, same, relu) -> MaxPool1D(2)
    -> Conv1D(128, 3, same, relu) -> MaxPool1D(2) -> Conv1D(128, 3, same, relu)
    -> GlobalAveragePooling1D -> Dropout(0.3) -> Dense(10)

Then each row is one ``compress`` call in a fresh process, seed 0, ``compress``'s defaults (2
fine-tuning epochs, the last 0.1 quantization-aware, int8 export; host int8 latency of the row's
file and the baseline's over 5 rounds in fresh processes, 200 runs each, 1 thread):

- ``Nx tflowrank``: the search's plan with ``compress``'s default methods (spatial where it
  applies, else svd, tucker2 and cp competing: the three for every Conv1D, svd for the Dense);
- ``Nx svd alone``: ``methods=("svd",)``, the default before CP-ALS was ridged;
- ``Nx all 1-D methods``: the search's plan with ``svd``, ``tucker2``, ``cp`` and ``output``
  competing for every layer;
- ``Nx uniform svd``: ``svd`` with one common share of MACs kept in every convolution (the
  first holds a sixth of the MACs, too many to leave whole at 5x).

The table: Keras and int8 top-1, the int8 gap to the float32 baseline, MACs, parameters, int8
file size, the float32 file over it, int8 host latency and the speed-up over the baseline's
int8 file in the same rounds, the ops of the int8 file.
"""

import argparse
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

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "conv1d.json"
BUDGETS = {"3x": 1 / 3, "5x": 1 / 5}
UNIFORM_LAYERS = ("conv1", "conv2", "conv3", "conv4")
ALL_METHODS = ("svd", "tucker2", "cp", "output")
ROWS = {"tflowrank": None, "svd alone": ("svd",), "all 1-D methods": ALL_METHODS,
        "uniform svd": "uniform"}
BATCH = 128
REPEATS = 5


def build_model():
    import keras

    layers = keras.layers
    inputs = keras.Input((28, 28), name="rows")
    x = layers.Conv1D(64, 5, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.ReLU(name="relu1")(layers.BatchNormalization(name="bn1")(x))
    x = layers.Conv1D(64, 5, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling1D(2, name="pool1")(x)
    x = layers.Conv1D(128, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.MaxPooling1D(2, name="pool2")(x)
    x = layers.Conv1D(128, 3, padding="same", activation="relu", name="conv4")(x)
    x = layers.Dropout(0.3, name="dropout")(layers.GlobalAveragePooling1D(name="pool3")(x))
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="fashion_rows_cnn")


def sequences(sizes):
    """Fashion-MNIST as ``(N, 28, 28)`` float32 sequences in [0, 1]: row i is time step i."""
    (x_train, y_train), (x_test, y_test) = fashion_mnist(*sizes)
    return (x_train[..., 0], y_train), (x_test[..., 0], y_test)


def _train(path, sizes, epochs, seed=0):
    """Train the baseline in this (spawned) process and save it to ``path``; its figures."""
    import keras

    keras.utils.set_random_seed(seed)
    (x, y), (x_test, y_test) = sequences(sizes)
    model = build_model()
    steps = epochs * -(-len(x) // BATCH)
    schedule = keras.optimizers.schedules.CosineDecay(1e-3, steps)
    model.compile(keras.optimizers.Adam(schedule),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    started = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0)
    seconds = time.perf_counter() - started
    model.save(path)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return {"float32_top1": float(accuracy), "train_seconds": seconds, "epochs": epochs}


def _row(folder, model_path, sizes, label, target, methods, epochs, runs, seed=0):
    """One ``compress`` run in this (spawned) process; returns its figures."""
    import keras
    from auto import uniform_plan

    from tflowrank import compress
    from tflowrank.tflite_model import inspect_tflite

    keras.utils.set_random_seed(seed)
    train, test = sequences(sizes)
    model = keras.models.load_model(model_path)
    uniform = methods == "uniform"
    plan = uniform_plan(model, "svd", target, layers=UNIFORM_LAYERS) if uniform else None
    out = Path(folder) / label.replace(" ", "_")
    result = compress(model, train, test, target, finetune_epochs=epochs, output_dir=out,
                      plan=plan, methods=None if uniform else methods, profile_runs=runs,
                      profile_repeats=REPEATS, log=None, progress=False, seed=seed)
    summary = result.to_dict()
    return {
        "row": label, "budget": target, "plan": result.plan.to_dict(),
        "methods_used": list(result.plan.methods), "keras_top1": result.keras_accuracy,
        "int8_top1": result.tflite_accuracy, "baseline_top1": result.baseline_accuracy,
        "baseline_int8_top1": result.baseline_tflite_accuracy, "macs": result.macs,
        "baseline_macs": result.baseline_macs, "params": result.params,
        "baseline_params": result.baseline_params, "int8_bytes": result.int8_bytes,
        "baseline_float32_bytes": result.baseline_float32_bytes,
        "baseline_int8_bytes": result.baseline_int8_bytes,
        "int8_median_us": summary["int8_median_us"],
        "baseline_int8_median_us": summary["baseline_int8_median_us"],
        "ops": dict(inspect_tflite(result.export.path).ops),
        "fully_int8": inspect_tflite(result.export.path).is_fully_int8,
        "seconds": result.seconds,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test on a data slice")
    parser.add_argument("--train-epochs", type=int, default=None,
                        help="epochs training the baseline (default: 12, or 1 with --quick)")
    parser.add_argument("--budgets", default=",".join(BUDGETS),
                        help="comma-separated budgets among 3x, 5x (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per int8 model")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help="comma-separated rows among %(default)s (default: all)")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated seeds of the compress rows (the baseline is trained "
                             "with seed 0; default: %(default)s)")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="output (default: %(default)s)")
    args = parser.parse_args(argv)
    kinds = args.rows.split(",")
    if not kinds or any(k not in ROWS for k in kinds):
        parser.error(f"--rows takes {', '.join(ROWS)}; got {args.rows!r}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds takes comma-separated integers; got {args.seeds!r}")
    sizes = (4096, 1000) if args.quick else (60000, 10000)
    epochs = 1 if args.quick else 2
    train_epochs = args.train_epochs or (1 if args.quick else 12)
    if train_epochs < 1:
        parser.error(f"--train-epochs must be >= 1; got {train_epochs}")
    budgets = args.budgets.split(",")
    if not budgets or any(b not in BUDGETS for b in budgets):
        parser.error(f"--budgets takes {', '.join(BUDGETS)}; got {args.budgets!r}")
    require_fashion_mnist()
    record = {"command": command_line(), "environment": environment(),
              "config": {"train": sizes[0], "test": sizes[1], "train_epochs": train_epochs,
                         "finetune_epochs": epochs, "budgets": budgets, "runs": args.runs,
                         "repeats": REPEATS,
                         "quick": args.quick, "seeds": seeds, "rows": kinds},
              "load_average_start": load_average(), "rows": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-conv1d-") as folder:
        model_path = str(Path(folder) / "baseline.keras")
        print("[conv1d] training the baseline ...", flush=True)
        record["baseline"] = run_isolated(_train, model_path, sizes, train_epochs)
        write_json(args.json, record)
        for seed in seeds:
            for name in budgets:
                target = BUDGETS[name]
                for kind in kinds:
                    label = f"{name} {kind}" + (f" seed {seed}" if seed else "")
                    print(f"[conv1d] {label} ...", flush=True)
                    row = run_isolated(_row, folder, model_path, sizes, label, target, ROWS[kind],
                                       epochs, args.runs, seed)
                    row["seed"] = seed
                    record["rows"].append(row)
                    write_json(args.json, record)
    return finish(record, started, args.json, table)


def table(record):
    header = ("row", "top-1 Keras", "top-1 int8", "vs float", "MACs", "params", "int8 KB",
              "x smaller", "int8 ms", "x faster", "plan")
    rows = record["rows"]
    lines = []
    if rows:
        first = rows[0]
        lines.append(("float32 baseline", f"{first['baseline_top1']:.4f}", "", "",
                      f"{first['baseline_macs']:,}", f"{first['baseline_params']:,}",
                      f"{first['baseline_float32_bytes'] / 1024:.1f} (f32)", "1.00", "", "", ""))
        lines.append(("PTQ only (int8)", "", f"{first['baseline_int8_top1']:.4f}",
                      f"{100 * (first['baseline_int8_top1'] - first['baseline_top1']):+.2f}",
                      f"{first['baseline_macs']:,}", f"{first['baseline_params']:,}",
                      f"{first['baseline_int8_bytes'] / 1024:.1f}",
                      f"{first['baseline_float32_bytes'] / first['baseline_int8_bytes']:.2f}",
                      f"{first['baseline_int8_median_us'] / 1000:.3f}", "1.00", ""))
    for r in rows:
        plan = ", ".join(f"{e['layer']} {e['method']} {_rank(e['rank'])}"
                         for e in r["plan"]["entries"] if e["method"])
        lines.append((r["row"], f"{r['keras_top1']:.4f}", f"{r['int8_top1']:.4f}",
                      f"{100 * (r['int8_top1'] - r['baseline_top1']):+.2f}", f"{r['macs']:,}",
                      f"{r['params']:,}", f"{r['int8_bytes'] / 1024:.1f}",
                      f"{r['baseline_float32_bytes'] / r['int8_bytes']:.2f}",
                      f"{r['int8_median_us'] / 1000:.3f}",
                      f"{r['baseline_int8_median_us'] / r['int8_median_us']:.2f}", plan))
    text = format_table(header, lines)
    baseline = record.get("baseline")
    if baseline:
        text += (f"\nbaseline: {baseline['epochs']} epochs in {baseline['train_seconds']:.0f} s, "
                 f"float32 top-1 {baseline['float32_top1']:.4f}")
    for r in rows:
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(r["ops"].items()))
        text += f"\n{r['row']}: {'fully int8' if r['fully_int8'] else 'NOT fully int8'}; {ops}"
    return text


def _rank(rank):
    return "x".join(map(str, rank)) if isinstance(rank, list) else str(rank)


if __name__ == "__main__":
    sys.exit(main())
