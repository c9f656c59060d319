"""Reading JSONL line by line: every line comes back with its number, parsed or with the reason it is not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import QloraError


def read_jsonl(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, record, None) for each parsed line; (line number, None, reason) for a bad one. Blank lines are skipped."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise QloraError(f"cannot read {path}: {exc}") from exc
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as exc:
                yield number, None, f"bad JSON: {exc.msg} (column {exc.colno})"
