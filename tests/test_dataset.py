"""Tokenized splits: truncation policy, and conversations left with nothing to train are reported and dropped."""

from __future__ import annotations

from pathlib import Path

from qlora4080.data.conversations import Conversations
from qlora4080.data.dataset import tokenize_conversations

SHORT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
LONG_PROMPT = {"messages": [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "ok"}]}
LONG_ANSWER = {"messages": [{"role": "user", "content": "Tell me"}, {"role": "assistant", "content": "word " * 300}]}


def _source(*records) -> Conversations:
    return Conversations(path=Path("d.jsonl"), records=list(records), lines=list(range(1, len(records) + 1)))


def test_keep_start_truncates_and_drops_what_has_no_trained_token_left(smol_tokenizer):
    split = tokenize_conversations(_source(SHORT, LONG_PROMPT, LONG_ANSWER), smol_tokenizer, 64, "assistant")
    assert split.conversations == 2 and split.truncated == 1
    assert [(d.line, d.reason) for d in split.dropped] == [(2, "no trained token within max_seq_len=64")]
    assert max(len(ids) for ids in split.dataset["input_ids"]) == 64


def test_drop_policy_drops_every_over_long_conversation(smol_tokenizer):
    split = tokenize_conversations(_source(SHORT, LONG_PROMPT, LONG_ANSWER), smol_tokenizer, 64, "assistant", truncation="drop")
    assert split.conversations == 1 and split.truncated == 0
    assert [d.line for d in split.dropped] == [2, 3]
    assert "longer than max_seq_len=64 (truncation = drop)" in split.dropped[1].reason
