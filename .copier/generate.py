"""Applies a project's answers to a render of Berth's checkout. copier.yml runs it as a task.

Copier renders the checkout as it is (Berth is a working service, not a tree of .jinja
files), then this step makes the project from it:

1. without the example (keep_example=false), puts the empty service from .copier/empty/ in
   the place of the example's files, which copier.yml's `example_only` left out;
2. edits the files that name the project, the domain or the service package: each edit is
   an exact text of Berth's checkout and its replacement (`edits` below lists them all),
   and the modules in IMPORTERS import the package by its new name, in ruff's order;
3. moves the service package (`app/`) and its unit tests to the package's name;
4. keeps Berth's README as BERTH.md, the stack's manual, and writes the project's README.

Copier runs it after each render it makes, including the two temporary ones of `copier
update` (the old version and the new one), so the project, the old render and the new
render all went through the same step: the update's diff holds only the team's own changes.
In a `copy`, an edit whose text is not found is an error (Berth's tests generate projects,
so a changed line fails there first). In an `update`, it is a warning: a file the update
leaves out (`--exclude`) is the team's already-edited copy.

Standard library only: it runs under whichever Python runs copier.
"""

from __future__ import annotations

import argparse
import ast
import json
import keyword
import re
import shutil
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

BERTH_PACKAGE = "app"
STAGING = Path(".copier")
EMPTY_SERVICE = STAGING / "empty"
PROJECT_README = STAGING / "project" / "README.md"
BERTH_README = Path("BERTH.md")
# Berth's own top-level names: a service package can't take one.
RESERVED = {"berth", "migrations", "tests", "bench", "scripts", "backup", "traefik", "deploy"}
LINE_LENGTH = 100  # pyproject.toml's [tool.ruff] line-length
# Long enough for a name, short enough that every line naming it still fits LINE_LENGTH.
MAX_PACKAGE_LENGTH = 24


class GenerationError(Exception):
    """A problem with the answers or the render, told in one line."""


@dataclass(frozen=True)
class Answers:
    project_name: str
    package: str
    domain: str
    keep_example: bool

    @property
    def slug(self) -> str:
        """The name in lower case with dashes: a valid Compose project and Python project
        name (PEP 503 normalised, as uv.lock writes it)."""
        return re.sub(r"[^a-z0-9]+", "-", self.project_name.lower()).strip("-")


@dataclass(frozen=True)
class Edit:
    path: str
    old: str
    new: str


def service_paths(package: str) -> dict[str, str]:
    """Berth's folders named after the service package, and where they go."""
    return {BERTH_PACKAGE: package, f"tests/unit/{BERTH_PACKAGE}": f"tests/unit/{package}"}


def edits(answers: Answers) -> list[Edit]:
    """Every change to a file's text. Each `old` is exact text of Berth's checkout, with
    enough around it that it never matches its own replacement (so a second run changes
    nothing), and every occurrence in the file is replaced. An edit to the same text is
    none: with Berth's own answers, only the template's mypy folder goes."""
    title = json.dumps(answers.project_name, ensure_ascii=False)
    package, slug, main = answers.package, answers.slug, f"{answers.package}.main:create_app"

    def unless(kept: bool, path: str, old: str, new: str) -> Edit:
        return Edit(path, old, old if kept else new)

    found = [
        # The project's name and domain.
        Edit("app/main.py", 'title="Berth"', f"title={title}"),
        Edit("tests/stack/test_dev.py", 'api_title(dev) == "Berth"', f"api_title(dev) == {title}"),
        Edit("tests/stack/test_dev.py", "'title=\"Berth\"'", f"'title={title}'"),
        Edit("compose.yaml", "\nname: berth\n", f"\nname: {slug}\n"),
        Edit("pyproject.toml", '\nname = "berth"\nversion', f'\nname = "{slug}"\nversion'),
        Edit("uv.lock", '\nname = "berth"\nversion', f'\nname = "{slug}"\nversion'),
        Edit(".env.example", "\nDOMAIN=api.example.com\n", f"\nDOMAIN={answers.domain}\n"),
        # The template's own machinery is type-checked in Berth; a project has none.
        Edit("pyproject.toml", ', ".copier"]', "]"),
        # Without the example, the entry point has no router to include.
        unless(answers.keep_example, "app/main.py", "\nfrom .routers import items\n", ""),
        unless(answers.keep_example, "app/main.py", "routers=[items.router]", "routers=[]"),
        # Where files outside the service package name it. Inside it, modules import each
        # other relatively, so only its folder's name changes.
        Edit("Dockerfile", "COPY app ./app\n", f"COPY {package} ./{package}\n"),
        Edit("Dockerfile", " berth app migrations\n", f" berth {package} migrations\n"),
        Edit("Dockerfile", '"app.main:create_app"', f'"{main}"'),
        Edit(".dockerignore", "\n!app/\n", f"\n!{package}/\n"),
        Edit(".dockerignore", " berth/, app/, ", f" berth/, {package}/, "),
        Edit("compose.yaml", "- app.main:create_app\n", f"- {main}\n"),
        Edit("compose.swarm.yaml", "- app.main:create_app\n", f"- {main}\n"),
        Edit("deploy/kubernetes/base/deployment.yaml", "- app.main:create_app\n", f"- {main}\n"),
        Edit("compose.dev.yaml", "- app.main:create_app\n", f"- {main}\n"),
        Edit("compose.dev.yaml", "--reload-dir=app\n", f"--reload-dir={package}\n"),
        Edit("compose.dev.yaml", " ./app:/app/app:ro\n", f" ./{package}:/app/{package}:ro\n"),
        Edit("compose.dev.yaml", " under app/ or ", f" under {package}/ or "),
        Edit("compose.demo.yaml", '"-m", "app.seed"', f'"-m", "{package}.seed"'),
        Edit("pyproject.toml", 'files = ["app", ', f'files = ["{package}", '),
        Edit("pyproject.toml", '\n"app/**" = ', f'\n"{package}/**" = '),
        Edit("tests/stack/test_dev.py", ' / "app" / "main.py"', f' / "{package}" / "main.py"'),
        Edit("tests/stack/test_dev.py", " in 'app/main.py'", f" in '{package}/main.py'"),
        # (a docstring's first line, which a longer name would push past the limit)
        unless(
            package == BERTH_PACKAGE, "tests/stack/test_dev.py", " under app/ is\n", " to it is\n"
        ),
        Edit("tests/stack/fixtures/testhooks/sitecustomize.py", " app.main", f" {package}.main"),
        Edit("bench/measure.py", ' / "app" / "main.py"', f' / "{package}" / "main.py"'),
        # Python lines whose order or length depends on the name: laid out as ruff would.
        *(Edit(path, python("app"), python(package)) for path, python in PYTHON_LINES),
    ]
    return [edit for edit in found if edit.old != edit.new]


