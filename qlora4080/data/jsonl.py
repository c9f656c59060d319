"""Reading record files: every line comes back with its number, parsed or with the reason it is not.

The one reader of local JSONL and JSON data files (training and eval files,
`data check`, `data build`, batch prompts). Lines are read as bytes and decoded
one by one, so a line that is not UTF-8 is a rejection with its line and
column while the other lines still load; a UTF-8 byte order mark (which some
Windows editors write) is accepted at the start of the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import QloraError

BAD_JSON = "bad JSON"
BAD_UTF8 = "not valid UTF-8"
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

Row = tuple[int, Any, str | None]


def read_jsonl(path: Path) -> Iterator[Row]:
    """(line number, record, None) for each parsed line; (line number, None, reason) for a bad one. Blank lines are skipped."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise QloraError(f"cannot read {path}: {exc}") from exc
    with handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1:
                _refuse_utf16(path, raw)
                raw = raw.removeprefix(UTF8_BOM)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, None, _utf8_problem(raw, exc)
                continue
            if not line.strip():
                continue
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield number, None, f"{BAD_JSON}: {exc.msg} (column {exc.colno})"


def read_records(path: Path) -> Iterator[Row]:
    """(line or row number, record, problem) from JSONL, or from a .json file holding one array."""
    if not path.is_file():
        raise QloraError(f"file not found: {path}")
    if path.suffix != ".json":
        yield from read_jsonl(path)
        return
    # One JSON document: a bad byte or bracket anywhere spoils the whole array, so these stop with the spot.
    raw = path.read_bytes()
    _refuse_utf16(path, raw)
    raw = raw.removeprefix(UTF8_BOM)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        start = raw.rfind(b"\n", 0, exc.start) + 1
        raise QloraError(_utf8_problem(raw[start:], exc, offset=start), where=f"{path}:{line}",
                         hint="save the file as UTF-8") from exc
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QloraError(f"not valid JSON: {exc.msg} (column {exc.colno})", where=f"{path}:{exc.lineno}") from exc
    if not isinstance(rows, list):
        raise QloraError("a .json data file must hold one array of records", where=str(path))
    yield from ((index, row, None) for index, row in enumerate(rows, start=1))


def _utf8_problem(line: bytes, exc: UnicodeDecodeError, offset: int = 0) -> str:
    """'not valid UTF-8 (byte 0xe9 at column 12)'; the column counts characters, as an editor shows them."""
    start = exc.start - offset
    column = len(line[:start].decode("utf-8")) + 1  # everything before the bad byte decoded fine
    return f"{BAD_UTF8} (byte 0x{line[start]:02x} at column {column})"


def _refuse_utf16(path: Path, first: bytes) -> None:
    # Every line of a UTF-16 file would be rejected on its own; one message says what is really wrong.
    if first.startswith(UTF16_BOMS):
        raise QloraError("the file is UTF-16 (it starts with a UTF-16 byte order mark); data files must be UTF-8",
                         where=str(path), hint=f"convert it, e.g. iconv -f UTF-16 -t UTF-8 {path} > converted.jsonl")
