"""The recipe: one TOML file = model + LoRA + data + training + output.

Typed with pydantic (extra="forbid"), so a mistyped key is rejected with its
name, the line it is on and the closest valid key, before anything heavy loads.
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import QloraError
from .toml_io import dumps_toml, find_line

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

BUILTIN_PREFIX = "builtin:"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class ModelSection(_Section):
    name: str
    """Hub id (org/name), a local directory, or `builtin:smollm2-135m-instruct`."""
    max_seq_len: int = Field(1024, ge=16, le=131072)
    """Longest training sequence in tokens; longer conversations are truncated."""
    load_in_4bit: bool = True
    """NF4 4-bit base weights (QLoRA). Needs CUDA + bitsandbytes; ignored on CPU with a warning."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute dtype. auto: bf16 on GPUs that support it, else fp16; fp32 on CPU."""
    backend: Literal["auto", "unsloth", "hf"] = "auto"
    """auto: unsloth when CUDA is present and unsloth imports, else transformers + peft (hf)."""
    chat_template: str | None = None
    """Optional path to a Jinja chat template that replaces the tokenizer's own."""
    trust_remote_code: bool = False
    """Allow model repositories to run their own Python code."""

    @field_validator("chat_template")
    @classmethod
    def _empty_means_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("name")
    @classmethod
    def _name_not_empty(cls, value: str) -> str:
        # `--set model.name=` (nothing after '=') reads as "", which would only fail later, deep inside the loader.
        if not value.strip():
            raise ValueError("[model] name is empty")
        return value


class LoraSection(_Section):
    r: int = Field(16, ge=1, le=1024)
    """LoRA rank."""
    alpha: int = Field(32, ge=1)
    """LoRA scaling numerator (effective scale alpha / r)."""
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    """Dropout on the LoRA branch."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt, or "all-linear" for every linear projection except the output head."""


class SourceSection(_Section):
    path: str | None = None
    """Local file: JSONL, JSON array, Parquet or Arrow. Relative to the recipe file."""
    hub: str | None = None
    """A dataset id on the Hugging Face hub (needs network)."""
    split: str = "train"
    """Split of a hub dataset."""
    name: str | None = None
    """Name of this pool in tables and tags; default: the file stem or the hub id."""
    format: Literal["auto", "messages", "sharegpt", "alpaca", "prompt_completion", "columns", "cmath", "mawps", "emoji"] = "auto"
    """Shape of the records; auto detects messages, sharegpt, prompt_completion and alpaca."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Field-name overrides for the format, e.g. {user = "question", assistant = "answer"}."""
    weight: float = Field(1.0, ge=0)
    """Relative share in the mix (normalized over sources; all zero means equal)."""
    tags: list[str] = Field(default_factory=list)
    """Tags added to every record of this source (e.g. "json" turns on JSON validity in eval)."""
    max_answer_chars: int | None = Field(None, ge=1)
    """Cut assistant answers longer than this many characters."""

    @model_validator(mode="after")
    def _one_location(self) -> SourceSection:
        if (self.path is None) == (self.hub is None):
            raise ValueError("each [[data.sources]] needs exactly one of path = \"...\" or hub = \"org/name\"")
        return self

    @property
    def label(self) -> str:
        return self.name or (Path(self.path).stem if self.path else str(self.hub).rsplit("/", 1)[-1])


