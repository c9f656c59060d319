"""Log-probabilities of the labelled tokens of many sequences, batched with right padding.

eval's perplexity (labels: the trained tokens of a conversation) and the
preference score (labels: one answer of a pair) ask the model the same
question; this is the one place that asks it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .data.vocabulary import IGNORE_INDEX

if TYPE_CHECKING:
    from .model_types import Model


def labelled_log_probs(model: Model, rows: Sequence[tuple[list[int], list[int]]], *,
                       batch_size: int = 8) -> list[tuple[float, int]]:
    """Per (input ids, labels) row: the sum of log p(token | what precedes it) over its labelled tokens, and their count.

    A label equal to IGNORE_INDEX is not scored; labels are aligned with the ids
    (the causal shift happens here). Call it under torch.inference_mode().
    """
    import torch

    device = next(model.parameters()).device
    scored: list[tuple[float, int]] = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        # right padding under an attention mask: the pad id never reaches a real token, so 0 serves any tokenizer
        ids = torch.tensor([i + [0] * (width - len(i)) for i, _ in batch], device=device)
        labels = torch.tensor([l + [IGNORE_INDEX] * (width - len(l)) for _, l in batch], device=device)
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in batch], device=device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        targets = labels[:, 1:]
        counted = targets != IGNORE_INDEX
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        sums = (log_probs * counted).sum(dim=-1)
        scored.extend((float(total), int(count)) for total, count in zip(sums, counted.sum(dim=-1)))
    return scored
