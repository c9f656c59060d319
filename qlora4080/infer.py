"""Load a trained checkpoint (base + adapter, with its saved chat template) and generate from it.

The one place text is generated: streamed one answer at a time (chat) or
greedy and batched with left padding (generate, eval). chat.py,
batch_infer.py and evaluate.py all build on this module, never on each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .adapter_files import check_adapter, check_tokenizer_files, loading_checkpoint
from .checkpoint import META_FILE, CheckpointMeta
from .errors import QloraError
from .eval_rules import Generated
from .model_types import decoded
from .recipe import BUILTIN_PREFIX, ModelSection

if TYPE_CHECKING:
    from transformers import TextStreamer

    from .data.vocabulary import Message
    from .model_types import Model, Tokenizer


@dataclass
class ChatModel:
    model: Model
    tokenizer: Tokenizer
    description: str
    has_adapter: bool
    stop_ids: list[int] = field(default_factory=list)
    context: int = 0  # tokens the model can attend to (prompt + answer); 0 = unknown


def model_context(model: Model) -> int:
    """The model's context length from its config (0 when it does not say)."""
    config = getattr(model, "config", None)
    return int(getattr(config, "max_position_embeddings", 0) or 0)


def read_checkpoint_meta(target: str | Path) -> CheckpointMeta | None:
    """How a trained checkpoint was made; None for a plain model folder or builtin:<name>."""
    if str(target).startswith(BUILTIN_PREFIX):
        return None
    return CheckpointMeta.load(Path(target))


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
        check_tokenizer_files(path, meta.recipe_path)
        check_adapter(path, meta.recipe_path)  # before the base model loads: a broken checkpoint fails in a second, not after a minute
        model_cfg = meta.model_section()
        base, _ = hf.load_model(model_cfg, hardware, for_training=False)
        # The tokenizer saved with the adapter carries the exact chat template used in training.
        with loading_checkpoint(path, meta.recipe_path):
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


def prompt_ids(chat: ChatModel, messages: Sequence[Message], tools: list[dict[str, object]] | None = None) -> list[int]:
    """Token ids of the conversation ready for the model's answer, rendered with the checkpoint's own chat template.

    Every way of asking a loaded model (chat, serve) renders through here, so the
    same conversation reaches the model as the same tokens whichever way it came.
    """
    from .data.render import render_prompt

    return render_prompt(messages, chat.tokenizer, tools)


def generate(
    chat: ChatModel,
    messages: Sequence[Message],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    on_text: Callable[[str], None] | None = None,
    use_adapter: bool = True,
) -> str:
    """The assistant's next answer. Greedy when temperature is 0; streams pieces to `on_text`."""
    import torch

    ids = prompt_ids(chat, messages)
    input_ids = torch.tensor([ids], device=chat.model.device)
    from .decoding import GREEDY_BELOW

    sampling = ({"do_sample": True, "temperature": temperature, "top_p": 0.95} if temperature >= GREEDY_BELOW
                else {"do_sample": False})
    streamer = _streamer(chat.tokenizer, on_text) if on_text is not None else None
    with torch.inference_mode(), adapter_switch(chat, use_adapter):
        output = chat.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                     max_new_tokens=max_new_tokens, eos_token_id=chat.stop_ids or None,
                                     pad_token_id=chat.tokenizer.pad_token_id, streamer=streamer, **sampling)
    return decoded(chat.tokenizer, output[0][len(ids):].tolist()).strip()


def generate_answers(chat: ChatModel, prompts: Sequence[Sequence[Message]], *, max_new_tokens: int = 256,
                     batch_size: int = 8, use_adapter: bool = True, tools: Sequence[list[dict[str, object]] | None] | None = None,
                     on_batch: Callable[[int], None] | None = None) -> list[Generated]:
    """Greedy answers for many prompts, batched with left padding (so every row ends where generation starts)."""
    import torch

    from .data.render import render_prompt

    pad = chat.tokenizer.pad_token_id
    stops = set(chat.stop_ids)
    row_tools = list(tools) if tools is not None else [None] * len(prompts)
    results: list[Generated] = []
    with torch.inference_mode(), adapter_switch(chat, use_adapter):
        for start in range(0, len(prompts), batch_size):
            batch = [render_prompt(prompt, chat.tokenizer, row_tools[start + k])
                     for k, prompt in enumerate(prompts[start : start + batch_size])]
            width = max(len(ids) for ids in batch)
            ids = torch.tensor([[pad] * (width - len(i)) + i for i in batch], device=chat.model.device)
            mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in batch], device=chat.model.device)
            output = chat.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                         eos_token_id=list(stops) or None, pad_token_id=pad)
            results.extend(_decoded(chat.tokenizer, row, stops) for row in output[:, width:].tolist())
            if on_batch:
                on_batch(len(batch))
    return results


def _decoded(tokenizer: Tokenizer, row: list[int], stops: set[int]) -> Generated:
    """One generated row up to (not including) its first stop token."""
    cut = next((i for i, token in enumerate(row) if token in stops), None)
    kept = row if cut is None else row[:cut]
    return Generated(text=decoded(tokenizer, kept).strip(), raw_text=decoded(tokenizer, kept, keep_special=True),
                     token_ids=tuple(kept), stopped=cut is not None)


def adapter_switch(chat: ChatModel, use_adapter: bool) -> AbstractContextManager[object]:
    """A context in which the model answers with its adapter (the default) or as the bare base model."""
    if not chat.has_adapter or use_adapter:
        return nullcontext()
    return adapter_off(chat.model, chat.description)


def adapter_off(model: Model, description: str = "the model") -> AbstractContextManager[object]:
    """A context in which a peft model answers as its bare base model."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise QloraError(f"{description} has no adapter to switch off")
    return model.disable_adapter()


@contextmanager
def beside_adapter(chat: ChatModel, folder: Path, name: str = "sft") -> Iterator[None]:
    """Another adapter (the SFT checkpoint a run continued) loaded beside the checkpoint's, answering inside; the
    checkpoint's own adapter answers again after, and the other is unloaded."""
    chat.model.load_adapter(folder, adapter_name=name)
    chat.model.set_adapter(name)
    try:
        yield
    finally:
        chat.model.set_adapter("default")
        chat.model.delete_adapter(name)


def _streamer(tokenizer: Tokenizer, on_text: Callable[[str], None]) -> TextStreamer:
    from transformers import TextStreamer

    class _Forward(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            on_text(text)

    return _Forward(tokenizer, skip_prompt=True, skip_special_tokens=True)
