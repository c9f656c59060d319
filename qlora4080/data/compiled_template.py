"""The chat template compiled once for rendering many conversations fast, to the same text transformers renders.

apply_chat_template copies every message and the template's globals on each
call, and jinja's sandbox looks up `message.role` as an attribute first: on a
plain dict that raises AttributeError before the key is read, about thirty
times per conversation. A dataset renders thousands of conversations, so this
renderer keeps transformers' compiled template and environment settings, and
changes only how:

- the context is built (the globals flattened once, not copied out of a
  ChainMap per call);
- a plain dict's field is read: straight from its keys, unless the name is
  one of dict's own attributes (`items`, `get`...), which goes the sandbox's
  way. That is exactly what the sandbox returns for a plain dict, without
  the exception.

The fast path checks its renders against apply_chat_template's on a sample
(fast_masks.py), so a template this renders differently never trains.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .templates import Render, TemplateError, Tools, render_text
from .vocabulary import Message

if TYPE_CHECKING:
    from jinja2 import Template
    from jinja2.runtime import Undefined

    from .templates import Tokenizer

_DICT_ATTRIBUTES = frozenset(dir({}))  # what getattr finds on a plain dict: its methods, nothing else


def compiled_renderer(tokenizer: Tokenizer) -> Render:
    """render(messages, tools, add_generation_prompt) through the compiled template, set up once for many calls.

    Gives apply_chat_template's text for the same arguments. Failures raise
    TemplateError so that callers can leave the decision to the exact path.
    """
    try:
        from jinja2.runtime import new_context
    except ImportError:  # no jinja: the exact path only (which will say so)
        return lambda messages, tools, add_generation_prompt: render_text(tokenizer, messages, tools,
                                                                          add_generation_prompt)
    try:
        compiled = _compiled(str(tokenizer.chat_template))
    except Exception as exc:
        raise TemplateError(f"fast render failed: {exc}") from exc
    specials = dict(tokenizer.special_tokens_map)
    environment, name, blocks, body = compiled.environment, compiled.name, compiled.blocks, compiled.root_render_func
    names = dict(compiled.globals)

    def render(messages: Sequence[Message], tools: Tools | None, add_generation_prompt: bool) -> str:
        variables = {"messages": messages, "tools": tools, "documents": None,
                     "add_generation_prompt": add_generation_prompt, **specials}
        try:
            return "".join(body(new_context(environment, name, blocks, variables, False, names)))
        except Exception as exc:  # let the exact path decide what the template really does
            raise TemplateError(f"fast render failed: {exc}") from exc

    return render


@functools.lru_cache(maxsize=16)
def _compiled(source: str) -> Template:
    """The template compiled in an overlay of transformers' environment whose class reads plain dicts directly."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    environment = _compile_jinja_template(source).environment.overlay()  # its filters, globals, extensions
    sandbox = type(environment)

    class DictFirst(sandbox):  # type: ignore[valid-type, misc]  # transformers' sandbox class, known at run time
        def getattr(self, obj: object, attribute: str) -> object | Undefined:
            if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
                try:
                    return obj[attribute]
                except KeyError:
                    return self.undefined(obj=obj, name=attribute)
            return super().getattr(obj, attribute)

    environment.__class__ = DictFirst
    return environment.from_string(source)


__all__ = ["compiled_renderer"]
