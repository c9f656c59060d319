"""How far a GGUF's next-token log-probabilities are from the merged model's, teacher-forced.

The export check (qlora4080/gguf_check.py) compares greedy answers. Where the merged model's
top two tokens are nearly tied, a few hundredths of a nat of quantization noise can swap them,
and the answers part ways although both files are the same model. This bench measures that
noise so the check can tell a near tie from a broken file: for each of the run's validation
prompts, the merged model's greedy answer is fed to both the merged model (transformers) and
llama.cpp, and at every position it records

- how much the log-probability of the merged model's token differs between the two, and
- how much the margin between the merged model's first and second choice differs
  (a greedy answer can only flip where the noise in this margin exceeds the margin itself).

    python bench/gguf_logit_gap.py CHECKPOINT MERGED_DIR FILE.gguf [FILE.gguf ...] [--out JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

TOKENS = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("merged", type=Path)
    parser.add_argument("ggufs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gguf_logit_gap.json"))
    args = parser.parse_args()

    import llama_cpp
    import numpy as np
    import torch

    from qlora4080.data.render import render_prompt
    from qlora4080.export import read_meta
    from qlora4080.infer import generate_answers, load_for_chat
    from qlora4080.quantized_agreement import validation_prompts

    prompts = validation_prompts(read_meta(args.checkpoint))
    chat = load_for_chat(args.merged)
    answers = generate_answers(chat, prompts, max_new_tokens=TOKENS, batch_size=1)
    sequences = [(render_prompt(p, chat.tokenizer), list(a.token_ids)[:TOKENS]) for p, a in zip(prompts, answers)]

    reference: list[np.ndarray] = []
    with torch.no_grad():
        for prompt, answer in sequences:
            ids = torch.tensor([prompt + answer])
            logits = chat.model(input_ids=ids).logits[0, len(prompt) - 1:len(prompt) - 1 + len(answer)]
            reference.append(torch.log_softmax(logits.float(), dim=-1).numpy())

    rows = {}
    for gguf in args.ggufs:
        llm = llama_cpp.Llama(str(gguf), n_ctx=1024, logits_all=True, verbose=False, n_threads=os.cpu_count() or 1)
        token_error, margin_error, flips = [], [], []
        for (prompt, answer), ref in zip(sequences, reference):
            llm.reset()
            llm.eval(prompt + answer)
            raw = np.asarray(llm.scores[len(prompt) - 1:len(prompt) - 1 + len(answer)], dtype=np.float64)
            logp = raw - np.logaddexp.reduce(raw, axis=-1, keepdims=True)
            for position, token in enumerate(answer):
                second = int(np.argsort(ref[position])[-2])
                token_error.append(abs(float(ref[position][token] - logp[position][token])))
                ref_margin = float(ref[position][token] - ref[position][second])
                margin_error.append(abs(ref_margin - float(logp[position][token] - logp[position][second])))
                choice = int(np.argmax(logp[position]))
                if choice != token:
                    flips.append({"merged_margin_nats": round(float(ref[position][token] - ref[position][choice]), 4)})
        llm.close()
        rows[gguf.name] = {
            "positions": len(token_error),
            "token_logprob_error_nats": _spread(token_error),
            "top2_margin_error_nats": _spread(margin_error),
            "greedy_flips": flips,
        }
        print(gguf.name, json.dumps(rows[gguf.name]))

    result = {"checkpoint": str(args.checkpoint), "prompts": len(prompts), "tokens_per_prompt": TOKENS,
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written to {args.out}")


def _spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"mean": round(sum(ordered) / len(ordered), 4), "median": round(ordered[len(ordered) // 2], 4), "p99": round(ordered[int(len(ordered) * 0.99)], 4),
            "max": round(ordered[-1], 4)}


if __name__ == "__main__":
    main()
