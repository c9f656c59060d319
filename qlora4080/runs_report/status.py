"""Is a run finished, interrupted, running or failed? Decided from its files, without touching its lock.

A run holds an flock on `checkpoints/.<run>.lock` while it trains (runlock.py)
and writes summary.json only when it finishes. Taking that lock to test it,
even for a moment, could make a `train` starting at the same instant fail with
"in use", so the lock is only looked at: /proc/locks on Linux, else the pid
the holder wrote into the file. train.log says how an unfinished run stopped:
Ctrl-C logs "interrupted at step N", an out-of-memory stop logs "out of memory
at step N", and a resume logs a new "run <name> (resumed from ...)" line.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..runlock import lock_path_for

Status = Literal["finished", "interrupted", "running", "failed"]

_INTERRUPTED = re.compile(r"interrupted at step (\d+)")
_OUT_OF_MEMORY = re.compile(r"out of memory at step (\d+)")
RUN_START = re.compile(r"^\S+ \S+ run \S+(?: \(resumed from .*\))?: recipe (.+)$")
"""The line a run (or a resume of it) begins train.log with, naming its recipe (training/environment.py writes it)."""


@dataclass(frozen=True)
class RunStatus:
    status: Status
    note: str = ""
    """Why, when it is not plain: the step of an interruption, an out-of-memory stop."""


def run_status(checkpoint: Path | None, has_summary: bool, log_lines: list[str]) -> RunStatus:
    """The run's state: running (its lock is held), finished (summary.json), else what train.log last said."""
    if checkpoint is not None and lock_is_held(lock_path_for(checkpoint)):
        return RunStatus("running")
    if has_summary:
        return RunStatus("finished")
    for line in reversed(log_lines):  # the last event wins: a resumed run that then crashed is failed
        if match := _INTERRUPTED.search(line):
            return RunStatus("interrupted", f"at step {match.group(1)}")
        if match := _OUT_OF_MEMORY.search(line):
            return RunStatus("failed", f"out of memory at step {match.group(1)}")
        if RUN_START.match(line):
            break
    if not log_lines:
        return RunStatus("failed", "no train.log")
    return RunStatus("failed", "no summary.json")


def lock_is_held(path: Path) -> bool:
    """Whether some process holds the flock on `path`, found without trying to take it."""
    try:
        inode = path.stat().st_ino
    except OSError:
        return False
    proc_locks = Path("/proc/locks")
    if proc_locks.is_file():
        try:
            text = proc_locks.read_text(encoding="utf-8")
        except OSError:
            text = None
        if text is not None:
            # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF": the 6th field ends with the inode
            return any(len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode)
                       for fields in (line.split() for line in text.splitlines()))
    return _holder_alive(path)


def _holder_alive(path: Path) -> bool:
    """Elsewhere: the pid the holder wrote is alive on this host (a stale file names a dead pid)."""
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        pid, host = int(holder["pid"]), str(holder["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True
