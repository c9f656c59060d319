"""The parent's side: start one child process per build and per case, in order, and collect what they report.

The parent never imports torch: on a GPU its CUDA context would sit on the card
for the whole run. Each child prints one MARK line of JSON; a child that dies
without it (a crash, the OOM killer, a timeout) still becomes a failed case,
with the end of its output. Every child's output is appended to one log,
<out>/gpu_check.log, each under a header line: a GPU run brings back only a
few files.

With a time budget (--budget-s) no case starts with less than --min-case-s
left, and a running one is stopped when the budget is spent; what was not run
is listed with the command that runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .record import MARK

REPO = Path(__file__).resolve().parents[2]
CASE_TIMEOUT_S = 3600


def run_logged(command: list[str], log: Path, title: str, env: dict[str, str], timeout: float,
               cwd: Path | None = None) -> tuple[int | str, str, float]:
    """Run `command`, append its output to `log` under `title`: (exit code or "timeout", output, CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    # A session of its own: at the budget the whole group goes, with the processes the case started (the
    # post-training checks, the CLI's), which would otherwise hold the card while the next case loads.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=max(timeout, 1.0))
        output, code = stdout + stderr, process.returncode  # stdout first and whole: the result line is in it
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        output, code = f"{stdout or ''}{stderr or ''}\n(stopped after {timeout:.0f} s: the time budget ran out)", "timeout"
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"\n===== {title} (exit {code}, {time.monotonic() - started:.1f} s) =====\n$ {' '.join(command)}\n{output}\n")
    return code, output, round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)


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
    log: Path
    """The one log every child's output is appended to."""
    merge_archs: list[str]
    deadline: float | None = None
    """time.monotonic() by which everything must have ended (None: no budget)."""
    on_result: Callable[[], None] = lambda: None
    """Called after every case: the report is rewritten, so a run cut off keeps what it measured."""
    cases: list[dict[str, Any]] = field(default_factory=list)
    not_run: list[dict[str, str]] = field(default_factory=list)
    hardware: dict[str, Any] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.env = {
            **os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            # The same allocator settings for every case: unsloth sets expandable_segments when it is imported,
            # so without this its rows and the others would measure two allocators.
            **({name: self.args.alloc_conf for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")}
               if self.args.alloc_conf else {}),
        }

    @property
    def common(self) -> list[str]:
        return ["--steps", str(self.args.steps), "--seq-len", str(self.args.seq_len)] + (["--tiny"] if self.args.tiny else [])

    @property
    def total(self) -> int:
        return (self.args.repeats * sum(len(self.backends_for(arch)) for arch in self.args.archs)
                + (len(self.args.recipes) if "qwen3-4b" in self.args.archs else 0))

    def time_left(self) -> float:
        return CASE_TIMEOUT_S if self.deadline is None else min(CASE_TIMEOUT_S, self.deadline - time.monotonic())

    def can_start(self, what: str, command: str) -> bool:
        """False (and `what` listed as not run, with the command that runs it) when the budget is too near its end."""
        if self.deadline is None or self.time_left() >= self.args.min_case_s:
            return True
        self.not_run.append({"case": what, "why": f"{max(self.time_left(), 0):.0f} s of the budget left, under --min-case-s "
                                                  f"{self.args.min_case_s:g}", "command": command})
        self.on_result()
        return False

    def backends_for(self, arch: str) -> list[str]:
        """All chosen backends, except that on a CPU the peer row (which only proves its script runs there) runs once."""
        return [b for b in self.args.backends if not (self.args.tiny and b == "peer" and arch != self.args.archs[0])]

    def run_child(self, flags: list[str], title: str) -> tuple[dict[str, Any] | None, str]:
        """Run bench/gpu_check.py with `flags`; its JSON result line (or None) and why it is missing."""
        code, output, cpu_s = run_logged([sys.executable, str(self.script), *flags], self.log, title, self.env, self.time_left())
        found = [line for line in output.splitlines() if line.startswith(MARK)]
        if found:
            # CPU seconds next to wall seconds show how much a busy machine stretched the case
            return {**json.loads(found[-1][len(MARK):]), "process_cpu_s": cpu_s}, ""
        return None, f"the process ended without a result (exit {code}); last output: {output.strip()[-1500:]}"

    def run_command(self, command: list[str], cwd: Path, title: str, timeout: float) -> tuple[int | str, str]:
        code, output, _ = run_logged(command, self.log, title, self.env, timeout, cwd=cwd)
        return code, output

    def build(self, group: list[str]) -> tuple[dict[str, Any], str]:
        """Build these architectures' models in one child; {arch: build record} and why the child gave nothing."""
        print(f"building {', '.join(group)} ...", flush=True)
        built, why = self.run_child(["--build", ",".join(group), "--work", str(self.work), *self.common], f"build {'+'.join(group)}")
        self.hardware = self.hardware or (built or {}).get("hardware")
        return (built or {}).get("models", {}), why

    def run_case(self, backend: str, arch: str, repeat: int, model: dict[str, Any] | None, why: str) -> None:
        case = f"{backend}:{arch}"
        if model is None or not model["ok"]:
            reason = why or ("; ".join(f"{e['type']}: {e['message']}" for e in model["errors"]) if model else "not built")
            self.cases.append(failed_case(case, repeat, "build model", reason))
            self.on_result()
            return
        flags = ["--case", case, "--model-dir", model["model_dir"], "--work", str(self.work / f"{backend}-{arch}-{repeat}"),
                 "--repeat", str(repeat), *self.common]
        if repeat > 0:
            flags.append("--timing-only")
        elif arch in self.merge_archs and backend != "peer":
            flags.append("--merge")
        started = time.monotonic()
        result, why_case = self.run_child(flags, f"{case} run {repeat + 1}")
        result = result or failed_case(case, repeat, "child process", why_case)
        result["wall_s"] = round(time.monotonic() - started, 1)
        self.finished(result)

    def finished(self, result: dict[str, Any]) -> None:
        self.cases.append(result)
        state = "ok" if result["ok"] else f"FAILED at {result['errors'][0]['step']}"
        print(f"[{len(self.cases)}/{self.total}] {result['case']} run {result.get('repeat', 0) + 1}: {state} "
              f"({result.get('wall_s', '?')} s)", flush=True)
        self.on_result()
