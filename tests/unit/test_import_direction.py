"""The import direction of DESIGN.md, checked on the source: worker never imports
producer; emulator imports neither; the contract modules never build the Celery app."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imports(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("worker", ("producer", "emulator", "ops")), ("emulator", ("worker", "producer", "ops"))],
)
def test_packages_import_only_downstream(package: str, forbidden: tuple[str, ...]) -> None:
    for path, names in _imports(package).items():
        bad = sorted(n for n in names if n.split(".")[0] in forbidden)
        assert not bad, f"{path} imports {bad}"


def test_the_contract_does_not_build_celery() -> None:
    script = (
        "import sys, worker.models, worker.settings, worker.store, worker.celery_config;"
        "print(sorted(m for m in ('worker.app', 'worker.tasks') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
