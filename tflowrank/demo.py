"""The main job on embedded defaults: compress the baseline Fashion-MNIST CNN end to end.

Baseline (shipped, or trained when missing) -> factorize its expensive conv layers so that the
model keeps at most 40% of its conv MACs ->
fine-tune briefly -> export float32 and int8 TFLite -> accuracy of the Keras models and of the int8
models on the test set -> host latency of every .tflite -> one table. ``tflowrank demo`` and
``make demo`` run it.
"""

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["DemoRow", "DemoResult", "run_demo"]

_CONV_TYPES = ("Conv2D", "SpatialConv2D", "SVDConv2D")
_MIN_SHARE = 0.05


@dataclass(frozen=True)
class DemoRow:
    model: str
    params: int
    macs: int
    conv_macs: int
    keras_accuracy: float
    float32_bytes: int
    int8_bytes: int
    int8_accuracy: float
    float32_latency_ms: float
    int8_latency_ms: float


@dataclass(frozen=True)
class DemoResult:
    output_dir: Path
    rows: tuple
    data_source: str
    baseline_source: str
    seconds: float
    table: str


def run_demo(output_dir="tflowrank-demo", method="spatial", conv_macs_fraction=0.4,
             finetune_epochs=2, runs=50, seed=0, finetune_samples=None, test_samples=None,
             log=print):
    """Run the demo, write its files to ``output_dir`` (created if missing), return the result.

    ``finetune_samples`` / ``test_samples`` limit the training and test images used (all by
    default); the smoke test uses them, the figures in docs/ use everything.
    """
    from . import zoo
    from ._backend import require_tensorflow
    from ._io import atomic_path
    from .costs import cost
    from .datasets import fashion_mnist, fashion_mnist_source
    from .evaluate import evaluate_tflite
    from .export import export_tflite
    from .factorization import factorize
    from .profiling import profile

    if not 0 < conv_macs_fraction <= 1:
        raise ValueError("`conv_macs_fraction` must be in (0, 1]. "
                         f"Received: conv_macs_fraction={conv_macs_fraction!r}")
    keras, _ = require_tensorflow()
    start = time.perf_counter()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)

    raw = fashion_mnist(verbose=False)
    (x_train, y_train), (x_test, y_test) = raw
    data_source = fashion_mnist_source()
    log(f"data: Fashion-MNIST from {data_source} ({len(x_train)} train, {len(x_test)} test)")
    x_train, x_test = zoo.prepare_images(x_train), zoo.prepare_images(x_test)
    x_train, y_train = x_train[:finetune_samples], y_train[:finetune_samples]
    x_test, y_test = x_test[:test_samples], y_test[:test_samples]

    baseline = zoo.load_fashion_cnn()
    baseline_source = "shipped with tflowrank (examples/train_fashion_cnn.py, 15 epochs)"
    if baseline is None:
        baseline_source = "trained now for 3 epochs (no shipped model in this installation)"
        log(f"baseline: {baseline_source}")
        baseline, _, _ = zoo.train_fashion_cnn(epochs=3, data=raw)
    else:
        log(f"baseline: {baseline_source}")

    base_cost = cost(baseline)
    names, fraction = _plan(base_cost, conv_macs_fraction)
    log(f"factorize: method={method!r} on {', '.join(names)} (each >= {_MIN_SHARE:.0%} of the "
        f"conv MACs), each keeping at most {fraction:.1%} of its MACs, so that the model keeps "
        f"at most {conv_macs_fraction:.0%} of its conv MACs")
    compressed = factorize(baseline, method, rank=fraction, layers=names)
    new_cost = cost(compressed)
    log(str(new_cost))
    reached = new_cost.macs_of(*_CONV_TYPES) / base_cost.macs_of(*_CONV_TYPES)
    log(f"conv MACs: {reached:.1%} of the baseline's")

    if finetune_epochs:
        log(f"fine-tune: {finetune_epochs} epoch(s) on {len(x_train)} images")
        steps = finetune_epochs * -(-len(x_train) // 128)
        zoo.compile_classifier(compressed, learning_rate=5e-4, decay_steps=steps)
        compressed.fit(x_train, y_train, batch_size=128, epochs=finetune_epochs, verbose=2)
    with atomic_path(out / "compressed.keras") as tmp:
        compressed.save(tmp)

    rows, files = [], []
    calibration = x_train[:500]
    for name, model, model_cost in (("baseline", baseline, base_cost),
                                     (f"{method} {conv_macs_fraction:g}", compressed, new_cost)):
        stem = "baseline" if model is baseline else "compressed"
        float_export = export_tflite(model, out / f"{stem}_float32.tflite", quantize=None)
        int8_export = export_tflite(model, out / f"{stem}_int8.tflite", quantize="int8",
                                    representative_data=calibration)
        log(f"export: {int8_export}")
        keras_accuracy = _keras_accuracy(model, x_test, y_test)
        int8_accuracy = evaluate_tflite(int8_export.path, x_test, y_test)
        files.append((float_export, int8_export))
        rows.append(dict(model=name, params=model.count_params(), macs=model_cost.macs,
                         conv_macs=model_cost.macs_of(*_CONV_TYPES),
                         keras_accuracy=keras_accuracy, float32_bytes=float_export.size_bytes,
                         int8_bytes=int8_export.size_bytes, int8_accuracy=int8_accuracy))
        log(f"{name}: Keras top-1 {keras_accuracy:.4f}, int8 TFLite top-1 {int8_accuracy:.4f}")

    paths = [str(e.path) for pair in files for e in pair]
    profiles = {p.model: p for p in profile(paths, threads=1, runs=runs, warmup_runs=5)}
    log(f"profile: {next(iter(profiles.values())).runner} on this host, 1 thread, {runs} runs "
        "per model")
    for row, (float_export, int8_export) in zip(rows, files):
        row["float32_latency_ms"] = _median_ms(profiles[str(float_export.path)])
        row["int8_latency_ms"] = _median_ms(profiles[str(int8_export.path)])
    result_rows = tuple(DemoRow(**row) for row in rows)
    table = format_table(result_rows)
    seconds = time.perf_counter() - start
    report = {
        "data_source": data_source,
        "finetune_images": len(x_train), "test_images": len(x_test),
        "baseline_source": baseline_source, "method": method,
        "conv_macs_fraction": conv_macs_fraction, "conv_macs_reached": reached,
        "finetune_epochs": finetune_epochs, "seconds": seconds,
        "rows": [asdict(r) for r in result_rows],
        "profiles": [p.to_dict() for p in profiles.values()],
    }
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("```\n" + table + "\n```\n")
    return DemoResult(output_dir=out, rows=result_rows, data_source=data_source,
                      baseline_source=baseline_source, seconds=seconds, table=table)


def _plan(model_cost, conv_macs_fraction):
    """Factorize the conv layers that hold at least 5% of the conv MACs; leave the cheap ones
    (the 1-channel first layer above all: it has little to gain and much to lose) and share the
    budget uniformly among the others."""
    convs = [c for c in model_cost.layers if c.class_name == "Conv2D" and c.macs]
    total = sum(c.macs for c in convs)
    big = [c for c in convs if c.macs >= _MIN_SHARE * total]
    kept = total - sum(c.macs for c in big)
    fraction = (conv_macs_fraction * total - kept) / sum(c.macs for c in big)
    if fraction <= 0:
        raise ValueError(f"`conv_macs_fraction`={conv_macs_fraction} is below the share of the "
                         f"conv MACs in layers too small to factorize ({kept / total:.1%}).")
    return [c.name.split("/")[-1] for c in big], min(fraction, 1.0)


def _median_ms(result):
    """Median latency in ms; the average where the benchmark tool printed no percentiles."""
    value = result.inference_median_us
    return (value if value is not None else result.inference_avg_us) / 1000


def _keras_accuracy(model, x, y):
    import numpy as np

    logits = model.predict(x, batch_size=512, verbose=0)
    return float(np.mean(np.argmax(logits, axis=1) == y))


def format_table(rows):
    """The demo's table: one line per model, then the ratios of the last to the first."""
    header = ("model", "params", "MACs", "conv MACs", "float32 KB", "int8 KB", "top-1 Keras",
              "top-1 int8", "float32 ms", "int8 ms")
    lines = [header]
    for r in rows:
        lines.append((r.model, f"{r.params:,}", f"{r.macs:,}", f"{r.conv_macs:,}",
                      f"{r.float32_bytes / 1024:.1f}", f"{r.int8_bytes / 1024:.1f}",
                      f"{r.keras_accuracy:.4f}", f"{r.int8_accuracy:.4f}",
                      f"{r.float32_latency_ms:.3f}", f"{r.int8_latency_ms:.3f}"))
    base, last = rows[0], rows[-1]
    lines.append(("ratio", f"{base.params / last.params:.2f}x", f"{base.macs / last.macs:.2f}x",
                  f"{base.conv_macs / last.conv_macs:.2f}x",
                  f"{base.float32_bytes / last.float32_bytes:.2f}x",
                  f"{base.int8_bytes / last.int8_bytes:.2f}x",
                  f"{100 * (last.keras_accuracy - base.keras_accuracy):+.2f} pt",
                  f"{100 * (last.int8_accuracy - base.int8_accuracy):+.2f} pt",
                  f"{base.float32_latency_ms / last.float32_latency_ms:.2f}x",
                  f"{base.int8_latency_ms / last.int8_latency_ms:.2f}x"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                      enumerate(zip(line, widths))) for line in lines]
    text.insert(1, "-" * len(text[0]))
    text.insert(-1, "-" * len(text[0]))
    return "\n".join(text)
