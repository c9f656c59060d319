"""Does a model prefer the chosen answer? Log-probabilities of both answers of each held-out pair."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..data.vocabulary import IGNORE_INDEX

if TYPE_CHECKING:
    from ..model_types import Model


@dataclass(frozen=True)
class PreferenceScore:
    pairs: int
    accuracy: float
    """Share of pairs where the chosen answer has the higher total log-probability."""
    mean_margin: float
    """Mean of log p(chosen) - log p(rejected), in nats."""


def answer_log_probs(model: Model, rows: Sequence[dict[str, list[int]]], key: str, *, batch_size: int = 8,
                     adapter_off: bool = False) -> list[float]:
    """Sum of log p(answer token | everything before it) for rows[i]["prompt_ids"] + rows[i][key]."""
    import torch

    from ..infer import adapter_off as base_model_of
    from ..scoring import labelled_log_probs

    labelled = [(row["prompt_ids"] + row[key], [IGNORE_INDEX] * len(row["prompt_ids"]) + row[key]) for row in rows]
    switch: AbstractContextManager[object] = base_model_of(model) if adapter_off else nullcontext()
    with torch.inference_mode(), switch:
        return [total for total, _ in labelled_log_probs(model, labelled, batch_size=batch_size)]


@dataclass(frozen=True)
class PairLogProbs:
    chosen: list[float]
    rejected: list[float]


def pair_log_probs(model: Model, rows: Sequence[dict[str, list[int]]], *, batch_size: int = 8,
                   adapter_off: bool = False) -> PairLogProbs:
    return PairLogProbs(answer_log_probs(model, rows, "chosen_ids", batch_size=batch_size, adapter_off=adapter_off),
                        answer_log_probs(model, rows, "rejected_ids", batch_size=batch_size, adapter_off=adapter_off))


def preference_score(policy: PairLogProbs, reference: PairLogProbs | None = None) -> PreferenceScore:
    """Plain: does the policy give the chosen answer the higher log-probability?

    With a reference: DPO's implicit reward, does the policy raise the chosen
    answer more (or lower it less) than the rejected one, relative to the
    reference model? This is what DPO optimises (TRL's rewards/accuracies),
    free of the length bias of comparing two raw log-probabilities.
    """
    margins = [c - r for c, r in zip(policy.chosen, policy.rejected)]
    if reference is not None:
        margins = [m - (c - r) for m, c, r in zip(margins, reference.chosen, reference.rejected)]
    count = max(len(margins), 1)
    return PreferenceScore(len(margins), sum(m > 0 for m in margins) / count, sum(margins) / count)
