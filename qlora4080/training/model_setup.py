"""The model stages: the base model and its tokenizer, then the adapter that trains on it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import QloraError
from .environment import Environment
from .session import RunContext

if TYPE_CHECKING:
    from ..backends import BackendName
    from ..model_types import Model, Tokenizer


@dataclass(frozen=True)
class LoadedModel:
    model: Model
    """The base model, or once attach_lora has run, the base with its trainable adapter."""
    tokenizer: Tokenizer
    """With the run's chat template."""


def load_model(run: RunContext, env: Environment) -> LoadedModel:
    recipe = run.recipe
    template = recipe.resolve_path(recipe.model.chat_template) if recipe.model.chat_template else None
    with run.stages.stage(f"Loading model {recipe.model.name}"):
        model, tokenizer = env.backend.load_model(recipe.model, env.hardware, template_path=template)
    return LoadedModel(model, tokenizer)


def attach_lora(run: RunContext, env: Environment, base: LoadedModel) -> LoadedModel:
    """A fresh adapter from the recipe's [lora], or the trained one `model.adapter` names, trainable."""
    from .summary import count_parameters

    lora, adapter = run.recipe.lora, run.recipe.model.adapter
    if adapter is not None:
        with run.stages.stage(f"Loading the adapter {adapter} to continue from"):
            model = continue_adapter(run, env.backend_name, base.model, Path(adapter).expanduser())
    else:
        with run.stages.stage(f"Attaching LoRA r={lora.r} alpha={lora.alpha} on {lora.target_modules}"):
            model = env.backend.attach_lora(base.model, lora, seed=run.recipe.training.seed,
                                            gradient_checkpointing=env.plan.gradient_checkpointing)
    trainable, total = count_parameters(model)
    run.log.line(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)")
    return replace(base, model=model)


def continue_adapter(run: RunContext, backend_name: BackendName, base: Model, folder: Path) -> Model:
    """The trained adapter in `folder` on the base model, trainable, once it is known to fit this run."""
    from peft import PeftModel

    from ..adapter_files import check_adapter
    from ..backend_capabilities import backends_that, capabilities
    from ..checkpoint import CheckpointMeta

    recipe = run.recipe
    if not capabilities(backend_name).continues_adapter:
        able = backends_that("continues_adapter")
        raise QloraError(f"continuing from a trained adapter needs the {' or '.join(able)} backend for now (this run "
                         f"uses {backend_name})", where="[model] adapter", hint=f"--set model.backend={able[0]}")
    check_adapter(folder)
    meta = CheckpointMeta.load(folder)
    if meta is not None and meta.base_model != recipe.model.name:
        raise QloraError(f"the adapter in {folder} was trained on {meta.base_model}, but [model] name is "
                         f"{recipe.model.name}", where="[model] adapter",
                         hint=f"set [model] name = \"{meta.base_model}\", or pick an adapter trained on this model")
    if meta is not None and meta.thinking != recipe.model.thinking:
        run.log.line(f"note: the adapter in {folder} was trained with model.thinking = {_toml(meta.thinking)}, "
                     f"this run renders with {_toml(recipe.model.thinking)}: set the same value unless the "
                     "change is what you want to train", style="yellow")
    model = PeftModel.from_pretrained(base, folder, is_trainable=True)
    shape = model.peft_config["default"]
    lora = recipe.lora
    if (getattr(shape, "r", lora.r), getattr(shape, "lora_alpha", lora.alpha)) != (lora.r, lora.alpha):
        run.log.line(f"note: [lora] r={lora.r} alpha={lora.alpha} is not used: the adapter keeps its own shape "
                     f"(r={getattr(shape, 'r', '?')}, alpha={getattr(shape, 'lora_alpha', '?')})", style="yellow")
    return model


def _toml(value: object) -> str:
    """A recipe value as it is written in TOML (true, false, "auto")."""
    return str(value).lower() if isinstance(value, bool) else f'"{value}"'
