"""Exact match of the final number and token F1, on the answer shapes models and datasets actually produce."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
from conftest import REPO
from hypothesis import given, settings
from hypothesis import strategies as st

from qlora4080.task_metrics import (
    FoundNumber,
    TaskTally,
    exact_match,
    f1_tokens,
    final_number,
    numbers_match,
    token_f1,
    wants_exact_match,
    wants_f1,
)

FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


@pytest.mark.parametrize(("text", "value"), [
    # references as the cmath / mawps normalizers keep them
    ("12", 12), ("3.5", 3.5), ("1/4", 0.25), ("7.0", 7), ("-3", -3), ("50%", 50),
    ("小芳还剩27个苹果。", 27), ("答：一共有39个苹果", 39),
    # generated answers
    ("The answer is 42.", 42), ("So 5 + 3 = 8 apples in all.", 8), ("10-3=7", 7),
    ("It costs $1,000.", 1000), ("1,234,567.5 people", 1234567.5), ("between 1,2,3", 3),
    ("x = -5", -5), ("the temperature is -12.5 degrees", -12.5), ("+4", 4),
    ("3/4 of the cake", 0.75), ("-3/4", -0.75), ("2 1/2 cups", 2.5), ("3½ cups", 3.5), ("½", 0.5),
    ("It is .5 of it", 0.5), ("１２３个", 123), ("答案：１，０００", 1000), ("８０％", 80), ("३४ apples", 34),
    ("12.5.3", 12.5), ("the sum is −4", -4),
    # LaTeX
    (r"$\boxed{42}$", 42), (r"\boxed{\frac{3}{4}}", 0.75), (r"$x = \dfrac{1}{2}$", 0.5), (r"-\frac{1}{2}", -0.5),
    (r"\frac34", 0.75), (r"2\frac{1}{2}", 2.5), (r"1{,}000", 1000), (r"1\,000", 1000), (r"25\%", 25),
    (r"\text{The answer is } \boxed{x = 7}", 7),
    # the answer marker wins over numbers after it; \boxed wins over the marker
    ("The answer is 12 because 3 * 4 = 12 and 5 is wrong", 12), ("答案是15，因为3乘5等于15，不是7", 15),
    ("answer: 6. Check: 2+4=6, 1 left", 6), ("#### 72\n(3 steps)", 72),
    (r"The answer is 5, i.e. \boxed{6}, and 7", 6),
    ("3 steps give 9; is that the answer: unsure", 9),  # a marker with no number after it: the last number
])
def test_final_number(text, value):
    found = final_number(text)
    assert found is not None and found.value == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "no number here", "答案是十二", "x² over y", "H2O", "the v2 model", r"\boxed{}"])
def test_texts_without_a_number(text):
    assert final_number(text) is None


def test_what_is_kept_of_the_number_as_written():
    assert final_number("the answer is -1,000 dollars") == FoundNumber(-1000.0, "-1,000")
    assert final_number("80 %") == FoundNumber(80.0, "80%", percent=True)
    assert final_number("2  1/2") == FoundNumber(2.5, "2 1/2")
    assert final_number("3/0 then 5") == FoundNumber(5.0, "5")  # a fraction over zero is not a number


@pytest.mark.parametrize(("answer", "reference", "correct"), [
    ("小芳还剩27个苹果。", "27", True),
    ("27.0", "27", True), ("27.00001", "27", True), ("27.01", "27", False), ("28", "27", False),
    ("0.25", "1/4", True), ("1/4", "0.25", True), ("7/2", "3.5", True), ("0.33333", "1/3", True), ("0.33", "1/3", False),
    ("50", "50%", True), ("0.5", "50%", True), ("50%", "0.5", True), ("5", "50%", False),
    ("1000", "1,000", True), ("-3", "3", False),
    ("1e-7", "0", False),  # no scientific notation: "1e-7" reads as 7 (a minus after a letter is not a sign)
    ("I don't know", "27", False), ("", "27", False),
])
def test_exact_match(answer, reference, correct):
    assert exact_match(answer, reference).correct is correct


def test_tolerance_is_relative_1e4_or_absolute_1e6():
    def match(a: float, b: float) -> bool:
        return numbers_match(FoundNumber(a, str(a)), FoundNumber(b, str(b)))

    assert match(1_000_000, 1_000_099) and not match(1_000_000, 1_000_101)
    assert match(0.0, 9e-7) and not match(0.0, 2e-6)


def test_a_reference_without_a_number_is_not_counted():
    result = exact_match("42", "Paris")
    assert result.correct is None and result.reference is None and result.answer == FoundNumber(42.0, "42")


@pytest.mark.parametrize(("answer", "reference", "f1"), [
    ("Paris", "paris", 1.0),
    ("The Eiffel Tower!", "eiffel tower", 1.0),  # case, punctuation and articles do not count
    ("the cat sat", "a cat", 2 * (1 / 2) * 1 / (1 / 2 + 1)),  # answer: cat sat; reference: cat
    ("blue", "red", 0.0),
    ("27", "小芳还剩27个苹果", 2 * 1 * (1 / 8) / (1 + 1 / 8)),  # CJK: one token per character; 27 stays whole
    ("苹果", "苹果。", 1.0), ("苹果", "果苹", 1.0),  # bags of tokens: order does not count
    ("", "", 1.0), ("...", "", 1.0), ("", "27", 0.0), ("the", "27", 0.0),  # no token on one side
    ("a a a cat", "cat cat", 2 * (1 / 1) * (1 / 2) / (1 + 1 / 2)),  # shared tokens are counted with multiplicity
    ("ＡＢＣ", "abc", 1.0),  # NFKC: full-width letters
])
def test_token_f1(answer, reference, f1):
    assert token_f1(answer, reference) == pytest.approx(f1)


def test_f1_tokens_split_cjk_characters_and_keep_other_runs():
    assert f1_tokens("我有3.5个🍎 and an apple, ok?") == ["我", "有", "35", "个", "🍎", "and", "apple", "ok"]
    assert f1_tokens("カタカナ ひら") == ["カ", "タ", "カ", "ナ", "ひ", "ら"]
    assert f1_tokens("don't") == ["dont"]  # SQuAD deletes punctuation rather than splitting on it


def test_which_tags_get_which_metric():
    assert wants_exact_match(["math", "zh"]) and not wants_exact_match(["short", "emoji"])
    assert wants_f1(["math"]) and wants_f1(["short"]) and wants_f1(["short_answer"])
    assert not wants_f1(["emoji"]) and not wants_f1([])


def test_tally_counts_records_and_gives_per_record_fields():
    tally = TaskTally()
    assert tally.add(["math"], "The answer is 27.", "27") == {"answer_number": "27", "reference_number": "27", "exact_match": True,
                                                             "f1": 0.5}  # tokens: answer, is, 27 (article dropped)
    assert tally.add(["math"], "I think 26", "27")["exact_match"] is False
    assert tally.add(["math"], "12", "no number") == {"answer_number": "12", "reference_number": None, "f1": 0.0}
    assert tally.add(["short"], "Paris", "Paris") == {"f1": 1.0}
    assert tally.add(["emoji"], "🎉", "🎉") == {}
    metrics = tally.metrics()
    assert metrics["exact_match_rate"] == 0.5 and metrics["exact_match_records"] == 2 and metrics["exact_match_unscored"] == 1
    assert metrics["f1_records"] == 4
    assert metrics["token_f1"] == pytest.approx((0.5 + 0.0 + 0.0 + 1.0) / 4)
    assert TaskTally().metrics() == {}  # nothing tagged: no metric at all


def test_every_headline_reference_has_a_number_that_matches_itself():
    """The references of the bundled math sources, after their normalizers, are all scored."""
    from qlora4080.data.formats import to_messages

    for name in ("cmath", "mawps"):
        lines = (REPO / "recipes" / "data" / "emoji_math_sources" / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        for line in lines:
            reference = to_messages(json.loads(line), name)[-1]["content"]
            result = exact_match(f"答：结果是{reference}。", reference)
            assert result.correct is True, reference


# ---- properties -------------------------------------------------------------------------------------

def _shapes(n: int) -> list[str]:
    """Ways an answer writes the integer n."""
    grouped = f"{n:,}"
    return [str(n), grouped, f"The answer is {grouped}.", f"答案是{n}个", f"{n}.0", rf"$\boxed{{{n}}}$",
            str(n).translate(FULL_WIDTH), f"First 3, then 4; so {n}", f"#### {n}", f"= {n} apples"]


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-10**9, max_value=10**9))
def test_any_integer_in_any_shape_is_read_back(n):
    for text in _shapes(n):
        found = final_number(text)
        assert found is not None and found.value == n, text


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-999, max_value=999), st.integers(min_value=1, max_value=999))
def test_a_fraction_matches_its_decimal(numerator, denominator):
    fraction = f"-{abs(numerator)}/{denominator}" if numerator < 0 else f"{numerator}/{denominator}"
    assert final_number(fraction).value == pytest.approx(numerator / denominator)
    decimal = f"{Fraction(numerator, denominator).__float__():.8f}"
    assert exact_match(decimal, fraction).correct is True


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_numbers_match_is_symmetric(a, b):
    x, y = FoundNumber(a, str(a)), FoundNumber(b, str(b), percent=True)
    assert numbers_match(x, y) == numbers_match(y, x)


WORDS = st.sampled_from(["the", "a", "Cat", "cat!", "27", "3.5", "苹果", "个", "Paris", "naïve", "🍎", ",", "and"])


@settings(max_examples=200, deadline=None)
@given(st.lists(WORDS, max_size=8), st.lists(WORDS, max_size=8))
def test_f1_is_symmetric_bounded_and_one_on_itself(answer, reference):
    a, r = " ".join(answer), " ".join(reference)
    assert token_f1(a, r) == pytest.approx(token_f1(r, a))
    assert 0.0 <= token_f1(a, r) <= 1.0
    assert token_f1(a, a) == 1.0
    assert token_f1(a.upper(), r) == pytest.approx(token_f1(a, r))  # case never counts
