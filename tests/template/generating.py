"""Make projects from Berth the way a team does: a git repository of Berth (this checkout,
committed and tagged in a temporary directory), `copier copy` and `copier update` run as
commands, and git in the project."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.stack.harness import ROOT, copy_checkout

GENERATE_STEP = ROOT / ".copier" / "generate.py"
# Copier commits in temporary repositories of its own during an update, and so do the
# tests: an identity for both, whatever the machine's git configuration.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Berth tests",
    "GIT_AUTHOR_EMAIL": "tests@berth.invalid",
    "GIT_COMMITTER_NAME": "Berth tests",
    "GIT_COMMITTER_EMAIL": "tests@berth.invalid",
}
# A reference to Berth's service package `app` (imports, module paths, folders, mounts).
# Berth's own files have dozens; a project generated with another package name must have
# none outside its READMEs, which describe Berth.
APP_PACKAGE_REFERENCE = re.compile(
    r"(?<![\w.-])app\.(main|seed|models|routers|schemas|repository)\b"
    r"|\./app\b|/app/app\b|\"app\" /|'app/|\"app/|`app/|!app/|[ ,(]app/"
    r"|--reload-dir=app\b|^[ \t]*(from|import) app\b|\bberth app\b|COPY app\b"
    r"|tests/unit/app\b|files = \[\"app\"",
    re.MULTILINE,
)
DOCS = {"README.md", "BERTH.md"}
LOCAL_STATE = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


def run(
    command: list[str], cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, **GIT_IDENTITY, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{output_tail(result)}"
    return result


def output_tail(result: subprocess.CompletedProcess[str], lines: int = 60) -> str:
    """The end of what a command wrote to each stream: pytest, ruff and mypy report on
    stdout, git and copier on stderr."""
    return "\n".join(
        f"--- {name} (last {lines} lines) ---\n" + "\n".join(text.splitlines()[-lines:])
        for name, text in (("stdout", result.stdout), ("stderr", result.stderr))
        if text.strip()
    )


def git(repository: Path, *args: str) -> str:
    return run(["git", *args], cwd=repository).stdout


def commit_all(repository: Path, message: str, tag: str | None = None) -> None:
    git(repository, "add", "--all")
    git(repository, "commit", "--quiet", "--message", message)
    if tag:
        git(repository, "tag", tag)


def berth_repository(destination: Path, tag: str) -> Path:
    """This checkout as a git repository of its own, committed and tagged."""
    repository = copy_checkout(destination)
    git(repository, "init", "--quiet")
    commit_all(repository, "Berth", tag)
    return repository


def copier(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "copier", *args], cwd=cwd)


def generate(template: Path, project: Path, tag: str, **answers: str) -> Path:
    """`copier copy` at `tag` with these answers (defaults for the others), then the
    project's own repository with its first commit, as the README says."""
    data = [f"--data={name}={value}" for name, value in answers.items()]
    copier(
        "copy", "--trust", "--defaults", "--quiet", f"--vcs-ref={tag}", *data,
        str(template), str(project), cwd=template.parent,
    )  # fmt: skip
    git(project, "init", "--quiet")
    commit_all(project, "Generated from Berth")
    return project


def files(root: Path) -> set[Path]:
    """Every file below `root`, relative to it, but git's and local state (virtualenv,
    caches), which a project never ships."""
    found = set()
    for folder, folders, names in os.walk(root):
        folders[:] = [name for name in folders if name not in LOCAL_STATE]
        found |= {(Path(folder) / name).relative_to(root) for name in names}
    return found


def app_package_references(root: Path) -> list[str]:
    """`path:line: text` of each reference to the `app` package outside the READMEs."""
    found = []
    for relative in sorted(files(root)):
        if relative.name in DOCS or relative.suffix in {".png", ".lock"}:
            continue
        text = (root / relative).read_text(errors="replace")
        for match in APP_PACKAGE_REFERENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(f"{relative}:{line}: {text.splitlines()[line - 1].strip()}")
    return found


def add_router(main: Path, module: str) -> None:
    """Wire `routers/<module>.py` into a service's entry point, as a team does by hand."""
    text = main.read_text()
    imports = "from berth.settings import Settings\n"
    assert imports in text, text
    assert "routers=[" in text, text
    main.write_text(
        text.replace(imports, f"{imports}\nfrom .routers import {module}\n")
        .replace("routers=[", f"routers=[{module}.router, ")
        .replace(", ]", "]")
    )
