"""TRL's DPOTrainer on pairs qlora4080 tokenized itself, counting tokens for the panel (training/token_counting.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..plan import RunPlan
from ..recipe import Recipe
from ..training.checkpoint_saving import SafeCheckpointSaving
from ..training.token_counting import CountsTokens, TokenColumns
from .settings import PreferenceSection

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")

if TYPE_CHECKING:
    from trl import DPOConfig
    from trl.experimental.orpo import ORPOConfig

    from ..model_types import Model
    from ..training.trainer import CountingTrainer


def build_dpo_config(recipe: Recipe, plan: RunPlan, output_dir: Path, *, has_eval: bool) -> DPOConfig:
    from trl import DPOConfig

    from ..training.config import trainer_arguments

    shared = trainer_arguments(recipe, plan, output_dir, has_eval=has_eval)
    preference = recipe.table(PreferenceSection)
    # TRL combines several losses by weight; its "sft" loss is the chosen answers' mean negative log-likelihood.
    losses: list[str] = [preference.loss_type]
    weights = [1.0]
    if preference.sft_weight > 0:
        losses, weights = [*losses, "sft"], [*weights, preference.sft_weight]
    return DPOConfig(**shared, max_length=recipe.model.max_seq_len, beta=preference.beta, loss_type=losses,
                     loss_weights=weights, precompute_ref_log_probs=preference.precompute_reference,
                     padding_free=plan.padding_free)


class ResumesBesideReference:
    """Mixed into TRL's DPO and KTO trainers: a resumed run gets its trained adapter back, not only the reference.

    A checkpoint of theirs holds TRL's frozen reference copy in a "ref" sub-folder. transformers takes such
    sub-folders for the checkpoint's only adapters and loads just them, so the trained adapter at the
    checkpoint's root would stay as the run began: load it too (found by the resume test).
    """

    model: Any

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        parent: Any = super()
        parent._load_from_checkpoint(resume_from_checkpoint, model)
        target: Model = model if model is not None else self.model
        root = Path(resume_from_checkpoint)
        if hasattr(target, "load_adapter") and any((root / name).is_file() for name in ADAPTER_WEIGHTS):
            active = target.active_adapter
            target.load_adapter(str(root), active, is_trainable=True)
            target.set_adapter(active)


COMPLETION_COLUMNS = TokenColumns(read=("attention_mask",), trained_masks=("completion_mask",))
"""DPO's and KTO's batches: one sequence per row, the answer marked by completion_mask (KTO's KL_ batch trains
nothing and is not counted)."""

PAIR_COLUMNS = TokenColumns(read=("chosen_attention_mask", "rejected_attention_mask"),
                            trained_labels=("chosen_labels", "rejected_labels"))
"""ORPO's batches: both answers as whole sequences, each with its labels."""


def preference_trainer_class() -> type[CountingTrainer]:
    """DPOTrainer subclass, built on demand so trl (possibly patched by unsloth) is imported late."""
    from trl import DPOTrainer

    from ..training.compat import ensure_log_prob_kernel

    ensure_log_prob_kernel()

    class QloraDPOTrainer(SafeCheckpointSaving, ResumesBesideReference, CountsTokens, DPOTrainer):
        token_columns = COMPLETION_COLUMNS

        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            # Pairs arrive tokenized by qlora4080's renderer (preference/tokens.py), which already decided
            # exactly which tokens are the answer; TRL's own tokenization would decide again, differently.
            if "prompt_ids" in dataset.column_names:
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    return cast("type[CountingTrainer]", QloraDPOTrainer)


def build_orpo_config(recipe: Recipe, plan: RunPlan, output_dir: Path, *, has_eval: bool) -> ORPOConfig:
    from ..training.config import trainer_arguments

    _silence_experimental_notice()
    from trl.experimental.orpo import ORPOConfig

    shared = trainer_arguments(recipe, plan, output_dir, has_eval=has_eval)
    return ORPOConfig(**shared, max_length=recipe.model.max_seq_len, beta=recipe.table(PreferenceSection).beta,
                      remove_unused_columns=False)


def orpo_trainer_class() -> type[CountingTrainer]:
    """TRL's ORPOTrainer (reference-free) on pairs qlora4080 tokenized, counting tokens for the panel."""
    _silence_experimental_notice()
    from trl.experimental.orpo import ORPOTrainer

    class QloraORPOTrainer(SafeCheckpointSaving, CountsTokens, ORPOTrainer):
        token_columns = PAIR_COLUMNS

        def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
            # rows arrive tokenized by qlora4080's renderer (tokens.orpo_columns): keep them as they are
            if "chosen_labels" in feature:
                return feature
            return super().tokenize_row(feature, model)

    return cast("type[CountingTrainer]", QloraORPOTrainer)


def _silence_experimental_notice() -> None:
    """trl prints a notice when its experimental package (where ORPO lives) is imported; the run log says enough."""
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
