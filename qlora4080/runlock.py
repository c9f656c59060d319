"""One process at a time per run (or data build): an OS file lock next to the folder it guards.

Two `train` runs on the same run name once both "succeeded", interleaving their
metrics and mixing one run's recipe with the other's adapter. The lock is an
flock on `<folder>.lock`: the kernel releases it when the holder exits or dies,
so a crashed run never leaves a stale lock behind. The file says who holds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import QloraError


def lock_path_for(folder: Path) -> Path:
    """`checkpoints/run` -> `checkpoints/.run.lock` (beside it, so removing the folder keeps the lock).

    Keyed by the real path: a folder reached through a symlink, `..` or another
    spelling has the same lock as the folder itself.
    """
    real = folder.expanduser().resolve()
    return real.parent / f".{real.name}.lock"


def lock_path_outside(target: Path) -> Path:
    """A lock for `target` kept in the system temp folder (keyed by its real path): nothing is left beside a
    file the command may end up never writing (generate's output, when the model then fails to load)."""
    key = hashlib.sha256(str(target.expanduser().resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / "qlora4080-locks" / f"{key}.lock"


@contextmanager
def holding(folder: Path, what: str, lock_file: Path | None = None,
            hint: str = "wait for it to finish, stop it, or choose another --run-name") -> Iterator[None]:
    """Hold the lock of `folder` (in `lock_file`, default beside it) for the block, or fail at once naming the holder."""
    import fcntl

    path = lock_file or lock_path_for(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise QloraError(f"{what} is in use by another qlora4080 process ({_describe(handle.read())})",
                             where=str(folder),
                             hint=hint) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}))
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the flock


def _describe(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']} since {holder['since']}: {holder['command']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def process_alive(pid: int) -> bool:
    """Is process `pid` still running on this machine? (A staging folder named after a dead one is stale.)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def is_held(folder: Path) -> bool:
    """Does another process hold `folder`'s lock right now (a run still training)? Takes nothing, makes nothing."""
    import fcntl

    path = lock_path_for(folder)
    if not path.is_file():
        return False
    with path.open("r", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False
