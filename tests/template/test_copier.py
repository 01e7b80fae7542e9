"""`copier copy` and `copier update` as a team runs them, against a git repository of this
checkout: the defaults give back Berth itself, and an update brings in Berth's later changes
to the stack while the project's own files stay exactly as the team left them."""

from __future__ import annotations

from pathlib import Path

from tests.template.generating import (
    add_router,
    berth_repository,
    commit_all,
    copier,
    files,
    generate,
    git,
)

ANSWERS = {
    "project_name": "Notes Service",
    "package_name": "notes_api",
    "domain": "notes.example.org",
    "keep_example": "false",
}
ANSWERS_FILE = Path(".copier-answers.yml")
# Berth's files that make it a template, which no project gets.
TEMPLATE_ONLY = ("copier.yml", "{{ _copier_conf.answers_file }}.jinja", ".copier", "tests/template")
NOTES_ROUTER = '''"""The team's own resource."""

from fastapi import APIRouter

router = APIRouter(prefix="/api/notes")


@router.get("")
async def list_notes() -> list[str]:
    return []
'''


def template_only(path: Path) -> bool:
    return any(path == Path(name) or Path(name) in path.parents for name in TEMPLATE_ONLY)


def test_the_default_answers_give_back_berth_itself(tmp_path: Path) -> None:
    """Berth is both the template and a working example. Generated with every default, in
    a folder named Berth (the default project name is the folder's), the project is this
    checkout file for file; only the READMEs differ (Berth's becomes BERTH.md), copier's
    answers are added, and mypy no longer lists the template's own folder."""
    berth = berth_repository(tmp_path / "berth", "v1.0.0")
    project = tmp_path / "Berth"

    copier("copy", "--trust", "--defaults", "--quiet", str(berth), str(project), cwd=tmp_path)

    expected = {path for path in files(berth) if not template_only(path)}
    assert files(project) == expected | {Path("BERTH.md"), ANSWERS_FILE}
    for path in expected - {Path("README.md"), Path("pyproject.toml")}:
        assert (project / path).read_bytes() == (berth / path).read_bytes(), path
    assert (project / "BERTH.md").read_bytes() == (berth / "README.md").read_bytes()
    assert (project / "README.md").read_text().startswith("# Berth\n\nA FastAPI + Postgres")
    pyproject = (berth / "pyproject.toml").read_text().replace(', ".copier"]', "]")
    assert (project / "pyproject.toml").read_text() == pyproject
    answers = (project / ANSWERS_FILE).read_text()
    assert "package_name: app\n" in answers
    assert "keep_example: true\n" in answers


def test_an_update_brings_in_berths_changes_and_keeps_the_teams(tmp_path: Path) -> None:
    berth = berth_repository(tmp_path / "berth", "v1.0.0")
    project = generate(berth, tmp_path / "notes-service", "v1.0.0", **ANSWERS)

    # The team's work: a router of its own, wired into the entry point (a file the
    # generation step edited), and a different default in a stack file.
    (project / "notes_api" / "routers" / "notes.py").write_text(NOTES_ROUTER)
    main = project / "notes_api" / "main.py"
    add_router(main, "notes")
    replace(
        project / "compose.yaml",
        "WEB_CONCURRENCY: ${WEB_CONCURRENCY:-2}",
        "WEB_CONCURRENCY: ${WEB_CONCURRENCY:-3}",
    )
    commit_all(project, "Notes")
    ours = {
        path: (project / path).read_bytes()
        for path in ("notes_api/routers/notes.py", "notes_api/main.py")
    }

    # Berth's next release: the line after the one that names the package, a runtime
    # module, a new file, and the items example (which this project left out).
    replace(
        berth / "compose.yaml",
        "- app.main:create_app\n      - --factory\n",
        "- app.main:create_app\n      - --factory  # a Berth v1.1 change\n",
    )
    replace(
        berth / "berth" / "health.py",
        '"""Liveness and readiness probes."""',
        '"""Liveness and readiness probes (v1.1)."""',
    )
    (berth / "berth" / "added_in_v1_1.py").write_text('"""New in Berth v1.1."""\n')
    replace(
        berth / "app" / "routers" / "items.py",
        '"""The items resource: /api/items."""',
        '"""The items resource (v1.1)."""',
    )
    commit_all(berth, "Berth v1.1", "v1.1.0")

    copier("update", "--trust", "--defaults", "--vcs-ref=v1.1.0", cwd=project)

    # Berth's changes arrived; the team's files are byte for byte as they were.
    compose = (project / "compose.yaml").read_text()
    assert "- notes_api.main:create_app\n      - --factory  # a Berth v1.1 change\n" in compose
    assert "WEB_CONCURRENCY: ${WEB_CONCURRENCY:-3}" in compose
    assert "(v1.1)" in (project / "berth" / "health.py").read_text()
    assert (project / "berth" / "added_in_v1_1.py").is_file()
    assert {path: (project / path).read_bytes() for path in ours} == ours
    assert not (project / "notes_api" / "routers" / "items.py").exists()
    assert "_commit: v1.1.0\n" in (project / ANSWERS_FILE).read_text()
    status = git(project, "status", "--porcelain", "--untracked-files=all").splitlines()
    assert not [line for line in status if line.endswith(".rej") or line[:2] in {"UU", "AA"}]

    # Nothing else differs from a project generated at v1.1.0 with the same answers.
    fresh = tmp_path / "fresh"
    copier(
        "copy",
        "--trust",
        "--defaults",
        "--quiet",
        "--vcs-ref=v1.1.0",
        *data(ANSWERS),
        str(berth),
        str(fresh),
        cwd=tmp_path,
    )
    team_files = {Path(path) for path in ours} | {Path("compose.yaml"), ANSWERS_FILE}
    assert files(project) == files(fresh) | team_files
    for path in files(fresh) - team_files:
        assert (project / path).read_bytes() == (fresh / path).read_bytes(), path


def replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path} has no {old!r}"
    path.write_text(text.replace(old, new))


def data(answers: dict[str, str]) -> list[str]:
    return [f"--data={name}={value}" for name, value in answers.items()]