def bracketed(indent: int, opening: str, items: list[str], closing: str, listing: bool) -> str:
    """One statement as ruff formats it: on one line if it fits; else a call's arguments
    on one line of their own, if they fit; else one item a line (always, for a list)."""
    margin, inner = " " * indent, " " * (indent + 4)
    joined = ", ".join(items)
    if indent + len(opening) + len(joined) + len(closing) <= LINE_LENGTH:
        return f"{margin}{opening}{joined}{closing}\n"
    if not listing and len(inner) + len(joined) <= LINE_LENGTH:
        return f"{margin}{opening}\n{inner}{joined}\n{margin}{closing}\n"
    one_a_line = "".join(f"{inner}{item},\n" for item in items)
    return f"{margin}{opening}\n{one_a_line}{margin}{closing}\n"


PYTHON_LINES: list[tuple[str, Callable[[str], str]]] = [
    (
        "tests/stack/test_dev.py",
        lambda package: bracketed(
            4,
            "unit_tests = [",
            ["sys.executable", '"-m"', '"pytest"', f'"tests/unit/{package}/test_items.py"', '"-q"'],
            "]",
            listing=True,
        ),
    ),
]


# Modules that import the service package at their top: each such import is renamed and
# put back where ruff's isort wants it among the first-party imports.
IMPORTERS = [
    "migrations/env.py",
    "tests/unit/conftest.py",
    "tests/stack/test_demo.py",
    "tests/unit/deploy/test_kubernetes.py",
]
FIRST_PARTY = {"berth", "tests", BERTH_PACKAGE}


def renamed_imports(text: str, package: str) -> str | None:
    """`text` with its top-level imports of `app` importing `package` instead, sorted again
    within their block of first-party imports; None when it has none."""
    lines = text.splitlines(keepends=True)
    for block in first_party_blocks(ast.parse(text).body, package):
        if not any(top_module(node) == BERTH_PACKAGE for node in block):
            continue
        statements = []
        for node in block:
            statement = "".join(lines[node.lineno - 1 : node.end_lineno])
            if top_module(node) == BERTH_PACKAGE:
                statement = re.sub(r"^(from|import) app\b", rf"\1 {package}", statement)
            statements.append(statement)
        # ruff's isort: `import x` before `from x import y`, each by module name.
        statements.sort(key=lambda s: (s.startswith("from "), s.split()[1].lower()))
        lines[block[0].lineno - 1 : block[-1].end_lineno] = statements
        return "".join(lines)
    return None


def first_party_blocks(body: list[ast.stmt], package: str) -> list[list[ast.stmt]]:
    """Runs of adjacent top-level imports of first-party modules (berth, tests, the
    service), as isort groups them."""
    blocks: list[list[ast.stmt]] = []
    for node in body:
        if top_module(node) not in FIRST_PARTY | {package}:
            continue
        previous = blocks[-1][-1] if blocks else None
        if previous is not None and previous.end_lineno == node.lineno - 1:
            blocks[-1].append(node)
        else:
            blocks.append([node])
    return blocks


def top_module(node: ast.stmt) -> str | None:
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return node.module.split(".")[0]
    if isinstance(node, ast.Import) and len(node.names) == 1:
        return node.names[0].name.split(".")[0]
    return None


