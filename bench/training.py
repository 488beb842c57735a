"""Training-time compression on the Fashion-MNIST CNN: PTQ, QAT, factorization, rank annealing.

    python bench/training.py            # full data (60,000 training, 10,000 test images)
    python bench/training.py --quick    # smoke test: 4,096 training and 1,000 test images
    python bench/training.py --rows qat,scheduled    # some rows only (the baseline always runs)

Rows (each in a fresh spawned process; the starting point is the trained CNN shipped with
tflowrank, the same for every row):

- ``baseline``: the float Keras model; its int8 column is post-training quantization (PTQ,
  500 training images for calibration);
- ``qat``: ``quantize_aware`` of the baseline, ``--qat-epochs`` epochs (Adam 1e-4), exported with
  its trained ranges. Also one plain epoch of the baseline with the same optimizer, the reference
  for the QAT cost per epoch;
- ``factorized + PTQ``: ``factorize(baseline, "spatial", target_macs=1/3)`` on conv2-conv4,
  ``--finetune-epochs`` epochs of fine-tuning (Adam 5e-4, cosine decay), PTQ;
- ``scheduled + QAT``: ``factorize(..., rank=1.0)`` (exact, full rank), the same fine-tuning
  epochs with a ``RankScheduler(target_macs=1/3, every=100 steps)`` reaching the target at the end
  of the first epoch, then ``finalize`` and ``--qat-epochs`` epochs of QAT.

Reported: Keras top-1 and int8 TFLite top-1 on the test set, the agreement of the Keras model's
and the int8 model's top-1, MACs, the int8 file size, the epochs and wall seconds per epoch.
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
    format_table,
    load_average,
    require_fashion_mnist,
    run_isolated,
    write_json,
)

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "training.json"
TARGET_MACS = 1 / 3
LAYERS = ["conv2", "conv3", "conv4"]
CALIBRATION = 500


class _EpochTimer:
    """A Keras callback factory recording the wall seconds of each epoch."""

    @staticmethod
    def make():
        import keras

        class Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds = []

            def on_epoch_begin(self, epoch, logs=None):
                self._start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self._start)

        return Timer()


def _fit(model, x, y, epochs, learning_rate, callbacks=(), decay=False):
    from tflowrank import zoo

    steps = epochs * -(-len(x) // 128)
    zoo.compile_classifier(model, learning_rate=learning_rate, decay_steps=steps if decay else None)
    timer = _EpochTimer.make()
    history = model.fit(x, y, batch_size=128, epochs=epochs, verbose=2,
                        callbacks=[*callbacks, timer])
    return timer.seconds, {k: [float(v) for v in values] for k, values in history.history.items()}


def _measure(model, name, folder, train, test, qat=False):
    """Keras and int8 TFLite top-1, agreement, MACs and size of ``model``."""
    import numpy as np

    import tflowrank

    (x_train, _), (x_test, y_test) = train, test
    keras_scores = model.predict(x_test, batch_size=500, verbose=0)
    path = Path(folder) / f"{name}.tflite"
    result = tflowrank.export_tflite(
        model, path, quantize="int8",
        representative_data=None if qat else x_train[:CALIBRATION])
    int8_scores = tflowrank.predict_tflite(result.path, x_test)
    keras_top1, int8_top1 = keras_scores.argmax(axis=1), int8_scores.argmax(axis=1)
    return {
        "keras_top1": float(np.mean(keras_top1 == y_test)),
        "int8_top1": float(np.mean(int8_top1 == y_test)),
        "agreement": float(np.mean(keras_top1 == int8_top1)),
        "macs": int(tflowrank.cost(tflowrank.finalize(model)).macs),
        "int8_bytes": int(result.size_bytes),
        "int8_ops": dict(result.ops),
    }


# -- rows, each run in a spawned process ----------------------------------------------------------
ROWS = ("baseline", "qat", "factorized", "scheduled")


def row_baseline(folder, sizes):
    from tflowrank import zoo

    train, test = fashion_mnist(*sizes)
    return {"row": "baseline", **_measure(zoo.load_fashion_cnn(), "baseline", folder, train, test),
            "epochs": 0}


def row_qat(folder, sizes, epochs):
    import tflowrank
    from tflowrank import zoo

    train, test = fashion_mnist(*sizes)
    plain_seconds, _ = _fit(zoo.load_fashion_cnn(), *train, 1, 1e-4)
    qat = tflowrank.quantize_aware(zoo.load_fashion_cnn())
    seconds, history = _fit(qat, *train, epochs, 1e-4)
    return {"row": "qat", **_measure(qat, "qat", folder, train, test, qat=True),
            "epochs": epochs, "epoch_seconds": seconds, "plain_epoch_seconds": plain_seconds,
            "history": history}


def row_factorized(folder, sizes, epochs):
    import tflowrank
    from tflowrank import zoo

    train, test = fashion_mnist(*sizes)
    model = tflowrank.factorize(zoo.load_fashion_cnn(), "spatial", target_macs=TARGET_MACS,
                                layers=LAYERS)
    before = _top1(model, test)
    seconds, history = _fit(model, *train, epochs, 5e-4, decay=True)
    return {"row": "factorized + PTQ", **_measure(model, "factorized", folder, train, test),
            "keras_top1_before_finetune": before, "epochs": epochs, "epoch_seconds": seconds,
            "history": history}


def row_scheduled(folder, sizes, epochs, qat_epochs):
    import tflowrank
    from tflowrank import zoo
    from tflowrank.callbacks import RankScheduler

    train, test = fashion_mnist(*sizes)
    model = tflowrank.factorize(zoo.load_fashion_cnn(), "spatial", rank=1.0, layers=LAYERS)
    full_macs = tflowrank.cost(model).macs
    scheduler = RankScheduler(target_macs=TARGET_MACS, end_epoch=1, every=100)
    seconds, history = _fit(model, *train, epochs, 5e-4, callbacks=[scheduler], decay=True)
    scheduled = tflowrank.finalize(model)
    ranks = {layer.name: layer.rank for layer in scheduled.layers if hasattr(layer, "active_rank")}
    after_schedule = _top1(scheduled, test)
    qat = tflowrank.quantize_aware(scheduled)
    qat_seconds, qat_history = _fit(qat, *train, qat_epochs, 1e-4)
    return {"row": "scheduled + QAT", **_measure(qat, "scheduled_qat", folder, train, test, qat=True),
            "keras_top1_after_schedule": after_schedule, "ranks": ranks, "full_rank_macs": full_macs,
            "epochs": epochs + qat_epochs, "epoch_seconds": seconds + qat_seconds,
            "history": {"schedule": history, "qat": qat_history}}


def _top1(model, test):
    import numpy as np

    x, y = test
    return float(np.mean(model.predict(x, batch_size=500, verbose=0).argmax(axis=1) == y))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4,096 training / 1,000 test images")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--rows", default=",".join(ROWS),
                        help="comma-separated rows to run (default: %(default)s; baseline is "
                             "always run first)")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="output (default: %(default)s)")
    args = parser.parse_args(argv)
    require_fashion_mnist()
    chosen = [name.strip() for name in args.rows.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in ROWS]
    if unknown:
        parser.error(f"--rows takes {', '.join(ROWS)}; got {', '.join(unknown)}")
    if args.finetune_epochs < 2 or args.qat_epochs < 1:
        parser.error("--finetune-epochs must be at least 2 (the schedule takes the first) and "
                     f"--qat-epochs at least 1; got {args.finetune_epochs}, {args.qat_epochs}")
    sizes = (4096, 1000) if args.quick else (60000, 10000)
    record = {"command": command_line(), "environment": {**environment(),
                                                         "load_average_start": load_average()},
              "config": {"train_images": sizes[0], "test_images": sizes[1],
                         "finetune_epochs": args.finetune_epochs, "qat_epochs": args.qat_epochs,
                         "target_macs": TARGET_MACS, "layers": LAYERS, "batch_size": 128,
                         "calibration_images": CALIBRATION},
              "rows": []}
    with tempfile.TemporaryDirectory(prefix="bench-training-") as folder:
        jobs = {"baseline": (row_baseline, ()), "qat": (row_qat, (args.qat_epochs,)),
                "factorized": (row_factorized, (args.finetune_epochs,)),
                "scheduled": (row_scheduled, (args.finetune_epochs, args.qat_epochs))}
        for function, extra in (jobs[name] for name in ROWS if name == "baseline" or name in chosen):
            started = time.monotonic()
            print(f"{function.__name__} ...", flush=True)
            row = run_isolated(function, folder, sizes, *extra)
            row["wall_seconds"] = time.monotonic() - started
            record["rows"].append(row)
            write_json(args.json, record)
            print(f"  keras {row['keras_top1']:.4f}, int8 {row['int8_top1']:.4f}, "
                  f"agreement {row['agreement']:.4f} ({row['wall_seconds']:.0f} s)", flush=True)
    record["environment"]["load_average_end"] = load_average()
    print(table(record))
    print(f"wrote {write_json(args.json, record)}")
    return 0


def table(record):
    rows = record["rows"]
    base = rows[0]
    header = ["row", "epochs", "s/epoch", "MACs", "int8 KB", "keras top-1", "int8 top-1",
              "int8 - float base", "agreement"]
    lines = []
    for row in rows:
        per_epoch = row.get("epoch_seconds") or []
        lines.append([row["row"], str(row["epochs"]),
                      f"{sum(per_epoch) / len(per_epoch):.1f}" if per_epoch else "-",
                      f"{base['macs'] / row['macs']:.2f}x fewer" if row is not base else
                      f"{row['macs'] / 1e6:.2f} M",
                      f"{row['int8_bytes'] / 1024:.1f}", f"{row['keras_top1']:.4f}",
                      f"{row['int8_top1']:.4f}",
                      f"{100 * (row['int8_top1'] - base['keras_top1']):+.2f} pts",
                      f"{row['agreement']:.4f}"])
    text = format_table(header, lines)
    qat = next((r for r in rows if r["row"] == "qat"), None)
    if qat is None:
        return text
    overhead = (sum(qat["epoch_seconds"]) / len(qat["epoch_seconds"])) / qat["plain_epoch_seconds"][0]
    text += (f"\nQAT epoch / plain epoch of the same CNN: {overhead:.2f}x (target < 1.5x)"
             f"\nQAT: int8 vs its Keras model: agreement {qat['agreement']:.4f} (target >= 0.995), "
             f"accuracy {100 * (qat['int8_top1'] - qat['keras_top1']):+.2f} pts (target within 0.2)")
    return text


if __name__ == "__main__":
    sys.exit(main())
