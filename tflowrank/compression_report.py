"""The report folder of ``tflowrank.compress``: report.md, report.json and three PNG plots.

Everything here works on the plain dict ``compress`` assembles (no Keras, no TensorFlow): the
summary table, the per-layer table, and with matplotlib (the ``plot`` extra; drawn on the Agg
canvas without pyplot) ``sensitivity.png`` (per-layer sensitivity curves), ``accuracy_vs_macs.png``
(the single-layer candidates, the predicted plans at other targets and the final measured point)
and ``ranks.png`` (the share of each layer's cost kept, by method).
"""

import json
from pathlib import Path

from ._io import atomic_path

__all__ = ["write_report", "summary_table"]

PLOTS = ("sensitivity.png", "accuracy_vs_macs.png", "ranks.png")
_COLORS = {"spatial": "#1f77b4", "svd": "#ff7f0e", "tucker2": "#2ca02c", "cp": "#d62728",
           "tucker2_spatial": "#9467bd", "output": "#8c564b", None: "#b0b0b0"}


def _rate_words(settings):
    rate = settings.get("learning_rate")  # reports written before it was recorded: none
    return "" if rate is None else f" (Adam, peak learning rate {rate:g})"


def _qat_words(settings):
    """How the report states the int8 path (reports written before ``qat_epochs`` had a whole
    quantization-aware last epoch)."""
    if not settings.get("qat"):
        return ", post-training int8"
    return f", the last {settings.get('qat_epochs', 1):g} epoch(s) of it quantization-aware"


def write_report(folder, data):
    """Write ``report.json``, the plots and ``report.md`` into ``folder``; return notes (lines
    worth telling the user, e.g. plots skipped for want of matplotlib)."""
    folder = Path(folder)
    notes = []
    with atomic_path(folder / "report.json") as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    try:
        plots = _draw_all(folder, data)
    except ImportError:
        plots = []
        notes.append("plots skipped: matplotlib is not installed (pip install 'tflowrank[plot]')")
    with atomic_path(folder / "report.md") as tmp:
        tmp.write_text(markdown(data, plots, notes))
    return notes


def summary_table(data):
    """Baseline against compressed: cost, size, accuracy and host latency, with ratios."""
    rows = [
        ("MACs", f"{data['baseline_macs']:,}", f"{data['macs']:,}",
         _ratio(data["baseline_macs"], data["macs"])),
        ("parameters", f"{data['baseline_params']:,}", f"{data['params']:,}",
         _ratio(data["baseline_params"], data["params"])),
        ("int8 file KB", f"{data['baseline_int8_bytes'] / 1024:.1f}", f"{data['int8_bytes'] / 1024:.1f}",
         _ratio(data["baseline_int8_bytes"], data["int8_bytes"])),
        ("float32 file KB / int8 file KB", f"{data['baseline_float32_bytes'] / 1024:.1f}",
         f"{data['int8_bytes'] / 1024:.1f}", _ratio(data["baseline_float32_bytes"], data["int8_bytes"])),
        ("top-1 Keras", f"{data['baseline_accuracy']:.4f}", f"{data['keras_accuracy']:.4f}",
         f"{100 * (data['keras_accuracy'] - data['baseline_accuracy']):+.2f} pt"),
        ("top-1 int8 TFLite", f"{data['baseline_tflite_accuracy']:.4f}", f"{data['tflite_accuracy']:.4f}",
         f"{100 * (data['tflite_accuracy'] - data['baseline_tflite_accuracy']):+.2f} pt"),
        ("int8 vs float32 baseline", "", "",
         f"{100 * (data['tflite_accuracy'] - data['baseline_accuracy']):+.2f} pt"),
        ("int8 host median ms", f"{data['baseline_int8_median_us'] / 1000:.3f}",
         f"{data['int8_median_us'] / 1000:.3f}",
         _ratio(data["baseline_int8_median_us"], data["int8_median_us"])),
    ]
    header = ("", "baseline", "compressed", "ratio")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _feature_words(settings):
    weight = settings.get("feature_distill")
    return (f", the factorized layers matched to the input model's (weight {weight:g})"
            if weight else "")


