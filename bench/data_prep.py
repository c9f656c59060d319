"""Data preparation throughput and padding waste, measured on this machine.

    .venv/bin/python bench/data_prep.py [--conversations 2000] [--repeats 3]

1. Render + mask throughput (conversations/s and tokens/s), side by side on the
   same multi-turn conversations and the same tokenizer (SmolLM2's, with the
   Qwen3-Instruct-2507 chat template, which TRL ships in a `{% generation %}`
   training variant):
   - raw-tokenizer     the floor: the tokenizer call (`tokenizer(texts)`) on the already rendered text
   - raw-backend       a lower floor: the Rust backend's encode_batch_fast on the same text
   - qlora4080         render_or_reject (ids + labels, any template; what training runs, with a
                       fresh FastPathState per call as training has: one render per conversation,
                       checked against the exact method)
   - qlora4080-exact   the exact method alone (every prompt prefix rendered), the reference
   - trl-generation    apply_chat_template(return_assistant_tokens_mask=True) with
                       TRL's generation-marked training template
   Best of --repeats rounds each; every round runs all rows in turn. `x_raw_time` divides the
   best times; `x_raw_time_paired` is the median over rounds of the row's time over the tokenizer
   call's time in the same round, which load from other processes on a shared machine moves less.
2. Padding waste: share of pad tokens in batches of the demo recipe's batch size
   over a realistic length mix, with packing off (dataset order) and on
   (qlora4080.data.packing, best-fit decreasing to max_len).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def conversations(count: int, seed: int = 0) -> list[list[dict]]:
    """Multi-turn chats (1-4 exchanges, some with a system prompt) built from the bundled data."""
    rng = random.Random(seed)
    pairs = []
    for name in ("json_cards/train.jsonl", "emoji_math_sample/train.jsonl"):
        for line in (REPO / "recipes" / "data" / name).read_text(encoding="utf-8").splitlines():
            messages = json.loads(line)["messages"]
            pairs.append((messages[0]["content"], messages[1]["content"]))
    chats = []
    for _ in range(count):
        chat = [{"role": "system", "content": "You are a careful assistant."}] if rng.random() < 0.3 else []
        for question, answer in rng.sample(pairs, rng.randint(1, 4)):
            chat += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        chats.append(chat)
    return chats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "data_prep.json")
    args = parser.parse_args()

    import copy

    import trl
    from transformers import AutoTokenizer

    from qlora4080.builtin_models import resolve_builtin
    from qlora4080.data.fast_masks import FastPathState
    from qlora4080.data.packing import best_fit_decreasing, padding_share
    from qlora4080.data.render import render_conversation, render_or_reject

    templates = Path(trl.__file__).parent / "chat_templates"
    tokenizer = AutoTokenizer.from_pretrained(resolve_builtin("smollm2-135m-instruct"))
    tokenizer.chat_template = (templates / "qwen3_instruct_2507.jinja").read_text(encoding="utf-8")
    trl_tokenizer = copy.deepcopy(tokenizer)
    trl_tokenizer.chat_template = (templates / "qwen3_instruct_2507_training.jinja").read_text(encoding="utf-8")
    chats = conversations(args.conversations)
    rendered = [tokenizer.apply_chat_template(c, tokenize=False) for c in chats]

    def raw() -> int:
        return sum(len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"])

    backend = tokenizer.backend_tokenizer

    def raw_backend() -> int:
        return sum(len(e.ids) for e in backend.encode_batch_fast(rendered, add_special_tokens=False))

    offered = FastPathState()  # the fast path's tally over every timed call

    def ours() -> int:
        state = FastPathState()
        rendered = render_or_reject(chats, tokenizer, fast_state=state)
        offered.tried, offered.fast = offered.tried + state.tried, offered.fast + state.fast
        offered.disabled = offered.disabled or state.disabled
        return sum(len(r["input_ids"]) for r in rendered if isinstance(r, dict))

    def ours_exact() -> int:
        return sum(len(r["input_ids"]) for r in render_or_reject(chats, tokenizer, fast=False) if isinstance(r, dict))

    def trl_path() -> int:
        total = 0
        for chat in chats:
            out = trl_tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
            total += len(out["input_ids"])
        return total

    runs = {"raw-tokenizer": raw, "raw-backend": raw_backend, "qlora4080": ours, "qlora4080-exact": ours_exact,
            "trl-generation": trl_path}
    load_before = os.getloadavg()  # other processes on the machine move these timings: say how busy it was
    timed: dict[str, list[float]] = {name: [] for name in runs}
    counted: dict[str, int] = {}
    for _ in range(args.repeats):  # rounds interleave the rows, so a slow moment of the VM hits all of them
        for name, run in runs.items():
            started = time.perf_counter()
            counted[name] = run()
            timed[name].append(time.perf_counter() - started)
    best = {name: min(times) for name, times in timed.items()}
    rows = {}
    for name, seconds in best.items():
        rows[name] = {"seconds": round(seconds, 3), "tokens": counted[name],
                      "conversations_per_s": round(len(chats) / seconds, 1), "tokens_per_s": round(counted[name] / seconds)}
        print(name, rows[name], flush=True)
    for name, row in rows.items():
        row["x_raw_time"] = round(row["seconds"] / rows["raw-tokenizer"]["seconds"], 2)
        row["x_backend_time"] = round(row["seconds"] / rows["raw-backend"]["seconds"], 2)
        row["seconds_each_round"] = [round(seconds, 3) for seconds in timed[name]]
        row["x_raw_time_paired"] = round(statistics.median(
            mine / raw for mine, raw in zip(timed[name], timed["raw-tokenizer"])), 2)
    print("time vs the tokenizer call (best / paired median):",
          {name: (row["x_raw_time"], row["x_raw_time_paired"]) for name, row in rows.items()}, flush=True)
    fast_share = {"fast_path": offered.fast, "offered": offered.tried, "disabled": offered.disabled}
    same = render_or_reject(chats, tokenizer) == render_or_reject(chats, tokenizer, fast=False)
    print("fast path", fast_share, "identical to exact:", same)

    # padding waste on the same conversations' lengths, batch 4 like the demo, max_len 1024
    lengths = [min(1024, len(render_conversation(c, tokenizer)["input_ids"])) for c in chats]
    unpacked = [lengths[i:i + 4] for i in range(0, len(lengths), 4)]
    bins = best_fit_decreasing(lengths, 1024)
    packed_lengths = [sum(lengths[i] for i in b) for b in bins]
    packed = [packed_lengths[i:i + 4] for i in range(0, len(packed_lengths), 4)]
    padding = {"batch_size": 4, "max_len": 1024, "unpacked_pad_share": round(padding_share(unpacked), 4),
               "packed_pad_share": round(padding_share(packed), 4), "sequences_unpacked": len(lengths), "sequences_packed": len(bins)}
    print("padding", padding)

    import torch

    result = {"command": "python bench/data_prep.py " + " ".join(sys.argv[1:]),
              "machine": f"{platform.machine()}, torch {torch.__version__}, transformers {__import__('transformers').__version__}, trl {trl.__version__}",
              "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "(unset: both cores)"),
              "load_average_1_5_15min": {"before": [round(x, 2) for x in load_before],
                                         "after": [round(x, 2) for x in os.getloadavg()]},
              "conversations": len(chats), "repeats": args.repeats, "throughput": rows,
              "fast_path": fast_share, "fast_identical_to_exact": same, "padding": padding}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
