"""Chat-template primitives shared by the exact path (render.py) and the one-render path (fast_masks.py).

Rendering (exactly as transformers does, or through the compiled template),
the tokenizer's special and marker tokens, the errors a template can cause,
and the label constants. What a template does around an assistant turn is
learned in template_profile.py.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from ..errors import QloraError

IGNORE_INDEX = -100
TrainOn = Literal["assistant", "last_assistant", "all"]
TRAIN_ON_CHOICES: tuple[str, ...] = ("assistant", "last_assistant", "all")
REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")
MARKUP = re.compile(r"<[^<>\s]{1,64}>")  # what an end-of-turn marker looks like when the tokenizer lacks it


class TemplateError(QloraError):
    """The chat template cannot be mapped to prompt and answer at all: the template's fault, so the dataset stops."""


class TemplateRefusal(QloraError):
    """The chat template raised on one conversation (jinja `raise_exception`, a role it does not support).

    Unlike TemplateError this is about the record, not the template: the record
    is dropped with this reason and the others go on.
    """


def render_text(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, add_generation_prompt: bool) -> str:
    """The chat template applied exactly as transformers applies it (what chat and eval use too)."""
    if not getattr(tokenizer, "chat_template", None):  # no conversation could render: stop, not drop each one
        raise TemplateError(
            "the tokenizer has no chat template",
            hint="use an instruct/chat model, or set [model] chat_template to a .jinja file",
        )
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja raise_exception(...) and friends: about this conversation, not the template
        raise TemplateRefusal(f"the chat template refused the conversation: {exc}") from exc


def compiled_renderer(tokenizer: Any) -> Callable[[list[dict[str, Any]], Any, bool], str]:
    """render(messages, tools, add_generation_prompt) through the compiled template, set up once for many calls.

    Failures raise TemplateError so that callers can leave the decision to the exact path.
    """
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:  # a transformers without it: the exact path only
        return lambda messages, tools, add_generation_prompt: render_text(tokenizer, messages, tools, add_generation_prompt)
    try:
        compiled = _compile_jinja_template(tokenizer.chat_template)
    except Exception as exc:
        raise TemplateError(f"fast render failed: {exc}") from exc
    specials = dict(tokenizer.special_tokens_map)

    def render(messages: list[dict[str, Any]], tools: Any, add_generation_prompt: bool) -> str:
        try:
            return compiled.render(messages=messages, tools=tools, documents=None,
                                   add_generation_prompt=add_generation_prompt, **specials)
        except Exception as exc:  # let the exact path decide what the template really does
            raise TemplateError(f"fast render failed: {exc}") from exc

    return render


_TOKENS_CACHE: weakref.WeakKeyDictionary[Any, tuple[tuple[str, ...], tuple[str, ...]]] = weakref.WeakKeyDictionary()


def _token_sets(tokenizer: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
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


def special_tokens(tokenizer: Any) -> tuple[str, ...]:
    """Special tokens of the tokenizer (named ones and added ones marked special), longest first."""
    return _token_sets(tokenizer)[0]


def marker_tokens(tokenizer: Any) -> tuple[str, ...]:
    """Every token the tokenizer matches as a whole before splitting (added tokens, special or not), longest first."""
    return _token_sets(tokenizer)[1]


_PATTERN_CACHE: weakref.WeakKeyDictionary[Any, re.Pattern[str] | None] = weakref.WeakKeyDictionary()


def special_pattern(tokenizer: Any) -> re.Pattern[str] | None:
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


__all__ = [
    "IGNORE_INDEX", "MARKUP", "REASONING_KEYS", "TRAIN_ON_CHOICES", "TemplateError", "TemplateRefusal", "TrainOn",
    "compiled_renderer", "marker_tokens", "render_text", "special_pattern", "special_tokens",
]


_SYSTEM_ROLE: weakref.WeakKeyDictionary[Any, tuple[str, bool]] = weakref.WeakKeyDictionary()


def refuses_system_role(tokenizer: Any) -> bool:
    """Whether the chat template raises on a system message but renders the same chat without it (Gemma)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    cached = _SYSTEM_ROLE.get(tokenizer)
    if cached is not None and cached[0] == template:
        return cached[1]
    user = {"role": "user", "content": "Hello"}
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


def fold_system_prompt(messages: Sequence[Mapping[str, Any]], tokenizer: Any) -> Sequence[Mapping[str, Any]]:
    """For a template that refuses a system role, open the first user turn with the system text instead.

    That is the usual practice for Gemma, whose template raises "System role not
    supported". Training and chat/eval both render through here, so the model is
    asked the way it was trained. Other templates get the messages unchanged.
    """
    if not messages or messages[0].get("role") != "system" or not refuses_system_role(tokenizer):
        return messages
    system = str(messages[0].get("content") or "")
    rest = list(messages[1:])
    for index, message in enumerate(rest):
        if message.get("role") == "user":
            rest[index] = {**message, "content": f"{system}\n\n{message.get('content') or ''}" if system else message.get("content")}
            break
    return rest
