import re

import keras  # noqa: E402
import numpy as np
import pytest

from tflowrank.export import export_tflite  # noqa: E402
from tflowrank.profiling import ProfileResult, format_profiles, profile  # noqa: E402

FIELDS = {
    "model",
    "target",
    "runner",
    "init_us",
    "first_inference_us",
    "warmup_avg_us",
    "inference_avg_us",
    "inference_median_us",
    "inference_std_us",
    "peak_memory_mb",
    "size_bytes",
    "threads",
    "runs",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A float and an int8 .tflite of the same tiny CNN."""
    folder = tmp_path_factory.mktemp("profile")
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.Flatten()(x)))
    calibration = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    return [
        export_tflite(model, folder / "float.tflite", quantize=None).path,
        export_tflite(model, folder / "int8.tflite", representative_data=calibration).path,
    ]


@pytest.mark.slow
def test_profile_two_models_in_order(models):
    results = profile(models, runs=5, warmup_runs=2)
    assert [r.model for r in results] == [str(p) for p in models]
    for result, path in zip(results, models, strict=True):
        assert isinstance(result, ProfileResult)
        assert FIELDS <= set(result.to_dict())
        assert (result.target, result.runner, result.threads, result.runs) == (
            "host",
            "litert-python",
            1,
            5,
        )
        assert result.size_bytes == path.stat().st_size
        assert result.peak_memory_mb is None
        for name in (
            "init_us",
            "first_inference_us",
            "warmup_avg_us",
            "inference_avg_us",
            "inference_median_us",
        ):
            assert 0 < getattr(result, name) < 10_000_000, name
        assert result.inference_std_us >= 0


@pytest.mark.slow
def test_one_path_no_warmup_and_threads(models):
    (result,) = profile(str(models[1]), runs=1, warmup_runs=0, threads=2)
    assert result.model == str(models[1]) and result.threads == 2
    assert result.warmup_avg_us == result.first_inference_us  # the first inference is the warm-up
    assert result.inference_std_us == 0


def _result(model, avg_us, size_bytes=2048):
    return ProfileResult(
        model=model,
        target="host",
        runner="litert-python",
        threads=1,
        runs=3,
        init_us=1.0,
        first_inference_us=2.0,
        warmup_avg_us=2.0,
        inference_avg_us=avg_us,
        inference_median_us=avg_us,
        inference_std_us=10.0,
        peak_memory_mb=None,
        size_bytes=size_bytes,
    )


def test_format_profiles_ratios_against_the_first():
    table = format_profiles([_result("base.tflite", 2000.0), _result("small.tflite", 500.0, 1024)])
    header, rule, base, small = table.splitlines()
    assert header.split() == [
        "model",
        "size",
        "KB",
        "avg",
        "ms",
        "median",
        "ms",
        "std",
        "ms",
        "ratio",
        "vs",
        "first",
    ]
    assert set(rule) == {"-", " "}
    assert base.split() == ["base.tflite", "2.0", "2.000", "2.000", "0.010", "1.00x"]
    assert small.split() == ["small.tflite", "1.0", "0.500", "0.500", "0.010", "0.25x"]


def test_unknown_target():
    with pytest.raises(
        ValueError, match=re.escape("`target` must be one of 'host', 'android', 'micro'. Received: target='ios'")
    ):
        profile("m.tflite", target="ios")


@pytest.mark.parametrize(
    ("argument", "value", "minimum"),
    [
        ("threads", 0, 1),
        ("runs", 0, 1),
        ("warmup_runs", -1, 0),
        ("runs", 2.5, 1),
        ("threads", True, 1),
    ],
)
def test_bad_counts(argument, value, minimum):
    message = f"`{argument}` must be an integer >= {minimum}. Received: {argument}={value!r}"
    with pytest.raises(ValueError, match=re.escape(message)):
        profile("m.tflite", **{argument: value})


def test_missing_file(tmp_path):
    path = tmp_path / "none.tflite"
    with pytest.raises(
        ValueError, match=re.escape(f"File of `paths` does not exist: {str(path)!r}")
    ):
        profile([path])


def test_no_paths():
    with pytest.raises(ValueError, match=re.escape("Received: paths=[]")):
        profile([])
