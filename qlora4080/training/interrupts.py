"""Ctrl-C during training: finish the step, save a resumable checkpoint, say how to resume. Twice: stop now.

SIGTERM (`kill`, a scheduler's time limit, a container stopping) is taken the
same way: it used to end the run with exit 143, no word and no checkpoint.

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

    def __init__(self, message: str, hint: str, exit_code: int = 130):
        super().__init__(message, hint=hint, exit_code=exit_code)


class InterruptGuard(TrainerCallback):
    """Installed around trainer.train(): the first SIGINT asks the trainer to save and stop at the step's end."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_number = signal.SIGINT
        """The signal that asked for the stop: the exit code is 128 + it, as the shell reports a signal."""
        self._previous: dict[int, signal.Handlers | Callable[[int, FrameType | None], object] | int | None] = {}

    def __enter__(self) -> Self:
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal_number)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt  # second Ctrl-C: leave at once
        self.requested = True
        self.signal_number = signal.Signals(signum)
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        console.print(f"\n[yellow]{what}: finishing this step, then saving a checkpoint. "
                      "Press Ctrl-C again to quit at once.[/]")

    def on_step_end(self, args, state, control, **kwargs):
        from ..distributed import any_process

        self.requested = any_process(self.requested)  # every process must stop at the same step, or the others hang
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control
