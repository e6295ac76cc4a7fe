"""No import cycles inside ``feature_extraction``: every ``import`` counts, including the lazy ones inside
functions (STYLE.md: a factory that must know its variants is a registry above them, never a base module importing
its children). Checked on the source (ast), so it also sees imports a test run never executes."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("feature_extraction",)
# Edges tolerated while callers move to the registry. Delete the entry together with FeatureStore.open.
TRANSITIONAL = {("feature_extraction.store", "feature_extraction.readers")}


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """``{module: {modules of the same packages it imports anywhere in its source}}``."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            graph[name] |= {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_lazy_cycle(tmp_path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "base.py").write_text("def make():\n    from pkg import child\n    return child.Child()\n")
    (pkg / "child.py").write_text("from pkg.base import make\nclass Child: ...\n")
    assert cycles(import_graph(tmp_path, ("pkg",))) == [["pkg.base", "pkg.child"]]


def test_feature_extraction_has_no_import_cycle() -> None:
    graph = import_graph(REPO, PACKAGES)
    for source, target in TRANSITIONAL:
        graph[source].discard(target)
    assert cycles(graph) == []


def test_backbone_and_reader_registries_sit_above_their_variants() -> None:
    graph = import_graph(REPO, PACKAGES)
    for variant in ("feature_extraction.hf_backbone", "feature_extraction.openai_backbone",
                    "feature_extraction.backbone_base"):
        assert "feature_extraction.backbones" not in graph[variant], variant
    assert graph["feature_extraction.legacy"].isdisjoint({"feature_extraction.readers"})
    assert "feature_extraction.legacy" not in graph["feature_extraction.store"]
