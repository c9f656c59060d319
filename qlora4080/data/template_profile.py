"""What a chat template does with an assistant turn, learned once per tokenizer and template.

Shared by the exact path (render.py) and the one-render path (fast_masks.py).
A few probe conversations with sentinel answers are rendered to learn:

- the generation prompt G: what add_generation_prompt adds (`<|im_start|>assistant\\n`);
- the assistant header H: the part of G that the template also writes before
  an assistant turn in a rendered conversation. Usually H == G. DeepSeek
  prompts with `<｜Assistant｜><think>\\n` but writes `<｜Assistant｜>` + answer;
  Nemotron 3 prompts with `...assistant\\n<think>\\n` but writes
  `...assistant\\n<think></think>answer`. Training starts each turn after H.
- the end-of-turn markers ("closers") that follow an answer: `<|im_end|>`,
  `<|eot_id|>`, `<|end|>`, and where the template ends the last turn or a
  tool call differently (gpt-oss: `<|end|>` in history, `<|return|>` last,
  `<|call|>` after a tool call), each of them;
- what the template appends after the last message without a generation
  prompt (Phi-3: EOS), which is never trained;
- whether it renders an answer's reasoning in every turn, only the last one
  (Qwen3, Nemotron 3, gpt-oss) or never (DeepSeek-R1 cuts it at `</think>`).

Where G != H the template's warnings say so, once: training starts each turn
after H as the full render shows it; inference keeps prompting with G.

A template is refused (TemplateError) only when this cannot be learned: it
ignores add_generation_prompt, its generation prompt shares nothing with how it
starts an assistant turn, or it does not render assistant text at all.
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from .templates import (
    MARKUP,
    REASONING_KEYS,
    TemplateError,
    TemplateRefusal,
    marker_tokens,
    render_text,
)
from .vocabulary import Message

if TYPE_CHECKING:
    from .templates import Tokenizer

ONE, TWO = "qlora-probe-answer-one", "qlora-probe-answer-two"
THOUGHT = "qlora-probe-thought"
TOOL = "qlora_probe_tool"
TEMPLATE_HINT = "set [model] chat_template to the model's own template (a .jinja file)"


@dataclass
class TemplateProfile:
    """What one chat template writes around an assistant turn (see the module docstring)."""

    generation_prompt: str
    header: str
    closers: tuple[str, ...]  # end-of-turn markers after a plain answer (in history and as the last turn)
    tool_closers: tuple[str, ...]  # ... after a turn that ends with tool calls
    end_suffix: str  # appended after the last message when there is no generation prompt (Phi-3: EOS)
    reasoning: str  # "kept", "last turn only", "dropped" or "unknown": what the template does with reasoning
    warnings: tuple[str, ...]
    closer_pattern: re.Pattern[str] | None
    tool_closer_pattern: re.Pattern[str] | None

    def limit(self, text: str) -> int:
        """Where the last message's rendering ends: before what the template appends at the very end."""
        if self.end_suffix and text.endswith(self.end_suffix):
            return len(text) - len(self.end_suffix)
        return len(text)


class _ProbeRender(Protocol):
    def __call__(self, messages: list[Message], add_generation_prompt: bool = False) -> str: ...


_PROFILES: weakref.WeakKeyDictionary[Tokenizer, dict[str, TemplateProfile]] = weakref.WeakKeyDictionary()


def template_profile(tokenizer: Tokenizer, examples: Sequence[Sequence[Message]] = ()) -> TemplateProfile:
    """The template's profile, learned once per tokenizer and template; TemplateError when it cannot be mapped.

    `examples` (conversations of the dataset) are used as probes when the
    template refuses the built-in probe conversation.
    """
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        render_text(tokenizer, [], None, False)  # raises the "no chat template" TemplateError
    try:
        known = _PROFILES.setdefault(tokenizer, {})
    except TypeError:
        known = {}
    key = str(template)
    if key not in known:
        known[key] = _learn(tokenizer, examples)
    return known[key]


def template_warnings(tokenizer: Tokenizer) -> list[str]:
    """Once-per-template warnings about how masks are built for this tokenizer's chat template ([] when none).

    Cheap after the first call (cached); raises TemplateError for a template that cannot be mapped.
    """
    return list(template_profile(tokenizer).warnings)


def _openings(examples: Sequence[Sequence[Message]]) -> list[list[Message]]:
    """Probe openings: a plain user turn, then the messages before the first answer of a few examples."""
    openings: list[list[Message]] = [[{"role": "user", "content": "Hi"}]]
    for messages in examples[:3]:
        roles = [m.get("role") for m in messages]
        if "assistant" in roles and roles.index("assistant") > 0:
            openings.append(list(messages[: roles.index("assistant")]))
    return openings


