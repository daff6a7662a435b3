"""The layering: each package imports only the packages below it (search_spaces <- controllers, rewards <- latency
<- nas), and every package may use mnas_common, which imports nothing of the project."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PROJECT = {"search_spaces", "controllers", "rewards", "latency", "nas", "mnas_common", "configs"}
ALLOWED = {
    "mnas_common": {"configs"},
    "search_spaces": {"mnas_common", "configs"},
    "controllers": {"mnas_common", "rewards"},  # controllers.objectives scores with the real reward
    "rewards": {"mnas_common"},
    "latency": {"mnas_common", "search_spaces", "configs"},
}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & PROJECT


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package):
    bad = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        wrong = imports(path) - ALLOWED[package] - {package}
        if wrong:
            bad[str(path.relative_to(ROOT))] = sorted(wrong)
    assert not bad, f"imports across the layering: {bad}"
