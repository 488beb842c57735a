"""Regenerate tflowrank/data/fashion_mnist_subset.npz, the fallback of tflowrank.datasets.

    python examples/make_fashion_subset.py                    # from the Debian files
    python examples/make_fashion_subset.py --source DIR --output subset.npz

(tflowrank must be importable: ``pip install -e .``, or ``PYTHONPATH=.`` from the repository.)

The subset is balanced (the same number of images per class) and depends only on the source
files and the seed: ``make_subset`` uses NumPy's legacy ``RandomState``, whose stream NumPy keeps
frozen across versions (NEP 19), so the same seed selects the same images everywhere.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from tflowrank._io import atomic_path, output_path
from tflowrank.datasets import _read_folder
from tflowrank.errors import TflowrankError

DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
DEFAULT_OUTPUT = (
    Path(__file__).resolve().parents[1] / "tflowrank" / "data" / "fashion_mnist_subset.npz"
)
NUM_CLASSES = 10


def balanced_indices(labels, n, rng, argument="n"):
    """Sorted indices of ``n`` items of ``labels``, ``n // 10`` drawn at random from each class."""
    if not isinstance(n, int) or n <= 0 or n % NUM_CLASSES:
        raise ValueError(
            f"`{argument}` must be a positive multiple of {NUM_CLASSES}. Received: {argument}={n!r}"
        )
    per_class = n // NUM_CLASSES
    chosen = []
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(
                f"Class {c} has only {len(members)} items, fewer than the {per_class} asked "
                f"for. Received: {argument}={n}"
            )
        chosen.append(rng.permutation(members)[:per_class])
    return np.sort(np.concatenate(chosen))


def make_subset(data, n_train=3000, n_test=1000, seed=0):
    """Return the arrays of a balanced subset of ``((x_train, y_train), (x_test, y_test))``."""
    (x_train, y_train), (x_test, y_test) = data
    rng = np.random.RandomState(seed)
    train = balanced_indices(y_train, n_train, rng, "n_train")
    test = balanced_indices(y_test, n_test, rng, "n_test")
    return {
        "x_train": x_train[train],
        "y_train": y_train[train],
        "x_test": x_test[test],
        "y_test": y_test[test],
    }


def write_subset(arrays, path):
    """Write ``arrays`` with ``np.savez_compressed``; the file appears whole or not at all."""
    path = output_path(path, "output")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="folder of the four IDX files")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="the .npz to write")
    parser.add_argument("--train", type=int, default=3000, help="train images (multiple of 10)")
    parser.add_argument("--test", type=int, default=1000, help="test images (multiple of 10)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        arrays = make_subset(_read_folder(args.source), args.train, args.test, args.seed)
        path = write_subset(arrays, args.output)
    except (ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TflowrankError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"wrote {path} ({len(arrays['x_train'])} train, {len(arrays['x_test'])} test, "
        f"{path.stat().st_size} bytes)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
