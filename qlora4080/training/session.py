"""What every stage of a training run reads: the run itself, and what the run returns.

A run is a line of stages, each a function from the values earlier stages
made to a new frozen value (training/run.py reads them top to bottom):

    set_up_environment -> Environment(hardware, backend_name, backend, plan)    environment.py
    load_model         -> LoadedModel(model, tokenizer)                         model_setup.py
    prepare_splits     -> Splits(train, evaluation, validation_file)            data_setup.py
    attach_lora        -> LoadedModel, the adapter on                           model_setup.py
    build_trainer      -> TrainerParts(trainer, view, metrics, guard)           fitting.py
    fit, evaluate      -> TrainOutput, eval metrics                             fitting.py
    save_run           -> TrainResult                                           finish.py

No stage branches on the training method or the backend: the method's spec
(qlora4080/methods) reads and tokenizes its records and builds its trainer,
and the backend module loads the model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..methods.registry import method_spec
from ..recipe import Recipe
from .rundirs import RunDirs
from .runlog import RunLog
from .stages import Stages

if TYPE_CHECKING:
    from ..methods.spec import MethodSpec
    from ..model_types import Model, Tokenizer
    from .summary import RunSummary


@dataclass(frozen=True)
class RunContext:
    """The run as planned before anything loads: its recipe, folders, log, method, and the clock of its stages."""

    recipe: Recipe
    dirs: RunDirs
    log: RunLog
    checkpoint: Path | None
    """The trainer checkpoint to resume from, if any."""
    method: MethodSpec
    """The training method: its records, its trainer."""
    stages: Stages
    """Announces and times each stage (summary.json's timings)."""
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def begin(cls, recipe: Recipe, dirs: RunDirs, log: RunLog, checkpoint: Path | None) -> RunContext:
        return cls(recipe, dirs, log, checkpoint, method_spec(recipe.training.method), Stages(log))


@dataclass
class TrainResult:
    run_name: str
    checkpoint_dir: Path
    run_dir: Path
    summary: RunSummary
    model: Model = field(repr=False)
    """The trained model (base + adapter), still in memory, for chatting or evaluating right away."""
    tokenizer: Tokenizer = field(repr=False)
