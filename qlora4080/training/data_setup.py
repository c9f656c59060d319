"""Data for a training run: the recipe's files (or its data build's), tokenized as its method's records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..recipe import Recipe
from .runlog import RunLog
from .session import RunContext

if TYPE_CHECKING:
    from ..data.dataset import TokenizedSplit
    from ..model_types import Tokenizer


@dataclass(frozen=True)
class Splits:
    train: TokenizedSplit
    evaluation: TokenizedSplit | None
    """The validation records, tokenized; None when the run has none (or none survived tokenization)."""
    validation_file: Path | None
    """The validation file they came from (the checkpoint names it for `eval`)."""


def prepare_splits(run: RunContext, tokenizer: Tokenizer) -> Splits:
    """The data stage: the run's records read, checked against a resumed run's, and tokenized by its method."""

    def guard(train_file: Path) -> None:
        """Process 0 records the training file's hash (a new run) or refuses a resume on changed data."""
        from ..distributed import is_main_process
        from .data_guard import guard_training_data

        if is_main_process() and (note := guard_training_data(run.dirs.checkpoint, train_file, run.checkpoint is not None)):
            run.log.line(note, style="yellow")

    with run.stages.stage(f"Preparing {run.method.records.unit} (chat template, trained tokens)"):
        return Splits(*prepare_data(run.recipe, tokenizer, run.log, guard))


def prepare_data(recipe: Recipe, tokenizer: Tokenizer, log: RunLog, guard: Callable[[Path], None] | None = None,
                 ) -> tuple[TokenizedSplit, TokenizedSplit | None, Path | None]:
    """Tokenized train and validation splits of the method's records, and the validation file (for eval later)."""
    from ..data.pipeline import records_of

    kind = records_of(recipe)
    train_file, validation_file = data_files(recipe, log, guard)
    train, validation = kind.tokenize(train_file, validation_file, tokenizer, recipe, log)
    if validation is not None and validation.conversations == 0:
        # every validation record was dropped: train anyway, without periodic evaluation
        log.line(f"warning: no validation record ({kind.unit}) survived tokenization, so this run has no evaluation",
                 style="yellow")
        validation, validation_file = None, None
    return train, validation, validation_file.resolve() if validation_file else None


def data_files(recipe: Recipe, log: RunLog, guard: Callable[[Path], None] | None = None) -> tuple[Path, Path | None]:
    """The train and validation JSONL files: the recipe's own, or those of its data build (`guard` sees the train file)."""
    train_file, validation_file = _data_files(recipe, log)
    if guard is not None:
        guard(train_file)
    return train_file, validation_file


def _data_files(recipe: Recipe, log: RunLog) -> tuple[Path, Path | None]:
    if not recipe.data.sources:
        train, validation = recipe.data.train, recipe.data.validation
        assert train is not None  # the recipe is refused at load time without data.train or data.sources
        return recipe.resolve_path(train), recipe.resolve_path(validation) if validation else None
    from ..data.pipeline import build_data
    from ..distributed import decided_by_main

    # With several processes, process 0 builds (or reuses) the data and the others read the files it names.
    build = decided_by_main(lambda: build_data(recipe), "building the data")
    log.line(f"data build {build.folder} ({'reused: inputs unchanged' if build.reused else 'built'})")
    for pool in build.pools:
        log.line(f"  source {pool.name} ({pool.format}): read {pool.read}, rejected {pool.rejected}, "
                 f"duplicates {pool.duplicates}, kept {pool.kept}, in the mix {pool.in_mix}")
    has_validation = bool(build.validation_file.read_text(encoding="utf-8").strip())
    return build.train_file, build.validation_file if has_validation else None
