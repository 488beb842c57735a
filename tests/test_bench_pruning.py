"""bench/_pruning.py: the budget is shared out exactly; a short tfmot run prunes to it and exports int8."""

import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import _pruning  # noqa: E402

from tflowrank import interop, zoo  # noqa: E402
from tflowrank.errors import ToolError  # noqa: E402
from tflowrank.tflite_model import inspect_tflite  # noqa: E402

# fashion_cnn(): kernels 288 + 18432 + 36864 + 73728 (conv1-4) + 1280 (logits);
# dense: 4 x 32/64/64/128 batch-normalisation values + 10 biases
KERNELS = {"conv1": 288, "conv2": 18432, "conv3": 36864, "conv4": 73728, "logits": 1280}
DENSE = 4 * (32 + 64 + 64 + 128) + 10


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    model = zoo.fashion_cnn()
    path = interop.save_portable(model, tmp_path_factory.mktemp("plan") / "cnn.npz")
    return model, path


@pytest.mark.parametrize("divisor", [1, 2, 3, 10, 97])
def test_plan_keeps_exactly_the_budget_in_proportion(portable, divisor):
    model, path = portable
    keep = model.count_params() // divisor
    plan = _pruning.pruning_plan(path, keep)
    assert plan["params"] == model.count_params() == sum(KERNELS.values()) + DENSE
    assert plan["dense_params"] == DENSE
    assert {n: layer["size"] for n, layer in plan["layers"].items()} == KERNELS
    assert DENSE + sum(layer["keep"] for layer in plan["layers"].values()) == keep
    for layer in plan["layers"].values():  # the same sparsity everywhere, up to rounding
        assert 1 <= layer["keep"] <= layer["size"]
        assert abs(layer["keep"] / layer["size"] - (1 - plan["target_sparsity"])) < 2 / layer["size"] + 1e-3


def test_unreachable_budgets_and_bad_arguments_are_refused(portable, tmp_path):
    model, path = portable
    total = model.count_params()
    for keep in (total + 1, DENSE + 4):
        with pytest.raises(ValueError, match=rf"keep_params must be between {DENSE + 5} and "
                                             rf"{total}. Received: keep_params={keep}"):
            _pruning.pruning_plan(path, keep)
    x, y = np.zeros((4, 28, 28, 1), "float32"), np.zeros(4, "int64")
    with pytest.raises(ValueError, match="`keep_params` must be a whole number.*keep_params=10.5"):
        _pruning.magnitude_pruning(model, 10.5, x, y, 1, tmp_path)
    with pytest.raises(ValueError, match="`epochs` must be a positive integer. Received: epochs=0"):
        _pruning.magnitude_pruning(model, 1000, x, y, 0, tmp_path)
    with pytest.raises(ValueError, match="`schedule` must be one of.*schedule='cubic'"):
        _pruning.magnitude_pruning(model, 1000, x, y, 1, tmp_path, schedule="cubic")
    with pytest.raises(ValueError, match=r"len\(x_train\)=4, len\(y_train\)=3"):
        _pruning.magnitude_pruning(model, 1000, x, y[:3], 1, tmp_path)


def test_a_failing_tf_keras_process_raises_with_its_output(tmp_path):
    with pytest.raises(ToolError, match=r"(?s)exit status 1.*FileNotFoundError.*job\.json"):
        _pruning._run_child(tmp_path)  # no job.json: the child fails before importing TensorFlow


@pytest.mark.slow
def test_prunes_to_the_budget_and_exports_int8(tmp_path, monkeypatch):
    for module in ("tf_keras", "tensorflow_model_optimization"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install 'tflowrank[tfmot]')")
    from tflowrank.datasets import fashion_mnist

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    (x_train, y_train), (x_test, y_test) = fashion_mnist(verbose=False)
    x_train, y_train = zoo.prepare_images(x_train[:512]), y_train[:512]
    x_test, y_test = zoo.prepare_images(x_test[:300]), y_test[:300]
    model = zoo.load_fashion_cnn()
    keep = model.count_params() // 3
    weights = [w.copy() for w in model.get_weights()]

    result = _pruning.magnitude_pruning(model, keep, x_train, y_train, 1, tmp_path / "out",
                                        calibration=64, x_val=x_test, y_val=y_test)

    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights(), strict=True))
    assert result["method"] == "tfmot magnitude pruning" and result["schedule"] == "polynomial"
    assert result["nonzero_params"] == result["keep_params"] == keep
    assert result["sparsity"] == pytest.approx(result["target_sparsity"], abs=1e-9)
    assert 0.6 < result["sparsity"] < 0.7
    assert all(layer["nonzero"] == layer["target"] for layer in result["layers"].values())
    assert result["nonzero_macs"] < result["macs"] / 2
    path = Path(result["int8_path"])
    assert path == (tmp_path / "out" / "pruned_int8.tflite").resolve() and path.is_file()
    assert result["int8_bytes"] == path.stat().st_size
    assert result["int8_gzip_bytes"] == _pruning.gzip_size(path) < result["int8_bytes"] * 0.75
    assert result["int8_ops"]["CONV_2D"] == 4 and result["int8_ops"]["QUANTIZE"] == 1
    info = inspect_tflite(path)
    (inp,), (out,) = info.input_details, info.output_details
    assert (inp.shape, inp.dtype, out.shape, out.dtype) == ((1, 28, 28, 1), "float32", (1, 10),
                                                            "float32")
    assert not list(scratch.iterdir())  # the temporary folder is gone

    evaluated = _pruning.evaluate_pruned(result, x_test, y_test, runs=5, warmup_runs=1)
    assert evaluated["inference_median_us"] > 0
    # 4 steps cannot recover from pruning 2/3 of the kernels (one-shot pruning alone leaves about
    # 18% top-1; bench/auto.py fine-tunes for epochs): only check that int8 follows the Keras model
    assert abs(evaluated["int8_top1"] - result["keras_top1"]) < 0.05
