"""grpo: sample answers to prompts, score them with reward functions, raise the ones that beat their group (TRL's GRPOTrainer).

Group Relative Policy Optimization needs no answers to imitate, only a way
to score an answer: each prompt gets [grpo] num_generations sampled answers,
the rewards (rewards.py) score each, and an answer's advantage is its reward
against the mean of its group. `training.batch_size` counts prompts, so a
micro-step holds batch_size x num_generations answers, generated together
(TRL's per-device batch counts answers: it is set to that product).

With beta > 0 a KL penalty keeps the policy near the model it started from:
TRL keeps a frozen copy of the starting adapter beside the trained one (an SFT
checkpoint's, `[model] adapter`, or a fresh one, which equals the base model).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .grpo_eval import evaluate_prompt_file
from .grpo_settings import GRPOSection
from .prompt_records import PROMPTS
from .reward_names import BUILTIN_REWARDS
from .spec import MethodSpec, TrainerInputs

if TYPE_CHECKING:
    from trl import GRPOConfig

    from ..data.records import Log
    from ..model_types import Model, Tokenizer
    from ..plan import RunPlan
    from ..recipe import Recipe
    from ..training.trainer import CountingTrainer
    from ..vram import GenerationShape

MIN_PROMPT_ROOM = 8
"""Fewest prompt tokens max_seq_len must leave beside max_completion_length."""


def check_recipe(recipe: Recipe) -> str | None:
    from .rewards import rewards_problem

    settings = recipe.table(GRPOSection)
    if not settings.rewards:
        return ("[grpo] rewards is empty: GRPO learns only from rewards; name at least one, e.g. rewards = "
                f'["exact_match"] (built-ins: {", ".join(BUILTIN_REWARDS)}) or {{ path = "my_rewards.py", function = '
                '"score" }')
    room = recipe.model.max_seq_len - settings.max_completion_length
    if room < MIN_PROMPT_ROOM:
        return (f"[grpo] max_completion_length {settings.max_completion_length} leaves {room} tokens of model.max_seq_len "
                f"{recipe.model.max_seq_len} for the prompt: raise model.max_seq_len (prompt + answer) or lower "
                "[grpo] max_completion_length")
    if settings.num_iterations > 1 and recipe.training.grad_accum > 1:
        # each micro-step generates its own answers: TRL would reuse them within the same optimizer step, with no
        # old policy to clip against, so the extra iterations would only repeat prompts
        return (f"[grpo] num_iterations = {settings.num_iterations} reuses each batch of answers for later optimizer "
                f"steps, which needs training.grad_accum = 1 (it is {recipe.training.grad_accum}): set "
                f"training.grad_accum = 1 (and raise training.batch_size for the same prompts a step), or "
                "[grpo] num_iterations = 1")
    if recipe.training.early_stopping_patience:
        return ("training.early_stopping_patience watches the validation loss, which GRPO does not measure (its loss "
                "is about 0 on policy): set training.early_stopping_patience = 0 and compare rewards with `qlora4080 "
                "eval` instead")
    return rewards_problem(settings, recipe.resolve_path)


def build_grpo_config(recipe: Recipe, plan: RunPlan, output_dir: Path, *, has_eval: bool,
                      weights: list[float]) -> GRPOConfig:
    from trl import GRPOConfig

    from ..training.config import trainer_arguments

    settings = recipe.table(GRPOSection)
    answers = recipe.training.batch_size * settings.num_generations  # TRL's batch counts answers, ours prompts
    arguments = trainer_arguments(recipe, plan, output_dir, has_eval=has_eval)
    arguments |= {"per_device_train_batch_size": answers, "per_device_eval_batch_size": answers}
    # evaluating during and after training samples fewer answers a prompt (a mean reward needs no group; it costs
    # num_generations / 2 times less), in batches that still hold whole groups
    eval_answers = 2 if settings.num_generations % 2 == 0 else settings.num_generations
    return GRPOConfig(
        **arguments,
        steps_per_generation=1,  # each micro-step generates its own answers: the memory of one micro-batch, not grad_accum's
        num_generations=settings.num_generations,
        num_generations_eval=eval_answers,
        max_completion_length=settings.max_completion_length,
        temperature=settings.temperature,
        top_p=settings.top_p,
        beta=settings.beta,
        loss_type=settings.loss_type,
        scale_rewards=settings.scale_rewards,
        num_iterations=settings.num_iterations,
        epsilon=settings.epsilon,
        mask_truncated_completions=settings.mask_truncated_completions,
        reward_weights=weights,
        log_completions=False,  # its tables print over the panel and it writes parquet files: sample_every instead
        remove_unused_columns=False,  # the rewards read the records' "answer" and "tags"
    )


def grpo_trainer_class() -> type[CountingTrainer]:
    """GRPOTrainer counting the tokens it generates and trains, writing a sampled answer with its rewards to the log."""
    from trl import GRPOTrainer  # read now: with unsloth imported, this is its patched trainer

    from ..training.checkpoint_saving import SafeCheckpointSaving
    from ..training.compat import ensure_log_prob_kernel
    from ..training.token_counting import CountsTokens, count_tokens
    from .rewards import completion_text, prompt_text

    ensure_log_prob_kernel()  # TRL scores GRPO's answers with a Triton kernel only; tensors on a CPU go to torch

    # Not CountsTokens' training_step: GRPO's rows are made inside the step, so they are counted where it makes them.
    class QloraGRPOTrainer(SafeCheckpointSaving, GRPOTrainer):
        tokens_seen: int = 0
        trained_tokens_seen: int = 0
        sample_every: int = 0
        sample_log: Log | None = None
        _sample: tuple[str, str, list[float]] | None = None
        _sampled_at: int = 0

        @property
        def _training(self) -> bool:
            return bool(getattr(self.model, "training", False))

        def _generate(self, prompts: list[Any]) -> Any:
            made = super()._generate(prompts)
            if self._training:  # evaluation's answers are not training tokens
                prompt_ids, completion_ids = made[0], made[1]
                answer_tokens = sum(map(len, completion_ids))
                count_tokens(cast("CountsTokens", self), sum(map(len, prompt_ids)) + answer_tokens, answer_tokens)
            return made

        def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> Any:
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            if self._training and len(prompts):
                self._sample = (prompt_text(prompts[0]), completion_text(completions[0]), rewards[0].tolist())
            return rewards

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            # A reward that scored nothing since the last log (None for every answer) averages to None in TRL;
            # leave it out rather than log a value that is not a number.
            import math

            for metrics in self._metrics.values():
                for key in [k for k, values in metrics.items() if values and all(math.isnan(v) for v in values)]:
                    del metrics[key]
            super().log(logs, start_time)
            step = self.state.global_step
            # the first log, then the first log at or after each multiple of sample_every (logs come every
            # logging_steps, which need not divide it)
            if (self.sample_log is not None and self._sample is not None and self.sample_every and self._training
                    and (self._sampled_at == 0 or step // self.sample_every > self._sampled_at // self.sample_every)):
                self._sampled_at = step
                prompt, answer, scores = self._sample
                names = self.reward_func_names
                shown = ", ".join(f"{name} {score:.2f}" for name, score in zip(names, scores))
                self.sample_log.line(f"sample at step {step}: {prompt!r} -> {answer!r} ({shown})", style="dim")
                self._sample = None

    return cast("type[CountingTrainer]", QloraGRPOTrainer)


def make_trainer(inputs: TrainerInputs) -> CountingTrainer:
    from .rewards import recipe_rewards

    recipe = inputs.recipe
    rewards = recipe_rewards(recipe.table(GRPOSection), recipe.resolve_path, inputs.tokenizer)
    _stop_on_end_of_turn(inputs.model, inputs.tokenizer)
    config = build_grpo_config(recipe, inputs.plan, inputs.output_dir, has_eval=inputs.validation is not None,
                               weights=rewards.weights)
    trainer_class: Any = grpo_trainer_class()  # GRPOTrainer's own arguments (reward_funcs) are not Trainer's
    trainer: CountingTrainer = trainer_class(
        model=inputs.model, args=config, reward_funcs=rewards.functions, train_dataset=inputs.train.dataset,
        eval_dataset=inputs.validation.dataset if inputs.validation else None, processing_class=inputs.tokenizer,
        callbacks=inputs.callbacks,
    )
    sampler: Any = trainer
    sampler.sample_every, sampler.sample_log = recipe.table(GRPOSection).sample_every, inputs.log
    inputs.log.line(f"grpo: {recipe.training.batch_size} prompt(s) x {config.num_generations} answers per micro-step, "
                    f"rewards {', '.join(f'{n} x{w:g}' for n, w in zip(rewards.names, rewards.weights))}; answers "
                    "sampled with transformers' generate (vLLM is not used)")
    return trainer


def _stop_on_end_of_turn(model: Model, tokenizer: Tokenizer) -> None:
    """TRL stops answers (and tells a finished answer from a cut one) by the model's generation_config EOS ids."""
    from ..data.render import end_of_turn_ids

    config = getattr(model, "generation_config", None)
    if config is not None:
        config.eos_token_id = end_of_turn_ids(tokenizer)


