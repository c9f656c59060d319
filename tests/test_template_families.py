"""Masks on the chat templates model makers publish: each assistant turn trains its answer and end-of-turn
exactly as the FULL conversation renders that turn -- never a header, never another message.

Templates are TRL's stored copies of the originals (not its `*_training` variants), applied to SmolLM2's real
tokenizer with the family's special tokens added, so end-of-turn markers are single tokens as in the real models.
The expected text of each turn comes from `expected_turns`, a plain-Python reading of what each template does
with an answer (Qwen3 and Nemotron drop earlier reasoning, DeepSeek keeps what follows `</think>`, gpt-oss
changes the end marker of the last turn, Phi-3 appends EOS only after it, which is never trained).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qlora4080.data import fast_masks
from qlora4080.data.fast_masks import FastPathState
from qlora4080.data.render import IGNORE_INDEX, MaskReport, render_or_reject
from qlora4080.data.templates import fold_system_prompt

TRL_TEMPLATES = Path(__import__("trl").__file__).parent / "chat_templates"

DS_EOS = "<｜end▁of▁sentence｜>"
DEEPSEEK = ("<｜User｜>", "<｜Assistant｜>", DS_EOS, "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>",
            "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>", "<｜tool▁outputs▁begin｜>",
            "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>")
NEMOTRON = ("<think>", "</think>", "<tool_call>", "</tool_call>")
GPT_OSS = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>", "<|constrain|>")
PHI = ("<|user|>", "<|assistant|>", "<|system|>", "<|end|>")


@dataclass(frozen=True)
class Family:
    template: str | None  # TRL's copy of the original, or None for SmolLM2's own (ChatML)
    kind: str  # how the template renders an answer: see _expected
    specials: tuple[str, ...] = ()  # added as special tokens
    plain_tokens: tuple[str, ...] = ()  # added as ordinary tokens (Qwen3's <think>)
    system: bool = True
    tools: bool = False
    reasoning_key: str = "content"  # where the family takes reasoning from ("content": a <think> block)
    eos: str | None = None


FAMILIES = {
    "chatml-smollm2": Family(None, "verbatim:<|im_end|>"),
    "qwen2.5": Family("qwen2_5.jinja", "verbatim:<|im_end|>", tools=True),
    "qwen3-instruct-2507": Family("qwen3_instruct_2507.jinja", "verbatim:<|im_end|>", tools=True),
    "qwen3": Family("qwen3.jinja", "qwen3", plain_tokens=NEMOTRON, tools=True, reasoning_key="reasoning_content"),
    "llama3": Family("llama3.jinja", "trim:<|eot_id|>", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    "gemma": Family("gemma.jinja", "trim:<end_of_turn>", ("<start_of_turn>", "<end_of_turn>"), system=False),
    "phi3": Family("phi3.jinja", "verbatim:<|end|>", PHI, eos="<|endoftext|>"),
    "phi3.5": Family("phi3_5.jinja", "verbatim:<|end|>", PHI, eos="<|endoftext|>"),
    "deepseek-r1-distill": Family("deepseek_r1_distill.jinja", "deepseek", DEEPSEEK, tools=True),
    "deepseek-v3": Family("deepseekv3.jinja", "deepseek", DEEPSEEK, tools=True),
    "nemotron-3-nano": Family("nemotron_3_nano.jinja", "nemotron", NEMOTRON, tools=True, reasoning_key="reasoning_content"),
    "nemotron-3-super": Family("nemotron_3_super.jinja", "nemotron", NEMOTRON, tools=True,
                               reasoning_key="reasoning_content"),
    "nemotron-3-ultra": Family("nemotron_3_ultra.jinja", "nemotron-tight", NEMOTRON, tools=True,
                               reasoning_key="reasoning_content"),
    "nemotron-3.5-lightning": Family("nemotron_3_5_lightning.jinja", "nemotron-tight", NEMOTRON, tools=True,
                                     reasoning_key="reasoning_content"),
    "gpt-oss": Family("gptoss.jinja", "gpt-oss", GPT_OSS, tools=True, reasoning_key="thinking"),
}

_TOKENIZERS: dict[str, Any] = {}


def family_tokenizer(base: Any, name: str) -> Any:
    """SmolLM2's tokenizer with the family's template and tokens (one per family for the session)."""
    if name not in _TOKENIZERS:
        family = FAMILIES[name]
        tokenizer = copy.deepcopy(base)
        if family.template:
            tokenizer.chat_template = (TRL_TEMPLATES / family.template).read_text(encoding="utf-8")
        if family.specials:
            tokenizer.add_special_tokens({"additional_special_tokens": list(family.specials)})
        if family.plain_tokens:
            tokenizer.add_tokens(list(family.plain_tokens))
        if family.eos:
            tokenizer.eos_token = family.eos
        _TOKENIZERS[name] = tokenizer
    return _TOKENIZERS[name]


def decode(tokenizer: Any, base: Any, ids: list[int]) -> str:
    """Token ids back to text: added tokens by their text, the rest by SmolLM2's own decoder.

    (transformers rebuilds the decoder of a tokenizer given tokens holding '▁', which then leaves byte-level
    characters in the output; the ids themselves are right.)
    """
    added = {index: str(token.content) for index, token in tokenizer.added_tokens_decoder.items()}
    pieces: list[str] = []
    run: list[int] = []
    for token in ids:
        if token in added:
            pieces += [base.decode(run), added[token]] if run else [added[token]]
            run = []
        else:
            run.append(token)
    if run:
        pieces.append(base.decode(run))
    return "".join(pieces)


def trained_turns(tokenizer: Any, base: Any, rendered: dict[str, list[int]]) -> list[str]:
    """The decoded text of each run of trained tokens (one run per trained assistant turn)."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(rendered["input_ids"], rendered["labels"]):
        trained = label != IGNORE_INDEX
        if trained:
            assert label == token
            if not previous:
                runs.append([])
            runs[-1].append(token)
        previous = trained
    return [decode(tokenizer, base, run) for run in runs]


