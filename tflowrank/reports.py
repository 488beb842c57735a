"""Compare a list of ``ProfileResult``: text table, JSON, CSV, Markdown and a PNG plot.

The first result is the baseline: ratio columns (``x base``) divide each model's figure by the
baseline's. Columns only appear when some result has a value for them (latency is absent on
``"micro"``, TFLM columns elsewhere). Writers take an optional path and write it atomically
(``tflowrank._io``); they always return the text. ``plot`` needs matplotlib (the ``plot`` extra)
and draws with the Agg canvas, without pyplot and without touching matplotlib's global backend.
"""

import csv
import io
import json
import re
import shlex
from dataclasses import fields
from pathlib import Path

from ._io import atomic_path, output_path
from .errors import TflowrankError

__all__ = ["comparison_table", "to_json", "to_csv", "to_markdown", "plot", "render_table"]

_PLOT_INSTALL = "plot() needs matplotlib: pip install 'tflowrank[plot]'"
_TOP_NODE_TYPES = 8  # node types drawn by name in the plot; the rest are summed as "other"


def comparison_table(results):
    """A text table of ``results``, baseline (the first) first, with ratios against it."""
    header, rows = _comparison(results)
    return render_table(header, rows)


def to_json(results, path=None):
    """``results`` as a JSON list of ``ProfileResult.to_dict()``; written to ``path`` if given."""
    _check_results(results)
    text = json.dumps([r.to_dict() for r in results], indent=2) + "\n"
    return _write(path, text)


def to_csv(results, path=None):
    """One CSV row per result: every scalar field, ``micro_*`` fields and the command.

    The op-profiling tables are not flattened here (they are in the JSON and the Markdown).
    """
    _check_results(results)
    rows = [_flat(r) for r in results]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return _write(path, buffer.getvalue())


def to_markdown(results, path=None):
    """A Markdown report: the comparison table, time by node type, and TFLite Micro details."""
    header, rows = _comparison(results)
    lines = ["## Comparison", "", f"Baseline: `{results[0].model}`; `x base` is the ratio to it.", ""]
    lines += _markdown_table(header, rows)
    for r in results:
        if r.device or r.command:
            lines += [
                "",
                f"- `{r.model}`: {r.runner}"
                + (f" on {r.device}" if r.device else "")
                + (f": `{shlex.join(r.command)}`" if r.command else ""),
            ]
    profiled = [r for r in results if r.node_types]
    if profiled:
        lines += ["", "## Time by node type (op profiling, regular runs)"]
        for r in profiled:
            lines += ["", f"### `{r.model}`", ""]
            lines += _markdown_table(
                ("node type", "nodes", "avg ms", "%", "times called"),
                [
                    (t.node_type, str(t.count), f"{t.avg_ms:.3f}", f"{t.percent:.1f}", str(t.times_called))
                    for t in r.node_types
                ],
            )
    micro = [r for r in results if r.micro is not None]
    if micro:
        lines += [
            "",
            "## TFLite Micro",
            "",
            "Flash is the .tflite file size (TFLM's code not counted); RAM is the tensor "
            "arena TFLM's allocator recorded. Parity: TFLM against LiteRT's reference "
            "kernels on the same seeded inputs.",
        ]
        for r in micro:
            m = r.micro
            lines += ["", f"### `{r.model}`", ""]
            if m.problems:
                lines += [f"- TFLite Micro cannot run it: {'; '.join(m.problems)}"]
            lines += [f"- fully int8: {'yes' if m.fully_int8 else 'no'}"]
            lines += _markdown_table(
                ("op", "count", "TFLM kernel"),
                [(op.name, str(op.count), "yes" if op.supported else "**no**") for op in m.ops],
            )
    return _write(path, "\n".join(lines) + "\n")