def rename_imports(project: Path, package: str, strict: bool) -> None:
    for name in IMPORTERS:
        path = project / name
        if not path.is_file():
            continue  # not in this project (the example's files, without it)
        text = renamed_imports(path.read_text(), package)
        if text is None:
            not_found(f"{name} no longer imports {BERTH_PACKAGE}", strict)
            continue
        path.write_text(text)


def check_answers(answers: Answers, project: Path) -> None:
    """What copier's validators can't see: Python's own names, and the locked dependencies'
    (a package named `alembic` would hide the real one from every import; a project named
    FastAPI would be a second `fastapi` in uv.lock)."""
    locked = re.findall(r'^name = "([^"]+)"$', (project / "uv.lock").read_text(), re.MULTILINE)
    if answers.slug in set(locked) - {"berth"} or not answers.slug:
        raise GenerationError(
            f"project name {answers.project_name!r} makes the Python project name "
            f"{answers.slug!r}, which is empty or a dependency's"
        )
    package = answers.package
    taken = {
        **{name.replace("-", "_"): f"the dependency {name!r}" for name in locked},
        **{name: "Python's standard library" for name in sys.stdlib_module_names},
        **{name: "one of Berth's own folders" for name in RESERVED},
    }
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", package) or keyword.iskeyword(package):
        raise GenerationError(f"package name {package!r} is not a lower-case Python identifier")
    if len(package) > MAX_PACKAGE_LENGTH:
        raise GenerationError(f"package name {package!r} is over {MAX_PACKAGE_LENGTH} characters")
    if package in taken:
        raise GenerationError(f"package name {package!r} is taken by {taken[package]}")


def place_empty_service(project: Path) -> None:
    """Moves .copier/empty/'s files to their places in the project."""
    staged = project / EMPTY_SERVICE
    for source in sorted(path for path in staged.rglob("*") if path.is_file()):
        move(source, project / source.relative_to(staged))


def not_found(problem: str, strict: bool) -> None:
    """A text to change that is not there: an error in a copy, a warning in an update."""
    message = f"{problem}: update .copier/generate.py"
    if strict:
        raise GenerationError(message)
    print(f"berth: generate: left as it is: {message}", file=sys.stderr)


def apply_edits(project: Path, planned: Iterable[Edit], strict: bool) -> None:
    for edit in planned:
        path = project / edit.path
        if not path.is_file():
            continue  # left out of this project (the example's files, without it)
        text = path.read_text()
        if edit.old not in text:
            not_found(f"{edit.path} no longer contains {edit.old!r}", strict)
            continue
        path.write_text(text.replace(edit.old, edit.new))


def template_files(template: Path, folder: str) -> set[Path]:
    """The files a render of `folder` can hold: the template's own, and the empty
    service's. Only these move, so a file of the team's own is never touched."""
    found: set[Path] = set()
    for root in (template / folder, template / EMPTY_SERVICE / folder):
        if root.is_dir():
            found |= {path.relative_to(root) for path in root.rglob("*") if path.is_file()}
    return found


def move_service(project: Path, template: Path, package: str) -> None:
    for old, new in service_paths(package).items():
        for relative in sorted(template_files(template, old)):
            source = project / old / relative
            if source.is_file():
                move(source, project / new / relative)
        remove_empty_folders(project / old)


def write_readmes(project: Path) -> None:
    move(project / "README.md", project / BERTH_README)
    move(project / PROJECT_README, project / "README.md")
    remove_empty_folders(project / STAGING)


def move(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(source, destination)


def remove_empty_folders(root: Path) -> None:
    """`root` and the folders below it, where nothing is left in them."""
    if not root.is_dir():
        return
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    if not any(root.iterdir()):
        root.rmdir()


def generate(project: Path, template: Path, answers: Answers, strict: bool) -> None:
    check_answers(answers, project)
    if not answers.keep_example:
        place_empty_service(project)
    apply_edits(project, edits(answers), strict)
    if answers.package != BERTH_PACKAGE:
        rename_imports(project, answers.package, strict)
        move_service(project, template, answers.package)
    write_readmes(project)


def parse(arguments: list[str]) -> tuple[Path, Answers, bool]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operation", choices=("copy", "update"), required=True)
    parser.add_argument("--template", type=Path, required=True)
    parser.add_argument("--project-name", required=True)
    parser.add_argument("--package", required=True)
    parser.add_argument("--domain", required=True)
    parser.add_argument("--keep-example", choices=("True", "False"), required=True)
    given = parser.parse_args(arguments)
    answers = Answers(
        project_name=given.project_name,
        package=given.package,
        domain=given.domain,
        keep_example=given.keep_example == "True",
    )
    return given.template, answers, given.operation == "copy"


def main(arguments: list[str]) -> int:
    template, answers, strict = parse(arguments)
    try:
        generate(Path.cwd(), template, answers, strict)
    except GenerationError as exc:
        print(f"berth: generate: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
