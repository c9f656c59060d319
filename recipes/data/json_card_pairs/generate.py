"""Writes the DPO demo's preference pairs: one sentence about a person, a good card and a flawed one.

The SFT demo (recipes/data/json_cards) teaches the house style: answer with
exactly {"name", "age", "job", "city"} as compact JSON and nothing else. These
pairs sharpen it. "chosen" is the card exactly as the SFT data writes it, age a
JSON number; "rejected" is the same card with one flaw the SFT model could
plausibly produce, recorded in "flaw":

- age_string:  "age": "44" instead of "age": 44
- prose:       the card wrapped in a sentence ("Here is the card: {...}")
- remark:      a trailing remark after the JSON ("{...} Hope this helps!")

The people, templates and card come from json_cards/generate.py (imported by
path, so the two datasets never drift apart), drawn with another seed; a
sentence that is also an SFT demo prompt is skipped, so every pair is new.

    python recipes/data/json_card_pairs/generate.py   # rewrites train.jsonl and validation.jsonl
"""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).parent
SFT_DATA = HERE.parent / "json_cards"
FLAWS = ("age_string", "prose", "remark")

PROSE = [
    "Here is the card: {card}",
    "Sure! Here is the JSON card:\n{card}",
    "Here's the information as JSON: {card}",
    "The card for {name}:\n{card}",
    "Of course. {card}",
    "Based on the sentence, the card is {card}",
]
REMARKS = [
    "{card}\n\nLet me know if you need anything else.",
    "{card} Hope this helps!",
    "{card}\n\nNote: the age is given in years.",
    "{card}\nAll four fields were found in the sentence.",
    "{card} (extracted from your message)",
    "{card}\n\nIs there anything else you would like to know about {first}?",
]


def sft_generator() -> ModuleType:
    """recipes/data/json_cards/generate.py, loaded by path (recipes/ is not a package)."""
    spec = importlib.util.spec_from_file_location("json_cards_generate", SFT_DATA / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sft_prompts() -> set[str]:
    """Every user sentence of the SFT demo data (train and validation)."""
    prompts = set()
    for split in ("train", "validation"):
        for line in (SFT_DATA / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            prompts.add(json.loads(line)["messages"][0]["content"])
    return prompts


def flawed(person: dict, flaw: str, rng: random.Random) -> str:
    """The card with one flaw; `person` is the card's dict, age an int."""
    card = json.dumps(person, ensure_ascii=False)
    if flaw == "age_string":
        return json.dumps({**person, "age": str(person["age"])}, ensure_ascii=False)
    if flaw == "prose":
        return rng.choice(PROSE).format(card=card, name=person["name"])
    return rng.choice(REMARKS).format(card=card, first=person["name"].split()[0])


def main() -> None:
    sft = sft_generator()
    taken = sft_prompts()
    rng = random.Random(8040)  # not the SFT demo's 4080
    for split, count in (("train", 200), ("validation", 40)):
        # An exact, shuffled mix: each flaw a third of the pairs.
        flaws = [FLAWS[i % len(FLAWS)] for i in range(count)]
        rng.shuffle(flaws)
        with (HERE / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            for index, flaw in enumerate(flaws):
                while True:
                    record = sft.card(rng)
                    prompt, chosen = (message["content"] for message in record["messages"])
                    if prompt not in taken:
                        break
                taken.add(prompt)
                pair = {"id": f"json-card-pair-{split}-{index:04d}", "prompt": prompt, "chosen": chosen,
                        "rejected": flawed(json.loads(chosen), flaw, rng), "flaw": flaw,
                        "source": "json_card_pairs"}
                handle.write(json.dumps(pair, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
