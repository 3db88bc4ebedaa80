"""The package's import graph: rooms import only downwards, and no module imports itself back.

Function-level imports count too (they are how heavy modules are kept off start-up), so a lazy
import cannot hide an upward edge or a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from functools import cache
from pathlib import Path

import polypseg

PACKAGE = Path(polypseg.__file__).parent

# Top to bottom; a room may import from its own rank or any rank below it. `data` and `models`
# share a rank but know nothing of each other.
LAYERS = [
    {"cli"},
    {"tuning"},
    {"export"},
    {"evaluation"},
    {"training"},
    {"tracking"},
    {"features"},
    {"data"},
    {"models"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _imports() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("polypseg"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("polypseg"))
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _room(module: str) -> str:
    """`data` for polypseg.data.split; the module's own name for one at the package root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _rank(module: str) -> int:
    """A room's rank in LAYERS; modules at the package root sit below every room."""
    room = _room(module)
    for rank, rooms in enumerate(LAYERS):
        if room in rooms:
            return rank
    return len(LAYERS)


def _edges(keep: Callable[[str, str], bool]) -> list[str]:
    """The import edges `importer -> imported` that `keep` selects, sorted."""
    return sorted(f"{a} -> {b}" for a, targets in _imports().items() for b in targets if keep(a, b))


def test_no_room_imports_a_room_above_it() -> None:
    assert _edges(lambda a, b: a != "polypseg" and _rank(b) < _rank(a)) == []


def test_data_and_models_know_nothing_of_each_other() -> None:
    assert _edges(lambda a, b: {_room(a), _room(b)} == {"data", "models"}) == []


def test_no_import_circle() -> None:
    graph = _imports()
    seen: dict[str, int] = {}  # 1 while on the current path, 2 when done

    def visit(module: str, path: list[str]) -> list[str] | None:
        seen[module] = 1
        for target in sorted(graph[module]):
            if seen.get(target) == 1:
                return path[path.index(target) :] + [target] if target in path else [target]
            if target not in seen and (circle := visit(target, path + [target])):
                return circle
        seen[module] = 2
        return None

    for module in sorted(graph):
        if module not in seen:
            assert visit(module, [module]) is None
