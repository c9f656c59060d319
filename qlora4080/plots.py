"""runs/<run>/loss.png: training loss, eval loss and learning rate against the step (and the reward margin of DPO/ORPO, the reward of GRPO).

Drawn from metrics.jsonl after training and by `qlora4080 runs plot RUN`.
matplotlib is imported here only, when a plot is drawn, and through its Agg
canvas directly rather than pyplot: pyplot would switch the backend of the
whole process, and a notebook calling `train()` keeps its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import QloraError

if TYPE_CHECKING:
    from .training.runlog import RunLog

PLOT_FILE = "loss.png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
Series = list[tuple[int, float]]


def metric_series(records: list[dict[str, object]], key: str) -> Series:
    """(step, value) of `key`, one point per step: a resumed run logs some steps twice, and the later line wins."""
    from .runs_report.record import json_number

    points: dict[int, float] = {}
    for record in records:
        step, value = record.get("step"), json_number(record.get(key))
        if isinstance(step, int) and value is not None:
            points[step] = value
    return sorted(points.items())


def write_loss_plot(run_dir: Path, out: Path | None = None) -> Path:
    """Draw the run's curves into `out` (default runs/<run>/loss.png); QloraError when nothing was logged."""
    from .runs_report.record import METRICS_FILE, read_metrics

    metrics_path = run_dir / METRICS_FILE
    records = read_metrics(metrics_path)
    loss, eval_loss = metric_series(records, "loss"), metric_series(records, "eval_loss")
    if not loss and not eval_loss:
        state = "has no metrics.jsonl" if not metrics_path.is_file() else "has no logged loss in metrics.jsonl yet"
        raise QloraError(f"run {run_dir.name} {state}, so there is nothing to plot", where=str(run_dir),
                         hint="a run logs a line every training.logging_steps steps; plot again once it has trained a few")
    panels: list[tuple[str, list[tuple[str, Series]]]] = [("loss", [("train loss", loss), ("eval loss", eval_loss)])]
    if rate := metric_series(records, "learning_rate"):
        panels.append(("learning rate", [("learning rate", rate)]))
    margins = [("train margin", metric_series(records, "rewards/margins")),
               ("eval margin", metric_series(records, "eval_rewards/margins"))]
    if any(points for _, points in margins):
        panels.append(("reward margin", margins))
    rewards = [("train reward", metric_series(records, "reward")), ("eval reward", metric_series(records, "eval_reward"))]
    if any(points for _, points in rewards):  # grpo: the mean total reward of the sampled answers
        panels.append(("reward", rewards))
    target = out or run_dir / PLOT_FILE
    _draw(panels, f"{run_dir.name}", target)
    return target


def check_plot_target(out: Path) -> None:
    """`--out` names a .png file, and replaces no file that is not a PNG (a run's metrics.jsonl, a recipe...)."""
    if out.suffix.lower() != ".png":
        raise QloraError(f"{out} does not end in .png, and the plot is a PNG image", where="--out",
                         hint=f"name a .png file, e.g. --out {out.with_suffix('.png').name}")
    if out.is_file():
        try:
            with out.open("rb") as handle:
                is_png = handle.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
        except OSError:
            return  # unreadable: the writability check that follows says why
        if not is_png:
            raise QloraError(f"{out} exists and is not a PNG image, so it is left as it is", where="--out",
                             hint="choose another file name, or move that file away yourself")


def plot_after_training(run_dir: Path, log: RunLog) -> None:
    """The end-of-run plot: a failure here is a warning in train.log, never a failed run (the adapter is saved)."""
    try:
        path = write_loss_plot(run_dir)
    except Exception as error:  # noqa: BLE001  a broken font cache or a full disk must not fail a finished run
        log.line(f"warning: no loss plot: {error}", style="yellow")
        return
    log.line(f"loss plot: {path}")


def _draw(panels: list[tuple[str, list[tuple[str, Series]]]], title: str, target: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(8, 2.6 * len(panels) + 0.4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axis, (label, lines) in zip(axes, panels):
        for name, points in lines:
            if not points:
                continue
            steps, values = zip(*points)
            evaluated = name.startswith("eval")  # eval points are few and far apart: marked, not just joined
            style = "s--" if evaluated else "o-" if len(points) < 30 else "-"
            axis.plot(steps, values, style, label=name, markersize=6 if evaluated else 3)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        if len([1 for _, points in lines if points]) > 1:
            axis.legend()
    axes[0].set_title(title)
    axes[-1].set_xlabel("step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        figure.savefig(staged, format="png", dpi=100)
        staged.replace(target)  # a reader never sees half a PNG
    finally:
        staged.unlink(missing_ok=True)
