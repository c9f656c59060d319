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
from ..runlock import process_alive

STAGING_PREFIX = ".saving-"

if TYPE_CHECKING:
    from ..checkpoint import CheckpointMeta
    from ..model_types import Model, Tokenizer


def write_model_files(model: Model, tokenizer: Tokenizer, folder: Path, extra_files: dict[str, str]) -> None:
    """Adapter + small text files + tokenizer (with its chat template), into `folder`.

    The weights go first and the tokenizer (megabytes, and a copy of the base
    model's) last: on a nearly full disk the one thing no other copy holds gets the room.
    """
    adapters = getattr(model, "peft_config", None)
    if isinstance(adapters, dict) and len(adapters) > 1:
        # preference tuning keeps a frozen "ref" copy beside the trained "default" adapter: only the latter is the result
        model.save_pretrained(folder, selected_adapters=["default"])
    else:
        model.save_pretrained(folder)
    for name, text in extra_files.items():  # after the adapter: peft's placeholder README.md gives way to the card
        (folder / name).write_text(text, encoding="utf-8")
    tokenizer.save_pretrained(folder)


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
    staging = folder / f"{STAGING_PREFIX}{os.getpid()}"
    try:
        remove_dead_staging(folder)
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
    except Exception as error:  # noqa: BLE001  any failed write (ENOSPC, EFBIG, SafetensorError, torch.save's)
        shutil.rmtree(staging, ignore_errors=True)
        raise _save_failed(error, model, tokenizer, folder, extra_files, last_good) from None


def remove_dead_staging(folder: Path) -> None:
    """Staging folders of save_adapter calls whose process died mid-save (kill -9): never finished, never used."""
    for stale in folder.glob(f"{STAGING_PREFIX}*"):
        pid = stale.name.removeprefix(STAGING_PREFIX)
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _save_failed(error: Exception, model: Model, tokenizer: Tokenizer, folder: Path, extra_files: dict[str, str],
                 last_good: Path | None) -> QloraError:
    reason = f"{error.strerror} ({error.filename})" if isinstance(error, OSError) and error.strerror else str(error)
    rescue = Path(tempfile.gettempdir()) / f"qlora4080-rescue-{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        rescue.mkdir(parents=True)
        write_model_files(model, tokenizer, rescue, extra_files)
        saved = f"the trained adapter was saved instead to {rescue} (copy it into {folder} once there is room)"
    except Exception as rescue_error:  # noqa: BLE001
        if (rescue / "adapter_config.json").is_file() and any(rescue.glob("adapter_model.*")):
            saved = (f"the trained adapter's weights were saved instead to {rescue}, without its tokenizer "
                     f"({rescue_error}); copy them into {folder} once there is room")
        else:
            saved = f"saving a rescue copy to {rescue} failed too ({rescue_error})"
    kept = f"; the last good checkpoint is {last_good}" if last_good else ""
    return QloraError(f"could not save the adapter to {folder}: {reason}; {saved}{kept}",
                      hint="free disk space or fix the folder's permissions; nothing already in the folder was removed",
                      exit_code=4)

