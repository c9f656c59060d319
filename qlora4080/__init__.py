"""qlora4080: single-GPU LoRA/QLoRA fine-tuning of chat models from one TOML recipe.

Python API (heavy libraries load only when training starts):

    from qlora4080 import load_recipe, train
    recipe = load_recipe("recipes/smollm2_135m_demo.toml", ["training.max_steps=10"])
    result = train(recipe)
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["QloraError", "Recipe", "__version__", "load_recipe", "train"]

from .errors import QloraError
from .methods import registry as _methods  # noqa: F401  declares the training methods to the recipe schema: before any recipe
from .quiet import quiet_import_chatter
from .recipe import Recipe, load_recipe
from .training.run import train  # light to import: torch and the trainers load when training starts

quiet_import_chatter()  # before torch, torchao and bitsandbytes speak while being imported

