"""CP-ALS with and without its ridge: degenerate factors, the int8 file, and after ``compress``.

    python bench/cp_stability.py            # full data: about 12 minutes
    python bench/cp_stability.py --quick    # smoke test: 2,048 training / 500 test images, 1 epoch
    python bench/cp_stability.py --ridges default --seeds 1,2   # the ridged model rows, other seeds

Plain CP-ALS fits a trained kernel with components that grow large and cancel each other; the
chain's intermediate values then dwarf its output, and their int8 rounding is amplified.
``tflowrank.decompositions.cp_factors`` penalises the components' norms (``ridge``, module
docstring of ``tflowrank.decompositions.cp``). This script measures both settings,
``ridge=0`` (plain CP-ALS) and the default ``RIDGE``:

- **kernels**: each 3 x 3 kernel of the shipped Fashion-MNIST CNN after conv1 (whose 9 taps
  on one channel make CP exact from rank 9), at ranks of a quarter, half and all of its output
  channels: the relative error ``||W - W_hat|| / ||W||``, the degeneracy
  ``sqrt(sum_r ||term_r||^2) / ||W||`` (1 for orthogonal components; large when they cancel), the
  ALS sweeps (at most 500) and the seconds;
- **model**: the CNN with conv2, conv3 and conv4 CP-factorized at one common share of their MACs
  so that the model keeps a third of its MACs (``bench/auto.py``'s ``uniform_plan``; the ranks
  depend on the MACs only, so both settings get the same), each setting in a fresh process:
  the layers' degeneracy; before any fine-tuning, the float top-1, the post-training int8 top-1
  (calibrated on 500 training images) and the int8 file's logits against the float model's
  (``||int8 - float|| / ||float||`` over the test set); then ``compress`` with that plan and its
  defaults (refit, 2 fine-tuning epochs, the last 0.1 quantization-aware, int8 export; seed 0,
  or each of ``--seeds``): the Keras and int8 top-1 and the int8 gap to the float32 baseline.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import (
    command_line,
    environment,
    fashion_mnist,
    finish,
    format_table,
    load_average,
    require_fashion_mnist,
    run_isolated,
    write_json,
)

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "cp_stability.json"
LAYERS = ("conv2", "conv3", "conv4")
TARGET = 1 / 3
QUICK_RANKS = {"conv2": 58, "conv3": 89, "conv4": 120}  # uniform_plan's at TARGET


def degeneracy(factors):
    """``sqrt(sum_r ||term_r||^2) / ||W||`` of a CP chain given as its factor matrices, each
    ``(size, R)``: 1 for orthogonal components, far above 1 when large components cancel."""
    import numpy as np

    term_norms = np.prod([np.linalg.norm(f, axis=0) for f in factors], axis=0)
    letters = "abcdefgh"[:len(factors)]
    product = np.einsum(",".join(f"{x}r" for x in letters) + "->" + letters, *factors)
    norm = np.linalg.norm(product)
    return float(np.sqrt(np.sum(term_norms**2)) / norm) if norm > 0 else 0.0


def layer_factors(layer):
    """The factor matrices of a ``CPConv2D`` layer at its active rank."""
    pointwise_in, vertical, horizontal, pointwise_out = (w.numpy() for w in layer.weights[:4])
    r = layer.active_rank
    return [pointwise_in[0, 0, :, :r], vertical[:, 0, :r, 0], horizontal[0, :, :r, 0],
            pointwise_out[0, 0, :r, :].T]


def kernel_rows(ranks_of, ridges):
    import time as clock

    from tflowrank import zoo
    from tflowrank.decompositions import cp_factors

    model = zoo.load_fashion_cnn()
    rows = []
    for name in LAYERS:
        kernel = model.get_layer(name).get_weights()[0]
        for rank in ranks_of(kernel.shape[3]):
            for ridge in ridges:
                started = clock.perf_counter()
                found = cp_factors(kernel, rank, ridge=ridge)
                seconds = clock.perf_counter() - started
                factors = [found.pointwise_in[0, 0], found.vertical[:, 0, :, 0],
                           found.horizontal[0, :, :, 0], found.pointwise_out[0, 0].T]
                rows.append({"layer": name, "shape": list(kernel.shape), "rank": rank, "ridge": ridge,
                             "relative_error": found.relative_error, "degeneracy": degeneracy(factors),
                             "sweeps": found.n_iter, "converged": found.converged, "seconds": seconds})
    return rows


def _half(channels):
    return (channels // 2,)


def _all_ranks(channels):
    return (channels // 4, channels // 2, channels)


def _plan(quick):
    """The uniform CP plan; with ``quick``, the ranks it has (``QUICK_RANKS``) without the
    bisection, whose CP-ALS runs take minutes."""
    from auto import plan_of, uniform_plan

    from tflowrank import factorize, zoo

    model = zoo.load_fashion_cnn()
    if quick:
        return plan_of(model, factorize(model, "cp", QUICK_RANKS), "cp", TARGET, LAYERS).to_dict()
    return uniform_plan(model, "cp", TARGET, layers=LAYERS).to_dict()


def _model_row(folder, sizes, ridge, plan_dict, epochs, runs, seed=0):
    """One setting of the ridge, in this (spawned) process."""
    import keras
    import numpy as np

    import tflowrank.decompositions.cp as cp
    from tflowrank import compress, export_tflite, factorize, predict_tflite, zoo
    from tflowrank.plan import CompressionPlan

    cp.RIDGE = ridge
    keras.utils.set_random_seed(seed)
    (x_train, y_train), (x_test, y_test) = fashion_mnist(*sizes)
    model = zoo.load_fashion_cnn()
    plan = CompressionPlan.from_dict(plan_dict)
    factorized = factorize(model, plan)
    logits = factorized.predict(x_test, batch_size=500, verbose=0)
    out = Path(folder) / f"ridge_{ridge:g}_seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    exported = export_tflite(factorized, out / "decomposed_int8.tflite",
                             representative_data=x_train[:500])
    int8 = predict_tflite(exported.path, x_test)
    row = {"ridge": ridge, "seed": seed, "ranks": {e.layer: e.rank for e in plan.factorized},
           "degeneracy": {name: degeneracy(layer_factors(factorized.get_layer(name)))
                          for name in LAYERS},
           "decomposed_float_top1": float(np.mean(logits.argmax(1) == y_test)),
           "decomposed_int8_top1": float(np.mean(int8.argmax(1) == y_test)),
           "decomposed_int8_error": float(np.linalg.norm(int8 - logits) / np.linalg.norm(logits))}
    result = compress(model, (x_train, y_train), (x_test, y_test), plan.target, plan=plan,
                      finetune_epochs=epochs, output_dir=out / "compress", profile_runs=runs,
                      profile_repeats=1, log=None, progress=False, seed=seed)
    row.update(keras_top1=result.keras_accuracy, int8_top1=result.tflite_accuracy,
               baseline_top1=result.baseline_accuracy, macs=result.macs,
               baseline_macs=result.baseline_macs, params=result.params, int8_bytes=result.int8_bytes,
               compress_seconds=sum(result.seconds.values()))
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test on a data slice")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs (default 2; --quick 1)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs of each int8 file")
    parser.add_argument("--ridges", default="0,default",
                        help="comma-separated ridges of the model rows, 'default' for RIDGE "
                             "(default: %(default)s)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds of the model rows")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="output (default: %(default)s)")
    args = parser.parse_args(argv)
    from tflowrank.decompositions.cp import RIDGE

    try:
        ridges = tuple(RIDGE if r == "default" else float(r) for r in args.ridges.split(","))
        seeds = tuple(int(s) for s in args.seeds.split(","))
    except ValueError:
        parser.error(f"--ridges takes numbers or 'default', --seeds integers; got "
                     f"{args.ridges!r} and {args.seeds!r}")
    if not all(r >= 0 for r in ridges):
        parser.error(f"--ridges must be >= 0; got {args.ridges!r}")
    epochs = args.epochs if args.epochs is not None else (1 if args.quick else 2)
    if epochs < 1:
        parser.error(f"--epochs must be at least 1; got {epochs}")
    sizes = (2048, 500) if args.quick else (60000, 10000)
    require_fashion_mnist()
    record = {"command": command_line(), "environment": environment(),
              "config": {"quick": args.quick, "epochs": epochs, "train": sizes[0], "test": sizes[1],
                         "ridges": ridges, "seeds": seeds, "target": TARGET, "layers": LAYERS},
              "load_average_start": load_average()}
    started = time.perf_counter()
    print("[cp_stability] kernels ...", flush=True)
    record["kernels"] = run_isolated(kernel_rows, _half if args.quick else _all_ranks, ridges)
    write_json(args.json, record)
    print("[cp_stability] the uniform plan ...", flush=True)
    plan = run_isolated(_plan, args.quick)
    record["models"] = []
    with tempfile.TemporaryDirectory(prefix="bench-cp-") as folder:
        for seed in seeds:
            for ridge in ridges:
                print(f"[cp_stability] model, ridge {ridge:g}, seed {seed} ...", flush=True)
                record["models"].append(run_isolated(_model_row, folder, sizes, ridge, plan, epochs,
                                                     args.runs, seed))
                write_json(args.json, record)
    return finish(record, started, args.json, table)


def table(record):
    lines = [format_table(
        ("layer", "kernel", "rank", "ridge", "rel. error", "degeneracy", "sweeps", "s"),
        [(r["layer"], "x".join(map(str, r["shape"])), r["rank"], f"{r['ridge']:g}",
          f"{r['relative_error']:.4f}", f"{r['degeneracy']:.2f}", r["sweeps"], f"{r['seconds']:.1f}")
         for r in record.get("kernels", [])])]
    models = record.get("models", [])
    if models:
        base = models[0]["baseline_top1"]
        lines.append("")
        lines.append(format_table(
            ("ridge", "seed", "ranks", "degeneracy", "decomposed f32", "decomposed int8",
             "int8 vs f32 logits", "top-1 Keras", "top-1 int8", "vs float"),
            [(f"{r['ridge']:g}", r.get("seed", 0), " / ".join(str(r["ranks"][n]) for n in LAYERS),
              " / ".join(f"{r['degeneracy'][n]:.1f}" for n in LAYERS),
              f"{r['decomposed_float_top1']:.4f}", f"{r['decomposed_int8_top1']:.4f}",
              f"{r['decomposed_int8_error']:.3f}", f"{r['keras_top1']:.4f}", f"{r['int8_top1']:.4f}",
              f"{100 * (r['int8_top1'] - base):+.2f}") for r in models]))
        kept = models[0]["macs"] / models[0]["baseline_macs"]
        lines.append(f"float32 baseline top-1 {base:.4f}; MACs kept {kept:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
