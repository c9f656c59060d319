"""Where a run writes: checkpoints/<run>/ and runs/<run>/, never over an existing run by accident.

`--overwrite` once removed `checkpoints/..` (the user's whole folder) for
`--run-name ..`, and later a user's project folder because it held a file
named recipe.toml. Now a run name is a plain name, and a folder is only ever
replaced when it holds RUN_MARKER (which only this tool writes) and none of
the run's own inputs. Even then the old folders are only moved aside: they
come back if the new run fails before it has saved anything (see replace.py).
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import QloraError
from ..recipe import Recipe, run_name_problem
from ..run_folders import RUN_MARKER, TRAINER_STATE, latest_checkpoint, owns_run_folder, trainer_state
from .replace import MovedAside, move_aside

# What runs written before the marker existed hold: enough to list them in `runs`, never to delete them.
EARLIER_RUN_FILES = ("qlora4080.json", "recipe.toml", "train.log", "metrics.jsonl", "summary.json")


@dataclass(frozen=True)
class RunDirs:
    name: str
    checkpoint: Path
    """Adapter, tokenizer + chat template, recipe snapshot (and intermediate trainer checkpoints)."""
    logs: Path
    """train.log, metrics.jsonl, summary.json."""


def plan_run_dirs(recipe: Recipe, run_name: str | None = None, overwrite: bool = False) -> RunDirs:
    """Pick the run's folders; refuse to reuse a named run's folders unless `overwrite`."""
    if run_name is not None:
        check_run_name(run_name, "--run-name")  # an empty --run-name "" is refused too, not taken as "default"
    name = run_name or recipe.output.run_name
    checkpoints = Path(recipe.output.checkpoints_dir)
    runs = Path(recipe.output.runs_dir)
    if name is None:
        base = f"{recipe.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        name, suffix = base, 1
        while (checkpoints / name).exists() or (runs / name).exists():
            suffix += 1
            name = f"{base}-{suffix}"
    dirs = RunDirs(name=name, checkpoint=checkpoints / name, logs=runs / name)
    check_not_a_root(dirs, (checkpoints, runs))
    taken = [p for p in (dirs.checkpoint, dirs.logs) if p.exists() and any(p.iterdir())]
    if taken and not overwrite:
        raise QloraError(
            f"run '{name}' already exists: {', '.join(map(str, taken))}",
            hint="pick another --run-name, or pass --overwrite to replace it",
        )
    return dirs


def check_not_a_root(dirs: RunDirs, roots: tuple[Path, Path]) -> None:
    """With checkpoints_dir = "." (runs/ inside it) a run named "runs" would be the folder of every run's logs."""
    for folder in (dirs.checkpoint, dirs.logs):
        real = folder.expanduser().resolve()
        for root in roots:
            other = root.expanduser().resolve()
            if real == other or real in other.parents:
                raise QloraError(f"run '{dirs.name}' would be written into {folder}, which is (or holds) the output "
                                 f"folder {root} of every run", where="--run-name", hint="choose another --run-name")


def check_run_name(name: str, where: str) -> None:
    if problem := run_name_problem(name):
        raise QloraError(problem, where=where, hint="e.g. --run-name my-run-2")


def create_run_dirs(dirs: RunDirs, overwrite: bool, inputs: list[Path] | None = None) -> list[MovedAside]:
    """Make the run's folders and mark them as ours; with `overwrite`, move the old ones aside (not delete them).

    The caller settles the returned folders when the run ends (`settle_replaced`):
    deleted once the new run has saved something, put back otherwise.
    """
    existing = [path for path in (dirs.checkpoint, dirs.logs) if path.exists() or path.is_symlink()]
    if overwrite:
        for path in existing:
            check_removable(path, inputs or [])
    moved = [move_aside(path) for path in existing] if overwrite else []
    for path in (dirs.checkpoint, dirs.logs):
        path.mkdir(parents=True, exist_ok=True)
        (path / RUN_MARKER).write_text(f"{dirs.name}\n", encoding="utf-8")
    return moved


