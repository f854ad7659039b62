"""The folder tree is the architecture: calls flow cli -> daemon -> server -> transports ->
operations -> core and the host adapters, never back. Each module's imports of imapd_ctl, read from its source."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "imapd_ctl"

# layer -> the layers its modules may import (besides their own)
ALLOWED = {
    "core": set(),
    "adapters": {"core"},
    "operations": {"core", "adapters"},
    "transports": {"core", "operations"},
    "server": {"core", "transports"},
    "daemon": {"core", "adapters", "operations", "transports", "server"},
    "cli": {"core", "adapters", "operations", "daemon"},
}


def layer_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "imapd_ctl" and len(parts) > 1 and parts[1] in ALLOWED:
                found.add(parts[1])
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_only_down_the_layers(path):
    layer = path.relative_to(PACKAGE).parts[0]
    assert layer in ALLOWED, f"{path}: not in one of the layers {sorted(ALLOWED)}"
    assert layer_imports(path) - ALLOWED[layer] - {layer} == set()


def test_no_relative_imports_hide_a_layer():
    for path in MODULES:
        tree = ast.parse(path.read_text())
        assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree)), path


def test_no_module_is_over_300_lines():
    assert [p for p in PACKAGE.rglob("*.py") if len(p.read_text().splitlines()) > 300] == []
