"""What marks a folder as a run of ours, and which of its saves is the latest intact one.

The lowest layer of the run folders: adapter_files (checking a trained adapter), the
replace-on-success logic and the run planner all read it, and it reads nothing of ours.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RUN_MARKER = ".qlora4080-run"
TRAINER_STATE = "trainer_state.json"


def owns_run_folder(path: Path) -> bool:
    """True only for a folder holding the marker qlora4080 writes: a familiar file name proves nothing."""
    return (path / RUN_MARKER).is_file()


def latest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint-N folder with the highest N whose trainer state is intact.

    A kill during a save can leave a truncated trainer_state.json: that
    checkpoint is passed over for the intact one before it.
    """
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit() and trainer_state(p) is not None]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def trainer_state(checkpoint: Path) -> dict[str, Any] | None:
    """The checkpoint's trainer_state.json as a dict; None when it is missing or damaged."""
    try:
        state = json.loads((checkpoint / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("global_step"), int) else None
