"""The words the data layer and the recipe share: a message, what is trained, the input formats.

One module, imported by the recipe, the checkpoint metadata and the data
pipeline alike, so a new `train_on` choice or input format is added in one
place. It imports nothing from the package, so anything may import it.
"""

from __future__ import annotations

from typing import Literal, TypedDict, get_args

IGNORE_INDEX = -100
"""The label that carries no loss (PyTorch's cross-entropy ignore_index)."""

TrainOn = Literal["assistant", "last_assistant", "all"]
TRAIN_ON_CHOICES: tuple[str, ...] = get_args(TrainOn)

DataFormat = Literal["messages", "sharegpt", "alpaca", "prompt_completion", "columns", "cmath", "mawps", "emoji"]
FORMATS: tuple[str, ...] = get_args(DataFormat)


class _MessageRequired(TypedDict):
    role: str
    content: str


class Message(_MessageRequired, total=False):
    """One chat turn as chat templates read it (the OpenAI / transformers shape).

    `role` and `content` are always there once a record is converted; the rest
    are what templates of reasoning and tool-using models read.
    """

    reasoning_content: str
    tool_calls: list[dict[str, object]]
    tool_call_id: str
    name: str


__all__ = ["FORMATS", "IGNORE_INDEX", "TRAIN_ON_CHOICES", "DataFormat", "Message", "TrainOn"]
