"""sft: supervised fine-tuning on conversations, loss on the trained turns only (TRL's SFTTrainer)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..data.conversation_records import CONVERSATIONS
from .spec import MethodSpec, TrainerInputs

if TYPE_CHECKING:
    from ..data.packing import PackedCollator
    from ..training.trainer import CountingTrainer


def make_trainer(inputs: TrainerInputs) -> CountingTrainer:
    """TRL's SFTTrainer with token counting, on rows qlora4080 rendered and labelled (packed when asked)."""
    from ..training.config import build_sft_config
    from ..training.trainer import counting_trainer_class

    collator = _pack(inputs) if inputs.plan.packing else None
    config = build_sft_config(inputs.recipe, inputs.plan, inputs.output_dir, has_eval=inputs.validation is not None)
    return counting_trainer_class()(
        model=inputs.model, args=config, train_dataset=inputs.train.dataset,
        eval_dataset=inputs.validation.dataset if inputs.validation else None, processing_class=inputs.tokenizer,
        callbacks=inputs.callbacks, data_collator=collator,
    )


def _pack(inputs: TrainerInputs) -> PackedCollator:
    """Replace each split's rows by packed rows; the collator that batches them (block-diagonal mask)."""
    import torch
    from datasets import Dataset

    from ..data.packing import PackedCollator, pack_rows

    length = inputs.recipe.model.max_seq_len
    for name, split in (("train", inputs.train), ("validation", inputs.validation)):
        if split is None:
            continue
        rows = split.dataset.to_list()
        packed = pack_rows(rows, length)
        split.dataset = Dataset.from_list(packed)
        fill = sum(len(r["input_ids"]) for r in packed) / (len(packed) * length)
        inputs.log.line(f"{name}: packed {len(rows)} conversations into {len(packed)} sequences of up to "
                        f"{length} tokens ({fill:.0%} full)")
    return PackedCollator(inputs.tokenizer.pad_token_id, dtype=getattr(torch, inputs.plan.loading.compute_dtype))


SPEC = MethodSpec(
    name="sft",
    summary="learn the assistant turns of conversations (loss on the trained turns only)",
    card_text="supervised fine-tuning (SFT) on chat conversations, with loss on the assistant turns only",
    records=CONVERSATIONS,
    make_trainer=make_trainer,
    packs=True,
    loss_is_perplexity=True,
)
