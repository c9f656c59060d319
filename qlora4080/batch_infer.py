"""`qlora4080 generate`: JSONL of prompts in, JSONL of answers out; resumable, bad lines reported not dropped.

Input lines: {"id"?, "prompt": "..."} or {"id"?, "messages": [...]}, optional "system".
Output lines: {"id", "answer", "stopped", ...input fields except messages}. An id
already in the output file is skipped, so a stopped run continues where it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from .data.conversations import Rejected
from .data.jsonl import check_not_special, read_jsonl
from .errors import QloraError
from .infer import ChatModel

if TYPE_CHECKING:
    from .data.vocabulary import Message


@dataclass
class PromptLine:
    id: str
    messages: list[Message]
    extra: dict[str, object]


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
        if problem or not isinstance(record, dict):
            result.rejected.append(Rejected(path, number, problem or "expected a JSON object"))
            continue
        messages = _messages(record)
        if isinstance(messages, str):
            result.rejected.append(Rejected(path, number, messages))
            continue
        # Without an id, one from the line and its prompt: the same prompt file resumes, another one never
        # collides with answers already in the output ("line-2" of a different file is a different prompt).
        identifier = str(record["id"]) if "id" in record else f"line-{number}-{_content_key(messages)}"
        if identifier in seen:
            result.rejected.append(Rejected(path, number, f"duplicate id {identifier!r}"))
            continue
        seen.add(identifier)
        extra = {k: v for k, v in record.items() if k not in ("messages", "prompt", "system", "id")}
        result.prompts.append(PromptLine(identifier, messages, extra))
    return result


def _content_key(messages: list[Message]) -> str:
    return hashlib.sha256(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _messages(record: dict[str, object]) -> list[Message] | str:
    """The conversation to answer, or why the line cannot be used."""
    system_text, prompt, messages = record.get("system"), record.get("prompt"), record.get("messages")
    system: list[Message] = [{"role": "system", "content": system_text}] if isinstance(system_text, str) else []
    if isinstance(prompt, str) and prompt.strip():
        return [*system, {"role": "user", "content": prompt}]
    if isinstance(messages, list) and messages and all(isinstance(m, dict) and "role" in m for m in messages):
        if messages[-1]["role"] == "assistant":
            return "the last message is already an assistant answer; end with a user (or tool) message"
        return system + cast("list[Message]", messages)  # the renderer checks each message's fields
    return "needs a non-empty 'prompt' string or a 'messages' list"


@dataclass
class Resume:
    done: set[str]
    """Ids already answered in the output file: skipped this time."""
    note: str | None = None
    """One line to show when the output had to be repaired (a cut-off last line dropped)."""


# How generate starts every line it writes (json.dumps of a dict whose first key is "id"); a cut line keeps
# as much of this start as was written, and the quoted id when it got that far.
_ANSWER_START = b'{"id": '
_QUOTED_ID = re.compile(rb'\{"id": ("(?:[^"\\]|\\.)*")')


def prepare_output(input: Path, output: Path, flag: str = "--output", *, repair: bool = True) -> Resume:
    """Check `output` before any model loads; the ids it already answers.

    Answers are appended, so `output` must be new or a file of earlier answers:
    never the input itself, a folder, or some other file (its lines would end
    up mixed with answers). A last line cut off by a crash mid-write is
    dropped, so its prompt is answered again and the file stays valid JSONL;
    a bad line anywhere else is an error, not a guess.
    """
    check_output_path(input, output, flag)
    if not output.is_file():
        return Resume(set())
    raw = output.read_bytes()
    lines = raw.splitlines(keepends=True)
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    done: set[str] = set()
    offset = 0
    for index, line in enumerate(lines):
        number, start, offset = index + 1, offset, offset + len(line)
        if not line.strip():
            continue
        written = line.rstrip(b"\r\n")
        try:
            record = json.loads(written.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if index == last and (written.startswith(_ANSWER_START) or _ANSWER_START.startswith(written)):
                # `repair` False: only checking (without the lock, another run may be writing that line)
                return Resume(done, _drop_cut_line(output, start, number, written) if repair else None)
            why = f": {exc.msg} (column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else " (not UTF-8)"
            raise _foreign(output, number, f"is not valid JSON{why}", bool(done), flag) from None
        if not isinstance(record, dict) or "id" not in record or "answer" not in record:
            raise _foreign(output, number, 'is not an answer as generate writes them (a JSON object with "id" and "answer")',
                           bool(done), flag)
        done.add(str(record["id"]))
    return Resume(done)


def check_output_path(input: Path, output: Path, flag: str) -> None:
    check_not_special(output, flag)  # appending to a FIFO nobody reads never returns
    if output.is_dir():
        raise QloraError(f"{output} is a folder; answers go into one JSONL file", where=flag,
                         hint=f"pass a file path, e.g. {flag} {output / 'answers.jsonl'}")
    if output.exists() and input.exists() and os.path.samefile(input, output):
        raise QloraError(f"the output {output} is the same file as the input {input}: answers would be appended to your prompts",
                         where=flag, hint=f"write the answers to another file, e.g. {flag} {input.with_name(input.stem + '.answers.jsonl')}")
    folder = output.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise QloraError(f"{folder} is a file, so {output} cannot be created under it", where=flag,
                         hint="choose an output path in a folder")


def _foreign(output: Path, number: int, what: str, after_answers: bool, flag: str) -> QloraError:
    """A line that generate did not write: the file is left exactly as it is."""
    if after_answers:  # earlier lines are answers: one damaged line before the end, not a file to replace
        return QloraError(f"line {number} {what}; only a cut-off last line is repaired automatically, so the file "
                          "was left as it is", where=f"{output}:{number}",
                          hint=f"fix or delete line {number} (a deleted answer is generated again), or pass a new file with {flag}")
    return QloraError(f"line {number} {what}; answers are appended to {flag}, so it must be a file of earlier answers "
                      "or a new file, and this one was left as it is", where=f"{output}:{number}",
                      hint=f"pass a new file with {flag}, e.g. {flag} answers.jsonl, or move {output} away")


def _drop_cut_line(output: Path, start: int, number: int, written: bytes) -> str:
    """Cut the file back to the end of its last whole answer; the line that says so."""
    with output.open("r+b") as handle:
        handle.truncate(start)
    which = ""
    if quoted := _QUOTED_ID.match(written):
        try:
            which = f" (id {json.loads(quoted.group(1))!r})"
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    return (f"{output}:{number}: the last line was cut off by an interrupted run; dropped it, "
            f"its prompt{which} is answered again")


def run_batch(chat: ChatModel, prompts: list[PromptLine], output: Path, *, max_new_tokens: int = 256, batch_size: int = 8,
              on_batch: Callable[[int], None] | None = None) -> int:
    """Answer every prompt, appending one line per answer as each batch finishes. Returns how many were written."""
    from .infer import generate_answers

    check_prompts_fit(chat, prompts, max_new_tokens)
    output.parent.mkdir(parents=True, exist_ok=True)
    _end_with_newline(output)
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


def check_prompts_fit(chat: ChatModel, prompts: list[PromptLine], max_new_tokens: int) -> None:
    """Refuse, before answering any, prompts past the model's positions: they ran for minutes, then answered junk."""
    from .infer import prompt_ids

    if not chat.context:
        return
    too_long = [(prompt.id, size) for prompt in prompts
                if (size := len(prompt_ids(chat, prompt.messages))) + max_new_tokens > chat.context]
    if too_long:
        shown = ", ".join(f"{name} ({size:,} tokens)" for name, size in too_long[:5])
        more = f" and {len(too_long) - 5} more" if len(too_long) > 5 else ""
        raise QloraError(f"{len(too_long)} prompt(s) do not fit the model's {chat.context:,}-token context with room "
                         f"for a {max_new_tokens}-token answer: {shown}{more}", where="--input",
                         hint="shorten or remove those prompts, or lower --max-new-tokens")


def _end_with_newline(path: Path) -> None:
    """A last line without its newline (a hand-edited file) must not be glued to the next answer."""
    if not path.is_file() or not path.stat().st_size:
        return
    with path.open("r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) != b"\n":
            handle.write(b"\n")
