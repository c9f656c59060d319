"""One case's result: its measurements, and every failure with the step it happened in.

A case never raises out of its process. `step` is for what later steps need
(load, LoRA, training): a failure there ends the case. `check` is for
independent checks (packing, reload, merge): a failure is recorded and the
next check still runs. Either way the report gets the error type, message
and step, so one broken backend still yields a full report.
"""

from __future__ import annotations

import gc
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

MARK = "GPU_CHECK_RESULT "
"""Prefix of the one stdout line on which a child process hands its JSON result to its parent."""


class CaseStopped(Exception):
    """A step failed; the record already says why, so the remaining steps are skipped."""


@dataclass
class CaseRecord:
    case: str
    data: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, str]] = field(default_factory=list)
    steps_done: list[str] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of each step and check, to see where a slow case spends it."""

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        except CaseStopped:
            raise
        except Exception as exc:  # noqa: BLE001  (any failure of a step is reported, never raised out of the case)
            self._fail(name, exc)
            raise CaseStopped(name) from None
        finally:
            self.phase_seconds[name] = round(time.monotonic() - started, 2)
        self.steps_done.append(name)

    @contextmanager
    def check(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        except Exception as exc:  # noqa: BLE001  (any failure of a check is reported and the next check runs)
            self._fail(name, exc)
            return
        finally:
            self.phase_seconds[name] = round(time.monotonic() - started, 2)
        self.steps_done.append(name)

    def verdict(self, name: str, passed: bool, why: str, kind: str = "CheckFailed") -> None:
        """A check that ran but did not hold counts as a failure of the case, with the numbers that broke it
        (`kind` names it otherwise where it was not a check: a command that failed, a step that could not run)."""
        if not passed:
            self.errors.append({"step": name, "type": kind, "message": why, "traceback": ""})

    def _fail(self, name: str, exc: BaseException) -> None:
        self.errors.append({
            "step": name,
            "type": type(exc).__name__,
            "message": str(exc).strip()[:1500],
            "traceback": "".join(traceback.format_exception(exc))[-4000:],
        })
        release_memory()  # an OOM in one check should not sink the next one

    def result(self) -> dict[str, Any]:
        return {"case": self.case, "ok": not self.errors, **self.data, "steps_done": self.steps_done,
                "phase_seconds": self.phase_seconds, "errors": self.errors}


def release_memory() -> None:
    """Drop what Python no longer references and hand cached CUDA blocks back (no-op without torch loaded)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
