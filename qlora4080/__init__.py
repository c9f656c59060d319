"""qlora4080: single-GPU LoRA/QLoRA fine-tuning of chat models from one TOML recipe.

Python API (heavy libraries load only when training starts):

    from qlora4080 import load_recipe, train
    recipe = load_recipe("recipes/smollm2_135m_demo.toml", ["training.max_steps=10"])
    result = train(recipe)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["QloraError", "Recipe", "__version__", "load_recipe", "train"]

from .errors import QloraError
from .recipe import Recipe, load_recipe

if TYPE_CHECKING:
    from .training.run import TrainResult


def train(recipe: Recipe, **options: Any) -> TrainResult:
    """Train a LoRA adapter; returns where the adapter and logs were written.

    Options: run_name, overwrite, resume, resume_from, target_gb, callbacks, live
    (see qlora4080.training.run.train).
    """
    from .training.run import train as _train

    return _train(recipe, **options)


