"""Experiment trackers: transformers' own TensorBoard, W&B and MLflow callbacks, kept offline and under runs/<run>/.

`[output] report_to` names the trackers. Each gets what the trainer logs,
through transformers' standard integration callback; this module only decides
where they write and what the run is called:

- tensorboard: runs/<run>/tensorboard (TENSORBOARD_LOGGING_DIR, read once when the callback is made).
- wandb: an offline run in runs/<run>/wandb, unless WANDB_MODE / WANDB_DIR say otherwise.
- mlflow: a local file store in runs/<run>/mlruns, unless MLFLOW_TRACKING_URI names another.

The W&B and MLflow runs are opened here rather than by their callbacks, which
then log into the open run (both callbacks support that). Two reasons: the run
is named after the qlora4080 run and gets the resolved recipe as its config
(flattened keys such as training.learning_rate), and it must outlive
trainer.train(): the validation loss after training is logged by a separate
trainer.evaluate(), and MLflowCallback ends a run it opened itself at the end of
training, so that last evaluation would land in a second, nameless run.

Environment variables set for the trackers (the MLflow store, MLflow's opt-in
to that store, MLflow telemetry off) exist only while the run is open and are
restored when it closes. A run stopped by an exception is closed, marked failed,
by close_failed_run(); else when the next run opens, or by the libraries' own
exit hooks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from ..errors import QloraError
from ..toml_io import flatten_table, loads_toml

if TYPE_CHECKING:
    from transformers.integrations import TensorBoardCallback

    from ..recipe import Recipe
    from .rundirs import RunDirs

TRACKER_HINTS = {
    "wandb": "unset WANDB_MODE (qlora4080 writes an offline run, `wandb sync` uploads it later), or run `wandb login` "
             "for an online run, or remove \"wandb\" from output.report_to",
    "mlflow": "check MLFLOW_TRACKING_URI (unset, qlora4080 writes a local store in runs/<run>/mlruns), "
              "or remove \"mlflow\" from output.report_to",
}
WANDB_PROJECT = "qlora4080"
"""The W&B project runs go to unless WANDB_PROJECT names another."""
MLFLOW_PARAM_CHARS = 6000
"""MLflow refuses longer parameter values; a longer recipe value (a list of sources) is left out of the params."""


def tracker_callbacks(recipe: Recipe, dirs: RunDirs, *, evaluates_after: Callable[[], bool]) -> list[TrainerCallback]:
    """The callbacks for `[output] report_to`, in the order they must run; [] when it names none.

    `evaluates_after` says, once training ends, whether trainer.evaluate() follows (the runs stay open for it).
    """
    names = recipe.output.report_to
    if not names:
        return []
    run = TrackerRun(names=list(names), run_name=dirs.name, folder=dirs.logs.resolve(), recipe_toml=recipe.to_toml(),
                     evaluates_after=evaluates_after)
    integrations: list[TrainerCallback] = []
    if "tensorboard" in names:
        from transformers.integrations import TensorBoardCallback

        with environment({"TENSORBOARD_LOGGING_DIR": str(run.folder / "tensorboard")}):
            run.tensorboard = TensorBoardCallback()
        integrations.append(run.tensorboard)
    if "wandb" in names:
        from transformers.integrations import WandbCallback

        integrations.append(WandbCallback())
    if "mlflow" in names:
        from transformers.integrations import MLflowCallback

        with environment(run.mlflow_settings(include_store=False)):  # importing mlflow starts its telemetry unless off
            integrations.append(MLflowCallback())
    return [OpenTrackerRun(run), *integrations, CloseTrackerRun(run)]


@dataclass
class TrackerRun:
    """One training run as the trackers see it: opened when training begins, closed after the last log."""

    names: list[str]
    run_name: str
    folder: Path
    """runs/<run>: every tracker writes below it unless the user's environment points elsewhere."""
    recipe_toml: str
    evaluates_after: Callable[[], bool]
    tensorboard: TensorBoardCallback | None = None
    training_ended: bool = False
    _restore: dict[str, str | None] | None = field(default=None, repr=False)
    _wandb_run: Any = field(default=None, repr=False)
    _mlflow_run: bool = False

    @property
    def recipe_params(self) -> dict[str, object]:
        """The resolved recipe as flat `section.key` -> value pairs."""
        return flatten_table(loads_toml(self.recipe_toml))

    def mlflow_settings(self, *, include_store: bool = True) -> dict[str, str]:
        """What MLflow needs from the environment; nothing the user has set is replaced."""
        settings = {} if "MLFLOW_DISABLE_TELEMETRY" in os.environ else {"MLFLOW_DISABLE_TELEMETRY": "true"}
        if include_store and not os.environ.get("MLFLOW_TRACKING_URI"):
            # mlflow-skinny has no SQL store (no sqlalchemy), and MLflow 3 only opens a file store when asked to.
            settings |= {"MLFLOW_TRACKING_URI": (self.folder / "mlruns").as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true"}
        return settings

    def open(self) -> None:
        global _open_run
        if _open_run is not None:  # a run that stopped with an exception never closed: close it before this one
            _open_run.close()
        _open_run = self
        settings = self.mlflow_settings() if "mlflow" in self.names else {}
        self._restore = {key: os.environ.get(key) for key in settings}
        os.environ.update(settings)
        params = self.recipe_params
        if "wandb" in self.names:
            self._opening("wandb", lambda: self._open_wandb(params))
        if "mlflow" in self.names:
            self._opening("mlflow", lambda: self._open_mlflow(params))

    def _opening(self, name: str, open_tracker: Callable[[], None]) -> None:
        """Open one tracker; its library's refusal (no W&B login for an online run, an MLflow server that is not
        there) becomes a QloraError naming the setting, and what was opened is closed again."""
        import importlib

        errors = importlib.import_module("wandb.errors" if name == "wandb" else "mlflow.exceptions")
        refusal = errors.Error if name == "wandb" else errors.MlflowException
        try:
            open_tracker()
        except refusal as error:
            self.close(failed=True)
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise QloraError(f"{name} could not start this run's tracking: {first}", where="[output] report_to",
                             hint=TRACKER_HINTS[name]) from None

    def _open_wandb(self, params: dict[str, object]) -> None:
        import wandb

        if wandb.run is not None:  # a run the caller opened: WandbCallback logs into it, so the recipe goes there too
            wandb.run.config.update(params, allow_val_change=True)
            return
        where: dict[str, str] = {}
        if not os.environ.get("WANDB_MODE"):
            where["mode"] = "offline"
        if not os.environ.get("WANDB_DIR"):
            where["dir"] = str(self.folder)  # wandb adds the wandb/ folder itself
            self.folder.mkdir(parents=True, exist_ok=True)
        # Only the trainer's logs: no system metrics, machine or git metadata, code copy, or console capture.
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True, x_disable_meta=True,
                                  disable_git=True, save_code=False)
        self._wandb_run = wandb.init(project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT), name=self.run_name,
                                     config=params, settings=settings, **where)  # type: ignore[arg-type]

    def _open_mlflow(self, params: dict[str, object]) -> None:
        import mlflow

        if mlflow.active_run() is None:  # else a run the caller opened: MLflowCallback logs into it, and so does this
            mlflow.start_run(run_name=self.run_name)
            self._mlflow_run = True
        kept = {key: value for key, value in params.items() if len(str(value)) <= MLFLOW_PARAM_CHARS}
        items = list(kept.items())
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params a call
            mlflow.log_params(dict(items[start:start + 100]))

    def write_recipe_text(self) -> None:
        """The recipe beside TensorBoard's own "args" text (its writer exists once its callback has begun)."""
        writer = self.tensorboard.tb_writer if self.tensorboard else None
        if writer is not None:
            writer.add_text("recipe", "```toml\n" + self.recipe_toml + "\n```")

    def close(self, *, failed: bool = False) -> None:
        global _open_run
        if _open_run is self:
            _open_run = None
        try:
            if self._wandb_run is not None:
                self._wandb_run.finish(exit_code=1 if failed else 0)
                self._wandb_run = None
            if self._mlflow_run:
                import mlflow

                mlflow.end_run(status="FAILED" if failed else "FINISHED")
                self._mlflow_run = False
            # The last evaluation after training reopens TensorBoard's writer; it is closed here, not left to exit.
            if self.tensorboard is not None and self.tensorboard.tb_writer is not None:
                self.tensorboard.tb_writer.close()
                self.tensorboard.tb_writer = None
        finally:
            if self._restore is not None:
                restore_environment(self._restore)
                self._restore = None


