"""The recipe: one TOML file = model + LoRA + data + training + output.

Typed with pydantic (extra="forbid"), so a mistyped key is rejected with its
name, the line it is on and the closest valid key, before anything heavy loads.

    schema.py    the sections and the Recipe that holds them
    load.py      read the file, apply --set overrides, check the files it names
    problems.py  pydantic's errors as sentences naming the file, line and key
"""

from __future__ import annotations

from ..toml_io import dumps_toml  # the writer of recipe snapshots, importable with the recipe
from .load import Overrides, load_recipe, parse_override
from .method_tables import MethodDeclaration, declare_method, declared_methods
from .schema import (
    BUILTIN_PREFIX,
    RUN_NAME,
    SECTIONS,
    DataSection,
    LoraSection,
    ModelSection,
    OutputSection,
    Recipe,
    Section,
    SourceSection,
    TrainingSection,
    add_method_check,
    recipe_tables,
    run_name_problem,
)

__all__ = [
    "BUILTIN_PREFIX",
    "RUN_NAME",
    "SECTIONS",
    "DataSection",
    "LoraSection",
    "MethodDeclaration",
    "ModelSection",
    "OutputSection",
    "Overrides",
    "Recipe",
    "Section",
    "SourceSection",
    "TrainingSection",
    "add_method_check",
    "declare_method",
    "declared_methods",
    "dumps_toml",
    "load_recipe",
    "parse_override",
    "recipe_tables",
    "run_name_problem",
]
