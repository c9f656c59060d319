"""What one run folder says about its run: read from runs/<run>/ and its checkpoint, whatever is missing or damaged.

A run leaves runs/<run>/train.log, metrics.jsonl (one line per logging step),
summary.json (when it finished) and eval.json (after `qlora4080 eval`), and
checkpoints/<run>/ with the recipe snapshot. Any of them may be missing (a run
that crashed, a folder copied by hand) or damaged (a line cut by a full disk):
each reader returns what it could read and notes what it could not, so a
listing never stops at one bad run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..checkpoint import META_FILE, RECIPE_SNAPSHOT
from ..perplexity import from_loss
from ..toml_io import TOMLDecodeError, flatten_table, read_toml
from ..training.runlog import TIME_FORMAT, line_seconds
from .status import RUN_START, RunStatus, run_status

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "train.log"
EVAL_FILE = "eval.json"
DEFAULT_CHECKPOINTS_DIR = Path("checkpoints")



@dataclass
class RunRecord:
    """One run as `qlora4080 runs` shows it; None where the run's files do not say."""

    name: str
    run_dir: Path
    checkpoint: Path | None
    status: RunStatus
    method: str | None = None
    base_model: str | None = None
    started: str | None = None
    steps: int | None = None
    final_loss: float | None = None
    eval_loss: float | None = None
    eval_perplexity: float | None = None
    final_reward: float | None = None
    """A run that scores sampled answers (grpo): the mean total reward of its last logged steps."""
    eval_metrics: dict[str, float] = field(default_factory=dict)
    """The trained model's column of eval.json (perplexity, usability_rate, ...)."""
    wall_seconds: float | None = None
    peak_memory_gib: float | None = None
    peak_memory_kind: str | None = None
    recipe: dict[str, object] = field(default_factory=dict)
    """The recipe snapshot, flattened: {"training.learning_rate": 0.0002, ...}."""
    problems: list[str] = field(default_factory=list)
    """Files that could not be read, and why."""

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data.update(run_dir=str(self.run_dir), checkpoint=str(self.checkpoint) if self.checkpoint else None,
                    status=self.status.status, status_note=self.status.note or None)
        return data


def read_run(run_dir: Path, checkpoints_dir: Path | None = None) -> RunRecord:
    """Everything known about the run in `run_dir`; never raises for missing or damaged files."""
    problems: list[str] = []
    log_lines = _read_lines(run_dir / LOG_FILE, problems)
    summary = _read_json_object(run_dir / SUMMARY_FILE, problems)
    checkpoint = find_checkpoint(run_dir, log_lines, checkpoints_dir)
    # summary.json is written once the adapter is saved: a damaged one still says the run got there.
    status = run_status(checkpoint, (run_dir / SUMMARY_FILE).is_file(), log_lines)
    if status.status == "finished" and summary is None:
        status = RunStatus("finished", "summary.json damaged")
    record = RunRecord(run_dir.name, run_dir, checkpoint, status)
    record.started = _log_time(log_lines[0]) if log_lines else None
    if checkpoint is not None:
        record.recipe = _read_recipe(checkpoint / RECIPE_SNAPSHOT, problems)
        meta = _read_json_object(checkpoint / META_FILE, problems)
        record.method = _text(record.recipe.get("training.method")) or _text((meta or {}).get("method"))
        record.base_model = _text(record.recipe.get("model.name")) or _text((meta or {}).get("base_model"))
    _fill_from_metrics(record, read_metrics(run_dir / METRICS_FILE, problems))
    if summary is not None:
        _fill_from_summary(record, summary)
    elif len(log_lines) > 1 and record.status.status != "running":
        record.wall_seconds = _seconds_between(log_lines[0], log_lines[-1])
    if record.eval_perplexity is None and record.eval_loss is not None and _loss_is_perplexity(record.method):
        record.eval_perplexity = from_loss(record.eval_loss)  # a preference loss is no perplexity
    record.eval_metrics = _read_eval(run_dir / EVAL_FILE, problems)
    record.problems = problems
    return record


def find_checkpoint(run_dir: Path, log_lines: list[str], checkpoints_dir: Path | None = None) -> Path | None:
    """checkpoints/<run> for runs/<run>: under `checkpoints_dir` if given, else where the run's recipe put it.

    The recipe snapshot lives in the checkpoint, so the checkpoint is first
    looked for where the recipe named in train.log sends checkpoints (its
    output.checkpoints_dir, relative to the working directory), then beside the
    runs folder and in ./checkpoints.
    """
    name = run_dir.name
    candidates = [checkpoints_dir / name] if checkpoints_dir is not None else []
    recipe = _recipe_from_log(log_lines)
    if recipe is not None:
        try:
            output = read_toml(recipe).get("output")
            named = Path(str(output.get("checkpoints_dir", DEFAULT_CHECKPOINTS_DIR)) if isinstance(output, dict)
                         else DEFAULT_CHECKPOINTS_DIR)
            # relative to the folder `train` ran in: here, or the folder that holds runs/ when run from elsewhere
            candidates += [named / name] + ([run_dir.parent.parent / named / name] if not named.is_absolute() else [])
        except (OSError, UnicodeDecodeError, TOMLDecodeError):
            pass  # the recipe was moved or edited since: the other places may still hold the checkpoint
    candidates += [run_dir.parent.parent / DEFAULT_CHECKPOINTS_DIR / name, DEFAULT_CHECKPOINTS_DIR / name]
    for candidate in candidates:
        if (candidate / RECIPE_SNAPSHOT).is_file() or (candidate / META_FILE).is_file():
            return candidate
        if checkpoints_dir is not None:
            return None  # asked for one place: do not guess at others
    return None


