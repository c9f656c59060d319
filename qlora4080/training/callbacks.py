"""What a run records while it trains: train.log lines, metrics.jsonl, and updates to the live view."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..hardware import Hardware, describe_memory, memory_snapshot
from .panel import MetricRecord, TrainingView, format_line
from .runlog import RunLog

if TYPE_CHECKING:
    from .trainer import CountingTrainer



class MetricsCallback(TrainerCallback):
    """One JSON line per logging step (metrics.jsonl), one readable line in train.log, the view kept current.

    The trainer calls callbacks in every process; the logged values are already averaged over processes,
    so process 0 alone records them (state.is_world_process_zero) and the others do nothing here.
    """

    def __init__(self, log: RunLog, metrics_path: Path, view: TrainingView, hardware: Hardware):
        self.log = log
        self.metrics_path = metrics_path
        self.view = view
        self.hardware = hardware
        self.trainer: CountingTrainer | None = None  # set once the trainer exists: its token counters feed the rates
        self._last = (time.monotonic(), 0, 0)
        self.history: list[MetricRecord] = []

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object) -> None:
        tokens, trained = self._tokens()
        if not state.is_world_process_zero:
            return
        self._last = (time.monotonic(), tokens, trained)
        self.view.start(state.max_steps, state.global_step)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: object) -> None:
        if state.is_world_process_zero:
            self.view.advance(state.global_step)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, **kwargs: object) -> None:
        now, (tokens, trained) = time.monotonic(), self._tokens()  # in every process: a sum over all of them
        if not logs or not state.is_world_process_zero:
            return
        record: MetricRecord = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs}
        then, tokens_then, trained_then = self._last
        if "loss" in logs and now > then and tokens > tokens_then:
            record["tokens_per_second"] = round((tokens - tokens_then) / (now - then), 2)
            record["trained_tokens_per_second"] = round((trained - trained_then) / (now - then), 2)
            record["tokens_seen"], record["trained_tokens_seen"] = tokens, trained
            self._last = (now, tokens, trained)
        snapshot = memory_snapshot(self.hardware)
        record.update({f"mem_{k}_gib": round(v / 2**30, 3) for k, v in snapshot.items()})
        self.view.update(record)
        line = format_line({**record, "memory": describe_memory(snapshot)}, state.max_steps)
        self.history.append(record)
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self.log.line(line, echo=not self.view.live_enabled)

    def _tokens(self) -> tuple[int, int]:
        """Tokens seen and trained so far by all processes (the trainer calls on_log in each, at the same step)."""
        from ..distributed import sum_over_processes

        if self.trainer is None:
            return 0, 0
        seen, trained = sum_over_processes([self.trainer.tokens_seen, self.trainer.trained_tokens_seen])
        return seen, trained
