"""One thinking switch for reasoning models, written into the chat template itself.

Templates such as Qwen3's hybrid ones read a variable `enable_thinking`: left
undefined the model thinks first; `false` renders an empty `<think></think>`
block after the generation prompt, so the answer starts at once. Passing it
as an argument at each render would have to be repeated identically by every
render of ours (training masks, chat, eval, generate, serve) and, worse, by
every program that later runs the exported model (llama.cpp, Ollama, vLLM),
which would each fall back to the template's default and start thinking again.

So `[model] thinking = true | false` is set once at the top of the template
(`{%- set enable_thinking = false -%}`): a template-level assignment wins over
any value a caller passes, the checkpoint saves that template
(chat_template.jinja), and the merged model and the GGUF carry it further.
`"auto"` leaves the template as its authors wrote it.
"""

from __future__ import annotations

import re
from typing import Literal

from .errors import QloraError

Thinking = bool | Literal["auto"]
SWITCH = "enable_thinking"
_LINE = re.compile(r"\A\{#- qlora4080: model\.thinking -#\}\{%- set enable_thinking = (true|false) -%\}\n")


def template_has_switch(template: str) -> bool:
    """Does the template read `enable_thinking` (outside the line this module writes)?"""
    return SWITCH in _LINE.sub("", template)


def recorded_thinking(template: str) -> Thinking:
    """The switch a template carries from `with_thinking`, or "auto" when it carries none."""
    found = _LINE.match(template)
    return "auto" if found is None else found.group(1) == "true"


def with_thinking(template: str, thinking: Thinking, where: str = "[model] thinking") -> str:
    """The template with the switch set at its top (replacing an earlier one); unchanged for "auto".

    A switch asked of a template that has none is an error: it would do nothing, silently.
    """
    plain = _LINE.sub("", template)
    if thinking == "auto":
        return template
    if SWITCH not in plain:
        raise QloraError(
            f"thinking = {str(thinking).lower()} was asked for, but this chat template has no thinking switch "
            f"(it never reads `{SWITCH}`)",
            where=where,
            hint='leave model.thinking = "auto" for this model, or set [model] chat_template to a template that '
                 "reads enable_thinking (Qwen3's hybrid templates do)",
        )
    value = "true" if thinking else "false"
    return f"{{#- qlora4080: model.thinking -#}}{{%- set {SWITCH} = {value} -%}}\n{plain}"


def describe(thinking: Thinking) -> str:
    """One line for train.log and data preview."""
    if thinking == "auto":
        return "thinking: auto (the chat template's own default)"
    state = "on" if thinking else "off"
    return f"thinking: {state} (enable_thinking = {str(thinking).lower()} is written into the chat template, every render)"
