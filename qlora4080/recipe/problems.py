"""Validation errors, located: each pydantic error becomes a sentence with the file, line and key at fault.

A typo is reported before the "missing" error it causes, a value from --set
blames the flag rather than the file, and an unknown name comes with the
closest valid one.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from ..errors import QloraError
from ..toml_io import find_line
from .schema import Recipe, Section, SourceSection, recipe_tables


def validate(raw: dict[str, object], path: Path, text: str, override_keys: set[tuple[str, str]]) -> Recipe:
    """The typed recipe, or one error listing every problem pydantic found, each with its line."""
    try:
        # the recipe's folder is known to its checks: a method's check may look for a file the recipe names
        return Recipe.model_validate(raw, context={"source_path": path.resolve()})
    except ValidationError as exc:
        errors = exc.errors()
    # Unknown keys first: a typo in a required key also reports that key as missing, and the typo is the cause.
    rank = {"extra_forbidden": 0, "missing": 1}
    problems = [_explain(e, path, text, override_keys) for e in sorted(errors, key=lambda e: rank.get(e["type"], 2))]
    if len(problems) == 1:
        raise QloraError(problems[0].message, where=problems[0].where, hint=problems[0].hint)
    listed = "\n".join(f"- {p.message}{f' ({p.place})' if p.place else ''}{p.suggestion}" for p in problems)
    allowed = list(dict.fromkeys(p.allowed for p in problems if p.allowed))
    raise QloraError(f"{len(problems)} problems:\n{listed}", where=str(path),
                     hint="; ".join(["fix each one listed, then run again", *allowed]))


@dataclass
class _Problem:
    """One validation error, ready to show alone (where + message + hint) or as one line of a list."""

    message: str
    """What is wrong, e.g. unknown key 'nmae' in [model]."""
    where: str
    """path:line, or --set section.key for a value that came from the command line."""
    place: str
    """Where, as it reads after the message in a list: 'line 3' or '--set model.max_seq_len'."""
    suggestion: str = ""
    """"; did you mean 'name'?" for an unknown name with a close valid one."""
    allowed: str = ""
    """The valid names, where a name was unknown."""
    doc: str | None = None
    """The field's one-line documentation."""

    @property
    def hint(self) -> str | None:
        if self.allowed:
            return (self.suggestion.removeprefix("; ") + " " if self.suggestion else "") + self.allowed
        return self.doc


def _explain(error: ErrorDetails, path: Path, text: str, override_keys: set[tuple[str, str]]) -> _Problem:
    loc = [str(part) for part in error["loc"]]
    section = loc[0] if loc else ""
    key = loc[1] if len(loc) > 1 else ""
    flag = f"--set {section}.{key}" if (section, key) in override_keys else None
    model: type[Section]
    if section == "data" and key == "sources" and len(loc) > 2 and loc[2].isdigit():
        # Inside one [[data.sources]] table: name that table and the key in it, not `sources` in [data].
        index = int(loc[2])
        key, inner = (loc[3] if len(loc) > 3 else ""), ".".join(loc[3:])
        table, model, prefix = f"[[data.sources]] #{index + 1}", SourceSection, "data.sources"
        line = find_line(text, "data.sources", key, index=index) or find_line(text, "data", "sources")
        field = f"{table} {inner}"
    else:
        table, model, prefix = f"[{section}]", recipe_tables().get(section, Section), section
        line = find_line(text, section, key)
        field = ".".join(loc)
    if flag:
        where, place = flag, flag
    else:
        where = f"{path}:{line}" if line else str(path)
        place = f"line {line}" if line else ""  # e.g. a whole [data] table missing: no line to show
    doc = _field_doc(model, prefix, key)

    if error["type"] == "extra_forbidden":
        allowed = list(recipe_tables()) if len(loc) == 1 else list(model.model_fields)
        if len(loc) == 1:
            what = f"unknown section [{section}]"
        else:  # "[[data.sources]] #2 key 'pth'" reads better than "key 'pth' in [[data.sources]] #2"
            what = f"unknown {table} key '{key}'" if table.startswith("[[") else f"unknown key '{key}' in {table}"
        close = difflib.get_close_matches(section if len(loc) == 1 else key, allowed, n=1)
        listed = f"sections allowed: {', '.join(allowed)}" if len(loc) == 1 else f"allowed in {table.split(' #')[0]}: {', '.join(allowed)}"
        return _Problem(what, where, place, f"; did you mean '{close[0]}'?" if close else "", listed)
    if error["type"] == "missing":
        name = f"[{section}]" if len(loc) == 1 else f"'{key}' in {table}"
        return _Problem(f"missing required {name}", where, place, doc=doc)
    if error["type"] == "value_error":
        # Our own rules (an empty name, keys of one table that contradict each other): their sentence says it all.
        return _Problem(str(error["msg"]).removeprefix("Value error, "), where, place, doc=doc)
    return _Problem(f"{field} = {_as_toml(error.get('input'))}: {error['msg']}", where, place, doc=doc)


def _as_toml(value: object) -> str:
    """The value as the recipe spells it: `true`, `"yes"`, not Python's True and 'yes'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


def _field_doc(model: type[Section], prefix: str, key: str) -> str | None:
    if key not in model.model_fields:
        return None
    doc = model.model_fields[key].description
    return f"{prefix}.{key}: {doc}" if doc else None