_open_run: TrackerRun | None = None
"""The tracker run this process has open, if any (only one: W&B and MLflow each keep one active run)."""


def close_failed_run() -> None:
    """Close the tracker run a training stopped by an exception left open: marked failed, the environment restored.

    The trainer calls no callback when train() raises, so the caller of train() calls this; nothing happens when
    no run is open.
    """
    if _open_run is not None:
        _open_run.close(failed=True)


class OpenTrackerRun(TrainerCallback):
    """First of the tracker callbacks: the runs are open before each integration sets itself up."""

    def __init__(self, run: TrackerRun):
        self.run = run

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.run.open()


class CloseTrackerRun(TrainerCallback):
    """Last of the tracker callbacks: closes the runs after the integrations have logged the end of training."""

    def __init__(self, run: TrackerRun):
        self.run = run

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.run.write_recipe_text()

    def on_train_end(self, args, state, control, **kwargs):
        self.run.training_ended = True
        if not self.run.evaluates_after():
            self.run.close()

    def on_evaluate(self, args, state, control, **kwargs):
        if self.run.training_ended:  # the evaluation after training: its metrics are logged, nothing more comes
            self.run.close()


@contextmanager
def environment(settings: Mapping[str, str]) -> Iterator[None]:
    """`settings` in os.environ inside the block, the previous values (or their absence) after it."""
    previous = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        restore_environment(previous)


def restore_environment(previous: Mapping[str, str | None]) -> None:
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
