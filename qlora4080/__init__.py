"""qlora4080: single-GPU LoRA/QLoRA fine-tuning of chat models from one TOML recipe.

Python API (heavy libraries load only when training starts):

    from qlora4080 import load_recipe, train
    recipe = load_recipe("recipes/smollm2_135m_demo.toml", ["training.max_steps=10"])
    result = train(recipe)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["QloraError", "Recipe", "__version__", "load_recipe", "train"]

from .errors import QloraError
from .recipe import Recipe, load_recipe

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from .training.run import TrainResult


def train(
    recipe: Recipe,
    *,
    run_name: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    resume_from: Path | None = None,
    target_gb: float | None = None,
    callbacks: list[TrainerCallback] | None = None,
    live: bool | None = None,
) -> TrainResult:
    """Train a LoRA adapter; returns where the adapter and logs were written.

    `run_name` names the run (default: recipe stem + time); `overwrite` replaces
    a run of that name; `resume` / `resume_from` continue a run from its last
    checkpoint; `target_gb` is the card size the preflight plans for;
    `callbacks` are extra transformers TrainerCallbacks; `live` forces the Rich
    panel on or off. See qlora4080.training.run.train.
    """
    from .training.run import train as _train

    return _train(recipe, run_name=run_name, overwrite=overwrite, resume=resume, resume_from=resume_from,
                  target_gb=target_gb, callbacks=callbacks, live=live)


