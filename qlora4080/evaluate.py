"""`qlora4080 eval`: perplexity on assistant tokens, usability and JSON validity of generated answers,
exact match of the final number on records tagged math and token F1 on short answers (task_metrics.py).

Perplexity uses exactly the training masks (render_conversation), so it
measures what was trained. Generation is greedy and batched with left padding.
With `baseline`, the same records go through the base model (adapter off) in
the same run, for a side-by-side table.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .data.render import render_conversation, special_tokens
from .errors import QloraError
from .eval_report import AnswerRow, EvalReport, Metrics, MetricValue, Number
from .eval_rules import Generated, json_check, usability_failures
from .infer import ChatModel, adapter_switch, generate_answers
from .perplexity import from_loss
from .scoring import labelled_log_probs
from .task_metrics import TaskTally

if TYPE_CHECKING:
    from .data.vocabulary import Message, TrainOn


@dataclass
class EvalRecord:
    id: str
    messages: list[Message]
    """The whole conversation (for perplexity)."""
    prompt: list[Message]
    """Everything before the last assistant turn (for generation)."""
    reference: str
    tags: list[str] = field(default_factory=list)
    tools: list[dict[str, object]] | None = None


def to_eval_records(records: list[dict[str, Any]], limit: int | None = None, *, source: str = "the data") -> list[EvalRecord]:
    """Records as read by read_conversations (validated), the last assistant turn held out as the reference."""
    result = []
    for record in records[:limit] if limit else records:
        messages = record["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        result.append(EvalRecord(
            id=str(record.get("id")), messages=messages, prompt=messages[:last],
            reference=messages[last].get("content") or "", tags=_tags(record, source), tools=record.get("tools"),
        ))
    return result


def _tags(record: dict[str, Any], source: str) -> list[str]:
    """A record's tags; one tag written as a plain string is that tag (not its letters)."""
    tags = record.get("tags") or []
    if isinstance(tags, str):
        return [tags]
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise QloraError(f"'tags' of record {record.get('id')!r} must be a list of strings, got {tags!r}",
                         where=source, hint='write "tags": ["math"]; exact match and F1 are chosen by tag')
    return tags


def perplexity(chat: ChatModel, records: list[EvalRecord], *, train_on: TrainOn = "assistant", max_seq_len: int = 2048,
               batch_size: int = 8, use_adapter: bool = True) -> dict[str, float]:
    """exp(mean negative log-likelihood) over the trained (assistant) tokens of every record."""
    import torch

    rows = []
    for record in records:
        rendered = render_conversation(record.messages, chat.tokenizer, train_on=train_on, tools=record.tools)
        rows.append((rendered["input_ids"][:max_seq_len], rendered["labels"][:max_seq_len]))
    with torch.inference_mode(), adapter_switch(chat, use_adapter):
        scored = labelled_log_probs(chat.model, rows, batch_size=batch_size)
    total_nll, total_tokens = -sum(total for total, _ in scored), sum(count for _, count in scored)
    mean = total_nll / max(total_tokens, 1)
    return {"perplexity": from_loss(mean), "mean_nll": mean, "tokens": total_tokens}


def score(chat: ChatModel, records: list[EvalRecord], answers: list[Generated]) -> tuple[dict[str, MetricValue], list[AnswerRow]]:
    """Usability, JSON and task metrics (exact match, F1) for one model's answers, plus a per-record table."""
    specials = special_tokens(chat.tokenizer)
    failures: Counter[str] = Counter()
    usable = json_total = json_valid = keys_total = keys_match = 0
    tasks = TaskTally()
    rows = []
    for record, answer in zip(records, answers):
        reasons = usability_failures(answer, specials)
        failures.update(reasons)
        usable += not reasons
        checks: dict[str, object] = {}
        if "json" in record.tags:
            valid, same_keys = json_check(answer.text, record.reference)
            json_total += 1
            json_valid += valid
            checks["json_valid"] = valid
            if same_keys is not None:
                keys_total += 1
                keys_match += same_keys
                checks["json_same_keys"] = same_keys
        checks |= tasks.add(record.tags, answer.text, record.reference)
        rows.append(AnswerRow(record.id, answer.text, not reasons, tuple(reasons), checks))
    metrics: dict[str, MetricValue] = {
        "records": len(records),
        "usability_rate": usable / max(len(records), 1),
        "failures": dict(failures),
    }
    if json_total:
        metrics["json_valid_rate"] = json_valid / json_total
        metrics["json_records"] = json_total
    if keys_total:
        metrics["json_same_keys_rate"] = keys_match / keys_total
    return metrics | tasks.metrics(), rows


def evaluate(chat: ChatModel, records: list[EvalRecord], *, baseline: bool = False, max_new_tokens: int = 256,
             batch_size: int = 8, max_seq_len: int = 2048, train_on: TrainOn = "assistant",
             on_batch: Callable[[int], None] | None = None) -> EvalReport:
    """Metrics and answers of the checkpoint ("adapter", or "model" without one), with baseline the base model's first."""
    variants = [("adapter", True)] if chat.has_adapter else [("model", True)]
    if baseline and chat.has_adapter:
        variants.insert(0, ("base", False))
    metrics: dict[str, Metrics] = {}
    rows: dict[str, list[AnswerRow]] = {}
    for name, use_adapter in variants:
        measured = perplexity(chat, records, train_on=train_on, max_seq_len=max_seq_len, batch_size=batch_size, use_adapter=use_adapter)
        answers = generate_answers(chat, [r.prompt for r in records], max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   use_adapter=use_adapter, tools=[r.tools for r in records], on_batch=on_batch)
        quality, rows[name] = score(chat, records, answers)
        metrics[name] = {**measured, **quality}
    return EvalReport(metrics, rows)


