"""Magnitude pruning with tfmot at a parameter budget, then full-int8 TFLite: a bench baseline.

    from _pruning import magnitude_pruning, evaluate_pruned
    result = magnitude_pruning(baseline, keep_params, x_train, y_train, epochs=2, out_dir="out")
    result = evaluate_pruned(result, x_test, y_test)        # adds int8 top-1 and host latency

tensorflow-model-optimization 0.8 prunes tf_keras (Keras 2) models only and wants
``TF_USE_LEGACY_KERAS=1`` set before TensorFlow starts, so the work runs in a child process
(this file run as a script), as ``examples/tfmot_interop.py`` does:

1. this process (Keras 3): ``tflowrank.interop.save_portable`` writes the model, the training
   arrays go to an ``.npz``, and ``pruning_plan`` shares the budget out over the layers;
2. the child (``TF_USE_LEGACY_KERAS=1``): ``load_tf_keras`` rebuilds the model,
   ``prune_low_magnitude`` wraps every Conv2D and Dense layer with a ``PolynomialDecay`` schedule
   (sparsity 0 -> the layer's target over the first 2/3 of the steps, then held; or
   ``ConstantSparsity`` from the first step), fine-tuning with ``UpdatePruningStep``, Adam and the
   loss of ``tflowrank.zoo.compile_classifier``, ``strip_pruning``, then the tf_keras
   ``TFLiteConverter`` at batch size 1 configured as ``tflowrank.export_tflite(quantize="int8")``
   (float32 input and output, every op int8 or the export fails).

The budget is counted as ``model.count_params()`` counts the parameters of a factorized model:
every weight, biases and batch-normalisation statistics included. Biases and batch normalisation
stay dense; the prunable kernels keep the rest, shared out in proportion to their sizes (the same
sparsity in every layer, up to rounding), so that the non-zero parameters equal ``keep_params``
exactly. A pruned ``.tflite`` is as large as a dense one (TFLite stores the zeros and runs dense
kernels): ``int8_gzip_bytes`` is what the zeros buy on disk; compare it with ``gzip_size`` of the
other models' files.
"""

import gzip
import json
import math
import numbers
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHOD = "tfmot magnitude pruning"
SCHEDULES = ("polynomial", "constant")
PRUNABLE = ("Conv2D", "Dense")
TFLITE_NAME = "pruned_int8.tflite"
_RAMP_SHARE = 2 / 3  # of the training steps, for the polynomial schedule
_LOG_TAIL_LINES = 40


