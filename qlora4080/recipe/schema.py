"""The recipe's schema: one typed section per TOML table, and the Recipe that holds them.

pydantic with extra="forbid", so a mistyped key is an error, never ignored;
each field's one-line docstring is its documentation (shown in error hints).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from ..backend_capabilities import BACKENDS
from ..data.vocabulary import FORMATS, TrainOn
from ..toml_io import dumps_toml
from .method_tables import declared_methods, method_tables
from .section import Section

BUILTIN_PREFIX = "builtin:"
Tracker = Literal["tensorboard", "wandb", "mlflow"]
Table = TypeVar("Table", bound=Section)


def _one_of(value: str, choices: list[str]) -> str:
    """`value` when it is among `choices`, else pydantic's own wording for a Literal ("Input should be 'a' or 'b'")."""
    if value not in choices:
        quoted = [f"'{choice}'" for choice in choices]
        expected = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
        raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
    return value


class ModelSection(Section):
    name: str
    """Hub id (org/name), a local directory, or `builtin:smollm2-135m-instruct`."""
    max_seq_len: int = Field(default=1024, ge=16, le=131072)
    """Longest training sequence in tokens; longer conversations are truncated."""
    load_in_4bit: bool = True
    """NF4 4-bit base weights (QLoRA), through bitsandbytes on a CUDA card or a CPU. On a CPU it saves memory but
    trains several times slower than fp32 (docs/benchmarks.md)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute dtype. auto: bf16 on GPUs that support it, else fp16; fp32 on CPU."""
    backend: str = "auto"
    """auto: unsloth when CUDA is present and unsloth imports, else transformers + peft (hf); or one of them by name."""
    chat_template: str | None = None
    """Optional path to a Jinja chat template that replaces the tokenizer's own."""
    thinking: bool | Literal["auto"] = "auto"
    """Reasoning models whose template reads enable_thinking (Qwen3 hybrids): true or false is written into the chat
    template, so training, chat, eval, generate, serve and every export render the same way; "auto" leaves the
    template's own default."""
    trust_remote_code: bool = False
    """Allow model repositories to run their own Python code."""
    adapter: str | None = None
    """A trained checkpoint (checkpoints/<run>, relative to the working directory) to continue from instead of a
    fresh adapter; with training.method = "dpo" a frozen copy of it is the reference policy."""

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        return _one_of(value, ["auto", *BACKENDS])

    @field_validator("chat_template", "adapter")
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


class LoraSection(Section):
    r: int = Field(default=16, ge=1, le=1024)
    """LoRA rank."""
    alpha: int = Field(default=32, ge=1)
    """LoRA scaling numerator (effective scale alpha / r)."""
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    """Dropout on the LoRA branch."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt, or "all-linear" for every linear projection except the output head."""


class SourceSection(Section):
    path: str | None = None
    """Local file: JSONL, JSON array, Parquet or Arrow. Relative to the recipe file."""
    hub: str | None = None
    """A dataset id on the Hugging Face hub (needs network)."""
    split: str = "train"
    """Split of a hub dataset."""
    name: str | None = None
    """Name of this pool in tables and tags; default: the file stem or the hub id."""
    format: str = "auto"
    """Shape of the records; auto detects what the training method reads (for sft: messages, sharegpt,
    prompt_completion or alpaca); `qlora4080 methods` lists each method's formats."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Field-name overrides for the format, e.g. {user = "question", assistant = "answer"}."""
    weight: float = Field(default=1.0, ge=0, allow_inf_nan=False)
    """Relative share in the mix (normalized over sources; all zero means equal)."""
    tags: list[str] = Field(default_factory=list)
    """Tags added to every record of this source (e.g. "json" turns on JSON validity in eval)."""
    max_answer_chars: int | None = Field(default=None, ge=1)
    """Cut assistant answers longer than this many characters."""

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        readable = ["auto", *FORMATS]
        for declaration in declared_methods().values():
            readable += [name for name in declaration.formats if name not in readable]
        return _one_of(value, readable)

    @model_validator(mode="after")
    def _one_location(self) -> SourceSection:
        if (self.path is None) == (self.hub is None):
            raise ValueError("each [[data.sources]] needs exactly one of path = \"...\" or hub = \"org/name\"")
        return self

    @property
    def label(self) -> str:
        return self.name or (Path(self.path).stem if self.path else str(self.hub).rsplit("/", 1)[-1])


