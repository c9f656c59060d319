"""`qlora4080 data check FILE`: does every record of a file normalize into a trainable conversation (or pair)?

A file of preference pairs ("chosen" and "rejected" in most records, or
--format pairs) is checked by the reader dpo and orpo train with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import QloraError
from .conversations import Rejected
from .formats import FormatError, detect_format, to_messages
from .jsonl import BAD_JSON, BAD_UTF8, read_records
from .validate import validate_messages

__all__ = ["CheckResult", "check_file"]


@dataclass
class CheckResult:
    path: Path
    format: str
    detected: bool
    read: int = 0
    valid: int = 0
    rejected: list[Rejected] = field(default_factory=list)

    def reasons(self) -> Counter[str]:
        """Rejections counted by reason; a bad line's column and byte are left out so such lines group together."""
        return Counter(next((kind for kind in (BAD_JSON, BAD_UTF8) if r.reason.startswith(kind)), r.reason)
                       for r in self.rejected)


def check_file(path: Path, fmt: str = "auto", columns: Mapping[str, str] | None = None) -> CheckResult:
    """Every record of the file through the build's normalizing and validation: how many fit, and why the others not."""
    from ..preference.pairs import mostly_pairs, to_pair, with_pair_fields

    rows = list(read_records(path))
    detected = fmt == "auto"
    parsed = [record for _, record, problem in rows if problem is None]
    if detected and mostly_pairs(parsed):
        fmt = "pairs"
    elif detected:
        found = detect_format(parsed)
        if found is None:
            raise QloraError(
                "could not detect the format: the first records fit none of messages, sharegpt, prompt_completion, alpaca, "
                "pairs",
                where=str(path), hint="pass --format (and --column field=name for other shapes)",
            )
        fmt = found
    result = CheckResult(path=path, format=fmt, detected=detected)
    for number, record, problem in rows:
        result.read += 1
        if problem is None and fmt == "pairs":
            pair = to_pair(with_pair_fields(record, columns or {}), "") if isinstance(record, dict) else "expected a JSON object"
            problem = pair if isinstance(pair, str) else None
        elif problem is None:
            try:
                problem = validate_messages(to_messages(record, fmt, columns))
            except FormatError as exc:
                problem = str(exc)
        if problem:
            result.rejected.append(Rejected(path, number, problem))
        else:
            result.valid += 1
    return result
