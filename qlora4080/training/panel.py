"""What the user watches while training: a live Rich panel on a terminal, plain log lines elsewhere."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..console import console
from ..hardware import Hardware, describe_memory, memory_snapshot
from ..perplexity import from_loss

SMOOTHING = 0.9  # exponential moving average of the loss


MetricRecord: TypeAlias = dict[str, int | float | str]
"""One line of metrics.jsonl: step, epoch, trainer logs (loss, lr, ...), token rates, memory (written by callbacks.py)."""


class TrainingView:
    """Shows progress and metrics. `live=False` (CI, redirected output) prints one line per logging step."""

    def __init__(self, title: str, hardware: Hardware, live: bool | None = None):
        self.title = title
        self.hardware = hardware
        self.live_enabled = _can_show_live() if live is None else live
        self.metrics: MetricRecord = {}
        self.smoothed: float | None = None
        self._ema, self._ema_count = 0.0, 0
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("steps"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
        )
        self._task = self._progress.add_task("training", total=None)
        self._live: Live | None = None

    def start(self, total_steps: int, completed: int = 0) -> None:
        self._progress.update(self._task, total=total_steps, completed=completed)
        if self.live_enabled:
            self._live = Live(self._render(), console=console, refresh_per_second=4, transient=False)
            self._live.start()

    def advance(self, step: int) -> None:
        self._progress.update(self._task, completed=step)
        self._refresh()

    def update(self, record: MetricRecord) -> None:
        """A logging step's metrics (from the trainer's logs plus token rates)."""
        if "loss" in record:
            # bias-corrected EMA (as in Adam), so early values are not dragged toward the first loss
            self._ema = SMOOTHING * self._ema + (1 - SMOOTHING) * float(record["loss"])
            self._ema_count += 1
            self.smoothed = self._ema / (1 - SMOOTHING**self._ema_count)
            record["loss_smoothed"] = round(self.smoothed, 6)
        self.metrics.update(record)
        self._refresh()

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _render(self) -> Panel:
        m = self.metrics
        table = Table.grid(padding=(0, 3))
        table.add_column(style="dim")
        table.add_column()
        table.add_column(style="dim")
        table.add_column()
        loss = f"{m['loss']:.4f} (smoothed {self.smoothed:.4f})" if "loss" in m and self.smoothed is not None else "-"
        evaluation = f"{m['eval_loss']:.4f} (ppl {from_loss(float(m['eval_loss'])):.2f})" if "eval_loss" in m else "-"
        rates = (f"{m['trained_tokens_per_second']:.0f} trained / {m['tokens_per_second']:.0f} total"
                 if "tokens_per_second" in m else "-")
        table.add_row("loss", loss, "epoch", f"{m.get('epoch', 0):.2f}")
        table.add_row("lr", f"{m['learning_rate']:.2e}" if "learning_rate" in m else "-",
                      "grad norm", f"{m['grad_norm']:.3f}" if "grad_norm" in m else "-")
        table.add_row("tokens/s", rates, "eval loss", evaluation)
        if "rewards/margins" in m:  # preference tuning: the numbers that say whether it is working
            # DPO logs how often the chosen answer wins; KTO (unpaired answers) logs its KL estimate instead
            right = (("pref accuracy", f"{m['rewards/accuracies']:.0%}") if "rewards/accuracies" in m
                     else ("kl", f"{m['kl']:.3f}") if "kl" in m else ("", ""))
            table.add_row("reward margin", f"{m['rewards/margins']:.3f} (chosen {m.get('rewards/chosen', 0):.3f}, "
                          f"rejected {m.get('rewards/rejected', 0):.3f})", *right)
        if "reward" in m:  # GRPO: the rewards are what training raises (its loss is about 0 on policy)
            table.add_row("reward", f"{m['reward']:.3f} (std {m.get('reward_std', 0):.3f})",
                          "kl" if "kl" in m else "", f"{m['kl']:.4f}" if "kl" in m else "")
            table.add_row("by reward", _reward_means(m), "answers", _answer_lengths(m))
        table.add_row("memory", describe_memory(memory_snapshot(self.hardware)), "", "")
        return Panel(Group(self._progress.get_renderable(), table), title=self.title, border_style="cyan")


def _reward_means(metrics: Mapping[str, Any]) -> str:
    """Each reward function's mean ("rewards/<name>/mean"), as TRL logs them."""
    means = [(key[len("rewards/"):-len("/mean")], value) for key, value in metrics.items()
             if key.startswith("rewards/") and key.endswith("/mean") and isinstance(value, (int, float))]
    return ", ".join(f"{name} {value:.2f}" for name, value in means) or "-"


