"""A factorized model of the shipped, trained CNN exports to int8 as its chain, and agrees with Keras."""

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from tflowrank import export_tflite, factorize, zoo
from tflowrank.datasets import fashion_mnist
from tflowrank.tflite_model import inspect_tflite


@pytest.fixture(scope="module")
def data():
    (x_train, y_train), (x_test, y_test) = fashion_mnist(verbose=False)
    return (zoo.prepare_images(x_train[:4096]), y_train[:4096], zoo.prepare_images(x_test[:500]),
            y_test[:500])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["spatial", "svd"])
def test_int8_chain_runs_in_litert_and_agrees_with_keras(data, tmp_path, method):
    x_train, y_train, x, y = data
    keras.utils.set_random_seed(0)  # the fine-tune's shuffling: the same run every time
    model = factorize(zoo.load_fashion_cnn(), method, rank=0.5, layers=["conv2", "conv3", "conv4"])
    # the product's flow: a short fine-tune (here 2 epochs on 4096 images) before export
    zoo.compile_classifier(model, learning_rate=1e-3)
    model.fit(x_train, y_train, batch_size=128, epochs=2, verbose=0)
    calibration = x_train[:300]
    result = export_tflite(model, tmp_path / "m.tflite", quantize="int8",
                           representative_data=calibration)
    info = inspect_tflite(result.path)
    # conv1 stays one CONV_2D; each factorized conv is two, batch norm folded in
    assert result.ops["CONV_2D"] == 1 + 3 * 2
    assert info.is_fully_int8
    for op in info.op_list:
        if op.name == "CONV_2D":
            assert op.weight_dtype == "int8" and op.bias_dtype == "int32"
            assert op.per_channel or op.weight_shape[0] == 1  # one output channel: one scale

    interpreter = Interpreter(model_path=str(result.path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert tuple(inp["shape"]) == (1, 28, 28, 1)
    tflite_top1 = []
    for sample in x:
        interpreter.set_tensor(inp["index"], sample[None])
        interpreter.invoke()
        tflite_top1.append(int(np.argmax(interpreter.get_tensor(out["index"]))))
    keras_top1 = np.argmax(model.predict(x, verbose=0), axis=1)
    assert np.mean(keras_top1 == y) > 0.8  # a working classifier, not a broken one
    agreement = float(np.mean(np.asarray(tflite_top1) == keras_top1))
    assert agreement >= 0.98, agreement
