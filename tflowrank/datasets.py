"""Fashion-MNIST without Keras: read the IDX files from disk, or fall back to a shipped subset.

``fashion_mnist()`` returns exactly what ``keras.datasets.fashion_mnist.load_data()`` returns
(uint8 images ``(N, 28, 28)``, uint8 labels ``(N,)``) but never downloads anything and imports
neither Keras nor TensorFlow. The first folder holding the four IDX files wins:

1. the folder named by the environment variable ``TFLOWRANK_DATA`` (an error if it lacks them),
2. ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``),
3. ``~/.keras/datasets/fashion-mnist`` (the Keras download cache),
4. else a balanced subset shipped with tflowrank (3000 train, 1000 test), with a warning.

Format: Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms", arXiv:1708.07747 (2017); IDX as defined by LeCun et al. for MNIST.
"""

import gzip
import importlib.resources
import os
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np

from tflowrank.errors import TflowrankError

__all__ = ["CLASS_NAMES", "fashion_mnist", "fashion_mnist_source"]

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_ENV_VAR = "TFLOWRANK_DATA"
# Searched in order after TFLOWRANK_DATA; a tuple so tests can monkeypatch it.
_SEARCH_FOLDERS = ("/usr/share/datasets/fashion-mnist", "~/.keras/datasets/fashion-mnist")
_SUBSET_SOURCE = "subset shipped with tflowrank"
_SUBSET_RESOURCE = "data/fashion_mnist_subset.npz"

# key -> (file name without .gz, IDX magic number)
_IMAGES, _LABELS = 0x00000803, 0x00000801
_FILES = {
    "x_train": ("train-images-idx3-ubyte", _IMAGES),
    "y_train": ("train-labels-idx1-ubyte", _LABELS),
    "x_test": ("t10k-images-idx3-ubyte", _IMAGES),
    "y_test": ("t10k-labels-idx1-ubyte", _LABELS),
}


def fashion_mnist(verbose=True):
    """Load Fashion-MNIST as ``((x_train, y_train), (x_test, y_test))``, like Keras does.

    Args:
        verbose: print one line to stderr naming the source used and the image counts.

    Raises:
        ValueError: ``TFLOWRANK_DATA`` is set but its folder lacks the four files.
        TflowrankError: a file is corrupt or truncated; the message names the file.
    """
    source = fashion_mnist_source()
    data = _read_subset() if source == _SUBSET_SOURCE else _read_folder(source)
    (x_train, _), (x_test, _) = data
    if source == _SUBSET_SOURCE:
        warnings.warn(
            "Fashion-MNIST was not found on this machine; using the small subset shipped with "
            f"tflowrank ({len(x_train)} train, {len(x_test)} test images). Results measured on "
            "it are not comparable to results on the full 10000-image test set. To use the full "
            "data, run `apt install dataset-fashion-mnist` or set TFLOWRANK_DATA to a folder "
            "holding the four IDX files.",
            UserWarning,
            stacklevel=2,
        )
    if verbose:
        print(
            f"tflowrank: Fashion-MNIST from {source} ({len(x_train)} train, {len(x_test)} test)",
            file=sys.stderr,
        )
    return data


def fashion_mnist_source():
    """Return the folder ``fashion_mnist()`` would read, or ``"subset shipped with tflowrank"``.

    Only looks for the files; nothing is read.
    """
    env = os.environ.get(_ENV_VAR)
    if env:
        missing = _find_files(env)[1]
        if missing:
            raise ValueError(
                f"The folder named by the environment variable {_ENV_VAR} lacks Fashion-MNIST "
                f"files (each may also end in .gz): {', '.join(missing)}. "
                f"Received: {_ENV_VAR}={env!r}"
            )
        return env
    for folder in _SEARCH_FOLDERS:
        folder = os.path.expanduser(str(folder))
        if not _find_files(folder)[1]:
            return folder
    return _SUBSET_SOURCE


def _find_files(folder):
    """Return ``({key: path}, [missing names])``; ``name.gz`` is preferred over ``name``."""
    found, missing = {}, []
    for key, (name, _) in _FILES.items():
        for candidate in (Path(folder, name + ".gz"), Path(folder, name)):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            missing.append(name)
    return found, missing


def _read_folder(folder):
    """Read and check the four IDX files of ``folder``."""
    files, missing = _find_files(folder)
    if missing:
        raise ValueError(
            f"`folder` lacks Fashion-MNIST files: {', '.join(missing)}. "
            f"Received: folder={str(folder)!r}"
        )
    arrays = {key: _read_idx(files[key], _FILES[key][1]) for key in _FILES}
    for split in ("train", "test"):
        images, labels = f"x_{split}", f"y_{split}"
        if len(arrays[images]) != len(arrays[labels]):
            raise TflowrankError(
                f"Fashion-MNIST {split} files disagree: {str(files[images])!r} holds "
                f"{len(arrays[images])} images but {str(files[labels])!r} holds "
                f"{len(arrays[labels])} labels."
            )
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _read_idx(path, magic):
    """Parse one IDX file (gzipped if its name ends in .gz) into a writable uint8 array."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise TflowrankError(f"Cannot read {str(path)!r}: {error}") from error

    ndim = 3 if magic == _IMAGES else 1
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise TflowrankError(
            f"{str(path)!r} is truncated: {len(raw)} bytes, shorter than its "
            f"{header}-byte IDX header."
        )
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise TflowrankError(
            f"{str(path)!r} has the wrong IDX magic number: expected 0x{magic:08x} "
            f"({'images' if magic == _IMAGES else 'labels'}), found 0x{found:08x}."
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if ndim == 3 and shape[1:] != (28, 28):
        raise TflowrankError(f"{str(path)!r} holds {shape[1]}x{shape[2]} images, not 28x28.")
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise TflowrankError(
            f"{str(path)!r} is truncated or corrupt: its header announces shape {shape} "
            f"({expected} bytes of data) but {len(raw) - header} bytes follow the header."
        )
    array = np.frombuffer(raw, np.uint8, count=expected, offset=header).reshape(shape).copy()
    if ndim == 1 and array.size and array.max() > 9:
        bad = np.unique(array[array > 9])
        raise TflowrankError(
            f"{str(path)!r} holds labels outside 0..9: {bad[:10].tolist()} "
            f"(first at index {int(np.argmax(array > 9))})."
        )
    return array


def _read_subset():
    resource = importlib.resources.files("tflowrank").joinpath(_SUBSET_RESOURCE)
    try:
        with resource.open("rb") as f, np.load(f) as npz:
            arrays = {key: npz[key] for key in _FILES}
    except (OSError, KeyError, ValueError) as error:
        raise TflowrankError(
            f"The Fashion-MNIST subset shipped with tflowrank ({_SUBSET_RESOURCE}) cannot be read; "
            f"reinstall tflowrank or regenerate it with examples/make_fashion_subset.py: {error}"
        ) from error
    return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])
