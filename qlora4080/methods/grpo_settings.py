"""The recipe's [grpo] table (methods/grpo.py declares it; rewards.py builds the reward functions it names)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

if TYPE_CHECKING:
    from typing_extensions import Self

from ..recipe.section import Section
from .reward_names import BUILTIN_REWARDS


class RewardSource(Section):
    """One reward: a built-in by name, or a function in a Python file of yours, with its weight in the total."""

    name: str | None = None
    """A built-in reward (qlora4080 methods lists them); leave out with path/function."""
    path: str | None = None
    """A Python file (relative to the recipe) holding the function; with `function`."""
    function: str | None = None
    """The function's name in that file. It is called as TRL calls rewards: f(prompts, completions, completion_ids,
    **columns) -> one float (or None: not scored) per completion; `columns` holds the record's "answer" and "tags"."""
    weight: float = 1.0
    """Its weight in the total reward the advantages are computed from."""

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, value: object) -> object:
        """`rewards = ["exact_match", ...]`: a bare string is a built-in by name, weight 1."""
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_kind(self) -> RewardSource:
        if self.name is not None and (self.path is not None or self.function is not None):
            raise ValueError(f"a reward is a built-in (name = \"{self.name}\") or a function of yours (path + function), "
                             "not both")
        if self.name is None and (self.path is None or self.function is None):
            raise ValueError('a reward of yours needs both path = "file.py" and function = "name" (or give a built-in '
                             f"by name: {', '.join(BUILTIN_REWARDS)})")
        if self.name is not None and self.name not in BUILTIN_REWARDS:
            raise ValueError(f"unknown built-in reward {self.name!r}; built-ins: {', '.join(BUILTIN_REWARDS)} (or "
                             'write your own: { path = "my_rewards.py", function = "score" })')
        return self

    @property
    def label(self) -> str:
        """The name its metrics are logged under: the built-in's name, or the function's."""
        return self.name or self.function or "?"


class GRPOSection(Section):
    """Settings of GRPO (training.method = "grpo"): the recipe's [grpo] table.

    Each optimizer step samples num_generations answers to each of its prompts (training.batch_size prompts per
    micro-step, times grad_accum), scores them with the rewards, and raises the answers that beat their group's mean.
    """

    rewards: list[RewardSource] = Field(default_factory=list)
    """What a good answer is: built-ins by name ("exact_match", { name = "stopped", weight = 0.5 }) and functions of
    yours ({ path = "rewards.py", function = "score", weight = 1.0 }). The total is their weighted sum. At least one."""
    num_generations: int = Field(default=8, ge=2)
    """Answers sampled per prompt; the advantage of each is its reward against its group's mean."""
    max_completion_length: int = Field(default=256, ge=1)
    """Most tokens generated per answer; an answer cut here has not stopped (see the "stopped" reward)."""
    temperature: float = Field(default=1.0, gt=0)
    """Sampling temperature of the answers (also scales the log-probabilities, as TRL does)."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    beta: float = Field(default=0.0, ge=0)
    """Weight of the KL penalty to the reference (the model the run started from); 0: none, and no reference pass."""
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"] = "dapo"
    """How token losses are averaged (TRL 1.15's choices). dapo: over all tokens of the batch, no length bias;
    grpo: per answer, then over answers (the paper's); dr_grpo: by a constant length (Dr. GRPO)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Divide advantages by the reward std of the group (the paper), of the batch, or not at all (Dr. GRPO)."""
    num_iterations: int = Field(default=1, ge=1)
    """Policy updates per batch of generations (μ in the paper); above 1 the clipping (epsilon) matters."""
    epsilon: float = Field(default=0.2, gt=0)
    """Clipping of the probability ratio when num_iterations > 1."""
    mask_truncated_completions: bool = False
    """Leave answers that hit max_completion_length out of the loss (DAPO's overlong filtering)."""
    sample_every: int = Field(default=10, ge=0)
    """Write one sampled answer with its rewards to train.log every this many steps (0: never)."""

    def with_paths_resolved(self, resolve: Callable[[str], Path]) -> Self:
        """The reward files as absolute paths, so the recipe snapshot next to a checkpoint finds them from anywhere."""
        rewards = [source.model_copy(update={"path": str(resolve(source.path))}) if source.path else source
                   for source in self.rewards]
        return self.model_copy(update={"rewards": rewards})
