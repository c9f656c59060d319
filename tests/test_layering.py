"""The package's modules depend on each other in one direction only.

A cycle between modules works until someone imports them in the other order;
then it is an ImportError (or a half-initialised module) at a user's desk.
An import inside a function is an edge too: it runs later, but it runs, and a
cycle through it is a design knot even when no import order breaks today.
Three checks: the graph of every import (module level and inside functions,
not under TYPE_CHECKING, with the packages each import initialises) has no
cycle, the finder sees such edges, and every module imports on its own in a
fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "qlora4080"


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    # `from .x import y` may name a submodule y, or a name defined in x
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the nodes under `if TYPE_CHECKING:`: read by mypy, never run."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for statement in node.body for child in ast.walk(statement))
    return skipped


def runtime_imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Package modules `module` imports when it runs: at the top and inside functions, not under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_only(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = _resolve(module, path.name == "__init__.py", node)
        else:
            continue
        found.update(name for name in names if name in known and name != module)
    return found


def _packages_of(name: str) -> set[str]:
    """Importing a.b.c first runs a/__init__ and a/b/__init__."""
    parts = name.split(".")
    return {".".join(parts[:end]) for end in range(1, len(parts))}


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = runtime_imports(name, path, known)
        targets |= {package for target in targets for package in _packages_of(target) if package in known}
        # a package's __init__ runs before any of its modules; that edge is the interpreter's, not a choice
        graph[name] = {target for target in targets if target != name and not name.startswith(target + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle_counting_imports_inside_functions():
    graph = import_graph(all_modules())
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_imports_inside_functions_count_and_type_checking_imports_do_not(tmp_path: Path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def later():\n    from .sub.b import thing\n")
    (package / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import later\n")
    (package / "sub" / "c.py").write_text("def later():\n    from .. import a\n")
    modules = {module_name(path, tmp_path): path for path in sorted(package.rglob("*.py"))}
    graph = import_graph(modules)
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"}  # the function-local import, and the package it initialises
    assert graph["pkg.sub.b"] == set()  # under TYPE_CHECKING: never runs
    assert graph["pkg.sub.c"] == {"pkg.a"}
    (package / "sub" / "b.py").write_text("def later():\n    from ..a import later\n")
    assert find_cycle(import_graph(modules)) == ["pkg.a", "pkg.sub.b", "pkg.a"]


def test_the_cycle_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def _import_alone(module: str) -> tuple[str, int, str]:
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                            cwd=PACKAGE.parent, timeout=300)
    return module, result.returncode, result.stderr[-2000:]


def test_every_module_imports_on_its_own():
    with ThreadPoolExecutor(max_workers=2) as pool:
        # __main__ runs the CLI on import; it is what `python -m qlora4080` executes, tested with the CLI
        results = list(pool.map(_import_alone, sorted(name for name in all_modules() if not name.endswith("__main__"))))
    failures = [f"{module}:\n{stderr}" for module, code, stderr in results if code != 0]
    assert not failures, "\n".join(failures)
