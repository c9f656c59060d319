"""Preference records -> (prompt, chosen answer, rejected answer), each bad record rejected with file:line.

Two shapes are read, the two that preference datasets come in:

- `{"prompt", "chosen", "rejected"}`: the prompt a string (one user turn) or a
  message list; each answer a string, one assistant message, or a list ending
  in one (TRL's conversational shape). An optional `"system"` string is put
  before a string prompt.
- `{"chosen", "rejected"}` as two whole conversations that share everything
  but the last assistant turn (UltraFeedback-binarized style): the shared
  messages are the prompt.

A file is read directly (`[data] train = "pairs.jsonl"`) or through
`[[data.sources]]` (preference/sources.py), whose build writes each pair back
in the first shape, prompt and answers as message lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from ..data.conversations import Rejected
from ..data.jsonl import read_jsonl
from ..data.validate import is_blank, validate_messages
from ..data.vocabulary import Message


@dataclass(frozen=True)
class PreferencePair:
    id: str
    prompt: list[Message]
    """Everything before the answer: ends with a user (or tool) turn."""
    chosen: Message
    rejected: Message


@dataclass
class PairFile:
    path: Path
    pairs: list[PreferencePair] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


PAIR_FIELDS = ("prompt", "chosen", "rejected", "system")
"""The fields a pair record is read from; a source's `columns` can map each to another name."""


def mostly_pairs(records: Sequence[object]) -> bool:
    """Do most of the first records hold a preference pair ("chosen" and "rejected")?"""
    sample = [r for r in records[:20] if isinstance(r, dict)]
    return bool(sample) and sum("chosen" in r and "rejected" in r for r in sample) * 2 > len(sample)


def read_pairs(path: Path) -> PairFile:
    """Every usable pair of a JSONL file, and why each other line was refused."""
    result = PairFile(path)
    for number, record, problem in read_jsonl(path):
        pair = to_pair(record, f"line-{number}") if isinstance(record, dict) else problem or "expected a JSON object"
        if isinstance(pair, str):
            result.rejected.append(Rejected(path, number, pair))
        else:
            result.pairs.append(pair)
    return result


def to_pair(record: Mapping[str, object], default_id: str) -> PreferencePair | str:
    """The pair a record holds, or why it holds none."""
    missing = [key for key in ("chosen", "rejected") if key not in record]
    if missing:
        return f"a preference record needs 'chosen' and 'rejected'; '{missing[0]}' is missing"
    if "prompt" in record:
        split = _explicit_prompt(record)
    else:
        split = _shared_prefix(record["chosen"], record["rejected"])
    if isinstance(split, str):
        return split
    prompt, chosen, rejected = split
    if (problem := validate_messages([*prompt, chosen])) or (problem := validate_messages([*prompt, rejected])):
        return problem
    if prompt[-1]["role"] not in ("user", "tool"):
        return f"the prompt must end with a user (or tool) turn, not {prompt[-1]['role']!r}"
    if chosen == rejected:
        return "'chosen' and 'rejected' are the same answer, so there is no preference to learn"
    return PreferencePair(str(record.get("id", default_id)), prompt, chosen, rejected)


def _explicit_prompt(record: Mapping[str, object]) -> tuple[list[Message], Message, Message] | str:
    messages = prompt_messages(record)
    if isinstance(messages, str):
        return messages
    chosen, rejected = answer_message(record["chosen"], "chosen"), answer_message(record["rejected"], "rejected")
    if isinstance(chosen, str):
        return chosen
    if isinstance(rejected, str):
        return rejected
    return messages, chosen, rejected


def prompt_messages(record: Mapping[str, object]) -> list[Message] | str:
    """A record's "prompt" as messages: a string (one user turn, after an optional "system" string) or a message list.

    Shared by every record that pairs a prompt with answers (preference pairs, feedback); the messages are
    checked by validate_messages together with the answer.
    """
    prompt = record["prompt"]
    if isinstance(prompt, str):
        if is_blank(prompt):
            return "'prompt' is empty"
        system = record.get("system")
        messages: list[Message] = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
        messages.append({"role": "user", "content": prompt})
        return messages
    if isinstance(prompt, list) and prompt:
        return cast("list[Message]", list(prompt))
    return "'prompt' must be a non-empty string or message list"


def answer_message(value: object, key: str) -> Message | str:
    """One assistant message from a string, a message, or a list of messages ending in one."""
    if isinstance(value, str):
        return f"'{key}' is empty" if is_blank(value) else {"role": "assistant", "content": value}
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict) and value.get("role") == "assistant":
        if is_blank(value.get("content")) and not value.get("tool_calls"):
            return f"'{key}' is empty"
        return cast("Message", value)  # its fields are checked with the prompt by validate_messages
    return f"'{key}' must be a string, an assistant message, or a list holding one assistant message"


def _shared_prefix(chosen: object, rejected: object) -> tuple[list[Message], Message, Message] | str:
    """Two whole conversations -> their shared messages and the two final assistant turns."""
    if not (isinstance(chosen, list) and isinstance(rejected, list) and chosen and rejected):
        return "without 'prompt', 'chosen' and 'rejected' must be whole conversations (message lists)"
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        return "'chosen' and 'rejected' share no prompt (their first messages differ)"
    if len(chosen) != shared + 1 or len(rejected) != shared + 1:
        return ("'chosen' and 'rejected' must differ only in their last message (the assistant's answer); "
                f"they differ from message {shared}")
    # checked by validate_messages in to_pair
    return cast("list[Message]", chosen[:shared]), cast("Message", chosen[-1]), cast("Message", rejected[-1])
