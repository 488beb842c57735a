"""The ``tflowrank`` command: a thin layer over the public API.

Every failure the user can fix (a missing file, an unreadable model, a bad argument, a converter
that refuses a model) ends with exit status 2 and one sentence on stderr, never a traceback.
"""

import argparse
import os
import sys
from pathlib import Path

__all__ = ["main"]

EXIT_USAGE = 2


class _Failure(Exception):
    """A failure to report in one sentence."""


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return EXIT_USAGE
    # the command line is a program of its own: it may quiet TensorFlow's C++ start-up logs
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .errors import TflowrankError, ToolError

    try:
        status = args.run(args)
    except (_Failure, ValueError, TypeError, TflowrankError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"tflowrank {args.command}: error: {message}", file=sys.stderr)
        if isinstance(error, ToolError):  # the command that ran and the tail of its output
            print("\n".join(str(error).splitlines()[1:]), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"tflowrank {args.command}: interrupted", file=sys.stderr)
        return 130
    return status or 0


def _parser():
    parser = argparse.ArgumentParser(
        prog="tflowrank",
        description="Low-rank factorization of Keras CNNs, int8 TFLite export and profiling.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("cost", help="MACs and parameters per layer of a .keras model")
    p.add_argument("model", help="a .keras file")
    p.set_defaults(run=_cost)

    p = sub.add_parser("factorize", help="write a factorized copy of a .keras model")
    p.add_argument("model", help="a .keras file")
    p.add_argument("-o", "--output", required=True, help="the .keras file to write")
    p.add_argument("--method", required=True,
                   help="spatial, svd, tucker2, cp, tucker2_spatial or output (needs --data)")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--rank",
                        help="an int rank, RxR (Tucker), a float fraction of MACs to keep in (0, 1], "
                             "energy:<share>, vbmf, or name=value,name=value per layer")
    budget.add_argument("--target-macs", type=float, help="fraction of the model's MACs to keep")
    budget.add_argument("--target-params", type=float,
                        help="fraction of the model's parameters to keep")
    p.add_argument("--layers", help="comma-separated layer names (default: every eligible layer)")
    p.add_argument("--multiple-of", type=int, default=1, help="round ranks up to a multiple")
    p.add_argument("--data", help="calibration inputs for --method output: a .npy or .npz file, "
                                  "a folder of images (500 drawn from anywhere under it, float32 "
                                  "pixels in [0, 255]) or 'fashion-mnist'")
    p.set_defaults(run=_factorize)

    p = sub.add_parser("export", help="convert a .keras model to .tflite")
    p.add_argument("model", help="a .keras file")
    p.add_argument("-o", "--output", required=True, help="the .tflite file to write")
    p.add_argument("--quantize", default="int8", choices=["int8", "dynamic", "float16", "none"])
    p.add_argument("--data", help="calibration inputs for int8: a .npy file, a .npz file (its "
                                  "'x' array or first array), a folder of images (500 drawn from "
                                  "anywhere under it, float32 pixels in [0, 255]) or 'fashion-mnist'")
    p.add_argument("--int8-io", action="store_true", help="int8 model input and output")
    p.add_argument("--c-array", metavar="FILE.cc",
                   help="also write the model as a C++ array for TFLite Micro (FILE.cc and FILE.h)")
    p.add_argument("--arena", metavar="measure|BYTES",
                   help="with --c-array: add kTensorArenaSize, from TFLite Micro ('measure') or an "
                        "arena total in bytes, plus 10%% rounded up to 16")
    p.set_defaults(run=_export)

    p = sub.add_parser("profile", help="latency and footprint of .tflite models on a target "
                                       "(the first model is the baseline)")
    p.add_argument("models", nargs="+", help=".tflite files; the first is the baseline")
    p.add_argument("--target", choices=["host", "android", "micro"], default="host",
                   help="host (default), android (over adb) or micro (TFLite Micro)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup-runs", type=int, default=5)
    p.add_argument("--repeats", type=int, default=1,
                   help="time every model this many times, in rounds (in process: each in a fresh "
                        "process), and report the median over rounds (default 1)")
    tool = p.add_mutually_exclusive_group()
    tool.add_argument("--benchmark-binary",
                      help="the benchmark_model tool: host: optional (else $TFLOWRANK_BENCHMARK_MODEL, "
                           "then PATH, then LiteRT in process); android: required (the Android build)")
    tool.add_argument("--in-process", action="store_true",
                      help="host: always the in-process LiteRT interpreter, even if benchmark_model is found")
    p.add_argument("--serial", help="android: the device to use (see `adb devices`)")
    p.add_argument("--xnnpack", action=argparse.BooleanOptionalAction, default=None,
                   help="force XNNPACK on or off (default: the runtime's default)")
    p.add_argument("--gpu", action="store_true", help="the GPU delegate (benchmark_model)")
    p.add_argument("--nnapi", action="store_true", help="android: the NNAPI delegate")
    p.add_argument("--cpu-mask", help="android: hex CPU affinity mask for taskset, e.g. f0")
    p.add_argument("--peak-memory", action="store_true",
                   help="--report_peak_memory_footprint (benchmark_model)")
    p.add_argument("--op-profiling", action="store_true",
                   help="per-op and per-node-type times (benchmark_model)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds one benchmark_model run may take (default 600)")
    p.add_argument("--flash-budget-kb", type=float, help="micro: flash budget in KiB")
    p.add_argument("--ram-budget-kb", type=float, help="micro: RAM (tensor arena) budget in KiB")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--csv", help="also write one CSV row per model")
    p.add_argument("--markdown", help="also write a Markdown report")
    p.add_argument("--plot", help="also draw a PNG (needs the plot extra: matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(run=_profile)

    p = sub.add_parser("evaluate", help="top-1 accuracy of a .tflite classifier")
    p.add_argument("model", help="a .tflite file")
    p.add_argument("--data", required=True,
                   help="'fashion-mnist' (its test images); a .npz file with x_val, y_val (or "
                        "x_test, y_test); or a folder of class folders (float32 pixels in [0, 255], "
                        "labels in the folders' alphabetical order)")
    p.add_argument("--samples", type=int, default=None,
                   help="only the first N samples (of a folder: N files drawn with --seed)")
    p.add_argument("--seed", type=int, default=0, help="draws a folder's files (default 0)")
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("compress", help="search, factorize, fine-tune, export int8, evaluate and "
                                        "profile a .keras classifier; write a report folder")
    p.add_argument("model", help="a trained .keras classifier")
    p.add_argument("--data", required=True,
                   help="'fashion-mnist'; a .npz file with x_train, y_train, x_val, y_val "
                        "(x_test, y_test are accepted for the validation pair); or a folder of "
                        "images, one subfolder per class, under train/ and val/ (or validation/, "
                        "test/), or with --val-split; pixels come as float32 in [0, 255]")
    p.add_argument("--val-split", type=float, default=None, metavar="FRACTION",
                   help="with --data FOLDER of class folders: hold out this fraction of the images "
                        "(drawn with --seed) for validation")
    p.add_argument("--target", type=float, required=True,
                   help="fraction of the original cost to keep, in (0, 1]")
    p.add_argument("--cost", default="macs", choices=["macs", "params", "latency"])
    p.add_argument("-o", "--output", required=True, help="the report folder (created if missing)")
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (default 2)")
    p.add_argument("--no-qat", action="store_true",
                   help="post-training int8 instead of a quantization-aware end of the fine-tuning")
    p.add_argument("--qat-epochs", type=float, default=None,
                   help="how much of the fine-tuning, at its end, is quantization-aware, in epochs "
                        "(default 0.1)")
    p.add_argument("--qat-float-fallback", metavar="LAYERS", default=None,
                   help="keep layers quantization-aware training does not cover in float there: "
                        "'all', or comma-separated layer names (default: refuse such a model)")
    p.add_argument("--no-refit", action="store_true",
                   help="keep the factorized layers' last factors as decomposed (no least-squares "
                        "refit to the model's responses)")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="the fine-tuning's peak learning rate (Adam, one cosine decay; default: "
                        "2e-3 when the model keeps more than a quarter of its MACs, 4e-3 below)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the search subset and the fine-tuning (default 0)")
    p.add_argument("--feature-distill", type=float, default=None, metavar="WEIGHT",
                   help="the float fine-tuning also matches each factorized layer's output to the "
                        "input model's, with this weight (0: off; default 0.3 when the model keeps "
                        "more than a sixth of its MACs, 0 below)")
    p.add_argument("--methods", action="append",
                   help="comma-separated, all competing for every layer; given again, an order of "
                        "preference: each layer takes the first --methods that can factorize it "
                        "(--methods spatial --methods svd,tucker2,cp) (default: "
                        "spatial where it applies, svd elsewhere; svd, tucker2 and cp "
                        "competing for a Conv1D; when --target is 0.25 or less, "
                        "spatial, svd, tucker2 and cp all competing)")
    p.add_argument("--candidates", type=int, default=10, help="ranks measured per layer and method")
    p.add_argument("--search-samples", type=int, default=None,
                   help="training samples, drawn with --seed, the sensitivities are scored on "
                        "(default 1000)")
    p.add_argument("--multiple-of", type=int, default=1, help="round ranks to a multiple")
    p.add_argument("--cache", help="sensitivity table JSON (default: OUTPUT/sensitivity.json)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per model on the host")
    p.add_argument("--repeats", type=int, default=5,
                   help="rounds timing the baseline and the compressed model, each in a fresh "
                        "process (default 5)")
    p.add_argument("--train-samples", type=int,
                   help="use only the first N training samples (of an image folder: N files drawn "
                        "with --seed)")
    p.add_argument("--val-samples", type=int,
                   help="use only the first N validation samples (of an image folder: N files "
                        "drawn with --seed)")
    p.set_defaults(run=_compress)

    p = sub.add_parser("demo", help="tflowrank compress on the shipped Fashion-MNIST CNN")
    p.add_argument("-o", "--output", default="tflowrank-demo", help="the report folder")
    p.add_argument("--target", type=float, default=1 / 3,
                   help="share of the model's MACs to keep (default 1/3)")
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (default 2)")
    p.add_argument("--no-qat", action="store_true", help="post-training int8 instead of QAT")
    p.add_argument("--runs", type=int, default=50, help="timed runs per model")
    p.set_defaults(run=_demo)
    return parser


