import hashlib
import re
import shutil
import subprocess

import numpy as np
import pytest

import tflowrank
from tflowrank.c_array import ARENA_MARGIN, CArrayResult, write_c_array


def fake_tflite(folder, size=1000, seed=0, name="model.tflite"):
    """Random bytes with the TFLite file identifier at bytes 4-8: all write_c_array checks."""
    data = bytearray(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    data[4:8] = b"TFL3"
    path = folder / name
    path.write_bytes(bytes(data))
    return path, bytes(data)


def array_bytes(source, variable="g_model"):
    """Parse the bytes of `variable` back from a generated .cc file."""
    match = re.search(rf"const unsigned char {variable}\[\] = \{{(.*?)\}};", source, re.S)
    assert match, source[:500]
    return bytes(int(token, 16) for token in re.findall(r"0x([0-9a-f]{2})", match.group(1)))


def test_round_trip_and_layout(tmp_path):
    model, data = fake_tflite(tmp_path, size=1000)  # 1000 = 83 full lines of 12 + 4
    result = write_c_array(model, tmp_path / "model_data.cc")

    assert result == CArrayResult(
        path=tmp_path / "model_data.cc", header_path=tmp_path / "model_data.h", variable="g_model",
        size_bytes=1000, sha256=hashlib.sha256(data).hexdigest(), arena_bytes=None,
        tensor_arena_size=None,
    )
    source = result.path.read_text()
    assert array_bytes(source) == data
    rows = [line for line in source.splitlines() if line.startswith("    0x")]
    assert [line.count("0x") for line in rows] == [12] * 83 + [4]
    assert "const unsigned int g_model_len = 1000;" in source
    assert '#include "model_data.h"' in source
    for text in (source, result.header_path.read_text()):
        assert f"tflowrank {tflowrank.__version__} from model.tflite" in text
        assert f"1000 bytes, sha256 {hashlib.sha256(data).hexdigest()}" in text

    header = result.header_path.read_text()
    assert "extern const unsigned char g_model[1000];" in header
    assert "extern const unsigned int g_model_len;" in header
    assert "#ifndef TFLOWRANK_MODEL_DATA_H_" in header and "kTensorArenaSize" not in header
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite", "model_data.cc", "model_data.h"]


def test_array_is_aligned_for_tflm(tmp_path):
    model, _ = fake_tflite(tmp_path)
    result = write_c_array(model, tmp_path / "m.cc", variable="g_person_model")
    assert "alignas(16) const unsigned char g_person_model[] = {" in result.path.read_text()
    assert "const unsigned int g_person_model_len = 1000;" in result.path.read_text()


def test_arena_suggestion_adds_the_margin_and_rounds_to_16(tmp_path):
    model, _ = fake_tflite(tmp_path)
    result = write_c_array(model, tmp_path / "m.cc", arena_bytes=52016)
    assert ARENA_MARGIN == 0.10
    assert result.arena_bytes == 52016
    assert result.tensor_arena_size == 57232  # ceil(52016 * 1.1) = 57218, rounded up to 16
    header = result.header_path.read_text()
    assert "constexpr int kTensorArenaSize = 57232;" in header
    assert "52016 bytes used" in header and "+ 10% margin" in header
    assert "kTensorArenaSize = 57232, is in m.h" in result.path.read_text()
    for used in (1, 15, 16, 1000, 12345):
        size = write_c_array(model, tmp_path / "m.cc", arena_bytes=used).tensor_arena_size
        assert size % 16 == 0 and used * 1.1 <= size < used * 1.1 + 16


@pytest.mark.parametrize("bad", ["1model", "g-model", "g model", "", "int", "class", "alignas",
                                 "naïve", "model.data"])
def test_variable_must_be_a_c_identifier(tmp_path, bad):
    model, _ = fake_tflite(tmp_path)
    with pytest.raises(ValueError, match=rf"`variable` must be a C identifier.*Received: variable={re.escape(repr(bad))}"):
        write_c_array(model, tmp_path / "m.cc", variable=bad)
    assert not (tmp_path / "m.cc").exists() and not (tmp_path / "m.h").exists()


def test_bad_inputs(tmp_path):
    model, _ = fake_tflite(tmp_path)
    with pytest.raises(TypeError, match="`variable` must be a str.*Received: variable of type bytes"):
        write_c_array(model, tmp_path / "m.cc", variable=b"g_model")
    with pytest.raises(ValueError, match="File of `tflite_path` does not exist"):
        write_c_array(tmp_path / "missing.tflite", tmp_path / "m.cc")
    for suffix in (".h", ".c", ".txt", ""):
        with pytest.raises(ValueError, match=rf"`path` must be a C\+\+ source file.*Received: path='.*m{suffix}'"):
            write_c_array(model, tmp_path / f"m{suffix}")
    with pytest.raises(ValueError, match="The folder of `path` does not exist"):
        write_c_array(model, tmp_path / "nowhere" / "m.cc")
    for bad in (0, -1, 1.5, True, "lots", "MEASURE"):
        with pytest.raises(ValueError, match=rf"`arena_bytes` must be None, a positive integer.*arena_bytes={re.escape(repr(bad))}"):
            write_c_array(model, tmp_path / "m.cc", arena_bytes=bad)

    not_tflite = tmp_path / "notes.tflite"
    not_tflite.write_text("hello, I am not a flatbuffer")
    with pytest.raises(ValueError, match=r"`tflite_path` is not a TFLite flatbuffer.*notes.tflite' \(28 bytes\)"):
        write_c_array(not_tflite, tmp_path / "m.cc")
    # a model someone named .cc must not be overwritten by its own array
    odd, data = fake_tflite(tmp_path, name="odd.cc")
    with pytest.raises(ValueError, match="`path` would overwrite the model itself"):
        write_c_array(odd, odd)
    assert odd.read_bytes() == data
    assert not list(tmp_path.glob("*.h")) and not list(tmp_path.glob(".*tmp*"))


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_generated_files_compile_link_and_hold_the_model(tmp_path):
    model, data = fake_tflite(tmp_path, size=20_000, seed=3)
    write_c_array(model, tmp_path / "model_data.cc", arena_bytes=10_000)
    (tmp_path / "main.cc").write_text(
        "#include <cstdint>\n#include <cstdio>\n#include \"model_data.h\"\n"
        "static_assert(kTensorArenaSize % 16 == 0, \"arena size is a multiple of 16\");\n"
        "alignas(16) static unsigned char tensor_arena[kTensorArenaSize];\n"
        "int main() {\n"
        "  if (sizeof(g_model) != g_model_len) return 2;\n"
        "  if (reinterpret_cast<std::uintptr_t>(g_model) % 16 != 0) return 3;\n"
        "  tensor_arena[0] = g_model[4];\n"
        "  std::fwrite(g_model, 1, sizeof(g_model), stdout);\n"
        "  return tensor_arena[0] == 'T' ? 0 : 4;\n"
        "}\n"
    )
    compile_ = ["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-O0"]
    for command in (compile_ + ["-c", "model_data.cc", "-o", "model_data.o"],
                    compile_ + ["main.cc", "model_data.o", "-o", "main"]):
        built = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert built.returncode == 0, built.stderr
    run = subprocess.run([str(tmp_path / "main")], capture_output=True, timeout=60)
    assert run.returncode == 0, run.returncode
    assert run.stdout == data


@pytest.mark.slow
def test_measured_arena_is_what_tflite_micro_reports(tmp_path):
    pytest.importorskip("tflite_micro")
    import keras

    from tflowrank.export import export_tflite
    from tflowrank.micro import run_micro

    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    outputs = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x))
    calibration = np.random.default_rng(0).uniform(size=(32, 12, 12, 1)).astype("float32")
    exported = export_tflite(keras.Model(inputs, outputs), tmp_path / "tiny.tflite",
                             representative_data=calibration)

    result = write_c_array(exported.path, tmp_path / "tiny.cc", variable="g_tiny",
                           arena_bytes="measure")
    expected = run_micro(exported.path, calibration[:1]).arena_total_bytes
    assert result.arena_bytes == expected > 0
    assert result.tensor_arena_size % 16 == 0 and expected * 1.1 <= result.tensor_arena_size < expected * 1.1 + 16
    assert f"constexpr int kTensorArenaSize = {result.tensor_arena_size};" in result.header_path.read_text()
    assert array_bytes(result.path.read_text(), "g_tiny") == exported.path.read_bytes()
