"""Writes a small local stand-in for the qwen3_4b_emoji recipe's data: emoji-styled answers + word problems.

The headline recipe mixes a zh/en emoji answer set with CMATH and MAWPS. Those
come from the hub; until they are built by the data pipeline, this sample (in
the same messages format) lets the recipe run offline end to end.

    python recipes/data/emoji_math_sample/generate.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ITEMS = [("apples", "🍎"), ("books", "📚"), ("cookies", "🍪"), ("balloons", "🎈"), ("stars", "⭐"), ("fish", "🐟")]
NAMES = ["Lina", "Omar", "Mei", "Jonas", "Ava", "Ravi", "Sofia", "Kenji"]
TOPICS = [
    ("How do I stay focused while studying?", "🎯 Pick one task, 📵 silence your phone, ⏱️ work in 25-minute blocks, and ☕ take short breaks. You've got this! 💪"),
    ("Give me a tip for sleeping better.", "🌙 Keep a regular bedtime, 📱 put screens away an hour before, and 🛏️ keep the room cool and dark. Sweet dreams! 😴"),
    ("What should I pack for a beach day?", "🧴 Sunscreen, 🕶️ sunglasses, 💧 plenty of water, 🩴 sandals and a 📖 good book. Have fun! 🏖️"),
    ("How can I save money on groceries?", "📝 Shop with a list, 🥫 buy staples in bulk, 🍲 cook at home and 🏷️ compare unit prices. Your wallet will thank you! 💰"),
    ("怎样才能坚持锻炼？", "🏃 从每天十分钟开始，📅 固定时间，👫 找个伙伴一起，🎉 每完成一周就奖励自己！加油！💪"),
    ("推荐一个放松的方法。", "🧘 试试深呼吸：吸气四秒，屏住四秒，呼气四秒。🍵 再喝杯热茶，心情会好很多！😊"),
]


def word_problem(rng: random.Random) -> dict:
    name, (item, emoji) = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(3, 40), rng.randint(2, 30)
    if rng.random() < 0.5:
        question = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        answer = f"{emoji} {a} + {b} = {a + b}. {name} has {a + b} {item} now! ✅"
    else:
        a = a + b
        question = f"{name} has {a} {item} and gives away {b}. How many {item} are left?"
        answer = f"{emoji} {a} - {b} = {a - b}. {name} has {a - b} {item} left! ✅"
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], "tags": ["math"]}


def main() -> None:
    rng = random.Random(3407)
    here = Path(__file__).parent
    records = [word_problem(rng) for _ in range(110)]
    records += [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], "tags": ["emoji"]} for q, a in TOPICS
    ]
    rng.shuffle(records)
    splits = {"train": records[:100], "validation": records[100:]}
    for split, rows in splits.items():
        with (here / f"{split}.jsonl").open("w", encoding="utf-8") as handle:
            for index, row in enumerate(rows):
                handle.write(json.dumps({"id": f"emoji-math-{split}-{index:03d}", **row, "source": "emoji_math_sample"}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
