"""Static types of what transformers and peft hand back, for annotations only.

Importing transformers costs seconds and `qlora4080 --help` must stay instant,
so modules import these names under `if TYPE_CHECKING:` (with
`from __future__ import annotations`), never at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import TypeAlias

    from transformers import PreTrainedTokenizerBase

    Model: TypeAlias = Any
    """A causal LM as loaded (transformers, or unsloth's patched class), or wrapped by peft once an adapter is on.

    No static type covers that set: transformers annotates `generate` with a
    self-type written for the `ty` checker that mypy refuses for every concrete
    model, and peft's wrapper forwards attributes dynamically. So the model is
    the one dynamically typed object, named here rather than spelled `Any`
    wherever it travels.
    """
    Tokenizer: TypeAlias = PreTrainedTokenizerBase


def decoded(tokenizer: Tokenizer, ids: list[int], *, keep_special: bool = False) -> str:
    """Text of one sequence of token ids (tokenizers type `decode` as maybe returning a list, for batches)."""
    text = tokenizer.decode(ids, skip_special_tokens=not keep_special)
    return text if isinstance(text, str) else "".join(text)


__all__ = ["Model", "Tokenizer", "decoded"]
