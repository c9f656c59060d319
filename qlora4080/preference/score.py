"""Does a model prefer the chosen answer? Log-probabilities of both answers of each held-out pair."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

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

    pad = 0
    device = next(model.parameters()).device
    totals: list[float] = []
    switch: AbstractContextManager[object] = model.disable_adapter() if adapter_off else nullcontext()
    with torch.inference_mode(), switch:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            sequences = [row["prompt_ids"] + row[key] for row in batch]
            width = max(len(s) for s in sequences)
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences], device=device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=device)
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            log_probs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            for row_index, row in enumerate(batch):
                first = len(row["prompt_ids"]) - 1  # the logit at position t predicts token t + 1
                totals.append(float(log_probs[row_index, first : first + len(row[key])].sum()))
    return totals


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
