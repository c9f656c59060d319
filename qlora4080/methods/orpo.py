"""orpo: preference pairs without a reference model, an odds-ratio penalty added to SFT on the chosen answers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..preference.evaluate import evaluate_pair_file
from ..preference.pair_records import PAIRS
from ..preference.settings import PreferenceSection
from .spec import MethodSpec, TrainerInputs

if TYPE_CHECKING:
    from ..training.trainer import CountingTrainer


def make_trainer(inputs: TrainerInputs) -> CountingTrainer:
    from ..preference.tokens import orpo_columns
    from ..preference.trainer import build_orpo_config, orpo_trainer_class

    config = build_orpo_config(inputs.recipe, inputs.plan, inputs.output_dir, has_eval=inputs.validation is not None)
    return orpo_trainer_class()(
        model=inputs.model, args=config, train_dataset=orpo_columns(inputs.train.dataset),
        eval_dataset=orpo_columns(inputs.validation.dataset) if inputs.validation else None,
        processing_class=inputs.tokenizer, callbacks=inputs.callbacks,
    )


SPEC = MethodSpec(
    name="orpo",
    summary="the same pairs without a reference model (an odds-ratio penalty added to SFT on the chosen answers)",
    card_text="odds-ratio preference optimization (ORPO) on preference pairs, without a reference model",
    records=PAIRS,
    make_trainer=make_trainer,
    table="preference",
    settings=PreferenceSection,
    sequences_per_row=2,
    evaluate=evaluate_pair_file,
)
