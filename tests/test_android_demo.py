"""The Android demo (android_demo/, never built here: no Android SDK) agrees with what tflowrank writes.

ModelSpec.kt holds the app's model contract; these tests parse it and check it against an int8
export of the shipped Fashion-MNIST CNN, and check the sample asset and the benchmark script.
"""

import importlib.util
import os
import re
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tflowrank.datasets import CLASS_NAMES

DEMO = Path(__file__).resolve().parents[1] / "android_demo"
APP = DEMO / "app" / "src" / "main"
MODEL_SPEC = APP / "java" / "com" / "example" / "tflowrank" / "fashion" / "ModelSpec.kt"


def model_spec():
    """The constants of ModelSpec.kt: `const val X = "..."`, `val X = intArrayOf(...)`, `arrayOf("...")`."""
    text = MODEL_SPEC.read_text()
    spec = {name: value for name, value in re.findall(r'^\s*const val (\w+) = "([^"]*)"$', text, re.M)}
    for name, values in re.findall(r"^\s*val (\w+) = intArrayOf\(([^)]*)\)$", text, re.M):
        spec[name] = tuple(int(v) for v in values.split(","))
    for name, values in re.findall(r"^\s*val (\w+) = arrayOf\((.*)\)$", text, re.M):
        spec[name] = tuple(re.findall(r'"([^"]*)"', values))
    return spec


def decode_samples(data, magic):
    """fashion_samples.bin as documented in make_assets.py and read by FashionSamples.kt."""
    assert data[:4] == magic.encode("ascii")
    count, height, width = struct.unpack_from("<III", data, 4)
    record = 1 + height * width
    assert len(data) == 16 + count * record
    labels = np.array([data[16 + i * record] for i in range(count)])
    images = np.stack([
        np.frombuffer(data, np.uint8, height * width, 16 + i * record + 1).reshape(height, width)
        for i in range(count)
    ])
    return images, labels


