"""Writes the GRPO demo's prompts: one-step arithmetic word problems, each with its answer as the reference.

GRPO needs prompts and a way to score an answer, not answers to imitate. The
built-in SmolLM2-135M answers these at length, rarely right, and marks a final
number in about one answer in five ("The answer is 12."); the demo's rewards
(exact_match, answer_format, stopped) raise what it can already do sometimes.
Seeded, so the files are the same on every machine.

    python recipes/data/arithmetic_prompts/generate.py   # rewrites train.jsonl and validation.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
NAMES = ["Tom", "Ana", "Li", "Omar", "Sara", "Ken", "Maya", "Ivan", "Zoe", "Ravi", "Lena", "Yusuf"]
THINGS = ["apples", "books", "stamps", "marbles", "pencils", "stickers", "coins", "shells", "cards", "cookies"]
ADD = ["{n} has {a} {t} and gets {b} more. How many {t} does {n} have now?",
       "{n} had {a} {t}. A friend gave {n} {b} more. How many {t} does {n} have?",
       "There are {a} {t} in one box and {b} in another. How many {t} are there in all?"]
SUBTRACT = ["{n} has {a} {t} and gives away {b}. How many {t} are left?",
            "{n} had {a} {t} and lost {b} of them. How many {t} does {n} have now?"]


def problem(rng: random.Random) -> tuple[str, int]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    if rng.random() < 0.6:
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        return rng.choice(ADD).format(n=name, a=a, b=b, t=thing), a + b
    a = rng.randint(10, 60)
    b = rng.randint(1, a - 1)
    return rng.choice(SUBTRACT).format(n=name, a=a, b=b, t=thing), a - b


def main() -> None:
    rng = random.Random(2026)
    seen: set[str] = set()
    for split, count in (("train", 240), ("validation", 40)):
        lines = []
        while len(lines) < count:
            question, answer = problem(rng)
            if question in seen:
                continue
            seen.add(question)
            lines.append(json.dumps({"id": f"arithmetic-{split}-{len(lines):04d}", "prompt": question,
                                     "answer": str(answer), "tags": ["math"]}))
        (HERE / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"{split}: {len(lines)} prompts")


if __name__ == "__main__":
    main()
