"""The interactive chat loop: streaming answers, history, /reset, /system, /exit, Ctrl-D."""

from __future__ import annotations

from typing import Any

from .console import console
from .infer import ChatModel, generate

HELP = "Commands: /reset (forget the conversation), /system <text> (set the system prompt), /exit (or Ctrl-D). Ctrl-C stops an answer."


def chat_loop(
    chat: ChatModel, *, system: str | None = None, max_new_tokens: int = 256, temperature: float = 0.0, echo: bool = False
) -> None:
    """Read a line, answer it, repeat. `echo` repeats piped input so a transcript reads like a conversation."""
    console.print(f"[bold]Chatting with {chat.description}[/]")
    console.print(HELP, style="dim")
    history: list[dict[str, Any]] = []
    while True:
        try:
            line = console.input("[bold green]you>[/] ")
            if echo:
                console.print(line, markup=False)
        except EOFError:
            console.print()
            break
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
        history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        console.print("[bold blue]assistant>[/] ", end="")
        try:
            answer = generate(chat, messages, max_new_tokens=max_new_tokens, temperature=temperature, on_text=_write)
        except KeyboardInterrupt:
            # Ctrl-C stops this answer only; the unanswered question is dropped from the history.
            console.print("\n(answer interrupted)", style="dim")
            history.pop()
            continue
        console.print()
        history.append({"role": "assistant", "content": answer})


def _write(text: str) -> None:
    console.print(text, end="", markup=False, highlight=False, soft_wrap=True)
    console.file.flush()


def answer_once(
    chat: ChatModel, prompt: str, *, system: str | None = None, max_new_tokens: int = 256, temperature: float = 0.0, compare: bool = False
) -> str:
    """`chat --prompt`: one answer, streamed; with `compare`, the base model's answer first."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    if compare and chat.has_adapter:
        console.print("[bold]base model (adapter off):[/]")
        generate(chat, messages, max_new_tokens=max_new_tokens, temperature=temperature, on_text=_write, use_adapter=False)
        console.print()
        console.print("[bold]with the trained adapter:[/]")
    answer = generate(chat, messages, max_new_tokens=max_new_tokens, temperature=temperature, on_text=_write)
    console.print()
    return answer
