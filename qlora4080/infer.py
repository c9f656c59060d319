"""Load a trained checkpoint (base + adapter, with its saved chat template) and generate, streaming."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import QloraError
from .recipe import BUILTIN_PREFIX, ModelSection
from .training.run import META_FILE


@dataclass
class ChatModel:
    model: Any
    tokenizer: Any
    description: str
    has_adapter: bool
    stop_ids: list[int] = field(default_factory=list)
    context: int = 0  # tokens the model can attend to (prompt + answer); 0 = unknown


def model_context(model: Any) -> int:
    """The model's context length from its config (0 when it does not say)."""
    config = getattr(model, "config", None)
    return int(getattr(config, "max_position_embeddings", 0) or 0)


def read_checkpoint_meta(target: str | Path) -> dict[str, Any]:
    """qlora4080.json of a trained checkpoint; {} for a plain model folder or builtin:<name>."""
    path = Path(target) / META_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def load_for_chat(target: str | Path) -> ChatModel:
    """A qlora4080 checkpoint directory, a plain model directory, or builtin:<name>."""
    from .backends import hf
    from .backends.loading import prepare_tokenizer
    from .data.render import end_of_turn_ids
    from .hardware import detect
    from .quiet import quiet_libraries

    quiet_libraries()
    hardware = detect()
    path = Path(target)
    if (path / META_FILE).is_file():
        from peft import PeftModel
        from transformers import AutoTokenizer

        meta = read_checkpoint_meta(path)
        model_cfg = ModelSection(
            name=meta["base_model"],
            load_in_4bit=meta.get("load_in_4bit", False),
            dtype=meta.get("dtype", "auto"),
            trust_remote_code=meta.get("trust_remote_code", False),
        )
        base, _ = hf.load_model(model_cfg, hardware, for_training=False)
        # The tokenizer saved with the adapter carries the exact chat template used in training.
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path), None)
        model = PeftModel.from_pretrained(base, path)
        description = f"{meta['base_model']} + adapter {path}"
        has_adapter = True
    elif str(target).startswith(BUILTIN_PREFIX) or (path / "config.json").is_file():
        model, tokenizer = hf.load_model(ModelSection(name=str(target), load_in_4bit=False), hardware, for_training=False)
        description = str(target)
        has_adapter = False
    else:
        raise QloraError(
            f"{target} is not a qlora4080 checkpoint (no {META_FILE}) nor a model directory (no config.json)",
            hint="pass checkpoints/<run> as written by `qlora4080 train`",
        )
    model.eval()
    return ChatModel(model, tokenizer, description, has_adapter, end_of_turn_ids(tokenizer), model_context(model))


def generate(
    chat: ChatModel,
    messages: list[dict[str, Any]],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    on_text: Callable[[str], None] | None = None,
    use_adapter: bool = True,
) -> str:
    """The assistant's next answer. Greedy when temperature is 0; streams pieces to `on_text`."""
    import torch

    from .data.render import render_prompt

    ids = render_prompt(messages, chat.tokenizer)
    input_ids = torch.tensor([ids], device=chat.model.device)
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": temperature > 0,
        "eos_token_id": chat.stop_ids or None,
        "pad_token_id": chat.tokenizer.pad_token_id,
    }
    if temperature > 0:
        kwargs.update(temperature=temperature, top_p=0.95)
    if on_text is not None:
        kwargs["streamer"] = _streamer(chat.tokenizer, on_text)
    adapter_off = chat.model.disable_adapter() if (chat.has_adapter and not use_adapter) else nullcontext()
    with torch.inference_mode(), adapter_off:
        output = chat.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
    return chat.tokenizer.decode(output[0][len(ids):], skip_special_tokens=True).strip()


def _streamer(tokenizer: Any, on_text: Callable[[str], None]) -> Any:
    from transformers import TextStreamer

    class _Forward(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            on_text(text)

    return _Forward(tokenizer, skip_prompt=True, skip_special_tokens=True)
