"""What a run tells the user while it trains: log lines on screen and in train.log, metrics.jsonl."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..console import console
from ..hardware import process_rss_bytes


class RunLog:
    """Plain lines to the console and to runs/<run>/train.log, with a clock."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = path.open("a", encoding="utf-8")
        self.started = time.monotonic()

    def line(self, message: str, style: str | None = None) -> None:
        console.print(message, style=style, highlight=False)
        self._handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


class MetricsCallback(TrainerCallback):
    """One JSON line per logging step (metrics.jsonl) and one readable line per step."""

    def __init__(self, log: RunLog, metrics_path: Path):
        self.log = log
        self.metrics_path = metrics_path
        self._last_time: float | None = None
        self._last_tokens: float | None = None
        self.history: list[dict[str, Any]] = []

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - transformers' signature
        self._last_time = time.monotonic()
        self._last_tokens = 0.0

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if not logs:
            return
        now = time.monotonic()
        record: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs}
        tokens = logs.get("num_tokens")
        if tokens is not None and self._last_tokens is not None and self._last_time is not None and now > self._last_time:
            record["tokens_per_second"] = round((tokens - self._last_tokens) / (now - self._last_time), 2)
            self._last_tokens, self._last_time = tokens, now
        rss = process_rss_bytes()
        if rss:
            record["rss_gib"] = round(rss / 2**30, 3)
        self.history.append(record)
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self.log.line(_format(record, state.max_steps))


# Metrics shown on a log line, in order, each with how to print it.
_FIELDS: list[tuple[str, Any]] = [
    ("loss", lambda v: f"loss {v:.4f}"),
    ("eval_loss", lambda v: f"eval_loss {v:.4f} (ppl {math.exp(min(v, 50)):.2f})"),
    ("learning_rate", lambda v: f"lr {v:.2e}"),
    ("grad_norm", lambda v: f"grad {v:.3f}"),
    ("tokens_per_second", lambda v: f"{v:.0f} tok/s"),
    ("train_runtime", lambda v: f"done in {v:.1f}s"),
]


def _format(record: dict[str, Any], max_steps: int) -> str:
    parts = [f"step {record['step']}/{max_steps}", f"epoch {record['epoch']:.2f}"]
    parts += [show(record[key]) for key, show in _FIELDS if key in record]
    return " | ".join(parts)
