"""Read a JSONL file of conversations, one per line, reporting every bad line.

Shape of a line: {"id"?, "messages": [{"role", "content", "tool_calls"?,
"reasoning_content"?}], "tools"?, "tags"?}. Roles: system, user, assistant, tool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import QloraError
from .jsonl import read_jsonl

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Rejected:
    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class Conversations:
    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    """The file line of each record, for messages about it later."""
    rejected: list[Rejected] = field(default_factory=list)


def validate_messages(messages: Any) -> str | None:
    """Why this message list cannot be trained on, or None when it can. Names the message index."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"message {index} is not an object"
        role = message.get("role")
        if role not in ROLES:
            return f"message {index} has role {role!r}; expected one of {', '.join(ROLES)}"
        content = message.get("content")
        if content is None and not (role == "assistant" and message.get("tool_calls")):
            return f"message {index} ({role}) has no 'content'"
        if content is not None and not isinstance(content, str):
            return f"message {index} ({role}) 'content' must be a string"
    assistants = [m for m in messages if m["role"] == "assistant"]
    if not assistants:
        return "no assistant turn, so nothing would be trained"
    for index, message in enumerate(messages):
        if message["role"] == "assistant" and not (message.get("content") or "").strip() and not message.get("tool_calls"):
            return f"message {index} (assistant) is empty"
    return None


def read_conversations(path: Path) -> Conversations:
    """All valid conversations of a JSONL file, plus each rejected line with its reason."""
    result = Conversations(path=path)
    for number, record, problem in read_jsonl(path):
        if problem:
            result.rejected.append(Rejected(path, number, problem))
            continue
        if not isinstance(record, dict) or "messages" not in record:
            result.rejected.append(Rejected(path, number, "expected an object with a 'messages' list"))
            continue
        reason = validate_messages(record["messages"])
        if reason:
            result.rejected.append(Rejected(path, number, reason))
            continue
        record.setdefault("id", f"{path.stem}-{number}")
        result.records.append(record)
        result.lines.append(number)
    if not result.records:
        first = f"; first problem: {result.rejected[0]}" if result.rejected else ""
        raise QloraError(
            f"no usable conversation in {path}{first}",
            where=str(path),
            hint='each line must be {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}',
        )
    return result
