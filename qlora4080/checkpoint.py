"""What a checkpoint folder holds, by name: the files `train` writes and chat/eval/export read."""

from __future__ import annotations

META_FILE = "qlora4080.json"
"""How the adapter was trained: base model, backend, dtype, max_seq_len, versions, summary."""
RECIPE_SNAPSHOT = "recipe.toml"
"""The resolved recipe of the run (absolute paths); resume compares against it."""
