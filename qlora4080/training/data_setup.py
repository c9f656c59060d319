"""Data for a training run: tokenized splits with assistant-only labels, packed when the recipe asks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..hardware import Hardware
from ..recipe import Recipe
from .runlog import RunLog


def prepare_data(recipe: Recipe, tokenizer: Any, log: RunLog) -> tuple[Any, Any, Path | None]:
    """Tokenized train and validation splits, and the validation file they came from (for eval later)."""
    from ..data.conversations import read_conversations
    from ..data.dataset import tokenize_conversations

    files = {key: recipe.resolve_path(getattr(recipe.data, key)) if getattr(recipe.data, key) else None
             for key in ("train", "validation")}
    if recipe.data.sources:
        from ..data.pipeline import build_data

        build = build_data(recipe)
        log.line(f"data build {build.folder} ({'reused: inputs unchanged' if build.reused else 'built'})")
        for pool in build.pools:
            log.line(f"  source {pool.name} ({pool.format}): read {pool.read}, rejected {pool.rejected}, "
                     f"duplicates {pool.duplicates}, kept {pool.kept}, in the mix {pool.in_mix}")
        files = {"train": build.train_file, "validation": build.validation_file}
        if not build.validation_file.read_text(encoding="utf-8").strip():
            files["validation"] = None
    from ..data.render import MaskReport

    report = MaskReport()  # how each assistant turn was located, and the template's warnings, said once
    splits = []
    for key in ("train", "validation"):
        if files[key] is None:
            splits.append(None)
            continue
        source = read_conversations(files[key])
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
        if key == "validation" and split.conversations == 0:
            # every validation record was dropped: train anyway, without periodic evaluation
            log.line("warning: no validation record survived tokenization, so this run has no evaluation", style="yellow")
            splits.append(None)
            files["validation"] = None
            continue
        if recipe.data.sources and split.dropped:
            log.line("  dropped at tokenization, by source: "
                     + ", ".join(f"{name} {tally.dropped}" for name, tally in split.by_source.items()))
        splits.append(split)
    for line in report.lines():
        log.line(line, style="yellow" if line.startswith("warning") else None)
    return splits[0], splits[1], files["validation"].resolve() if files["validation"] else None


def pack_splits(recipe: Recipe, hardware: Hardware, tokenizer: Any, train_split: Any, eval_split: Any, log: RunLog) -> Any:
    """Replace each split's rows by packed rows; the collator that batches them (block-diagonal mask)."""
    import torch
    from datasets import Dataset

    from ..backends.loading import compute_dtype_name
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
    dtype = getattr(torch, compute_dtype_name(recipe.model.dtype, hardware))
    return PackedCollator(tokenizer.pad_token_id, dtype=dtype)
