"""Trainer checkpoints written whole or not at all, and never at the cost of the trained weights.

transformers writes `checkpoint-N/` file by file in place: a full disk in the
middle left a traceback (SafetensorError, torch.save's "unexpected pos"), a
half checkpoint filling the disk, and the weights trained since the last save
lost. Here each checkpoint is written into `.saving-checkpoint-N/` beside it
and renamed when complete; a failed write removes the staging folder, writes
the checkpoint to a rescue folder instead, and stops the run with an error
naming it and the command that resumes from it. Staging folders a killed
process left behind are removed by the next save of the run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import QloraError

STAGING_PREFIX = ".saving-checkpoint-"


def remove_stale_staging(run_dir: Path) -> None:
    """Half-written checkpoints of an earlier, killed process (the caller holds the run's lock)."""
    for stale in run_dir.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)


class SafeCheckpointSaving:
    """Mixed into a transformers Trainer subclass (before it): staged, rescued checkpoint saves."""

    args: Any
    state: Any

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        parent: Any = super()
        if self.args.world_size > 1:  # every process writes its own files into the folder: no private staging name
            parent._save_checkpoint(model, trial)
            return
        run_dir = Path(self.args.output_dir)
        name = f"checkpoint-{self.state.global_step}"
        staging_root = run_dir / f"{STAGING_PREFIX}{self.state.global_step}"
        remove_stale_staging(run_dir)
        try:
            self._save_into(staging_root, model, trial)
            final = run_dir / name
            if final.is_dir():  # a checkpoint of this step from before a resume: the new one replaces it whole
                shutil.rmtree(final)
            os.replace(staging_root / name, final)
            shutil.rmtree(staging_root)  # what else TRL writes into the output folder: its placeholder README.md
        except Exception as error:  # noqa: BLE001  any failed write (ENOSPC, EFBIG, EROFS, SafetensorError) rescues
            shutil.rmtree(staging_root, ignore_errors=True)
            raise self._rescue(error, run_dir, name, model, trial) from None
        self._point_best_checkpoint(staging_root, run_dir)
        from transformers.trainer_utils import rotate_checkpoints

        if self.args.should_save:  # the rotation transformers does ran inside the staging folder
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    def _save_into(self, root: Path, model: Any, trial: Any) -> None:
        """transformers' own checkpoint save, into `root/checkpoint-N`."""
        parent: Any = super()
        original = self.args.output_dir
        self.args.output_dir = str(root)
        try:
            parent._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = original

    def _point_best_checkpoint(self, staging_root: Path, run_dir: Path) -> None:
        best = self.state.best_model_checkpoint
        if best and Path(best).parent == staging_root:
            self.state.best_model_checkpoint = str(run_dir / Path(best).name)
            self.state.save_to_json(str(run_dir / Path(best).name / "trainer_state.json"))

    def _rescue(self, error: Exception, run_dir: Path, name: str, model: Any, trial: Any) -> QloraError:
        reason = f"{error.strerror} ({error.filename})" if isinstance(error, OSError) and error.strerror else str(error)
        rescue = Path(tempfile.gettempdir()) / f"qlora4080-rescue-{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            self._save_into(rescue, model, trial)
            saved = (f"the checkpoint was saved instead to {rescue / name}; once there is room, move it into "
                     f"{run_dir}/ and resume with --resume --run-name {run_dir.name}")
        except Exception:  # noqa: BLE001  the rescue disk fails too: keep at least the adapter's weights
            try:
                (rescue / name).mkdir(parents=True, exist_ok=True)
                model.save_pretrained(rescue / name)
                saved = f"the trained adapter alone was saved to {rescue / name} (not resumable; chat or eval it)"
            except Exception as rescue_error:  # noqa: BLE001
                saved = f"saving a rescue copy to {rescue} failed too ({rescue_error})"
        return QloraError(f"could not save {name} in {run_dir}: {reason}; {saved}",
                          hint="free disk space or fix the folder's permissions; nothing already saved was removed",
                          exit_code=4)
