"""What `qlora4080 eval` found: each model's metrics, and each model's table of per-record rows.

The two are kept apart: the metrics are what the side-by-side table and
`qlora4080 runs` read, the rows are the evidence behind them (an answer and
what was checked of it, or a pair's margin). Models are named by the column
they get: "base" (adapter off), "sft" (the checkpoint a preference run started
from), "adapter" (the checkpoint), "model" (a folder with no adapter).

`to_json()` is eval.json's shape, which users and `runs` read:

    {"base": {metric: value, ..., "failures": {reason: count}}, "adapter": {...},
     "records": {"base": [row, ...], "adapter": [row, ...]}}

(`write_report` puts "data", the file evaluated, first.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

Number = float | int
MetricValue = Number | Mapping[str, int]
"""A metric's value: a number, or for "failures" the count of answers per reason they were not usable."""
Metrics = Mapping[str, MetricValue]
"""One model's metrics by key ("perplexity", "usability_rate", "preference_accuracy", ...; always "failures")."""


@dataclass(frozen=True)
class AnswerRow:
    """One record's generated answer and what was checked of it (the conversation eval)."""

    id: str
    answer: str
    usable: bool
    failures: tuple[str, ...]
    """Why the answer is not usable; empty when it is."""
    checks: Mapping[str, object] = field(default_factory=dict)
    """What the record's tags asked for, only those: "json_valid", "json_same_keys" (tagged json), "answer_number",
    "reference_number", "exact_match" (tagged math), "f1" (tagged math or short)."""

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "answer": self.answer, "usable": self.usable, "failures": list(self.failures),
                **self.checks}


@dataclass(frozen=True)
class PairRow:
    """One preference pair as a model scores it (the preference and feedback evals)."""

    id: str
    margin: float
    """Log-probability of the chosen answer minus that of the rejected one."""
    prefers_chosen: bool

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "margin": self.margin, "prefers_chosen": self.prefers_chosen}


Row = AnswerRow | PairRow


@dataclass(frozen=True)
class EvalReport:
    metrics: Mapping[str, Metrics]
    """Each model's metrics, by its column name, in the table's order."""
    rows: Mapping[str, Sequence[Row]]
    """Each model's per-record rows, by the same names."""

    def number(self, model: str, key: str) -> Number | None:
        """A model's metric, when it was measured (a metric no record was tagged for is absent)."""
        value = self.metrics[model].get(key)
        return value if isinstance(value, (int, float)) else None

    def failures(self, model: str) -> Mapping[str, int]:
        """How many of a model's answers were not usable, by reason."""
        value = self.metrics[model].get("failures")
        return value if isinstance(value, Mapping) else {}

    def to_json(self) -> dict[str, object]:
        """eval.json, less its "data" key."""
        return {**{model: {key: dict(value) if isinstance(value, Mapping) else value for key, value in metrics.items()}
                   for model, metrics in self.metrics.items()},
                "records": {model: [row.to_json() for row in rows] for model, rows in self.rows.items()}}