def magnitude_pruning(model, keep_params, x_train, y_train, epochs, out_dir, *, batch_size=128,
                      seed=0, calibration=500, learning_rate=5e-4, schedule="polynomial",
                      x_val=None, y_val=None):
    """Prune ``model`` to ``keep_params`` non-zero parameters with tfmot, fine-tune, export int8.

    Args:
        model: a trained single-input Keras 3 classifier with logits outputs (Sequential or
            Functional, plain layers or tflowrank layers). It is not modified.
        keep_params: the parameters to keep, counted like ``model.count_params()``.
        x_train, y_train: fine-tuning inputs (as the model takes them) and integer labels; the
            first ``calibration`` inputs calibrate the int8 export.
        epochs: fine-tuning epochs (at least 1); pruning happens during them.
        out_dir: folder for ``pruned_int8.tflite`` (created if missing; the file is written
            atomically).
        schedule: ``"polynomial"`` (0 -> target over the first 2/3 of the steps, then held) or
            ``"constant"`` (the target from the first step).
        x_val, y_val: optional held-out data for the Keras top-1 of the pruned float model.

    Returns:
        A dict: ``method``, ``schedule``, ``params`` (all parameters), ``keep_params``,
        ``nonzero_params`` (measured), ``target_sparsity`` and ``sparsity`` (measured share of
        zeros in the prunable kernels), ``layers`` (per layer: ``size``, ``nonzero``),
        ``macs`` (dense MACs, what the TFLite file computes) and ``nonzero_macs`` (the MACs of
        the non-zero weights, what a sparse kernel could get down to; None if unknown),
        ``keras_top1`` (None without ``x_val``), ``int8_path``, ``int8_bytes``,
        ``int8_gzip_bytes``, ``int8_ops``, ``history``, ``train_seconds``, ``seconds`` (wall,
        the whole call).

    Raises:
        ValueError: a bad argument, or ``keep_params`` out of the reachable range.
        tflowrank.ToolError: the tf_keras process failed (with the tail of its output).
    """
    from tflowrank.interop import save_portable

    start = time.perf_counter()
    _check_arguments(keep_params, epochs, batch_size, calibration, learning_rate, schedule)
    x_train, y_train = _pair(x_train, y_train, "x_train", "y_train")
    if (x_val is None) != (y_val is None):
        raise ValueError("Pass both `x_val` and `y_val` or neither. "
                         f"Received: x_val is {_none(x_val)}, y_val is {_none(y_val)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tflowrank-pruning-") as folder:
        folder = Path(folder)
        plan = pruning_plan(save_portable(model, folder / "model.npz"), keep_params)
        arrays = {"x_train": x_train, "y_train": y_train}
        if x_val is not None:
            arrays["x_val"], arrays["y_val"] = _pair(x_val, y_val, "x_val", "y_val")
        np.savez(folder / "data.npz", **arrays)
        job = {"plan": plan, "epochs": int(epochs), "batch_size": int(batch_size),
               "seed": int(seed), "calibration": int(calibration),
               "learning_rate": float(learning_rate), "schedule": schedule,
               "output": str((out_dir / TFLITE_NAME).resolve())}
        (folder / "job.json").write_text(json.dumps(job))
        _run_child(folder)
        report = json.loads((folder / "report.json").read_text())
    macs, nonzero_macs = _macs(model, report["layers"])
    return {"method": METHOD, "schedule": schedule, "params": plan["params"],
            "keep_params": plan["keep_params"], "nonzero_params": report["nonzero_params"],
            "target_sparsity": plan["target_sparsity"], "sparsity": report["sparsity"],
            "layers": report["layers"], "macs": macs, "nonzero_macs": nonzero_macs,
            "keras_top1": report["keras_top1"], "int8_path": report["int8_path"],
            "int8_bytes": report["int8_bytes"], "int8_gzip_bytes": report["int8_gzip_bytes"],
            "int8_ops": report["int8_ops"], "epochs": int(epochs), "history": report["history"],
            "train_seconds": report["train_seconds"],
            "seconds": time.perf_counter() - start}


def evaluate_pruned(result, x_test, y_test, *, threads=1, runs=50, warmup_runs=5,
                    benchmark_binary=None):
    """``result`` of ``magnitude_pruning`` plus the int8 top-1 on ``(x_test, y_test)`` and the
    host latency of the int8 file (``tflowrank.evaluate_tflite`` and ``tflowrank.profile``).

    Added keys: ``int8_top1``, ``inference_median_us``, ``inference_avg_us``,
    ``inference_std_us``, ``latency_runner``, ``threads``.
    """
    import tflowrank

    top1 = tflowrank.evaluate_tflite(result["int8_path"], x_test, y_test)
    (timing,) = tflowrank.profile([result["int8_path"]], target="host", threads=threads,
                                  runs=runs, warmup_runs=warmup_runs,
                                  benchmark_binary=benchmark_binary)
    return {**result, "int8_top1": float(top1), "inference_median_us": timing.inference_median_us,
            "inference_avg_us": timing.inference_avg_us,
            "inference_std_us": timing.inference_std_us, "latency_runner": timing.runner,
            "threads": threads}


