"""Pack short samples into sequences of up to max_len tokens, with no attention across sample boundaries.

With transformers' sdpa and eager attention, position ids alone do NOT keep
packed samples apart (each token still sees every earlier token of the row);
a 4-D block-diagonal causal mask does. So a packed batch carries both:
position ids that restart at 0 for each sample, and a float mask
[batch, 1, length, length] that is 0 inside a sample's causal triangle and
the dtype's minimum elsewhere. (Flash-attention / unsloth read sample
boundaries from the position ids instead; that path needs no mask.)

The first label of every sample is -100: under the causal shift it would be
predicted from the previous sample's last token.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .vocabulary import IGNORE_INDEX

if TYPE_CHECKING:
    import torch


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group item indices into bins of total length <= capacity, longest items first, each into the fullest bin it fits."""
    if any(length > capacity for length in lengths):
        raise ValueError(f"an item is longer than the capacity {capacity}; truncate before packing")
    bins: list[list[int]] = []
    space: list[tuple[int, int]] = []  # (remaining capacity, bin index), kept sorted
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[index]
        slot = bisect.bisect_left(space, (length, -1))
        if slot < len(space):
            remaining, chosen = space.pop(slot)
            bins[chosen].append(index)
            bisect.insort(space, (remaining - length, chosen))
        else:
            bins.append([index])
            bisect.insort(space, (capacity - length, len(bins) - 1))
    return bins


def pack_rows(rows: Sequence[Mapping[str, list[int]]], max_len: int) -> list[dict[str, list[int]]]:
    """Rows with input_ids + labels -> packed rows with input_ids, labels, position_ids, seq_lengths."""
    packed = []
    for group in best_fit_decreasing([len(row["input_ids"]) for row in rows], max_len):
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        lengths: list[int] = []
        for index in sorted(group):  # keep the dataset's order inside a row
            sample_ids, sample_labels = rows[index]["input_ids"], rows[index]["labels"]
            ids += sample_ids
            labels += [IGNORE_INDEX] + list(sample_labels[1:])
            positions += list(range(len(sample_ids)))
            lengths.append(len(sample_ids))
        packed.append({"input_ids": ids, "labels": labels, "position_ids": positions, "seq_lengths": lengths})
    return packed


def block_causal_mask(seq_lengths: Sequence[Sequence[int]], width: int, dtype: torch.dtype) -> torch.Tensor:
    """Float mask [batch, 1, width, width]: 0 where a token may attend (same sample, not in the future), min elsewhere.

    Padding after the last sample attends only to itself, so no row is fully
    masked (which would turn softmax into NaN).
    """
    import torch

    segments = torch.empty(len(seq_lengths), width, dtype=torch.long)
    for row, lengths in enumerate(seq_lengths):
        ids = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(list(lengths), dtype=torch.long))
        used = ids.numel()
        segments[row, :used] = ids
        segments[row, used:] = len(lengths) + torch.arange(width - used)  # each pad token its own segment
    same = segments[:, :, None] == segments[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = same & causal
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None, :, :]


class PackedCollator:
    """Pads packed rows into a batch: position ids restarting per sample, and the block-diagonal mask.

    Rows need input_ids, labels and seq_lengths (position ids are derived from
    the lengths, so they survive trainers that drop unknown columns). The batch
    also carries `packed_tokens`, the number of real (non-pad) tokens, which the
    trainer takes out before the forward pass.
    """

    def __init__(self, pad_token_id: int, dtype: torch.dtype | None = None, with_mask: bool = True):
        self.pad_token_id = pad_token_id
        self.dtype = dtype
        self.with_mask = with_mask

    def __call__(self, features: Sequence[Mapping[str, list[int]]]) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        positions = [[p for length in f["seq_lengths"] for p in range(length)] for f in features]
        batch = {
            "input_ids": torch.tensor([f["input_ids"] + [self.pad_token_id] * (width - len(f["input_ids"])) for f in features]),
            "labels": torch.tensor([f["labels"] + [IGNORE_INDEX] * (width - len(f["labels"])) for f in features]),
            "position_ids": torch.tensor([p + list(range(width - len(p))) for p in positions]),
            "packed_tokens": torch.tensor(sum(len(f["input_ids"]) for f in features)),
        }
        if self.with_mask:
            batch["attention_mask"] = block_causal_mask([f["seq_lengths"] for f in features], width, self.dtype or torch.float32)
        return batch


def padding_share(batches: Sequence[Sequence[int]]) -> float:
    """Share of pad tokens when each batch (a list of sequence lengths) is padded to its longest member."""
    padded = sum(max(lengths) * len(lengths) for lengths in batches if lengths)
    real = sum(sum(lengths) for lengths in batches)
    return 0.0 if padded == 0 else 1 - real / padded
