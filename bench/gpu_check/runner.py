"""The parent's side: start one child process per build and per case, in order, and collect what they report.

The parent never imports torch: on a GPU its CUDA context would sit on the card
for the whole run. Each child prints one MARK line of JSON; a child that dies
without it (a crash, the OOM killer, a timeout) still becomes a failed case,
with the end of its output, and every child's output is kept in <out>/gpu_check_logs/.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .record import MARK

REPO = Path(__file__).resolve().parents[2]
CASE_TIMEOUT_S = 3600


def run_child(script: Path, flags: list[str], log: Path, env: dict[str, str]) -> tuple[dict[str, Any] | None, str]:
    """Run bench/gpu_check.py with `flags`; its JSON result line (or None) and why it is missing."""
    command = [sys.executable, str(script), *flags]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CASE_TIMEOUT_S, env=env, check=False)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:  # its captured output is bytes, whatever text=True says
        captured = [part.decode(errors="replace") if isinstance(part, bytes) else part or "" for part in (exc.stdout, exc.stderr)]
        output, code = "".join(captured) + f"\n(timed out after {CASE_TIMEOUT_S} s)", "timeout"
    log.write_text(output, encoding="utf-8")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)
    found = [line for line in output.splitlines() if line.startswith(MARK)]
    if found:
        # CPU seconds next to wall seconds show how much a busy machine stretched the case
        return {**json.loads(found[-1][len(MARK):]), "process_cpu_s": cpu_s}, ""
    return None, f"the process ended without a result (exit {code}); last output: {output.strip()[-1500:]}"


def failed_case(case: str, repeat: int, step: str, message: str) -> dict[str, Any]:
    backend, arch = case.split(":")
    return {"case": case, "ok": False, "backend": backend, "arch": arch, "repeat": repeat,
            "errors": [{"step": step, "type": "ChildProcessError", "message": message, "traceback": ""}]}


@dataclass
class Runner:
    """Starts the children in order and collects their results (the parent never imports torch)."""

    args: argparse.Namespace
    script: Path
    """bench/gpu_check.py, which each child runs with its internal flags."""
    work: Path
    logs: Path
    merge_archs: list[str]
    cases: list[dict[str, Any]] = field(default_factory=list)
    hardware: dict[str, Any] | None = None
    env: dict[str, str] = field(default_factory=lambda: {
        **os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)})

    @property
    def common(self) -> list[str]:
        return ["--steps", str(self.args.steps), "--seq-len", str(self.args.seq_len)] + (["--tiny"] if self.args.tiny else [])

    @property
    def total(self) -> int:
        return self.args.repeats * sum(len(self.backends_for(arch)) for arch in self.args.archs)

    def backends_for(self, arch: str) -> list[str]:
        """All chosen backends, except that on a CPU the peer row (which only proves its script runs there) runs once."""
        return [b for b in self.args.backends if not (self.args.tiny and b == "peer" and arch != self.args.archs[0])]

    def build(self, group: list[str]) -> tuple[dict[str, Any], str]:
        """Build these architectures' models in one child; {arch: build record} and why the child gave nothing."""
        print(f"building {', '.join(group)} ...", flush=True)
        built, why = run_child(self.script, ["--build", ",".join(group), "--work", str(self.work), *self.common],
                               self.logs / f"build-{'+'.join(group)}.log", self.env)
        self.hardware = self.hardware or (built or {}).get("hardware")
        return (built or {}).get("models", {}), why

    def run_case(self, backend: str, arch: str, repeat: int, model: dict[str, Any] | None, why: str) -> None:
        case = f"{backend}:{arch}"
        if model is None or not model["ok"]:
            reason = why or ("; ".join(f"{e['type']}: {e['message']}" for e in model["errors"]) if model else "not built")
            self.cases.append(failed_case(case, repeat, "build model", reason))
            return
        flags = ["--case", case, "--model-dir", model["model_dir"], "--work", str(self.work / f"{backend}-{arch}-{repeat}"),
                 "--repeat", str(repeat), *self.common]
        if repeat > 0:
            flags.append("--timing-only")
        elif arch in self.merge_archs and backend != "peer":
            flags.append("--merge")
        started = time.monotonic()
        result, why_case = run_child(self.script, flags, self.logs / f"{backend}-{arch}-run{repeat + 1}.log", self.env)
        result = result or failed_case(case, repeat, "child process", why_case)
        result["wall_s"] = round(time.monotonic() - started, 1)
        self.cases.append(result)
        state = "ok" if result["ok"] else f"FAILED at {result['errors'][0]['step']}"
        print(f"[{len(self.cases)}/{self.total}] {case} run {repeat + 1}: {state} ({result['wall_s']} s)", flush=True)
