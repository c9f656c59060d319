"""The training methods, one line each; recipes, the data commands, the preflight and the CLI read them here.

Importing this module declares every method to the recipe schema
(recipe/method_tables.py, and each method's recipe check to the Recipe); qlora4080/__init__.py imports it, so a recipe is
never validated before the methods are known.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import QloraError
from ..recipe.method_tables import declare_method
from ..recipe.schema import add_method_check
from . import dpo, grpo, kto, orpo, sft
from .spec import MethodSpec

if TYPE_CHECKING:
    from ..data.records import RecordKind

METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in (
    sft.SPEC,
    dpo.SPEC,
    orpo.SPEC,
    kto.SPEC,
    grpo.SPEC,
)}

for _spec in METHODS.values():
    declare_method(_spec.declaration())
    if _spec.check_recipe is not None:
        add_method_check(_spec.name, _spec.check_recipe)


def method_spec(name: str) -> MethodSpec:
    """The method `training.method` names (a recipe has been checked against these already)."""
    if name not in METHODS:
        raise QloraError(f"unknown training method {name!r}", where="[training] method",
                         hint=f"choose one of {', '.join(METHODS)}")
    return METHODS[name]


def record_kinds() -> list[RecordKind]:
    """Every kind of record some method trains on, each once, in the order a file's kind is guessed.

    Conversations come last: their shapes (messages, prompt/completion) also fit records of narrower kinds
    (a feedback record is a prompt/completion with a label), so those are tried first. For the same reason a
    format several kinds read belongs to the last of them (prompts read every conversation format, as a prompt
    and its reference answer; `data check --format cmath` checks conversations).
    """
    kinds: dict[str, RecordKind] = {}
    for spec in METHODS.values():
        kinds.setdefault(spec.records.name, spec.records)
    return sorted(kinds.values(), key=lambda kind: kind is sft.SPEC.records)