def gzip_size(path):
    """Bytes of the file at ``path`` once gzip-compressed (level 9): its size on disk if stored
    compressed, the figure that sparse weights shrink."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=9))


def pruning_plan(portable_path, keep_params):
    """Share ``keep_params`` out over the prunable kernels of a ``save_portable`` file.

    Every Conv2D and Dense kernel keeps at least one weight and the rest in proportion to its
    size (largest remainders), so the kept kernel weights plus every other parameter make exactly
    ``keep_params``. Returns a JSON-able dict: ``params``, ``keep_params``, ``dense_params`` (the
    parameters that stay dense), ``prunable_params``, ``target_sparsity`` and ``layers``
    ({name: {"size", "keep"}}).
    """
    from tflowrank.interop import _read

    architecture, arrays = _read(portable_path)
    sizes = {name: int(arrays[spec["weights"][0]].size)
             for name, spec in architecture["layers"].items() if spec["class"] in PRUNABLE}
    params = sum(int(array.size) for array in arrays.values())
    prunable = sum(sizes.values())
    dense = params - prunable
    keep_params = int(keep_params)
    if not sizes:
        raise ValueError("`model` has no Conv2D or Dense layer to prune.")
    low = dense + len(sizes)  # tfmot keeps at least one weight per kernel
    if not low <= keep_params <= params:
        raise ValueError(
            f"`keep_params` is out of reach by pruning the Conv2D and Dense kernels: the model has "
            f"{params} parameters, {dense} of which (biases, batch normalisation) stay dense, and "
            f"each of its {len(sizes)} kernels keeps at least one weight, so keep_params must be "
            f"between {low} and {params}. Received: keep_params={keep_params}")
    names = sorted(sizes, key=list(sizes).index)
    spare = keep_params - low
    share = [spare * (sizes[n] - 1) / (prunable - len(sizes)) if prunable > len(sizes) else 0.0
             for n in names]
    extra = [math.floor(s) for s in share]
    by_remainder = sorted(range(len(names)), key=lambda i: extra[i] - share[i])
    for i in by_remainder[:spare - sum(extra)]:
        extra[i] += 1
    layers = {n: {"size": sizes[n], "keep": 1 + e} for n, e in zip(names, extra, strict=True)}
    return {"params": params, "keep_params": keep_params, "dense_params": dense,
            "prunable_params": prunable,
            "target_sparsity": 1 - (keep_params - dense) / prunable, "layers": layers}


def _check_arguments(keep_params, epochs, batch_size, calibration, learning_rate, schedule):
    if (not isinstance(keep_params, numbers.Real) or isinstance(keep_params, bool)
            or keep_params != int(keep_params)):
        raise ValueError("`keep_params` must be a whole number of parameters. "
                         f"Received: keep_params={keep_params!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size),
                        ("calibration", calibration)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    if not isinstance(learning_rate, numbers.Real) or not learning_rate > 0:
        raise ValueError("`learning_rate` must be a positive number. "
                         f"Received: learning_rate={learning_rate!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {', '.join(map(repr, SCHEDULES))}. "
                         f"Received: schedule={schedule!r}")


def _pair(x, y, x_name, y_name):
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"`{x_name}` and `{y_name}` must be non-empty and of the same length. "
                         f"Received: len({x_name})={len(x)}, len({y_name})={len(y)}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"`{y_name}` must hold integer labels, shape (N,). "
                         f"Received: {y_name} of shape {y.shape} and dtype {y.dtype}")
    return x, y


def _none(value):
    return "None" if value is None else "given"


def _macs(model, layers):
    """Dense MACs of ``model`` and the MACs of its non-zero kernel weights (None if the pruned
    layers are not all plain layers of ``model``)."""
    import tflowrank

    cost = tflowrank.cost(model)
    by_name = {layer.name: layer for layer in cost.layers}
    if not all(name in by_name and by_name[name].macs is not None for name in layers):
        return cost.macs, None
    saved = sum(by_name[name].macs * (1 - info["nonzero"] / info["size"])
                for name, info in layers.items())
    return cost.macs, int(round(cost.macs - saved))


def _run_child(folder):
    """Run this file as the tf_keras process on ``folder``; ToolError with its log tail if it fails."""
    import tflowrank
    from tflowrank.errors import ToolError

    command = [sys.executable, str(Path(__file__).resolve()), str(folder)]
    package_root = str(Path(tflowrank.__file__).resolve().parents[1])  # the same tflowrank
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    environment = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=path)
    log_path = Path(folder) / "child.log"
    with open(log_path, "w") as log:
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=environment,
                                stdin=subprocess.DEVNULL).returncode
    if status != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
        raise ToolError(f"Magnitude pruning failed in its tf_keras process (exit status {status}).",
                        command=command, output_tail="\n".join(tail))


# ----------------------------------------------------------------------------------------------
# The tf_keras side: this file run as a script with TF_USE_LEGACY_KERAS=1.


def _schedule(tfmot, job, size, keep, steps):
    sparsity = 1 - keep / size
    if job["schedule"] == "constant":
        # begin at the first step (steps count from 1); re-rank the mask every 100 steps
        return tfmot.sparsity.keras.ConstantSparsity(sparsity, begin_step=1, frequency=100)
    ramp = max(1, round(_RAMP_SHARE * steps))
    frequency = max(1, min(100, ramp // 10))
    end = frequency * (ramp // frequency)  # a multiple of frequency: the target is applied
    return tfmot.sparsity.keras.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=end,
                                                frequency=frequency)


def _tf_keras_side(folder):
    folder = Path(folder)
    job = json.loads((folder / "job.json").read_text())
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        raise RuntimeError("The tf_keras side needs TF_USE_LEGACY_KERAS=1 set before TensorFlow "
                           "starts.")
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    from tflowrank._io import write_bytes_atomic
    from tflowrank.export import _configure, _conversion_error, _float_ops_error
    from tflowrank.interop import load_tf_keras
    from tflowrank.tflite_model import inspect_tflite

    tf_keras.utils.set_random_seed(job["seed"])
    tf.config.experimental.enable_op_determinism()
    with np.load(folder / "data.npz") as data:
        arrays = {key: data[key] for key in data.files}
    x, y = arrays["x_train"], arrays["y_train"]
    plan = job["plan"]["layers"]
    steps = job["epochs"] * math.ceil(len(x) / job["batch_size"])

    model = load_tf_keras(folder / "model.npz")

    def wrap(layer):
        if layer.name not in plan:
            return layer
        keep = plan[layer.name]
        return tfmot.sparsity.keras.prune_low_magnitude(
            layer, pruning_schedule=_schedule(tfmot, job, keep["size"], keep["keep"], steps))

    pruning = tf_keras.models.clone_model(model, clone_function=wrap)  # shares the weights
    pruning.compile(optimizer=tf_keras.optimizers.Adam(job["learning_rate"]),
                    loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])
    start = time.perf_counter()
    history = pruning.fit(x, y, batch_size=job["batch_size"], epochs=job["epochs"], shuffle=True,
                          callbacks=[tfmot.sparsity.keras.UpdatePruningStep()], verbose=2)
    train_seconds = time.perf_counter() - start
    pruned = tfmot.sparsity.keras.strip_pruning(pruning)

    layers = {}
    for name, keep in plan.items():
        kernel = pruned.get_layer(name).kernel.numpy()
        layers[name] = {"size": int(kernel.size), "nonzero": int(np.count_nonzero(kernel)),
                        "target": keep["keep"]}
    zeros = sum(info["size"] - info["nonzero"] for info in layers.values())
    keras_top1 = None
    if "x_val" in arrays:
        logits = pruned.predict(arrays["x_val"], batch_size=512, verbose=0)
        keras_top1 = float(np.mean(logits.argmax(axis=1) == arrays["y_val"]))

    (tensor,) = pruned.inputs  # batch size 1, as tflowrank.export_tflite writes models
    spec = tf.TensorSpec([1, *tensor.shape[1:]], tensor.dtype, name=tensor.name.split(":")[0])
    function = tf.function(lambda inputs: pruned(inputs, training=False))
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function(spec)], pruned)
    samples = [x[i:i + 1].astype(np.float32) for i in range(min(job["calibration"], len(x)))]
    _configure(converter, tf, "int8", samples, int8_io=False)
    try:
        flatbuffer = converter.convert()
    except Exception as err:  # the converter raises ConverterError and assorted others
        raise _conversion_error(err) from err
    info = inspect_tflite(flatbuffer)
    if not info.is_fully_int8:
        raise _float_ops_error(info)
    path = write_bytes_atomic(job["output"], flatbuffer)

    params = job["plan"]["params"]
    report = {"nonzero_params": params - zeros, "params": int(pruned.count_params()),
              "sparsity": zeros / job["plan"]["prunable_params"], "layers": layers,
              "keras_top1": keras_top1, "int8_path": str(path), "int8_bytes": len(flatbuffer),
              "int8_gzip_bytes": gzip_size(path), "int8_ops": dict(info.ops),
              "history": {k: [float(v) for v in values] for k, values in history.history.items()},
              "train_seconds": train_seconds}
    if report["params"] != params:
        raise RuntimeError(f"The tf_keras model has {report['params']} parameters, the portable "
                           f"file {params}.")
    (folder / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: TF_USE_LEGACY_KERAS=1 {Path(sys.executable).name} {sys.argv[0]} FOLDER "
                 "(run by magnitude_pruning, not by hand)")
    _tf_keras_side(sys.argv[1])