def _latency_words(data, settings):
    """How the latency was timed, and with ``cost="latency"`` where it landed against the target."""
    profiles = data.get("profiles") or {}
    compressed = profiles.get("compressed") or {}
    if not compressed.get("repeat_medians_us"):
        return []
    rounds = compressed.get("repeats", 1)
    words = [f"Host latency: the median of {compressed['runs'] // rounds} runs"
             + (f", over {rounds} rounds alternating the two files, each in a fresh process for "
                "the in-process runner (median of the rounds)" if rounds > 1 else "")
             + f" ({compressed.get('runner')}, {compressed.get('threads')} thread(s))."]
    baseline = profiles.get("baseline") or {}
    if rounds > 1 and baseline.get("repeat_medians_us"):  # a spread shows a machine that moved
        words.append("The rounds ranged " + ", ".join(
            f"{min(p['repeat_medians_us']):.1f}-{max(p['repeat_medians_us']):.1f} us ({name})"
            for name, p in (("baseline", baseline), ("compressed", compressed))) + ".")
    if data["plan"]["cost"] == "latency" and data.get("baseline_int8_median_us"):
        measured = data["int8_median_us"] / data["baseline_int8_median_us"]
        target = settings.get("target")
        words.append(f"Measured: {measured:.3f} of the baseline's latency"
                     + (f", {measured / target:.2f} of the budget ({target} of the baseline)"
                        if target else "") + ".")
    return [" ".join(words), ""]


