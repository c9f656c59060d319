"""Task metrics on generated answers: exact match of the final number (math) and SQuAD-style token F1.

Pure functions, no model: each rule below is unit-tested on answer shapes.

Which records get which metric (by their `tags`, as the data build writes them):
- tagged "math": exact match. The final number of the generated answer is
  compared with the final number of the reference (the record's last assistant
  turn). A reference without a number is not counted.
- tagged "math", "short" or "short_answer": token F1 of the whole answer
  against the reference. Math references are short final answers ("27"), so F1
  gives partial credit where exact match gives none, and it falls as an answer
  pads the number with words.

The final number of a text is, in this order: the last number inside the last
`\\boxed{...}`; else the first number after the last answer marker ("answer
is", "answer:", "answer =", "答案是", "答案为", "答案：", "答：", "####"); else
the last number in the text. Full-width and other-script digits count as
digits; "1,000" (groups of three) is one thousand; "3/4", "1 1/2", "½" and
LaTeX `\\frac{3}{4}` are fractions; "-5" is negative unless the minus follows a
digit or letter ("10-3" is a difference); "%" marks a percent. Not read:
numbers written in words or Chinese numerals, scientific notation.

Two numbers match when math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6); a
percent matches by its face value or by its value / 100 ("50%" matches "50"
and "0.5").

Token F1 (SQuAD v1.1 rules, plus CJK): NFKC, lowercase, delete punctuation
(ASCII punctuation and every Unicode punctuation character), drop the articles
a/an/the, split on whitespace; then every Han, Hiragana or Katakana character
is a token of its own, since those scripts do not separate words by spaces
(other characters stay in runs: "27个苹果" -> "27", "个", "苹", "果"). F1 is the
harmonic mean of precision and recall over the multiset of shared tokens; when
either side has no token, it is 1.0 if both have none, else 0.0.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

EXACT_MATCH_TAGS = frozenset({"math"})
F1_TAGS = frozenset({"math", "short", "short_answer"})

RELATIVE_TOLERANCE = 1e-4
ABSOLUTE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class FoundNumber:
    """A number read from text."""

    value: float
    """Its value; for "50%" this is 50 (see `percent`)."""
    text: str
    """As written (digits made ASCII), e.g. "3/4", "-1,000", "50%"."""
    percent: bool = False


@dataclass(frozen=True)
class ExactMatch:
    """One answer against its reference."""

    answer: FoundNumber | None
    reference: FoundNumber | None
    correct: bool | None
    """None when the reference has no number: the record is not counted."""


def wants_exact_match(tags: Iterable[str]) -> bool:
    return not EXACT_MATCH_TAGS.isdisjoint(tags)


def wants_f1(tags: Iterable[str]) -> bool:
    return not F1_TAGS.isdisjoint(tags)


def exact_match(answer: str, reference: str) -> ExactMatch:
    """Does the final number of the answer equal the final number of the reference?"""
    expected = final_number(reference)
    found = final_number(answer)
    correct = None if expected is None else found is not None and numbers_match(found, expected)
    return ExactMatch(answer=found, reference=expected, correct=correct)


def numbers_match(a: FoundNumber, b: FoundNumber) -> bool:
    return any(math.isclose(x, y, rel_tol=RELATIVE_TOLERANCE, abs_tol=ABSOLUTE_TOLERANCE)
               for x in _readings(a) for y in _readings(b))


def _readings(number: FoundNumber) -> tuple[float, ...]:
    return (number.value, number.value / 100) if number.percent else (number.value,)


@dataclass
class TaskTally:
    """Exact match and F1 over one model's answers, record by record."""

    counted: int = 0
    """Records scored for exact match (tagged math, with a number in the reference)."""
    correct: int = 0
    unscored: int = 0
    """Records tagged math whose reference has no number."""
    f1_scores: list[float] = field(default_factory=list)

    def add(self, tags: Iterable[str], answer: str, reference: str) -> dict[str, object]:
        """Score one answer by its record's tags; returns the fields for its per-record row (none when untagged)."""
        tags = set(tags)
        row: dict[str, object] = {}
        if wants_exact_match(tags):
            match = exact_match(answer, reference)
            row["answer_number"] = match.answer.text if match.answer else None
            row["reference_number"] = match.reference.text if match.reference else None
            if match.correct is None:
                self.unscored += 1
            else:
                row["exact_match"] = match.correct
                self.counted += 1
                self.correct += match.correct
        if wants_f1(tags):
            f1 = token_f1(answer, reference)
            row["f1"] = f1
            self.f1_scores.append(f1)
        return row

    def metrics(self) -> dict[str, float | int]:
        """Aggregate metrics; a metric no record was tagged for is absent."""
        result: dict[str, float | int] = {}
        if self.counted:
            result |= {"exact_match_rate": self.correct / self.counted, "exact_match_records": self.counted}
        if self.unscored:
            result["exact_match_unscored"] = self.unscored
        if self.f1_scores:
            result |= {"token_f1": sum(self.f1_scores) / len(self.f1_scores), "f1_records": len(self.f1_scores)}
        return result


# ---- reading numbers -------------------------------------------------------------------------------

_WIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}  # full-width ASCII forms: "１２％" -> "12%"
_WIDTH.update({0x3000: ord(" "), 0x2212: ord("-"), 0x2044: ord("/"), 0x2215: ord("/")})  # ideographic space, minus, slashes

