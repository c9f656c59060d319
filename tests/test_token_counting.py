"""One token count for every method: what each batch shape counts as read and as trained."""

from __future__ import annotations

import torch

from qlora4080.data.vocabulary import IGNORE_INDEX
from qlora4080.preference.trainer import COMPLETION_COLUMNS, PAIR_COLUMNS
from qlora4080.training.token_counting import NOTHING_TO_COUNT, CountsTokens, TokenColumns, count_batch, count_tokens, tokens_in
from qlora4080.training.trainer import SFT_COLUMNS

X = IGNORE_INDEX


def test_sft_counts_real_tokens_and_labels_after_the_first_position():
    batch = {"input_ids": torch.tensor([[5, 6, 7, 0], [5, 6, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
             "labels": torch.tensor([[4, 6, 7, X], [X, 6, X, X]])}
    assert tokens_in(batch, SFT_COLUMNS) == (5, 3)  # the first label is never a target: the model shifts by one


def test_a_packed_batch_states_its_count_and_a_batch_without_padding_is_its_size():
    packed = {"input_ids": torch.ones(2, 8, dtype=torch.long), "attention_mask": torch.ones(2, 1, 8, 8),
              "packed_tokens": torch.tensor(13), "labels": torch.full((2, 8), X)}
    assert tokens_in(packed, SFT_COLUMNS) == (13, 0)
    assert tokens_in({"input_ids": torch.ones(1, 6, dtype=torch.long)}, SFT_COLUMNS) == (6, 0)


def test_preference_batches_count_by_their_own_columns():
    dpo = {"attention_mask": torch.tensor([[1, 1, 1, 0]]), "completion_mask": torch.tensor([[0, 1, 1, 0]]),
           "KL_attention_mask": torch.tensor([[1, 1, 1, 1]]), "KL_completion_mask": torch.tensor([[0, 1, 1, 1]])}
    assert tokens_in(dpo, COMPLETION_COLUMNS) == (3, 2)  # the KL_ batch trains nothing
    orpo = {"chosen_attention_mask": torch.tensor([[1, 1, 1]]), "chosen_labels": torch.tensor([[X, 4, 5]]),
            "rejected_attention_mask": torch.tensor([[1, 1, 0]]), "rejected_labels": torch.tensor([[X, 6, X]])}
    assert tokens_in(orpo, PAIR_COLUMNS) == (5, 3)


def test_rows_made_inside_the_step_are_counted_where_they_are_made():
    class Generating(CountsTokens):
        pass

    trainer = Generating()
    assert Generating.token_columns == NOTHING_TO_COUNT
    generated = TokenColumns(read=("prompt_mask", "completion_mask"), trained_masks=("completion_mask",))
    count_batch(trainer, {"prompt_mask": torch.tensor([[1, 1, 0]]), "completion_mask": torch.tensor([[1, 1, 1]])}, generated)
    count_tokens(trainer, 10, 4)
    assert (trainer.tokens_seen, trainer.trained_tokens_seen) == (5 + 10, 3 + 4)
