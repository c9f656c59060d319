"""Decode several answers together, one token a step, each with its own sampling settings.

`model.generate` owns its batch from the first token to the last, with one set
of sampling settings for every row, and cannot drop a row whose reader has gone
away. A server needs each request to keep its own temperature, top_p, seed,
stop strings and token budget, its text as it grows, and its row freed the
moment it finishes or its client leaves. `DecodeBatch` does that with the
model's forward pass and its KV cache, calling the model exactly as greedy
`generate` does (same positions, same cache, logits of the last position
only), so a greedy answer decoded alone is the token-for-token answer of
`chat --prompt`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .model_types import decoded

if TYPE_CHECKING:
    import torch

    from .model_types import Model, Tokenizer

FinishReason = Literal["stop", "length", "cancelled"]
# Below this a temperature decodes greedily, as vLLM does: dividing logits by 1e-300 made them inf and the
# sampler failed (a 500 from serve, a traceback from chat). The limit of sampling as T -> 0 is the argmax anyway.
GREEDY_BELOW = 1e-5
REPLACEMENT = "\ufffd"  # what a decoder shows for the first bytes of a character split across tokens


@dataclass(frozen=True)
class Sampling:
    """How one answer picks its tokens. temperature 0 (or below GREEDY_BELOW) is greedy and ignores top_p and seed."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Decoding:
    """One answer being decoded: its prompt, settings, the tokens so far and the text handed out so far.

    `on_text` receives each new piece of visible text (stop strings and split
    characters held back until they are settled); it runs on the decoding
    thread, so it must only hand the piece on. `is_cancelled` is asked before
    every step: once it says yes the row is dropped and its memory freed.
    """

    prompt: list[int]
    sampling: Sampling
    on_text: Callable[[str], None] = lambda text: None
    is_cancelled: Callable[[], bool] = lambda: False
    generated: list[int] = field(default_factory=list)
    text: str = ""  # the visible answer so far: special tokens, a matched stop string and what follows it left out
    emitted: int = 0  # characters of `text` already given to on_text
    finish_reason: FinishReason | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def completion_tokens(self) -> int:
        return len(self.generated)

    def accept(self, token: int, tokenizer: Tokenizer, stop_ids: set[int], room: int) -> None:
        """Take the next token; finish on an end-of-turn token, a stop string, the token budget or a full context."""
        self.generated.append(token)
        if token in stop_ids:
            self._finish("stop")
            return
        full = decoded(tokenizer, self.generated)
        cut = _first_stop(full, self.sampling.stop)
        if cut is not None:
            self.text = full[:cut]
            self._finish("stop")
            return
        self.text = full
        if len(self.generated) >= self.sampling.max_tokens or room <= 0:
            self._finish("length")
            return
        settled = len(full) - _unsettled_tail(full, self.sampling.stop)
        if settled > self.emitted:
            self.on_text(full[self.emitted:settled])
            self.emitted = settled

    def cancel(self) -> None:
        self.finish_reason = "cancelled"

    def _finish(self, reason: FinishReason) -> None:
        self.finish_reason = reason
        if len(self.text) > self.emitted:
            self.on_text(self.text[self.emitted:])
            self.emitted = len(self.text)


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop string starts in `text`, if any does."""
    found = [index for stop in stops if (index := text.find(stop)) >= 0]
    return min(found) if found else None


def _unsettled_tail(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters may still change: a half-decoded character or the start of a stop string."""
    tail = len(text) - len(text.rstrip(REPLACEMENT))
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                tail = max(tail, size)
                break
    return tail


class DecodeBatch:
    """Several answers decoded together until each has finished (or been cancelled).

    Prompts are left-padded so every row's next token sits in the last column;
    a finished row leaves the batch and the KV cache at once.
    """

    def __init__(self, model: Model, tokenizer: Tokenizer, stop_ids: Sequence[int], context: int = 0) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.stop_ids = set(stop_ids)
        self.context = context  # 0: unknown, no limit but max_tokens

    def run(self, decodings: Sequence[Decoding]) -> None:
        import torch
        from transformers import DynamicCache

        rows = [d for d in decodings if not d.finished]
        for d in rows:
            if d.is_cancelled():
                d.cancel()
        rows = [d for d in rows if not d.finished]
        if not rows:
            return
        device = self.model.device
        generators = [_generator(d.sampling.seed, device) for d in rows]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        width = max(len(d.prompt) for d in rows)
        input_ids = torch.tensor([[pad] * (width - len(d.prompt)) + d.prompt for d in rows], device=device)
        mask = torch.tensor([[0] * (width - len(d.prompt)) + [1] * len(d.prompt) for d in rows], device=device)
        cache = DynamicCache()
        with torch.inference_mode():
            while rows:
                positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
                logits = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                    past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1, :]
                tokens = [choose_token(logits[i], d.sampling, generators[i]) for i, d in enumerate(rows)]
                for d, token, length in zip(rows, tokens, mask.sum(-1).tolist()):
                    room = self.context - length - 1 if self.context else 1
                    d.accept(token, self.tokenizer, self.stop_ids, room)
                    if not d.finished and d.is_cancelled():
                        d.cancel()
                keep = [i for i, d in enumerate(rows) if not d.finished]
                if len(keep) < len(rows):
                    if not keep:
                        break
                    index = torch.tensor(keep, device=device)
                    cache.batch_select_indices(index)
                    mask = mask[index]
                    rows = [rows[i] for i in keep]
                    generators = [generators[i] for i in keep]
                    tokens = [tokens[i] for i in keep]
                input_ids = torch.tensor([[token] for token in tokens], device=device)
                mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)


def choose_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """The next token from one row of logits: the most likely (temperature 0) or drawn from the top-p nucleus."""
    import torch

    if sampling.temperature < GREEDY_BELOW:
        return int(torch.argmax(logits).item())
    scores = logits.float()
    probs = torch.softmax((scores - scores.max()) / sampling.temperature, dim=-1)  # the largest is 0: no inf/inf
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest set of most likely tokens whose mass reaches top_p (the first one always).
        outside = sorted_probs.cumsum(-1) - sorted_probs >= sampling.top_p
        outside[0] = False  # a top_p under float32's smallest (1e-300 becomes 0.0) once dropped every token
        sorted_probs[outside] = 0.0
        pick = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(order[pick].item())
    return int(torch.multinomial(probs, 1, generator=generator).item())


def _generator(seed: int | None, device: torch.device) -> torch.Generator:
    import torch

    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else random.SystemRandom().randrange(2**63))
    return generator
