"""The runtime never imports the service: `berth/` must work under any service."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SERVICE_PACKAGES = {"app", "migrations"}


def imported_packages(module: Path) -> set[str]:
    packages = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            packages |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            packages.add(node.module.split(".")[0])
    return packages


def test_the_runtime_imports_nothing_of_the_service() -> None:
    modules = sorted((ROOT / "berth").rglob("*.py"))
    assert len(modules) > 10
    offenders = {
        str(module.relative_to(ROOT)): sorted(imported_packages(module) & SERVICE_PACKAGES)
        for module in modules
        if imported_packages(module) & SERVICE_PACKAGES
    }
    assert offenders == {}


def test_the_check_sees_a_service_import(tmp_path: Path) -> None:
    """The check above can fail: a runtime module importing the service is caught."""
    module = tmp_path / "bad.py"
    module.write_text("from app.models import Item\nimport migrations.env\n")
    assert imported_packages(module) & SERVICE_PACKAGES == {"app", "migrations"}
