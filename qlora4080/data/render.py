"""Messages + tokenizer -> input_ids and labels, built together so they never drift.

Works for any chat template, including ones without `{% generation %}`
markers, by rendering prefixes of the conversation and diffing strings:

    prompt_i = render(messages[:i], add_generation_prompt=True)   # ends with the assistant header
    upto_i   = render(messages[:i+1])                             # ... + assistant turn i

The text after `prompt_i` in `upto_i` is assistant turn i as the template
writes it. Its trained part runs to the end of the first special token after
the content (the end-of-turn token, e.g. `<|im_end|>`, `<|eot_id|>`,
`<end_of_turn>`), so the model learns to stop; whitespace the template puts
after that token (a newline) and the role header are not trained. No
per-model marker strings are needed.

Each piece of text (untrained, trained, untrained, ...) is tokenized on its
own and the ids concatenated, the way inference sees it: the prompt is
tokenized, then the answer's tokens follow.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from ..errors import QloraError
from .validate import structure_problem

IGNORE_INDEX = -100
TrainOn = Literal["assistant", "last_assistant", "all"]
TRAIN_ON_CHOICES: tuple[str, ...] = ("assistant", "last_assistant", "all")


class TemplateError(QloraError):
    """The chat template cannot be split into prompt and answer consistently: the template's fault, so it stops the run."""


class TemplateRefusal(QloraError):
    """The chat template raised on one conversation (jinja `raise_exception`, a role it does not support).

    Unlike TemplateError this is about the record, not the template: the record
    is dropped with this reason and the others go on.
    """


def render_conversation(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    train_on: TrainOn = "assistant",
    tools: list[dict[str, Any]] | None = None,
) -> dict[str, list[int]]:
    """Tokenize one conversation with the tokenizer's chat template.

    Returns {"input_ids": [...], "labels": [...]} of equal length; labels are
    IGNORE_INDEX (-100) on every token that must not carry loss.
    """
    return render_conversations([messages], tokenizer, train_on, [tools])[0]


def render_conversations(
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    tokenizer: Any,
    train_on: TrainOn = "assistant",
    tools: Sequence[list[dict[str, Any]] | None] | None = None,
    fast: bool = True,
) -> list[dict[str, list[int]]]:
    """render_conversation for many conversations at once (much faster); the first bad one raises."""
    results = render_many(conversations, tokenizer, train_on, tools, fast)
    for result in results:
        if isinstance(result, QloraError):
            raise result
    return results  # type: ignore[return-value]


def render_many(
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    tokenizer: Any,
    train_on: TrainOn = "assistant",
    tools: Sequence[list[dict[str, Any]] | None] | None = None,
    fast: bool = True,
) -> list[dict[str, list[int]] | QloraError]:
    """ids + labels for every conversation, or the QloraError that rejects that one.

    A conversation is rejected on its own when its turns are out of order
    (validate.structure_problem) or the template refuses it (TemplateRefusal).
    With `fast`, batches take the one-render path (fast_masks.py), which is
    checked against this module's exact method and falls back to it; without,
    every conversation is rendered prefix by prefix. A template that cannot be
    split consistently raises TemplateError, for all of them.
    """
    from .fast_masks import render_batch  # it builds on this module

    if train_on not in TRAIN_ON_CHOICES:
        raise QloraError(f"train_on must be one of {', '.join(TRAIN_ON_CHOICES)}, not {train_on!r}")
    record_tools = list(tools) if tools is not None else [None] * len(conversations)

    def exact(indices: Iterable[int]) -> list[dict[str, list[int]] | QloraError]:
        indices = list(indices)
        outcome: dict[int, dict[str, list[int]] | QloraError] = {}
        plans: list[tuple[int, tuple[list[str], list[bool]]]] = []
        for index in indices:
            try:
                plans.append((index, plan_pieces(conversations[index], tokenizer, train_on, record_tools[index])))
            except TemplateError:
                raise
            except QloraError as exc:  # this conversation only (TemplateRefusal, turn order)
                outcome[index] = exc
        for (index, _), rendered in zip(plans, tokenize_plans([plan for _, plan in plans], tokenizer)):
            outcome[index] = rendered
        return [outcome[index] for index in indices]

    if not fast:
        return exact(range(len(conversations)))
    return render_batch(conversations, tokenizer, train_on, record_tools, exact)


