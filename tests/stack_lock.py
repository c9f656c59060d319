"""Reading requirements/lock.txt and the locked unsloth's source, for the stack tests."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

from qlora4080.doctor.packages import canonical, read_lock

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements" / "lock.txt"
# Downloaded once per virtualenv; pip's own cache makes a fresh venv's download cheap too.
WHEEL_CACHE = Path(sys.prefix) / "contract-wheels"


def locked_versions() -> dict[str, str]:
    """canonical name -> exact version, from requirements/lock.txt (read as doctor reads it)."""
    pins = read_lock(LOCK)
    assert pins is not None, f"{LOCK} is missing"
    return pins


def locked_wheel(name: str) -> Path:
    """The locked release of `name` as a wheel file (downloaded without its dependencies)."""
    version = locked_versions()[canonical(name)]
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(WHEEL_CACHE.glob(pattern))
    if not found:
        WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                               "--disable-pip-version-check", "-d", str(WHEEL_CACHE), f"{name}=={version}"],
                              capture_output=True, text=True)
        found = sorted(WHEEL_CACHE.glob(pattern))
        if not found:
            errors = [line for line in done.stderr.splitlines() if not line.startswith("WARNING: Location")]
            raise AssertionError(f"could not download {name}=={version} from the package index:\n" + "\n".join(errors[-10:]))
    return found[-1]


def parse_from_wheel(wheel: Path, module_path: str) -> ast.Module:
    """A module of a wheel, parsed, never imported (unsloth cannot be imported without a GPU)."""
    with zipfile.ZipFile(wheel) as archive:
        return ast.parse(archive.read(module_path).decode("utf-8"), filename=f"{wheel.name}/{module_path}")


def named_parameters(function: ast.FunctionDef) -> tuple[set[str], bool]:
    """The parameters a caller can name, and whether **kwargs swallows any other name.

    A name the body reads out of **kwargs (`kwargs.get("x")`, `kwargs.pop("x")`, `kwargs["x"]`) is one the
    function takes too: unsloth's from_pretrained reads `local_files_only` that way.
    """
    args = function.args
    names = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
    if args.kwarg is not None:
        names |= _read_from(function, args.kwarg.arg)
    return names, args.kwarg is not None


def _read_from(function: ast.FunctionDef, kwargs: str) -> set[str]:
    names = set()
    for node in ast.walk(function):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop")
                and isinstance(node.func.value, ast.Name) and node.func.value.id == kwargs
                and node.args and isinstance(node.args[0], ast.Constant)):
            names.add(str(node.args[0].value))
        elif (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == kwargs
              and isinstance(node.slice, ast.Constant)):
            names.add(str(node.slice.value))
    return names


def find_function(tree: ast.Module, qualified: str) -> ast.FunctionDef:
    """`Class.method` or `function` at the top level of a parsed module."""
    *owner, name = qualified.split(".")
    scope: list[ast.stmt] = tree.body
    for class_name in owner:
        scope = next(node.body for node in scope if isinstance(node, ast.ClassDef) and node.name == class_name)
    return next(node for node in scope if isinstance(node, ast.FunctionDef) and node.name == name)
