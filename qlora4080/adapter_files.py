"""Is a checkpoint's adapter whole? Checked in a second, before a base model takes a minute to load.

peft takes a folder without an adapter file for a hub repo id (HFValidationError)
and safetensors reports a truncated file as a bad header; neither says which
checkpoint is broken or what to do. chat, eval, generate and export ask here first.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import QloraError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def check_adapter(folder: Path, recipe: str | None = None) -> None:
    """Fail before any model loads when the checkpoint's adapter files are missing or cut short.

    Without this, peft takes a folder with no adapter file for a hub repo id
    (HFValidationError) and safetensors reports a truncated file as a bad header:
    neither says which checkpoint is broken or what to do.
    """
    config, weights = folder / ADAPTER_CONFIG, folder / ADAPTER_WEIGHTS
    if not config.is_file() and not weights.is_file() and not _written_by_a_run(folder):
        # A data or model folder given where an adapter belongs: "re-train with --overwrite" would be wrong advice.
        raise QloraError(f"{folder} is not a trained adapter: it has neither {ADAPTER_CONFIG} nor {ADAPTER_WEIGHTS}",
                         where=str(folder), hint="give the folder training wrote, e.g. checkpoints/<run> "
                         "(qlora4080 runs lists them)")
    problem = None
    if not config.is_file():
        problem = f"{ADAPTER_CONFIG} is missing"
    elif not weights.is_file():
        problem = f"{ADAPTER_WEIGHTS} is missing"
    else:
        try:
            if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
                problem = f"{ADAPTER_CONFIG} is damaged (not a JSON object)"
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            problem = f"{ADAPTER_CONFIG} is damaged ({exc})"
        problem = problem or safetensors_problem(weights)
    if problem:
        raise QloraError(f"the adapter in {folder} cannot be loaded: {problem}", where=str(folder),
                         hint=_repair_hint(folder, recipe))


def check_tokenizer_files(folder: Path, recipe: str | None = None) -> None:
    """The checkpoint's own tokenizer and chat template are there (they are what training rendered with).

    Without them transformers' errors blamed [model] name ("this tokenizer has no
    chat template", "neither a pad nor an eos token") for a file missing here.
    """
    config = folder / "tokenizer_config.json"
    missing = [name for name in ("tokenizer_config.json", "tokenizer.json") if not (folder / name).is_file()]
    if not missing and not (folder / "chat_template.jinja").is_file():
        try:
            settings = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            settings = None
        if not (isinstance(settings, dict) and settings.get("chat_template")):
            missing.append("chat_template.jinja")
    if missing:
        raise QloraError(f"the checkpoint {folder} cannot be used: {', '.join(missing)} "
                         f"{'is' if len(missing) == 1 else 'are'} missing (the tokenizer and chat template training "
                         "used are saved with the adapter)", where=str(folder), hint=_tokenizer_hint(folder, missing, recipe))


def _tokenizer_hint(folder: Path, missing: list[str], recipe: str | None) -> str:
    from .run_folders import latest_checkpoint

    saved = latest_checkpoint(folder) if folder.is_dir() else None
    retrain = f"re-train: qlora4080 train {recipe or 'RECIPE'} --run-name {folder.name} --overwrite"
    if saved is not None and all((saved / name).is_file() for name in missing):
        return f"copy {', '.join(missing)} from {saved} into {folder}, or {retrain}"
    return retrain


def _written_by_a_run(folder: Path) -> bool:
    from .checkpoint import META_FILE
    from .run_folders import owns_run_folder

    return folder.is_dir() and (owns_run_folder(folder) or (folder / META_FILE).is_file()
                                or any(folder.glob("checkpoint-*")))


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is unusable ("is damaged or truncated (...)"), or None.

    Reads only the header: 8 bytes of header length, a JSON table of tensors
    and their byte ranges. A file cut short ends before its last range does.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if length < 0:
            return f"{path.name} is damaged or truncated (only {size} bytes)"
        if 8 + length > size:
            return f"{path.name} is damaged or truncated ({size:,} bytes: too short for its own header)"
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return f"{path.name} is damaged or truncated (its header is not readable)"
    if not isinstance(header, dict):
        return f"{path.name} is damaged or truncated (its header is not readable)"
    ends = [entry["data_offsets"][1] for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict) and len(entry.get("data_offsets") or ()) == 2]
    needed = 8 + length + max(ends, default=0)
    if needed > size:
        return f"{path.name} is damaged or truncated ({size:,} bytes, its header says {needed:,})"
    return None


def _repair_hint(folder: Path, recipe: str | None) -> str:
    """What to do about a broken adapter: copy it from the run's latest intermediate save, or train again."""
    from .run_folders import latest_checkpoint

    saved = latest_checkpoint(folder) if folder.is_dir() else None
    copy = ""
    if (saved is not None and (saved / ADAPTER_CONFIG).is_file() and (saved / ADAPTER_WEIGHTS).is_file()
            and safetensors_problem(saved / ADAPTER_WEIGHTS) is None):
        copy = (f"copy {ADAPTER_WEIGHTS} and {ADAPTER_CONFIG} from {saved} (the run's save at step "
                f"{saved.name.rsplit('-', 1)[-1]}) into {folder}, or ")
    return copy + f"re-train: qlora4080 train {recipe or 'RECIPE'} --run-name {folder.name} --overwrite"


@contextmanager
def loading_checkpoint(folder: Path, recipe: str | None = None) -> Iterator[None]:
    """Loading a checkpoint's tokenizer and adapter onto its base: what does not fit is named, not a traceback.

    An adapter_config.json that disagrees with its weights, or a base model of
    other shapes, gave hundreds of lines of peft RuntimeError; a missing
    tokenizer file a ValueError.
    """
    try:
        yield
    except (RuntimeError, ValueError, KeyError, OSError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = "; ".join(lines[:3])[:400] or type(error).__name__
        raise QloraError(f"the checkpoint {folder} does not load: {detail}", where=str(folder),
                         hint="its adapter files do not fit each other or the base model (or a tokenizer file is "
                              "missing); " + _repair_hint(folder, recipe)) from None
