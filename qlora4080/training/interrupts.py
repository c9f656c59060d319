"""Ctrl-C during training: finish the step, save a resumable checkpoint, say how to resume. Twice: stop now.

With several processes each one gets the signal (or only some do); they agree at
every step's end, so all of them stop at the same step and save together.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from transformers import TrainerCallback

from ..console import console
from ..errors import QloraError

if TYPE_CHECKING:
    from typing_extensions import Self


class TrainingInterrupted(QloraError):
    """Training stopped by Ctrl-C after saving; exit code 130 like any interrupted command."""

    shown_by_main_process = False
    """Set in processes 1..N-1 of a run with several processes: process 0 reports the stop, once."""

    def __init__(self, message: str, hint: str):
        super().__init__(message, hint=hint, exit_code=130)


class InterruptGuard(TrainerCallback):
    """Installed around trainer.train(): the first SIGINT asks the trainer to save and stop at the step's end."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: signal.Handlers | Callable[[int, FrameType | None], object] | int | None = None

    def __enter__(self) -> Self:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt  # second Ctrl-C: leave at once
        self.requested = True
        console.print("\n[yellow]Ctrl-C: finishing this step, then saving a checkpoint. Press Ctrl-C again to quit at once.[/]")

    def on_step_end(self, args, state, control, **kwargs):
        from ..distributed import any_process

        self.requested = any_process(self.requested)  # every process must stop at the same step, or the others hang
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control
