"""The base of every recipe table: unknown keys are errors, each field's docstring is its help.

Its own module, below the schema, so a training method (qlora4080/methods) can
declare the table it adds to a recipe without importing the Recipe it joins.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A recipe table: unknown keys are errors, each field's docstring is its help, assignments are validated too."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True,
                              strict=True)
