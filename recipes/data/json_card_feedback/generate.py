"""Writes the KTO demo's feedback: single answers to the DPO demo's sentences, each labelled good or bad.

KTO learns from a thumbs up or down on one answer, the signal a product
collects, not from two answers to one prompt. This data is the DPO demo's
pairs (json_card_pairs, same sentences, same rule: a card says null for what
the sentence does not say) taken apart as such feedback would arrive:

- train: per pair, one case in three keeps both answers (the good card
  labelled true, the invented or wrongly-null one false), one in three only
  the good card, one in three only the bad one; so most prompts have a single
  labelled answer and the two labels are about as many.
- validation: both answers of every held-out pair, so `qlora4080 eval` can ask
  how often a model scores a prompt's good card above its bad one.

    python recipes/data/json_card_feedback/generate.py   # rewrites train.jsonl and validation.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
PAIRS = HERE.parent / "json_card_pairs"


def feedback(pair: dict, keep: str) -> list[dict]:
    """The pair's answers as labelled records: "both", "good" or "bad"."""
    records = []
    if keep in ("both", "good"):
        records.append({"id": f"{pair['id']}-good", "prompt": pair["prompt"], "completion": pair["chosen"],
                        "label": True, "kind": pair["kind"]})
    if keep in ("both", "bad"):
        records.append({"id": f"{pair['id']}-bad", "prompt": pair["prompt"], "completion": pair["rejected"],
                        "label": False, "kind": pair["kind"]})
    return records


def main() -> None:
    rng = random.Random(8041)
    for split in ("train", "validation"):
        pairs = [json.loads(line) for line in (PAIRS / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        with (HERE / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            for pair in pairs:
                keep = rng.choice(("both", "good", "bad")) if split == "train" else "both"
                for record in feedback(pair, keep):
                    handle.write(json.dumps({**record, "source": "json_card_feedback"}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
