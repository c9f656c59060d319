"""`data preview` for preference pairs: each pair as two samples, its prompt dimmed, the answer highlighted."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..data.preview import PreviewRow, segments
from ..data.vocabulary import IGNORE_INDEX
from .pairs import PreferencePair
from .tokens import tokenize_pair

if TYPE_CHECKING:
    from ..model_types import Tokenizer


def pair_preview_rows(pairs: list[PreferencePair], tokenizer: Tokenizer, max_seq_len: int) -> list[PreviewRow]:
    """Two rows per pair ("<id> chosen", "<id> rejected"): what DPO scores is the highlighted answer."""
    rows: list[PreviewRow] = []
    for pair in pairs:
        tokens = tokenize_pair(pair, tokenizer)
        if isinstance(tokens, str):
            rows.append({"id": pair.id, "tokens": 0, "trained": 0, "cut": 0, "skipped": tokens,
                         "segments": [(f"training skips this pair: {tokens}", False)]})
            continue
        for side in ("chosen", "rejected"):
            prompt, answer = tokens["prompt_ids"], tokens[f"{side}_ids"]
            ids = (prompt + answer)[:max_seq_len]
            labels = ([IGNORE_INDEX] * len(prompt) + answer)[:max_seq_len]
            trained = sum(label != IGNORE_INDEX for label in labels)
            rows.append({
                "id": f"{pair.id} {side}",
                "tokens": len(ids),
                "trained": trained,
                "cut": len(prompt) + len(answer) - len(ids),
                "segments": segments(ids, labels, tokenizer),
                "strategy": "the answer as SFT trains a last assistant turn",
            })
    return rows
