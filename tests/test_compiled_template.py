"""The compiled renderer the fast path uses gives apply_chat_template's text, to the character.

It reads a plain dict's fields without jinja's attribute lookup first (see
qlora4080/data/compiled_template.py); these tests hold it to transformers'
own rendering on every published template family and conversation shape, and
on templates that use a message's dict methods or a field it lacks.
"""

from __future__ import annotations

import copy

import pytest
from test_template_families import FAMILIES, SHAPES, conversation, family_tokenizer

from qlora4080.data.compiled_template import compiled_renderer
from qlora4080.data.templates import TemplateError, TemplateRefusal, fold_system_prompt, render_text


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_and_shape_renders_as_transformers_does(smol_tokenizer, name):
    tokenizer = family_tokenizer(smol_tokenizer, name)
    render = compiled_renderer(tokenizer)
    for shape in SHAPES:
        messages, tools = conversation(name, shape)
        messages = list(fold_system_prompt(messages, tokenizer))
        for cut in range(1, len(messages) + 1):  # every prefix, as a prompt and as a conversation
            for prompt in (True, False):
                try:
                    expected = render_text(tokenizer, messages[:cut], tools, prompt)  # apply_chat_template
                except TemplateRefusal:  # the template refuses this prefix: so does the compiled one
                    with pytest.raises(TemplateError):
                        render(messages[:cut], tools, prompt)
                    continue
                assert render(messages[:cut], tools, prompt) == expected, (shape, cut, prompt)


def test_dict_methods_missing_fields_and_a_field_named_like_a_method(smol_tokenizer):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}[{{ m.role }}|{{ m.content }}|{{ m.missing is defined }}|{{ m.get('role') }}|"
        "{% for key, value in m.items() %}{{ key }}={{ value }},{% endfor %}|{{ m.items is callable }}|"
        "{{ m.name | default('none') }}|{{ m['content'] }}]{% endfor %}"
        "{% if add_generation_prompt %}<{{ bos_token }}>{% endif %}")
    messages = [{"role": "user", "content": "hi", "items": "a field", "name": "ann"},
                {"role": "assistant", "content": "hello"}]
    render = compiled_renderer(tokenizer)
    for prompt in (True, False):
        assert render(messages, None, prompt) == tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=prompt)


def test_a_template_that_raises_raises_template_error(smol_tokenizer):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = "{{ raise_exception('no system here') if messages[0].role == 'system' }}ok"
    render = compiled_renderer(tokenizer)
    assert render([{"role": "user", "content": "x"}], None, False) == "ok"
    with pytest.raises(TemplateError, match="no system here"):
        render([{"role": "system", "content": "x"}], None, False)