def load_make_assets():
    spec = importlib.util.spec_from_file_location("make_assets", DEMO / "make_assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_spec_declares_the_whole_contract():
    spec = model_spec()
    assert set(spec) == {"MODEL_FILE", "INPUT_SHAPE", "INPUT_DTYPE", "OUTPUT_SHAPE", "OUTPUT_DTYPE",
                         "SAMPLES_FILE", "SAMPLES_MAGIC", "CLASS_NAMES"}, spec
    assert spec["CLASS_NAMES"] == CLASS_NAMES
    assert spec["OUTPUT_SHAPE"] == (1, len(CLASS_NAMES))


def test_the_other_mentions_of_the_model_file_agree_with_model_spec():
    name = model_spec()["MODEL_FILE"]
    # the Gradle check reads the name from ModelSpec.kt, the README and the script repeat it
    assert "const val MODEL_FILE" in (DEMO / "app" / "build.gradle.kts").read_text()
    assert f"app/src/main/assets/{name}" in (DEMO / "README.md").read_text()
    assert f'"$here/app/src/main/assets/{name}"' in (DEMO / "run_benchmark.sh").read_text()
    assert f"app/src/main/assets/*{Path(name).suffix}" in (DEMO / ".gitignore").read_text()


def test_sample_asset_decodes_to_labelled_images():
    spec = model_spec()
    images, labels = decode_samples((APP / "assets" / spec["SAMPLES_FILE"]).read_bytes(),
                                    spec["SAMPLES_MAGIC"])
    assert images.shape == (8, *spec["INPUT_SHAPE"][1:3]) and images.dtype == np.uint8
    assert len(set(labels.tolist())) == 8 and labels.max() < len(CLASS_NAMES)
    for image in images:  # a garment on a dark background, not noise or an empty frame
        assert image.max() > 200 and (image == 0).mean() > 0.2


def test_sample_asset_is_what_make_assets_writes(tmp_path):
    from tflowrank.datasets import fashion_mnist, fashion_mnist_source

    if fashion_mnist_source() == "subset shipped with tflowrank":
        pytest.skip("the asset was made from the full Fashion-MNIST test set")
    make_assets = load_make_assets()
    assert make_assets.MAGIC.decode() == model_spec()["SAMPLES_MAGIC"]
    assert make_assets.DEFAULT_OUTPUT == APP / "assets" / model_spec()["SAMPLES_FILE"]
    _, (x_test, y_test) = fashion_mnist(verbose=False)
    chosen = make_assets.select_samples(y_test, 8)
    committed = (APP / "assets" / model_spec()["SAMPLES_FILE"]).read_bytes()
    assert make_assets.encode(x_test[chosen], y_test[chosen]) == committed
    with pytest.raises(ValueError, match="`count` must be in"):
        make_assets.select_samples(y_test, 11)


@pytest.mark.slow
def test_model_spec_matches_an_int8_export_of_the_fashion_cnn(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from tflowrank import zoo
    from tflowrank.datasets import fashion_mnist
    from tflowrank.export import export_tflite

    spec = model_spec()
    (x_train, _), _ = fashion_mnist(verbose=False)
    result = export_tflite(zoo.load_fashion_cnn(), tmp_path / spec["MODEL_FILE"], quantize="int8",
                           representative_data=zoo.prepare_images(x_train[:200]),
                           int8_io=spec["INPUT_DTYPE"] == "int8")
    (inp,), (out,) = result.input_details, result.output_details
    assert result.path.name == spec["MODEL_FILE"]
    assert (tuple(inp.shape), inp.dtype) == (spec["INPUT_SHAPE"], spec["INPUT_DTYPE"])
    assert (tuple(out.shape), out.dtype) == (spec["OUTPUT_SHAPE"], spec["OUTPUT_DTYPE"])

    # what the app does: pixels / 255 into the float input, argmax of the logits
    images, labels = decode_samples((APP / "assets" / spec["SAMPLES_FILE"]).read_bytes(),
                                    spec["SAMPLES_MAGIC"])
    interpreter = Interpreter(model_path=str(result.path))
    interpreter.allocate_tensors()
    predictions = []
    for image in images:
        interpreter.set_tensor(inp.index, (image / np.float32(255)).reshape(spec["INPUT_SHAPE"]).astype(np.float32))
        interpreter.invoke()
        predictions.append(int(np.argmax(interpreter.get_tensor(out.index))))
    print(f"int8 model on the 8 samples: {predictions} vs labels {labels.tolist()}")
    assert np.sum(np.array(predictions) == labels) >= 7


def test_run_benchmark_calls_tflowrank_profile_on_android(tmp_path):
    fake = tmp_path / "tflowrank"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    binary = tmp_path / "android_aarch64_benchmark_model"
    binary.write_bytes(b"\x7fELF")
    model = tmp_path / "small_int8.tflite"
    model.write_bytes(b"model")
    env = {**os.environ, "TFLOWRANK": str(fake)}

    def run(*args):
        return subprocess.run(["bash", str(DEMO / "run_benchmark.sh"), *map(str, args)],
                              capture_output=True, text=True, env=env, timeout=60)

    result = run(binary, model, "--serial", "R58M123", "--threads", "4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["profile", "--target", "android", "--benchmark-binary",
                                          str(binary), "--serial", "R58M123", "--threads", "4", str(model)]

    default_model = APP / "assets" / model_spec()["MODEL_FILE"]
    result = run(binary)
    if default_model.is_file():
        assert result.stdout.splitlines()[-1] == str(default_model)
    else:
        assert result.returncode == 2 and "export it first" in result.stderr

    assert run().returncode == 2 and "Usage:" in run().stderr
    assert "benchmark binary" in run(tmp_path / "missing", model).stderr
    assert "needs a value" in run(binary, model, "--serial").stderr
    assert "unknown option '--fast'" in run(binary, model, "--fast").stderr
