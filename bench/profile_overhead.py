"""How far the in-process LiteRT runner can be trusted, and the demo's models on TFLite Micro.

    python bench/profile_overhead.py            # about 5 minutes
    python bench/profile_overhead.py --quick    # fewer repeats and runs

Models: the demo's baseline (the shipped Fashion-MNIST CNN) and a compressed model (the plan of
the demo before it ran ``compress``: "spatial" on conv2-conv4 to 40% of the conv MACs; weights
before fine-tuning, which changes no shape, size, arena or latency), each as float32 and int8
(500 training images for calibration).

1. Runner floor: a one-op model (``x * 2 + 1`` on one float) timed like any other: what one
   ``invoke()`` from Python costs with nothing to compute.
2. Run-to-run spread: each model timed ``--repeats`` times, interleaved (every model once per
   round), each measurement the median of ``--runs`` invocations after 20 warm-up runs, 1 thread,
   XNNPACK; reported: the median of the medians, their min / max and (max - min) / median.
3. The op chains: each convolution (or factorized chain) and the Dense layer exported alone as a
   one-layer model of the same dtype, with its input shape, timed the same way. ``chains`` is the
   sum of their medians; ``rest`` = model - chains - floor: pooling, batch-norm-free activations,
   quantize/dequantize and the runner's own cost. If the runner distorted small models, the
   chains would not add up to the model.
4. TFLite Micro: arena (total, head, tail), flash and parity with LiteRT of the int8 models, with
   the issue's budgets (256 KB flash, 128 KB arena).

Each model is built and exported in a spawned process; timing runs in this process.
"""

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

from _common import (
    command_line,
    environment,
    fashion_mnist,
    format_table,
    load_average,
    require_fashion_mnist,
    run_isolated,
    write_json,
)
from _common import interleaved_medians as measure

import tflowrank

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "profile_overhead.json"
FLASH_KB, ARENA_KB = 256, 128


def build(folder):
    """Export the floor model, the two demo models and their layers; return the file paths."""
    import keras
    import numpy as np

    from tflowrank import zoo
    from tflowrank.layers import FactorizedLayer

    (calibration, _), _ = fashion_mnist(500, 0)
    folder = Path(folder)
    files = {"floor": {}, "models": {}, "layers": {}}

    inputs = keras.Input((1,))
    floor = keras.Model(inputs, keras.layers.Rescaling(2.0, offset=1.0)(inputs))
    for dtype, quantize in (("float32", None), ("int8", "int8")):
        files["floor"][dtype] = str(tflowrank.export_tflite(
            floor, folder / f"floor_{dtype}.tflite", quantize=quantize,
            representative_data=np.linspace(-1, 1, 64, dtype="float32")[:, None]).path)

    baseline = zoo.load_fashion_cnn()
    # the compressed model of the figures in docs/: spatial on conv2-conv4, each keeping at most
    # 38.9% of its MACs, so that the model keeps 40% of its conv MACs (conv1 left whole)
    compressed = tflowrank.factorize(baseline, "spatial", rank=0.389, layers=["conv2", "conv3", "conv4"])
    for name, model in (("baseline", baseline), ("compressed", compressed)):
        files["models"][name], files["layers"][name] = {}, {}
        chosen = [layer for layer in model.layers
                  if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense, FactorizedLayer))]
        features = keras.Model(model.input, [layer.input for layer in chosen]).predict(
            calibration, verbose=0)
        for dtype, quantize in (("float32", None), ("int8", "int8")):
            files["models"][name][dtype] = str(tflowrank.export_tflite(
                model, folder / f"{name}_{dtype}.tflite", quantize=quantize,
                representative_data=calibration).path)
            files["layers"][name][dtype] = {}
            for layer, feature in zip(chosen, features):
                single = _single(layer, feature.shape[1:])
                path = folder / f"{name}_{layer.name}_{dtype}.tflite"
                files["layers"][name][dtype][layer.name] = str(tflowrank.export_tflite(
                    single, path, quantize=quantize, representative_data=feature).path)
    return files


def _single(layer, shape):
    """A model of ``layer`` alone (a copy with its weights) for inputs of ``shape``."""
    import keras

    copy = layer.__class__.from_config(layer.get_config())
    inputs = keras.Input(shape)
    outputs = copy(inputs)
    copy.set_weights(layer.get_weights())
    return keras.Model(inputs, outputs)


