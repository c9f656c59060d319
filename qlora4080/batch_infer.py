"""`qlora4080 generate`: JSONL of prompts in, JSONL of answers out; resumable, bad lines reported not dropped.

Input lines: {"id"?, "prompt": "..."} or {"id"?, "messages": [...]}, optional "system".
Output lines: {"id", "answer", "stopped", ...input fields except messages}. An id
already in the output file is skipped, so a stopped run continues where it was.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data.conversations import Rejected
from .data.jsonl import read_jsonl
from .errors import QloraError
from .infer import ChatModel


@dataclass
class PromptLine:
    id: str
    messages: list[dict[str, Any]]
    extra: dict[str, Any]


@dataclass
class PromptFile:
    prompts: list[PromptLine] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def read_prompts(path: Path) -> PromptFile:
    result = PromptFile()
    if not path.is_file():
        raise QloraError(f"input file not found: {path}", where="--input")
    seen: set[str] = set()
    for number, record, problem in read_jsonl(path):
        if problem:
            result.rejected.append(Rejected(path, number, problem))
            continue
        messages = _messages(record)
        if isinstance(messages, str):
            result.rejected.append(Rejected(path, number, messages))
            continue
        identifier = str(record.get("id", f"line-{number}"))
        if identifier in seen:
            result.rejected.append(Rejected(path, number, f"duplicate id {identifier!r}"))
            continue
        seen.add(identifier)
        extra = {k: v for k, v in record.items() if k not in ("messages", "prompt", "system", "id")}
        result.prompts.append(PromptLine(identifier, messages, extra))
    return result


def _messages(record: Any) -> list[dict[str, Any]] | str:
    """The conversation to answer, or why the line cannot be used."""
    if not isinstance(record, dict):
        return "expected a JSON object"
    system = [{"role": "system", "content": record["system"]}] if isinstance(record.get("system"), str) else []
    if isinstance(record.get("prompt"), str) and record["prompt"].strip():
        return system + [{"role": "user", "content": record["prompt"]}]
    messages = record.get("messages")
    if isinstance(messages, list) and messages and all(isinstance(m, dict) and "role" in m for m in messages):
        if messages[-1]["role"] == "assistant":
            return "the last message is already an assistant answer; end with a user (or tool) message"
        return system + messages
    return "needs a non-empty 'prompt' string or a 'messages' list"


def done_ids(path: Path) -> set[str]:
    """Ids already answered in an output file (a torn last line from an interrupted run is ignored)."""
    if not path.is_file():
        return set()
    ids = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            ids.add(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return ids


def run_batch(chat: ChatModel, prompts: list[PromptLine], output: Path, *, max_new_tokens: int = 256, batch_size: int = 8,
              on_batch: Callable[[int], None] | None = None) -> int:
    """Answer every prompt, appending one line per answer as each batch finishes. Returns how many were written."""
    from .evaluate import generate_answers

    output.parent.mkdir(parents=True, exist_ok=True)
    _drop_torn_tail(output)
    written = 0
    with output.open("a", encoding="utf-8") as handle:
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start : start + batch_size]
            answers = generate_answers(chat, [p.messages for p in batch], max_new_tokens=max_new_tokens, batch_size=batch_size)
            for prompt, answer in zip(batch, answers):
                handle.write(json.dumps({"id": prompt.id, "answer": answer.text, "stopped": answer.stopped, **prompt.extra},
                                        ensure_ascii=False) + "\n")
            handle.flush()
            written += len(batch)
            if on_batch:
                on_batch(len(batch))
    return written


def _drop_torn_tail(path: Path) -> None:
    """A run killed mid-write can leave half a line; end the file cleanly before appending."""
    if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with path.open("a", encoding="utf-8") as handle:
            handle.write("\n")
