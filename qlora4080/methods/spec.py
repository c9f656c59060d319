"""What a training method is: the records it reads, the trainer it builds, how it is measured and described.

Each method is one module in this package holding one `MethodSpec`; the
registry (methods/registry.py) lists them. Nothing outside this package asks
which method a run uses: it asks the spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..recipe.method_tables import MethodDeclaration

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from ..checkpoint import CheckpointMeta
    from ..data.dataset import TokenizedSplit
    from ..data.records import Log, RecordKind
    from ..eval_report import EvalReport
    from ..model_types import Model, Tokenizer
    from ..plan import RunPlan
    from ..recipe import Recipe, Section
    from ..training.trainer import CountingTrainer
    from ..vram import GenerationShape


@dataclass(frozen=True)
class TrainerInputs:
    """Everything a method's trainer is built from, made by the run's earlier stages."""

    recipe: Recipe
    plan: RunPlan
    output_dir: Path
    model: Model
    tokenizer: Tokenizer
    train: TokenizedSplit
    validation: TokenizedSplit | None
    callbacks: list[TrainerCallback]
    log: Log


@dataclass(frozen=True)
class EvalRequest:
    """`qlora4080 eval CHECKPOINT --data FILE` on a file of a method's records."""

    checkpoint: str
    source: Path
    settings: CheckpointMeta
    limit: int | None
    baseline: bool
    batch_size: int


@dataclass(frozen=True)
class EvalOutcome:
    report: EvalReport
    """Each model's metrics ("adapter", with baseline "base"/"sft") and per-record rows: eval.json and the table."""
    title: str


@dataclass(frozen=True)
class MethodSpec:
    name: str
    """The value of `training.method`."""
    summary: str
    """One line for `qlora4080 methods` and the recipe's help."""
    card_text: str
    """How the model card names the training ("direct preference optimization (DPO) on ...")."""
    records: RecordKind
    """The records it trains on: read, built, tokenized, checked and previewed by this kind."""
    make_trainer: Callable[[TrainerInputs], CountingTrainer]
    """The TRL trainer (with token counting) on the tokenized splits."""
    table: str | None = None
    """The recipe table with its settings ("preference"), if it has any."""
    settings: type[Section] | None = None
    """That table's schema."""
    packs: bool = False
    """Whether `data.packing` applies (its records are whole conversations)."""
    loss_is_perplexity: bool = False
    """Whether exp(eval_loss) is a perplexity (a token-level cross-entropy), reported as such."""
    sequences_per_row: int = 1
    """Sequences one record puts through the model per step (a pair: chosen and rejected): the memory estimate."""
    generation: Callable[[Recipe], GenerationShape | None] = field(default=lambda recipe: None)
    """What sampling a step's answers holds in memory (grpo), for the memory estimate; None: nothing is sampled."""
    reference_copy: Callable[[Recipe], bool] = field(default=lambda recipe: False)
    """Whether training holds a frozen copy of the starting adapter as its reference (memory estimate)."""
    evaluate: Callable[[EvalRequest], EvalOutcome] | None = None
    """`eval` on a file of its records; None: the generation eval every chat model gets (conversations)."""
    details: tuple[str, ...] = ()
    """More lines for `qlora4080 methods` (grpo: its built-in rewards)."""
    check_recipe: Callable[[Recipe], str | None] | None = None
    """What else it needs of a recipe, checked when the recipe loads (a message naming the key), or None."""

    def declaration(self) -> MethodDeclaration:
        """What recipes need to know of the method (recipe/method_tables.py)."""
        return MethodDeclaration(name=self.name, summary=self.summary, formats=self.records.formats,
                                 reads=self.records.unit, packs=self.packs, table=self.table, settings=self.settings)
