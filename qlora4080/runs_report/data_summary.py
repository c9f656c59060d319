"""What data a run trained on, for its model card: its files with record counts, or each source of its data build.

Read from the run's recipe snapshot. A build's counts come from its
manifest.json (data/pipeline.py writes it) under data.build_dir, found by the
sources' settings, mix and seed; when it is not on this machine the sources
are listed without counts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataLine:
    """One row of the card's data table: a file or a source of the data build."""

    name: str
    where: str
    records: int | None = None
    """Conversations (or pairs) it gave to training; None when not known."""
    detail: str = ""


def data_lines(recipe: Mapping[str, object]) -> tuple[list[DataLine], str]:
    """The data table from the recipe snapshot: its files (with record counts), or its build's per-source counts."""
    data = _table(recipe, "data")
    sources = data.get("sources")
    if isinstance(sources, list) and sources:
        return _build_lines(data, recipe, sources)
    lines = []
    for key in ("train", "validation"):
        path = data.get(key)
        if isinstance(path, str) and path:
            lines.append(DataLine(key, Path(path).name, _count_lines(Path(path))))
    return lines, ""


def _build_lines(data: Mapping[str, object], recipe: Mapping[str, object], sources: list[object]) -> tuple[list[DataLine], str]:
    settings = [source for source in sources if isinstance(source, dict)]
    manifest = _find_manifest(data, recipe, sources)
    if manifest is None:
        lines = [DataLine(str(s.get("name") or _where(s)), _where(s), detail=f"format {s.get('format', 'auto')}, weight {s.get('weight', 1)}")
                 for s in settings]
        return lines, "Built by qlora4080's data pipeline from these sources (the build's counts are not on this machine)."
    listed, counts = manifest.get("pools"), manifest.get("counts")
    pools = [pool for pool in listed if isinstance(pool, dict)] if isinstance(listed, list) else []
    lines = [DataLine(str(pool.get("name")), _where(source), pool.get("in_mix") if isinstance(pool.get("in_mix"), int) else None,
                      f"{pool.get('format')}: read {pool.get('read')}, rejected {pool.get('rejected')}, "
                      f"duplicates {pool.get('duplicates')}")
             for pool, source in zip(pools, settings)]
    counted = counts if isinstance(counts, dict) else {}
    note = (f"Built by qlora4080's data pipeline ({data.get('mix', 'interleave')} mix, seed {manifest.get('seed')}): "
            f"{counted.get('train', '?')} training and {counted.get('validation', '?')} validation records; "
            "records = each source's share of the mix.")
    return lines, note


def _where(source: Mapping[str, object]) -> str:
    """A source as a reader can recognise it: the hub id, or the file's name (not this machine's path)."""
    path = source.get("path")
    return Path(str(path)).name if path else str(source.get("hub", "?"))


def _find_manifest(data: Mapping[str, object], recipe: Mapping[str, object], sources: list[object]) -> dict[str, object] | None:
    """The newest build under data.build_dir made from these sources with this mix and seed.

    The snapshot holds absolute source paths and the manifest the paths as
    written, so sources are matched on their settings and file names.
    """
    def shape(items: list[object]) -> list[object]:
        return [{**s, "path": Path(str(s["path"])).name} if isinstance(s, dict) and s.get("path") else s for s in items]

    seed = _table(recipe, "training").get("seed", 42)
    build_dir = Path(str(data.get("build_dir", "data_builds")))
    found: list[tuple[float, dict[str, object]]] = []
    for path in build_dir.glob("*/manifest.json") if build_dir.is_dir() else []:
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            listed = manifest.get("sources")
            if (manifest.get("seed") == seed and manifest.get("mix") == data.get("mix", "interleave")
                    and isinstance(listed, list) and shape(listed) == shape(sources)):
                found.append((path.stat().st_mtime, manifest))
        except (OSError, ValueError, AttributeError):
            continue
    return max(found, key=lambda item: item[0])[1] if found else None


def _count_lines(path: Path) -> int | None:
    try:
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError:
        return None


def _table(data: Mapping[str, object], name: str) -> dict[str, object]:
    value = data.get(name)
    return value if isinstance(value, dict) else {}
