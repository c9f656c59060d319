"""The interactive chat loop: streaming answers, history, /reset, /system, /exit, Ctrl-D."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .console import console
from .infer import ChatModel, generate

if TYPE_CHECKING:
    from .data.vocabulary import Message

HELP = "Commands: /reset (forget the conversation), /system <text> (set the system prompt), /exit (or Ctrl-D). Ctrl-C stops an answer."


def is_text(value: str) -> bool:
    """False for a str holding lone surrogates: bytes that were not UTF-8, which no tokenizer can encode."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def chat_loop(
    chat: ChatModel, *, system: str | None = None, max_new_tokens: int = 256, temperature: float = 0.0, echo: bool = False
) -> None:
    """Read a line, answer it, repeat. `echo` repeats piped input so a transcript reads like a conversation."""
    console.print(f"[bold]Chatting with {chat.description}[/]")
    console.print(HELP, style="dim")
    history: list[Message] = []
    while True:
        try:
            line = console.input("[bold green]you>[/] ")
            if echo:
                console.print(line, markup=False)
        except EOFError:
            console.print()
            break
        except UnicodeDecodeError:  # piped bytes that are not UTF-8: that line is skipped, not the chat ended
            line = "\udcff"
        if not is_text(line):  # (read with surrogateescape, such bytes arrive as lone surrogates)
            console.print("(that line is not UTF-8 text; skipped)", style="yellow")
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = []
            console.print("(conversation cleared)", style="dim")
            continue
        if text == "/system" or text.startswith("/system "):
            system = text[len("/system"):].strip() or None
            history = []
            console.print(f"(system prompt {'set' if system else 'cleared'}; conversation cleared)", style="dim")
            continue
        if text.startswith("/"):
            console.print(f"unknown command {text.split()[0]}. {HELP}", style="yellow")
            continue
        fitted, dropped = fit_history(chat, system, [*history, {"role": "user", "content": text}], max_new_tokens)
        if not fitted:  # the conversation so far stays as it was
            console.print(f"(that message alone does not fit the model's {chat.context}-token context with room for "
                          f"a {max_new_tokens}-token answer; not sent)", style="yellow")
            continue
        history = fitted
        if dropped:
            console.print(f"(the {dropped} oldest messages were dropped to fit the model's {chat.context}-token context)",
                          style="dim")
        messages = with_system(system, history)
        try:
            answer = stream_answer(chat, messages, label="[bold blue]assistant>[/]", max_new_tokens=max_new_tokens, temperature=temperature)
        except KeyboardInterrupt:
            # Ctrl-C stops this answer only; the unanswered question is dropped from the history.
            console.print("\n(answer interrupted)", style="dim")
            history.pop()
            continue
        history.append({"role": "assistant", "content": answer})


def fit_history(chat: ChatModel, system: str | None, history: list[Message],
                max_new_tokens: int) -> tuple[list[Message], int]:
    """Drop the oldest exchanges until the prompt plus an answer fit the model's context.

    Returns the history that fits and how many messages were dropped; the
    history is empty when the newest message alone does not fit. The system
    prompt is always kept.
    """
    if not chat.context:
        return history, 0
    from .data.render import render_prompt

    kept = list(history)
    while kept:
        if len(render_prompt(with_system(system, kept), chat.tokenizer)) + max_new_tokens <= chat.context:
            break
        # Cut at the next user turn, so the kept history still starts with a question.
        cut = next((i for i in range(1, len(kept)) if kept[i]["role"] == "user"), len(kept))
        kept = kept[cut:]
    return kept, len(history) - len(kept)


def with_system(system: str | None, messages: list[Message]) -> list[Message]:
    """The conversation with `system` as its system prompt, unless it has one already."""
    if not system or (messages and messages[0]["role"] == "system"):
        return list(messages)
    return [{"role": "system", "content": system}, *messages]