class DataSection(Section):
    train: str | None = None
    """JSONL file, one conversation a line: {"messages": [{"role", "content"}, ...]}. Relative to the recipe file."""
    validation: str | None = None
    """Optional validation JSONL in the same shape. Relative to the recipe file."""
    sources: list[SourceSection] = Field(default_factory=list)
    """Instead of train/validation: sources that are normalized, cleaned, deduplicated, mixed and split."""
    mix: Literal["interleave", "resample"] = "interleave"
    """interleave: weighted random order, each record at most once; resample: exact shares, with replacement when short."""
    total: int | None = Field(default=None, ge=1, le=100_000_000)
    """resample: size of the mix (default 0.9 x the records available). At most 100 million: a mix is built in
    memory, and a billion records grew it without limit."""
    valid_ratio: float = Field(default=0.05, ge=0.0, lt=0.5)
    """Share of the mix held out for validation when building from sources."""
    valid_min: int = Field(default=100, ge=0)
    """Floor on the validation size (never more than half the data)."""
    build_dir: str = "data_builds"
    """Where builds are written (relative to the working directory); a build is reused while its inputs are unchanged."""
    train_on: TrainOn = "assistant"
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


class TrainingSection(Section):
    method: str = "sft"
    """The training method: sft (conversations, loss on the assistant turns) or a preference method from an SFT
    adapter (model.adapter); `qlora4080 methods` lists them all, with the data each reads."""
    # Upper bounds: far past any real run, and short of the integer overflows and hours of work an absurd value
    # (batch_size = 1e12) once reached before anything said no.
    epochs: float = Field(default=1.0, gt=0, le=10_000, allow_inf_nan=False)
    """Passes over the training data (ignored when max_steps > 0)."""
    max_steps: int = Field(default=-1, ge=-1, le=100_000_000)
    """Stop after this many optimizer steps; -1 means run `epochs` epochs."""
    batch_size: int = Field(default=2, ge=1, le=4096)
    """Sequences per device per forward pass."""
    grad_accum: int = Field(default=8, ge=1, le=65536)
    """Forward passes accumulated per optimizer step (effective batch = batch_size x grad_accum)."""
    learning_rate: float = Field(default=2e-4, gt=0, le=1.0)
    """Peak learning rate."""
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate decay after warm-up."""
    warmup_ratio: float = Field(default=0.03, ge=0.0, lt=1.0)
    """Share of the steps spent warming up."""
    weight_decay: float = Field(default=0.01, ge=0.0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(default=1.0, gt=0)
    """Gradient clipping norm."""
    optimizer: Literal["auto", "adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit"] = "auto"
    """auto: 8-bit AdamW on CUDA, torch AdamW on a CPU. adamw_8bit and paged_adamw_8bit work on a CPU too."""
    gradient_checkpointing: bool | None = None
    """None = device default (on for CUDA, off on CPU where it only costs time)."""
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    """Seed for data order, LoRA init and dropout (numpy takes 0 to 2**32 - 1; checked here, before the model loads)."""
    logging_steps: int = Field(default=1, ge=1)
    """Log metrics every N optimizer steps."""
    save_steps: int = Field(default=100, ge=1)
    """Write a resumable checkpoint every N optimizer steps."""
    save_total_limit: int = Field(default=2, ge=1)
    """Keep at most this many intermediate checkpoints."""
    eval_steps: int = Field(default=0, ge=0)
    """Evaluate on the validation file every N steps; 0 = only at the end (when a validation file is set)."""
    early_stopping_patience: int = Field(default=0, ge=0)
    """Stop after this many evaluations in a row without the validation loss improving; 0 = off. Needs eval_steps > 0
    and validation data. A checkpoint is then written at every evaluation (save_steps follows eval_steps) and the
    best one, by validation loss, becomes the final adapter."""
    early_stopping_threshold: float = Field(default=0.0, ge=0.0)
    """How much lower than the best so far the validation loss must be to count as an improvement (resets the
    patience); a smaller gain still updates the best checkpoint."""

    @field_validator("max_steps")
    @classmethod
    def _some_steps(cls, value: int) -> int:
        if value == 0:  # HF reads 0 as "not set" and trained one step, shown as "step 1/0"
            raise ValueError("training.max_steps = 0 trains nothing: give a number of steps (e.g. 100), "
                             "or -1 to train training.epochs epochs")
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        return _one_of(value, list(declared_methods()))

    @model_validator(mode="after")
    def _early_stopping_evaluates(self) -> TrainingSection:
        if self.early_stopping_patience and self.eval_steps == 0:
            raise ValueError(f"training.early_stopping_patience = {self.early_stopping_patience} needs evaluations during "
                             "training: set training.eval_steps (e.g. 50), or training.early_stopping_patience = 0")
        return self


class OutputSection(Section):
    run_name: str | None = None
    """Run name; default <recipe file stem>-<YYYYmmdd-HHMMSS>."""
    checkpoints_dir: str = "checkpoints"
    """Where adapters go (relative to the working directory)."""
    runs_dir: str = "runs"
    """Where logs and metrics go (relative to the working directory)."""
    report_to: list[Tracker] = Field(default_factory=lambda: default_trackers())
    """Experiment trackers that get the trainer's logs: "tensorboard" (runs/<run>/tensorboard), "wandb" (offline run in
    runs/<run>/wandb) and "mlflow" (local store in runs/<run>/mlruns); [] for none. Default: ["tensorboard"] when it is
    installed. wandb and mlflow need: pip install 'qlora4080[trackers]'."""

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, value: list[Tracker]) -> list[Tracker]:
        # Checked here, before anything loads: a tracker that cannot import would otherwise fail after the model is loaded.
        missing = [name for name in value if not tracker_installed(name)]
        if missing:
            raise ValueError(f"output.report_to names {', '.join(missing)}, which is not installed: "
                             f"pip install 'qlora4080[trackers]' (or remove it from report_to)")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _safe_run_name(self) -> OutputSection:
        if self.run_name is not None and (problem := run_name_problem(self.run_name)):
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _separate_folders(self) -> OutputSection:
        # One folder for both made checkpoints/<run> and runs/<run> the same folder: --overwrite then moved the old
        # run aside twice and lost it. (One inside the other is allowed; plan_run_dirs refuses the run names
        # that would make a run's folder the other root.)
        if Path(self.checkpoints_dir).expanduser().resolve() == Path(self.runs_dir).expanduser().resolve():
            raise ValueError(f"output.checkpoints_dir ({self.checkpoints_dir!r}) and output.runs_dir "
                             f"({self.runs_dir!r}) are one folder: give them two (e.g. \"checkpoints\" and \"runs\")")
        return self


def tracker_installed(name: Tracker) -> bool:
    """The tracker's package can be imported (looked up, not imported: `--help` and validation stay instant)."""
    return importlib.util.find_spec(name) is not None


