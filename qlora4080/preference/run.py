"""A preference-tuning run (DPO, ORPO): every stage of an SFT run but the data and the trainer.

Starting from an SFT checkpoint (`[model] adapter`), the SFT adapter is loaded
trainable and TRL's DPOTrainer copies it into a frozen "ref" adapter, so the
reference policy is the SFT model itself, not the bare base. Without one, a
fresh adapter is attached and the reference is the base model (the fresh
adapter's B matrices are zero, so the two start equal). ORPO needs no
reference: it adds an odds-ratio penalty to SFT on the chosen answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import QloraError
from ..training.session import TrainingRun

if TYPE_CHECKING:
    from transformers import TrainerCallback

    from ..data.dataset import TokenizedSplit
    from ..training.trainer import CountingTrainer


class PreferenceRun(TrainingRun):
    def set_up_data(self) -> None:
        from ..training.data_setup import data_files

        with self.stages.stage("Preparing preference pairs (chat template, answer tokens)"):
            train, validation = data_files(self.recipe, self.log, self.guard_data)  # the recipe's pair files, or its build's
            self.train_split = self._pair_split("train", train)
            self.eval_split = self._pair_split("validation", validation) if validation else None
            if self.eval_split is not None and self.eval_split.conversations == 0:
                self.log.line("warning: no validation pair survived tokenization, so this run has no evaluation",
                              style="yellow")
                self.eval_split, validation = None, None
            self.validation_file = validation.resolve() if validation else None

    def _pair_split(self, key: str, path: Path) -> TokenizedSplit:
        from datasets import Dataset

        from ..data.dataset import TokenizedSplit
        from .pairs import read_pairs
        from .tokens import tokenize_pairs

        if not path.is_file():
            raise QloraError(f"{key} file not found: {path}", where=f"[data] {key}")  # a build's files always exist
        read = read_pairs(path)
        tokens = tokenize_pairs(read.pairs, self.tokenizer, self.recipe.model.max_seq_len)
        for problem in read.rejected[:10]:
            self.log.line(f"skipped {problem}", style="yellow")
        for pair_id, why in tokens.dropped[:10]:
            self.log.line(f"skipped pair {pair_id}: {why}", style="yellow")
        if key == "train" and not tokens.rows:
            raise QloraError(f"no usable preference pair in {path} ({len(read.rejected)} rejected, "
                             f"{len(tokens.dropped)} dropped)", where=str(path),
                             hint='each line needs "prompt", "chosen" and "rejected" (see train.log for each reason)')
        answers = sum(len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in tokens.rows)
        total = answers + sum(2 * len(r["prompt_ids"]) for r in tokens.rows)
        self.log.line(f"{key}: {len(tokens.rows)} pairs kept ({len(read.rejected)} rejected, {len(tokens.dropped)} "
                      f"dropped, {tokens.truncated} answers cut to {self.recipe.model.max_seq_len}); "
                      f"{total:,} tokens, {answers:,} in answers")
        return TokenizedSplit(Dataset.from_list(tokens.rows), len(tokens.rows), total, answers, tokens.truncated)

    def make_trainer(self, callbacks: list[TrainerCallback]) -> CountingTrainer:
        from .trainer import build_dpo_config, build_orpo_config, orpo_trainer_class, preference_trainer_class

        evaluating = self.eval_split is not None
        eval_dataset = self.eval_split.dataset if self.eval_split else None
        if self.recipe.training.method == "orpo":
            from .tokens import orpo_columns

            orpo_config = build_orpo_config(self.recipe, self.plan, self.dirs.checkpoint, has_eval=evaluating)
            return orpo_trainer_class()(
                model=self.model, args=orpo_config, train_dataset=orpo_columns(self.train_split.dataset),
                eval_dataset=orpo_columns(eval_dataset) if eval_dataset is not None else None,
                processing_class=self.tokenizer, callbacks=callbacks,
            )
        config = build_dpo_config(self.recipe, self.plan, self.dirs.checkpoint, has_eval=evaluating)
        return preference_trainer_class()(
            model=self.model, args=config, train_dataset=self.train_split.dataset, eval_dataset=eval_dataset,
            processing_class=self.tokenizer, callbacks=callbacks,
        )
