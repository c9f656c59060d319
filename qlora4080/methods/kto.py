"""kto: raise desirable answers and lower undesirable ones, each on its own, against a reference (TRL's KTOTrainer).

KTO learns from unpaired feedback (a thumbs up or down on one answer), the
kind of signal a product collects, where DPO needs two answers to one prompt.
As for dpo, a run from an SFT checkpoint (`[model] adapter`) trains that
adapter and TRL keeps a frozen copy of it as the reference; without one the
reference is the base model. The KL term KTO subtracts is estimated from each
batch's answers paired with the other prompts of the batch, so a batch holds
at least 2 records, in an order the seed fixes (feedback_records.py).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .feedback_records import FEEDBACK, Feedback
from .kto_settings import KTOSection
from .spec import EvalOutcome, EvalRequest, MethodSpec, TrainerInputs

if TYPE_CHECKING:
    from trl import KTOConfig

    from ..plan import RunPlan
    from ..preference.pairs import PreferencePair
    from ..recipe import Recipe
    from ..training.trainer import CountingTrainer


def _check_recipe(recipe: Recipe) -> str | None:
    settings = recipe.table(KTOSection)
    if settings.loss_type == "kto" and recipe.training.batch_size < 2:
        return ('[kto] loss_type = "kto" estimates its KL term from the other answers of a batch, so training.batch_size '
                f"must be at least 2 (it is {recipe.training.batch_size}): set training.batch_size = 2 (and halve "
                'training.grad_accum to keep the global batch), or [kto] loss_type = "apo_zero_unpaired"')
    return None


def build_kto_config(recipe: Recipe, plan: RunPlan, output_dir: Path, *, has_eval: bool) -> KTOConfig:
    from trl import KTOConfig

    from ..training.config import trainer_arguments

    settings = recipe.table(KTOSection)
    return KTOConfig(**trainer_arguments(recipe, plan, output_dir, has_eval=has_eval),
                     max_length=recipe.model.max_seq_len, beta=settings.beta, loss_type=settings.loss_type,
                     desirable_weight=settings.desirable_weight, undesirable_weight=settings.undesirable_weight,
                     precompute_ref_log_probs=settings.precompute_reference)


def kto_trainer_class() -> type[CountingTrainer]:
    """KTOTrainer on records qlora4080 tokenized, counting tokens, resuming with the trained adapter."""
    from trl import KTOTrainer

    from ..preference.trainer import COMPLETION_COLUMNS, ResumesBesideReference
    from ..training.checkpoint_saving import SafeCheckpointSaving
    from ..training.compat import ensure_log_prob_kernel
    from ..training.token_counting import CountsTokens

    ensure_log_prob_kernel()

    class QloraKTOTrainer(SafeCheckpointSaving, ResumesBesideReference, CountsTokens, KTOTrainer):
        token_columns = COMPLETION_COLUMNS

        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            # Rows arrive tokenized by the SFT renderer (feedback_records.py); TRL's own tokenization would split
            # prompt and answer again, differently. What it adds after tokenizing is kept: the mismatched answers
            # its KL estimate reads, each row's answer rotated by one within a batch (as TRL builds them).
            if "prompt_ids" not in dataset.column_names:
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            if not self.calculate_KL:
                return dataset
            return dataset.map(_with_mismatched_answers, batched=True, batch_size=args.per_device_train_batch_size)

    return cast("type[CountingTrainer]", QloraKTOTrainer)


def _with_mismatched_answers(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    answers = batch["completion_ids"]
    return {**batch, "KL_completion_ids": [answers[-1], *answers[:-1]]}


def make_trainer(inputs: TrainerInputs) -> CountingTrainer:
    config = build_kto_config(inputs.recipe, inputs.plan, inputs.output_dir, has_eval=inputs.validation is not None)
    return kto_trainer_class()(
        model=inputs.model, args=config, train_dataset=inputs.train.dataset,
        eval_dataset=inputs.validation.dataset if inputs.validation else None, processing_class=inputs.tokenizer,
        callbacks=inputs.callbacks,
    )


def _keeps_reference_copy(recipe: Recipe) -> bool:
    """From an SFT adapter, TRL keeps a frozen copy of it as the reference (without one, the base is the reference)."""
    return recipe.model.adapter is not None


def contrasts(records: list[Feedback]) -> list[PreferencePair]:
    """Each desirable answer against each undesirable answer to the same prompt, as a preference pair."""
    from ..data.mixing import conversation_key
    from ..preference.pairs import PreferencePair

    by_prompt: dict[str, tuple[list[Feedback], list[Feedback]]] = defaultdict(lambda: ([], []))
    for record in records:
        by_prompt[conversation_key(record.prompt)][0 if record.desirable else 1].append(record)
    return [PreferencePair(f"{good.id}>{bad.id}", good.prompt, good.completion, bad.completion)
            for desirable, undesirable in by_prompt.values() for good in desirable for bad in undesirable]


def evaluate_feedback_file(request: EvalRequest) -> EvalOutcome:
    """How often each model scores a prompt's desirable answer above its undesirable one (base, SFT start, adapter)."""
    from ..console import console, warn
    from ..errors import QloraError
    from ..infer import load_for_chat
    from ..preference.evaluate import evaluate_pairs
    from .feedback_records import read_feedback

    read = read_feedback(request.source)
    for problem in read.rejected[:5]:
        console.print(f"skipped {problem}", style="yellow", markup=False, soft_wrap=True)
    pairs = contrasts(read.records)
    if not pairs:
        raise QloraError(f"no prompt in {request.source} has both a desirable and an undesirable answer, and the "
                         "evaluation compares the two", where=str(request.source),
                         hint='give some prompts a "label": true answer and a "label": false answer (a data build '
                              "keeps each prompt's answers together in validation.jsonl)")
    pairs = pairs[:request.limit] if request.limit else pairs
    started_from = request.settings.started_from
    sft = Path(started_from) if started_from else None
    if request.baseline and sft is not None and not sft.is_dir():
        warn(f"the checkpoint this run started from, {sft}, is not there any more: the table has no sft column")
        sft = None
    model = load_for_chat(request.checkpoint)
    with console.status(f"scoring {len(pairs)} desirable/undesirable answer pairs"):
        report = evaluate_pairs(model, pairs, max_seq_len=request.settings.max_seq_len, baseline=request.baseline,
                                batch_size=request.batch_size, sft_adapter=sft)
    return EvalOutcome(report, f"Feedback evaluation: {len(pairs)} desirable vs undesirable answers to the same "
                               f"prompt, from {request.source}")


SPEC = MethodSpec(
    name="kto",
    summary="raise answers labelled desirable and lower those labelled undesirable (unpaired feedback), against a "
            "reference",
    card_text="Kahneman-Tversky optimization (KTO) on answers labelled desirable or undesirable",
    records=FEEDBACK,
    make_trainer=make_trainer,
    table="kto",
    settings=KTOSection,
    reference_copy=_keeps_reference_copy,
    evaluate=evaluate_feedback_file,
    check_recipe=_check_recipe,
)
