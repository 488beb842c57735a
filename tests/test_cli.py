"""The tflowrank command: each subcommand works, and every failure is one sentence with exit 2."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

from tflowrank.cli import main, parse_rank


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    inputs = keras.Input((12, 12, 1), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4, name="head")(x)
    model = keras.Model(inputs, outputs)
    for w in model.weights:
        w.assign(rng.normal(scale=0.3, size=w.shape))
    path = folder / "model.keras"
    model.save(path)
    np.save(folder / "calib.npy", rng.uniform(size=(20, 12, 12, 1)).astype("float32"))
    return path


def run(*argv):
    """Run the CLI in a subprocess, as a user would; return (code, stdout, stderr)."""
    result = subprocess.run([sys.executable, "-m", "tflowrank", *map(str, argv)],
                            capture_output=True, text=True, timeout=300)
    return result.returncode, result.stdout, result.stderr


def test_parse_rank():
    assert parse_rank("8") == 8 and parse_rank("0.4") == 0.4
    assert parse_rank("c1=4, c2=0.5") == {"c1": 4, "c2": 0.5}
    assert parse_rank("16x32") == (16, 32) and parse_rank("vbmf") == "vbmf"
    assert parse_rank("c1=energy:0.9,c2=8x8") == {"c1": "energy:0.9", "c2": (8, 8)}


def test_cost(model_file, capsys):
    assert main(["cost", str(model_file)]) == 0
    out = capsys.readouterr().out
    assert "c1" in out and "Conv2D" in out and "total" in out


@pytest.mark.slow
def test_factorize_export_profile_chain(model_file, tmp_path):
    factorized = tmp_path / "small.keras"
    code, out, err = run("factorize", model_file, "-o", factorized, "--method", "spatial",
                         "--rank", "c2=4")
    assert code == 0, err
    assert "SpatialConv2D" in out and "4/48" in out and factorized.is_file()
    tflite = tmp_path / "small.tflite"
    code, out, err = run("export", factorized, "-o", tflite, "--quantize", "int8",
                         "--data", model_file.parent / "calib.npy")
    assert code == 0, err
    assert "CONV_2D x3" in out and tflite.is_file()
    report = tmp_path / "profile.json"
    code, out, err = run("profile", tflite, tflite, "--runs", "3", "--repeats", "2", "--json", report)
    assert code == 0, err
    timed = json.loads(report.read_text())
    assert len(timed) == 2 and all(t["repeats"] == 2 and len(t["repeat_medians_us"]) == 2 for t in timed)


@pytest.mark.parametrize("argv, message", [
    (["cost", "missing.keras"], "tflowrank cost: error: Model file 'missing.keras' does not exist."),
    (["factorize", "MODEL", "-o", "OUT/new.keras", "--method", "tucker", "--rank", "2"],
     "tflowrank factorize: error: Unknown factorization method. Expected one of 'spatial', 'svd', 'tucker2', 'cp', 'tucker2_spatial', 'output'. "
     "Received: method='tucker'"),
    (["factorize", "MODEL", "-o", "OUT/new.keras", "--method", "svd", "--rank", "0"],
     "tflowrank factorize: error: `rank` must be a positive rank. Received: rank=0"),
    (["factorize", "MODEL", "-o", "OUT/new.keras", "--method", "svd", "--rank", "x"],
     "tflowrank factorize: error: --rank must be an int, a float, RxR, energy:<share>, vbmf or "
     "name=value pairs of those; received 'x'."),
    (["factorize", "MODEL", "-o", "OUT/new.keras", "--method", "svd", "--rank", "2", "--layers",
      "nope"], "tflowrank factorize: error: Layer name(s) 'nope' not found in the model."),
    (["factorize", "MODEL", "-o", "OUT/missing/new.keras", "--method", "svd", "--rank", "2"],
     "tflowrank factorize: error: The folder of `--output` does not exist:"),
    (["export", "MODEL", "-o", "OUT/m.tflite"],
     "tflowrank export: error: --quantize int8 needs calibration inputs:"),
    (["export", "MODEL", "-o", "OUT/m.tflite", "--data", "OUT/none.npy"],
     "tflowrank export: error: Calibration data file"),
    (["profile", "OUT/none.tflite"], "tflowrank profile: error: Model file 'OUT/none.tflite' does not exist."),
    (["cost", "GARBAGE"], "tflowrank cost: error: Could not read model"),
])
def test_failures_are_one_sentence_and_exit_2(model_file, tmp_path, capsys, argv, message):
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a zip file")
    argv = [a.replace("MODEL", str(model_file)).replace("OUT", str(tmp_path))
            .replace("GARBAGE", str(garbage)) for a in argv]
    message = message.replace("OUT", str(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_subprocess_failure_has_no_traceback(tmp_path):
    code, out, err = run("cost", tmp_path / "nope.keras")
    assert code == 2
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"tflowrank cost: error: Model file '{tmp_path / 'nope.keras'}' does not exist."


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: tflowrank" in capsys.readouterr().out


@pytest.mark.slow
def test_factorize_with_a_target_and_with_data(model_file, tmp_path, capsys):
    out = tmp_path / "t.keras"
    assert main(["factorize", str(model_file), "-o", str(out), "--method", "tucker2",
                 "--target-macs", "0.5", "--layers", "c2"]) == 0
    text = capsys.readouterr().out
    assert "TuckerConv2D" in text and "(target_macs 0.5)" in text
    out = tmp_path / "o.keras"
    assert main(["factorize", str(model_file), "-o", str(out), "--method", "output",
                 "--rank", "energy:0.9", "--layers", "c2",
                 "--data", str(model_file.parent / "calib.npy")]) == 0
    assert "SVDConv2D" in capsys.readouterr().out and out.is_file()


def test_rank_and_target_together_is_a_usage_error(model_file, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["factorize", str(model_file), "-o", str(tmp_path / "x.keras"), "--method", "svd",
              "--rank", "2", "--target-macs", "0.5"])
    assert exit_info.value.code == 2


@pytest.mark.slow
def test_export_with_a_c_array(model_file, tmp_path, capsys):
    out = tmp_path / "m.tflite"
    assert main(["export", str(model_file), "-o", str(out), "--data",
                 str(model_file.parent / "calib.npy"), "--c-array", str(tmp_path / "m.cc"),
                 "--arena", "4096"]) == 0
    text = capsys.readouterr().out
    assert "kTensorArenaSize" in text and (tmp_path / "m.h").is_file()
    assert main(["export", str(model_file), "-o", str(out), "--quantize", "none",
                 "--arena", "measure"]) == 2
    assert "--arena needs --c-array." in capsys.readouterr().err