def _learn(tokenizer: Tokenizer, examples: Sequence[Sequence[Message]]) -> TemplateProfile:
    refusal: TemplateRefusal | None = None
    for opening in _openings(examples):
        try:
            return _learn_from(tokenizer, opening)
        except TemplateRefusal as exc:  # the template refuses this probe: try the next opening
            refusal = refusal or exc
    assert refusal is not None
    raise TemplateError(f"the chat template refuses every probe conversation ({refusal.message})",
                        hint=TEMPLATE_HINT)


def _learn_from(tokenizer: Tokenizer, opening: list[Message]) -> TemplateProfile:
    def render(messages: list[Message], add_generation_prompt: bool = False) -> str:
        return render_text(tokenizer, messages, None, add_generation_prompt)

    prompt, bare = render(opening, True), render(opening)
    shared = _token_boundary(len(os.path.commonprefix([prompt, bare])), (prompt, bare), marker_tokens(tokenizer))
    generation_prompt, end_suffix = prompt[shared:], bare[shared:]
    if not generation_prompt:
        raise TemplateError(
            "the chat template ignores add_generation_prompt, so the assistant header cannot be told apart from the answer",
            hint="set [model] chat_template to a template that writes the assistant header when add_generation_prompt is true",
        )
    markers = marker_tokens(tokenizer)
    body = prompt[: len(prompt) - len(generation_prompt)]
    one: list[Message] = [*opening, {"role": "assistant", "content": ONE}]
    full = render(one)  # the answer as the last turn
    base = _base(full, body, opening)
    if base is None or full.find(ONE, base) < 0:
        raise TemplateError(
            "the chat template does not render an assistant answer after the conversation before it "
            f"(probe: {full[-200:]!r}), so trained tokens cannot be located", hint=TEMPLATE_HINT)
    starts = [full[base:]]
    after = [full[full.find(ONE, base) + len(ONE):]]
    try:  # the answer as an earlier turn, with another exchange after it
        two = render(one + [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": TWO}])
        base_two = _base(two, body, opening)
        if base_two is not None and two.find(ONE, base_two) >= 0:
            starts.append(two[base_two:])
            after = [two[two.find(ONE, base_two) + len(ONE):], two[two.rfind(TWO) + len(TWO):]]
    except TemplateRefusal:
        pass
    # Qwen3.5 prompts with `<think>\n`, which only its last turn shows: the header is what every turn starts with.
    header = _snap(os.path.commonprefix([generation_prompt, *starts]), generation_prompt, markers)
    if not header:
        raise TemplateError(
            f"the chat template's generation prompt {generation_prompt!r} shares nothing with how it starts an assistant "
            f"turn in a conversation ({full[base:full.find(ONE, base)]!r}), so the assistant header cannot be told "
            "apart from the answer", hint=TEMPLATE_HINT)
    closers: list[str] = []
    for text in after:
        closer = _closer_at_start(text, markers)
        if closer and closer not in closers:
            closers.append(closer)
    tool_closers = _tool_closers(render, opening, markers, end_suffix) or closers
    reasoning = _reasoning_handling(render, opening)
    warnings = []
    if header != generation_prompt:
        extra = generation_prompt[len(header):]
        warnings.append(
            f"the chat template's generation prompt adds {extra!r} after the assistant header {header!r}, but it renders "
            f"assistant turns in a conversation as {header!r} + answer without it: every assistant turn is trained "
            f"from right after {header!r}, as the full conversation renders it; chat, eval and export still prompt with "
            f"the template's generation prompt ({generation_prompt!r})")
    if not closers:
        warnings.append("the chat template writes no end-of-turn marker after an answer: turns are trained up to the "
                        "tokenizer's first special token after the answer, or to the answer's end")
    return TemplateProfile(
        generation_prompt=generation_prompt, header=header, closers=tuple(closers), tool_closers=tuple(tool_closers),
        end_suffix=end_suffix, reasoning=reasoning, warnings=tuple(warnings),
        closer_pattern=_pattern(closers), tool_closer_pattern=_pattern(tool_closers),
    )


def _base(full: str, body: str, opening: list[Message]) -> int | None:
    """Where the assistant turn starts in `full`: after `body`, the conversation before it as the prompt renders it."""
    if full.startswith(body):
        return len(body)
    last = opening[-1].get("content") if opening else None
    return after_tail(full, body, 0, last if isinstance(last, str) else None)


def after_tail(full: str, body: str, cursor: int, previous: str | None, then: str = "") -> int | None:
    """Position in `full` (from `cursor`) right after the text `body` ends with, followed by `then`; or None.

    For a template that renders earlier turns differently once more follow:
    the message just before an assistant turn is rendered the same either way,
    so the end of `body` (from that message's text on, or its last 64/32
    characters) is found in `full` after the previous turn.
    """
    tails = []
    if previous and previous.strip() and (at := body.rfind(previous.strip())) >= 0:
        tails.append(body[at:])
    tails += [body[-size:] for size in (64, 32) if len(body) >= size]
    for tail in tails:
        found = full.find(tail, cursor)
        while found >= 0:
            if full.startswith(then, found + len(tail)):
                return found + len(tail)
            found = full.find(tail, found + 1)
    return None


def _token_boundary(position: int, texts: tuple[str, ...], markers: tuple[str, ...]) -> int:
    """`position` moved back to the start of a marker it falls inside (`<|assistant|>` vs `<|endoftext|>` share `<|`)."""
    moved = True
    while moved:
        moved = False
        for text in texts:
            spans = [m.span() for m in MARKUP.finditer(text, max(0, position - 64), position + 64)]
            spans += [(at, at + len(m)) for m in markers if 0 <= (at := text.rfind(m, 0, position)) < position < at + len(m)]
            for begin, end in spans:
                if begin < position < end:
                    position, moved = begin, True
    return position


def _snap(common: str, generation_prompt: str, markers: tuple[str, ...]) -> str:
    """The header: the generation prompt where history writes all of it; else the shared text cut back to its last
    line break, or to the end of its last whole marker token (`<｜Assistant｜>`)."""
    if common == generation_prompt:
        return common
    if "\n" in common:
        return common[: common.rfind("\n") + 1]
    if any(common.endswith(m) for m in markers) or re.search(MARKUP.pattern + r"\Z", common):
        return common
    ends = [common.rfind(m) + len(m) for m in markers if m in common]
    return common[: max(ends)] if ends else common


def _closer_at_start(text: str, markers: tuple[str, ...]) -> str | None:
    for marker in markers:
        if text.startswith(marker):
            return marker
    match = MARKUP.match(text)
    return match.group(0) if match else None


def _closer_at_end(text: str, markers: tuple[str, ...]) -> str | None:
    for marker in markers:
        if text.endswith(marker):
            return marker
    match = re.search(MARKUP.pattern + r"\Z", text)
    return match.group(0) if match else None


def _tool_closers(render: _ProbeRender, opening: list[Message], markers: tuple[str, ...], end_suffix: str) -> list[str]:
    """The marker that ends a turn of tool calls, when the template renders tool calls (else [])."""
    city = {"city": "Oslo"}
    for content, arguments in ((None, city), ("", city), (None, '{"city": "Oslo"}')):
        # A turn of only tool calls carries content None in real data, which Message does not spell out.
        message = cast(Message, {"role": "assistant", "content": content, "tool_calls": [
            {"type": "function", "function": {"name": TOOL, "arguments": arguments}}]})
        try:
            text = render([*opening, message])
        except TemplateRefusal:
            continue
        if TOOL not in text:
            continue  # this form of tool call is ignored (DeepSeek-R1 renders them only without content)
        if end_suffix and text.endswith(end_suffix):
            text = text[: -len(end_suffix)]
        closer = _closer_at_end(text.rstrip(), markers)
        return [closer] if closer else []
    return []


def _reasoning_handling(render: _ProbeRender, opening: list[Message]) -> str:
    """Does the template render an assistant turn's reasoning: in every turn, only the last one, or never?"""
    # The reasoning under each key templates read it from ("thinking" and "reasoning" are not Message fields).
    forms = [cast(Message, {"role": "assistant", key: THOUGHT, "content": ONE}) for key in REASONING_KEYS]
    forms.append({"role": "assistant", "content": f"<think>\n{THOUGHT}\n</think>\n\n{ONE}"})
    for form in forms:
        last = [*opening, form]
        try:
            if THOUGHT not in render(last):
                continue
            earlier = render([*last, {"role": "user", "content": "Bye"}, {"role": "assistant", "content": TWO}])
        except TemplateRefusal:
            continue
        return "kept" if THOUGHT in earlier else "last turn only"
    return "dropped"


def _pattern(closers: Sequence[str]) -> re.Pattern[str] | None:
    ordered = sorted(set(closers), key=len, reverse=True)
    return re.compile("|".join(re.escape(c) for c in ordered)) if ordered else None


__all__ = ["TemplateProfile", "after_tail", "template_profile", "template_warnings"]