def tokenize_plans(plans: Sequence[tuple[list[str], list[bool]]], tokenizer: Any) -> list[dict[str, list[int]]]:
    """Tokenize the pieces of many planned conversations in one call; build ids and labels together."""
    all_pieces = [piece for pieces, _ in plans for piece in pieces]
    encoded = iter(_tokenize_pieces(tokenizer, all_pieces))
    results = []
    for pieces, trained in plans:
        input_ids: list[int] = []
        labels: list[int] = []
        for is_trained in trained:
            ids = next(encoded)
            input_ids += ids
            labels += ids if is_trained else [IGNORE_INDEX] * len(ids)
        results.append({"input_ids": input_ids, "labels": labels})
    return results


def plan_pieces(
    messages: Sequence[Mapping[str, Any]], tokenizer: Any, train_on: TrainOn = "assistant", tools: Any = None
) -> tuple[list[str], list[bool]]:
    """The rendered conversation cut into text pieces, each marked trained or not (no tokenization yet)."""
    if train_on not in TRAIN_ON_CHOICES:
        raise QloraError(f"train_on must be one of {', '.join(TRAIN_ON_CHOICES)}, not {train_on!r}")
    messages = [dict(m) for m in messages]
    problem = structure_problem(messages)
    if problem:
        raise QloraError(problem)
    assistant_turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]

    full = _render(tokenizer, messages, tools, add_generation_prompt=False)
    if train_on == "all":
        return [full], [True]
    _require_generation_prompt(tokenizer, messages, tools)
    chosen = assistant_turns if train_on == "assistant" else assistant_turns[-1:]
    try:
        # Prefixes through the compiled template (no per-call copying); every span is still checked against
        # the exact full render, and any disagreement is settled by the exact path below.
        spans = [_assistant_span(tokenizer, messages, tools, i, full, _render_fast) for i in chosen]
    except TemplateError:
        spans = [_assistant_span(tokenizer, messages, tools, i, full, _render) for i in chosen]

    pieces: list[str] = []
    trained: list[bool] = []
    position = 0
    for start, end in spans:
        pieces += [full[position:start], full[start:end]]
        trained += [False, True]
        position = end
    pieces.append(full[position:])
    trained.append(False)
    return pieces, trained


def _assistant_span(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, index: int, full: str,
                    render: Any) -> tuple[int, int]:
    """Character span [start, end) of assistant turn `index`'s trained text inside `full`."""
    prompt = render(tokenizer, messages[:index], tools, add_generation_prompt=True)
    if not full.startswith(prompt):
        raise TemplateError(
            f"the chat template renders the conversation differently when it is cut before message {index} "
            "(it rewrites earlier turns or the assistant header), so trained tokens cannot be located reliably",
            hint="use a template that renders earlier turns the same way whatever follows them, or train_on = \"last_assistant\"",
        )
    is_last = index == len(messages) - 1
    # Rendered as the final message, turn `index` is what the model will produce at inference.
    upto = full if is_last else render(tokenizer, messages[: index + 1], tools, add_generation_prompt=False)
    if not upto.startswith(prompt):
        raise TemplateError(
            f"the chat template renders the conversation differently when it is cut after message {index}",
            hint="use a template that renders earlier turns the same way whatever follows them, or train_on = \"last_assistant\"",
        )
    segment = upto[len(prompt):]
    length = _trained_length(segment, messages[index].get("content"), special_tokens(tokenizer))
    start, end = len(prompt), len(prompt) + length
    if full[start:end] != segment[:length]:
        raise TemplateError(
            f"assistant message {index} is rendered differently once later messages follow it",
            hint="use a template that renders earlier turns the same way whatever follows them, or train_on = \"last_assistant\"",
        )
    return start, end


_GENERATION_PROMPT_OK: weakref.WeakKeyDictionary[Any, dict[str, bool]] = weakref.WeakKeyDictionary()


