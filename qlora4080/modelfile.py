"""An Ollama Modelfile whose TEMPLATE renders prompts exactly as the training chat template does.

Ollama renders prompts with Go's text/template, not Jinja, so the training template has to be translated.
A translation by parsing Jinja would cover few templates; instead the template's *shape* is read off its own
renders: each conversation it renders must be, byte for byte,

    head (no system message) | system prefix + text + system suffix   (a leading system message)
    then for every message:    role prefix + content + role suffix     (user, assistant)
    then, asking for a reply:  the generation prompt

Renders of probe conversations with marker contents give every piece; the pieces are then re-checked on
longer probes and on the run's own prompts, and a template that does not have this shape (reasoning dropped
from history, per-turn numbering, tools...) is refused with the first place it differs. Templates that refuse
a system role (Gemma) get the system text at the start of the first user turn, as training renders them
(fold_system_prompt), and Go does the same.

`ChatShape.render` is the Python twin of the Go template, used to check a shape here; the test suite renders
the Go template itself with Go's text/template (tests/go/) and compares it with the training render.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import QloraError

if TYPE_CHECKING:
    from .data.vocabulary import Message
    from .model_types import Tokenizer

MODELFILE = "Modelfile"

# Marker contents: plain words, so no template escapes, trims or re-cases them differently from real text.
_S, _U1, _A1, _U2, _A2, _U3 = "SYSTEMqq0", "USERqq1", "ANSWERqq1", "USERqq2", "ANSWERqq2", "USERqq3"


@dataclass(frozen=True)
class ChatShape:
    """The literal pieces around each message of a per-message chat template."""

    head: str
    """Rendered before the first message when there is no system message (a BOS, a default system prompt)."""
    system_prefix: str
    system_suffix: str
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str
    generation: str
    """The generation prompt: what follows the last message when an answer is asked for."""
    folds_system: bool = False
    """The template refuses a system role: the system text opens the first user turn, then a blank line."""

    def render(self, messages: Sequence[Message]) -> str:
        """The prompt for the next answer, exactly as the Go template renders it (for checking the shape here)."""
        rest = list(messages)
        out: list[str] = []
        system = ""
        if rest and rest[0]["role"] == "system":
            if self.folds_system:
                system = str(rest[0]["content"] or "")
                out.append(self.head)
            else:
                out.append(self.system_prefix + str(rest[0]["content"] or "") + self.system_suffix)
            rest = rest[1:]
        else:
            out.append(self.head)
        for message in rest:
            content = str(message["content"] or "")
            if message["role"] == "user":
                if system:
                    content, system = f"{system}\n\n{content}", ""
                out.append(self.user_prefix + content + self.user_suffix)
            elif message["role"] == "assistant":
                out.append(self.assistant_prefix + content + self.assistant_suffix)
        return "".join(out) + self.generation

    def go_template(self) -> str:
        """The same rendering in Go's text/template over Ollama's .Messages (system messages included)."""
        lit = _go_literal
        parts: list[str] = []
        if self.folds_system:
            parts.append('{{ $system := "" }}' + lit(self.head))
            parts.append('{{ range .Messages }}{{ if eq .Role "system" }}{{ $system = .Content }}')
            parts.append('{{ else if eq .Role "user" }}' + lit(self.user_prefix)
                         + '{{ if $system }}{{ $system }}\n\n{{ $system = "" }}{{ end }}{{ .Content }}' + lit(self.user_suffix))
        else:
            parts.append('{{ if and .Messages (eq (index .Messages 0).Role "system") }}{{ else }}' + lit(self.head) + "{{ end }}")
            parts.append('{{ range .Messages }}{{ if eq .Role "system" }}' + lit(self.system_prefix) + "{{ .Content }}"
                         + lit(self.system_suffix))
            parts.append('{{ else if eq .Role "user" }}' + lit(self.user_prefix) + "{{ .Content }}" + lit(self.user_suffix))
        parts.append('{{ else if eq .Role "assistant" }}' + lit(self.assistant_prefix) + "{{ .Content }}"
                     + lit(self.assistant_suffix) + "{{ end }}{{ end }}" + lit(self.generation))
        return "".join(parts)


def _go_literal(text: str) -> str:
    """Text placed verbatim in a Go template: only an opening action delimiter needs quoting."""
    return text.replace("{{", '{{ "{{" }}')


def _split(text: str, markers: Sequence[str]) -> list[str] | None:
    """The text between and around `markers`, in order; None when one is missing or appears twice."""
    pieces: list[str] = []
    rest = text
    for marker in markers:
        if rest.count(marker) != 1:
            return None
        before, rest = rest.split(marker)
        pieces.append(before)
    pieces.append(rest)
    return pieces


def _common_suffix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return a[len(a) - n:]


def _shared_start(a: str, b: str, tokens: Sequence[str]) -> str:
    """The common start of a and b, never ending inside one of `tokens` (a special token's text)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    for token in tokens:
        start = a.find(token)
        while start != -1:
            if start < n < start + len(token):
                n = start
            start = a.find(token, start + 1)
    return a[:n]


def _token_texts(tokenizer: Tokenizer) -> list[str]:
    return [str(token) for token in getattr(tokenizer, "added_tokens_encoder", {}) if token]


class Untranslatable(QloraError):
    """The training template has no per-message shape that Go's text/template can reproduce."""


def read_shape(tokenizer: Tokenizer) -> ChatShape:
    """The template's pieces, read off renders of marker conversations; Untranslatable when it has no such shape."""
    from .data.templates import TemplateError, refuses_system_role

    def render(messages: list[Message], generation: bool = True) -> str:
        from .data.templates import render_text

        try:
            return render_text(tokenizer, messages, None, add_generation_prompt=generation)
        except TemplateError as exc:
            raise Untranslatable(f"the chat template cannot render a plain conversation: {exc}") from exc

    def refuse(why: str) -> Untranslatable:
        return Untranslatable(f"the chat template cannot be translated to an Ollama TEMPLATE: {why}",
                              hint="the Modelfile is left out; Ollama then uses the template inside the GGUF, "
                                   "which llama.cpp checked against the training render")

    user: list[Message] = [{"role": "user", "content": _U1}]
    three: list[Message] = [*user, {"role": "assistant", "content": _A1}, {"role": "user", "content": _U2}]
    one = _split(render(user), [_U1])
    without = _split(render(user, generation=False), [_U1])
    turns = _split(render(three), [_U1, _A1, _U2])
    closed = _split(render([*user, {"role": "assistant", "content": _A1}], generation=False), [_U1, _A1])
    if one is None or without is None or turns is None or closed is None:
        raise refuse("a message's text does not appear exactly once in its render")
    lead, after = one
    if without[0] != lead:
        raise refuse("asking for an answer changes more than the end of the prompt")
    # What follows the user's text without a generation prompt can end the conversation too (Phi-3 adds EOS).
    user_suffix = _shared_start(after, without[1], _token_texts(tokenizer))
    generation = after[len(user_suffix):]
    if turns[0] != lead or turns[3] != after or not turns[1].startswith(user_suffix):
        raise refuse("the first user turn renders differently once an answer follows it")
    assistant_prefix = turns[1][len(user_suffix):]
    between = turns[2]  # assistant suffix + user prefix
    natural_end = closed[2]  # how a conversation's last answer ends, usually the same as any answer
    if between.startswith(natural_end) and lead.endswith(between[len(natural_end):]):
        assistant_suffix, user_prefix = natural_end, between[len(natural_end):]
    else:
        user_prefix = _common_suffix(between, lead)
        assistant_suffix = between[: len(between) - len(user_prefix)]
    head = lead[: len(lead) - len(user_prefix)]
    folds = refuses_system_role(tokenizer)
    system_prefix = system_suffix = ""
    if not folds:
        with_system = _split(render([{"role": "system", "content": _S}, *user]), [_S, _U1])
        if with_system is None or with_system[2] != after or not with_system[1].endswith(user_prefix):
            raise refuse("a system message does not render as a block of its own before the first user turn")
        system_prefix, system_suffix = with_system[0], with_system[1][: len(with_system[1]) - len(user_prefix)]
    shape = ChatShape(head, system_prefix, system_suffix, user_prefix, user_suffix, assistant_prefix,
                      assistant_suffix, generation, folds)
    problem = shape_problem(shape, tokenizer, PROBES)
    if problem:
        raise refuse(problem)
    return shape


# Longer conversations than the ones the pieces were read from, with text that templates treat specially.
PROBES: list[list[Message]] = [
    [{"role": "user", "content": _U1}, {"role": "assistant", "content": _A1}, {"role": "user", "content": _U2},
     {"role": "assistant", "content": _A2}, {"role": "user", "content": _U3}],
    [{"role": "system", "content": "Answer in JSON.\nBe brief."}, {"role": "user", "content": "Line one\nline two"},
     {"role": "assistant", "content": '{"a": 1}'}, {"role": "user", "content": "And {{ braces }}?"}],
]


def shape_problem(shape: ChatShape, tokenizer: Tokenizer, conversations: Sequence[Sequence[Message]]) -> str | None:
    """Where the shape's render first differs from the training render of these prompts; None if never."""
    from .data.templates import TemplateRefusal, fold_system_prompt, render_text

    for index, messages in enumerate(conversations):
        try:
            expected = render_text(tokenizer, fold_system_prompt(list(messages), tokenizer), None, add_generation_prompt=True)
        except TemplateRefusal:
            continue  # the training template refuses it too: nothing to reproduce
        got = shape.render(messages)
        if got != expected:
            at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            return (f"prompt {index + 1} ({len(messages)} messages) renders differently from character {at}: "
                    f"training has {expected[at:at + 40]!r}, the translation {got[at:at + 40]!r}")
    return None


@dataclass(frozen=True)
class Modelfile:
    text: str
    shape: ChatShape
    stops: list[str]
    system: str | None


def build_modelfile(gguf_name: str, tokenizer: Tokenizer, prompts: Sequence[Sequence[Message]], *,
                    system: str | None = None, drop_bos: str = "") -> Modelfile:
    """FROM, TEMPLATE, a stop for every end-of-turn string, and SYSTEM when the recipe sets one.

    `drop_bos`: the BOS text the runtime adds by itself (the GGUF says add_bos_token), taken off the front of
    the template so the prompt does not start with two. Untranslatable when the template has no per-message
    shape, or when the shape differs from the training render on one of `prompts` (the run's own).
    """
    from .data.render import end_of_turn_ids

    shape = read_shape(tokenizer)
    problem = shape_problem(shape, tokenizer, prompts)
    if problem:
        raise Untranslatable(f"the Ollama TEMPLATE would render one of the run's prompts differently: {problem}")
    if drop_bos:
        if not (shape.head.startswith(drop_bos) and (shape.folds_system or shape.system_prefix.startswith(drop_bos))):
            raise Untranslatable(f"the GGUF adds {drop_bos!r} at the start of every prompt, but the training "
                                 "template does not start with it: Ollama's prompts would start with a token "
                                 "training never saw")
        shape = ChatShape(shape.head[len(drop_bos):], shape.system_prefix[len(drop_bos):], *_rest(shape))
    stops = [str(t) for t in dict.fromkeys(tokenizer.convert_ids_to_tokens(end_of_turn_ids(tokenizer))) if t]
    template = shape.go_template()
    if '"""' in template:
        raise Untranslatable('the chat template contains """, which ends a Modelfile TEMPLATE block')
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in stops]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return Modelfile("\n".join(lines) + "\n", shape, stops, system)


def _rest(shape: ChatShape) -> tuple[str, str, str, str, str, str, bool]:
    return (shape.system_suffix, shape.user_prefix, shape.user_suffix, shape.assistant_prefix,
            shape.assistant_suffix, shape.generation, shape.folds_system)


def write_modelfile(folder: Path, modelfile: Modelfile) -> Path:
    path = folder / MODELFILE
    path.write_text(modelfile.text, encoding="utf-8")
    return path


def shared_system_prompt(prompts: Sequence[Sequence[Message]]) -> str | None:
    """The system message every one of the run's prompts opens with, if they all share one (the run's own)."""
    systems = {str(p[0]["content"]) if p and p[0]["role"] == "system" else None for p in prompts}
    return systems.pop() if len(systems) == 1 else None