def _load(path):
    from . import layers  # noqa: F401  registers tflowrank's layers with Keras
    from ._backend import require_tensorflow

    keras, _ = require_tensorflow()
    path = Path(path)
    if not path.is_file():
        raise _Failure(f"Model file '{path}' does not exist.")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for unreadable files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise _Failure(f"Could not read model '{path}': {first}") from error


def parse_rank(text):
    """'8' -> 8, '0.4' -> 0.4, '16x32' -> (16, 32), 'energy:0.9' and 'vbmf' as they are,
    'conv1=8,conv2=0.5' -> {'conv1': 8, 'conv2': 0.5}."""
    def one(value):
        if value == "vbmf" or value.startswith("energy:"):
            return value
        try:
            if "x" in value:
                return tuple(int(part) for part in value.split("x"))
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                raise _Failure(f"--rank must be an int, a float, RxR, energy:<share>, vbmf or "
                               f"name=value pairs of those; received {text!r}.") from None

    if "=" not in text:
        return one(text)
    ranks = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if not name.strip() or not value.strip():
            raise _Failure(f"--rank pairs must read name=value; received {item!r}.")
        ranks[name.strip()] = one(value.strip())
    return ranks


def _cost(args):
    from .costs import cost

    print(cost(_load(args.model)))


