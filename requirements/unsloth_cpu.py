"""Print the requirements of the installed unsloth and unsloth_zoo that a machine without CUDA can install.

    pip install --no-deps -c requirements/lock.txt unsloth unsloth_zoo
    python requirements/unsloth_cpu.py > unsloth-cpu.txt
    pip install -c requirements/lock.txt -c torch-pin.txt -r unsloth-cpu.txt

(`make venv` does this on a CPU machine.) unsloth imports on a CPU with
UNSLOTH_ALLOW_CPU=1, which is enough to run its rewritten TRL trainers in the
test suite, but its own requirements would pull CUDA-only packages into a CPU
environment: xformers (CUDA kernels, built against one torch release) and
torchvision (PyPI's build does not import beside the CPU torch). Those are
left out here. triton is kept out of this list too: it is built against one
torch release, so the Makefile installs the release the machine's torch asks
for (unsloth_zoo imports it; nothing runs it on a CPU).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, requires

from packaging.requirements import Requirement

PACKAGES = ("unsloth", "unsloth_zoo")
LEFT_OUT = {"torch", "torchvision", "torchaudio", "triton", "triton-windows", "xformers", "unsloth", "unsloth-zoo"}


def cpu_requirements() -> list[str]:
    """Requirement strings (markers already evaluated for this machine), each once, in a stable order."""
    wanted: dict[str, str] = {}
    for package in PACKAGES:
        try:
            declared = requires(package) or []
        except PackageNotFoundError as exc:
            raise SystemExit(f"{package} is not installed: pip install --no-deps -c requirements/lock.txt {package}") from exc
        for text in declared:
            requirement = Requirement(text)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            name = requirement.name.lower().replace("_", "-")
            if name in LEFT_OUT:
                continue
            wanted.setdefault(name, f"{requirement.name}{requirement.specifier}")
    return [wanted[name] for name in sorted(wanted)]


if __name__ == "__main__":
    print("\n".join(cpu_requirements()))
