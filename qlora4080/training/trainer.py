"""SFTTrainer plus exact token counts per step (all tokens and trained tokens) for the panel,
and transformers' plain loss where trl's fused GPU loss cannot run (see compat.fused_loss_usable)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from ..data.vocabulary import IGNORE_INDEX
from .checkpoint_saving import SafeCheckpointSaving

if TYPE_CHECKING:
    from transformers import Trainer

    class CountingTrainer(Trainer):
        """A TRL trainer (SFT, DPO) that counts the tokens it sees and trains, as the type checker sees it."""

        tokens_seen: int
        trained_tokens_seen: int


def counting_trainer_class() -> type[CountingTrainer]:
    """SFTTrainer subclass, built on demand so trl (possibly patched by unsloth) is imported late."""
    from transformers import Trainer
    from trl import SFTTrainer

    from .compat import fused_loss_usable

    class CountingSFTTrainer(SafeCheckpointSaving, SFTTrainer):
        tokens_seen: int = 0
        trained_tokens_seen: int = 0

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            if "packed_tokens" in inputs:  # packed batch: the 4-D mask says nothing about token counts
                self.tokens_seen += int(inputs["packed_tokens"])
            elif "attention_mask" in inputs:
                self.tokens_seen += int(inputs["attention_mask"].sum())
            elif "input_ids" in inputs:
                self.tokens_seen += int(inputs["input_ids"].numel())
            if "labels" in inputs:
                # the model shifts labels by one, so the first position never counts
                self.trained_tokens_seen += int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
            return super().training_step(model, inputs, num_items_in_batch)

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
