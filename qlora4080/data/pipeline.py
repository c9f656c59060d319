"""Sources -> normalize -> clean -> tag -> dedup per pool -> save pools -> mix -> dedup again -> split -> export.

The records are of the kind the training method reads (records.py):
conversations for sft, preference pairs for dpo and orpo, ...; the kind reads
each source's rows into records, and everything after (mixing, dedup, split,
the manifest) is this one loop for every kind.

A build lives in <build_dir>/<key>/, where the key hashes everything that
decides its content (each source's settings and file bytes, mix, sizes, seed),
so the same recipe and seed give byte-identical outputs and `train` reuses a
build whose manifest matches instead of rebuilding.

How pools are mixed, deduplicated across and split: mixing.py.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict, cast

from ..errors import QloraError
from ..recipe import Recipe, SourceSection
from ..runlock import holding
from .jsonl import Row, check_not_special, read_records, write_jsonl, write_text_atomically
from .mixing import dedup_across_pools, interleave, resample, split
from .records import BuildRecord, Pool, PoolStats

if TYPE_CHECKING:
    from .records import RecordKind

BUILD_FORMAT = 2  # 2: interleave uses every record; assistant-first conversations are rejected


class Manifest(TypedDict):
    """<build>/manifest.json: what a build was made from and what it holds (written last)."""

    format: int  # BUILD_FORMAT
    key: str  # build_key(recipe)
    seed: int
    mix: str
    sources: list[dict[str, object]]  # each [[data.sources]] entry as the recipe set it
    pools: list[dict[str, object]]  # PoolStats of each source
    counts: dict[str, int]  # "train", "validation", "rejected"
    sha256: dict[str, str]  # "train", "validation": of the JSONL files


@dataclass
class Build:
    folder: Path
    train_file: Path
    validation_file: Path
    pools: list[PoolStats] = field(default_factory=list)
    reused: bool = False
    manifest: Manifest = field(kw_only=True)


def build_key(recipe: Recipe) -> str:
    data = recipe.data
    parts: list[object] = [BUILD_FORMAT, data.mix, data.total, data.valid_ratio, data.valid_min, recipe.training.seed]
    kind = records_of(recipe)
    if kind.name != "conversations":  # the same sources read as another kind make another build
        parts.append(kind.name)
    for source in data.sources:
        parts.append(source.model_dump(mode="json"))
        if source.path:
            parts.append(_file_digest(recipe.resolve_path(source.path)))
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def records_of(recipe: Recipe) -> RecordKind:
    """The kind of record the recipe's training method reads."""
    from ..methods.registry import method_spec

    return method_spec(recipe.training.method).records


