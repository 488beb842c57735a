"""CompressionPlan: which method and rank each layer gets, and what that is predicted to cost.

``tflowrank.search`` makes one; ``tflowrank.factorize(model, plan)`` applies it. A plan is plain
data (no Keras): it round-trips through JSON and prints as a table.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["CompressionPlan", "PlanEntry"]

_FORMAT = 1
COSTS = ("macs", "params", "latency")


@dataclass(frozen=True)
class PlanEntry:
    """One candidate layer of a plan.

    ``layer``: its path in the model (``outer/inner_conv`` inside nested models); ``method`` and
    ``rank``: what replaces it, both None when it is left as it is; ``cost_before`` /
    ``cost_after``: its cost in the plan's unit; ``predicted_score``: the model's score measured
    (interpolated) with this layer alone compressed this way.
    """

    layer: str
    method: str | None
    rank: int | tuple | None
    cost_before: float
    cost_after: float
    predicted_score: float

    @property
    def factorized(self):
        return self.method is not None


@dataclass(frozen=True)
class CompressionPlan:
    """Per-layer methods and ranks, with the predicted total cost and score.

    ``cost``: ``"macs"``, ``"params"`` or ``"latency"`` (microseconds per inference); ``target``:
    the fraction of ``total_before`` asked for; ``total_after``: the predicted total;
    ``baseline_score``: the original model's score; ``predicted_score``: the baseline minus the
    sum of the per-layer score drops.
    """

    cost: str
    target: float
    total_before: float
    total_after: float
    baseline_score: float
    predicted_score: float
    entries: tuple = field(default_factory=tuple)
    multiple_of: int = 1

    def __post_init__(self):
        if self.cost not in COSTS:
            raise ValueError(f"`cost` must be one of {', '.join(map(repr, COSTS))}. "
                             f"Received: cost={self.cost!r}")
        object.__setattr__(self, "entries", tuple(self.entries))

    @property
    def fraction(self):
        """``total_after / total_before``: the share of the original cost the plan keeps."""
        return self.total_after / self.total_before if self.total_before else 1.0

    @property
    def factorized(self):
        """The entries that replace their layer."""
        return tuple(e for e in self.entries if e.factorized)

    @property
    def methods(self):
        """The methods the plan uses, in first-use order."""
        return tuple(dict.fromkeys(e.method for e in self.factorized))

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self):
        data = asdict(self)
        data["entries"] = [dict(asdict(e), rank=list(e.rank) if isinstance(e.rank, tuple) else e.rank)
                           for e in self.entries]
        return {"tflowrank_plan": _FORMAT, **data}

    def to_json(self, indent=2):
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict) or data.get("tflowrank_plan") != _FORMAT:
            raise ValueError("Not a tflowrank compression plan (format "
                             f"{_FORMAT}). Received: {str(data)[:120]!r}")
        data = dict(data)
        del data["tflowrank_plan"]
        try:
            entries = tuple(
                PlanEntry(**dict(e, rank=tuple(e["rank"]) if isinstance(e["rank"], list) else e["rank"]))
                for e in data.pop("entries"))
            return cls(entries=entries, **data)
        except (KeyError, TypeError) as error:
            raise ValueError(f"A compression plan is missing or has unknown fields: {error}") from None

    @classmethod
    def from_json(cls, text):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"`text` is not JSON: {error}") from None
        return cls.from_dict(data)

    def save(self, path):
        """Write the plan as JSON to ``path`` (atomically); return the path."""
        from ._io import output_path, write_bytes_atomic

        return write_bytes_atomic(output_path(path, "path"), self.to_json().encode())

    @classmethod
    def load(cls, path):
        from ._io import input_path

        return cls.from_json(Path(input_path(path, "path")).read_text())

    # -- text ----------------------------------------------------------------------------------
    def __str__(self):
        unit = {"macs": "MACs", "params": "params", "latency": "us"}[self.cost]
        header = ("layer", "method", "rank", f"{unit} before", f"{unit} after", "kept", "score")
        rows = []
        for e in self.entries:
            rank = "-" if e.rank is None else ("x".join(map(str, e.rank)) if isinstance(e.rank, tuple)
                                               else str(e.rank))
            kept = f"{100 * e.cost_after / e.cost_before:.1f}%" if e.cost_before else "-"
            rows.append((e.layer, e.method or "(kept)", rank, _num(e.cost_before),
                         _num(e.cost_after), kept, f"{e.predicted_score:.4f}"))
        rows.append(("total", "", "", _num(self.total_before), _num(self.total_after),
                     f"{100 * self.fraction:.1f}%", f"{self.predicted_score:.4f}"))
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

        def line(cells):
            return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        rule = "-" * len(line(header))
        title = (f"Compression plan: {self.cost} to {self.target:.3g} of the original "
                 f"(reached {self.fraction:.3f}); score {self.baseline_score:.4f} -> "
                 f"{self.predicted_score:.4f} predicted")
        return "\n".join([title, line(header), rule, *map(line, rows[:-1]), rule, line(rows[-1])])


def _num(value):
    return f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 100 else f"{value:,.1f}"
