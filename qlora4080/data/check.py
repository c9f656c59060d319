"""`qlora4080 data check FILE`: does every record of a file normalize into a trainable conversation?"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import QloraError
from .conversations import Rejected, validate_messages
from .formats import FormatError, detect_format, to_messages
from .jsonl import read_jsonl


@dataclass
class CheckResult:
    path: Path
    format: str
    detected: bool
    read: int = 0
    valid: int = 0
    rejected: list[Rejected] = field(default_factory=list)

    def reasons(self) -> Counter[str]:
        return Counter(r.reason.split(":")[0] if r.reason.startswith("bad JSON") else r.reason for r in self.rejected)


def read_records(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line or row number, record, problem) from JSONL, or from a .json file holding one array."""
    if not path.is_file():
        raise QloraError(f"file not found: {path}")
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise QloraError(f"not valid JSON: {exc.msg} at line {exc.lineno}", where=str(path)) from exc
        if not isinstance(rows, list):
            raise QloraError("a .json data file must hold one array of records", where=str(path))
        yield from ((index, row, None) for index, row in enumerate(rows, start=1))
        return
    yield from read_jsonl(path)


def check_file(path: Path, fmt: str = "auto", columns: dict[str, str] | None = None) -> CheckResult:
    rows = list(read_records(path))
    detected = fmt == "auto"
    if detected:
        found = detect_format([record for _, record, problem in rows if problem is None])
        if found is None:
            raise QloraError(
                "could not detect the format: the first records fit none of messages, sharegpt, prompt_completion, alpaca",
                where=str(path), hint="pass --format (and --column field=name for other shapes)",
            )
        fmt = found
    result = CheckResult(path=path, format=fmt, detected=detected)
    for number, record, problem in rows:
        result.read += 1
        if problem is None:
            try:
                problem = validate_messages(to_messages(record, fmt, columns))
            except FormatError as exc:
                problem = str(exc)
        if problem:
            result.rejected.append(Rejected(path, number, problem))
        else:
            result.valid += 1
    return result
