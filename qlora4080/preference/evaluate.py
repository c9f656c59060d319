"""`eval` on held-out preference pairs: how often each model prefers the chosen answer, and by how much.

Rows of the report, like the conversation eval's: "adapter" (the checkpoint),
with --baseline also "base" (adapter off) and, for a run that continued an
SFT checkpoint, "sft" (that adapter, loaded beside the trained one).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..eval_report import EvalReport, Metrics, MetricValue, PairRow
from .pairs import PreferencePair
from .score import PairLogProbs, pair_log_probs, preference_score
from .tokens import tokenize_pairs

if TYPE_CHECKING:
    from ..infer import ChatModel
    from ..methods.spec import EvalOutcome, EvalRequest


def looks_like_pairs(path: Path) -> bool:
    """Whether a JSONL file holds preference pairs ("chosen"/"rejected") rather than conversations."""
    from itertools import islice

    from ..data.jsonl import read_jsonl
    from .pairs import mostly_pairs

    return mostly_pairs([record for _, record, _problem in islice(read_jsonl(path), 20)])


def evaluate_pairs(chat: ChatModel, pairs: list[PreferencePair], *, max_seq_len: int, baseline: bool = False,
                   sft_adapter: Path | None = None, batch_size: int = 8) -> EvalReport:
    """Metrics and per-pair margins of the checkpoint ("adapter"), with baseline also "base" and "sft" before it."""
    tokenized = tokenize_pairs(pairs, chat.tokenizer, max_seq_len)
    rows = tokenized.rows
    scores: dict[str, PairLogProbs] = {}
    if baseline and chat.has_adapter:
        scores["base"] = pair_log_probs(chat.model, rows, batch_size=batch_size, adapter_off=True)
        if sft_adapter is not None and sft_adapter.is_dir():
            from ..infer import beside_adapter

            with beside_adapter(chat, sft_adapter):
                scores["sft"] = pair_log_probs(chat.model, rows, batch_size=batch_size)
    scores["adapter" if chat.has_adapter else "model"] = pair_log_probs(chat.model, rows, batch_size=batch_size)
    report: dict[str, Metrics] = {}
    records: dict[str, list[PairRow]] = {}
    # DPO's own measure: does the model prefer the chosen answer more than the model it started from does?
    # (the plain comparison saturates once the starting model already prefers every chosen answer)
    reference = scores.get("sft", scores.get("base"))
    for name, logps in scores.items():
        score = preference_score(logps)
        metrics: dict[str, MetricValue] = {"pairs": score.pairs, "preference_accuracy": score.accuracy,
                                      "mean_margin": score.mean_margin, "failures": {}}
        if reference is not None and name in ("adapter", "model"):  # the trained model against where it started
            relative = preference_score(logps, reference)
            metrics |= {"reward_accuracy": relative.accuracy, "reward_margin": relative.mean_margin}
        report[name] = metrics
        records[name] = [PairRow(pair.id, c - r, c > r) for pair, c, r in zip(tokenized.kept, logps.chosen, logps.rejected)]
    return EvalReport(report, records)


def evaluate_pair_file(request: EvalRequest) -> EvalOutcome:
    """`eval` on a file of preference pairs: how often each model prefers the chosen answer (base, SFT start, adapter)."""
    from ..console import console, warn
    from ..errors import QloraError
    from ..infer import load_for_chat
    from ..methods.spec import EvalOutcome
    from .pairs import read_pairs

    read = read_pairs(request.source)
    for problem in read.rejected[:5]:
        console.print(f"skipped {problem}", style="yellow", markup=False, soft_wrap=True)
    if not read.pairs:
        raise QloraError(f"no usable preference pair in {request.source}", where=str(request.source),
                         hint='each line needs "prompt", "chosen" and "rejected"')
    pairs = read.pairs[:request.limit] if request.limit else read.pairs
    settings = request.settings
    sft = Path(settings.started_from) if settings.started_from else None
    if request.baseline and sft is not None and not sft.is_dir():
        warn(f"the checkpoint this run started from, {sft}, is not there any more: the table has no sft column, and "
             "the rows 'than the model it started from' compare with the base model instead")
        sft = None
    model = load_for_chat(request.checkpoint)
    with console.status(f"scoring {len(pairs)} pairs"):
        report = evaluate_pairs(model, pairs, max_seq_len=settings.max_seq_len, baseline=request.baseline,
                                batch_size=request.batch_size, sft_adapter=sft)
    return EvalOutcome(report, f"Preference evaluation on {len(pairs)} pairs of {request.source}")
