"""Write the demo app's sample images: app/src/main/assets/fashion_samples.bin.

    python android_demo/make_assets.py              # 8 test images, one per class, ~6 KB

The images are the first test image of each of the first ``--count`` distinct labels met in the
Fashion-MNIST test set (``tflowrank.datasets.fashion_mnist``), so the file is the same on every
machine that has the full data set. The format, read by FashionSamples.kt (all integers
little-endian):

    bytes 0-3    the magic b"FMS1" (ModelSpec.SAMPLES_MAGIC)
    uint32       count N
    uint32       height H (28)
    uint32       width W (28)
    N records    uint8 label (0-9, tflowrank.datasets.CLASS_NAMES), then H*W uint8 pixels,
                 row-major, as in the data set (0 = background; the app divides by 255)
"""

import argparse
import struct
import sys
from pathlib import Path

import numpy as np

MAGIC = b"FMS1"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "app" / "src" / "main" / "assets" / "fashion_samples.bin"


def select_samples(labels, count):
    """Indices of the first image of each of the first ``count`` distinct labels, in test-set order."""
    labels = np.asarray(labels)
    _, first = np.unique(labels, return_index=True)
    first = np.sort(first)
    if count < 1 or count > len(first):
        raise ValueError(
            f"`count` must be in [1, {len(first)}] (the number of classes). Received: count={count}"
        )
    return first[:count]


def encode(images, labels):
    """The bytes of fashion_samples.bin for uint8 ``images`` (N, H, W) and ``labels`` (N,)."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 3 or len(images) != len(labels):
        raise ValueError(
            "`images` must be uint8 (N, H, W) with one label each. "
            f"Received: images {images.dtype} {images.shape}, {len(labels)} labels"
        )
    count, height, width = images.shape
    parts = [MAGIC, struct.pack("<III", count, height, width)]
    for image, label in zip(images, labels):
        parts += [struct.pack("<B", int(label)), image.tobytes(order="C")]
    return b"".join(parts)


def main(argv=None):
    from tflowrank.datasets import CLASS_NAMES, fashion_mnist

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8, help="number of images (default 8)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the .bin file to write")
    args = parser.parse_args(argv)

    _, (x_test, y_test) = fashion_mnist()
    chosen = select_samples(y_test, args.count)
    data = encode(x_test[chosen], y_test[chosen])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(data)
    names = ", ".join(CLASS_NAMES[y_test[i]] for i in chosen)
    print(f"wrote {args.output} ({len(data)} bytes): test images {chosen.tolist()} ({names})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
