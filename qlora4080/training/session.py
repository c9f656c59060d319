"""One training run, stage by stage: environment, model, data, LoRA, trainer, fit, evaluate, save.

Each stage is a short method that leaves its result on the run. No stage
branches on the training method or the backend: the method's spec
(qlora4080/methods) reads and tokenizes its records and builds its trainer,
and the backend module loads the model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..checkpoint import META_FILE
from ..console import stage
from ..errors import QloraError
from ..methods.registry import method_spec
from ..perplexity import from_loss
from ..recipe import Recipe
from ..thinking import describe
from .rundirs import RunDirs, latest_checkpoint, resume_command
from .runlog import RunLog
from .saving import save_adapter
from .stages import Stages

if TYPE_CHECKING:
    from transformers import TrainerCallback
    from transformers.trainer_utils import TrainOutput

    from ..backends import Backend, BackendName
    from ..data.dataset import TokenizedSplit
    from ..hardware import Hardware
    from ..methods.spec import MethodSpec
    from ..model_types import Model, Tokenizer
    from ..plan import RunPlan
    from .callbacks import MetricsCallback
    from .interrupts import InterruptGuard
    from .panel import TrainingView
    from .summary import RunSummary
    from .trainer import CountingTrainer


@dataclass
class TrainResult:
    run_name: str
    checkpoint_dir: Path
    run_dir: Path
    summary: RunSummary
    model: Model = field(repr=False)
    """The trained model (base + adapter), still in memory, for chatting or evaluating right away."""
    tokenizer: Tokenizer = field(repr=False)


@dataclass
class TrainingRun:
    recipe: Recipe
    dirs: RunDirs
    log: RunLog
    checkpoint: Path | None
    """The trainer checkpoint to resume from, if any."""
    stages: Stages = field(init=False)
    method: MethodSpec = field(init=False)
    """The training method: its records, its trainer."""
    started: float = field(default_factory=time.monotonic)
    hardware: Hardware = field(init=False)
    backend_name: BackendName = field(init=False)
    backend: Backend = field(init=False)
    plan: RunPlan = field(init=False)
    """What the recipe's "auto" values became on this machine; every later stage reads it."""
    # Each stage sets what it makes; a later stage reads only what earlier ones set.
    model: Model = field(init=False)
    tokenizer: Tokenizer = field(init=False)
    train_split: TokenizedSplit = field(init=False)
    eval_split: TokenizedSplit | None = field(init=False)
    validation_file: Path | None = field(init=False)
    trainer: CountingTrainer = field(init=False)
    view: TrainingView = field(init=False)
    metrics: MetricsCallback = field(init=False)
    guard: InterruptGuard = field(init=False)

    def __post_init__(self) -> None:
        self.stages = Stages(self.log)
        self.method = method_spec(self.recipe.training.method)

    def set_up_environment(self, target_gb: float | None) -> None:
        """Hardware, doctor's verdict for this recipe, the backend, the preflight, the recipe snapshot."""
        from ..backends import load_backend
        from ..distributed import check_sharding_supported, is_main_process, world_size
        from ..doctor import plan_training
        from ..hardware import detect
        from ..plan import resolve_plan
        from ..preflight import print_preflight, run_preflight
        from ..quiet import quiet_libraries

        with self.stages.stage("Environment"):
            check_sharding_supported(self.recipe.model.backend)  # before the machine's verdict: the launch is at fault
            self.hardware = detect()
            # First doctor's checks: a broken stack is named before minutes of loading. On the unsloth path this
            # imports unsloth, which must patch transformers/trl/peft before anything imports them (quiet_libraries).
            plan = plan_training(self.recipe.model.backend, self.recipe.model.load_in_4bit, self.hardware)
            if plan.blockers or plan.backend is None:
                first, more = (plan.blockers[0], plan.blockers[1:]) if plan.blockers else (None, [])
                raise QloraError(f"this machine cannot train the recipe: {plan.reason}"
                                 + "".join(f"; also {problem.message}" for problem in more), where="[model] backend",
                                 hint=first.hint if first else "run qlora4080 doctor RECIPE for the details")
            self.backend_name = plan.backend  # plan.warnings: the backend says those itself when it loads
            check_sharding_supported(self.backend_name)
            quiet_libraries()
            self.plan = resolve_plan(self.recipe, self.hardware, self.backend_name)
            self.backend = load_backend(self.backend_name)
            resumed = f" (resumed from {self.checkpoint})" if self.checkpoint else ""
            self.log.line(f"run {self.dirs.name}{resumed}: recipe {self.recipe.source_path}")
            self.log.line(f"backend: {self.backend_name} ({plan.reason})")
            for line in self.plan.log_lines():
                self.log.line(line, style="yellow" if line.startswith("note:") else None)
            if self.recipe.model.thinking != "auto":
                self.log.line(describe(self.recipe.model.thinking))
            print_preflight(run_preflight(self.recipe, self.hardware, self.backend_name, target_gb, processes=world_size()),
                            self.hardware)
            if is_main_process():
                snapshot_recipe(self.recipe, self.dirs)

    def set_up_model(self) -> None:
        recipe = self.recipe
        template = recipe.resolve_path(recipe.model.chat_template) if recipe.model.chat_template else None
        with self.stages.stage(f"Loading model {recipe.model.name}"):
            self.model, self.tokenizer = self.backend.load_model(recipe.model, self.hardware, template_path=template)

    def set_up_data(self) -> None:
        from .data_setup import prepare_data

        with self.stages.stage(f"Preparing {self.method.records.unit} (chat template, trained tokens)"):
            self.train_split, self.eval_split, self.validation_file = prepare_data(self.recipe, self.tokenizer, self.log,
                                                                                   self.guard_data)

    def guard_data(self, train_file: Path) -> None:
        """Process 0 records the training file's hash (a new run) or refuses a resume on changed data."""
        from ..distributed import is_main_process
        from .data_guard import guard_training_data

        if is_main_process() and (note := guard_training_data(self.dirs.checkpoint, train_file, self.checkpoint is not None)):
            self.log.line(note, style="yellow")

    def attach_lora(self) -> None:
        """A fresh adapter from the recipe's [lora], or the trained one `model.adapter` names, trainable."""
        from .summary import count_parameters

        lora, adapter = self.recipe.lora, self.recipe.model.adapter
        if adapter is not None:
            with self.stages.stage(f"Loading the adapter {adapter} to continue from"):
                self.model = self._load_adapter(Path(adapter).expanduser())
        else:
            with self.stages.stage(f"Attaching LoRA r={lora.r} alpha={lora.alpha} on {lora.target_modules}"):
                self.model = self.backend.attach_lora(self.model, lora, seed=self.recipe.training.seed,
                                                      gradient_checkpointing=self.plan.gradient_checkpointing)
        trainable, total = count_parameters(self.model)
        self.log.line(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(total, 1):.2f}%)")

    def _load_adapter(self, folder: Path) -> Model:
        from peft import PeftModel

        from ..adapter_files import check_adapter
        from ..backend_capabilities import backends_that, capabilities
        from ..checkpoint import CheckpointMeta

        if not capabilities(self.backend_name).continues_adapter:
            able = backends_that("continues_adapter")
            raise QloraError(f"continuing from a trained adapter needs the {' or '.join(able)} backend for now (this run "
                             f"uses {self.backend_name})", where="[model] adapter", hint=f"--set model.backend={able[0]}")
        check_adapter(folder)
        meta = CheckpointMeta.load(folder)
        if meta is not None and meta.base_model != self.recipe.model.name:
            raise QloraError(f"the adapter in {folder} was trained on {meta.base_model}, but [model] name is "
                             f"{self.recipe.model.name}", where="[model] adapter",
                             hint=f"set [model] name = \"{meta.base_model}\", or pick an adapter trained on this model")
        if meta is not None and meta.thinking != self.recipe.model.thinking:
            self.log.line(f"note: the adapter in {folder} was trained with model.thinking = {_toml(meta.thinking)}, "
                          f"this run renders with {_toml(self.recipe.model.thinking)}: set the same value unless the "
                          "change is what you want to train", style="yellow")
        model = PeftModel.from_pretrained(self.model, folder, is_trainable=True)
        shape = model.peft_config["default"]
        lora = self.recipe.lora
        if (getattr(shape, "r", lora.r), getattr(shape, "lora_alpha", lora.alpha)) != (lora.r, lora.alpha):
            self.log.line(f"note: [lora] r={lora.r} alpha={lora.alpha} is not used: the adapter keeps its own shape "
                          f"(r={getattr(shape, 'r', '?')}, alpha={getattr(shape, 'lora_alpha', '?')})", style="yellow")
        return model

    def build_trainer(self, live: bool | None, extra_callbacks: list[TrainerCallback]) -> None:
        """The method's trainer wired to the panel, the logs and Ctrl-C."""
        from transformers.trainer_callback import PrinterCallback

        from ..distributed import is_main_process
        from .callbacks import MetricsCallback
        from .config import early_stopping_callbacks
        from .interrupts import InterruptGuard
        from .panel import TrainingView
        from .trackers import tracker_callbacks

        main = is_main_process()  # with several processes, process 0 alone shows and records the run
        self.view = TrainingView(f"qlora4080 · {self.dirs.name}", self.hardware, live=live if main else False)
        self.metrics = MetricsCallback(self.log, self.dirs.logs / "metrics.jsonl", self.view, self.hardware)
        self.guard = InterruptGuard()
        # The trackers' runs stay open for the evaluation after training (which a Ctrl-C stop skips).
        trackers = (tracker_callbacks(self.recipe, self.dirs,
                                      evaluates_after=lambda: self.eval_split is not None and not self.guard.requested)
                    if main else [])
        self.trainer = self.make_trainer([self.metrics, self.guard, *trackers, *early_stopping_callbacks(self.recipe),
                                          *extra_callbacks])
        self.metrics.trainer = self.trainer
        self.trainer.remove_callback(PrinterCallback)  # MetricsCallback prints a readable line instead

    def make_trainer(self, callbacks: list[TrainerCallback]) -> CountingTrainer:
        """The training method's TRL trainer, with token counting."""
        from ..methods.spec import TrainerInputs

        return self.method.make_trainer(TrainerInputs(
            recipe=self.recipe, plan=self.plan, output_dir=self.dirs.checkpoint, model=self.model,
            tokenizer=self.tokenizer, train=self.train_split, validation=self.eval_split, callbacks=callbacks,
            log=self.log))

    def fit(self) -> TrainOutput:
        """trainer.train() with OOM advice, and Ctrl-C turned into a saved, resumable stop."""
        from ..preflight import global_batch
        from .oom import is_out_of_memory, out_of_memory_error

        t = self.recipe.training
        steps = self.trainer.args.max_steps if self.trainer.args.max_steps > 0 else f"{t.epochs:g} epoch(s) of"
        unit = self.method.records.unit
        processes = self.trainer.args.world_size
        batch = f"batch {t.batch_size} x grad-accum {t.grad_accum}" + (
            f" x {processes} processes = global batch {global_batch(self.recipe, processes)}" if processes > 1 else "")
        stage(f"Training: {self.train_split.conversations} {unit}, {batch}, {steps} steps, lr {t.learning_rate}")
        if (needed := global_batch(self.recipe, processes)) > self.train_split.conversations:
            self.log.line(f"warning: one optimizer step takes {needed} {unit} (batch x grad-accum x processes) but the "
                          f"data has {self.train_split.conversations}: every step is the whole epoch and more; lower "
                          "training.grad_accum or training.batch_size", style="yellow")
        started = time.monotonic()
        try:
            with self.guard:
                output = self.trainer.train(resume_from_checkpoint=str(self.checkpoint) if self.checkpoint else None)
        except BaseException as error:
            self.view.stop()
            if is_out_of_memory(error):
                from ..hardware import memory_snapshot

                snapshot, step = memory_snapshot(self.hardware), self.trainer.state.global_step
                self.log.line(f"out of memory at step {step}: {error}", echo=False)
                raise out_of_memory_error(self.recipe, step, snapshot.get("peak"), snapshot.get("card_total")) from None
            raise
        self.view.stop()
        self.stages.timings["Training"] = round(time.monotonic() - started, 2)
        if self.guard.requested:
            self._stop_interrupted(output)
        return output

    def _stop_interrupted(self, output: TrainOutput) -> None:
        from ..distributed import is_main_process
        from .interrupts import TrainingInterrupted
        from .summary import build_summary, checkpoint_meta

        if is_main_process():  # the trainer's checkpoint is written by every process together; the adapter by one
            # With its metadata, so chat, eval and export take the adapter saved so far like a finished one.
            summary = build_summary(self.dirs, output, self.metrics.history, self.train_split, {}, self.stages.timings,
                                    self.started, self.hardware, self.trainer, self.plan)
            meta = checkpoint_meta(self.recipe, self.plan, summary, self.validation_file)
            save_adapter(self.model, self.tokenizer, self.dirs.checkpoint, {META_FILE: meta.to_json()},
                         last_good=latest_checkpoint(self.dirs.checkpoint))
        command, step = resume_command(self.recipe, self.dirs), self.trainer.state.global_step
        self.log.line(f"interrupted at step {step}; resume with: {command}", echo=False)
        stopped = TrainingInterrupted(f"training interrupted at step {step}; the adapter and a resumable checkpoint "
                                      f"are saved in {self.dirs.checkpoint}", hint=f"resume with:  {command}",
                                      exit_code=self.guard.exit_code)
        stopped.shown_by_main_process = not is_main_process()  # every process stops here; process 0 says it once
        raise stopped

    def evaluate(self) -> dict[str, float]:
        if self.eval_split is None:
            return {}
        with self.stages.stage("Evaluating on the validation file"):
            metrics = self.trainer.evaluate()
            if "eval_loss" in metrics and self.method.loss_is_perplexity:  # a preference loss is no perplexity
                metrics["eval_perplexity"] = from_loss(metrics["eval_loss"])
        return metrics

    def save(self, output: TrainOutput, eval_metrics: dict[str, float]) -> TrainResult:
        """Adapter + tokenizer (its exact chat template) + metadata, all or nothing; then summary.json."""
        from ..plots import plot_after_training
        from .saving import model_card_file
        from .summary import build_summary, checkpoint_meta, print_summary

        dirs = self.dirs
        summary = build_summary(dirs, output, self.metrics.history, self.train_split, eval_metrics, self.stages.timings,
                                self.started, self.hardware, self.trainer, self.plan)
        with self.stages.stage(f"Saving adapter to {dirs.checkpoint}"):
            meta = checkpoint_meta(self.recipe, self.plan, summary, self.validation_file)
            save_adapter(self.model, self.tokenizer, dirs.checkpoint,
                         {META_FILE: meta.to_json(), **model_card_file(meta, dirs.checkpoint)},
                         last_good=latest_checkpoint(dirs.checkpoint))
        (dirs.logs / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        plot_after_training(dirs.logs, self.log)
        print_summary(summary, self.log)
        return TrainResult(dirs.name, dirs.checkpoint, dirs.logs, summary, model=self.model, tokenizer=self.tokenizer)


def snapshot_recipe(recipe: Recipe, dirs: RunDirs) -> None:
    """Save the resolved recipe next to the adapter (on resume, check_resume has made sure only safe keys moved)."""
    from ..checkpoint import RECIPE_SNAPSHOT

    dirs.checkpoint.mkdir(parents=True, exist_ok=True)
    staged = dirs.checkpoint / f".{RECIPE_SNAPSHOT}.tmp"
    staged.write_text(recipe.to_toml(), encoding="utf-8")
    staged.replace(dirs.checkpoint / RECIPE_SNAPSHOT)


def _toml(value: object) -> str:
    """A recipe value as it is written in TOML (true, false, "auto")."""
    return str(value).lower() if isinstance(value, bool) else f'"{value}"'
