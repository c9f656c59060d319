"""The GPU install resolves: pyproject.toml + [gpu] against requirements/lock.txt.

No CUDA is needed to prove that: pip's resolver runs in dry-run mode against the package
index, with torch held at the build this venv already has (so nothing large is fetched;
pip's cache keeps later runs quick). When a pin drifts out of what the locked unsloth
accepts, this is the test that says so, in words.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version

import tomllib
from packaging.requirements import Requirement
from stack_lock import LOCK, REPO, canonical, locked_versions, read_lock

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
TORCH_BOUND = ("torch", "torchvision", "torchaudio", "triton", "xformers")
REGENERATE = "regenerate the lock with `python requirements/lock.py` (or `make lock`) and run the suite on it"


def _requirements(*extras: str) -> list[str]:
    return PYPROJECT["dependencies"] + [r for extra in extras for r in PYPROJECT["optional-dependencies"][extra]]


def test_lock_leaves_torch_to_the_machine() -> None:
    pins = locked_versions()
    bound = [name for name in pins if name in TORCH_BOUND or name.startswith(("nvidia-", "cuda-"))]
    assert not bound, f"{bound} are pinned in {LOCK.name}: they must follow the machine's own torch build"


def test_every_locked_version_satisfies_pyproject() -> None:
    pins = locked_versions()
    problems = []
    for text in _requirements("gpu", "dev"):
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonical(requirement.name)
        if name in TORCH_BOUND:
            continue
        if name not in pins:
            problems.append(f"{requirement.name} is required by pyproject.toml but missing from the lock")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"pyproject.toml asks for {text} but the lock pins {requirement.name}=={pins[name]}")
    assert not problems, "\n".join(problems) + f"\n{REGENERATE}"


def test_gpu_extra_resolves_against_the_lock(tmp_path) -> None:
    torch_pin = tmp_path / "torch-pin.txt"
    torch_pin.write_text(f"torch=={version('torch')}\n", encoding="utf-8")
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--disable-pip-version-check", "--report", str(report), "-c", str(LOCK), "-c", str(torch_pin),
         *_requirements("gpu")],
        capture_output=True, text=True, timeout=900,
    )
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if not line.startswith("WARNING: Location")]
        raise AssertionError(
            "pip cannot install qlora4080[gpu] from requirements/lock.txt: a pin is outside what the locked "
            f"unsloth {locked_versions()['unsloth']} (or another package) accepts.\n"
            + "\n".join(errors[-15:]) + f"\n{REGENERATE}")
    resolved = {canonical(item["metadata"]["name"]): item["metadata"]["version"]
                for item in json.loads(report.read_text(encoding="utf-8"))["install"]}
    pins = locked_versions()
    for name in ("unsloth", "unsloth-zoo", "bitsandbytes", "transformers", "trl", "datasets", "peft", "accelerate"):
        assert resolved[name] == pins[name], f"{name}: pip chose {resolved[name]}, the lock says {pins[name]}"
    assert resolved["torch"].split("+")[0] == version("torch").split("+")[0], "the resolution replaced this machine's torch"


def test_stack_constraints_are_the_lock_s_own_lines() -> None:
    pins = locked_versions()
    stack = read_lock(REPO / "requirements" / "stack.txt") or {}
    assert {"transformers", "trl", "peft", "datasets", "accelerate", "unsloth", "unsloth-zoo", "bitsandbytes"} <= set(stack)
    drifted = {name: (pinned, pins.get(name)) for name, pinned in stack.items() if pins.get(name) != pinned}
    assert not drifted, f"stack.txt disagrees with lock.txt: {drifted}; {REGENERATE}"