def _factorize(args):
    import warnings

    from ._io import atomic_path, output_path
    from .costs import cost
    from .factorization import factorize

    output = output_path(args.output, "--output")
    if output.suffix != ".keras":
        raise _Failure(f"--output must end in .keras; received '{output}'.")
    model = _load(args.model)
    layers = [n.strip() for n in args.layers.split(",")] if args.layers else None
    data = _calibration(args.data, model) if args.data else None
    rank = parse_rank(args.rank) if args.rank is not None else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        new = factorize(model, args.method, rank, layers=layers, data=data,
                        target_macs=args.target_macs, target_params=args.target_params,
                        multiple_of=args.multiple_of)
    for warning in caught:
        if "tflowrank" in str(warning.message):
            print(f"warning: {warning.message}", file=sys.stderr)
    with atomic_path(output) as tmp:
        new.save(tmp)
    before, after = cost(model), cost(new)
    print(after)
    print(f"MACs {after.macs / before.macs:.3f} and parameters {after.params / before.params:.3f} "
          "of the original" + (f" (target_macs {args.target_macs})" if args.target_macs else "")
          + (f" (target_params {args.target_params})" if args.target_params else ""))
    print(f"wrote {output}")


def _calibration(spec, model):
    import numpy as np

    if Path(spec).is_dir():
        from .image_folders import calibration_images

        return calibration_images(spec, model)
    if spec == "fashion-mnist":
        from .datasets import fashion_mnist
        from .zoo import prepare_images

        (x, _), _ = fashion_mnist(verbose=False)
        return prepare_images(x[:500])
    path = Path(spec)
    if not path.is_file():
        raise _Failure(f"Calibration data file '{path}' does not exist.")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as error:
        raise _Failure(f"Could not read calibration data '{path}': {error}") from error
    if isinstance(data, np.lib.npyio.NpzFile):
        key = "x" if "x" in data.files else (data.files[0] if data.files else None)
        if key is None:
            raise _Failure(f"Calibration data '{path}' holds no array.")
        data = data[key]
    return data.astype(np.float32)


