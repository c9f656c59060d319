"""The package's modules depend on each other in one direction only.

A cycle between modules works until someone imports them in the other order;
then it is an ImportError (or a half-initialised module) at a user's desk.
Two checks: the graph of module-level imports has no cycle, and every module
imports on its own in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "qlora4080"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
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


def module_level_imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Package modules imported when `module` is imported: top level only, not under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        statements = [node] if isinstance(node, (ast.Import, ast.ImportFrom)) else [
            child for child in ast.walk(node) if isinstance(child, (ast.Import, ast.ImportFrom))
        ] if isinstance(node, (ast.If, ast.Try)) else []
        for statement in statements:
            if isinstance(statement, ast.Import):
                names = [alias.name for alias in statement.names]
            else:
                names = _resolve(module, path.name == "__init__.py", statement)
            found.update(name for name in names if name in known and name != module)
    return found


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


def test_the_module_graph_has_no_cycle():
    modules = all_modules()
    graph = {name: module_level_imports(name, path, set(modules)) for name, path in modules.items()}
    # a package's __init__ runs before any of its modules; that edge is the interpreter's, not a choice
    graph = {name: {target for target in targets if not name.startswith(target + ".")} for name, targets in graph.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


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
