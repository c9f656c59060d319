"""Tokens a training step reads and tokens its loss trains: one count for every method.

Every trainer keeps two counters, which the panel turns into tokens/s and
summary.json records: `tokens_seen` (every real token the policy reads) and
`trained_tokens_seen` (the tokens its loss scores). The methods differ only in
the batch columns that hold them, named by a `TokenColumns`:

    method  read                                       trained
    sft     attention_mask                             labels (not IGNORE_INDEX)
    dpo     attention_mask                             completion_mask
    kto     attention_mask (its KL_ batch trains none) completion_mask
    orpo    chosen_/rejected_attention_mask            chosen_/rejected_labels

A trainer whose batches arrive with those columns mixes in `CountsTokens` ahead
of TRL's class and names them; its `training_step` counts each batch before
training on it:

    class QloraDPOTrainer(CountsTokens, DPOTrainer):
        token_columns = COMPLETION_COLUMNS

A trainer whose rows are made inside the step (answers generated from the
prompts it was given, as in GRPO) has nothing to count when the step begins:
it keeps the default `token_columns = NOTHING_TO_COUNT` and counts the rows
where it makes them, with `count_batch` on their columns (prompt and answer
read, the answer trained) or `count_tokens` with numbers it has itself:

    GENERATED = TokenColumns(read=("prompt_mask", "completion_mask"), trained_masks=("completion_mask",))

    class QloraGRPOTrainer(CountsTokens, GRPOTrainer):
        def _generate_and_score_completions(self, inputs):
            rows = super()._generate_and_score_completions(inputs)
            count_batch(self, rows, GENERATED)
            return rows

Counts are per process; the panel and the summary sum them over processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..data.vocabulary import IGNORE_INDEX


@dataclass(frozen=True)
class TokenColumns:
    """Which columns of a batch hold the tokens a step reads and the tokens it trains."""

    read: tuple[str, ...] = ()
    """Masks of the real tokens the model reads (1 = a token, 0 = padding), summed. A batch with none of them is
    counted by other means: a packed batch's `packed_tokens` (its 4-D mask cannot be summed), else the size of
    `input_ids` (a batch without padding)."""
    trained_masks: tuple[str, ...] = ()
    """Masks of the tokens the loss scores (1 = scored), summed."""
    trained_labels: tuple[str, ...] = ()
    """Label columns: positions not IGNORE_INDEX are scored, except the first of each row (the model shifts labels
    by one, so position 0 is never a target)."""


NOTHING_TO_COUNT = TokenColumns()
"""For a trainer that counts its rows itself, where it makes them (count_batch, count_tokens)."""


def tokens_in(batch: Mapping[str, Any], columns: TokenColumns) -> tuple[int, int]:
    """(tokens read, tokens trained) of one batch of tensors."""
    masks = [batch[name] for name in columns.read if name in batch]
    if not columns.read:
        read = 0
    elif "packed_tokens" in batch:
        read = int(batch["packed_tokens"])
    elif masks:
        read = sum(int(mask.sum()) for mask in masks)
    elif "input_ids" in batch:
        read = int(batch["input_ids"].numel())
    else:
        read = 0
    trained = sum(int(batch[name].sum()) for name in columns.trained_masks if name in batch)
    trained += sum(int((batch[name][:, 1:] != IGNORE_INDEX).sum()) for name in columns.trained_labels if name in batch)
    return read, trained


class CountsTokens:
    """Mixed into a TRL trainer, ahead of it: the token counters, and each incoming batch counted by its columns."""

    token_columns: ClassVar[TokenColumns] = NOTHING_TO_COUNT
    """The columns of the batches `training_step` receives; NOTHING_TO_COUNT where the step makes its rows."""
    tokens_seen: int = 0
    trained_tokens_seen: int = 0

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        if self.token_columns != NOTHING_TO_COUNT:
            count_batch(self, inputs, self.token_columns)
        parent: Any = super()
        return parent.training_step(model, inputs, num_items_in_batch)


def count_batch(trainer: CountsTokens, batch: Mapping[str, Any], columns: TokenColumns) -> None:
    """Add one batch's tokens to the trainer's counters."""
    read, trained = tokens_in(batch, columns)
    count_tokens(trainer, read, trained)


def count_tokens(trainer: CountsTokens, read: int, trained: int) -> None:
    """Add tokens read and trained to the trainer's counters (for rows counted where they are made)."""
    trainer.tokens_seen += read
    trainer.trained_tokens_seen += trained