class DataSection(_Section):
    train: str | None = None
    """JSONL file, one conversation a line: {"messages": [{"role", "content"}, ...]}. Relative to the recipe file."""
    validation: str | None = None
    """Optional validation JSONL in the same shape. Relative to the recipe file."""
    sources: list[SourceSection] = Field(default_factory=list)
    """Instead of train/validation: sources that are normalized, cleaned, deduplicated, mixed and split."""
    mix: Literal["interleave", "resample"] = "interleave"
    """interleave: weighted random order, each record at most once; resample: exact shares, with replacement when short."""
    total: int | None = Field(None, ge=1)
    """resample: size of the mix (default 0.9 x the records available)."""
    valid_ratio: float = Field(0.05, ge=0.0, lt=0.5)
    """Share of the mix held out for validation when building from sources."""
    valid_min: int = Field(100, ge=0)
    """Floor on the validation size (never more than half the data)."""
    build_dir: str = "data_builds"
    """Where builds are written (relative to the working directory); a build is reused while its inputs are unchanged."""
    train_on: Literal["assistant", "last_assistant", "all"] = "assistant"
    """Which tokens carry loss: every assistant turn, only the last one, or everything."""
    packing: bool = False
    """Pack short conversations into max_seq_len sequences (no attention across them; see data/packing.py)."""
    truncation: Literal["keep_start", "drop"] = "keep_start"
    """A conversation longer than max_seq_len: keep its first max_seq_len tokens, or drop it (reported either way)."""

    @field_validator("validation")
    @classmethod
    def _empty_means_none(cls, value: str | None) -> str | None:
        return value or None  # `--set data.validation=""` turns validation off

    @model_validator(mode="after")
    def _train_or_sources(self) -> DataSection:
        if self.sources and (self.train or self.validation):
            raise ValueError("use either train/validation files or [[data.sources]], not both")
        if not self.sources and not self.train:
            raise ValueError("[data] needs train = \"file.jsonl\" or at least one [[data.sources]]")
        return self


class TrainingSection(_Section):
    epochs: float = Field(1.0, gt=0)
    """Passes over the training data (ignored when max_steps > 0)."""
    max_steps: int = Field(-1, ge=-1)
    """Stop after this many optimizer steps; -1 means run `epochs` epochs."""
    batch_size: int = Field(2, ge=1)
    """Sequences per device per forward pass."""
    grad_accum: int = Field(8, ge=1)
    """Forward passes accumulated per optimizer step (effective batch = batch_size x grad_accum)."""
    learning_rate: float = Field(2e-4, gt=0, le=1.0)
    """Peak learning rate."""
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate decay after warm-up."""
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    """Share of the steps spent warming up."""
    weight_decay: float = Field(0.01, ge=0.0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping norm."""
    optimizer: Literal["auto", "adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit"] = "auto"
    """auto: 8-bit AdamW on CUDA when bitsandbytes is present, torch AdamW otherwise."""
    gradient_checkpointing: bool | None = None
    """None = device default (on for CUDA, off on CPU where it only costs time)."""
    seed: int = 42
    """Seed for data order, LoRA init and dropout."""
    logging_steps: int = Field(1, ge=1)
    """Log metrics every N optimizer steps."""
    save_steps: int = Field(100, ge=1)
    """Write a resumable checkpoint every N optimizer steps."""
    save_total_limit: int = Field(2, ge=1)
    """Keep at most this many intermediate checkpoints."""
    eval_steps: int = Field(0, ge=0)
    """Evaluate on the validation file every N steps; 0 = only at the end (when a validation file is set)."""


class OutputSection(_Section):
    run_name: str | None = None
    """Run name; default <recipe file stem>-<YYYYmmdd-HHMMSS>."""
    checkpoints_dir: str = "checkpoints"
    """Where adapters go (relative to the working directory)."""
    runs_dir: str = "runs"
    """Where logs and metrics go (relative to the working directory)."""

    @model_validator(mode="after")
    def _safe_run_name(self) -> OutputSection:
        if self.run_name is not None and (problem := run_name_problem(self.run_name)):
            raise ValueError(problem)
        return self


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def run_name_problem(name: str) -> str | None:
    """Why `name` cannot name a run folder (it becomes checkpoints/<name>), or None.

    A plain name only: no separators, no '.' or '..', nothing absolute, so a run
    can never point at (and --overwrite never remove) a folder outside its own.
    """
    if RUN_NAME.fullmatch(name):
        return None
    return (f"run name {name!r} must be a plain name: start with a letter or digit, then letters, digits, "
            "'.', '_' or '-' (at most 100 characters; no '/', no '..')")


