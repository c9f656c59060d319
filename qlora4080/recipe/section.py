"""The base of every recipe table: unknown keys are errors, each field's docstring is its help.

Its own module, below the schema, so a training method (qlora4080/methods) can
declare the table it adds to a recipe without importing the Recipe it joins.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from typing_extensions import Self


class Section(BaseModel):
    """A recipe table: unknown keys are errors, each field's docstring is its help, assignments are validated too."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True,
                              strict=True)

    def with_paths_resolved(self, resolve: Callable[[str], Path]) -> Self:
        """This table with the file paths it names made absolute (`resolve`: against the recipe's folder), for the
        recipe snapshot saved next to a checkpoint. A table that names no files is returned as it is."""
        return self
