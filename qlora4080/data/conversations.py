"""Read a JSONL file of conversations, one per line, reporting every bad line.

Shape of a line: {"id"?, "messages": [{"role", "content", "tool_calls"?,
"reasoning_content"?}], "tools"?, "tags"?}. Roles: system, user, assistant, tool.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from ..errors import QloraError
from .jsonl import read_jsonl
from .templates import Tools
from .validate import ROLES, validate_messages
from .vocabulary import Message

__all__ = ["ROLES", "Conversations", "Rejected", "read_conversations", "record_messages", "record_tools",
           "validate_messages"]


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
    records: list[dict[str, object]] = field(default_factory=list)
    """Each record as read (its "id" filled in when the line had none); see record_messages / record_tools."""
    lines: list[int] = field(default_factory=list)
    """The file line of each record, for messages about it later."""
    rejected: list[Rejected] = field(default_factory=list)


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


def record_messages(record: Mapping[str, object]) -> list[Message]:
    """The conversation of a record read_conversations (or a data build) accepted, so already validated."""
    return cast("list[Message]", record["messages"])


def record_tools(record: Mapping[str, object]) -> Tools | None:
    """The tool definitions a record offers its chat template, if any."""
    return cast("Tools | None", record.get("tools"))  # as written: the chat template reads it