class Recipe(_Section):
    model: ModelSection
    lora: LoraSection = LoraSection()
    data: DataSection
    training: TrainingSection = TrainingSection()
    output: OutputSection = OutputSection()

    source_path: Path | None = Field(None, exclude=True)
    overrides: list[str] = Field(default_factory=list, exclude=True)
    """The --set overrides this recipe was loaded with (a resume command repeats them)."""
    """The TOML file this recipe came from (relative data paths resolve against its folder)."""

    def resolve_path(self, relative: str) -> Path:
        """A path written in the recipe, resolved against the recipe's folder."""
        path = Path(relative).expanduser()
        if path.is_absolute() or self.source_path is None:
            return path
        return (self.source_path.parent / path).resolve()

    @property
    def stem(self) -> str:
        return self.source_path.stem if self.source_path else "recipe"

    def to_toml(self) -> str:
        """The resolved recipe as TOML, saved next to every checkpoint.

        File paths are written absolute, so the snapshot works from any folder.
        """
        data = self.model_dump(mode="json", exclude_none=True)
        for key in ("train", "validation"):
            if key in data["data"]:
                data["data"][key] = str(self.resolve_path(data["data"][key]))
        for source in data["data"].get("sources", []):
            if "path" in source:
                source["path"] = str(self.resolve_path(source["path"]))
        if "chat_template" in data["model"]:
            data["model"]["chat_template"] = str(self.resolve_path(data["model"]["chat_template"]))
        return dumps_toml(data)


SECTIONS: dict[str, type[_Section]] = {
    "model": ModelSection,
    "lora": LoraSection,
    "data": DataSection,
    "training": TrainingSection,
    "output": OutputSection,
}


