"""Factorize with tflowrank (Keras 3), then quantization-aware training with tfmot (tf_keras).

    pip install -e ".[tfmot]"
    python examples/tfmot_interop.py                                  # ~3 min on 2 cores
    python examples/tfmot_interop.py --train-samples 512 --test-samples 500 --output /tmp/ti

tensorflow-model-optimization 0.8 quantizes tf_keras (Keras 2) models only, and wants
``TF_USE_LEGACY_KERAS=1`` set before TensorFlow starts. So the work is split over two processes:

1. this process (Keras 3): factorize conv2-conv4 of the shipped Fashion-MNIST CNN
   (``tflowrank.factorize``) and write it with ``tflowrank.interop.save_portable``: every
   factorized layer becomes its plain steps (Conv2D / DepthwiseConv2D / Dense ...);
2. a child process started with ``TF_USE_LEGACY_KERAS=1`` (this script with ``--tf-keras-side``):
   ``tflowrank.interop.load_tf_keras`` rebuilds the model with tf_keras layers,
   ``tfmot.quantization.keras.quantize_model`` wraps it, a short fine-tuning adapts it to int8,
   and ``tf.lite.TFLiteConverter`` writes a full-int8 ``.tflite``, whose accuracy LiteRT measures.

Outputs in ``--output``: factorized.npz (the portable model), qat_int8.tflite, report.json.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

LAYERS = ["conv2", "conv3", "conv4"]


def keras3_side(args, out):
    import tflowrank
    from tflowrank import zoo
    from tflowrank.interop import save_portable

    baseline = zoo.load_fashion_cnn()
    factorized = tflowrank.factorize(baseline, args.method, rank=args.rank, layers=LAYERS)
    path = save_portable(factorized, out / "factorized.npz")
    cost, base_cost = tflowrank.cost(factorized), tflowrank.cost(baseline)
    print(f"factorized {', '.join(LAYERS)} with {args.method!r}: {cost.macs / 1e6:.2f} M MACs "
          f"(baseline {base_cost.macs / 1e6:.2f} M); portable model: {path}")
    return {"method": args.method, "rank": args.rank, "macs": cost.macs,
            "baseline_macs": base_cost.macs}


def tf_keras_side(args, out):
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras
    from ai_edge_litert.interpreter import Interpreter

    from tflowrank import zoo
    from tflowrank.datasets import fashion_mnist
    from tflowrank.interop import load_tf_keras

    (x_train, y_train), (x_test, y_test) = fashion_mnist()
    x_train, y_train = zoo.prepare_images(x_train[: args.train_samples]), y_train[: args.train_samples]
    x_test, y_test = zoo.prepare_images(x_test[: args.test_samples]), y_test[: args.test_samples]

    model = load_tf_keras(out / "factorized.npz")
    float_accuracy = float(np.mean(model.predict(x_test, verbose=0).argmax(1) == y_test))
    qat = tfmot.quantization.keras.quantize_model(model)
    qat.compile(optimizer=tf_keras.optimizers.Adam(args.learning_rate),
                loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
    tf_keras.utils.set_random_seed(args.seed)
    qat.fit(x_train, y_train, batch_size=64, epochs=args.epochs, verbose=2)

    converter = tf.lite.TFLiteConverter.from_keras_model(qat)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x_train[i:i + 1]] for i in range(min(200, len(x_train))))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    path = out / "qat_int8.tflite"
    path.write_bytes(converter.convert())

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (inp,), (outp,) = interpreter.get_input_details(), interpreter.get_output_details()
    scale, zero = inp["quantization"]
    hits = 0
    for image, label in zip(x_test, y_test):
        quantized = np.clip(np.round(image / scale + zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], quantized[None])
        interpreter.invoke()
        hits += int(interpreter.get_tensor(outp["index"])[0].argmax() == label)
    int8_accuracy = hits / len(y_test)
    print(f"float (tf_keras) accuracy {float_accuracy:.4f}; QAT int8 TFLite accuracy "
          f"{int8_accuracy:.4f} ({path}, {path.stat().st_size / 1024:.1f} KB, input "
          f"{np.dtype(inp['dtype']).name}, output {np.dtype(outp['dtype']).name})")
    return {"float_accuracy": float_accuracy, "int8_accuracy": int8_accuracy,
            "tflite_bytes": path.stat().st_size, "test_samples": len(y_test)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="spatial", help="factorization method (default spatial)")
    parser.add_argument("--rank", type=float, default=0.4,
                        help="share of each factorized layer's MACs to keep (default 0.4)")
    parser.add_argument("--epochs", type=int, default=1, help="QAT fine-tuning epochs (default 1)")
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--train-samples", type=int, default=5000,
                        help="training images for QAT and calibration (default 5000)")
    parser.add_argument("--test-samples", type=int, default=2000, help="default 2000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="tfmot_interop", help="folder for the outputs")
    parser.add_argument("--tf-keras-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    if args.tf_keras_side:
        (out / "tf_keras_side.json").write_text(json.dumps(tf_keras_side(args, out)))
        return 0
    report = keras3_side(args, out)
    child = [sys.executable, __file__, "--tf-keras-side", *(argv if argv is not None else sys.argv[1:])]
    subprocess.run(child, check=True, env=dict(os.environ, TF_USE_LEGACY_KERAS="1"))
    report.update(json.loads((out / "tf_keras_side.json").read_text()))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
