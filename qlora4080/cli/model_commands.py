"""The commands that load a trained model: chat, eval, generate, export.

Everything that can be checked without the model (the files read, the paths
written) is checked first, because loading takes seconds to minutes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..console import console
from ..errors import QloraError
from ..runlock import holding, is_held, lock_path_outside
from .app import app
from .friendly import friendly_errors
from .outputs import check_input_file, check_output_file, check_output_folder, run_folder

if TYPE_CHECKING:
    from ..batch_infer import PromptFile
    from ..eval_report import EvalReport
    from ..gguf_export import GgufResult
    from ..methods.spec import MethodSpec


@app.command()
@friendly_errors
def chat(
    checkpoint: str = typer.Argument(..., help="checkpoints/<run>, a model directory, or builtin:<name>"),
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="Answer this one prompt and exit."),
    tests: Path | None = typer.Option(None, "--tests", help="Run predefined prompts (.txt one a line, or .jsonl) and save the answers."),
    save: Path | None = typer.Option(None, "--save", help="With --tests: where to append answers (default <runs_dir>/<run>/chat_tests.jsonl)."),
    system: str | None = typer.Option(None, "--system", help="System prompt."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 = greedy (deterministic)."),
    compare: bool = typer.Option(False, "--compare", help="With --prompt: also show the base model's answer."),
) -> None:
    """Chat with a trained adapter (streaming), answer one --prompt, or run --tests."""
    from ..chat import answer_once, chat_loop, is_text, read_test_prompts, run_tests
    from ..infer import load_for_chat

    if prompt is None and compare:
        raise QloraError("--compare works with --prompt", where="--compare")
    if prompt is not None and not is_text(prompt):  # bytes that are not UTF-8 arrive as lone surrogates
        raise QloraError("the prompt is not valid UTF-8 text", where="--prompt",
                         hint="pass the prompt as UTF-8 (check the terminal's or the script's encoding)")
    if prompt is None and tests is None and (sys.stdin is None or sys.stdin.closed):
        raise QloraError("standard input is closed, so there is nothing to chat with", where="stdin",
                         hint="run it in a terminal, pipe prompts in, or pass --prompt TEXT or --tests FILE")
    if tests is None and save is not None:
        raise QloraError("--save works with --tests", where="--save", hint="qlora4080 chat CHECKPOINT --tests prompts.txt --save answers.jsonl")
    if tests is not None:  # a bad file or an unwritable --save fails before the model loads
        check_input_file(tests, "--tests", "tests file")
        test_prompts = read_test_prompts(tests)
        target = save or run_folder(checkpoint) / "chat_tests.jsonl"
        check_output_file(target, "--save", given=save is not None)
        from ..batch_infer import prepare_output

        prepare_output(tests, target, "--save")  # answers are appended: never into the prompts or another file
        run_tests(load_for_chat(checkpoint), test_prompts, target, system=system, max_new_tokens=max_new_tokens,
                  temperature=temperature)
        console.print(f"answers saved to {target}")
        return
    model = load_for_chat(checkpoint)
    if prompt is not None:
        answer_once(model, prompt, system=system, compare=compare, max_new_tokens=max_new_tokens, temperature=temperature)
        return
    piped = not sys.stdin.isatty()
    if piped:
        console.print("(reading prompts from standard input, one per line)", style="dim")
    chat_loop(model, system=system, echo=piped, max_new_tokens=max_new_tokens, temperature=temperature)


@app.command("eval")
@friendly_errors
def evaluate_command(
    checkpoint: str = typer.Argument(..., help="checkpoints/<run> (or a model directory)"),
    data: Path | None = typer.Option(None, "--data", help="JSONL of conversations (default: the run's validation file)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N records."),
    baseline: bool = typer.Option(False, "--baseline", help="Also evaluate the base model (adapter off) and show the difference."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    out: Path | None = typer.Option(None, "--out", help="Folder for eval.json and eval.md (default <runs_dir>/<run>)."),
) -> None:
    """Perplexity on assistant tokens, usability and JSON validity of generated answers, exact match (math) and token F1;
    preference accuracy on pairs."""
    from rich.progress import Progress

    from ..checkpoint import CheckpointMeta
    from ..data.conversations import read_conversations
    from ..evaluate import evaluate, to_eval_records, write_report
    from ..infer import load_for_chat, read_checkpoint_meta
    from ..methods.spec import EvalRequest

    meta = read_checkpoint_meta(checkpoint)
    settings = meta or CheckpointMeta(base_model=str(checkpoint))  # a plain model folder: the recipe defaults
    source = data or (Path(meta.validation_file) if meta and meta.validation_file else None)
    if source is None and meta is None and is_held(Path(checkpoint)):
        raise QloraError(f"{checkpoint} is still training: its adapter is saved when the run ends", where=str(checkpoint),
                         hint=f"wait for the run to finish, or evaluate a checkpoint it has saved: {checkpoint}/checkpoint-N")
    if source is None:
        raise QloraError("no data to evaluate on: the run had no validation file", where="--data", hint="pass --data FILE.jsonl")
    folder = out or run_folder(checkpoint)
    check_output_folder(folder, "--out", given=out is not None)
    from ..evaluate import check_report_folder

    check_report_folder(folder, "--out")
    if source.is_file() and (method := _method_evaluating(source)) is not None:
        assert method.evaluate is not None
        outcome = method.evaluate(EvalRequest(checkpoint, source, settings, limit, baseline, batch_size))
        _print_report(outcome.report, outcome.title)
        json_path, md_path = write_report(outcome.report, folder, str(source))
        console.print(f"saved {json_path} and {md_path}")
        return
    conversations = read_conversations(source)
    for problem in conversations.rejected[:5]:
        console.print(f"skipped {problem}", style="yellow", markup=False, soft_wrap=True)
    records = to_eval_records(conversations.records, limit, source=str(source))
    model = load_for_chat(checkpoint)
    passes = 2 if (baseline and model.has_adapter) else 1
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("generating", total=len(records) * passes)
        report = evaluate(model, records, baseline=baseline, max_new_tokens=max_new_tokens, batch_size=batch_size,
                          max_seq_len=settings.max_seq_len, train_on=settings.train_on,
                          on_batch=lambda n: progress.advance(task, n))
    _print_report(report, f"Evaluation on {len(records)} records of {source}")
    json_path, md_path = write_report(report, folder, str(source))
    console.print(f"saved {json_path} and {md_path}")


def _method_evaluating(source: Path) -> MethodSpec | None:
    """The method whose own eval reads this file's records (pairs: dpo's), or None: the generation eval."""
    from itertools import islice

    from ..data.jsonl import read_jsonl
    from ..methods.registry import METHODS

    first = [record for _, record, _problem in islice(read_jsonl(source), 20)]
    return next((spec for spec in METHODS.values() if spec.evaluate is not None and spec.records.detect(first)), None)


def _print_report(report: EvalReport, title: str) -> None:
    from rich.table import Table

    from ..evaluate import report_rows

    header, rows = report_rows(report)
    table = Table(title=title, title_justify="left")
    for column in header:
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command()
@friendly_errors
def generate(
    checkpoint: str = typer.Argument(..., help="checkpoints/<run>, a merged model directory, or a base model"),
    input: Path = typer.Option(..., "--input", "-i", help='JSONL: {"prompt": ...} or {"messages": [...]} per line.'),
    output: Path = typer.Option(..., "--output", "-o", help="JSONL of answers; ids already there are skipped (resume)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
) -> None:
    """Batch inference: answer every prompt of a JSONL file (greedy), resumable."""
    from ..batch_infer import prepare_output, read_prompts
    from ..runlock import holding, lock_path_outside

    parsed = read_prompts(input)
    prepare_output(input, output, repair=False)  # a wrong -i or -o is refused before anything is written
    with holding(output, f"generate into {output}", lock_path_outside(output)):  # two runs on one output would answer every id twice
        _generate(checkpoint, parsed, input, output, max_new_tokens, batch_size)


def _generate(checkpoint: str, parsed: PromptFile, input: Path, output: Path, max_new_tokens: int, batch_size: int) -> None:
    from rich.progress import Progress

    from ..batch_infer import prepare_output, run_batch
    from ..infer import load_for_chat

    resume = prepare_output(input, output)  # under the lock: a cut-off last line is ours to repair
    for problem in parsed.rejected:
        console.print(f"skipped {problem}", style="yellow", markup=False, soft_wrap=True)
    if resume.note:
        console.print(resume.note, style="yellow", markup=False, soft_wrap=True)
    todo = [p for p in parsed.prompts if p.id not in resume.done]
    console.print(f"{len(parsed.prompts)} prompts, {len(parsed.prompts) - len(todo)} already answered in {output}, "
                  f"{len(todo)} to go, {len(parsed.rejected)} bad line(s) skipped")
    if todo:
        model = load_for_chat(checkpoint)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("generating", total=len(todo))
            run_batch(model, todo, output, max_new_tokens=max_new_tokens, batch_size=batch_size,
                      on_batch=lambda n: progress.advance(task, n))
        console.print(f"answers written to {output}")
    if parsed.rejected:
        raise typer.Exit(1)


@app.command()
@friendly_errors
def export(
    checkpoint: Path = typer.Argument(..., help="checkpoints/<run>"),
    merged: Path | None = typer.Option(None, "--merged", help="Folder for the merged 16-bit model (safetensors + tokenizer)."),
    gguf: str | None = typer.Option(None, "--gguf", help="Also/instead write GGUF with llama.cpp's converter: f16, bf16, q8_0, "
                                    "q4_k_m or q5_k_m; checked with llama.cpp and given an Ollama Modelfile."),
    gguf_dir: Path | None = typer.Option(None, "--gguf-dir", help="Folder for the GGUF file and Ollama Modelfile (default <merged>-gguf)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the contents of a non-empty output folder."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="With --gguf: load the GGUF in llama.cpp and check its "
                                "template, end-of-turn tokens and greedy answers against the merged model."),
    prompt: str | None = typer.Option(None, "--prompt", help="Prompt used to check the merged model against the adapter."),
    push_to_hub: str | None = typer.Option(None, "--push-to-hub", help="Upload to this hub repo (owner/name) with a model card: "
                                           "the adapter, or with --merged the merged model."),
    private: bool = typer.Option(False, "--private", help="With --push-to-hub: create the repo private."),
) -> None:
    """Merge LoRA into the base and save a standalone model (verified against base + adapter); publish to the hub."""
    from ..export import export_merged, prepare_push, publish
    from ..gguf_export import check_quant, export_gguf, gguf_tooling_problem, gguf_unavailable

    if merged is None and gguf is None and push_to_hub is None:
        raise QloraError("nothing to export", hint="pass --merged OUT_DIR, --gguf QUANT and/or --push-to-hub owner/name")
    if private and push_to_hub is None:
        raise QloraError("--private works with --push-to-hub", where="--private")
    # No network or no token fails here, in seconds, before a merge that takes minutes.
    token = prepare_push(checkpoint, push_to_hub) if push_to_hub is not None else None
    gguf_target = gguf_dir or Path(f"{merged or checkpoint}-gguf")
    if merged is not None:
        check_output_folder(merged, "--merged")
    if gguf is not None:
        check_output_folder(gguf_target, "--gguf-dir", given=gguf_dir is not None)
    if gguf is not None and (problem := gguf_tooling_problem(check_quant(gguf), verify)):  # before a merge of minutes
        raise gguf_unavailable(problem)
    # Two exports into one folder once both "succeeded", each replacing the other's files as it went.
    with _export_locks([merged, gguf_target if gguf is not None else None]):
        if merged is not None:
            result = export_merged(checkpoint, merged, overwrite=overwrite, prompt=prompt, repo_id=push_to_hub)
            console.print(f"[green]merged model saved to {result.out_dir}[/]")
            console.print(f"check prompt: {result.prompt}", markup=False)
            console.print(f"  base + adapter: {result.adapter_answer}", markup=False)
            console.print(f"  merged (plain transformers): {result.merged_answer}", markup=False)
            if result.answers_match:
                console.print("[green]verified: the merged model gives the same greedy answer as base + adapter[/]")
            else:
                console.print("[yellow]the merged model's answer differs from base + adapter: merging rounds the LoRA update "
                              "into the weights' dtype; compare them on more prompts with qlora4080 eval[/]")
            if result.agreement is not None:
                shown = result.agreement
                console.print(f"trained on a 4-bit base: the merged 16-bit model gives the 4-bit model's greedy answer on "
                              f"{shown['same_answers']} of {shown['prompts']} validation prompts (the same first token on "
                              f"{shown['same_first_token']}); the difference is the 4-bit rounding, which a merge cannot keep")
        if gguf is not None:
            written = export_gguf(checkpoint, gguf_target, gguf, overwrite=overwrite, verify=verify, merged_dir=merged)
            show_gguf(written)
        if push_to_hub is not None and token is not None:
            with console.status(f"uploading {merged or checkpoint} to {push_to_hub}"):
                pushed = publish(checkpoint, push_to_hub, token=token, private=private, merged_dir=merged)
            if pushed.kept_own_card:
                console.print("README.md has no qlora4080 marker line, so your own card was uploaded as it is")
            console.print(f"[green]uploaded to {pushed.url}[/]")


def show_gguf(written: GgufResult) -> None:
    """What export --gguf wrote and what llama.cpp confirmed (the same figures are in qlora4080_gguf.json)."""
    record = written.record
    console.print(f"[green]GGUF written to {written.path}[/] ({int(str(record['bytes'])) / 1e6:.1f} MB, "
                  f"converted in {record['convert_seconds']} s)")
    check = record.get("verification")
    if isinstance(check, dict):
        console.print(f"verified with llama.cpp on {check['prompts']} test prompts: the GGUF's chat template renders and "
                      f"tokenizes each one as training did; end of turn {', '.join(check['end_of_turn'])} is "
                      f"end-of-generation; the merged model's greedy answers get the same log-probabilities within "
                      f"{check['logprob_difference_nats']['mean']} nats on average (worst "
                      f"{check['logprob_difference_nats']['worst']}; {record['quant']} allows {check['tolerance_nats']['mean']} "
                      f"/ {check['tolerance_nats']['worst']}); llama.cpp's own greedy answers equal the merged model's "
                      f"first {check['greedy_tokens_compared']} tokens on {check['greedy_agreement']} prompts",
                      markup=False, soft_wrap=True)
    else:
        console.print(f"[yellow]not checked with llama.cpp: {check}[/]")
    if written.modelfile is not None:
        console.print(f"Ollama Modelfile: {written.modelfile} (cd {written.path.parent} && ollama create NAME -f Modelfile)",
                      markup=False, soft_wrap=True)
    else:
        console.print(f"no Modelfile: {written.modelfile_problem}", style="yellow", markup=False, soft_wrap=True)


@contextmanager
def _export_locks(targets: list[Path | None]) -> Iterator[None]:
    """Hold every output folder of this export: a second export into one of them fails at once, naming this one."""
    with ExitStack() as held:
        for target in targets:
            if target is not None:
                held.enter_context(holding(target, f"export into {target}", lock_path_outside(target),
                                           hint="wait for that export to finish, or export into another folder"))
        yield
