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
import re
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from ..errors import QloraError

BAD_JSON = "bad JSON"
BAD_UTF8 = "not valid UTF-8"
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

Row = tuple[int, object, str | None]
"""(line or row number, the parsed record or None, None or why the line cannot be read)."""


def check_not_special(path: Path, where: str | None = None) -> None:
    """Refuse a FIFO, device or socket before reading it: reading /dev/zero or a pipe nobody writes never ends."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # missing: the caller says "not found" in its own words
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    raise QloraError(f"{path} is {kind}, not a file: reading it would never end", where=where or str(path),
                     hint="point at a regular file (save the stream to a file first)")


def read_jsonl(path: Path) -> Iterator[Row]:
    """(line number, record, None) for each parsed line; (line number, None, reason) for a bad one. Blank lines are skipped."""
    check_not_special(path)
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
            record, problem = parse_json_line(line)
            yield number, record, problem


_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def parse_json_line(line: str) -> tuple[object, str | None]:
    """(record, None), or (None, why): bad JSON, nesting deeper than Python reads, an integer of more than
    4,300 digits, or a lone surrogate escape (\\ud800: JSON accepts it, but it is no text and fails every later write)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        return None, f"{BAD_JSON}: {exc.msg} (column {exc.colno})"
    except RecursionError:
        return None, f"{BAD_JSON}: nested too deeply (thousands of brackets)"
    except ValueError as exc:  # int() refuses more than 4,300 digits
        return None, f"{BAD_JSON}: {str(exc).split(';')[0]}"
    if _ESCAPED_SURROGATE.search(line):
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            return None, f"a lone surrogate escape ({exc.object[exc.start]!r}) is not text; remove or replace it"
    return record, None


def read_records(path: Path) -> Iterator[Row]:
    """(line or row number, record, problem) from JSONL, or from a .json file holding one array."""
    check_not_special(path)
    if path.is_dir():
        raise QloraError(f"{path} is a folder, not a data file", hint="give one .jsonl or .json file inside it")
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
    except (RecursionError, ValueError) as exc:  # nesting deeper than Python reads; an integer of > 4,300 digits
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
        raise QloraError(f"not valid JSON: {reason}", where=str(path)) from None
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