METRICS = [
    ("perplexity", "perplexity (assistant tokens)", "{:.3f}"),
    ("usability_rate", "usability rate", "{:.1%}"),
    ("json_valid_rate", "JSON valid (tagged json)", "{:.1%}"),
    ("json_same_keys_rate", "JSON same keys as reference", "{:.1%}"),
    ("exact_match_rate", "exact match, final number (tagged math)", "{:.1%}"),
    ("token_f1", "token F1 (tagged math/short)", "{:.3f}"),
    ("preference_accuracy", "prefers the chosen answer (log-prob)", "{:.1%}"),
    ("mean_margin", "mean log-prob margin, chosen - rejected", "{:.3f}"),
    ("reward_accuracy", "prefers chosen more than the model it started from", "{:.1%}"),
    ("reward_margin", "margin gained over the model it started from", "{:.3f}"),
    # the prompts eval (grpo): the run's rewards on greedy answers; each reward's own mean follows (_reward_metrics)
    ("reward", "mean total reward (weighted, as trained)", "{:.3f}"),
    ("stopped_rate", "answers that ended their turn", "{:.1%}"),
    ("answer_tokens", "mean answer length (tokens)", "{:.1f}"),
]
COUNTED_BY = {"exact_match_rate": "exact_match_records", "token_f1": "f1_records"}
"""Metrics whose label shows how many records they were computed on (the same for every model)."""


def report_rows(report: EvalReport) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the side-by-side table: metric, base, (sft,) adapter, and the adapter's delta.

    The delta compares the adapter with the column before it: the base model,
    or for a preference-tuned run the SFT model it started from.
    """
    columns = [name for name in ("base", "sft", "adapter", "model") if name in report.metrics]
    compared = len(columns) >= 2
    header = ["metric", *columns] + ([f"delta vs {columns[-2]}" if len(columns) > 2 else "delta"] if compared else [])
    rows = []
    for key, label, fmt in [*METRICS, *_reward_metrics(report, columns)]:
        values = [report.number(c, key) for c in columns]
        if all(v is None for v in values):
            continue
        label = _with_count(label, {report.number(c, COUNTED_BY[key]) for c in columns} if key in COUNTED_BY else set())
        row = [label, *("-" if v is None else fmt.format(v) for v in values)]
        last, before = values[-1], values[-2] if compared else None
        if compared and last is not None and before is not None:
            delta = last - before
            row.append(("+" if delta >= 0 else "") + (fmt.format(delta) if "%" in fmt else f"{delta:.3f}"))
        elif compared:
            row.append("")
        rows.append(row)
    for column in columns:
        for reason, count in sorted(report.failures(column).items()):
            rows.append([f"  failed: {reason} ({column})", *("" for _ in columns)] + ([""] if compared else []))
            rows[-1][1 + columns.index(column)] = str(count)
    return header, rows


def _reward_metrics(report: EvalReport, columns: list[str]) -> list[tuple[str, str, str]]:
    """The prompts eval's rows after the fixed ones: each reward's mean ("reward/<name>"), named by its reward."""
    names = dict.fromkeys(key for c in columns for key in report.metrics[c] if key.startswith("reward/"))
    return [(key, f"  {key[len('reward/'):]} (mean where it scored)", "{:.3f}") for key in names]


def _with_count(label: str, counts: set[Number | None]) -> str:
    """The label with its record count, "token F1 (tagged math/short, 19 records)", when every model has that count."""
    if len(counts) != 1 or None in counts:
        return label
    return f"{label[:-1]}, {counts.pop()} records)"


REPORT_JSON, REPORT_MD = "eval.json", "eval.md"
MD_TITLE = "# Evaluation\n"


def check_report_folder(folder: Path, flag: str) -> None:
    """Refuse, before any model loads, a folder whose eval.json or eval.md this command did not write.

    `eval --out notes/` once replaced the user's own eval.md; a report of ours is
    known by its shape (eval.json: an object with "data" and "records"; eval.md:
    our title line), and only that is ever replaced.
    """
    for name in (REPORT_JSON, REPORT_MD):
        path = folder / name
        if (path.exists() or path.is_symlink()) and not _our_report(path):
            raise QloraError(f"{path} exists and is not an eval report written by qlora4080, so eval leaves it alone",
                             where=flag, hint=f"pass {flag} with a new or empty folder, or move {path.name} away")


def _our_report(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    try:
        text = path.read_text(encoding="utf-8")
        if path.name == REPORT_MD:
            return text.startswith(MD_TITLE)
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "data" in data and "records" in data


def write_report(report: EvalReport, folder: Path, source: str) -> tuple[Path, Path]:
    """eval.json (everything, per-record answers included) and eval.md (the table).

    Each through a temporary file and a rename: a link at either name is replaced, never written through,
    and a kill mid-write leaves the earlier report whole.
    """
    from .data.jsonl import write_text_atomically

    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / REPORT_JSON, folder / REPORT_MD
    write_text_atomically(json_path, json.dumps({"data": source, **report.to_json()}, indent=2, ensure_ascii=False))
    header, rows = report_rows(report)
    lines = [f"{MD_TITLE}\nData: `{source}`\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    write_text_atomically(md_path, "\n".join(lines) + "\n")
    return json_path, md_path
