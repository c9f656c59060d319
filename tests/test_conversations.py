"""Reading conversation JSONL: every bad line is reported with its number and reason, nothing vanishes."""

from __future__ import annotations

import pytest

from qlora4080.data.conversations import read_conversations
from qlora4080.errors import QloraError

GOOD = '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}'


def test_bad_lines_are_reported_with_line_numbers(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join([
        GOOD,
        "{oops",
        '{"conversations": []}',
        '{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}',
        '{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "  "}]}',
        '{"messages": [{"role": "user", "content": "only a question"}]}',
        "",
        '{"id": "mine", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]}, {"role": "tool", "content": "1"}, {"role": "assistant", "content": "done"}]}',
    ]) + "\n")
    result = read_conversations(path)
    assert [r.get("id") for r in result.records] == ["data-1", "mine"]
    assert result.lines == [1, 8]
    assert [(r.line, r.reason) for r in result.rejected] == [
        (2, "bad JSON: Expecting property name enclosed in double quotes (column 2)"),
        (3, "expected an object with a 'messages' list"),
        (4, "message 0 has role 'robot'; expected one of system, user, assistant, tool"),
        (5, "message 1 (assistant) is empty"),
        (6, "no assistant turn, so nothing would be trained"),
    ]
    assert str(result.rejected[0]) == f"{path}:2: bad JSON: Expecting property name enclosed in double quotes (column 2)"


def test_a_file_with_nothing_usable_is_an_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("{nope\n")
    with pytest.raises(QloraError, match=r"no usable conversation .* first problem: .*bad.jsonl:1: bad JSON"):
        read_conversations(path)
