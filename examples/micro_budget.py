"""Which compression levels of the Fashion-MNIST CNN fit a microcontroller's flash and RAM?

    python examples/micro_budget.py                 # 256 KB flash, 128 KB RAM; 3-5 min on 2 cores
    python examples/micro_budget.py --flash-kb 100 --ram-kb 64     # the baseline no longer fits

Tries a few factorization levels of the shipped baseline (method "spatial" on conv2-conv4, each
keeping at most a share ``--ranks`` of its MACs; 1.0 is the baseline itself), optionally
fine-tunes each briefly, exports each to full int8 with int8 input and output, and measures:

- flash: the size of the .tflite file, which is what the C array puts in flash;
- RAM: the tensor arena TensorFlow Lite Micro reports using (``run_micro``, reference kernels);
- top-1 accuracy of the int8 model with LiteRT on ``--test-samples`` test images.

It then reports which levels fit both budgets and the most accurate of those. What it does NOT
count, so leave room for it: the TFLM runtime's own code in flash (tens of KB, depending on the
kernels linked), and in RAM the stack, the application and anything outside the arena. Without
fine-tuning (``--epochs 0``) the factorized models lose more accuracy than they need to.
"""

import argparse
import json
from pathlib import Path

import tflowrank
from tflowrank import zoo
from tflowrank.datasets import fashion_mnist
from tflowrank.micro import run_micro

LAYERS = ["conv2", "conv3", "conv4"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flash-kb", type=float, default=256, help="flash budget for the model (KB)")
    parser.add_argument("--ram-kb", type=float, default=128, help="RAM budget for the arena (KB)")
    parser.add_argument("--ranks", type=float, nargs="+", default=[1.0, 0.5, 0.3, 0.2],
                        help="shares of MACs kept in conv2-conv4; 1.0 = baseline")
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs per model (0: none)")
    parser.add_argument("--train-samples", type=int, default=20000, help="images for fine-tuning")
    parser.add_argument("--test-samples", type=int, default=2000, help="images for accuracy")
    parser.add_argument("--seed", type=int, default=0, help="seed of each fine-tuning run")
    parser.add_argument("--output", default="micro_budget", help="folder for the outputs")
    args = parser.parse_args(argv)
    for rank in args.ranks:
        if not 0 < rank <= 1:
            parser.error(f"--ranks must be in (0, 1]; received {rank}")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    (x_train, y_train), (x_test, y_test) = fashion_mnist()
    x_train, y_train = zoo.prepare_images(x_train[: args.train_samples]), y_train[: args.train_samples]
    x_test, y_test = zoo.prepare_images(x_test[: args.test_samples]), y_test[: args.test_samples]
    baseline = zoo.load_fashion_cnn()

    rows = []
    for rank in args.ranks:
        if rank == 1.0:
            name, model = "baseline", baseline
        else:
            name = f"spatial {rank:g}"
            model = tflowrank.factorize(baseline, "spatial", rank=rank, layers=LAYERS)
            if args.epochs:
                import keras

                keras.utils.set_random_seed(args.seed)  # each level's result independent of the others
                zoo.compile_classifier(model, learning_rate=5e-4)
                model.fit(x_train, y_train, batch_size=128, epochs=args.epochs, verbose=0)
        exported = tflowrank.export_tflite(model, out / f"{name.replace(' ', '_')}_int8.tflite",
                                           quantize="int8", representative_data=x_train[:500],
                                           int8_io=True)
        arena = run_micro(exported.path, x_test[:2]).arena_total_bytes
        row = {
            "model": name, "rank": rank, "macs": tflowrank.cost(model).macs,
            "flash_bytes": exported.size_bytes, "arena_bytes": arena,
            "int8_top1": tflowrank.evaluate_tflite(exported.path, x_test, y_test),
            "fits": exported.size_bytes <= args.flash_kb * 1024 and arena <= args.ram_kb * 1024,
        }
        rows.append(row)
        print(f"{name}: flash {row['flash_bytes'] / 1024:.1f} KB, arena {arena / 1024:.1f} KB, "
              f"int8 top-1 {row['int8_top1']:.4f}", flush=True)

    print(f"\nbudget: {args.flash_kb:g} KB flash for the model, {args.ram_kb:g} KB RAM for the arena; "
          f"top-1 on {len(x_test)} test images, fine-tuning {args.epochs} epoch(s) on "
          f"{len(x_train)} images")
    print(table(rows))
    fitting = [r for r in rows if r["fits"]]
    best = max(fitting, key=lambda r: r["int8_top1"]) if fitting else None
    if best:
        print(f"\nmost accurate that fits: {best['model']} (top-1 {best['int8_top1']:.4f}, "
              f"{best['flash_bytes'] / 1024:.1f} KB flash, {best['arena_bytes'] / 1024:.1f} KB arena)")
    else:
        print("\nnone fits. Lower --ranks shrink the flash; the arena holds the largest activations,\n"
              "which factorizing weights does not shrink (the chains even add intermediate tensors)")
    print("not counted: the TFLM runtime code in flash; the stack and application in RAM")
    report = {"flash_kb": args.flash_kb, "ram_kb": args.ram_kb, "epochs": args.epochs, "seed": args.seed,
              "train_samples": len(x_train), "test_samples": len(x_test), "rows": rows,
              "best": best["model"] if best else None}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def table(rows):
    header = ("model", "MACs", "flash KB", "arena KB", "int8 top-1", "fits")
    lines = [header] + [
        (r["model"], f"{r['macs']:,}", f"{r['flash_bytes'] / 1024:.1f}", f"{r['arena_bytes'] / 1024:.1f}",
         f"{r['int8_top1']:.4f}", "yes" if r["fits"] else "no")
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
            for line in lines]
    text.insert(1, "-" * len(text[0]))
    return "\n".join(text)


if __name__ == "__main__":
    main()
