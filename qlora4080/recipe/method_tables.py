"""What a recipe knows of the training methods: their names, the tables they add, the data they read.

The methods themselves live in qlora4080/methods, above the recipe (they build
trainers from it). Each one declares itself here when qlora4080 is imported,
the way a plugin registers with its host, so the recipe's `training.method`
choices, its method tables (`[preference]`, `[kto]`) and the source formats a
method accepts all come from the methods, and adding one edits no schema.

This module sits below the schema and knows no Recipe: what else a method
needs of a whole recipe (e.g. batch_size > 1) is a check on the Recipe, so it
registers with the Recipe (schema.add_method_check), and imports run one way.
"""

from __future__ import annotations

from dataclasses import dataclass

from .section import Section


@dataclass(frozen=True)
class MethodDeclaration:
    name: str
    """The value of `training.method`."""
    summary: str
    """One line: what the method learns, from what data."""
    formats: tuple[str, ...]
    """The `[[data.sources]] format` values it reads (besides "auto")."""
    reads: str = "conversations"
    """What its records are, for messages: "conversations", "preference pairs"."""
    packs: bool = False
    """Whether `data.packing` applies (records that are whole conversations)."""
    table: str | None = None
    """The recipe table holding its settings, e.g. "preference"; methods may share one."""
    settings: type[Section] | None = None
    """That table's schema (defaults for every key)."""


_DECLARED: dict[str, MethodDeclaration] = {}


def declare_method(declaration: MethodDeclaration) -> None:
    """Make a method known to recipes. Two methods may share a table only with the same schema."""
    for other in _DECLARED.values():
        if other.name != declaration.name and declaration.table and other.table == declaration.table \
                and other.settings is not declaration.settings:
            raise ValueError(f"methods {other.name} and {declaration.name} declare the table [{declaration.table}] "
                             "with different schemas")
    _DECLARED[declaration.name] = declaration


def declared_methods() -> dict[str, MethodDeclaration]:
    """Every method recipes can name, in the order they were declared."""
    return dict(_DECLARED)


def method_tables() -> dict[str, type[Section]]:
    """The recipe tables the methods add, by name."""
    return {d.table: d.settings for d in _DECLARED.values() if d.table and d.settings}
