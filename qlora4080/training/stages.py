"""The steps before and after training, each announced and timed (environment, data, model, LoRA, train, save)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..console import stage as announce

if TYPE_CHECKING:
    from .runlog import RunLog


class Stages:
    def __init__(self, log: RunLog):
        self.log = log
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        announce(name)
        started = time.monotonic()
        yield
        took = time.monotonic() - started
        self.timings[name] = round(took, 2)
        self.log.line(f"   {name}: {took:.1f}s", style="dim")
