"""`eval` on held-out prompts: each model's greedy answers scored by the rewards the run trained with.

Columns as in every eval: "adapter" (the checkpoint); with --baseline also
"base" (adapter off) and, for a run that continued an SFT checkpoint, "sft"
(that adapter, loaded beside the trained one). Metrics: the mean total reward
(weighted as in training), each reward's mean over the answers it scored, the
share of answers that ended their turn, and their mean length. The rewards
come from the checkpoint's recipe snapshot, so eval scores what training
raised, with the same files of yours.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from ..checkpoint import RECIPE_SNAPSHOT
from ..errors import QloraError
from .grpo_settings import GRPOSection

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from ..eval_report import AnswerRow, EvalReport, Metrics
    from ..infer import ChatModel
    from .prompt_records import PromptRecord
    from .rewards import Rewards
    from .spec import EvalOutcome, EvalRequest


def trained_settings(checkpoint: Path) -> GRPOSection:
    """The [grpo] table of the recipe snapshot saved with the checkpoint (or with the run, for checkpoint-N)."""
    from pydantic import ValidationError

    from ..toml_io import TOMLDecodeError, read_toml

    snapshot = next((folder / RECIPE_SNAPSHOT for folder in (checkpoint, checkpoint.parent)
                     if (folder / RECIPE_SNAPSHOT).is_file()), None)
    if snapshot is None:
        raise QloraError(f"{checkpoint} has no {RECIPE_SNAPSHOT}, so the rewards it was trained with are unknown",
                         where=str(checkpoint), hint="evaluate a checkpoint written by `qlora4080 train`")
    try:
        table = read_toml(snapshot).get("grpo", {})
        return GRPOSection.model_validate(table)
    except (OSError, TOMLDecodeError, ValidationError) as error:
        raise QloraError(f"the [grpo] table of {snapshot} cannot be read: {error}", where=str(snapshot)) from error


def evaluate_prompt_file(request: EvalRequest) -> EvalOutcome:
    """`eval` on a file of prompts: every reward of the run on each model's greedy answers (base, SFT start, adapter)."""
    from ..console import console
    from ..infer import load_for_chat
    from .prompt_records import read_prompt_records
    from .rewards import recipe_rewards
    from .spec import EvalOutcome

    settings = trained_settings(Path(request.checkpoint))
    if not settings.rewards:  # a run of another method: its snapshot's [grpo] table is the default, with no rewards
        raise QloraError(f"{request.source} holds prompts, which eval scores with the rewards a GRPO run trained with, "
                         f"and {request.checkpoint} was trained with training.method = {request.settings.method!r}",
                         where="--data", hint="for the generation eval (perplexity, usability, exact match), pass a file "
                                              "of conversations: messages that end with the reference answer")
    read = read_prompt_records(request.source)
    for problem in read.rejected[:5]:
        console.print(f"skipped {problem}", style="yellow", markup=False, soft_wrap=True)
    records = read.records[: request.limit] if request.limit else read.records
    if not records:
        raise QloraError(f"no usable prompt in {request.source}", where=str(request.source),
                         hint='each line needs "prompt" (and "answer", the reference the rewards read)')
    chat = load_for_chat(request.checkpoint)
    rewards = recipe_rewards(settings, Path, chat.tokenizer)  # the snapshot's paths are absolute
    started = Path(request.settings.started_from) if request.settings.started_from else None
    report = evaluate_prompts(chat, records, rewards, max_new_tokens=settings.max_completion_length,
                              baseline=request.baseline, sft_adapter=started, batch_size=request.batch_size)
    return EvalOutcome(report, f"Rewards of greedy answers to {len(records)} prompts of {request.source}")


def evaluate_prompts(chat: ChatModel, records: list[PromptRecord], rewards: Rewards, *, max_new_tokens: int,
                     baseline: bool = False, sft_adapter: Path | None = None, batch_size: int = 8) -> EvalReport:
    """Each model's answers and their rewards: "adapter" (or "model"), with baseline "base" and "sft" before it."""
    from ..eval_report import EvalReport

    metrics: dict[str, Metrics] = {}
    rows: dict[str, list[AnswerRow]] = {}
    if baseline and chat.has_adapter:
        metrics["base"], rows["base"] = _score(chat, records, rewards, max_new_tokens, batch_size, use_adapter=False)
        if sft_adapter is not None and sft_adapter.is_dir():
            from ..infer import beside_adapter

            with beside_adapter(chat, sft_adapter):
                metrics["sft"], rows["sft"] = _score(chat, records, rewards, max_new_tokens, batch_size)
    name = "adapter" if chat.has_adapter else "model"
    metrics[name], rows[name] = _score(chat, records, rewards, max_new_tokens, batch_size)
    return EvalReport(metrics, rows)


def _score(chat: ChatModel, records: list[PromptRecord], rewards: Rewards, max_new_tokens: int, batch_size: int,
           use_adapter: bool = True) -> tuple[Metrics, list[AnswerRow]]:
    from transformers import TrainerState

    from ..eval_report import AnswerRow
    from ..infer import generate_answers

    answers = generate_answers(chat, [r.prompt for r in records], max_new_tokens=max_new_tokens, batch_size=batch_size,
                               use_adapter=use_adapter)
    stop = chat.stop_ids[0] if chat.stop_ids else None
    columns = {  # what TRL passes a reward in training: the dataset's columns, its state, its logging hooks
        "prompts": [r.prompt for r in records],
        "completions": [[{"role": "assistant", "content": a.text}] for a in answers],
        # as TRL passes them: an answer that ended its turn keeps its end-of-turn token
        "completion_ids": [[*a.token_ids, stop] if a.stopped and stop is not None else list(a.token_ids) for a in answers],
        "answer": [r.answer for r in records],
        "tags": [list(r.tags) for r in records],
        "id": [r.id for r in records],
        "trainer_state": TrainerState(),
        "log_extra": lambda column, values: None,
        "log_metric": lambda name, value: None,
    }
    scores = {name: _values(function(**columns)) for name, function in zip(rewards.names, rewards.functions)}
    totals = []
    for index in range(len(records)):  # as TRL sums them: a reward that did not score an answer adds nothing
        given = [(weight, scores[name][index]) for name, weight in zip(rewards.names, rewards.weights)]
        totals.append(sum(weight * value for weight, value in given if value is not None)
                      if any(value is not None for _, value in given) else math.nan)
    scored_totals = [t for t in totals if not math.isnan(t)]
    metrics: dict[str, float | int | dict[str, int]] = {
        "reward": sum(scored_totals) / len(scored_totals) if scored_totals else 0.0,
        "stopped_rate": sum(a.stopped for a in answers) / len(answers),
        "answer_tokens": sum(len(a.token_ids) for a in answers) / len(answers),
        "failures": {},
    }
    for name, values in scores.items():
        scored = [v for v in values if v is not None]
        if scored:
            metrics[f"reward/{name}"] = sum(scored) / len(scored)
    rows = [AnswerRow(record.id, answer.text, answer.stopped, () if answer.stopped else ("no end-of-turn",),
                      {name: scores[name][index] for name in scores})
            for index, (record, answer) in enumerate(zip(records, answers))]
    return metrics, rows


def _values(result: object) -> list[float | None]:
    """A guarded reward's scores; an async reward's coroutine is run to its end (TRL awaits it in training)."""
    import asyncio
    import inspect
    from typing import cast

    if inspect.isawaitable(result):
        result = asyncio.run(cast("Coroutine[object, object, object]", result))
    return list(cast("list[float | None]", result))
