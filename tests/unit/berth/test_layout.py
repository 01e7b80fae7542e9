"""The runtime never imports the service: `berth/` must work under any service."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
# The service's code: every top-level package but the runtime and the tools around it
# (Berth's is named app; a project generated with another name has that one instead).
NOT_THE_SERVICE = {"berth", "tests", "bench"}
PACKAGES = {init.parent.name for init in ROOT.glob("*/__init__.py")}
SERVICE_PACKAGES = (PACKAGES - NOT_THE_SERVICE) | {"migrations"}


def imported_packages(module: Path) -> set[str]:
    packages = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            packages |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            packages.add(node.module.split(".")[0])
    return packages


def test_the_runtime_imports_nothing_of_the_service() -> None:
    assert len(SERVICE_PACKAGES) >= 2  # the service package (one at least) and migrations
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
    service = next(iter(SERVICE_PACKAGES - {"migrations"}))
    module.write_text(f"from {service}.models import Base\nimport migrations.env\n")
    assert imported_packages(module) & SERVICE_PACKAGES == {service, "migrations"}
