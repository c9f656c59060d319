"""Recipe -> TRL SFTConfig: the one visible mapping, with device-aware defaults.

TRL's SFTConfig defaults to bf16=True and gradient_checkpointing=True. On a CPU
both only cost time, so every device-dependent value (precision, optimizer,
checkpointing, padding-free) comes from the run's plan (qlora4080/plan.py),
the same object the preflight and the summary read.

Early stopping (training.early_stopping_patience) is transformers' own
EarlyStoppingCallback on eval_loss with load_best_model_at_end, so the model
left in memory, and saved as the adapter, is the best evaluation's.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backend_capabilities import capabilities
from ..errors import QloraError
from ..plan import RunPlan
from ..recipe import Recipe
from .compat import checkpointing_options

if TYPE_CHECKING:
    from transformers import TrainerCallback
    from trl import SFTConfig


def trainer_arguments(recipe: Recipe, plan: RunPlan, output_dir: Path, *, has_eval: bool) -> dict[str, Any]:
    """TrainingArguments every training method shares: schedule, precision, logging, saving, evaluation.

    A plain dict because SFTConfig and DPOConfig both extend TrainingArguments:
    each method adds its own fields to these. Device-dependent values come from the run's plan.
    """
    t = recipe.training
    eval_every = t.eval_steps if has_eval and t.eval_steps > 0 else None
    stopping = early_stopping_on(recipe, has_eval=has_eval)
    return dict(
        output_dir=str(output_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=plan.optimizer,
        bf16=plan.bf16,
        fp16=plan.fp16,
        # a backend that applies its own checkpointing when the adapter is attached (unsloth) is not wrapped again
        **checkpointing_options(plan.gradient_checkpointing and not capabilities(plan.backend).owns_gradient_checkpointing),
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        # Early stopping keeps the best evaluation's checkpoint, so every evaluation is saved (transformers also
        # requires save_steps to be a multiple of eval_steps); the rotation by save_total_limit never drops the best.
        save_steps=t.eval_steps if stopping else t.save_steps,
        # With load_best_model_at_end and a limit of 1, transformers deletes every checkpoint but the best when training
        # ends, Ctrl-C included: the checkpoint an interrupted run resumes from would go. 2 keep the best and the latest.
        save_total_limit=max(t.save_total_limit, 2) if stopping else t.save_total_limit,
        eval_strategy="steps" if eval_every else "no",
        eval_steps=eval_every,
        load_best_model_at_end=stopping,
        metric_for_best_model="eval_loss" if stopping else None,
        greater_is_better=False if stopping else None,
        report_to="none",  # the trackers' callbacks are added by training/trackers.py, configured for this run
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=plan.device == "cpu",
    )


def early_stopping_on(recipe: Recipe, *, has_eval: bool) -> bool:
    """Whether the run stops early; QloraError when the recipe asks for it but the run has nothing to evaluate."""
    t = recipe.training
    if not t.early_stopping_patience:
        return False
    if t.eval_steps == 0:  # the recipe validator refuses this at load time; a recipe built otherwise gets here
        raise QloraError("early stopping needs evaluations during training, and training.eval_steps is 0",
                         where="[training] early_stopping_patience",
                         hint="set training.eval_steps (e.g. 50), or training.early_stopping_patience = 0")
    if not has_eval:
        raise QloraError("early stopping watches the validation loss, but this run has no validation data",
                         where="[training] early_stopping_patience",
                         hint='set data.validation = "validation.jsonl" (with [[data.sources]]: data.valid_ratio > 0), '
                              "or training.early_stopping_patience = 0")
    return True


def early_stopping_callbacks(recipe: Recipe) -> list[TrainerCallback]:
    """transformers' EarlyStoppingCallback as the recipe sets it; [] when early stopping is off."""
    t = recipe.training
    if not t.early_stopping_patience:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=t.early_stopping_patience,
                                  early_stopping_threshold=t.early_stopping_threshold)]


def build_sft_config(recipe: Recipe, plan: RunPlan, output_dir: Path, *, has_eval: bool) -> SFTConfig:
    """SFTConfig for rows qlora4080 tokenized and labelled itself.

    `packing` and `padding_free` are always given: left unset, unsloth's SFTTrainer switches padding-free on
    and drops `max_length` (unsloth/trainer.py, models/rl.py in 2026.10). data.packing is qlora4080's own
    block-diagonal packing, done before the trainer sees the rows, so TRL's packing stays off.
    """
    from trl import SFTConfig

    shared = trainer_arguments(recipe, plan, output_dir, has_eval=has_eval)
    return SFTConfig(**shared, max_length=recipe.model.max_seq_len, packing=False, padding_free=plan.padding_free)
