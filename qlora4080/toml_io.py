"""Small TOML helpers for recipes: write one back (for snapshots) and find the line a key is on (for errors)."""

from __future__ import annotations

import re
from typing import Any


def dumps_toml(data: dict[str, Any]) -> str:
    """Tables of scalars, lists and inline tables, plus arrays of tables (e.g. [[data.sources]])."""
    lines: list[str] = []
    for section, values in data.items():
        if not isinstance(values, dict):
            continue
        lines.append(f"[{section}]")
        nested = {k: v for k, v in values.items() if isinstance(v, list) and v and all(isinstance(i, dict) for i in v)}
        for key, value in values.items():
            if key not in nested:
                lines.append(f"{key} = {_value(value)}")
        lines.append("")
        for key, tables in nested.items():
            for table in tables:
                lines.append(f"[[{section}.{key}]]")
                lines += [f"{k} = {_value(v)}" for k, v in table.items()]
                lines.append("")
    return "\n".join(lines)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _value(key)


# A table header, `[name]` or `[[name]]` (an array of tables), with an optional trailing comment.
_HEADER = re.compile(r"(\[\[?)\s*([\w.\-]+)\s*\]\]?\s*(?:#.*)?")


def find_line(text: str, section: str, key: str = "", index: int | None = None) -> int | None:
    """1-based line of `key = ...` inside `[section]` (or of the section header).

    With `index`, `section` is an array of tables such as data.sources and the
    line is looked up in its `index`-th (0-based) `[[section]]` block.
    """
    current, seen = "", -1
    header_line = None
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = _HEADER.fullmatch(stripped)
        if header:
            current = header.group(2)
            if current == section and header.group(1) == "[[":
                seen += 1
            if current == section and (index is None or seen == index):
                header_line = number
            continue
        inside = current == section and (index is None or seen == index)
        if inside and key and re.match(rf"{re.escape(key)}\s*=", stripped):
            return number
    return header_line
