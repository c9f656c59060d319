"""What makes a list of messages a trainable conversation: one set of rules for every path.

`data check` (check.py), `data build` (pipeline.py), training and eval files
(conversations.py) all ask `validate_messages`, and the renderer (render.py,
fast_masks.py) asks `structure_problem`, so a record `data check` accepts is
one training accepts, and one it rejects is rejected everywhere with the same
words. Reasons name the message index; callers add the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import cast

from .vocabulary import Message

ROLES = ("system", "user", "assistant", "tool")
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""What `data build` strips from every message (pipeline.clean); a turn of only these is empty."""


def is_blank(content: object) -> bool:
    """Text with nothing left once whitespace and control characters go (what the build's cleaning drops)."""
    return isinstance(content, str) and not CONTROL_CHARS.sub("", content).strip()


def validate_messages(messages: object) -> str | None:
    """Why this message list cannot be trained on, or None when it can."""
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"message {index} is not an object"
        role = message.get("role")
        if role not in ROLES:
            return f"message {index} has role {role!r}; expected one of {', '.join(ROLES)}"
        content = message.get("content")
        if content is None and not (role == "assistant" and message.get("tool_calls")):
            return f"message {index} ({role}) has no 'content'"
        if content is not None and not isinstance(content, str):
            return f"message {index} ({role}) 'content' must be a string"
    checked = cast("list[Message]", messages)  # every message is an object with a known role and text content
    problem = structure_problem(checked)
    if problem:
        return problem
    for index, message in enumerate(checked):
        if message["role"] == "assistant" and is_blank(message.get("content") or "") and not message.get("tool_calls"):
            return f"message {index} (assistant) is empty"
    return None


def structure_problem(messages: Sequence[Message]) -> str | None:
    """Why the order of turns cannot be rendered and masked, or None.

    A conversation must open (after any system messages) with a user turn:
    templates that check turn order (Gemma, Mistral, Llama-2 and others)
    raise on anything else, and the masking renders the prompt that precedes
    each assistant turn -- before a leading assistant turn that prompt holds
    no user text at all (transformers refuses to render an empty one), so the
    turn would be an answer to nothing. Empty turns do not count as the
    opening one, because `data build` drops them before this check: a file
    gets the same verdict whether it is checked, built from or trained on.
    """
    roles = [message.get("role") for message in messages]
    if "assistant" not in roles:
        return "no assistant turn, so nothing would be trained"
    opening = next(((i, role) for i, role in enumerate(roles) if role != "system" and not _dropped_by_cleaning(messages[i])), None)
    if opening is None:
        return "every non-system message is empty"
    index, role = opening
    if role != "user":
        with_text = " with text" if any(r != "system" for r in roles[:index]) else ""
        return (f"first non-system message{with_text} (message {index}) is from the {role}; "
                "a conversation must start with a user turn")
    return None


def _dropped_by_cleaning(message: Message) -> bool:
    """A turn `data build` leaves out: no text and no tool calls."""
    return is_blank(message.get("content")) and not message.get("tool_calls")