def read_metrics(path: Path, problems: list[str] | None = None) -> list[dict[str, object]]:
    """metrics.jsonl as records; a damaged line is skipped (and noted), not fatal."""
    records: list[dict[str, object]] = []
    bad = 0
    for line in _read_lines(path, problems if problems is not None else []):
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    if bad and problems is not None:
        problems.append(f"{path}: {bad} damaged line(s) skipped")
    return records


def _fill_from_metrics(record: RunRecord, metrics: list[dict[str, object]]) -> None:
    """What a run that has not finished (no summary.json) has logged so far."""
    for row in metrics:
        if isinstance(step := row.get("step"), int):
            record.steps = max(record.steps or 0, step)
        if (loss := json_number(row.get("loss"))) is not None:
            record.final_loss = loss
        if (eval_loss := json_number(row.get("eval_loss"))) is not None:
            record.eval_loss = eval_loss
        if (reward := json_number(row.get("reward"))) is not None:
            record.final_reward = reward
        if (peak := json_number(row.get("mem_peak_gib"))) is not None:
            record.peak_memory_gib = max(record.peak_memory_gib or 0.0, peak)


def _fill_from_summary(record: RunRecord, summary: dict[str, object]) -> None:
    """summary.json, written at the end of the run, has the final word on what it covers."""
    steps = summary.get("steps")
    record.steps = steps if isinstance(steps, int) else record.steps
    for name in ("final_loss", "eval_loss", "eval_perplexity", "wall_seconds", "peak_memory_gib", "final_reward"):
        key = {"final_loss": "last_loss", "final_reward": "last_reward"}.get(name, name)
        if (value := json_number(summary.get(key))) is not None:
            setattr(record, name, value)
    record.peak_memory_kind = _text(summary.get("peak_memory_kind"))


def _read_eval(path: Path, problems: list[str]) -> dict[str, float]:
    """The trained model's numbers in eval.json ("adapter", or "model" for a folder without adapter)."""
    report = _read_json_object(path, problems)
    if report is None:
        return {}
    column = report.get("adapter", report.get("model"))
    if not isinstance(column, dict):
        problems.append(f"{path}: no \"adapter\" results in it")
        return {}
    return {key: float(value) for key, value in column.items() if json_number(value) is not None}


def _read_recipe(path: Path, problems: list[str]) -> dict[str, object]:
    if not path.is_file():
        problems.append(f"{path}: missing")
        return {}
    try:
        return flatten_table(read_toml(path))
    except (OSError, UnicodeDecodeError, TOMLDecodeError) as error:
        problems.append(f"{path}: {str(error).splitlines()[0]}")
        return {}


def _read_json_object(path: Path, problems: list[str]) -> dict[str, object] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        problems.append(f"{path}: not readable JSON ({str(error).splitlines()[0]})")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path}: not a JSON object")
        return None
    return data


def _read_lines(path: Path, problems: list[str]) -> list[str]:
    if not path.is_file():
        return []
    try:
        return [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError as error:
        problems.append(f"{path}: {error.strerror or error}")
        return []


def _recipe_from_log(log_lines: list[str]) -> Path | None:
    for line in log_lines[:20]:  # the first line of a run names its recipe
        if match := RUN_START.match(line):
            return Path(match.group(1))
    return None


def _log_time(line: str) -> str | None:
    """The time a train.log line begins with, as written there."""
    seconds = line_seconds(line)
    return time.strftime(TIME_FORMAT, time.localtime(seconds)) if seconds is not None else None


def _seconds_between(first: str, last: str) -> float | None:
    start, end = line_seconds(first), line_seconds(last)
    if start is None or end is None:
        return None
    return max(end - start, 0.0)


def json_number(value: object) -> float | None:
    """A JSON number as a float; None for anything else (booleans, text, NaN written as a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _loss_is_perplexity(method: str | None) -> bool:
    """Whether the run's eval_loss is a token cross-entropy (sft; a run too old to record its method was sft)."""
    from ..methods.registry import METHODS

    spec = METHODS.get(method or "sft")
    return spec is not None and spec.loss_is_perplexity
