"""Load a trained checkpoint (base + adapter, with its saved chat template) and generate, streaming."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import META_FILE, CheckpointMeta
from .errors import QloraError
from .recipe import BUILTIN_PREFIX, ModelSection


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


def read_checkpoint_meta(target: str | Path) -> CheckpointMeta | None:
    """How a trained checkpoint was made; None for a plain model folder or builtin:<name>."""
    if str(target).startswith(BUILTIN_PREFIX):
        return None
    return CheckpointMeta.load(Path(target))


ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def check_adapter(folder: Path, recipe: str | None = None) -> None:
    """Fail before any model loads when the checkpoint's adapter files are missing or cut short.

    Without this, peft takes a folder with no adapter file for a hub repo id
    (HFValidationError) and safetensors reports a truncated file as a bad header:
    neither says which checkpoint is broken or what to do.
    """
    config, weights = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    problem = None
    if not config.is_file():
        problem = f"{ADAPTER_CONFIG} is missing"
    elif not weights.is_file():
        problem = f"{ADAPTER_WEIGHTS} is missing"
    else:
        try:
            if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
                problem = f"{ADAPTER_CONFIG} is damaged (not a JSON object)"
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            problem = f"{ADAPTER_CONFIG} is damaged ({exc})"
        problem = problem or safetensors_problem(weights)
    if problem:
        raise QloraError(f"the adapter in {folder} cannot be loaded: {problem}", where=str(folder),
                         hint=_repair_hint(folder, recipe))


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is unusable ("is damaged or truncated (...)"), or None.

    Reads only the header: 8 bytes of header length, a JSON table of tensors
    and their byte ranges. A file cut short ends before its last range does.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 0:
            return f"{path.name} is damaged or truncated (only {size} bytes)"
        if 8 + length > size:
            return f"{path.name} is damaged or truncated ({size:,} bytes: too short for its own header)"
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return f"{path.name} is damaged or truncated (its header is not readable)"
    if not isinstance(header, dict):
        return f"{path.name} is damaged or truncated (its header is not readable)"
    ends = [entry["data_offsets"][1] for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict) and len(entry.get("data_offsets") or ()) == 2]
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        return f"{path.name} is damaged or truncated ({size:,} bytes, its header says {needed:,})"
    return None


def _repair_hint(folder: Path, recipe: str | None) -> str:
    """What to do about a broken adapter: copy it from the run's latest intermediate save, or train again."""
    from .training.rundirs import latest_checkpoint

    saved = latest_checkpoint(folder) if folder.is_dir() else None
    copy = ""
    if (saved is not None and (saved / ADAPTER_CONFIG).is_file() and (saved / ADAPTER_WEIGHTS).is_file()
            and safetensors_problem(saved / ADAPTER_WEIGHTS) is None):
        copy = (f"copy {ADAPTER_WEIGHTS} and {ADAPTER_CONFIG} from {saved} (the run's save at step "
                f"{saved.name.rsplit('-', 1)[-1]}) into {folder}, or ")
    return copy + f"re-train: qlora4080 train {recipe or 'RECIPE'} --run-name {folder.name} --overwrite"


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

        meta = CheckpointMeta.load(path)
        assert meta is not None  # the file exists (checked above)
        check_adapter(path, meta.recipe_path)  # before the base model loads: a broken checkpoint fails in a second, not after a minute
        model_cfg = ModelSection(
            name=meta.base_model,
            load_in_4bit=meta.load_in_4bit,
            dtype=meta.dtype,
            trust_remote_code=meta.trust_remote_code,
        )
        base, _ = hf.load_model(model_cfg, hardware, for_training=False)
        # The tokenizer saved with the adapter carries the exact chat template used in training.
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(path), None)
        model = PeftModel.from_pretrained(base, path)
        description = f"{meta.base_model} + adapter {path}"
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
