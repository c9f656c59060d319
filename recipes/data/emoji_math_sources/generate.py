"""Writes local samples of the headline recipe's three sources, each in its own raw shape.

The qwen3_4b_emoji recipe mixes a zh/en emoji answer set, CMATH and MAWPS
through the data pipeline's named normalizers. These files have the fields
those data sets have on the hub, so the recipe builds and trains offline;
swap a `path` for `hub = "..."` in the recipe to use the real sets.

- emoji.jsonl   prompt, answer_zh, answer_en (answer_zh empty on some rows: the
                normalizer falls back to answer_en)
- cmath.jsonl   id, grade, question, golden (Chinese elementary word problems)
- mawps.jsonl   Question with N_0, N_1 placeholders, Numbers, Equation, Answer

    python recipes/data/emoji_math_sources/generate.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TOPICS = [
    ("How do I stay focused while studying?", "怎样才能专心学习？",
     "🎯 Pick one task, 📵 silence your phone, ⏱️ work in 25-minute blocks and ☕ take short breaks. You've got this! 💪",
     "🎯 一次只做一件事，📵 手机静音，⏱️ 每25分钟休息一下，☕ 喝口水。你可以的！💪"),
    ("Give me a tip for sleeping better.", "给我一个改善睡眠的建议。",
     "🌙 Keep a regular bedtime, 📱 put screens away an hour before, 🛏️ keep the room cool and dark. Sweet dreams! 😴",
     "🌙 固定作息，📱 睡前一小时放下手机，🛏️ 保持房间凉爽黑暗。晚安！😴"),
    ("What should I pack for a beach day?", "去海边一天要带什么？",
     "🧴 Sunscreen, 🕶️ sunglasses, 💧 plenty of water, 🩴 sandals and a 📖 good book. Have fun! 🏖️",
     "🧴 防晒霜，🕶️ 太阳镜，💧 足够的水，🩴 拖鞋，再带一本📖好书。玩得开心！🏖️"),
    ("How can I save money on groceries?", "买菜怎么省钱？",
     "📝 Shop with a list, 🥫 buy staples in bulk, 🍲 cook at home and 🏷️ compare unit prices. 💰",
     "📝 列好清单，🥫 批量买常用品，🍲 在家做饭，🏷️ 比较单价。💰"),
    ("How do I start running?", "怎样开始跑步？",
     "👟 Good shoes first, 🚶 walk-run intervals for two weeks, 📈 add five minutes a week, 💧 drink water. 🏃",
     "👟 先买双好鞋，🚶 前两周走跑结合，📈 每周加五分钟，💧 多喝水。🏃"),
    ("Suggest a quick healthy breakfast.", "推荐一个快速健康的早餐。",
     "🥣 Oats with 🍌 banana and 🥜 nuts, or 🍳 eggs on 🍞 wholegrain toast. Ready in five minutes! ⏰",
     "🥣 燕麦加🍌香蕉和🥜坚果，或者🍳鸡蛋配🍞全麦面包。五分钟搞定！⏰"),
]
STYLES = ["", " Keep it short.", " Please use emoji.", " Answer in one line."]
ZH_STYLES = ["", "简短一点。", "请用表情符号。", "一句话回答。"]
ZH_NAMES = ["小明", "小红", "小刚", "小丽", "小华", "小芳"]
ZH_ITEMS = [("苹果", "个"), ("铅笔", "支"), ("故事书", "本"), ("气球", "个"), ("小鱼", "条")]
EN_NAMES = ["Lina", "Omar", "Mei", "Jonas", "Ava", "Ravi", "Sofia", "Kenji"]
EN_ITEMS = ["apples", "books", "cookies", "balloons", "stickers", "marbles"]


def emoji_rows(rng: random.Random) -> list[dict]:
    rows = []
    for en_q, zh_q, en_a, zh_a in TOPICS:
        for style, zh_style in zip(STYLES, ZH_STYLES):
            rows.append({"prompt": en_q + style, "answer_zh": "", "answer_en": en_a})  # no zh answer: falls back to en
            rows.append({"prompt": zh_q + zh_style, "answer_zh": zh_a, "answer_en": en_a})
    rng.shuffle(rows)
    return rows


def cmath_rows(rng: random.Random, count: int) -> list[dict]:
    rows = []
    for index in range(count):
        name, (item, unit) = rng.choice(ZH_NAMES), rng.choice(ZH_ITEMS)
        a, b = rng.randint(3, 60), rng.randint(2, 40)
        kind = rng.randrange(3)
        if kind == 0:
            question, golden = f"{name}有{a}{unit}{item}，又买了{b}{unit}，现在一共有多少{unit}{item}？", a + b
        elif kind == 1:
            question, golden = f"{name}有{a + b}{unit}{item}，送给同学{b}{unit}，还剩多少{unit}{item}？", a
        else:
            a, b = rng.randint(2, 9), rng.randint(2, 9)
            question, golden = f"每盒有{a}{unit}{item}，{name}买了{b}盒，一共有多少{unit}{item}？", a * b
        rows.append({"id": f"cmath-sample-{index:04d}", "grade": rng.randint(1, 3), "question": question,
                     "golden": str(golden), "reasoning_step": 1})
    return rows


def mawps_rows(rng: random.Random, count: int) -> list[dict]:
    rows = []
    for _ in range(count):
        name, item = rng.choice(EN_NAMES), rng.choice(EN_ITEMS)
        a, b = float(rng.randint(3, 80)), float(rng.randint(2, 40))
        if rng.random() < 0.5:
            question = f"{name} has N_0 {item}. A friend gives {name} N_1 more. How many {item} does {name} have now?"
            equation, answer = "N_0 + N_1", a + b
        else:
            a += b
            question = f"{name} had N_0 {item} and gave away N_1 of them. How many {item} does {name} have left?"
            equation, answer = "N_0 - N_1", a - b
        rows.append({"Question": question, "Numbers": f"{a} {b}", "Equation": equation, "Answer": answer})
    return rows


def main() -> None:
    rng = random.Random(3407)
    here = Path(__file__).parent
    files = {"emoji.jsonl": emoji_rows(rng), "cmath.jsonl": cmath_rows(rng, 240), "mawps.jsonl": mawps_rows(rng, 240)}
    for name, rows in files.items():
        with (here / name).open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