def is_run_folder(path: Path) -> bool:
    """A folder to list in `runs` (marked, or a run from before the marker): for display, never for deleting."""
    return owns_run_folder(path) or any((path / name).is_file() for name in EARLIER_RUN_FILES)


def check_removable(path: Path, inputs: list[Path]) -> None:
    """Refuse to remove anything but a run folder of ours that holds none of the run's inputs."""
    if path.is_symlink() or not path.is_dir():
        raise QloraError(f"{path} is not a run folder (it is a file or a link); it was left as it is",
                         hint="remove or rename it yourself, or choose another --run-name")
    if any(path.iterdir()) and not owns_run_folder(path):
        raise QloraError(f"{path} exists but was not written by qlora4080 (it has no {RUN_MARKER} marker), "
                         "so --overwrite leaves it alone",
                         hint="choose another --run-name, or move that folder away yourself")
    folder = path.resolve()
    inside = [p for p in inputs if p.resolve() == folder or folder in p.resolve().parents]
    if inside:
        raise QloraError(f"--overwrite would delete {path}, which holds this run's own input {inside[0]}",
                         hint="keep recipes, data and models outside checkpoints/ and runs/, or choose another --run-name")


def recipe_inputs(recipe: Recipe) -> list[Path]:
    """Files and folders a run reads: never inside a folder that --overwrite may remove."""
    paths = [recipe.source_path] if recipe.source_path else []
    for value in (recipe.data.train, recipe.data.validation, recipe.model.chat_template):
        if value:
            paths.append(recipe.resolve_path(value))
    paths += [recipe.resolve_path(source.path) for source in recipe.data.sources if source.path]
    for model in (recipe.model.name, recipe.model.adapter):  # a DPO run's adapter may live in checkpoints/ too
        if model and Path(model).expanduser().exists():
            paths.append(Path(model).expanduser())
    return paths


def check_not_finished(checkpoint: Path, run_name: str) -> None:
    """Resuming a checkpoint that already reached the run's last step would train past it: refuse, saying so."""
    state = trainer_state(checkpoint) or {}
    step, last = state.get("global_step", 0), state.get("max_steps", 0)
    if isinstance(last, int) and last > 0 and step >= last:
        adapter = checkpoint.parent / "adapter_model.safetensors"
        where = (f"its adapter is in {checkpoint.parent}" if adapter.is_file()
                 else f"{checkpoint} holds its trained adapter (chat with it or eval it there)")
        raise QloraError(f"run '{run_name}' already finished: {checkpoint.name} is at step {step} of {last}, so there "
                         f"is nothing to resume; {where}", where="--resume",
                         hint="to train longer, start a new run with [model] adapter set to this run's adapter")


# What HF's Trainer reads to continue exactly where a run stopped. Without the optimizer or scheduler state it
# starts them afresh with no word, so the resumed losses differ from an uninterrupted run's.
RESUME_FILES = ("optimizer.pt", "scheduler.pt")


def check_resumable(checkpoint: Path, where: str) -> None:
    """The checkpoint holds an adapter that loads and the optimizer and scheduler states; refuse, naming what is missing."""
    from ..adapter_files import ADAPTER_CONFIG, ADAPTER_WEIGHTS, safetensors_problem

    weights = checkpoint / ADAPTER_WEIGHTS
    missing = [name for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, *RESUME_FILES) if not (checkpoint / name).is_file()]
    problem = (f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing" if missing
               else safetensors_problem(weights) or _damaged_state(checkpoint))
    if problem is None:
        return
    earlier = [p for p in checkpoint.parent.glob("checkpoint-*") if p != checkpoint and trainer_state(p) is not None]
    hint = (f"resume from another save of the run: --resume-from {max(earlier, key=lambda p: p.stat().st_mtime)}; or " if earlier
            else "")
    if (checkpoint / ADAPTER_WEIGHTS).is_file() and safetensors_problem(weights) is None:
        hint += f"start a new run that continues this adapter (fresh optimizer): [model] adapter = \"{checkpoint}\""
    else:
        hint += "start the run again without --resume"
    raise QloraError(f"{checkpoint} cannot be resumed exactly: {problem}", where=where, hint=hint)


