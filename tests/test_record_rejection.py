"""One bad record never stops everything: it is rejected with file:line and a reason, and the rest go on.

The same rules hold on every path a record takes: `data check`, `data build`
(with its cleaning) and training's data preparation (reading, then rendering
with the real SmolLM2 tokenizer and chat template).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import CLI, write_recipe

from qlora4080.data import fast_masks
from qlora4080.data.check import check_file
from qlora4080.data.conversations import Conversations, read_conversations
from qlora4080.data.dataset import tokenize_conversations
from qlora4080.data.pipeline import build_data
from qlora4080.data.render import MaskReport, render_or_reject
from qlora4080.errors import QloraError
from qlora4080.recipe import load_recipe
from qlora4080.training.data_setup import prepare_data

ASSISTANT_FIRST = ("first non-system message (message 0) is from the assistant; "
                   "a conversation must start with a user turn")
MODEL = "builtin:smollm2-135m-instruct"


def _chat(i: int, answer_suffix: str = "") -> dict:
    return {"messages": [{"role": "user", "content": f"Question {i}?"},
                         {"role": "assistant", "content": f"Answer {i}.{answer_suffix}"}]}


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


class _Log:
    """Stands in for the run log: keeps the lines training would print."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def line(self, message: str, style: str | None = None, echo: bool = True) -> None:
        self.lines.append(message)


def _boom_tokenizer(base):
    """SmolLM2's tokenizer with a template that raises on any message containing BOOM."""
    tokenizer = copy.deepcopy(base)
    tokenizer.chat_template = ("{% for m in messages %}{% if 'BOOM' in m['content'] %}{{ raise_exception('no') }}"
                               "{% endif %}{% endfor %}" + base.chat_template)
    return tokenizer


# --- assistant first -------------------------------------------------------------------------------------------


