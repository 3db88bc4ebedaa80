"""pyproject.toml declares every package the code imports directly, not only what other
packages happen to pull in today."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import polypseg

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(polypseg.__file__).parent.parent


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level() -> set[str]:
    found = set()
    for path in (ROOT / "polypseg").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"polypseg", "__future__"}


def test_every_directly_imported_package_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        _canonical(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]) for req in project["dependencies"]
    }
    distributions = packages_distributions()
    # A module not installed here (tomli, on Python >= 3.11) is named after its distribution.
    undeclared = {
        module: distributions.get(module, [module])
        for module in sorted(_imported_top_level())
        if not {_canonical(d) for d in distributions.get(module, [module])} & declared
    }
    assert undeclared == {}
