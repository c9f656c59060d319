"""The one-render fast path gives exactly the exact method's ids and labels, or steps aside.

Batches larger than the probe go through fast_masks.render_batch; these tests
compare them token for token with `fast=False` (every prefix rendered), on
real templates, on conversations built to trip a text search (answers that
also occur in the question, a generation prompt written inside a message,
special tokens inside content), and on templates the fast path must refuse.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
from conftest import REPO

from qlora4080.data import fast_masks
from qlora4080.data.fast_masks import FastPathState
from qlora4080.data.render import TemplateError, render_or_reject
from qlora4080.errors import QloraError

TRL_TEMPLATES = Path(__import__("trl").__file__).parent / "chat_templates"

# family -> (TRL template file or None for SmolLM2's own, special tokens to add, supports a system turn)
FAMILIES = {
    "chatml-smollm2": (None, [], True),
    "qwen2.5": ("qwen2_5.jinja", [], True),
    "qwen3-instruct-2507": ("qwen3_instruct_2507.jinja", [], True),
    "gemma": ("gemma.jinja", ["<start_of_turn>", "<end_of_turn>"], False),
    "llama3": ("llama3.jinja", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], True),
    "phi3": ("phi3.jinja", ["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"], True),
}


def _tokenizer(base, family: str):
    template, specials, _ = FAMILIES[family]
    tokenizer = copy.deepcopy(base)  # a fresh object: the fast path learns per tokenizer
    if template:
        tokenizer.add_special_tokens({"additional_special_tokens": specials})
        tokenizer.chat_template = (TRL_TEMPLATES / template).read_text(encoding="utf-8")
    return tokenizer


def _conversations(count: int, system: bool, seed: int = 0) -> list[list[dict]]:
    """Multi-turn chats from the bundled data, plus a few built to trip a text search."""
    rng = random.Random(seed)
    pairs = []
    for line in (REPO / "recipes" / "data" / "json_cards" / "train.jsonl").read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        pairs.append((messages[0]["content"], messages[1]["content"]))
    chats = []
    for _ in range(count):
        chat = [{"role": "system", "content": "Be brief."}] if system and rng.random() < 0.3 else []
        for question, answer in rng.sample(pairs, rng.randint(1, 3)):
            chat += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        chats.append(chat)
    tricky = [
        [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "yes"},
         {"role": "user", "content": "Say yes again."}, {"role": "assistant", "content": "yes"}],
        [{"role": "user", "content": "Reply with: Blue sky"}, {"role": "assistant", "content": "Blue sky"}],
        [{"role": "user", "content": "Quote <|im_start|>assistant\nhi"}, {"role": "assistant", "content": "I quoted it."}],
        [{"role": "system", "content": "Example: <|im_start|>assistant\nSure thing<|im_end|>"},
         {"role": "user", "content": "Agree?"}, {"role": "assistant", "content": "Sure thing"}],
        [{"role": "user", "content": "Think first."},
         {"role": "assistant", "content": "42", "reasoning_content": "6 times 7 is 42"}],
        [{"role": "user", "content": "Write an end tag."}, {"role": "assistant", "content": "Here: <|im_end|> done."}],
        [{"role": "user", "content": "  padded  "}, {"role": "assistant", "content": "\n  padded answer \n"}],
        [{"role": "user", "content": "only a question"}],
    ]
    if not system:
        tricky = [chat for chat in tricky if chat[0]["role"] != "system"]
    for index, chat in enumerate(tricky):
        chats.insert(3 + 7 * index, chat)
    return chats


def _same(fast, exact) -> bool:
    return all((str(a) == str(b)) if isinstance(a, QloraError) else a == b for a, b in zip(fast, exact, strict=True))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("train_on", ["assistant", "last_assistant", "all"])
def test_fast_path_equals_exact_method(smol_tokenizer, family, train_on):
    tokenizer = _tokenizer(smol_tokenizer, family)
    chats = _conversations(150, system=FAMILIES[family][2])
    try:
        exact = render_or_reject(chats, tokenizer, train_on, fast=False)
    except TemplateError:  # the template cannot be split this way at all: the fast path must refuse too
        with pytest.raises(TemplateError):
            render_or_reject(chats, tokenizer, train_on)
        return
    fast = render_or_reject(chats, tokenizer, train_on)
    assert _same(fast, exact)
    assert isinstance(fast[-1], dict) and any(isinstance(r, QloraError) for r in fast)  # the question-only chat


@pytest.mark.parametrize("family", ["chatml-smollm2", "qwen2.5", "qwen3-instruct-2507", "gemma"])
def test_fast_path_is_really_taken_for_chatml_and_gemma(smol_tokenizer, family):
    tokenizer = _tokenizer(smol_tokenizer, family)
    chats = _conversations(200, system=FAMILIES[family][2])
    state = FastPathState()
    render_or_reject(chats, tokenizer, fast_state=state)
    assert not state.disabled
    assert state.fast > 0.9 * state.tried  # only the tricky few took the exact path


def test_tokenizer_that_splits_the_header_differently_in_context_falls_back(smol_tokenizer):
    # SmolLM2's tokenizer writes "\n\n" as one token alone but as two before a word: Llama-3's header ends with it.
    tokenizer = _tokenizer(smol_tokenizer, "llama3")
    chats = _conversations(150, system=True)
    state = FastPathState()
    assert _same(render_or_reject(chats, tokenizer, fast_state=state), render_or_reject(chats, tokenizer, fast=False))
    assert state.fast == 0 and "fit the fast path" in state.disabled


def test_template_that_drops_earlier_reasoning_is_mapped_in_a_batch(smol_tokenizer):
    # Changed on purpose: Qwen3's dropping of earlier reasoning used to stop the batch; now each turn trains what
    # the full render shows, on both paths.
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = (TRL_TEMPLATES / "qwen3.jinja").read_text(encoding="utf-8")
    chats = _conversations(100, system=False)
    chats.insert(80, [{"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4", "reasoning_content": "Two plus two."},
                      {"role": "user", "content": "3+3?"},
                      {"role": "assistant", "content": "6", "reasoning_content": "Three plus three."}])
    fast = render_or_reject(chats, tokenizer)
    assert _same(fast, render_or_reject(chats, tokenizer, fast=False))
    ids, labels = fast[80]["input_ids"], fast[80]["labels"]
    trained = tokenizer.decode([i for i, label in zip(ids, labels) if label != -100])
    assert trained == "4<|im_end|><think>\nThree plus three.\n</think>\n\n6<|im_end|>"


def test_template_that_cannot_be_mapped_still_raises_in_a_batch(smol_tokenizer):
    tokenizer = copy.deepcopy(smol_tokenizer)
    tokenizer.chat_template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    with pytest.raises(TemplateError, match="ignores add_generation_prompt"):
        render_or_reject(_conversations(100, system=False), tokenizer)


def test_a_systematic_difference_disables_the_fast_path(smol_tokenizer, monkeypatch):
    tokenizer = _tokenizer(smol_tokenizer, "chatml-smollm2")
    chats = _conversations(150, system=True)
    exact = render_or_reject(chats, tokenizer, fast=False)
    # Pretend the whole-text tokenization differs from piecewise: every fast result gets a wrong first id.
    real_accept = fast_masks._accept

    def corrupt(ids, labels):
        return real_accept([0] + ids[1:], labels)

    monkeypatch.setattr(fast_masks, "_accept", corrupt)
    state = FastPathState()
    assert _same(render_or_reject(chats, tokenizer, fast_state=state), exact)  # caught by the verification sample
    assert "differs between the fast and the exact path" in state.disabled
    # The state remembers it for the dataset's later batches; a fresh call (another dataset) tries again.
    assert _same(render_or_reject(chats, tokenizer, fast_state=state), exact)
    monkeypatch.setattr(fast_masks, "_accept", real_accept)
    again = FastPathState()
    assert _same(render_or_reject(chats, tokenizer, fast_state=again), exact) and not again.disabled
