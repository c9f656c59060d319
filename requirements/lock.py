"""Regenerate requirements/lock.txt: one exact version of every package qlora4080 installs.

    python requirements/lock.py          (any Python 3.10+ with pip >= 23; needs the package index)
    python requirements/lock.py --keep   (the same, but every package already locked keeps its version)

How: pip resolves pyproject.toml's dependencies plus the `gpu` and `dev` extras
in dry-run mode, with torch pinned to the CPU build (the resolution needs *a*
torch, and that one downloads nothing here). The lock then leaves out torch and
the packages built against one torch release (torchvision, triton, xformers,
CUDA libraries): those follow the torch the machine already has, so installing
from the lock never replaces a CUDA torch, Colab's torch included. `make venv`
pins that torch next to the lock (see requirements/torch_pin.py).

The resolution runs against the index this machine reaches. When an unsloth
release needs a package the index does not serve yet, pip settles on the newest
unsloth that resolves; the lock records which one that was.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "lock.txt"
STACK_LOCK = ROOT / "requirements" / "stack.txt"
# The packages whose versions decide how training behaves. stack.txt pins only these, for
# runtimes that bring their own numpy, pandas and friends (Colab) and should keep them.
STACK = {"transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "safetensors", "huggingface-hub",
         "unsloth", "unsloth-zoo", "bitsandbytes", "torchao", "cut-cross-entropy", "diffusers"}
# The torch the resolution assumes. Any release unsloth accepts (<2.15) would do.
RESOLVE_WITH_TORCH = "torch==2.13.0"
# Built against one torch release each: they come with the machine's torch, never from the lock.
TORCH_BOUND = {"torch", "torchvision", "torchaudio", "triton", "pytorch-triton", "xformers"}
TORCH_BOUND_PREFIXES = ("nvidia-", "cuda-")
EXTRAS = ("gpu", "dev", "trackers", "gguf")


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def is_torch_bound(name: str) -> bool:
    name = canonical(name)
    return name in TORCH_BOUND or name.startswith(TORCH_BOUND_PREFIXES)


def project_requirements(extras: tuple[str, ...] = EXTRAS) -> list[str]:
    """pyproject.toml's dependencies and the named extras, as requirement strings."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return requirements


def resolve(requirements: list[str], constraints: list[Path] = ()) -> dict[str, str]:
    """name -> version that pip would install into an empty environment."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                   "--disable-pip-version-check", "--report", str(report)]
        for path in constraints:
            command += ["--constraint", str(path)]
        subprocess.run(command + requirements, check=True)
        installs = json.loads(report.read_text(encoding="utf-8"))["install"]
    return {item["metadata"]["name"]: item["metadata"]["version"] for item in installs}


def main() -> None:
    # --keep: resolve with the current lock as constraints, so adding a package moves no other pin.
    constraints = [LOCK] if "--keep" in sys.argv[1:] else []
    pins = resolve(project_requirements() + [RESOLVE_WITH_TORCH], constraints)
    lines = [
        "# One exact version of every package qlora4080 installs, CPU and GPU alike.",
        "# Regenerate: python requirements/lock.py   (resolves pyproject.toml + [gpu,dev,trackers,gguf] against the index)",
        "# Use as constraints: pip install -c requirements/lock.txt -e '.[dev]'   (make venv does this)",
        "# torch, torchvision, triton, xformers and CUDA libraries are left out on purpose: they follow",
        "# the torch the machine has (see requirements/torch_pin.py).",
    ]
    pinned = [(name, version) for name, version in sorted(pins.items(), key=lambda kv: canonical(kv[0]))
              if not is_torch_bound(name)]
    lines += [f"{name}=={version}" for name, version in pinned]
    LOCK.write_text("\n".join(lines) + "\n", encoding="utf-8")
    stack = [
        "# The training stack only: the lines of lock.txt that decide how training behaves.",
        "# For runtimes that bring their own numpy, pandas, ... (Colab). Written by requirements/lock.py.",
    ] + [f"{name}=={version}" for name, version in pinned if canonical(name) in STACK]
    STACK_LOCK.write_text("\n".join(stack) + "\n", encoding="utf-8")
    print(f"wrote {LOCK.relative_to(ROOT)}: {len(pinned)} packages; {STACK_LOCK.relative_to(ROOT)}: {len(stack) - 2}")


if __name__ == "__main__":
    main()