def build_data(recipe: Recipe, *, force: bool = False, on_pool: Callable[[PoolStats], None] | None = None) -> Build:
    """Run the pipeline for the recipe's [[data.sources]] (read as its method's records), or reuse the matching build."""

    data = recipe.data
    _require_distinct_names(data.sources)
    blocker = next((p for p in (Path(data.build_dir), *Path(data.build_dir).parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():  # mkdir would say only "File exists"
        raise QloraError(f"data.build_dir {data.build_dir!r} cannot be made: {blocker} is a file, not a folder",
                         where="[data] build_dir", hint="set data.build_dir to a folder (default \"data_builds\"), "
                         "or move that file away")
    folder = Path(data.build_dir) / f"{recipe.stem}-{build_key(recipe)}"
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file() and not force and (reused := _reuse(folder, manifest_path)):
        return reused
    # One builder per build folder: a second process fails at once instead of writing the same files.
    with holding(folder, f"data build {folder.name}",
                 hint="wait for that build to finish (this command then reuses it), or stop it and run again"):
        # another process may have finished this build while we waited to start
        if manifest_path.is_file() and not force and (reused := _reuse(folder, manifest_path, quiet=True)):
            return reused
        manifest_path.unlink(missing_ok=True)  # until the new build's own manifest: nothing here is reusable
        return _build(recipe, folder, manifest_path, on_pool)


def _reuse(folder: Path, manifest_path: Path, quiet: bool = False) -> Build | None:
    """The finished build, when its manifest is whole and its files still hash as recorded; else None (rebuild).

    A train.jsonl cut short after the build was once "Reused" with the old counts,
    and a damaged manifest was a JSONDecodeError traceback.
    """
    from ..console import warn

    files = {"train": folder / "train.jsonl", "validation": folder / "validation.jsonl"}
    try:
        manifest = cast(Manifest, json.loads(manifest_path.read_text(encoding="utf-8")))
        pools = [PoolStats(**p) for p in manifest["pools"]]  # type: ignore[arg-type]  # PoolStats' own fields
        changed = [name for name, path in files.items() if _file_digest(path) != manifest["sha256"][name]]
    except (OSError, ValueError, TypeError, KeyError, RecursionError) as error:
        problem = f"{manifest_path} is damaged ({type(error).__name__}: {str(error)[:120]})"
    else:
        if not changed:
            return Build(folder, files["train"], files["validation"], pools, reused=True, manifest=manifest)
        problem = f"{', '.join(str(files[name]) for name in changed)} changed since the build (hash differs)"
    if not quiet:
        warn(f"not reusing the data build {folder}: {problem}; building it again")
    return None


def _build(recipe: Recipe, folder: Path, manifest_path: Path, on_pool: Callable[[PoolStats], None] | None) -> Build:
    kind = records_of(recipe)
    pools: list[Pool] = []
    for source in recipe.data.sources:
        pools.append(kind.load_pool(*_read_source(recipe, source), source))
        if on_pool:
            on_pool(pools[-1].stats)
    return _mix_and_write(recipe, folder, manifest_path, pools, kind)


def _mix_and_write(recipe: Recipe, folder: Path, manifest_path: Path, loaded: list[Pool], kind: RecordKind) -> Build:
    from datasets import Dataset

    data = recipe.data
    rng = random.Random(recipe.training.seed)
    pools = [pool.records for pool in loaded]
    stats = [pool.stats for pool in loaded]
    rejects = [problem for pool in loaded for problem in pool.rejected]
    folder.mkdir(parents=True, exist_ok=True)
    for pool in loaded:
        if pool.records:
            Dataset.from_list(list(pool.records)).save_to_disk(str(folder / "pools" / pool.stats.name))

    weights = [s.weight for s in data.sources]
    mixed: list[BuildRecord] = (interleave(pools, weights, rng) if data.mix == "interleave"
                                else resample(pools, weights, rng, data.total))
    mixed = dedup_across_pools(mixed, kind.key)
    for pool_stats in stats:
        pool_stats.in_mix = sum(1 for r in mixed if r["source"] == pool_stats.name)
    if not mixed:
        raise QloraError("the data build is empty: every record of every source was rejected or duplicated",
                         hint=f"see {folder / 'rejects.jsonl'} and run `qlora4080 data check FILE` on each source")
    train, validation = split(mixed, data.valid_ratio, data.valid_min, rng, kind.split_group)

    files = {"train": folder / "train.jsonl", "validation": folder / "validation.jsonl"}
    for name, rows in (("train", train), ("validation", validation)):
        write_jsonl(files[name], rows)
        Dataset.from_list(rows).save_to_disk(str(folder / name))
    write_jsonl(folder / "rejects.jsonl", [{"file": str(r.path), "line": r.line, "reason": r.reason} for r in rejects])
    manifest: Manifest = {
        "format": BUILD_FORMAT, "key": build_key(recipe), "seed": recipe.training.seed, "mix": data.mix,
        "sources": [s.model_dump(mode="json", exclude_none=True) for s in data.sources],
        "pools": [asdict(s) for s in stats],
        "counts": {"train": len(train), "validation": len(validation), "rejected": len(rejects)},
        "sha256": {name: _file_digest(path) for name, path in files.items()},
    }
    # Written last, and whole or not at all: a manifest means a finished build that `train` may reuse.
    write_text_atomically(manifest_path, json.dumps(manifest, indent=2, ensure_ascii=False))
    return Build(folder, files["train"], files["validation"], stats, manifest=manifest)


def _require_distinct_names(sources: list[SourceSection]) -> None:
    """Pools are told apart by name (record ids, the `source` tag, per-source counts), so two may not share one."""
    seen: dict[str, int] = {}
    for number, source in enumerate(sources, start=1):
        if source.label in seen:
            raise QloraError(
                f"[[data.sources]] {seen[source.label]} and {number} are both named '{source.label}'",
                where="[[data.sources]]", hint=f'give one of them its own name = "..." (e.g. name = "{source.label}-{number}")')
        seen[source.label] = number


def _read_source(recipe: Recipe, source: SourceSection) -> tuple[list[Row], Path]:
    if source.hub:
        return _read_hub(source), Path(f"hub:{source.hub}")
    path = recipe.resolve_path(source.path or "")
    if path.suffix in (".parquet", ".arrow") or path.is_dir():
        from datasets import Dataset, load_from_disk

        check_not_special(path)
        try:
            table = load_from_disk(str(path)) if path.is_dir() else (
                Dataset.from_parquet(str(path)) if path.suffix == ".parquet" else Dataset.from_file(str(path)))
        except (OSError, ValueError, TypeError, RuntimeError) as error:  # pyarrow's ArrowInvalid is a ValueError
            kind = {".parquet": "Parquet", ".arrow": "Arrow"}.get(path.suffix, "saved dataset")
            raise QloraError(f"{path} cannot be read as {kind}: {str(error).splitlines()[0][:200]}",
                             where=f"[[data.sources]] {source.name or path.name}",
                             hint="a JSONL file needs the .jsonl suffix; otherwise check the file is not damaged") from None
        return [(index, row, None) for index, row in enumerate(table, start=1)], path
    return list(read_records(path)), path


def _read_hub(source: SourceSection) -> list[Row]:
    from datasets import load_dataset

    from ..hub import cache_only_unless_reachable, hub_host

    with cache_only_unless_reachable() as online:
        try:
            table = load_dataset(source.hub, split=source.split)
        except Exception as exc:  # offline, missing, gated: one message
            reason = (f"{hub_host()} cannot be reached from this machine and the dataset is not in the local cache"
                      if not online else f"{type(exc).__name__}: {str(exc)[:200]}")
            raise QloraError(
                f"could not load hub dataset '{source.hub}' (split {source.split}): {reason}",
                hint="hub datasets need network; download it once and point the source at a local file: path = \"data/file.jsonl\"",
            ) from exc
    return [(index, row, None) for index, row in enumerate(table, start=1)]


def _file_digest(path: Path) -> str:
    """sha256 of a file's bytes, or of every file in a folder (an Arrow dataset saved to disk)."""
    check_not_special(path)  # hashing a FIFO or /dev/zero never ends
    digest = hashlib.sha256()
    for member in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        digest.update(str(member.relative_to(path) if path.is_dir() else member.name).encode())
        with member.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
