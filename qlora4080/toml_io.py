"""TOML for recipes: read one, write one back (for snapshots), and find the line a key is on (for errors).

Reading uses the standard library's tomllib (tomli before Python 3.11), writing
uses tomlkit; neither is hand-written here. The line finder asks the same
parser, so quoted keys, dotted keys and multi-line values are found where TOML
itself says they are.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping
from pathlib import Path

import tomlkit
from tomlkit.items import AoT, Array, InlineTable, Item, Table

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

TOMLDecodeError = tomllib.TOMLDecodeError
KeyPath = tuple[str | int, ...]
"""Where a value sits: table and key names, with the index of a table in an array of tables."""


def loads_toml(text: str) -> dict[str, object]:
    """The parsed document; raises TOMLDecodeError (its message names the line and column).

    Arrays or inline tables nested thousands deep exhaust Python's recursion: that is a TOMLDecodeError
    too, so every caller's handling of a bad file covers it.
    """
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise TOMLDecodeError("arrays or tables nested too deeply (thousands of levels) to read") from None


def read_toml(path: Path) -> dict[str, object]:
    """A TOML file, parsed; raises OSError, UnicodeDecodeError or TOMLDecodeError."""
    return loads_toml(path.read_text(encoding="utf-8"))


def flatten_table(table: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    """{"training": {"learning_rate": 2e-4}} -> {"training.learning_rate": 2e-4}; arrays (and arrays of tables) stay values."""
    flat: dict[str, object] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            flat.update(flatten_table(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def dumps_toml(data: Mapping[str, object]) -> str:
    """`data` as TOML, laid out the way a person writes a recipe.

    Each top-level mapping becomes a [table], a list of mappings inside it an
    array of tables ([[data.sources]]), and anything deeper an inline table
    (`columns = {user = "question"}`) rather than a table of its own.
    """
    document = tomlkit.document()
    for key, value in data.items():
        document.add(key, _table(value) if isinstance(value, Mapping) else _value(value))
    return tomlkit.dumps(document)


def _table(values: Mapping[str, object]) -> Table:
    table = tomlkit.table()
    for key, value in values.items():
        tables = _tables(value)
        table.add(key, AoT([_table(item) for item in tables]) if tables else _value(value))
    return table


def _tables(value: object) -> list[Mapping[str, object]]:
    """The tables of an array of tables (a non-empty list of mappings only), else []."""
    if not isinstance(value, list):
        return []
    tables = [item for item in value if isinstance(item, Mapping)]
    return tables if tables and len(tables) == len(value) else []


def _value(value: object) -> Item:
    if isinstance(value, Mapping):
        inline: InlineTable = tomlkit.inline_table()
        for key, item in value.items():
            inline.add(key, _value(item))
        return inline
    if isinstance(value, (list, tuple)):
        array: Array = tomlkit.array()
        array.extend(_value(item) for item in value)
        return array
    return tomlkit.item(value)


def find_line(text: str, section: str, key: str = "", index: int | None = None) -> int | None:
    """1-based line of `key` inside the table `section` (a dotted name such as "data.sources"); None if absent.

    With `index`, `section` is an array of tables and the key is looked up in
    its `index`-th (0-based) table. A key that is not there gives the line of
    its table instead (the header, or the first dotted key that made it).
    """
    lines = key_lines(text)
    table: KeyPath = tuple(section.split(".")) + ((index,) if index is not None else ())
    return (lines.get((*table, key)) if key else None) or lines.get(table)


@functools.lru_cache(maxsize=8)
def key_lines(text: str) -> dict[KeyPath, int]:
    """The line on which each table and key of a valid TOML document starts.

    TOML's own parser decides: a statement starts on the line after the
    longest prefix of the document that parses without it. Prefixes that stop
    inside a multi-line string or array do not parse, so a key is found on the
    line where it is written, however it is spelled ("name", 'name', model.name).
    Quadratic in the line count, which is fine for recipes of a few dozen lines.
    """
    lines = text.split("\n")  # TOML counts "\n" only, not the other characters str.splitlines breaks on
    found: dict[KeyPath, int] = {}
    start = 1  # where the statement being read began
    for end in range(1, len(lines) + 1):
        try:
            parsed = tomllib.loads("\n".join(lines[:end]) + "\n")  # "\n" ends a "\r\n" line cut after its "\r"
        except TOMLDecodeError:
            continue  # inside a multi-line value: the statement goes on
        for path in _paths(parsed):
            found.setdefault(path, start)
        start = end + 1
    return found


def _paths(value: object, prefix: KeyPath = ()) -> list[KeyPath]:
    """Every table, key and array-of-tables element path in a parsed document."""
    paths: list[KeyPath] = []
    if isinstance(value, dict):
        for key, item in value.items():
            paths += [(*prefix, key), *_paths(item, (*prefix, key))]
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        for number, item in enumerate(value):
            paths += [(*prefix, number), *_paths(item, (*prefix, number))]
    return paths
