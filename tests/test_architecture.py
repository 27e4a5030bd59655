"""The package's shape (``docs/architecture.md``): three layers whose imports point down, and no import cycles.

library (``utils`` < ``models``, ``losses`` < ``data`` < ``eval``)  <  ``training``  <  ``commands``

Walked from the source with ``ast``, so a function-level import counts as much as a module-level one: a lazy
import still ties the two modules together.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGE = "lightning_sarclip"
ROOT = REPO_ROOT / PACKAGE

#: Rank of each top-level part; a module may import only parts of equal or lower rank.
LAYERS = {
    "utils": 0,
    "models": 1,
    "losses": 1,
    "data": 2,
    "eval": 3,
    "training": 4,
    "commands": 5,
    "__main__": 5,
}
LAYER_NAMES = {0: "library (utils)", 1: "library (models/losses)", 2: "library (data)", 3: "library (eval)",
               4: "training", 5: "commands"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module an import names (``pkg.mod.func`` -> ``pkg.mod``), or None outside the package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")
                    base = base[: len(base) - node.level + (1 if is_package else 0)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{alias.name}" for alias in node.names] + [module]
            for target in targets:
                if target.startswith(PACKAGE):
                    resolved = _resolve(target, modules)
                    if resolved and resolved != name:
                        edges.add(resolved)
        graph[name] = edges
    return graph


def _rank(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_imports_point_down_the_layers():
    upward = []
    for module, targets in import_graph().items():
        rank = _rank(module)
        if rank is None:
            continue
        for target in targets:
            target_rank = _rank(target)
            if target_rank is not None and target_rank > rank:
                upward.append(f"{module} ({LAYER_NAMES[rank]}) imports {target} ({LAYER_NAMES[target_rank]})")
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(sorted(upward))


def test_every_top_level_module_belongs_to_a_layer():
    loose = sorted(m for m in _modules() if m.count(".") >= 1 and _rank(m) is None)
    assert not loose, f"modules outside the layers {sorted(LAYERS)}: {loose}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    assert _cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = import_graph()
    graph["lightning_sarclip.data.records"] = {*graph["lightning_sarclip.data.records"], "lightning_sarclip.data.io"}
    assert any("lightning_sarclip.data.records" in c and "lightning_sarclip.data.io" in c for c in _cycles(graph))


@pytest.mark.parametrize("statement", [
    "import lightning_sarclip.data.sources, lightning_sarclip.data.io, lightning_sarclip.eval.retrieval, "
    "lightning_sarclip.models, lightning_sarclip.losses",
    "import lightning_sarclip.data.corpus, lightning_sarclip.data.source_dataset, lightning_sarclip.eval.evaluate, "
    "lightning_sarclip.eval.metrics, lightning_sarclip.models.loading, lightning_sarclip.utils.atomic",
])
def test_the_library_imports_without_lightning(statement):
    check = (f"{statement}; import sys; "
             "bad = sorted(m for m in sys.modules if m == 'lightning' or m.startswith(('lightning.', 'pytorch_lightning')));"
             "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", check], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