def _arena(text):
    if text == "measure":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise _Failure(f"--arena must be 'measure' or a positive number of bytes; received {text!r}.")
    return value


def _export(args):
    from .export import export_tflite

    quantize = None if args.quantize == "none" else args.quantize
    if quantize == "int8" and not args.data:
        raise _Failure("--quantize int8 needs calibration inputs: pass --data FILE.npy "
                       "(or --data fashion-mnist), or choose --quantize dynamic.")
    if args.arena is not None and not args.c_array:
        raise _Failure("--arena needs --c-array.")
    arena = _arena(args.arena) if args.arena is not None else None
    if args.c_array and Path(args.c_array).suffix not in (".cc", ".cpp", ".cxx"):
        raise _Failure(f"--c-array must end in .cc, .cpp or .cxx; received '{args.c_array}'.")
    model = _load(args.model)
    data = _calibration(args.data, model) if args.data else None
    result = export_tflite(model, args.output, quantize=quantize, representative_data=data,
                           int8_io=args.int8_io)
    print(result)
    if args.c_array:
        from .c_array import write_c_array

        written = write_c_array(result.path, args.c_array, arena_bytes=arena)
        note = (f", kTensorArenaSize = {written.tensor_arena_size} ({written.arena_bytes} bytes + 10%)"
                if written.tensor_arena_size else "")
        print(f"wrote {written.path} and {written.header_path} ({written.size_bytes} bytes{note})")


def _profile(args):
    from ._io import output_path
    from .profiling import profile
    from .reports import comparison_table, plot, to_csv, to_json, to_markdown

    missing = [m for m in args.models if not Path(m).is_file()]
    if missing:
        raise _Failure(f"Model file '{missing[0]}' does not exist.")
    writers = {"json": to_json, "csv": to_csv, "markdown": to_markdown, "plot": plot}
    outputs = {name: output_path(getattr(args, name), f"--{name}")
               for name in writers if getattr(args, name)}
    results = profile(
        args.models, target=args.target, threads=args.threads, runs=args.runs,
        warmup_runs=args.warmup_runs, repeats=args.repeats,
        benchmark_binary=False if args.in_process else args.benchmark_binary,
        serial=args.serial, xnnpack=args.xnnpack, gpu=args.gpu, nnapi=args.nnapi,
        cpu_mask=args.cpu_mask, peak_memory=args.peak_memory, op_profiling=args.op_profiling,
        timeout=args.timeout, flash_budget_kb=args.flash_budget_kb,
        ram_budget_kb=args.ram_budget_kb, progress=not args.quiet,
    )
    print(comparison_table(results))
    for r in results:
        if r.micro is not None and r.micro.problems:
            print(f"{r.model}: TFLite Micro cannot run it: {'; '.join(r.micro.problems)}")
    for name, path in outputs.items():
        writers[name](results, path)
        print(f"wrote {path}")
    over = [r.model for r in results
            if r.micro is not None and False in (r.micro.flash_ok, r.micro.ram_ok)]
    if over:
        print(f"tflowrank profile: over budget: {', '.join(over)}", file=sys.stderr)
        return 1
    return 0


def _labelled(spec, train=True):
    """``((x_train, y_train), (x_val, y_val))`` from 'fashion-mnist' or a .npz file; with
    ``train=False`` the first pair is None (neither read nor required)."""
    import numpy as np

    if spec == "fashion-mnist":
        from .datasets import fashion_mnist
        from .zoo import prepare_images

        (x, y), (xv, yv) = fashion_mnist(verbose=False)
        return ((prepare_images(x), y) if train else None), (prepare_images(xv), yv)
    path = Path(spec)
    if not path.is_file():
        raise _Failure(f"Data file '{path}' does not exist.")
    try:
        data = np.load(path, allow_pickle=False)
        files = set(data.files)
    except Exception as error:
        raise _Failure(f"Could not read --data '{path}' as a .npz file: {error}") from error
    val = "val" if {"x_val", "y_val"} <= files else "test"
    missing = {f"x_{val}", f"y_{val}", *(("x_train", "y_train") if train else ())} - files
    if missing:
        raise _Failure(f"--data '{path}' lacks the arrays {', '.join(sorted(missing))} (it holds "
                       f"{', '.join(sorted(files)) or 'none'}).")
    def pair(split):
        return data[f"x_{split}"].astype(np.float32), data[f"y_{split}"]

    return (pair("train") if train else None), pair(val)


