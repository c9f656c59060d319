"""Saving the adapter so that a failed write never costs the run.

The final save used to write straight into checkpoints/<run>/: a full or
read-only disk at that moment lost hours of training when no periodic
checkpoint was due. Now the adapter, tokenizer, metadata and model card are written to a
staging folder beside their destination and moved into place file by file
(os.replace is atomic on one filesystem). When that fails, the in-memory
adapter is written to a rescue folder under the system temp directory, and the
error says where it went and where the last good state is.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import QloraError

if TYPE_CHECKING:
    from ..checkpoint import CheckpointMeta
    from ..model_types import Model, Tokenizer


def write_model_files(model: Model, tokenizer: Tokenizer, folder: Path, extra_files: dict[str, str]) -> None:
    """Adapter + tokenizer (with its chat template) + small text files, into `folder`."""
    adapters = getattr(model, "peft_config", None)
    if isinstance(adapters, dict) and len(adapters) > 1:
        # preference tuning keeps a frozen "ref" copy beside the trained "default" adapter: only the latter is the result
        model.save_pretrained(folder, selected_adapters=["default"])
    else:
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for name, text in extra_files.items():
        (folder / name).write_text(text, encoding="utf-8")


def model_card_file(meta: CheckpointMeta, folder: Path) -> dict[str, str]:
    """{"README.md": the model card} to save with the adapter; {} (and a warning) if it cannot be written.

    peft writes a placeholder README.md with every adapter; this card, saved
    after it, replaces it. A card is worth less than the adapter, so a failure
    here never stops the save.
    """
    from ..console import warn
    from ..model_card import CARD_FILE, card_for_checkpoint

    try:
        return {CARD_FILE: card_for_checkpoint(folder, meta=meta, with_eval=False)}
    except Exception as error:  # noqa: BLE001  e.g. an unreadable recipe snapshot: the adapter is saved without a card
        warn(f"no model card written for {folder}: {error}")
        return {}


def save_adapter(model: Model, tokenizer: Tokenizer, folder: Path, extra_files: dict[str, str] | None = None,
                 *, last_good: Path | None = None) -> None:
    """Write the adapter into `folder` all or nothing; on failure, rescue it and raise QloraError."""
    extra_files = extra_files or {}
    staging = folder / f".saving-{os.getpid()}"
    try:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        write_model_files(model, tokenizer, staging, extra_files)
        for item in sorted(staging.iterdir()):
            target = folder / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
        staging.rmdir()
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise _save_failed(error, model, tokenizer, folder, extra_files, last_good) from None


def _save_failed(error: OSError, model: Model, tokenizer: Tokenizer, folder: Path, extra_files: dict[str, str],
                 last_good: Path | None) -> QloraError:
    reason = f"{error.strerror} ({error.filename})" if error.strerror else str(error)
    rescue = Path(tempfile.gettempdir()) / f"qlora4080-rescue-{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        rescue.mkdir(parents=True)
        write_model_files(model, tokenizer, rescue, extra_files)
        saved = f"the trained adapter was saved instead to {rescue} (copy it into {folder} once there is room)"
    except OSError as rescue_error:
        saved = f"saving a rescue copy to {rescue} failed too ({rescue_error.strerror or rescue_error})"
    kept = f"; the last good checkpoint is {last_good}" if last_good else ""
    return QloraError(f"could not save the adapter to {folder}: {reason}; {saved}{kept}",
                      hint="free disk space or fix the folder's permissions; nothing already in the folder was removed",
                      exit_code=4)