def markdown(data, plots=(), notes=()):
    settings = data.get("settings", {})
    plan = data["plan"]
    lines = [f"# tflowrank compress: {data.get('model', 'model')}", ""]
    lines += [f"Target: {settings.get('target')} of the {plan['cost']} "
              f"(reached {plan['total_after'] / plan['total_before']:.3f} predicted); "
              f"fine-tuning {settings.get('finetune_epochs')} epoch(s)"
              f"{_rate_words(settings)}"
              f"{', distilled from the input model' if settings.get('distill') else ''}"
              f"{_feature_words(settings)}"
              f"{_qat_words(settings)}; "
              f"validation: {settings.get('val_samples')} samples; sensitivities scored on "
              f"{settings.get('search_samples')} training samples.", ""]
    lines += ["## Result", "", "```", summary_table(data), "```", ""]
    lines += _latency_words(data, settings)
    if "after_factorize_accuracy" in data:
        lines += [f"Top-1 right after factorization (batch-norm statistics re-estimated, before "
                  f"fine-tuning): {data['after_factorize_accuracy']:.4f}.", ""]
    refitted = [row for row in data.get("refit") or [] if row["applied"]]
    if refitted:
        lines += ["Last factors refitted to the input model's responses (relative error before -> "
                  "after): " + ", ".join(f"{row['layer']} {row['error_before']:.3f} -> "
                                         f"{row['error_after']:.3f}" for row in refitted) + ".", ""]
    lines += ["## Plan", "", "| layer | method | rank | cost before | cost after | kept | "
              "predicted score |", "|---|---|---|---:|---:|---:|---:|"]
    for row in data.get("layers", []):
        rank = "-" if row["rank"] is None else (
            "x".join(map(str, row["rank"])) if isinstance(row["rank"], list) else str(row["rank"]))
        kept = row["cost_after"] / row["cost_before"] if row["cost_before"] else 1.0
        lines.append(f"| {row['layer']} | {row['method'] or '(kept)'} | {rank} | "
                     f"{row['cost_before']:,.0f} | {row['cost_after']:,.0f} | {100 * kept:.1f}% | "
                     f"{row['predicted_score']:.4f} |")
    lines += ["", f"Predicted score (search data): {plan['baseline_score']:.4f} -> "
                  f"{plan['predicted_score']:.4f} (the sum of the single-layer drops: pessimistic "
                  "before fine-tuning, and it ignores fine-tuning).", ""]
    if data.get("ops"):
        lines += ["int8 graph ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(data["ops"].items())), ""]
    if data.get("seconds"):
        lines += ["## Time", "", "| stage | seconds |", "|---|---:|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in data["seconds"].items()]
        lines.append("")
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{name}]({name})" for name in plots]
        lines.append("")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    files = data.get("files", {})
    if files:
        lines += ["## Files", ""] + [f"- {k}: `{Path(v).name}`" for k, v in files.items()] + [""]
    return "\n".join(lines)


# -- plots -----------------------------------------------------------------------------------------

def _draw_all(folder, data):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401  (ImportError -> skip)

    drawn = []
    for name, draw in (("sensitivity.png", _sensitivity_plot), ("accuracy_vs_macs.png", _frontier_plot),
                       ("ranks.png", _ranks_plot)):
        figure = draw(data)
        if figure is not None:
            with atomic_path(folder / name) as tmp:
                figure.savefig(tmp, format="png", dpi=100)
            drawn.append(name)
    return drawn


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _sensitivity_plot(data):
    sensitivity = data.get("sensitivity") or {}
    curves = sensitivity.get("curves", [])
    layers = list(dict.fromkeys(c["layer"] for c in curves))
    if not layers:
        return None
    columns = min(3, len(layers))
    rows = -(-len(layers) // columns)
    figure = _figure(4.2 * columns, 3.2 * rows)
    axes = figure.subplots(rows, columns, squeeze=False)
    chosen = {row["layer"]: row for row in data.get("layers", []) if row["method"]}
    for index, layer in enumerate(layers):
        ax = axes[index // columns][index % columns]
        for curve in (c for c in curves if c["layer"] == layer):
            kept = [p[0] for p in curve["points"]]
            score = [p[1] for p in curve["points"]]
            ax.plot(kept, score, marker="o", markersize=3, color=_COLORS.get(curve["method"]),
                    label=curve["method"], linewidth=2.2 if curve["chosen"] else 1.0)
        pick = chosen.get(layer)
        if pick and pick["cost_before"] and data["plan"]["cost"] == "macs":
            ax.plot([pick["cost_after"] / pick["cost_before"]], [pick["predicted_score"]], marker="*",
                    markersize=13, color="black", linestyle="none", label="chosen")
        ax.axhline(sensitivity.get("baseline", 0), color="gray", linestyle="--", linewidth=0.8)
        ax.set_title(layer, fontsize=10)
        _log_share_axis(ax)
        ax.set_xlabel("share of the layer's MACs kept")
        ax.set_ylabel("score, this layer alone compressed")
        ax.legend(fontsize=7)
    for index in range(len(layers), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    figure.suptitle("Per-layer sensitivity (dashed: the original model)")
    return figure


def _frontier_plot(data):
    figure = _figure(7.5, 5)
    ax = figure.subplots()
    baseline_macs = data["baseline_macs"]
    sensitivity = data.get("sensitivity") or {}
    layers = {row["layer"]: row for row in data.get("layers", [])}
    for method in dict.fromkeys(c["method"] for c in sensitivity.get("curves", [])):
        xs, ys = [], []
        for curve in (c for c in sensitivity["curves"] if c["method"] == method):
            row = layers.get(curve["layer"])
            if row is None or data["plan"]["cost"] != "macs":
                continue
            for kept, score, _ in curve["points"]:  # model MACs with this layer alone compressed
                xs.append(1 - row["cost_before"] * (1 - kept) / data["plan"]["total_before"])
                ys.append(score)
        if xs:
            ax.scatter(xs, ys, s=10, alpha=0.5, color=_COLORS.get(method), label=f"one layer: {method}")
    frontier = data.get("frontier", [])
    if frontier:
        ax.plot([p["macs_fraction"] for p in frontier], [p["predicted_score"] for p in frontier],
                color="black", marker="s", markersize=4, linewidth=1,
                label="plans at other targets (predicted)")
    ax.scatter([1.0], [data["baseline_accuracy"]], marker="D", s=50, color="gray",
               label="baseline (validation)")
    fraction = data["macs"] / baseline_macs
    ax.scatter([fraction], [data["keras_accuracy"]], marker="*", s=160, color="green",
               label="final, Keras (validation)")
    ax.scatter([fraction], [data["tflite_accuracy"]], marker="*", s=160, color="purple",
               label="final, int8 TFLite (validation)")
    ax.set_xlabel("share of the model's MACs kept")
    ax.set_ylabel("top-1")
    _log_share_axis(ax)
    ax.set_title("Accuracy against MACs")
    ax.legend(fontsize=7, loc="lower right")
    return figure


def _ranks_plot(data):
    rows = data.get("layers", [])
    if not rows:
        return None
    figure = _figure(max(6.0, 0.7 * len(rows) + 2), 4)
    ax = figure.subplots()
    kept = [r["cost_after"] / r["cost_before"] if r["cost_before"] else 1.0 for r in rows]
    colors = [_COLORS.get(r["method"], "#555555") for r in rows]
    bars = ax.bar(range(len(rows)), kept, color=colors)
    for bar, row in zip(bars, rows):
        rank = row["rank"]
        text = "kept" if rank is None else ("x".join(map(str, rank)) if isinstance(rank, list) else str(rank))
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                    va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), [r["layer"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"share of the layer's {data['plan']['cost']} kept")
    ax.set_ylim(0, 1.12)
    from matplotlib.patches import Patch

    used = list(dict.fromkeys(r["method"] for r in rows))
    ax.legend([Patch(color=_COLORS.get(m, "#555555")) for m in used], [m or "left as is" for m in used],
              fontsize=7)
    ax.set_title("Per-layer method and rank (bar label: rank)")
    return figure


def _log_share_axis(ax):
    """A log x axis labelled in percent, without the crowded minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{100 * value:g}%"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _ratio(before, after):
    return f"{before / after:.2f}x" if after else "-"
