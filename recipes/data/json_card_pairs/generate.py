"""Writes the DPO demo's preference pairs: a card must say null for what the sentence does not say.

The SFT demo (recipes/data/json_cards) teaches the house style: answer with
exactly {"name", "age", "job", "city"} as compact JSON and nothing else. Every
SFT sentence gives all four fields, so the SFT model has never seen one left
out, and when a sentence leaves one out it invents it ("age": 30 for a person
whose age nobody mentioned). It prefers the invented card by log-probability
too, so DPO has something to change. Each pair records its "kind":

- missing_<field>: the sentence leaves out age, job or city; "chosen" says
  null there, "rejected" invents a plausible value (the SFT model's mistake).
- complete: the sentence gives all four; "chosen" is the card, "rejected" says
  null for a field the sentence does give, so the preference is "null for what
  is missing", not "null everywhere".

Three pairs in four are missing_*, one in four complete. The names, jobs and
cities come from json_cards/generate.py (imported by path, so the two datasets
never drift apart), drawn with another seed; a sentence the SFT demo already
trained on is drawn again, so every pair is new to the SFT model.

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
FIELDS = ("age", "job", "city")

# Sentences that leave one field out, in the shapes of the SFT demo's templates.
LEAVING_OUT = {
    "age": [
        "{name} is a {job} from {city}.",
        "Meet {name}: works as a {job}, lives in {city}.",
        "My neighbour {name} is a {job} in {city}.",
        "{city}-based {job} {name} joined the team today.",
        "New member: {name}, {job}, from {city}.",
        "Profile: {name} | {job} | {city}",
    ],
    "job": [
        "{name} is {age} and lives in {city}.",
        "Meet {name}: {age}, lives in {city}.",
        "My neighbour {name} ({age}) lives in {city}.",
        "New member: {name}, {age} years old, from {city}.",
        "{name} moved to {city} at {age}.",
        "Profile: {name} | {age} | {city}",
    ],
    "city": [
        "{name} is a {age}-year-old {job}.",
        "Meet {name}: {age}, works as a {job}.",
        "My neighbour {name} ({age}) is a {job}.",
        "New member: {name}, {job}, {age} years old.",
        "Our {job}, {name}, turned {age} last week.",
        "Profile: {name} | {age} | {job}",
    ],
}


def sft_generator() -> ModuleType:
    """recipes/data/json_cards/generate.py, loaded by path (recipes/ is not a package)."""
    spec = importlib.util.spec_from_file_location("json_cards_generate", SFT_DATA / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def invented(field: str, person: dict, sft: ModuleType, rng: random.Random) -> object:
    """A plausible value for `field` that differs from the person's own."""
    choices = {"age": list(range(19, 72)), "job": sft.JOBS, "city": sft.CITIES}[field]
    return rng.choice([value for value in choices if value != person[field]])


def sft_prompts() -> set[str]:
    """Every user sentence of the SFT demo data (train and validation)."""
    prompts = set()
    for split in ("train", "validation"):
        for line in (SFT_DATA / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            prompts.add(json.loads(line)["messages"][0]["content"])
    return prompts


def pair(kind: str, sft: ModuleType, rng: random.Random) -> dict:
    person = {"name": f"{rng.choice(sft.FIRST)} {rng.choice(sft.LAST)}", "age": rng.randint(19, 71),
              "job": rng.choice(sft.JOBS), "city": rng.choice(sft.CITIES)}
    they = rng.choice(["She", "He"])
    if kind == "complete":
        sentence = rng.choice(sft.TEMPLATES).format(they=they, **person)
        chosen, rejected = person, {**person, rng.choice(FIELDS): None}
    else:
        field = kind.removeprefix("missing_")
        sentence = rng.choice(LEAVING_OUT[field]).format(**person)
        chosen, rejected = {**person, field: None}, {**person, field: invented(field, person, sft, rng)}
    return {"prompt": sentence, "chosen": json.dumps(chosen, ensure_ascii=False),
            "rejected": json.dumps(rejected, ensure_ascii=False), "kind": kind}


def main() -> None:
    sft = sft_generator()
    rng = random.Random(8040)  # not the SFT demo's 4080
    taken = sft_prompts()  # so every pair is new to the SFT model, and no pair is in both splits
    kinds = ("missing_age", "missing_job", "missing_city", "complete")
    for split, count in (("train", 200), ("validation", 40)):
        # An exact, shuffled mix: each kind a quarter of the pairs.
        order = [kinds[i % len(kinds)] for i in range(count)]
        rng.shuffle(order)
        with (HERE / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            for index, kind in enumerate(order):
                while (drawn := pair(kind, sft, rng))["prompt"] in taken:
                    pass
                taken.add(drawn["prompt"])
                record = {"id": f"json-card-pair-{split}-{index:04d}", **drawn, "source": "json_card_pairs"}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
