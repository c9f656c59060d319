"""A preference pair -> the token ids TRL's DPO collator takes: prompt, chosen answer, rejected answer.

The same renderer as SFT decides what an answer is: the conversation is
rendered whole with the model's chat template, and the answer is exactly the
tokens SFT would train in its last assistant turn (content and end-of-turn,
never the role header, never padding the template adds after it). So the
preference stage scores the same tokens the SFT stage taught.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.render import render_conversation
from ..data.vocabulary import IGNORE_INDEX

if TYPE_CHECKING:
    from datasets import Dataset

    from ..data.conversations import Rejected
    from ..data.dataset import SourceTokens
    from ..model_types import Tokenizer
    from .pairs import PreferencePair


@dataclass
class TokenizedPairs:
    rows: list[dict[str, list[int]]] = field(default_factory=list)
    """{"prompt_ids", "chosen_ids", "rejected_ids"} per kept pair."""
    dropped: list[tuple[str, str]] = field(default_factory=list)
    """(pair id, why) for pairs that cannot be trained."""
    truncated: int = 0
    kept: list[PreferencePair] = field(default_factory=list)
    """The pairs behind `rows`, in the same order."""


def answer_split(input_ids: list[int], labels: list[int]) -> tuple[list[int], list[int]] | None:
    """(prompt ids, answer ids): the answer runs from the first trained token to the last one."""
    trained = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    if not trained:
        return None
    return input_ids[: trained[0]], input_ids[trained[0] : trained[-1] + 1]


def tokenize_pair(pair: PreferencePair, tokenizer: Tokenizer) -> dict[str, list[int]] | str:
    """The pair's token ids, or why it cannot be trained."""
    halves = []
    for answer in (pair.chosen, pair.rejected):
        rendered = render_conversation([*pair.prompt, answer], tokenizer, train_on="last_assistant")
        split = answer_split(rendered["input_ids"], rendered["labels"])
        if split is None:
            return "the chat template rendered no answer tokens"
        halves.append(split)
    (prompt, chosen), (other_prompt, rejected) = halves
    if prompt != other_prompt:
        return "the chat template renders the prompt differently depending on the answer"
    return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}


def tokenize_pairs(pairs: list[PreferencePair], tokenizer: Tokenizer, max_seq_len: int) -> TokenizedPairs:
    """Every pair that fits: a prompt that leaves no room for an answer is dropped, a long answer cut."""
    result = TokenizedPairs()
    for pair in pairs:
        row = tokenize_pair(pair, tokenizer)
        if isinstance(row, str):
            result.dropped.append((pair.id, row))
            continue
        room = max_seq_len - len(row["prompt_ids"])
        if room < 2:
            why = f"the prompt alone is {len(row['prompt_ids'])} tokens, max_seq_len is {max_seq_len}"
            result.dropped.append((pair.id, why))
            continue
        if max(len(row["chosen_ids"]), len(row["rejected_ids"])) > room:
            result.truncated += 1
            row = {**row, "chosen_ids": row["chosen_ids"][:room], "rejected_ids": row["rejected_ids"][:room]}
        result.rows.append(row)
        result.kept.append(pair)
    return result


def pair_tokens_by_source(files: list[Path], tokenizer: Tokenizer, max_seq_len: int,
                          ) -> tuple[dict[str, SourceTokens], list[Rejected]]:
    """What tokenization does to each source of a pair build (train and validation together), and its drops.

    tokens counts both sequences of a pair (prompt + chosen, prompt + rejected), as training runs them;
    trained_tokens counts the answer tokens the preference loss scores.
    """
    from ..data.conversations import Rejected
    from ..data.dataset import SourceTokens
    from ..data.jsonl import read_jsonl
    from .pairs import to_pair

    merged: dict[str, SourceTokens] = {}
    dropped: list[Rejected] = []
    for path in files:
        for number, record, _problem in read_jsonl(path):
            pair = to_pair(record, f"line-{number}") if isinstance(record, dict) else "not a pair"
            if isinstance(pair, str):  # a build writes only pairs that read back; anything else was edited by hand
                dropped.append(Rejected(path, number, pair))
                continue
            assert isinstance(record, dict)
            tally = merged.setdefault(str(record.get("source", path.stem)), SourceTokens())
            tokenized = tokenize_pairs([pair], tokenizer, max_seq_len)
            dropped += [Rejected(path, number, why) for _, why in tokenized.dropped]
            tally.dropped += len(tokenized.dropped)
            tally.truncated += tokenized.truncated
            for row in tokenized.rows:
                answers = len(row["chosen_ids"]) + len(row["rejected_ids"])
                tally.kept += 1
                tally.tokens += answers + 2 * len(row["prompt_ids"])
                tally.trained_tokens += answers
    return merged, dropped


def orpo_columns(dataset: Dataset) -> Dataset:
    """The same pairs in the columns TRL's ORPOTrainer reads: each answer as a whole sequence with its labels."""

    def expand(row: dict[str, list[int]]) -> dict[str, list[int]]:
        prompt = row["prompt_ids"]
        columns = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
        for side in ("chosen", "rejected"):
            answer = row[f"{side}_ids"]
            columns[f"{side}_input_ids"] = prompt + answer
            columns[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
            columns[f"{side}_labels"] = [IGNORE_INDEX] * len(prompt) + answer
        return columns

    return dataset.map(expand, remove_columns=dataset.column_names)
