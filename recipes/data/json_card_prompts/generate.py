"""Writes the GRPO demo's prompts: the DPO demo's sentences, each with its reference card as "answer".

GRPO needs no answers to imitate, only prompts and a way to score an answer.
These are the sentences of json_card_pairs (some leave the age, the job or
the city out) with the good card as the reference the rewards read; the
rewards (the recipe's [grpo] rewards, and rewards.py here) say what a good
card is: valid JSON, each field as the reference has it, null for what the
sentence does not say.

    python recipes/data/json_card_prompts/generate.py   # rewrites train.jsonl and validation.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
PAIRS = HERE.parent / "json_card_pairs"


def main() -> None:
    for split in ("train", "validation"):
        lines = []
        for line in (PAIRS / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            pair = json.loads(line)
            lines.append(json.dumps({"id": pair["id"].replace("-pair-", "-prompt-"), "prompt": pair["prompt"],
                                     "answer": pair["chosen"], "tags": ["json"], "kind": pair["kind"]},
                                    ensure_ascii=False))
        (HERE / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{split}: {len(lines)} prompts")


if __name__ == "__main__":
    main()
