"""The main job on embedded defaults: ``tflowrank.compress`` on the shipped Fashion-MNIST CNN.

Baseline (shipped, or trained when missing) -> ``compress`` to a third of its MACs: per-layer
sensitivity search (spatial wherever it applies, svd elsewhere), factorization, refit,
fine-tuning whose last tenth of an epoch is quantization-aware, int8 export, Keras and int8
TFLite accuracy on the test set, host latency -> the report folder and one table.
``tflowrank demo`` and ``make demo`` run it.
"""

import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DemoResult", "run_demo"]


@dataclass(frozen=True)
class DemoResult:
    output_dir: Path
    compression: object  # the CompressionResult
    data_source: str
    baseline_source: str
    seconds: float
    table: str


def run_demo(output_dir="tflowrank-demo", target=1 / 3, cost="macs", finetune_epochs=2, qat=True,
             runs=50, seed=0, finetune_samples=None, test_samples=None, methods=None, candidates=10,
             log=print):
    """Run the demo, write its report folder to ``output_dir``, return the result.

    ``finetune_samples`` / ``test_samples`` limit the training and test images used (all by
    default); the smoke test uses them, the figures in docs/ use everything.
    """
    from . import zoo
    from ._backend import require_tensorflow
    from .compression import compress
    from .datasets import fashion_mnist, fashion_mnist_source

    require_tensorflow()
    start = time.perf_counter()
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
    result = compress(baseline, (x_train, y_train), (x_test, y_test), target, cost=cost,
                      finetune_epochs=finetune_epochs, qat=qat, output_dir=output_dir,
                      methods=methods, candidates=candidates, profile_runs=runs, seed=seed, log=log)
    return DemoResult(output_dir=Path(output_dir), compression=result, data_source=data_source,
                      baseline_source=baseline_source, seconds=time.perf_counter() - start,
                      table=str(result))
