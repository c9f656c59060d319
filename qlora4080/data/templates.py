"""Chat-template primitives shared by the exact path (exact_masks.py) and the one-render path (fast_masks.py).

Rendering exactly as transformers does, the tokenizer's special, marker and
whitespace-stripping tokens, the errors a template can cause, and what a
rendered conversation is. The template compiled for many fast renders is in
compiled_template.py; what a template does around an assistant turn is
learned in template_profile.py.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, TypedDict, cast

from ..errors import QloraError
from .vocabulary import IGNORE_INDEX, TRAIN_ON_CHOICES, Message, TrainOn

if TYPE_CHECKING:
    from typing import TypeAlias

    from transformers import PreTrainedTokenizerBase

    Tokenizer: TypeAlias = PreTrainedTokenizerBase

Tools = list[dict[str, object]]
"""Tool (function) definitions a record offers the model, as chat templates read them."""

Render = Callable[[Sequence[Message], Tools | None, bool], str]
"""render(messages, tools, add_generation_prompt) -> the conversation as text."""

REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
MARKUP = re.compile(r"<[^<>\s]{1,64}>")  # what an end-of-turn marker looks like when the tokenizer lacks it


class Rendered(TypedDict):
    """One conversation as training sees it: token ids, and the same ids as labels where they carry loss."""

    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on every token that must not carry loss


Outcome = Rendered | QloraError
"""One conversation's ids and labels, or the error that rejects that record."""


class TemplateError(QloraError):
    """The chat template cannot be mapped to prompt and answer at all: the template's fault, so the dataset stops."""


class TemplateRefusal(QloraError):
    """The chat template raised on one conversation (jinja `raise_exception`, a role it does not support).

    Unlike TemplateError this is about the record, not the template: the record
    is dropped with this reason and the others go on.
    """