# --- what each template renders for an answer ---------------------------------------------------------------------


def expected_turns(name: str, messages: list[dict[str, Any]], train_on: str = "assistant") -> list[str]:
    turns = [_expected(name, messages, i) for i, m in enumerate(messages) if m["role"] == "assistant"]
    return turns if train_on == "assistant" else turns[-1:]


def _expected(name: str, messages: list[dict[str, Any]], index: int) -> str:
    kind = FAMILIES[name].kind
    message = messages[index]
    content = message.get("content") or ""
    last = index == len(messages) - 1
    if kind.startswith("verbatim:"):
        return content + kind.split(":", 1)[1]
    if kind.startswith("trim:"):
        return content.strip() + kind.split(":", 1)[1]
    if kind == "deepseek":  # every turn keeps only what follows </think>
        return content.split("</think>")[-1] + DS_EOS
    if kind == "gpt-oss":  # final channel; <|return|> ends the last turn, which alone shows its analysis
        final = "<|channel|>final<|message|>" + content
        if not last:
            return final + "<|end|>"
        if "thinking" in message:
            return f"<|channel|>analysis<|message|>{message['thinking']}<|end|><|start|>assistant{final}<|return|>"
        return final + "<|return|>"
    if kind == "qwen3":
        return _qwen3(messages, index) + "<|im_end|>"
    return _nemotron(messages, index, tight=kind == "nemotron-tight") + "<|im_end|>"


def _qwen3(messages: list[dict[str, Any]], index: int) -> str:
    message = messages[index]
    content = message["content"] if isinstance(message.get("content"), str) else ""
    last_query = max(i for i, m in enumerate(messages) if m["role"] == "user")
    if isinstance(message.get("reasoning_content"), str):
        reasoning = message["reasoning_content"]
    elif "</think>" in content:
        reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
        content = content.split("</think>")[-1].lstrip("\n")
    else:
        reasoning = ""
    if index > last_query and (index == len(messages) - 1 or reasoning):  # reasoning only after the last question
        return "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
    return content


