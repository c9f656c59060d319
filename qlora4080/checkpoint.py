"""What a checkpoint folder holds: the one reader and writer of its metadata.

`train` writes META_FILE next to the adapter; chat, eval, generate and export
read it to rebuild the model exactly as trained (base, dtype, 4-bit, context,
which turns carried loss). Before this module each of them read the JSON with
its own `.get(...)` defaults (`max_seq_len or 2048` in one place, the recipe's
1024 in another); now the defaults live here, once, and a damaged file is a
clear error instead of a KeyError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .backends import BackendName
from .data.vocabulary import TrainOn
from .errors import QloraError
from .thinking import Thinking

if TYPE_CHECKING:
    from .recipe import ModelSection

Dtype = Literal["auto", "float32", "bfloat16", "float16"]

META_FILE = "qlora4080.json"
"""How the adapter was trained: base model, backend, dtype, max_seq_len, versions, summary."""
RECIPE_SNAPSHOT = "recipe.toml"
"""The resolved recipe of the run (absolute paths); resume compares against it."""
FORMAT = 1


class CheckpointMeta(BaseModel):
    """How a checkpoint's adapter was trained (checkpoints written since format 1 all load)."""

    model_config = ConfigDict(extra="ignore")

    format: int = FORMAT
    base_model: str
    """The recipe's model.name: a hub id, a local folder or builtin:<name>."""
    backend: BackendName = "hf"
    load_in_4bit: bool = False
    dtype: Dtype = "auto"
    max_seq_len: int = Field(default=1024, ge=1)
    train_on: TrainOn = "assistant"
    thinking: Thinking = "auto"
    """[model] thinking as trained; the saved chat template carries it (see thinking.py)."""
    method: str = "sft"
    """How the adapter was trained: on conversations (sft) or on preference pairs (dpo)."""
    started_from: str | None = None
    """The checkpoint whose adapter this run continued (for dpo: the reference model), absolute."""
    trust_remote_code: bool = False
    recipe_path: str | None = None
    validation_file: str | None = None
    """The held-out file the run evaluated on (eval's default data)."""
    created: str | None = None
    versions: dict[str, str] = {}
    summary: dict[str, object] = {}
    """The run's summary.json as it was when the adapter was saved."""

    def model_section(self, **changes: object) -> ModelSection:
        """The [model] section that loads this checkpoint's base model as it was trained (`changes` override)."""
        from .recipe import ModelSection

        fields = {"name": self.base_model, "load_in_4bit": self.load_in_4bit, "dtype": self.dtype,
                  "trust_remote_code": self.trust_remote_code, "max_seq_len": self.max_seq_len}
        return ModelSection.model_validate({**fields, **changes})

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2)

    def save(self, folder: Path) -> None:
        (folder / META_FILE).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> CheckpointMeta | None:
        """The metadata of a checkpoint folder; None when the folder has none (a plain model folder)."""
        path = folder / META_FILE
        if not path.is_file():
            return None
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, ValidationError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            reason = str(error).splitlines()[0]
            raise QloraError(f"{META_FILE} in {folder} is damaged: it must be the JSON object `qlora4080 train` "
                             f"wrote, naming the base model ({reason})", where=str(path),
                             hint=f"re-train: qlora4080 train RECIPE --run-name {folder.name} --overwrite") from None
