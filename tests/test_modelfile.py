"""The Modelfile's TEMPLATE, rendered by Go's text/template as Ollama renders it, equals the training render.

tests/go/render_template.go executes a template over conversations the way Ollama's template package does
(missingkey=zero, its `json` function, system messages collected into .System, same-role messages merged).
Every family of tests/test_template_families.py that has a per-message shape is rendered on multi-turn
conversations with and without a system message, and compared byte for byte with the training render
(the tokenizer's own chat template, system folded where the template refuses it, as training does).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from test_template_families import FAMILIES, family_tokenizer

from qlora4080.data.templates import fold_system_prompt, render_text
from qlora4080.modelfile import ChatShape, Untranslatable, build_modelfile, read_shape

DEMO_VALIDATION = Path(__file__).resolve().parent.parent / "recipes" / "data" / "json_cards" / "validation.jsonl"


def go_render(binary: Path, template: str, conversations: list[list[dict[str, str]]]) -> list[str]:
    done = subprocess.run([str(binary)], input=json.dumps({"template": template, "conversations": conversations}),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def demo_prompts(limit: int = 6) -> list[list[dict[str, str]]]:
    prompts = []
    for line in DEMO_VALIDATION.read_text(encoding="utf-8").splitlines()[:limit]:
        messages = json.loads(line)["messages"]
        prompts.append([m for m in messages if m["role"] != "assistant"][:1])
    return prompts


CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "You answer in JSON only."}, {"role": "user", "content": "Ines, 29, architect, Lyon."}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello. How can I help?"},
     {"role": "user", "content": "Two lines:\nfirst\nsecond"}],
    [{"role": "system", "content": "Be brief.\nNo emoji."}, {"role": "user", "content": "Name a colour."},
     {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one, {{ in braces }}?"},
     {"role": "assistant", "content": '{"colour": "red"}'}, {"role": "user", "content": "Thanks — ünïcödé 🙂"}],
]

# Families whose template has a per-message shape (all of test_template_families' today).
TRANSLATED = list(FAMILIES)


def training_render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    return render_text(tokenizer, fold_system_prompt(messages, tokenizer), None, add_generation_prompt=True)


@pytest.mark.parametrize("family", TRANSLATED)
def test_go_renders_the_modelfile_template_like_training(family, smol_tokenizer, go_renderer):
    tokenizer = family_tokenizer(smol_tokenizer, family)
    conversations = CONVERSATIONS + demo_prompts()
    modelfile = build_modelfile("model.gguf", tokenizer, conversations)
    template = modelfile.text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template == modelfile.shape.go_template()
    rendered = go_render(go_renderer, template, conversations)
    for messages, got in zip(conversations, rendered, strict=True):
        assert got == training_render(tokenizer, messages), (family, messages)


def test_a_wrong_piece_is_caught_by_go(smol_tokenizer, go_renderer):
    """The comparison can fail: a shape one newline off renders differently in Go."""
    shape = read_shape(smol_tokenizer)
    wrong = ChatShape(**{**shape.__dict__, "user_suffix": shape.user_suffix.rstrip("\n")})
    got = go_render(go_renderer, wrong.go_template(), CONVERSATIONS[:1])[0]
    assert got != training_render(smol_tokenizer, CONVERSATIONS[0])


def test_demo_modelfile_has_stops_and_system(smol_tokenizer):
    system = "You turn a sentence about a person into one JSON object."
    modelfile = build_modelfile("demo-q8_0.gguf", smol_tokenizer, CONVERSATIONS, system=system)
    lines = modelfile.text.splitlines()
    assert lines[0] == "FROM ./demo-q8_0.gguf"
    assert 'PARAMETER stop "<|im_end|>"' in lines
    assert lines[-1] == f'SYSTEM """{system}"""'
    assert lines[1].startswith('TEMPLATE """') and "{{ .Content }}" in modelfile.text


def test_bos_added_by_the_runtime_is_left_out_of_the_template(smol_tokenizer):
    llama3 = family_tokenizer(smol_tokenizer, "llama3")
    bos = llama3.bos_token
    kept = build_modelfile("m.gguf", llama3, CONVERSATIONS).shape
    dropped = build_modelfile("m.gguf", llama3, CONVERSATIONS, drop_bos=bos).shape
    assert kept.head.startswith(bos) and kept.system_prefix.startswith(bos)
    assert dropped.head == kept.head[len(bos):] and dropped.system_prefix == kept.system_prefix[len(bos):]
    for messages in CONVERSATIONS:
        assert bos + dropped.render(messages) == training_render(llama3, messages)
    with pytest.raises(Untranslatable, match="does not start with it"):
        build_modelfile("m.gguf", smol_tokenizer, CONVERSATIONS, drop_bos="<s>")


def test_a_template_without_a_per_message_shape_is_refused_with_where_it_differs(smol_tokenizer):
    import copy

    numbered = copy.deepcopy(smol_tokenizer)
    numbered.chat_template = ("{% for m in messages %}Turn {{ loop.index }} {{ m['role'] }}: {{ m['content'] }}\n"
                              "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
    with pytest.raises(Untranslatable) as refused:
        build_modelfile("m.gguf", numbered, CONVERSATIONS)
    assert "cannot be translated to an Ollama TEMPLATE" in str(refused.value)
    assert "renders differently from character" in str(refused.value)


def test_the_runs_own_prompts_are_checked(smol_tokenizer):
    """A template that trims messages (Llama 3) cannot be copied by Go: a prompt with edge spaces is refused."""
    llama3 = family_tokenizer(smol_tokenizer, "llama3")
    build_modelfile("m.gguf", llama3, CONVERSATIONS)
    with pytest.raises(Untranslatable, match="one of the run's prompts"):
        build_modelfile("m.gguf", llama3, [[{"role": "user", "content": "  padded  "}]])
