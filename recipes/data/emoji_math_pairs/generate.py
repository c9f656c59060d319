"""Writes preference pairs for the headline recipe's second stage (recipes/qwen3_4b_emoji_dpo.toml).

Each pair takes a word problem of the emoji-math sample: chosen is its answer
as the SFT data writes it (an emoji, the sum, the sentence, a check mark);
rejected is either the same answer with the arithmetic off by one or a plain
answer without the house style. So the preference stage sharpens what SFT
taught: correct numbers, in the style.

    python recipes/data/emoji_math_pairs/generate.py   # rewrites train.jsonl and validation.jsonl
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

HERE = Path(__file__).parent
SAMPLE = HERE.parent / "emoji_math_sample"
NUMBER = re.compile(r"\d+")


def off_by_one(answer: str, rng: random.Random) -> str:
    """The answer with its result (the number after '=') changed everywhere it appears."""
    match = re.search(r"=\s*(\d+)", answer)
    if match is None:
        return answer + " (maybe)"
    right = match.group(1)
    wrong = str(int(right) + rng.choice((-1, 1)))
    return re.sub(rf"\b{right}\b", wrong, answer)


def plain(answer: str) -> str:
    """The same answer without the emoji and the check mark."""
    return re.sub(r"[^\w\s.,:;!?+\-=()'/%]", "", answer).replace("!", ".").strip()


def pairs(source: Path, rng: random.Random) -> list[dict[str, object]]:
    rows = []
    for line in source.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        user, assistant = record["messages"][0]["content"], record["messages"][-1]["content"]
        flaw = rng.choice(("off by one", "no style"))
        rejected = off_by_one(assistant, rng) if flaw == "off by one" else plain(assistant)
        if rejected == assistant:
            continue
        rows.append({"id": record["id"].replace("emoji-math", "emoji-pair"), "prompt": user, "chosen": assistant,
                     "rejected": rejected, "flaw": flaw})
    return rows


def main() -> None:
    rng = random.Random(4080)
    for split in ("train", "validation"):
        rows = pairs(SAMPLE / f"{split}.jsonl", rng)
        (HERE / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{split}: {len(rows)} pairs")


if __name__ == "__main__":
    main()
