"""Finding recipe files: ./recipes first, then the ones next to the installed package (a source checkout)."""

from __future__ import annotations

from pathlib import Path

from .errors import QloraError


def recipe_folders(folder: Path | None = None) -> list[Path]:
    if folder is not None:
        return [folder]
    candidates = [Path.cwd() / "recipes", Path(__file__).resolve().parent.parent / "recipes"]
    unique: list[Path] = []
    for candidate in candidates:
        if candidate.is_dir() and candidate.resolve() not in [u.resolve() for u in unique]:
            unique.append(candidate)
    return unique


def find_recipes(folder: Path | None = None) -> list[Path]:
    paths = [p for f in recipe_folders(folder) for p in sorted(f.glob("*.toml"))]
    if not paths:
        raise QloraError("no recipes found", hint="run from the project folder, or pass --dir FOLDER")
    return paths


def recipe_summary(path: Path) -> str:
    """The first comment line of a recipe file: what it is for."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""
