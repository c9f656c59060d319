"""Writes the demo dataset: sentences about a person -> a compact JSON card.

The house style the demo teaches: whatever sentence describes a person, the
assistant answers with exactly {"name", "age", "job", "city"} as JSON and
nothing else. The prompts never ask for JSON, so the base model does not do
this by itself; the change after training is visible and checkable.

    python recipes/data/json_cards/generate.py   # rewrites train.jsonl and validation.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

FIRST = ["Maria", "Liam", "Aisha", "Kenji", "Olga", "Mateo", "Chloe", "Ravi", "Fatima", "Lucas", "Ingrid", "Tomasz", "Amara", "Diego", "Yuki", "Hannah", "Omar", "Sofia", "Erik", "Priya", "Noah", "Leila", "Pablo", "Mei", "Jonas", "Zara", "Felix", "Nadia", "Hugo", "Elif", "Samuel", "Anya", "Bruno", "Keiko", "Ahmed", "Clara", "Ivan", "Lucia", "Tariq", "Emma", "Viktor", "Rosa", "Daniel", "Ayumi", "Marco", "Freya", "Malik", "Greta", "Jamal", "Lena", "Andre", "Sana", "Oscar", "Ines", "Pedro", "Nora", "Kofi", "Alma"]
LAST = ["Lopez", "Chen", "Okafor", "Tanaka", "Ivanova", "Rossi", "Martin", "Patel", "Haddad", "Silva", "Larsen", "Nowak", "Mensah", "Garcia", "Sato", "Weber", "Aziz", "Costa", "Berg", "Sharma", "Dubois", "Novak", "Kim", "Fischer", "Moreau", "Ali", "Jansen", "Romero", "Park", "Yilmaz", "Cohen", "Petrov", "Santos", "Ito", "Hassan", "Muller", "Kovacs", "Lind", "Nakamura", "Adeyemi"]
CITIES = ["Lisbon", "Osaka", "Lagos", "Toronto", "Krakow", "Lyon", "Austin", "Pune", "Cairo", "Bergen", "Seville", "Busan", "Nairobi", "Leipzig", "Quito", "Perth", "Izmir", "Porto", "Dublin", "Hanoi", "Ghent", "Tampere", "Cordoba", "Denver", "Tunis", "Malmo", "Bologna", "Accra", "Kyoto", "Graz", "Bilbao", "Recife", "Gdansk", "Oslo", "Zagreb", "Valencia", "Chennai", "Boston", "Bristol", "Utrecht"]
JOBS = ["nurse", "carpenter", "teacher", "pilot", "chemist", "baker", "architect", "plumber", "journalist", "librarian", "electrician", "dentist", "photographer", "gardener", "pharmacist", "translator", "welder", "veterinarian", "accountant", "firefighter", "florist", "engineer", "mechanic", "surveyor", "chef", "tailor", "geologist", "paramedic", "locksmith", "illustrator"]

TEMPLATES = [
    "{name} is a {age}-year-old {job} from {city}.",
    "Meet {name}: {age}, works as a {job}, lives in {city}.",
    "My neighbour {name} ({age}) is a {job} in {city}.",
    "{city}-based {job} {name}, aged {age}, joined the team today.",
    "I talked to {name} yesterday. {they} is {age}, a {job}, and lives in {city}.",
    "New member: {name}, {job}, {age} years old, from {city}.",
    "{name}, {age}, {job}, {city}.",
    "Our {job}, {name}, turned {age} last week in {city}.",
    "Have you met {name}? {they} works as a {job} in {city} and is {age}.",
    "{name} moved to {city} at {age} and now works as a {job}.",
    "Profile: {name} | {age} | {job} | {city}",
    "Please welcome {name}, a {job} ({age}) who commutes from {city}.",
]


def card(rng: random.Random) -> dict:
    person = {
        "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
        "age": rng.randint(19, 71),
        "job": rng.choice(JOBS),
        "city": rng.choice(CITIES),
    }
    sentence = rng.choice(TEMPLATES).format(they=rng.choice(["She", "He"]), **person)
    answer = json.dumps(person, ensure_ascii=False)
    return {"messages": [{"role": "user", "content": sentence}, {"role": "assistant", "content": answer}], "tags": ["json"]}


def main() -> None:
    rng = random.Random(4080)
    here = Path(__file__).parent
    for split, count in (("train", 320), ("validation", 40)):
        with (here / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            for index in range(count):
                record = {"id": f"json-card-{split}-{index:04d}", **card(rng), "source": "json_cards"}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
