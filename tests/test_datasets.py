"""Tests of tflowrank.datasets: IDX parsing, source order, corrupt files, the shipped subset."""

import gzip
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tflowrank import datasets
from tflowrank.errors import TflowrankError

ROOT = Path(__file__).resolve().parents[1]
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
needs_debian = pytest.mark.skipif(
    not (DEBIAN / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
IMAGES, LABELS = 0x00000803, 0x00000801
NAMES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array, magic=None):
    """The IDX encoding of a uint8 array; ``magic`` overrides the right magic number."""
    if magic is None:
        magic = IMAGES if array.ndim == 3 else LABELS
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_idx(path, data):
    """Write IDX bytes to ``path``, gzipped if its name ends in .gz."""
    path = Path(path)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def small_data(n_train=20, n_test=10):
    """A tiny Fashion-MNIST look-alike: every class present, pixel values tied to the index."""
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8)
    y_train = (np.arange(n_train) % 10).astype(np.uint8)
    y_test = (np.arange(n_test)[::-1] % 10).astype(np.uint8)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def write_folder(folder, arrays, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in NAMES.items():
        write_idx(folder / (name + (".gz" if gz else "")), idx_bytes(arrays[key]))
    return folder


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No TFLOWRANK_DATA, and a search list of empty folders: the subset is the only source."""
    monkeypatch.delenv("TFLOWRANK_DATA", raising=False)
    monkeypatch.setattr(datasets, "_SEARCH_FOLDERS", (str(tmp_path / "none"),))
    return monkeypatch


def load_script():
    path = ROOT / "examples" / "make_fashion_subset.py"
    spec = importlib.util.spec_from_file_location("make_fashion_subset", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def debian_data():
    return datasets._read_folder(DEBIAN)


# --- real files -------------------------------------------------------------------------------


@needs_debian
def test_debian_files_load_like_keras(debian_data):
    (x_train, y_train), (x_test, y_test) = debian_data
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    for array in (x_train, y_train, x_test, y_test):
        assert array.dtype == np.uint8
        assert array.flags.writeable
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    assert 0 < x_test.mean() < 255


@needs_debian
def test_debian_folder_is_found_by_default(monkeypatch):
    monkeypatch.delenv("TFLOWRANK_DATA", raising=False)
    assert datasets.fashion_mnist_source() == str(DEBIAN)


def test_class_names_and_public_api():
    assert len(datasets.CLASS_NAMES) == 10
    assert datasets.CLASS_NAMES[0] == "T-shirt/top" and datasets.CLASS_NAMES[9] == "Ankle boot"
    assert sorted(datasets.__all__) == ["CLASS_NAMES", "fashion_mnist", "fashion_mnist_source"]


def test_does_not_import_keras_or_tensorflow(tmp_path):
    write_folder(tmp_path, small_data())
    code = (
        "import sys\n"
        "from tflowrank.datasets import fashion_mnist\n"
        "fashion_mnist(verbose=False)\n"
        "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))\n"
    )
    env = {"TFLOWRANK_DATA": str(tmp_path), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# --- TFLOWRANK_DATA and the search order --------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "plain"])
def test_tflowrank_data_folder_is_used(clean_env, tmp_path, capsys, gz):
    arrays = small_data()
    folder = write_folder(tmp_path / "data", arrays, gz=gz)
    clean_env.setenv("TFLOWRANK_DATA", str(folder))
    assert datasets.fashion_mnist_source() == str(folder)
    (x_train, y_train), (x_test, y_test) = datasets.fashion_mnist()
    for key, array in zip(NAMES, (x_train, y_train, x_test, y_test), strict=True):
        np.testing.assert_array_equal(array, arrays[key])
        assert array.dtype == np.uint8
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"tflowrank: Fashion-MNIST from {folder} (20 train, 10 test)\n"


def test_tflowrank_data_wins_over_search_folders(clean_env, tmp_path):
    first = write_folder(tmp_path / "first", small_data(20, 10))
    chosen = write_folder(tmp_path / "env", small_data(30, 20))
    clean_env.setattr(datasets, "_SEARCH_FOLDERS", (str(first),))
    clean_env.setenv("TFLOWRANK_DATA", str(chosen))
    (x_train, _), (x_test, _) = datasets.fashion_mnist(verbose=False)
    assert (len(x_train), len(x_test)) == (30, 20)


def test_first_complete_search_folder_wins(clean_env, tmp_path):
    incomplete = write_folder(tmp_path / "incomplete", small_data())
    (incomplete / "t10k-labels-idx1-ubyte.gz").unlink()
    second = write_folder(tmp_path / "second", small_data(30, 20))
    third = write_folder(tmp_path / "third", small_data(40, 10))
    clean_env.setattr(datasets, "_SEARCH_FOLDERS", (str(incomplete), str(second), str(third)))
    assert datasets.fashion_mnist_source() == str(second)
    (x_train, _), _ = datasets.fashion_mnist(verbose=False)
    assert len(x_train) == 30


def test_search_folder_expands_home(clean_env, tmp_path):
    write_folder(tmp_path / "home" / ".keras" / "datasets" / "fashion-mnist", small_data())
    clean_env.setenv("HOME", str(tmp_path / "home"))
    clean_env.setattr(datasets, "_SEARCH_FOLDERS", ("~/.keras/datasets/fashion-mnist",))
    expected = str(tmp_path / "home" / ".keras" / "datasets" / "fashion-mnist")
    assert datasets.fashion_mnist_source() == expected


def test_tflowrank_data_without_the_files_is_a_value_error(clean_env, tmp_path):
    folder = write_folder(tmp_path / "partial", small_data())
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    clean_env.setenv("TFLOWRANK_DATA", str(folder))
    for call in (datasets.fashion_mnist_source, datasets.fashion_mnist):
        with pytest.raises(ValueError) as error:
            call()
        message = str(error.value)
        assert f"TFLOWRANK_DATA={str(folder)!r}" in message
        assert "t10k-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message
        assert "train-images-idx3-ubyte" not in message


def test_tflowrank_data_naming_no_folder_is_a_value_error(clean_env, tmp_path):
    clean_env.setenv("TFLOWRANK_DATA", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="TFLOWRANK_DATA"):
        datasets.fashion_mnist()


# --- corrupt files ------------------------------------------------------------------------------


def _gz(key, magic=None, cut=slice(None), change=lambda a: a):
    """Spoiler: the gzipped IDX of ``change(arrays[key])`` with ``magic``, cut to ``cut``."""
    return lambda arrays: gzip.compress(idx_bytes(change(arrays[key]), magic)[cut])


CORRUPTIONS = {
    # case: (file to spoil, its new contents from the arrays, a phrase the message must hold)
    "truncated gzip": (
        "t10k-images-idx3-ubyte.gz",
        lambda a: gzip.compress(idx_bytes(a["x_test"]))[:500],
        "Cannot read",
    ),
    "not gzip": ("train-labels-idx1-ubyte.gz", lambda a: idx_bytes(a["y_train"]), "Cannot read"),
    "wrong magic": ("train-images-idx3-ubyte.gz", _gz("x_train", magic=LABELS), "magic"),
    "image magic on labels": ("t10k-labels-idx1-ubyte.gz", _gz("y_test", magic=IMAGES), "magic"),
    "short header": ("t10k-labels-idx1-ubyte.gz", _gz("y_test", cut=slice(6)), "header"),
    "short data": ("train-images-idx3-ubyte.gz", _gz("x_train", cut=slice(-28)), "truncated"),
    "count mismatch": (
        "t10k-labels-idx1-ubyte.gz",
        _gz("y_test", change=lambda y: y[:-1]),
        "9 labels",
    ),
    "bad labels": ("train-labels-idx1-ubyte.gz", _gz("y_train", change=lambda y: y + 5), "0..9"),
    "not 28x28": (
        "train-images-idx3-ubyte.gz",
        _gz("x_train", change=lambda x: x[:, :27]),
        "27x28",
    ),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_file_raises_tflowrank_error_naming_it(clean_env, tmp_path, case):
    name, spoil, phrase = CORRUPTIONS[case]
    arrays = small_data()
    folder = write_folder(tmp_path / "data", arrays)
    (folder / name).write_bytes(spoil(arrays))
    clean_env.setenv("TFLOWRANK_DATA", str(folder))
    with pytest.raises(TflowrankError) as error:
        datasets.fashion_mnist(verbose=False)
    message = str(error.value)
    assert str(folder / name) in message
    assert phrase in message


def test_plain_file_is_not_gunzipped(clean_env, tmp_path):
    """A plain (non-.gz) name holding raw IDX bytes is read as is."""
    arrays = small_data()
    folder = write_folder(tmp_path / "data", arrays, gz=False)
    (folder / "train-images-idx3-ubyte").write_bytes(idx_bytes(arrays["x_train"])[:-1])
    clean_env.setenv("TFLOWRANK_DATA", str(folder))
    with pytest.raises(TflowrankError, match="train-images-idx3-ubyte"):
        datasets.fashion_mnist(verbose=False)


# --- the shipped subset -------------------------------------------------------------------------


def test_subset_is_the_fallback_and_warns(clean_env, capsys):
    assert datasets.fashion_mnist_source() == "subset shipped with tflowrank"
    with pytest.warns(UserWarning, match="not comparable") as record:
        (x_train, y_train), (x_test, y_test) = datasets.fashion_mnist()
    message = str(record[0].message)
    assert "apt install dataset-fashion-mnist" in message and "TFLOWRANK_DATA" in message
    assert record[0].filename == __file__
    assert x_train.shape == (3000, 28, 28) and x_test.shape == (1000, 28, 28)
    assert y_train.shape == (3000,) and y_test.shape == (1000,)
    assert {a.dtype for a in (x_train, y_train, x_test, y_test)} == {np.dtype(np.uint8)}
    assert np.bincount(y_train).tolist() == [300] * 10
    assert np.bincount(y_test).tolist() == [100] * 10
    assert capsys.readouterr().err == (
        "tflowrank: Fashion-MNIST from subset shipped with tflowrank (3000 train, 1000 test)\n"
    )


def test_verbose_false_prints_nothing(clean_env, capsys):
    with pytest.warns(UserWarning):
        datasets.fashion_mnist(verbose=False)
    assert capsys.readouterr() == ("", "")


def test_subset_file_is_small():
    assert (ROOT / "tflowrank" / "data" / "fashion_mnist_subset.npz").stat().st_size < 2_500_000


@needs_debian
def test_shipped_subset_regenerates_identically(clean_env, debian_data):
    regenerated = load_script().make_subset(debian_data)
    with pytest.warns(UserWarning):
        (x_train, y_train), (x_test, y_test) = datasets.fashion_mnist(verbose=False)
    shipped = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    for key in NAMES:
        np.testing.assert_array_equal(regenerated[key], shipped[key], err_msg=key)


@needs_debian
def test_subset_images_come_from_the_full_data(debian_data):
    """The subset is drawn from the real images, not resampled or altered."""
    (x_train, _), (x_test, _) = debian_data
    subset = load_script().make_subset(debian_data, n_train=100, n_test=50, seed=3)
    full = {row.tobytes() for row in x_test}
    assert all(row.tobytes() in full for row in subset["x_test"])
    assert len({row.tobytes() for row in subset["x_train"]}) == 100


def test_make_subset_is_balanced_and_deterministic():
    script = load_script()
    arrays = small_data(200, 100)
    data = (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])
    a = script.make_subset(data, n_train=50, n_test=30, seed=0)
    b = script.make_subset(data, n_train=50, n_test=30, seed=0)
    c = script.make_subset(data, n_train=50, n_test=30, seed=1)
    for key in NAMES:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["x_train"], c["x_train"])
    assert np.bincount(a["y_train"]).tolist() == [5] * 10
    assert np.bincount(a["y_test"]).tolist() == [3] * 10


@pytest.mark.parametrize("n_train", [0, 15, 3000])
def test_make_subset_rejects_bad_sizes(n_train):
    arrays = small_data(200, 100)
    data = (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])
    with pytest.raises(ValueError, match=f"n_train={n_train}"):
        load_script().make_subset(data, n_train=n_train, n_test=10)


def test_script_writes_a_subset_that_loads(clean_env, tmp_path, capsys):
    source = write_folder(tmp_path / "full", small_data(40, 20))
    output = tmp_path / "out"
    output.mkdir()
    argv = ["--source", str(source), "--output", str(output / "s.npz")]
    argv += ["--train", "20", "--test", "10"]
    assert load_script().main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    assert [p.name for p in output.iterdir()] == ["s.npz"]  # no temporary file left behind
    with np.load(output / "s.npz") as npz:
        assert sorted(npz.files) == sorted(NAMES)
        assert npz["x_train"].shape == (20, 28, 28) and npz["y_test"].shape == (10,)
        assert np.bincount(npz["y_train"]).tolist() == [2] * 10


def test_script_reports_a_missing_source(tmp_path, capsys):
    argv = ["--source", str(tmp_path / "none"), "--output", str(tmp_path / "s.npz")]
    assert load_script().main(argv) == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err
    assert not (tmp_path / "s.npz").exists()