def _nemotron(messages: list[dict[str, Any]], index: int, tight: bool) -> str:
    offset = 1 if messages[0]["role"] == "system" else 0
    last_user = max(i for i, m in enumerate(messages[offset:]) if m["role"] == "user")
    message = messages[index]
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning.strip():
        content = "<think>\n" + reasoning + ("</think>" if tight else "\n</think>\n") + (message.get("content") or "")
    else:
        content = message.get("content") or ""
        if "<think>" not in content and "</think>" not in content:
            content = "<think></think>" + content
    if index - offset < last_user and "<think>" in content and "</think>" in content:  # history drops reasoning
        content = "<think></think>" + content.split("</think>")[-1]
    return content.strip()


# --- conversations ------------------------------------------------------------------------------------------------

SINGLE = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4."}]
MULTI = [
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "Blue."},
    {"role": "user", "content": "Another one, please."},
    {"role": "assistant", "content": "Green, like grass."},
    {"role": "user", "content": "And a third?"},
    {"role": "assistant", "content": "Red."},
]
SYSTEM = [{"role": "system", "content": "You are terse."}] + MULTI[:4]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def reasoning_conversation(name: str, think_tags: bool = False) -> list[dict[str, Any]]:
    """Two exchanges whose answers carry reasoning, where the family takes it from (or as <think> in content)."""
    key = "content" if think_tags else FAMILIES[name].reasoning_key

    def answer(thought: str, text: str) -> dict[str, Any]:
        if key == "content":
            return {"role": "assistant", "content": f"<think>\n{thought}\n</think>\n\n{text}"}
        return {"role": "assistant", "content": text, key: thought}

    return [{"role": "user", "content": "2+2?"}, answer("Two plus two.", "4"),
            {"role": "user", "content": "3+3?"}, answer("Three plus three.", "6")]


def tool_conversation(name: str) -> list[dict[str, Any]]:
    deepseek = FAMILIES[name].kind == "deepseek"  # string arguments (it concatenates them) and no content
    arguments: Any = '{"city": "Oslo"}' if deepseek else {"city": "Oslo"}
    return [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None if deepseek else "",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "content": "SECRET-TOOL-RESULT 3C"},
        {"role": "assistant", "content": "It is 3 degrees in Oslo."},
    ]


QWEN_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>'
NEMOTRON_CALL = ("<think></think>\n<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n"
                 "</function>\n</tool_call>\n<|im_end|>")
DS_CALL = ('<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{"city": "Oslo"}\n```'
           '<｜tool▁call▁end｜>')
ANSWER = "It is 3 degrees in Oslo."
TOOL_TURNS = {  # the tool call as the model must write it (after its header), then the answer
    "qwen2.5": [QWEN_CALL, ANSWER + "<|im_end|>"],
    "qwen3-instruct-2507": [QWEN_CALL, ANSWER + "<|im_end|>"],
    "qwen3": [QWEN_CALL, f"<think>\n\n</think>\n\n{ANSWER}<|im_end|>"],
    "deepseek-r1-distill": [DS_CALL, ANSWER + DS_EOS],  # R1 never closes a tool-call turn: up to its last marker
    "deepseek-v3": [DS_CALL + "<｜tool▁calls▁end｜>" + DS_EOS, ANSWER + DS_EOS],
    "gpt-oss": [' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Oslo"}<|call|>',
                f"<|channel|>final<|message|>{ANSWER}<|return|>"],
    **{name: [NEMOTRON_CALL, f"<think></think>{ANSWER}<|im_end|>"]
       for name in ("nemotron-3-nano", "nemotron-3-super", "nemotron-3-ultra", "nemotron-3.5-lightning")},
}
SHAPES = ["single", "system", "multi", "reasoning", "think-tags", "tool"]