def _evaluate(args):
    from .evaluate import evaluate_tflite
    from .tflite_model import inspect_tflite

    if args.samples is not None and args.samples < 1:
        raise _Failure(f"--samples must be at least 1; received {args.samples}.")
    if not Path(args.model).is_file():
        raise _Failure(f"Model file '{args.model}' does not exist.")
    if Path(args.data).is_dir():
        from .image_folders import labelled_images

        info = inspect_tflite(args.model)
        data, _ = labelled_images(args.data, (None, *info.input_details[0].shape[1:]),
                                  int(info.output_details[0].shape[-1]), samples=args.samples,
                                  seed=args.seed, who=f"'{args.model}'")
        count = int(data.cardinality())
        accuracy = evaluate_tflite(args.model, data.batch(256))
    else:
        _, (x, y) = _labelled(args.data, train=False)
        x, y = x[:args.samples], y[:args.samples]
        count = len(x)
        accuracy = evaluate_tflite(args.model, x, y)
    print(f"top-1 {accuracy:.4f} on {count} samples of {args.data}")


def _methods(given):
    """``--methods``, given once: the names, competing; given again: tiers in order of preference
    (``compress(methods=...)`` with a tuple of names: ``search(first_applicable=True)``)."""
    if not given:
        return None
    tiers = [tuple(m.strip() for m in entry.split(",")) for entry in given]
    return list(tiers[0]) if len(tiers) == 1 else tiers


def _compress(args):
    from .compression import compress

    for name in ("train_samples", "val_samples", "search_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise _Failure(f"--{name.replace('_', '-')} must be at least 1; received {value}.")
    model = _load(args.model)
    if Path(args.data).is_dir():
        from .image_folders import image_folders

        train, val, classes = image_folders(args.data, model, val_split=args.val_split, seed=args.seed,
                                            train_samples=args.train_samples,
                                            val_samples=args.val_samples)
        print(f"tflowrank compress: {len(classes)} classes in '{args.data}': {', '.join(classes)}",
              file=sys.stderr)
    else:
        if args.val_split is not None:
            raise _Failure(f"--val-split is for --data FOLDER (images); received --data {args.data} "
                           f"and --val-split {args.val_split}.")
        train, val = _labelled(args.data)
        train = tuple(a[:args.train_samples] for a in train)
        val = tuple(a[:args.val_samples] for a in val)
    methods = _methods(args.methods)
    fallback = args.qat_float_fallback
    fallback = (False if fallback is None else True if fallback == "all"
                else [name.strip() for name in fallback.split(",") if name.strip()])
    result = compress(model, train, val, args.target, cost=args.cost, finetune_epochs=args.epochs,
                      qat=not args.no_qat, qat_float_fallback=fallback, refit=not args.no_refit,
                      output_dir=args.output,
                      methods=methods, **({} if args.qat_epochs is None else {"qat_epochs": args.qat_epochs}),
                      learning_rate=args.learning_rate, seed=args.seed,
                      feature_distill=args.feature_distill,
                      **({} if args.search_samples is None else {"search_samples": args.search_samples}),
                      candidates=args.candidates, multiple_of=args.multiple_of, cache=args.cache,
                      profile_runs=args.runs, profile_repeats=args.repeats,
                      log=lambda line: print(line, file=sys.stderr))
    print(result)
    print(f"\nreport: {Path(args.output) / 'report.md'}; int8 model: {result.export.path}")


def _demo(args):
    from .demo import run_demo

    result = run_demo(output_dir=args.output, target=args.target, finetune_epochs=args.epochs,
                      qat=not args.no_qat, runs=args.runs)
    print()
    print(result.table)
    print(f"\nreport in {result.output_dir}/ (report.md, report.json, plots, .keras and .tflite "
          f"files); {result.seconds:.0f} s")