def _require_generation_prompt(tokenizer: Any, messages: list[dict[str, Any]], tools: Any) -> None:
    """The template must write an assistant header for add_generation_prompt; checked once per template."""
    template = str(tokenizer.chat_template)
    try:
        known = _GENERATION_PROMPT_OK.setdefault(tokenizer, {})
    except TypeError:
        known = {}
    if template not in known:
        probe = messages[: next(i for i, m in enumerate(messages) if m.get("role") == "assistant")]
        known[template] = _render(tokenizer, probe, tools, True) != _render(tokenizer, probe, tools, False)
    if not known[template]:
        raise TemplateError(
            "the chat template ignores add_generation_prompt, so the assistant header cannot be told apart from the answer",
            hint="set [model] chat_template to a template that writes the assistant header when add_generation_prompt is true",
        )


def _trained_length(segment: str, content: Any, specials: tuple[str, ...]) -> int:
    """Length of the assistant segment to train: up to and including its end-of-turn special token."""
    search_from = 0
    if isinstance(content, str) and content.strip():
        found = segment.find(content.strip())
        if found >= 0:
            search_from = found + len(content.strip())
    ends = [(p, len(tok)) for tok in specials if (p := segment.find(tok, search_from)) >= 0]
    if ends:
        position, width = min(ends)
        return position + width
    # No special token closes the turn: train the turn without trailing whitespace.
    return len(segment.rstrip())


_SPECIALS_CACHE: weakref.WeakKeyDictionary[Any, tuple[str, ...]] = weakref.WeakKeyDictionary()


def special_tokens(tokenizer: Any) -> tuple[str, ...]:
    """Special tokens of the tokenizer (named ones and added ones marked special)."""
    try:
        return _SPECIALS_CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    names = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for added in getattr(tokenizer, "added_tokens_decoder", {}).values():
        if getattr(added, "special", False):
            names.add(str(added.content))
    result = tuple(sorted((n for n in names if n), key=len, reverse=True))
    try:
        _SPECIALS_CACHE[tokenizer] = result
    except TypeError:
        pass
    return result


def _render(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):  # no conversation could render: stop, not drop each one
        raise TemplateError(
            "the tokenizer has no chat template",
            hint="use an instruct/chat model, or set [model] chat_template to a .jinja file",
        )
    try:
        text = tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as exc:  # jinja raise_exception(...) and friends: about this conversation, not the template
        raise TemplateRefusal(f"the chat template refused the conversation: {exc}") from exc
    return text


def _render_fast(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, add_generation_prompt: bool) -> str:
    """The compiled template rendered directly, as apply_chat_template would but without copying the messages."""
    return compiled_renderer(tokenizer)(messages, tools, add_generation_prompt)


def compiled_renderer(tokenizer: Any) -> Callable[[list[dict[str, Any]], Any, bool], str]:
    """render(messages, tools, add_generation_prompt) through the compiled template, set up once for many calls.

    Failures raise TemplateError so that callers can leave the decision to the exact path.
    """
    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:  # a transformers without it: the exact path only
        return lambda messages, tools, add_generation_prompt: _render(tokenizer, messages, tools, add_generation_prompt)
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


def _tokenize_pieces(tokenizer: Any, pieces: list[str]) -> list[list[int]]:
    # The template already wrote BOS and every special token as text.
    non_empty = [p for p in pieces if p]
    encoded = iter(tokenizer(non_empty, add_special_tokens=False)["input_ids"]) if non_empty else iter(())
    return [next(encoded) if p else [] for p in pieces]


def render_prompt(messages: Sequence[Mapping[str, Any]], tokenizer: Any, tools: list[dict[str, Any]] | None = None) -> list[int]:
    """Token ids of a conversation ready for the next assistant answer (used by chat and eval)."""
    text = _render(tokenizer, [dict(m) for m in messages], tools, add_generation_prompt=True)
    return _tokenize_pieces(tokenizer, [text])[0]


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Token ids that close an assistant turn in this template (what generation should stop on).

    Found the same way training finds them: render a one-turn conversation and
    take the last trained token, plus the tokenizer's EOS.
    """
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    ids: list[int] = []
    try:
        labels = render_conversation(probe, tokenizer)["labels"]
        trained = [label for label in labels if label != IGNORE_INDEX]
        if trained:
            ids.append(trained[-1])
    except QloraError:
        pass
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
