"""SFTTrainer plus exact token counts per step (all tokens and trained tokens) for the panel."""

from __future__ import annotations

from typing import Any


def counting_trainer_class() -> type:
    """SFTTrainer subclass, built on demand so trl (possibly patched by unsloth) is imported late."""
    from trl import SFTTrainer

    class CountingSFTTrainer(SFTTrainer):
        tokens_seen: int = 0
        trained_tokens_seen: int = 0

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            if "attention_mask" in inputs:
                self.tokens_seen += int(inputs["attention_mask"].sum())
            elif "input_ids" in inputs:
                self.tokens_seen += int(inputs["input_ids"].numel())
            if "labels" in inputs:
                # the model shifts labels by one, so the first position never counts
                self.trained_tokens_seen += int((inputs["labels"][:, 1:] != -100).sum())
            return super().training_step(model, inputs, num_items_in_batch)

    return CountingSFTTrainer
