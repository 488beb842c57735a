import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from tflowrank import micro
from tflowrank.errors import TflowrankError, ToolError
from tflowrank.micro import (
    check_micro,
    max_lsb_difference,
    micro_supported_ops,
    parse_allocations,
    run_micro,
)

FIXTURE = Path(__file__).parent / "fixtures" / "tflm_print_allocations.txt"


def build(activation=None):
    """Conv2D, a (3, 1) conv, a depthwise conv, Flatten and a Dense of 512 x 10 weights."""
    import keras

    layers = keras.layers
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = layers.Conv2D(8, (3, 1), padding="same", activation=activation)(x)
    x = layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    model = keras.Model(inputs, layers.Dense(10)(layers.Flatten()(x)))
    for w in model.weights:  # non-zero biases: the converter drops all-zero ones
        if len(w.shape) == 1:
            w.assign(np.random.default_rng(1).normal(0.0, 0.1, w.shape).astype("float32"))
    return model


def samples(n, seed):
    return np.random.default_rng(seed).normal(size=(n, 8, 8, 1)).astype("float32")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tflowrank.export import export_tflite

    folder = tmp_path_factory.mktemp("micro")
    model, calibration = build(), samples(64, seed=0)
    return {
        "int8": export_tflite(model, folder / "int8.tflite", representative_data=calibration, int8_io=True),
        "float_io": export_tflite(model, folder / "float_io.tflite", representative_data=calibration),
        "dynamic": export_tflite(model, folder / "dynamic.tflite", quantize="dynamic"),
    }


def litert_outputs(path, x):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    results = []
    for sample in x:
        interpreter.set_tensor(inp["index"], sample[None])
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"]))
    return np.concatenate(results)


def quantize(x, detail):
    return np.clip(np.round(x / detail.scale + detail.zero_point), -128, 127).astype(np.int8)


def test_parse_allocations_reads_the_fixture():
    report = parse_allocations(FIXTURE.read_text())
    assert (report["arena_total_bytes"], report["arena_head_bytes"], report["arena_tail_bytes"]) == (
        52016,
        49152,
        2864,
    )
    assert report["arena_head_bytes"] + report["arena_tail_bytes"] == report["arena_total_bytes"]
    assert report["allocations"] == {
        "TfLiteEvalTensor data": {"used_bytes": 408, "requested_bytes": 408, "count": 17},
        "Persistent TfLiteTensor data": {"used_bytes": 128, "requested_bytes": 128, "count": 2},
        "Persistent TfLiteTensor quantization data": {"used_bytes": 64, "requested_bytes": 64, "count": 4},
        "Persistent buffer data": {"used_bytes": 1216, "requested_bytes": 1172, "count": 18},
        "NodeAndRegistration struct": {"used_bytes": 384, "requested_bytes": 384, "count": 6},
    }


def test_parse_allocations_rejects_other_text():
    with pytest.raises(ValueError, match=r"`text` is not a TFLM allocation report.*Arena allocation total"):
        parse_allocations("Didn't find op for builtin opcode 'GELU'\n")
    with pytest.raises(TypeError, match="`text` must be a str. Received: text of type bytes"):
        parse_allocations(FIXTURE.read_bytes())


def test_max_lsb_difference():
    a = np.array([[-128, 0, 127]], np.int8)
    b = np.array([[-127, 0, 125]], np.int8)
    assert max_lsb_difference(a, b) == 2 and type(max_lsb_difference(a, b)) is int
    assert max_lsb_difference(np.array([127], np.int8), np.array([-128], np.int8)) == 255  # no wrap
    assert max_lsb_difference(a, a) == 0
    with pytest.raises(TypeError, match="`b` must hold quantized integers.*Received: b of dtype float32"):
        max_lsb_difference(a, b.astype(np.float32))
    with pytest.raises(ValueError, match=r"Received: a.shape=\(1, 3\), b.shape=\(3,\)"):
        max_lsb_difference(a, b[0])


def test_captured_fds_takes_output_written_by_c_and_restores_the_fds():
    before = [os.fstat(fd).st_ino for fd in (1, 2)]
    with tempfile.TemporaryFile() as sink:
        with micro._captured_fds(sink):
            os.write(2, b"[RecordingMicroAllocator] to fd 2\n")  # what C's fprintf(stderr) does
            os.write(1, b"to fd 1\n")
        with pytest.raises(RuntimeError, match="boom"), micro._captured_fds(sink):
            raise RuntimeError("boom")
        sink.seek(0)
        assert sink.read() == b"[RecordingMicroAllocator] to fd 2\nto fd 1\n"
    assert [os.fstat(fd).st_ino for fd in (1, 2)] == before


def test_micro_supported_ops():
    ops = micro_supported_ops()
    assert isinstance(ops, frozenset)
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "RESHAPE", "QUANTIZE", "DEQUANTIZE"} <= ops
    assert "CUSTOM:TFLite_Detection_PostProcess" in ops
    assert not {"GELU", "TOPK_V2", "CUSTOM:ethos-u"} & ops