def load_recipe(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> Recipe:
    """Read a TOML recipe, apply `section.key=value` overrides, validate.

    Raises QloraError naming the file, line and key for anything wrong.
    """
    path = Path(path)
    if path.is_dir():
        recipes = sorted(p.name for p in path.glob("*.toml"))
        raise QloraError(
            f"{path} is a folder, not a recipe file",
            hint=(f"pass one of its recipes: {', '.join(str(path / name) for name in recipes)}" if recipes
                  else "it holds no .toml recipes; run `qlora4080 recipes` to list the bundled ones"),
        )
    if not path.is_file():
        raise QloraError(
            f"recipe file not found: {path}",
            hint="pass a .toml recipe, e.g. recipes/smollm2_135m_demo.toml (run `qlora4080 recipes` to list the bundled ones)",
        )
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:  # a binary file, or a recipe saved in another encoding
        line = data.count(b"\n", 0, exc.start) + 1
        raise QloraError(f"not a TOML recipe: byte 0x{data[exc.start]:02x} is not UTF-8 text", where=f"{path}:{line}",
                         hint="pass a .toml recipe saved as UTF-8") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise QloraError(f"not valid TOML: {exc}", where=str(path), hint="fix the syntax at the line shown") from exc
    override_keys = _apply_overrides(raw, overrides or [])
    recipe = _validate(raw, path, text, override_keys)
    recipe.source_path = path.resolve()
    if isinstance(overrides, list):
        recipe.overrides = list(overrides)
    _check_files(recipe, path)
    return recipe


def parse_override(item: str) -> tuple[list[str], Any]:
    """`training.learning_rate=1e-4` -> (["training", "learning_rate"], 1e-4). Values are read as TOML, else as text."""
    if "=" not in item:
        raise QloraError(f"override {item!r} has no '='", where="--set", hint="write it as section.key=value, e.g. training.max_steps=20")
    dotted, value_text = item.split("=", 1)
    keys = [k.strip() for k in dotted.strip().split(".")]
    if len(keys) != 2 or not all(keys):
        raise QloraError(
            f"override key {dotted!r} must be section.key",
            where="--set",
            hint=f"sections: {', '.join(SECTIONS)}; e.g. training.learning_rate=1e-4",
        )
    try:
        value = tomllib.loads(f"v = {value_text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text.strip()  # bare words such as cosine or a path
    return keys, value


def _apply_overrides(raw: dict[str, Any], overrides: list[str] | dict[str, Any]) -> set[tuple[str, str]]:
    if isinstance(overrides, dict):
        split = [(keys.split(".") if isinstance(keys, str) else list(keys), value) for keys, value in overrides.items()]
        items = [(keys, value, f"{'.'.join(keys)}={value}") for keys, value in split]
    else:
        items = [(*parse_override(o), o) for o in overrides]
    applied: set[tuple[str, str]] = set()
    for keys, value, shown in items:
        section, key = keys
        _check_override_key(section, key, shown)
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            raise QloraError(f"[{section}] is not a table in the recipe", where="--set")
        target[key] = value
        applied.add((section, key))
    return applied


def _check_override_key(section: str, key: str, shown: str) -> None:
    """An unknown name in --set is the flag's fault, not the recipe file's: say so before validation blames the file."""
    if section not in SECTIONS:
        raise QloraError(f"--set {shown}: unknown section '{section}'", where="--set",
                         hint=_did_you_mean(section, list(SECTIONS)))
    allowed = list(SECTIONS[section].model_fields)
    if key not in allowed:
        raise QloraError(f"--set {shown}: unknown key '{key}' in [{section}]", where="--set",
                         hint=_did_you_mean(key, allowed))


def _did_you_mean(name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    return (f"did you mean '{close[0]}'? " if close else "") + f"allowed: {', '.join(allowed)}"


def _validate(raw: dict[str, Any], path: Path, text: str, override_keys: set[tuple[str, str]]) -> Recipe:
    """The typed recipe, or one error listing every problem pydantic found, each with its line."""
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
    # Unknown keys first: a typo in a required key also reports that key as missing, and the typo is the cause.
    rank = {"extra_forbidden": 0, "missing": 1}
    problems = [_explain(e, path, text, override_keys) for e in sorted(errors, key=lambda e: rank.get(e["type"], 2))]
    if len(problems) == 1:
        raise QloraError(problems[0].message, where=problems[0].where, hint=problems[0].hint)
    listed = "\n".join(f"- {p.message}{f' ({p.place})' if p.place else ''}{p.suggestion}" for p in problems)
    allowed = list(dict.fromkeys(p.allowed for p in problems if p.allowed))
    raise QloraError(f"{len(problems)} problems:\n{listed}", where=str(path),
                     hint="; ".join(["fix each one listed, then run again", *allowed]))


@dataclass
class _Problem:
    """One validation error, ready to show alone (where + message + hint) or as one line of a list."""

    message: str
    """What is wrong, e.g. unknown key 'nmae' in [model]."""
    where: str
    """path:line, or --set section.key for a value that came from the command line."""
    place: str
    """Where, as it reads after the message in a list: 'line 3' or '--set model.max_seq_len'."""
    suggestion: str = ""
    """"; did you mean 'name'?" for an unknown name with a close valid one."""
    allowed: str = ""
    """The valid names, where a name was unknown."""
    doc: str | None = None
    """The field's one-line documentation."""

    @property
    def hint(self) -> str | None:
        if self.allowed:
            return (self.suggestion.removeprefix("; ") + " " if self.suggestion else "") + self.allowed
        return self.doc


def _explain(error: dict[str, Any], path: Path, text: str, override_keys: set[tuple[str, str]]) -> _Problem:
    loc = [str(part) for part in error["loc"]]
    section = loc[0] if loc else ""
    key = loc[1] if len(loc) > 1 else ""
    flag = f"--set {section}.{key}" if (section, key) in override_keys else None
    if section == "data" and key == "sources" and len(loc) > 2 and loc[2].isdigit():
        # Inside one [[data.sources]] table: name that table and the key in it, not `sources` in [data].
        index = int(loc[2])
        key, inner = (loc[3] if len(loc) > 3 else ""), ".".join(loc[3:])
        table, model, prefix = f"[[data.sources]] #{index + 1}", SourceSection, "data.sources"
        line = find_line(text, "data.sources", key, index=index) or find_line(text, "data", "sources")
        field = f"{table} {inner}"
    else:
        table, model, prefix = f"[{section}]", SECTIONS.get(section, _Section), section
        line = find_line(text, section, key)
        field = ".".join(loc)
    if flag:
        where, place = flag, flag
    else:
        where = f"{path}:{line}" if line else str(path)
        place = f"line {line}" if line else ""  # e.g. a whole [data] table missing: no line to show
    doc = _field_doc(model, prefix, key)

    if error["type"] == "extra_forbidden":
        allowed = list(SECTIONS) if len(loc) == 1 else list(model.model_fields)
        if len(loc) == 1:
            what = f"unknown section [{section}]"
        else:  # "[[data.sources]] #2 key 'pth'" reads better than "key 'pth' in [[data.sources]] #2"
            what = f"unknown {table} key '{key}'" if table.startswith("[[") else f"unknown key '{key}' in {table}"
        close = difflib.get_close_matches(section if len(loc) == 1 else key, allowed, n=1)
        listed = f"sections allowed: {', '.join(allowed)}" if len(loc) == 1 else f"allowed in {table.split(' #')[0]}: {', '.join(allowed)}"
        return _Problem(what, where, place, f"; did you mean '{close[0]}'?" if close else "", listed)
    if error["type"] == "missing":
        name = f"[{section}]" if len(loc) == 1 else f"'{key}' in {table}"
        return _Problem(f"missing required {name}", where, place, doc=doc)
    if error["type"] == "value_error":
        # Our own rules (an empty name, keys of one table that contradict each other): their sentence says it all.
        return _Problem(str(error["msg"]).removeprefix("Value error, "), where, place, doc=doc)
    return _Problem(f"{field} = {error.get('input')!r}: {error['msg']}", where, place, doc=doc)


def _field_doc(model: type[_Section], prefix: str, key: str) -> str | None:
    if key not in model.model_fields:
        return None
    doc = model.model_fields[key].description
    return f"{prefix}.{key}: {doc}" if doc else None


def _check_files(recipe: Recipe, path: Path) -> None:
    """Files the recipe names must exist before any model is loaded."""
    text = path.read_text(encoding="utf-8")
    for key in ("train", "validation"):
        value = getattr(recipe.data, key)
        if value is None:
            continue
        resolved = recipe.resolve_path(value)
        if not resolved.is_file():
            line = find_line(text, "data", key)
            raise QloraError(
                f"data.{key} file not found: {resolved}",
                where=f"{path}:{line}" if line else str(path),
                hint="paths in [data] are relative to the recipe file's folder",
            )
    for index, source in enumerate(recipe.data.sources):
        if source.path and not recipe.resolve_path(source.path).exists():
            raise QloraError(
                f"data.sources[{index}] path not found: {recipe.resolve_path(source.path)}",
                where=str(path), hint="source paths are relative to the recipe file's folder",
            )
    if recipe.model.chat_template and not recipe.resolve_path(recipe.model.chat_template).is_file():
        raise QloraError(
            f"model.chat_template file not found: {recipe.resolve_path(recipe.model.chat_template)}",
            where=f"{path}:{find_line(text, 'model', 'chat_template')}",
        )
    name = recipe.model.name
    if name.startswith(BUILTIN_PREFIX):
        from .builtin_models import BUILTIN_MODELS

        if name[len(BUILTIN_PREFIX):] not in BUILTIN_MODELS:
            raise QloraError(
                f"unknown built-in model {name!r}",
                where=f"{path}:{find_line(text, 'model', 'name')}",
                hint="known: " + ", ".join(BUILTIN_PREFIX + k for k in BUILTIN_MODELS),
            )
