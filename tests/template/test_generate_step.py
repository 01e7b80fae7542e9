"""The generation step (.copier/generate.py) on its own, for many answers: every project it
makes lints clean (ruff: imports in order, lines within the limit, formatted), names its
package everywhere and Berth's `app` nowhere, and a second run changes nothing (which is what
lets `copier update` compare like with like). No copier here: the render is emulated by
leaving out what copier.yml leaves out, so each case takes about a second."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.stack.harness import ROOT, copy_checkout
from tests.template.generating import GENERATE_STEP, app_package_references, files

COPIER = yaml.safe_load((ROOT / "copier.yml").read_text())
EXAMPLE_ONLY: list[str] = COPIER["example_only"]["default"]
TEMPLATE_ONLY = [
    "copier.yml", "{{ _copier_conf.answers_file }}.jinja", ".copier/generate.py", "tests/template"
]  # fmt: skip


def rendered(destination: Path, keep_example: bool) -> Path:
    """What copier's render leaves before the generation step runs."""
    project = copy_checkout(destination)
    for name in TEMPLATE_ONLY + ([] if not keep_example else [".copier/empty"]):
        path = project / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for name in [] if keep_example else EXAMPLE_ONLY:
        (project / name).unlink()
    readme = project / ".copier" / "project" / "README.md.jinja"
    readme.rename(readme.with_suffix(""))
    return project


def generate_step(
    project: Path,
    *,
    package: str,
    keep_example: bool,
    operation: str = "copy",
    name: str = "Notes Service",
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, str(GENERATE_STEP), f"--operation={operation}",
            f"--template={ROOT}", f"--project-name={name}", f"--package={package}",
            "--domain=notes.example.org", f"--keep-example={keep_example}",
        ],
        cwd=project, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def snapshot(root: Path) -> dict[Path, bytes]:
    return {path: (root / path).read_bytes() for path in files(root)}


def ruff(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--no-cache", "."],
        cwd=project, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("package", "keep_example"),
    [
        ("notes_api", False),
        ("x", True),  # the shortest name
        ("a" * 24, True),  # the longest: lines that name it are laid out again, and fit
        ("zebra", True),  # sorts after `tests`: import blocks change order
        ("myapp", False),  # contains "app": no edit may match its own result
    ],
)
def test_every_project_lints_clean_and_names_its_own_package(
    tmp_path: Path, package: str, keep_example: bool
) -> None:
    project = rendered(tmp_path / "project", keep_example)

    result = generate_step(project, package=package, keep_example=keep_example)

    assert result.returncode == 0, result.stderr
    assert (project / package / "main.py").is_file()
    assert (project / "tests" / "unit" / package / "test_service.py").is_file()
    assert not (project / "app").exists()
    assert not (project / ".copier").exists()
    assert app_package_references(project) == []
    assert f"{package}.main:create_app" in (project / "compose.yaml").read_text()
    assert (project / "BERTH.md").read_bytes() == (ROOT / "README.md").read_bytes()
    lint, formatting = ruff(project, "check"), ruff(project, "format", "--check")
    assert lint.returncode == 0, lint.stdout
    assert formatting.returncode == 0, formatting.stdout

    # What `copier update` does in the project when Berth has not changed: render over it,
    # then run the step again. Nothing may change.
    generated = snapshot(project)
    shutil.copytree(rendered(tmp_path / "again", keep_example), project, dirs_exist_ok=True)
    again = generate_step(project, package=package, keep_example=keep_example, operation="update")
    assert again.returncode == 0, again.stderr
    assert snapshot(project) == generated


def test_the_example_is_left_out_and_the_empty_service_put_in(tmp_path: Path) -> None:
    project = rendered(tmp_path / "project", keep_example=False)
    assert generate_step(project, package="notes_api", keep_example=False).returncode == 0

    service = project / "notes_api"
    assert {path.as_posix() for path in files(service)} == {
        "__init__.py", "main.py", "models.py", "seed.py", "routers/__init__.py",
    }  # fmt: skip
    assert "routers=[]" in (service / "main.py").read_text()
    assert "items" not in (service / "main.py").read_text()
    assert [path.name for path in (project / "migrations" / "versions").iterdir()] == [
        "0001_initial.py"
    ]
    assert "Item" not in (service / "models.py").read_text()
    # The stack tests' requests: the empty service's, which ask nothing of the example.
    requests = (project / "tests" / "stack" / "service.py").read_text()
    assert 'READ_PATH = "/health/ready"' in requests
    assert "/api/items" not in requests


def test_berths_own_files_have_app_package_references() -> None:
    """The scan above can fail: Berth's checkout, the source of every project, is full of
    references to its package `app`."""
    assert len(app_package_references(ROOT)) > 20


def test_a_line_that_changed_upstream_fails_the_copy(tmp_path: Path) -> None:
    """An edit whose text is gone would leave the old name behind: a copy stops, with one
    line saying which file and text."""
    project = rendered(tmp_path / "project", keep_example=True)
    compose = project / "compose.yaml"
    compose.write_text(compose.read_text().replace("- app.main:create_app", "- app.main:make"))

    result = generate_step(project, package="notes_api", keep_example=True)

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "berth: generate: compose.yaml no longer contains '- app.main:create_app\\n': "
        "update .copier/generate.py"
    ]


@pytest.mark.parametrize(
    ("package", "taken_by"),
    [
        ("json", "Python's standard library"),
        ("alembic", "the dependency 'alembic'"),
        ("berth", "one of Berth's own folders"),
    ],
)
def test_a_package_name_that_would_hide_another_is_refused(
    tmp_path: Path, package: str, taken_by: str
) -> None:
    project = rendered(tmp_path / "project", keep_example=True)
    result = generate_step(project, package=package, keep_example=True)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"berth: generate: package name {package!r} is taken by {taken_by}"
    )


def test_a_project_name_that_would_clash_in_the_lock_file_is_refused(tmp_path: Path) -> None:
    project = rendered(tmp_path / "project", keep_example=True)
    result = generate_step(project, package="app", keep_example=True, name="FastAPI")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "berth: generate: project name 'FastAPI' makes the Python project name 'fastapi', "
        "which is empty or a dependency's"
    )