@pytest.mark.slow
def test_int8_model_matches_litert_within_one_lsb(models):
    pytest.importorskip("tflite_micro")
    path = models["int8"].path
    x = quantize(samples(20, seed=5), models["int8"].input_details[0])
    run = run_micro(path, x)
    expected = litert_outputs(path, x)
    assert run.outputs.dtype == np.int8 and run.outputs.shape == expected.shape == (20, 10)
    difference = max_lsb_difference(run.outputs, expected)
    print(f"TFLM vs LiteRT: max difference {difference} LSB on 20 inputs")
    assert difference <= 1
    assert run.ops == {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 1, "RESHAPE": 1, "FULLY_CONNECTED": 1}
    assert 0 < run.arena_head_bytes and 0 < run.arena_tail_bytes
    assert run.arena_head_bytes + run.arena_tail_bytes <= run.arena_total_bytes <= run.arena_size
    assert run.arena_size == micro._AUTO_ARENA_START

    # float inputs are quantized with the input scale and zero point
    floats = (x.astype(np.float32) - models["int8"].input_details[0].zero_point) * models[
        "int8"
    ].input_details[0].scale
    np.testing.assert_array_equal(run_micro(path, floats).outputs, run.outputs)


@pytest.mark.slow
def test_float_io_model_runs(models):
    pytest.importorskip("tflite_micro")
    path = models["float_io"].path
    assert check_micro(path) == []
    x = samples(8, seed=6)
    run = run_micro(path, x)
    assert run.outputs.dtype == np.float32 and run.outputs.shape == (8, 10)
    assert run.ops["QUANTIZE"] == run.ops["DEQUANTIZE"] == 1
    # both exports are calibrated on the same data, so they share the output scale
    step = models["int8"].output_details[0].scale
    np.testing.assert_allclose(run.outputs, litert_outputs(path, x), rtol=0, atol=1.01 * step)
    assert run.arena_head_bytes + run.arena_tail_bytes <= run.arena_total_bytes <= run.arena_size


@pytest.mark.slow
def test_arena_size_is_checked_and_grown(models, monkeypatch):
    pytest.importorskip("tflite_micro")
    path = models["int8"].path
    x = np.zeros((1, 8, 8, 1), np.int8)
    needed = run_micro(path, x).arena_total_bytes
    exact = run_micro(path, x, arena_size=needed)
    assert exact.arena_size == exact.arena_total_bytes == needed
    with pytest.raises(ToolError, match=rf"tensor arena is too small.*Received: arena_size={needed // 2}"):
        run_micro(path, x, arena_size=needed // 2)
    monkeypatch.setattr(micro, "_AUTO_ARENA_START", needed // 2)
    assert run_micro(path, x).arena_size == 4 * (needed // 2)  # grown once, by 4x


@pytest.mark.slow
def test_dynamic_range_model_is_refused_before_tflm(models):
    path = models["dynamic"].path
    (problem,) = check_micro(path)
    assert "hybrid" in problem and "FULLY_CONNECTED x1" in problem
    with pytest.raises(
        TflowrankError, match=r"TFLite Micro cannot run .*dynamic.tflite.*hybrid.*quantize='int8'"
    ):
        run_micro(path, samples(2, seed=7))


@pytest.mark.slow
def test_unsupported_op_is_refused_before_tflm(tmp_path):
    from tflowrank.export import export_tflite

    gelu = export_tflite(build("gelu"), tmp_path / "gelu.tflite", representative_data=samples(32, 0))
    assert gelu.ops["GELU"] == 1
    assert check_micro(gelu.path) == ["TFLite Micro has no kernel for these ops: GELU x1"]
    with pytest.raises(TflowrankError, match="TFLite Micro has no kernel for these ops: GELU x1"):
        run_micro(gelu.path, samples(1, seed=8))


@pytest.mark.slow
def test_a_crash_in_tflm_does_not_end_the_caller(models, monkeypatch):
    pytest.importorskip("tflite_micro")
    crash = [sys.executable, "-c", "import os; os.abort()"]
    monkeypatch.setattr(micro, "_worker_command", lambda *args: crash)
    with pytest.raises(ToolError, match="TFLite Micro crashed.*killed by SIGABRT") as info:
        run_micro(models["int8"].path, np.zeros((1, 8, 8, 1), np.int8))
    assert info.value.command == tuple(crash)


@pytest.mark.slow
def test_bad_arguments(models, monkeypatch):
    path = models["int8"].path
    x = np.zeros((1, 8, 8, 1), np.int8)
    for bad in (0, -1, 1.5, True, "1024"):
        with pytest.raises(ValueError, match=rf"`arena_size` must be a positive integer.*arena_size={bad!r}"):
            run_micro(path, x, arena_size=bad)
    with pytest.raises(
        ValueError, match=r"`inputs` must have shape \(N, 8, 8, 1\).*inputs.shape=\(8, 8, 1\)"
    ):
        run_micro(path, x[0])
    with pytest.raises(ValueError, match="`inputs` is empty"):
        run_micro(path, x[:0])
    with pytest.raises(ValueError, match="File of `path` does not exist"):
        run_micro(path.with_name("missing.tflite"), x)
    monkeypatch.setitem(sys.modules, "tflite_micro", None)  # as if not installed
    with pytest.raises(
        TflowrankError, match=r"TFLite Micro is not installed: pip install 'tflowrank\[micro\]'"
    ):
        run_micro(path, x)
