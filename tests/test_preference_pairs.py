"""Preference records: both shapes read, bad ones rejected with file:line, answer tokens exactly as SFT trains them."""

from __future__ import annotations

import json

import pytest
from test_render import FAMILIES, _tokenizer_for  # the SFT mask tests' template families

from qlora4080.preference.pairs import read_pairs, to_pair
from qlora4080.preference.tokens import tokenize_pair, tokenize_pairs


def test_explicit_prompt_with_strings():
    pair = to_pair({"prompt": "Ann, 31, nurse, Oslo", "chosen": '{"age": 31}', "rejected": "Sure! Here it is."}, "x")
    assert not isinstance(pair, str)
    assert pair.prompt == [{"role": "user", "content": "Ann, 31, nurse, Oslo"}]
    assert pair.chosen == {"role": "assistant", "content": '{"age": 31}'}
    assert pair.rejected["content"] == "Sure! Here it is."


def test_trl_conversational_shape_and_system():
    record = {
        "prompt": [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Ann, 31"}],
        "chosen": [{"role": "assistant", "content": '{"age": 31}'}],
        "rejected": [{"role": "assistant", "content": '{"age": "31"}'}],
    }
    pair = to_pair(record, "x")
    assert not isinstance(pair, str) and len(pair.prompt) == 2 and pair.chosen["content"] == '{"age": 31}'


def test_whole_conversations_sharing_a_prefix():
    shared = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "card?"}]
    pair = to_pair({"chosen": [*shared, {"role": "assistant", "content": "A"}],
                    "rejected": [*shared, {"role": "assistant", "content": "B"}]}, "x")
    assert not isinstance(pair, str)
    assert pair.prompt == shared and pair.chosen["content"] == "A" and pair.rejected["content"] == "B"


@pytest.mark.parametrize(("record", "reason"), [
    ({"prompt": "q", "chosen": "a"}, "'rejected' is missing"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "same answer"),
    ({"prompt": "  ", "chosen": "a", "rejected": "b"}, "'prompt' is empty"),
    ({"prompt": "q", "chosen": "", "rejected": "b"}, "'chosen' is empty"),
    ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "assistant message"),
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "b"}]}, "share no prompt"),
    ({"chosen": "a", "rejected": "b"}, "whole conversations"),
])
def test_bad_records_say_why(record, reason):
    result = to_pair(record, "x")
    assert isinstance(result, str) and reason in result


def test_read_pairs_reports_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join([
        json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}),
        "{broken",
        json.dumps({"prompt": "q", "chosen": "a"}),
        json.dumps(["not", "an", "object"]),
    ]) + "\n", encoding="utf-8")
    result = read_pairs(path)
    assert len(result.pairs) == 1 and result.pairs[0].id == "line-1"
    assert [r.line for r in result.rejected] == [2, 3, 4]
    assert f"{path}:3" in str(result.rejected[1]) and "rejected" in str(result.rejected[1])


@pytest.mark.parametrize("family", FAMILIES)
def test_answer_tokens_are_content_and_end_of_turn(smol_tokenizer, family):
    tokenizer = _tokenizer_for(smol_tokenizer, family)
    pair = to_pair({"prompt": [{"role": "user", "content": "Ann, 31, nurse"}, {"role": "assistant", "content": "Noted."},
                               {"role": "user", "content": "As a card?"}],
                    "chosen": '{"age": 31}', "rejected": "She is thirty-one."}, "x")
    assert not isinstance(pair, str)
    row = tokenize_pair(pair, tokenizer)
    assert not isinstance(row, str)
    eot = FAMILIES[family][2]
    assert tokenizer.decode(row["chosen_ids"]).strip() == '{"age": 31}' + eot
    assert tokenizer.decode(row["rejected_ids"]).strip() == "She is thirty-one." + eot
    prompt_text = tokenizer.decode(row["prompt_ids"])
    assert "As a card?" in prompt_text and "Noted." in prompt_text and "thirty" not in prompt_text
    # the prompt ends where generation starts: exactly the template's generation prompt
    generation_prompt = tokenizer.apply_chat_template(pair.prompt, tokenize=False, add_generation_prompt=True)
    assert prompt_text.replace(tokenizer.bos_token or "\0", "") == generation_prompt.replace(tokenizer.bos_token or "\0", "")


def test_long_prompts_are_dropped_and_long_answers_cut(smol_tokenizer):
    short = to_pair({"prompt": "q", "chosen": "a " * 50, "rejected": "b"}, "short")
    long = to_pair({"prompt": "word " * 200, "chosen": "a", "rejected": "b"}, "long")
    assert not isinstance(short, str) and not isinstance(long, str)
    result = tokenize_pairs([short, long], smol_tokenizer, max_seq_len=40)
    assert [pair_id for pair_id, _ in result.dropped] == ["long"]
    assert result.truncated == 1
    row = result.rows[0]
    assert len(row["prompt_ids"]) + len(row["chosen_ids"]) <= 40
