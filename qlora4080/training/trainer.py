"""SFTTrainer plus exact token counts per step (all tokens and trained tokens, token_counting.py) for the panel,
and transformers' plain loss where trl's fused GPU loss cannot run (see compat.fused_loss_usable)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from .checkpoint_saving import SafeCheckpointSaving
from .token_counting import CountsTokens, TokenColumns

if TYPE_CHECKING:
    from transformers import Trainer

    class CountingTrainer(Trainer):
        """A TRL trainer that counts the tokens it sees and trains (token_counting.py), as the type checker sees it."""

        tokens_seen: int
        trained_tokens_seen: int

SFT_COLUMNS = TokenColumns(read=("attention_mask",), trained_labels=("labels",))
"""A conversation's tokens, and its labels: the trained turns (a packed batch states its count in packed_tokens)."""


def counting_trainer_class() -> type[CountingTrainer]:
    """SFTTrainer subclass, built on demand so trl (possibly patched by unsloth) is imported late."""
    from transformers import Trainer
    from trl import SFTTrainer

    from .compat import fused_loss_usable

    class CountingSFTTrainer(SafeCheckpointSaving, CountsTokens, SFTTrainer):
        token_columns = SFT_COLUMNS

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
            packed_tokens = inputs.pop("packed_tokens", None)
            counted_before = getattr(self, "_total_train_tokens", None)
            if fused_loss_usable(model):
                result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            else:
                inputs["use_cache"] = False  # as trl does: no KV cache while training
                result = Trainer.compute_loss(self, model, inputs, return_outputs=return_outputs,
                                              num_items_in_batch=num_items_in_batch)
            if packed_tokens is not None and counted_before is not None and model.training:
                # TRL sums attention_mask for its num_tokens metric; with a 4-D float mask that sum is meaningless
                self._total_train_tokens = counted_before + int(packed_tokens)
                self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return result

    return cast("type[CountingTrainer]", CountingSFTTrainer)
