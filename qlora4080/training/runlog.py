"""train.log: plain, timestamped lines a run writes from its first second.

Kept apart from the trainer callbacks because those import transformers, and a
run must not import transformers before it knows whether unsloth (which has to
be imported first, to patch it) is the backend.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..console import console

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
"""How each line of train.log begins."""


def line_seconds(line: str) -> float | None:
    """When a train.log line was written (seconds since the epoch), or None when it does not begin with a time."""
    try:
        return time.mktime(time.strptime(line[:19], TIME_FORMAT))
    except ValueError:
        return None


class RunLog:
    """Plain lines to runs/<run>/train.log (and to the console unless the live panel owns it).

    `path=None` writes no file: processes 1..N-1 of a run with several processes, where process 0 keeps the log.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self._handle = path.open("a", encoding="utf-8") if path is not None else None

    def line(self, message: str, style: str | None = None, echo: bool = True) -> None:
        if echo:
            console.print(message, style=style, highlight=False, soft_wrap=True)  # whole lines: file:line stays greppable
        if self._handle is not None:
            self._handle.write(f"{time.strftime(TIME_FORMAT)} {message}\n")
            self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