def plot(results, path):
    """Bars of latency and size per model, and time per node type when op profiling ran.

    Returns the PNG's ``Path``. Raises ``TflowrankError`` if matplotlib is not installed.
    """
    _check_results(results)
    path = output_path(path, "path")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise TflowrankError(_PLOT_INSTALL) from None
    labels = _labels(results)
    panels = [_size_panel]
    if any(r.inference_avg_us is not None for r in results):
        panels.insert(0, _latency_panel)
    if any(r.node_types for r in results):
        panels.append(_node_type_panel)
    height = 3.2 * len(panels) + (1.0 if _node_type_panel in panels else 0.0)
    figure = Figure(figsize=(max(8.0, 1.6 * len(results) + 4), height), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, draw in zip(figure.subplots(len(panels), 1, squeeze=False)[:, 0], panels):
        draw(axes, results, labels)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return path


def render_table(header, rows):
    """Columns padded to their widest cell; the first left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [c.rjust(w) for c, w in zip(row, widths, strict=True)]
        cells[0] = row[0].ljust(widths[0])
        lines.append("  ".join(cells))
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --- the comparison -----------------------------------------------------------------------------


def _columns():
    """(header, value of a result or None, format, ratio against the baseline?)"""

    def micro(name):
        return lambda r: getattr(r.micro, name) if r.micro is not None else None

    def arena_kb(r):
        value = micro("arena_total_bytes")(r)
        return value / 1024 if value is not None else None

    return [
        ("runner", lambda r: r.runner, str, False),
        ("size KB", lambda r: r.size_bytes / 1024, "{:.1f}".format, True),
        ("avg ms", lambda r: _ms(r.inference_avg_us), "{:.3f}".format, True),
        ("median ms", lambda r: _ms(r.inference_median_us), "{:.3f}".format, False),
        ("std ms", lambda r: _ms(r.inference_std_us), "{:.3f}".format, False),
        ("init ms", lambda r: _ms(r.init_us), "{:.1f}".format, False),
        ("peak MB", lambda r: r.peak_memory_mb, "{:.1f}".format, True),
        ("footprint MB", lambda r: r.memory_footprint_mb, "{:.1f}".format, False),
        ("arena KB", arena_kb, "{:.1f}".format, True),
        ("flash", lambda r: _verdict(micro("flash_ok")(r), micro("flash_margin_kb")(r)), str, False),
        ("RAM", lambda r: _verdict(micro("ram_ok")(r), micro("ram_margin_kb")(r)), str, False),
        ("int8", lambda r: ("yes" if r.micro.fully_int8 else "no") if r.micro else None, str, False),
        ("LSB diff", micro("max_lsb_difference"), str, False),
        ("max |diff|", micro("max_abs_difference"), "{:.3g}".format, False),
        ("TFLM", lambda r: (_tflm_state(r.micro)) if r.micro else None, str, False),
    ]


def _comparison(results):
    _check_results(results)
    baseline = results[0]
    header, columns = ["model"], []
    for name, value, fmt, ratio in _columns():
        if all(value(r) is None for r in results):
            continue
        header.append(name)
        columns.append((value, fmt))
        if ratio:
            header.append(f"x base ({name.split()[0]})")
            columns.append((_ratio(value, baseline), "{:.2f}x".format))
    rows = []
    for i, r in enumerate(results):
        name = r.model + (" (baseline)" if i == 0 and len(results) > 1 else "")
        cells = [name]
        for value, fmt in columns:
            v = value(r)
            cells.append("-" if v is None else fmt(v))
        rows.append(tuple(cells))
    return tuple(header), rows


def _ratio(value, baseline):
    def ratio(r):
        base, v = value(baseline), value(r)
        return v / base if base and v is not None else None

    return ratio


def _ms(us):
    return us / 1000 if us is not None else None


def _verdict(ok, margin):
    if ok is None:
        return None
    return f"{'ok' if ok else 'OVER'} ({margin:+.1f} KB)"


def _tflm_state(micro):
    return "runs" if micro.runnable else "cannot run"


def _markdown_table(header, rows):
    def escape(cell):
        return cell.replace("|", "\\|")

    numeric = [all(_is_number(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "| " + " | ".join(map(escape, header)) + " |",
        "|" + "|".join("---:" if n else "---" for n in numeric) + "|",
    ]
    lines += ["| " + " | ".join(map(escape, row)) + " |" for row in rows]
    return lines


def _is_number(cell):
    return bool(re.fullmatch(r"[-+]?[\d.]+x?|-", cell))


def _flat(result):
    row = {}
    for f in fields(result):
        value = getattr(result, f.name)
        if f.name in ("op_profile", "node_types", "micro"):
            continue
        if f.name == "command":
            value = shlex.join(value)
        elif f.name == "repeat_medians_us":
            value = "; ".join(f"{v:g}" for v in value)
        row[f.name] = value
    if result.micro is not None:
        for f in fields(result.micro):
            value = getattr(result.micro, f.name)
            if f.name == "ops":
                value = "; ".join(
                    f"{op.name} x{op.count}" + ("" if op.supported else " (no TFLM kernel)") for op in value
                )
            elif f.name == "problems":
                value = "; ".join(value)
            row[f"micro_{f.name}"] = value
    return row


def _check_results(results):
    if not results:
        raise ValueError("`results` must hold at least one ProfileResult. Received: results=[]")


def _write(path, text):
    if path is not None:
        path = output_path(path, "path")
        with atomic_path(path) as tmp:
            Path(tmp).write_text(text)
    return text


# --- the plot -----------------------------------------------------------------------------------


def _labels(results):
    names = [Path(r.model).name for r in results]
    return names if len(set(names)) == len(names) else [r.model for r in results]


def _latency_panel(axes, results, labels):
    avg = [(r.inference_avg_us or 0) / 1000 for r in results]
    std = [(r.inference_std_us or 0) / 1000 for r in results]
    axes.bar(labels, avg, yerr=std, capsize=4, color="tab:blue")
    axes.set_ylabel("inference avg (ms)")
    axes.set_title("Latency (error bars: std); " + ", ".join(sorted({r.runner for r in results})))
    _annotate_ratios(axes, avg, [a + s for a, s in zip(avg, std)])


def _size_panel(axes, results, labels):
    sizes = [r.size_bytes / 1024 for r in results]
    arenas = [(r.micro.arena_total_bytes or 0) / 1024 if r.micro else None for r in results]
    if any(a for a in arenas if a is not None):
        positions = range(len(results))
        axes.bar([p - 0.2 for p in positions], sizes, width=0.4, label="flash (.tflite)", color="tab:orange")
        axes.bar(
            [p + 0.2 for p in positions],
            [a or 0 for a in arenas],
            width=0.4,
            label="RAM (TFLM arena)",
            color="tab:green",
        )
        axes.set_xticks(list(positions), labels)
        axes.legend()
    else:
        axes.bar(labels, sizes, color="tab:orange")
        _annotate_ratios(axes, sizes, sizes)
    axes.set_ylabel("KB")
    axes.set_title("Model size")


def _node_type_panel(axes, results, labels):
    totals = {}
    for r in results:
        for t in r.node_types:
            totals[t.node_type] = totals.get(t.node_type, 0.0) + t.avg_ms
    named = sorted(totals, key=totals.get, reverse=True)[:_TOP_NODE_TYPES]
    left = [0.0] * len(results)
    colors = iter(
        [
            "tab:blue",
            "tab:orange",
            "tab:green",
            "tab:red",
            "tab:purple",
            "tab:brown",
            "tab:pink",
            "tab:olive",
            "tab:gray",
        ]
    )
    for node_type in [*named, "other"]:
        widths = []
        for r in results:
            times = {t.node_type: t.avg_ms for t in r.node_types}
            if node_type == "other":
                widths.append(sum(v for k, v in times.items() if k not in named))
            else:
                widths.append(times.get(node_type, 0.0))
        if any(widths):
            axes.barh(labels, widths, left=left, label=node_type, color=next(colors))
            left = [a + b for a, b in zip(left, widths)]
    axes.invert_yaxis()
    axes.set_xlabel("avg ms per run")
    axes.set_title("Time by node type (op profiling)")
    axes.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3)


def _annotate_ratios(axes, values, tops):
    base = values[0]
    if not base:
        return
    for i, (v, top) in enumerate(zip(values, tops)):
        axes.annotate(
            f"{v / base:.2f}x vs base",
            (i, top),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize="small",
        )
    axes.margins(y=0.15)
