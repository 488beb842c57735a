"""Each method on the shipped trained CNN: its int8 op chain, LiteRT, TFLite Micro, and the value of data."""

import warnings

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tflowrank import cost, export_tflite, factorize, zoo
from tflowrank.datasets import fashion_mnist

# CONV_2D and DEPTHWISE_CONV_2D ops that replace ONE factorized conv
CHAINS = {
    "spatial": (2, 0),
    "svd": (2, 0),
    "tucker2": (3, 0),
    "cp": (2, 2),
    "tucker2_spatial": (4, 0),
    "output": (2, 0),
}


@pytest.fixture(scope="module")
def data():
    (x_train, _), (x_test, y_test) = fashion_mnist(verbose=False)
    return zoo.prepare_images(x_train[:512]), zoo.prepare_images(x_test[:1000]), y_test[:1000]


@pytest.fixture(scope="module")
def baseline():
    return zoo.load_fashion_cnn()


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, batch_size=500, verbose=0), axis=1) == y))


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(CHAINS))
def test_int8_chain_per_method_runs_in_litert_and_tflm(baseline, data, tmp_path, method):
    calibration, x, _ = data
    extra = {"data": calibration} if method == "output" else {}
    model = factorize(baseline, method, rank=0.5, layers=["conv3"], **extra)
    result = export_tflite(model, tmp_path / f"{method}.tflite", quantize="int8",
                           representative_data=calibration[:200], int8_io=True)
    conv, depthwise = CHAINS[method]
    # conv1, conv2 and conv4 stay one CONV_2D each
    assert result.ops["CONV_2D"] == 3 + conv
    assert result.ops.get("DEPTHWISE_CONV_2D", 0) == depthwise

    scale, zero = result.input_details[0].scale, result.input_details[0].zero_point
    inputs = np.clip(np.round(x[:16] / scale) + zero, -128, 127).astype(np.int8)
    xnnpack = _run_litert(result.path, inputs)  # the default: XNNPACK
    reference = _run_litert(result.path, inputs, OpResolverType.BUILTIN_REF)
    # XNNPACK rounds differently from the reference kernels (up to 16 LSB on the logits of the CP
    # chain, measured); the class it predicts is what must not change
    assert np.mean(xnnpack.argmax(axis=1) == reference.argmax(axis=1)) >= 15 / 16

    micro = pytest.importorskip("tflowrank.micro")
    pytest.importorskip("tflite_micro")
    run = micro.run_micro(result.path, inputs)
    assert run.arena_total_bytes > 0
    # TFLM runs the same reference kernels as LiteRT's BUILTIN_REF: the same integers
    assert micro.max_lsb_difference(run.outputs.reshape(reference.shape), reference) <= 1


def _run_litert(path, inputs, resolver=None):
    options = {} if resolver is None else {"experimental_op_resolver_type": resolver}
    interpreter = Interpreter(model_path=str(path), **options)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for sample in inputs:
        interpreter.set_tensor(inp["index"], sample[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(out["index"])[0])
    return np.asarray(outputs)


@pytest.mark.slow
def test_output_beats_data_free_svd_at_equal_macs_before_fine_tuning(baseline, data):
    calibration, x, y = data
    layers = ["conv2", "conv3", "conv4"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        svd = factorize(baseline, "svd", rank=0.33, layers=layers)
        output = factorize(baseline, "output", rank=0.33, layers=layers, data=calibration)
    assert [r.rank for r in cost(svd).layers] == [r.rank for r in cost(output).layers]
    assert cost(svd).macs == cost(output).macs
    svd_accuracy, output_accuracy = _accuracy(svd, x, y), _accuracy(output, x, y)
    assert output_accuracy >= svd_accuracy, (output_accuracy, svd_accuracy)
    assert output_accuracy > 0.8  # at 3x fewer MACs in these layers, with no fine-tuning
