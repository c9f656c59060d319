"""Looking back at runs: list what runs/ holds, compare runs, pick runs by name.

    status.py   finished / interrupted / running / failed, from the files and the run lock
    record.py   one run folder (and its checkpoint) read into a RunRecord, damaged files noted, never fatal
    compare.py  recipe keys that differ between runs, and their results side by side
    data_summary.py  what data a run trained on (files, or a data build's sources with counts), for its model card
"""

from __future__ import annotations

from pathlib import Path

from ..errors import QloraError
from ..training.rundirs import is_run_folder
from ..training.runlog import line_seconds
from .compare import Comparison, compare_runs
from .record import RunRecord, read_metrics, read_run

__all__ = ["Comparison", "RunRecord", "compare_runs", "list_runs", "read_metrics", "read_run", "run_folders",
           "select_runs"]


def run_folders(runs_dir: Path) -> list[Path]:
    """The run folders under `runs_dir`, oldest first; a missing runs folder is a clear error."""
    if not runs_dir.is_dir():
        raise QloraError(f"no runs folder at {runs_dir}" + (" (it is a file)" if runs_dir.exists() else ""),
                         where="--runs-dir",
                         hint="`qlora4080 train` writes runs/<run>/ in the working directory; run this where you trained, "
                              "or pass --runs-dir (the recipe's output.runs_dir)")
    folders = [p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and is_run_folder(p)]
    return sorted(folders, key=lambda p: (_started_key(p), p.name))


def list_runs(runs_dir: Path, checkpoints_dir: Path | None = None) -> list[RunRecord]:
    return [read_run(folder, checkpoints_dir) for folder in run_folders(runs_dir)]


def select_runs(runs_dir: Path, names: list[str], checkpoints_dir: Path | None = None) -> list[RunRecord]:
    """The named runs, in the order given; an unknown name is an error listing the runs that exist."""
    known = {folder.name: folder for folder in run_folders(runs_dir)}
    names = [_as_run_name(name, runs_dir) for name in names]
    unknown = [name for name in names if name not in known]
    if unknown:
        listed = ", ".join(known) if known else "none"
        elsewhere = next((Path(name) for name in unknown if is_run_folder(Path(name))), None)
        hint = (f"{elsewhere} is a run folder outside {runs_dir}: pass --runs-dir {elsewhere.parent} and the name "
                f"{elsewhere.name}" if elsewhere else f"runs there: {listed}" if known
                else "no runs there yet; pass --runs-dir if they are elsewhere")
        raise QloraError(f"no run named {', '.join(repr(n) for n in unknown)} in {runs_dir}", where=str(runs_dir), hint=hint)
    return [read_run(known[name], checkpoints_dir) for name in dict.fromkeys(names)]


def _as_run_name(name: str, runs_dir: Path) -> str:
    """A run given as its folder (runs/demo, or a path ending in /) is the run of that name when the folder is in runs_dir."""
    path = Path(name)
    if len(path.parts) > 1 or name.endswith("/"):
        try:
            if path.resolve().parent == runs_dir.resolve():
                return path.name
        except OSError:
            pass
    return name


def _started_key(folder: Path) -> float:
    """When the run began: the first line of its train.log, else the folder's time."""
    log = folder / "train.log"
    try:
        return _first_write(log) if log.is_file() else folder.stat().st_mtime
    except OSError:
        return 0.0


def _first_write(log: Path) -> float:
    with log.open("r", encoding="utf-8", errors="replace") as handle:
        first = handle.readline()
    written = line_seconds(first)
    return written if written is not None else log.stat().st_mtime