def render_text(tokenizer: Tokenizer, messages: Sequence[Message], tools: Tools | None,
                add_generation_prompt: bool) -> str:
    """The chat template applied exactly as transformers applies it (what chat and eval use too)."""
    if not getattr(tokenizer, "chat_template", None):  # no conversation could render: stop, not drop each one
        raise TemplateError(
            "the tokenizer has no chat template",
            hint="use an instruct/chat model, or set [model] chat_template to a .jinja file",
        )
    try:
        # transformers annotates the conversation as plain string dicts; templates read every Message field.
        text = tokenizer.apply_chat_template(cast("list[dict[str, str]]", list(messages)),
                                             tools=cast("list[dict[str, object] | Callable[..., object]]", tools),
                                             tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja raise_exception(...) and friends: about this conversation, not the template
        raise TemplateRefusal(f"the chat template refused the conversation: {exc}") from exc
    return cast(str, text)  # tokenize=False: always the text


_TOKENS_CACHE: weakref.WeakKeyDictionary[Tokenizer, tuple[tuple[str, ...], tuple[str, ...]]] = (
    weakref.WeakKeyDictionary())


def _token_sets(tokenizer: Tokenizer) -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        return _TOKENS_CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    added = set(special)
    for token in getattr(tokenizer, "added_tokens_decoder", {}).values():
        added.add(str(token.content))
        if getattr(token, "special", False):
            special.add(str(token.content))
    result = (_longest_first(special), _longest_first(added))
    try:
        _TOKENS_CACHE[tokenizer] = result
    except TypeError:
        pass
    return result


def _longest_first(names: set[str]) -> tuple[str, ...]:
    return tuple(sorted((n for n in names if n), key=lambda n: (-len(n), n)))


def special_tokens(tokenizer: Tokenizer) -> tuple[str, ...]:
    """Special tokens of the tokenizer (named ones and added ones marked special), longest first."""
    return _token_sets(tokenizer)[0]


def marker_tokens(tokenizer: Tokenizer) -> tuple[str, ...]:
    """Every token the tokenizer matches as a whole before splitting (added tokens, special or not), longest first."""
    return _token_sets(tokenizer)[1]


# What the tokenizers library strips next to an added token with rstrip / lstrip: Rust's char::is_whitespace
# (Python's str.isspace also counts \x1c-\x1f, which it keeps).
STRIPPED_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"


class StripMarkers(NamedTuple):
    """Added tokens that swallow the whitespace beside them (Phi-3's `<|end|>`, `<|user|>`... strip on the right)."""

    right: tuple[str, ...]  # rstrip: the whitespace after the token is part of its match
    left: tuple[str, ...]  # lstrip: the whitespace before it


_STRIP_CACHE: weakref.WeakKeyDictionary[Tokenizer, StripMarkers] = weakref.WeakKeyDictionary()


def strip_markers(tokenizer: Tokenizer) -> StripMarkers:
    """The tokenizer's added tokens that strip whitespace on their right or left (none for most tokenizers)."""
    try:
        return _STRIP_CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    tokens = list(getattr(tokenizer, "added_tokens_decoder", {}).values())
    result = StripMarkers(_longest_first({str(t.content) for t in tokens if getattr(t, "rstrip", False)}),
                          _longest_first({str(t.content) for t in tokens if getattr(t, "lstrip", False)}))
    try:
        _STRIP_CACHE[tokenizer] = result
    except TypeError:
        pass
    return result


_PATTERN_CACHE: weakref.WeakKeyDictionary[Tokenizer, re.Pattern[str] | None] = weakref.WeakKeyDictionary()


def special_pattern(tokenizer: Tokenizer) -> re.Pattern[str] | None:
    """A regex matching the tokenizer's special tokens (longest first), or None when it has none."""
    try:
        return _PATTERN_CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    names = special_tokens(tokenizer)
    pattern = re.compile("|".join(re.escape(n) for n in names)) if names else None
    try:
        _PATTERN_CACHE[tokenizer] = pattern
    except TypeError:
        pass
    return pattern


_SYSTEM_ROLE: weakref.WeakKeyDictionary[Tokenizer, tuple[str, bool]] = weakref.WeakKeyDictionary()


def refuses_system_role(tokenizer: Tokenizer) -> bool:
    """Whether the chat template raises on a system message but renders the same chat without it (Gemma)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    cached = _SYSTEM_ROLE.get(tokenizer)
    if cached is not None and cached[0] == template:
        return cached[1]
    user: Message = {"role": "user", "content": "Hello"}
    try:
        render_text(tokenizer, [{"role": "system", "content": "Be brief."}, user], None, True)
        refuses = False
    except TemplateRefusal:
        try:
            render_text(tokenizer, [user], None, True)
            refuses = True
        except QloraError:
            refuses = False
    except QloraError:
        refuses = False
    _SYSTEM_ROLE[tokenizer] = (template, refuses)
    return refuses


def fold_system_prompt(messages: Sequence[Message], tokenizer: Tokenizer) -> Sequence[Message]:
    """For a template that refuses a system role, open the first user turn with the system text instead.

    That is the usual practice for Gemma, whose template raises "System role not
    supported". Training and chat/eval both render through here, so the model is
    asked the way it was trained. Other templates get the messages unchanged
    (the same object, not a copy).
    """
    if not messages or messages[0].get("role") != "system" or not refuses_system_role(tokenizer):
        return messages
    system = str(messages[0].get("content") or "")
    rest = list(messages[1:])
    for index, message in enumerate(rest):
        if message.get("role") == "user":
            if system:
                rest[index] = {**message, "content": f"{system}\n\n{message.get('content') or ''}"}
            break
    return rest


__all__ = [
    "IGNORE_INDEX",
    "MARKUP",
    "REASONING_KEYS",
    "STRIPPED_WHITESPACE",
    "TRAIN_ON_CHOICES",
    "Message",
    "Outcome",
    "Render",
    "Rendered",
    "StripMarkers",
    "TemplateError",
    "TemplateRefusal",
    "Tools",
    "TrainOn",
    "fold_system_prompt",
    "marker_tokens",
    "refuses_system_role",
    "render_text",
    "special_pattern",
    "special_tokens",
    "strip_markers",
]