def conversation(name: str, shape: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    if shape == "tool":
        return tool_conversation(name), TOOLS
    if shape in ("reasoning", "think-tags"):
        return reasoning_conversation(name, think_tags=shape == "think-tags"), None
    return {"single": SINGLE, "system": SYSTEM, "multi": MULTI}[shape], None


def _render(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, train_on: str = "assistant",
            fast: bool = False, copies: int = 1) -> list[Any]:
    return render_or_reject([messages] * copies, tokenizer, train_on, [tools] * copies, fast=fast)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", FAMILIES)
def test_each_turn_trains_its_answer_and_end_of_turn_as_rendered(smol_tokenizer, name, shape):
    family = FAMILIES[name]
    if shape == "tool" and not family.tools:
        pytest.skip("the template does not render tool calls")
    tokenizer = family_tokenizer(smol_tokenizer, name)
    messages, tools = conversation(name, shape)
    rendered = _render(tokenizer, messages, tools)[0]  # a refused system role is folded into the first user turn
    assert isinstance(rendered, dict), rendered
    expected = TOOL_TURNS[name] if shape == "tool" else expected_turns(name, messages)
    assert trained_turns(tokenizer, smol_tokenizer, rendered) == expected
    # the ids are the template's own text, nothing added or lost
    full = tokenizer.apply_chat_template(fold_system_prompt(list(messages), tokenizer), tools=tools, tokenize=False)
    assert decode(tokenizer, smol_tokenizer, rendered["input_ids"]) == full
    # only the last turn, when asked
    last = _render(tokenizer, messages, tools, "last_assistant")[0]
    assert trained_turns(tokenizer, smol_tokenizer, last) == expected[-1:]
    # the one-render path gives the same ids and labels (or steps aside)
    assert _render(tokenizer, messages, tools, fast=True, copies=fast_masks.MIN_BATCH + 1) == [rendered] * (
        fast_masks.MIN_BATCH + 1)


@pytest.mark.parametrize("name", FAMILIES)
def test_no_header_or_other_message_is_ever_trained(smol_tokenizer, name):
    tokenizer = family_tokenizer(smol_tokenizer, name)
    messages = SYSTEM if FAMILIES[name].system else MULTI
    trained = "".join(trained_turns(tokenizer, smol_tokenizer, _render(tokenizer, messages, None)[0]))
    for message in messages:
        if message["role"] != "assistant":
            assert message["content"] not in trained
    for header in ("assistant\n", "<|assistant|>", "<｜Assistant｜>", "<start_of_turn>", "<|start_header_id|>",
                   "<|im_start|>", "<｜User｜>", "<|user|>"):
        assert header not in trained


# --- the families, as filed --------------------------------------------------------------------------------

REPORTED = ["phi3", "phi3.5", "deepseek-r1-distill", "deepseek-v3", "nemotron-3-nano", "nemotron-3-super",
            "nemotron-3-ultra", "nemotron-3.5-lightning", "gpt-oss", "qwen3"]


@pytest.mark.parametrize("name", REPORTED)
def test_families_once_refused_train_every_turn_of_a_long_conversation(smol_tokenizer, name):
    tokenizer = family_tokenizer(smol_tokenizer, name)
    messages = SYSTEM + [{"role": "user", "content": "One more?"}, {"role": "assistant", "content": "Yellow."}]
    rendered = _render(tokenizer, messages, None)[0]
    assert trained_turns(tokenizer, smol_tokenizer, rendered) == expected_turns(name, messages)


@pytest.mark.parametrize("name", ["deepseek-r1-distill", "deepseek-v3", "nemotron-3-nano", "nemotron-3.5-lightning"])
def test_a_generation_prompt_the_history_lacks_is_warned_about_once(smol_tokenizer, name):
    tokenizer = family_tokenizer(smol_tokenizer, name)
    report = MaskReport()
    render_or_reject([MULTI, SINGLE, SYSTEM] * 10, tokenizer, report=report)
    warnings = report.warnings()
    prompt_warnings = [w for w in warnings if "generation prompt adds" in w]
    assert len(prompt_warnings) == 1 and "<think>" in prompt_warnings[0]
    lines = report.lines()
    assert lines[0].startswith("masks: ") and sum(line.startswith("warning: ") for line in lines) == len(warnings)


def test_a_template_that_keeps_prefixes_has_no_warning(smol_tokenizer):
    tokenizer = family_tokenizer(smol_tokenizer, "qwen2.5")
    report = MaskReport()
    render_or_reject([MULTI, SINGLE] * 10, tokenizer, report=report)
    assert report.warnings() == []
    assert report.turns and set(report.turns) <= {"prefix", "fast"}


@pytest.mark.parametrize("name", ["qwen3", "nemotron-3-nano", "gpt-oss", "deepseek-r1-distill"])
def test_reasoning_the_template_drops_is_counted_and_warned(smol_tokenizer, name):
    tokenizer = family_tokenizer(smol_tokenizer, name)
    report = MaskReport()
    render_or_reject([reasoning_conversation(name)], tokenizer, report=report)
    dropped = 2 if name == "deepseek-r1-distill" else 1  # DeepSeek drops it from every turn, the others from history
    assert (report.reasoning_turns, report.reasoning_dropped) == (2, dropped)
    assert any("train their answer only" in w for w in report.warnings())


def test_gpt_oss_tool_history_is_located_in_the_full_render(smol_tokenizer):
    # The tool call's analysis is rendered while it is the last turn, and dropped once a final answer follows.
    tokenizer = family_tokenizer(smol_tokenizer, "gpt-oss")
    messages = tool_conversation("gpt-oss")
    messages[1] = {**messages[1], "thinking": "I should call the tool."}
    report = MaskReport()
    rendered = render_or_reject([messages], tokenizer, "assistant", [TOOLS], report=report)[0]
    assert trained_turns(tokenizer, smol_tokenizer, rendered) == TOOL_TURNS["gpt-oss"]
    assert report.turns["full render"] == 1
    assert any("renders a conversation differently" in w for w in report.warnings())


@pytest.mark.parametrize("name", ["deepseek-v3", "nemotron-3-nano", "phi3", "gpt-oss", "qwen3"])
def test_the_fast_path_is_taken_for_the_new_families(smol_tokenizer, name):
    tokenizer = family_tokenizer(smol_tokenizer, name)
    chats = [MULTI, SINGLE, SYSTEM, reasoning_conversation(name)] * 25
    state = FastPathState()
    fast = render_or_reject(chats, tokenizer, fast_state=state)
    assert fast == render_or_reject(chats, tokenizer, fast=False)
    # gpt-oss writes a last turn with analysis as two assistant messages (two headers): that one goes the exact way
    exact_ones = 25 if name == "gpt-oss" else 0
    assert not state.disabled and state.fast >= state.tried - exact_ones - 5


@pytest.mark.parametrize("name", ["phi3", "phi3.5"])
def test_phi3_markers_that_strip_the_newline_after_them(smol_tokenizer, name):
    # Phi-3's published tokenizer.json adds <|user|>, <|assistant|>, <|system|> and <|end|> with "rstrip": true, so
    # "<|end|>\n<|user|>\n" tokenizes as two tokens: the newlines are part of the markers' matches.
    from tokenizers import AddedToken

    from qlora4080.data.render import render_prompt

    tokenizer = copy.deepcopy(family_tokenizer(smol_tokenizer, name))
    tokenizer.add_special_tokens({"additional_special_tokens": [
        AddedToken(token, rstrip=True, lstrip=False, normalized=False, special=True) for token in PHI]})
    assert all(tokenizer.added_tokens_decoder[tokenizer.convert_tokens_to_ids(token)].rstrip for token in PHI)
    for messages in (SINGLE, MULTI, SYSTEM):
        exact = render_or_reject([messages], tokenizer, fast=False)[0]
        assert isinstance(exact, dict)
        assert trained_turns(tokenizer, smol_tokenizer, exact) == expected_turns(name, messages)
        # The ids are the whole render tokenized at once, as chat and eval tokenize a prompt: no newline token
        # after a marker that would strip it (piece by piece, the text after each turn would start with one).
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        assert exact["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = render_prompt(messages[:last], tokenizer)
        assert exact["input_ids"][:len(prompt)] == prompt
        assert exact["labels"][len(prompt) - 1] == IGNORE_INDEX and exact["labels"][len(prompt)] != IGNORE_INDEX
    state = FastPathState()
    batch = [MULTI, SINGLE, SYSTEM] * 10
    assert render_or_reject(batch, tokenizer, fast_state=state) == render_or_reject(batch, tokenizer, fast=False)
    assert not state.disabled and state.fast == state.tried == len(batch)  # one render each, equal to the exact path
