"""Train the baseline Fashion-MNIST CNN and save it where tflowrank ships it.

    python examples/train_fashion_cnn.py                 # 15 epochs, ~10 min on 2 cores
    python examples/train_fashion_cnn.py --epochs 3 --output /tmp/cnn.keras

Writes the model atomically and prints its test accuracy; the shipped copy in
tflowrank/data/fashion_cnn.keras was produced by the first command.
"""

import argparse
import json
from importlib import resources

from tflowrank import zoo
from tflowrank._io import atomic_path, output_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = resources.files("tflowrank") / "data" / zoo.SHIPPED_MODEL
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(default), help="the .keras file to write")
    args = parser.parse_args(argv)
    path = output_path(args.output, "--output")
    model, history, accuracy = zoo.train_fashion_cnn(args.epochs, args.batch_size, args.seed)
    with atomic_path(path) as tmp:
        model.save(tmp)
    summary = {"output": str(path), "epochs": args.epochs, "test_accuracy": accuracy,
               "params": model.count_params()}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
