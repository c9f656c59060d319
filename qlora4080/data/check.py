"""`qlora4080 data check FILE`: does every record of a file normalize into a trainable conversation (or pair)?

Each kind of record (conversations, preference pairs, ...) is checked by the
reader its training method trains with; "auto" guesses the kind and format.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import QloraError
from .conversations import Rejected
from .formats import DETECTED_FORMATS
from .jsonl import BAD_JSON, BAD_UTF8, read_records

if TYPE_CHECKING:
    from .records import RecordKind

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


def check_file(path: Path, fmt: str = "auto", columns: Mapping[str, str] | None = None,
               kinds: Sequence[RecordKind] | None = None) -> CheckResult:
    """Every record of the file through the build's reading and validation: how many fit, and why the others not.

    `kinds` are the record kinds to read it as, tried in order when the format is "auto" (default: every kind
    a training method reads). A format several kinds read (grpo's prompts read every conversation format) is
    checked as the last of them reads it: conversations, the kind whose format it is.
    """
    if kinds is None:
        from ..methods.registry import record_kinds

        kinds = record_kinds()
    rows = list(read_records(path))
    detected = fmt == "auto"
    parsed = [record for _, record, problem in rows if problem is None]
    found = next(((kind, name) for kind in kinds if (name := kind.detect(parsed)) is not None), None) if detected else \
        next(((kind, fmt) for kind in reversed(kinds) if fmt in kind.formats), None)
    if found is None:
        if not detected:
            raise QloraError(f"unknown format {fmt!r}", where="--format",
                             hint=f"formats: {', '.join(dict.fromkeys(name for kind in kinds for name in kind.formats))}")
        raise QloraError(
            "could not detect the format: the first records fit none of "
            + ", ".join(name for kind in kinds for name in _detectable(kind)),
            where=str(path), hint="pass --format (and --column field=name for other shapes)",
        )
    kind, fmt = found
    result = CheckResult(path=path, format=fmt, detected=detected)
    for number, record, problem in rows:
        result.read += 1
        problem = problem or kind.check(record, fmt, columns or {})
        if problem:
            result.rejected.append(Rejected(path, number, problem))
        else:
            result.valid += 1
    return result


def _detectable(kind: RecordKind) -> tuple[str, ...]:
    """The formats "auto" can find (named data sets such as cmath are only ever chosen explicitly)."""
    return DETECTED_FORMATS if kind.name == "conversations" else kind.formats
