"""Fashion-MNIST CNN to a microcontroller: factorize, int8, TFLite Micro, C array.

    python examples/fashion_to_micro.py                           # ~4 min on 2 cores
    python examples/fashion_to_micro.py --epochs 0 --output /tmp/fm   # no fine-tuning, ~1 min

Steps, with the public API:

1. factorize conv2-conv4 of the shipped baseline with method "spatial" (k x 1 then 1 x k), each
   keeping at most ``--rank`` of its MACs; conv1 (one input channel) gains little and loses much;
2. fine-tune briefly (``--epochs``, on ``--train-samples`` images; a few hundred steps at least,
   or the batch-normalization statistics still describe the unfactorized layers);
3. export the baseline and the compressed model to full int8 with int8 input and output, as a
   microcontroller runs them;
4. top-1 accuracy of both with LiteRT, and host latency (``tflowrank.profile``, XNNPACK);
5. run both with TensorFlow Lite Micro (``tflowrank.micro.run_micro``): the tensor arena they
   need, and parity with LiteRT's reference kernels (``OpResolverType.BUILTIN_REF``), which
   implement the same integer arithmetic;
6. write the compressed model as a C++ array with a suggested ``kTensorArenaSize``.

Outputs in ``--output``: baseline_int8.tflite, compressed_int8.tflite, compressed.keras,
fashion_model_data.cc / .h and report.json.
"""

import argparse
import json
from pathlib import Path

import numpy as np

import tflowrank
from tflowrank import zoo
from tflowrank.c_array import write_c_array
from tflowrank.datasets import fashion_mnist
from tflowrank.micro import max_lsb_difference, run_micro

LAYERS = ["conv2", "conv3", "conv4"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=float, default=0.4,
                        help="share of each factorized layer's MACs to keep (default 0.4)")
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs (0: none)")
    parser.add_argument("--train-samples", type=int, default=None,
                        help="training images for fine-tuning and calibration (default: all 60000)")
    parser.add_argument("--test-samples", type=int, default=None, help="default: all 10000")
    parser.add_argument("--micro-samples", type=int, default=20,
                        help="test images run with TFLite Micro for the parity check (default 20)")
    parser.add_argument("--runs", type=int, default=50, help="timed host runs per model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fine-tuning")
    parser.add_argument("--output", default="fashion_micro", help="folder for the outputs")
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    (x_train, y_train), (x_test, y_test) = fashion_mnist()
    x_train, y_train = zoo.prepare_images(x_train[: args.train_samples]), y_train[: args.train_samples]
    x_test, y_test = zoo.prepare_images(x_test[: args.test_samples]), y_test[: args.test_samples]

    baseline = zoo.load_fashion_cnn()
    small = tflowrank.factorize(baseline, "spatial", rank=args.rank, layers=LAYERS)
    print(tflowrank.cost(small))
    if args.epochs:
        import keras

        keras.utils.set_random_seed(args.seed)
        zoo.compile_classifier(small, learning_rate=5e-4)
        small.fit(x_train, y_train, batch_size=128, epochs=args.epochs, verbose=2)
    small.save(out / "compressed.keras")

    rows = []
    for name, model in (("baseline", baseline), (f"spatial {args.rank:g}", small)):
        stem = "baseline" if model is baseline else "compressed"
        exported = tflowrank.export_tflite(model, out / f"{stem}_int8.tflite", quantize="int8",
                                           representative_data=x_train[:500], int8_io=True)
        print(exported)
        x_int8 = quantize(x_test[: args.micro_samples], exported.input_details[0])
        micro = run_micro(exported.path, x_int8)
        reference = litert_reference_outputs(exported.path, x_int8)
        rows.append({
            "model": name,
            "path": str(exported.path),
            "macs": tflowrank.cost(model).macs,
            "flash_bytes": exported.size_bytes,
            "arena_bytes": micro.arena_total_bytes,
            "int8_top1": tflowrank.evaluate_tflite(exported.path, x_test, y_test),
            "micro_vs_reference_max_lsb": max_lsb_difference(micro.outputs, reference),
            "micro_top1_agreement": float(np.mean(micro.outputs.argmax(1) == reference.argmax(1))),
        })

    timings = tflowrank.profile([row["path"] for row in rows], runs=args.runs)
    for row, timing in zip(rows, timings):
        row["host_median_ms"] = timing.inference_median_us / 1000

    compressed = rows[-1]
    c_array = write_c_array(compressed["path"], out / "fashion_model_data.cc",
                            variable="g_fashion_model", arena_bytes=compressed["arena_bytes"])
    print(table(rows))
    print(f"\n{c_array.path} + {c_array.header_path.name}: {c_array.size_bytes} bytes of model, "
          f"kTensorArenaSize = {c_array.tensor_arena_size} (measured {c_array.arena_bytes} + 10%)")
    report = {"rank": args.rank, "layers": LAYERS, "epochs": args.epochs, "seed": args.seed,
              "train_samples": len(x_train), "test_samples": len(x_test),
              "micro_samples": args.micro_samples, "rows": rows,
              "c_array": {"path": str(c_array.path), "tensor_arena_size": c_array.tensor_arena_size}}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def quantize(x, detail):
    """Real inputs -> the model's int8 input, with its scale and zero point."""
    q = np.round(x / detail.scale + detail.zero_point)
    return np.clip(q, -128, 127).astype(np.int8)


def litert_reference_outputs(path, x):
    """Outputs of LiteRT with its reference kernels (no XNNPACK, no optimized kernels)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(path),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    outputs = []
    for sample in x:
        interpreter.set_tensor(inp["index"], sample[None])
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(out["index"]))
    return np.concatenate(outputs)


def table(rows):
    header = ("model", "MACs", "flash KB", "arena KB", "int8 top-1", "host ms",
              "TFLM vs ref (LSB)")
    lines = [header] + [
        (r["model"], f"{r['macs']:,}", f"{r['flash_bytes'] / 1024:.1f}",
         f"{r['arena_bytes'] / 1024:.1f}", f"{r['int8_top1']:.4f}", f"{r['host_median_ms']:.3f}",
         str(r["micro_vs_reference_max_lsb"]))
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
            for line in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


if __name__ == "__main__":
    main()
