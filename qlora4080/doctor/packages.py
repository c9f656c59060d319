"""Installed package versions against requirements/lock.txt, read from metadata (nothing is imported)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .report import Row, Status

# A source checkout has the lock next to the package; an installed wheel has none.
LOCK_PATH = Path(__file__).resolve().parent.parent.parent / "requirements" / "lock.txt"
FIX = "pip install -c requirements/lock.txt -e .  (or: make venv)"
FIX_GPU = "make venv GPU=1"

# Always shown, locked or not: the stack a training run goes through.
STACK = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "safetensors",
         "huggingface_hub", "bitsandbytes", "unsloth", "unsloth_zoo", "xformers", "triton", "gguf",
         "typer", "rich", "pydantic")
# Without these nothing trains.
REQUIRED = ("torch", "transformers", "trl", "peft", "datasets", "accelerate")
# The [gpu] extra: only a CUDA machine needs it (a CPU venv has unsloth too, for the test suite).
GPU_EXTRA = ("unsloth", "unsloth_zoo")
# A different version of these changes what training does (unsloth patches exact transformers/trl releases).
DRIFT_MATTERS = ("transformers", "trl", "peft", "datasets", "accelerate", "unsloth", "unsloth_zoo")
# Built against one torch release, so the lock leaves them out (see requirements/lock.py).
TORCH_BOUND = ("torch", "triton", "xformers")

VersionLookup = Callable[[str], str | None]


def canonical(name: str) -> str:
    """PEP 503 form, so huggingface_hub in one list matches huggingface-hub in another."""
    return name.lower().replace("_", "-").replace(".", "-")


def read_lock(path: Path = LOCK_PATH) -> dict[str, str] | None:
    """{canonical name: version} from `name==version` lines; None when there is no lock file."""
    if not path.is_file():
        return None
    locked = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].split(";", 1)[0].strip()  # comments, environment markers
        if "==" in line:
            name, version = line.split("==", 1)
            locked[canonical(name.strip())] = version.strip()
    return locked


def installed_version(name: str) -> str | None:
    """The installed distribution's version, from its metadata; None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


@dataclass(frozen=True)
class PackageState:
    name: str
    locked: str | None
    installed: str | None

    @property
    def drifted(self) -> bool:
        return self.locked is not None and self.installed is not None and not same_version(self.locked, self.installed)


def same_version(locked: str, installed: str) -> bool:
    """Equal as versions (1.0 == 1.0.0); a local build tag (+cpu, +cu128) is not drift."""
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:  # pragma: no cover - packaging comes with transformers
        return locked == installed.split("+", 1)[0]
    try:
        return Version(locked).public == Version(installed).public
    except InvalidVersion:
        return locked == installed


def compare_lock(locked: dict[str, str] | None, lookup: VersionLookup = installed_version) -> list[PackageState]:
    """The stack packages, then every other locked one, each with its locked and installed version."""
    locked = locked or {}
    names = list(STACK) + sorted(name for name in locked if name not in {canonical(s) for s in STACK})
    return [PackageState(name, locked.get(canonical(name)), lookup(name)) for name in names]


def package_rows(locked: dict[str, str] | None, cuda: bool, lookup: VersionLookup = installed_version) -> list[Row]:
    """Rows for the stack (always) and for the rest of the lock (only what differs)."""
    rows = []
    if locked is None:
        rows.append(Row("packages", "lock", "info", f"{LOCK_PATH} not found (an installed package?): versions not compared"))
    stack = {canonical(name) for name in STACK}
    missing_rest = []
    for state in compare_lock(locked, lookup):
        if canonical(state.name) in stack:
            rows.append(_stack_row(state, cuda))
        elif state.installed is None:
            missing_rest.append(state.name)
        elif state.drifted:
            rows.append(Row("packages", state.name, "info", f"{state.installed} (lock {state.locked})", FIX))
    if missing_rest:
        # Mostly the [gpu] extra's own requirements on a CPU machine: one line, not twenty.
        rows.append(Row("packages", "others", "info", f"{len(missing_rest)} locked not installed: {', '.join(missing_rest)}",
                        FIX_GPU if cuda else None))
    return rows


def _stack_row(state: PackageState, cuda: bool) -> Row:
    name = state.name
    if state.installed is None:
        if name in REQUIRED:
            return Row("packages", name, "fail", "not installed", FIX)
        if name in GPU_EXTRA:
            return Row("packages", name, "warn", "not installed", f"{FIX_GPU} (the CUDA fast path and 4-bit need it)") if cuda \
                else Row("packages", name, "info", "not installed (CUDA only)")
        if name in TORCH_BOUND:
            return Row("packages", name, "info", "not installed" + ("" if cuda else " (CUDA only)"))
        return Row("packages", name, "warn", "not installed", FIX)
    if state.locked is None:
        why = "not locked: follows the machine's torch" if name in TORCH_BOUND else "not in the lock"
        return Row("packages", name, "ok", f"{state.installed} ({why})")
    if state.drifted:
        status: Status = "warn" if name in DRIFT_MATTERS else "info"
        return Row("packages", name, status, f"{state.installed}, lock says {state.locked}", FIX)
    return Row("packages", name, "ok", state.installed)