def _answer_lengths(metrics: Mapping[str, Any]) -> str:
    """Mean answer length in tokens, and the share cut at max_completion_length."""
    if "completions/mean_length" not in metrics:
        return "-"
    return (f"{metrics['completions/mean_length']:.0f} tokens, "
            f"{metrics.get('completions/clipped_ratio', 0):.0%} cut at the limit")


def _can_show_live() -> bool:
    """A terminal, or a notebook that can redraw output in place (Rich needs ipywidgets there)."""
    if console.is_jupyter:
        from ..hardware import has_module

        return has_module("ipywidgets")
    return console.is_terminal


def format_line(record: MetricRecord, max_steps: int) -> str:
    """The plain-text line for train.log and non-terminal output."""
    parts = [f"step {record['step']}/{max_steps}", f"epoch {record['epoch']:.2f}"]
    parts += [show(record[key]) for key, show in _FIELDS if key in record]
    if "reward" in record and (means := _reward_means(record)) != "-":
        after = parts.index(f"reward {record['reward']:.3f}") + (2 if "reward_std" in record else 1)
        parts.insert(after, means)
    return " | ".join(parts)


# Metrics shown on a log line, in order, each with how to print it.
_FIELDS: list[tuple[str, Callable[[Any], str]]] = [
    ("loss", lambda v: f"loss {v:.4f}"),
    ("loss_smoothed", lambda v: f"smoothed {v:.4f}"),
    ("eval_loss", lambda v: f"eval_loss {v:.4f} (ppl {from_loss(v):.2f})"),
    ("learning_rate", lambda v: f"lr {v:.2e}"),
    ("grad_norm", lambda v: f"grad {v:.3f}"),
    # preference tuning (DPO, KTO): how far the policy prefers the chosen answer over the rejected one
    ("rewards/chosen", lambda v: f"reward chosen {v:.3f}"),
    ("rewards/rejected", lambda v: f"rejected {v:.3f}"),
    ("rewards/margins", lambda v: f"margin {v:.3f}"),
    ("rewards/accuracies", lambda v: f"pref acc {v:.0%}"),
    ("eval_rewards/margins", lambda v: f"eval margin {v:.3f}"),
    ("eval_rewards/accuracies", lambda v: f"eval pref acc {v:.0%}"),
    ("kl", lambda v: f"kl {v:.3f}"),  # KL to the reference, as KTO (and GRPO with beta > 0) estimate it
    # GRPO: the total reward of the sampled answers (each reward's mean follows it), their length, the share cut off
    ("reward", lambda v: f"reward {v:.3f}"),
    ("reward_std", lambda v: f"std {v:.3f}"),
    ("completions/mean_length", lambda v: f"answers {v:.0f} tok"),
    ("completions/clipped_ratio", lambda v: f"{v:.0%} cut"),
    ("eval_reward", lambda v: f"eval reward {v:.3f}"),
    ("tokens_per_second", lambda v: f"{v:.0f} tok/s"),
    ("trained_tokens_per_second", lambda v: f"{v:.0f} trained tok/s"),
    ("memory", lambda v: v),
    ("train_runtime", lambda v: f"done in {v:.1f}s"),
]