def stream_answer(chat: ChatModel, messages: list[Message], *, use_adapter: bool = True, label: str | None = None,
                  max_new_tokens: int = 256, temperature: float = 0.0) -> str:
    """Stream an answer: rendered as Markdown while it grows on a terminal, plain text elsewhere.

    `label` (Rich markup) goes before the answer: on its own line above a live
    Markdown view (which redraws whole lines), on the same line in plain text.
    """
    if not console.is_terminal:
        if label:
            console.print(label + " ", end="")
        answer = generate(chat, messages, on_text=_write, use_adapter=use_adapter, max_new_tokens=max_new_tokens,
                          temperature=temperature)
        console.print()
        return answer
    from rich.live import Live
    from rich.markdown import Markdown

    if label:
        console.print(label)
    text = ""
    with Live(Markdown(""), console=console, refresh_per_second=10, vertical_overflow="visible") as live:
        def grow(piece: str) -> None:
            nonlocal text
            text += piece
            live.update(Markdown(text))

        answer = generate(chat, messages, on_text=grow, use_adapter=use_adapter, max_new_tokens=max_new_tokens,
                          temperature=temperature)
        live.update(Markdown(answer))
    return answer


def _write(text: str) -> None:
    console.print(text, end="", markup=False, highlight=False, soft_wrap=True)
    console.file.flush()


def answer_once(
    chat: ChatModel, prompt: str, *, system: str | None = None, max_new_tokens: int = 256, temperature: float = 0.0, compare: bool = False
) -> str:
    """`chat --prompt`: one answer, streamed; with `compare`, the base model's answer first."""
    messages = with_system(system, [{"role": "user", "content": prompt}])
    fitted, _ = fit_history(chat, system, [{"role": "user", "content": prompt}], max_new_tokens)
    if not fitted:  # a 100,000-character prompt once ran for minutes past the model's positions, then answered "_____"
        from .errors import QloraError

        raise QloraError(f"the prompt does not fit the model's {chat.context}-token context with room for a "
                         f"{max_new_tokens}-token answer", where="--prompt",
                         hint="shorten the prompt (or lower --max-new-tokens)")
    if compare and chat.has_adapter:
        console.print("[bold]base model (adapter off):[/]")
        stream_answer(chat, messages, max_new_tokens=max_new_tokens, temperature=temperature, use_adapter=False)
        console.print("[bold]with the trained adapter:[/]")
    return stream_answer(chat, messages, max_new_tokens=max_new_tokens, temperature=temperature)


def read_test_prompts(path: Path) -> list[tuple[str, list[Message]]]:
    """A file of test prompts: JSONL ({"prompt"} or {"messages"}) or plain text, one prompt a line."""
    from .batch_infer import read_prompts
    from .errors import QloraError

    if not path.is_file():
        raise QloraError(f"tests file not found: {path}", where="--tests")
    if path.suffix == ".jsonl":
        parsed = read_prompts(path)
        if parsed.rejected:
            raise QloraError(f"bad test prompt: {parsed.rejected[0]}", where=str(path))
        return [(p.id, p.messages) for p in parsed.prompts]
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [(f"line-{n}", [{"role": "user", "content": line}]) for n, line in enumerate(lines, start=1) if line and not line.startswith("#")]


def run_tests(chat: ChatModel, tests: list[tuple[str, list[Message]]], save_to: Path, *, system: str | None = None,
              max_new_tokens: int = 256, temperature: float = 0.0) -> Path:
    """Each predefined prompt in turn; answers printed and appended to `save_to` (JSONL)."""
    save_to.parent.mkdir(parents=True, exist_ok=True)
    with save_to.open("a", encoding="utf-8") as handle:
        for index, (identifier, messages) in enumerate(tests, start=1):
            messages = with_system(system, messages)
            console.rule(f"[bold]test {index}/{len(tests)}[/] ({identifier})")
            console.print("[bold green]you>[/] ", end="")
            console.print(messages[-1]["content"], markup=False, highlight=False)
            answer = stream_answer(chat, messages, max_new_tokens=max_new_tokens, temperature=temperature)
            handle.write(json.dumps({"id": identifier, "prompt": messages[-1]["content"], "answer": answer}, ensure_ascii=False) + "\n")
            handle.flush()
    return save_to
