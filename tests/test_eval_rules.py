"""Usability and JSON rules on crafted answers."""

from __future__ import annotations

from qlora4080.eval_rules import Generated, is_degenerate, json_check, usability_failures

SPECIALS = ("<|im_start|>", "<|im_end|>")


def answer(text: str, ids=tuple(range(10)), stopped: bool = True, raw: str | None = None) -> Generated:
    return Generated(text=text, raw_text=raw if raw is not None else text, token_ids=tuple(ids), stopped=stopped)


def test_a_normal_answer_is_usable():
    assert usability_failures(answer("Paris is the capital of France."), SPECIALS) == []


def test_each_failure_is_named():
    assert usability_failures(answer("   "), SPECIALS) == ["empty"]
    assert usability_failures(answer("Paris", stopped=False), SPECIALS) == ["no end-of-turn before max_new_tokens"]
    leaked = answer("Paris", raw="Paris<|im_start|>user")
    assert usability_failures(leaked, SPECIALS) == ["template/special tokens leaked"]
    looping = answer("la la la", ids=[5] * 20)
    assert usability_failures(looping, SPECIALS) == ["degenerate repetition"]


def test_several_failures_at_once():
    reasons = usability_failures(answer("", ids=[7] * 30, stopped=False), SPECIALS)
    assert reasons == ["empty", "no end-of-turn before max_new_tokens", "degenerate repetition"]


def test_degenerate_detection():
    assert is_degenerate([1, 2, 3, 4] * 6)            # one 4-gram fills the output
    assert is_degenerate([9] * 12)                    # a long run of one token
    assert not is_degenerate(list(range(40)))         # varied text
    assert not is_degenerate([1, 2, 3, 4] * 2 + list(range(10, 40)))  # a repeat that does not dominate
    assert not is_degenerate([3] * 11)                # short runs are fine


def test_json_validity_and_keys():
    reference = '{"name": "Ada", "age": 36}'
    assert json_check('{"name": "Bob", "age": 2}', reference) == (True, True)
    assert json_check('{"name": "Bob"}', reference) == (True, False)
    assert json_check('[1, 2]', reference) == (True, False)
    assert json_check("name: Bob", reference) == (False, False)
    assert json_check('{"a": 1}', "not json") == (True, None)
    assert json_check("nope", None) == (False, None)
