"""Serving throughput: `qlora4080 serve` with the openai client vs `qlora4080 chat --prompt` run in a loop.

    .venv/bin/python bench/serve_throughput.py [--checkpoint checkpoints/demo] [--requests 16] [--loop 3]
                                              [--batch-sizes 1,4] [--max-tokens 48]
                                              [--out bench/results/serve_throughput.json]

Rows:
  chat-prompt-loop   `qlora4080 chat CKPT --prompt P` once per prompt, each a fresh process (what a script
                     without a server does); time to first token = process start to the first answer byte
  serve-batch-B      one `qlora4080 serve CKPT --batch-size B` (started once, start-up timed apart), then
                     --requests streamed greedy requests from as many concurrent openai clients; time to
                     first token = request sent to the first content chunk

Every answer is greedy with the same --max-tokens, and the served answers are checked against
chat --prompt's for the prompts both answered (`same_text`). The demo checkpoint is trained
first when it is missing (`make demo` trains it too). The machine's load average is recorded
before and after: on a shared machine it moves every number.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "qlora4080"]
VALIDATION = REPO / "recipes" / "data" / "json_cards" / "validation.jsonl"


def prompts(count: int) -> list[str]:
    """Distinct user prompts from the demo's validation set."""
    found: list[str] = []
    for line in VALIDATION.read_text(encoding="utf-8").splitlines():
        user = next(m["content"] for m in json.loads(line)["messages"] if m["role"] == "user")
        if user not in found:
            found.append(user)
        if len(found) == count:
            return found
    raise SystemExit(f"{VALIDATION} has only {len(found)} distinct prompts")


def ensure_checkpoint(path: Path) -> None:
    if (path / "qlora4080.json").is_file():
        return
    print(f"{path} missing: training the demo recipe first", flush=True)
    subprocess.run([*CLI, "train", str(REPO / "recipes" / "smollm2_135m_demo.toml"), "--run-name", path.name],
                   cwd=path.parent.parent, check=True)


def chat_prompt_loop(checkpoint: Path, texts: list[str], max_tokens: int) -> dict:
    answers, ttft, totals = [], [], []
    for text in texts:
        start = time.perf_counter()
        process = subprocess.Popen([*CLI, "chat", str(checkpoint), "--prompt", text, "--max-new-tokens", str(max_tokens)],
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "1000"})
        assert process.stdout is not None
        first = process.stdout.read(1)
        ttft.append(time.perf_counter() - start)
        rest = process.stdout.read()
        process.wait()
        totals.append(time.perf_counter() - start)
        answers.append((first + rest).decode().strip())
    return {"requests": len(texts), "wall_s": round(sum(totals), 2), "requests_per_s": round(len(texts) / sum(totals), 3),
            "ttft_s": summary(ttft), "answers": answers}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve_row(checkpoint: Path, texts: list[str], max_tokens: int, batch_size: int) -> dict:
    import httpx
    import openai

    port = free_port()
    start = time.perf_counter()
    server = subprocess.Popen([*CLI, "serve", str(checkpoint), "--port", str(port), "--batch-size", str(batch_size)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
            if server.poll() is not None:
                raise SystemExit(f"serve exited with {server.returncode}")
        startup = time.perf_counter() - start
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0, timeout=600)

        def one(text: str) -> tuple[str, float, int]:
            sent = time.perf_counter()
            first: float | None = None
            pieces: list[str] = []
            usage = 0
            stream = client.chat.completions.create(model=checkpoint.name, messages=[{"role": "user", "content": text}],
                                                    temperature=0, max_tokens=max_tokens, stream=True,
                                                    stream_options={"include_usage": True})
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.perf_counter() - sent
                    pieces.append(chunk.choices[0].delta.content)
                if chunk.usage:
                    usage = chunk.usage.completion_tokens
            return "".join(pieces).strip(), first or 0.0, usage

        began = time.perf_counter()
        with ThreadPoolExecutor(len(texts)) as pool:
            results = list(pool.map(one, texts))
        wall = time.perf_counter() - began
    finally:
        server.terminate()
        server.wait(timeout=60)
    tokens = sum(r[2] for r in results)
    return {"batch_size": batch_size, "startup_s": round(startup, 2), "requests": len(texts), "concurrent_clients": len(texts),
            "wall_s": round(wall, 2), "requests_per_s": round(len(texts) / wall, 3),
            "completion_tokens_per_s": round(tokens / wall, 1), "ttft_s": summary([r[1] for r in results]),
            "answers": [r[0] for r in results]}


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": round(statistics.median(ordered), 3), "p90": round(ordered[math.ceil(0.9 * len(ordered)) - 1], 3),
            "max": round(ordered[-1], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=REPO / "checkpoints" / "demo")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--loop", type=int, default=3, help="prompts answered by chat --prompt (a process each)")
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve_throughput.json")
    args = parser.parse_args()
    checkpoint = args.checkpoint.resolve()
    ensure_checkpoint(checkpoint)
    texts = prompts(args.requests)
    load_before = os.getloadavg()
    loop = chat_prompt_loop(checkpoint, texts[: args.loop], args.max_tokens)
    print("chat-prompt-loop", {k: v for k, v in loop.items() if k != "answers"}, flush=True)
    rows = {"chat-prompt-loop": loop}
    for size in (int(s) for s in args.batch_sizes.split(",")):
        row = serve_row(checkpoint, texts, args.max_tokens, size)
        row["same_text_as_chat_prompt"] = sum(a == b for a, b in zip(row["answers"], loop["answers"]))
        row["compared_with_chat_prompt"] = len(loop["answers"])
        rows[f"serve-batch-{size}"] = row
        print(f"serve-batch-{size}", {k: v for k, v in row.items() if k != "answers"}, flush=True)
    result = {
        "checkpoint": str(args.checkpoint), "max_tokens": args.max_tokens, "prompts": texts,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
