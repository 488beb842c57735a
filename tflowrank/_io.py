"""Path checks and atomic writes: outputs appear whole or not at all."""

import contextlib
import os
import tempfile
from pathlib import Path


def output_path(path, argument="path"):
    """Return ``path`` as a Path after checking that its folder exists."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{argument}` must be a path (str or os.PathLike). Received: {argument}={path!r}")
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(
            f"The folder of `{argument}` does not exist: {str(folder)!r}. "
            f"Received: {argument}={str(path)!r}"
        )
    if path.is_dir():
        raise ValueError(f"`{argument}` is a folder, not a file. Received: {argument}={str(path)!r}")
    return path


def input_path(path, argument="path"):
    """Return ``path`` as a Path after checking that the file exists."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{argument}` must be a path (str or os.PathLike). Received: {argument}={path!r}")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"File of `{argument}` does not exist: {str(path)!r}")
    return path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds."""
    path = Path(path)
    # keep the suffix: some writers (keras .save) insist on it
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes_atomic(path, data):
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


def child_env(**defaults):
    """The caller's environment, with this copy of tflowrank first on a child process's import
    path, and ``defaults`` for the variables the caller does not set."""
    root = str(Path(__file__).resolve().parents[1])
    paths = [root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**defaults, **os.environ, "PYTHONPATH": os.pathsep.join(paths)}
