"""Import Keras and TensorFlow on demand and check that Keras runs on TensorFlow."""

import importlib
import json
import os
from pathlib import Path

_SWITCH = (
    "tflowrank needs the TensorFlow backend of Keras; found backend {found!r}. "
    "Set the environment variable KERAS_BACKEND=tensorflow before Keras is first imported "
    "(or set \"backend\": \"tensorflow\" in ~/.keras/keras.json)."
)


def _configured_backend():
    """The backend Keras will pick, read the way Keras reads it, without importing Keras."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    try:
        return json.loads((home / "keras.json").read_text()).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def is_dataset(data):
    """Whether ``data`` is a ``tf.data.Dataset``, without importing TensorFlow (a dataset exists
    only once TensorFlow is imported)."""
    import sys

    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(data, tf.data.Dataset)


def require_tensorflow():
    """Return ``(keras, tensorflow)``; raise ``BackendError`` if Keras uses another backend."""
    from .errors import BackendError

    try:
        keras = importlib.import_module("keras")
    except ImportError as error:
        found = _configured_backend()
        if found != "tensorflow":
            raise BackendError(f"{_SWITCH.format(found=found)} (Keras failed to import with it: "
                               f"{error})") from error
        raise
    found = keras.backend.backend()
    if found != "tensorflow":
        raise BackendError(_SWITCH.format(found=found))
    return keras, importlib.import_module("tensorflow")
