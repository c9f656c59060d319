"""The one thread that runs the model for the server: answers wait in a queue and are decoded in batches.

The HTTP side runs on an asyncio loop and must never wait on the model; the
model must never run two forward passes at once. So every answer becomes a
`Job` on a queue; this thread takes the waiting jobs in arrival order, up to
`batch_size` at a time, and decodes them together (`DecodeBatch`). Each job
hands its text back to the loop as it grows, and its client leaving (the job
cancelled) drops its row at the next step.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..decoding import DecodeBatch, Decoding, Sampling

if TYPE_CHECKING:
    from ..infer import ChatModel


@dataclass(frozen=True)
class Finished:
    """The last event of a job: how it ended, or the error that ended it."""

    reason: str | None
    error: str | None = None


@dataclass
class Job:
    """One answer on its way: created on the event loop, decoded on the engine thread."""

    prompt: list[int]
    sampling: Sampling
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[str | Finished] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.decoding = Decoding(self.prompt, self.sampling, on_text=self._send, is_cancelled=self.cancelled.is_set)

    def _send(self, event: str | Finished) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    def finish(self, error: str | None = None) -> None:
        self._send(Finished(self.decoding.finish_reason, error))


class Engine:
    def __init__(self, chat: ChatModel, *, batch_size: int = 1, threads: int | None = None) -> None:
        self.chat = chat
        self.batch_size = batch_size
        self.threads = threads
        self._waiting: queue.Queue[Job | None] = queue.Queue()
        self._current: list[Job] = []
        self.cancelled = 0  # answers stopped because their client left, since the start
        self._thread = threading.Thread(target=self._run, name="qlora4080-decode", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._waiting.put(None)
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        self._waiting.put(job)

    @property
    def decoding(self) -> int:
        """Answers being decoded right now (a cancelled or finished one no longer counts)."""
        return sum(not job.decoding.finished for job in list(self._current))

    @property
    def waiting(self) -> int:
        return self._waiting.qsize()

    def _run(self) -> None:
        import torch

        if self.threads:
            torch.set_num_threads(self.threads)  # a thread's own setting: set it where the model runs
        batch = DecodeBatch(self.chat.model, self.chat.tokenizer, self.chat.stop_ids, self.chat.context)
        while True:
            first = self._waiting.get()
            if first is None:
                return
            jobs = [first]
            while len(jobs) < self.batch_size:
                try:
                    job = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._waiting.put(None)  # stop after this batch
                    break
                jobs.append(job)
            self._current = jobs
            error: str | None = None
            try:
                batch.run([job.decoding for job in jobs])
            except Exception as exc:  # noqa: BLE001 - one bad batch must not stop the server; its clients get the error
                error = f"{type(exc).__name__}: {exc}"
            finally:
                self._current = []
                for job in jobs:
                    self.cancelled += job.decoding.finish_reason == "cancelled"
                    job.finish(error)