def _keeps_reference_copy(recipe: Recipe) -> bool:
    """With beta > 0, TRL keeps a frozen copy of the adapter the run starts with as the reference (the model it is
    given is already a PeftModel, a fresh adapter too)."""
    return recipe.table(GRPOSection).beta > 0


def _generation(recipe: Recipe) -> GenerationShape:
    from ..vram import GenerationShape

    settings = recipe.table(GRPOSection)
    return GenerationShape(settings.num_generations, settings.max_completion_length,
                           answers_key="grpo.num_generations", answer_tokens_key="grpo.max_completion_length")


SPEC = MethodSpec(
    name="grpo",
    summary="sample answers to prompts and learn from reward functions (exact match, format, JSON, yours)",
    card_text="group relative policy optimization (GRPO) on prompts, scored by reward functions",
    records=PROMPTS,
    make_trainer=make_trainer,
    table="grpo",
    settings=GRPOSection,
    generation=_generation,
    reference_copy=_keeps_reference_copy,
    evaluate=evaluate_prompt_file,
    check_recipe=check_recipe,
    details=(("[grpo] rewards: built-ins by name, or { path = \"file.py\", function = \"name\", weight = 1.0 } for "
             "yours (TRL's signature: f(prompts, completions, completion_ids, **columns) -> one float or None each)"),
             *(f"{name}: {what}" for name, what in BUILTIN_REWARDS.items())),
)
