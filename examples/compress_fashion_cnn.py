"""Compress the baseline Fashion-MNIST CNN with the public API, step by step.

    python examples/compress_fashion_cnn.py                       # ~3 min on 2 cores
    python examples/compress_fashion_cnn.py --method svd --fraction 0.3 --output /tmp/fm

The stages `tflowrank.compress` chains, written by hand with one method and one uniform rank
share: factorize -> fine-tune -> int8 export -> accuracy of Keras and TFLite -> host latency.
"""

import argparse
from pathlib import Path

import numpy as np

import tflowrank
from tflowrank import zoo
from tflowrank.datasets import fashion_mnist


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="spatial", choices=["spatial", "svd"])
    parser.add_argument("--fraction", type=float, default=0.4, help="MACs kept per layer")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-samples", type=int, default=None, help="default: all 60000")
    parser.add_argument("--output", default="fashion_compressed", help="folder for the outputs")
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    (x_train, y_train), (x_test, y_test) = fashion_mnist()
    x_train, x_test = zoo.prepare_images(x_train), zoo.prepare_images(x_test)
    x_train, y_train = x_train[: args.train_samples], y_train[: args.train_samples]

    baseline = zoo.load_fashion_cnn()
    # the three expensive convolutions; conv1 (one input channel) gains little and loses much
    small = tflowrank.factorize(baseline, args.method, rank=args.fraction,
                                layers=["conv2", "conv3", "conv4"])
    print(tflowrank.cost(small))

    zoo.compile_classifier(small, learning_rate=5e-4)
    small.fit(x_train, y_train, batch_size=128, epochs=args.epochs, verbose=2)
    keras_top1 = float(np.mean(small.predict(x_test, verbose=0).argmax(1) == y_test))

    exported = tflowrank.export_tflite(small, out / "small_int8.tflite", quantize="int8",
                                       representative_data=x_train[:500])
    print(exported)
    int8_top1 = tflowrank.evaluate_tflite(exported.path, x_test, y_test)
    (timing,) = tflowrank.profile(exported.path, runs=50)
    print(f"top-1: Keras {keras_top1:.4f}, int8 TFLite {int8_top1:.4f}; "
          f"{exported.size_bytes / 1024:.1f} KB; {timing.inference_median_us / 1000:.3f} ms "
          "median on this host (LiteRT, XNNPACK, 1 thread)")


if __name__ == "__main__":
    main()
