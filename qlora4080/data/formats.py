"""One small function per source shape -> a list of chat messages.

Each normalizer raises FormatError with the reason a record cannot be used;
the caller reports it with the file and line. Field names of the named data
sets differ between mirrors, so every normalizer reads them from a column map
(defaults below), which a recipe can override.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_completion", "columns", "cmath", "mawps", "emoji")

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


def to_messages(record: Any, fmt: str, columns: dict[str, str] | None = None, max_answer_chars: int | None = None) -> list[dict[str, Any]]:
    """Normalize one record. `columns` overrides the format's default field names."""
    if not isinstance(record, dict):
        raise FormatError("expected a JSON object")
    if fmt not in NORMALIZERS:
        raise FormatError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    names = {**DEFAULT_COLUMNS.get(fmt, {}), **(columns or {})}
    messages = NORMALIZERS[fmt](record, names)
    limit = max_answer_chars if max_answer_chars is not None else (EMOJI_MAX_ANSWER_CHARS if fmt == "emoji" else None)
    if limit:
        messages = [{**m, "content": m["content"][:limit]} if m["role"] == "assistant" and isinstance(m.get("content"), str) else m
                    for m in messages]
    return messages


def detect_format(records: Sequence[Any]) -> str | None:
    """The format the first records fit (the most of them), or None. Named data sets are only ever chosen explicitly."""
    candidates = ("messages", "sharegpt", "prompt_completion", "alpaca")
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


def _text(record: dict[str, Any], field: str, what: str, required: bool = True) -> str | None:
    value = record.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise FormatError(f"missing or empty '{field}' ({what})")
        return None
    if not isinstance(value, (str, int, float)):
        raise FormatError(f"'{field}' ({what}) must be text, not {type(value).__name__}")
    return str(value)


def _messages(record: dict[str, Any], names: dict[str, str]) -> list[dict[str, Any]]:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise FormatError("expected a non-empty 'messages' list")
    return messages


def _sharegpt(record: dict[str, Any], names: dict[str, str]) -> list[dict[str, Any]]:
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
        messages.append({"role": SHAREGPT_ROLES[speaker], "content": turn.get(names["content"])})
    return messages


def _alpaca(record: dict[str, Any], names: dict[str, str]) -> list[dict[str, Any]]:
    instruction = _text(record, names["instruction"], "the instruction")
    extra = _text(record, names["input"], "the input", required=False)
    output = _text(record, names["output"], "the answer")
    system = _text(record, names["system"], "the system prompt", required=False)
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _prompt_completion(record: dict[str, Any], names: dict[str, str]) -> list[dict[str, Any]]:
    prompt, completion = record.get(names["prompt"]), record.get(names["completion"])
    if isinstance(prompt, list) and isinstance(completion, list):  # TRL's conversational prompt/completion
        return prompt + completion
    return [{"role": "user", "content": _text(record, names["prompt"], "the prompt")},
            {"role": "assistant", "content": _text(record, names["completion"], "the completion")}]


def _columns(record: dict[str, Any], names: dict[str, str]) -> list[dict[str, Any]]:
    system = _text(record, names["system"], "the system prompt", required=False) if names.get("system") else None
    return ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": _text(record, names["user"], "the user turn")},
        {"role": "assistant", "content": _text(record, names["assistant"], "the answer")}]


def _mawps(record: dict[str, Any], names: dict[str, str]) -> list[dict[str, Any]]:
    question = _text(record, names["question"], "the question")
    raw = record.get(names["numbers"])
    numbers = raw.split() if isinstance(raw, str) else list(raw or [])
    def fill(match: re.Match[str]) -> str:
        index = int(match.group(1))
        if index >= len(numbers):
            raise FormatError(f"the question uses N_{index} but '{names['numbers']}' has {len(numbers)} number(s)")
        return _number(numbers[index])
    filled = re.sub(r"N_(\d+)", fill, question)
    answer = _number(_text(record, names["answer"], "the answer"))
    return [{"role": "user", "content": filled}, {"role": "assistant", "content": answer}]


def _emoji(record: dict[str, Any], names: dict[str, str]) -> list[dict[str, Any]]:
    prompt = _text(record, names["prompt"], "the prompt")
    answer = _text(record, names["answer"], "the answer", required=False) or _text(record, names["fallback"], "the fallback answer", required=False)
    if answer is None:
        raise FormatError(f"neither '{names['answer']}' nor '{names['fallback']}' has an answer")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def _number(value: Any) -> str:
    """3.0 -> "3", 2.50 -> "2.5"; anything else as written."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(number)) if number.is_integer() else f"{number:g}"


NORMALIZERS: dict[str, Callable[[dict[str, Any], dict[str, str]], list[dict[str, Any]]]] = {
    "messages": _messages,
    "sharegpt": _sharegpt,
    "alpaca": _alpaca,
    "prompt_completion": _prompt_completion,
    "columns": _columns,
    "cmath": _columns,  # question -> user, golden -> assistant
    "mawps": _mawps,
    "emoji": _emoji,
}
