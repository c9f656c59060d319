"""Record files: read with every line's number and problem, written whole or not at all.

The one reader of local JSONL and JSON data files (training and eval files,
`data check`, `data build`, batch prompts). Lines are read as bytes and decoded
one by one, so a line that is not UTF-8 is a rejection with its line and
column while the other lines still load; a UTF-8 byte order mark (which some
Windows editors write) is accepted at the start of the file.

Writing goes to a temporary file beside the target, renamed over it at the
end, so a reader (or a later `train` reusing a build) never sees half a file.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from ..errors import QloraError

BAD_JSON = "bad JSON"
BAD_UTF8 = "not valid UTF-8"
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

Row = tuple[int, object, str | None]
"""(line or row number, the parsed record or None, None or why the line cannot be read)."""


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


def write_jsonl(path: Path, rows: Iterable[Mapping[str, object]]) -> None:
    """One JSON object per line (UTF-8, not ASCII-escaped), replacing `path` atomically."""
    write_text_atomically(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_text_atomically(path: Path, text: str) -> None:
    """`text` into `path` (UTF-8) through a temporary file in the same folder and os.replace.

    The rename is atomic on one file system, so `path` holds either its old
    content or all of the new one, even when the process dies while writing.
    """
    # A name of our own, opened exclusively (mkstemp would make the file private to its owner; this keeps the umask).
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with temporary.open("x", encoding="utf-8", newline="") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