def test_assistant_first_is_rejected_by_data_check_and_skipped_by_training_preparation(tmp_path, smol_tokenizer):
    first = {"messages": [{"role": "assistant", "content": "Hello, I speak first."},
                          {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Bye"}]}
    after_system = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Hi"}]}
    path = _write(tmp_path / "chats.jsonl", [_chat(1), _chat(2), first, _chat(4), after_system, _chat(6)])

    result = check_file(path)
    assert (result.read, result.valid) == (6, 4)
    assert [(r.line, r.reason) for r in result.rejected] == [
        (3, ASSISTANT_FIRST), (5, ASSISTANT_FIRST.replace("message 0", "message 1"))]

    log = _Log()
    recipe = load_recipe(write_recipe(tmp_path, MODEL, data={"train": str(path), "validation": None}))
    train, validation, _ = prepare_data(recipe, smol_tokenizer, log)
    assert validation is None and train.conversations == 4
    assert f"skipped {path}:3: {ASSISTANT_FIRST}" in log.lines


def test_rendering_rejects_an_assistant_first_conversation_on_its_own(smol_tokenizer):
    # Records that skipped the reader (built in memory) meet the same rule at rendering, as a per-record drop.
    records = [_chat(1), {"messages": [{"role": "assistant", "content": "Me first"}]}, _chat(3)]
    split = tokenize_conversations(Conversations(Path("mem.jsonl"), records, [1, 2, 3]), smol_tokenizer, 128, "assistant")
    assert split.conversations == 2
    assert [str(d) for d in split.dropped] == [f"mem.jsonl:2: {ASSISTANT_FIRST}"]


def test_cleaning_that_empties_the_user_turn_is_rejected_and_the_rest_trains(tmp_path, smol_tokenizer):
    rows = [_chat(i) for i in range(1, 11)]
    rows[3]["messages"][0]["content"] = " \x07 "       # only a control character: cleaning empties and drops it
    rows[6]["messages"][0]["content"] = ""            # empty already
    path = _write(tmp_path / "src.jsonl", rows)

    checked = check_file(path)  # data check gives the verdict the build will give
    assert [r.line for r in checked.rejected] == [4, 7]
    assert all("is from the assistant; a conversation must start with a user turn" in r.reason for r in checked.rejected)

    log = _Log()
    recipe = load_recipe(write_recipe(tmp_path, MODEL, data={
        "train": None, "validation": None, "sources": [{"path": str(path), "name": "src"}],
        "build_dir": str(tmp_path / "builds"), "valid_min": 2}))
    train, validation, _ = prepare_data(recipe, smol_tokenizer, log)
    assert train.conversations + validation.conversations == 8
    assert any(line.startswith("  source src (messages): read 10, rejected 2,") for line in log.lines)
    build = next(p for p in (tmp_path / "builds").iterdir() if p.is_dir())  # not the build's .lock file
    rejects = [json.loads(line) for line in (build / "rejects.jsonl").read_text().splitlines()]
    assert [(r["file"], r["line"], r["reason"]) for r in rejects] == [(str(path), 4, ASSISTANT_FIRST), (str(path), 7, ASSISTANT_FIRST)]


# --- bytes that are not UTF-8, and a byte order mark -----------------------------------------------------------


def _bad_utf8_file(path: Path) -> Path:
    lines = [json.dumps(_chat(1)).encode(), json.dumps(_chat(2)).encode().replace(b"Answer 2", b"Caf\xe9 2"),
             json.dumps(_chat(3)).encode()]
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")  # a BOM too: accepted
    return path


def test_a_line_that_is_not_utf8_is_rejected_with_line_and_column_and_the_rest_load(tmp_path):
    path = _bad_utf8_file(tmp_path / "latin1.jsonl")
    column = json.dumps(_chat(2)).index("Answer 2") + 4
    reason = f"not valid UTF-8 (byte 0xe9 at column {column})"

    conversations = read_conversations(path)  # training, eval --data
    assert conversations.lines == [1, 3]
    assert [str(r) for r in conversations.rejected] == [f"{path}:2: {reason}"]

    checked = check_file(path)  # data check
    assert (checked.read, checked.valid, [(r.line, r.reason) for r in checked.rejected]) == (3, 2, [(2, reason)])
    assert checked.reasons() == {"not valid UTF-8": 1}


def test_a_line_that_is_not_utf8_is_a_reject_of_the_build(tmp_path):
    path = _bad_utf8_file(tmp_path / "latin1.jsonl")
    recipe = load_recipe(write_recipe(tmp_path, MODEL, data={
        "train": None, "validation": None, "sources": [{"path": str(path)}], "build_dir": str(tmp_path / "b"), "valid_min": 1}))
    build = build_data(recipe)
    assert [(p.read, p.rejected, p.kept, p.in_mix) for p in build.pools] == [(3, 1, 2, 2)]
    rejects = [json.loads(line) for line in (build.folder / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"].split(" (")[0]) for r in rejects] == [(2, "not valid UTF-8")]


def test_byte_order_mark_is_accepted_everywhere(tmp_path):
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + json.dumps(_chat(1)).encode() + b"\n")
    assert read_conversations(jsonl).lines == [1]
    assert check_file(jsonl).valid == 1
    array = tmp_path / "bom.json"
    array.write_bytes(b"\xef\xbb\xbf" + json.dumps([_chat(1), _chat(2)]).encode())
    assert check_file(array).valid == 2


def test_a_json_array_file_that_is_not_utf8_names_the_line(tmp_path):
    from qlora4080.data.jsonl import read_records

    path = tmp_path / "rows.json"
    path.write_bytes(b'[\n{"prompt": "x", "completion": "y"},\n{"prompt": "caf\xe9", "completion": "y"}\n]\n')
    with pytest.raises(QloraError, match=r"not valid UTF-8 \(byte 0xe9 at column 16\)") as info:
        list(read_records(path))
    assert info.value.where == f"{path}:3"


def test_utf16_file_is_named_as_such(tmp_path):
    path = tmp_path / "utf16.jsonl"
    path.write_bytes((json.dumps(_chat(1)) + "\n").encode("utf-16"))
    with pytest.raises(QloraError, match="UTF-16"):
        read_conversations(path)


def test_data_check_command_names_every_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    latin1 = b'{"messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "ok"}]}'
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join([
        json.dumps(_chat(1)).encode(), latin1, json.dumps({"messages": [{"role": "assistant", "content": "I start"}]}).encode(),
    ]) + b"\n")
    result = subprocess.run([*CLI, "data", "check", str(path)], check=False, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{path}:2: not valid UTF-8 (byte 0xe9 at column {latin1.index(0xE9) + 1})" in result.stdout
    assert f"{path}:3: {ASSISTANT_FIRST}" in result.stdout
    assert f"{path}:1:" not in result.stdout  # the line after the BOM is fine


# --- a conversation the chat template refuses ------------------------------------------------------------------


@pytest.mark.parametrize("count", [10, 100])  # below the fast path's batch size, and through it
def test_conversation_the_template_refuses_is_dropped_and_the_others_keep_their_labels(tmp_path, smol_tokenizer, count):
    tokenizer = _boom_tokenizer(smol_tokenizer)
    bad = {3, max(count - 20, 7)}
    rows = [_chat(i, " BOOM" if i in bad else "") for i in range(1, count + 1)]
    source = read_conversations(_write(tmp_path / "chats.jsonl", rows))

    report = MaskReport()
    split = tokenize_conversations(source, tokenizer, 128, "assistant", report=report)
    assert [(d.line, d.reason) for d in split.dropped] == [(i, "the chat template refused the conversation: no") for i in sorted(bad)]
    assert str(split.dropped[0]) == f"{source.path}:3: the chat template refused the conversation: no"

    good = [r["messages"] for i, r in enumerate(rows, start=1) if i not in bad]
    expected = render_or_reject(good, smol_tokenizer, "assistant", fast=False)  # every prefix rendered, unmodified template
    assert split.dataset["input_ids"] == [e["input_ids"] for e in expected]
    assert split.dataset["labels"] == [e["labels"] for e in expected]
    if count > fast_masks.MIN_BATCH:  # the one-render path stayed on: one bad record does not send the batch elsewhere
        assert report.fast >= count - len(bad) - 10


def test_refused_records_are_dropped_per_source_in_the_build_token_table(tmp_path, smol_tokenizer):
    from qlora4080.data.dataset import tokens_by_source

    path = _write(tmp_path / "src.jsonl", [_chat(i, " BOOM" if i == 2 else "") for i in range(1, 9)])
    recipe = load_recipe(write_recipe(tmp_path, MODEL, data={
        "train": None, "validation": None, "sources": [{"path": str(path), "name": "src"}],
        "build_dir": str(tmp_path / "b"), "valid_min": 2}))
    build = build_data(recipe)
    by_source, dropped = tokens_by_source([build.train_file, build.validation_file], _boom_tokenizer(smol_tokenizer), 128, "assistant")
    assert (by_source["src"].kept, by_source["src"].dropped) == (7, 1)
    assert [p.reason for p in dropped] == ["the chat template refused the conversation: no"]


def test_only_when_nothing_survives_does_it_stop(tmp_path, smol_tokenizer):
    source = read_conversations(_write(tmp_path / "all.jsonl", [_chat(i, " BOOM") for i in range(1, 4)]))
    with pytest.raises(QloraError, match=r"every conversation in .*all.jsonl was dropped \(3\); first: .*all.jsonl:1: "
                                         r"the chat template refused the conversation: no") as info:
        tokenize_conversations(source, _boom_tokenizer(smol_tokenizer), 128, "assistant")
    assert "chat_template" in info.value.hint
