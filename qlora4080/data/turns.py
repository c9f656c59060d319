"""Where an assistant turn's trained text lies in a rendered conversation, and what was found doing it.

A turn's trained text runs from right after its assistant header (found by
render.py from the prompt prefix, or by fast_masks.py in the one render) to
the end of its end-of-turn marker, as the FULL conversation renders it:

- the answer is located first (the content, or what follows `</think>` when
  the template splits reasoning off, as Qwen3, DeepSeek and Nemotron do), so a
  marker written inside an answer (`"Here: <|im_end|> done."`) does not end it;
- then the first end-of-turn marker after it ends the turn (the tool-call marker
  for a turn of tool calls: gpt-oss `<|call|>`).

An earlier turn is trained as the full render shows it (DeepSeek-R1 and
Qwen3 drop its reasoning; Phi-3 adds EOS only after the last turn, which is
never trained). A non-final turn's answer is only accepted before any
end-of-turn marker, so it is never found in a later message.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from .template_profile import TemplateProfile
from .templates import REASONING_KEYS
from .vocabulary import Message

STRATEGIES = {
    "prefix": "after the prompt's prefix render",
    "full render": "searched in the full render, the template rendering earlier turns differently once more follow",
    "fast": "in one render, checked against the exact path on a sample",
}


@dataclass
class Span:
    start: int
    end: int
    closed: bool  # ends with an end-of-turn marker the template writes
    reasoning: bool | None  # None: the message has no reasoning; else whether the trained text holds it


Notes = dict[int, tuple[list[str], list[Span]]]
"""record index -> (how each of its trained turns was located: a STRATEGIES key, and the turn's span)."""


def reasoning_text(message: Message) -> str | None:
    """The reasoning an assistant message carries (a reasoning field, or a `<think>` block in its content)."""
    fields: Mapping[str, object] = message  # "thinking" and "reasoning" are read too, though Message does not name them
    for key in REASONING_KEYS:
        value = fields.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    content = message.get("content")
    if isinstance(content, str) and "</think>" in content:
        inner = content.split("</think>")[0].split("<think>")[-1].strip()
        return inner or None
    return None


def turn_span(text: str, start: int, limit: int, message: Message, is_last: bool,
              profile: TemplateProfile, fallback: re.Pattern[str] | None) -> Span | None:
    """The trained span of one assistant turn whose answer starts at `start` (its header just before), or None.

    `limit` is where the turn must end (the next assistant header, or the end
    of the conversation before what the template appends there); `fallback`
    matches the tokenizer's special tokens, for a template without a learned
    end-of-turn marker.
    """
    closers = (profile.tool_closer_pattern if message.get("tool_calls") else profile.closer_pattern) or fallback
    content = message.get("content")
    content = content if isinstance(content, str) else None
    reasoning = None
    fields: Mapping[str, object] = message  # "thinking" and "reasoning" are read too, though Message does not name them
    if (fields.get("reasoning_content") or fields.get("thinking") or fields.get("reasoning")
            or (content is not None and "</think>" in content)):  # REASONING_KEYS, spelled out: this runs per turn
        reasoning = reasoning_text(message)
    position, anchored = start, False
    if content is not None and (anchor := content.strip()):
        candidates = [anchor]
        if "</think>" in anchor:  # the template may render only what follows the reasoning
            candidates.append(anchor.rsplit("</think>", 1)[1].strip())
        for anchor in candidates:
            found = text.find(anchor, start, limit) if anchor else -1
            # A non-final turn's answer only counts before its end-of-turn marker: never in a later message.
            if found >= 0 and (is_last or closers is None or _clear(text, start, found, closers, reasoning)):
                position, anchored = found + len(anchor), True
                break
    match = closers.search(text, position, limit) if closers is not None else None
    if match:
        end, closed = match.end(), True
    elif is_last:
        end, closed = start + len(text[start:limit].rstrip()), False
    elif anchored:
        end, closed = position, False
    else:
        return None
    if end <= start:
        return None
    return Span(start, end, closed, None if reasoning is None else reasoning in text[start:end])


def _clear(text: str, a: int, b: int, closers: re.Pattern[str], reasoning: str | None) -> bool:
    """No end-of-turn marker in text[a:b], reasoning rendered there aside."""
    if reasoning and (r := text.find(reasoning, a, b)) >= 0:
        return not closers.search(text, a, r) and not closers.search(text, r + len(reasoning), b)
    return not closers.search(text, a, b)


@dataclass
class MaskReport:
    """What building the masks of a dataset found: how turns were located, and warnings worth printing once.

    Pass one to `render_or_reject(..., report=report)` (or `render_or_raise`)
    and print `report.lines()` (or just `report.warnings()`) after it.
    """

    turns: Counter[str] = field(default_factory=Counter)  # strategy -> trained assistant turns located that way
    conversations: int = 0  # conversations rendered (dropped ones included)
    fast: int = 0  # ... of which took the one-render path
    reasoning_turns: int = 0  # trained assistant turns whose message carries reasoning
    reasoning_dropped: int = 0  # ... whose reasoning the chat template does not render in that turn
    reasoning_handling: str = ""  # the template's: "kept", "last turn only", "dropped"
    template_warnings: list[str] = field(default_factory=list)
    folded_system: int = 0  # conversations whose system prompt opened the first user turn (template refuses system)
    train_on: str = ""
    per_record: bool = False  # keep each record's strategies (data preview)
    record_strategies: dict[int, str] = field(default_factory=dict)

    def add_template(self, profile: TemplateProfile) -> None:
        self.reasoning_handling = profile.reasoning
        for warning in profile.warnings:
            if warning not in self.template_warnings:
                self.template_warnings.append(warning)

    def count(self, index: int, strategies: list[str], spans: list[Span]) -> None:
        self.turns.update(strategies)
        for span in spans:
            if span.reasoning is not None:
                self.reasoning_turns += 1
                self.reasoning_dropped += not span.reasoning
        if self.per_record:
            self.record_strategies[index] = " + ".join(sorted(set(strategies))) or "-"

    def warnings(self) -> list[str]:
        """Each warning once: the template's own, then what this data ran into."""
        found = list(self.template_warnings)
        if self.folded_system:
            found.append(f"the chat template refuses a system role: the system prompt of {self.folded_system} "
                         "conversation(s) was folded into their first user turn (chat and eval do the same)")
        if self.turns["full render"]:
            found.append(
                f"the chat template renders a conversation differently once later messages follow ({self.turns['full render']} "
                "assistant turns): those turns were located in the full render and train what it shows, but chat and eval "
                "prompts show earlier turns the way the template renders a conversation cut there")
        if self.reasoning_dropped:
            where = {"last turn only": "keeps reasoning only in the last assistant turn",
                     "dropped": "does not render reasoning"}.get(self.reasoning_handling, "drops that reasoning")
            found.append(
                f"{self.reasoning_dropped} of {self.reasoning_turns} trained assistant turns that carry reasoning are "
                f"rendered without it by the chat template (it {where}): they train their answer only")
        return found

    def lines(self) -> list[str]:
        """A summary of how the masks were built ('masks: ...'), then each warning ('warning: ...')."""
        if self.train_on == "all":
            summary = "masks: every token trained (train_on = all)"
        elif self.turns:
            parts = [f'{count} by "{name}" ({STRATEGIES.get(name, name)})' for name, count in sorted(self.turns.items())]
            summary = f"masks: {sum(self.turns.values())} assistant turns located: " + "; ".join(parts)
        else:
            summary = "masks: no assistant turn located"
        return [summary] + [f"warning: {w}" for w in self.warnings()]

    def merge(self, other: MaskReport) -> None:
        self.turns.update(other.turns)
        self.conversations += other.conversations
        self.fast += other.fast
        self.folded_system += other.folded_system
        self.reasoning_turns += other.reasoning_turns
        self.reasoning_dropped += other.reasoning_dropped
        self.reasoning_handling = other.reasoning_handling or self.reasoning_handling
        self.train_on = other.train_on or self.train_on
        for warning in other.template_warnings:
            if warning not in self.template_warnings:
                self.template_warnings.append(warning)
        self.record_strategies.update(other.record_strategies)
