"""What both backends share: where the weights are, which dtype, and the tokenizer set-up."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import QloraError
from ..recipe import BUILTIN_PREFIX, ModelSection
from ..thinking import Thinking, with_thinking

if TYPE_CHECKING:
    from ..model_types import Tokenizer


def model_source(name: str) -> str:
    """A loadable path or hub id for `model.name` (built-ins resolve to their local cache)."""
    if name.startswith(BUILTIN_PREFIX):
        from ..builtin_models import resolve_builtin

        return str(resolve_builtin(name[len(BUILTIN_PREFIX):]))
    return name


def device_map() -> dict[str, int]:
    """The whole model on this process's GPU: GPU 0 alone, GPU LOCAL_RANK under torchrun / accelerate launch."""
    from ..distributed import local_process_index

    return {"": local_process_index()}


def load_tokenizer(source: str, model_cfg: ModelSection, template_path: Path | None = None,
                   local_only: bool = False) -> Tokenizer:
    """The model's tokenizer with the recipe's chat template; `local_only` never reaches for the hub."""
    from transformers import AutoTokenizer

    from ..hub import cache_only_unless_reachable, hub_host

    with cache_only_unless_reachable() as online:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=model_cfg.trust_remote_code,
                                                      local_files_only=local_only or not online)
        except OSError as exc:
            reason = str(exc) if online or Path(source).exists() else (
                f"{hub_host()} cannot be reached from this machine and it is not in the local cache")
            raise QloraError(f"could not load the tokenizer of '{model_cfg.name}': {reason}", where="[model] name",
                             hint="connect this machine once to download it, or set [model] name to a local folder") from exc
    return prepare_tokenizer(tokenizer, template_path, model_cfg.thinking)


def prepare_tokenizer(tokenizer: Tokenizer, template_path: Path | None, thinking: Thinking = "auto") -> Tokenizer:
    """Apply a recipe's chat template and thinking switch, and make sure padding is possible."""
    if template_path is not None:
        tokenizer.chat_template = template_path.read_text(encoding="utf-8")
    if not getattr(tokenizer, "chat_template", None):
        raise QloraError(
            "this tokenizer has no chat template, so conversations cannot be rendered",
            where="[model] name",
            hint="use an instruct/chat model, or set model.chat_template to a .jinja file",
        )
    tokenizer.chat_template = with_thinking(str(tokenizer.chat_template), thinking)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise QloraError("the tokenizer has neither a pad nor an eos token", where="[model] name")
        tokenizer.pad_token = tokenizer.eos_token  # labels of padding are -100, so this is safe
    return tokenizer
