"""dpo: prefer the chosen answer of each preference pair over the rejected one, against a reference model.

Starting from an SFT checkpoint (`[model] adapter`), the SFT adapter is loaded
trainable and TRL's DPOTrainer copies it into a frozen "ref" adapter, so the
reference policy is the SFT model itself, not the bare base. Without one, a
fresh adapter is attached and the reference is the base model (the fresh
adapter's B matrices are zero, so the two start equal).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..preference.evaluate import evaluate_pair_file
from ..preference.pair_records import PAIRS
from ..preference.settings import PreferenceSection
from .spec import MethodSpec, TrainerInputs

if TYPE_CHECKING:
    from ..recipe import Recipe
    from ..training.trainer import CountingTrainer


def make_trainer(inputs: TrainerInputs) -> CountingTrainer:
    from ..preference.trainer import build_dpo_config, preference_trainer_class

    config = build_dpo_config(inputs.recipe, inputs.plan, inputs.output_dir, has_eval=inputs.validation is not None)
    return preference_trainer_class()(
        model=inputs.model, args=config, train_dataset=inputs.train.dataset,
        eval_dataset=inputs.validation.dataset if inputs.validation else None, processing_class=inputs.tokenizer,
        callbacks=inputs.callbacks,
    )


def _keeps_reference_copy(recipe: Recipe) -> bool:
    """From an SFT adapter, TRL keeps a frozen copy of it as the reference (without one, the base is the reference)."""
    return recipe.model.adapter is not None


SPEC = MethodSpec(
    name="dpo",
    summary="prefer the chosen answer of preference pairs against a reference (usually an SFT adapter)",
    card_text="direct preference optimization (DPO) on preference pairs (chosen vs rejected answers)",
    records=PAIRS,
    make_trainer=make_trainer,
    table="preference",
    settings=PreferenceSection,
    sequences_per_row=2,  # chosen and rejected in one batch; the reference pass runs without gradients
    reference_copy=_keeps_reference_copy,
    evaluate=evaluate_pair_file,
)
