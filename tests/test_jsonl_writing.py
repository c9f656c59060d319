"""write_jsonl: one object per line, UTF-8 as written, and the target replaced whole or not at all."""

from __future__ import annotations

import json
import os

import pytest

from qlora4080.data.jsonl import read_jsonl, write_jsonl


def test_rows_round_trip_through_the_reader(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"id": 1, "text": "naïve 中文 🙂"}, {"id": 2, "nested": {"a": [1, 2]}}]
    write_jsonl(path, rows)
    assert "naïve 中文 🙂" in path.read_text(encoding="utf-8")  # not ASCII-escaped
    assert [record for _, record, _ in read_jsonl(path)] == rows
    write_jsonl(path, [])
    assert path.read_text(encoding="utf-8") == ""


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"kept": True}])

    def rows():
        yield {"half": "written"}
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        write_jsonl(path, rows())
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"kept": True}]
    assert os.listdir(tmp_path) == ["rows.jsonl"]


def test_the_file_gets_the_usual_permissions(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"a": 1}])
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert path.stat().st_mode == plain.stat().st_mode


def test_a_failed_rename_removes_the_temporary(tmp_path, monkeypatch):
    path = tmp_path / "rows.jsonl"
    write_jsonl(path, [{"kept": True}])

    def refuse(source, target):
        raise OSError("disk said no")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk said no"):
        write_jsonl(path, [{"new": True}])
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"kept": True}]
    assert os.listdir(tmp_path) == ["rows.jsonl"]
