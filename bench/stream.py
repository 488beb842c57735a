"""compress on NumPy arrays against compress on a tf.data pipeline that reads the images from disk.

    python bench/stream.py            # full data, 3x fewer MACs, 2 epochs: about 8 minutes
    python bench/stream.py --quick    # smoke test: 4,096 training / 1,000 test images, 1 epoch

The same ``compress`` call (seed 0, the defaults of ``bench/auto.py``'s ``3x tflowrank`` row)
on the Fashion-MNIST CNN shipped with tflowrank, each row in a fresh spawned process:

- ``arrays``: ``train_data`` and ``val_data`` as float32 NumPy arrays in memory (the images
  scaled to [0, 1]); the search and calibration subsets drawn at random with the seed, the
  fine-tuning batches a seeded permutation per epoch. This is ``bench/auto.py``'s row.
- ``tf.data from disk``: both as ``tf.data.Dataset`` pipelines over uint8 ``.npy`` files opened
  memory-mapped (written by this script before the rows run): the training pipeline shuffles
  the sample indices (a new order every pass, seeded), batches them by 128 and loads and scales
  each batch from the file (``tf.numpy_function``); the validation one reads the test file in
  order. The process never holds a whole set in memory; ``compress`` reads the pipeline in
  passes (the search and calibration samples are the first of one pass).

The table: Keras and int8 top-1 and the int8 gap to the float32 baseline (the draws differ, so
the two rows differ as two seeds do), the MACs, the seconds per stage, the seconds to read one
epoch of fine-tuning batches the way ``compress`` reads them but without training (after the
``compress`` call, in the same process: the data's own cost, apart from the steps), and the
peak resident memory of the row's process (``ru_maxrss``; TensorFlow itself accounts for most
of it).
"""

import argparse
import resource
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

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "stream.json"
TARGET = 1 / 3
BATCH = 128
ROWS = ("arrays", "tf.data from disk")


def _pipelines(folder, seed):
    """The training and validation ``tf.data`` pipelines over the uint8 files in ``folder``."""
    import numpy as np
    import tensorflow as tf

    def pipeline(name, shuffle):
        images = np.load(Path(folder) / f"x_{name}.npy", mmap_mode="r")
        labels = np.load(Path(folder) / f"y_{name}.npy", mmap_mode="r")

        def load(indices):
            return images[indices][..., None].astype(np.float32) / 255.0, labels[indices].astype(np.int64)

        indices = tf.data.Dataset.range(len(images))
        if shuffle:
            indices = indices.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        return (indices.batch(BATCH)
                .map(lambda i: tf.numpy_function(load, [i], (tf.float32, tf.int64)))
                .map(lambda x, y: (tf.ensure_shape(x, (None, *images.shape[1:], 1)),
                                   tf.ensure_shape(y, (None,)))))

    return pipeline("train", True), pipeline("test", False)


def _row(folder, label, sizes, epochs, runs, seed=0):
    """One ``compress`` run in this (spawned) process; returns its figures."""
    import keras

    from tflowrank import compress, zoo

    keras.utils.set_random_seed(seed)
    if label == "arrays":
        train, test = fashion_mnist(*sizes)
    else:
        train, test = _pipelines(folder, seed)
    model = zoo.load_fashion_cnn()
    out = Path(folder) / label.replace(" ", "_")
    started = time.perf_counter()
    result = compress(model, train, test, TARGET, finetune_epochs=epochs, output_dir=out,
                      cache=str(out / "sensitivity.json"), profile_runs=runs, log=None,
                      progress=False, seed=seed)
    return {
        "row": label, "read_seconds_per_epoch": _read_seconds(model, train, seed),
        "keras_top1": result.keras_accuracy, "int8_top1": result.tflite_accuracy,
        "baseline_top1": result.baseline_accuracy, "macs": result.macs,
        "baseline_macs": result.baseline_macs, "plan": result.plan.to_dict(),
        "seconds": result.seconds, "wall_seconds": time.perf_counter() - started,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _read_seconds(model, train, seed):
    """Seconds to read one epoch of fine-tuning batches from ``train`` as ``compress`` reads
    them, without training: what the data costs apart from the steps themselves."""
    import numpy as np

    from tflowrank.compress_data import as_data

    per_epoch, batch = as_data("train_data", train, model, BATCH).steps(BATCH, 1, np.random.default_rng(seed))
    started = time.perf_counter()
    for step in range(per_epoch):
        batch(step)
    return time.perf_counter() - started


def _write_files(folder, sizes):
    """The uint8 images and labels the pipelines read, as .npy files in ``folder``."""
    import numpy as np

    from tflowrank.datasets import fashion_mnist as load

    (x_train, y_train), (x_test, y_test) = load(verbose=False)
    for name, array in (("x_train", x_train[:sizes[0]]), ("y_train", y_train[:sizes[0]]),
                        ("x_test", x_test[:sizes[1]]), ("y_test", y_test[:sizes[1]])):
        np.save(Path(folder) / f"{name}.npy", np.ascontiguousarray(array))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test on a data slice")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per int8 model")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="output (default: %(default)s)")
    args = parser.parse_args(argv)
    sizes = (4096, 1000) if args.quick else (60000, 10000)
    epochs = 1 if args.quick else 2
    require_fashion_mnist()
    record = {"command": command_line(), "environment": environment(),
              "config": {"target": TARGET, "epochs": epochs, "train": sizes[0], "test": sizes[1],
                         "batch_size": BATCH, "runs": args.runs, "quick": args.quick, "seed": 0},
              "load_average_start": load_average(), "rows": []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as folder:
        _write_files(folder, sizes)
        for label in ROWS:
            print(f"[stream] {label} ...", flush=True)
            record["rows"].append(run_isolated(_row, folder, label, sizes, epochs, args.runs))
            write_json(args.json, record)
    return finish(record, started, args.json, table)


def table(record):
    header = ("row", "top-1 Keras", "top-1 int8", "vs float", "MACs", "search s", "fine-tune s",
              "read s/epoch", "evaluate s", "total s", "peak MB")
    lines = []
    for r in record["rows"]:
        s = r["seconds"]
        lines.append((r["row"], f"{r['keras_top1']:.4f}", f"{r['int8_top1']:.4f}",
                      f"{100 * (r['int8_top1'] - r['baseline_top1']):+.2f}", f"{r['macs']:,}",
                      f"{s['search']:.0f}", f"{s['fine-tune']:.0f}",
                      f"{r['read_seconds_per_epoch']:.2f}", f"{s['evaluate']:.1f}",
                      f"{s['total']:.0f}", f"{r['peak_rss_mb']:.0f}"))
    return format_table(header, lines)


if __name__ == "__main__":
    sys.exit(main())