def default_trackers() -> list[Tracker]:
    """TensorBoard when it is installed, as every run had before report_to existed."""
    return ["tensorboard"] if tracker_installed("tensorboard") else []


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


class Recipe(Section):
    model: ModelSection
    lora: LoraSection = LoraSection()
    data: DataSection
    training: TrainingSection = TrainingSection()
    output: OutputSection = OutputSection()

    source_path: Path | None = Field(default=None, exclude=True)
    """The TOML file this recipe came from (relative data paths resolve against its folder)."""
    overrides: list[str] = Field(default_factory=list, exclude=True)
    """The --set overrides this recipe was loaded with (a resume command repeats them)."""

    @model_validator(mode="wrap")
    @classmethod
    def _method_tables(cls, data: Any, handler: ModelWrapValidatorHandler[Recipe], info: ValidationInfo) -> Recipe:
        """The tables the training methods add ([preference], [kto], ...), each checked by its method's schema.

        They are not fields of this class: the methods declare them (method_tables.py), so a new method adds its
        table without editing the schema. Their errors carry their own location, as a field's would.
        """
        raw = dict(data) if isinstance(data, dict) else None
        tables = method_tables()
        given = {name: raw.pop(name) for name in list(raw) if name in tables} if raw is not None else {}
        errors: list[InitErrorDetails] = []
        parsed: dict[str, Section] = {}
        for name, kind in tables.items():
            try:
                value = given.get(name, {})
                parsed[name] = value if isinstance(value, kind) else kind.model_validate(value)
            except ValidationError as error:
                errors += [_located(detail, (name,)) for detail in error.errors()]
        try:
            recipe = handler(raw if raw is not None else data)
        except ValidationError as error:
            raise ValidationError.from_exception_data(cls.__name__, [_located(d, ()) for d in error.errors()]
                                                      + errors) from None
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        if raw is not None or not recipe.__pydantic_private__:
            object.__setattr__(recipe, "__pydantic_private__", {"_tables": parsed})
        if isinstance(info.context, dict) and isinstance(info.context.get("source_path"), Path):
            recipe.source_path = info.context["source_path"]  # before the checks: paths resolve against its folder
        recipe._check_method_fits_the_data()
        return recipe

    @model_serializer(mode="wrap")
    def _with_method_tables(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> dict[str, object]:
        data: dict[str, object] = handler(self)
        for name, table in self._method_table_values().items():
            data[name] = table.model_dump(mode=info.mode, exclude_none=info.exclude_none)
        return data

    def _method_table_values(self) -> dict[str, Section]:
        private = self.__pydantic_private__ or {}
        tables: dict[str, Section] = private.get("_tables", {})
        return tables

    def table(self, kind: type[Table]) -> Table:
        """A method's settings table (e.g. the [preference] table of dpo and orpo), with defaults when not written."""
        for table in self._method_table_values().values():
            if isinstance(table, kind):
                return table
        return kind()

    def _check_method_fits_the_data(self) -> None:
        method = self.training.method
        declaration = declared_methods()[method]
        if self.data.packing and not declaration.packs:
            raise ValueError(f'data.packing packs conversations for sft; set it to false for training.method = "{method}"')
        for number, source in enumerate(self.data.sources, start=1):
            if source.format not in ("auto", *declaration.formats):
                owners = [d for d in declared_methods().values() if source.format in d.formats]
                of = f"a format of {owners[0].reads} (training.method = {_format_list(tuple(d.name for d in owners))})" \
                    if owners else "a format no training method reads"
                formats = declaration.formats
                choice = f"format = {_format_list(formats)}" if len(formats) == 1 else \
                    f"one of format = {_format_list(formats)}"
                raise ValueError(f'[[data.sources]] {number} ({source.label}) has format = "{source.format}", {of}, '
                                 f'but training.method = "{method}" reads {declaration.reads}: set {choice} (or leave '
                                 "it out)")
        check = _METHOD_CHECKS.get(method)
        if check is not None and (problem := check(self)):
            raise ValueError(problem)

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
        if "adapter" in data["model"]:  # relative to the working directory, like checkpoints_dir
            data["model"]["adapter"] = str(Path(data["model"]["adapter"]).expanduser().resolve())
        if "chat_template" in data["model"]:
            data["model"]["chat_template"] = str(self.resolve_path(data["model"]["chat_template"]))
        for name, table in self._method_table_values().items():  # e.g. [grpo] rewards' files
            data[name] = table.with_paths_resolved(self.resolve_path).model_dump(mode="json", exclude_none=True)
        return dumps_toml(data)


RecipeCheck = Callable[[Recipe], str | None]
"""What else a training method needs of a recipe, as a message naming the key; None when the recipe fits."""

_METHOD_CHECKS: dict[str, RecipeCheck] = {}


def add_method_check(method: str, check: RecipeCheck) -> None:
    """Check every recipe of `method` with `check` when it loads (needs its settings table's schema cannot say)."""
    _METHOD_CHECKS[method] = check


SECTIONS: dict[str, type[Section]] = {
    "model": ModelSection,
    "lora": LoraSection,
    "data": DataSection,
    "training": TrainingSection,
    "output": OutputSection,
}
"""The recipe's own tables by name, in the order a recipe lists them."""


def recipe_tables() -> dict[str, type[Section]]:
    """Every table a recipe may have: its own, then those the training methods add."""
    return {**SECTIONS, **method_tables()}


def _located(detail: Any, prefix: tuple[str, ...]) -> InitErrorDetails:
    """One of pydantic's error details, raised again under `prefix` (the method table it came from)."""
    located: InitErrorDetails = {"type": PydanticCustomError(detail["type"], detail["msg"], detail.get("ctx"))
                                 if detail["type"] not in _PLAIN_TYPES else detail["type"],
                                 "loc": (*prefix, *detail["loc"]), "input": detail["input"]}
    if "ctx" in detail and detail["type"] in _PLAIN_TYPES:
        located["ctx"] = detail["ctx"]
    return located


_PLAIN_TYPES = frozenset({"extra_forbidden", "missing"})
"""Error types raised again by their name (problems.py ranks them); others keep their own message."""


def _format_list(names: tuple[str, ...]) -> str:
    """'"a"', '"a" or "b"', '"a", "b" or "c"'."""
    quoted = [f'"{name}"' for name in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