def _damaged_state(checkpoint: Path) -> str | None:
    """torch.save writes a zip archive with a CRC per entry: a file cut short or overwritten fails that check.

    Without it a damaged optimizer.pt was an UnpicklingError traceback, an empty
    scheduler.pt only "Aborted." (torch.load's EOFError, taken by click for a Ctrl-D).
    """
    import zipfile

    for name in (*RESUME_FILES, "rng_state.pth"):
        path = checkpoint / name
        if not path.is_file():
            continue  # rng_state.pth is optional: transformers resumes without it (and says so)
        try:
            with zipfile.ZipFile(path) as archive:
                if archive.testzip() is None:
                    continue
        except (zipfile.BadZipFile, OSError, EOFError, ValueError):
            pass
        return f"{name} is damaged or truncated"
    return None


def find_resume_point(recipe: Recipe, run_name: str | None, resume_from: Path | None) -> tuple[RunDirs, Path]:
    """The run to continue and its checkpoint: an explicit folder, the named run, or this recipe's latest run."""
    checkpoints, runs = Path(recipe.output.checkpoints_dir), Path(recipe.output.runs_dir)
    if resume_from is not None:
        path = Path(resume_from).expanduser().resolve()  # through symlinks: the run is the real folder
        given = path / TRAINER_STATE
        run_folder = path.parent if given.is_file() else path
        if given.is_file() and trainer_state(path) is None:
            raise QloraError(f"{given} is damaged (cut short by a kill during the save?), so {resume_from} cannot "
                             "be resumed", where="--resume-from",
                             hint=f"resume from the run's folder ({run_folder}) to use its last intact checkpoint")
        checkpoint = path if given.is_file() else latest_checkpoint(path)
        if checkpoint is None:
            raise QloraError(f"no resumable checkpoint in {resume_from}", where="--resume-from",
                             hint="pass checkpoints/<run> or checkpoints/<run>/checkpoint-N")
        if run_name is not None and run_name != run_folder.name:
            raise QloraError(f"--resume-from {resume_from} continues run '{run_folder.name}', not '{run_name}'",
                             where="--run-name", hint=f"leave out --run-name (or pass --run-name {run_folder.name}); "
                             "to start a new run from a trained adapter, set [model] adapter instead")
        return RunDirs(run_folder.name, run_folder, runs / run_folder.name), checkpoint
    if run_name is not None:
        check_run_name(run_name, "--run-name")  # an empty --run-name "" is refused too, not taken as "default"
    name = run_name or recipe.output.run_name
    if name is None:
        latest = {p: saved for p in checkpoints.glob(f"{recipe.stem}-*") if p.is_dir() and (saved := latest_checkpoint(p))}
        if not latest:
            raise QloraError(f"no earlier run of {recipe.stem} with a checkpoint in {checkpoints}/",
                             where="--resume", hint="name the run with --run-name, or start a new run without --resume")
        name = max(latest, key=lambda p: latest[p].stat().st_mtime).name
    dirs = RunDirs(name=name, checkpoint=checkpoints / name, logs=runs / name)
    found = latest_checkpoint(dirs.checkpoint)
    if found is None:
        raise QloraError(f"run '{name}' has no resumable checkpoint in {dirs.checkpoint}", where="--resume",
                         hint="checkpoints are written every training.save_steps steps and on Ctrl-C")
    return dirs, found


def resume_command(recipe: Recipe, dirs: RunDirs) -> str:
    """The command that continues this run exactly: same recipe file, same --set values, same run."""
    from ..distributed import world_size

    source = recipe.source_path
    shown: Path | str = "RECIPE"
    if source is not None:
        shown = source.relative_to(Path.cwd()) if source.is_relative_to(Path.cwd()) else source
    overrides = "".join(f" --set {shlex.quote(item)}" for item in recipe.overrides)
    processes = f" --processes {world_size()}" if world_size() > 1 else ""  # the same data order needs as many
    return f"qlora4080 train {shlex.quote(str(shown))}{overrides} --resume --run-name {dirs.name}{processes}"
