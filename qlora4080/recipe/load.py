"""Reading a recipe: the TOML file, `--set` overrides, validation, and the files it names.

Every problem is a QloraError that names the file and line (or the --set flag)
and says what to do, before anything heavy loads.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path

from ..data.jsonl import check_not_special
from ..errors import QloraError
from ..toml_io import TOMLDecodeError, find_line, loads_toml
from .problems import validate
from .schema import BUILTIN_PREFIX, Recipe, recipe_tables

Overrides = list[str] | Mapping[str, object]
"""`--set` items ("training.max_steps=20"), or a mapping {"training.max_steps": 20} from the Python API."""


def load_recipe(path: str | Path, overrides: Overrides | None = None) -> Recipe:
    """Read a TOML recipe, apply `section.key=value` overrides, validate.

    Raises QloraError naming the file, line and key for anything wrong.
    """
    path = Path(path)
    check_not_special(path)
    if path.is_dir():
        recipes = sorted(p.name for p in path.glob("*.toml"))
        raise QloraError(
            f"{path} is a folder, not a recipe file",
            hint=(f"pass one of its recipes: {', '.join(str(path / name) for name in recipes)}" if recipes
                  else "it holds no .toml recipes; run `qlora4080 recipes` to list the bundled ones"),
        )
    if not path.is_file():
        raise QloraError(
            f"recipe file not found: {path}",
            hint="pass a .toml recipe, e.g. recipes/smollm2_135m_demo.toml (run `qlora4080 recipes` to list the bundled ones)",
        )
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:  # a binary file, or a recipe saved in another encoding
        line = data.count(b"\n", 0, exc.start) + 1
        raise QloraError(f"not a TOML recipe: byte 0x{data[exc.start]:02x} is not UTF-8 text", where=f"{path}:{line}",
                         hint="pass a .toml recipe saved as UTF-8") from exc
    try:
        raw = loads_toml(text)
    except TOMLDecodeError as exc:
        raise QloraError(f"not valid TOML: {exc}", where=str(path), hint="fix the syntax at the line shown") from exc
    override_keys = _apply_overrides(raw, overrides or [])
    recipe = validate(raw, path, text, override_keys)
    recipe.source_path = path.resolve()
    if isinstance(overrides, list):
        recipe.overrides = list(overrides)
    _check_files(recipe, path, text)
    return recipe


def parse_override(item: str) -> tuple[list[str], object]:
    """`training.learning_rate=1e-4` -> (["training", "learning_rate"], 1e-4). Values are read as TOML, else as text."""
    if "=" not in item:
        raise QloraError(f"override {item!r} has no '='", where="--set", hint="write it as section.key=value, e.g. training.max_steps=20")
    dotted, value_text = item.split("=", 1)
    try:
        value = loads_toml(f"v = {value_text.strip()}")["v"]
    except TOMLDecodeError:
        value = value_text.strip()  # bare words such as cosine or a path
    return _split_key(dotted), value


def _split_key(dotted: str) -> list[str]:
    keys = [k.strip() for k in dotted.strip().split(".")]
    if len(keys) != 2 or not all(keys):
        raise QloraError(
            f"override key {dotted!r} must be section.key",
            where="--set",
            hint=f"sections: {', '.join(recipe_tables())}; e.g. training.learning_rate=1e-4",
        )
    return keys


def _apply_overrides(raw: dict[str, object], overrides: Overrides) -> set[tuple[str, str]]:
    """Set each override in the parsed recipe; returns the (section, key) pairs that came from the command line."""
    if isinstance(overrides, Mapping):
        items = [(_split_key(dotted), value, f"{dotted}={value}") for dotted, value in overrides.items()]
    else:
        items = [(*parse_override(o), o) for o in overrides]
    applied: set[tuple[str, str]] = set()
    for keys, value, shown in items:
        section, key = keys
        _check_override_key(section, key, shown)
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise QloraError(f"[{section}] is not a table in the recipe", where="--set")
        target[key] = value
        applied.add((section, key))
    return applied


def _check_override_key(section: str, key: str, shown: str) -> None:
    """An unknown name in --set is the flag's fault, not the recipe file's: say so before validation blames the file."""
    tables = recipe_tables()
    if section not in tables:
        raise QloraError(f"--set {shown}: unknown section '{section}'", where="--set",
                         hint=_did_you_mean(section, list(tables)))
    allowed = list(tables[section].model_fields)
    if key not in allowed:
        raise QloraError(f"--set {shown}: unknown key '{key}' in [{section}]", where="--set",
                         hint=_did_you_mean(key, allowed))


def _did_you_mean(name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    return (f"did you mean '{close[0]}'? " if close else "") + f"allowed: {', '.join(allowed)}"


def _check_files(recipe: Recipe, path: Path, text: str) -> None:
    """Files the recipe names must exist before any model is loaded."""
    for key in ("train", "validation"):
        value = getattr(recipe.data, key)
        if value is None:
            continue
        resolved = recipe.resolve_path(value)
        if not resolved.is_file():
            line = find_line(text, "data", key)
            raise QloraError(
                f"data.{key} file not found: {resolved}",
                where=f"{path}:{line}" if line else str(path),
                hint="paths in [data] are relative to the recipe file's folder",
            )
    for index, source in enumerate(recipe.data.sources):
        if source.path and not recipe.resolve_path(source.path).exists():
            raise QloraError(
                f"data.sources[{index}] path not found: {recipe.resolve_path(source.path)}",
                where=str(path), hint="source paths are relative to the recipe file's folder",
            )
    if recipe.model.chat_template and not recipe.resolve_path(recipe.model.chat_template).is_file():
        raise QloraError(
            f"model.chat_template file not found: {recipe.resolve_path(recipe.model.chat_template)}",
            where=f"{path}:{find_line(text, 'model', 'chat_template')}",
        )
    name = recipe.model.name
    if name.startswith(BUILTIN_PREFIX):
        from ..builtin_models import BUILTIN_MODELS

        if name[len(BUILTIN_PREFIX):] not in BUILTIN_MODELS:
            raise QloraError(
                f"unknown built-in model {name!r}",
                where=f"{path}:{find_line(text, 'model', 'name')}",
                hint="known: " + ", ".join(BUILTIN_PREFIX + k for k in BUILTIN_MODELS),
            )
