"""One small function per source shape -> a list of chat messages.

Each normalizer raises FormatError with the reason a record cannot be used;
the caller reports it with the file and line. Field names of the named data
sets differ between mirrors, so every normalizer reads them from a column map
(defaults below), which a recipe can override.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import cast

from .vocabulary import FORMATS, DataFormat, Message

Record = dict[str, object]
"""One parsed JSON object of a data file."""

SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant", "model": "assistant",
    "system": "system",
    "tool": "tool", "function": "tool", "observation": "tool",
}

DEFAULT_COLUMNS: dict[str, dict[str, str]] = {
    "sharegpt": {"conversations": "conversations", "role": "from", "content": "value"},
    "alpaca": {"instruction": "instruction", "input": "input", "output": "output", "system": "system"},
    "prompt_completion": {"prompt": "prompt", "completion": "completion"},
    "columns": {"user": "question", "assistant": "answer", "system": "system"},
    "cmath": {"user": "question", "assistant": "golden"},
    "mawps": {"question": "Question", "numbers": "Numbers", "answer": "Answer"},
    "emoji": {"prompt": "prompt", "answer": "answer_zh", "fallback": "answer_en"},
}
EMOJI_MAX_ANSWER_CHARS = 3000


class FormatError(ValueError):
    """Why a record does not fit its format."""


def to_messages(record: object, fmt: str, columns: Mapping[str, str] | None = None,
                max_answer_chars: int | None = None) -> list[Message]:
    """Normalize one record. `columns` overrides the format's default field names.

    The result has the shape of a conversation; whether it is a trainable one
    (roles, text, turn order) is validate.validate_messages' question.
    """
    if not isinstance(record, dict):
        raise FormatError("expected a JSON object")
    if fmt not in NORMALIZERS:
        raise FormatError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    names = {**DEFAULT_COLUMNS.get(fmt, {}), **(columns or {})}
    messages = NORMALIZERS[fmt](record, names)
    limit = max_answer_chars if max_answer_chars is not None else (EMOJI_MAX_ANSWER_CHARS if fmt == "emoji" else None)
    if limit:
        messages = [{**m, "content": m["content"][:limit]}
                    if isinstance(m, dict) and m.get("role") == "assistant" and isinstance(m.get("content"), str) else m
                    for m in messages]
    return messages


DETECTED_FORMATS: tuple[DataFormat, ...] = ("messages", "sharegpt", "prompt_completion", "alpaca")
"""The formats "auto" can find; named data sets (cmath, ...) are only ever chosen explicitly."""


def detect_format(records: Sequence[object]) -> DataFormat | None:
    """The format the first records fit (the most of them), or None. Named data sets are only ever chosen explicitly."""
    candidates = DETECTED_FORMATS
    scores = {fmt: 0 for fmt in candidates}
    for record in records[:20]:
        for fmt in candidates:
            try:
                to_messages(record, fmt)
                scores[fmt] += 1
            except FormatError:
                pass
    best = max(candidates, key=lambda fmt: scores[fmt])
    return best if scores[best] else None


def _text(record: Record, field: str, what: str) -> str:
    """The field as text; FormatError when it is missing or empty."""
    value = _optional_text(record, field, what)
    if value is None:
        raise FormatError(f"missing or empty '{field}' ({what})")
    return value


def _optional_text(record: Record, field: str, what: str) -> str | None:
    """The field as text, or None when it is missing or empty."""
    value = record.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, (str, int, float)):
        raise FormatError(f"'{field}' ({what}) must be text, not {type(value).__name__}")
    return str(value)


def _messages(record: Record, names: dict[str, str]) -> list[Message]:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise FormatError("expected a non-empty 'messages' list")
    return cast("list[Message]", messages)  # as written in the file: validate_messages checks each one


def _sharegpt(record: Record, names: dict[str, str]) -> list[Message]:
    turns = record.get(names["conversations"])
    if not isinstance(turns, list) or not turns:
        raise FormatError(f"expected a non-empty '{names['conversations']}' list")
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise FormatError(f"turn {index} is not an object")
        speaker = str(turn.get(names["role"], "")).lower()
        if speaker not in SHAREGPT_ROLES:
            raise FormatError(f"turn {index} has {names['role']}={turn.get(names['role'])!r}; expected one of {', '.join(SHAREGPT_ROLES)}")
        # The text as written (validate_messages rejects one that is not a string).
        messages.append(cast(Message, {"role": SHAREGPT_ROLES[speaker], "content": turn.get(names["content"])}))
    return messages


def _alpaca(record: Record, names: dict[str, str]) -> list[Message]:
    instruction = _text(record, names["instruction"], "the instruction")
    extra = _optional_text(record, names["input"], "the input")
    output = _text(record, names["output"], "the answer")
    system = _optional_text(record, names["system"], "the system prompt")
    return _exchange(system, f"{instruction}\n\n{extra}" if extra else instruction, output)


def _prompt_completion(record: Record, names: dict[str, str]) -> list[Message]:
    prompt, completion = record.get(names["prompt"]), record.get(names["completion"])
    if isinstance(prompt, list) and isinstance(completion, list):  # TRL's conversational prompt/completion
        return cast("list[Message]", prompt + completion)  # as written: validate_messages checks each one
    return [{"role": "user", "content": _text(record, names["prompt"], "the prompt")},
            {"role": "assistant", "content": _text(record, names["completion"], "the completion")}]


def _columns(record: Record, names: dict[str, str]) -> list[Message]:
    system = _optional_text(record, names["system"], "the system prompt") if names.get("system") else None
    user = _text(record, names["user"], "the user turn")
    return _exchange(system, user, _text(record, names["assistant"], "the answer"))


def _exchange(system: str | None, user: str, answer: str) -> list[Message]:
    """One question and its answer, after the system prompt when there is one."""
    opening: list[Message] = [{"role": "system", "content": system}] if system else []
    return [*opening, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def _mawps(record: Record, names: dict[str, str]) -> list[Message]:
    question = _text(record, names["question"], "the question")
    raw = record.get(names["numbers"])
    numbers: list[object] = []
    if isinstance(raw, str):
        numbers += raw.split()
    elif isinstance(raw, (list, tuple)):
        numbers += raw
    def fill(match: re.Match[str]) -> str:
        index = int(match.group(1))
        if index >= len(numbers):
            raise FormatError(f"the question uses N_{index} but '{names['numbers']}' has {len(numbers)} number(s)")
        return _number(numbers[index])
    filled = re.sub(r"N_(\d+)", fill, question)
    answer = _number(_text(record, names["answer"], "the answer"))
    return [{"role": "user", "content": filled}, {"role": "assistant", "content": answer}]


def _emoji(record: Record, names: dict[str, str]) -> list[Message]:
    prompt = _text(record, names["prompt"], "the prompt")
    answer = (_optional_text(record, names["answer"], "the answer")
              or _optional_text(record, names["fallback"], "the fallback answer"))
    if answer is None:
        raise FormatError(f"neither '{names['answer']}' nor '{names['fallback']}' has an answer")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def _number(value: object) -> str:
    """3.0 -> "3", 2.50 -> "2.5"; anything else as written."""
    if not isinstance(value, (str, int, float)):
        return str(value)
    try:
        number = float(value)
    except ValueError:
        return str(value)
    return str(int(number)) if number.is_integer() else f"{number:g}"


NORMALIZERS: dict[str, Callable[[Record, dict[str, str]], list[Message]]] = {
    "messages": _messages,
    "sharegpt": _sharegpt,
    "alpaca": _alpaca,
    "prompt_completion": _prompt_completion,
    "columns": _columns,
    "cmath": _columns,  # question -> user, golden -> assistant
    "mawps": _mawps,
    "emoji": _emoji,
}
