"""MobileNetV2: factorize its pointwise (1 x 1) convolutions by SVD, export int8, time both.

    python examples/mobilenetv2_pointwise_svd.py                      # 224 x 224, ~3 min on 2 cores
    python examples/mobilenetv2_pointwise_svd.py --size 96 --alpha 0.35 --output /tmp/mnv2

The network is ``keras.applications.MobileNetV2(weights=None)``: random weights, nothing is
downloaded. So this measures cost (MACs, parameters, file size, host latency), not accuracy:
a random kernel has no low-rank structure, and its reconstruction error at rank 0.5 says nothing
about a trained one's. With trained weights, fine-tune after ``factorize`` as any Keras model.

Each 1 x 1 Conv2D (the expand and project convolutions of the inverted residual blocks and the
last 1 x 1) becomes two 1 x 1 convolutions cin -> r -> cout, ``r`` the largest rank that keeps at
most ``--rank`` of the layer's MACs. Depthwise convolutions are left alone (they are cheap).
Both models are exported to full int8 (calibrated on a few random inputs in MobileNetV2's input
range [-1, 1]) and timed on this host with LiteRT (XNNPACK) by ``tflowrank.profile``.
"""

import argparse
import json
from pathlib import Path

import numpy as np

import tflowrank
from tflowrank.profiling import format_profiles


def is_pointwise(layer):
    """The layers to factorize: plain Conv2D with a 1 x 1 kernel (not depthwise, not separable)."""
    import keras

    return type(layer) is keras.layers.Conv2D and tuple(layer.kernel_size) == (1, 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width multiplier")
    parser.add_argument("--rank", type=float, default=0.5,
                        help="share of each 1 x 1 layer's MACs to keep (default 0.5)")
    parser.add_argument("--calibration", type=int, default=8, help="random calibration inputs")
    parser.add_argument("--runs", type=int, default=30, help="timed host runs per model")
    parser.add_argument("--threads", type=int, default=1, help="host threads (default 1)")
    parser.add_argument("--output", default="mobilenetv2_svd", help="folder for the outputs")
    args = parser.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    import keras

    keras.utils.set_random_seed(0)
    baseline = keras.applications.MobileNetV2(weights=None, alpha=args.alpha,
                                              input_shape=(args.size, args.size, 3))
    small = tflowrank.factorize(baseline, "svd", rank=args.rank, layers=is_pointwise)
    base_cost, small_cost = tflowrank.cost(baseline), tflowrank.cost(small)
    factorized = [c for c in small_cost.layers if c.class_name == "SVDConv2D"]
    print(f"factorized {len(factorized)} pointwise Conv2D layers by SVD at rank {args.rank:g} "
          f"(of {sum(is_pointwise(layer) for layer in baseline.layers)} 1 x 1 Conv2D layers)")

    calibration = np.random.default_rng(0).uniform(
        -1.0, 1.0, size=(args.calibration, args.size, args.size, 3)).astype(np.float32)
    exports = [
        tflowrank.export_tflite(model, out / f"{stem}_int8.tflite", quantize="int8",
                                representative_data=calibration)
        for stem, model in (("baseline", baseline), ("pointwise_svd", small))
    ]
    for exported in exports:
        print(exported)
    timings = tflowrank.profile([e.path for e in exports], threads=args.threads, runs=args.runs)
    print(format_profiles(timings))

    rows = [
        {"model": name, "params": c.params, "macs": c.macs, "int8_bytes": e.size_bytes,
         "conv_2d_ops": e.ops.get("CONV_2D", 0),
         "host_median_ms": t.inference_median_us / 1000, "host_avg_ms": t.inference_avg_us / 1000}
        for name, c, e, t in zip(("baseline", f"svd 1x1 {args.rank:g}"), (base_cost, small_cost),
                                 exports, timings)
    ]
    print()
    print(table(rows))
    report = {"size": args.size, "alpha": args.alpha, "rank": args.rank, "threads": args.threads,
              "runs": args.runs, "factorized_layers": len(factorized), "rows": rows,
              "profiles": [t.to_dict() for t in timings]}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def table(rows):
    header = ("model", "params", "MACs", "int8 KB", "CONV_2D ops", "host median ms")
    lines = [header] + [
        (r["model"], f"{r['params']:,}", f"{r['macs']:,}", f"{r['int8_bytes'] / 1024:.1f}",
         str(r["conv_2d_ops"]), f"{r['host_median_ms']:.3f}")
        for r in rows
    ]
    base, last = rows[0], rows[-1]
    lines.append(("ratio", f"{base['params'] / last['params']:.2f}x", f"{base['macs'] / last['macs']:.2f}x",
                  f"{base['int8_bytes'] / last['int8_bytes']:.2f}x", "",
                  f"{base['host_median_ms'] / last['host_median_ms']:.2f}x"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
            for line in lines]
    text.insert(1, "-" * len(text[0]))
    text.insert(-1, "-" * len(text[0]))
    return "\n".join(text)


if __name__ == "__main__":
    main()
