"""Layering of the package: dependencies point one way (``vlt5r`` drivers -> rooms -> ``foundations``), with no
import cycle, no argparse outside the drivers, and nothing outside ``tests/`` importing from ``tests/``.

The static check reads every ``import`` / ``from ... import`` of every module, including those inside functions
(lazy imports count: a cycle through a lazy import is still a cycle), except the ``if __name__ == "__main__":``
block of an entry-point module, which nothing imports.
"""

from __future__ import annotations

import ast
import os
import random
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("foundations", "engine", "vlt5", "adapters", "feature_extraction", "retrieval", "clip_family", "evaluation",
            "multilingual", "vlt5r")
DRIVERS = "vlt5r"  # the only package allowed to parse command lines (plus foundations.cli, which provides it)


def module_files() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")) if (REPO / package).is_dir() else []:
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _is_main_guard(node: ast.stmt) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that ``name`` imports anywhere (an ``from a.b import x`` names a.b.x if that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    body = [n for n in tree.body if not _is_main_guard(n)]
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in (n for stmt in body for n in ast.walk(stmt)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {name: imported_modules(name, path, known) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 80
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_dependencies_point_one_way() -> None:
    """foundations imports no room; no room imports the drivers (except the old entry-point shims)."""
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith("foundations"):
            assert all(d.startswith("foundations") for d in deps), (name, deps)
        if name.startswith("engine"):
            assert all(d.split(".")[0] in ("engine", "foundations") for d in deps), (name, deps)


def test_no_argparse_outside_the_drivers() -> None:
    for name, path in module_files().items():
        if name.startswith(DRIVERS) or name == "foundations.cli":
            continue
        assert "argparse" not in path.read_text(encoding="utf-8"), f"{path}: argparse outside vlt5r/drivers"


def test_nothing_outside_tests_imports_tests() -> None:
    helpers = {p.stem for p in (REPO / "tests").glob("*.py")} | {"tests"}
    for path in [*(REPO / p for p in PACKAGES if (REPO / p).is_dir()), REPO / "benchmarks"]:
        for file in path.rglob("*.py"):
            tree = ast.parse(file.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                bad = [n for n in names if n.split(".")[0] in helpers]
                assert not bad, f"{file}: imports {bad} from tests/"
                if isinstance(node, ast.Constant) and node.value == "tests":
                    raise AssertionError(f"{file}: the path 'tests' (a sys.path insertion?)")


def test_every_module_imports_in_a_fresh_interpreter_in_random_order() -> None:
    names = [n for n in module_files() if not n.endswith("__main__")]
    random.Random(int(os.environ.get("LAYERING_SEED", "0"))).shuffle(names)
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", code, *names], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([sys.executable, "-c", code, *reversed(names)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