_NUMBER = re.compile(r"""
    (?<![0-9A-Za-z.])                                   # not inside a word, a number or a version string
    (?P<sign>[-+])?
    (?:
        (?P<whole>\d+)[ \t]+(?P<mixed_num>\d+)[ \t]*/[ \t]*(?P<mixed_den>\d+)     # 1 1/2
      | (?P<num>\d+(?:\.\d+)?)[ \t]*/[ \t]*(?P<den>\d+(?:\.\d+)?)                  # 3/4, 1.5/3
      | (?P<decimal>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)             # 1,000.5  12  3.5  .5
    )
    (?P<percent>[ \t]*%)?
    (?![0-9])
""", re.VERBOSE | re.ASCII)

_ANSWER_MARKER = re.compile(r"answer\s*(?:is\b|was\b|[:=])|答案\s*(?:是|为|為|[:=])|答\s*[:=]|####", re.IGNORECASE)

_LATEX = [
    (re.compile(r"(-)?\s*\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}"), r" \1\2/\3"),  # -\frac{3}{4} -> -3/4
    (re.compile(r"(-)?\s*\\[dt]?frac\s*(\d)\s*(\d)"), r" \1\2/\3"),  # \frac34
    (re.compile(r"\\(?:text|mathrm|mathbf|textbf)\s*\{([^{}]*)\}"), r" \1 "),
    (re.compile(r"\{,\}|\\[,!; ]"), ""),  # 1{,}000 and 1\,000: LaTeX thousands separators and thin spaces
    (re.compile(r"\\%"), "%"),
    (re.compile(r"\\(?:left|right)\b"), ""),
]


def final_number(text: str) -> FoundNumber | None:
    """The number a text gives as its answer (see the module docstring for the order), or None."""
    plain = _ascii_digits(text)
    boxed = _last_boxed(plain)
    if boxed is not None:
        inside = _numbers(_strip_latex(boxed))
        if inside:
            return inside[-1]
    plain = _strip_latex(plain)
    markers = list(_ANSWER_MARKER.finditer(plain))
    if markers:
        after = _numbers(plain[markers[-1].end():])
        if after:
            return after[0]
    numbers = _numbers(plain)
    return numbers[-1] if numbers else None


def marked_answer(text: str) -> bool:
    """Does the text mark its final answer: a number inside \\boxed{...}, or a number after an answer marker?"""
    plain = _ascii_digits(text)
    boxed = _last_boxed(plain)
    if boxed is not None and _numbers(_strip_latex(boxed)):
        return True
    plain = _strip_latex(plain)
    return any(_numbers(plain[marker.end():]) for marker in _ANSWER_MARKER.finditer(plain))


def _numbers(text: str) -> list[FoundNumber]:
    found = []
    for match in _NUMBER.finditer(text):
        value = _value(match)
        if value is None:
            continue
        sign = match.group("sign") or ""
        if sign == "-":
            value = -value
        written = re.sub(r"[ \t]+", " ", match.group(0)).replace(" %", "%")
        found.append(FoundNumber(value=value, text=written, percent=match.group("percent") is not None))
    return found


def _value(match: re.Match[str]) -> float | None:
    """The unsigned value of a number match; None for a fraction over zero."""
    if match.group("decimal") is not None:
        return float(match.group("decimal").replace(",", ""))
    if match.group("whole") is not None:
        numerator, denominator = float(match.group("mixed_num")), float(match.group("mixed_den"))
        return None if denominator == 0 else float(match.group("whole")) + numerator / denominator
    numerator, denominator = float(match.group("num")), float(match.group("den"))
    return None if denominator == 0 else numerator / denominator


def _ascii_digits(text: str) -> str:
    """Full-width forms and other scripts' decimal digits as ASCII; "3½" as "3 1/2"."""
    out = []
    for char in text.translate(_WIDTH):
        if char.isdecimal() and not char.isascii():
            out.append(str(unicodedata.decimal(char)))
        elif unicodedata.name(char, "").startswith("VULGAR FRACTION"):
            out.append(" " + unicodedata.normalize("NFKC", char).replace("\u2044", "/"))
        else:
            out.append(char)
    return "".join(out)


def _strip_latex(text: str) -> str:
    for pattern, replacement in _LATEX:
        text = pattern.sub(replacement, text)
    return text


def _last_boxed(text: str) -> str | None:
    """The contents of the last \\boxed{...} (or \\fbox{...}), nested braces included; None without one."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    start = starts[-1]
    depth = 1
    for index in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[start:index]
    return text[start:]  # unclosed (a cut-off answer): everything after the brace


# ---- token F1 ----------------------------------------------------------------------------------------

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
_CJK_OR_RUN = re.compile(f"[{_CJK}]|[^{_CJK}]+")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_ASCII_PUNCTUATION = frozenset(string.punctuation)


def f1_tokens(text: str) -> list[str]:
    """SQuAD normalization, then whitespace tokens with each CJK character split out."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(c for c in text if c not in _ASCII_PUNCTUATION and not unicodedata.category(c).startswith("P"))
    text = _ARTICLES.sub(" ", text)
    return [piece for word in text.split() for piece in _CJK_OR_RUN.findall(word)]


def token_f1(answer: str, reference: str) -> float:
    """Harmonic mean of token precision and recall (shared tokens counted with multiplicity)."""
    predicted, expected = f1_tokens(answer), f1_tokens(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    shared = sum((Counter(predicted) & Counter(expected)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted), shared / len(expected)
    return 2 * precision * recall / (precision + recall)
