"""Data for a training run: tokenized splits with assistant-only labels, packed when the recipe asks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..plan import RunPlan
from ..recipe import Recipe
from .runlog import RunLog

if TYPE_CHECKING:
    from ..data.dataset import TokenizedSplit
    from ..data.packing import PackedCollator
    from ..data.render import MaskReport
    from ..model_types import Tokenizer


def prepare_data(recipe: Recipe, tokenizer: Tokenizer, log: RunLog, guard: Callable[[Path], None] | None = None,
                 ) -> tuple[TokenizedSplit, TokenizedSplit | None, Path | None]:
    """Tokenized train and validation splits, and the validation file they came from (for eval later)."""
    from ..data.render import MaskReport

    train_file, validation_file = data_files(recipe, log, guard)
    report = MaskReport()  # how each assistant turn was located, and the template's warnings, said once
    train = _tokenize_split("train", train_file, recipe, tokenizer, log, report)
    validation = _tokenize_split("validation", validation_file, recipe, tokenizer, log, report) if validation_file else None
    if validation is not None and validation.conversations == 0:
        # every validation record was dropped: train anyway, without periodic evaluation
        log.line("warning: no validation record survived tokenization, so this run has no evaluation", style="yellow")
        validation, validation_file = None, None
    for line in report.lines():
        log.line(line, style="yellow" if line.startswith("warning") else None)
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


def _tokenize_split(key: str, file: Path, recipe: Recipe, tokenizer: Tokenizer, log: RunLog,
                    report: MaskReport) -> TokenizedSplit:
    """One split with assistant-only labels; what was skipped and why goes to train.log."""
    from ..data.conversations import read_conversations
    from ..data.dataset import tokenize_conversations

    source = read_conversations(file)
    split = tokenize_conversations(source, tokenizer, recipe.model.max_seq_len, recipe.data.train_on,
                                   recipe.data.truncation, allow_empty=key == "validation", report=report)
    problems = source.rejected + split.dropped
    for problem in problems[:10]:
        log.line(f"skipped {problem}", style="yellow")
    if len(problems) > 10:
        log.line(f"... and {len(problems) - 10} more skipped records", style="yellow")
    log.line(
        f"{key}: {split.conversations} conversations kept ({len(source.rejected)} rejected, "
        f"{len(split.dropped)} dropped, {split.truncated} truncated to {recipe.model.max_seq_len}); "
        f"{split.tokens:,} tokens, {split.trained_tokens:,} trained ({100 * split.trained_tokens / max(split.tokens, 1):.1f}%)"
    )
    if recipe.data.sources and split.dropped and split.conversations:
        log.line("  dropped at tokenization, by source: "
                 + ", ".join(f"{name} {tally.dropped}" for name, tally in split.by_source.items()))
    return split


def pack_splits(recipe: Recipe, plan: RunPlan, tokenizer: Tokenizer, train_split: TokenizedSplit,
                eval_split: TokenizedSplit | None, log: RunLog) -> PackedCollator:
    """Replace each split's rows by packed rows; the collator that batches them (block-diagonal mask)."""
    import torch
    from datasets import Dataset

    from ..data.packing import PackedCollator, pack_rows

    for name, split in (("train", train_split), ("validation", eval_split)):
        if split is None:
            continue
        rows = split.dataset.to_list()
        packed = pack_rows(rows, recipe.model.max_seq_len)
        split.dataset = Dataset.from_list(packed)
        fill = sum(len(r["input_ids"]) for r in packed) / (len(packed) * recipe.model.max_seq_len)
        log.line(f"{name}: packed {len(rows)} conversations into {len(packed)} sequences of up to "
                 f"{recipe.model.max_seq_len} tokens ({fill:.0%} full)")
    dtype = getattr(torch, plan.loading.compute_dtype)
    return PackedCollator(tokenizer.pad_token_id, dtype=dtype)