def spread(values):
    middle = statistics.median(values)
    return {"median_us": middle, "min_us": min(values), "max_us": max(values),
            "spread": (max(values) - min(values)) / middle, "repeats_us": values}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="--repeats 3 --runs 50")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="output (default: %(default)s)")
    args = parser.parse_args(argv)
    require_fashion_mnist()
    if args.quick:
        args.repeats, args.runs = 3, 50
    if args.repeats < 2 or args.runs < 1:
        parser.error(f"--repeats must be at least 2 and --runs at least 1; got {args.repeats}, {args.runs}")
    record = {"command": command_line(), "config": {"repeats": args.repeats, "runs": args.runs,
                                                    "warmup_runs": 20, "threads": 1},
              "environment": {**environment(), "load_average_start": load_average()}}
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as folder:
        print("building and exporting ...", flush=True)
        files = run_isolated(build, folder)
        print("timing the runner floor and the models ...", flush=True)
        whole = {("floor", d): p for d, p in files["floor"].items()}
        whole.update({(m, d): p for m, by in files["models"].items() for d, p in by.items()})
        timed = measure(whole, args.repeats, args.runs)
        print("timing the op chains ...", flush=True)
        chains = {(m, d, layer): p for m, by in files["layers"].items() for d, layers in by.items()
                  for layer, p in layers.items()}
        chain_times = measure(chains, max(3, args.repeats // 2), args.runs)
        print("TFLite Micro ...", flush=True)
        micro = {}
        for name, by in files["models"].items():
            (result,) = tflowrank.profile(by["int8"], target="micro", flash_budget_kb=FLASH_KB,
                                          ram_budget_kb=ARENA_KB)
            micro[name] = dataclasses.asdict(result.micro)
    rows = []
    for (model, dtype), values in timed.items():
        entry = {"model": model, "dtype": dtype, **spread(values)}
        if model != "floor":
            layers = {layer: statistics.median(v) for (m, d, layer), v in chain_times.items()
                      if m == model and d == dtype}
            floor = statistics.median(timed[("floor", dtype)])
            entry.update(chains_us=sum(layers.values()), layers_us=layers,
                         rest_us=entry["median_us"] - sum(layers.values()) - floor,
                         floor_share=floor / entry["median_us"])
        rows.append(entry)
    record.update(rows=rows, micro=micro)
    record["environment"]["load_average_end"] = load_average()
    print(report(record))
    print(f"wrote {write_json(args.json, record)}")
    return 0


def report(record):
    lines = []
    for row in record["rows"]:
        chains = row.get("chains_us")
        lines.append([f"{row['model']} {row['dtype']}", f"{row['median_us']:.1f}",
                      f"{row['min_us']:.1f} - {row['max_us']:.1f}", f"{100 * row['spread']:.1f}%",
                      "-" if chains is None else f"{chains:.1f}",
                      "-" if chains is None else f"{row['rest_us']:.1f}",
                      "-" if chains is None else f"{100 * row['floor_share']:.1f}%"])
    text = format_table(["model", "median us", "repeat medians", "spread", "chains us", "rest us",
                         "floor share"], lines)
    micro_lines = []
    for name, info in record["micro"].items():
        micro_lines.append([name, f"{info['flash_bytes'] / 1024:.1f}",
                            f"{info['arena_total_bytes'] / 1024:.1f}",
                            f"{info['arena_head_bytes'] / 1024:.1f}",
                            f"{info['arena_tail_bytes'] / 1024:.1f}",
                            "yes" if info["fully_int8"] else "no",
                            (f"{info['max_lsb_difference']} LSB" if info["max_lsb_difference"] is not None
                             else f"{info['max_abs_difference']:g} (float out)"),
                            f"{'ok' if info['flash_ok'] else 'OVER'} ({info['flash_margin_kb']:+.1f} KB)",
                            f"{'ok' if info['ram_ok'] else 'OVER'} ({info['ram_margin_kb']:+.1f} KB)"])
    text += "\n\nTFLite Micro (int8):\n" + format_table(
        ["model", "flash KB", "arena KB", "head KB", "tail KB", "int8", "parity vs LiteRT",
         f"flash <= {FLASH_KB} KB", f"arena <= {ARENA_KB} KB"], micro_lines)
    return text


if __name__ == "__main__":
    sys.exit(main())
